/* qattn_forward_kvcache (include/qattn.h "attention over a KV cache", docs/KVCACHE.md): what is not
 * a (case x target) oracle check. Those, the cache contents after the append included, are the
 * kvcache section of the op table (tests/test_ops.c, tests/ops_kvcache.c). Here:
 * - bad arguments are refused with a message and the cache unchanged, an empty batch is a no-op
 *   (on the table's decode case);
 * - the rotary helpers (qattn_rotary_apply, qattn_kv_cache_append_rotary) against this suite's
 *   own FP64 rotary, bit-exact. */
#include "ops_kvcache.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The op table's "decode" case: FP32, shuffled pages of 16, an empty sequence, rotary. */
static op_case decode_case(void) {
    op_case x;
    memset(&x, 0, sizeof x);
    x.kind = OP_FORWARD_KVCACHE;
    x.c.name = "decode";
    x.c.batch = 3, x.c.seqlen_q = 1, x.c.n_heads = 8, x.c.n_kv_heads = 2, x.c.head_dim = 64;
    x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_F32;
    x.c.causal = 1, x.c.window_left = x.c.window_right = -1;
    x.kv.seqlen_new = 1, x.kv.page = 16;
    x.kv.cache_seqlens[0] = 0, x.kv.cache_seqlens[1] = 17, x.kv.cache_seqlens[2] = 40;
    x.kv.rotary_dim = 64, x.kv.rotary_interleaved = 1;
    return x;
}

/* ---------------------------------------------------------------- bad arguments */

static void expect_refused(op_kv_problem *pr, qattn_status want, const char *what) {
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 2);
    if (!ctx) return;
    op_kv_restore_cache(pr);
    qattn_status s = qattn_forward_kvcache(ctx, &pr->p, &pr->kv);
    const char *msg = qattn_ctx_last_error(ctx);
    TH_CHECK(s == want, "%s: status %s, expected %s (%s)", what, qattn_status_str(s), qattn_status_str(want), msg);
    TH_CHECK(msg[0] != '\0', "%s: no message", what);
    TH_CHECK(memcmp(pr->kc, pr->kc_before, pr->cache_bytes) == 0 && memcmp(pr->vc, pr->vc_before, pr->cache_bytes) == 0,
             "%s: the cache changed on a refused call", what);
    if (s == want && getenv("QATTN_TEST_VERBOSE")) printf("    %s: %s\n", what, msg);
    qattn_ctx_destroy(ctx);
}

