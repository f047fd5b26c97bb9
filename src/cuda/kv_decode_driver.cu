/* The GPU decode's driver (qattn_kv_decode_cuda, reached through backend.cu with the context's
 * decode state, kv_decode.cuh): argument checks (qattn_validate_decode, core, plus the device
 * cache's own), the row chunks and the split plan, the scratch cached in the context, and the
 * launches of the kernels of kv_decode.cu through their wrappers (kv_decode_kernels.cuh); also the
 * per-context preparation (residency table) and release. Scheme and measurements:
 * docs/gpu_decode.md. */
#include <math.h>
#include <stdint.h>
#include <string.h>

extern "C" {
#include "kv/kv_internal.h"
}
#include "cuda_common.cuh"
#include "kv_decode.cuh"
#include "kv_decode_kernels.cuh"

namespace {

/* The context's scratch, grown to at least part_bytes of partials and cnt_bytes of counters.
 * Cached rather than cudaMallocAsync per call: with the default pool's release threshold (0) the
 * pool may hand its memory back at every synchronisation, so a call after a sync can pay for a
 * fresh mapping on the host before its launch, and per-call counters would need a memset per
 * call; the cached counters are zeroed once here and stay zero (the last block of each unit
 * resets its own). Growing frees the old
 * buffer with cudaFree, which waits for the device (as the INT8 prefill workspace in backend.cu),
 * so no earlier call still uses it; it happens on the first calls of a larger shape only. */
cudaError_t kvd_scratch(qattn_kvd_state *s, size_t part_bytes, size_t cnt_bytes, cudaStream_t st) {
    cudaError_t e = qattn_cuda_grow(&s->part, &s->part_bytes, part_bytes);
    if (e != cudaSuccess) return e;
    const bool fresh = s->cnt_bytes < cnt_bytes;
    if ((e = qattn_cuda_grow(&s->cnt, &s->cnt_bytes, cnt_bytes)) != cudaSuccess) return e;
    if (fresh && (e = cudaMemsetAsync(s->cnt, 0, s->cnt_bytes, st)) != cudaSuccess) s->cnt_bytes = 0; /* reallocated next call */
    return e;
}

} // namespace

cudaError_t qattn_cuda_prepare_kvd(qattn_kvd_state *s, int sm_count) {
    memset(s, 0, sizeof *s);
    s->sm_count = sm_count > 0 ? sm_count : 1;
    for (int i = 0; i < QATTN_KVD_SLOTS; i++) {
        int n = 0;
        cudaError_t e = qattn_kvd_prepare_slot(i, &n);
        if (e != cudaSuccess) return e;
        s->resident[i] = n > 0 ? n : 1;
    }
    return qattn_cuda_serial_init(&s->serial);
}

void qattn_cuda_release_kvd(qattn_kvd_state *s) {
    if (s->part) cudaFree(s->part);
    if (s->cnt) cudaFree(s->cnt);
    qattn_cuda_serial_release(&s->serial);
    memset(s, 0, sizeof *s);
}

