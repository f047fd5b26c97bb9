/* The CUDA backend's host side: device discovery, per-context state (cached workspace),
 * qattn_cuda_supports / workspace_size / forward. Pointers in qattn_params are device
 * pointers; work is queued on params.stream (NULL = the legacy default stream) and never
 * synchronised here. Every CUDA call and launch is checked and becomes a status + message.
 * A machine with no GPU or no driver: qattn_cuda_device_count() returns 0 and creating a
 * context with backend cuda fails with QATTN_ERR_UNSUPPORTED. */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "qattn_internal.h"
#include "core/names.h"
#include "quant/lowp.h"
}
#include "cuda_common.cuh"
#include "kv_decode.cuh"

namespace {

/* Per-context state (ctx->cuda_state). The workspace cache is used only when the caller
 * passes no workspace: allocated on the first call that needs it, grown when a call needs
 * more (cudaMalloc synchronises the device: pass params.workspace to avoid that), freed
 * with the context; the calls that use it are kept in order across streams (ws_serial). */
struct cuda_state {
    int device;
    int sm_count;
    int cc_major, cc_minor;
    int i8_wgmma; /* INT8 D 128 on the sm_90a wgmma kernel (cuda_kernels MMA forces mma.sync) */
    int f16_wgmma; /* FP16/BF16 on the sm_90a wgmma kernel (cuda_kernels MMA forces mma.sync) */
    int32_t *f16_sched; /* its work counter (zeroed before each launch); calls that use it run in order (f16_serial) */
    qattn_cuda_serial f16_serial;
    void *ws;
    size_t ws_bytes;
    qattn_cuda_serial ws_serial;
    qattn_kvd_state kvd; /* GPU decode: residency table, cached split scratch (kv_decode_driver.cu) */
};

bool is_varlen(const qattn_params *p) { return p->cu_seqlens_q != NULL; }

int input_is_bf16(const qattn_params *p) { return p->qkv_dtype == QATTN_DTYPE_BF16; }

/* INT8 and INT4 share the quantization pass and the INT8 kernels: INT4 is the pass with 4-bit Q and K
 * codes held one per byte (docs/FORMAT.md section 8). */
bool is_integer(const qattn_params *p) { return p->precision == QATTN_PRECISION_INT8 || p->precision == QATTN_PRECISION_INT4; }
int qk_code_max(const qattn_params *p) { return p->precision == QATTN_PRECISION_INT4 ? 7 : 127; }

/* Block-sparse attention runs on the sm_90a wgmma kernels only (FP16/BF16 at every head dim they take,
 * INT8 at D 128), whose items are 128 query rows and key tiles 128 keys (64 at D 256): a mask block must
 * hold whole items and whole tiles, so that tiles are skipped whole (fwd_wgmma_f16.cu, docs/gpu.md). */
qattn_status check_block_mask(qattn_ctx *ctx, const qattn_params *p) {
    const cuda_state *st = (const cuda_state *)ctx->cuda_state;
    const bool i8 = is_integer(p);
    if (!st || !(i8 ? st->i8_wgmma : st->f16_wgmma))
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED,
                          "block_mask on the CUDA backend runs on the sm_90a wgmma kernels only (compute capability 9.0, context option "
                          "cuda_kernels not QATTN_CUDA_KERNELS_MMA); the mma.sync kernels do not implement it (the CPU backend does)");
    if (is_varlen(p)) return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "block_mask with cu_seqlens (varlen) is not implemented on the CUDA backend (the CPU backend does it)");
    if (p->alibi_slopes || p->softcap > 0.0f)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED,
                          "block_mask with %s is not implemented on the CUDA backend (score modifiers run on the mma.sync kernel, block masks on "
                          "the wgmma kernels; the CPU backend does both)",
                          p->alibi_slopes ? "alibi_slopes" : "softcap");
    if (!i8 && p->head_dim != 64 && p->head_dim != 96 && p->head_dim != 128 && p->head_dim != 256)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "block_mask on the CUDA backend needs head_dim 64, 96, 128 or 256 (the wgmma kernel's; head_dim is %d)",
                          p->head_dim);
    if (i8 && p->head_dim != 128)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "block_mask at precision %s on the CUDA backend needs head_dim 128 (head_dim is %d)",
                          qattn_precision_name(p->precision), p->head_dim);
    const int bn = p->head_dim == 256 ? 64 : 128;
    if (p->block_mask_q % 128 != 0 || p->block_mask_k % bn != 0)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED,
                          "block_mask blocks of %d x %d: the CUDA kernels need block_mask_q a multiple of 128 and block_mask_k a multiple of %d "
                          "(their query rows per item and keys per tile at head_dim %d); the CPU backend takes any multiples of 16",
                          p->block_mask_q, p->block_mask_k, bn, p->head_dim);
    return QATTN_OK;
}

