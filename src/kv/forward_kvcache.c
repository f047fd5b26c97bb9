/* qattn_forward_kvcache (FlashAttention's flash_attn_with_kvcache): validate everything, append
 * the new tokens to the caller's cache tensors (keys rotated), rotate the queries into a scratch
 * copy, then attend. CPU backend: the CPU forward driver with K/V rows resolved through the block
 * table (qattn_kv_rows), so no gather of the cache and no new kernel. CUDA backend: the same checks
 * on host copies of cache_seqlens and the block table's used entries, then src/cuda/kvcache_driver.cu.
 * Nothing is written before every argument has been checked. */
#include "kv/kv_internal.h"

#include <stdio.h>

static const char *FN = "qattn_forward_kvcache";

static int64_t dtype_bytes(int32_t d) { return d == QATTN_DTYPE_F32 ? 4 : 2; }

void qattn_kvcache_params_init(qattn_kvcache_params *kv) {
    if (kv) memset(kv, 0, sizeof *kv);
}

/* a * b * c, INT64_MAX when it overflows (then refused by the view checks). */
static int64_t product3(int64_t a, int64_t b, int64_t c) {
    int64_t ab, abc;
    return qattn_mul_i64(a, b, &ab) && qattn_mul_i64(ab, c, &abc) ? abc : INT64_MAX;
}

void qattn_kvcache_params_set_contiguous(qattn_kvcache_params *kv, const qattn_params *p) {
    if (!kv || !p) return;
    int64_t D = p->head_dim, HK = p->n_kv_heads;
    int64_t tokens = kv->block_table ? kv->page_size : kv->cache_len;
    kv->k_head_stride = kv->v_head_stride = kv->k_new_head_stride = kv->v_new_head_stride = D;
    kv->k_seq_stride = kv->v_seq_stride = kv->k_new_seq_stride = kv->v_new_seq_stride = product3(HK, D, 1);
    kv->k_page_stride = kv->v_page_stride = product3(tokens, HK, D);
    kv->k_new_batch_stride = kv->v_new_batch_stride = product3(kv->seqlen_new, HK, D);
}

/* ---------------------------------------------------------------- validation */

/* p's own fields: everything qattn_validate checks for q and o, plus what this call excludes. */
static qattn_status check_attention_params(qattn_ctx *ctx, const qattn_params *p) {
    if (p->k || p->v || p->seqlen_k != 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: p->k, p->v and p->seqlen_k must be NULL/0; the cache (kv) holds the keys and values",
                          FN);
    if (p->cu_seqlens_q || p->cu_seqlens_k)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: cu_seqlens are not supported; q is [B, seqlen_q, H, D], kv->cache_seqlens gives the keys",
                          FN);
    if (p->workspace || p->workspace_size)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: p->workspace must be NULL (this call allocates its scratch)", FN);
    /* softcap and alibi_slopes run as in qattn_forward (the driver measures ALiBi distances from
     * each sequence's own key count, cache_seqlens + seqlen_new) */
    if (p->block_mask) return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: block_mask is not supported with a KV cache yet", FN);
    if (qattn_precision_is_lowp(p->precision))
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED,
                          "%s: precision %d (INT8/FP8) is not supported over cache tensors; use precision AUTO/FP32/FP16/BF16, or the INT8 "
                          "KV cache object (qattn_kv_cache_append, qattn_kv_decode)",
                          FN, p->precision);
    /* qattn_validate on a stand-in whose k/v views are empty: it checks q, o, sizes, dtypes, masks
     * (the ALiBi slopes' values only in host memory: on CUDA they are device memory). */
    qattn_params pv = *p;
    pv.k = pv.v = p->q;
    pv.k_batch_stride = pv.k_seq_stride = pv.k_head_stride = pv.v_batch_stride = pv.v_seq_stride = pv.v_head_stride = 0;
    return qattn_validate(ctx, &pv, ctx->backend == QATTN_BACKEND_CPU);
}

