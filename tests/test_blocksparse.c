/* Block-sparse attention (qattn_params.block_mask) on the CPU against the FP64 oracle, which
 * honours the mask: every ISA this CPU has, 1/2/3 threads (bitwise identical), FP32/FP16/BF16,
 * mask blocks of 16, 48, 64 and 128 against the kernels' 64-key tiles and 256-row units, causal and
 * windows on top, Lq != Lk, varlen with an empty sequence, GQA with shared and per-head maps,
 * all-zero mask rows, split-KV decode, and NaN in K/V of blocks no row computes (a skipped block
 * is never read into a row); softcap and ALiBi slopes on top of the mask (the oracle applies them
 * too), on rows cut into runs of live query blocks. Then the arguments the library must refuse.
 *
 * Tolerance: as tests/test_forward.c (the same kernels; the mask only removes keys): FP32 relative
 * L2 1e-5 (sqrt(D + Lk) * 2^-24 rounding with headroom); FP16/BF16 precision adds 2x the baseline
 * "round the inputs, then FP64"; half-precision outputs add their unit roundoff. LSE within
 * 1e-5 * (1 + |lse|) (+ 2x the baseline's LSE error); rows that see no key: zeros, LSE -inf. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FP32_REL_L2 1e-5
#define FP32_LSE_REL 1e-5
#define BASELINE_FACTOR 2.0

typedef struct mask_spec {
    int bq, bk;
    double density;   /* probability that a (query block, key block) pair is computed */
    bool share_heads; /* head stride 0: one map for every head */
    bool share_batch; /* batch stride 0 */
    bool zero_rows;   /* every third (head, query block) row all zero */
    int pad;          /* row stride nk + pad */
    bool nan_dead;    /* key block 1 hidden everywhere, its K/V NaN */
} mask_spec;

typedef struct bs_case {
    th_case c;
    mask_spec m;
    float softcap; /* 0 = off */
    int alibi;     /* 0 none, 1 one [H] row of slopes, 2 slopes [B, H] */
} bs_case;

static th_case make_case(const char *name, int64_t B, int64_t Lq, int64_t Lk, int H, int HK, int D) {
    th_case c;
    memset(&c, 0, sizeof c);
    c.name = name;
    c.batch = B, c.seqlen_q = Lq, c.seqlen_k = Lk;
    c.n_heads = H, c.n_kv_heads = HK, c.head_dim = D;
    c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F32;
    c.precision = QATTN_PRECISION_AUTO;
    c.window_left = c.window_right = -1;
    c.with_lse = true;
    return c;
}

static void set_varlen(th_case *c, int n, const int32_t *cu_q, const int32_t *cu_k) {
    c->varlen = true;
    c->batch = n;
    int64_t mq = 0, mk = 0;
    for (int b = 0; b <= n; b++) {
        c->cu_q[b] = cu_q[b], c->cu_k[b] = cu_k[b];
        if (b > 0) {
            mq = cu_q[b] - cu_q[b - 1] > mq ? cu_q[b] - cu_q[b - 1] : mq;
            mk = cu_k[b] - cu_k[b - 1] > mk ? cu_k[b] - cu_k[b - 1] : mk;
        }
    }
    c->seqlen_q = mq, c->seqlen_k = mk;
}

static mask_spec spec(int bq, int bk, double density) {
    mask_spec m;
    memset(&m, 0, sizeof m);
    m.bq = bq, m.bk = bk, m.density = density;
    return m;
}