qattn_status check(qattn_ctx *ctx, const qattn_params *p) {
    if (p->qkv_dtype != QATTN_DTYPE_F16 && p->qkv_dtype != QATTN_DTYPE_BF16)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA backend takes fp16 or bf16 q/k/v (qkv_dtype is %d, %s)", p->qkv_dtype,
                          qattn_dtype_name(p->qkv_dtype));
    if (!qattn_cuda_f16_head_dim_ok(p->head_dim))
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA backend supports head_dim " QATTN_CUDA_F16_HEAD_DIMS " (head_dim is %d)", p->head_dim);
    switch (p->precision) {
    case QATTN_PRECISION_AUTO: break;
    case QATTN_PRECISION_FP16:
    case QATTN_PRECISION_BF16:
        if ((p->precision == QATTN_PRECISION_BF16) != (p->qkv_dtype == QATTN_DTYPE_BF16))
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA backend computes in the inputs' dtype: precision %s with %s inputs is not supported",
                              qattn_precision_name(p->precision), qattn_dtype_name(p->qkv_dtype));
        break;
    case QATTN_PRECISION_INT8:
    case QATTN_PRECISION_INT4: { /* int8_scheme: INT8's; INT4 ignores it, as on the CPU */
        const char *name = qattn_precision_name(p->precision);
        if (p->precision == QATTN_PRECISION_INT8 && p->int8_scheme != QATTN_INT8_DEFAULT)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA INT8 path implements int8_scheme DEFAULT only (got %d)", p->int8_scheme);
        if (is_varlen(p)) return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA %s path does not support cu_seqlens (varlen) yet", name);
        if (p->alibi_slopes || p->softcap > 0.0f)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA %s path does not implement %s (the CUDA FP16/BF16 path does)", name,
                              p->alibi_slopes ? "alibi_slopes" : "softcap");
        if (p->head_dim != 64 && p->head_dim != 128)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA %s path supports head_dim 64 and 128 (head_dim is %d)", name, p->head_dim);
        break;
    }
    default:
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "precision %d is not supported by the CUDA backend (AUTO, FP16, BF16, INT8, INT4 are)", p->precision);
    }
    /* cp.async moves 16-byte chunks: bases and strides must keep rows 16-byte aligned. */
    const void *ptrs[4] = {p->q, p->k, p->v, p->o};
    const char *names[4] = {"q", "k", "v", "o"};
    for (int i = 0; i < 4; i++)
        if (p->batch > 0 && ((uintptr_t)ptrs[i] % 16) != 0)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA backend needs 16-byte aligned tensors (%s is %p)", names[i], ptrs[i]);
    const int64_t strides[12] = {p->q_batch_stride, p->q_seq_stride, p->q_head_stride, p->k_batch_stride, p->k_seq_stride, p->k_head_stride,
                                 p->v_batch_stride, p->v_seq_stride, p->v_head_stride, p->o_batch_stride, p->o_seq_stride, p->o_head_stride};
    for (int i = 0; i < 12; i++)
        if (strides[i] % 8 != 0)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA backend needs every stride to be a multiple of 8 elements (%s %s stride is %lld)",
                              names[i / 3], i % 3 == 0 ? "batch" : i % 3 == 1 ? "seq" : "head", (long long)strides[i]);
    if ((int64_t)p->batch > 65535 || p->n_heads > 65535)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the CUDA backend supports batch and n_heads up to 65535 (batch %lld, n_heads %d)",
                          (long long)p->batch, p->n_heads);
    return p->block_mask ? check_block_mask(ctx, p) : QATTN_OK;
}

