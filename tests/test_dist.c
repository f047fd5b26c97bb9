/* qattn_dist over MPI (CPU), run by CTest under mpirun with 1, 2 and 4 ranks: exact
 * distributed attention, Star Attention's two phases and distributed decode against the
 * single-process results and the FP64 oracle, bitwise determinism run to run and across ranks,
 * and bad arguments (one rank's error reaches every rank; nothing hangs). Exits 77 (skipped)
 * when qattn_dist was built without MPI.
 *
 * Tolerances. Exact mode, FP32/FP16 inputs: the merge adds, per output, N products w_r * O_r and
 * a division, each rounded once in FP32: relative error <= ~(N + 2) * 2^-24 (2.4e-7 at N 4) over
 * the single-process result. Against the single-process output we allow 2e-6 relative L2 (8x);
 * against the FP64 oracle the single-process bound of tests/ops.c (1e-5 relative L2, LSE
 * 1e-5 * (1 + |lse|)). One rank must equal qattn_forward bit for bit (weight exp(0) = 1).
 * INT8: sharding moves the tile boundaries at which P is quantized to u8 against the block row
 * max, so the distributed result is a different draw of the same rounding, not a rounding of the
 * single-process one: its error against the oracle must stay within 1.5x the single-process
 * INT8 error (the ratios measured are printed) plus the FP32 floor.
 * Decode: against single-process qattn_kv_decode on a cache holding the whole sequences, 2e-6
 * relative L2 for FP16 storage; INT8 storage (per-token scales: a shard stores exactly the codes
 * the whole cache stores) adds the kernels' 16-bit q / softmax weights per split, so 2e-4, the
 * op table's decode bound against the oracle on the dequantized cache (tests/ops.c), is used
 * there too. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "qattn_dist.h"
#include "qattn_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(QATTN_HAVE_MPI)
int main(void) {
    printf("[test_dist] qattn_dist was built without MPI: skipped\n");
    return 77;
}
#else
#include <mpi.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#define EXACT_VS_SINGLE 2e-6
#define FP32_REL_L2 1e-5
#define FP32_LSE_REL 1e-5
#define INT8_FACTOR 1.5
#define DECODE_I8_TOL 2e-4

static int g_rank, g_size;
static qattn_ctx *g_ctx;
static qattn_dist *g_dist;

/* ---------------------------------------------------------------- helpers */

/* The same data on every rank: N(0,1) from a seed. */
static float *random_f32(size_t n, uint64_t seed) {
    float *x = th_xmalloc(n * sizeof(float));
    th_rng r;
    th_rng_init(&r, seed);
    th_fill_normal(x, n, &r, 0.0, 1.0);
    return x;
}

/* A copy of x in dtype (F32, F16) for the library; free with free(). */
static void *as_dtype(const float *x, size_t n, int32_t dtype) {
    if (dtype == QATTN_DTYPE_F32) {
        float *y = th_xmalloc(n * sizeof(float));
        memcpy(y, x, n * sizeof(float));
        return y;
    }
    uint16_t *y = th_xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) y[i] = qattn_f32_to_f16(x[i]);
    return y;
}

static size_t dsize(int32_t dtype) { return dtype == QATTN_DTYPE_F32 ? 4 : 2; }

static void poison(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

static size_t count_nan(const float *x, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += isnan(x[i]) != 0;
    return k;
}

/* True when every rank holds the same bytes (a checksum compared across ranks). */
static bool same_on_all_ranks(const void *buf, size_t bytes) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = buf;
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 1099511628211ull;
    uint64_t *all = th_xmalloc((size_t)g_size * sizeof(uint64_t));
    MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    bool ok = true;
    for (int r = 0; r < g_size; r++) ok &= all[r] == h;
    free(all);
    return ok;
}

