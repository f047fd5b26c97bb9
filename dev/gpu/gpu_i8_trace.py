#!/usr/bin/env python3
"""Where the cycles of the wgmma INT8 kernel go: a per-step clock trace.

Needs a library built with dev/gpu/gpu_i8_trace.patch (dev/gpu/gpu_i8_trace.sh does it on a copy of the
source). Thread 0 of each consumer warpgroup records clock64 at ten points of each of its first 200
loop steps; this prints, per warpgroup, the median cycles of each segment over the steps that stay
inside a work item ("normal") and over those that cross into the next item ("crossing"), and the
kernel's TOPS (the trace itself costs a few percent).

Usage: python3 dev/gpu/gpu_i8_trace.py --lib /tmp/v-trace/libqattn.so [--out DIR]
"""
import argparse
import ctypes as C
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))  # gpu_compare
from gpu_compare import PREC_INT8, QAttn, kernel_ms  # noqa: E402

NB, TS, TP, TI = 132, 200, 10, 48  # as in the patch
SEGMENTS = ["loop top", "next item", "wait K/V tile", "ping-pong turn", "issue P V + S", "wait products",
            "O update", "row store", "wait S", "softmax (+ O update off crossings)"]
FLAG = 1 << 63


def trace(qa, B, L, H, causal, D=128):
    q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=torch.float16) for _ in range(3))
    o = torch.empty_like(q)
    p = qa.params(q, k, v, o, causal, PREC_INT8)
    flops = 4.0 * B * H * L * L * D / (2 if causal else 1)
    res = {"tops": flops / (kernel_ms(lambda: qa.forward(p), "fwd_i8") * 1e-3) / 1e12}
    qa.forward(p)
    buf = (C.c_ulonglong * (NB * 2 * TS * TP + NB * TI * 4))()
    if qa.lib.qattn_debug_trace(buf) != 0:
        raise RuntimeError("qattn_debug_trace failed (library not built with the trace patch?)")
    for wg in range(2):
        seg = {"normal": [[] for _ in range(TP)], "crossing": [[] for _ in range(TP)]}
        for b in range(NB):
            base = (b * 2 + wg) * TS * TP
            for st in range(1, TS):
                row = [buf[base + st * TP + i] for i in range(TP)]
                prev_end = buf[base + (st - 1) * TP + 9] & ~FLAG
                if row[9] == 0 or prev_end == 0:
                    break
                kind = "crossing" if row[9] & FLAG else "normal"
                r = [x & ~FLAG for x in row]
                seg[kind][0].append(r[0] - prev_end)
                for i in range(1, TP):
                    seg[kind][i].append(r[i] - r[i - 1])
        res["wg%d" % wg] = {kind: {SEGMENTS[i]: round(statistics.median(x)) if x else None for i, x in enumerate(s)} | {"steps": len(s[0])}
                            for kind, s in seg.items()}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    qa = QAttn(args.lib)
    qa.lib.qattn_debug_trace.argtypes = [C.c_void_p]
    out = {}
    for name, (B, L, causal) in {"4k": (4, 4096, False), "4k causal": (4, 4096, True), "16k": (1, 16384, False)}.items():
        out[name] = trace(qa, B, L, 16, causal)
    print("Median cycles per segment of a consumer loop step (SM clock), device %s" % torch.cuda.get_device_name())
    cols = [(n, wg, kind) for n in out for wg in ("wg0", "wg1") for kind in ("normal", "crossing")]
    print("| segment | " + " | ".join("%s %s %s" % c for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for sname in SEGMENTS + ["steps"]:
        print("| %s | " % sname + " | ".join(str(out[n][wg][kind][sname]) for n, wg, kind in cols) + " |")
    tot = [sum(v for k_, v in out[n][wg][kind].items() if k_ != "steps" and v is not None) for n, wg, kind in cols]
    print("| step total | " + " | ".join(str(t) for t in tot) + " |")
    print("| kernel TOPS (traced build) | " + " | ".join("%.0f" % out[n]["tops"] for n, _, _ in cols) + " |")
    with open(os.path.join(args.out, "gpu_i8_trace.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
