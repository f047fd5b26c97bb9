#!/usr/bin/env python3
"""qattn (CUDA backend) side by side with torch SDPA (FlashAttention-2 and cuDNN backends).

The standard shapes (docs/benchmarks.md, "GPU"): B*L = 16k tokens, H*D = 2048, D in {64, 128},
L in {1k, 4k, 16k}, causal and not, Q/K/V ~ N(0, 1) in FP16. For each shape, in the same run:
qattn FP16, qattn INT8 (quantization + kernel, and the attention kernel alone from the
profiler; and with a calibration from qattn_calibrate on the same inputs, made outside the
timing: qattn_forward_calibrated, no statistics pass), SDPA FLASH_ATTENTION and CUDNN_ATTENTION. CUDA events, warm-up, median of >= 20.
Accuracy: whole-tensor relative L1 / L2 against an FP32 torch reference on a subset of heads.

Peers, each when importable (else skipped with the reason printed), same process and inputs:
FlashInfer's prefill with backend "fa3" (FP16: the ragged batch wrapper; FP8 e4m3 with per-head
scales: single_prefill_with_kv_cache per sequence, inputs quantized outside the timing),
flash-attn-4 (flash_attn.cute.flash_attn_func), SageAttention 1 (sageattention.sageattn, Triton;
it subtracts K's mean in place, so it gets a clone of K made once outside the timing: the repeated
subtraction of a ~0 mean leaves the work unchanged). The INT8 quantization pass is timed alone
(the i8q_ kernels' device time per call, torch profiler) against a device-to-device copy of the
same bytes measured in the same run.

Usage: python3 bench/gpu_compare.py --lib build-gpu/libqattn.so [--out DIR] [--quick] [--no-int8] [--no-peers]
Writes DIR/gpu_compare.json and DIR/gpu_compare.png (DIR defaults to $OUT or ./out).
qattn is called through a minimal ctypes loader (qattn_params mirrored from include/qattn.h).
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
from torch.nn.attention import SDPBackend, sdpa_kernel


class Params(C.Structure):
    """Mirror of qattn_params (include/qattn.h), field for field, as python/qattn/_lib.py (tests/test_abi.py checks that one)."""
    _fields_ = [
        ("q", C.c_void_p), ("k", C.c_void_p), ("v", C.c_void_p), ("o", C.c_void_p), ("lse", C.c_void_p),
        ("batch", C.c_int64), ("seqlen_q", C.c_int64), ("seqlen_k", C.c_int64),
        ("n_heads", C.c_int32), ("n_kv_heads", C.c_int32), ("head_dim", C.c_int32),
        ("qkv_dtype", C.c_int32), ("o_dtype", C.c_int32), ("precision", C.c_int32), ("int8_scheme", C.c_int32),
        ("causal", C.c_int32), ("window_left", C.c_int32), ("window_right", C.c_int32), ("scale", C.c_float),
        ("q_batch_stride", C.c_int64), ("q_seq_stride", C.c_int64), ("q_head_stride", C.c_int64),
        ("k_batch_stride", C.c_int64), ("k_seq_stride", C.c_int64), ("k_head_stride", C.c_int64),
        ("v_batch_stride", C.c_int64), ("v_seq_stride", C.c_int64), ("v_head_stride", C.c_int64),
        ("o_batch_stride", C.c_int64), ("o_seq_stride", C.c_int64), ("o_head_stride", C.c_int64),
        ("cu_seqlens_q", C.c_void_p), ("cu_seqlens_k", C.c_void_p),
        ("workspace", C.c_void_p), ("workspace_size", C.c_size_t),
        ("stream", C.c_void_p),
        ("alibi_slopes", C.c_void_p), ("alibi_batch_stride", C.c_int64), ("softcap", C.c_float),
        ("block_mask_q", C.c_int32), ("block_mask", C.c_void_p), ("block_mask_k", C.c_int32), ("reserved0", C.c_int32),
        ("block_mask_batch_stride", C.c_int64), ("block_mask_head_stride", C.c_int64), ("block_mask_row_stride", C.c_int64),
    ]


class Calibration(C.Structure):
    """Mirror of qattn_calibration (include/qattn.h)."""
    _fields_ = [("n_kv_heads", C.c_int32), ("head_dim", C.c_int32), ("tokens", C.c_int64)] + \
        [(n, C.c_void_p) for n in ("k_factor", "k_mean", "v_mean", "q_absmax", "k_min", "k_max")]


class CtxOptions(C.Structure):
    _fields_ = [("backend", C.c_int32), ("isa", C.c_int32), ("n_threads", C.c_int32), ("cuda_device", C.c_int32),
                ("alloc", C.c_void_p), ("free", C.c_void_p), ("alloc_user", C.c_void_p),
                ("cuda_kernels", C.c_int32), ("reserved", C.c_int32)]


DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
PREC_AUTO, PREC_INT8, PREC_INT4 = 0, 4, 7


class QAttn:
    def __init__(self, path, kernels="auto"):
        """kernels: the context's cuda_kernels option, "auto" (wgmma on compute capability 9.0) or "mma"."""
        # RTLD_LAZY: an unrelated undefined symbol (a CPU path mid-change) must not stop the GPU bench.
        self.lib = C.CDLL(path, mode=os.RTLD_LAZY | os.RTLD_LOCAL)
        L = self.lib
        L.qattn_ctx_create.argtypes = [C.POINTER(C.c_void_p), C.POINTER(CtxOptions)]
        L.qattn_ctx_create.restype = C.c_int
        L.qattn_ctx_last_error.argtypes = [C.c_void_p]
        L.qattn_ctx_last_error.restype = C.c_char_p
        L.qattn_status_str.argtypes = [C.c_int]
        L.qattn_status_str.restype = C.c_char_p
        L.qattn_params_init.argtypes = [C.POINTER(Params)]
        L.qattn_forward.argtypes = [C.c_void_p, C.POINTER(Params)]
        L.qattn_forward.restype = C.c_int
        L.qattn_workspace_size.argtypes = [C.c_void_p, C.POINTER(Params), C.POINTER(C.c_size_t)]
        L.qattn_workspace_size.restype = C.c_int
        L.qattn_calibrate.argtypes = [C.c_void_p, C.POINTER(Params), C.POINTER(Calibration)]
        L.qattn_calibrate.restype = C.c_int
        L.qattn_forward_calibrated.argtypes = [C.c_void_p, C.POINTER(Params), C.POINTER(Calibration)]
        L.qattn_forward_calibrated.restype = C.c_int
        self.cpu = None
        self.ctx = C.c_void_p()
        opt = CtxOptions(backend=2, cuda_device=torch.cuda.current_device(), cuda_kernels={"auto": 0, "mma": 1}[kernels])
        s = L.qattn_ctx_create(C.byref(self.ctx), C.byref(opt))
        if s != 0:
            raise RuntimeError("qattn_ctx_create(cuda): " + L.qattn_status_str(s).decode())
        self.ws = None

    def params(self, q, k, v, o, causal, precision=PREC_AUTO, lse=None):
        """q, o: [B, L, H, D]; k, v: [B, L, HK, D] torch CUDA tensors, last axis contiguous."""
        p = Params()
        self.lib.qattn_params_init(C.byref(p))
        B, Lq, H, D = q.shape
        p.q, p.k, p.v, p.o = q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr()
        p.lse = lse.data_ptr() if lse is not None else None
        p.batch, p.seqlen_q, p.seqlen_k = B, Lq, k.shape[1]
        p.n_heads, p.n_kv_heads, p.head_dim = H, k.shape[2], D
        p.qkv_dtype, p.o_dtype, p.precision = DT[q.dtype], DT[o.dtype], precision
        p.causal = int(causal)
        for name, t in (("q", q), ("k", k), ("v", v), ("o", o)):
            s = t.stride()
            setattr(p, name + "_batch_stride", s[0])
            setattr(p, name + "_seq_stride", s[1])
            setattr(p, name + "_head_stride", s[2])
        p.stream = torch.cuda.current_stream().cuda_stream
        ws = C.c_size_t(0)
        st = self.lib.qattn_workspace_size(self.ctx, C.byref(p), C.byref(ws))
        if st != 0:
            raise RuntimeError(self.lib.qattn_ctx_last_error(self.ctx).decode())
        if ws.value:
            if self.ws is None or self.ws.numel() < ws.value:
                self.ws = torch.empty(ws.value, dtype=torch.uint8, device="cuda")
            p.workspace, p.workspace_size = self.ws.data_ptr(), self.ws.numel()
        return p

    def calibrate(self, q, k, v):
        """qattn_calibrate (a CPU context) over host copies of q, k, v (every sequence, [B, L, H, D]);
        returns the qattn_calibration with its k_factor, k_mean, v_mean copied to the device, and the
        tensors it points to (keep them alive)."""
        L = self.lib
        if self.cpu is None:
            self.cpu = C.c_void_p()
            opt = CtxOptions(backend=1)
            if L.qattn_ctx_create(C.byref(self.cpu), C.byref(opt)) != 0:
                raise RuntimeError("qattn_ctx_create(cpu) failed")
        qh, kh, vh = q.cpu().contiguous(), k.cpu().contiguous(), v.cpu().contiguous()
        p = Params()
        L.qattn_params_init(C.byref(p))
        B, Lq, H, D = q.shape
        HK = k.shape[2]
        p.q, p.k, p.v = qh.data_ptr(), kh.data_ptr(), vh.data_ptr()
        p.batch, p.seqlen_q, p.seqlen_k, p.n_heads, p.n_kv_heads, p.head_dim = B, Lq, k.shape[1], H, HK, D
        p.qkv_dtype, p.o_dtype = DT[q.dtype], 0
        for name, t in (("q", qh), ("k", kh), ("v", vh)):
            st = t.stride()
            setattr(p, name + "_batch_stride", st[0])
            setattr(p, name + "_seq_stride", st[1])
            setattr(p, name + "_head_stride", st[2])
        arrs = torch.zeros(6, HK, D, dtype=torch.float32)
        cal = Calibration(HK, D, 0, *[arrs[i].data_ptr() for i in range(6)])
        s = L.qattn_calibrate(self.cpu, C.byref(p), C.byref(cal))
        if s != 0:
            raise RuntimeError("qattn_calibrate: " + L.qattn_ctx_last_error(self.cpu).decode())
        dev = arrs[:3].cuda()
        return Calibration(HK, D, cal.tokens, dev[0].data_ptr(), dev[1].data_ptr(), dev[2].data_ptr()), dev

    def forward_calibrated(self, p, cal):
        s = self.lib.qattn_forward_calibrated(self.ctx, C.byref(p), C.byref(cal))
        if s != 0:
            raise RuntimeError("qattn_forward_calibrated: %s" % self.lib.qattn_ctx_last_error(self.ctx).decode())

    def forward(self, p):
        s = self.lib.qattn_forward(self.ctx, C.byref(p))
        if s != 0:
            raise RuntimeError("qattn_forward: %s: %s" % (self.lib.qattn_status_str(s).decode(),
                                                          self.lib.qattn_ctx_last_error(self.ctx).decode()))


