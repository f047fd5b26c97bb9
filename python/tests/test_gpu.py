"""CUDA tensors by pointer on torch's current stream: qattn vs torch SDPA and vs qattn's CPU path.
Skipped (with the reason shown by pytest -rs) without a CUDA device or without a CUDA build of libqattn."""
import pytest

import qattn
from conftest import rel_l2

torch = pytest.importorskip("torch", reason="torch is not installed")
if not torch.cuda.is_available():
    pytest.skip("torch.cuda is not available (no GPU or a CPU-only torch)", allow_module_level=True)
if not qattn.info()["cuda_available"]:
    pytest.skip("libqattn at %s has no CUDA backend or sees no device" % qattn.library_path, allow_module_level=True)

F = torch.nn.functional


def rnd(shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)


def f64(x):
    return x.detach().double().cpu().numpy()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_vs_sdpa_and_cpu(dtype, D, causal):
    B, H, L = 2, 8, 257  # Lq == Lk so SDPA's top-left causal equals qattn's bottom-right
    q, k, v = rnd((B, H, L, D), dtype, 1), rnd((B, H, L, D), dtype, 2), rnd((B, H, L, D), dtype, 3)
    o = qattn.attention(q, k, v, causal=causal, layout="bhsd")
    assert o.device == q.device and o.dtype == dtype and o.shape == q.shape
    ref = qattn.oracle(q, k, v, causal=causal, layout="bhsd")  # FP64 of the same (rounded) inputs
    sd = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    cpu = qattn.attention(q.cpu(), k.cpu(), v.cpu(), causal=causal, layout="bhsd")
    torch.cuda.synchronize()
    # docs/ARCHITECTURE.md "Tolerances": within 2x of the peer's error (SDPA) / the output rounding, not a guessed tolerance
    err, err_sdpa, err_cpu = rel_l2(f64(o), ref), rel_l2(f64(sd), ref), rel_l2(f64(cpu), ref)
    assert err <= 2 * max(err_sdpa, err_cpu), (err, err_sdpa, err_cpu)


def test_cuda_gqa_varlen_on_a_side_stream():
    dtype, H, HK, D = torch.float16, 8, 2, 128
    cu_q = torch.tensor([0, 1, 1, 40], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 100, 103, 180], dtype=torch.int32, device="cuda")
    q, k, v = rnd((40, H, D), dtype, 4), rnd((180, HK, D), dtype, 5), rnd((180, HK, D), dtype, 6)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # the call must run on, and be ordered by, the current stream
        o, lse = qattn.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True, return_lse=True)
    s.synchronize()
    assert lse.device == q.device and lse.shape == (H, 40)
    ref = qattn.oracle(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True)
    cpu = qattn.attention(q.cpu(), k.cpu(), v.cpu(), cu_seqlens_q=cu_q.cpu(), cu_seqlens_k=cu_k.cpu(), causal=True)
    assert rel_l2(f64(o), ref) <= 2 * max(rel_l2(f64(cpu), ref), 1e-3)


def test_cuda_errors():
    q = rnd((1, 4, 2, 64), torch.float16, 7)
    with pytest.raises(ValueError, match="one device"):
        qattn.attention(q, q.cpu(), q)
    with pytest.raises(ValueError, match="cannot read tensors on cuda"):
        qattn.attention(q, q.clone(), q.clone(), backend="cpu")
    with pytest.raises(ValueError, match="out is a torch on cpu"):
        qattn.attention(q, q.clone(), q.clone(), out=torch.empty(q.shape, dtype=q.dtype))


