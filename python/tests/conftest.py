"""Shared helpers: an independent FP64 numpy attention (not the library's oracle) and error metrics.

Tests run against the library found by qattn's loader; set QATTN_LIBRARY to pin one build.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # PYTHONPATH=python


def ref_attention(q, k, v, causal=False, scale=None, window=None):
    """FP64 attention on [B, Lq, H, D] / [B, Lk, HK, D] arrays, qattn.h's mask convention:
    key j visible to query i when i + Lk - Lq - wl <= j <= i + Lk - Lq + wr (-1 unbounded,
    causal -> wr = 0). Returns (o [B, Lq, H, D], lse [B, H, Lq]); unseen rows: 0 and -inf."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, Lq, H, D = q.shape
    Lk, HK = k.shape[1], k.shape[2]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    wl, wr = window if window is not None else (-1, -1)
    if causal:
        wr = 0
    i = np.arange(Lq)[:, None] + Lk - Lq
    j = np.arange(Lk)[None, :]
    vis = np.ones((Lq, Lk), dtype=bool)
    if wl >= 0:
        vis &= j >= i - wl
    if wr >= 0:
        vis &= j <= i + wr
    kh = np.repeat(k, H // HK, axis=2)  # GQA: query head h reads kv head h // (H // HK)
    vh = np.repeat(v, H // HK, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, kh) * scale
    s = np.where(vis, s, -np.inf)
    m = s.max(axis=-1, keepdims=True) if Lk else np.full(s.shape[:-1] + (1,), -np.inf)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m_safe)
    l = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(l > 0, e / np.where(l > 0, l, 1), 0.0)
        lse = np.where(l[..., 0] > 0, np.log(np.where(l[..., 0] > 0, l[..., 0], 1)) + m_safe[..., 0], -np.inf)
    o = np.einsum("bhqk,bkhd->bqhd", p, vh)
    return o, lse


def ref_varlen(q, k, v, cu_q, cu_k, **kw):
    """ref_attention per sequence of packed [total, H, D] arrays; lse [H, total_q]."""
    H, D = q.shape[1], q.shape[2]
    o = np.zeros(q.shape, dtype=np.float64)
    lse = np.full((H, q.shape[0]), -np.inf)
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        if q1 == q0:
            continue
        ob, lb = ref_attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], **kw)
        o[q0:q1] = ob[0]
        lse[:, q0:q1] = lb[0]
    return o, lse


def rel_l2(a, ref):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    return np.linalg.norm(a - ref) / (den if den > 0 else 1.0)


def cpu_isas():
    """Every CPU ISA a context can be created for here, "ref" first."""
    import qattn
    found = []
    for isa in ("ref", "avx2", "avxvnni", "avx512"):
        try:
            qattn.info(isa=isa)
        except qattn.QattnError:
            continue
        found.append(isa)
    return found


# Head dims below 32 (one or two 8-float groups, less than a 16-lane vector at 8 and 24) and
# D % 16 == 8 tails above it: the sizes the CPU kernels handle with partial vectors.
SMALL_AND_TAIL_DIMS = [8, 16, 24, 40, 72, 136, 200]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)
