/* Regression tests of the reliability fixes (issue 12, part 1): context creation says why it
 * failed, one thread limit, outputs overlapping inputs are refused, float32 score overflow is
 * refused instead of returning NaN, size products never overflow silently, reserved fields
 * must be zero. Each check failed before its fix. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "harness.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool contains(const char *haystack, const char *needle) { return haystack && strstr(haystack, needle) != NULL; }

/* ---------------------------------------------------------------- context creation */

static void test_create_message(void) {
    th_set_context("qattn_ctx_create_ex message");
    char why[256];
    qattn_ctx *ctx = (qattn_ctx *)&ctx;
    qattn_ctx_options o;
    memset(&o, 0, sizeof o);
    o.backend = QATTN_BACKEND_CPU;

    setenv("QATTN_ISA", "bogus", 1);
    qattn_status s = qattn_ctx_create_ex(&ctx, &o, why, sizeof why);
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "QATTN_ISA=bogus: %s", qattn_status_str(s));
    TH_CHECK(contains(why, "QATTN_ISA=bogus"), "QATTN_ISA=bogus message '%s'", why);
    unsetenv("QATTN_ISA");

    o.n_threads = QATTN_MAX_THREADS + 1;
    s = qattn_ctx_create_ex(&ctx, &o, why, sizeof why);
    char want[32];
    snprintf(want, sizeof want, "%d", QATTN_MAX_THREADS + 1);
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL && contains(why, want), "n_threads %d: %s, '%s'", QATTN_MAX_THREADS + 1,
             qattn_status_str(s), why);
    o.n_threads = INT32_MAX; /* was accepted by qattn_ctx_create */
    TH_CHECK(qattn_ctx_create(&ctx, &o) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "n_threads INT32_MAX must be refused");

    o.n_threads = QATTN_MAX_THREADS; /* the limit itself is accepted, by set_threads too */
    s = qattn_ctx_create_ex(&ctx, &o, why, sizeof why);
    if (TH_CHECK(s == QATTN_OK && why[0] == '\0', "n_threads %d: %s '%s'", QATTN_MAX_THREADS, qattn_status_str(s), why)) {
        TH_CHECK(qattn_ctx_set_threads(ctx, QATTN_MAX_THREADS) == QATTN_OK, "set_threads(QATTN_MAX_THREADS)");
        TH_CHECK(qattn_ctx_set_threads(ctx, QATTN_MAX_THREADS + 1) == QATTN_ERR_INVALID_ARGUMENT, "set_threads(QATTN_MAX_THREADS + 1)");
        qattn_ctx_destroy(ctx);
    }

    /* an ISA the CPU lacks: the reason names it */
    int32_t isas[TH_MAX_ISAS];
    int n = th_available_isas(isas);
    bool have_vnni = false;
    for (int i = 0; i < n; i++) have_vnni |= isas[i] == QATTN_ISA_AVXVNNI;
    o.n_threads = 1;
    o.isa = QATTN_ISA_AVXVNNI;
    s = qattn_ctx_create_ex(&ctx, &o, why, sizeof why);
    if (have_vnni) {
        TH_CHECK(s == QATTN_OK, "avxvnni on a VNNI CPU");
        qattn_ctx_destroy(ctx);
    } else {
        TH_CHECK(s == QATTN_ERR_UNSUPPORTED && contains(why, "avxvnni"), "avxvnni without VNNI: %s '%s'", qattn_status_str(s), why);
    }
    /* no buffer, a 1-byte buffer: no overflow */
    o.isa = 99;
    TH_CHECK(qattn_ctx_create_ex(&ctx, &o, NULL, 0) == QATTN_ERR_INVALID_ARGUMENT, "isa 99, no buffer");
    char one[1] = {'x'};
    TH_CHECK(qattn_ctx_create_ex(&ctx, &o, one, 1) == QATTN_ERR_INVALID_ARGUMENT && one[0] == '\0', "isa 99, 1-byte buffer");
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- aliasing */

typedef struct small_problem {
    qattn_params p;
    float *buf; /* q, k, v, o, lse back to back, then slack */
    int64_t n;  /* elements of one of q/k/v/o */
} small_problem;