/* One cache or new-token view [n0, n1, HK, D]: strides >= 0, byte offsets within int64, and for
 * what this call writes, no two elements at one address. */
static qattn_status check_view(qattn_ctx *ctx, const char *name, const void *base, int64_t n0, int64_t s0, int64_t n1, int64_t s1,
                               const qattn_params *p, int64_t hs, bool written) {
    if (!base) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: kv->%s is NULL", FN, name);
    if (s0 < 0 || s1 < 0 || hs < 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: %s has a negative stride (%lld, %lld, %lld)", FN, name, (long long)s0,
                          (long long)s1, (long long)hs);
    if (n0 == 0 || n1 == 0) return QATTN_OK;
    int64_t top = qattn_view_max_index(n0, s0, n1, s1, p->n_kv_heads, hs, p->head_dim);
    if (top < 0 || top > INT64_MAX / 4)
        return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "%s: %s: the largest byte offset overflows int64 (strides %lld, %lld, %lld)", FN, name,
                          (long long)s0, (long long)s1, (long long)hs);
    if (written && !qattn_view_is_injective(n0, s0, n1, s1, p->n_kv_heads, hs, p->head_dim))
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: %s's strides (%lld, %lld, %lld) make its elements overlap", FN, name, (long long)s0,
                          (long long)s1, (long long)hs);
    return QATTN_OK;
}

/* The cache's shape: paged or contiguous, its capacity per sequence, and the tensor views. */
static qattn_status check_cache(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv, int64_t *capacity) {
    if (kv->reserved0 != 0 || kv->reserved[0] || kv->reserved[1] || kv->reserved[2] || kv->reserved[3])
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: kv's reserved fields must be 0", FN);
    if (kv->seqlen_new < 0 || kv->seqlen_new > INT32_MAX)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: seqlen_new is %lld; it must be 0..2^31-1", FN, (long long)kv->seqlen_new);
    bool paged = kv->block_table != NULL;
    int64_t n0 = p->batch, n1 = kv->cache_len;
    if (paged) {
        if (kv->page_size < 16 || kv->page_size % 16 != 0)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: page_size is %d; it must be a positive multiple of 16", FN, kv->page_size);
        if (kv->n_pages < 1 || kv->n_pages > INT32_MAX)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: n_pages is %lld; it must be 1..2^31-1", FN, (long long)kv->n_pages);
        if (kv->max_blocks < 1 || kv->block_table_stride < kv->max_blocks)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: max_blocks is %lld and block_table_stride %lld; need max_blocks >= 1 and stride >= max_blocks",
                              FN, (long long)kv->max_blocks, (long long)kv->block_table_stride);
        int64_t last; /* the table's last entry, as a byte offset too */
        if (p->batch > 0 && (!qattn_mul_i64(p->batch - 1, kv->block_table_stride, &last) || !qattn_add_i64(last, kv->max_blocks, &last) ||
                             last > INT64_MAX / 4))
            return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "%s: block_table_stride %lld x batch %lld overflows", FN, (long long)kv->block_table_stride,
                              (long long)p->batch);
        if (!qattn_mul_i64(kv->max_blocks, kv->page_size, capacity))
            return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "%s: max_blocks %lld x page_size %d overflows", FN, (long long)kv->max_blocks, kv->page_size);
        n0 = kv->n_pages, n1 = kv->page_size;
    } else {
        if (kv->cache_len < 0)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: cache_len is %lld; it must be >= 0", FN, (long long)kv->cache_len);
        *capacity = kv->cache_len;
    }
    bool writes = kv->seqlen_new > 0;
    qattn_status s = check_view(ctx, "k_cache", kv->k_cache, n0, kv->k_page_stride, n1, kv->k_seq_stride, p, kv->k_head_stride, writes);
    if (s == QATTN_OK) s = check_view(ctx, "v_cache", kv->v_cache, n0, kv->v_page_stride, n1, kv->v_seq_stride, p, kv->v_head_stride, writes);
    if (s == QATTN_OK && writes && kv->k_cache == kv->v_cache)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: k_cache and v_cache are the same tensor", FN);
    if (s == QATTN_OK && writes)
        s = check_view(ctx, "k_new", kv->k_new, p->batch, kv->k_new_batch_stride, kv->seqlen_new, kv->k_new_seq_stride, p, kv->k_new_head_stride,
                       false);
    if (s == QATTN_OK && writes)
        s = check_view(ctx, "v_new", kv->v_new, p->batch, kv->v_new_batch_stride, kv->seqlen_new, kv->v_new_seq_stride, p, kv->v_new_head_stride,
                       false);
    return s;
}

