/* qattn_forward on the CPU against the FP64 oracle: every ISA this CPU has, 1/2/3 threads,
 * awkward sizes, masks, GQA, varlen, strided views, dtypes, precisions, split-KV decode and
 * user workspace. Every output element and LSE entry must be written (poisoned buffers), the
 * same ISA must give bitwise identical results for any thread count (docs/ARCHITECTURE.md "Numerics"), and the
 * error must stay inside a tolerance derived from a baseline (docs/ARCHITECTURE.md "Tolerances", below). */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- tolerances
 *
 * FP32 (inputs FP32/FP16/BF16 computed in FP32): each output is a ratio of FP32 sums of
 * O(Lk) terms, each weight coming from an FP32 dot product of O(D) terms. With random-sign
 * rounding errors the relative error grows like sqrt(D + Lk) * 2^-24 (~6e-8): for D = 256 and
 * Lk = 3000 that is ~3.5e-6, and a few ulp of exp2f on top. 1e-5 relative L2 leaves about 3x
 * headroom; a real bug (a wrong row, a missed tile, a mask off by one) is >= 1e-3.
 * LSE = ln(sum) + max: absolute error ~ relative error of the sum plus rounding of the
 * max (~|lse| * 2^-24): we allow 1e-5 * (1 + |lse|).
 *
 * FP16/BF16 precision: the kernel rounds Q, K, V to the precision and then computes in FP32.
 * The baseline is "round the inputs to that precision, then the FP64 oracle"; its error vs
 * the oracle on the inputs as given, e_base, is the unavoidable part. FlashAttention's rule:
 * the kernel's error must be <= 2 * e_base, plus the FP32 floor above for the FP32 arithmetic
 * that follows the rounding (which matters when e_base ~ 0, e.g. FP16 inputs at FP16 precision).
 *
 * Half-precision outputs: rounding o to FP16 / BF16 adds up to the unit roundoff per element,
 * 2^-11 / 2^-8 relative, hence at most that much relative L2; it is added to the bound. */
#define FP32_REL_L2 1e-5
#define FP32_LSE_REL 1e-5
#define BASELINE_FACTOR 2.0

static double output_rounding(int32_t o_dtype) {
    switch (o_dtype) {
    case QATTN_DTYPE_F16: return 0x1.0p-11;
    case QATTN_DTYPE_BF16: return 0x1.0p-8;
    default: return 0.0;
    }
}

/* Precision the kernel effectively computes in (AUTO = FP32 arithmetic on the inputs). */
static bool rounds_inputs(int32_t precision) { return precision == QATTN_PRECISION_FP16 || precision == QATTN_PRECISION_BF16; }

/* ---------------------------------------------------------------- cases */

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
    int32_t max_q = 0, max_k = 0;
    for (int b = 0; b <= n; b++) {
        c->cu_q[b] = cu_q[b];
        c->cu_k[b] = cu_k[b];
        if (b && cu_q[b] - cu_q[b - 1] > max_q) max_q = cu_q[b] - cu_q[b - 1];
        if (b && cu_k[b] - cu_k[b - 1] > max_k) max_k = cu_k[b] - cu_k[b - 1];
    }
    c->seqlen_q = max_q;
    c->seqlen_k = max_k;
}

#define MAX_CASES 96