static void small_make(small_problem *sp) {
    qattn_params_init(&sp->p);
    sp->p.batch = 1, sp->p.seqlen_q = 64, sp->p.seqlen_k = 64, sp->p.n_heads = 2, sp->p.n_kv_heads = 2, sp->p.head_dim = 64;
    qattn_params_set_contiguous(&sp->p);
    sp->n = 64 * 2 * 64;
    sp->buf = th_xmalloc((size_t)(5 * sp->n) * sizeof(float));
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(1));
    th_fill_uniform(sp->buf, (size_t)(3 * sp->n), &rng, -1.0, 1.0);
    sp->p.q = sp->buf;
    sp->p.k = sp->buf + sp->n;
    sp->p.v = sp->buf + 2 * sp->n;
    sp->p.o = sp->buf + 3 * sp->n;
    sp->p.lse = sp->buf + 4 * sp->n;
}

static void expect_overlap(qattn_ctx *ctx, const qattn_params *p, const char *a, const char *b, const char *what) {
    qattn_status s = qattn_forward(ctx, p);
    const char *msg = qattn_ctx_last_error(ctx);
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && contains(msg, a) && contains(msg, b) && contains(msg, "overlap"), "%s: %s '%s'", what,
             qattn_status_str(s), msg);
    TH_CHECK(qattn_supports(ctx, p) == QATTN_ERR_INVALID_ARGUMENT, "%s: qattn_supports must agree", what);
}

static void test_aliasing(qattn_ctx *ctx) {
    th_set_context("outputs overlapping inputs");
    small_problem sp;
    small_make(&sp);
    TH_CHECK(qattn_forward(ctx, &sp.p) == QATTN_OK, "disjoint back-to-back tensors: %s", qattn_ctx_last_error(ctx));
    qattn_params p = sp.p;
    p.o = (void *)p.k; /* the reported case: o aliasing k returned QATTN_OK with wrong output */
    expect_overlap(ctx, &p, "output o", "input k", "o == k");
    p.o = (void *)p.v;
    expect_overlap(ctx, &p, "output o", "input v", "o == v");
    p.o = (float *)sp.p.q + sp.n - 1; /* the last element of q */
    expect_overlap(ctx, &p, "output o", "input q", "o starts on q's last element");
    p = sp.p;
    p.lse = (float *)p.v + 5;
    expect_overlap(ctx, &p, "output lse", "input v", "lse inside v");
    p.lse = (float *)p.o + 7;
    expect_overlap(ctx, &p, "lse", "o", "lse inside o");
    /* F16 q: its extent is half as long, so o right after it is disjoint */
    p = sp.p;
    p.qkv_dtype = QATTN_DTYPE_F16;
    p.k = (uint16_t *)p.q + sp.n;
    p.v = (uint16_t *)p.q + 2 * sp.n;
    p.o = (uint16_t *)p.q + 3 * sp.n;
    p.lse = (float *)p.o + sp.n;
    memset((void *)p.q, 0, (size_t)(3 * sp.n) * 2);
    TH_CHECK(qattn_forward(ctx, &p) == QATTN_OK, "f16 inputs with o right after them: %s", qattn_ctx_last_error(ctx));

    /* the pre-quantized forward: o onto q's int8 codes */
    qattn_int8_inputs qi;
    memset(&qi, 0, sizeof qi);
    int8_t *codes = th_xmalloc((size_t)(3 * sp.n) + 64);
    float *scales = th_xmalloc(3 * 128 * sizeof(float));
    memset(codes, 1, (size_t)(3 * sp.n));
    for (int i = 0; i < 3 * 128; i++) scales[i] = 0.01f;
    qattn_int8_tensor *ts[3] = {&qi.q, &qi.k, &qi.v};
    for (int t = 0; t < 3; t++) {
        ts[t]->data = codes + t * sp.n;
        ts[t]->scale = scales + t * 128;
        ts[t]->granularity = QATTN_QUANT_PER_TOKEN;
        ts[t]->head_stride = 64, ts[t]->seq_stride = 128, ts[t]->batch_stride = 64 * 128;
    }
    qi.v.granularity = QATTN_QUANT_PER_HEAD;
    p = sp.p;
    p.precision = QATTN_PRECISION_INT8;
    qattn_status s = qattn_forward_quantized(ctx, &p, &qi);
    TH_CHECK(s == QATTN_OK, "forward_quantized, disjoint: %s", qattn_ctx_last_error(ctx));
    p.o = codes + sp.n; /* o over k's codes */
    s = qattn_forward_quantized(ctx, &p, &qi);
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && contains(qattn_ctx_last_error(ctx), "input k"), "forward_quantized o over k codes: '%s'",
             qattn_ctx_last_error(ctx));
    /* reserved must be zero */
    p = sp.p;
    p.precision = QATTN_PRECISION_INT8;
    qi.k.reserved = 1;
    s = qattn_forward_quantized(ctx, &p, &qi);
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && contains(qattn_ctx_last_error(ctx), "reserved"), "int8 tensor reserved 1: '%s'",
             qattn_ctx_last_error(ctx));
    free(codes);
    free(scales);
    free(sp.buf);
    th_set_context(NULL);
}