def test_cuda_int8_calibrated():
    """A calibration (qattn.calibrate on the CPU) moved to the GPU: on the sequence it came from, the
    calibrated INT8 call equals the dynamic one bitwise (same factors and means); numpy arrays are
    refused for CUDA inputs."""
    B, L, H, HK, D = 1, 300, 4, 2, 128
    q, k, v = rnd((B, L, H, D), torch.float16, 11), rnd((B, L, HK, D), torch.float16, 12) + 2, rnd((B, L, HK, D), torch.float16, 13)
    cal = qattn.calibrate(q.cpu(), k.cpu(), v.cpu())
    dyn = qattn.attention(q, k, v, precision="int8", causal=True)
    calo = qattn.attention(q, k, v, precision="int8", causal=True, calibration=cal.to(q.device))
    torch.cuda.synchronize()
    assert torch.equal(dyn, calo)
    with pytest.raises(ValueError, match="tensor of shape"):
        qattn.attention(q, k, v, precision="int8", calibration=cal)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_int4_vs_cpu(D, causal):
    """precision="int4" on the GPU: the CPU's 4-bit Q/K codes (V per channel and tile as the GPU's INT8),
    so its error against the FP64 reference is the CPU INT4's within 1.5x (docs/FORMAT.md section 8: the
    4-bit Q/K rounding dominates), and above the GPU INT8's (the codes really are 4-bit)."""
    B, L, H, HK = 1, 300, 4, 2
    q, k, v = rnd((B, L, H, D), torch.float16, 21), rnd((B, L, HK, D), torch.float16, 22), rnd((B, L, HK, D), torch.float16, 23)
    o4 = qattn.attention(q, k, v, precision="int4", causal=causal)
    o8 = qattn.attention(q, k, v, precision="int8", causal=causal)
    c4 = qattn.attention(q.cpu(), k.cpu(), v.cpu(), precision="int4", causal=causal)
    torch.cuda.synchronize()
    ref = qattn.oracle(q, k, v, causal=causal)
    e4, e8, ec4 = rel_l2(f64(o4), ref), rel_l2(f64(o8), ref), rel_l2(f64(c4), ref)
    assert e4 <= 1.5 * ec4 and e4 > 2 * e8, (e4, ec4, e8)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_kv_cache_decode_cuda_vs_cpu(dtype):
    """KVCache.decode on a CUDA q (qattn_kv_decode_cuda over a device copy) vs the CPU decode of
    the same cache; the device copy is refreshed after an append."""
    if not qattn._lib.has_symbol("qattn_kv_decode_cuda"):
        pytest.skip("libqattn has no qattn_kv_decode_cuda")
    g = torch.Generator().manual_seed(3)
    with qattn.KVCache(2, 128, block_size=16, dtype=dtype, capacity_blocks=64, max_seqs=3) as c:
        for sid, n in ((0, 70), (2, 300)):
            c.append(sid, torch.randn(n, 2, 128, generator=g), torch.randn(n, 2, 128, generator=g))
        for step in range(2):
            q = torch.randn(2, 2, 8, 128, generator=g)
            o_cpu, l_cpu = c.decode(q, [2, 0], return_lse=True)
            o_gpu, l_gpu = c.decode(q.cuda(), [2, 0], return_lse=True)
            torch.cuda.synchronize()
            assert o_gpu.is_cuda and rel_l2(o_gpu.cpu().numpy(), o_cpu.numpy()) < 1e-3
            assert rel_l2(l_gpu.cpu().numpy(), l_cpu.numpy()) < 1e-4
            c.append(0, torch.randn(5, 2, 128, generator=g), torch.randn(5, 2, 128, generator=g))


