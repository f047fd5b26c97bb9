"""Block-sparse attention on the CPU: time vs density, one thread, CPU time (time.process_time), best of N.

    PYTHONPATH=python QATTN_LIBRARY=build/libqattn.so python3 bench/cpu_blocksparse.py [--seqlen 16384] [--reps 3]

B1 H8 D128 (non-causal), random maps (qattn.block_mask("random"): exact density per row) of 64 x 64 blocks;
FP32 and INT8 (default scheme). 'dense' runs without a map; speed-up = dense time / this time. Each row
also checks the output against the FP64 oracle on the last 64 query rows (relative L2)."""
import argparse
import time

import numpy as np

import qattn


def cpu_best(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--densities", default="1,0.5,0.25,0.1,0.05")
    ap.add_argument("--precisions", default="fp32,int8")
    a = ap.parse_args()
    L, H, D = a.seqlen, a.heads, a.head_dim
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, L, H, D), dtype=np.float32) for _ in range(3))
    tail = 64
    print("qattn %s, %s; L %d H %d D %d, blocks %d x %d, 1 thread, CPU time best of %d" %
          (qattn.__version__, "isa " + qattn.info()["isa"], L, H, D, a.block, a.block, a.reps))
    print("%-5s %-8s %10s %9s %10s" % ("prec", "density", "cpu_s", "speedup", "rel_l2"))
    for prec in a.precisions.split(","):
        dense_s, _ = cpu_best(lambda: qattn.attention(q, k, v, precision=prec, threads=1), a.reps)
        print("%-5s %-8s %10.3f %8.2fx %10s" % (prec, "dense", dense_s, 1.0, "-"), flush=True)
        for d in (float(x) for x in a.densities.split(",")):
            m = qattn.block_mask("random", H, L, L, block_size=a.block, density=d, seed=7)
            s, o = cpu_best(lambda: qattn.attention(q, k, v, precision=prec, threads=1, block_mask=m, block_size=a.block), a.reps)
            # oracle on the last `tail` rows: the map's rows from (L - tail) / block on
            sub = m[:, (L - tail) // a.block:, :]
            ref = qattn.oracle(q[:, L - tail:], k, v, block_mask=sub, block_size=a.block)
            err = np.linalg.norm(o[:, L - tail:] - ref) / np.linalg.norm(ref)
            print("%-5s %-8.3f %10.3f %8.2fx %10.2e" % (prec, m.mean(), s, dense_s / s, err), flush=True)


if __name__ == "__main__":
    main()
