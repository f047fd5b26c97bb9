/* The paged KV cache: creation, append (quantize-on-append for INT8), free, fork with
 * reference-counted prefix blocks and copy-on-write, read-back, memory report.
 * Every operation checks all of its arguments and its capacity before changing anything, so a
 * failed call leaves the cache exactly as it was. Layout: kv_internal.h; scheme: docs/KVCACHE.md. */
#include "kv/kv_internal.h"
#include "core/names.h"
#include "quant/lowp.h"

#include <stdlib.h>

static int64_t align64(int64_t x) { return (x + 63) / 64 * 64; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

qattn_status qattn_kv_cache_create(qattn_ctx *ctx, const qattn_kv_cache_options *opt, qattn_kv_cache **out) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!opt || !out) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_kv_cache_create: %s is NULL", !opt ? "options" : "cache");
    *out = NULL;
    if (ctx->backend != QATTN_BACKEND_CPU)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "the KV cache is implemented for the CPU backend only in this build");
    if (opt->n_kv_heads < 1) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "n_kv_heads is %d; it must be >= 1", opt->n_kv_heads);
    if (!qattn_head_dim_supported(opt->head_dim))
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "head_dim is %d; the KV cache supports " QATTN_HEAD_DIM_RANGE, opt->head_dim);
    if (opt->block_size < 1 || opt->block_size > 1024)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "block_size is %d; it must be 1..1024 tokens", opt->block_size);
    if (opt->dtype != QATTN_DTYPE_F16 && opt->dtype != QATTN_DTYPE_BF16 && opt->dtype != QATTN_DTYPE_I8)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "KV cache dtype %d (%s) is not a storage dtype (f16, bf16, i8)", opt->dtype,
                          qattn_dtype_name(opt->dtype));
    if (opt->n_blocks < 1 || opt->n_blocks > INT32_MAX)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "n_blocks is %lld; it must be 1..2^31-1", (long long)opt->n_blocks);
    if (opt->max_seqs < 1) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "max_seqs is %d; it must be >= 1", opt->max_seqs);
    if (opt->reserved != 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qattn_kv_cache_options.reserved is %d; it must be 0", opt->reserved);
    int64_t width = opt->max_blocks_per_seq == 0 ? opt->n_blocks : opt->max_blocks_per_seq;
    if (width < 1 || width > opt->n_blocks)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "max_blocks_per_seq is %lld; it must be 0 (= n_blocks) or 1..n_blocks (%lld)",
                          (long long)opt->max_blocks_per_seq, (long long)opt->n_blocks);

    qattn_kv_cache c;
    memset(&c, 0, sizeof c);
    c.n_kv_heads = opt->n_kv_heads;
    c.head_dim = opt->head_dim;
    c.block_size = opt->block_size;
    c.dtype = opt->dtype;
    c.max_seqs = opt->max_seqs;
    c.n_blocks = opt->n_blocks;
    c.max_blocks_per_seq = width;
    c.elem_bytes = opt->dtype == QATTN_DTYPE_I8 ? 1 : 2;
    c.head_bytes = (int64_t)c.block_size * c.head_dim * c.elem_bytes;
    int64_t codes = align64((int64_t)c.n_kv_heads * c.head_bytes);
    c.v_offset = codes;
    int64_t bytes = 2 * codes;
    if (c.dtype == QATTN_DTYPE_I8) {
        int64_t sc = align64((int64_t)c.n_kv_heads * c.block_size * (int64_t)sizeof(float));
        c.ks_offset = bytes;
        c.vs_offset = bytes + sc;
        bytes += 2 * sc;
    }
    c.block_bytes = bytes;
    /* sizes: block_bytes < 2^31; n_blocks < 2^31; table < 2^31 * 2^31 entries: check in 64 bits */
    if (c.n_blocks > INT64_MAX / c.block_bytes || (int64_t)c.max_seqs > INT64_MAX / 4 / width ||
        (uint64_t)(c.n_blocks * c.block_bytes) > (uint64_t)SIZE_MAX)
        return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "KV cache size overflows (%lld blocks of %lld bytes)", (long long)c.n_blocks,
                          (long long)c.block_bytes);
    int64_t tf_b = qattn_kv_transform_bytes(&c);
    if ((uint64_t)(c.n_blocks * c.block_bytes) > (uint64_t)SIZE_MAX - (uint64_t)tf_b)
        return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "KV cache size overflows (%lld blocks of %lld bytes)", (long long)c.n_blocks,
                          (long long)c.block_bytes);
    size_t arena_b = (size_t)(c.n_blocks * c.block_bytes + tf_b);
    size_t table_b = (size_t)((int64_t)c.max_seqs * width) * sizeof(int32_t);
    size_t len_b = (size_t)c.max_seqs * sizeof(int64_t);
    size_t rc_b = (size_t)c.n_blocks * sizeof(int32_t);

    qattn_kv_cache *cache = qattn_alloc(ctx, sizeof *cache);
    if (!cache) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate the KV cache header");
    *cache = c;
    cache->arena = qattn_alloc(ctx, arena_b);
    cache->block_table = qattn_alloc(ctx, table_b);
    cache->seq_len = qattn_alloc(ctx, len_b);
    cache->refcount = qattn_alloc(ctx, rc_b);
    cache->free_stack = qattn_alloc(ctx, rc_b);
    if (!cache->arena || !cache->block_table || !cache->seq_len || !cache->refcount || !cache->free_stack) {
        qattn_kv_cache_destroy(ctx, cache);
        return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate a KV cache of %zu bytes (%lld blocks of %lld bytes)",
                          arena_b + table_b + len_b + 2 * rc_b, (long long)c.n_blocks, (long long)c.block_bytes);
    }
    memset(cache->arena, 0, arena_b);
    if (tf_b) { /* INT8: the identity calibration (factors 1, means 0), i.e. the rotation alone */
        cache->calib = (float *)(cache->arena + c.n_blocks * c.block_bytes);
        for (int64_t i = 0; i < (int64_t)c.n_kv_heads * c.head_dim; i++) cache->calib[i] = 1.0f;
    }
    for (int64_t i = 0; i < (int64_t)c.max_seqs * width; i++) cache->block_table[i] = -1;
    memset(cache->seq_len, 0, len_b);
    memset(cache->refcount, 0, rc_b);
    for (int64_t i = 0; i < c.n_blocks; i++) cache->free_stack[i] = (int32_t)(c.n_blocks - 1 - i); /* block 0 is used first */
    cache->n_free = c.n_blocks;
    cache->bytes_total = (int64_t)(sizeof *cache + arena_b + table_b + len_b + 2 * rc_b);
    *out = cache;
    return QATTN_OK;
}

