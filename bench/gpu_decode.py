#!/usr/bin/env python3
"""GPU decode over the paged KV cache (qattn_kv_decode_cuda) vs torch SDPA FP16 decode.

Correctness first (small caches, poisoned outputs, GPU vs CPU qattn_kv_decode on the same cache,
run-to-run determinism), then the benchmark: B 16, H 32, HK 8, D 128, kv-len 32k, Lq 1, block 16:
qattn INT8-, FP16- and BF16-cache decode, SDPA FP16 with K/V expanded to 32 heads and with
enable_gqa=True, device copy bandwidth (clone of a 4 GB tensor, read + written), all in one run.
Three times per row:
  time:    one call between two CUDA events, synchronised after each (the latency of one call,
           host work before the first launch included); warm-up, median of 20.
  b2b:     20 calls enqueued back to back between two events, / 20 (throughput: the host work
           overlaps the previous call's kernels); median of 5.
  kernels: device time of the call's kernels alone, from torch.profiler (as bench/gpu_compare.py):
           qattn: the median split kernel (kvd_mma*, or kvd_split* of older trees; the merge is
           fused into it, so one kernel per call), SDPA: all its kernels per call; --no-kprof
           skips it.
Peer (when importable, else skipped with the reason): FlashInfer's batch decode
(BatchDecodeWithPagedKVCacheWrapper, 16-token pages, NHD) on an FP16 cache and on an FP8 e4m3 cache
with one scale per tensor (k_scale, v_scale: max |x| / 448).
"of copy bw" is for time, "b2b of copy bw" for b2b. Errors: relative L2 vs an FP64 reference on
the dequantized cache and on the original FP16 values.

Usage: python3 bench/gpu_decode.py --lib build-gpu/libqattn.so [--small] [--out DIR] [--no-kprof]
"""
import argparse
import ctypes as C
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

F32, F16, BF16, I8 = 0, 1, 2, 3
TDT = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}


class CtxOptions(C.Structure):
    _fields_ = [("backend", C.c_int32), ("isa", C.c_int32), ("n_threads", C.c_int32), ("cuda_device", C.c_int32),
                ("alloc", C.c_void_p), ("free", C.c_void_p), ("alloc_user", C.c_void_p),
                ("cuda_kernels", C.c_int32), ("reserved", C.c_int32)]


class CacheOptions(C.Structure):
    _fields_ = [("n_kv_heads", C.c_int32), ("head_dim", C.c_int32), ("block_size", C.c_int32), ("dtype", C.c_int32),
                ("n_blocks", C.c_int64), ("max_seqs", C.c_int32), ("reserved", C.c_int32), ("max_blocks_per_seq", C.c_int64)]


class Layout(C.Structure):
    _fields_ = [("arena", C.c_void_p), ("block_table", C.c_void_p)] + \
        [(n, C.c_int64) for n in ("arena_bytes", "table_entries", "n_blocks", "block_bytes", "max_blocks_per_seq",
                                  "head_bytes", "v_offset", "ks_offset", "vs_offset")] + \
        [(n, C.c_int32) for n in ("n_kv_heads", "head_dim", "block_size", "dtype", "max_seqs", "reserved")]


class DevCache(C.Structure):
    _fields_ = [("arena", C.c_void_p), ("block_table", C.c_void_p), ("stream", C.c_void_p)]


class DecodeParams(C.Structure):
    _fields_ = [("q", C.c_void_p), ("o", C.c_void_p), ("lse", C.c_void_p), ("seq_ids", C.c_void_p),
                ("n_seqs", C.c_int32), ("seqlen_q", C.c_int32), ("n_heads", C.c_int32), ("q_dtype", C.c_int32),
                ("o_dtype", C.c_int32), ("causal", C.c_int32), ("window_left", C.c_int32), ("scale", C.c_float)]