qattn_cuda_args make_args(const qattn_params *p) {
    qattn_cuda_args a;
    memset(&a, 0, sizeof a);
    a.q = p->q;
    a.k = p->k;
    a.v = p->v;
    a.o = p->o;
    a.lse = p->lse;
    a.q_bs = p->q_batch_stride, a.q_ss = p->q_seq_stride, a.q_hs = p->q_head_stride;
    a.k_bs = p->k_batch_stride, a.k_ss = p->k_seq_stride, a.k_hs = p->k_head_stride;
    a.v_bs = p->v_batch_stride, a.v_ss = p->v_seq_stride, a.v_hs = p->v_head_stride;
    a.o_bs = p->o_batch_stride, a.o_ss = p->o_seq_stride, a.o_hs = p->o_head_stride;
    a.cu_q = p->cu_seqlens_q;
    a.cu_k = p->cu_seqlens_k;
    a.batch = (int32_t)p->batch;
    a.lq = (int32_t)p->seqlen_q;
    a.lk = (int32_t)p->seqlen_k;
    a.h = p->n_heads;
    a.hk = p->n_kv_heads;
    a.d = p->head_dim;
    a.o_dtype = p->o_dtype;
    a.wl = p->window_left;
    a.wr = qattn_window_right(p);
    a.scale = qattn_effective_scale(p);
    a.scale_log2 = a.scale * 1.4426950408889634f;
    a.mods = p->alibi_slopes != NULL || p->softcap > 0.0f;
    a.softcap_in = p->softcap > 0.0f ? a.scale / p->softcap : 0.0f;
    a.softcap_out = p->softcap > 0.0f ? p->softcap * 1.4426950408889634f : 0.0f;
    a.alibi = p->alibi_slopes;
    a.alibi_bs = p->alibi_batch_stride;
    return a;
}

/* The INT8 (and INT4: qk_code_max 7) forward's kernels on stream: quantization into ws, then the attention
 * kernel (the FP16 kernel's empty-key rule when there is no key). */
qattn_status enqueue_i8(qattn_ctx *ctx, qattn_cuda_args &a, int bf16, int qk_code_max, void *ws, const qattn_cuda_bmask *bm,
                        const qattn_calibration *cal, cudaStream_t stream) {
    cudaError_t e;
    /* Sharp units (docs/FORMAT.md section 7) run the FP16/BF16 mma.sync kernel, which has no block masks:
     * with a mask every unit stays INT8. INT4 has none (its noise model is INT8's codes'; the CPU's INT4
     * has none either). */
    const float sharp_noise = bm || qk_code_max != 127 ? 0.f : QATTN_QK_REFINE_NOISE;
    if ((e = qattn_cuda_quantize_i8(a, bf16, ws, stream, cal, sharp_noise, qk_code_max)) != cudaSuccess)
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "INT8 quantization kernels: %s", cudaGetErrorString(e));
    if (a.lk > 0 && (e = a.i8_wgmma ? qattn_cuda_launch_i8_wgmma(a, stream, bm) : qattn_cuda_launch_i8(a, stream)) != cudaSuccess)
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "INT8 attention kernel launch: %s", cudaGetErrorString(e));
    if (a.lk > 0 && a.skip_units) {
        qattn_cuda_args f = a;
        f.only_units = a.skip_units, f.skip_units = NULL;
        if ((e = qattn_cuda_launch_f16(f, bf16, stream)) != cudaSuccess)
            return qattn_fail(ctx, QATTN_ERR_BACKEND, "attention kernel launch (the sharp units): %s", cudaGetErrorString(e));
    }
    if (a.lk == 0 && (e = qattn_cuda_launch_f16(a, bf16, stream)) != cudaSuccess)
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "attention kernel launch (empty keys): %s", cudaGetErrorString(e));
    return QATTN_OK;
}

} // namespace

extern "C" int qattn_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
        return 0;
    }
    return n;
}