void qattn_kv_cache_destroy(qattn_ctx *ctx, qattn_kv_cache *cache) {
    if (!ctx || !cache) return;
    qattn_free(ctx, cache->arena);
    qattn_free(ctx, cache->block_table);
    qattn_free(ctx, cache->seq_len);
    qattn_free(ctx, cache->refcount);
    qattn_free(ctx, cache->free_stack);
    qattn_free(ctx, cache);
}

static qattn_status check_cache_seq(qattn_ctx *ctx, const qattn_kv_cache *cache, int32_t seq, const char *fn) {
    if (!cache) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: cache is NULL", fn);
    if (seq < 0 || seq >= cache->max_seqs)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: sequence id %d is out of range 0..%d", fn, seq, cache->max_seqs - 1);
    return QATTN_OK;
}

static int32_t *table_of(const qattn_kv_cache *c, int32_t seq) { return c->block_table + (int64_t)seq * c->max_blocks_per_seq; }

static int32_t pop_block(qattn_kv_cache *c) {
    int32_t b = c->free_stack[--c->n_free];
    c->refcount[b] = 1;
    return b;
}

static void unref_block(qattn_kv_cache *c, int32_t b) {
    if (--c->refcount[b] == 0) c->free_stack[c->n_free++] = b;
}

static void store_token(qattn_kv_cache *c, int32_t phys, int off, int h, const float *kx, const float *vx) {
    uint8_t *blk = qattn_kv_block(c, phys);
    int D = c->head_dim;
    int64_t code_off = (int64_t)h * c->head_bytes + (int64_t)off * D * c->elem_bytes;
    int64_t scale_idx = (int64_t)h * c->block_size + off;
    for (int which = 0; which < 2; which++) {
        const float *x = which ? vx : kx;
        uint8_t *dst = blk + (which ? c->v_offset : 0) + code_off;
        switch (c->dtype) {
        case QATTN_DTYPE_F16:
            for (int i = 0; i < D; i++) ((uint16_t *)dst)[i] = qattn_f32_to_f16(x[i]);
            break;
        case QATTN_DTYPE_BF16:
            for (int i = 0; i < D; i++) ((uint16_t *)dst)[i] = qattn_f32_to_bf16(x[i]);
            break;
        default: {
            float y[256];
            { /* K: H(k / f - mu_k / f); V: v - mu_v (docs/KVCACHE.md, INT8 scheme) */
                const float *f = qattn_kv_cal(c, QATTN_KV_CAL_F, h), *mu = qattn_kv_cal(c, which ? QATTN_KV_CAL_MUV : QATTN_KV_CAL_MUKF, h);
                for (int i = 0; i < D; i++) y[i] = which ? x[i] - mu[i] : x[i] / f[i] - mu[i];
                if (!which) (void)qattn_rotate_row(y, D, 1.0f / (float)qattn_rotate_block(D));
                x = y;
            }
            float s = qattn_kv_quantize_row(x, D, (int8_t *)dst);
            ((float *)(blk + (which ? c->vs_offset : c->ks_offset)))[scale_idx] = s;
        }
        }
    }
}

