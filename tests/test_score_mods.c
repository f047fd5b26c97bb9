/* Softcap and ALiBi (qattn_params.softcap, alibi_slopes, alibi_batch_stride) on the CPU backend:
 * qattn_forward on every ISA this CPU has, 1 and 3 threads, against the FP64 oracle (which applies
 * the header's formula with libm's tanh) on awkward shapes: causal and not, Lq != Lk, one query,
 * GQA, varlen with an empty sequence, head_dim 64/80/128/256, softcap 5 (saturating) and 50,
 * slopes [H] and [B, H], both together, FP16/BF16 precision. Outputs are poisoned first; every
 * element must be written. Bad values are refused with a status and a message.
 *
 * Tolerances (the same derivation as tests/test_forward.c): FP32 1e-5 relative L2 and LSE
 * 1e-5 * (1 + |lse|). The modifiers add two roundings per score: the tanh (relative error <= 2.9e-7,
 * so an absolute score error <= 2.9e-7 * |s| <= 2.9e-7 * softcap) and the ALiBi subtraction (a
 * bias b rounds to b * 2^-24, but a key's weight carries exp(-b) with it, so its contribution to
 * the error is at most b e^-b 2^-24 < 2.2e-8). Both sit far below 1e-5 for the softcaps and scores
 * tested here (|s| <~ 6). FP16/BF16: 2x the error of "round the inputs, then the FP64 oracle with
 * the same modifiers" plus the FP32 floor; an FP16/BF16 output adds its unit roundoff. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FP32_REL_L2 1e-5
#define FP32_LSE_REL 1e-5
#define BASELINE_FACTOR 2.0

typedef struct mod_case {
    th_case c;
    float softcap;
    int alibi; /* 0 none, 1 [H] shared, 2 [B, H] with stride H + 3 */
} mod_case;

static mod_case make(const char *name, int64_t B, int64_t Lq, int64_t Lk, int H, int HK, int D, int causal, float softcap, int alibi) {
    mod_case m;
    memset(&m, 0, sizeof m);
    th_case *c = &m.c;
    c->name = name;
    c->batch = B, c->seqlen_q = Lq, c->seqlen_k = Lk;
    c->n_heads = H, c->n_kv_heads = HK, c->head_dim = D;
    c->qkv_dtype = c->o_dtype = QATTN_DTYPE_F32;
    c->precision = QATTN_PRECISION_AUTO;
    c->window_left = c->window_right = -1;
    c->causal = causal;
    c->with_lse = true;
    m.softcap = softcap;
    m.alibi = alibi;
    return m;
}

/* The ALiBi paper's slopes for H heads (2^(-8(h+1)/H)), varied per sequence for [B, H]. */
static float *make_slopes(const mod_case *m, int64_t *stride) {
    int H = m->c.n_heads;
    int64_t rows = m->alibi == 2 ? m->c.batch : 1;
    *stride = m->alibi == 2 ? H + 3 : 0;
    int64_t n = rows * (H + 3);
    float *s = th_xmalloc((size_t)(n > 0 ? n : 1) * sizeof *s);
    for (int64_t i = 0; i < n; i++) s[i] = NAN; /* padding between rows is never read */
    for (int64_t b = 0; b < rows; b++)
        for (int h = 0; h < H; h++) s[b * (H + 3) + h] = exp2f(-8.0f * (float)(h + 1) / (float)H) * (1.0f + 0.25f * (float)b);
    return s;
}