extern "C" qattn_status qattn_cuda_init(qattn_ctx *ctx) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "backend cuda requested but no CUDA device is usable (%s)",
                          e != cudaSuccess ? cudaGetErrorString(e) : "no device");
    }
    if (ctx->cuda_device >= n)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "cuda_device is %d but only %d CUDA device(s) are visible", ctx->cuda_device, n);
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, ctx->cuda_device)) != cudaSuccess)
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaGetDeviceProperties(%d): %s", ctx->cuda_device, cudaGetErrorString(e));
    if (prop.major < 8)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "device %d (%s) has compute capability %d.%d; the CUDA backend needs 8.0 or newer",
                          ctx->cuda_device, prop.name, prop.major, prop.minor);
    qattn_device_guard guard(ctx->cuda_device);
    if (guard.err != cudaSuccess) return qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaSetDevice(%d): %s", ctx->cuda_device, cudaGetErrorString(guard.err));
    if ((e = qattn_cuda_prepare_f16()) != cudaSuccess || (e = qattn_cuda_prepare_i8()) != cudaSuccess ||
        (e = qattn_cuda_prepare_i8_wgmma()) != cudaSuccess ||
        /* 193 KB of shared memory: more than sm_80 allows, and only ever launched on 9.0 */
        (prop.major == 9 && prop.minor == 0 && (e = qattn_cuda_prepare_f16_wgmma()) != cudaSuccess))
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaFuncSetAttribute (shared memory limit): %s", cudaGetErrorString(e));
    cuda_state *st = (cuda_state *)qattn_alloc(ctx, sizeof(cuda_state));
    if (!st) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate the CUDA backend state");
    memset(st, 0, sizeof *st);
    st->device = ctx->cuda_device;
    st->sm_count = prop.multiProcessorCount;
    st->cc_major = prop.major;
    st->cc_minor = prop.minor;
    /* wgmma is sm_90a machine code: compute capability 9.0 exactly */
    st->i8_wgmma = st->f16_wgmma = prop.major == 9 && prop.minor == 0 && ctx->cuda_kernels != QATTN_CUDA_KERNELS_MMA;
    if ((e = qattn_cuda_serial_init(&st->ws_serial)) != cudaSuccess) {
        cudaGetLastError();
        qattn_free(ctx, st);
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaEventCreate: %s", cudaGetErrorString(e));
    }
    if (st->f16_wgmma && ((e = qattn_cuda_serial_init(&st->f16_serial)) != cudaSuccess ||
                          (e = cudaMalloc((void **)&st->f16_sched, sizeof(int32_t))) != cudaSuccess)) {
        cudaGetLastError();
        qattn_cuda_serial_release(&st->f16_serial);
        qattn_cuda_serial_release(&st->ws_serial);
        qattn_free(ctx, st);
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "the FP16 wgmma kernel's work counter (cudaEventCreate, cudaMalloc): %s", cudaGetErrorString(e));
    }
    if ((e = qattn_cuda_prepare_kvd(&st->kvd, st->sm_count)) != cudaSuccess) {
        cudaGetLastError();
        qattn_cuda_serial_release(&st->ws_serial);
        if (st->f16_sched) cudaFree(st->f16_sched);
        qattn_cuda_serial_release(&st->f16_serial);
        qattn_free(ctx, st);
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "decode kernels (shared memory limit, occupancy, event): %s", cudaGetErrorString(e));
    }
    ctx->cuda_state = st;
    return QATTN_OK;
}

/* The GPU decode (kv_decode_driver.cu) with the context's decode state (NULL when ctx has no CUDA state:
 * qattn_cuda_kv_decode refuses it after checking its arguments). */
extern "C" qattn_status qattn_kv_decode_cuda(qattn_ctx *ctx, const qattn_kv_cache *c, const qattn_kv_device_cache *dev,
                                             const qattn_decode_params *dp) {
    cuda_state *st = ctx ? (cuda_state *)ctx->cuda_state : NULL;
    return qattn_cuda_kv_decode(ctx, st ? &st->kvd : NULL, c, dev, dp);
}

extern "C" void qattn_cuda_release(qattn_ctx *ctx) {
    cuda_state *st = (cuda_state *)ctx->cuda_state;
    if (!st) return;
    {
        qattn_device_guard guard(st->device);
        if (st->ws) cudaFree(st->ws); /* synchronises the device: contexts are destroyed off the hot path */
        if (st->f16_sched) cudaFree(st->f16_sched);
        qattn_cuda_serial_release(&st->ws_serial);
        qattn_cuda_serial_release(&st->f16_serial);
        qattn_cuda_release_kvd(&st->kvd);
    }
    qattn_free(ctx, st);
    ctx->cuda_state = NULL;
}

extern "C" qattn_status qattn_cuda_supports(qattn_ctx *ctx, const qattn_params *p) { return check(ctx, p); }

extern "C" qattn_status qattn_cuda_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes) {
    *bytes = 0;
    qattn_status s = check(ctx, p);
    if (s != QATTN_OK) return s;
    if (is_integer(p)) {
        qattn_cuda_args a = make_args(p);
        *bytes = qattn_cuda_i8_workspace(a);
    }
    return QATTN_OK;
}