class Lib:
    def __init__(self, path):
        L = self.L = C.CDLL(path, mode=os.RTLD_LAZY | os.RTLD_LOCAL)
        L.qattn_ctx_create.argtypes = [C.POINTER(C.c_void_p), C.POINTER(CtxOptions)]
        L.qattn_ctx_last_error.argtypes = [C.c_void_p]
        L.qattn_ctx_last_error.restype = C.c_char_p
        L.qattn_kv_cache_create.argtypes = [C.c_void_p, C.POINTER(CacheOptions), C.POINTER(C.c_void_p)]
        L.qattn_kv_cache_destroy.argtypes = [C.c_void_p, C.c_void_p]
        L.qattn_kv_cache_destroy.restype = None
        L.qattn_kv_cache_append.argtypes = [C.c_void_p, C.c_void_p, C.c_int32, C.c_void_p, C.c_void_p, C.c_int64, C.c_int32]
        L.qattn_kv_cache_export.argtypes = [C.c_void_p, C.c_void_p, C.POINTER(Layout)]
        L.qattn_decode_params_init.argtypes = [C.POINTER(DecodeParams)]
        L.qattn_decode_params_init.restype = None
        L.qattn_kv_decode.argtypes = [C.c_void_p, C.c_void_p, C.POINTER(DecodeParams)]
        L.qattn_kv_decode_cuda.argtypes = [C.c_void_p, C.c_void_p, C.POINTER(DevCache), C.POINTER(DecodeParams)]
        self.cpu = self._ctx(1, 0)
        self.gpu = self._ctx(2, torch.cuda.current_device())

    def _ctx(self, backend, dev):
        ctx = C.c_void_p()
        opt = CtxOptions(backend=backend, n_threads=os.cpu_count() or 1, cuda_device=dev)
        s = self.L.qattn_ctx_create(C.byref(ctx), C.byref(opt))
        if s != 0:
            raise RuntimeError("qattn_ctx_create(%d) failed: %d" % (backend, s))
        return ctx

    def check(self, ctx, s, what):
        if s != 0:
            raise RuntimeError("%s: %d %s" % (what, s, self.L.qattn_ctx_last_error(ctx).decode()))