/* Shard r of total keys: sizes as equal as possible (the first total % N shards one longer). */
static void even_shard(int64_t total, int r, int n, int64_t *off, int64_t *len) {
    int64_t base = total / n, extra = total % n;
    *off = r * base + (r < extra ? r : extra);
    *len = base + (r < extra ? 1 : 0);
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---------------------------------------------------------------- (a) exact distributed attention */

typedef struct fcase {
    const char *name;
    int64_t batch, lq, lk;
    int32_t h, hk, d, causal, window_left, window_right, dtype, precision;
    int reversed; /* shards assigned in reverse rank order, plus an empty one */
} fcase;

static const fcase fcases[] = {
    {"causal Lq<Lk GQA fp32", 1, 113, 203, 4, 2, 64, 1, -1, -1, QATTN_DTYPE_F32, QATTN_PRECISION_FP32, 0},
    {"non-causal B2 D80 fp32", 2, 17, 300, 2, 2, 80, 0, -1, -1, QATTN_DTYPE_F32, QATTN_PRECISION_FP32, 0},
    {"causal square GQA f16", 1, 203, 203, 8, 2, 128, 1, -1, -1, QATTN_DTYPE_F16, QATTN_PRECISION_AUTO, 0},
    {"one query MQA D256", 1, 1, 1000, 8, 1, 256, 1, -1, -1, QATTN_DTYPE_F32, QATTN_PRECISION_FP32, 0},
    {"causal Lq>Lk (empty rows)", 1, 203, 113, 2, 1, 64, 1, -1, -1, QATTN_DTYPE_F32, QATTN_PRECISION_FP32, 0},
    {"window_right 5 reversed shards", 1, 64, 517, 2, 2, 64, 0, -1, 5, QATTN_DTYPE_F32, QATTN_PRECISION_FP32, 1},
    {"sliding window 50 causal", 1, 203, 517, 4, 2, 64, 1, 50, -1, QATTN_DTYPE_F32, QATTN_PRECISION_FP32, 0},
    {"window 100,20 B2 reversed shards", 2, 64, 300, 2, 1, 64, 0, 100, 20, QATTN_DTYPE_F32, QATTN_PRECISION_FP32, 1},
    {"one query window 256 f16", 1, 1, 1000, 8, 2, 128, 1, 256, -1, QATTN_DTYPE_F16, QATTN_PRECISION_AUTO, 0},
    {"causal int8 GQA", 1, 113, 517, 4, 2, 64, 1, -1, -1, QATTN_DTYPE_F32, QATTN_PRECISION_INT8, 0},
    {"non-causal int8 reversed", 2, 64, 300, 2, 1, 128, 0, -1, -1, QATTN_DTYPE_F32, QATTN_PRECISION_INT8, 1},
    {"sliding window 64 int8", 1, 113, 517, 4, 2, 64, 1, 64, -1, QATTN_DTYPE_F32, QATTN_PRECISION_INT8, 0},
    {"causal Lq<Lk GQA D8 fp32", 1, 113, 203, 4, 2, 8, 1, -1, -1, QATTN_DTYPE_F32, QATTN_PRECISION_FP32, 0},
    {"one query D16 f16 reversed", 1, 1, 517, 4, 1, 16, 1, -1, -1, QATTN_DTYPE_F16, QATTN_PRECISION_AUTO, 1},
    {"causal int8 D24", 1, 113, 300, 2, 2, 24, 1, -1, -1, QATTN_DTYPE_F32, QATTN_PRECISION_INT8, 0},
};

static void shard_of(const fcase *c, int64_t *off, int64_t *len) {
    if (!c->reversed || g_size == 1) {
        even_shard(c->lk, g_rank, g_size, off, len);
        return;
    }
    /* Rank 0 empty, the others in reverse order: rank r holds piece size-1-r of size-1 pieces. */
    if (g_rank == 0) {
        *off = 0, *len = 0;
        return;
    }
    even_shard(c->lk, g_size - 1 - g_rank, g_size - 1, off, len);
}

static void fill_params(qattn_params *p, const fcase *c, const void *q, const void *k, const void *v, int64_t lk, float *o, float *lse) {
    qattn_params_init(p);
    p->q = q, p->k = k, p->v = v, p->o = o, p->lse = lse;
    p->batch = c->batch, p->seqlen_q = c->lq, p->seqlen_k = lk;
    p->n_heads = c->h, p->n_kv_heads = c->hk, p->head_dim = c->d;
    p->qkv_dtype = c->dtype, p->o_dtype = QATTN_DTYPE_F32, p->precision = c->precision;
    p->causal = c->causal, p->window_left = c->window_left, p->window_right = c->window_right;
    qattn_params_set_contiguous(p);
}

static void test_forward_case(const fcase *c, uint64_t seed) {
    char label[160];
    snprintf(label, sizeof label, "exact %s (B%lld Lq%lld Lk%lld H%d HK%d D%d) ranks %d", c->name, (long long)c->batch, (long long)c->lq,
             (long long)c->lk, c->h, c->hk, c->d, g_size);
    if (!th_selected(label)) return;
    th_set_context(label);
    size_t nq = (size_t)(c->batch * c->lq * c->h * c->d), nkv = (size_t)(c->batch * c->lk * c->hk * c->d);
    size_t nlse = (size_t)(c->batch * c->h * c->lq);
    float *qf = random_f32(nq, seed), *kf = random_f32(nkv, seed + 1), *vf = random_f32(nkv, seed + 2);
    void *q = as_dtype(qf, nq, c->dtype), *k = as_dtype(kf, nkv, c->dtype), *v = as_dtype(vf, nkv, c->dtype);
    float *o = th_xmalloc(nq * 4), *o2 = th_xmalloc(nq * 4), *o1 = th_xmalloc(nq * 4);
    float *lse = th_xmalloc(nlse * 4), *lse2 = th_xmalloc(nlse * 4), *lse1 = th_xmalloc(nlse * 4);
    double *o64 = th_xmalloc(nq * 8), *lse64 = th_xmalloc(nlse * 8);

    /* The single-process result and the oracle, on the whole K/V. */
    qattn_params full;
    fill_params(&full, c, q, k, v, c->lk, o1, lse1);
    qattn_status s = qattn_forward(g_ctx, &full);
    TH_CHECK(s == QATTN_OK, "[%s] single-process forward: %s", label, qattn_ctx_last_error(g_ctx));
    TH_CHECK(qattn_oracle_f64(g_ctx, &full, o64, lse64) == QATTN_OK, "[%s] oracle: %s", label, qattn_ctx_last_error(g_ctx));

    /* This rank's shard: K/V are views into the whole tensors (batch stride of the whole). */
    int64_t off, len;
    shard_of(c, &off, &len);
    qattn_params p;
    size_t row = (size_t)c->hk * c->d * dsize(c->dtype);
    fill_params(&p, c, q, (const char *)k + off * row, (const char *)v + off * row, len, o, lse);
    p.k_batch_stride = p.v_batch_stride = c->lk * c->hk * c->d;
    for (int run = 0; run < 2; run++) {
        float *oo = run ? o2 : o, *ll = run ? lse2 : lse;
        poison(oo, nq), poison(ll, nlse);
        p.o = oo, p.lse = ll;
        s = qattn_dist_forward(g_ctx, g_dist, &p, off, c->lk);
        TH_CHECK(s == QATTN_OK, "[%s] qattn_dist_forward: %s: %s", label, qattn_status_str(s), qattn_ctx_last_error(g_ctx));
    }
    TH_CHECK(count_nan(o, nq) == 0 && count_nan(lse, nlse) == 0, "[%s] %zu outputs / %zu LSE not written", label, count_nan(o, nq),
             count_nan(lse, nlse));
    TH_CHECK(!memcmp(o, o2, nq * 4) && !memcmp(lse, lse2, nlse * 4), "[%s] two runs differ", label);
    TH_CHECK(same_on_all_ranks(o, nq * 4) && same_on_all_ranks(lse, nlse * 4), "[%s] ranks hold different results", label);
    if (g_size == 1) TH_CHECK(!memcmp(o, o1, nq * 4) && !memcmp(lse, lse1, nlse * 4), "[%s] one rank differs from qattn_forward", label);

    th_metrics m = th_compare(o, o64, nq), m1 = th_compare(o1, o64, nq);
    double vs_single = rel_l2(o, o1, nq);
    double lse_err = 0;
    size_t lse_bad = 0;
    for (size_t i = 0; i < nlse; i++) {
        if (isinf(lse64[i]) || isinf(lse[i])) {
            lse_bad += !(isinf(lse64[i]) && isinf(lse[i]) && lse[i] < 0 && lse64[i] < 0);
            continue;
        }
        double e = fabs(lse[i] - lse64[i]) / (1.0 + fabs(lse64[i]));
        if (e > lse_err) lse_err = e;
    }
    TH_CHECK(lse_bad == 0, "[%s] %zu LSE entries disagree on -inf with the oracle", label, lse_bad);
    if (c->precision == QATTN_PRECISION_INT8) {
        double bound = INT8_FACTOR * m1.rel_l2 + FP32_REL_L2;
        TH_CHECK(m.rel_l2 <= bound, "[%s] int8 rel L2 %.3e vs oracle above %.1f x single-process %.3e", label, m.rel_l2, INT8_FACTOR,
                 m1.rel_l2);
        if (g_rank == 0) printf("  %-70s rel_l2 %.3e (single %.3e, ratio %.3f)\n", label, m.rel_l2, m1.rel_l2, m.rel_l2 / m1.rel_l2);
    } else {
        TH_CHECK(m.rel_l2 <= FP32_REL_L2, "[%s] rel L2 %.3e vs oracle above %.1e", label, m.rel_l2, FP32_REL_L2);
        TH_CHECK(vs_single <= EXACT_VS_SINGLE, "[%s] rel L2 %.3e vs single-process above %.1e", label, vs_single, EXACT_VS_SINGLE);
        TH_CHECK(lse_err <= FP32_LSE_REL, "[%s] LSE error %.3e above %.1e * (1 + |lse|)", label, lse_err, FP32_LSE_REL);
        if (g_rank == 0) printf("  %-70s rel_l2 %.3e, vs single %.3e, lse %.2e\n", label, m.rel_l2, vs_single, lse_err);
    }
    TH_CHECK(m.nonfinite == 0, "[%s] %zu non-finite outputs", label, m.nonfinite);
    free(qf), free(kf), free(vf), free(q), free(k), free(v), free(o), free(o2), free(o1), free(lse), free(lse2), free(lse1), free(o64),
        free(lse64);
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- (b) Star Attention */

/* Context of lc tokens in blocks (rank r: block r), anchor of `anchor` tokens; then nq query
 * tokens attending to every block + themselves (phase 2). Checks phase 1 against its
 * definition (qattn_forward on the concatenation [anchor ; block]), phase 2 against the oracle
 * of exact attention, and prints phase 1's deviation from exact causal attention. */
static void test_star(int64_t lc, int64_t nq, int64_t anchor, int32_t h, int32_t hk, int32_t d, uint64_t seed, bool check) {
    char label[160];
    snprintf(label, sizeof label, "star Lc%lld anchor %lld queries %lld H%d HK%d D%d ranks %d", (long long)lc, (long long)anchor, (long long)nq, h,
             hk, d, g_size);
    if (!th_selected(label)) return;
    th_set_context(label);
    int64_t L = lc + nq;
    size_t qrow = (size_t)h * d, kvrow = (size_t)hk * d;
    float *q = random_f32((size_t)L * qrow, seed), *k = random_f32((size_t)L * kvrow, seed + 1), *v = random_f32((size_t)L * kvrow, seed + 2);
    int64_t off, len;
    even_shard(lc, g_rank, g_size, &off, &len);
    int64_t a = off < anchor ? off : anchor; /* anchor tokens not already in the block */

    /* Phase 1. */
    float *o = th_xmalloc((size_t)len * qrow * 4 + 4), *lse = th_xmalloc((size_t)h * len * 4 + 4);
    poison(o, (size_t)len * qrow), poison(lse, (size_t)h * len);
    qattn_params p;
    qattn_params_init(&p);
    p.q = q + off * qrow, p.k = k + off * kvrow, p.v = v + off * kvrow, p.o = o, p.lse = lse;
    p.batch = 1, p.seqlen_q = p.seqlen_k = len, p.n_heads = h, p.n_kv_heads = hk, p.head_dim = d, p.causal = 1;
    qattn_params_set_contiguous(&p);
    qattn_status s = len > 0 ? qattn_star_encode(g_ctx, &p, k, v, a) : QATTN_OK;
    TH_CHECK(s == QATTN_OK, "[%s] qattn_star_encode: %s", label, qattn_ctx_last_error(g_ctx));
    if (len > 0) {
        /* The definition: the concatenation [anchor ; block], causal. */
        float *kc = th_xmalloc((size_t)(a + len) * kvrow * 4), *vc = th_xmalloc((size_t)(a + len) * kvrow * 4);
        memcpy(kc, k, (size_t)a * kvrow * 4), memcpy(kc + a * kvrow, k + off * kvrow, (size_t)len * kvrow * 4);
        memcpy(vc, v, (size_t)a * kvrow * 4), memcpy(vc + a * kvrow, v + off * kvrow, (size_t)len * kvrow * 4);
        float *od = th_xmalloc((size_t)len * qrow * 4);
        qattn_params pd = p;
        pd.k = kc, pd.v = vc, pd.seqlen_k = a + len, pd.o = od, pd.lse = NULL;
        qattn_params_set_contiguous(&pd);
        TH_CHECK(qattn_forward(g_ctx, &pd) == QATTN_OK, "[%s] definition: %s", label, qattn_ctx_last_error(g_ctx));
        double dev_def = rel_l2(o, od, (size_t)len * qrow);
        TH_CHECK(count_nan(o, (size_t)len * qrow) == 0 && count_nan(lse, (size_t)h * len) == 0, "[%s] phase 1 left outputs unwritten", label);
        TH_CHECK(dev_def <= EXACT_VS_SINGLE, "[%s] phase 1 rel L2 %.3e vs its definition above %.1e", label, dev_def, EXACT_VS_SINGLE);
        if (check) {
            double *o64 = th_xmalloc((size_t)len * qrow * 8);
            pd.lse = NULL;
            TH_CHECK(qattn_oracle_f64(g_ctx, &pd, o64, NULL) == QATTN_OK, "[%s] oracle", label);
            th_metrics m = th_compare(o, o64, (size_t)len * qrow);
            TH_CHECK(m.rel_l2 <= FP32_REL_L2, "[%s] phase 1 rel L2 %.3e vs the oracle of its definition above %.1e", label, m.rel_l2, FP32_REL_L2);
            free(o64);
        }
        free(kc), free(vc), free(od);
    }
    /* Phase 1's deviation from exact causal attention over the whole context (per rank, then the
     * sum of |diff| and |exact| over ranks): Star Attention's approximation, printed only. */
    double sums[2] = {0, 0};
    if (len > 0) {
        qattn_params pe = p;
        float *oe = th_xmalloc((size_t)len * qrow * 4);
        pe.k = k, pe.v = v, pe.seqlen_k = off + len, pe.o = oe, pe.lse = NULL;
        qattn_params_set_contiguous(&pe);
        TH_CHECK(qattn_forward(g_ctx, &pe) == QATTN_OK, "[%s] exact causal: %s", label, qattn_ctx_last_error(g_ctx));
        for (size_t i = 0; i < (size_t)len * qrow; i++) sums[0] += fabs((double)o[i] - oe[i]), sums[1] += fabs((double)oe[i]);
        free(oe);
    }
    MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);

    /* Phase 2: the queries (the last nq tokens) over every block; their own K/V are appended to
     * the last rank's shard. */
    int64_t off2 = off, len2 = len + (g_rank == g_size - 1 ? nq : 0);
    float *o2 = th_xmalloc((size_t)nq * qrow * 4), *lse2 = th_xmalloc((size_t)h * nq * 4);
    poison(o2, (size_t)nq * qrow);
    qattn_params p2;
    qattn_params_init(&p2);
    p2.q = q + lc * qrow, p2.k = k + off2 * kvrow, p2.v = v + off2 * kvrow, p2.o = o2, p2.lse = lse2;
    p2.batch = 1, p2.seqlen_q = nq, p2.seqlen_k = len2, p2.n_heads = h, p2.n_kv_heads = hk, p2.head_dim = d, p2.causal = 1;
    qattn_params_set_contiguous(&p2);
    s = qattn_dist_forward(g_ctx, g_dist, &p2, off2, L);
    TH_CHECK(s == QATTN_OK, "[%s] phase 2: %s", label, qattn_ctx_last_error(g_ctx));
    double p2_err = NAN;
    if (check) {
        qattn_params pe = p2;
        pe.k = k, pe.v = v, pe.seqlen_k = L;
        qattn_params_set_contiguous(&pe);
        double *o64 = th_xmalloc((size_t)nq * qrow * 8);
        TH_CHECK(qattn_oracle_f64(g_ctx, &pe, o64, NULL) == QATTN_OK, "[%s] oracle", label);
        th_metrics m = th_compare(o2, o64, (size_t)nq * qrow);
        p2_err = m.rel_l2;
        TH_CHECK(m.rel_l2 <= FP32_REL_L2, "[%s] phase 2 rel L2 %.3e vs exact attention above %.1e", label, m.rel_l2, FP32_REL_L2);
        free(o64);
    }
    if (g_rank == 0) {
        printf("  %-70s phase 1 rel_l1 vs exact causal %.3e (Star's approximation)", label, sums[1] > 0 ? sums[0] / sums[1] : 0.0);
        if (check) printf("; phase 2 rel_l2 vs oracle %.3e", p2_err);
        printf("\n");
    }
    free(q), free(k), free(v), free(o), free(lse), free(o2), free(lse2);
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- (c) distributed decode */

static qattn_kv_cache *make_cache(int hk, int d, int32_t dtype, int64_t blocks, int seqs) {
    qattn_kv_cache_options o;
    memset(&o, 0, sizeof o);
    o.n_kv_heads = hk, o.head_dim = d, o.block_size = 16, o.dtype = dtype, o.n_blocks = blocks, o.max_seqs = seqs;
    qattn_kv_cache *c = NULL;
    qattn_status s = qattn_kv_cache_create(g_ctx, &o, &c);
    TH_CHECK(s == QATTN_OK, "kv_cache_create: %s", qattn_ctx_last_error(g_ctx));
    return c;
}

static void test_decode(int32_t dtype, int32_t lq, int D, uint64_t seed) {
    enum { NS = 3 };
    const int64_t lens[NS] = {300, 5, 1000}; /* 5 tokens: empty non-tail shards at Lq 4 */
    const int H = 8, HK = 2;
    char label[128];
    snprintf(label, sizeof label, "decode %s Lq %d H%d HK%d D%d ranks %d", dtype == QATTN_DTYPE_I8 ? "int8" : "f16", lq, H, HK, D, g_size);
    if (!th_selected(label)) return;
    th_set_context(label);
    qattn_kv_cache *whole = make_cache(HK, D, dtype, 256, NS), *mine = make_cache(HK, D, dtype, 256, NS);
    if (!whole || !mine) return;
    size_t row = (size_t)HK * D;
    int tail = g_size - 1;
    for (int sq = 0; sq < NS; sq++) {
        float *k = random_f32((size_t)lens[sq] * row, seed + 10 * sq), *v = random_f32((size_t)lens[sq] * row, seed + 10 * sq + 1);
        TH_CHECK(qattn_kv_cache_append(g_ctx, whole, sq, k, v, lens[sq], QATTN_DTYPE_F32) == QATTN_OK, "append");
        /* Non-tail shards: equal pieces of the tokens before the last lq, or nothing when a
         * piece would be shorter than lq; the tail holds the rest (at least the lq new ones). */
        int64_t body = lens[sq] - lq, piece = body / g_size;
        if (piece < lq) piece = 0;
        int64_t off = g_rank == tail ? piece * tail : piece * g_rank, n = g_rank == tail ? lens[sq] - off : piece;
        if (n > 0) TH_CHECK(qattn_kv_cache_append(g_ctx, mine, sq, k + off * row, v + off * row, n, QATTN_DTYPE_F32) == QATTN_OK, "append");
        free(k), free(v);
    }
    size_t nq = (size_t)NS * lq * H * D, nl = (size_t)NS * H * lq;
    float *q = random_f32(nq, seed + 99);
    float *o = th_xmalloc(nq * 4), *o2 = th_xmalloc(nq * 4), *o1 = th_xmalloc(nq * 4), *lse = th_xmalloc(nl * 4), *lse1 = th_xmalloc(nl * 4);
    int32_t ids[NS] = {0, 1, 2};
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = q, dp.o = o1, dp.lse = lse1, dp.seq_ids = ids, dp.n_seqs = NS, dp.seqlen_q = lq, dp.n_heads = H, dp.causal = 1;
    TH_CHECK(qattn_kv_decode(g_ctx, whole, &dp) == QATTN_OK, "[%s] single-process decode: %s", label, qattn_ctx_last_error(g_ctx));
    for (int run = 0; run < 2; run++) {
        dp.o = run ? o2 : o, dp.lse = lse;
        poison(dp.o, nq), poison(lse, nl);
        qattn_status s = qattn_dist_kv_decode(g_ctx, g_dist, mine, NULL, &dp, tail);
        TH_CHECK(s == QATTN_OK, "[%s] qattn_dist_kv_decode: %s: %s", label, qattn_status_str(s), qattn_ctx_last_error(g_ctx));
    }
    TH_CHECK(count_nan(o, nq) == 0 && count_nan(lse, nl) == 0, "[%s] outputs not written", label);
    TH_CHECK(!memcmp(o, o2, nq * 4), "[%s] two runs differ", label);
    TH_CHECK(same_on_all_ranks(o, nq * 4), "[%s] ranks hold different results", label);
    double e = rel_l2(o, o1, nq), tol = dtype == QATTN_DTYPE_I8 ? DECODE_I8_TOL : EXACT_VS_SINGLE;
    TH_CHECK(e <= tol, "[%s] rel L2 %.3e vs single-process decode above %.1e", label, e, tol);
    if (g_size == 1) TH_CHECK(!memcmp(o, o1, nq * 4), "[%s] one rank differs from qattn_kv_decode", label);
    if (g_rank == 0) printf("  %-70s rel_l2 vs single-process %.3e\n", label, e);
    qattn_kv_cache_destroy(g_ctx, whole), qattn_kv_cache_destroy(g_ctx, mine);
    free(q), free(o), free(o2), free(o1), free(lse), free(lse1);
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- bad arguments */

static void expect_everywhere(qattn_status s, qattn_status want, const char *what) {
    TH_CHECK(s == want, "%s: got %s, expected %s (%s)", what, qattn_status_str(s), qattn_status_str(want), qattn_ctx_last_error(g_ctx));
    TH_CHECK(strlen(qattn_ctx_last_error(g_ctx)) > 0, "%s: no message", what);
    if (g_rank == 0) printf("  %-40s -> %s: %s\n", what, qattn_status_str(s), qattn_ctx_last_error(g_ctx));
}

static void test_bad_arguments(void) {
    if (!th_selected("bad arguments")) return;
    th_set_context("bad arguments");
    const int64_t L = 64;
    float *q = random_f32(L * 2 * 32, 1), *k = random_f32(L * 2 * 32, 2), *o = th_xmalloc(L * 2 * 32 * 4);
    int64_t off, len;
    even_shard(L, g_rank, g_size, &off, &len);
    qattn_params p;
    qattn_params_init(&p);
    p.q = q, p.k = k + off * 64, p.v = k + off * 64, p.o = o;
    p.batch = 1, p.seqlen_q = L, p.seqlen_k = len, p.n_heads = 2, p.n_kv_heads = 2, p.head_dim = 32, p.causal = 1;
    qattn_params_set_contiguous(&p);
    p.k_batch_stride = p.v_batch_stride = L * 64;
    TH_CHECK(qattn_dist_forward(g_ctx, g_dist, &p, off, L) == QATTN_OK, "baseline call: %s", qattn_ctx_last_error(g_ctx));

    qattn_params b = p;
    if (g_rank == 0) b.cu_seqlens_q = b.cu_seqlens_k = (const int32_t *)q; /* one rank only: every rank must fail */
    expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &b, off, L), QATTN_ERR_UNSUPPORTED, "cu_seqlens on rank 0");
    b = p;
    b.window_left = g_rank == 0 ? -2 : -1;
    expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &b, off, L), QATTN_ERR_INVALID_ARGUMENT, "window_left -2 on rank 0");
    expect_everywhere(qattn_dist_forward(g_ctx, g_dist, g_rank == 0 ? NULL : &p, off, L), QATTN_ERR_NULL_POINTER, "NULL params on rank 0");
    b = p;
    b.head_dim = g_rank == g_size - 1 ? 17 : 32; /* a bad value on the last rank */
    expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &b, off, L), QATTN_ERR_UNSUPPORTED, "head_dim 17 on the last rank");
    expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &p, off, L + 5), QATTN_ERR_INVALID_ARGUMENT, "shards leave a gap");
    expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &p, -1, L), QATTN_ERR_INVALID_ARGUMENT, "key_offset -1");
    if (g_size > 1) {
        b = p;
        b.seqlen_q = g_rank == 1 ? L - 1 : L;
        expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &b, off, L), QATTN_ERR_INVALID_ARGUMENT, "seqlen_q differs on rank 1");
        expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &p, 0, L), QATTN_ERR_INVALID_ARGUMENT, "overlapping shards");
    }
    b = p;
    b.cu_seqlens_q = b.cu_seqlens_k = (const int32_t *)q;
    expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &b, off, L), QATTN_ERR_UNSUPPORTED, "cu_seqlens");
    static const uint8_t dense_map[64] = {1}; /* block-sparse attention: CPU qattn_forward only */
    b = p;
    b.block_mask = dense_map, b.block_mask_q = b.block_mask_k = 64;
    expect_everywhere(qattn_dist_forward(g_ctx, g_dist, &b, off, L), QATTN_ERR_UNSUPPORTED, "block_mask");
    b.seqlen_k = b.seqlen_q = 8;
    expect_everywhere(qattn_star_encode(g_ctx, &b, k, k, 4), QATTN_ERR_UNSUPPORTED, "star: block_mask");
    expect_everywhere(qattn_dist_forward(g_ctx, NULL, &p, off, L), QATTN_ERR_NULL_POINTER, "NULL dist (local)");
    TH_CHECK(qattn_dist_forward(NULL, g_dist, &p, off, L) == QATTN_ERR_NULL_POINTER, "NULL ctx");

    /* Star phase 1 (local). */
    b = p;
    b.seqlen_k = len + 1;
    expect_everywhere(qattn_star_encode(g_ctx, &b, k, k, 4), QATTN_ERR_INVALID_ARGUMENT, "star: seqlen_q != seqlen_k");
    b = p;
    b.seqlen_q = b.seqlen_k = 8;
    expect_everywhere(qattn_star_encode(g_ctx, &b, NULL, k, 4), QATTN_ERR_NULL_POINTER, "star: anchor_k NULL");
    expect_everywhere(qattn_star_encode(g_ctx, &b, k, k, -2), QATTN_ERR_INVALID_ARGUMENT, "star: anchor_len -2");
    b.window_left = 2;
    expect_everywhere(qattn_star_encode(g_ctx, &b, k, k, 4), QATTN_ERR_UNSUPPORTED, "star: window");

    /* Decode. */
    qattn_kv_cache *c = make_cache(2, 32, QATTN_DTYPE_F16, 8, 1);
    TH_CHECK(qattn_kv_cache_append(g_ctx, c, 0, k, k, 4, QATTN_DTYPE_F32) == QATTN_OK, "append");
    int32_t id = 0;
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = q, dp.o = o, dp.seq_ids = &id, dp.n_seqs = 1, dp.n_heads = 2;
    TH_CHECK(qattn_dist_kv_decode(g_ctx, g_dist, c, NULL, &dp, g_size - 1) == QATTN_OK, "decode baseline: %s", qattn_ctx_last_error(g_ctx));
    expect_everywhere(qattn_dist_kv_decode(g_ctx, g_dist, c, NULL, &dp, g_size), QATTN_ERR_INVALID_ARGUMENT, "decode: tail_rank = size");
    qattn_decode_params db = dp;
    db.window_left = g_rank == 0 ? 8 : -1;
    expect_everywhere(qattn_dist_kv_decode(g_ctx, g_dist, c, NULL, &db, g_size - 1), QATTN_ERR_UNSUPPORTED, "decode: window_left on rank 0");
    db = dp;
    db.seqlen_q = 0;
    expect_everywhere(qattn_dist_kv_decode(g_ctx, g_dist, c, NULL, &db, g_size - 1), QATTN_ERR_INVALID_ARGUMENT, "decode: seqlen_q 0");
    qattn_kv_device_cache dev = {0};
    expect_everywhere(qattn_dist_kv_decode(g_ctx, g_dist, c, &dev, &dp, g_size - 1), QATTN_ERR_INVALID_ARGUMENT, "decode: dev with MPI");
    qattn_kv_cache_destroy(g_ctx, c);

    /* Creation and counters. */
    qattn_dist *d2 = (qattn_dist *)1;
    expect_everywhere(qattn_dist_create_mpi(g_ctx, NULL, &d2), QATTN_ERR_NULL_POINTER, "create_mpi: NULL comm");
    TH_CHECK(d2 == (qattn_dist *)1 || d2 == NULL, "create_mpi touched dist on failure unexpectedly");
    expect_everywhere(qattn_dist_create_nccl(g_ctx, &id, &d2), QATTN_ERR_UNSUPPORTED, "create_nccl on a CPU context");
    qattn_dist_info info;
    TH_CHECK(qattn_dist_get_info(g_dist, &info) == QATTN_OK, "get_info");
    TH_CHECK(info.rank == g_rank && info.size == g_size && info.transport == QATTN_DIST_MPI, "info: rank %d size %d", info.rank, info.size);
    TH_CHECK(info.collectives > 0 && (g_size == 1 ? info.bytes_sent == 0 : info.bytes_sent > 0), "info: %lld collectives, %lld bytes",
             (long long)info.collectives, (long long)info.bytes_sent);
    TH_CHECK(qattn_dist_get_info(NULL, &info) == QATTN_ERR_NULL_POINTER, "get_info(NULL)");
    free(q), free(k), free(o);
    th_set_context(NULL);
}

