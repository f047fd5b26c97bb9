#!/usr/bin/env python3
"""Side-by-side timing of the INT8 attention kernel from several builds of qattn in one process.

For each standard D 128 shape (docs/benchmarks.md) (B*L = 16k tokens, H*D = 2048, N(0,1) FP16 inputs):
the INT8 attention kernel alone (torch profiler, median of 20) of every library given, in
alternating order, twice (the spread between the two rounds is the noise floor), and SDPA's
FlashAttention-2 and cuDNN (FP16) backends in the same run; the outputs of the builds are compared with the first one.

Usage: python3 dev/gpu/gpu_i8_ab.py --lib new=build-gpu/libqattn.so --lib base=build-base/libqattn.so [--shapes 4k,4kc,16k,16kc]
--f16: the FP16 forward instead (precision AUTO: the wgmma kernel on compute capability 9.0), with SDPA's
cuDNN backend timed too, and --f16-mma adds the first library's mma.sync kernel (the cuda_kernels option mma)
as one more contender.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))  # gpu_compare
from gpu_compare import PREC_AUTO, PREC_INT8, QAttn, kernel_ms, time_ms  # noqa: E402

SHAPES = {"1k": (1024, False), "1kc": (1024, True), "4k": (4096, False), "4kc": (4096, True), "16k": (16384, False), "16kc": (16384, True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", action="append", required=True, help="NAME=PATH, first one is the reference for the output comparison")
    ap.add_argument("--shapes", default="4k,4kc,16k,16kc")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--f16", action="store_true", help="time the FP16 forward (and SDPA cuDNN) instead of the INT8 kernel")
    ap.add_argument("--f16-mma", action="store_true", help="with --f16: the first library's mma.sync kernel as one more contender")
    args = ap.parse_args()
    libs = [(s.split("=", 1)[0], QAttn(s.split("=", 1)[1])) for s in args.lib]
    if args.f16 and args.f16_mma:
        libs.append(("mma", QAttn(args.lib[0].split("=", 1)[1], "mma")))
    prec, kname, unit = (PREC_AUTO, "fwd_f16", "TFLOP/s") if args.f16 else (PREC_INT8, "fwd_i8", "TOPS")
    D, rows = 128, []
    for sname in args.shapes.split(","):
        L, causal = SHAPES[sname]
        B, H = 16384 // L, 2048 // D
        q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=torch.float16) for _ in range(3))
        flops = 4.0 * B * H * L * L * D / (2 if causal else 1)
        row = dict(shape=sname, B=B, L=L, H=H, causal=causal)
        outs, params = {}, {}
        for name, qa in libs:
            outs[name] = torch.full_like(q, float("nan"))
            params[name] = qa.params(q, k, v, outs[name], causal, prec)
        for rnd in range(2):
            for name, qa in (libs if rnd == 0 else libs[::-1]):
                row.setdefault(name, []).append(flops / (kernel_ms(lambda: qa.forward(params[name]), kname) * 1e-3) / 1e12)
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            row["fa2"] = flops / (time_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))[0] * 1e-3) / 1e12
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            row["cudnn"] = flops / (time_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))[0] * 1e-3) / 1e12
        for name, qa in libs:
            qa.forward(params[name])
        torch.cuda.synchronize()
        ref = outs[libs[0][0]].float()
        # relative L1 over whole tensors of two heads (all batches) against an FP32 reference
        r32 = torch.cat([F.scaled_dot_product_attention(qt[:, h:h + 1].float(), kt[:, h:h + 1].float(), vt[:, h:h + 1].float(), is_causal=causal)
                         for h in range(2)], 1).transpose(1, 2)
        for name, _ in libs:
            o = outs[name].float()
            row[name + "_nonfinite"] = int((~torch.isfinite(o)).sum().item())
            row[name + "_maxdiff"] = float(((o - ref).abs().max() / ref.abs().max()).item())
            row[name + "_rel_l1"] = float(((o[:, :, :2] - r32).abs().sum() / r32.abs().sum()).item())
        del r32
        rows.append(row)
        print("done", row, flush=True)
        del q, k, v, outs, params
        torch.cuda.empty_cache()
    names = [n for n, _ in libs]
    print("\n%s kernel %s (two rounds, alternating order) and / SDPA FA2 (same run), device %s" % ("FP16" if args.f16 else "INT8", unit, torch.cuda.get_device_name()))
    print("SDPA cuDNN FP16 (same run): " + ", ".join("%s %.0f (best qattn / cuDNN: %s)" % (r["shape"], r["cudnn"], " ".join(
            "%s %.2f" % (n, max(r[n]) / r["cudnn"]) for n in names)) for r in rows))
    print("| shape | " + " | ".join("%s %s | %s /FA2" % (n, unit, n) for n in names) + " | FA2 | max|d|/max|o| vs %s | rel L1 | nonfinite |" % names[0])
    print("|---|" + "---|---|" * len(names) + "---|---|---|---|")
    for r in rows:
        cells = []
        for n in names:
            cells.append("%.0f / %.0f" % tuple(r[n]))
            cells.append("%.2f" % (max(r[n]) / r["fa2"]))
        print("| %s | %s | %.0f | %s | %s | %s |" % (r["shape"], " | ".join(cells), r["fa2"], " ".join("%.1e" % r[n + "_maxdiff"] for n in names[1:]),
                                                   " ".join("%.4e" % r[n + "_rel_l1"] for n in names), " ".join(str(r[n + "_nonfinite"]) for n in names)))
    with open(os.path.join(args.out, "gpu_i8_ab.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
