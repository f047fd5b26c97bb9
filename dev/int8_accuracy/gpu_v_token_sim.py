#!/usr/bin/env python3
"""Float64 emulation of the GPU INT8 kernels' V and P quantization, to choose how V per token enters
the GPU kernels before writing them. Q/K per token (K mean subtracted, no channel transforms), V mean
subtracted, 128-key tiles, P as u8 codes; rel L1 vs FP64 on bench/gpu_accuracy.py's inputs (B 1, H 8,
HK 2, D 128). Modes:
  chan_tile  the kernels today: V per channel and tile, P = rn(255 p) against the tile row max of s,
             row sum = sum of the codes;
  cpu        the CPU's P_U8_VSCALED: V per token, w = p sv_j coded against the row max of w, exact sum p;
  nrmC       the planned GPU form: V per token with scale S_t / M_j (M_j = clamp(floor(C amax_t / a_j),
             C, 255 if C < 256 else 65535), an integer per key), t_j = s_j + log2(C / M_j), codes
             rn(255 exp2(t_j - max t)), row sum = sum of codes x M_j (dp4a / dp2a: exact),
             P V scaled by the tile's S_t only;
  tok_mC / tok_exact / tok_pow2: the same without the row max of t (codes against the max of s):
             rejected, they lose P resolution on N(0,1).
Usage: PYTHONPATH=python python3 dev/int8_accuracy/gpu_v_token_sim.py L inputs modes
  e.g. 1024 normal,sink,heads chan_tile,nrm2048,cpu"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from gpu_accuracy import make, reference, rel_l1  # noqa: E402

torch.set_default_dtype(torch.float64)
BN = 128
FIX_C = 12 / 64**2  # chan_fix: a row is fixed when sum_c s_c^2 / 12 > (1/64)^2 |v_j|^2


def q8(x, amax):
    s = amax / 127
    return torch.where(s > 0, torch.round(x / torch.where(s > 0, s, 1)).clamp(-127, 127), 0), s


def v_token_ratios(a, mode, nt, emax=7):
    """Per key ratio r_j = scale_j / tile max (rewrites a to the scale actually used x 127)."""
    r = torch.ones_like(a)
    for t in range(nt):
        at = a[t * BN:(t + 1) * BN]
        amx = at.max()
        if mode == "tok_pow2":
            rr = 2.0 ** -torch.floor(torch.log2(amx / at.clamp_min(1e-300))).clamp(0, emax)
        elif mode == "tok_exact":
            rr = (at / amx).clamp_min(2.0**-16)
        else:
            C = int(mode[5:]) if mode.startswith("tok_m") else int(mode[3:])
            M = torch.floor(C * amx / at.clamp_min(1e-300)).clamp(C, 255 if C < 256 else 65535)
            rr = C / M
        r[t * BN:(t + 1) * BN] = rr
        a[t * BN:(t + 1) * BN] = amx * rr
    return r


def attn(q, k, v, causal, mode):
    L, H, D = q.shape
    HK = k.shape[1]
    G = H // HK
    out = torch.zeros(L, H, D)
    for hk in range(HK):
        K, V = k[:, hk], v[:, hk]
        K = K - K.mean(0)
        vm = V.mean(0)
        Vc = V - vm
        kc, sk = q8(K, K.abs().amax(1, keepdim=True))
        Lk = K.shape[0]
        nt = (Lk + BN - 1) // BN
        if mode in ("chan_tile", "chan_fix"):
            Vdq = torch.cat([(lambda c, s: c * s)(*q8(Vc[t * BN:(t + 1) * BN], Vc[t * BN:(t + 1) * BN].abs().amax(0))) for t in range(nt)])
            E = torch.cat([((Vc[t * BN:(t + 1) * BN].abs().amax(0) / 127) ** 2).sum().expand(min(BN, Lk - t * BN)) for t in range(nt)])
            fix = (E > FIX_C * (Vc * Vc).sum(1)).nonzero().flatten() if mode == "chan_fix" else torch.zeros(0, dtype=torch.long)
            R = (Vc - Vdq)[fix]
        else:
            a = Vc.abs().amax(1)
            r = None if mode == "cpu" else v_token_ratios(a, mode, nt)
            c, s = q8(Vc, a.unsqueeze(1))
            Vdq = c * s
        for g in range(G):
            h = hk * G + g
            qc, sq = q8(q[:, h], q[:, h].abs().amax(1, keepdim=True))
            S = (qc @ kc.T) * sq * sk.T / math.sqrt(D)
            if causal:
                i, j = torch.arange(L).view(-1, 1), torch.arange(Lk).view(1, -1)
                S = S.masked_fill(j > i + Lk - L, -math.inf)
            num, den = torch.zeros(L, D), torch.zeros(L)
            for t in range(nt):
                St, Vt = S[:, t * BN:(t + 1) * BN], Vdq[t * BN:(t + 1) * BN]
                mb = St.amax(1, keepdim=True)
                mb = torch.where(torch.isfinite(mb), mb, 0)
                p = torch.exp(St - mb)
                ref = torch.exp(mb)
                if mode in ("chan_tile", "chan_fix"):
                    wt = torch.round(p * 255)
                elif mode == "cpu":
                    aa = a[t * BN:(t + 1) * BN] / 127
                    w = p * aa
                    wm = w.amax(1, keepdim=True).clamp_min(1e-300)
                    P = torch.round(w / wm * 255)
                    num += (P @ (Vt / aa.clamp_min(1e-300).unsqueeze(1))) * wm / 255 * ref
                    den += p.sum(1) * ref.squeeze(1)
                    continue
                elif mode.startswith("nrm"):
                    m = r[t * BN:(t + 1) * BN]
                    lt = torch.log(p) + torch.log(m)
                    mw = lt.amax(1, keepdim=True)
                    mw = torch.where(torch.isfinite(mw), mw, 0)
                    wt = torch.round(255 * torch.exp(lt - mw)) / m
                    ref = ref * torch.exp(mw)
                else:
                    m = r[t * BN:(t + 1) * BN]
                    wt = torch.round(p * 255 * m) / m
                num += (wt @ Vt) * ref
                den += wt.sum(1) * ref.squeeze(1)
            if mode == "chan_fix" and len(fix):
                num += 255 * torch.exp(S[:, fix]) @ R
            out[:, h] = num / den.unsqueeze(1) + vm
    return out


def main():
    L = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    inputs = sys.argv[2].split(",") if len(sys.argv) > 2 else ["normal", "sink", "heads"]
    modes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["chan_tile", "nrm2048", "cpu"]
    for which in inputs:
        q, k, v = make(which, L)
        for causal in (False, True):
            ref = reference(q, k, v, causal)[0]
            row = [f"{m} {rel_l1(attn(q[0].double(), k[0].double(), v[0].double(), causal, m), ref):.2e}" for m in modes]
            print(which, L, "causal" if causal else "full", *row, flush=True)


if __name__ == "__main__":
    main()
