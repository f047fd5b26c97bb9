/* Precision INT4 tests (src/cpu/lowp_int4.c, docs/FORMAT.md section 8): every result against the
 * FP64 oracle on fresh random inputs (D 64/80/128/256, tails, one query, causal with Lq != Lk,
 * GQA, varlen with an empty sequence), outputs poisoned first; the Q/K codes in [-7, 7]; results
 * bit-identical across ref / avx2 / avxvnni / avx512 and thread counts; bad inputs refused.
 *
 * Tolerance (docs/ARCHITECTURE.md "Tolerances", docs/FORMAT.md section 8). Baseline = relative L2 error of "quantize Q
 * and K to 4-bit codes exactly as precision INT4 does (channel balancing, rotation, per-token
 * scales amax / 7), V to INT8 per token minus its mean, dequantize, then FP64 attention". A 4-bit
 * step is amax / 7, 127 / 7 = 18x the INT8 step, so the Q/K rounding noise (variance step^2 / 12
 * per element) is about 330x INT8's and dominates the baseline: on N(0,1) rows of D 128 the
 * score noise is about scale * sqrt(D (dq^2 E k^2 + dk^2 E q^2)) ~ 0.16 in natural-log units
 * against ~0.009 for INT8. The kernel adds only the u8 rounding of P (step 1/255 of the row's
 * largest weight, the INT8 default scheme's), the size of V's own 8-bit rounding, i.e. under a
 * tenth of the Q/K term: the error must stay within k = 1.5 x baseline + 1e-6 (measured ratios
 * 0.99-1.01). INT4 is far less accurate than INT8: the test also checks that INT4's error is
 * larger than INT8's on the same inputs (the codes really are 4-bit). LSE: within 2x the
 * baseline's largest LSE error + 0.05. */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#include "harness.h"
#include "qattn.h"
#include "quant/lowp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Checks and the PRNG come from the shared harness (seed: QATTN_TEST_SEED, printed by th_init). */
#define CHECK(cond, ...) TH_CHECK((cond), __VA_ARGS__)
static th_rng rng;
static double rnd_norm(void) { return th_rng_normal(&rng); }
static void *xcalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static qattn_ctx *make_ctx(int32_t isa, int threads) {
    qattn_ctx_options o;
    memset(&o, 0, sizeof o);
    o.isa = isa, o.n_threads = threads, o.backend = QATTN_BACKEND_CPU;
    qattn_ctx *ctx = NULL;
    return qattn_ctx_create(&ctx, &o) == QATTN_OK ? ctx : NULL;
}

/* One case: contiguous [B, L, H, D] (varlen: packed [total, H, D] with cu_q / cu_k). */
typedef struct tcase {
    const char *name;
    int64_t batch, lq, lk;
    int32_t heads, kv_heads, d, causal;
    int varlen;               /* cu_q / cu_k below */
    int32_t cu_q[4], cu_k[4]; /* batch + 1 offsets */
    int outliers;             /* K channels c % 32 == 5: x12 + 10 (the accuracy tool's outlier input) */
} tcase;

typedef struct prob {
    qattn_params p;
    float *q, *k, *v, *o, *lse;
    double *o64, *lse64;
    int64_t nq, nk, no, nlse;
} prob;

static void prob_make(prob *pr, const tcase *c) {
    memset(pr, 0, sizeof *pr);
    qattn_params *p = &pr->p;
    qattn_params_init(p);
    p->batch = c->batch, p->seqlen_q = c->lq, p->seqlen_k = c->lk;
    p->n_heads = c->heads, p->n_kv_heads = c->kv_heads, p->head_dim = c->d, p->causal = c->causal;
    int64_t tq = c->varlen ? c->cu_q[c->batch] : c->batch * c->lq, tk = c->varlen ? c->cu_k[c->batch] : c->batch * c->lk;
    if (c->varlen) p->cu_seqlens_q = c->cu_q, p->cu_seqlens_k = c->cu_k;
    qattn_params_set_contiguous(p);
    pr->nq = pr->no = tq * c->heads * c->d, pr->nk = tk * c->kv_heads * c->d, pr->nlse = tq * c->heads;
    pr->q = xcalloc((size_t)pr->nq * 4), pr->k = xcalloc((size_t)pr->nk * 4), pr->v = xcalloc((size_t)pr->nk * 4);
    pr->o = xcalloc((size_t)pr->no * 4), pr->lse = xcalloc((size_t)pr->nlse * 4);
    pr->o64 = xcalloc((size_t)pr->no * 8), pr->lse64 = xcalloc((size_t)pr->nlse * 8);
    for (int64_t i = 0; i < pr->nq; i++) pr->q[i] = (float)rnd_norm();
    for (int64_t i = 0; i < pr->nk; i++) {
        pr->k[i] = (float)rnd_norm(), pr->v[i] = (float)rnd_norm();
        if (c->outliers && (i % c->d) % 32 == 5) pr->k[i] = pr->k[i] * 12.0f + 10.0f;
    }
    p->q = pr->q, p->k = pr->k, p->v = pr->v, p->o = pr->o, p->lse = pr->lse;
}