static int build_cases(bs_case *cases) {
    int n = 0;
    bs_case x;
    memset(&x, 0, sizeof x);
#define ADD() (cases[n++] = x)
    /* block sizes against the 64-key tiles and the 256-row units */
    x.c = make_case("bq64-bk64-perhead", 2, 300, 300, 4, 4, 64), x.m = spec(64, 64, 0.4), ADD();
    x.c = make_case("bq16-bk16-gqa-shared-causal-lq<lk", 1, 200, 333, 8, 2, 64), x.c.causal = 1, x.m = spec(16, 16, 0.5),
    x.m.share_heads = true, ADD();
    x.c = make_case("bq128-bk128-causal-D128", 1, 517, 517, 2, 1, 128), x.c.causal = 1, x.m = spec(128, 128, 0.5), ADD();
    x.c = make_case("bq64-bk16-window", 1, 203, 290, 4, 2, 64), x.c.window_left = 70, x.c.window_right = 20, x.m = spec(64, 16, 0.5), ADD();
    x.c = make_case("bq48-bk80-lq>lk-causal", 2, 290, 203, 4, 2, 80), x.c.causal = 1, x.m = spec(48, 80, 0.6), x.m.pad = 3, ADD();
    x.c = make_case("bq16-bk128-gqa4-perhead", 1, 260, 400, 8, 2, 64), x.m = spec(16, 128, 0.3), ADD();
    x.c = make_case("zero-rows-shared-batch", 2, 150, 150, 4, 2, 64), x.m = spec(32, 32, 0.7), x.m.zero_rows = true,
    x.m.share_batch = true, ADD();
    x.c = make_case("nan-in-hidden-block", 2, 130, 200, 4, 2, 64), x.m = spec(64, 64, 0.6), x.m.nan_dead = true, ADD();
    x.c = make_case("nan-in-hidden-block-bk16-causal", 1, 150, 150, 8, 1, 64), x.c.causal = 1, x.m = spec(16, 16, 0.6), x.m.nan_dead = true,
    ADD();
    x.c = make_case("one-query", 3, 1, 213, 4, 2, 64), x.m = spec(16, 32, 0.5), ADD();
    x.c = make_case("dense-mask", 1, 113, 203, 4, 2, 64), x.m = spec(64, 64, 1.0), ADD();
    x.c = make_case("empty-mask", 1, 113, 203, 4, 2, 64), x.m = spec(64, 64, 0.0), ADD();
    /* varlen with an empty q sequence and an empty k sequence; blocks count from each start */
    {
        static const int32_t cu_q[] = {0, 100, 100, 360, 361}, cu_k[] = {0, 130, 140, 140, 440};
        x.c = make_case("varlen", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.m = spec(32, 48, 0.5), ADD();
        x.c = make_case("varlen-causal-kvcache", 0, 0, 0, 8, 2, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.c.causal = 1, x.c.kv_cache = true,
        x.m = spec(64, 64, 0.5), ADD();
    }
    /* dtypes and precisions */
    x.c = make_case("f16-f16", 1, 300, 300, 4, 2, 64), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_F16, x.c.causal = 1, x.m = spec(64, 64, 0.5),
    ADD();
    x.c = make_case("bf16-bf16-D128", 1, 260, 260, 4, 4, 128), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_BF16, x.m = spec(128, 64, 0.5), ADD();
    x.c = make_case("prec-fp16", 1, 200, 300, 4, 2, 64), x.c.precision = QATTN_PRECISION_FP16, x.m = spec(16, 64, 0.5), ADD();
    x.c = make_case("prec-bf16-qo-bhld", 1, 200, 300, 4, 2, 64), x.c.precision = QATTN_PRECISION_BF16, x.c.qo_bhld = true,
    x.m = spec(64, 16, 0.5), ADD();
    /* decode shapes: few units, split KV (splits cut at equal live blocks), all kv heads per unit */
    x.c = make_case("decode-split", 1, 1, 3000, 8, 2, 128), x.m = spec(16, 64, 0.3), ADD();
    x.c = make_case("decode-split-lq4-causal-perhead", 2, 4, 2048, 4, 2, 64), x.c.causal = 1, x.m = spec(16, 16, 0.2), ADD();
    x.c = make_case("decode-split-f32-direct-mqa", 1, 1, 2500, 4, 1, 64), x.m = spec(16, 128, 0.25), ADD();
    /* softcap and ALiBi with a mask: per-row slopes and diagonals follow each run of live query
     * blocks (runs start inside a unit), splits and varlen count distances per sequence */
    x.c = make_case("softcap-alibi-bq16-bk64-perhead", 2, 300, 300, 4, 2, 64), x.m = spec(16, 64, 0.4), x.softcap = 20.0f, x.alibi = 2, ADD();
    x.c = make_case("softcap-alibi-causal-lq<lk-gqa4", 1, 260, 400, 8, 2, 80), x.c.causal = 1, x.m = spec(32, 48, 0.5), x.softcap = 5.0f,
    x.alibi = 1, ADD();
    x.c = make_case("alibi-decode-split-causal", 2, 4, 2048, 4, 2, 64), x.c.causal = 1, x.m = spec(16, 16, 0.3), x.softcap = 0.0f, x.alibi = 2,
    ADD();
    {
        static const int32_t cu_q[] = {0, 100, 100, 360, 361}, cu_k[] = {0, 130, 140, 140, 440};
        x.c = make_case("softcap-alibi-varlen", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.m = spec(32, 48, 0.5), x.softcap = 30.0f,
        x.alibi = 2, ADD();
    }
    x.c = make_case("softcap-alibi-prec-bf16", 1, 200, 300, 4, 2, 64), x.c.precision = QATTN_PRECISION_BF16, x.m = spec(64, 16, 0.5),
    x.softcap = 10.0f, x.alibi = 1, ADD();
#undef ADD
    return n;
}

/* ---------------------------------------------------------------- masks */

typedef struct mask_buf {
    uint8_t *bytes;
    int64_t nq, nk, bs, hs, rs;
} mask_buf;

static void mask_make(mask_buf *mb, const mask_spec *m, const th_case *c, th_rng *rng) {
    mb->nq = (c->seqlen_q + m->bq - 1) / m->bq;
    mb->nk = (c->seqlen_k + m->bk - 1) / m->bk;
    if (mb->nq < 1) mb->nq = 1;
    if (mb->nk < 1) mb->nk = 1;
    mb->rs = mb->nk + m->pad;
    mb->hs = m->share_heads ? 0 : mb->nq * mb->rs;
    int64_t heads = m->share_heads ? 1 : c->n_heads;
    mb->bs = m->share_batch ? 0 : heads * mb->nq * mb->rs;
    int64_t batches = m->share_batch ? 1 : c->batch;
    size_t size = (size_t)(batches * heads * mb->nq * mb->rs);
    mb->bytes = th_xmalloc(size + 1);
    for (size_t i = 0; i < size; i++) mb->bytes[i] = th_rng_uniform(rng, 0, 1) < m->density ? (uint8_t)(1 + th_rng_u64(rng) % 255) : 0;
    for (int64_t b = 0; b < batches; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t qb = 0; qb < mb->nq; qb++) {
                uint8_t *row = mb->bytes + b * mb->bs + h * mb->hs + qb * mb->rs;
                if (m->zero_rows && (h + qb) % 3 == 0) memset(row, 0, (size_t)mb->nk);
                if (m->nan_dead && mb->nk > 1) row[1] = 0;
                for (int64_t j = mb->nk; j < mb->rs; j++) row[j] = 0xAB; /* padding: never read */
            }
}

static void mask_attach(qattn_params *p, const mask_buf *mb, const mask_spec *m) {
    p->block_mask = mb->bytes;
    p->block_mask_q = m->bq, p->block_mask_k = m->bk;
    p->block_mask_batch_stride = mb->bs, p->block_mask_head_stride = mb->hs, p->block_mask_row_stride = mb->rs;
}

/* NaN into K and V of key block 1 of every sequence (hidden everywhere by mask_make). */
static void poison_hidden_block(th_problem *pr, const mask_spec *m) {
    for (int64_t b = 0; b < pr->c.batch; b++) {
        int64_t lk = th_seq_len_k(pr, b);
        for (int64_t j = m->bk; j < 2 * m->bk && j < lk; j++)
            for (int h = 0; h < pr->c.n_kv_heads; h++)
                for (int c = 0; c < pr->c.head_dim; c++) {
                    th_problem_set(pr, &pr->k, b, j, h, c, NAN);
                    th_problem_set(pr, &pr->v, b, j, h, c, NAN);
                }
    }
}

/* ---------------------------------------------------------------- one case */

static double output_rounding(int32_t o_dtype) {
    return o_dtype == QATTN_DTYPE_F16 ? 0x1.0p-11 : o_dtype == QATTN_DTYPE_BF16 ? 0x1.0p-8 : 0.0;
}
static bool rounds_inputs(int32_t precision) { return precision == QATTN_PRECISION_FP16 || precision == QATTN_PRECISION_BF16; }
static size_t dtype_bytes(int32_t d) { return d == QATTN_DTYPE_F32 ? 4 : 2; }

static long g_runs;

static void run_case(const bs_case *bc, int index, const int32_t *isas, int n_isas) {
    th_case c = bc->c;
    c.seed = th_derive_seed((uint64_t)index);
    char desc[1200], cdesc[1024];
    th_describe(&c, cdesc, sizeof cdesc);
    snprintf(desc, sizeof desc, "%s block_mask=%dx%d density=%.2f%s%s%s%s pad=%d softcap=%g alibi=%s", cdesc, bc->m.bq, bc->m.bk,
             bc->m.density, bc->m.share_heads ? " shared-heads" : "", bc->m.share_batch ? " shared-batch" : "",
             bc->m.zero_rows ? " zero-rows" : "", bc->m.nan_dead ? " nan-in-hidden-block" : "", bc->m.pad, (double)bc->softcap,
             bc->alibi == 2 ? "[B,H]" : bc->alibi == 1 ? "[H]" : "none");
    if (!th_selected(desc)) return;
    th_set_context(desc);
    printf("  %s\n", desc);
    th_problem pr;
    th_problem_make(&pr, &c);
    th_rng rng;
    th_rng_init(&rng, c.seed ^ 0x5eedu);
    mask_buf mb;
    mask_make(&mb, &bc->m, &c, &rng);
    mask_attach(&pr.p, &mb, &bc->m);
    if (bc->m.nan_dead) poison_hidden_block(&pr, &bc->m);
    float *slopes = NULL;
    pr.p.softcap = bc->softcap;
    if (bc->alibi) {
        int64_t n_slopes = (bc->alibi == 2 ? c.batch : 1) * c.n_heads;
        slopes = th_xmalloc((size_t)n_slopes * sizeof *slopes);
        for (int64_t i = 0; i < n_slopes; i++) slopes[i] = (float)th_rng_uniform(&rng, 0.01, 0.5);
        pr.p.alibi_slopes = slopes, pr.p.alibi_batch_stride = bc->alibi == 2 ? c.n_heads : 0;
    }

    size_t n_out = (size_t)pr.rows * (size_t)c.n_heads * (size_t)c.head_dim;
    double *ref = th_xmalloc(n_out * sizeof *ref), *ref_lse = th_xmalloc((pr.lse_elems + 1) * sizeof *ref_lse);
    float *out = th_xmalloc(n_out * sizeof *out + 1);
    void *first_o = NULL;
    float *first_lse = NULL;
    if (!th_oracle(&pr, ref, ref_lse)) goto done;
    double tol = FP32_REL_L2 + output_rounding(c.o_dtype), lse_base = 0.0;
    if (rounds_inputs(c.precision)) {
        th_problem rounded;
        th_problem_rounded_copy(&rounded, &pr, c.precision);
        double *bo = th_xmalloc(n_out * sizeof *bo), *bl = th_xmalloc((pr.lse_elems + 1) * sizeof *bl);
        if (th_oracle(&rounded, bo, bl)) {
            tol += BASELINE_FACTOR * th_compare_f64(bo, ref, n_out).rel_l2;
            lse_base = th_compare_f64(bl, ref_lse, pr.lse_elems).max_abs;
        }
        free(bo), free(bl);
        free(rounded.q.buf), free(rounded.k.buf), free(rounded.v.buf);
    }
    size_t o_size = pr.o.elems * dtype_bytes(pr.o.dtype);
    for (int ii = 0; ii < n_isas; ii++) {
        for (int threads = 1; threads <= 3; threads++) {
            char label[32];
            snprintf(label, sizeof label, "%s/t%d", th_isa_name(isas[ii]), threads);
            qattn_ctx *ctx = th_ctx(isas[ii], threads);
            if (!ctx) continue;
            th_problem_poison(&pr);
            qattn_status s = qattn_forward(ctx, &pr.p);
            bool ok = TH_CHECK(s == QATTN_OK, "[%s] qattn_forward: %s: %s", label, qattn_status_str(s), qattn_ctx_last_error(ctx));
            qattn_ctx_destroy(ctx);
            if (!ok) continue;
            g_runs++;
            th_problem_check_written(&pr);
            th_problem_gather_o(&pr, out);
            th_metrics m = th_compare(out, ref, n_out);
            bool good = TH_CHECK(m.nonfinite == 0, "[%s] %zu non-finite outputs where the oracle is finite", label, m.nonfinite);
            good &= TH_CHECK(m.rel_l2 <= tol, "[%s] relative L2 %.3e above %.3e", label, m.rel_l2, tol);
            if (pr.lse) {
                size_t bad = 0;
                for (size_t i = 0; i < pr.lse_elems; i++) {
                    double r = ref_lse[i], got = pr.lse[i];
                    if (isinf(r) || isinf(got)) {
                        bad += !(r == got);
                        continue;
                    }
                    bad += !(fabs(got - r) <= FP32_LSE_REL * (1.0 + fabs(r)) + BASELINE_FACTOR * lse_base);
                }
                good &= TH_CHECK(bad == 0, "[%s] %zu LSE entries off", label, bad);
            }
            if (!good || threads == 1) th_metrics_print(label, &m);
            if (threads == 1) {
                free(first_o), free(first_lse);
                first_o = th_xmalloc(o_size);
                memcpy(first_o, pr.o.buf, o_size);
                first_lse = pr.lse ? th_xmalloc(pr.lse_elems * sizeof(float) + 1) : NULL;
                if (pr.lse) memcpy(first_lse, pr.lse, pr.lse_elems * sizeof(float));
            } else if (first_o) {
                TH_CHECK(memcmp(first_o, pr.o.buf, o_size) == 0, "[%s] output differs bitwise from 1 thread", label);
                if (pr.lse) TH_CHECK(memcmp(first_lse, pr.lse, pr.lse_elems * sizeof(float)) == 0, "[%s] LSE differs bitwise from 1 thread", label);
            }
        }
    }
done:
    free(first_o), free(first_lse), free(out), free(ref), free(ref_lse), free(mb.bytes), free(slopes);
    th_problem_free(&pr);
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- refused arguments */

static void expect(qattn_ctx *ctx, const qattn_params *p, qattn_status want, const char *text, const char *what) {
    qattn_status s = qattn_forward(ctx, p);
    TH_CHECK(s == want, "%s: got %s, want %s (%s)", what, qattn_status_str(s), qattn_status_str(want), qattn_ctx_last_error(ctx));
    TH_CHECK(strstr(qattn_ctx_last_error(ctx), text) != NULL, "%s: message '%s' does not mention '%s'", what, qattn_ctx_last_error(ctx), text);
    s = qattn_supports(ctx, p);
    TH_CHECK(s == want, "%s: qattn_supports says %s, want %s", what, qattn_status_str(s), qattn_status_str(want));
}

static void test_refused(void) {
    printf("  refused arguments\n");
    th_case c = make_case("refused", 1, 64, 64, 2, 1, 64);
    c.seed = th_derive_seed(999);
    th_problem pr;
    th_problem_make(&pr, &c);
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
    uint8_t bytes[64];
    memset(bytes, 1, sizeof bytes);
    qattn_params p = pr.p;
    p.block_mask = bytes, p.block_mask_q = 16, p.block_mask_k = 16;
    p.block_mask_row_stride = 4, p.block_mask_head_stride = 16;
    TH_CHECK(qattn_forward(ctx, &p) == QATTN_OK, "a valid mask: %s", qattn_ctx_last_error(ctx));
    qattn_params bad = p;
    bad.block_mask_q = 8;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "multiple of 16", "block_mask_q 8");
    bad = p, bad.block_mask_k = 0;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "multiple of 16", "block_mask_k 0");
    bad = p, bad.block_mask_k = 40;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "multiple of 16", "block_mask_k 40");
    bad = p, bad.block_mask_head_stride = -1;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, ">= 0", "negative head stride");
    bad = p, bad.block_mask_row_stride = INT64_MAX / 2;
    expect(ctx, &bad, QATTN_ERR_OVERFLOW, "block mask", "row stride overflowing the index");
    bad = p, bad.reserved0 = 1;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "reserved0", "reserved0 1");
    /* the mask inside the output: refused like any input overlapping an output */
    bad = p, bad.block_mask = (const uint8_t *)pr.p.o + 8;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "block_mask", "mask overlapping o");
    /* the block mask of the low-precision paths goes through the same validation */
    bad = p, bad.precision = QATTN_PRECISION_INT8, bad.block_mask_q = 24;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "multiple of 16", "INT8 with block_mask_q 24");
    /* softcap / ALiBi with a mask run on the FP paths (cases above); INT8 and FP8 refuse them */
    float slopes[2] = {0.25f, 0.5f};
    bad = p, bad.precision = QATTN_PRECISION_INT8, bad.softcap = 10.0f;
    expect(ctx, &bad, QATTN_ERR_UNSUPPORTED, "softcap", "INT8 with a block mask and softcap");
    bad = p, bad.precision = QATTN_PRECISION_FP8_E4M3, bad.alibi_slopes = slopes;
    expect(ctx, &bad, QATTN_ERR_UNSUPPORTED, "alibi_slopes", "FP8 with a block mask and ALiBi");
    qattn_ctx_destroy(ctx);
    th_problem_free(&pr);
}

int main(void) {
    th_init("test_blocksparse");
    int32_t isas[TH_MAX_ISAS];
    int n_isas = th_available_isas(isas);
    static bs_case cases[64];
    int n = build_cases(cases);
    for (int i = 0; i < n; i++) run_case(&cases[i], i, isas, n_isas);
    test_refused();
    printf("  %d cases, %ld forward runs\n", n, g_runs);
    return th_finish();
}