/* The bytes one exact call sends: the descriptor, then the all-to-all and the all-gather of
 * ceil(B*Lq/N)*H records of D+1 floats to each of the N-1 other ranks. */
static void test_counters(void) {
    if (!th_selected("counters")) return;
    const int64_t L = 50, H = 2, D = 32;
    float *q = random_f32(L * H * D, 5), *o = th_xmalloc(L * H * D * 4);
    int64_t off, len;
    even_shard(L, g_rank, g_size, &off, &len);
    qattn_params p;
    qattn_params_init(&p);
    p.q = q, p.k = q + off * H * D, p.v = q + off * H * D, p.o = o;
    p.batch = 1, p.seqlen_q = L, p.seqlen_k = len, p.n_heads = (int32_t)H, p.n_kv_heads = (int32_t)H, p.head_dim = (int32_t)D;
    qattn_params_set_contiguous(&p);
    qattn_dist_reset_stats(g_dist);
    TH_CHECK(qattn_dist_forward(g_ctx, g_dist, &p, off, L) == QATTN_OK, "counters: %s", qattn_ctx_last_error(g_ctx));
    qattn_dist_info info;
    qattn_dist_get_info(g_dist, &info);
    int64_t chunk = (L + g_size - 1) / g_size;
    int64_t want = (g_size - 1) * (10 * 8 + 2 * chunk * H * (D + 1) * 4);
    TH_CHECK(info.bytes_sent == want && info.collectives == 3, "counters: %lld bytes in %lld collectives, expected %lld in 3",
             (long long)info.bytes_sent, (long long)info.collectives, (long long)want);
    free(q), free(o);
}

