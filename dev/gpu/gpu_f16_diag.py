#!/usr/bin/env python3
"""Where a forward kernel goes wrong: structured inputs that separate its stages, against torch (FP32).

Runs qattn FP16 (the kernel the context chooses; --mma: the mma.sync one) on
  uniform:  K = 0 (every score equal): O = the mean of the visible V rows; tests loads of V and P V only
  onehot:   V[key, d] = [key == d] over 128 keys: O = P itself; tests S, the softmax and the P layout
  random:   N(0, 1) at L 128, 200, 1000 (one tile, a tail, many tiles), causal and not, B 2, H 2, GQA 2:1, D 128, 64, 256 and 96
and prints, per case, the relative error and, when it is large, the error per 8-row group and per
8-column group of the first (batch, head) (a wrong descriptor or fragment layout shows as a pattern).
Usage: python3 dev/gpu/gpu_f16_diag.py --lib build-gpu/libqattn.so [--mma]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))  # gpu_compare
from gpu_compare import QAttn  # noqa: E402


def ref(q, k, v, causal):
    """[B, L, H, D] -> [B, L, H, D] in FP32, bottom-right causal (Lq == Lk here), GQA by repetition."""
    h, hk = q.shape[2], k.shape[2]
    qt, kt, vt = (t.float().transpose(1, 2) for t in (q, k, v))
    kt = kt.repeat_interleave(h // hk, 1)
    vt = vt.repeat_interleave(h // hk, 1)
    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).transpose(1, 2)


def report(name, o, r):
    d = (o.float() - r).abs()
    rel = (d.sum() / r.abs().sum().clamp_min(1e-30)).item()
    nonfinite = int((~torch.isfinite(o)).sum().item())
    bad = rel > 5e-3 or nonfinite
    print("%-5s %-44s rel L1 %.2e  max abs %.2e  nonfinite %d" % ("BAD" if bad else "ok", name, rel, d.max().item(), nonfinite))
    if bad:
        e = d[0, :, 0].nan_to_num(1e9)  # [L, D] of batch 0, head 0
        L = e.shape[0]
        rows = [e[i:i + 8].max().item() for i in range(0, min(L, 256), 8)]
        cols = [e[:, j:j + 8].max().item() for j in range(0, e.shape[1], 8)]
        print("      max err per 8 rows (first 256):", " ".join("%.0e" % x for x in rows))
        print("      max err per 8 cols:            ", " ".join("%.0e" % x for x in cols))
        print("      o[0, :4, 0, :8]  ", o[0, :4, 0, :8].float().cpu().numpy().round(3).tolist())
        print("      ref[0, :4, 0, :8]", r[0, :4, 0, :8].cpu().numpy().round(3).tolist())
    return not bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build-gpu/libqattn.so")
    ap.add_argument("--mma", action="store_true")
    args = ap.parse_args()
    qa = QAttn(args.lib, "mma" if args.mma else "auto")
    torch.manual_seed(0)
    dev, dt, D = "cuda", torch.float16, 128
    ok = True

    def run(q, k, v, causal):
        o = torch.full_like(q, float("nan"))
        qa.forward(qa.params(q, k, v, o, causal))
        torch.cuda.synchronize()
        return o

    for L, causal in ((128, False), (128, True), (1000, False)):
        q = torch.randn(1, L, 1, D, device=dev, dtype=dt)
        k = torch.zeros(1, L, 1, D, device=dev, dtype=dt)
        v = torch.randn(1, L, 1, D, device=dev, dtype=dt)
        ok &= report("uniform L %d causal %d" % (L, causal), run(q, k, v, causal), ref(q, k, v, causal))
    for causal in (False, True):
        L = 128
        q = torch.randn(1, L, 1, D, device=dev, dtype=dt)
        k = torch.randn(1, L, 1, D, device=dev, dtype=dt)
        v = torch.eye(L, D, device=dev, dtype=dt).view(1, L, 1, D)
        ok &= report("onehot L %d causal %d" % (L, causal), run(q, k, v, causal), ref(q, k, v, causal))
    for hd, L in ((128, 128), (128, 200), (128, 1000), (64, 200), (64, 1000), (256, 200), (256, 1000), (96, 200), (96, 1000)):
        for causal in (False, True):
            q = torch.randn(2, L, 2, hd, device=dev, dtype=dt)
            k = torch.randn(2, L, 1, hd, device=dev, dtype=dt)
            v = torch.randn(2, L, 1, hd, device=dev, dtype=dt)
            ok &= report("random D %d B 2 H 2 HK 1 L %d causal %d" % (hd, L, causal), run(q, k, v, causal), ref(q, k, v, causal))
    print("DIAG", "PASSED" if ok else "FAILED")


if __name__ == "__main__":
    main()