qattn_status qattn_cuda_kv_decode(qattn_ctx *ctx, qattn_kvd_state *ks, const qattn_kv_cache *c, const qattn_kv_device_cache *dev,
                                  const qattn_decode_params *dp) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!c || !dev || !dp)
        return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_kv_decode_cuda: %s is NULL", !c ? "cache" : !dev ? "device cache" : "params");
    if (ctx->backend != QATTN_BACKEND_CUDA)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_kv_decode_cuda needs a context with backend cuda");
    static const int32_t head_dims[2] = {64, 128}; /* the kernels' instances */
    qattn_decode_limits lim = qattn_kv_decode_limits(c, "qattn_kv_decode_cuda");
    lim.max_seqlen_q = 64; /* as the CPU decode */
    lim.n_head_dims = 2;
    lim.head_dims = head_dims;
    int64_t max_len = 0;
    qattn_status vs = qattn_validate_decode(ctx, dp, &lim, &max_len);
    if (vs != QATTN_OK) return vs;
    if (dp->n_seqs == 0) return QATTN_OK;
    /* the device cache's own checks */
    if (!dev->arena || !dev->block_table)
        return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_kv_decode_cuda: device %s is NULL", !dev->arena ? "arena" : "block_table");
    if ((uintptr_t)dev->arena % 16 != 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qattn_kv_decode_cuda: the device arena must be 16-byte aligned (%p)", dev->arena);
    if (!ks) return qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_kv_decode_cuda: the context has no CUDA state");
    qattn_device_guard guard(ctx->cuda_device);
    if (guard.err != cudaSuccess) return qattn_fail(ctx, QATTN_ERR_BACKEND, "cudaSetDevice(%d): %s", ctx->cuda_device, cudaGetErrorString(guard.err));
    cudaStream_t st = (cudaStream_t)dev->stream;
    const int D = c->head_dim, HK = c->n_kv_heads, group = dp->n_heads / HK, rows = group * dp->seqlen_q;
    /* rows per chunk: 8 or 16 (R8 1 or 2); the INT8 cache on kvd_mma, FP16/BF16 on kvd_mma16 */
    const bool i8 = c->dtype == QATTN_DTYPE_I8;
    const int DT = c->dtype == QATTN_DTYPE_BF16 ? 1 : 0;
    const int R8 = rows > 8 ? 2 : 1;
    const int M = 8 * R8, n_rc = (rows + M - 1) / M;

    qattn_kvd_args a;
    memset(&a, 0, sizeof a);
    a.arena = (const uint8_t *)dev->arena;
    a.table = dev->block_table;
    a.q = dp->q;
    a.o = dp->o;
    a.lse = dp->lse;
    a.table_ld = c->max_blocks_per_seq;
    a.block_bytes = c->block_bytes;
    a.head_bytes = c->head_bytes;
    a.v_off = c->v_offset;
    a.ks_off = c->ks_offset;
    a.vs_off = c->vs_offset;
    a.bs = c->block_size;
    a.bs_shift = -1;
    for (int sft = 0; sft < 11; sft++)
        if ((1 << sft) == c->block_size) a.bs_shift = sft;
    a.lq = dp->seqlen_q;
    a.h = dp->n_heads;
    a.hk = HK;
    a.group = group;
    a.rows = rows;
    a.n_rc = n_rc;
    a.rows_pad = n_rc * M;
    a.q_dtype = dp->q_dtype;
    a.o_dtype = dp->o_dtype;
    a.causal = dp->causal;
    a.wl = dp->window_left;
    a.qscale = (dp->scale != 0.0f ? dp->scale : 1.0f / sqrtf((float)D)) * 1.4426950408889634f;

    /* Split count: the split length (a multiple of 64 tokens, >= 256) that minimises
     * (waves of resident blocks, rounded up) x (tokens per split + 64 of fixed cost), over
     * 1 .. 4x the split count that gives 8 waves: fills the SMs several times without a ragged
     * last wave. */
    int32_t chunk = dp->n_seqs < QATTN_KVD_SEQ_CHUNK ? dp->n_seqs : QATTN_KVD_SEQ_CHUNK;
    int64_t units = (int64_t)chunk * HK * n_rc;
    int64_t resident = (int64_t)ks->resident[i8 ? qattn_kvd_slot_mma(D, R8) : qattn_kvd_slot_mma16(D, DT, R8)] * ks->sm_count;
    int64_t want = (8 * resident + units - 1) / units;
    int64_t most = (max_len + 255) / 256;
    if (most < 1) most = 1;
    int64_t hi_ns = 4 * want < most ? 4 * want : most;
    if (hi_ns < 1) hi_ns = 1;
    int64_t split_tokens = 0, nsplit = 0;
    double best = 0.0;
    for (int64_t ns = 1; ns <= hi_ns; ns++) {
        int64_t stk = ((max_len + ns - 1) / ns + 63) / 64 * 64;
        if (stk < 64) stk = 64;
        int64_t real = (max_len + stk - 1) / stk;
        if (real < 1) real = 1;
        int64_t waves = (units * real + resident - 1) / resident;
        double cost = (double)waves * (double)(stk + 64);
        if (nsplit == 0 || cost < best) {
            best = cost;
            split_tokens = stk;
            nsplit = real;
        }
    }
    a.split_tokens = (int32_t)split_tokens;
    a.nsplit = (int32_t)nsplit;
    if ((int64_t)n_rc * nsplit > INT32_MAX / 2)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_kv_decode_cuda: too many row chunks x splits (%d x %lld)", n_rc, (long long)nsplit);

    /* scratch: cached in the context (kvd_scratch); counters per unit of one launch, reused by the
     * next launch of the loop (stream order: they are back to 0 when it starts) */
    size_t part_bytes = (size_t)chunk * HK * nsplit * a.rows_pad * (D + 2) * sizeof(float);
    /* INT8: the transformed queries [n_seqs][Lq][H][D] and their LSE shifts after the partials */
    const size_t q_rows = (size_t)dp->n_seqs * dp->seqlen_q * dp->n_heads;
    const size_t z_off = (part_bytes + 255) / 256 * 256, corr_off = z_off + q_rows * D * sizeof(float);
    if (i8 && q_rows > (size_t)INT32_MAX)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_kv_decode_cuda: %zu query rows (n_seqs x seqlen_q x n_heads) exceed 2^31-1", q_rows);
    if (i8) part_bytes = corr_off + q_rows * sizeof(float);
    size_t cnt_bytes = (size_t)units * sizeof(unsigned);
    cudaError_t e = kvd_scratch(ks, part_bytes, cnt_bytes, st);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_kv_decode_cuda: %zu bytes of split partials and %zu of counters: %s", part_bytes,
                          cnt_bytes, cudaGetErrorString(e));
    }
    /* the scratch serialises the context's callers: wait for the previous call if it ran on another stream */
    if ((e = qattn_cuda_serial_begin(&ks->serial, st)) != cudaSuccess) {
        cudaGetLastError();
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_kv_decode_cuda: cudaStreamWaitEvent (the previous call's stream): %s", cudaGetErrorString(e));
    }
    a.part = (float *)ks->part;
    a.cnt = (unsigned *)ks->cnt;
    qattn_status status = QATTN_OK;
    if (i8) { /* the queries into the codes' domain, once for all chunks */
        float *z = (float *)((char *)ks->part + z_off), *corr = (float *)((char *)ks->part + corr_off);
        const float *tf = (const float *)(a.arena + c->n_blocks * c->block_bytes); /* [f, mu_k, mu_v, ...][HK][D] */
        const float scale = dp->scale != 0.0f ? dp->scale : 1.0f / sqrtf((float)D);
        if ((e = qattn_kvd_launch_prep_q(D, (unsigned)q_rows, dp->q, dp->q_dtype, a.qscale, scale, tf, HK, dp->n_heads, dp->seqlen_q, z, corr,
                                         st)) != cudaSuccess)
            status = qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_kv_decode_cuda: query transform launch (%zu rows): %s", q_rows, cudaGetErrorString(e));
        a.q = z;
        a.q_dtype = QATTN_DTYPE_F32;
        a.qscale = 1.0f;
        a.muv = tf + 2 * (int64_t)HK * D;
        a.lse_corr = corr;
    }
    for (int32_t b0 = 0; b0 < dp->n_seqs && status == QATTN_OK; b0 += QATTN_KVD_SEQ_CHUNK) {
        int32_t n = dp->n_seqs - b0 < QATTN_KVD_SEQ_CHUNK ? dp->n_seqs - b0 : QATTN_KVD_SEQ_CHUNK;
        a.b0 = b0;
        for (int32_t k = 0; k < n; k++) {
            a.seq_id[k] = dp->seq_ids[b0 + k];
            a.seq_len[k] = (int32_t)c->seq_len[dp->seq_ids[b0 + k]];
        }
        dim3 grid((unsigned)(n_rc * nsplit), (unsigned)HK, (unsigned)n);
        if ((e = i8 ? qattn_kvd_launch_mma(a, D, R8, grid, st) : qattn_kvd_launch_mma16(a, D, DT, R8, grid, st)) != cudaSuccess) {
            cudaGetLastError();
            status = qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_kv_decode_cuda: split kernel launch (%u x %u x %u blocks): %s", grid.x, grid.y, grid.z,
                                cudaGetErrorString(e));
        }
    }
    /* after whatever was queued, failed launch or not */
    if ((e = qattn_cuda_serial_end(&ks->serial, st)) != cudaSuccess) {
        cudaGetLastError();
        if (status == QATTN_OK) status = qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_kv_decode_cuda: cudaEventRecord: %s", cudaGetErrorString(e));
    }
    return status;
}
