#!/usr/bin/env python3
"""Same-process A/B of the INT8 quantization pass (dev): several libqattn builds loaded side by side
(RTLD_LOCAL), alternated per shape and round on the same N(0,1) inputs. Per library: the pass's device time
(the i8q_ kernels, torch profiler), the fused kernel alone, INT8 end to end (CUDA events), and whether its
output is bitwise the first library's; SDPA cuDNN FP16 once per shape for scale.

    python3 dev/gpu/quant_pass_ab.py NAME=LIB [NAME=LIB ...] [--lens 1024,4096,16384] [--rounds 2] [--causal] [--sink]

--sink: bench/gpu_accuracy.py's attention sink in every sequence (key 0 along a direction u that every
query shares, its value row x0.05), so the INT8 path's fixed V rows run."""
import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from gpu_compare import PREC_INT8, QAttn, kernel_ms, kernels_per_call_ms, time_ms  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("libs", nargs="+")
    ap.add_argument("--lens", default="1024,4096,16384")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--dtype", default="f16", choices=("f16", "bf16"))
    ap.add_argument("--sink", action="store_true")
    args = ap.parse_args()
    libs = [(x.split("=", 1)[0], QAttn(x.split("=", 1)[1])) for x in args.libs]
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    torch.manual_seed(0)
    print("| L | causal | lib | pass ms (rounds) | fused kernel ms | i8 all ms | i8 all TOPS | cuDNN FP16 TFLOP/s | i8 all / cuDNN | output = %s |"
          % libs[0][0])
    print("|---|---|---|---|---|---|---|---|---|---|")
    for L in [int(x) for x in args.lens.split(",")]:
        B, H, D = 16384 // L, 16, 128
        q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=dt) for _ in range(3))
        if args.sink:
            u = torch.randn(H, D, device="cuda", dtype=dt)
            q = 0.6 * q + u
            k[:, 0] = 1.5 * u
            v[:, 0] *= 0.05
        flops = 4.0 * B * H * L * L * D / (2 if args.causal else 1)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            cud, _ = time_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=args.causal), reps=20)
        res = {n: dict(p=[], f=[], a=[]) for n, _ in libs}
        outs = {}
        for r in range(args.rounds):
            for n, qa in libs:
                o = torch.empty_like(q)
                p = qa.params(q, k, v, o, args.causal, PREC_INT8)
                res[n]["p"].append(kernels_per_call_ms(lambda: qa.forward(p), "i8q_"))
                res[n]["f"].append(kernel_ms(lambda: qa.forward(p), "i8q_fused"))
                res[n]["a"].append(time_ms(lambda: qa.forward(p), reps=20)[0])
                outs[n] = o
        ref = outs[libs[0][0]]
        for n, _ in libs:
            a = statistics.median(res[n]["a"])
            print("| %d | %s | %s | %s | %.3f | %.3f | %.0f | %.0f | %.2f | %s |" % (
                L, "yes" if args.causal else "no", n, " / ".join("%.3f" % x for x in res[n]["p"]),
                statistics.median(res[n]["f"]), a, flops / a / 1e9, flops / cud / 1e9, cud / a,
                "bitwise" if torch.equal(outs[n], ref) else "DIFFERS (max %.3g)" % (outs[n].float() - ref.float()).abs().max().item()))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