class Cache:
    """Host cache (CPU context) + its device copy."""

    def __init__(self, lib, dtype, HK, D, BS, lens, k, v, chunk=2048):
        self.lib, self.dtype, self.HK, self.D, self.BS = lib, dtype, HK, D, BS
        n_blocks = sum((n + BS - 1) // BS for n in lens) + 2
        opt = CacheOptions(n_kv_heads=HK, head_dim=D, block_size=BS, dtype=dtype, n_blocks=n_blocks, max_seqs=len(lens))
        self.c = C.c_void_p()
        lib.check(lib.cpu, lib.L.qattn_kv_cache_create(lib.cpu, C.byref(opt), C.byref(self.c)), "cache_create")
        # round-robin appends so that a sequence's blocks interleave in the arena
        pos = [0] * len(lens)
        while any(pos[i] < lens[i] for i in range(len(lens))):
            for i, n in enumerate(lens):
                if pos[i] >= n:
                    continue
                e = min(n, pos[i] + chunk)
                kk = k[i][pos[i]:e].contiguous()
                vv = v[i][pos[i]:e].contiguous()
                lib.check(lib.cpu, lib.L.qattn_kv_cache_append(lib.cpu, self.c, i, kk.data_ptr(), vv.data_ptr(), e - pos[i],
                                                               {torch.float32: F32, torch.float16: F16}[kk.dtype]), "append")
                pos[i] = e
        self.lens = list(lens)
        self.lay = Layout()
        lib.check(lib.cpu, lib.L.qattn_kv_cache_export(lib.cpu, self.c, C.byref(self.lay)), "export")
        ar = (C.c_uint8 * self.lay.arena_bytes).from_address(self.lay.arena)
        tb = (C.c_int32 * self.lay.table_entries).from_address(self.lay.block_table)
        self.h_arena = torch.frombuffer(ar, dtype=torch.uint8)
        self.h_table = torch.frombuffer(tb, dtype=torch.int32)
        self.d_arena = self.h_arena.cuda()
        self.d_table = self.h_table.cuda()
        self.dev = DevCache(arena=self.d_arena.data_ptr(), block_table=self.d_table.data_ptr(),
                            stream=torch.cuda.current_stream().cuda_stream)

    def destroy(self):
        self.lib.L.qattn_kv_cache_destroy(self.lib.cpu, self.c)

    def dequant(self, seq):
        """FP32 [HK, L, D] K and V from the device arena (what decode sees). INT8: the codes hold
        H(k) / n (the cache's default transforms: factors 1, means 0, block Hadamard H of n = D
        channels here, D 64 or 128), so K is H applied to the dequantized codes."""
        lay, HK, D, BS, L = self.lay, self.HK, self.D, self.BS, self.lens[seq]
        nb = (L + BS - 1) // BS
        ids = self.d_table.view(lay.max_seqs, lay.max_blocks_per_seq)[seq, :nb].long()
        blk = self.d_arena[: lay.n_blocks * lay.block_bytes].view(lay.n_blocks, lay.block_bytes)[ids]  # INT8: transforms follow the blocks
        out = []
        for off, soff in ((0, lay.ks_offset), (lay.v_offset, lay.vs_offset)):
            raw = blk[:, off:off + HK * lay.head_bytes].contiguous()
            if self.dtype == I8:
                x = raw.view(torch.int8).view(nb, HK, BS, D).float()
                s = blk[:, soff:soff + HK * BS * 4].contiguous().view(torch.float32).view(nb, HK, BS, 1)
                x = x * s
            else:
                x = raw.view(torch.float16 if self.dtype == F16 else torch.bfloat16).view(nb, HK, BS, D).float()
            out.append(x.permute(1, 0, 2, 3).reshape(HK, nb * BS, D)[:, :L])
        if self.dtype == I8:
            h = torch.ones(1, 1, device=out[0].device)
            while h.shape[0] < D:
                h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
            out[0] = out[0] @ h
        return out


def decode(lib, cache, q, seq_ids, H, Lq, causal=1, wl=-1, gpu=True, o_dtype=F32, poison=True):
    B = len(seq_ids)
    D = cache.D
    dev = "cuda" if gpu else "cpu"
    q = q.to(dev).contiguous()
    o = torch.empty(B, Lq, H, D, dtype=TDT[o_dtype], device=dev)
    lse = torch.empty(B, H, Lq, dtype=torch.float32, device=dev)
    if poison:
        o.fill_(float("nan"))
        lse.fill_(float("nan"))
    ids = (C.c_int32 * B)(*seq_ids)
    p = DecodeParams()
    lib.L.qattn_decode_params_init(C.byref(p))
    p.q, p.o, p.lse, p.seq_ids = q.data_ptr(), o.data_ptr(), lse.data_ptr(), C.addressof(ids)
    p.n_seqs, p.seqlen_q, p.n_heads, p.q_dtype, p.o_dtype, p.causal, p.window_left = B, Lq, H, {torch.float32: F32, torch.float16: F16, torch.bfloat16: BF16}[q.dtype], o_dtype, causal, wl
    if gpu:
        lib.check(lib.gpu, lib.L.qattn_kv_decode_cuda(lib.gpu, cache.c, C.byref(cache.dev), C.byref(p)), "kv_decode_cuda")
    else:
        lib.check(lib.cpu, lib.L.qattn_kv_decode(lib.cpu, cache.c, C.byref(p)), "kv_decode")
    return o, lse, (p, ids)


def ref_decode(K, V, q, L, Lq, causal, wl, dt=torch.float64):
    """K, V [HK, L, D]; q [Lq, H, D] -> o [Lq, H, D] in dt."""
    HK, _, D = K.shape
    H = q.shape[1]
    G = H // HK
    qq = q.to(dt).view(Lq, HK, G, D).permute(1, 0, 2, 3).reshape(HK, Lq * G, D)
    s = torch.einsum("hrd,hld->hrl", qq, K.to(dt)) / math.sqrt(D)
    i = torch.arange(Lq, device=K.device).repeat_interleave(G).view(1, -1, 1)
    j = torch.arange(L, device=K.device).view(1, 1, -1)
    diag = i + L - Lq
    mask = torch.ones_like(s, dtype=torch.bool)
    if causal:
        mask &= j <= diag
    if wl >= 0:
        mask &= j >= diag - wl
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1)
    o = torch.einsum("hrl,hld->hrd", p, V.to(dt))
    return o.view(HK, Lq, G, D).permute(1, 0, 2, 3).reshape(Lq, H, D)


