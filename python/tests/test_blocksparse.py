"""Block-sparse attention through the binding: qattn.attention(block_mask=..., block_size=...) on numpy
arrays against an independent FP64 numpy attention that applies the same map, the library's oracle with
the map, the pattern builders, and the errors for bad maps.

Tolerances: FP32 relative L2 1e-5 (tests/ops.c: FP32 accumulation over Lk terms, ~3x headroom);
INT8 default scheme 3.5e-2: 3x its quantize-dequantize baseline, ~1.1e-2 on N(0,1) inputs
(tests/test_ops.c checks every scheme against its own baseline with the mask)."""
import numpy as np
import pytest

import qattn
from conftest import randn, rel_l2

FP32_TOL = 1e-5
INT8_TOL = 3.5e-2


def ref_block_sparse(q, k, v, mask, bq, bk, causal=False):
    """FP64 attention with causal (bottom-right) and a [B or 1, H or 1, nq, nk] block map."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, Lq, H, D = q.shape
    Lk, HK = k.shape[1], k.shape[2]
    m = np.asarray(mask).astype(bool)
    if m.ndim == 3:
        m = m[None]
    o = np.zeros((B, Lq, H, D))
    lse = np.full((B, H, Lq), -np.inf)
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    for b in range(B):
        for h in range(H):
            mb = m[b if m.shape[0] > 1 else 0, h if m.shape[1] > 1 else 0]
            vis = mb[i // bq, j // bk]
            if causal:
                vis = vis & (j <= i + Lk - Lq)
            g = h // (H // HK)
            s = q[b, :, h] @ k[b, :, g].T / np.sqrt(D)
            s = np.where(vis, s, -np.inf)
            mx = s.max(axis=1, keepdims=True)
            rows = np.isfinite(mx[:, 0])
            e = np.where(vis, np.exp(s - np.where(rows[:, None], mx, 0)), 0)
            l = e.sum(axis=1)
            o[b, rows, h] = (e[rows] @ v[b, :, g]) / l[rows, None]
            lse[b, h, rows] = mx[rows, 0] + np.log(l[rows])
    return o, lse


# (B, Lq, Lk, H, HK, D, causal, (bq, bk), map kind)
CASES = [
    (2, 300, 300, 4, 4, 64, False, (64, 64), "per-head"),
    (1, 200, 333, 8, 2, 64, True, (16, 16), "shared"),     # [1, nq, nk]: one map for every head; GQA; Lq != Lk
    (2, 150, 260, 4, 2, 128, True, (32, 128), "per-batch"),  # [B, H, nq, nk]
    (1, 1, 700, 4, 1, 64, False, (16, 64), "bool"),        # one query, split-KV decode, bool map
]


def make_map(rng, kind, B, H, nq, nk, density=0.4):
    shape = {"per-head": (H, nq, nk), "shared": (1, nq, nk), "per-batch": (B, H, nq, nk), "bool": (H, nq, nk)}[kind]
    m = rng.random(shape) < density
    m.reshape(-1, nk)[::3] = False  # every third row sees no key: zero output, LSE -inf
    return m if kind == "bool" else m.astype(np.uint8)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B%d_Lq%d_Lk%d_H%d_HK%d_D%d_%s_%dx%d_%s" % (c[:7] + c[7] + (c[8],)))
def test_fp32_and_int8_match_fp64(case, rng):
    B, Lq, Lk, H, HK, D, causal, (bq, bk), kind = case
    q, k, v = randn(rng, (B, Lq, H, D)), randn(rng, (B, Lk, HK, D)), randn(rng, (B, Lk, HK, D))
    m = make_map(rng, kind, B, H, -(-Lq // bq), -(-Lk // bk))
    ref, ref_lse = ref_block_sparse(q, k, v, m, bq, bk, causal)
    o, lse = qattn.attention(q, k, v, causal=causal, block_mask=m, block_size=(bq, bk), return_lse=True, threads=2)
    assert rel_l2(o, ref) <= FP32_TOL
    assert np.array_equal(np.isinf(lse), np.isinf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert np.all(np.abs(lse[fin] - ref_lse[fin]) <= 1e-5 * (1 + np.abs(ref_lse[fin])))
    assert np.all(o[np.isinf(ref_lse).transpose(0, 2, 1)] == 0)
    o64 = qattn.oracle(q, k, v, causal=causal, block_mask=m, block_size=(bq, bk))
    assert rel_l2(o64, ref) <= 1e-7  # the oracle's scale is float32 1/sqrtf(D): ~1e-8 relative
    o8 = qattn.attention(q, k, v, causal=causal, block_mask=m, block_size=(bq, bk), precision="int8")
    assert rel_l2(o8, ref) <= INT8_TOL


def test_varlen_with_empty_sequence(rng):
    cu_q = np.array([0, 100, 100, 260], dtype=np.int32)
    cu_k = np.array([0, 130, 170, 300], dtype=np.int32)
    H, D, bq, bk = 4, 64, 32, 48
    q, k, v = randn(rng, (260, H, D)), randn(rng, (300, 2, D)), randn(rng, (300, 2, D))
    nq, nk = -(-160 // bq), -(-130 // bk)
    m = (rng.random((3, H, nq, nk)) < 0.5).astype(np.uint8)
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=160, max_seqlen_k=130, causal=True, block_mask=m,
              block_size=(bq, bk))
    o = qattn.attention(q, k, v, **kw)
    for b in range(3):  # blocks count from each sequence's start
        q0, q1, k0, k1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        if q1 == q0:
            continue
        ref, _ = ref_block_sparse(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], m[b][None, :, :-(-(q1 - q0) // bq), :-(-(k1 - k0) // bk)],
                                  bq, bk, True)
        assert rel_l2(o[q0:q1], ref[0]) <= FP32_TOL


@pytest.mark.parametrize("pattern", qattn._blockmask.PATTERNS)
def test_patterns(pattern):
    m = qattn.block_mask(pattern, 8, 4096, block_size=64, density=0.1, seed=3)
    assert m.shape == (8, 64, 64) and m.dtype == np.uint8
    assert 0.05 <= m.mean() <= 0.15
    if pattern == "random":
        assert np.all(m.sum(axis=2) == round(0.1 * 64))
        assert np.array_equal(m, qattn.block_mask(pattern, 8, 4096, block_size=64, density=0.1, seed=3))
    if pattern == "blockbert":  # a permutation per head: every query band sees one key band
        assert np.all(m.sum(axis=2) > 0) and not np.array_equal(m[0], m[1])


def test_bad_maps(rng):
    q, k, v = randn(rng, (1, 100, 2, 64)), randn(rng, (1, 100, 2, 64)), randn(rng, (1, 100, 2, 64))
    good = np.ones((2, 2, 2), dtype=np.uint8)
    qattn.attention(q, k, v, block_mask=good, block_size=64)
    with pytest.raises(TypeError, match="uint8 or bool"):
        qattn.attention(q, k, v, block_mask=good.astype(np.float32), block_size=64)
    with pytest.raises(ValueError, match="expected"):
        qattn.attention(q, k, v, block_mask=good, block_size=32)  # wants [2, 4, 4]
    with pytest.raises(ValueError, match="multiple of 16"):
        qattn.attention(q, k, v, block_mask=good, block_size=56)
    with pytest.raises(ValueError, match="expected"):
        qattn.attention(q, k, v, block_mask=np.ones((3, 2, 2), dtype=np.uint8), block_size=64)
    with pytest.raises(ValueError, match="pattern"):
        qattn.block_mask("diagonal", 2, 100, density=0.5)
    with pytest.raises(ValueError, match="density"):
        qattn.block_mask("random", 2, 100, density=0.0)