static void test_kv_aliasing_and_ranges(qattn_ctx *ctx) {
    th_set_context("KV cache: decode aliasing, read range, reserved");
    qattn_kv_cache_options ko;
    memset(&ko, 0, sizeof ko);
    ko.n_kv_heads = 2, ko.head_dim = 64, ko.block_size = 16, ko.dtype = QATTN_DTYPE_F16, ko.n_blocks = 8, ko.max_seqs = 2;
    qattn_kv_cache *cache = NULL;
    ko.reserved = 3;
    TH_CHECK(qattn_kv_cache_create(ctx, &ko, &cache) == QATTN_ERR_INVALID_ARGUMENT && cache == NULL &&
                 contains(qattn_ctx_last_error(ctx), "reserved"),
             "kv options reserved 3: '%s'", qattn_ctx_last_error(ctx));
    ko.reserved = 0;
    if (!TH_CHECK(qattn_kv_cache_create(ctx, &ko, &cache) == QATTN_OK, "kv cache: %s", qattn_ctx_last_error(ctx))) return;
    float kv[20 * 2 * 64];
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(2));
    th_fill_uniform(kv, 20 * 2 * 64, &rng, -1.0, 1.0);
    TH_CHECK(qattn_kv_cache_append(ctx, cache, 0, kv, kv, 20, QATTN_DTYPE_F32) == QATTN_OK, "append");

    /* the message printed start + n, which overflows for start INT64_MAX */
    float out[2 * 64];
    qattn_status s = qattn_kv_cache_read(ctx, cache, 0, INT64_MAX, 1, out, NULL);
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && contains(qattn_ctx_last_error(ctx), "9223372036854775807") &&
                 !contains(qattn_ctx_last_error(ctx), "-9223372036854775808"),
             "read(start INT64_MAX) must show the true values, not a wrapped range: '%s'", qattn_ctx_last_error(ctx));
    float both[3 * 2 * 64];
    s = qattn_kv_cache_read(ctx, cache, 0, 0, 2, both, both + 2 * 64 - 1); /* v starts on k's last element */
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && contains(qattn_ctx_last_error(ctx), "overlap"), "read with overlapping k and v: '%s'",
             qattn_ctx_last_error(ctx));

    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    float q[4 * 64], o[4 * 64 + 8];
    th_fill_uniform(q, 4 * 64, &rng, -1.0, 1.0);
    int32_t ids[1] = {0};
    dp.q = q, dp.o = o, dp.seq_ids = ids, dp.n_seqs = 1, dp.n_heads = 4;
    TH_CHECK(qattn_kv_decode(ctx, cache, &dp) == QATTN_OK, "decode: %s", qattn_ctx_last_error(ctx));
    dp.o = q; /* in place */
    s = qattn_kv_decode(ctx, cache, &dp);
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && contains(qattn_ctx_last_error(ctx), "output o overlaps input q"), "decode o == q: '%s'",
             qattn_ctx_last_error(ctx));
    dp.o = o;
    dp.lse = o + 4 * 64 - 1;
    s = qattn_kv_decode(ctx, cache, &dp);
    TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && contains(qattn_ctx_last_error(ctx), "outputs o and lse overlap"), "decode lse inside o: '%s'",
             qattn_ctx_last_error(ctx));
    qattn_kv_cache_destroy(ctx, cache);
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- score overflow */