static void test_bad_arguments(void) {
    printf("  bad arguments\n");
    th_set_context("bad arguments (decode case)");
    op_kv_problem pr;
    op_case decode = decode_case();
    op_kv_make(&pr, &decode, th_derive_seed(900));
    qattn_kvcache_params kv0 = pr.kv;
    qattn_params p0 = pr.p;
    int64_t used = pr.table_stride + 1; /* sequence 1's second page: its tokens 16 and the new one reach it */
    int32_t keep = pr.table[used];
    pr.table[used] = (int32_t)pr.n_pages;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "page id n_pages");
    pr.table[used] = -1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "page id -1");
    pr.table[used] = keep;
    pr.cs[1] = -1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "negative cache_seqlens");
    pr.cs[1] = (int32_t)pr.capacity; /* + 1 new token: one beyond the capacity */
    expect_refused(&pr, QATTN_ERR_CAPACITY, "capacity");
    pr.cs[1] = decode.kv.cache_seqlens[1];
    pr.kv.rotary_len -= 1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "rotary position beyond rotary_len");
    pr.kv = kv0;
    pr.kv.k_page_stride = INT64_MAX / 3;
    expect_refused(&pr, QATTN_ERR_OVERFLOW, "overflowing page stride");
    pr.kv = kv0;
    pr.kv.block_table_stride = INT64_MAX / 2;
    expect_refused(&pr, QATTN_ERR_OVERFLOW, "overflowing block table stride");
    pr.kv = kv0;
    pr.kv.k_seq_stride = 1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "k_cache rows overlapping");
    pr.kv = kv0;
    pr.kv.k_new = NULL;
    expect_refused(&pr, QATTN_ERR_NULL_POINTER, "k_new NULL");
    pr.kv = kv0;
    pr.kv.page_size = 24;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "page_size 24");
    pr.kv = kv0;
    pr.kv.v_cache = pr.kv.k_cache;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "v_cache is k_cache");
    pr.kv = kv0;
    pr.kv.k_new = pr.kc; /* the new tokens read from the cache being written */
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "k_new inside k_cache");
    pr.kv = kv0;
    pr.p.o = pr.kc;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "o overlapping k_cache");
    pr.p = p0;
    pr.p.lse = (float *)pr.cs;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "lse overlapping cache_seqlens");
    pr.p = p0;
    pr.p.k = pr.kc;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "p->k set");
    pr.p = p0;
    pr.p.precision = QATTN_PRECISION_INT8;
    expect_refused(&pr, QATTN_ERR_UNSUPPORTED, "INT8 precision");
    pr.p = p0;
    static const uint8_t one_block = 1;
    pr.p.block_mask = &one_block, pr.p.block_mask_q = pr.p.block_mask_k = 16;
    expect_refused(&pr, QATTN_ERR_UNSUPPORTED, "block_mask");
    pr.p = p0;
    float bad_slopes[64] = {0.5f, NAN};
    pr.p.alibi_slopes = bad_slopes;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "a NaN ALiBi slope");
    pr.p = p0;
    memset(pr.o, 0, 64 * sizeof(float)); /* finite slopes, so the overlap is what is refused */
    pr.p.alibi_slopes = pr.o;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "alibi_slopes overlapping o");
    pr.p = p0;
    pr.p.head_dim = 36;
    expect_refused(&pr, QATTN_ERR_UNSUPPORTED, "head_dim 36");
    pr.p = p0;
    pr.kv.reserved[2] = 1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "reserved field");
    pr.kv = kv0;
    pr.kv.rotary_dim = 63;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "odd rotary_dim");
    pr.kv = kv0;
    pr.kv.rotary_sin = NULL;
    expect_refused(&pr, QATTN_ERR_NULL_POINTER, "rotary_sin NULL");
    pr.kv = kv0;
    pr.kv.seqlen_new = 0, pr.kv.k_new = pr.kv.v_new = NULL;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "rotary without new tokens");
    pr.kv = kv0;
    pr.kv.cache_seqlens = NULL;
    expect_refused(&pr, QATTN_ERR_NULL_POINTER, "cache_seqlens NULL");
    pr.kv = kv0;
    pr.kv.seqlen_new = -1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "negative seqlen_new");
    pr.kv = kv0;
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
    if (ctx) {
        TH_CHECK(qattn_forward_kvcache(ctx, NULL, &pr.kv) == QATTN_ERR_NULL_POINTER, "params NULL");
        TH_CHECK(qattn_forward_kvcache(ctx, &pr.p, NULL) == QATTN_ERR_NULL_POINTER, "kv NULL");
        qattn_ctx_destroy(ctx);
    }
    TH_CHECK(qattn_forward_kvcache(NULL, &pr.p, &pr.kv) == QATTN_ERR_NULL_POINTER, "ctx NULL");
    /* an empty batch is a no-op that reads nothing */
    pr.p.batch = 0;
    pr.kv.cache_seqlens = NULL;
    ctx = th_ctx(QATTN_ISA_AUTO, 1);
    if (ctx) {
        op_kv_restore_cache(&pr);
        qattn_status s = qattn_forward_kvcache(ctx, &pr.p, &pr.kv);
        TH_CHECK(s == QATTN_OK, "empty batch: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
        qattn_ctx_destroy(ctx);
    }
    th_set_context(NULL);
    op_kv_free(&pr);
}

/* ---------------------------------------------------------------- rotary on the cache object */

