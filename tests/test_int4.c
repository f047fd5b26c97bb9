/* Precision INT4 (src/cpu/lowp_int4.c, docs/FORMAT.md section 8): what is not one (case x target)
 * oracle check. Bad inputs are refused (a precision past INT4, NaN input), qattn_supports and
 * qattn_workspace_size answer for INT4, a caller workspace of exactly the size asked for works and
 * one byte less is refused, and all-zero Q against huge K stays finite. INT4 against the FP64
 * oracle (tolerance 1.5 x the 4-bit baseline, worse than INT8, codes in [-7, 7]) on every ISA and
 * thread count, bitwise identical across them, is in the op table (tests/test_ops.c, tests/ops.c). */
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
    for (int64_t i = 0; i < pr->nq; i++) pr->q[i] = (float)rnd_norm();
    for (int64_t i = 0; i < pr->nk; i++) {
        pr->k[i] = (float)rnd_norm(), pr->v[i] = (float)rnd_norm();
        if (c->outliers && (i % c->d) % 32 == 5) pr->k[i] = pr->k[i] * 12.0f + 10.0f;
    }
    p->q = pr->q, p->k = pr->k, p->v = pr->v, p->o = pr->o, p->lse = pr->lse;
}

static void prob_free(prob *pr) {
    free(pr->q), free(pr->k), free(pr->v), free(pr->o), free(pr->lse);
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
    check_bad_inputs();
    return th_finish();
}
