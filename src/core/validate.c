/* qattn_validate: the one check of a qattn_params that every entry point runs before anything
 * else (sizes, dtypes, masks, score modifiers, views and their overflow). Core, so that every
 * layer that validates a params (api.c, the quantization and KV-cache entry points, the oracle)
 * calls it downward. qattn_validate_decode: the same for a qattn_decode_params, shared by the CPU
 * decode (src/kv/kv_decode.c) and the GPU decode (src/cuda/kv_decode_driver.cu). */
#include "qattn_internal.h"

#include "core/names.h"

#include <stdio.h>

static qattn_status check_view(qattn_ctx *ctx, const char *name, int64_t nb, int64_t bs, int64_t ns, int64_t ss,
                               int64_t nh, int64_t hs, int64_t d) {
    if (bs < 0 || ss < 0 || hs < 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s has a negative stride (batch %lld, seq %lld, head %lld)", name,
                          (long long)bs, (long long)ss, (long long)hs);
    if (nb == 0 || ns == 0) return QATTN_OK;
    /* The byte offset (index * element size, at most 4 bytes) must fit too, or the pointer
     * arithmetic of the kernels overflows. */
    int64_t top = qattn_view_max_index(nb, bs, ns, ss, nh, hs, d);
    if (top < 0 || top > INT64_MAX / 4)
        return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "%s: the largest byte offset overflows int64 (strides %lld, %lld, %lld)", name,
                          (long long)bs, (long long)ss, (long long)hs);
    return QATTN_OK;
}

static qattn_status check_offsets(qattn_ctx *ctx, const char *name, const int32_t *cu, int64_t batch, int64_t max_len) {
    if (cu[0] != 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s[0] is %d; it must be 0", name, cu[0]);
    for (int64_t b = 0; b < batch; b++) {
        int64_t len = (int64_t)cu[b + 1] - cu[b];
        if (len < 0)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s decreases at %lld (%d then %d)", name, (long long)b, cu[b], cu[b + 1]);
        if (len > max_len)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: sequence %lld has length %lld, above the maximum %lld given in the params",
                              name, (long long)b, (long long)len, (long long)max_len);
    }
    return QATTN_OK;
}

/* ALiBi, softcap and the block mask: values the header allows. read_host: the slopes are in host
 * memory and can be checked for finiteness. */
static qattn_status check_score_modifiers(qattn_ctx *ctx, const qattn_params *p, bool read_host) {
    if (p->reserved0 != 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "reserved0 is %d; it must be 0", p->reserved0);
    if (!isfinite(p->softcap) || p->softcap < 0.0f)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "softcap is %g; it must be 0 (off) or finite and > 0", (double)p->softcap);
    if (p->alibi_slopes) {
        if (p->alibi_batch_stride != 0 && p->alibi_batch_stride < p->n_heads)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "alibi_batch_stride is %lld; it must be 0 (shared) or >= n_heads %d",
                              (long long)p->alibi_batch_stride, p->n_heads);
        int64_t rows = p->alibi_batch_stride ? p->batch : 1, last;
        if (rows > 0 && !qattn_mul_i64(rows - 1, p->alibi_batch_stride, &last))
            return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "alibi_batch_stride %lld x batch %lld overflows int64", (long long)p->alibi_batch_stride,
                              (long long)p->batch);
        for (int64_t b = 0; read_host && b < rows; b++)
            for (int32_t h = 0; h < p->n_heads; h++)
                if (!isfinite(p->alibi_slopes[b * p->alibi_batch_stride + h]))
                    return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "alibi_slopes[%lld, %d] is %g; slopes must be finite", (long long)b, h,
                                      (double)p->alibi_slopes[b * p->alibi_batch_stride + h]);
    }
    if (p->block_mask) {
        if (p->block_mask_q < 16 || p->block_mask_q % 16 || p->block_mask_k < 16 || p->block_mask_k % 16)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "block mask blocks are %d x %d; each side must be a positive multiple of 16",
                              p->block_mask_q, p->block_mask_k);
        if (p->block_mask_batch_stride < 0 || p->block_mask_head_stride < 0 || p->block_mask_row_stride < 0)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "block mask strides (%lld, %lld, %lld) must be >= 0",
                              (long long)p->block_mask_batch_stride, (long long)p->block_mask_head_stride, (long long)p->block_mask_row_stride);
        /* The last byte of [B, H, ceil(Lq / bq), ceil(Lk / bk)] must be addressable (varlen: seqlen_q/k
         * bound every sequence, whose blocks count from its own start). */
        int64_t nq = (p->seqlen_q + p->block_mask_q - 1) / p->block_mask_q, nk = (p->seqlen_k + p->block_mask_k - 1) / p->block_mask_k;
        if (p->batch > 0 && nq > 0 && nk > 0 &&
            qattn_view_max_index(p->batch, p->block_mask_batch_stride, p->n_heads, p->block_mask_head_stride, nq, p->block_mask_row_stride, nk) < 0)
            return qattn_fail(ctx, QATTN_ERR_OVERFLOW,
                              "block mask [%lld, %d, %lld, %lld] with strides (%lld, %lld, %lld): the largest index overflows int64",
                              (long long)p->batch, p->n_heads, (long long)nq, (long long)nk, (long long)p->block_mask_batch_stride,
                              (long long)p->block_mask_head_stride, (long long)p->block_mask_row_stride);
    }
    /* Each backend that lacks a modifier refuses it where it checks support (the INT8/FP8 drivers,
     * CUDA, qattn_dist, qattn_forward_kvcache). */
    return QATTN_OK;
}

