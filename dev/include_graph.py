#!/usr/bin/env python3
"""Which src/ file calls which, and the calls that go against the layer order.

Usage: python3 dev/include_graph.py [BUILD_DIR]   (default: build; needs nm and a built tree)
CTest runs it on its own build as the test layer_graph.

Layers, top to bottom (docs/ARCHITECTURE.md):
  clients  src/dist (libqattn_dist, a library on top of libqattn: it calls the public API)
  api      src/api.c
  drivers  src/cpu (but x86: forward*.c, block_mask.c, units.c, lowp_*.c, kernel_tables.c),
           src/kv (cache and decode), src/cuda/backend.cu and src/cuda/*_driver.cu (kv_decode_driver.cu),
           src/quant (the quantization entry points and passes)
  kernels  src/cpu/x86, src/ref, src/kv/kv_attend_*, the other src/cuda files
  core     src/core
A file may call its own layer or any layer below. The graph comes from the object files (`nm`:
which file defines each global symbol, which file uses it), so it sees exactly what links, inline
functions excepted; a CPU-only build has no CUDA edges. #include lines add one check: a core file
includes only core headers (and the umbrella qattn_internal.h, which includes them).
Prints the cycles between files (strongly connected components), the upward edges and the core
include problems, and exits 1 when there is any of them (0 when the graph is clean, 2 without a build).
"""
import collections
import os
import re
import subprocess
import sys

LAYERS = ["core", "kernels", "drivers", "api", "clients"]  # index = rank; calls go to equal or lower rank


def layer_of(path):
    if path == "src/api.c":
        return "api"
    if path.startswith("src/dist/"):
        return "clients"
    if path.startswith("src/core/"):
        return "core"
    if path.startswith("src/cpu/x86/") or path.startswith("src/ref/") or path.startswith("src/kv/kv_attend"):
        return "kernels"
    if path.startswith("src/cuda/"):
        base = os.path.basename(path)
        return "drivers" if base.startswith("backend.") or "_driver." in base else "kernels"
    if path.startswith(("src/cpu/", "src/kv/", "src/quant/")):
        return "drivers"
    return None


def object_files(build):
    """(source path relative to the repository, object path) for every object built from src/."""
    out = []
    for root, _, files in os.walk(build):
        for f in files:
            if not f.endswith(".o"):
                continue
            full = os.path.join(root, f)
            m = re.search(r"\.dir/(src/.*)\.o$", full)
            if m and (m.group(1), full) not in out:
                out.append((m.group(1), full))
    return sorted(out)


def symbols(obj):
    """(defined global symbols, undefined symbols) of an object file."""
    text = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            used.add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDRBWV":  # global text, data, rodata, bss, weak
            defined.add(parts[2])
    return defined, used


def call_graph(build):
    objs = object_files(build)
    defs, uses = {}, {}
    for src, obj in objs:
        d, u = symbols(obj)
        uses[src] = u
        for s in d:
            defs.setdefault(s, src)
    graph = collections.defaultdict(lambda: collections.defaultdict(set))
    for src, used in uses.items():
        for s in used:
            callee = defs.get(s)
            if callee and callee != src:
                graph[src][callee].add(s)
    return [s for s, _ in objs], graph


def cycles(nodes, graph):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def core_include_problems(root):
    out = []
    core = os.path.join(root, "src", "core")
    for f in sorted(os.listdir(core)):
        for n, line in enumerate(open(os.path.join(core, f), encoding="utf-8"), 1):
            m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
            if m and not (m.group(1).startswith("core/") or m.group(1) in ("qattn.h", "qattn_internal.h")):
                out.append("src/core/%s:%d includes %s" % (f, n, m.group(1)))
    return out


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "build")
    nodes, graph = call_graph(build)
    if not nodes:
        print("no object files from src/ under %s: build first" % build)
        return 2
    print("files: %d, file-to-file call edges: %d" % (len(nodes), sum(len(v) for v in graph.values())))
    comps = cycles(nodes, graph)
    print("cycles: %d" % len(comps))
    for comp in comps:
        print("  " + " <-> ".join(comp))
    upward = []
    for caller in sorted(graph):
        for callee in sorted(graph[caller]):
            a, b = layer_of(caller), layer_of(callee)
            if a and b and LAYERS.index(b) > LAYERS.index(a):
                upward.append("  %s (%s) -> %s (%s): %s" % (caller, a, callee, b, ", ".join(sorted(graph[caller][callee]))))
    print("upward calls: %d" % len(upward))
    for line in upward:
        print(line)
    inc = core_include_problems(root)
    print("core includes of non-core headers: %d" % len(inc))
    for line in inc:
        print("  " + line)
    return 1 if comps or upward or inc else 0


if __name__ == "__main__":
    sys.exit(main())