static void test_rotary_helpers(void) {
    printf("  rotary: qattn_rotary_apply, qattn_kv_cache_append_rotary\n");
    th_set_context("rotary helpers");
    const int HK = 2, D = 64, rd = 48, n = 21, rows = 40, half = rd / 2;
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(950));
    float *k = th_xmalloc((size_t)(n * HK * D) * sizeof(float)), *v = th_xmalloc((size_t)(n * HK * D) * sizeof(float));
    float *cs = th_xmalloc((size_t)(rows * half) * sizeof(float)), *sn = th_xmalloc((size_t)(rows * half) * sizeof(float));
    th_fill_normal(k, (size_t)(n * HK * D), &rng, 0.0, 1.0);
    th_fill_normal(v, (size_t)(n * HK * D), &rng, 0.0, 1.0);
    for (int i = 0; i < rows * half; i++) {
        double a = th_rng_uniform(&rng, 0.0, 6.283185307179586);
        cs[i] = (float)cos(a), sn[i] = (float)sin(a);
    }
    /* the expected rotation of tokens at positions 5.. (the sequence holds 5 tokens first) */
    float *kr = th_xmalloc((size_t)(n * HK * D) * sizeof(float));
    memcpy(kr, k, (size_t)(n * HK * D) * sizeof(float));
    for (int inter = 0; inter < 2; inter++) {
        memcpy(kr, k, (size_t)(n * HK * D) * sizeof(float));
        for (int t = 0; t < n; t++)
            for (int g = 0; g < HK; g++) op_kv_rotate(cs, sn, rd, inter, 5 + t, kr + (t * HK + g) * D);
        qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
        if (!ctx) break;
        /* qattn_rotary_apply: FP32 in place, bit-exact */
        float *x = th_xmalloc((size_t)(n * HK * D) * sizeof(float));
        memcpy(x, k, (size_t)(n * HK * D) * sizeof(float));
        qattn_status s = qattn_rotary_apply(ctx, x, QATTN_DTYPE_F32, n, HK, D, 5, cs, sn, rows, rd, inter);
        TH_CHECK(s == QATTN_OK && memcmp(x, kr, (size_t)(n * HK * D) * sizeof(float)) == 0, "rotary_apply (interleaved %d): %s %s", inter,
                 qattn_status_str(s), qattn_ctx_last_error(ctx));
        memcpy(x, k, (size_t)(n * HK * D) * sizeof(float));
        s = qattn_rotary_apply(ctx, x, QATTN_DTYPE_F32, n, HK, D, rows - n + 1, cs, sn, rows, rd, inter);
        TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && memcmp(x, k, (size_t)(n * HK * D) * sizeof(float)) == 0,
                 "rotary_apply beyond the table: %s, x %s", qattn_status_str(s), memcmp(x, k, (size_t)(n * HK * D) * sizeof(float)) ? "changed" : "unchanged");
        free(x);
        for (int dti = 0; dti < 2; dti++) {
            int32_t dt = dti ? QATTN_DTYPE_I8 : QATTN_DTYPE_F16;
            qattn_kv_cache_options o;
            memset(&o, 0, sizeof o);
            o.n_kv_heads = HK, o.head_dim = D, o.block_size = 16, o.dtype = dt, o.n_blocks = 8, o.max_seqs = 2;
            qattn_kv_cache *c1 = NULL, *c2 = NULL;
            if (qattn_kv_cache_create(ctx, &o, &c1) != QATTN_OK || qattn_kv_cache_create(ctx, &o, &c2) != QATTN_OK) {
                TH_CHECK(false, "cache create: %s", qattn_ctx_last_error(ctx));
                qattn_kv_cache_destroy(ctx, c1);
                break;
            }
            /* 5 tokens first, then n rotated ones; c2 gets the same tokens rotated by the test */
            TH_CHECK(qattn_kv_cache_append(ctx, c1, 0, k, v, 5, QATTN_DTYPE_F32) == QATTN_OK, "append");
            TH_CHECK(qattn_kv_cache_append(ctx, c2, 0, k, v, 5, QATTN_DTYPE_F32) == QATTN_OK, "append");
            s = qattn_kv_cache_append_rotary(ctx, c1, 0, k, v, n, QATTN_DTYPE_F32, cs, sn, 5 + n - 1, rd, inter);
            TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT, "append_rotary beyond the table: %s", qattn_status_str(s));
            int64_t len = -1;
            qattn_kv_cache_seq_len(ctx, c1, 0, &len);
            TH_CHECK(len == 5, "a refused append_rotary changed the length to %lld", (long long)len);
            s = qattn_kv_cache_append_rotary(ctx, c1, 0, k, v, n, QATTN_DTYPE_F32, cs, sn, rows, rd, inter);
            TH_CHECK(s == QATTN_OK, "append_rotary (%s): %s %s", dti ? "i8" : "f16", qattn_status_str(s), qattn_ctx_last_error(ctx));
            TH_CHECK(qattn_kv_cache_append(ctx, c2, 0, kr, v, n, QATTN_DTYPE_F32) == QATTN_OK, "append");
            size_t e = (size_t)((5 + n) * HK * D);
            float *r1 = th_xmalloc(e * sizeof(float) * 2), *r2 = th_xmalloc(e * sizeof(float) * 2);
            qattn_kv_cache_read(ctx, c1, 0, 0, 5 + n, r1, r1 + e);
            qattn_kv_cache_read(ctx, c2, 0, 0, 5 + n, r2, r2 + e);
            /* the same rounding of the same rotated values: identical codes */
            TH_CHECK(memcmp(r1, r2, 2 * e * sizeof(float)) == 0, "append_rotary (%s, interleaved %d) differs from append of the rotated keys",
                     dti ? "i8" : "f16", inter);
            free(r1), free(r2);
            qattn_kv_cache_destroy(ctx, c1), qattn_kv_cache_destroy(ctx, c2);
        }
        qattn_ctx_destroy(ctx);
    }
    th_set_context(NULL);
    free(k), free(v), free(cs), free(sn), free(kr);
}

int main(void) {
    th_init("test_kvcache_fwd");
    test_bad_arguments();
    test_rotary_helpers();
    return th_finish();
}