qattn_status qattn_validate(qattn_ctx *ctx, const qattn_params *p, bool read_offsets) {
    if (!p) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "params is NULL");
    if (p->batch < 0 || p->seqlen_q < 0 || p->seqlen_k < 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "negative size: batch %lld, seqlen_q %lld, seqlen_k %lld", (long long)p->batch,
                          (long long)p->seqlen_q, (long long)p->seqlen_k);
    if (p->batch > INT32_MAX || p->seqlen_q > INT32_MAX || p->seqlen_k > INT32_MAX)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "batch and sequence lengths must be below 2^31 (batch %lld, seqlen_q %lld, seqlen_k %lld)",
                          (long long)p->batch, (long long)p->seqlen_q, (long long)p->seqlen_k);
    if (p->n_heads < 1 || p->n_kv_heads < 1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "n_heads is %d and n_kv_heads is %d; both must be >= 1", p->n_heads, p->n_kv_heads);
    if (p->n_heads % p->n_kv_heads != 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "k has %d heads, which does not divide q's %d heads", p->n_kv_heads, p->n_heads);
    if (p->head_dim < 1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "head_dim is %d; it must be positive", p->head_dim);
    if (!qattn_head_dim_supported(p->head_dim))
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "head_dim %d is not supported; qattn supports " QATTN_HEAD_DIM_RANGE, p->head_dim);
    if (p->qkv_dtype == QATTN_DTYPE_I8)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qkv_dtype i8: pre-quantized inputs go through qattn_forward_quantized");
    if (p->qkv_dtype < QATTN_DTYPE_F32 || p->qkv_dtype > QATTN_DTYPE_BF16)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qkv_dtype %d is not a qattn_dtype (f32, f16, bf16)", p->qkv_dtype);
    if (p->o_dtype < QATTN_DTYPE_F32 || p->o_dtype > QATTN_DTYPE_BF16)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "o_dtype %d (%s) is not an output dtype (f32, f16, bf16)", p->o_dtype, qattn_dtype_name(p->o_dtype));
    if (p->precision < QATTN_PRECISION_AUTO || p->precision > QATTN_PRECISION_INT4)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "precision %d is not a qattn_precision", p->precision);
    if (p->int8_scheme < QATTN_INT8_DEFAULT || p->int8_scheme > QATTN_INT8_SAGE)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "int8_scheme %d is not a qattn_int8_scheme", p->int8_scheme);
    if (p->causal != 0 && p->causal != 1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "causal is %d; it must be 0 or 1", p->causal);
    if (p->window_left < -1 || p->window_right < -1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "window (%d, %d): each side must be >= 0, or -1 for unbounded", p->window_left,
                          p->window_right);
    if (!isfinite(p->scale))
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "scale is %g; it must be finite (0 means 1/sqrt(head_dim))", (double)p->scale);
    if ((p->cu_seqlens_q == NULL) != (p->cu_seqlens_k == NULL))
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "cu_seqlens_q and cu_seqlens_k must be given together");
    if (p->workspace == NULL && p->workspace_size != 0)
        return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "workspace_size is %zu but workspace is NULL", p->workspace_size);
    qattn_status sm = check_score_modifiers(ctx, p, read_offsets);
    if (sm != QATTN_OK) return sm;

    /* Row counts must fit int64 whatever the strides (a zero stride makes the element-index
     * checks below blind to the size of the problem). */
    int64_t rows_q, rows_k;
    if (!qattn_mul_i64(p->batch, p->seqlen_q, &rows_q) || !qattn_mul_i64(rows_q, (int64_t)p->n_heads * p->head_dim, &rows_q) ||
        !qattn_mul_i64(p->batch, p->seqlen_k, &rows_k) || !qattn_mul_i64(rows_k, (int64_t)p->n_kv_heads * p->head_dim, &rows_k))
        return qattn_fail(ctx, QATTN_ERR_OVERFLOW,
                          "batch %lld x seqlen (q %lld, k %lld) x heads (q %d, kv %d) x head_dim %d overflows int64", (long long)p->batch,
                          (long long)p->seqlen_q, (long long)p->seqlen_k, p->n_heads, p->n_kv_heads, p->head_dim);
    if (p->batch == 0) return QATTN_OK; /* nothing to read or write */
    if (!p->q || !p->k || !p->v || !p->o)
        return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s is NULL", !p->q ? "q" : !p->k ? "k" : !p->v ? "v" : "o");

    bool varlen = p->cu_seqlens_q != NULL;
    if (varlen && read_offsets) {
        qattn_status s = check_offsets(ctx, "cu_seqlens_q", p->cu_seqlens_q, p->batch, p->seqlen_q);
        if (s == QATTN_OK) s = check_offsets(ctx, "cu_seqlens_k", p->cu_seqlens_k, p->batch, p->seqlen_k);
        if (s != QATTN_OK) return s;
    }
    /* With varlen the packed token axis plays the sequence axis; its extent is the total. */
    int64_t nb = varlen ? 1 : p->batch;
    int64_t lq = p->seqlen_q, lk = p->seqlen_k;
    if (varlen) {
        if (!read_offsets) {
            /* Device offsets: bound the extents by batch * max length. */
            if (!qattn_mul_i64(p->batch, p->seqlen_q, &lq) || !qattn_mul_i64(p->batch, p->seqlen_k, &lk))
                return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "batch * seqlen overflows int64");
        } else {
            lq = p->cu_seqlens_q[p->batch];
            lk = p->cu_seqlens_k[p->batch];
        }
    }
    int64_t D = p->head_dim;
    qattn_status s = check_view(ctx, "q", nb, p->q_batch_stride, lq, p->q_seq_stride, p->n_heads, p->q_head_stride, D);
    if (s == QATTN_OK) s = check_view(ctx, "k", nb, p->k_batch_stride, lk, p->k_seq_stride, p->n_kv_heads, p->k_head_stride, D);
    if (s == QATTN_OK) s = check_view(ctx, "v", nb, p->v_batch_stride, lk, p->v_seq_stride, p->n_kv_heads, p->v_head_stride, D);
    if (s == QATTN_OK) s = check_view(ctx, "o", nb, p->o_batch_stride, lq, p->o_seq_stride, p->n_heads, p->o_head_stride, D);
    if (s != QATTN_OK) return s;
    bool empty_output = nb == 0 || lq == 0; /* no element is written, whatever the strides */
    if (!empty_output && !qattn_view_is_injective(nb, p->o_batch_stride, lq, p->o_seq_stride, p->n_heads, p->o_head_stride, D))
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                          "o's strides (batch %lld, seq %lld, head %lld) make output elements overlap", (long long)p->o_batch_stride,
                          (long long)p->o_seq_stride, (long long)p->o_head_stride);
    return QATTN_OK;
}

