"""qattn.quantize / QuantizedTensor.dequantize / attention_quantized and precision="int8":
codes against a numpy reimplementation of the documented rule (qattn.h, docs/FORMAT.md §1),
round-trip error, and attention accuracy against the FP64 reference within FORMAT.md §6."""
import numpy as np
import pytest

import qattn
from conftest import cpu_isas, randn, ref_attention, ref_varlen, rel_l2

pytestmark = pytest.mark.skipif(not qattn._lib.has_symbol("qattn_quantize_int8"),
                                reason="this libqattn has no INT8 quantization section")


def np_quantize(x, granularity, block_size=64, smooth=False):
    """The rule of qattn.h on [B, L, Ht, D] float32: mu = mean over tokens (double, stored as
    float), amax per group of |x - mu|, inv = 127 / amax, c = clamp(rne((x - mu) * inv)),
    s = amax / 127; an all-zero group: s = 0, codes 0. Returns codes, scale (qattn layout), mean."""
    x = np.asarray(x, np.float32)
    B, L, H, D = x.shape
    mu = x.astype(np.float64).mean(axis=1).astype(np.float32) if smooth else np.zeros((B, H, D), np.float32)
    y = (x - mu[:, None, :, :]).astype(np.float32)               # [B, L, H, D]
    a = np.abs(y)
    if granularity == "token":
        amax = a.max(axis=3)                                      # [B, L, H]
        bc = amax[..., None]
    elif granularity == "block":
        nb = -(-L // block_size)
        amax = np.zeros((B, H, nb), np.float32)
        bc = np.zeros((B, L, H, 1), np.float32)
        for j in range(nb):
            m = a[:, j * block_size:(j + 1) * block_size].max(axis=(1, 3))  # [B, H]
            amax[:, :, j] = m
            bc[:, j * block_size:(j + 1) * block_size, :, 0] = m[:, None, :]
    elif granularity == "head":
        amax = a.max(axis=(1, 3))                                 # [B, H]
        bc = amax[:, None, :, None]
    else:
        amax = a.max(axis=1)                                      # [B, H, D]
        bc = amax[:, None, :, :]
    with np.errstate(divide="ignore"):
        inv = np.where(bc > 0, np.float32(127) / np.where(bc > 0, bc, 1), 0).astype(np.float32)
    codes = np.clip(np.rint(y * inv), -127, 127).astype(np.int8)
    scale = (amax / np.float32(127)).astype(np.float32)
    return codes, scale, (mu if smooth else None)


@pytest.mark.parametrize("granularity", ["token", "block", "head", "channel"])
@pytest.mark.parametrize("smooth", [False, True])
def test_codes_match_documented_rule(rng, granularity, smooth):
    x = randn(rng, (2, 37, 3, 64)) * np.float32(3) + np.float32(0.5)
    x[1, :, 2] = 0  # an all-zero head: scale 0, codes 0, nothing divided by zero (no smoothing mean either)
    r = qattn.quantize(x, granularity, block_size=16, smooth=smooth)
    codes, scale, mu = np_quantize(x, granularity, 16, smooth)
    assert r.data.dtype == np.int8 and r.data.shape == x.shape
    assert r.scale.dtype == np.float32 and r.scale.shape == scale.shape
    np.testing.assert_array_equal(r.data, codes)
    np.testing.assert_array_equal(r.scale, scale)
    if smooth:
        assert r.mean.shape == (2, 3, 64)
        np.testing.assert_allclose(r.mean, mu, rtol=1e-6, atol=1e-7)
    else:
        assert r.mean is None
    assert np.abs(r.data.astype(np.int32)).max() <= 127
    # round trip: |x - dequant| <= scale / 2 per element (plus float rounding of c * s + mu)
    dq = r.dequantize()
    assert dq.dtype == np.float32 and dq.shape == x.shape
    mu_b = (r.mean if smooth else np.zeros((2, 3, 64), np.float32))[:, None]
    np.testing.assert_allclose(dq, r.data.astype(np.float32) * _scale_per_element(r) + mu_b, rtol=1e-6, atol=1e-6)
    bound = _scale_per_element(r) / 2 * (1 + 1e-5) + 1e-6 * (1 + np.abs(x))
    assert np.all(np.abs(dq - x) <= bound)


def _scale_per_element(r):
    B, L, H, D = r.data.shape
    s = np.asarray(r.scale)
    if r.granularity == "token":
        return s[..., None]
    if r.granularity == "block":
        idx = np.arange(L) // r.block_size
        return s[:, :, idx].transpose(0, 2, 1)[..., None]
    if r.granularity == "head":
        return s[:, None, :, None]
    return s[:, None, :, :]


def test_bhsd_and_varlen_layouts(rng):
    x = randn(rng, (2, 20, 4, 32))
    a = qattn.quantize(x, "block", block_size=8, smooth=True)
    b = qattn.quantize(np.ascontiguousarray(x.transpose(0, 2, 1, 3)), "block", block_size=8, smooth=True, layout="bhsd")
    np.testing.assert_array_equal(b.data.transpose(0, 2, 1, 3), a.data)
    np.testing.assert_array_equal(b.scale, a.scale)
    np.testing.assert_array_equal(b.dequantize().transpose(0, 2, 1, 3), a.dequantize())
    # varlen: packed [total, H, D]; per-token scales [total, H]; each sequence its own mean
    cu = np.array([0, 5, 5, 17], np.int32)
    packed = randn(rng, (17, 4, 32))
    r = qattn.quantize(packed, "token", smooth=True, cu_seqlens=cu)
    assert r.scale.shape == (17, 4) and r.mean.shape == (3, 4, 32)
    for bi, (s0, s1) in enumerate([(0, 5), (5, 17)]):
        c, s, mu = np_quantize(packed[None, s0:s1], "token", smooth=True)
        np.testing.assert_array_equal(r.data[s0:s1], c[0])
        np.testing.assert_array_equal(r.scale[s0:s1], s[0])
        np.testing.assert_allclose(r.mean[[0, 2][bi]], mu[0], rtol=1e-6, atol=1e-7)
    assert np.all(np.abs(r.dequantize() - packed) <= r.scale[..., None] / 2 + 1e-6)


def test_fp16_input(rng):
    x = randn(rng, (1, 9, 2, 64)).astype(np.float16)
    r = qattn.quantize(x, "token")
    c, s, _ = np_quantize(x.astype(np.float32), "token")
    np.testing.assert_array_equal(r.data, c)
    np.testing.assert_array_equal(r.scale, s)


# ---------------------------------------------------------------- attention accuracy (FORMAT.md §6)

SCHEMES = {  # scheme: (k, Q, K, V) quantization as the scheme does it: (granularity, block, smooth)
    "qattn": (3, ("token", 64, False), ("token", 64, True), ("token", 64, True)),
    "intfa": (4, ("token", 64, False), ("token", 64, False), ("head", 64, False)),
    "sage": (2, ("block", 128, False), ("block", 64, True), None),
}


def _baseline(q, k, v, spec, **mask):
    """FP64 attention on tensors quantized + dequantized exactly as the scheme does."""
    deq = []
    for x, s in zip((q, k, v), spec):
        deq.append(x if s is None else qattn.quantize(x, s[0], block_size=s[1], smooth=s[2]).dequantize())
    return ref_attention(*deq, **mask)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [64, 8, 16, 24])