static void prob_free(prob *pr) {
    free(pr->q), free(pr->k), free(pr->v), free(pr->o), free(pr->lse), free(pr->o64), free(pr->lse64);
}

/* NaN with a payload the library never produces, in o and lse. */
static void poison(prob *pr) {
    const uint32_t bits = 0x7fc0dead;
    for (int64_t i = 0; i < pr->no; i++) memcpy(&pr->o[i], &bits, 4);
    for (int64_t i = 0; i < pr->nlse; i++) memcpy(&pr->lse[i], &bits, 4);
}

static double rel_l2(const float *o, const double *r, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)o[i] - r[i];
        num += d * d, den += r[i] * r[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The baseline of the header comment; *lse_err: its largest LSE error on rows that see a key. */
static double baseline_error(qattn_ctx *ctx, const prob *pr, double *lse_err) {
    qattn_lowp_cfg cfg;
    qattn_lowp_int4_cfg(&cfg);
    qattn_params p = pr->p;
    const int64_t nel[3] = {pr->nq, pr->nk, pr->nk};
    qattn_int8_tensor t[3];
    memset(t, 0, sizeof t);
    float *deq[3];
    for (int w = 0; w < 3; w++) {
        int64_t heads = w ? p.n_kv_heads : p.n_heads, ns;
        qattn_int8_scale_count(ctx, &p, w, QATTN_QUANT_PER_TOKEN, 1, &ns);
        deq[w] = xcalloc((size_t)nel[w] * 4);
        t[w].data = xcalloc((size_t)nel[w]), t[w].scale = xcalloc((size_t)ns * 4 + 4);
        t[w].mean = w ? xcalloc((size_t)(p.batch * heads * p.head_dim) * 4) : NULL;
        t[w].granularity = QATTN_QUANT_PER_TOKEN, t[w].block_size = 1;
        t[w].head_stride = p.head_dim, t[w].seq_stride = heads * p.head_dim;
        t[w].batch_stride = (w ? p.seqlen_k : p.seqlen_q) * t[w].seq_stride;
    }
    qattn_status s = qattn_quantize_qk_smoothed(ctx, &p, cfg.qk_smooth, cfg.qk_smooth_min_exp, cfg.qk_rotate, cfg.qk_code_max, NULL, &t[0],
                                                &t[1], NULL, NULL);
    CHECK(s == QATTN_OK, "baseline quantize q/k: %s", qattn_ctx_last_error(ctx));
    s = qattn_quantize_int8(ctx, &p, QATTN_TENSOR_V, &t[2]);
    CHECK(s == QATTN_OK, "baseline quantize v: %s", qattn_ctx_last_error(ctx));
    int bad_code = 0, has_seven = 0;
    for (int w = 0; w < 2; w++)
        for (int64_t i = 0; i < nel[w]; i++) bad_code |= t[w].data[i] < -7 || t[w].data[i] > 7, has_seven |= abs(t[w].data[i]) == 7;
    CHECK(!bad_code, "a Q/K code outside [-7, 7]");
    CHECK(nel[0] == 0 || has_seven, "no Q/K code reaches +-7 (each row's largest value should)");
    for (int w = 0; w < 3; w++) {
        s = qattn_dequantize_int8(ctx, &p, w, &t[w], deq[w]);
        CHECK(s == QATTN_OK, "dequantize %d: %s", w, qattn_ctx_last_error(ctx));
        free(t[w].data), free(t[w].scale), free(t[w].mean);
    }
    p.q = deq[0], p.k = deq[1], p.v = deq[2];
    double *o = xcalloc((size_t)pr->no * 8), *lse = xcalloc((size_t)pr->nlse * 8);
    CHECK(qattn_oracle_f64(ctx, &p, o, lse) == QATTN_OK, "baseline oracle: %s", qattn_ctx_last_error(ctx));
    double num = 0, den = 0;
    for (int64_t i = 0; i < pr->no; i++) num += (o[i] - pr->o64[i]) * (o[i] - pr->o64[i]), den += pr->o64[i] * pr->o64[i];
    *lse_err = 0;
    for (int64_t i = 0; i < pr->nlse; i++)
        if (isfinite(pr->lse64[i]) && fabs(lse[i] - pr->lse64[i]) > *lse_err) *lse_err = fabs(lse[i] - pr->lse64[i]);
    free(o), free(lse), free(deq[0]), free(deq[1]), free(deq[2]);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static const tcase cases[] = {
    {"D 128, L 203 x 203", 2, 203, 203, 4, 4, 128, 0, 0, {0}, {0}, 0},
    {"D 64 causal Lq 113 < Lk 300 GQA 8/2", 1, 113, 300, 8, 2, 64, 1, 0, {0}, {0}, 0},
    {"D 80 causal Lq 17 Lk 17", 2, 17, 17, 2, 1, 80, 1, 0, {0}, {0}, 0},
    {"D 256 one query, Lk 129, MQA 4/1", 1, 1, 129, 4, 1, 256, 0, 0, {0}, {0}, 0},
    {"D 128 causal Lq 300 > Lk 113 (fully masked rows)", 1, 300, 113, 2, 2, 128, 1, 0, {0}, {0}, 0},
    {"D 64 varlen with an empty sequence, GQA 4/2", 3, 70, 90, 4, 2, 64, 0, 1, {0, 70, 70, 103}, {0, 90, 90, 131}, 0},
    {"D 128 varlen causal, empty first", 3, 65, 80, 2, 1, 128, 1, 1, {0, 0, 65, 82}, {0, 0, 80, 97}, 0},
    {"D 128 outlier K channels, L 256, GQA 8/2", 1, 256, 256, 8, 2, 128, 0, 0, {0}, {0}, 1},
};

static void check_case(const tcase *c) {
    qattn_ctx *ref = make_ctx(QATTN_ISA_REF, 1);
    CHECK(ref != NULL, "ref context");
    if (!ref) return;
    prob pr;
    prob_make(&pr, c);
    CHECK(qattn_oracle_f64(ref, &pr.p, pr.o64, pr.lse64) == QATTN_OK, "%s: oracle: %s", c->name, qattn_ctx_last_error(ref));
    qattn_params p = pr.p;
    /* INT8 first: INT4 must be worse on the same inputs */
    p.precision = QATTN_PRECISION_INT8;
    poison(&pr);
    CHECK(qattn_forward(ref, &p) == QATTN_OK, "%s int8: %s", c->name, qattn_ctx_last_error(ref));
    double err8 = rel_l2(pr.o, pr.o64, pr.no);

    p.precision = QATTN_PRECISION_INT4;
    poison(&pr);
    qattn_status s = qattn_forward(ref, &p);
    CHECK(s == QATTN_OK, "%s int4: %s", c->name, qattn_ctx_last_error(ref));
    int nonfinite = 0;
    for (int64_t i = 0; i < pr.no; i++) nonfinite += !isfinite(pr.o[i]);
    for (int64_t i = 0; i < pr.nlse; i++) nonfinite += isnan(pr.lse[i]) || (isinf(pr.lse[i]) != isinf(pr.lse64[i]));
    CHECK(nonfinite == 0, "%s: %d outputs not written or not finite (lse -inf exactly where the oracle's is)", c->name, nonfinite);
    double err = rel_l2(pr.o, pr.o64, pr.no), lse_base, base = baseline_error(ref, &pr, &lse_base);
    double tol = 1.5 * base + 1e-6;
    CHECK(err <= tol, "%s: int4 rel L2 %.3e > 1.5 x baseline %.3e", c->name, err, base);
    CHECK(err > err8, "%s: int4 rel L2 %.3e not above int8's %.3e", c->name, err, err8);
    double lse_err = 0;
    for (int64_t i = 0; i < pr.nlse; i++)
        if (isfinite(pr.lse64[i]) && fabs(pr.lse[i] - pr.lse64[i]) > lse_err) lse_err = fabs(pr.lse[i] - pr.lse64[i]);
    CHECK(lse_err <= 2.0 * lse_base + 0.05, "%s: lse error %.3e > 2 x baseline %.3e + 0.05", c->name, lse_err, lse_base);
    printf("  %-52s int4 rel L2 %.3e (baseline %.3e, ratio %.3f; int8 %.3e)\n", c->name, err, base, base > 0 ? err / base : 0.0, err8);

    /* bit-identical: every ISA this CPU has, 1 and 2 threads, against ref with 1 thread */
    float *o_ref = xcalloc((size_t)pr.no * 4), *lse_ref = xcalloc((size_t)pr.nlse * 4);
    memcpy(o_ref, pr.o, (size_t)pr.no * 4), memcpy(lse_ref, pr.lse, (size_t)pr.nlse * 4);
    const int32_t isas[4] = {QATTN_ISA_REF, QATTN_ISA_AVX2, QATTN_ISA_AVXVNNI, QATTN_ISA_AVX512};
    const char *names[4] = {"ref", "avx2", "avxvnni", "avx512"};
    for (int ii = 0; ii < 4; ii++)
        for (int th = 1; th <= 2; th++) {
            if (ii == 0 && th == 1) continue;
            qattn_ctx *ctx = make_ctx(isas[ii], th);
            if (!ctx) continue; /* the CPU lacks it */
            poison(&pr);
            s = qattn_forward(ctx, &p);
            CHECK(s == QATTN_OK, "%s %s: %s", c->name, names[ii], qattn_ctx_last_error(ctx));
            CHECK(!memcmp(pr.o, o_ref, (size_t)pr.no * 4) && !memcmp(pr.lse, lse_ref, (size_t)pr.nlse * 4),
                  "%s: %s with %d threads differs from ref bit for bit", c->name, names[ii], th);
            qattn_ctx_destroy(ctx);
        }
    free(o_ref), free(lse_ref);
    prob_free(&pr);
    qattn_ctx_destroy(ref);
}

static void check_bad_inputs(void) {
    qattn_ctx *ctx = make_ctx(QATTN_ISA_AUTO, 1);
    const tcase c = {"bad", 1, 16, 16, 2, 1, 64, 0, 0, {0}, {0}, 0};
    prob pr;
    prob_make(&pr, &c);
    qattn_params p = pr.p;
    p.precision = QATTN_PRECISION_INT4 + 1;
    CHECK(qattn_forward(ctx, &p) == QATTN_ERR_INVALID_ARGUMENT && strstr(qattn_ctx_last_error(ctx), "precision"),
          "precision 8 accepted or a wrong message: %s", qattn_ctx_last_error(ctx));
    p.precision = QATTN_PRECISION_INT4;
    CHECK(qattn_supports(ctx, &p) == QATTN_OK, "supports int4: %s", qattn_ctx_last_error(ctx));
    size_t ws = 0;
    CHECK(qattn_workspace_size(ctx, &p, &ws) == QATTN_OK && ws > 0, "workspace size of int4");
    /* a caller workspace of exactly that size works, one byte less is refused */
    void *mem = NULL;
    CHECK(posix_memalign(&mem, 64, ws) == 0, "alloc");
    p.workspace = mem, p.workspace_size = ws;
    CHECK(qattn_forward(ctx, &p) == QATTN_OK, "int4 with its workspace: %s", qattn_ctx_last_error(ctx));
    p.workspace_size = ws - 1;
    CHECK(qattn_forward(ctx, &p) == QATTN_ERR_CAPACITY, "int4 with a short workspace");
    p.workspace = NULL, p.workspace_size = 0;
    free(mem);
    pr.k[5 * 64 + 3] = NAN; /* key 5 of kv head 0 */
    qattn_status s = qattn_forward(ctx, &p);
    CHECK(s == QATTN_ERR_INVALID_ARGUMENT && strstr(qattn_ctx_last_error(ctx), "non-finite"), "NaN k with int4: %d %s", s,
          qattn_ctx_last_error(ctx));
    pr.k[5 * 64 + 3] = 0.0f;
    for (int64_t i = 0; i < pr.nq; i++) pr.q[i] = 0.0f; /* all-zero Q: scale 0, no division */
    for (int64_t i = 0; i < pr.nk; i++) pr.k[i] = 3e37f * (float)((i % 7) - 3);
    s = qattn_forward(ctx, &p);
    CHECK(s == QATTN_OK, "zero q, huge k: %s", qattn_ctx_last_error(ctx));
    int bad = 0;
    for (int64_t i = 0; i < pr.no; i++) bad += !isfinite(pr.o[i]);
    CHECK(bad == 0, "zero q, huge k: %d non-finite outputs", bad);
    prob_free(&pr);
    qattn_ctx_destroy(ctx);
}

int main(void) {
    th_init("test_int4");
    th_rng_init(&rng, th_base_seed());
    printf("test_int4: precision INT4 against the FP64 oracle (tolerance 1.5 x the 4-bit baseline)\n");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i]);
    check_bad_inputs();
    return th_finish();
}
