"""softcap and ALiBi on the CUDA FP16/BF16 path: time of the plain call against softcap, ALiBi and both (the
mma.sync kernel's MODS instantiation; the plain call also on the mma.sync kernel, the wgmma one's head dims
too, so the ratio is the modifiers' own cost), and each output against an FP32 torch reference that applies
qattn.h's formula (s = softcap * tanh(scale q.k / softcap) - slope_h |i + Lk - Lq - j|, then the mask).
Usage: python3 bench/gpu_mods.py --lib build-gpu/libqattn.so [--dims 64,128] [--lens 4096] [--reps 20]
Shapes: B = 16384 // L, H = 2048 // D, Lq = Lk = L, causal and not, plus one Lq != Lk causal case per D."""
import argparse
import ctypes as C
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_compare import QAttn, time_ms  # noqa: E402


def reference(q, k, v, causal, scale, softcap, slopes, heads):
    """FP32 reference for the first `heads` heads of batch 0: [Lq, heads, D]."""
    Lq, Lk = q.shape[1], k.shape[1]
    out = []
    i = torch.arange(Lq, device="cuda").view(-1, 1)
    j = torch.arange(Lk, device="cuda").view(1, -1)
    for h in range(heads):
        s = (q[0, :, h].float() @ k[0, :, h].float().T) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        if slopes is not None:
            s = s - slopes[h].float() * (i + Lk - Lq - j).abs().float()
        if causal:
            s = s.masked_fill(j > i + Lk - Lq, float("-inf"))
        out.append(torch.softmax(s, -1) @ v[0, :, h].float())
    return torch.stack(out, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build-gpu/libqattn.so")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--lens", default="4096")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    qa = QAttn(args.lib)
    qm = QAttn(args.lib, "mma")
    dev = torch.cuda.get_device_name()
    rows = []
    for D in [int(x) for x in args.dims.split(",")]:
        for L in [int(x) for x in args.lens.split(",")]:
            for (Lq, causal) in ((L, False), (L, True), (L // 4, True)):
                B, H = max(1, 16384 // L), 2048 // D
                q = torch.randn(B, Lq, H, D, device="cuda", dtype=torch.float16)
                k = torch.randn(B, L, H, D, device="cuda", dtype=torch.float16)
                v = torch.randn(B, L, H, D, device="cuda", dtype=torch.float16)
                slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], device="cuda", dtype=torch.float32)
                pairs = Lq * (L - Lq) + Lq * (Lq + 1) / 2 if causal else Lq * L  # bottom-right aligned causal, Lq <= Lk
                flops = 4.0 * B * H * pairs * D
                row = dict(D=D, Lq=Lq, Lk=L, causal=causal)
                for name, ctx, softcap, alibi in (("plain", qa, 0.0, False), ("plain_mma", qm, 0.0, False), ("softcap", qa, 30.0, False),
                                                  ("alibi", qa, 0.0, True), ("both", qa, 30.0, True)):
                    o = torch.empty_like(q)
                    p = ctx.params(q, k, v, o, causal)
                    p.softcap = softcap
                    if alibi:
                        p.alibi_slopes, p.alibi_batch_stride = slopes.data_ptr(), 0
                    try:
                        ms, _ = time_ms(lambda: ctx.forward(p), reps=args.reps)
                        ctx.forward(p)
                        torch.cuda.synchronize()
                        ref = reference(q, k, v, causal, 1.0 / math.sqrt(D), softcap, slopes if alibi else None, 2)
                        got = o[0, :, :2].float()
                        err = ((got - ref).abs().sum() / ref.abs().sum()).item()
                        bad = int((~torch.isfinite(o)).sum().item())
                    except Exception as e:  # noqa: BLE001
                        print("%s D%d Lq%d failed: %s" % (name, D, Lq, e), file=sys.stderr)
                        ms, err, bad = float("nan"), float("nan"), -1
                    row[name] = (ms, flops / (ms * 1e-3) / 1e12, err, bad)
                rows.append(row)
                print("done", row, flush=True)
                del q, k, v
                torch.cuda.empty_cache()
    print("\nsoftcap 30 / ALiBi [H] on the FP16 path, TFLOP/s (ratio to the plain mma.sync call), rel L1 vs FP32; device %s" % dev)
    hdr = ("D", "Lq", "Lk", "causal", "plain", "plain mma", "softcap", "alibi", "both", "L1 plain", "L1 softcap", "L1 alibi", "L1 both", "nonfinite")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        base = r["plain_mma"][1]
        cells = [r["D"], r["Lq"], r["Lk"], "yes" if r["causal"] else "no", "%.0f" % r["plain"][1], "%.0f" % base]
        cells += ["%.0f (%.2f)" % (r[n][1], r[n][1] / base) for n in ("softcap", "alibi", "both")]
        cells += ["%.1e" % r[n][2] for n in ("plain", "softcap", "alibi", "both")]
        cells.append(sum(max(r[n][3], 0) for n in ("plain", "plain_mma", "softcap", "alibi", "both")))
        print("| " + " | ".join(str(x) for x in cells) + " |")


if __name__ == "__main__":
    main()