def test_int8_attention_within_documented_tolerance(rng, scheme, causal, D):
    # The same factor k at every D: docs/FORMAT.md section 6 (small head dims) derives why it holds.
    B, Lq, Lk, H, HK = 2, 70, 150, 4, 2
    q, k, v = randn(rng, (B, Lq, H, D)), randn(rng, (B, Lk, HK, D)), randn(rng, (B, Lk, HK, D))
    kf, spec = SCHEMES[scheme][0], SCHEMES[scheme][1:]
    o_ref, lse_ref = ref_attention(q, k, v, causal=causal)
    o_b, lse_b = _baseline(q, k, v, spec, causal=causal)
    base = rel_l2(o_b, o_ref)
    base_lse = np.abs(lse_b - lse_ref).max()
    o, lse = qattn.attention(q, k, v, causal=causal, precision="int8", int8_scheme=scheme, return_lse=True)
    assert o.dtype == np.float32 and o.shape == q.shape
    assert rel_l2(o, o_ref) <= kf * base + 1e-6, (rel_l2(o, o_ref), base)
    assert np.abs(lse - lse_ref).max() <= 3 * base_lse + 0.02
    # the same through pre-quantized inputs (sage: V quantized too, dequantized by the library)
    vspec = spec[2] or ("token", 64, False)
    qi = [qattn.quantize(x, s[0], block_size=s[1], smooth=s[2], tensor=n)
          for x, s, n in zip((q, k, v), (spec[0], spec[1], vspec), "qkv")]
    o_b2, lse_b2 = ref_attention(*(t.dequantize() for t in qi), causal=causal)
    base2 = rel_l2(o_b2, o_ref)
    o2, lse2 = qattn.attention_quantized(*qi, causal=causal, int8_scheme=scheme, return_lse=True)
    assert rel_l2(o2, o_ref) <= kf * base2 + 1e-6, (rel_l2(o2, o_ref), base2)
    assert np.abs(lse2 - lse_ref).max() <= 3 * np.abs(lse_b2 - lse_ref).max() + 0.02


