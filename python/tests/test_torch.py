"""torch CPU tensors: same results as numpy, torch out, bf16, SDPA layout, torch-specific error paths."""
import numpy as np
import pytest

import qattn
from conftest import ref_attention, ref_varlen, rel_l2

torch = pytest.importorskip("torch", reason="torch is not installed: the torch-tensor tests need it (pip install torch)")


def t_randn(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def f64(x):
    return x.detach().to(torch.float64).numpy()


@pytest.mark.parametrize("causal", [False, True])
def test_torch_fp32_vs_fp64_and_sdpa(causal):
    B, H, HK, Lq, Lk, D = 2, 8, 2, 13, 29, 64
    q, k, v = t_randn((B, H, Lq, D), seed=1), t_randn((B, HK, Lk, D), seed=2), t_randn((B, HK, Lk, D), seed=3)
    o = qattn.attention(q, k, v, causal=causal, layout="bhsd")
    assert isinstance(o, torch.Tensor) and o.dtype == torch.float32 and o.shape == q.shape
    t = lambda x: f64(x).transpose(0, 2, 1, 3)
    ref, _ = ref_attention(t(q), t(k), t(v), causal=causal)
    assert rel_l2(t(o), ref) <= 1e-5
    if not causal:  # SDPA's is_causal is top-left aligned; qattn's (flash-attn's) is bottom-right
        kk, vv = k.repeat_interleave(H // HK, dim=1), v.repeat_interleave(H // HK, dim=1)
        sd = torch.nn.functional.scaled_dot_product_attention(q, kk, vv)
        assert rel_l2(f64(o), f64(sd)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_half_within_2x_of_input_rounding(dtype):
    B, L, H, D = 1, 37, 4, 128
    q32, k32, v32 = t_randn((B, L, H, D), seed=4), t_randn((B, L, H, D), seed=5), t_randn((B, L, H, D), seed=6)
    ref, _ = ref_attention(f64(q32), f64(k32), f64(v32), causal=True)
    q, k, v = q32.to(dtype), k32.to(dtype), v32.to(dtype)
    exact, _ = ref_attention(f64(q), f64(k), f64(v), causal=True)
    o = qattn.attention(q, k, v, causal=True)
    assert o.dtype == dtype
    base = rel_l2(f64(torch.from_numpy(exact).to(dtype)), ref)  # rounded inputs, exact math, rounded output
    assert rel_l2(f64(o), ref) <= 2 * base
    o32 = qattn.attention(q, k, v, causal=True, out=torch.empty(q.shape))
    assert rel_l2(f64(o32), ref) <= 2 * rel_l2(exact, ref) + 1e-7
    # the library's oracle reads bf16/f16 directly
    assert rel_l2(qattn.oracle(q, k, v, causal=True), exact) <= 1e-6


def test_torch_varlen_and_lse():
    H, D = 2, 64
    cu_q = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    cu_k = torch.tensor([0, 8, 9, 20], dtype=torch.int32)
    q, k, v = t_randn((10, H, D), seed=7), t_randn((20, H, D), seed=8), t_randn((20, H, D), seed=9)
    o, lse = qattn.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True, return_lse=True)
    assert isinstance(lse, torch.Tensor) and lse.shape == (H, 10) and lse.dtype == torch.float32
    ref, ref_lse = ref_varlen(f64(q), f64(k), f64(v), cu_q.numpy(), cu_k.numpy(), causal=True)
    assert rel_l2(f64(o), ref) <= 1e-5
    np.testing.assert_allclose(lse.numpy(), ref_lse, rtol=1e-5)
    # int64 offsets (torch's default integer type) are accepted and converted
    o2 = qattn.attention(q, k, v, cu_seqlens_q=cu_q.long(), cu_seqlens_k=cu_k.long(), causal=True)
    assert torch.equal(o, o2)


def test_torch_views_and_grad_inputs():
    cache = t_randn((1, 64, 4, 96), seed=10)
    k, v = cache[:, 5:40, :2, :64], cache[:, 5:40, 2:, 32:]  # strided views, no copy
    q = t_randn((1, 6, 4, 64), seed=11).requires_grad_()
    o = qattn.attention(q, k, v)
    assert not o.requires_grad  # forward only
    ref, _ = ref_attention(f64(q), f64(k), f64(v))
    assert rel_l2(f64(o), ref) <= 1e-5


def test_torch_errors():
    q, k, v = t_randn((1, 4, 2, 64)), t_randn((1, 4, 2, 64)), t_randn((1, 4, 2, 64))
    with pytest.raises(TypeError, match="dtype"):
        qattn.attention(q.double(), k, v)
    with pytest.raises(TypeError, match="dtype"):
        qattn.attention(q.to(torch.int32), k, v)
    with pytest.raises(ValueError, match="contiguous"):
        qattn.attention(t_randn((1, 4, 2, 128))[..., ::2], k, v)
    with pytest.raises(ValueError, match="contiguous"):
        qattn.attention(q, k, t_randn((1, 4, 64, 2)).transpose(2, 3))
    with pytest.raises(TypeError, match="kind"):
        qattn.attention(q, k.numpy(), v)
    with pytest.raises(ValueError, match="on device meta"):
        qattn.attention(q, k, v.to("meta"))
    with pytest.raises(TypeError, match="strided"):
        qattn.attention(q, k.to_sparse(), v)
    with pytest.raises(ValueError, match="out is a numpy on cpu"):
        qattn.attention(q, k, v, out=np.empty((1, 4, 2, 64), np.float32))
    with pytest.raises(ValueError, match="overlaps v"):
        qattn.attention(q, k, v, out=v)
    with pytest.raises(ValueError, match="does not divide"):
        qattn.attention(t_randn((1, 4, 3, 64)), k, v)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="one device"):
            qattn.attention(q, k.cuda(), v)
