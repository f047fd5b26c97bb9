/* qattn_forward_kvcache on the CUDA backend, after forward_kvcache.c has checked every argument on
 * the host (with host copies of cache_seqlens and the block table's used entries, read here):
 * append the new tokens (keys rotated), rotate the queries into a scratch copy, then per forward
 * call gather its sequences' keys and values into contiguous scratch and run qattn_cuda_forward on
 * it: a varlen call over sequences of different key counts when the queries are few (decode), else
 * a dense call per run of equal key counts (the sm_90a wgmma kernel where it applies; mma.sync
 * takes varlen). The kernels: kvcache.cu.
 * The gather costs one extra read and write of the keys and values the call attends to; scratch is
 * bounded by SCRATCH_BYTES (a sequence longer than that gets its own). The kernels index only
 * through the host's checked copies (uploaded with the call), never the caller's device arrays.
 * Everything is queued on p->stream; the table reads synchronise it once. */
#include <stdio.h>
#include <string.h>

extern "C" {
#include "qattn_internal.h"
#include "core/names.h"
#include "kv/kv_internal.h"
}
#include "cuda_common.cuh"
#include "kvcache_steps.cuh"

namespace {

const char *FN = "qattn_forward_kvcache";
constexpr int64_t SCRATCH_BYTES = int64_t(512) << 20; /* gathered K and V of one call */

/* The cache tensors' alignment: the gather moves 16-byte chunks. */
qattn_status check_cache_alignment(qattn_ctx *ctx, const qattn_kvcache_params *kv) {
    const void *bases[2] = {kv->k_cache, kv->v_cache};
    const int64_t strides[6] = {kv->k_page_stride, kv->k_seq_stride, kv->k_head_stride, kv->v_page_stride, kv->v_seq_stride, kv->v_head_stride};
    for (int i = 0; i < 2; i++)
        if ((uintptr_t)bases[i] % 16 != 0)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s on the CUDA backend needs 16-byte aligned caches (%s is %p)", FN, i ? "v_cache" : "k_cache",
                              bases[i]);
    for (int i = 0; i < 6; i++)
        if (strides[i] % 8 != 0)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s on the CUDA backend needs cache strides that are multiples of 8 elements (%s %s stride is %lld)",
                              FN, i < 3 ? "k_cache" : "v_cache", i % 3 == 0 ? "page" : i % 3 == 1 ? "seq" : "head", (long long)strides[i]);
    return QATTN_OK;
}

/* Two sequences appending to one slot (a page listed by both, at overlapping offsets): the CPU
 * backend writes in sequence order, the append kernel writes in parallel, so such a call is refused
 * here instead of leaving the slot to whichever write lands last. */
qattn_status check_append_slots(qattn_ctx *ctx, const qattn_kvcache_params *kv, int64_t B, const int32_t *cs, const int32_t *table, int64_t width) {
    const int64_t ps = kv->page_size, sn = kv->seqlen_new;
    if (!table || sn == 0) return QATTN_OK; /* contiguous: sequence rows are disjoint (checked view) */
    const int64_t n = kvc_append_span_count(cs, B, ps, sn);
    kvc_span *sp = (kvc_span *)qattn_alloc(ctx, (size_t)n * sizeof(kvc_span));
    if (!sp) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "%s: cannot allocate the append check (%lld pages)", FN, (long long)n);
    const kvc_span *clash = kvc_append_clash(cs, table, width, B, ps, sn, sp);
    qattn_status s = QATTN_OK;
    if (clash)
        s = qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                       "%s: sequences %lld and %lld both append to page %lld at offset %lld; on the CUDA backend appends run in parallel, so "
                       "each cache slot may receive one new token per call",
                       FN, (long long)clash[0].b, (long long)clash[1].b, (long long)clash[1].page, (long long)clash[1].lo);
    qattn_free(ctx, sp);
    return s;
}

qattn_status cuda_fail(qattn_ctx *ctx, qattn_status s, const char *what, cudaError_t e) {
    cudaGetLastError();
    return qattn_fail(ctx, s, "%s: %s: %s", FN, what, cudaGetErrorString(e));
}

/* The device buffers of one call (stream-ordered: freed on the stream after the last kernel). */
struct scratch {
    void *kv = nullptr, *qr = nullptr, *tables = nullptr;
    cudaStream_t stream;
    explicit scratch(cudaStream_t s) : stream(s) {}
    ~scratch() {
        if (kv) cudaFreeAsync(kv, stream);
        if (qr) cudaFreeAsync(qr, stream);
        if (tables) cudaFreeAsync(tables, stream);
    }
};

/* Varlen calls when the queries are few (decode, speculative decode: Lq <= VARLEN_MAX_LQ), the key
 * counts differ and q and o are packed: one launch for many sequences of different lengths. Else
 * runs of equal key counts, each a dense call (the sm_90a wgmma kernel where it applies). */