/* The appends, with rotary keys (rot given, checked) or without (rot NULL); fn names the caller. */
static qattn_status append_tokens(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t seq, const void *k, const void *v, int64_t n_tokens,
                                  int32_t in_dtype, const qattn_rotary *rot, const char *fn) {
    qattn_status s = check_cache_seq(ctx, cache, seq, fn);
    if (s != QATTN_OK) return s;
    if (n_tokens < 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: n_tokens is %lld", fn, (long long)n_tokens);
    if (rot) s = qattn_rotary_check(ctx, fn, rot, cache->head_dim);
    if (s != QATTN_OK || n_tokens == 0) return s;
    if (!k || !v) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: %s is NULL", fn, !k ? "k" : "v");
    if (in_dtype != QATTN_DTYPE_F32 && in_dtype != QATTN_DTYPE_F16 && in_dtype != QATTN_DTYPE_BF16)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: input dtype %d (%s) is not f32, f16 or bf16", fn, in_dtype,
                          qattn_dtype_name(in_dtype));
    qattn_kv_cache *c = cache;
    int64_t len = c->seq_len[seq], BS = c->block_size;
    if (rot) {
        s = qattn_rotary_check_positions(ctx, fn, rot, "the keys", len, n_tokens);
        if (s != QATTN_OK) return s;
    }
    if (n_tokens > INT32_MAX || len + n_tokens > INT32_MAX)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: sequence %d would hold %lld tokens (limit 2^31-1)", fn, seq,
                          (long long)(len + n_tokens));
    int64_t nb_old = ceil_div(len, BS), nb_new = ceil_div(len + n_tokens, BS);
    if (nb_new > c->max_blocks_per_seq)
        return qattn_fail(ctx, QATTN_ERR_CAPACITY,
                          "%s: sequence %d would need %lld blocks; the block table holds %lld per sequence", fn, seq,
                          (long long)nb_new, (long long)c->max_blocks_per_seq);
    int32_t *table = table_of(c, seq);
    bool cow = len % BS != 0 && c->refcount[table[nb_old - 1]] > 1;
    int64_t need = nb_new - nb_old + (cow ? 1 : 0);
    if (need > c->n_free)
        return qattn_fail(ctx, QATTN_ERR_CAPACITY,
                          "%s: %lld tokens for sequence %d need %lld free blocks%s; %lld of %lld are free", fn, (long long)n_tokens,
                          seq, (long long)need, cow ? " (one for copy-on-write)" : "", (long long)c->n_free, (long long)c->n_blocks);
    int64_t row = (int64_t)c->n_kv_heads * c->head_dim;
    if (c->dtype == QATTN_DTYPE_I8) { /* a non-finite value has no INT8 code: refuse before changing anything */
        for (int which = 0; which < 2; which++)
            for (int64_t i = 0; i < n_tokens * row; i++) {
                float x = qattn_load(which ? v : k, in_dtype, i);
                if (!isfinite(x))
                    return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                                      "%s: %s[%lld] is %g; an INT8 cache stores finite values only", fn, which ? "v" : "k",
                                      (long long)i, (double)x);
            }
    }
    if (c->dtype == QATTN_DTYPE_I8 && rot) { /* finite keys stay finite under a finite rotation: check the table rows used */
        int half = rot->dim / 2;
        for (int64_t i = len * half; i < (len + n_tokens) * half; i++)
            if (!isfinite(rot->cos[i]) || !isfinite(rot->sin[i]))
                return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: rotary table entry %lld (row %lld) is not finite; an INT8 cache stores finite values only",
                                  fn, (long long)i, (long long)(i / half));
    }
    /* From here on nothing can fail. */
    if (cow) {
        int32_t old = table[nb_old - 1], fresh = pop_block(c);
        memcpy(qattn_kv_block(c, fresh), qattn_kv_block(c, old), (size_t)c->block_bytes);
        unref_block(c, old);
        table[nb_old - 1] = fresh;
    }
    for (int64_t b = nb_old; b < nb_new; b++) table[b] = pop_block(c);
    float kx[256], vx[256];
    for (int64_t t = 0; t < n_tokens; t++) {
        int64_t pos = len + t;
        int32_t phys = table[pos / BS];
        for (int h = 0; h < c->n_kv_heads; h++) {
            int64_t base = t * row + (int64_t)h * c->head_dim;
            for (int i = 0; i < c->head_dim; i++) {
                kx[i] = qattn_load(k, in_dtype, base + i);
                vx[i] = qattn_load(v, in_dtype, base + i);
            }
            if (rot) qattn_rotary_row(rot, pos, kx);
            store_token(c, phys, (int)(pos % BS), h, kx, vx);
        }
    }
    c->seq_len[seq] = len + n_tokens;
    return QATTN_OK;
}

