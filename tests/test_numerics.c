/* Numerical edge cases of qattn_forward (docs/ARCHITECTURE.md "Numerics" and "Tolerances", qattn.h "Masks" and "NaN/Inf"):
 * fully masked rows give exact zeros and LSE -inf (never NaN); NaN/Inf in one token or row
 * reaches exactly the rows that use it; huge scores neither overflow nor lose accuracy;
 * all-zero Q is uniform attention; the scale is honoured; constant rows. Every check runs on
 * every ISA this CPU has, with 1 and 3 threads, and against the FP64 oracle, whose NaN
 * pattern the library must reproduce element for element. */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FP32 tolerance: see tests/ops.c (relative L2 over the finite elements). */
#define FP32_REL_L2 1e-5
#define FP32_LSE_REL 1e-5

static int32_t g_isas[TH_MAX_ISAS];
static int g_n_isas = 0;
static int g_case_index = 0;

static th_case base_case(const char *name, int64_t B, int64_t Lq, int64_t Lk, int H, int HK, int D) {
    th_case c;
    memset(&c, 0, sizeof c);
    c.name = name;
    c.batch = B, c.seqlen_q = Lq, c.seqlen_k = Lk;
    c.n_heads = H, c.n_kv_heads = HK, c.head_dim = D;
    c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F32;
    c.window_left = c.window_right = -1;
    c.with_lse = true;
    c.seed = th_derive_seed((uint64_t)g_case_index++);
    return c;
}

/* Per-run extra property check on the gathered output ([rows, H, D]) and the LSE. */
typedef void (*extra_check_fn)(const th_problem *pr, const float *out, const char *label, void *user);

/* Runs pr on every ISA with 1 and 3 threads and compares with the oracle: the non-finite
 * pattern must match exactly (NaN where the oracle has NaN, nowhere else), the finite
 * elements within rel_tol (relative L2), LSE likewise. */
