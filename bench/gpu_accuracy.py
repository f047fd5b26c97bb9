#!/usr/bin/env python3
"""INT8 accuracy on the GPU over the input distributions of `qattn accuracy` (the same constructions,
drawn with torch), against an FP64 reference, with the CPU's INT8 on the same FP16 inputs in the same
run: rel L1 = sum |o - ref| / sum |ref| over the whole output. --int4: precision int4 too (GPU and CPU).

    PYTHONPATH=python QATTN_LIBRARY=build-gpu/libqattn.so python3 bench/gpu_accuracy.py [--lens 1024,4096]

Shapes: B 1, H 8, HK 2, D 128, causal and not. Inputs: normal, outlier (K channels 5 mod 32 x12 + 10),
sink (shared direction u; key 0 = 1.5 u, its value x0.05), heads (Q/K x0.3..3, V x0.01..100 per head),
rotary (4 channel pairs of K x8 + 6, Q's x2, then RoPE), sinkout (sink plus outlier channels)."""
import argparse
import math

import torch

import qattn


def rope(x):
    """Rotate-half RoPE on [B, L, H, D] with the token position (float64, as the C generator)."""
    B, L, H, D = x.shape
    half = D // 2
    pos = torch.arange(L, dtype=torch.float64).view(1, L, 1, 1)
    th = pos * torch.pow(10000.0, -2.0 * torch.arange(half, dtype=torch.float64) / D).view(1, 1, 1, half)
    a, b = x[..., :half].double(), x[..., half:].double()
    return torch.cat([a * th.cos() - b * th.sin(), a * th.sin() + b * th.cos()], -1).float()


def make(which, L, H=8, HK=2, D=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, L, n, D, generator=g) for n in (H, HK, HK))
    if which in ("outlier", "sinkout"):
        k[..., 5::32] = k[..., 5::32] * 12 + 10
    if which == "rotary":
        for c in (3, 11, D // 2 - 1, D // 2 - 5):
            for cc in (c, c + D // 2):
                k[..., cc] = k[..., cc] * 8 + 6
                q[..., cc] *= 2
        q, k = rope(q), rope(k)
    if which in ("sink", "sinkout"):
        u = torch.randn(H, D, generator=g)
        q = 0.6 * q + u
        k[:, 0] = 1.5 * u[:: H // HK]
        v[:, 0] *= 0.05
        if which == "sinkout":
            k[:, 0, :, 5::32] = k[:, 0, :, 5::32] * 12 + 10
    if which == "heads":
        s = 0.3 * torch.pow(10.0, torch.arange(H) / (H - 1))
        x = torch.arange(HK) / (HK - 1)
        q = q * s.view(1, 1, H, 1)
        k = k * (0.3 * torch.pow(10.0, x)).view(1, 1, HK, 1)
        v = v * (0.01 * torch.pow(10.0, 4 * x)).view(1, 1, HK, 1)
    return q.half(), k.half(), v.half()


def reference(q, k, v, causal):
    """FP64 attention on [B, L, H, D] inputs (GQA by repeating K/V), bottom-right causal."""
    H, HK = q.shape[2], k.shape[2]
    qq, kk, vv = (t.double().transpose(1, 2) for t in (q, k, v))
    kk, vv = kk.repeat_interleave(H // HK, 1), vv.repeat_interleave(H // HK, 1)
    s = qq @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        Lq, Lk = s.shape[-2], s.shape[-1]
        i = torch.arange(Lq, device=s.device).view(-1, 1)
        j = torch.arange(Lk, device=s.device).view(1, -1)
        s = s.masked_fill(j > i + Lk - Lq, float("-inf"))
    return (torch.softmax(s, -1) @ vv).transpose(1, 2)


def rel_l1(o, ref):
    return float((o.double() - ref).abs().sum() / ref.abs().sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", default="1024,4096")
    ap.add_argument("--inputs", default="normal,outlier,sink,heads,rotary,sinkout")
    ap.add_argument("--int4", action="store_true", help="also precision int4 on the GPU and the CPU")
    a = ap.parse_args()
    extra = " GPU int4 | CPU int4 (same inputs) |" if a.int4 else ""
    print("| L | causal | input | GPU int8 | CPU int8 (same inputs) | GPU fp16 |" + extra)
    print("| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if a.int4 else ""))
    for L in (int(x) for x in a.lens.split(",")):
        for causal in (False, True):
            for which in a.inputs.split(","):
                q, k, v = make(which, L)
                ref = reference(q.cuda(), k.cuda(), v.cuda(), causal)
                og = qattn.attention(q.cuda(), k.cuda(), v.cuda(), causal=causal, precision="int8")
                of = qattn.attention(q.cuda(), k.cuda(), v.cuda(), causal=causal)
                oc = qattn.attention(q, k, v, causal=causal, precision="int8")
                cols = ""
                if a.int4:
                    o4g = qattn.attention(q.cuda(), k.cuda(), v.cuda(), causal=causal, precision="int4")
                    o4c = qattn.attention(q, k, v, causal=causal, precision="int4")
                    cols = " %.3e | %.3e |" % (rel_l1(o4g, ref), rel_l1(o4c.cuda(), ref))
                torch.cuda.synchronize()
                print("| %d | %d | %s | %.3e | %.3e | %.3e |" % (L, causal, which, rel_l1(og, ref), rel_l1(oc.cuda(), ref), rel_l1(of, ref)) + cols,
                      flush=True)


if __name__ == "__main__":
    main()