static void run(const mod_case *mc, int index, const int32_t *isas, int n_isas) {
    th_case c = mc->c;
    c.seed = th_derive_seed((uint64_t)index);
    char desc[1024], full[1200];
    th_describe(&c, desc, sizeof desc);
    snprintf(full, sizeof full, "%s softcap=%g alibi=%s", desc, (double)mc->softcap, mc->alibi == 0 ? "none" : mc->alibi == 1 ? "[H]" : "[B,H]");
    if (!th_selected(full)) return;
    th_set_context(full);
    printf("  %s\n", full);
    th_problem pr;
    if (!th_problem_make(&pr, &c)) return;
    int64_t stride = 0;
    float *slopes = mc->alibi ? make_slopes(mc, &stride) : NULL;
    pr.p.softcap = mc->softcap;
    pr.p.alibi_slopes = slopes;
    pr.p.alibi_batch_stride = stride;

    size_t n_out = (size_t)pr.rows * (size_t)c.n_heads * (size_t)c.head_dim;
    double *ref = th_xmalloc(n_out * sizeof *ref + 8), *ref_lse = th_xmalloc((pr.lse_elems + 1) * sizeof *ref_lse);
    double *plain = th_xmalloc(n_out * sizeof *plain + 8);
    if (!th_oracle(&pr, ref, ref_lse)) goto done;
    /* Not vacuous: the modifiers must change the oracle's answer. */
    {
        qattn_params keep = pr.p;
        pr.p.softcap = 0.0f, pr.p.alibi_slopes = NULL, pr.p.alibi_batch_stride = 0;
        bool ok = th_oracle(&pr, plain, NULL);
        pr.p = keep;
        th_metrics d = th_compare_f64(plain, ref, n_out);
        if (ok && n_out > 0) TH_CHECK(d.rel_l2 > 1e-3, "the modifiers change the oracle's output by only %.3e", d.rel_l2);
    }
    /* a half-precision output adds its unit roundoff (2^-11 FP16, 2^-8 BF16) */
    double tol = FP32_REL_L2 + (c.o_dtype == QATTN_DTYPE_F16 ? 0x1.0p-11 : c.o_dtype == QATTN_DTYPE_BF16 ? 0x1.0p-8 : 0.0), lse_base = 0.0;
    if (c.precision == QATTN_PRECISION_FP16 || c.precision == QATTN_PRECISION_BF16) {
        th_problem rounded;
        th_problem_rounded_copy(&rounded, &pr, c.precision);
        double *bo = th_xmalloc(n_out * sizeof *bo + 8), *bl = th_xmalloc((pr.lse_elems + 1) * sizeof *bl);
        if (th_oracle(&rounded, bo, bl)) {
            tol += BASELINE_FACTOR * th_compare_f64(bo, ref, n_out).rel_l2;
            lse_base = th_compare_f64(bl, ref_lse, pr.lse_elems).max_abs;
        }
        free(bo), free(bl), free(rounded.q.buf), free(rounded.k.buf), free(rounded.v.buf);
    }
    float *out = th_xmalloc(n_out * sizeof *out + 4);
    static const int threads[] = {1, 3};
    for (int ii = 0; ii < n_isas; ii++)
        for (int ti = 0; ti < 2; ti++) {
            char label[32];
            snprintf(label, sizeof label, "%s/t%d", th_isa_name(isas[ii]), threads[ti]);
            qattn_ctx *ctx = th_ctx(isas[ii], threads[ti]);
            if (!ctx) continue;
            th_problem_poison(&pr);
            qattn_status s = qattn_forward(ctx, &pr.p);
            bool ok = TH_CHECK(s == QATTN_OK, "[%s] qattn_forward: %s: %s", label, qattn_status_str(s), qattn_ctx_last_error(ctx));
            qattn_ctx_destroy(ctx);
            if (!ok) continue;
            th_problem_check_written(&pr);
            th_problem_gather_o(&pr, out);
            th_metrics m = th_compare(out, ref, n_out);
            bool good = TH_CHECK(m.nonfinite == 0, "[%s] %zu non-finite outputs", label, m.nonfinite);
            good &= TH_CHECK(m.rel_l2 <= tol, "[%s] relative L2 %.3e above %.3e", label, m.rel_l2, tol);
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
            if (!good || (ii == n_isas - 1 && ti == 0)) th_metrics_print(label, &m);
        }
    free(out);
done:
    free(ref), free(ref_lse), free(plain), free(slopes);
    th_set_context(NULL);
    th_problem_free(&pr);
}

static int build(mod_case *cs) {
    int n = 0;
    cs[n++] = make("softcap5", 2, 77, 77, 4, 4, 64, 0, 5.0f, 0);
    cs[n++] = make("softcap50-causal", 1, 113, 203, 4, 2, 128, 1, 50.0f, 0);
    cs[n++] = make("alibi-H", 2, 65, 130, 8, 8, 64, 0, 0.0f, 1);
    cs[n++] = make("alibi-BH-causal-gqa", 3, 40, 97, 8, 2, 80, 1, 0.0f, 2);
    cs[n++] = make("both-causal-lq>lk", 1, 90, 33, 4, 4, 128, 1, 5.0f, 1);
    cs[n++] = make("both-d256", 2, 17, 150, 2, 1, 256, 0, 20.0f, 2);
    cs[n++] = make("both-decode", 2, 1, 700, 8, 2, 128, 1, 5.0f, 2);
    cs[n++] = make("both-decode-split", 1, 1, 1500, 4, 4, 64, 0, 30.0f, 1);
    cs[n++] = make("alibi-window", 1, 100, 100, 4, 4, 64, 0, 0.0f, 1);
    cs[n - 1].c.window_left = 20, cs[n - 1].c.window_right = 7;
    cs[n++] = make("both-varlen-empty", 3, 0, 0, 4, 2, 64, 1, 5.0f, 2);
    {
        static const int32_t cu_q[] = {0, 30, 30, 71}, cu_k[] = {0, 50, 60, 101};
        th_case *c = &cs[n - 1].c;
        c->varlen = true;
        for (int b = 0; b <= 3; b++) c->cu_q[b] = cu_q[b], c->cu_k[b] = cu_k[b];
        c->seqlen_q = 41, c->seqlen_k = 50;
    }
    cs[n++] = make("both-fp16", 1, 70, 70, 4, 4, 64, 1, 5.0f, 1);
    cs[n - 1].c.precision = QATTN_PRECISION_FP16;
    cs[n++] = make("both-bf16-in", 1, 70, 90, 4, 2, 128, 0, 50.0f, 2);
    cs[n - 1].c.qkv_dtype = QATTN_DTYPE_BF16, cs[n - 1].c.o_dtype = QATTN_DTYPE_BF16;
    return n;
}

