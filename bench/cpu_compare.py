"""qattn on the CPU against torch.nn.functional.scaled_dot_product_attention on the CPU, same
inputs, same process, same thread count; prints one table (GFLOP/s and the ratio) and, with
--json, one JSON object per line.

    PYTHONPATH=python QATTN_LIBRARY=build/libqattn.so python3 bench/cpu_compare.py --threads 2

FLOPs: 4 * B * H * D * (visible query/key pairs), the FlashAttention convention with causal
counted exactly. Both sides get FP32 inputs in torch SDPA's [B, H, L, D] layout (qattn reads
it through strides, no copy). Times: median of --iters runs after one warm-up.
"""
import argparse
import json
import statistics
import time

import torch
import qattn

DEFAULT_SHAPES = [  # (B, H, HK, Lq, Lk, D, causal)
    (1, 8, 8, 1024, 1024, 64, False),
    (1, 8, 8, 1024, 1024, 128, False),
    (1, 8, 8, 2048, 2048, 128, False),
    (1, 8, 8, 2048, 2048, 128, True),
    (1, 32, 8, 1, 32768, 128, False),
]


def visible_pairs(lq, lk, causal):
    if not causal:
        return lq * lk
    return sum(max(0, min(lk, i + lk - lq + 1)) for i in range(lq))


def median_seconds(fn, iters):
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.json:
        print(f"qattn {qattn.__version__} ({qattn.info()['isa']}) vs torch {torch.__version__} SDPA, CPU, {args.threads} threads, fp32")
        print(f"{'B':>2} {'H':>3} {'HK':>3} {'Lq':>6} {'Lk':>6} {'D':>4} {'causal':>6} | {'qattn GF/s':>10} {'torch GF/s':>10} {'ratio':>6} {'max|diff|':>9}")
    for b, h, hk, lq, lk, d, causal in DEFAULT_SHAPES:
        q = torch.randn(b, h, lq, d)
        k = torch.randn(b, hk, lk, d)
        v = torch.randn(b, hk, lk, d)
        # SDPA gets K/V expanded to H heads (copied here, outside the timed region); qattn reads the GQA cache.
        ke = k.repeat_interleave(h // hk, dim=1)
        ve = v.repeat_interleave(h // hk, dim=1)
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, ke, ve, is_causal=causal and lq == lk)
        if causal and lq != lk:
            raise SystemExit("causal Lq != Lk differs between SDPA (top-left) and qattn (bottom-right)")
        ours = lambda: qattn.attention(q, k, v, causal=causal, layout="bhsd", threads=args.threads)
        flops = 4.0 * b * h * d * visible_pairs(lq, lk, causal)
        t_ours = median_seconds(ours, args.iters)
        t_torch = median_seconds(sdpa, args.iters)
        diff = (ours() - sdpa()).abs().max().item()
        row = dict(batch=b, heads=h, kv_heads=hk, seqlen_q=lq, seqlen_k=lk, head_dim=d, causal=causal,
                   qattn_gflops=flops / t_ours / 1e9, torch_gflops=flops / t_torch / 1e9,
                   ratio=t_torch / t_ours, max_abs_diff=diff, threads=args.threads)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{b:>2} {h:>3} {hk:>3} {lq:>6} {lk:>6} {d:>4} {str(causal):>6} | {row['qattn_gflops']:>10.1f} "
                  f"{row['torch_gflops']:>10.1f} {row['ratio']:>6.2f} {diff:>9.1e}")


if __name__ == "__main__":
    main()
