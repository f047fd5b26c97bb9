"""Bounded fuzzing of `qattn run`: random flags, shapes, dtypes and corrupted .npy files for a fixed
time with a fixed seed. Every run must exit 0, 1 or 2 (never a crash, hang or sanitizer report);
a failure leaves exactly one line on stderr and no output file; a success writes outputs numpy can
read with the right shapes. Meant for the ASan+UBSan build (.ci/run runs it there).

    python3 tests/cli/fuzz_run.py --cli build-san/qattn --seconds 60 [--seed 12]

Prints the number of runs per exit status; exits 1 at the first failing run, printing the command
that reproduces it (the input files are kept in the folder it names).
"""
import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


def npy_bytes(arr):
    import io
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def corrupt(rng, data):
    """One random damage: flipped bytes, truncation, appended bytes, a rewritten header."""
    kind = rng.randrange(6)
    b = bytearray(data)
    if kind == 0 and b:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(b), 128) if rng.random() < 0.7 else len(b))
            b[i] = rng.randrange(256)
    elif kind == 1:
        del b[rng.randrange(len(b) + 1):]
    elif kind == 2:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:
        shape = tuple(rng.choice([0, 1, 2, 3, 7, 64, -1, 2**31, 2**62, 2**64]) for _ in range(rng.randint(0, 9)))
        descr = rng.choice(["<f4", "<f2", ">f4", "<f8", "|b1", "<i4", "[('a', '<f4')]", "'"])
        order = rng.choice(["False", "True", "0", ""])
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': %r, }" % (descr, order, shape)
        h = header.encode()
        h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
        b = bytearray(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h) + b[128:]
    elif kind == 4:
        b[6:8] = bytes([rng.randrange(5), rng.randrange(3)])
    else:
        b = bytearray(rng.choice([b"", b"\x93NUMPY", b"hello", b"\x93NUMPY\x01\x00\xff\xff"]))
    return bytes(b)