int main(int argc, char **argv) {
#if defined(__SANITIZE_ADDRESS__)
    __lsan_disable(); /* MPI_Init's memory: some of it comes from plugins it loads and unloads */
#endif
    MPI_Init(&argc, &argv);
#if defined(__SANITIZE_ADDRESS__)
    __lsan_enable();
#endif
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    th_init("test_dist");
    g_ctx = th_ctx(QATTN_ISA_AUTO, 1);
    MPI_Comm world = MPI_COMM_WORLD;
    qattn_status s = g_ctx ? qattn_dist_create_mpi(g_ctx, &world, &g_dist) : QATTN_ERR_BACKEND;
    TH_CHECK(s == QATTN_OK, "qattn_dist_create_mpi: %s", g_ctx ? qattn_ctx_last_error(g_ctx) : "no context");
    if (s == QATTN_OK) {
        if (g_rank == 0) printf("[test_dist] %d rank(s)\n", g_size);
        for (size_t i = 0; i < sizeof fcases / sizeof fcases[0]; i++) test_forward_case(&fcases[i], th_derive_seed(100 + 10 * i));
        test_star(397, 17, 37, 4, 2, 64, th_derive_seed(500), true);
        test_star(397, 17, 37, 4, 2, 8, th_derive_seed(505), true);
        test_star(4096, 64, 512, 2, 1, 64, th_derive_seed(510), false); /* the long-context sample */
        int32_t dts[2] = {QATTN_DTYPE_F16, QATTN_DTYPE_I8};
        for (int t = 0; t < 2; t++) {
            test_decode(dts[t], 1, 64, th_derive_seed(600 + t));
            test_decode(dts[t], 4, 64, th_derive_seed(610 + t));
            test_decode(dts[t], 4, 16, th_derive_seed(620 + t)); /* a head dim below one 32-byte step */
        }
        test_bad_arguments();
        test_counters();
    }
    qattn_dist_destroy(g_dist);
    qattn_ctx_destroy(g_ctx);
#if defined(__SANITIZE_ADDRESS__)
    /* Leak check before MPI_Finalize: MPI's own memory is still reachable here, while after it
     * the plugins it unloads leave allocations LSan cannot attribute (CTest sets
     * leak_check_at_exit=0 for this program). */
    TH_CHECK(__lsan_do_recoverable_leak_check() == 0, "LeakSanitizer found leaks (above)");
#endif
    int rc = th_finish();
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return worst;
}
#endif