static int build_cases(th_case *cases) {
    int n = 0;
    th_case c;
#define ADD(x) (cases[n++] = (x))
    /* tail sizes, square */
    ADD(make_case("tail-L1", 2, 1, 1, 4, 2, 64));
    ADD(make_case("tail-L17", 2, 17, 17, 4, 2, 64));
    ADD(make_case("tail-L113", 2, 113, 113, 4, 2, 64));
    c = make_case("tail-L203-nolse", 1, 203, 203, 4, 2, 64), c.with_lse = false, ADD(c);
    /* Lq != Lk both ways, with and without causal (bottom-right aligned; Lq > Lk causal has
     * empty first rows) */
    ADD(make_case("lq<lk", 2, 17, 203, 4, 4, 64));
    ADD(make_case("lq>lk", 2, 203, 17, 4, 4, 64));
    c = make_case("lq<lk-causal", 2, 17, 203, 4, 2, 64), c.causal = 1, ADD(c);
    c = make_case("lq>lk-causal", 2, 203, 17, 4, 2, 64), c.causal = 1, ADD(c);
    c = make_case("causal-L113", 1, 113, 113, 4, 4, 64), c.causal = 1, ADD(c);
    c = make_case("lq1-causal", 3, 1, 113, 4, 2, 64), c.causal = 1, ADD(c);
    /* head dims */
    ADD(make_case("D32", 1, 113, 113, 2, 1, 32));
    c = make_case("D80", 1, 113, 90, 2, 1, 80), c.causal = 1, ADD(c);
    ADD(make_case("D128", 1, 70, 113, 2, 2, 128));
    c = make_case("D256", 1, 40, 113, 2, 1, 256), c.causal = 1, ADD(c);
    /* D % 16 == 8: the 16-lane kernels' masked half vectors (QK, P V, packer), with many rows per
     * unit (transposed-K products) and with few (12 rows: dot products, K/V read in place) */
    c = make_case("D40", 1, 113, 203, 4, 2, 40), c.causal = 1, ADD(c);
    ADD(make_case("D200-few-rows", 2, 3, 203, 4, 1, 200));
    c = make_case("D72-f16", 1, 113, 113, 2, 1, 72), c.qkv_dtype = QATTN_DTYPE_F16, ADD(c);
    c = make_case("D136-win", 1, 113, 203, 4, 2, 136), c.window_left = 30, ADD(c);
    /* D below 32 (one 8-float vector per row at D 8; less than one 16-lane vector below 16): with
     * many rows per unit (AVX-512: transposed K, masked 8-lane rows), with few (dot products),
     * causal with Lq != Lk both ways, GQA, one query, varlen with empty sequences, half dtypes. */
    c = make_case("D8-causal-lq<lk", 2, 113, 203, 4, 2, 8), c.causal = 1, ADD(c);
    c = make_case("D8-causal-lq>lk", 1, 203, 17, 4, 1, 8), c.causal = 1, ADD(c);
    ADD(make_case("D8-lq1", 3, 1, 113, 8, 2, 8));
    c = make_case("D16-gqa4-few-rows", 2, 3, 203, 8, 2, 16), c.causal = 1, ADD(c);
    c = make_case("D16-bf16", 1, 113, 113, 4, 2, 16), c.qkv_dtype = c.o_dtype = QATTN_DTYPE_BF16, ADD(c);
    c = make_case("D24-f16-in", 1, 203, 113, 4, 4, 24), c.qkv_dtype = QATTN_DTYPE_F16, c.window_left = 9, c.window_right = 4, ADD(c);
    c = make_case("D24-prec-fp16", 1, 113, 113, 4, 2, 24), c.precision = QATTN_PRECISION_FP16, c.causal = 1, ADD(c);
    {
        static const int32_t cu_q[] = {0, 17, 17, 130, 131}, cu_k[] = {0, 40, 45, 45, 248};
        c = make_case("D24-varlen-causal-strided", 0, 0, 0, 4, 2, 24), set_varlen(&c, 4, cu_q, cu_k), c.causal = 1, c.kv_cache = true,
        c.qo_bhld = true, ADD(c);
        c = make_case("D8-varlen-prepack", 0, 0, 0, 8, 1, 8), set_varlen(&c, 4, cu_q, cu_k), ADD(c);
    }
    ADD(make_case("D16-decode-split", 1, 1, 3000, 8, 2, 16));
    c = make_case("D8-decode-split-lq4-causal", 2, 4, 2048, 4, 1, 8), c.causal = 1, c.kv_cache = true, ADD(c);
    /* several query blocks per kv head (K/V pre-packed once for all units): F16 inputs, FP32
     * inputs rounded to BF16, varlen with strided K/V, all with 8 query heads per kv head */
    c = make_case("prepack-f16-causal", 1, 300, 300, 8, 1, 64), c.qkv_dtype = QATTN_DTYPE_F16, c.causal = 1, ADD(c);
    c = make_case("prepack-prec-bf16", 2, 203, 113, 8, 1, 80), c.precision = QATTN_PRECISION_BF16, ADD(c);
    {
        static const int32_t cu_q[] = {0, 70, 70, 183, 184}, cu_k[] = {0, 90, 95, 95, 298};
        c = make_case("prepack-varlen-kv-cache", 0, 0, 0, 8, 1, 64), set_varlen(&c, 4, cu_q, cu_k), c.kv_cache = true, c.causal = 1, ADD(c);
    }
    /* GQA ratios 1, 4, 8 (MQA) */
    c = make_case("gqa1", 1, 113, 113, 8, 8, 64), c.causal = 1, ADD(c);
    c = make_case("gqa4", 2, 113, 203, 8, 2, 64), c.causal = 1, ADD(c);
    c = make_case("mqa8", 1, 203, 113, 8, 1, 64), ADD(c);
    c = make_case("mqa8-causal", 1, 17, 203, 8, 1, 64), c.causal = 1, ADD(c);
    /* windows */
    c = make_case("win-left", 1, 113, 113, 4, 2, 64), c.window_left = 16, ADD(c);
    c = make_case("win-right", 1, 113, 113, 4, 2, 64), c.window_right = 8, ADD(c);
    c = make_case("win-both", 1, 113, 203, 4, 2, 64), c.window_left = 7, c.window_right = 3, ADD(c);
    c = make_case("win-both-lq>lk", 1, 203, 113, 4, 2, 64), c.window_left = 20, c.window_right = 0, ADD(c);
    c = make_case("win-causal", 1, 113, 203, 4, 2, 64), c.window_left = 20, c.causal = 1, ADD(c);
    c = make_case("win-causal-wr-ignored", 1, 113, 113, 4, 2, 64), c.window_left = 5, c.window_right = 9, c.causal = 1, ADD(c);
    c = make_case("win-zero", 1, 17, 17, 2, 2, 64), c.window_left = 0, c.window_right = 0, ADD(c);
    /* varlen, with an empty q sequence (k 5 tokens) and an empty k sequence (q 113 rows) */
    {
        static const int32_t cu_q[] = {0, 17, 17, 130, 131}, cu_k[] = {0, 40, 45, 45, 248};
        c = make_case("varlen", 0, 0, 0, 4, 2, 64), set_varlen(&c, 4, cu_q, cu_k), ADD(c);
        c = make_case("varlen-causal", 0, 0, 0, 4, 2, 64), set_varlen(&c, 4, cu_q, cu_k), c.causal = 1, ADD(c);
        c = make_case("varlen-win-strided", 0, 0, 0, 8, 2, 80), set_varlen(&c, 4, cu_q, cu_k), c.window_left = 9,
        c.window_right = 4, c.kv_cache = true, c.qo_bhld = true, ADD(c);
        c = make_case("varlen-loose-max-f16", 0, 0, 0, 4, 1, 64), set_varlen(&c, 4, cu_q, cu_k), c.seqlen_q = 300,
        c.seqlen_k = 250, c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F16, ADD(c);
    }
    /* strided views: K/V in a bigger cache, q/o as [B, H, L, D] */
    c = make_case("kv-cache", 2, 113, 203, 4, 2, 64), c.kv_cache = true, c.causal = 1, ADD(c);
    c = make_case("qo-bhld", 2, 113, 113, 4, 2, 64), c.qo_bhld = true, ADD(c);
    c = make_case("kv-cache-qo-bhld-mqa", 2, 17, 203, 8, 1, 128), c.kv_cache = true, c.qo_bhld = true, c.window_left = 50, ADD(c);
    /* dtypes */
    c = make_case("f16-f16", 1, 113, 113, 4, 2, 64), c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F16, c.causal = 1, ADD(c);
    c = make_case("bf16-bf16", 1, 113, 113, 4, 2, 128), c.qkv_dtype = c.o_dtype = QATTN_DTYPE_BF16, ADD(c);
    c = make_case("f16-in-f32-out", 1, 113, 203, 4, 2, 64), c.qkv_dtype = QATTN_DTYPE_F16, ADD(c);
    c = make_case("bf16-in-f32-out-nolse", 1, 203, 113, 4, 1, 64), c.qkv_dtype = QATTN_DTYPE_BF16, c.with_lse = false, ADD(c);
    c = make_case("f32-in-bf16-out", 1, 113, 113, 4, 2, 64), c.o_dtype = QATTN_DTYPE_BF16, ADD(c);
    c = make_case("f32-in-f16-out-strided", 1, 113, 113, 4, 2, 64), c.o_dtype = QATTN_DTYPE_F16, c.kv_cache = true,
    c.qo_bhld = true, ADD(c);
    /* precisions on FP32 inputs (and on other-dtype inputs) */
    c = make_case("prec-fp16", 1, 113, 203, 4, 2, 64), c.precision = QATTN_PRECISION_FP16, ADD(c);
    c = make_case("prec-bf16", 1, 113, 203, 4, 2, 128), c.precision = QATTN_PRECISION_BF16, c.causal = 1, ADD(c);
    c = make_case("prec-fp16-bf16-in", 1, 113, 113, 4, 2, 64), c.precision = QATTN_PRECISION_FP16, c.qkv_dtype = QATTN_DTYPE_BF16,
    c.o_dtype = QATTN_DTYPE_F16, ADD(c);
    c = make_case("prec-bf16-f16-in-nolse", 1, 113, 113, 4, 2, 64), c.precision = QATTN_PRECISION_BF16,
    c.qkv_dtype = QATTN_DTYPE_F16, c.with_lse = false, ADD(c);
    c = make_case("prec-fp32-explicit", 1, 17, 113, 4, 2, 64), c.precision = QATTN_PRECISION_FP32, ADD(c);
    c = make_case("prec-fp16-f16-in", 1, 113, 113, 2, 2, 64), c.precision = QATTN_PRECISION_FP16, c.qkv_dtype = QATTN_DTYPE_F16,
    c.o_dtype = QATTN_DTYPE_F16, ADD(c);
    /* explicit scale */
    c = make_case("scale-0.3", 1, 113, 113, 2, 2, 64), c.scale = 0.3f, ADD(c);
    /* decode shapes: few units (< 32) and Lk >= 1024, so the driver splits the KV axis */
    ADD(make_case("decode-split", 1, 1, 3000, 8, 2, 128));
    c = make_case("decode-split-f16-window", 1, 1, 3000, 8, 2, 64), c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F16,
    c.window_left = 700, ADD(c);
    c = make_case("decode-split-lq4-causal-cache", 2, 4, 2048, 4, 1, 64), c.causal = 1, c.kv_cache = true, ADD(c);
    {
        static const int32_t cu_q[] = {0, 1, 2, 3}, cu_k[] = {0, 1500, 1500, 2600};
        c = make_case("decode-split-varlen-kempty", 0, 0, 0, 8, 2, 64), set_varlen(&c, 3, cu_q, cu_k), ADD(c);
    }
    c = make_case("decode-split-prec-bf16", 1, 1, 2100, 4, 4, 64), c.precision = QATTN_PRECISION_BF16, ADD(c);
#undef ADD
    return n;
}

