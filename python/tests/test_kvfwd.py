"""qattn.attention_with_kvcache (flash_attn_with_kvcache over cache tensors) and the rotary helpers.

Expected values are computed the way flash-attn's test_flash_attn_kvcache does: rotate q and the
new k with a reference rotary (numpy, float64 per pair, rounded to float32 then to the dtype: the
rule qattn.h documents, so the stored keys match bit for bit), write them into a copy of the cache,
gather each sequence's keys through the block table, and run the FP64 reference attention
(conftest.ref_attention) on the gathered cache. Inputs are exact in their dtype, so only FP32
accumulation separates the library from the reference: relative L2 <= 1e-5 (tests/ops.c's
FP32 bound), plus 2^-11 when the output is float16 (its rounding).
"""
import numpy as np
import pytest

import qattn
from conftest import ref_attention, rel_l2

pytestmark = pytest.mark.skipif(not qattn._lib.has_symbol("qattn_forward_kvcache"), reason="libqattn without qattn_forward_kvcache")


def rotary_ref(x, cos, sin, positions, interleaved):
    """x [..., D] float32 rows rotated at positions (same leading shape), float64 per pair, rounded to float32."""
    x = np.array(x, dtype=np.float32)
    rd = 2 * cos.shape[1]
    c = cos[positions].astype(np.float64)
    s = sin[positions].astype(np.float64)
    if interleaved:
        a, b = x[..., 0:rd:2].astype(np.float64), x[..., 1:rd:2].astype(np.float64)
    else:
        a, b = x[..., : rd // 2].astype(np.float64), x[..., rd // 2: rd].astype(np.float64)
    ya, yb = (a * c - b * s).astype(np.float32), (a * s + b * c).astype(np.float32)
    if interleaved:
        x[..., 0:rd:2], x[..., 1:rd:2] = ya, yb
    else:
        x[..., : rd // 2], x[..., rd // 2: rd] = ya, yb
    return x


def make_tables(rng, rows, rd):
    angle = rng.uniform(0, 2 * np.pi, size=(rows, rd // 2))
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def expected(q, k_cache, v_cache, k, v, cos, sin, cache_seqlens, block_table, causal, window, interleaved):
    """(o, lse, k_cache after, v_cache after) by the flash-attn test's recipe."""
    dt = q.dtype
    B, Lq = q.shape[:2]
    kc, vc = k_cache.copy(), v_cache.copy()
    sn = 0 if k is None else k.shape[1]
    per_pos = causal or window != (-1, -1)
    qf = q.astype(np.float32)
    if cos is not None:
        pos_q = cache_seqlens[:, None] + (np.arange(Lq)[None, :] if per_pos else 0)
        qf = rotary_ref(qf, cos, sin, np.broadcast_to(pos_q[:, :, None], q.shape[:3]), interleaved).astype(dt).astype(np.float32)
    for b in range(B):
        for j in range(sn):
            t = cache_seqlens[b] + j
            krow = k[b, j].astype(np.float32)
            if cos is not None:
                krow = rotary_ref(krow, cos, sin, np.full(krow.shape[0], t), interleaved)
            if block_table is None:
                kc[b, t], vc[b, t] = krow.astype(dt), v[b, j]
            else:
                page, off = block_table[b, t // kc.shape[1]], t % kc.shape[1]
                kc[page, off], vc[page, off] = krow.astype(dt), v[b, j]
    H, D = q.shape[2], q.shape[3]
    o = np.zeros((B, Lq, H, D))
    lse = np.zeros((B, H, Lq))
    for b in range(B):
        lk = cache_seqlens[b] + sn
        if block_table is None:
            kb, vb = kc[b, :lk], vc[b, :lk]
        else:
            pages = block_table[b, : -(-lk // kc.shape[1])]
            kb = kc[pages].reshape(-1, *kc.shape[2:])[:lk]
            vb = vc[pages].reshape(-1, *vc.shape[2:])[:lk]
        ob, lb = ref_attention(qf[b: b + 1], kb[None].astype(np.float32), vb[None].astype(np.float32), causal=causal, window=window)
        o[b], lse[b] = ob[0], lb[0]
    return o, lse, kc, vc


def paged_cache(rng, B, lens, page, HK, D, dtype, spare_pages=3):
    """A paged cache with shuffled page ids, NaN in every slot no token holds."""
    max_blocks = max(lens) // page + 2
    n_pages = B * max_blocks + spare_pages
    kc = np.full((n_pages, page, HK, D), np.nan, dtype=dtype)
    vc = np.full_like(kc, np.nan)
    perm = rng.permutation(n_pages).astype(np.int32)
    table = perm[: B * max_blocks].reshape(B, max_blocks).copy()
    return kc, vc, table


def fill_prefix(rng, kc, vc, table, cache_seqlens):
    for b, n in enumerate(cache_seqlens):
        for t in range(n):
            idx = (b, t) if table is None else (table[b, t // kc.shape[1]], t % kc.shape[1])
            kc[idx] = rng.standard_normal(kc.shape[2:]).astype(kc.dtype)
            vc[idx] = rng.standard_normal(vc.shape[2:]).astype(vc.dtype)


@pytest.mark.parametrize("page,dtype,causal,window,interleaved,rd,Lq,sn", [
    (16, np.float32, True, (-1, -1), True, 64, 1, 1),        # decode
    (32, np.float16, True, (-1, -1), False, 32, 5, 5),       # speculative decode, rotary_dim < D
    (256, np.float32, True, (-1, -1), True, 64, 100, 7),     # chunked prefill, Lq != seqlen_new
    (16, np.float32, False, (20, 3), False, 64, 5, 7),       # two-sided window
    (None, np.float16, False, (-1, -1), True, 64, 5, 1),     # contiguous, every query at cache_seqlens
    (None, np.float32, True, (-1, -1), None, 0, 5, 0),       # no new tokens, no rotary
    (16, np.float16, False, (30, 7), True, 32, 80, 80),      # > 64 queries per call, right window, rotary_dim < D
])
def test_matches_reference(rng, page, dtype, causal, window, interleaved, rd, Lq, sn):
    B, H, HK, D = 3, 8, 2, 64
    cache_seqlens = np.array([0, 17, 40], dtype=np.int32)
    lens = cache_seqlens + sn
    if page is None:
        kc = np.full((B, int(lens.max()) + 5, HK, D), np.nan, dtype=dtype)
        vc = np.full_like(kc, np.nan)
        table = None
    else:
        kc, vc, table = paged_cache(rng, B, lens, page, HK, D, dtype)
    fill_prefix(rng, kc, vc, table, cache_seqlens)
    q = rng.standard_normal((B, Lq, H, D)).astype(dtype)
    k = rng.standard_normal((B, sn, HK, D)).astype(dtype) if sn else None
    v = rng.standard_normal((B, sn, HK, D)).astype(dtype) if sn else None
    cos = sin = None
    if rd:
        per_pos = causal or window != (-1, -1)
        rows = int(max(lens.max(), (cache_seqlens + (Lq if per_pos else 1)).max()))
        cos, sin = make_tables(rng, rows, rd)
    o_ref, lse_ref, kc_ref, vc_ref = expected(q, kc, vc, k, v, cos, sin, cache_seqlens, table, causal, window, interleaved)
    o, lse = qattn.attention_with_kvcache(q, kc, vc, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=cache_seqlens,
                                          block_table=table, causal=causal, window_size=window,
                                          rotary_interleaved=bool(interleaved), return_lse=True)
    # the caches, updated in place: exactly the rotated new keys and the new values, nothing else
    np.testing.assert_array_equal(kc.view(np.uint8), kc_ref.view(np.uint8))
    np.testing.assert_array_equal(vc.view(np.uint8), vc_ref.view(np.uint8))
    assert o.dtype == dtype and o.shape == q.shape
    tol = 1e-5 + (2.0 ** -11 if dtype == np.float16 else 0.0)
    assert rel_l2(o, o_ref) <= tol
    fin = np.isfinite(lse_ref)
    assert np.array_equal(np.isfinite(lse), fin)
    assert np.all(np.abs(lse[fin] - lse_ref[fin]) <= 1e-5 * (1 + np.abs(lse_ref[fin])))


@pytest.mark.parametrize("causal,Lq,sn,softcap,shared", [
    (True, 1, 1, 30.0, False),   # decode, slopes [B, H]
    (True, 9, 9, 5.0, True),     # chunked prefill, saturating softcap, one [H] row of slopes
    (False, 4, 2, 0.0, False),   # ALiBi alone, not causal, Lq > seqlen_new
])
def test_softcap_alibi_match_oracle(rng, causal, Lq, sn, softcap, shared):
    """softcap and ALiBi over a paged cache: the FP64 oracle (qattn.oracle, same modifiers) on each
    sequence's gathered keys, so the ALiBi distance counts from that sequence's own Lk_b."""
    B, H, HK, D, page = 3, 4, 2, 64, 16
    cache_seqlens = np.array([0, 17, 40], dtype=np.int32)
    lens = cache_seqlens + sn
    kc, vc, table = paged_cache(rng, B, lens, page, HK, D, np.float32)
    fill_prefix(rng, kc, vc, table, cache_seqlens)
    q = rng.standard_normal((B, Lq, H, D)).astype(np.float32)
    k = rng.standard_normal((B, sn, HK, D)).astype(np.float32)
    v = rng.standard_normal((B, sn, HK, D)).astype(np.float32)
    slopes = rng.uniform(0.02, 0.6, (H,) if shared else (B, H)).astype(np.float32)
    o, lse = qattn.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=cache_seqlens, block_table=table, causal=causal,
                                          return_lse=True, softcap=softcap, alibi_slopes=slopes)
    for b in range(B):
        lk = int(lens[b])
        pages = table[b, : -(-lk // page)]
        kb = kc[pages].reshape(-1, HK, D)[None, :lk]
        vb = vc[pages].reshape(-1, HK, D)[None, :lk]
        sb = slopes if shared else slopes[b]
        ob, lb = qattn.oracle(q[b: b + 1], kb, vb, causal=causal, return_lse=True, softcap=softcap, alibi_slopes=sb)
        assert rel_l2(o[b: b + 1], ob) <= 1e-5, b
        fin = np.isfinite(lb)
        assert np.array_equal(np.isfinite(lse[b: b + 1]), fin)
        assert np.all(np.abs(lse[b: b + 1][fin] - lb[fin]) <= 1e-5 * (1 + np.abs(lb[fin])))
    with pytest.raises(ValueError):
        qattn.attention_with_kvcache(q, kc, vc, cache_seqlens=lens, block_table=table, alibi_slopes=np.ones(H + 1, np.float32))


def test_torch_bf16_paged(rng):
    torch = pytest.importorskip("torch")
    B, H, HK, D, page, sn = 2, 4, 1, 128, 16, 3
    cache_seqlens = np.array([5, 33], dtype=np.int32)
    kc, vc, table = paged_cache(rng, B, cache_seqlens + sn, page, HK, D, np.float32)
    fill_prefix(rng, kc, vc, table, cache_seqlens)
    q = rng.standard_normal((B, sn, H, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, sn, HK, D)).astype(np.float32) for _ in range(2))
    cos, sin = make_tables(rng, 64, 64)
    to = lambda x: torch.from_numpy(x).to(torch.bfloat16)  # noqa: E731
    kct, vct = to(np.nan_to_num(kc)), to(np.nan_to_num(vc))
    o = qattn.attention_with_kvcache(to(q), kct, vct, to(k), to(v), rotary_cos=torch.from_numpy(cos), rotary_sin=torch.from_numpy(sin),
                                     cache_seqlens=torch.from_numpy(cache_seqlens), block_table=torch.from_numpy(table), causal=True)
    assert o.dtype == torch.bfloat16
    # the reference on the cache the call left (its keys checked against the rotation below)
    lens = cache_seqlens + sn
    for b in range(B):
        pages = table[b, : -(-lens[b] // page)]
        kb = kct.float().numpy()[pages].reshape(-1, HK, D)[: lens[b]]
        vb = vct.float().numpy()[pages].reshape(-1, HK, D)[: lens[b]]
        krot = rotary_ref(to(k).float().numpy()[b], cos, sin, np.arange(cache_seqlens[b], lens[b])[:, None].repeat(HK, 1), True)
        assert np.array_equal(kb[cache_seqlens[b]:], to(krot).float().numpy())
        qb = rotary_ref(to(q).float().numpy()[b], cos, sin, np.arange(cache_seqlens[b], lens[b])[:, None].repeat(H, 1), True)
        qb = to(qb).float().numpy()
        ob, _ = ref_attention(qb[None], kb[None], vb[None], causal=True)
        assert rel_l2(o[b].float().numpy(), ob[0]) <= 1e-5 + 2.0 ** -8


def test_bad_inputs_leave_cache_unchanged(rng):
    B, H, HK, D, page = 2, 4, 2, 64, 16
    cache_seqlens = np.array([3, 20], dtype=np.int32)
    kc, vc, table = paged_cache(rng, B, cache_seqlens + 1, page, HK, D, np.float32)
    fill_prefix(rng, kc, vc, table, cache_seqlens)
    q = rng.standard_normal((B, 1, H, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, 1, HK, D)).astype(np.float32) for _ in range(2))
    before = kc.copy(), vc.copy()

    def unchanged():
        return np.array_equal(kc.view(np.uint8), before[0].view(np.uint8)) and np.array_equal(vc.view(np.uint8), before[1].view(np.uint8))

    bad = table.copy()
    bad[1, 1] = kc.shape[0]  # sequence 1's second page: out of range
    with pytest.raises(qattn.QattnValueError, match="block_table"):
        qattn.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=cache_seqlens, block_table=bad, causal=True)
    assert unchanged()
    with pytest.raises(qattn.QattnValueError, match="cache_seqlens"):
        qattn.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=np.array([3, -1], np.int32), block_table=table)
    assert unchanged()
    full = np.array([3, table.shape[1] * page], np.int32)
    with pytest.raises(qattn.QattnCapacityError, match="block_table row holds"):  # names what limits it (FA's test matches "block_table")
        qattn.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=full, block_table=table)
    assert unchanged()
    cos, sin = make_tables(rng, 20, 64)  # sequence 1 needs position 20
    with pytest.raises(qattn.QattnValueError, match="rotary"):
        qattn.attention_with_kvcache(q, kc, vc, k, v, cos, sin, cache_seqlens=cache_seqlens, block_table=table, causal=True)
    assert unchanged()
    with pytest.raises(ValueError):
        qattn.attention_with_kvcache(q, kc, vc, k, None, cache_seqlens=cache_seqlens, block_table=table)
    with pytest.raises(TypeError):
        qattn.attention_with_kvcache(q, kc.astype(np.float16), vc.astype(np.float16), cache_seqlens=cache_seqlens, block_table=table)
    with pytest.raises(qattn.QattnValueError, match="page_size"):  # not a multiple of 16
        qattn.attention_with_kvcache(q, kc[:, :8], vc[:, :8], cache_seqlens=np.array([3, 3], np.int32), block_table=table)
    assert unchanged()


def test_kvcache_object_rotary(rng):
    """KVCache.append(rotary_cos=...) stores rotated keys; rotary_apply rotates the queries alike;
    decode over it equals the reference on the rotated values."""
    HK, D, H, n = 2, 64, 4, 9
    cos, sin = make_tables(rng, 64, 48)
    k, v = (rng.standard_normal((n, HK, D)).astype(np.float32) for _ in range(2))
    q = rng.standard_normal((1, H, D)).astype(np.float32)
    with qattn.KVCache(kv_heads=HK, head_dim=D, dtype="fp16", capacity_blocks=4, max_seqs=1) as c:
        c.append(0, k[:4], v[:4])
        c.append(0, k[4:], v[4:], rotary_cos=cos, rotary_sin=sin, rotary_interleaved=False)
        kr, vr = c.read(0)
        want = rotary_ref(k[4:], cos, sin, np.arange(4, n)[:, None].repeat(HK, 1), False).astype(np.float16).astype(np.float32)
        assert np.array_equal(kr[4:], want) and np.array_equal(kr[:4], k[:4].astype(np.float16).astype(np.float32))
        qr = qattn.rotary_apply(q, cos, sin, position=n - 1, interleaved=False)
        assert np.array_equal(qr, rotary_ref(q, cos, sin, np.full((1, H), n - 1), False))
        o = c.decode(qr[None], [0])
        ref, _ = ref_attention(qr[None], kr[None], vr[None], causal=True)
        assert rel_l2(o, ref) <= 1e-5
        with pytest.raises(qattn.QattnValueError, match="rotary"):
            c.append(0, k, v, rotary_cos=cos[:10], rotary_sin=sin[:10])
        assert c.seq_len(0) == n