constexpr int64_t VARLEN_MAX_LQ = 64;

bool use_varlen(const qattn_params *p, bool rotary, const int32_t *lk) {
    bool differ = false;
    for (int64_t b = 1; b < p->batch && !differ; b++) differ = lk[b] != lk[0];
    const bool q_packed = rotary || p->q_batch_stride == p->seqlen_q * p->q_seq_stride;
    return differ && p->seqlen_q <= VARLEN_MAX_LQ && q_packed && p->o_batch_stride == p->seqlen_q * p->o_seq_stride;
}

} // namespace

extern "C" qattn_status qattn_cuda_read_i32(qattn_ctx *ctx, void *stream, int32_t *dst, const int32_t *src, int64_t src_stride, int64_t width,
                                            int64_t rows) {
    if (width == 0 || rows == 0) return QATTN_OK;
    qattn_device_guard guard(ctx->cuda_device);
    if (guard.err != cudaSuccess) return cuda_fail(ctx, QATTN_ERR_BACKEND, "cudaSetDevice", guard.err);
    cudaStream_t st = (cudaStream_t)stream;
    cudaError_t e = cudaMemcpy2DAsync(dst, (size_t)width * 4, src, (size_t)src_stride * 4, (size_t)width * 4, (size_t)rows, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess)
        return cuda_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "reading cache_seqlens / block_table (device int32 arrays on the CUDA backend)", e);
    return QATTN_OK;
}