def rel_l2(a, b):
    return float(((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item())


def correctness(lib, small):
    torch.manual_seed(1)
    cases = []
    for dtype in (I8, F16, BF16):
        for D in ((128,) if small else (64, 128)):
            for (H, HK, Lq, BS, causal, wl) in ((32, 8, 1, 16, 1, -1), (8, 8, 3, 7, 1, -1), (12, 2, 2, 16, 0, 100), (4, 1, 1, 32, 1, 50)):
                cases.append((dtype, D, H, HK, Lq, BS, causal, wl))
    if small:
        cases = cases[:2] + cases[4:6] + cases[8:10]  # two cases per cache dtype
    lens_all = [300, 5000, 3, 1037] if not small else [300, 70]
    ok = True
    for (dtype, D, H, HK, Lq, BS, causal, wl) in cases:
        lens = lens_all
        k = [torch.randn(n, HK, D) * 2 for n in lens]
        v = [torch.randn(n, HK, D) for n in lens]
        cache = Cache(lib, dtype, HK, D, BS, lens, k, v, chunk=256)
        seq_ids = list(range(len(lens)))[::-1]
        q = torch.randn(len(seq_ids), Lq, H, D)
        og, lg, _ = decode(lib, cache, q, seq_ids, H, Lq, causal, wl, gpu=True)
        og2, lg2, _ = decode(lib, cache, q, seq_ids, H, Lq, causal, wl, gpu=True)
        torch.cuda.synchronize()
        oc, lc, _ = decode(lib, cache, q, seq_ids, H, Lq, causal, wl, gpu=False)
        og, lg = og.cpu(), lg.cpu()
        det = torch.equal(og, og2.cpu()) and torch.equal(lg, lg2.cpu())
        finite = bool(torch.isfinite(og).all()) and not bool(torch.isnan(lg).any())
        d_cpu = float((og - oc).abs().max() / oc.abs().max())
        d_lse = float((lg - lc).abs().max())
        # FP64 reference on the dequantized cache
        errs = []
        for bi, sid in enumerate(seq_ids):
            K, V = cache.dequant(sid)
            r = ref_decode(K, V, q[bi].cuda(), lens[sid], Lq, causal, wl)
            errs.append(rel_l2(og[bi], r.cpu()))
        tol_cpu = 3e-4 if dtype == I8 else 2e-5
        good = finite and det and d_cpu < tol_cpu and d_lse < 1e-3 and max(errs) < (1e-3 if dtype == I8 else 1e-5)
        ok &= good
        print("%s dtype %s D %d H %d HK %d Lq %d BS %d causal %d wl %d: gpu-vs-cpu max|d|/max|o| %.2e lse %.2e, relL2 vs fp64(dequant) %.2e, det %s finite %s"
              % ("PASS" if good else "FAIL", {I8: "i8", F16: "f16", BF16: "bf16"}[dtype], D, H, HK, Lq, BS, causal, wl, d_cpu, d_lse, max(errs), det, finite), flush=True)
        cache.destroy()
    print("CORRECTNESS", "PASSED" if ok else "FAILED", flush=True)
    return ok


def timeit(fn, iters=20, warm=3, calls=1):
    """Median over iters of the seconds per call of `calls` calls enqueued back to back between two
    events (calls 1: the latency of one call, host work included)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / calls)
    return statistics.median(ts)


def timeit_b2b(fn):
    """Seconds per call of 20 calls back to back (median of 5)."""
    return timeit(fn, iters=5, calls=20)


def kernel_time(fn, name_parts=None, reps=20):
    """Device time from torch.profiler (CUPTI sees the kernels of the ctypes library too), as
    bench/gpu_compare.py kernel_ms: (seconds, kernels per call). name_parts given: the median of the
    kernels whose name contains one of them; else all the kernels of a call, summed (mean per call)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        ks = [e for e in prof.events() if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset"))]
    except Exception as e:  # no CUPTI: the other figures stand
        print("torch.profiler failed (%s): no kernel times" % e, flush=True)
        return float("nan"), float("nan")
    per_call = len(ks) / reps
    if name_parts:
        durs = [e.time_range.elapsed_us() for e in ks if any(n in e.name for n in name_parts)]
        return (statistics.median(durs) / 1e6 if durs else float("nan")), per_call
    return (sum(e.time_range.elapsed_us() for e in ks) / reps / 1e6 if ks else float("nan")), per_call


def bench(lib, out, profile=False, kprof=True):
    B, H, HK, D, L, BS = 16, 32, 8, 128, 32768, 16
    torch.manual_seed(0)
    res = {"device": torch.cuda.get_device_name(), "shape": dict(B=B, H=H, HK=HK, D=D, L=L, Lq=1, block_size=BS)}
    if not profile:
        x = torch.empty(2 * 1024**3, dtype=torch.float16, device="cuda")
        x.normal_()
        t = timeit(lambda: x.clone(), iters=10)
        copy_bw = 2 * x.numel() * 2 / t
        del x
        res["copy_GBps"] = copy_bw / 1e9
        print("copy bandwidth (clone 4 GiB, read+write): %.0f GB/s" % (copy_bw / 1e9), flush=True)
    kh = torch.randn(B, L, HK, D, dtype=torch.float16)
    vh = torch.randn(B, L, HK, D, dtype=torch.float16)
    q = torch.randn(B, 1, H, D, dtype=torch.float16, device="cuda")
    seq_ids = list(range(B))
    rows = []
    kd = kh.cuda().permute(0, 2, 1, 3).contiguous()  # [B, HK, L, D]
    vd = vh.cuda().permute(0, 2, 1, 3).contiguous()
    # FP64 reference on the original values, for 4 sequences (all heads)
    NREF = 4
    ref_orig = [] if profile else [ref_decode(kd[b], vd[b], q[b].float(), L, 1, 1, -1) for b in range(NREF)]
    for dtype, name in ((I8, "qattn INT8 cache"), (F16, "qattn FP16 cache"), (BF16, "qattn BF16 cache")):
        t0 = time.time()
        cache = Cache(lib, dtype, HK, D, BS, [L] * B, [kh[b] for b in range(B)], [vh[b] for b in range(B)])
        print("%s: built in %.1f s" % (name, time.time() - t0), flush=True)
        o, lse, keep = decode(lib, cache, q, seq_ids, H, 1, o_dtype=F16)
        torch.cuda.synchronize()
        p, ids = keep
        if profile:  # one more launch of each kernel for a profiler, nothing else
            lib.L.qattn_kv_decode_cuda(lib.gpu, cache.c, C.byref(cache.dev), C.byref(p))
            torch.cuda.synchronize()
            cache.destroy()
            continue
        fn = lambda: lib.L.qattn_kv_decode_cuda(lib.gpu, cache.c, C.byref(cache.dev), C.byref(p))
        bytes_read = B * HK * L * (2 * D * (1 if dtype == I8 else 2) + (8 if dtype == I8 else 0))
        t = timeit(fn)
        t_again = timeit(fn)
        t_b2b = timeit_b2b(fn)
        t_k, kpc = kernel_time(fn, ("kvd_mma", "kvd_split")) if kprof else (float("nan"), float("nan"))
        print("%s: %.1f us, again %.1f us, back-to-back %.1f us, split kernel alone %.1f us (%.2g kernels per call)"
              % (name, t * 1e6, t_again * 1e6, t_b2b * 1e6, t_k * 1e6, kpc), flush=True)
        e_deq = statistics.mean(rel_l2(o[b, 0], ref_decode(*cache.dequant(b), q[b].float(), L, 1, 1, -1)[0].cpu().to(o.device)) for b in range(NREF))
        e_orig = statistics.mean(rel_l2(o[b, 0], ref_orig[b][0]) for b in range(NREF))
        oc, _, _ = decode(lib, cache, q.float().cpu(), seq_ids, H, 1, gpu=False)
        d_cpu = float((o.float().cpu() - oc).abs().max() / oc.abs().max())
        rows.append(dict(name=name, t_us=t * 1e6, t_us_b2b=t_b2b * 1e6, t_us_kernel=t_k * 1e6, kernels_per_call=kpc, bytes_read=bytes_read,
                         GBps=bytes_read / t / 1e9, frac_copy=bytes_read / t / copy_bw, frac_copy_b2b=bytes_read / t_b2b / copy_bw,
                         tok_s=B / t, relL2_dequant=e_deq, relL2_orig=e_orig, gpu_vs_cpu=d_cpu))
        cache.destroy()
        del cache
        torch.cuda.empty_cache()
    if profile:
        return
    qs = q.view(B, H, 1, D)  # [B, H, 1, D] (Lq = 1)

    def sdpa_row(name, fn, nb):
        t, t_b2b = timeit(fn), timeit_b2b(fn)
        t_k, kpc = kernel_time(fn) if kprof else (float("nan"), float("nan"))
        print("%s: %.1f us, back-to-back %.1f us, kernels %.1f us (%.2g per call)" % (name, t * 1e6, t_b2b * 1e6, t_k * 1e6, kpc), flush=True)
        og = fn()
        rows.append(dict(name=name, t_us=t * 1e6, t_us_b2b=t_b2b * 1e6, t_us_kernel=t_k * 1e6, kernels_per_call=kpc, bytes_read=nb, GBps=nb / t / 1e9,
                         frac_copy=nb / t / copy_bw, frac_copy_b2b=nb / t_b2b / copy_bw, tok_s=B / t,
                         relL2_orig=statistics.mean(rel_l2(og[b, :, 0], ref_orig[b][0]) for b in range(NREF))))

    try:
        F.scaled_dot_product_attention(qs, kd, vd, enable_gqa=True)
    except Exception as e:  # older torch
        print("SDPA enable_gqa: not available (%s)" % e, flush=True)
    else:
        sdpa_row("SDPA FP16 enable_gqa (unexpanded)", lambda: F.scaled_dot_product_attention(qs, kd, vd, enable_gqa=True), B * HK * L * D * 4)
    ke = kd.repeat_interleave(H // HK, dim=1)
    ve = vd.repeat_interleave(H // HK, dim=1)
    sdpa_row("SDPA FP16 expanded K/V (32 heads)", lambda: F.scaled_dot_product_attention(qs, ke, ve), B * H * L * D * 4)
    sdpa_t = rows[-1]["t_us"]
    del ke, ve
    try:
        import flashinfer
        fws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        npg = L // BS
        kp = kd.permute(0, 2, 1, 3).reshape(B * npg, BS, HK, D)  # pages [B * L / BS, BS, HK, D]
        vp = vd.permute(0, 2, 1, 3).reshape(B * npg, BS, HK, D)
        indptr = torch.arange(0, (B + 1) * npg, npg, dtype=torch.int32, device="cuda")
        indices = torch.arange(B * npg, dtype=torch.int32, device="cuda")
        last = torch.full((B,), BS, dtype=torch.int32, device="cuda")
        q3 = q.view(B, H, D)
        for fp8 in (False, True):
            w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(fws, "NHD", use_tensor_cores=True)
            kdt = torch.float8_e4m3fn if fp8 else torch.float16
            if fp8:
                ks, vs = kp.abs().amax().float().item() / 448.0, vp.abs().amax().float().item() / 448.0
                kc, vc = (kp.float() / ks).to(kdt), (vp.float() / vs).to(kdt)
            else:
                ks, vs, kc, vc = None, None, kp, vp
            w.plan(indptr, indices, last, H, HK, D, BS, q_data_type=torch.float16, kv_data_type=kdt)
            fn = (lambda w=w, kc=kc, vc=vc, ks=ks, vs=vs: w.run(q3, (kc, vc), k_scale=ks, v_scale=vs).view(B, H, 1, D))
            t0 = time.time()
            fn()
            torch.cuda.synchronize()
            print("FlashInfer decode %s: first call %.1f s (JIT compilation included)" % ("FP8" if fp8 else "FP16", time.time() - t0), flush=True)
            sdpa_row("FlashInfer batch decode %s cache" % ("FP8 e4m3" if fp8 else "FP16"), fn, B * HK * L * D * 2 * (1 if fp8 else 2))
            del kc, vc
    except Exception as e:
        print("FlashInfer decode skipped: %s: %s" % (type(e).__name__, e), flush=True)
    gqa = [r for r in rows if "enable_gqa" in r["name"]]
    for r in rows:
        r["speedup_vs_sdpa_expanded"] = sdpa_t / r["t_us"]
        r["speedup_vs_sdpa_gqa"] = gqa[0]["t_us"] / r["t_us"] if gqa else float("nan")
    res["rows"] = rows
    print("| kernel | time (us) | b2b (us) | kernels (us) | tokens/s | bytes read (GB) | GB/s read | of copy bw | b2b of copy bw "
          "| vs SDPA expanded | vs SDPA enable_gqa | relL2 vs fp64 (dequant) | relL2 vs fp64 (orig) | GPU vs CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %.0f | %.0f | %s | %.0f | %.3f | %.0f | %.1f%% | %.1f%% | %.2fx | %.2fx | %s | %.2e | %s |" % (
            r["name"], r["t_us"], r["t_us_b2b"], "%.0f" % r["t_us_kernel"] if r["t_us_kernel"] == r["t_us_kernel"] else "-", r["tok_s"],
            r["bytes_read"] / 1e9, r["GBps"], 100 * r["frac_copy"], 100 * r["frac_copy_b2b"], r["speedup_vs_sdpa_expanded"], r["speedup_vs_sdpa_gqa"],
            "%.2e" % r["relL2_dequant"] if "relL2_dequant" in r else "-", r["relL2_orig"],
            "%.1e" % r["gpu_vs_cpu"] if "gpu_vs_cpu" in r else "-"), flush=True)
    with open(os.path.join(out, "gpu_decode.json"), "w") as f:
        json.dump(res, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build-gpu/libqattn.so")
    ap.add_argument("--small", action="store_true", help="tiny correctness cases only (for compute-sanitizer)")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--profile", action="store_true", help="only two decodes per cache dtype at the benchmark shape (for ncu)")
    ap.add_argument("--no-kprof", action="store_true", help="skip the torch.profiler kernel times")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    lib = Lib(a.lib)
    if a.profile:
        bench(lib, a.out, profile=True)
        return
    ok = correctness(lib, a.small)
    if not a.small:
        bench(lib, a.out, kprof=not a.no_kprof)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
