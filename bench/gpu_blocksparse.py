#!/usr/bin/env python3
"""Block-sparse attention on the GPU (CUDA backend, sm_90a wgmma kernels): time vs density, FP16 and INT8.

    python3 bench/gpu_blocksparse.py --lib build-gpu/libqattn.so [--seqlen 16384] [--heads 16] [--head-dim 128]
        [--block 128] [--densities 1,0.5,0.25,0.1,0.05] [--causal] [--reps 20] [--out DIR]

B1 H16 D128 L 16k by default, Q/K/V ~ N(0, 1) FP16, one random map per head of 128 x 128 blocks with exactly
round(density * nkb) live key blocks in every query-block row (at least one). In the same process and on
the same inputs: 'dense' (no map) is the baseline of each precision; each density is timed with CUDA events
(warm-up, median of --reps; INT8 includes its quantization pass, as a call does). speedup = dense / this,
ideal = 1 / density. Accuracy of each row: relative L2 of the last query block of heads 0 and H-1 against an
FP32 torch reference with the same block mask (FP16 and INT8 alike). Acceptance (issue 17): 10% density
>= 6x faster than dense at L 16k. Writes DIR/gpu_blocksparse.json (DIR: --out, else $OUT, else ./out)."""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_compare import PREC_AUTO, PREC_INT8, QAttn, time_ms  # noqa: E402  (its ctypes loader, CUDA-event timing)


def random_map(H, nqb, nkb, density, gen):
    """uint8 [H, nqb, nkb]: every row exactly max(1, round(density * nkb)) live blocks at random places."""
    n = max(1, min(nkb, round(density * nkb)))
    keys = torch.rand(H, nqb, nkb, generator=gen)
    idx = keys.argsort(dim=-1)[..., :n]
    m = torch.zeros(H, nqb, nkb, dtype=torch.uint8)
    m.scatter_(-1, idx, 1)
    return m


def reference_rows(q, k, v, m, h, rows, bq, bk, causal):
    """FP32 attention of query rows `rows` (a range) of head h (no GQA here) with the block mask m [H, nqb, nkb]."""
    sl = slice(rows.start, rows.stop)
    qs = q[0, sl, h].float()
    ks, vs = k[0, :, h].float(), v[0, :, h].float()
    s = (qs @ ks.T) / (q.shape[-1] ** 0.5)
    L = k.shape[1]
    qi = torch.arange(rows.start, rows.stop, device=q.device)
    kj = torch.arange(L, device=q.device)
    allow = m[h].to(q.device)[(qi // bq)[:, None], (kj // bk)[None, :]] != 0
    if causal:
        allow &= kj[None, :] <= qi[:, None] + (L - q.shape[1])
    s = s.masked_fill(~allow, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ vs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build-gpu/libqattn.so")
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--densities", default="1,0.5,0.25,0.1,0.05")
    ap.add_argument("--precisions", default="fp16,int8")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    L, H, D, bs = a.seqlen, a.heads, a.head_dim, a.block
    nqb = nkb = (L + bs - 1) // bs
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, L, H, D, device="cuda", dtype=torch.float16) for _ in range(3))
    o = torch.empty_like(q)
    qa = QAttn(a.lib)
    dev = torch.cuda.get_device_name()
    print("device %s; B1 L %d H %d D %d, %s, blocks %d x %d, CUDA events median of %d" %
          (dev, L, H, D, "causal" if a.causal else "non-causal", bs, bs, a.reps), flush=True)
    gen = torch.Generator().manual_seed(7)
    maps = {d: random_map(H, nqb, nkb, d, gen) for d in (float(x) for x in a.densities.split(","))}
    rows = range(L - bs, L)
    results = []
    hdr = "| precision | density | map density | ms | TFLOP/s (live) | speedup vs dense | ideal | rel L2 |"
    print(hdr)
    print("|---|---|---|---|---|---|---|---|")
    for prec in a.precisions.split(","):
        pc = PREC_INT8 if prec == "int8" else PREC_AUTO
        p = qa.params(q, k, v, o, a.causal, pc)
        dense_ms, _ = time_ms(lambda: qa.forward(p), reps=a.reps)
        full_flop = 4.0 * L * L * H * D * (0.5 if a.causal else 1.0)
        row = {"precision": prec, "density": "dense", "map_density": 1.0, "ms": dense_ms, "speedup": 1.0,
               "tflops": full_flop / dense_ms / 1e9}
        results.append(row)
        print("| %s | dense | - | %.3f | %.1f | 1.00x | - | - |" % (prec, dense_ms, row["tflops"]), flush=True)
        for d, m in maps.items():
            md = m.cuda().contiguous()
            pb = qa.params(q, k, v, o, a.causal, pc)
            pb.block_mask, pb.block_mask_q, pb.block_mask_k = md.data_ptr(), bs, bs
            pb.block_mask_batch_stride, pb.block_mask_head_stride, pb.block_mask_row_stride = H * nqb * nkb, nqb * nkb, nkb
            try:
                ms, _ = time_ms(lambda: qa.forward(pb), reps=a.reps)
            except RuntimeError as e:
                print("| %s | %.2f | - | refused: %s |" % (prec, d, e), flush=True)
                results.append({"precision": prec, "density": d, "error": str(e)})
                continue
            torch.cuda.synchronize()
            errs = []
            for h in (0, H - 1):
                ref = reference_rows(q, k, v, m, h, rows, bs, bs, a.causal)
                got = o[0, rows.start:rows.stop, h].float()
                errs.append(((got - ref).norm() / ref.norm()).item())
            live = m.float().mean().item()
            if a.causal:  # the live fraction of the causal triangle's blocks is what costs
                tri = torch.tril(torch.ones(nqb, nkb, dtype=torch.bool))
                live = (m.bool() & tri).float().sum().item() / (tri.float().sum().item() * H)
            row = {"precision": prec, "density": d, "map_density": live, "ms": ms, "speedup": dense_ms / ms,
                   "ideal": 1.0 / live, "tflops": full_flop * live / ms / 1e9, "rel_l2": max(errs)}
            results.append(row)
            print("| %s | %.2f | %.4f | %.3f | %.1f | %.2fx | %.1fx | %.2e |" %
                  (prec, d, live, ms, row["tflops"], row["speedup"], row["ideal"], row["rel_l2"]), flush=True)
    verdict = []
    for prec in a.precisions.split(","):
        r10 = [r for r in results if r["precision"] == prec and r["density"] == 0.1 and "ms" in r]
        if r10 and L >= 16384:
            ok = r10[0]["speedup"] >= 6.0
            verdict.append("%s 10%%: %.2fx (%s >= 6x)" % (prec, r10[0]["speedup"], "PASS" if ok else "FAIL"))
    if verdict:
        print("acceptance (issue 17, L %d): %s" % (L, "; ".join(verdict)))
    with open(os.path.join(a.out, "gpu_blocksparse.json"), "w") as f:
        json.dump({"device": dev, "seqlen": L, "heads": H, "head_dim": D, "block": bs, "causal": a.causal, "reps": a.reps,
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