/* scale 3e37 on inputs in [-1, 1] at D 64: scale*log2e*q.k overflows float32 (the FP64 oracle
 * is finite), which gave NaN rows in every FP kernel and the FP8 emulation. Now: QATTN_ERR_OVERFLOW naming a row. A
 * scale below the limit still gives finite outputs equal to the oracle's hard max. */
static void test_score_overflow(void) {
    int32_t isas[TH_MAX_ISAS];
    int n_isas = th_available_isas(isas);
    static const int32_t precisions[] = {QATTN_PRECISION_FP32, QATTN_PRECISION_FP16, QATTN_PRECISION_BF16, QATTN_PRECISION_FP8_E4M3,
                                         QATTN_PRECISION_FP8_E5M2};
    small_problem sp;
    small_make(&sp);
    double *o64 = th_xmalloc((size_t)sp.n * sizeof(double));
    for (int ii = 0; ii < n_isas; ii++) {
        qattn_ctx *ctx = th_ctx(isas[ii], 2);
        if (!ctx) continue;
        for (size_t pi = 0; pi < sizeof precisions / sizeof precisions[0]; pi++) {
            char label[96];
            snprintf(label, sizeof label, "score overflow, isa %s, precision %s", th_isa_name(isas[ii]), th_precision_name(precisions[pi]));
            th_set_context(label);
            qattn_params p = sp.p;
            p.precision = precisions[pi];
            p.scale = 3e37f;
            qattn_status s = qattn_forward(ctx, &p);
            TH_CHECK(s == QATTN_ERR_OVERFLOW && contains(qattn_ctx_last_error(ctx), "overflow float32"), "scale 3e37: %s '%s'",
                     qattn_status_str(s), qattn_ctx_last_error(ctx));
            /* the largest product here is below 64: scale 2e36 keeps |scale*log2e*q.k| < 1.9e38 */
            p.scale = 2e36f;
            s = qattn_forward(ctx, &p);
            bool finite = true;
            for (int64_t i = 0; i < sp.n; i++) finite &= isfinite(((const float *)p.o)[i]);
            TH_CHECK(s == QATTN_OK && finite, "scale 2e36: %s, outputs %s", qattn_ctx_last_error(ctx), finite ? "finite" : "not finite");
            if (precisions[pi] == QATTN_PRECISION_FP32 && s == QATTN_OK &&
                TH_CHECK(qattn_oracle_f64(ctx, &p, o64, NULL) == QATTN_OK, "oracle: %s", qattn_ctx_last_error(ctx))) {
                /* a hard max: each output row is one V row; FP32 rounding of 64-term dots (~1e-6
                 * relative) cannot flip an argmax whose runner-up differs by more than that */
                int64_t wrong = 0;
                for (int64_t i = 0; i < sp.n; i++) wrong += fabs(((const float *)p.o)[i] - o64[i]) > 1e-5;
                TH_CHECK(wrong == 0, "scale 2e36: %lld of %lld elements differ from the oracle", (long long)wrong, (long long)sp.n);
            }
        }
        qattn_ctx_destroy(ctx);
    }
    free(o64);
    free(sp.buf);
    th_set_context(NULL);
}

/* Decode over the cache at scale 3e37: NaN rows (ref FP16/BF16, every INT8 kernel) before; now
 * either finite outputs (the AVX2 FP16 kernel gets the hard max right) or QATTN_ERR_OVERFLOW. */