@pytest.mark.parametrize("D", [8, 16, 24, 40, 136])
def test_int8_bit_identical_across_isas(rng, D):
    """Integer arithmetic is promised for INT8: every scheme gives the same bits on every ISA, into a
    NaN-poisoned output (causal Lq != Lk, GQA)."""
    q, k, v = randn(rng, (1, 45, 4, D)), randn(rng, (1, 77, 2, D)), randn(rng, (1, 77, 2, D))
    for scheme in sorted(SCHEMES):
        outs = []
        for isa in cpu_isas():
            out = np.full(q.shape, np.nan, np.float32)
            qattn.attention(q, k, v, causal=True, precision="int8", int8_scheme=scheme, out=out, isa=isa)
            assert np.isfinite(out).all(), (scheme, isa)
            outs.append(out)
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])


def test_prequantized_default_close_to_dynamic(rng):
    """precision="int8" is dynamic token-level PTQ with the default scheme's formats plus the joint
    Q/K channel transforms (docs/FORMAT.md section 7), which per-tensor qattn.quantize cannot apply;
    tests/test_int8.c checks that without them the two paths agree bit for bit. Here, on N(0,1)
    (where the transforms neither help nor hurt: FORMAT.md's table), the two errors against FP64
    agree within 1.25x (independent 8-bit roundings of the same size)."""
    q, k, v = randn(rng, (1, 33, 2, 64)), randn(rng, (1, 47, 2, 64)), randn(rng, (1, 47, 2, 64))
    o = qattn.attention(q, k, v, precision="int8", window=(20, 3))
    o2 = qattn.attention_quantized(qattn.quantize(q), qattn.quantize(k, smooth=True), qattn.quantize(v, smooth=True),
                                   window=(20, 3))
    ref, _ = ref_attention(q, k, v, window=(20, 3))
    e1, e2 = rel_l2(o, ref), rel_l2(o2, ref)
    assert e1 <= 1.25 * e2 and e2 <= 1.25 * e1, (e1, e2)


def test_prequantized_varlen_and_out_dtype(rng):
    cu_q, cu_k = np.array([0, 3, 10], np.int32), np.array([0, 20, 31], np.int32)
    q, k, v = randn(rng, (10, 4, 64)), randn(rng, (31, 2, 64)), randn(rng, (31, 2, 64))
    qq = qattn.quantize(q, cu_seqlens=cu_q)
    qk = qattn.quantize(k, cu_seqlens=cu_k, smooth=True)
    qv = qattn.quantize(v, cu_seqlens=cu_k, smooth=True)
    o = qattn.attention_quantized(qq, qk, qv, causal=True, out_dtype=np.float16)
    assert o.dtype == np.float16 and o.shape == q.shape
    o_ref, _ = ref_varlen(q, k, v, cu_q, cu_k, causal=True)
    o_b, _ = ref_varlen(qq.dequantize(), qk.dequantize(), qv.dequantize(), cu_q, cu_k, causal=True)
    assert rel_l2(o, o_ref) <= 3 * rel_l2(o_b, o_ref) + 1e-3  # + fp16 output rounding


def test_torch_inputs(rng):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(randn(rng, (1, 12, 2, 64))).to(torch.bfloat16)
    r = qattn.quantize(x, "head", smooth=True)
    assert isinstance(r.data, torch.Tensor) and r.data.dtype == torch.int8
    assert r.scale.dtype == torch.float32 and r.mean.dtype == torch.float32
    c, s, _ = np_quantize(x.float().numpy(), "head", smooth=True)
    np.testing.assert_array_equal(r.data.numpy(), c)
    dq = r.dequantize()
    assert isinstance(dq, torch.Tensor) and dq.dtype == torch.float32
    q = torch.from_numpy(randn(rng, (1, 12, 2, 64)))
    o = qattn.attention_quantized(qattn.quantize(q), qattn.quantize(q, tensor="k"), r, out_dtype=torch.bfloat16)
    assert isinstance(o, torch.Tensor) and o.dtype == torch.bfloat16