def time_ms(fn, warmup=5, reps=30):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), times


def kernel_durations_us(fn, name_part, reps=20):
    """Device times (us) of the kernels whose name contains name_part over reps calls (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    durs = [e.device_time for e in prof.events() if name_part in e.name and e.device_time > 0]
    return durs or [e.cuda_time for e in prof.events() if name_part in e.name]


def kernel_ms(fn, name_part, reps=20):
    """Median device time of one kernel whose name contains name_part."""
    durs = kernel_durations_us(fn, name_part, reps)
    return statistics.median(durs) / 1000.0 if durs else float("nan")


def kernels_per_call_ms(fn, name_part, reps=20):
    """Total device time per call of the kernels whose name contains name_part."""
    durs = kernel_durations_us(fn, name_part, reps)
    return sum(durs) / reps / 1000.0 if durs else float("nan")


def copy_gbps(nbytes, reps=20):
    """Device-to-device copy bandwidth, bytes read + written per second (GB/s)."""
    x = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms, _ = time_ms(lambda: y.copy_(x), reps=reps)
    del x, y
    return 2 * nbytes / (ms * 1e-3) / 1e9


def quant_bytes(B, L, H, HK, D):
    """(bytes the INT8 pass moves, bytes of one read of Q, K, V and one write of the codes). The pass
    reads K and V twice: once for the means, once for the codes (quant_i8.cu)."""
    lp = (L + 127) // 128 * 128
    q, kv = B * L * H * D * 2, 2 * B * L * HK * D * 2
    codes = B * H * lp * D + 2 * B * HK * lp * D
    scales = 4 * (B * H * lp + B * HK * lp + B * HK * (lp // 128) * D)
    return q + 2 * kv + codes + scales, q + kv + codes + scales


def peer_fns(q, k, v, causal):
    """name -> (timed callable, callable returning the output [B, L, H, D]) for the importable peers."""
    B, L, H, D = q.shape
    HK = k.shape[2]
    peers = {}
    try:
        import flashinfer
        ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", backend="fa3")
        ind = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device="cuda")
        w.plan(ind, ind, H, HK, D, causal=causal, q_data_type=torch.float16, kv_data_type=torch.float16)
        q2, k2, v2 = q.reshape(B * L, H, D), k.reshape(B * L, HK, D), v.reshape(B * L, HK, D)
        ofi = torch.empty_like(q2)
        peers["fi_fa3"] = (lambda: w.run(q2, k2, v2, out=ofi), lambda: ofi.view(B, L, H, D))
        f8 = torch.float8_e4m3fn

        def q8(x):  # per-head scale: max |x| / 448
            s_ = x.abs().amax(dim=(0, 1, 3)).float().clamp_min(1e-8) / 448.0
            return (x.float() / s_.view(1, 1, -1, 1)).to(f8), s_
        (qq, sq), (kq, sk), (vq, sv) = q8(q), q8(k), q8(v)
        o8 = [None] * B

        def run8():
            for b in range(B):
                o8[b] = flashinfer.single_prefill_with_kv_cache(qq[b], kq[b], vq[b], scale_q=sq, scale_k=sk, scale_v=sv,
                                                                o_dtype=torch.float16, causal=causal, backend="fa3")
        peers["fi_fa3_fp8"] = (run8, lambda: torch.stack(o8, 0))
    except Exception as e:
        print("flashinfer skipped: %s: %s" % (type(e).__name__, e), file=sys.stderr)
    try:
        from flash_attn.cute import flash_attn_func
        o4 = [None]

        def run4():
            r = flash_attn_func(q, k, v, causal=causal)
            o4[0] = r[0] if isinstance(r, tuple) else r
        peers["fa4"] = (run4, lambda: o4[0])
    except Exception as e:
        print("flash-attn-4 skipped: %s: %s" % (type(e).__name__, e), file=sys.stderr)
    try:
        from sageattention import sageattn
        kc = k.clone()
        os_ = [None]

        def runs():
            os_[0] = sageattn(q, kc, v, tensor_layout="NHD", is_causal=causal)
        peers["sage"] = (runs, lambda: os_[0])
    except Exception as e:
        print("sageattention skipped: %s: %s" % (type(e).__name__, e), file=sys.stderr)
    return peers


def rel_err(o, r):
    o, r = o.double(), r.double()
    d = o - r
    return (d.abs().sum() / r.abs().sum()).item(), (d.norm() / r.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build-gpu/libqattn.so")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--quick", action="store_true", help="D 128 only, L 4k and 16k")
    ap.add_argument("--dims", default=None, help="head dims, e.g. 96,256 (H = 2048 // D); default 64,128 (128 with --quick)")
    ap.add_argument("--lens", default=None, help="sequence lengths, e.g. 4096; default 1024,4096,16384 (4096,16384 with --quick)")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--int4", action="store_true", help="also precision INT4 (4-bit Q/K codes on the INT8 kernels), against INT8")
    ap.add_argument("--no-peers", action="store_true", help="SDPA only (no FlashInfer, flash-attn-4, SageAttention)")
    ap.add_argument("--warm-peers", action="store_true",
                    help="only call each peer once on small inputs (D 128, FP16, causal and not), to fill JIT caches, and exit")
    ap.add_argument("--f16-mma", action="store_true",
                    help="also time qattn FP16 on the mma.sync kernel (context option cuda_kernels mma) and check which kernel the default ran")
    ap.add_argument("--kernels", default="auto", choices=("auto", "mma"), help="the qattn context's cuda_kernels option")
    ap.add_argument("--dtype", default="f16", choices=("f16", "bf16"), help="input dtype of every contender")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--ref-heads", type=int, default=2, help="heads of the FP32 reference")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    if args.warm_peers:
        for causal in (False, True):
            x = [torch.randn(2, 256, 16, 128, device="cuda", dtype=torch.float16) for _ in range(3)]
            for name, (fn, _) in peer_fns(*x, causal).items():
                t0 = time.time()
                try:
                    fn()
                    torch.cuda.synchronize()
                    print("warm %s causal=%d: %.1f s" % (name, causal, time.time() - t0), flush=True)
                except Exception as e:
                    print("warm %s causal=%d failed: %s: %s" % (name, causal, type(e).__name__, e), flush=True)
        return
    qa = QAttn(args.lib, args.kernels)
    qa_mma = QAttn(args.lib, "mma") if args.f16_mma else None
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    dev = torch.cuda.get_device_name()
    shapes = []
    dims = [int(x) for x in args.dims.split(",")] if args.dims else ([128] if args.quick else [64, 128])
    lens = [int(x) for x in args.lens.split(",")] if args.lens else ([4096, 16384] if args.quick else [1024, 4096, 16384])
    for D in dims:
        for L in lens:
            for causal in (False, True):
                shapes.append((16384 // L, L, 2048 // D, D, causal))
    rows = []
    for (B, L, H, D, causal) in shapes:
        q = torch.randn(B, L, H, D, device="cuda", dtype=dt)
        k = torch.randn(B, L, H, D, device="cuda", dtype=dt)
        v = torch.randn(B, L, H, D, device="cuda", dtype=dt)
        o16 = torch.empty_like(q)
        o8 = torch.empty_like(q)
        flops = 4.0 * B * H * L * L * D / (2 if causal else 1)
        row = dict(B=B, L=L, H=H, D=D, causal=causal, flops=flops)
        p16 = qa.params(q, k, v, o16, causal)
        row["qattn_f16_ms"], _ = time_ms(lambda: qa.forward(p16), reps=args.reps)
        if qa_mma is not None:
            om = torch.empty_like(q)
            pm = qa_mma.params(q, k, v, om, causal)
            row["qattn_f16_mma_ms"], _ = time_ms(lambda: qa_mma.forward(pm), reps=args.reps)
            # which kernel the default context ran (profiler names): the wgmma one on compute capability 9.0
            row["f16_kernel_wgmma"] = not math.isnan(kernel_ms(lambda: qa.forward(p16), "f16_wgmma", reps=3))
        if not args.no_int8:
            p8 = qa.params(q, k, v, o8, causal, PREC_INT8)
            row["qattn_i8_ms"], _ = time_ms(lambda: qa.forward(p8), reps=args.reps)
            row["qattn_i8_kernel_ms"] = kernel_ms(lambda: qa.forward(p8), "fwd_i8")
            row["qattn_i8_quant_ms"] = kernels_per_call_ms(lambda: qa.forward(p8), "i8q_")
            row["quant_bytes"], row["quant_min_bytes"] = quant_bytes(B, L, H, H, D)
            row["copy_GBps"] = copy_gbps(row["quant_min_bytes"])
            row["quant_GBps"] = row["quant_bytes"] / (row["qattn_i8_quant_ms"] * 1e-3) / 1e9
            # calibrated (qattn_calibrate on these inputs, outside the timing): no statistics pass
            cal, cal_keep = qa.calibrate(q, k, v)
            oc = torch.empty_like(q)
            pc = qa.params(q, k, v, oc, causal, PREC_INT8)
            row["qattn_i8cal_ms"], _ = time_ms(lambda: qa.forward_calibrated(pc, cal), reps=args.reps)
            row["qattn_i8cal_quant_ms"] = kernels_per_call_ms(lambda: qa.forward_calibrated(pc, cal), "i8q_")
        if args.int4:
            o4 = torch.empty_like(q)
            p4 = qa.params(q, k, v, o4, causal, PREC_INT4)
            row["qattn_i4_ms"], _ = time_ms(lambda: qa.forward(p4), reps=args.reps)
            row["qattn_i4_kernel_ms"] = kernel_ms(lambda: qa.forward(p4), "fwd_i8")
            row["qattn_i4_quant_ms"] = kernels_per_call_ms(lambda: qa.forward(p4), "i8q_")
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        outs = {}
        for name, be in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel([be]):
                    outs[name] = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
                    row[name + "_ms"], _ = time_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal), reps=args.reps)
            except Exception as e:  # a backend missing on this build
                print("%s unavailable: %s" % (name, e), file=sys.stderr)
                row[name + "_ms"] = float("nan")
        peer_out = {}
        if not args.no_peers:
            for name, (fn, get) in peer_fns(q, k, v, causal).items():
                try:
                    t0 = time.time()
                    fn()
                    torch.cuda.synchronize()
                    row[name + "_first_call_s"] = time.time() - t0  # JIT compilation included
                    row[name + "_ms"], _ = time_ms(fn, reps=args.reps)
                    fn()
                    peer_out[name] = get()
                except Exception as e:
                    print("%s failed: %s: %s" % (name, type(e).__name__, e), file=sys.stderr)
                    row[name + "_ms"] = float("nan")
        # Accuracy over whole tensors of a subset of heads, FP32 reference.
        hs = slice(0, args.ref_heads)
        ref = []
        for h in range(args.ref_heads):
            for b in range(B):
                ref.append(F.scaled_dot_product_attention(qt[b:b + 1, h:h + 1].float(), kt[b:b + 1, h:h + 1].float(),
                                                          vt[b:b + 1, h:h + 1].float(), is_causal=causal))
        ref = torch.cat(ref, 0).view(args.ref_heads, B, L, D).permute(1, 2, 0, 3)  # [B, L, h, D]
        qa.forward(p16)
        cands = {"qattn_f16": o16}
        if qa_mma is not None:
            qa_mma.forward(pm)
            cands["qattn_f16_mma"] = om
        if not args.no_int8:
            qa.forward(p8)
            cands["qattn_i8"] = o8
            qa.forward_calibrated(pc, cal)
            cands["qattn_i8cal"] = oc
        if args.int4:
            qa.forward(p4)
            cands["qattn_i4"] = o4
        for name, t in outs.items():
            cands[name] = t.transpose(1, 2)
        cands.update(peer_out)
        torch.cuda.synchronize()
        for name, t in cands.items():
            sub = t[:, :, hs].float()
            row[name + "_nonfinite"] = int((~torch.isfinite(t)).sum().item())
            row[name + "_rel_l1"], row[name + "_rel_l2"] = rel_err(sub, ref)
        del ref
        for key in list(row):
            if key.endswith("_ms") and not key.endswith("quant_ms"):
                row[key.replace("_ms", "_tflops")] = flops / (row[key] * 1e-3) / 1e12 if row[key] == row[key] else float("nan")
        rows.append(row)
        print("done", B, L, H, D, causal, {k_: round(v_, 3) for k_, v_ in row.items() if k_.endswith("_tflops")}, flush=True)
        del q, k, v, o16, o8, outs, cands, peer_out
        oc = pc = cal = cal_keep = o4 = p4 = None
        om = pm = None
        torch.cuda.empty_cache()

    hdr = ("D", "L", "causal", "qattn f16", "/FA2", "/cuDNN", "i8 all", "i8 kern", "/FA2", "/cuDNN", "FA2", "cuDNN",
           "f16 L1", "f16 L2", "i8 L1", "i8 L2", "FA2 L1", "cuDNN L1")
    print("\nTFLOP/s (TOPS for INT8), device %s, torch %s" % (dev, torch.__version__))
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    nan = float("nan")
    for r in rows:
        fa, cu = r.get("sdpa_flash_tflops", nan), r.get("sdpa_cudnn_tflops", nan)
        f16 = r["qattn_f16_tflops"]
        i8a, i8k = r.get("qattn_i8_tflops", nan), r.get("qattn_i8_kernel_tflops", nan)
        vals = (r["D"], r["L"], "yes" if r["causal"] else "no", "%.0f" % f16, "%.2f" % (f16 / fa), "%.2f" % (f16 / cu),
                "%.0f" % i8a, "%.0f" % i8k, "%.2f" % (i8k / fa), "%.2f" % (i8k / cu), "%.0f" % fa, "%.0f" % cu,
                "%.1e" % r["qattn_f16_rel_l1"], "%.1e" % r["qattn_f16_rel_l2"],
                "%.1e" % r.get("qattn_i8_rel_l1", nan), "%.1e" % r.get("qattn_i8_rel_l2", nan),
                "%.1e" % r.get("sdpa_flash_rel_l1", nan), "%.1e" % r.get("sdpa_cudnn_rel_l1", nan))
        print("| " + " | ".join(str(x) for x in vals) + " |")
    print("\nPeers (TFLOP/s, TOPS for INT8) and the INT8 quantization pass, same run")
    names = ["sdpa_cudnn", "fi_fa3", "fi_fa3_fp8", "fa4", "sage"]
    hdr = ("D", "L", "causal", "qattn i8 all", "i8 kern") + tuple(names) + ("i8 all/cuDNN", "i8 kern/cuDNN", "quant ms", "quant GB/s",
                                                                           "copy GB/s", "quant/copy", "min-traffic/copy")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        cu = r.get("sdpa_cudnn_tflops", nan)
        qms, qb, qmin, cp = r.get("qattn_i8_quant_ms", nan), r.get("quant_GBps", nan), r.get("quant_min_bytes", nan), r.get("copy_GBps", nan)
        vals = (r["D"], r["L"], "yes" if r["causal"] else "no", "%.0f" % r.get("qattn_i8_tflops", nan), "%.0f" % r.get("qattn_i8_kernel_tflops", nan)) \
            + tuple("%.0f" % r.get(n + "_tflops", nan) for n in names) \
            + ("%.2f" % (r.get("qattn_i8_tflops", nan) / cu), "%.2f" % (r.get("qattn_i8_kernel_tflops", nan) / cu), "%.3f" % qms, "%.0f" % qb,
               "%.0f" % cp, "%.2f" % (qb / cp), "%.2f" % (qmin / (qms * 1e-3) / 1e9 / cp))
        print("| " + " | ".join(str(x) for x in vals) + " |")
    if not args.no_int8:
        hdr = ("D", "L", "causal", "i8 all", "i8 calibrated all", "calibrated/dynamic", "calibrated/cuDNN", "quant ms", "calibrated quant ms",
               "i8 L1", "calibrated L1")
        print("\nINT8 with a calibration (qattn_forward_calibrated: no statistics pass), TOPS, same run")
        print("| " + " | ".join(hdr) + " |")
        print("|" + "---|" * len(hdr))
        for r in rows:
            a, c, cu = r.get("qattn_i8_tflops", nan), r.get("qattn_i8cal_tflops", nan), r.get("sdpa_cudnn_tflops", nan)
            vals = (r["D"], r["L"], "yes" if r["causal"] else "no", "%.0f" % a, "%.0f" % c, "%.2f" % (c / a), "%.2f" % (c / cu),
                    "%.3f" % r.get("qattn_i8_quant_ms", nan), "%.3f" % r.get("qattn_i8cal_quant_ms", nan),
                    "%.1e" % r.get("qattn_i8_rel_l1", nan), "%.1e" % r.get("qattn_i8cal_rel_l1", nan))
            print("| " + " | ".join(str(x) for x in vals) + " |")
    if args.int4:
        hdr = ("D", "L", "causal", "i4 all", "i4 kern", "i8 all", "i8 kern", "i4/i8 all", "i4/i8 kern", "i4 quant ms", "i8 quant ms", "i4 L1", "i8 L1")
        print("\nINT4 (4-bit Q/K codes, one per byte, on the INT8 kernels) against INT8, TOPS, same run")
        print("| " + " | ".join(hdr) + " |")
        print("|" + "---|" * len(hdr))
        for r in rows:
            a4, k4, a8, k8 = (r.get(n, nan) for n in ("qattn_i4_tflops", "qattn_i4_kernel_tflops", "qattn_i8_tflops", "qattn_i8_kernel_tflops"))
            vals = (r["D"], r["L"], "yes" if r["causal"] else "no", "%.0f" % a4, "%.0f" % k4, "%.0f" % a8, "%.0f" % k8, "%.2f" % (a4 / a8),
                    "%.2f" % (k4 / k8), "%.3f" % r.get("qattn_i4_quant_ms", nan), "%.3f" % r.get("qattn_i8_quant_ms", nan),
                    "%.1e" % r.get("qattn_i4_rel_l1", nan), "%.1e" % r.get("qattn_i8_rel_l1", nan))
            print("| " + " | ".join(str(x) for x in vals) + " |")
    print("accuracy rel L1: " + "; ".join("D%d L%d%s: " % (r["D"], r["L"], " c" if r["causal"] else "") +
                                         ", ".join("%s %.1e" % (n, r[n + "_rel_l1"]) for n in ["qattn_i8"] + names if n + "_rel_l1" in r)
                                         for r in rows))
    if qa_mma is not None:
        hdr = ("D", "L", "causal", "wgmma", "mma", "FA2", "cuDNN", "wgmma/cuDNN", "mma/cuDNN", "wgmma/mma", "wgmma L1", "mma L1", "cuDNN L1",
               "wgmma ran")
        print("\nqattn %s kernels, TFLOP/s, device %s" % (args.dtype.upper(), dev))
        print("| " + " | ".join(hdr) + " |")
        print("|" + "---|" * len(hdr))
        for r in rows:
            w, m, fa, cu = r["qattn_f16_tflops"], r["qattn_f16_mma_tflops"], r.get("sdpa_flash_tflops", nan), r.get("sdpa_cudnn_tflops", nan)
            vals = (r["D"], r["L"], "yes" if r["causal"] else "no", "%.0f" % w, "%.0f" % m, "%.0f" % fa, "%.0f" % cu, "%.2f" % (w / cu),
                    "%.2f" % (m / cu), "%.2f" % (w / m), "%.1e" % r["qattn_f16_rel_l1"], "%.1e" % r["qattn_f16_mma_rel_l1"],
                    "%.1e" % r.get("sdpa_cudnn_rel_l1", nan), "yes" if r["f16_kernel_wgmma"] else "no")
            print("| " + " | ".join(str(x) for x in vals) + " |")
    with open(os.path.join(args.out, "gpu_compare.json"), "w") as f:
        json.dump(dict(device=dev, torch=torch.__version__, rows=rows), f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = ["qattn_f16", "qattn_i8", "qattn_i8_kernel", "sdpa_flash", "sdpa_cudnn"]
        labels = ["D%d L%dk%s" % (r["D"], r["L"] // 1024, " c" if r["causal"] else "") for r in rows]
        fig, ax = plt.subplots(figsize=(max(8, len(rows) * 1.1), 4.5))
        w = 0.16
        for i, n in enumerate(names):
            ax.bar([x + (i - 2) * w for x in range(len(rows))], [r.get(n + "_tflops", 0) or 0 for r in rows], w, label=n)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_ylabel("TFLOP/s (TOPS)")
        ax.set_title("qattn vs torch SDPA, forward, %s" % dev)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "gpu_compare.png"), dpi=110)
    except Exception as e:
        print("plot skipped:", e, file=sys.stderr)


if __name__ == "__main__":
    main()