extern "C" qattn_status qattn_cuda_forward_kvcache(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv, const qattn_rotary *r,
                                                   const int32_t *cs, const int32_t *table, int64_t table_width, const int32_t *lk) {
    if (p->qkv_dtype != QATTN_DTYPE_F16 && p->qkv_dtype != QATTN_DTYPE_BF16)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s on the CUDA backend takes fp16 or bf16 tensors (qkv_dtype is %s)", FN,
                          qattn_dtype_name(p->qkv_dtype));
    qattn_status s = check_cache_alignment(ctx, kv);
    if (s == QATTN_OK) s = check_append_slots(ctx, kv, p->batch, cs, table, table_width);
    if (s != QATTN_OK) return s;
    const int64_t B = p->batch, H = p->n_heads, HK = p->n_kv_heads, D = p->head_dim, Lq = p->seqlen_q, Sn = kv->seqlen_new;
    const int32_t bf16 = p->qkv_dtype == QATTN_DTYPE_BF16;
    const bool rotary = r->cos != NULL, varlen = use_varlen(p, rotary, lk);

    /* the plan, and the host image of the device tables: cache_seqlens [B], the block table [B, width],
     * the varlen key and query offsets [2B] each */
    const size_t n_tables = (size_t)B * (1 + (table ? table_width : 0) + (varlen ? 4 : 0));
    kvc_call *calls = (kvc_call *)qattn_alloc(ctx, (size_t)B * sizeof(kvc_call));
    int32_t *tables = (int32_t *)qattn_alloc(ctx, n_tables * sizeof(int32_t));
    if (!calls || !tables) {
        qattn_free(ctx, calls), qattn_free(ctx, tables);
        return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "%s: cannot allocate the plan (%lld sequences)", FN, (long long)B);
    }
    int32_t *h_cu_k = tables + B + (table ? B * table_width : 0), *h_cu_q = h_cu_k + 2 * B;
    memcpy(tables, cs, (size_t)B * 4);
    if (table) memcpy(tables + B, table, (size_t)(B * table_width) * 4);
    int64_t scratch_tokens;
    const int64_t n_calls = kvc_plan(lk, B, Lq, varlen, SCRATCH_BYTES / (4 * HK * D), 65535, calls, h_cu_k, h_cu_q, &scratch_tokens);

    qattn_device_guard guard(ctx->cuda_device);
    if (guard.err != cudaSuccess) {
        qattn_free(ctx, calls), qattn_free(ctx, tables);
        return cuda_fail(ctx, QATTN_ERR_BACKEND, "cudaSetDevice", guard.err);
    }
    cudaStream_t stream = (cudaStream_t)p->stream;
    scratch sc(stream);
    cudaError_t e = cudaSuccess;
    const size_t kv_bytes = (size_t)scratch_tokens * (size_t)(HK * D) * 2, q_bytes = rotary ? (size_t)(B * Lq * H * D) * 2 : 0;
    const size_t lse_bytes = varlen && p->lse ? (size_t)(B * Lq * H) * 4 : 0;
    e = cudaMallocAsync(&sc.kv, 2 * kv_bytes + lse_bytes + 16, stream);
    if (e == cudaSuccess && q_bytes) e = cudaMallocAsync(&sc.qr, q_bytes, stream);
    if (e == cudaSuccess) e = cudaMallocAsync(&sc.tables, n_tables * 4 + 16, stream);
    if (e != cudaSuccess) {
        qattn_free(ctx, calls), qattn_free(ctx, tables);
        return cuda_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "device scratch (gathered keys and values, rotated queries, tables)", e);
    }
    uint16_t *dk = (uint16_t *)sc.kv, *dv = dk + kv_bytes / 2;
    float *d_lse = lse_bytes ? (float *)(dv + kv_bytes / 2) : nullptr;
    int32_t *dcs = (int32_t *)sc.tables, *dtable = table ? dcs + B : nullptr;
    const int32_t *d_cu_k = dcs + (h_cu_k - tables), *d_cu_q = dcs + (h_cu_q - tables);

    /* Every forward call checked before anything is written. */
    const void *q = rotary ? sc.qr : p->q;
    const int64_t q_hs = rotary ? D : p->q_head_stride, q_ss = rotary ? H * D : p->q_seq_stride, q_bs = rotary ? Lq * H * D : p->q_batch_stride;
    for (int64_t i = 0; i < n_calls && s == QATTN_OK; i++) {
        qattn_params pk = kvc_call_params(p, q, q_bs, q_ss, q_hs, calls[i], dk, dv, d_cu_q, d_cu_k, d_lse);
        s = qattn_cuda_supports(ctx, &pk);
    }

    /* From here on the cache changes. */
    if (s == QATTN_OK) e = cudaMemcpyAsync(dcs, tables, n_tables * 4, cudaMemcpyHostToDevice, stream);
    const kvc_view kc = {(uint16_t *)kv->k_cache, kv->k_page_stride, kv->k_seq_stride, kv->k_head_stride};
    const kvc_view vc = {(uint16_t *)kv->v_cache, kv->v_page_stride, kv->v_seq_stride, kv->v_head_stride};
    const kvc_pages pages = {dtable, table_width, kv->page_size};
    const kvc_rope rope = {r->cos, r->sin, r->dim, r->interleaved};
    if (s == QATTN_OK && e == cudaSuccess && Sn > 0) {
        const kvc_append_args a = {(const uint16_t *)kv->k_new, (const uint16_t *)kv->v_new, kv->k_new_batch_stride, kv->k_new_seq_stride,
                                   kv->k_new_head_stride, kv->v_new_batch_stride, kv->v_new_seq_stride, kv->v_new_head_stride, kc, vc, pages, rope,
                                   dcs, Sn, (int32_t)HK, (int32_t)D, bf16};
        e = qattn_cuda_launch_kvc_append(a, B * Sn * HK * D, stream);
    }
    if (s == QATTN_OK && e == cudaSuccess && rotary && Lq > 0) {
        const int per_position = p->causal || p->window_left >= 0 || p->window_right >= 0;
        const kvc_rotate_args a = {(const uint16_t *)p->q, p->q_batch_stride, p->q_seq_stride, p->q_head_stride, (uint16_t *)sc.qr, rope, dcs, Lq,
                                   (int32_t)H, (int32_t)D, bf16, per_position};
        e = qattn_cuda_launch_kvc_rotate_q(a, B * Lq * H * D, stream);
    }
    if (s == QATTN_OK && e != cudaSuccess) s = cuda_fail(ctx, QATTN_ERR_BACKEND, "appending the new tokens / rotating the queries", e);
    for (int64_t i = 0; i < n_calls && s == QATTN_OK && Lq > 0; i++) {
        const kvc_call &c = calls[i];
        const kvc_gather_args g = {kc, vc, pages, dk, dv, c.cu >= 0 ? d_cu_k + c.cu : nullptr, c.b0, c.nb, c.lk, (int32_t)HK, (int32_t)D};
        if (c.lk > 0 && (e = qattn_cuda_launch_kvc_gather(g, c.lk * HK * D / 8, stream)) != cudaSuccess)
            s = cuda_fail(ctx, QATTN_ERR_BACKEND, "gathering the keys and values", e);
        qattn_params pk = kvc_call_params(p, q, q_bs, q_ss, q_hs, c, dk, dv, d_cu_q, d_cu_k, d_lse);
        if (s == QATTN_OK) s = qattn_cuda_forward(ctx, &pk);
        if (s == QATTN_OK && d_lse) {
            const kvc_lse_args la = {d_lse, p->lse, c.b0, c.nb, Lq, (int32_t)H};
            if ((e = qattn_cuda_launch_kvc_lse_scatter(la, H * c.nb * Lq, stream)) != cudaSuccess) s = cuda_fail(ctx, QATTN_ERR_BACKEND, "the LSE", e);
        }
    }
    qattn_free(ctx, calls), qattn_free(ctx, tables);
    return s;
}