static void test_decode_score_overflow(void) {
    int32_t isas[TH_MAX_ISAS];
    int n_isas = th_available_isas(isas);
    static const int32_t dtypes[] = {QATTN_DTYPE_F16, QATTN_DTYPE_BF16, QATTN_DTYPE_I8};
    float kv[64 * 2 * 64], q[4 * 64], o[4 * 64];
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(3));
    th_fill_uniform(kv, 64 * 2 * 64, &rng, -1.0, 1.0);
    th_fill_uniform(q, 4 * 64, &rng, -1.0, 1.0);
    for (int ii = 0; ii < n_isas; ii++)
        for (int di = 0; di < 3; di++) {
            char label[96];
            snprintf(label, sizeof label, "decode score overflow, isa %s, cache %s", th_isa_name(isas[ii]), th_dtype_name(dtypes[di]));
            th_set_context(label);
            qattn_ctx *ctx = th_ctx(isas[ii], 2);
            if (!ctx) continue;
            qattn_kv_cache_options ko;
            memset(&ko, 0, sizeof ko);
            ko.n_kv_heads = 2, ko.head_dim = 64, ko.block_size = 16, ko.dtype = dtypes[di], ko.n_blocks = 8, ko.max_seqs = 1;
            qattn_kv_cache *cache = NULL;
            if (TH_CHECK(qattn_kv_cache_create(ctx, &ko, &cache) == QATTN_OK, "create: %s", qattn_ctx_last_error(ctx)) &&
                TH_CHECK(qattn_kv_cache_append(ctx, cache, 0, kv, kv, 64, QATTN_DTYPE_F32) == QATTN_OK, "append")) {
                qattn_decode_params dp;
                qattn_decode_params_init(&dp);
                int32_t ids[1] = {0};
                dp.q = q, dp.o = o, dp.seq_ids = ids, dp.n_seqs = 1, dp.n_heads = 4, dp.scale = 3e37f;
                qattn_status s = qattn_kv_decode(ctx, cache, &dp);
                bool finite = true;
                for (int i = 0; i < 4 * 64; i++) finite &= isfinite(o[i]);
                TH_CHECK((s == QATTN_OK && finite) || (s == QATTN_ERR_OVERFLOW && contains(qattn_ctx_last_error(ctx), "overflow float32")),
                         "scale 3e37: %s, outputs %s, '%s'", qattn_status_str(s), finite ? "finite" : "NOT finite", qattn_ctx_last_error(ctx));
                dp.scale = 0.125f;
                TH_CHECK(qattn_kv_decode(ctx, cache, &dp) == QATTN_OK, "scale 0.125: %s", qattn_ctx_last_error(ctx));
            }
            qattn_kv_cache_destroy(ctx, cache);
            qattn_ctx_destroy(ctx);
        }
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- size overflow */

static void test_size_overflow(qattn_ctx *ctx) {
    th_set_context("size products overflow");
    qattn_params p;
    qattn_params_init(&p);
    p.batch = 1, p.seqlen_q = INT32_MAX, p.seqlen_k = INT32_MAX, p.n_heads = INT32_MAX, p.n_kv_heads = INT32_MAX, p.head_dim = 256;
    qattn_params_set_contiguous(&p); /* signed overflow (UBSan) before: seqlen * H * D */
    TH_CHECK(p.q_batch_stride == INT64_MAX && p.k_batch_stride == INT64_MAX, "overflowing strides saturate: %lld, %lld",
             (long long)p.q_batch_stride, (long long)p.k_batch_stride);
    TH_CHECK(p.q_seq_stride == (int64_t)INT32_MAX * 256, "q_seq_stride %lld fits and is exact", (long long)p.q_seq_stride);
    static float dummy[4];
    p.q = p.k = p.v = dummy;
    p.o = dummy;
    qattn_status s = qattn_forward(ctx, &p);
    TH_CHECK(s == QATTN_ERR_OVERFLOW && contains(qattn_ctx_last_error(ctx), "2147483647"), "forward: %s '%s'", qattn_status_str(s),
             qattn_ctx_last_error(ctx));
    th_set_context(NULL);
}

int main(void) {
    th_init("test_reliability");
    test_create_message();
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 2);
    if (!ctx) return th_finish();
    test_aliasing(ctx);
    test_kv_aliasing_and_ranges(ctx);
    test_size_overflow(ctx);
    qattn_ctx_destroy(ctx);
    test_score_overflow();
    test_decode_score_overflow();
    return th_finish();
}