qattn_status qattn_kv_cache_append(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t seq, const void *k, const void *v, int64_t n_tokens,
                                   int32_t in_dtype) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    return append_tokens(ctx, cache, seq, k, v, n_tokens, in_dtype, NULL, "qattn_kv_cache_append");
}

qattn_status qattn_kv_cache_append_rotary(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t seq, const void *k, const void *v, int64_t n_tokens,
                                          int32_t in_dtype, const float *cos, const float *sin, int64_t rotary_len, int32_t rotary_dim,
                                          int32_t interleaved) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    qattn_rotary rot = {cos, sin, rotary_len, rotary_dim, interleaved};
    return append_tokens(ctx, cache, seq, k, v, n_tokens, in_dtype, &rot, "qattn_kv_cache_append_rotary");
}

qattn_status qattn_kv_cache_free_seq(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t seq) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = check_cache_seq(ctx, cache, seq, "qattn_kv_cache_free_seq");
    if (s != QATTN_OK) return s;
    int32_t *table = table_of(cache, seq);
    int64_t nb = ceil_div(cache->seq_len[seq], cache->block_size);
    for (int64_t b = 0; b < nb; b++) {
        unref_block(cache, table[b]);
        table[b] = -1;
    }
    cache->seq_len[seq] = 0;
    return QATTN_OK;
}