static void run_all(th_problem *pr, const char *what, double rel_tol, extra_check_fn extra, void *user) {
    char desc[1024];
    th_describe(&pr->c, desc, sizeof desc);
    char full[1200];
    snprintf(full, sizeof full, "%s [%s]", what, desc);
    if (!th_selected(full)) return;
    th_set_context(full);
    printf("  %s\n", full);
    size_t n_out = (size_t)pr->rows * (size_t)pr->c.n_heads * (size_t)pr->c.head_dim;
    double *ref = th_xmalloc(n_out * sizeof *ref), *ref_lse = th_xmalloc((pr->lse_elems + 1) * sizeof *ref_lse);
    float *out = th_xmalloc(n_out * sizeof *out + 1);
    if (th_oracle(pr, ref, ref_lse)) {
        static const int threads[] = {1, 3};
        for (int ii = 0; ii < g_n_isas; ii++)
            for (int ti = 0; ti < 2; ti++) {
                char label[32];
                snprintf(label, sizeof label, "%s/t%d", th_isa_name(g_isas[ii]), threads[ti]);
                qattn_ctx *ctx = th_ctx(g_isas[ii], threads[ti]);
                if (!ctx) continue;
                th_problem_poison(pr);
                qattn_status s = qattn_forward(ctx, &pr->p);
                bool ok = TH_CHECK(s == QATTN_OK, "[%s] qattn_forward: %s: %s", label, qattn_status_str(s), qattn_ctx_last_error(ctx));
                qattn_ctx_destroy(ctx);
                if (!ok) continue;
                th_problem_check_written(pr);
                th_problem_gather_o(pr, out);
                size_t nan_mismatch = 0, first_bad = 0;
                for (size_t i = 0; i < n_out; i++)
                    if (isnan(out[i]) != isnan(ref[i]) || isinf(out[i]) != isinf(ref[i])) {
                        if (!nan_mismatch) first_bad = i;
                        nan_mismatch++;
                    }
                int H = pr->c.n_heads, D = pr->c.head_dim;
                TH_CHECK(nan_mismatch == 0,
                         "[%s] %zu outputs differ from the oracle in NaN/Inf-ness; first: row %zu head %zu col %zu: got %g, oracle %g", label,
                         nan_mismatch, first_bad / ((size_t)H * D), first_bad / D % H, first_bad % D, (double)out[first_bad],
                         ref[first_bad]);
                th_metrics m = th_compare(out, ref, n_out);
                if (!TH_CHECK(m.rel_l2 <= rel_tol, "[%s] relative L2 (finite elements) %.3e above %.3e", label, m.rel_l2, rel_tol))
                    th_metrics_print(label, &m);
                if (pr->lse) {
                    size_t bad = 0, worst = 0;
                    for (size_t i = 0; i < pr->lse_elems; i++) {
                        double r = ref_lse[i], got = pr->lse[i];
                        bool same;
                        if (isnan(r) || isnan(got)) same = isnan(r) && isnan(got);
                        else if (isinf(r) || isinf(got)) same = r == got;
                        else same = fabs(got - r) <= FP32_LSE_REL * (1.0 + fabs(r));
                        if (!same && !bad++) worst = i;
                    }
                    TH_CHECK(bad == 0, "[%s] %zu LSE entries differ from the oracle; first: index %zu (head %zu): got %g, oracle %g", label,
                             bad, worst, worst / (pr->lse_elems / (size_t)H), (double)pr->lse[worst], ref_lse[worst]);
                }
                if (extra) extra(pr, out, label, user);
            }
    }
    free(ref);
    free(ref_lse);
    free(out);
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- fully masked rows */

/* Rows [row_begin, row_end) of every batch/head must be exactly 0 with LSE -inf; no NaN anywhere. */
typedef struct empty_rows {
    int64_t row_begin, row_end;
} empty_rows;

static void check_empty_rows(const th_problem *pr, const float *out, const char *label, void *user) {
    const empty_rows *er = user;
    int H = pr->c.n_heads, D = pr->c.head_dim;
    size_t nonzero = 0, nan = 0, lse_bad = 0;
    for (int64_t b = 0; b < pr->c.batch; b++)
        for (int64_t i = 0; i < pr->c.seqlen_q; i++)
            for (int h = 0; h < H; h++) {
                bool empty = i >= er->row_begin && i < er->row_end;
                const float *row = out + ((b * pr->c.seqlen_q + i) * H + h) * D;
                for (int c = 0; c < D; c++) {
                    nan += isnan(row[c]) != 0;
                    if (empty && row[c] != 0.0f) nonzero++;
                }
                if (pr->lse) {
                    float l = pr->lse[(b * H + h) * pr->c.seqlen_q + i];
                    if (empty ? !(isinf(l) && l < 0) : !isfinite(l)) lse_bad++;
                }
            }
    TH_CHECK(nan == 0, "[%s] %zu NaN outputs", label, nan);
    TH_CHECK(nonzero == 0, "[%s] %zu outputs of fully masked rows are not exactly zero", label, nonzero);
    TH_CHECK(lse_bad == 0, "[%s] %zu LSE entries wrong (-inf expected exactly on the masked rows, finite elsewhere)", label, lse_bad);
}

static void test_fully_masked(void) {
    th_problem pr;
    empty_rows er;
    /* right-only window with Lq > Lk: row i sees keys <= i - 40 + 5, so rows 0..34 see nothing */
    th_case c = base_case("masked-by-window", 2, 60, 20, 4, 2, 64);
    c.window_right = 5;
    th_problem_make(&pr, &c);
    er = (empty_rows){0, 35};
    run_all(&pr, "window excludes every key for rows 0..34", FP32_REL_L2, check_empty_rows, &er);
    th_problem_free(&pr);

    /* both-sided window: row i sees [i - 40 - 2, i - 40 + 1]: rows 0..38 empty */
    c = base_case("masked-by-window-both", 1, 60, 20, 2, 1, 64);
    c.window_left = 2, c.window_right = 1;
    th_problem_make(&pr, &c);
    er = (empty_rows){0, 39};
    run_all(&pr, "two-sided window, rows 0..38 empty", FP32_REL_L2, check_empty_rows, &er);
    th_problem_free(&pr);

    /* no keys at all */
    c = base_case("seqlen_k-0", 2, 17, 0, 4, 2, 64);
    th_problem_make(&pr, &c);
    er = (empty_rows){0, 17};
    run_all(&pr, "seqlen_k = 0: every row empty", FP32_REL_L2, check_empty_rows, &er);
    th_problem_free(&pr);

    /* causal with Lq > Lk (bottom-right aligned): the first Lq - Lk rows see nothing */
    c = base_case("causal-lq>lk", 2, 113, 17, 4, 1, 64);
    c.causal = 1;
    th_problem_make(&pr, &c);
    er = (empty_rows){0, 113 - 17};
    run_all(&pr, "causal Lq > Lk: rows 0..95 empty", FP32_REL_L2, check_empty_rows, &er);
    th_problem_free(&pr);

    /* the same through F16 output: zeros must stay zeros */
    c = base_case("causal-lq>lk-f16", 1, 40, 7, 2, 2, 64);
    c.causal = 1, c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F16;
    th_problem_make(&pr, &c);
    er = (empty_rows){0, 33};
    run_all(&pr, "causal Lq > Lk with f16 in/out", FP32_REL_L2 + 0x1.0p-11, check_empty_rows, &er);
    th_problem_free(&pr);
}

/* ---------------------------------------------------------------- NaN / Inf propagation */

/* Affected (row, head) pairs: NaN-ness must match the oracle (run_all) and, in addition,
 * at least `min_nonfinite_rows` rows must be non-finite (so the test cannot pass by an oracle
 * that lost the NaN) and the rest must be finite. */
typedef struct nan_expect {
    size_t min_nonfinite_rows, max_nonfinite_rows;
} nan_expect;

static void check_nan_rows(const th_problem *pr, const float *out, const char *label, void *user) {
    const nan_expect *ne = user;
    int H = pr->c.n_heads, D = pr->c.head_dim;
    size_t nonfinite_rows = 0;
    for (int64_t r = 0; r < pr->rows * H; r++) {
        bool any = false;
        for (int c = 0; c < D; c++) any |= !isfinite(out[r * D + c]);
        nonfinite_rows += any;
    }
    TH_CHECK(nonfinite_rows >= ne->min_nonfinite_rows && nonfinite_rows <= ne->max_nonfinite_rows,
             "[%s] %zu (row, head) outputs are non-finite; expected %zu..%zu", label, nonfinite_rows, ne->min_nonfinite_rows,
             ne->max_nonfinite_rows);
}

static void test_nan_inf(void) {
    th_problem pr;
    nan_expect ne;
    /* Causal Lq = Lk = 64, H 4, HK 2: key j is seen by rows i >= j of heads 0 and 1 (kv head 0). */
    th_case c = base_case("nan-k", 1, 64, 64, 4, 2, 64);
    c.causal = 1;
    th_problem_make(&pr, &c);
    th_problem_set(&pr, &pr.k, 0, 40, 0, 7, NAN);
    ne = (nan_expect){(64 - 40) * 2, (64 - 40) * 2};
    run_all(&pr, "NaN in K token 40 of kv head 0 (causal): rows 40..63 of heads 0,1 only", FP32_REL_L2, check_nan_rows, &ne);
    th_problem_free(&pr);

    c = base_case("nan-v", 1, 64, 64, 4, 2, 64);
    c.causal = 1;
    th_problem_make(&pr, &c);
    th_problem_set(&pr, &pr.v, 0, 10, 1, 5, NAN);
    ne = (nan_expect){(64 - 10) * 2, (64 - 10) * 2};
    run_all(&pr, "NaN in V token 10, kv head 1, column 5: column 5 of rows 10..63 of heads 2,3", FP32_REL_L2, check_nan_rows, &ne);
    th_problem_free(&pr);

    /* A NaN key outside a sliding window must not reach anyone who does not see it. */
    c = base_case("nan-k-windowed", 1, 64, 64, 2, 1, 64);
    c.window_left = 4, c.window_right = 0;
    th_problem_make(&pr, &c);
    th_problem_set(&pr, &pr.k, 0, 20, 0, 0, NAN);
    ne = (nan_expect){5 * 2, 5 * 2}; /* rows 20..24, both heads */
    run_all(&pr, "NaN in K token 20, window (4, 0): rows 20..24 only", FP32_REL_L2, check_nan_rows, &ne);
    th_problem_free(&pr);

    /* One query row with a NaN: exactly that (row, head) is NaN. */
    c = base_case("nan-q", 1, 64, 64, 4, 2, 64);
    th_problem_make(&pr, &c);
    th_problem_set(&pr, &pr.q, 0, 30, 3, 0, NAN);
    ne = (nan_expect){1, 1};
    run_all(&pr, "NaN in Q row 30 head 3: that (row, head) only", FP32_REL_L2, check_nan_rows, &ne);
    th_problem_free(&pr);

    /* +Inf in one element of a Q row that sees 64 keys: its scores are +-Inf, so softmax is
     * Inf - Inf = NaN for that (row, head) in exact arithmetic too; everything else is clean. */
    c = base_case("inf-q", 1, 64, 64, 4, 2, 64);
    th_problem_make(&pr, &c);
    th_problem_set(&pr, &pr.q, 0, 50, 1, 3, INFINITY);
    ne = (nan_expect){1, 1};
    run_all(&pr, "+Inf in Q row 50 head 1", FP32_REL_L2, check_nan_rows, &ne);
    th_problem_free(&pr);

    /* Split-KV decode (Lk 3000, 1 query): a NaN key in one split reaches the merged row of the
     * heads of its kv group, and no other; a NaN key outside the window reaches nothing. */
    c = base_case("nan-k-split", 1, 1, 3000, 8, 2, 64);
    th_problem_make(&pr, &c);
    th_problem_set(&pr, &pr.k, 0, 1700, 1, 0, NAN);
    ne = (nan_expect){4, 4};
    run_all(&pr, "split-KV decode, NaN in K token 1700 of kv head 1: heads 4..7", FP32_REL_L2, check_nan_rows, &ne);
    th_problem_free(&pr);

    c = base_case("nan-k-split-outside-window", 1, 1, 3000, 8, 2, 64);
    c.window_left = 600;
    th_problem_make(&pr, &c);
    th_problem_set(&pr, &pr.k, 0, 100, 0, 0, NAN);
    th_problem_set(&pr, &pr.v, 0, 2000, 1, 0, NAN);
    ne = (nan_expect){0, 0};
    run_all(&pr, "split-KV decode, window 600, NaN K/V tokens outside it", FP32_REL_L2, check_nan_rows, &ne);
    th_problem_free(&pr);

    /* Split-KV decode with a NaN query: its whole row must be NaN, even though every split
     * of that row sees only NaN scores. */
    c = base_case("nan-q-split", 1, 1, 3000, 8, 2, 64);
    th_problem_make(&pr, &c);
    th_problem_set(&pr, &pr.q, 0, 0, 6, 9, NAN);
    ne = (nan_expect){1, 1};
    run_all(&pr, "split-KV decode, NaN in Q head 6", FP32_REL_L2, check_nan_rows, &ne);
    th_problem_free(&pr);
}

/* ---------------------------------------------------------------- huge scores */

/* Outputs are convex combinations of the visible V rows: each column within [min v, max v]. */
static void check_convex(const th_problem *pr, const float *out, const char *label, void *user) {
    (void)user;
    int H = pr->c.n_heads, HK = pr->c.n_kv_heads, D = pr->c.head_dim;
    size_t outside = 0;
    for (int64_t b = 0; b < pr->c.batch; b++)
        for (int h = 0; h < H; h++)
            for (int c = 0; c < D; c++) {
                float lo = INFINITY, hi = -INFINITY;
                for (int64_t j = 0; j < pr->c.seqlen_k; j++) {
                    float v = th_tensor_get(&pr->v, b, j, h / (H / HK), c);
                    lo = v < lo ? v : lo;
                    hi = v > hi ? v : hi;
                }
                for (int64_t i = 0; i < pr->c.seqlen_q; i++) {
                    float o = out[((b * pr->c.seqlen_q + i) * H + h) * D + c];
                    if (!(o >= lo - 1e-6f * fabsf(lo) && o <= hi + 1e-6f * fabsf(hi))) outside++;
                }
            }
    TH_CHECK(outside == 0, "[%s] %zu outputs outside the range of V (not a convex combination)", label, outside);
}

static void test_huge_scores(void) {
    /* scale 1, q ~ 1250 N(0,1), k ~ N(0,1), D 64: scores ~ N(0, 1e4^2), i.e. +-1e4 and beyond.
     * exp of such scores overflows unless the max is subtracted first. Tolerance: the scores
     * carry an FP32 absolute error of about |s| * 2^-24 * sqrt(D) (~5e-3 at 1e4); softmax
     * outputs move by at most that much times max|v| (~4) per row, and only on rows whose two
     * largest scores are within a few units; relative L2 over the tensor is far below 1e-2,
     * which still catches any overflow (NaN/Inf) or lost row. LSE ~ max score: relative 1e-5. */
    th_case c = base_case("huge-scores", 1, 113, 113, 4, 2, 64);
    c.scale = 1.0f;
    th_problem pr;
    th_problem_make(&pr, &c);
    for (int64_t i = 0; i < 113; i++)
        for (int h = 0; h < 4; h++)
            for (int d = 0; d < 64; d++) th_tensor_set(&pr.q, 0, i, h, d, 1250.0f * th_tensor_get(&pr.q, 0, i, h, d));
    run_all(&pr, "scores +-1e4", 1e-2, check_convex, NULL);
    th_problem_free(&pr);

    /* The same in decode with split-KV: partial maxima differ by ~1e4 between splits, so the
     * merge must rescale without overflow/underflow to NaN. */
    c = base_case("huge-scores-split", 1, 1, 3000, 4, 1, 64);
    c.scale = 8.0f; /* q, k ~ N(0,1): scores ~ N(0, 64^2) * ... ~ +-1e3..1e4 */
    th_problem_make(&pr, &c);
    for (int h = 0; h < 4; h++)
        for (int d = 0; d < 64; d++) th_tensor_set(&pr.q, 0, 0, h, d, 150.0f * th_tensor_get(&pr.q, 0, 0, h, d));
    run_all(&pr, "split-KV decode, scores ~ +-1e4", 1e-2, check_convex, NULL);
    th_problem_free(&pr);
}

/* ---------------------------------------------------------------- uniform and constant */

/* All-zero Q: every visible key has score 0, so o = mean of the visible V rows and
 * LSE = ln(number of visible keys). Causal: row i sees i + 1 keys (Lq = Lk). */
static void check_uniform(const th_problem *pr, const float *out, const char *label, void *user) {
    (void)out;
    (void)user;
    int H = pr->c.n_heads;
    size_t bad = 0;
    for (int h = 0; h < H; h++)
        for (int64_t i = 0; i < pr->c.seqlen_q; i++) {
            double want = log((double)(i + 1));
            double got = pr->lse[h * pr->c.seqlen_q + i];
            if (!(fabs(got - want) <= 1e-5 * (1.0 + want))) bad++;
        }
    TH_CHECK(bad == 0, "[%s] %zu LSE entries differ from ln(visible keys)", label, bad);
}

static void test_zero_q_scale_constant(void) {
    th_case c = base_case("zero-q", 1, 113, 113, 4, 2, 64);
    c.causal = 1;
    th_problem pr;
    th_problem_make(&pr, &c);
    for (int64_t i = 0; i < 113; i++)
        for (int h = 0; h < 4; h++)
            for (int d = 0; d < 64; d++) th_tensor_set(&pr.q, 0, i, h, d, 0.0f);
    run_all(&pr, "all-zero Q (uniform attention over the visible keys)", FP32_REL_L2, check_uniform, NULL);
    th_problem_free(&pr);

    /* scale honoured: explicit, negative (attention to the least similar keys is still a valid
     * softmax), and large */
    static const float scales[] = {0.5f, 2.0f, -0.25f};
    for (int s = 0; s < 3; s++) {
        c = base_case("scale", 1, 17, 113, 4, 2, 64);
        c.scale = scales[s];
        th_problem_make(&pr, &c);
        run_all(&pr, "explicit scale", FP32_REL_L2, NULL, NULL);
        th_problem_free(&pr);
    }

    /* scale 0 means 1/sqrt(D): bitwise the same result as passing 1/sqrtf(D) */
    c = base_case("scale-default", 1, 17, 113, 4, 2, 80);
    th_problem_make(&pr, &c);
    {
        char desc[1024];
        th_describe(&c, desc, sizeof desc);
        if (th_selected(desc)) {
            th_set_context(desc);
            size_t bytes = pr.o.elems * sizeof(float);
            float *first = th_xmalloc(bytes);
            qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 1);
            if (ctx) {
                pr.p.scale = 0.0f;
                TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "forward with scale 0");
                memcpy(first, pr.o.buf, bytes);
                pr.p.scale = 1.0f / sqrtf(80.0f);
                TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "forward with scale 1/sqrt(80)");
                TH_CHECK(memcmp(first, pr.o.buf, bytes) == 0, "scale 0 and scale 1/sqrtf(D) give different outputs");
                /* and a different scale gives a different result (the field is read at all) */
                pr.p.scale = 1.0f;
                TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "forward with scale 1");
                TH_CHECK(memcmp(first, pr.o.buf, bytes) != 0, "scale 1 gives the same output as scale 1/sqrt(D)");
            }
            qattn_ctx_destroy(ctx);
            free(first);
            th_set_context(NULL);
        }
    }
    th_problem_free(&pr);

    /* constant V rows: o must equal that row (up to FP32 rounding of the normalisation) */
    c = base_case("constant-v", 1, 113, 203, 4, 2, 64);
    c.causal = 1;
    th_problem_make(&pr, &c);
    for (int64_t j = 0; j < 203; j++)
        for (int g = 0; g < 2; g++)
            for (int d = 0; d < 64; d++) th_tensor_set(&pr.v, 0, j, g, d, 0.25f * (float)(d - 32) + (float)g);
    run_all(&pr, "every V row the same vector", FP32_REL_L2, NULL, NULL);
    th_problem_free(&pr);

    /* constant K rows: every score of a row equal, so uniform attention whatever Q is */
    c = base_case("constant-k", 1, 113, 113, 4, 2, 64);
    c.causal = 1;
    th_problem_make(&pr, &c);
    for (int64_t j = 0; j < 113; j++)
        for (int g = 0; g < 2; g++)
            for (int d = 0; d < 64; d++) th_tensor_set(&pr.k, 0, j, g, d, 0.125f * (float)((d % 7) - 3));
    run_all(&pr, "every K row the same vector", FP32_REL_L2, NULL, NULL);
    th_problem_free(&pr);
}

int main(void) {
    th_init("test_numerics");
    g_n_isas = th_available_isas(g_isas);
    test_fully_masked();
    test_nan_inf();
    test_huge_scores();
    test_zero_q_scale_constant();
    return th_finish();
}
