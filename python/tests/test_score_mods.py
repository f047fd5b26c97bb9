"""softcap and alibi_slopes keywords of qattn.attention (flash-attn's flash_attn_func names) against an
independent FP64 numpy reference, the library's oracle and torch SDPA with an explicit additive bias."""
import numpy as np
import pytest

import qattn
from conftest import randn, rel_l2

FP32_TOL = 1e-5


def alibi_slopes(H):
    return np.array([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], dtype=np.float32)


def ref_mods(q, k, v, *, causal, softcap, slopes):
    """FP64 attention with the header's formula: s = scale q.k; softcap; - slope |i + Lk - Lq - j|."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    B, Lq, H, D = q.shape
    Lk, HK = k.shape[1], k.shape[2]
    scale = float(np.float32(1) / np.sqrt(np.float32(D)))
    k = np.repeat(k, H // HK, axis=2)
    v = np.repeat(v, H // HK, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap:
        s = softcap * np.tanh(s / softcap)
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    dist = np.abs(i + Lk - Lq - j).astype(np.float64)
    if slopes is not None:
        sl = np.broadcast_to(np.asarray(slopes, np.float64), (B, H))
        s = s - sl[:, :, None, None] * dist
    if causal:
        s = np.where(j <= i + Lk - Lq, s, -np.inf)
    m = s.max(-1, keepdims=True)
    seen = np.isfinite(m)  # a row that sees no key: zero output, LSE -inf
    e = np.where(seen, np.exp(s - np.where(seen, m, 0.0)), 0.0)
    l = e.sum(-1, keepdims=True)
    o = np.einsum("bhij,bjhd->bihd", e / np.where(seen, l, 1.0), v)
    return o, np.where(seen[..., 0], m[..., 0] + np.log(np.where(seen, l, 1.0)[..., 0]), -np.inf)


CASES = [  # (B, Lq, Lk, H, HK, D, causal, softcap, alibi: None / "H" / "BH")
    (2, 17, 113, 4, 2, 64, True, 5.0, None),
    (1, 70, 70, 8, 8, 128, False, 0.0, "H"),
    (3, 33, 20, 4, 1, 80, True, 30.0, "BH"),
    (2, 1, 300, 8, 2, 64, False, 5.0, "BH"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B%d_Lq%d_Lk%d_H%d_HK%d_D%d_c%d_cap%g_%s" % c)
def test_fp32_matches_fp64(case, rng):
    B, Lq, Lk, H, HK, D, causal, softcap, mode = case
    q, k, v = randn(rng, (B, Lq, H, D)), randn(rng, (B, Lk, HK, D)), randn(rng, (B, Lk, HK, D))
    slopes = None if mode is None else alibi_slopes(H) if mode == "H" else (alibi_slopes(H)[None, :] * (1 + np.arange(B)[:, None])).astype(np.float32)
    o, lse = qattn.attention(q, k, v, causal=causal, softcap=softcap, alibi_slopes=slopes, return_lse=True)
    ref, ref_lse = ref_mods(q, k, v, causal=causal, softcap=softcap, slopes=slopes)
    assert rel_l2(o, ref) <= FP32_TOL
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), fin) and np.all(lse[~fin] == -np.inf)
    np.testing.assert_allclose(lse[fin], ref_lse[fin], rtol=1e-5, atol=1e-5)
    o64, lse64 = qattn.oracle(q, k, v, causal=causal, softcap=softcap, alibi_slopes=slopes, return_lse=True)
    assert rel_l2(o64, ref) <= 1e-12
    np.testing.assert_allclose(lse64[fin], ref_lse[fin], rtol=1e-12)
    plain = qattn.attention(q, k, v, causal=causal)
    assert rel_l2(plain, ref) > 1e-3  # the keywords changed the result


def test_bad_values_raise_valueerror(rng):
    q = randn(rng, (2, 8, 4, 64))
    for cap in (-1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError):
            qattn.attention(q, q, q, softcap=cap)
    with pytest.raises(ValueError, match="shape"):
        qattn.attention(q, q, q, alibi_slopes=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="shape"):
        qattn.attention(q, q, q, alibi_slopes=np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        qattn.attention(q, q, q, alibi_slopes=np.ones(4, np.float64))
    with pytest.raises(ValueError, match="finite"):
        qattn.attention(q, q, q, alibi_slopes=np.array([1, np.nan, 1, 1], np.float32))


def test_int8_refused(rng):
    q = randn(rng, (1, 8, 4, 64))
    with pytest.raises(NotImplementedError):
        qattn.attention(q, q, q, precision="int8", softcap=5.0)


def test_torch_sdpa_additive_bias(rng):
    torch = pytest.importorskip("torch")
    B, Lq, Lk, H, D = 2, 40, 64, 4, 64
    q, k, v = randn(rng, (B, H, Lq, D)), randn(rng, (B, H, Lk, D)), randn(rng, (B, H, Lk, D))
    slopes = alibi_slopes(H)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    o = qattn.attention(tq, tk, tv, causal=True, layout="bhsd", alibi_slopes=torch.from_numpy(slopes))
    i = torch.arange(Lq)[:, None]
    j = torch.arange(Lk)[None, :]
    bias = -torch.from_numpy(slopes)[:, None, None] * (i + Lk - Lq - j).abs().float()
    bias = bias.masked_fill(j > i + Lk - Lq, float("-inf"))
    ref = torch.nn.functional.scaled_dot_product_attention(tq.double(), tk.double(), tv.double(), attn_mask=bias.double())
    assert ((o.double() - ref).norm() / ref.norm()).item() <= FP32_TOL