/* qattn_cuda_forward and qattn_cuda_forward_calibrated (cal: device arrays, INT8 only). */
static qattn_status forward(qattn_ctx *ctx, const qattn_params *p, const qattn_calibration *cal) {
    qattn_status s = check(ctx, p);
    if (s != QATTN_OK) return s;
    cuda_state *st = (cuda_state *)ctx->cuda_state;
    if (!st) return qattn_fail(ctx, QATTN_ERR_BACKEND, "the context has no CUDA state (created with backend cuda?)");
    if (p->seqlen_q == 0) return QATTN_OK;
    qattn_device_guard guard(st->device);
    if (guard.err != cudaSuccess) return qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaSetDevice(%d): %s", st->device, cudaGetErrorString(guard.err));
    cudaStream_t stream = (cudaStream_t)p->stream;
    qattn_cuda_args a = make_args(p);
    qattn_cuda_bmask bm;
    memset(&bm, 0, sizeof bm);
    bm.m = p->block_mask, bm.bs = p->block_mask_batch_stride, bm.hs = p->block_mask_head_stride, bm.rs = p->block_mask_row_stride;
    bm.bq = p->block_mask_q, bm.bk = p->block_mask_k;
    cudaError_t e;
    if (is_integer(p)) {
        size_t need = qattn_cuda_i8_workspace(a);
        void *ws = p->workspace;
        if (ws) {
            if (p->workspace_size < need)
                return qattn_fail(ctx, QATTN_ERR_CAPACITY, "workspace_size is %zu bytes; this call needs %zu (qattn_workspace_size)", p->workspace_size, need);
            if ((uintptr_t)ws % 256 != 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "workspace must be 256-byte aligned (cudaMalloc memory is)");
        } else {
            if ((e = qattn_cuda_grow(&st->ws, &st->ws_bytes, need)) != cudaSuccess) {
                cudaGetLastError();
                return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cudaMalloc of %zu bytes of %s workspace: %s", need, qattn_precision_name(p->precision),
                                  cudaGetErrorString(e));
            }
            ws = st->ws;
        }
        a.i8_wgmma = st->i8_wgmma && a.d == 128;
        a.n_sm = st->sm_count;
        const bool cached = p->workspace == NULL;
        if (cached && (e = qattn_cuda_serial_begin(&st->ws_serial, stream)) != cudaSuccess) {
            cudaGetLastError();
            return qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaStreamWaitEvent (the previous INT8 call's stream): %s", cudaGetErrorString(e));
        }
        s = enqueue_i8(ctx, a, input_is_bf16(p), qk_code_max(p), ws, p->block_mask ? &bm : NULL, cal, stream);
        if (cached && (e = qattn_cuda_serial_end(&st->ws_serial, stream)) != cudaSuccess) { /* after whatever was queued */
            cudaGetLastError();
            if (s == QATTN_OK) s = qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaEventRecord: %s", cudaGetErrorString(e));
        }
        return s;
    }
    /* The wgmma kernel (D 64, 96, 128, 256) where its tensor maps can describe the tensors; it has no softcap or
     * ALiBi: such calls, and the other head dims (cudaErrorNotSupported), run the mma.sync kernel. */
    if (st->f16_wgmma && !a.cu_q && a.lk > 0 && !a.mods) {
        a.n_sm = st->sm_count;
        a.sched = st->f16_sched;
        if ((e = qattn_cuda_serial_begin(&st->f16_serial, stream)) != cudaSuccess) {
            cudaGetLastError();
            return qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaStreamWaitEvent (the previous FP16 call's stream): %s", cudaGetErrorString(e));
        }
        e = cudaMemsetAsync(a.sched, 0, sizeof(int32_t), stream);
        if (e == cudaSuccess) e = qattn_cuda_launch_f16_wgmma(a, input_is_bf16(p), stream, p->block_mask ? &bm : NULL);
        const cudaError_t e_end = qattn_cuda_serial_end(&st->f16_serial, stream); /* after whatever was queued */
        if (e == cudaSuccess && e_end != cudaSuccess) e = e_end;
        if (e == cudaErrorNotSupported && p->block_mask)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED,
                              "block_mask: the wgmma kernel's TMA tensor maps cannot describe these q/k/v strides, and the mma.sync kernel "
                              "does not implement block masks");
        if (e != cudaErrorNotSupported) {
            if (e == cudaSuccess) return QATTN_OK;
            cudaGetLastError();
            return qattn_fail(ctx, QATTN_ERR_BACKEND, "attention kernel launch (wgmma, d %d, %s): %s", p->head_dim, qattn_dtype_name(p->qkv_dtype),
                              cudaGetErrorString(e));
        }
    }
    /* here with a block mask only when there is no key (every row empty whatever the mask) */
    if ((e = qattn_cuda_launch_f16(a, input_is_bf16(p), stream)) != cudaSuccess)
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "attention kernel launch (d %d, %s): %s", p->head_dim, qattn_dtype_name(p->qkv_dtype),
                          cudaGetErrorString(e));
    return QATTN_OK;
}

extern "C" qattn_status qattn_cuda_forward(qattn_ctx *ctx, const qattn_params *p) { return forward(ctx, p, NULL); }

extern "C" qattn_status qattn_cuda_forward_calibrated(qattn_ctx *ctx, const qattn_params *p, const qattn_calibration *cal) {
    return forward(ctx, p, cal);
}