/* ---------------------------------------------------------------- one case */

typedef struct run_result {
    void *o_bytes; /* the whole output buffer, for bitwise comparison across thread counts */
    size_t o_size;
    float *lse;
} run_result;

static size_t dtype_bytes(int32_t d) { return d == QATTN_DTYPE_F32 ? 4 : 2; }

static long g_cases_run = 0;

static void run_case(const th_case *base, int case_index, const int32_t *isas, int n_isas) {
    static const int thread_counts[] = {1, 2, 3};
    th_case c = *base;
    c.seed = th_derive_seed((uint64_t)case_index);
    char desc[1024];
    th_describe(&c, desc, sizeof desc);
    if (!th_selected(desc)) return;

    th_problem pr;
    th_problem_make(&pr, &c);
    size_t n_out = (size_t)pr.rows * (size_t)c.n_heads * (size_t)c.head_dim;
    double *ref = th_xmalloc(n_out * sizeof *ref), *ref_lse = th_xmalloc((pr.lse_elems + 1) * sizeof *ref_lse);
    th_set_context(desc);
    if (!th_oracle(&pr, ref, ref_lse)) goto done_early;

    /* The tolerance for this case (see the top of the file). */
    double tol = FP32_REL_L2 + output_rounding(c.o_dtype);
    double lse_base_err = 0.0;
    th_metrics base_m = {0};
    if (rounds_inputs(c.precision)) {
        th_problem rounded;
        th_problem_rounded_copy(&rounded, &pr, c.precision);
        double *base_o = th_xmalloc(n_out * sizeof *base_o), *base_lse = th_xmalloc((pr.lse_elems + 1) * sizeof *base_lse);
        if (th_oracle(&rounded, base_o, base_lse)) {
            base_m = th_compare_f64(base_o, ref, n_out);
            th_metrics lm = th_compare_f64(base_lse, ref_lse, pr.lse_elems);
            lse_base_err = lm.max_abs;
            tol += BASELINE_FACTOR * base_m.rel_l2;
        }
        free(base_o);
        free(base_lse);
        free(rounded.q.buf);
        free(rounded.k.buf);
        free(rounded.v.buf);
    }

    float *out = th_xmalloc(n_out * sizeof *out + 1);
    printf("  %s\n", desc);
    for (int ii = 0; ii < n_isas; ii++) {
        run_result first = {0};
        for (int ti = 0; ti < 3; ti++) {
            int threads = thread_counts[ti];
            char label[32];
            snprintf(label, sizeof label, "%s/t%d", th_isa_name(isas[ii]), threads);
            qattn_ctx *ctx = th_ctx(isas[ii], threads);
            if (!ctx) continue;
            th_problem_poison(&pr);
            qattn_status s = qattn_forward(ctx, &pr.p);
            bool ok = TH_CHECK(s == QATTN_OK, "[%s] qattn_forward: %s: %s", label, qattn_status_str(s), qattn_ctx_last_error(ctx));
            qattn_ctx_destroy(ctx);
            if (!ok) continue;
            g_cases_run++;
            th_problem_check_written(&pr);
            th_problem_gather_o(&pr, out);
            th_metrics m = th_compare(out, ref, n_out);
            bool good = TH_CHECK(m.nonfinite == 0, "[%s] %zu non-finite outputs where the oracle is finite", label, m.nonfinite);
            good &= TH_CHECK(m.rel_l2 <= tol, "[%s] relative L2 %.3e above the bound %.3e (baseline %.3e)", label, m.rel_l2, tol,
                             base_m.rel_l2);
            good &= TH_CHECK(m.cosine >= 1.0 - tol, "[%s] cosine %.9f below 1 - %.3e", label, m.cosine, tol);
            if (pr.lse) {
                size_t bad = 0, worst = 0;
                double worst_err = 0;
                for (size_t i = 0; i < pr.lse_elems; i++) {
                    double r = ref_lse[i], got = pr.lse[i];
                    if (isinf(r) || isinf(got)) {
                        bad += !(r == got);
                        continue;
                    }
                    double err = fabs(got - r), bound = FP32_LSE_REL * (1.0 + fabs(r)) + BASELINE_FACTOR * lse_base_err;
                    if (!(err <= bound)) bad++;
                    if (!(err <= worst_err)) worst_err = err, worst = i;
                }
                good &= TH_CHECK(bad == 0, "[%s] %zu LSE entries off (worst %zu: %.9g vs oracle %.9g)", label, bad, worst,
                                 (double)pr.lse[worst], ref_lse[worst]);
            }
            if (!good || ti == 0) th_metrics_print(label, &m);
            if (!good && rounds_inputs(c.precision)) th_metrics_print("baseline", &base_m);
            /* Bitwise reproducibility for a fixed ISA, whatever the thread count. */
            size_t o_size = pr.o.elems * dtype_bytes(pr.o.dtype);
            if (ti == 0) {
                first.o_bytes = th_xmalloc(o_size);
                memcpy(first.o_bytes, pr.o.buf, o_size);
                first.o_size = o_size;
                if (pr.lse) {
                    first.lse = th_xmalloc(pr.lse_elems * sizeof(float) + 1);
                    memcpy(first.lse, pr.lse, pr.lse_elems * sizeof(float));
                }
            } else if (first.o_bytes) {
                TH_CHECK(memcmp(first.o_bytes, pr.o.buf, o_size) == 0, "[%s] output differs bitwise from 1 thread", label);
                if (pr.lse)
                    TH_CHECK(memcmp(first.lse, pr.lse, pr.lse_elems * sizeof(float)) == 0, "[%s] LSE differs bitwise from 1 thread",
                             label);
            }
        }
        free(first.o_bytes);
        free(first.lse);
    }
    free(out);
done_early:
    th_set_context(NULL);
    free(ref);
    free(ref_lse);
    th_problem_free(&pr);
}

