/* The shared C test harness (see harness.h). Uses the library's internal scalar conversions
 * (src/qattn_internal.h) so that test data is rounded exactly as the library rounds. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include "qattn_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------- checks and summary */

static const char *g_suite = "tests";
static uint64_t g_seed = 0x5eed2024ull;
static const char *g_filter = NULL;
static long g_checks = 0, g_failures = 0;
static const char *g_context = NULL;
static const char *g_last_reported_context = NULL;
static double g_start = 0.0;

double th_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void th_init(const char *suite_name) {
    g_suite = suite_name;
    g_start = th_seconds();
    const char *s = getenv("QATTN_TEST_SEED");
    if (s && *s) g_seed = strtoull(s, NULL, 0);
    g_filter = getenv("QATTN_TEST_FILTER");
    if (g_filter && !*g_filter) g_filter = NULL;
    printf("[%s] seed 0x%016" PRIx64 " (set QATTN_TEST_SEED to reproduce or change)%s%s\n", g_suite, g_seed,
           g_filter ? ", filter: " : "", g_filter ? g_filter : "");
    fflush(stdout);
}

uint64_t th_base_seed(void) { return g_seed; }

uint64_t th_derive_seed(uint64_t index) {
    /* splitmix64 of (base, index): distinct streams per case, stable across runs */
    uint64_t z = g_seed + 0x9e3779b97f4a7c15ull * (index + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

bool th_selected(const char *description) { return !g_filter || strstr(description, g_filter) != NULL; }

void th_set_context(const char *description) { g_context = description; }

bool th_check_at(bool ok, const char *file, int line, const char *fmt, ...) {
    g_checks++;
    if (ok) return true;
    g_failures++;
    if (g_context && g_context != g_last_reported_context) {
        printf("  in case: %s\n", g_context);
        g_last_reported_context = g_context;
    }
    printf("  FAIL %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    return false;
}

static qattn_ctx *g_oracle_ctx = NULL;

int th_finish(void) {
    qattn_ctx_destroy(g_oracle_ctx);
    g_oracle_ctx = NULL;
    printf("[%s] %ld checks, %ld failed, %.2f s, seed 0x%016" PRIx64 ": %s\n", g_suite, g_checks, g_failures, th_seconds() - g_start,
           g_seed, g_failures ? "FAILED" : "passed");
    return g_failures ? 1 : 0;
}

void *th_xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test harness: out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

/* ---------------------------------------------------------------- PRNG and fills */

void th_rng_init(th_rng *rng, uint64_t seed) { rng->state = seed ^ 0x2545f4914f6cdd1dull; }

uint64_t th_rng_u64(th_rng *rng) { /* splitmix64 */
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double th_rng_uniform(th_rng *rng, double lo, double hi) {
    return lo + (hi - lo) * ((double)(th_rng_u64(rng) >> 11) * 0x1.0p-53);
}

double th_rng_normal(th_rng *rng) {
    double u1 = ((double)(th_rng_u64(rng) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1]: log is finite */
    double u2 = (double)(th_rng_u64(rng) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void th_fill_normal(float *x, size_t n, th_rng *rng, double mean, double std) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + std * th_rng_normal(rng));
}

void th_fill_uniform(float *x, size_t n, th_rng *rng, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = (float)th_rng_uniform(rng, lo, hi);
}

/* ---------------------------------------------------------------- names and describe */

const char *th_dtype_name(int32_t dtype) {
    switch (dtype) {
    case QATTN_DTYPE_F32: return "f32";
    case QATTN_DTYPE_F16: return "f16";
    case QATTN_DTYPE_BF16: return "bf16";
    case QATTN_DTYPE_I8: return "i8";
    }
    return "?";
}

const char *th_precision_name(int32_t precision) {
    switch (precision) {
    case QATTN_PRECISION_AUTO: return "auto";
    case QATTN_PRECISION_FP32: return "fp32";
    case QATTN_PRECISION_FP16: return "fp16";
    case QATTN_PRECISION_BF16: return "bf16";
    case QATTN_PRECISION_INT8: return "int8";
    case QATTN_PRECISION_FP8_E4M3: return "fp8e4m3";
    case QATTN_PRECISION_FP8_E5M2: return "fp8e5m2";
    case QATTN_PRECISION_INT4: return "int4";
    }
    return "?";
}

const char *th_isa_name(int32_t isa) {
    switch (isa) {
    case QATTN_ISA_AUTO: return "auto";
    case QATTN_ISA_REF: return "ref";
    case QATTN_ISA_AVX2: return "avx2";
    case QATTN_ISA_AVXVNNI: return "avxvnni";
    case QATTN_ISA_AVX512: return "avx512";
    }
    return "?";
}

static size_t append(char *buf, size_t len, size_t at, const char *fmt, ...) {
    if (at >= len) return at;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + at, len - at, fmt, ap);
    va_end(ap);
    return n < 0 ? at : at + (size_t)n;
}

void th_describe(const th_case *c, char *buf, size_t len) {
    size_t at = 0;
    at = append(buf, len, at, "%s:", c->name ? c->name : "case");
    if (c->isa != QATTN_ISA_AUTO || c->n_threads != 0) at = append(buf, len, at, " isa=%s threads=%d", th_isa_name(c->isa), c->n_threads);
    at = append(buf, len, at, " B=%" PRId64 " Lq=%" PRId64 " Lk=%" PRId64 " H=%d HK=%d D=%d qkv=%s o=%s prec=%s", c->batch, c->seqlen_q, c->seqlen_k, c->n_heads,
                c->n_kv_heads, c->head_dim, th_dtype_name(c->qkv_dtype), th_dtype_name(c->o_dtype), th_precision_name(c->precision));
    at = append(buf, len, at, " causal=%d window=(%d,%d) scale=%.9g lse=%d layout=%s kv=%s", c->causal, c->window_left,
                c->window_right, (double)c->scale, c->with_lse ? 1 : 0, c->qo_bhld ? "q,o[B,H,L,D]" : "[B,L,H,D]",
                c->kv_cache ? "cache-view" : "contiguous");
    if (c->varlen) {
        at = append(buf, len, at, " cu_q=[");
        for (int64_t b = 0; b <= c->batch; b++) at = append(buf, len, at, "%s%d", b ? "," : "", c->cu_q[b]);
        at = append(buf, len, at, "] cu_k=[");
        for (int64_t b = 0; b <= c->batch; b++) at = append(buf, len, at, "%s%d", b ? "," : "", c->cu_k[b]);
        at = append(buf, len, at, "]");
    }
    append(buf, len, at, " seed=0x%016" PRIx64, c->seed);
}

/* ---------------------------------------------------------------- tensors */

static size_t dtype_size(int32_t dtype) { return dtype == QATTN_DTYPE_F32 ? 4 : 2; }

static int64_t view_index(const th_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t c) {
    return t->offset + i0 * t->s0 + i1 * t->s1 + i2 * t->s2 + c;
}

float th_tensor_get(const th_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t c) {
    return qattn_load(t->buf, t->dtype, view_index(t, i0, i1, i2, c));
}

void th_tensor_set(th_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t c, float value) {
    qattn_store(t->buf, t->dtype, view_index(t, i0, i1, i2, c), value);
}

/* Allocates a view with the given extents/strides plus `tail` padding elements. */
static bool tensor_alloc(th_tensor *t, int32_t dtype, int64_t offset, int64_t n0, int64_t n1, int64_t n2, int64_t d, int64_t s0,
                         int64_t s1, int64_t s2) {
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->offset = offset;
    t->n0 = n0, t->n1 = n1, t->n2 = n2, t->d = d;
    t->s0 = s0, t->s1 = s1, t->s2 = s2;
    int64_t last = offset;
    if (n0 > 0 && n1 > 0 && n2 > 0) last = view_index(t, n0 - 1, n1 - 1, n2 - 1, d - 1);
    t->elems = (size_t)last + 1 + 7; /* a little tail padding after the view */
    t->buf = th_xmalloc(t->elems * dtype_size(dtype));
    return true;
}

static void tensor_fill_bits(th_tensor *t, uint32_t f32_bits, uint16_t f16_bits, uint16_t bf16_bits) {
    if (t->dtype == QATTN_DTYPE_F32) {
        uint32_t *x = t->buf;
        for (size_t i = 0; i < t->elems; i++) x[i] = f32_bits;
    } else {
        uint16_t *x = t->buf;
        uint16_t b = t->dtype == QATTN_DTYPE_F16 ? f16_bits : bf16_bits;
        for (size_t i = 0; i < t->elems; i++) x[i] = b;
    }
}

/* Input padding: plain quiet NaN, so a read outside the view poisons a result. */
static void tensor_fill_nan(th_tensor *t) { tensor_fill_bits(t, 0x7fc00000u, 0x7e00u, 0x7fc0u); }

/* Output sentinels: NaNs with payloads the library's own NaNs never carry. */
#define SENTINEL_F32 0x7fd5a5a5u
#define SENTINEL_F16 0x7e5bu
#define SENTINEL_BF16 0x7fd5u

static bool is_sentinel(const th_tensor *t, int64_t idx) {
    if (t->dtype == QATTN_DTYPE_F32) return ((const uint32_t *)t->buf)[idx] == SENTINEL_F32;
    uint16_t want = t->dtype == QATTN_DTYPE_F16 ? SENTINEL_F16 : SENTINEL_BF16;
    return ((const uint16_t *)t->buf)[idx] == want;
}

static bool lse_is_sentinel(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    return bits == SENTINEL_F32;
}

int64_t th_seq_len_q(const th_problem *pr, int64_t b) {
    return pr->c.varlen ? pr->cu_q[b + 1] - pr->cu_q[b] : pr->c.seqlen_q;
}

int64_t th_seq_len_k(const th_problem *pr, int64_t b) {
    return pr->c.varlen ? pr->cu_k[b + 1] - pr->cu_k[b] : pr->c.seqlen_k;
}

void th_problem_set(th_problem *pr, th_tensor *t, int64_t b, int64_t pos, int64_t head, int64_t c, float value) {
    bool q_like = t == &pr->q || t == &pr->o;
    if (pr->c.varlen)
        th_tensor_set(t, 0, (q_like ? pr->cu_q[b] : pr->cu_k[b]) + pos, head, c, value);
    else
        th_tensor_set(t, b, pos, head, c, value);
}

static void fill_view_normal(th_problem *pr, th_tensor *t, bool q_like, int n_heads, th_rng *rng) {
    tensor_fill_nan(t);
    for (int64_t b = 0; b < pr->c.batch; b++) {
        int64_t len = q_like ? th_seq_len_q(pr, b) : th_seq_len_k(pr, b);
        for (int64_t i = 0; i < len; i++)
            for (int h = 0; h < n_heads; h++)
                for (int c = 0; c < pr->c.head_dim; c++) th_problem_set(pr, t, b, i, h, c, (float)th_rng_normal(rng));
    }
}

bool th_problem_make(th_problem *pr, const th_case *c) {
    memset(pr, 0, sizeof *pr);
    pr->c = *c;
    int64_t B = c->batch, Lq = c->seqlen_q, Lk = c->seqlen_k, H = c->n_heads, HK = c->n_kv_heads, D = c->head_dim;
    if (c->varlen) {
        memcpy(pr->cu_q, c->cu_q, sizeof pr->cu_q);
        memcpy(pr->cu_k, c->cu_k, sizeof pr->cu_k);
    }
    /* Extent of the (packed) token axis and the batch axis of the views. */
    int64_t nb = c->varlen ? 1 : B;
    int64_t tq = c->varlen ? pr->cu_q[B] : Lq;
    int64_t tk = c->varlen ? pr->cu_k[B] : Lk;
    pr->rows = c->varlen ? tq : B * Lq;

    /* q and o: [B, L, H, D] or [B, H, L, D]; with kv_cache also padded rows/heads. */
    int64_t pad = c->kv_cache ? 8 : 0;
    int64_t q_s2, q_s1, q_s0;
    if (c->qo_bhld) {
        q_s1 = D + pad;
        q_s2 = tq * q_s1 + pad;
        q_s0 = H * q_s2 + pad;
    } else {
        q_s2 = D + pad;
        q_s1 = H * q_s2 + pad;
        q_s0 = tq * q_s1 + pad;
    }
    /* With varlen the batch stride is ignored by the library: give it a value that would be
     * wrong if it were used. */
    if (c->varlen) q_s0 = 977;
    tensor_alloc(&pr->q, c->qkv_dtype, c->kv_cache ? 3 : 0, nb, tq, H, D, q_s0, q_s1, q_s2);
    tensor_alloc(&pr->o, c->o_dtype, c->kv_cache ? 5 : 0, nb, tq, H, D, q_s0, q_s1, q_s2);

    /* k and v: contiguous, or views of a bigger cache (more tokens, more heads, wider rows,
     * an odd batch stride, a start offset), k and v laid out differently. */
    if (c->kv_cache) {
        int64_t ks2 = D + 8, ks1 = (HK + 1) * ks2 + 16, ks0 = (tk + 37) * ks1 + 24;
        int64_t vs2 = D + 16, vs1 = (HK + 2) * vs2, vs0 = (tk + 5) * vs1 + 8;
        if (c->varlen) ks0 = vs0 = 1231;
        tensor_alloc(&pr->k, c->qkv_dtype, 3 * ks1 + ks2, nb, tk, HK, D, ks0, ks1, ks2);
        tensor_alloc(&pr->v, c->qkv_dtype, 5, nb, tk, HK, D, vs0, vs1, vs2);
    } else {
        int64_t s0 = c->varlen ? 0 : tk * HK * D;
        tensor_alloc(&pr->k, c->qkv_dtype, 0, nb, tk, HK, D, s0, HK * D, D);
        tensor_alloc(&pr->v, c->qkv_dtype, 0, nb, tk, HK, D, s0, HK * D, D);
    }
    th_rng rng;
    th_rng_init(&rng, c->seed);
    fill_view_normal(pr, &pr->q, true, (int)H, &rng);
    fill_view_normal(pr, &pr->k, false, (int)HK, &rng);
    fill_view_normal(pr, &pr->v, false, (int)HK, &rng);

    pr->lse_elems = (size_t)(H * pr->rows);
    pr->lse = c->with_lse ? th_xmalloc((pr->lse_elems + 16) * sizeof(float)) : NULL;

    qattn_params *p = &pr->p;
    qattn_params_init(p);
    p->q = (const char *)pr->q.buf + pr->q.offset * (int64_t)dtype_size(pr->q.dtype);
    p->k = (const char *)pr->k.buf + pr->k.offset * (int64_t)dtype_size(pr->k.dtype);
    p->v = (const char *)pr->v.buf + pr->v.offset * (int64_t)dtype_size(pr->v.dtype);
    p->o = (char *)pr->o.buf + pr->o.offset * (int64_t)dtype_size(pr->o.dtype);
    p->lse = pr->lse;
    p->batch = B;
    p->seqlen_q = Lq;
    p->seqlen_k = Lk;
    p->n_heads = (int32_t)H;
    p->n_kv_heads = (int32_t)HK;
    p->head_dim = (int32_t)D;
    p->qkv_dtype = c->qkv_dtype;
    p->o_dtype = c->o_dtype;
    p->precision = c->precision;
    p->causal = c->causal;
    p->window_left = c->window_left;
    p->window_right = c->window_right;
    p->scale = c->scale;
    p->q_batch_stride = pr->q.s0, p->q_seq_stride = pr->q.s1, p->q_head_stride = pr->q.s2;
    p->k_batch_stride = pr->k.s0, p->k_seq_stride = pr->k.s1, p->k_head_stride = pr->k.s2;
    p->v_batch_stride = pr->v.s0, p->v_seq_stride = pr->v.s1, p->v_head_stride = pr->v.s2;
    p->o_batch_stride = pr->o.s0, p->o_seq_stride = pr->o.s1, p->o_head_stride = pr->o.s2;
    if (c->varlen) {
        p->cu_seqlens_q = pr->cu_q;
        p->cu_seqlens_k = pr->cu_k;
    }
    return true;
}

void th_problem_free(th_problem *pr) {
    free(pr->q.buf);
    free(pr->k.buf);
    free(pr->v.buf);
    free(pr->o.buf);
    free(pr->lse);
    memset(pr, 0, sizeof *pr);
}

static void round_tensor(th_tensor *dst, const th_tensor *src, int32_t precision) {
    *dst = *src;
    dst->dtype = QATTN_DTYPE_F32;
    dst->buf = th_xmalloc(src->elems * sizeof(float));
    float *x = dst->buf;
    for (size_t i = 0; i < src->elems; i++) x[i] = qattn_round_to(precision, qattn_load(src->buf, src->dtype, (int64_t)i));
}

bool th_problem_rounded_copy(th_problem *dst, const th_problem *src, int32_t precision) {
    *dst = *src;
    round_tensor(&dst->q, &src->q, precision);
    round_tensor(&dst->k, &src->k, precision);
    round_tensor(&dst->v, &src->v, precision);
    memset(&dst->o, 0, sizeof dst->o); /* not owned: the oracle ignores o */
    dst->lse = NULL;
    dst->c.qkv_dtype = QATTN_DTYPE_F32;
    dst->p.qkv_dtype = QATTN_DTYPE_F32;
    dst->p.q = (const float *)dst->q.buf + dst->q.offset;
    dst->p.k = (const float *)dst->k.buf + dst->k.offset;
    dst->p.v = (const float *)dst->v.buf + dst->v.offset;
    dst->p.lse = NULL;
    dst->p.cu_seqlens_q = src->c.varlen ? dst->cu_q : NULL;
    dst->p.cu_seqlens_k = src->c.varlen ? dst->cu_k : NULL;
    return true;
}

void th_problem_poison(th_problem *pr) {
    tensor_fill_bits(&pr->o, SENTINEL_F32, SENTINEL_F16, SENTINEL_BF16);
    if (pr->lse) {
        uint32_t *x = (uint32_t *)pr->lse;
        for (size_t i = 0; i < pr->lse_elems + 16; i++) x[i] = SENTINEL_F32;
    }
}

/* Calls fn(b, position, packed row, view index 0, view index 1) for every query row. */
#define FOR_EACH_QUERY_ROW(pr, body)                                                    \
    do {                                                                                \
        int64_t row_ = 0;                                                               \
        for (int64_t b_ = 0; b_ < (pr)->c.batch; b_++) {                                \
            int64_t len_ = th_seq_len_q((pr), b_);                                      \
            for (int64_t i_ = 0; i_ < len_; i_++, row_++) {                             \
                int64_t v0_ = (pr)->c.varlen ? 0 : b_;                                  \
                int64_t v1_ = (pr)->c.varlen ? (pr)->cu_q[b_] + i_ : i_;                \
                body                                                                    \
            }                                                                           \
        }                                                                               \
    } while (0)

bool th_problem_check_written(const th_problem *pr) {
    const th_tensor *o = &pr->o;
    char *in_view = calloc(o->elems, 1);
    if (!in_view) return TH_CHECK(false, "out of memory");
    size_t unwritten = 0, stray = 0;
    int H = pr->c.n_heads, D = pr->c.head_dim;
    FOR_EACH_QUERY_ROW(pr, {
        (void)row_;
        for (int h = 0; h < H; h++)
            for (int c = 0; c < D; c++) {
                int64_t idx = view_index(o, v0_, v1_, h, c);
                in_view[idx] = 1;
                if (is_sentinel(o, idx)) unwritten++;
            }
    });
    for (size_t i = 0; i < o->elems; i++)
        if (!in_view[i] && !is_sentinel(o, (int64_t)i)) stray++;
    free(in_view);
    bool ok = TH_CHECK(unwritten == 0, "%zu output elements were not written", unwritten);
    ok &= TH_CHECK(stray == 0, "%zu elements outside the output view were written", stray);
    if (pr->lse) {
        size_t lse_unwritten = 0, lse_stray = 0;
        for (size_t i = 0; i < pr->lse_elems; i++) lse_unwritten += lse_is_sentinel(pr->lse[i]);
        for (size_t i = pr->lse_elems; i < pr->lse_elems + 16; i++) lse_stray += !lse_is_sentinel(pr->lse[i]);
        ok &= TH_CHECK(lse_unwritten == 0, "%zu LSE elements were not written", lse_unwritten);
        ok &= TH_CHECK(lse_stray == 0, "%zu elements after the LSE were written", lse_stray);
    }
    return ok;
}

void th_problem_gather_o(const th_problem *pr, float *out) {
    int H = pr->c.n_heads, D = pr->c.head_dim;
    FOR_EACH_QUERY_ROW(pr, {
        for (int h = 0; h < H; h++)
            for (int c = 0; c < D; c++) out[(row_ * H + h) * D + c] = th_tensor_get(&pr->o, v0_, v1_, h, c);
    });
}

bool th_oracle(const th_problem *pr, double *o64, double *lse64) {
    if (!g_oracle_ctx) g_oracle_ctx = th_ctx(QATTN_ISA_REF, 1);
    if (!g_oracle_ctx) return false;
    qattn_status s = qattn_oracle_f64(g_oracle_ctx, &pr->p, o64, lse64);
    return TH_CHECK(s == QATTN_OK, "oracle failed: %s: %s", qattn_status_str(s), qattn_ctx_last_error(g_oracle_ctx));
}

/* ---------------------------------------------------------------- metrics */

static th_metrics compare_impl(const float *outf, const double *outd, const double *ref, size_t n) {
    th_metrics m = {0};
    m.n = n;
    double err2 = 0, ref2 = 0, out2 = 0, dot = 0, abs_err = 0, abs_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double o = outf ? (double)outf[i] : outd[i], r = ref[i];
        if (!isfinite(o) || !isfinite(r)) {
            /* equal infinities and NaN vs NaN agree; anything else is a mismatch */
            bool agree = (isnan(o) && isnan(r)) || (isinf(o) && o == r);
            m.nonfinite += !agree;
            continue;
        }
        double e = fabs(o - r);
        if (e > m.max_abs) m.max_abs = e;
        err2 += e * e;
        ref2 += r * r;
        out2 += o * o;
        dot += o * r;
        abs_err += e;
        abs_ref += fabs(r);
    }
    m.rel_l2 = ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
    m.cosine = (ref2 > 0 && out2 > 0) ? dot / sqrt(ref2 * out2) : (ref2 == out2 ? 1.0 : 0.0);
    m.mre = abs_ref > 0 ? abs_err / abs_ref : abs_err;
    return m;
}

th_metrics th_compare(const float *out, const double *ref, size_t n) { return compare_impl(out, NULL, ref, n); }
th_metrics th_compare_f64(const double *out, const double *ref, size_t n) { return compare_impl(NULL, out, ref, n); }

void th_metrics_print(const char *label, const th_metrics *m) {
    printf("    %-10s max_abs %.3e  rel_l2 %.3e  cos %.9f  mre %.3e  nonfinite %zu (n=%zu)\n", label, m->max_abs, m->rel_l2, m->cosine,
           m->mre, m->nonfinite, m->n);
}

/* ---------------------------------------------------------------- misc */

qattn_ctx *th_ctx(int32_t isa, int32_t n_threads) {
    qattn_ctx_options opt;
    memset(&opt, 0, sizeof opt);
    opt.backend = QATTN_BACKEND_CPU;
    opt.isa = isa;
    opt.n_threads = n_threads;
    qattn_ctx *ctx = NULL;
    qattn_status s = qattn_ctx_create(&ctx, &opt);
    TH_CHECK(s == QATTN_OK, "qattn_ctx_create(isa %s, threads %d): %s", th_isa_name(isa), n_threads, qattn_status_str(s));
    return s == QATTN_OK ? ctx : NULL;
}

static bool isa_available(int32_t isa) {
    qattn_ctx_options opt;
    memset(&opt, 0, sizeof opt);
    opt.backend = QATTN_BACKEND_CPU;
    opt.isa = isa;
    opt.n_threads = 1;
    qattn_ctx *ctx = NULL;
    if (qattn_ctx_create(&ctx, &opt) != QATTN_OK) return false;
    qattn_ctx_destroy(ctx);
    return true;
}

bool th_cpu_has_avx2(void) { return isa_available(QATTN_ISA_AVX2); }

int th_available_isas(int32_t isas[TH_MAX_ISAS]) {
    int n = 0;
    for (int32_t isa = QATTN_ISA_REF; isa <= QATTN_ISA_AVX512; isa++)
        if (isa == QATTN_ISA_REF || isa_available(isa)) isas[n++] = isa;
    return n;
}
