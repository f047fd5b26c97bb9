"""qattn.attention on numpy arrays (CPU) against an independent FP64 numpy attention and the library's oracle."""
import numpy as np
import pytest

import qattn
from conftest import SMALL_AND_TAIL_DIMS, cpu_isas, randn, ref_attention, ref_varlen, rel_l2

FP32_TOL = 1e-5

# (B, Lq, Lk, H, HK, D, causal, window): tail sizes, GQA/MQA, causal Lq != Lk, windows
CASES = [
    (1, 1, 1, 1, 1, 64, False, None),
    (2, 17, 17, 4, 4, 64, False, None),
    (2, 17, 113, 4, 2, 64, True, None),    # causal, Lq < Lk (bottom-right aligned)
    (1, 113, 17, 6, 1, 32, True, None),    # causal, Lq > Lk: the first rows see no key; MQA
    (1, 203, 203, 2, 2, 128, True, None),
    (2, 33, 57, 8, 2, 80, False, (8, 4)),  # sliding window, both sides
    (1, 64, 64, 2, 1, 256, False, (16, -1)),
    (3, 5, 300, 4, 4, 96, False, None),    # decode-like: split-KV path
    (2, 17, 113, 4, 2, 8, True, None),     # head dims below 32: causal Lq < Lk, GQA
    (1, 113, 17, 4, 1, 16, True, None),    # causal Lq > Lk, MQA
    (1, 33, 57, 4, 2, 24, False, (8, 4)),  # window
    (3, 1, 300, 4, 2, 8, False, None),     # one query
]


def describe(c):
    return "B%d_Lq%d_Lk%d_H%d_HK%d_D%d_%s_w%s" % (c[:6] + ("causal" if c[6] else "full", c[7]))


@pytest.mark.parametrize("case", CASES, ids=describe)
def test_fp32_matches_fp64(case, rng):
    B, Lq, Lk, H, HK, D, causal, window = case
    q, k, v = randn(rng, (B, Lq, H, D)), randn(rng, (B, Lk, HK, D)), randn(rng, (B, Lk, HK, D))
    o, lse = qattn.attention(q, k, v, causal=causal, window=window, return_lse=True)
    assert isinstance(o, np.ndarray) and o.dtype == np.float32 and o.shape == q.shape
    assert lse.dtype == np.float32 and lse.shape == (B, H, Lq)
    ref, ref_lse = ref_attention(q, k, v, causal=causal, window=window)
    assert rel_l2(o, ref) <= FP32_TOL
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), fin)  # unseen rows: -inf in both
    assert np.all(lse[~fin] == -np.inf)
    np.testing.assert_allclose(lse[fin], ref_lse[fin], rtol=1e-5, atol=1e-5)
    # the library's own FP64 oracle agrees with the numpy one, given the same scale: the C
    # library computes the default as 1.0f / sqrtf(D) in FP32
    o64, lse64 = qattn.oracle(q, k, v, causal=causal, window=window, return_lse=True)
    ref32s, ref32s_lse = ref_attention(q, k, v, causal=causal, window=window, scale=float(np.float32(1) / np.sqrt(np.float32(D))))
    assert o64.dtype == np.float64 and rel_l2(o64, ref32s) <= 1e-12
    np.testing.assert_allclose(lse64[fin], ref32s_lse[fin], rtol=1e-12)


@pytest.mark.parametrize("case", CASES[1:4], ids=describe)
def test_fp16_within_2x_of_input_rounding(case, rng):
    """docs/ARCHITECTURE.md "Tolerances": an FP16 run stays within 2x the error of 'round inputs to FP16, then exact'."""
    B, Lq, Lk, H, HK, D, causal, window = case
    q, k, v = randn(rng, (B, Lq, H, D)), randn(rng, (B, Lk, HK, D)), randn(rng, (B, Lk, HK, D))
    ref, _ = ref_attention(q, k, v, causal=causal)
    q16, k16, v16 = q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)
    exact16, _ = ref_attention(q16, k16, v16, causal=causal)
    # FP32 output: the only error is the input rounding
    o32 = qattn.attention(q16, k16, v16, causal=causal, out=np.empty(q.shape, np.float32))
    assert rel_l2(o32, ref) <= 2 * rel_l2(exact16.astype(np.float32), ref)
    # FP16 output (the default for FP16 inputs): the baseline is rounded to FP16 too
    o16 = qattn.attention(q16, k16, v16, causal=causal)
    assert o16.dtype == np.float16
    assert rel_l2(o16, ref) <= 2 * rel_l2(exact16.astype(np.float16), ref)