def random_case(rng, folder):
    """Writes q/k/v files into folder; returns (argv after the binary, expected O shape or None)."""
    B = rng.choice([0, 1, 1, 2])
    Lq, Lk = rng.choice([0, 1, 2, 5, 17]), rng.choice([0, 1, 3, 17, 33])
    HK = rng.choice([1, 2, 3])
    H = HK * rng.choice([1, 2]) if rng.random() < 0.9 else rng.choice([1, 5])
    D = rng.choice([32, 64, 64, 80, 128, 8, 20, 264])
    dtypes = [rng.choice([np.float32, np.float32, np.float16, np.float64]) for _ in range(3)]
    dist = rng.choice(["normal", "big", "tiny", "nonfinite"])
    arrays = []
    for t, dt in enumerate(dtypes):
        shape = (B, Lq, H, D) if t == 0 else (B, Lk, HK, D)
        if rng.random() < 0.05:
            shape = shape[:rng.randrange(4)] + shape[rng.randrange(4) + 1:]
        x = np.random.default_rng(rng.randrange(2**32)).standard_normal(shape)
        if dist == "big":
            x *= 1e30
        elif dist == "tiny":
            x *= 1e-40
        elif dist == "nonfinite" and x.size:
            x.flat[rng.randrange(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
        with np.errstate(over="ignore"):
            arrays.append(x.astype(dt))
    paths = []
    for name, arr in zip("qkv", arrays):
        data = npy_bytes(arr)
        if rng.random() < 0.15:
            data = corrupt(rng, data)
        path = os.path.join(folder, name + ".npy")
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    out = os.path.join(folder, "o.npy")
    lse = os.path.join(folder, "lse.npy")
    argv = ["run", "--q", paths[0], "--k", paths[1], "--v", paths[2], "--out", out]
    want_lse = rng.random() < 0.5
    if want_lse:
        argv += ["--lse", rng.choice([lse, lse, out, paths[0], os.path.join(folder, "missing", "l.npy"), "/dev/null"])]
    good_flags = [
        ["--causal"],
        ["--window", "%d,%d" % (rng.randint(-1, 20), rng.randint(-1, 20))],
        ["--scale", rng.choice(["0.125", "3e37", "-1", "2", "1e-30"])],
        ["--precision", rng.choice(["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])],
        ["--precision", "int8", "--int8-scheme", rng.choice(["qattn", "intfa", "sage"])],
        ["--threads", str(rng.choice([0, 1, 2, 3]))],
        ["--isa", rng.choice(["ref", "avx2"])],
    ]
    bad_flags = [
        ["--window", "%d,%d" % (rng.randint(-3, 2), rng.randint(-3, 2))],
        ["--scale", rng.choice(["1e-50", "nan", "inf", "0", "x", "1e39"])],
        ["--precision", rng.choice(["fp64", "", "int4"])],
        ["--int8-scheme", rng.choice(["qattn", "default", "nope"])],
        ["--threads", str(rng.choice([-1, 257, 100000]))],
        ["--isa", rng.choice(["avxvnni", "bogus", ""])],
        ["--backend", rng.choice(["cpu", "cuda", "tpu"])],
        ["--json"], ["--iters", "2"], ["--frobnicate"], ["--heads", "2"], ["--threads"],
    ]
    used = set()
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        choice = rng.choice(good_flags if rng.random() < 0.85 else bad_flags)
        if choice[0] not in used or rng.random() < 0.1:  # a repeated flag now and then
            argv += choice
            used.add(choice[0])
    if rng.random() < 0.03:
        argv[argv.index("--out") + 1] = rng.choice([paths[0], folder, "/dev/null", ""])
    expect = (B, Lq, H, D) if len(arrays[0].shape) == 4 else None
    return argv, expect


def check(r, argv, expect, folder):
    """Returns None if the run behaved, else a description of what went wrong."""
    if r.returncode not in (0, 1, 2):
        return "exit status %d" % r.returncode
    for mark in SANITIZER_MARKS:
        if mark in r.stderr:
            return "sanitizer report"
    out = argv[argv.index("--out") + 1]
    if r.returncode != 0:
        lines = r.stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("qattn run: "):
            return "a failure must print exactly one 'qattn run: ' line, got %d lines" % len(lines)
        leftovers = [p for p in os.listdir(folder) if ".tmp." in p]
        if leftovers:
            return "temporary files left behind: %s" % leftovers
        return None
    if r.stderr:
        return "success with text on stderr"
    o = np.load(out)
    if o.dtype != np.float32 or (expect is not None and o.shape != expect):
        return "output dtype %s shape %s, want float32 %s" % (o.dtype, o.shape, expect)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli", default=os.environ.get("QATTN_CLI", "build/qattn"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=12)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    counts = {}
    deadline = time.monotonic() + args.seconds
    top = tempfile.mkdtemp(prefix="qattn_fuzz_")
    n = 0
    env = dict(os.environ, QATTN_ISA="", QATTN_BACKEND="")
    while time.monotonic() < deadline:
        folder = os.path.join(top, "case%d" % n)
        os.mkdir(folder)
        argv, expect = random_case(rng, folder)
        try:
            r = subprocess.run([args.cli, *argv], capture_output=True, text=True, timeout=60, env=env)
            problem = check(r, argv, expect, folder)
        except subprocess.TimeoutExpired:
            r, problem = None, "no answer within 60 s (a hang?)"
        if problem:
            print("fuzz_run: run %d (seed %d): %s\n  %s %s\n  stderr: %s\n  inputs kept in %s" % (
                n, args.seed, problem, args.cli, " ".join(map(str, argv)), r.stderr[-2000:] if r else "", folder), file=sys.stderr)
            return 1
        counts[r.returncode] = counts.get(r.returncode, 0) + 1
        shutil.rmtree(folder)
        n += 1
    shutil.rmtree(top)
    print("fuzz_run: %d runs in %.0f s (seed %d), exit statuses %s: all clean" % (
        n, args.seconds, args.seed, dict(sorted(counts.items()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