static bool rotary_given(const qattn_kvcache_params *kv) { return kv->rotary_cos || kv->rotary_sin || kv->rotary_dim != 0; }

/* Queries take one rotary position per row when the mask is positional (causal or a window),
 * else all sit at the cache length (FlashAttention's rule). */
static bool queries_per_position(const qattn_params *p) { return p->causal || p->window_left >= 0 || p->window_right >= 0; }

static qattn_status check_rotary(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv, qattn_rotary *r) {
    *r = (qattn_rotary){kv->rotary_cos, kv->rotary_sin, kv->rotary_len, kv->rotary_dim, kv->rotary_interleaved};
    if (!rotary_given(kv)) {
        if (kv->rotary_interleaved != 0 || kv->rotary_len != 0)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: rotary_len/rotary_interleaved are set but no rotary tables are given", FN);
        return QATTN_OK;
    }
    if (kv->seqlen_new < 1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: rotary embedding needs new tokens (seqlen_new >= 1), as in flash_attn_with_kvcache", FN);
    return qattn_rotary_check(ctx, FN, r, p->head_dim);
}

/* Per sequence: cache_seqlens, the capacity, the page ids its keys use, its rotary positions.
 * Writes each sequence's key count to lk[b] and their maximum to *max_lk. */
static qattn_status check_sequences(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv, const qattn_rotary *r, int64_t capacity,
                                    int32_t *lk, int64_t *max_lk) {
    *max_lk = 0;
    if (!kv->cache_seqlens) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: cache_seqlens is NULL", FN);
    for (int64_t b = 0; b < p->batch; b++) {
        int64_t cs = kv->cache_seqlens[b], len = cs + kv->seqlen_new; /* both < 2^31: no overflow */
        if (cs < 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: cache_seqlens[%lld] is %lld; it must be >= 0", FN, (long long)b, (long long)cs);
        if (len > capacity && kv->block_table)
            return qattn_fail(ctx, QATTN_ERR_CAPACITY,
                              "%s: sequence %lld needs %lld tokens (cache_seqlens %lld + seqlen_new %lld); its block_table row holds %lld "
                              "(max_blocks %lld x page_size %d)",
                              FN, (long long)b, (long long)len, (long long)cs, (long long)kv->seqlen_new, (long long)capacity,
                              (long long)kv->max_blocks, kv->page_size);
        if (len > capacity)
            return qattn_fail(ctx, QATTN_ERR_CAPACITY, "%s: sequence %lld needs %lld tokens (cache_seqlens %lld + seqlen_new %lld); the cache holds %lld per sequence",
                              FN, (long long)b, (long long)len, (long long)cs, (long long)kv->seqlen_new, (long long)capacity);
        if (len > INT32_MAX)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: sequence %lld would hold %lld tokens (limit 2^31-1)", FN, (long long)b, (long long)len);
        if (kv->block_table) {
            const int32_t *row = kv->block_table + b * kv->block_table_stride;
            for (int64_t j = 0; j * kv->page_size < len; j++)
                if (row[j] < 0 || row[j] >= kv->n_pages)
                    return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: block_table[%lld, %lld] is %d, not a page id 0..%lld", FN, (long long)b,
                                      (long long)j, row[j], (long long)kv->n_pages - 1);
        }
        if (r->cos) {
            char what[64];
            snprintf(what, sizeof what, "sequence %lld's new keys", (long long)b);
            qattn_status s = qattn_rotary_check_positions(ctx, FN, r, what, cs, kv->seqlen_new);
            if (s == QATTN_OK && p->seqlen_q > 0) {
                snprintf(what, sizeof what, "sequence %lld's queries", (long long)b);
                s = qattn_rotary_check_positions(ctx, FN, r, what, cs, queries_per_position(p) ? p->seqlen_q : 1);
            }
            if (s != QATTN_OK) return s;
        }
        lk[b] = (int32_t)len;
        if (len > *max_lk) *max_lk = len;
    }
    return QATTN_OK;
}

/* Outputs (o, lse; the caches when written) against every other tensor of the call. */
static qattn_status check_overlaps(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv) {
    int64_t B = p->batch, HK = p->n_kv_heads, D = p->head_dim, eb = dtype_bytes(p->qkv_dtype);
    bool paged = kv->block_table != NULL;
    int64_t n0 = paged ? kv->n_pages : B, n1 = paged ? kv->page_size : kv->cache_len;
    qattn_extent ins[10] = {
        qattn_view_extent("q", p->q, eb, B, p->q_batch_stride, p->seqlen_q, p->q_seq_stride, p->n_heads, p->q_head_stride, D),
        qattn_view_extent("k_new", kv->k_new, eb, B, kv->k_new_batch_stride, kv->seqlen_new, kv->k_new_seq_stride, HK, kv->k_new_head_stride, D),
        qattn_view_extent("v_new", kv->v_new, eb, B, kv->v_new_batch_stride, kv->seqlen_new, kv->v_new_seq_stride, HK, kv->v_new_head_stride, D),
        qattn_view_extent("cache_seqlens", kv->cache_seqlens, 4, 1, 0, 1, 0, 1, 0, B),
        qattn_view_extent("block_table", kv->block_table, 4, 1, 0, B, kv->block_table_stride, 1, 0, kv->max_blocks),
        qattn_view_extent("rotary_cos", kv->rotary_cos, 4, 1, 0, 1, 0, kv->rotary_len, kv->rotary_dim / 2, kv->rotary_dim / 2),
        qattn_view_extent("rotary_sin", kv->rotary_sin, 4, 1, 0, 1, 0, kv->rotary_len, kv->rotary_dim / 2, kv->rotary_dim / 2),
        qattn_view_extent("alibi_slopes", p->alibi_slopes, 4, p->alibi_batch_stride ? B : 1, p->alibi_batch_stride, 1, 0, 1, 0, p->n_heads),
        qattn_view_extent("k_cache", kv->k_cache, eb, n0, kv->k_page_stride, n1, kv->k_seq_stride, HK, kv->k_head_stride, D),
        qattn_view_extent("v_cache", kv->v_cache, eb, n0, kv->v_page_stride, n1, kv->v_seq_stride, HK, kv->v_head_stride, D),
    };
    qattn_extent outs[2] = {
        qattn_view_extent("o", p->o, dtype_bytes(p->o_dtype), B, p->o_batch_stride, p->seqlen_q, p->o_seq_stride, p->n_heads, p->o_head_stride, D),
        qattn_view_extent("lse", p->lse, 4, 1, 0, 1, 0, B * p->n_heads, p->seqlen_q, p->seqlen_q),
    };
    qattn_status s = qattn_check_disjoint(ctx, FN, outs, 2, ins, 10);
    /* k_cache and v_cache are not compared with each other: interleaved [.., 2, HK, D] caches
     * share a byte range without sharing an element. */
    for (int c = 0; s == QATTN_OK && kv->seqlen_new > 0 && c < 2; c++) s = qattn_check_disjoint(ctx, FN, &ins[8 + c], 1, ins, 8);
    return s;
}

/* ---------------------------------------------------------------- the call */

/* Sequence b's new tokens into the cache at cache_seqlens[b] (keys rotated), in sequence order. */
static void append_new_tokens(const qattn_params *p, const qattn_kvcache_params *kv, const qattn_rotary *r) {
    int32_t dt = p->qkv_dtype;
    int D = p->head_dim;
    float row[256];
    for (int64_t b = 0; b < p->batch; b++)
        for (int64_t j = 0; j < kv->seqlen_new; j++) {
            int64_t t = kv->cache_seqlens[b] + j, kc, vc;
            if (kv->block_table) {
                int64_t page = kv->block_table[b * kv->block_table_stride + t / kv->page_size], off = t % kv->page_size;
                kc = page * kv->k_page_stride + off * kv->k_seq_stride;
                vc = page * kv->v_page_stride + off * kv->v_seq_stride;
            } else {
                kc = b * kv->k_page_stride + t * kv->k_seq_stride;
                vc = b * kv->v_page_stride + t * kv->v_seq_stride;
            }
            for (int g = 0; g < p->n_kv_heads; g++) {
                int64_t kn = b * kv->k_new_batch_stride + j * kv->k_new_seq_stride + g * kv->k_new_head_stride;
                int64_t vn = b * kv->v_new_batch_stride + j * kv->v_new_seq_stride + g * kv->v_new_head_stride;
                for (int c = 0; c < D; c++) row[c] = qattn_load(kv->k_new, dt, kn + c);
                if (r->cos) qattn_rotary_row(r, t, row);
                for (int c = 0; c < D; c++) qattn_store(kv->k_cache, dt, kc + g * kv->k_head_stride + c, row[c]);
                /* V is copied as is: the same dtype, so bit for bit */
                memcpy((char *)kv->v_cache + (vc + g * kv->v_head_stride) * dtype_bytes(dt), (const char *)kv->v_new + vn * dtype_bytes(dt),
                       (size_t)D * (size_t)dtype_bytes(dt));
            }
        }
}

/* The rotated queries, contiguous [B, Lq, H, D] in qkv_dtype (rounded to it, as flash-attn's
 * kernels hold them). */
static void rotate_queries(const qattn_params *p, const qattn_kvcache_params *kv, const qattn_rotary *r, void *qr) {
    int32_t dt = p->qkv_dtype;
    int D = p->head_dim, H = p->n_heads;
    float row[256];
    for (int64_t b = 0; b < p->batch; b++)
        for (int64_t i = 0; i < p->seqlen_q; i++) {
            int64_t pos = kv->cache_seqlens[b] + (queries_per_position(p) ? i : 0);
            for (int h = 0; h < H; h++) {
                int64_t src = b * p->q_batch_stride + i * p->q_seq_stride + h * p->q_head_stride, dst = ((b * p->seqlen_q + i) * H + h) * D;
                for (int c = 0; c < D; c++) row[c] = qattn_load(p->q, dt, src + c);
                qattn_rotary_row(r, pos, row);
                for (int c = 0; c < D; c++) qattn_store(qr, dt, dst + c, row[c]);
            }
        }
}

/* The CPU backend: host arrays, checked in place; the forward reads the cache through the table. */
static qattn_status forward_kvcache_cpu(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv, const qattn_rotary *r,
                                        int64_t capacity, int32_t *lk) {
    int64_t max_lk, q_elems = r->cos ? p->batch * p->seqlen_q * p->n_heads * p->head_dim : 0; /* fits: validated */
    void *qr = q_elems ? qattn_alloc(ctx, (size_t)q_elems * (size_t)dtype_bytes(p->qkv_dtype)) : NULL;
    if (q_elems && !qr)
        return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "%s: cannot allocate the scratch (%lld rotated query values)", FN, (long long)q_elems);
    qattn_status s = check_sequences(ctx, p, kv, r, capacity, lk, &max_lk);
    if (s == QATTN_OK) {
        /* From here on the cache changes. */
        append_new_tokens(p, kv, r);
        qattn_params pk = *p;
        if (qr) {
            rotate_queries(p, kv, r, qr);
            pk.q = qr;
            pk.q_head_stride = p->head_dim;
            pk.q_seq_stride = (int64_t)p->n_heads * p->head_dim;
            pk.q_batch_stride = p->seqlen_q * pk.q_seq_stride;
        }
        pk.k = kv->k_cache, pk.v = kv->v_cache, pk.seqlen_k = max_lk;
        pk.k_batch_stride = kv->k_page_stride, pk.k_seq_stride = kv->k_seq_stride, pk.k_head_stride = kv->k_head_stride;
        pk.v_batch_stride = kv->v_page_stride, pk.v_seq_stride = kv->v_seq_stride, pk.v_head_stride = kv->v_head_stride;
        qattn_kv_rows rows = {lk, kv->block_table, kv->block_table_stride, kv->page_size};
        s = qattn_cpu_forward_kv(ctx, &pk, &rows);
    }
    qattn_free(ctx, qr);
    return s;
}