/* Bad values: a status and a message, never a crash; the low-precision paths refuse the modifiers. */
static void test_refusals(void) {
    th_set_context("refusals");
    mod_case mc = make("refuse", 2, 8, 8, 4, 4, 64, 0, 0.0f, 0);
    th_problem pr;
    if (!th_problem_make(&pr, &mc.c)) return;
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
    if (!ctx) return;
    float slopes[8] = {0.5f, 0.25f, NAN, 0.0625f, 1, 1, 1, 1};
    struct {
        const char *what;
        float softcap;
        const float *slopes;
        int64_t stride;
        int32_t precision;
        qattn_status want;
    } bad[] = {
        {"NaN slope", 0.0f, slopes, 0, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"negative softcap", -1.0f, NULL, 0, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"infinite softcap", INFINITY, NULL, 0, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"NaN softcap", NAN, NULL, 0, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"stride < H", 0.0f, slopes + 4, 3, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"softcap at INT8", 5.0f, NULL, 0, QATTN_PRECISION_INT8, QATTN_ERR_UNSUPPORTED},
        {"alibi at FP8", 0.0f, slopes + 4, 0, QATTN_PRECISION_FP8_E4M3, QATTN_ERR_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qattn_params p = pr.p;
        p.softcap = bad[i].softcap, p.alibi_slopes = bad[i].slopes, p.alibi_batch_stride = bad[i].stride, p.precision = bad[i].precision;
        qattn_status s = qattn_forward(ctx, &p);
        TH_CHECK(s == bad[i].want, "%s: qattn_forward gave %s (%s), expected %s", bad[i].what, qattn_status_str(s), qattn_ctx_last_error(ctx),
                 qattn_status_str(bad[i].want));
        TH_CHECK(strlen(qattn_ctx_last_error(ctx)) > 0, "%s: no message", bad[i].what);
        qattn_status sup = qattn_supports(ctx, &p);
        TH_CHECK(sup == bad[i].want, "%s: qattn_supports gave %s, expected %s", bad[i].what, qattn_status_str(sup), qattn_status_str(bad[i].want));
        double o64[2 * 8 * 4 * 64];
        if (bad[i].want == QATTN_ERR_INVALID_ARGUMENT)
            TH_CHECK(qattn_oracle_f64(ctx, &p, o64, NULL) == bad[i].want, "%s: the oracle accepted it", bad[i].what);
    }
    /* with a block mask (one all-ones row shared by every row, head and sequence): softcap and ALiBi
     * run on FP32 (tests/test_blocksparse.c checks the values) and are refused at INT8 */
    qattn_params p = pr.p;
    static uint8_t map[256];
    memset(map, 1, sizeof map);
    static const float mask_slopes[64] = {0.25f, 0.5f, 0.125f, 0.0625f, 0.25f, 0.5f, 0.125f, 0.0625f};
    p.block_mask = map, p.block_mask_q = 16, p.block_mask_k = 16;
    p.softcap = 10.0f, p.alibi_slopes = mask_slopes, p.alibi_batch_stride = 0;
    qattn_status s = qattn_forward(ctx, &p);
    TH_CHECK(s == QATTN_OK, "softcap and ALiBi with a block mask: %s (%s)", qattn_status_str(s), qattn_ctx_last_error(ctx));
    p.precision = QATTN_PRECISION_INT8;
    s = qattn_forward(ctx, &p);
    TH_CHECK(s == QATTN_ERR_UNSUPPORTED && strstr(qattn_ctx_last_error(ctx), "not implemented for precision"),
             "INT8 with a block mask, softcap and ALiBi: %s (%s)", qattn_status_str(s), qattn_ctx_last_error(ctx));
    qattn_ctx_destroy(ctx);
    th_problem_free(&pr);
    th_set_context(NULL);
}

int main(void) {
    th_init("test_score_mods");
    int32_t isas[TH_MAX_ISAS];
    int n_isas = th_available_isas(isas);
    static mod_case cases[32];
    int n = build(cases);
    for (int i = 0; i < n; i++) run(&cases[i], i, isas, n_isas);
    test_refusals();
    return th_finish();
}