def test_kv_cache_decode_cuda_calibrated():
    """An INT8 cache with a calibration (factors other than 1, nonzero means): the GPU decode applies
    the transforms the export carries at the arena's tail, as the CPU decode does."""
    if not qattn._lib.has_symbol("qattn_kv_decode_cuda"):
        pytest.skip("libqattn has no qattn_kv_decode_cuda")
    g = torch.Generator().manual_seed(5)
    k = torch.randn(400, 2, 128, generator=g)
    k[:, :, 5::32] = k[:, :, 5::32] * 12 + 10  # outlier channels, so the factors and means matter
    v = torch.randn(400, 2, 128, generator=g) + 3
    q = torch.randn(1, 2, 8, 128, generator=g)
    cal = qattn.calibrate(q.numpy(), k.unsqueeze(0).numpy(), v.unsqueeze(0).numpy())
    assert (cal.k_factor != 1).any() and (cal.k_mean != 0).any()
    with qattn.KVCache(2, 128, block_size=16, dtype="int8", capacity_blocks=64, max_seqs=1) as c:
        c.set_calibration(cal)
        c.append(0, k, v)
        o_cpu, l_cpu = c.decode(q, [0], return_lse=True)
        o_gpu, l_gpu = c.decode(q.cuda(), [0], return_lse=True)
        torch.cuda.synchronize()
        assert rel_l2(o_gpu.cpu().numpy(), o_cpu.numpy()) < 1e-3
        assert rel_l2(l_gpu.cpu().numpy(), l_cpu.numpy()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_kvcache_vs_cpu(dtype, causal):
    """attention_with_kvcache on GPU tensors (paged, rotary, GQA, unequal lengths): the caches after the
    append bit for bit the CPU backend's, the output within the GPU forward's error of the CPU's."""
    B, Lq, Sn, H, HK, D, page, n_pages = 3, 4, 4, 8, 2, 128, 16, 40
    kc, vc = rnd((n_pages, page, HK, D), dtype, 11), rnd((n_pages, page, HK, D), dtype, 12)
    q, kn, vn = rnd((B, Lq, H, D), dtype, 13), rnd((B, Sn, HK, D), dtype, 14), rnd((B, Sn, HK, D), dtype, 15)
    table = torch.randperm(n_pages, generator=torch.Generator().manual_seed(5))[:B * 12].reshape(B, 12).to(torch.int32)
    cs = torch.tensor([0, 37, 150], dtype=torch.int32)
    ang = torch.rand((200, 32), generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 6.283185307179586
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
    args = dict(rotary_cos=cos, rotary_sin=sin, cache_seqlens=cs, block_table=table, causal=causal, return_lse=True)
    kc_cpu, vc_cpu = kc.cpu(), vc.cpu()
    o_cpu, lse_cpu = qattn.attention_with_kvcache(q.cpu(), kc_cpu, vc_cpu, kn.cpu(), vn.cpu(), **args)
    o, lse = qattn.attention_with_kvcache(q, kc, vc, kn, vn, **{**args, "block_table": table.cuda(), "cache_seqlens": cs.cuda()})
    torch.cuda.synchronize()
    assert torch.equal(kc.cpu(), kc_cpu) and torch.equal(vc.cpu(), vc_cpu)
    # the GPU forward's bounds (tests/ops.c "CUDA targets"): relative L2 2e-3 (FP16), 1.6e-2 (BF16); LSE 1e-2
    bound = 2e-3 if dtype == torch.float16 else 1.6e-2
    assert rel_l2(f64(o), f64(o_cpu)) <= bound
    assert (lse.cpu() - lse_cpu).abs().max().item() <= 1e-2


def test_cuda_kvcache_refusals_leave_the_cache():
    """On the GPU: two sequences appending to one cache slot (the appends run in parallel) and float32
    tensors are refused with the library's message, and the caches stay as they were."""
    dtype, HK, D, page = torch.float16, 2, 64, 16
    kc, vc = rnd((8, page, HK, D), dtype, 21), rnd((8, page, HK, D), dtype, 22)
    q, kn, vn = rnd((2, 1, 4, D), dtype, 23), rnd((2, 1, HK, D), dtype, 24), rnd((2, 1, HK, D), dtype, 25)
    kc0, vc0 = kc.clone(), vc.clone()
    table = torch.tensor([[3, 4], [3, 5]], dtype=torch.int32, device="cuda")  # page 3 shared
    cs = torch.tensor([5, 5], dtype=torch.int32, device="cuda")  # both append at page 3, offset 5
    with pytest.raises(ValueError, match="both append to page 3"):
        qattn.attention_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=cs, block_table=table)
    cs_ok = torch.tensor([5, 6], dtype=torch.int32, device="cuda")  # offsets 5 and 6: fine
    qattn.attention_with_kvcache(q, kc.clone(), vc.clone(), kn, vn, cache_seqlens=cs_ok, block_table=table)
    with pytest.raises(NotImplementedError, match="fp16 or bf16"):
        qattn.attention_with_kvcache(q.float(), kc.float(), vc.float(), kn.float(), vn.float(), cache_seqlens=cs_ok, block_table=table)
    torch.cuda.synchronize()
    assert torch.equal(kc, kc0) and torch.equal(vc, vc0)