# ---------------------------------------------------------------- bad inputs raise

def test_bad_inputs(rng):
    x = randn(rng, (1, 8, 2, 64))
    with pytest.raises(ValueError, match="granularity"):
        qattn.quantize(x, "row")
    with pytest.raises(ValueError, match="block_size"):
        qattn.quantize(x, "block", block_size=0)
    with pytest.raises(TypeError, match="dtype"):
        qattn.quantize(x.astype(np.float64))
    with pytest.raises(ValueError, match="4 dims"):
        qattn.quantize(x[0])
    bad = x.copy()
    bad[0, 3, 1, 5] = np.nan
    with pytest.raises(qattn.QattnValueError, match="non-finite"):
        qattn.quantize(bad)
    q = qattn.quantize(x)
    k = qattn.quantize(x, smooth=True)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        qattn.attention_quantized(x, k, k)
    short = qattn.QuantizedTensor(q.data, q.scale[:, :4], None, "token", 64)
    with pytest.raises(ValueError, match="scale must be a contiguous float32 array of 16"):
        qattn.attention_quantized(short, k, k)
    wrong = qattn.QuantizedTensor(q.data.astype(np.int16), q.scale, None, "token", 64)
    with pytest.raises(TypeError, match="int8"):
        qattn.attention_quantized(wrong, k, k)
    badmean = qattn.QuantizedTensor(k.data, k.scale, k.mean[:, :1], "token", 64)
    with pytest.raises(ValueError, match="mean"):
        qattn.attention_quantized(q, badmean, k)
    with pytest.raises(qattn.QattnUnsupportedError, match="q smoothing"):  # not exact: the library refuses it
        qattn.attention_quantized(qattn.quantize(x, smooth=True), k, k)
    with pytest.raises((ValueError, NotImplementedError)):  # Q per channel cannot feed integer QK^T
        qattn.attention_quantized(qattn.quantize(x, "channel"), k, k)
    with pytest.raises(ValueError, match="layouts"):
        qattn.attention_quantized(q, dataclass_replace(k, layout="bhsd"), k)
    with pytest.raises(ValueError, match="int8_scheme"):
        qattn.attention_quantized(q, k, k, int8_scheme="nope")
    with pytest.raises(ValueError, match="head_dim"):
        qattn.attention_quantized(qattn.quantize(randn(rng, (1, 8, 2, 32))), k, k)
    with pytest.raises(ValueError, match="must match"):
        qattn.attention_quantized(q, qattn.quantize(randn(rng, (1, 9, 2, 64))), k)


def dataclass_replace(t, **kw):
    import dataclasses
    return dataclasses.replace(t, **kw)


# ---------------------------------------------------------------- calibration (docs/FORMAT.md section 7)

pytest_cal = pytest.mark.skipif(not qattn._lib.has_symbol("qattn_calibrate"), reason="this libqattn has no qattn_calibrate")