qattn_status qattn_kv_cache_fork(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t src, int32_t dst) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = check_cache_seq(ctx, cache, src, "qattn_kv_cache_fork (src)");
    if (s == QATTN_OK) s = check_cache_seq(ctx, cache, dst, "qattn_kv_cache_fork (dst)");
    if (s != QATTN_OK) return s;
    if (src == dst) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qattn_kv_cache_fork: src and dst are both sequence %d", src);
    if (cache->seq_len[dst] != 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qattn_kv_cache_fork: sequence %d holds %lld tokens; free it first", dst,
                          (long long)cache->seq_len[dst]);
    int32_t *ts = table_of(cache, src), *td = table_of(cache, dst);
    int64_t nb = ceil_div(cache->seq_len[src], cache->block_size);
    for (int64_t b = 0; b < nb; b++) {
        td[b] = ts[b];
        cache->refcount[ts[b]]++;
    }
    cache->seq_len[dst] = cache->seq_len[src];
    return QATTN_OK;
}

qattn_status qattn_kv_cache_seq_len(qattn_ctx *ctx, const qattn_kv_cache *cache, int32_t seq, int64_t *len) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = check_cache_seq(ctx, cache, seq, "qattn_kv_cache_seq_len");
    if (s != QATTN_OK) return s;
    if (!len) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_kv_cache_seq_len: len is NULL");
    *len = cache->seq_len[seq];
    return QATTN_OK;
}

qattn_status qattn_kv_cache_get_info(qattn_ctx *ctx, const qattn_kv_cache *cache, qattn_kv_cache_info *info) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!cache || !info) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_kv_cache_get_info: %s is NULL", !cache ? "cache" : "info");
    memset(info, 0, sizeof *info);
    info->n_blocks = cache->n_blocks;
    info->free_blocks = cache->n_free;
    info->used_blocks = cache->n_blocks - cache->n_free;
    info->block_bytes = cache->block_bytes;
    info->bytes_total = cache->bytes_total;
    info->bytes_used = info->used_blocks * cache->block_bytes;
    for (int32_t s = 0; s < cache->max_seqs; s++) {
        info->tokens_stored += cache->seq_len[s];
        if (cache->seq_len[s] > 0) info->n_active_seqs++;
    }
    return QATTN_OK;
}