/* ---------------------------------------------------------------- user workspace */

static void test_workspace(const th_case *base, int case_index, int32_t isa) {
    th_case c = *base;
    c.seed = th_derive_seed((uint64_t)case_index);
    c.isa = isa;
    c.n_threads = 3;
    char desc[1024];
    th_describe(&c, desc, sizeof desc);
    if (!th_selected(desc)) return;
    th_set_context(desc);
    printf("  workspace: %s\n", desc);
    th_problem pr;
    th_problem_make(&pr, &c);
    size_t n_out = (size_t)pr.rows * (size_t)c.n_heads * (size_t)c.head_dim;
    double *ref = th_xmalloc(n_out * sizeof *ref);
    float *out = th_xmalloc(n_out * sizeof *out);
    qattn_ctx *ctx = th_ctx(isa, 3);
    if (ctx && th_oracle(&pr, ref, NULL)) {
        size_t bytes = 0;
        qattn_status s = qattn_workspace_size(ctx, &pr.p, &bytes);
        TH_CHECK(s == QATTN_OK, "qattn_workspace_size: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
        TH_CHECK(bytes > 0, "workspace size is 0 for a non-empty problem");
        /* Exactly the size asked for, 64-byte aligned (posix_memalign), with NaN filling so
         * that a read of unwritten workspace shows. */
        void *ws = NULL;
        if (bytes > 0 && posix_memalign(&ws, 64, bytes) == 0) {
            memset(ws, 0xff, bytes);
            pr.p.workspace = ws;
            pr.p.workspace_size = bytes;
            th_problem_poison(&pr);
            s = qattn_forward(ctx, &pr.p);
            TH_CHECK(s == QATTN_OK, "forward with a workspace of exactly %zu bytes: %s: %s", bytes, qattn_status_str(s),
                     qattn_ctx_last_error(ctx));
            th_problem_check_written(&pr);
            th_problem_gather_o(&pr, out);
            th_metrics m = th_compare(out, ref, n_out);
            TH_CHECK(m.nonfinite == 0 && m.rel_l2 <= FP32_REL_L2, "with user workspace: rel L2 %.3e, %zu non-finite", m.rel_l2,
                     m.nonfinite);

            pr.p.workspace_size = bytes - 1;
            s = qattn_forward(ctx, &pr.p);
            TH_CHECK(s == QATTN_ERR_CAPACITY, "workspace one byte short: got %s, want QATTN_ERR_CAPACITY", qattn_status_str(s));
            TH_CHECK(strstr(qattn_ctx_last_error(ctx), "workspace") != NULL, "message does not name the workspace: '%s'",
                     qattn_ctx_last_error(ctx));
            free(ws);
        }
    }
    qattn_ctx_destroy(ctx);
    free(ref);
    free(out);
    th_problem_free(&pr);
    th_set_context(NULL);
}

int main(void) {
    th_init("test_forward");
    int32_t isas[TH_MAX_ISAS];
    int n_isas = th_available_isas(isas);
    if (n_isas == 1) printf("  (this CPU/OS has no AVX2+FMA+F16C: testing ISA ref only)\n");

    static th_case cases[MAX_CASES];
    int n = build_cases(cases);
    for (int i = 0; i < n; i++) run_case(&cases[i], i, isas, n_isas);

    /* user workspace: a plain case and a split-KV decode case (which needs partials) */
    for (int ii = 0; ii < n_isas; ii++) {
        for (int i = 0; i < n; i++)
            if (!strcmp(cases[i].name, "gqa4") || !strcmp(cases[i].name, "decode-split") || !strcmp(cases[i].name, "D8-causal-lq<lk") ||
                !strcmp(cases[i].name, "D16-decode-split"))
                test_workspace(&cases[i], 1000 + i, isas[ii]);
    }
    printf("  %d cases, %ld forward runs\n", n, g_cases_run);
    return th_finish();
}