/* "64 and 128", "32, 64 and 128": the head dims of a restricted decode, for its refusal. */
static void head_dim_list(char *buf, size_t size, const int32_t *d, int32_t n) {
    size_t len = 0;
    buf[0] = '\0';
    for (int32_t i = 0; i < n && len < size; i++) {
        const char *sep = i == 0 ? "" : i == n - 1 ? " and " : ", ";
        int w = snprintf(buf + len, size - len, "%s%d", sep, d[i]);
        if (w < 0) break;
        len += (size_t)w;
    }
}

qattn_status qattn_validate_decode(qattn_ctx *ctx, const qattn_decode_params *dp, const qattn_decode_limits *lim, int64_t *max_len) {
    const char *fn = lim->fn;
    if (max_len) *max_len = 0;
    if (lim->n_head_dims > 0) {
        bool ok = false;
        for (int32_t i = 0; i < lim->n_head_dims; i++) ok = ok || lim->head_dim == lim->head_dims[i];
        if (!ok) {
            char dims[96];
            head_dim_list(dims, sizeof dims, lim->head_dims, lim->n_head_dims);
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s supports head_dim %s (the cache has %d)", fn, dims, lim->head_dim);
        }
    }
    if (dp->n_seqs < 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: n_seqs is %d", fn, dp->n_seqs);
    if (dp->seqlen_q < 1 || dp->seqlen_q > lim->max_seqlen_q)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: seqlen_q is %d; it must be 1..%d", fn, dp->seqlen_q, lim->max_seqlen_q);
    if (dp->n_heads < 1 || dp->n_heads % lim->n_kv_heads != 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: the cache's %d kv heads do not divide n_heads %d", fn, lim->n_kv_heads,
                          dp->n_heads);
    if (dp->n_heads > QATTN_DECODE_MAX_HEADS)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: n_heads %d is above %d", fn, dp->n_heads, QATTN_DECODE_MAX_HEADS);
    int32_t dts[2] = {dp->q_dtype, dp->o_dtype};
    for (int i = 0; i < 2; i++)
        if (dts[i] != QATTN_DTYPE_F32 && dts[i] != QATTN_DTYPE_F16 && dts[i] != QATTN_DTYPE_BF16)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: %s is %d; expected f32, f16 or bf16", fn, i ? "o_dtype" : "q_dtype", dts[i]);
    if (dp->causal != 0 && dp->causal != 1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: causal is %d; it must be 0 or 1", fn, dp->causal);
    if (dp->window_left < -1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: window_left is %d; it must be >= 0 or -1", fn, dp->window_left);
    if (!isfinite(dp->scale))
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: scale is %g; it must be finite", fn, (double)dp->scale);
    if (dp->n_seqs == 0) return QATTN_OK;
    if (!dp->q || !dp->o || !dp->seq_ids)
        return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: %s is NULL", fn, !dp->q ? "q" : !dp->o ? "o" : "seq_ids");
    int64_t longest = 0;
    for (int32_t b = 0; b < dp->n_seqs; b++) {
        int32_t id = dp->seq_ids[b];
        if (id < 0 || id >= lim->max_seqs)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: seq_ids[%d] is %d, out of range 0..%d", fn, b, id, lim->max_seqs - 1);
        if (lim->seq_len[id] < dp->seqlen_q)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                              "%s: sequence %d holds %lld tokens, fewer than seqlen_q %d (append the new tokens first)", fn, id,
                              (long long)lim->seq_len[id], dp->seqlen_q);
        if (lim->seq_len[id] > longest) longest = lim->seq_len[id];
    }
    if (max_len) *max_len = longest;
    if (!lim->check_overlap) return QATTN_OK;
    /* n_seqs < 2^31, seqlen_q <= max_seqlen_q (64 for both decodes), n_heads <= 4096: fits */
    int64_t rows = (int64_t)dp->n_seqs * dp->seqlen_q * dp->n_heads, D = lim->head_dim;
    int64_t qb = dp->q_dtype == QATTN_DTYPE_F32 ? 4 : 2, ob = dp->o_dtype == QATTN_DTYPE_F32 ? 4 : 2;
    qattn_extent in = qattn_view_extent("q", dp->q, qb, 1, 0, 1, 0, rows, D, D);
    qattn_extent outs[2] = {qattn_view_extent("o", dp->o, ob, 1, 0, 1, 0, rows, D, D), qattn_view_extent("lse", dp->lse, 4, 1, 0, 1, 0, rows, 1, 1)};
    return qattn_check_disjoint(ctx, fn, outs, 2, &in, 1);
}