qattn_status qattn_kv_cache_read(qattn_ctx *ctx, const qattn_kv_cache *cache, int32_t seq, int64_t start, int64_t n, float *k, float *v) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = check_cache_seq(ctx, cache, seq, "qattn_kv_cache_read");
    if (s != QATTN_OK) return s;
    int64_t len = cache->seq_len[seq];
    if (start < 0 || n < 0 || start > len || n > len - start) /* no start + n: it may overflow */
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                          "qattn_kv_cache_read: %lld tokens from token %lld are outside sequence %d of length %lld", (long long)n,
                          (long long)start, seq, (long long)len);
    if (k && v) {
        int64_t row = (int64_t)cache->n_kv_heads * cache->head_dim; /* one token: [HK, D] floats */
        qattn_extent outs[2] = {qattn_view_extent("k", k, 4, 1, 0, 1, 0, n, row, row), qattn_view_extent("v", v, 4, 1, 0, 1, 0, n, row, row)};
        s = qattn_check_disjoint(ctx, "qattn_kv_cache_read", outs, 2, NULL, 0);
        if (s != QATTN_OK) return s;
    }
    const qattn_kv_cache *c = cache;
    const int32_t *table = table_of(c, seq);
    int D = c->head_dim;
    for (int64_t t = 0; t < n; t++) {
        int64_t pos = start + t;
        const uint8_t *blk = qattn_kv_block(c, table[pos / c->block_size]);
        int off = (int)(pos % c->block_size);
        for (int h = 0; h < c->n_kv_heads; h++) {
            int64_t code_off = (int64_t)h * c->head_bytes + (int64_t)off * D * c->elem_bytes;
            int64_t si = (int64_t)h * c->block_size + off;
            for (int which = 0; which < 2; which++) {
                float *dst = which ? v : k;
                if (!dst) continue;
                dst += (t * c->n_kv_heads + h) * (int64_t)D;
                const uint8_t *src = blk + (which ? c->v_offset : 0) + code_off;
                switch (c->dtype) {
                case QATTN_DTYPE_F16:
                    for (int i = 0; i < D; i++) dst[i] = qattn_f16_to_f32(((const uint16_t *)src)[i]);
                    break;
                case QATTN_DTYPE_BF16:
                    for (int i = 0; i < D; i++) dst[i] = qattn_bf16_to_f32(((const uint16_t *)src)[i]);
                    break;
                default: {
                    float sc = ((const float *)(blk + (which ? c->vs_offset : c->ks_offset)))[si];
                    for (int i = 0; i < D; i++) dst[i] = sc * (float)((const int8_t *)src)[i];
                    if (which) { /* v = y + mu_v */
                        const float *mu = qattn_kv_cal(c, QATTN_KV_CAL_MUV, h);
                        for (int i = 0; i < D; i++) dst[i] += mu[i];
                    } else { /* k = f * H(y + H(mu_k / f / n)), H H = n I */
                        const float *f = qattn_kv_cal(c, QATTN_KV_CAL_F, h), *mr = qattn_kv_cal(c, QATTN_KV_CAL_MUKR, h);
                        for (int i = 0; i < D; i++) dst[i] += mr[i];
                        (void)qattn_rotate_row(dst, D, 1.0f);
                        for (int i = 0; i < D; i++) dst[i] *= f[i];
                    }
                }
                }
            }
        }
    }
    return QATTN_OK;
}

qattn_status qattn_kv_cache_set_calibration(qattn_ctx *ctx, qattn_kv_cache *cache, const qattn_calibration *cal) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    if (!cache) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_kv_cache_set_calibration: cache is NULL");
    if (cache->dtype != QATTN_DTYPE_I8)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qattn_kv_cache_set_calibration: the cache stores %s; calibration is for INT8 caches",
                          qattn_dtype_name(cache->dtype));
    for (int32_t s = 0; s < cache->max_seqs; s++)
        if (cache->seq_len[s] != 0)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                              "qattn_kv_cache_set_calibration: sequence %d holds %lld tokens; calibrate an empty cache (its codes would change meaning)",
                              s, (long long)cache->seq_len[s]);
    qattn_status st = qattn_check_calibration(ctx, cal, cache->n_kv_heads, cache->head_dim, QATTN_CAL_HOST);
    if (st != QATTN_OK) return st;
    int64_t n = (int64_t)cache->n_kv_heads * cache->head_dim;
    float *m = cache->calib; /* the arena's tail, [5][HK][D] (kv_internal.h) */
    for (int64_t i = 0; i < n; i++) {
        m[i] = cal->k_factor[i], m[n + i] = cal->k_mean[i], m[2 * n + i] = cal->v_mean[i];
        m[3 * n + i] = m[4 * n + i] = cal->k_mean[i] / cal->k_factor[i]; /* exact: powers of two */
    }
    for (int64_t g = 0; g < cache->n_kv_heads; g++)
        (void)qattn_rotate_row(m + 4 * n + g * cache->head_dim, cache->head_dim, 1.0f / (float)qattn_rotate_block(cache->head_dim));
    return QATTN_OK;
}