#if defined(QATTN_HAVE_CUDA)
/* The CUDA backend: cache_seqlens and the block table are device arrays. Their host copies (the
 * table's entries up to the longest sequence's last block) are checked, and only they are used. */
static qattn_status forward_kvcache_cuda(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv, const qattn_rotary *r,
                                         int64_t capacity, int32_t *lk) {
    if (!kv->cache_seqlens) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: cache_seqlens is NULL", FN);
    int64_t B = p->batch, width = 0, max_lk;
    int32_t *cs = qattn_alloc(ctx, (size_t)B * sizeof(int32_t)), *table = NULL;
    if (!cs) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "%s: cannot allocate the host copy of cache_seqlens", FN);
    qattn_status s = qattn_cuda_read_i32(ctx, p->stream, cs, kv->cache_seqlens, 1, 1, B);
    if (s == QATTN_OK && kv->block_table) {
        for (int64_t b = 0; b < B; b++) { /* blocks up to the last token; check_sequences refuses what exceeds max_blocks */
            int64_t len = (int64_t)cs[b] + kv->seqlen_new, blocks = len > 0 ? (len - 1) / kv->page_size + 1 : 0;
            if (blocks > width) width = blocks < kv->max_blocks ? blocks : kv->max_blocks;
        }
        table = width ? qattn_alloc(ctx, (size_t)(B * width) * sizeof(int32_t)) : NULL;
        if (width && !table) s = qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "%s: cannot allocate the host copy of block_table", FN);
        if (s == QATTN_OK) s = qattn_cuda_read_i32(ctx, p->stream, table, kv->block_table, kv->block_table_stride, width, B);
    }
    qattn_kvcache_params host = *kv;
    host.cache_seqlens = cs, host.block_table = table, host.block_table_stride = width;
    if (s == QATTN_OK) s = check_sequences(ctx, p, &host, r, capacity, lk, &max_lk);
    if (s == QATTN_OK) s = qattn_cuda_forward_kvcache(ctx, p, kv, r, cs, table, width, lk);
    qattn_free(ctx, cs), qattn_free(ctx, table);
    return s;
}
#endif

qattn_status qattn_forward_kvcache(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    if (!p || !kv) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: %s is NULL", FN, !p ? "params" : "kv");
    qattn_status s = check_attention_params(ctx, p);
    qattn_rotary r;
    int64_t capacity = 0;
    if (s == QATTN_OK) s = check_rotary(ctx, p, kv, &r);
    if (s != QATTN_OK || p->batch == 0) return s;
    s = check_cache(ctx, p, kv, &capacity);
    if (s == QATTN_OK) s = check_overlaps(ctx, p, kv);
    if (s != QATTN_OK) return s;
    int32_t *lk = qattn_alloc(ctx, (size_t)p->batch * sizeof(int32_t));
    if (!lk) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "%s: cannot allocate the key counts (%lld sequences)", FN, (long long)p->batch);
#if defined(QATTN_HAVE_CUDA)
    if (ctx->backend == QATTN_BACKEND_CUDA) s = forward_kvcache_cuda(ctx, p, kv, &r, capacity, lk);
    else
#endif
        s = forward_kvcache_cpu(ctx, p, kv, &r, capacity, lk);
    qattn_free(ctx, lk);
    return s;
}
