"""Decode over qattn's paged KV cache (INT8 and FP16 storage) against torch SDPA decode on the CPU,
same process, same thread count, alternated: one new token (Lq 1) of B sequences over kv_len cached
tokens, GQA (H query heads, HK kv heads).

    PYTHONPATH=python QATTN_LIBRARY=build/libqattn.so python3 bench/cpu_kv_decode.py --threads 2

torch gets K/V as [B, H, L, D] tensors in the dtype named (fp32 and bf16 by default), expanded to
the H query heads outside the timed region (as bench/cpu_compare.py does; SDPA with enable_gqa=True
took about as long in one loaded run); qattn reads its GQA cache (codes + scales) once per group. Times: median and best of
--iters calls after one warm-up, the rows alternated --rounds times. The ratio column is torch /
qattn of the medians. MB: bytes each side reads per call (K and V once).
"""
import argparse
import statistics
import time

import numpy as np
import torch
import qattn


def timed(fn, iters):
    fn()
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--kv-len", type=int, default=32768)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--isa", default=None, help="qattn ISA (default: the best available)")
    ap.add_argument("--torch-dtypes", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, H, HK, D, L = args.batch, args.heads, args.kv_heads, args.head_dim, args.kv_len
    k = torch.randn(B, L, HK, D)
    v = torch.randn(B, L, HK, D)
    q = torch.randn(B, 1, H, D)
    caches = {}
    for dt in ("int8", "fp16"):
        c = qattn.KVCache(kv_heads=HK, head_dim=D, block_size=16, dtype=dt, capacity_blocks=B * ((L + 15) // 16), max_seqs=B,
                          threads=args.threads, isa=args.isa)
        for b in range(B):
            c.append(b, k[b].numpy(), v[b].numpy())
        caches[dt] = c
    ids = list(range(B))
    runs = {}
    for dt, c in caches.items():
        runs["qattn " + dt + " cache"] = (lambda c=c: c.decode(q, ids), c.nbytes / 1e6)
    tdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    qt = q.transpose(1, 2)  # [B, H, 1, D]
    for name in args.torch_dtypes.split(","):
        kt = k.transpose(1, 2).repeat_interleave(H // HK, dim=1).contiguous().to(tdt[name])
        vt = v.transpose(1, 2).repeat_interleave(H // HK, dim=1).contiguous().to(tdt[name])
        qn = qt.to(tdt[name])
        sdpa = lambda qn=qn, kt=kt, vt=vt: torch.nn.functional.scaled_dot_product_attention(qn, kt, vt)
        runs["torch sdpa " + name] = (sdpa, 2 * kt.numel() * kt.element_size() / 1e6)
    times = {n: [] for n in runs}
    for _ in range(args.rounds):
        for n, (fn, _mb) in runs.items():
            times[n] += timed(fn, args.iters)
    ref = caches["int8"].decode(q, ids).float()
    o32 = torch.nn.functional.scaled_dot_product_attention(qt, k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True).transpose(1, 2)
    print(f"qattn {qattn.__version__} ({qattn.info()['isa']}) vs torch {torch.__version__}, CPU, {args.threads} threads; "
          f"B {B} H {H} HK {HK} D {D} kv {L}; int8 cache vs torch fp32 max|diff| {float((ref - o32).abs().max()):.1e}")
    med_i8 = statistics.median(times["qattn int8 cache"])
    print(f"{'':<22} {'median ms':>10} {'best ms':>9} {'MB read':>8} {'GB/s':>7} {'vs int8':>8}")
    for n, (fn, mb) in runs.items():
        med, best = statistics.median(times[n]), min(times[n])
        print(f"{n:<22} {med * 1e3:>10.3f} {best * 1e3:>9.3f} {mb:>8.1f} {mb / 1e3 / med:>7.2f} {med / med_i8:>7.2f}x")
    for c in caches.values():
        c.close()


if __name__ == "__main__":
    main()