def np_factors(q, k, group):
    """The documented factor rule in numpy: qa = max |q| over the group's heads and positions,
    mu = float32(mean in double), ka = max(k_max - mu, mu - k_min) (float32),
    e = ceil(ilogb(ka / qa) / 2) clamped to [-32, 32], 0 when qa or ka is 0."""
    B, Lq, H, D = q.shape
    HK = k.shape[2]
    qa = np.abs(q).reshape(B * Lq, HK, group, D).max(axis=(0, 2)).astype(np.float32)
    kk = k.reshape(-1, HK, D)
    mu = kk.astype(np.float64).mean(axis=0).astype(np.float32)
    ka = np.maximum(kk.max(axis=0) - mu, mu - kk.min(axis=0)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (ka / qa).astype(np.float32)
    _, ex = np.frexp(r)
    n = ex - 1                                   # ilogb
    e = np.where(n >= 0, (n + 1) // 2, -((-n) // 2))
    e = np.where((qa > 0) & (ka > 0), np.clip(e, -32, 32), 0)
    return np.ldexp(np.float32(1), e).astype(np.float32), mu


@pytest_cal
def test_calibrate_matches_documented_rule_and_dynamic_path(rng):
    B, L, H, HK, D = 1, 150, 6, 2, 64
    q, k, v = randn(rng, (B, L, H, D)), randn(rng, (B, L, HK, D)), randn(rng, (B, L, HK, D))
    k[..., 5] = k[..., 5] * 15 + 9                 # an outlier channel
    cal = qattn.calibrate(q, k, v)
    f, mu = np_factors(q, k, H // HK)
    np.testing.assert_array_equal(cal.k_factor, f)
    np.testing.assert_array_equal(cal.k_mean, mu)
    assert cal.tokens == L and cal.k_factor[:, 5].min() >= 2   # the outlier channel moved into Q
    # calibrated on its own single sequence: the dynamic path's statistics, so the same bits
    o_dyn, l_dyn = qattn.attention(q, k, v, precision="int8", causal=True, return_lse=True)
    o_cal, l_cal = qattn.attention(q, k, v, precision="int8", causal=True, return_lse=True, calibration=cal)
    np.testing.assert_array_equal(o_dyn, o_cal)
    np.testing.assert_array_equal(l_dyn, l_cal)
    ref, _ = ref_attention(q, k, v, causal=True)
    assert rel_l2(o_cal, ref) < 0.02


@pytest_cal
def test_calibrate_accumulates_and_round_trips_a_file(rng, tmp_path):
    B, L, H, HK, D = 2, 64, 4, 2, 32
    q, k, v = randn(rng, (B, L, H, D)), randn(rng, (B, L, HK, D)), randn(rng, (B, L, HK, D))
    whole = qattn.calibrate(q, k, v)
    part = qattn.calibrate(q[:1], k[:1], v[:1])
    same = qattn.calibrate(q[1:], k[1:], v[1:], calibration=part)
    assert same is part and part.tokens == whole.tokens == B * L
    for name in ("k_factor", "q_absmax", "k_min", "k_max"):
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name))
    np.testing.assert_allclose(part.k_mean, whole.k_mean, atol=1e-6)
    np.testing.assert_allclose(part.v_mean, whole.v_mean, atol=1e-6)
    path = tmp_path / "cal.npy"
    whole.save(path)
    arr = np.load(path)
    assert arr.dtype == np.float32 and arr.shape == (3, HK, D)
    back = qattn.Calibration.load(path)
    o1 = qattn.attention(q, k, v, precision="int8", calibration=whole)
    o2 = qattn.attention(q, k, v, precision="int8", calibration=back)
    np.testing.assert_array_equal(o1, o2)
    with pytest.raises(ValueError, match="needs the running statistics"):
        qattn.calibrate(q, k, v, calibration=back)   # a loaded file holds no running statistics


@pytest_cal
def test_calibrate_errors(rng):
    q, k, v = randn(rng, (1, 20, 2, 32)), randn(rng, (1, 20, 2, 32)), randn(rng, (1, 20, 2, 32))
    cal = qattn.calibrate(q, k, v)
    snap = {n: getattr(cal, n).copy() for n in ("k_factor", "k_mean", "v_mean", "q_absmax", "k_min", "k_max")}
    bad = v.copy()
    bad[0, 7, 1, 3] = np.nan
    with pytest.raises(qattn.QattnValueError, match=r"v has a non-finite value at \(sequence 0, position 7, head 1, channel 3\)"):
        qattn.calibrate(q, k, bad, calibration=cal)
    assert cal.tokens == 20 and all(np.array_equal(getattr(cal, n), a) for n, a in snap.items())
    with pytest.raises(ValueError, match="shape"):
        qattn.attention(q, k[:, :, :1], v[:, :, :1], precision="int8", calibration=cal)
    with pytest.raises(TypeError, match="qattn.Calibration"):
        qattn.attention(q, k, v, precision="int8", calibration={"k_factor": cal.k_factor})
    with pytest.raises(qattn.QattnValueError, match="precision INT8"):
        qattn.attention(q, k, v, calibration=cal)
    cal.k_factor[0, 0] = 3.0
    with pytest.raises(qattn.QattnValueError, match=r"k_factor\[0\] is 3"):
        qattn.attention(q, k, v, precision="int8", calibration=cal)