def test_bhsd_layout_is_a_strided_view(rng):
    B, H, HK, Lq, Lk, D = 2, 4, 2, 19, 31, 64
    q, k, v = randn(rng, (B, H, Lq, D)), randn(rng, (B, HK, Lk, D)), randn(rng, (B, HK, Lk, D))
    o = qattn.attention(q, k, v, causal=True, layout="bhsd")
    assert o.shape == (B, H, Lq, D)
    t = lambda x: x.transpose(0, 2, 1, 3)
    ref, _ = ref_attention(t(q), t(k), t(v), causal=True)
    assert rel_l2(t(o), ref) <= FP32_TOL
    # bshd-layout views of the same memory give the same answer
    o2 = qattn.attention(t(q), t(k), t(v), causal=True)
    np.testing.assert_array_equal(o2, t(o))
    assert rel_l2(qattn.oracle(q, k, v, causal=True, layout="bhsd"), t(ref)) <= 1e-12


def test_kv_views_into_a_larger_cache(rng):
    """K/V as strided views of a bigger cache (more tokens, more heads, padded dim): no copy."""
    B, Lq, H, D = 2, 7, 4, 64
    cache = randn(rng, (2, B, 100, 6, D + 16))
    k, v = cache[0, :, 10:50, 1:3, :D], cache[1, :, 10:50, 3:5, :D]
    q = randn(rng, (B, Lq, H, D))
    o = qattn.attention(q, k, v, causal=True)
    ref, _ = ref_attention(q, k, v, causal=True)
    assert rel_l2(o, ref) <= FP32_TOL


def test_negative_strides_are_copied(rng):
    q, k, v = randn(rng, (1, 9, 2, 32)), randn(rng, (1, 12, 2, 32)), randn(rng, (1, 12, 2, 32))
    qr, kr = q[:, ::-1], k[:, :, ::-1]
    o = qattn.attention(qr, kr, v)
    ref, _ = ref_attention(qr, kr, v)
    assert rel_l2(o, ref) <= FP32_TOL


def test_out_argument_and_scale(rng):
    q, k, v = randn(rng, (1, 9, 2, 64)), randn(rng, (1, 12, 2, 64)), randn(rng, (1, 12, 2, 64))
    buf = np.full((1, 9, 2, 80), np.nan, np.float32)
    out = buf[..., 8:72]  # a strided output view
    r = qattn.attention(q, k, v, scale=0.3, out=out)
    assert r is out
    ref, _ = ref_attention(q, k, v, scale=0.3)
    assert rel_l2(out, ref) <= FP32_TOL
    assert np.isnan(buf[..., :8]).all() and np.isnan(buf[..., 72:]).all()  # nothing outside written


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_with_empty_sequences(causal, rng):
    H, HK, D = 4, 2, 64
    lens_q = [5, 0, 17, 1, 3]
    lens_k = [9, 4, 17, 0, 30]  # seq 1: no queries; seq 3: no keys (zero rows, lse -inf)
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q, k, v = randn(rng, (cu_q[-1], H, D)), randn(rng, (cu_k[-1], HK, D)), randn(rng, (cu_k[-1], HK, D))
    o, lse = qattn.attention(q, k, v, causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_lse=True)
    assert o.shape == q.shape and lse.shape == (H, cu_q[-1])
    ref, ref_lse = ref_varlen(q, k, v, cu_q, cu_k, causal=causal)
    assert rel_l2(o, ref) <= FP32_TOL
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), fin)
    np.testing.assert_allclose(lse[fin], ref_lse[fin], rtol=1e-5, atol=1e-5)
    o64 = qattn.oracle(q, k, v, causal=causal, cu_seqlens_q=list(cu_q), cu_seqlens_k=list(cu_k))
    assert rel_l2(o64, ref) <= 1e-12
    # explicit (larger) max_seqlen is fine
    o2 = qattn.attention(q, k, v, causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=64, max_seqlen_k=64)
    np.testing.assert_array_equal(o2, o)


