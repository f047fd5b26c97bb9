"""qattn.KVCache: appends across blocks, fork / copy-on-write, free and reuse, exhaustion leaving
the cache unchanged, decode against FP64 numpy attention (docs/KVCACHE.md tolerances), bad inputs."""
import numpy as np
import pytest

import qattn
from conftest import cpu_isas, randn, ref_attention, rel_l2

pytestmark = pytest.mark.skipif(not qattn._lib.has_symbol("qattn_kv_cache_create"),
                                reason="this libqattn has no KV cache section")

HK, D = 2, 64


def rotate_block(d):
    """The INT8 cache's Hadamard block: the largest power of two dividing d, at most 128."""
    return min(d & -d, 128)


def hadamard(x):
    """The block Hadamard transform of the last axis (no normalisation), float32, stage by stage
    in the library's order (len 1, 2, 4, ...: the same pair sums and differences)."""
    d = x.shape[-1]
    n = rotate_block(d)
    y = x.astype(np.float32).reshape(x.shape[:-1] + (d // n, n)).copy()
    ln = 1
    while ln < n:
        z = y.reshape(y.shape[:-1] + (n // (2 * ln), 2, ln))
        a, b = z[..., 0, :].copy(), z[..., 1, :].copy()
        z[..., 0, :], z[..., 1, :] = a + b, a - b
        y = z.reshape(y.shape)
        ln *= 2
    return y.reshape(x.shape)


def per_token(x):
    """Symmetric INT8 per (token, head) row: max|x| / 127, round to nearest even, dequantized."""
    amax = np.abs(x).max(axis=-1, keepdims=True)
    s = amax / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.clip(np.rint(np.where(amax > 0, x / np.where(s > 0, s, 1), 0)), -127, 127)
    return (c * s).astype(np.float32)


def stored(x, dtype, key=False):
    """What the cache stores for float32 x, read back (fp16 exactly; int8 per-token-per-head codes,
    keys of H(x) / n, read back through H: docs/KVCACHE.md)."""
    if dtype == "fp16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    if key:
        return hadamard(per_token(hadamard(x * np.float32(1.0 / rotate_block(x.shape[-1])))))
    return per_token(x)


def snapshot(cache, seqs):
    return cache.info(), {s: cache.seq_len(s) for s in seqs}, {s: cache.read(s) for s in seqs}


def assert_same(a, b):
    assert a[0] == b[0] and a[1] == b[1]
    for s in a[2]:
        np.testing.assert_array_equal(a[2][s][0], b[2][s][0])
        np.testing.assert_array_equal(a[2][s][1], b[2][s][1])


@pytest.mark.parametrize("dtype", ["fp16", "int8", "bf16"])
@pytest.mark.parametrize("D", [D, 8, 24])
def test_append_across_blocks_and_read(rng, dtype, D):
    with qattn.KVCache(HK, D, block_size=7, dtype=dtype, capacity_blocks=32, max_seqs=4) as c:
        k, v = randn(rng, (41, HK, D)), randn(rng, (41, HK, D))
        pos = 0
        for n in (5, 9, 1, 0, 26):  # crosses block boundaries at 7, 14, ...
            c.append(1, k[pos:pos + n], v[pos:pos + n])
            pos += n
            assert c.seq_len(1) == pos
        kr, vr = c.read(1)
        tol = 0 if dtype != "int8" else 1e-6
        np.testing.assert_allclose(kr, stored(k, dtype, key=True), rtol=tol, atol=tol)
        np.testing.assert_allclose(vr, stored(v, dtype), rtol=tol, atol=tol)
        if dtype == "int8":  # V within half a per-token-per-head scale; K's rounding e, |e_i| <= s/2
            # in the rotated domain, comes back as H e: ||H e|| = sqrt(n) ||e|| <= sqrt(n D) s / 2
            assert np.all(np.abs(vr - v) <= np.abs(v).max(-1, keepdims=True) / 127 / 2 * (1 + 1e-5) + 1e-7)
            n = rotate_block(D)
            s_rot = np.abs(hadamard(k) / n).max(-1) / 127
            assert np.all(np.linalg.norm(kr - k, axis=-1) <= np.sqrt(n * D) * s_rot / 2 * (1 + 1e-5) + 1e-6)
        i = c.info()
        assert i["used_blocks"] == 6 and i["free_blocks"] == 26 and i["tokens_stored"] == 41
        assert i["n_active_seqs"] == 1 and i["bytes_used"] == 6 * i["block_bytes"] and i["bytes_total"] > 0
        kr2, vr2 = c.read(1, 10, 5)
        np.testing.assert_array_equal(kr2, kr[10:15])
        c.append(2, k[0], v[0])  # one token as [HK, D]
        assert c.seq_len(2) == 1


def test_fork_copy_on_write_free_reuse(rng):
    c = qattn.KVCache(HK, D, block_size=8, dtype="fp16", capacity_blocks=8, max_seqs=3)
    k, v = randn(rng, (20, HK, D)), randn(rng, (20, HK, D))
    c.append(0, k[:12], v[:12])  # blocks: full + partial
    c.fork(0, 1)
    assert c.info()["used_blocks"] == 2 and c.info()["tokens_stored"] == 24
    parent = c.read(0)
    c.append(1, k[12:15], v[12:15])  # copies the shared partial block
    assert c.info()["used_blocks"] == 3
    np.testing.assert_array_equal(c.read(0)[0], parent[0])  # parent unchanged
    kc, vc = c.read(1)
    np.testing.assert_array_equal(kc, stored(k[:15], "fp16"))
    c.append(0, k[15:20], v[15:20])
    np.testing.assert_array_equal(c.read(1)[1], stored(v[:15], "fp16"))  # child unchanged by the parent
    np.testing.assert_array_equal(c.read(0)[1], stored(np.concatenate([v[:12], v[15:20]]), "fp16"))
    c.free(0)
    assert c.seq_len(0) == 0 and c.info()["used_blocks"] == 2  # the shared full block stays with seq 1
    c.free(1)
    assert c.info()["free_blocks"] == 8 and c.info()["n_active_seqs"] == 0
    c.append(2, np.zeros((64, HK, D), np.float32), np.zeros((64, HK, D), np.float32))  # every block reused
    assert c.info()["free_blocks"] == 0
    c.close()
    c.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        c.seq_len(0)


def test_exhaustion_raises_and_leaves_cache_unchanged(rng):
    c = qattn.KVCache(HK, D, block_size=4, dtype="int8", capacity_blocks=4, max_seqs=3)
    k, v = randn(rng, (20, HK, D)), randn(rng, (20, HK, D))
    c.append(0, k[:6], v[:6])  # 2 blocks, the second partial
    c.fork(0, 1)
    c.append(2, k[:4], v[:4])  # 3 blocks used
    before = snapshot(c, (0, 1, 2))
    with pytest.raises(qattn.QattnCapacityError, match="CAPACITY") as e:
        c.append(2, k[:9], v[:9])  # needs 3 more
    assert e.value.status == qattn._lib.QATTN_ERR_CAPACITY and isinstance(e.value, qattn.QattnError)
    assert_same(before, snapshot(c, (0, 1, 2)))
    c.append(2, k[4:6], v[4:6])  # takes the last free block
    before = snapshot(c, (0, 1, 2))
    with pytest.raises(qattn.QattnCapacityError):  # CoW of the shared partial block needs a block
        c.append(1, k[6:7], v[6:7])
    assert_same(before, snapshot(c, (0, 1, 2)))
    bad = k[:1].copy()
    bad[0, 1, 3] = np.inf
    with pytest.raises(qattn.QattnValueError, match="finite"):
        c.append(2, bad, v[:1])  # room in its unshared partial block: the value check decides
    assert_same(before, snapshot(c, (0, 1, 2)))
    c.close()
    narrow = qattn.KVCache(HK, D, block_size=4, dtype="fp16", capacity_blocks=8, max_seqs=1, max_blocks_per_seq=2)
    with pytest.raises(qattn.QattnCapacityError, match="block table"):
        narrow.append(0, k[:9], v[:9])
    assert narrow.seq_len(0) == 0
    narrow.close()


# docs/KVCACHE.md: vs the dequantized cache / vs the original FP32 values
TOL = {"fp16": (2e-5, 2e-3), "bf16": (2e-5, 1.5e-2), "int8": (2e-4, 4e-2)}


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("lq,causal,window", [(1, True, None), (3, True, None), (2, False, None), (3, True, 9)])
@pytest.mark.parametrize("D", [D, 8, 16, 24])
def test_decode_vs_fp64(rng, dtype, lq, causal, window, D):
    H = 4  # GQA 2
    lens = [lq, 40, 130]
    c = qattn.KVCache(HK, D, block_size=16, dtype=dtype, capacity_blocks=64, max_seqs=5)
    kv = {}
    for sid, n in zip((4, 0, 2), lens):
        kv[sid] = (randn(rng, (n, HK, D)), randn(rng, (n, HK, D)))
        c.append(sid, *kv[sid])
    ids = [0, 4, 2]
    q = randn(rng, (3, lq, H, D))
    o, lse = c.decode(q, ids, causal=causal, window=window, return_lse=True)
    assert o.shape == q.shape and o.dtype == np.float32 and lse.shape == (3, H, lq)
    tol_deq, tol_orig = TOL[dtype]
    mask = dict(causal=causal, window=None if window is None else (window, -1))
    for i, sid in enumerate(ids):
        kd, vd = c.read(sid)
        o_deq, lse_deq = ref_attention(q[i:i + 1], kd[None], vd[None], **mask)
        o_orig, _ = ref_attention(q[i:i + 1], kv[sid][0][None], kv[sid][1][None], **mask)
        assert rel_l2(o[i:i + 1], o_deq) < tol_deq, (sid, rel_l2(o[i:i + 1], o_deq))
        assert rel_l2(o[i:i + 1], o_orig) < tol_orig, (sid, rel_l2(o[i:i + 1], o_orig))
        np.testing.assert_allclose(lse[i], lse_deq[0], rtol=1e-4, atol=1e-4)
    c.close()


@pytest.mark.parametrize("D", [8, 16, 24, 40, 136])
def test_int8_decode_bit_identical_across_isas(rng, D):
    """The INT8 cache's decode is integer arithmetic with a fixed float epilogue: the SIMD ISAs agree
    bit for bit (and with the reference within its tolerance), into a NaN-poisoned output."""
    isas = cpu_isas()
    k, v = randn(rng, (300, HK, D)), randn(rng, (300, HK, D))
    q = randn(rng, (1, 2, 4, D))
    outs = {}
    for isa in isas:
        with qattn.KVCache(HK, D, block_size=16, dtype="int8", capacity_blocks=32, max_seqs=1, isa=isa) as c:
            c.append(0, k, v)
            out = np.full(q.shape, np.nan, np.float32)
            c.decode(q, [0], out=out)
            assert np.isfinite(out).all(), isa
            kd, vd = c.read(0)
            o_deq, _ = ref_attention(q, kd[None], vd[None], causal=True)
            assert rel_l2(out, o_deq) < TOL["int8"][0], (isa, rel_l2(out, o_deq))
            outs[isa] = out
    simd = [outs[i] for i in isas if i != "ref"]
    for o in simd[1:]:
        np.testing.assert_array_equal(o, simd[0])


def test_decode_dtypes_and_out(rng):
    torch = pytest.importorskip("torch")
    with qattn.KVCache(HK, D, dtype="bf16", capacity_blocks=8, max_seqs=2) as c:
        k, v = randn(rng, (20, HK, D)), randn(rng, (20, HK, D))
        c.append(0, torch.from_numpy(k).to(torch.bfloat16), torch.from_numpy(v).to(torch.bfloat16))
        q = torch.from_numpy(randn(rng, (1, 1, 4, D))).to(torch.bfloat16)
        o = c.decode(q, [0])
        assert isinstance(o, torch.Tensor) and o.dtype == torch.bfloat16 and o.shape == q.shape
        out = torch.empty(q.shape, dtype=torch.float32)
        o2 = c.decode(q, torch.tensor([0]), out=out)
        assert o2 is out
        assert rel_l2(out.numpy(), o.float().numpy()) < 1e-2
        qn = randn(rng, (1, 1, 4, D)).astype(np.float16)
        assert c.decode(qn, [0]).dtype == np.float16


def test_bad_inputs(rng):
    with pytest.raises(qattn.QattnValueError, match="head_dim"):
        qattn.KVCache(HK, 60, dtype="fp16", capacity_blocks=4)
    with pytest.raises(qattn.QattnValueError, match="n_blocks"):
        qattn.KVCache(HK, D, capacity_blocks=0)
    with pytest.raises(ValueError, match="dtype"):
        qattn.KVCache(HK, D, dtype="fp32")
    with pytest.raises(TypeError):
        qattn.KVCache(HK, D, block_size=16.0)
    c = qattn.KVCache(HK, D, block_size=16, dtype="int8", capacity_blocks=8, max_seqs=2)
    k = randn(rng, (3, HK, D))
    with pytest.raises(qattn.QattnValueError, match="out of range"):
        c.append(2, k, k)
    with pytest.raises(qattn.QattnValueError, match="out of range"):
        c.seq_len(-1)
    with pytest.raises(ValueError, match="kv_heads=2, head_dim=64"):
        c.append(0, randn(rng, (3, 4, D)), randn(rng, (3, 4, D)))
    with pytest.raises(ValueError, match="must match"):
        c.append(0, k, k[:2])
    with pytest.raises(TypeError, match="dtype"):
        c.append(0, k.astype(np.float64), k.astype(np.float64))
    with pytest.raises(TypeError, match="must match"):
        c.append(0, k, k.astype(np.float16))
    c.append(0, k, k)
    with pytest.raises(qattn.QattnValueError, match="free it first"):
        c.fork(1, 0)
    with pytest.raises(qattn.QattnValueError):
        c.fork(0, 0)
    with pytest.raises(ValueError):
        c.read(0, 2, 5)
    q = randn(rng, (1, 1, 4, D))
    with pytest.raises(ValueError, match="head_dim=64"):
        c.decode(randn(rng, (1, 1, 4, 32)), [0])
    with pytest.raises(ValueError, match="seq_ids lists 2"):
        c.decode(q, [0, 1])
    with pytest.raises(qattn.QattnValueError):  # sequence 1 holds fewer than Lq tokens
        c.decode(q, [1])
    with pytest.raises(qattn.QattnValueError):  # Lq 65 > 64
        c.decode(randn(rng, (1, 65, 4, D)), [0])
    with pytest.raises(qattn.QattnValueError):  # heads not a multiple of kv heads
        c.decode(randn(rng, (1, 1, 3, D)), [0])
    with pytest.raises(ValueError, match="right window"):
        c.decode(q, [0], window=(4, 2))
    with pytest.raises(ValueError, match="scale"):
        c.decode(q, [0], scale=0.0)
    with pytest.raises(TypeError, match="seq_ids"):
        c.decode(q, ["a"])
    with pytest.raises(ValueError, match="out has shape"):
        c.decode(q, [0], out=np.empty((1, 1, 4, 32), np.float32))
    o = c.decode(q, [0], window=(1, 0))
    assert np.isfinite(o).all()
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.decode(q, [0])


@pytest.mark.skipif(not qattn._lib.has_symbol("qattn_kv_cache_set_calibration"), reason="no KV cache calibration")
def test_calibrated_int8_cache(rng):
    """An INT8 cache with static channel transforms (qattn.calibrate on the same data): decode
    within the same tolerances as the default cache against its own read-back (which is in the
    original domain). On keys with an outlier channel (x12 spread, +10 offset), both the default
    cache (K rotated) and the calibrated one must at least halve the error against the original
    values of plain per-token codes (simulated here), whose K scale the outlier sets. The export carries
    the transforms at the arena's tail. A non-empty or FP16 cache refuses a calibration."""
    H, n, lq = 4, 300, 2
    k, v, q = randn(rng, (n, HK, D)), randn(rng, (n, HK, D)), randn(rng, (1, lq, H, D))
    k[..., 7] = k[..., 7] * 12 + 10
    cal = qattn.calibrate(q, k[None], v[None])
    o_orig, _ = ref_attention(q, k[None], v[None], causal=True)

    o_plain, _ = ref_attention(q, per_token(k)[None], per_token(v)[None], causal=True)
    err_plain = rel_l2(o_plain, o_orig)
    errs = []
    for calibrated in (False, True):
        with qattn.KVCache(HK, D, block_size=16, dtype="int8", capacity_blocks=32, max_seqs=2) as c:
            if calibrated:
                c.set_calibration(cal)
            c.append(0, k, v)
            o, lse = c.decode(q, [0], return_lse=True)
            kd, vd = c.read(0)
            o_deq, lse_deq = ref_attention(q, kd[None], vd[None], causal=True)
            assert rel_l2(o, o_deq) < TOL["int8"][0]
            np.testing.assert_allclose(lse[0], lse_deq[0], rtol=1e-4, atol=1e-4)
            errs.append(rel_l2(o, o_orig))
            lay = c.export()
            tail = lay["arena"][lay["n_blocks"] * lay["block_bytes"]:].view(np.float32).reshape(5, HK, D)
            np.testing.assert_array_equal(tail[0], cal.k_factor if calibrated else np.ones((HK, D), np.float32))
            np.testing.assert_array_equal(tail[1], cal.k_mean if calibrated else np.zeros((HK, D), np.float32))
            if calibrated:
                with pytest.raises(qattn.QattnValueError, match="holds 300 tokens"):
                    c.set_calibration(cal)
    assert max(errs) < 0.5 * err_plain, (err_plain, errs)
    with qattn.KVCache(HK, D, dtype="fp16", capacity_blocks=4) as c:
        with pytest.raises(qattn.QattnValueError, match="INT8"):
            c.set_calibration(cal)
    with qattn.KVCache(HK, D, dtype="int8", capacity_blocks=4) as c:
        with pytest.raises(ValueError, match="shape"):
            c.set_calibration(qattn.calibrate(q[:, :, :2], k[None, :, :1], v[None, :, :1]))