@pytest.mark.parametrize("D", SMALL_AND_TAIL_DIMS)
def test_head_dims_on_every_isa(D, rng):
    """Every head dim the CPU kernels do with partial vectors, on every ISA this machine has, into a
    NaN-poisoned output: all of it written, each ISA within the FP32 tolerance of FP64, causal Lq != Lk,
    GQA, and varlen with an empty sequence."""
    B, Lq, Lk, H, HK = 2, 37, 70, 4, 2
    q, k, v = randn(rng, (B, Lq, H, D)), randn(rng, (B, Lk, HK, D)), randn(rng, (B, Lk, HK, D))
    ref, ref_lse = ref_attention(q, k, v, causal=True)
    cu_q, cu_k = np.array([0, 5, 5, 22], np.int32), np.array([0, 30, 41, 41], np.int32)
    qv, kv, vv = randn(rng, (22, H, D)), randn(rng, (41, HK, D)), randn(rng, (41, HK, D))
    ref_v, _ = ref_varlen(qv, kv, vv, cu_q, cu_k, causal=True)
    for isa in cpu_isas():
        out = np.full(q.shape, np.nan, np.float32)
        o, lse = qattn.attention(q, k, v, causal=True, out=out, return_lse=True, isa=isa)
        assert o is out and np.isfinite(o).all(), isa
        assert rel_l2(o, ref) <= FP32_TOL, (isa, rel_l2(o, ref))
        np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=1e-5)
        out_v = np.full(qv.shape, np.nan, np.float32)
        qattn.attention(qv, kv, vv, causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, out=out_v, isa=isa)
        assert np.isfinite(out_v).all() and rel_l2(out_v, ref_v) <= FP32_TOL, isa


def test_empty_shapes(rng):
    D = 64
    # no queries, no batch, no keys
    o = qattn.attention(randn(rng, (2, 0, 2, D)), randn(rng, (2, 5, 2, D)), randn(rng, (2, 5, 2, D)))
    assert o.shape == (2, 0, 2, D)
    o = qattn.attention(randn(rng, (0, 3, 2, D)), randn(rng, (0, 5, 2, D)), randn(rng, (0, 5, 2, D)))
    assert o.shape == (0, 3, 2, D)
    o, lse = qattn.attention(randn(rng, (1, 3, 2, D)), randn(rng, (1, 0, 2, D)), randn(rng, (1, 0, 2, D)), return_lse=True)
    assert np.all(o == 0) and np.all(lse == -np.inf)


def test_threads_and_isa_give_identical_results(rng):
    """docs/ARCHITECTURE.md "Numerics": bitwise reproducible for a fixed ISA whatever the thread count."""
    q, k, v = randn(rng, (1, 2, 4, 64)), randn(rng, (1, 999, 4, 64)), randn(rng, (1, 999, 4, 64))
    a = qattn.attention(q, k, v, threads=1)
    b = qattn.attention(q, k, v, threads=2)
    np.testing.assert_array_equal(a, b)
    r = qattn.attention(q, k, v, isa="ref")
    assert rel_l2(r, ref_attention(q, k, v)[0]) <= FP32_TOL


def test_info():
    i = qattn.info()
    assert i["version"] == qattn.__version__ == "%d.%d.%d" % (0, 1, 0) or i["version"] == qattn.__version__
    assert i["backend"] == "cpu" and i["n_threads"] >= 1 and i["isa"] in ("ref", "avx2", "avxvnni", "avx512")
    assert isinstance(i["cuda_available"], bool) and i["library"] == qattn.library_path


def test_contexts_from_many_threads(rng):
    """The context cache is shared: concurrent calls must serialise per context, not crash."""
    import threading
    q, k, v = randn(rng, (1, 33, 2, 64)), randn(rng, (1, 65, 2, 64)), randn(rng, (1, 65, 2, 64))
    want = qattn.attention(q, k, v)
    errors = []

    def work():
        try:
            for _ in range(20):
                np.testing.assert_array_equal(qattn.attention(q, k, v), want)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
