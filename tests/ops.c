/* The op table's runner (see ops.h): inputs, the FP64 oracle and the tolerance of a case, made
 * once; then every target, each run checked the same way. */
#define _POSIX_C_SOURCE 200809L /* posix_memalign */
#include "ops.h"
#include "ops_decode.h"
#include "ops_kvcache.h"

#include "quant/lowp.h" /* the INT8 / INT4 quantizers' configurations, for the baselines */

#if defined(QATTN_TEST_CUDA)
#include <cuda_runtime_api.h>
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- tolerances
 *
 * FP32 arithmetic (inputs FP32/FP16/BF16, precision AUTO or FP32): each output is a ratio of FP32
 * sums of O(Lk) terms, each weight coming from an FP32 dot product of O(D) terms. With
 * random-sign rounding errors the relative error grows like sqrt(D + Lk) * 2^-24 (~6e-8): for
 * D = 256 and Lk = 3000 that is ~3.5e-6, and a few ulp of exp2f on top. 1e-5 relative L2 leaves
 * about 3x headroom; a real bug (a wrong row, a missed tile, a mask off by one) is >= 1e-3.
 * LSE = ln(sum) + max: absolute error ~ relative error of the sum plus rounding of the max
 * (~|lse| * 2^-24): we allow 1e-5 * (1 + |lse|). Softcap and ALiBi add two roundings per score:
 * the tanh (relative error <= 2.9e-7, an absolute score error <= 2.9e-7 * softcap) and the ALiBi
 * subtraction (a bias b rounds to b * 2^-24, but the key's weight carries exp(-b) with it: at most
 * b e^-b 2^-24 < 2.2e-8), both far below 1e-5 for the softcaps and scores of the table (|s| <~ 6).
 * A block mask only removes keys.
 *
 * FP16/BF16 precision: the kernel rounds Q, K, V to the precision and then computes in FP32. The
 * baseline is "round the inputs to that precision, then the FP64 oracle"; its error against the
 * oracle on the inputs as given, e_base, is the unavoidable part. FlashAttention's rule: the
 * kernel's error must be <= 2 * e_base, plus the FP32 floor above for the FP32 arithmetic that
 * follows the rounding (which matters when e_base ~ 0, e.g. FP16 inputs at FP16 precision).
 * LSE likewise: 2x the baseline's largest LSE error on top of the FP32 bound.
 *
 * Half-precision outputs: rounding o to FP16 / BF16 adds up to the unit roundoff per element,
 * 2^-11 / 2^-8 relative, hence at most that much relative L2; it is added to the bound.
 *
 * INT8 (docs/ARCHITECTURE.md "Tolerances"): baseline = relative L2 error of "quantize then
 * dequantize Q, K, V exactly as the scheme does (same granularity, smoothing), then exact FP64
 * attention". The kernel may add the error of quantizing P (8 bits) on top; its size is of the
 * same order as the input quantization error of V (8 bits too), so it at most roughly doubles the
 * error: k = 3 (default, x255 P against the block max), k = 4 for intfa (x127 P, rounded against a
 * running max, so small probabilities vanish) and 2 for sage (P in FP32), plus an absolute floor of
 * 1e-6 for problems whose baseline error is ~0. Small head dims (D 8..24) keep the same k, derived
 * rather than loosened (docs/FORMAT.md section 6): with per-token scales amax / 127 and scale
 * 1/sqrt(D), a score's rounding error has standard deviation sigma_q sigma_k c(D) / (127 sqrt 6),
 * c(D) = E max over D channels of |N(0,1)| (1.78 at D 8, 2.60 at D 64): fewer channels make the
 * input rounding error, hence the baseline, smaller (0.69x at D 8), while the P rounding error does
 * not depend on D. err^2 ~ base^2 + eP^2, so the ratio needed is sqrt(1 + (r64 c(64) / c(D))^2)
 * with r64 = eP / base at D 64: measured r64 0.55 (qattn) and at most 1.37 (intfa) give 1.28 and
 * 2.24 at D 8, inside k = 3 and 4. LSE: within 3x the baseline's LSE error (a score-scale
 * quantity) + 0.02 for the P rounding.
 *
 * INT4 (docs/FORMAT.md section 8): baseline = "quantize Q and K to 4-bit codes exactly as
 * precision INT4 does (channel balancing, rotation, per-token scales amax / 7), V to INT8 per token
 * minus its mean, dequantize, then FP64 attention". A 4-bit step is 18x the INT8 step, so the Q/K
 * rounding noise (about 330x INT8's variance) dominates the baseline; the kernel adds only the u8
 * rounding of P (the INT8 default scheme's), under a tenth of the Q/K term: k = 1.5 + 1e-6
 * (measured ratios 0.99-1.01). INT4 must also be less accurate than INT8 on the same inputs (the
 * codes really are 4-bit). LSE: within 2x the baseline's largest LSE error + 0.05.
 *
 * FP8 emulation (Q, K, V rounded to E4M3 / E5M2, FP32 arithmetic): one element's rounding is at
 * most the unit roundoff, 2^-4 (E4M3) / 2^-3 (E5M2) relative; the output averages such errors over
 * D channels and the visible keys, so its relative L2 stays below one unit roundoff: 0.06 and
 * 0.12. LSE: -inf exactly where the oracle's is.
 *
 * CUDA targets: the bounds of tests/gpu/test_gpu.c, which accumulate with half-precision P on the
 * tensor cores: relative L2 2e-3 (FP16 inputs), 1.6e-2 (BF16), 5e-2 (INT8); LSE 1e-2 (0.1 at
 * INT8) absolute. INT4: the CPU's bounds, the lower one too; the GPU's Q/K codes are the CPU's bit for bit
 * (tests/gpu/test_gpu.c), its V codes per channel and 128-key tile instead of per token, a rounding of V's
 * size like the CPU's, under a tenth of the 4-bit Q/K term the baseline holds. A case the CUDA backend
 * refuses (qattn_supports) is counted, not failed. The KV-cache forward on CUDA gathers the keys and
 * runs the same forward kernels: the FP16/BF16 bounds above, the cache after the append exact as on
 * the CPU; its FP32 cases are refused (QATTN_ERR_UNSUPPORTED), counted.
 *
 * KV-cache decode (qattn_kv_decode, tests/ops_decode.c; docs/KVCACHE.md): two oracles, on N(0, 1)
 * data with one x8 outlier channel in K, D 8..256.
 * - Against the FP64 oracle on the dequantized cache (qattn_kv_cache_read: the values the kernels
 *   see). FP16/BF16 storage: only the FP32 accumulation differs (the FP32 paragraph above):
 *   relative L2 2e-5, LSE 1e-5 (1 + |ref|). INT8 storage: the integer kernels also hold q and the
 *   softmax weights to 16 bits (src/kv/kv_internal.h: ~2^-16 relative per element, on top of the
 *   FP32 rounding): relative L2 2e-4; LSE 1e-5 (1 + |ref|) (the FP32 rule) plus, per entry, six standard
 *   deviations of the score error of q's 16-bit codes (op_dec_q16_lse_term, derived there from q, the
 *   cached keys and the cache's channel factors: 9e-5 to 2.8e-3 over these cases and seeds). This is the INT8 rule of
 *   docs/ARCHITECTURE.md "Tolerances" with the dequantized cache as the baseline's input: the
 *   codes' own rounding is in the oracle, so only what the kernels add is bounded. A calibrated
 *   cache reads back in the original domain, so the same bounds hold for it.
 * - The storage. FP16/BF16: each cached value read back is the original rounded to nearest, checked
 *   element by element (op_dec_make: |stored - x| <= 2^-11 |x| (FP16), 2^-8 |x| (BF16)); the output
 *   against the oracle on the original values is reported, not bounded (it follows from the two checks
 *   by the triangle inequality; an output-level bound on it is a statistic of the draw: BF16 measured
 *   up to 1.3e-2 over 24 seeds, then 1.6e-2 on another draw). INT8 (per-token scales, K rotated), whose
 *   codes are not an element-wise rounding: against the oracle on the original values, 4e-2 (half a step
 *   of 1/127 of each row's largest element, carried through the softmax).
 * Measured (the default seed, then the worst over QATTN_TEST_SEED 1..24): against the dequantized
 * cache FP16/BF16 1.4e-6 (2.0e-6), INT8 5.7e-5 (9.0e-5); against the original values FP16 1.3e-3
 * (1.6e-3), BF16 7.1e-3 (1.3e-2), INT8 1.5e-2 (3.6e-2 at D 40, whose Hadamard blocks of 8 channels
 * spread the outlier less), calibrated 1.2e-2 (1.7e-2). The INT8 LSE term replaced a flat
 * 1e-4 (1 + |ref|) that one entry of the D 16 MQA case missed with QATTN_TEST_SEED=22 (1.9e-4
 * against 1.8e-4: a row that sees a single key has its one score as LSE, so q's rounding times the
 * x8 outlier channel of K is not averaged down). With the term, the largest LSE error over QATTN_TEST_SEED
 * 1..24 is 0.24 of its bound; q held to 12 bits instead of 16 fails it (144 target-case reports).
 * The CUDA decode (qattn_kv_decode_cuda): bench/gpu_decode.py's bounds against the oracle on the
 * dequantized cache, relative L2 1e-3 for INT8 (tensor-core P.V with the weights held as two f16
 * halves, ~22 bits) and 1e-5 for FP16/BF16 (tensor cores too, q and the weights split into 16-bit
 * parts of ~22-24 bits in all, FP32 accumulators: FP32-level), or the CPU bound where larger;
 * against the original values the CPU bounds (the storage error dominates); LSE the CPU bound plus
 * 1e-3 absolute, bench/gpu_decode.py's bound on the GPU decode's LSE against the CPU decode's. Head
 * dims the CUDA decode refuses (all but 64 and 128: QATTN_ERR_UNSUPPORTED) are counted, not
 * failed. */
#define FP32_REL_L2 1e-5
#define FP32_LSE_REL 1e-5
#define BASELINE_FACTOR 2.0
#define INT4_K 1.5
#define FLOOR 1e-6
static const double int8_k[3] = {3.0, 4.0, 2.0}; /* qattn, intfa, sage */
/* The decode's bounds (above), by cache dtype: against the dequantized cache, against the original
 * values; the CUDA decode's against the dequantized cache and its extra LSE error. */
static double dec_rel_l2(int32_t t) { return t == QATTN_DTYPE_I8 ? 2e-4 : 2e-5; }
static double dec_orig_rel_l2(int32_t t) { return t == QATTN_DTYPE_I8 ? 4e-2 : 0.0; } /* 0: storage checked per element */
static double dec_cuda_rel_l2(int32_t t) { return t == QATTN_DTYPE_I8 ? 1e-3 : 1e-5; }
#define DEC_CUDA_LSE_ABS 1e-3
static const char *int8_scheme_name[3] = {"qattn", "intfa", "sage"};

/* What a run must satisfy, fixed per case before any target runs. */
typedef struct op_bound {
    double rel_l2;     /* relative L2 against the oracle, at most */
    double min_rel_l2; /* and above this (INT4: worse than INT8); 0 = no lower bound */
    bool cosine;       /* cosine >= 1 - rel_l2 too */
    double lse_rel, lse_abs; /* |lse - ref| <= lse_rel (1 + |ref|) + lse_abs; infinities exactly */
    double baseline;   /* for the report */
    double orig_rel_l2; /* OP_KV_DECODE: relative L2 against the oracle on the original values, at most (0: not bounded) */
} op_bound;

static double output_rounding(int32_t o_dtype) {
    return o_dtype == QATTN_DTYPE_F16 ? 0x1.0p-11 : o_dtype == QATTN_DTYPE_BF16 ? 0x1.0p-8 : 0.0;
}

static bool rounds_inputs(int32_t precision) { return precision == QATTN_PRECISION_FP16 || precision == QATTN_PRECISION_BF16; }
static bool is_fp8(int32_t precision) { return precision == QATTN_PRECISION_FP8_E4M3 || precision == QATTN_PRECISION_FP8_E5M2; }
static bool is_integer(int32_t precision) { return precision == QATTN_PRECISION_INT8 || precision == QATTN_PRECISION_INT4; }
static size_t dtype_bytes(int32_t d) { return d == QATTN_DTYPE_F32 ? 4 : 2; }

/* ---------------------------------------------------------------- targets */

static qattn_ctx *target_ctx(const op_target *t) {
    qattn_ctx_options opt;
    memset(&opt, 0, sizeof opt);
    opt.backend = t->backend;
    opt.isa = t->isa;
    opt.n_threads = t->n_threads;
    opt.cuda_kernels = t->cuda_kernels;
    qattn_ctx *ctx = NULL;
    return qattn_ctx_create(&ctx, &opt) == QATTN_OK ? ctx : NULL;
}

int op_targets(op_target targets[OP_MAX_TARGETS]) {
    int32_t isas[TH_MAX_ISAS];
    int n_isas = th_available_isas(isas), n = 0;
    static const int32_t thread_counts[] = {1, 2, 3, 8};
    for (int i = 0; i < n_isas; i++)
        for (int ti = 0; ti < 4; ti++) {
            int32_t threads = thread_counts[ti];
            op_target *t = &targets[n++];
            memset(t, 0, sizeof *t);
            t->backend = QATTN_BACKEND_CPU, t->isa = isas[i], t->n_threads = threads;
            snprintf(t->name, sizeof t->name, "%s/t%d", th_isa_name(isas[i]), threads);
        }
#if defined(QATTN_TEST_CUDA)
    static const struct {
        int32_t kernels;
        const char *name;
    } cuda[] = {{QATTN_CUDA_KERNELS_AUTO, "cuda/auto"}, {QATTN_CUDA_KERNELS_MMA, "cuda/mma"}};
    for (int i = 0; i < 2; i++) {
        op_target t;
        memset(&t, 0, sizeof t);
        t.backend = QATTN_BACKEND_CUDA, t.cuda_kernels = cuda[i].kernels;
        snprintf(t.name, sizeof t.name, "%s", cuda[i].name);
        qattn_ctx *ctx = target_ctx(&t);
        if (!ctx) {
            printf("  (no CUDA device: the CUDA targets are skipped)\n");
            break;
        }
        qattn_ctx_destroy(ctx);
        targets[n++] = t;
    }
#else
    printf("  (built without CUDA: CPU targets only)\n");
#endif
    return n;
}

/* Per target: cases run, and cases the target refused as unsupported (CUDA only). */
static long g_ran[OP_MAX_TARGETS], g_unsupported[OP_MAX_TARGETS];

void op_print_summary(const op_target *targets, int n_targets) {
    for (int i = 0; i < n_targets; i++)
        printf("  target %-10s %ld cases run, %ld not supported\n", targets[i].name, g_ran[i], g_unsupported[i]);
}

/* ---------------------------------------------------------------- inputs */

static float problem_get(const th_problem *pr, const th_tensor *t, int64_t b, int64_t pos, int64_t head, int64_t c) {
    bool q_like = t == &pr->q || t == &pr->o;
    if (pr->c.varlen) return th_tensor_get(t, 0, (q_like ? pr->cu_q[b] : pr->cu_k[b]) + pos, head, c);
    return th_tensor_get(t, b, pos, head, c);
}

/* x -> a x + b on channel c of every row of one tensor (all heads when head < 0). */
static void scale_rows(th_problem *pr, th_tensor *t, int64_t head, bool (*channel)(int c), float a, float b) {
    bool q_like = t == &pr->q;
    int heads = q_like ? pr->c.n_heads : pr->c.n_kv_heads;
    for (int64_t s = 0; s < pr->c.batch; s++) {
        int64_t len = q_like ? th_seq_len_q(pr, s) : th_seq_len_k(pr, s);
        for (int64_t i = 0; i < len; i++)
            for (int h = 0; h < heads; h++) {
                if (head >= 0 && h != head) continue;
                for (int c = 0; c < pr->c.head_dim; c++)
                    if (!channel || channel(c)) th_problem_set(pr, t, s, i, h, c, a * problem_get(pr, t, s, i, h, c) + b);
            }
    }
}

static bool channel_3(int c) { return c % 32 == 3; }
static bool channel_5(int c) { return c % 32 == 5; }
static bool channel_7(int c) { return c % 32 == 7; }

static void fill_uniform(th_problem *pr, th_tensor *t, th_rng *rng) {
    bool q_like = t == &pr->q;
    int heads = q_like ? pr->c.n_heads : pr->c.n_kv_heads;
    for (int64_t s = 0; s < pr->c.batch; s++) {
        int64_t len = q_like ? th_seq_len_q(pr, s) : th_seq_len_k(pr, s);
        for (int64_t i = 0; i < len; i++)
            for (int h = 0; h < heads; h++)
                for (int c = 0; c < pr->c.head_dim; c++) th_problem_set(pr, t, s, i, h, c, (float)th_rng_uniform(rng, 0.0, 1.0));
    }
}

/* Reshapes th_problem's N(0, 1) inputs into the case's distribution (op_dist). */
static void apply_dist(th_problem *pr, op_dist dist, th_rng *rng) {
    int H = pr->c.n_heads, HK = pr->c.n_kv_heads, D = pr->c.head_dim;
    switch (dist) {
    case OP_DIST_NORMAL: break;
    case OP_DIST_UNIFORM:
        fill_uniform(pr, &pr->q, rng), fill_uniform(pr, &pr->k, rng), fill_uniform(pr, &pr->v, rng);
        break;
    case OP_DIST_OUTLIER: scale_rows(pr, &pr->k, -1, channel_3, 20.0f, 15.0f); break;
    case OP_DIST_OUTLIER12: scale_rows(pr, &pr->k, -1, channel_5, 12.0f, 10.0f); break;
    case OP_DIST_SPREAD:
        scale_rows(pr, &pr->k, -1, channel_7, 10.0f, 0.0f);
        scale_rows(pr, &pr->q, -1, channel_7, 2.0f, 0.0f);
        break;
    case OP_DIST_SINK:
        for (int64_t s = 0; s < pr->c.batch; s++) {
            if (th_seq_len_k(pr, s) == 0) continue;
            for (int h = 0; h < HK; h++)
                for (int c = 0; c < D; c++) th_problem_set(pr, &pr->k, s, 0, h, c, 3.0f), th_problem_set(pr, &pr->v, s, 0, h, c, 0.1f);
        }
        for (int64_t s = 0; s < pr->c.batch; s++) /* q = |q| / 2 + 0.2: every query aligned with the sink */
            for (int64_t i = 0; i < th_seq_len_q(pr, s); i++)
                for (int h = 0; h < H; h++)
                    for (int c = 0; c < D; c++) th_problem_set(pr, &pr->q, s, i, h, c, fabsf(problem_get(pr, &pr->q, s, i, h, c)) * 0.5f + 0.2f);
        break;
    case OP_DIST_HEADS:
        for (int h = 0; h < H; h++) scale_rows(pr, &pr->q, h, NULL, 0.3f * powf(10.0f, H > 1 ? (float)h / (float)(H - 1) : 1.0f), 0.0f);
        for (int g = 0; g < HK; g++) {
            float x = HK > 1 ? (float)g / (float)(HK - 1) : 1.0f;
            scale_rows(pr, &pr->k, g, NULL, 0.3f * powf(10.0f, x), 0.0f);
            scale_rows(pr, &pr->v, g, NULL, 0.01f * powf(10.0f, 4.0f * x), 0.0f);
        }
        break;
    }
}

typedef struct mask_buf {
    uint8_t *bytes;
    size_t size;
    int64_t nq, nk, bs, hs, rs;
} mask_buf;

static void mask_make(mask_buf *mb, const op_mask *m, const th_case *c, th_rng *rng) {
    mb->nq = (c->seqlen_q + m->bq - 1) / m->bq;
    mb->nk = (c->seqlen_k + m->bk - 1) / m->bk;
    if (mb->nq < 1) mb->nq = 1;
    if (mb->nk < 1) mb->nk = 1;
    mb->rs = mb->nk + m->pad;
    mb->hs = m->share_heads ? 0 : mb->nq * mb->rs;
    int64_t heads = m->share_heads ? 1 : c->n_heads;
    mb->bs = m->share_batch ? 0 : heads * mb->nq * mb->rs;
    int64_t batches = m->share_batch ? 1 : c->batch;
    mb->size = (size_t)(batches * heads * mb->nq * mb->rs);
    mb->bytes = th_xmalloc(mb->size + 1);
    for (size_t i = 0; i < mb->size; i++) mb->bytes[i] = th_rng_uniform(rng, 0, 1) < m->density ? (uint8_t)(1 + th_rng_u64(rng) % 255) : 0;
    for (int64_t b = 0; b < batches; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t qb = 0; qb < mb->nq; qb++) {
                uint8_t *row = mb->bytes + b * mb->bs + h * mb->hs + qb * mb->rs;
                if (m->zero_rows && (h + qb) % 3 == 0) memset(row, 0, (size_t)mb->nk);
                if (m->nan_dead && mb->nk > 1) row[1] = 0;
                for (int64_t j = mb->nk; j < mb->rs; j++) row[j] = 0xAB; /* padding: never read */
            }
}

/* NaN into K and V of key block 1 of every sequence (hidden everywhere by mask_make): a skipped
 * block must never be read into a row. */
static void poison_hidden_block(th_problem *pr, const op_mask *m) {
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

/* The ALiBi paper's slopes for H heads (2^(-8(h+1)/H)), varied per sequence for [B, H]; NaN
 * between rows (never read). */
static float *make_slopes(const op_case *oc, int64_t *stride, size_t *count) {
    int H = oc->c.n_heads;
    int64_t rows = oc->alibi == 2 ? oc->c.batch : 1;
    *stride = oc->alibi == 2 ? H + 3 : 0;
    int64_t n = rows * (H + 3);
    *count = (size_t)(n > 0 ? n : 1);
    float *s = th_xmalloc(*count * sizeof *s);
    for (int64_t i = 0; i < n; i++) s[i] = NAN;
    for (int64_t b = 0; b < rows; b++)
        for (int h = 0; h < H; h++) s[b * (H + 3) + h] = exp2f(-8.0f * (float)(h + 1) / (float)H) * (1.0f + 0.25f * (float)b);
    return s;
}

/* A case made concrete: the problem (pr, kv for OP_FORWARD_KVCACHE, dec for OP_KV_DECODE), its
 * attachments, the oracle and the bound, and where a run leaves its output. */
typedef struct op_state {
    op_kind kind;
    th_problem pr;
    op_kv_problem kv;
    op_dec_problem dec;
    mask_buf mask;
    float *slopes;
    size_t n_slopes;
    size_t n_out;
    double *ref, *ref_lse;
    double *ref_orig; /* OP_KV_DECODE: the oracle on the original values (bound.orig_rel_l2) */
    double *lse_term; /* OP_KV_DECODE, INT8 cache: per LSE entry, what q's 16-bit codes may add (else NULL) */
    op_bound bound;
    void *o;      /* the output buffer as the call writes it (padding included), for the bitwise comparisons */
    size_t o_size;
    float *lse;   /* and the LSE, in the oracle's layout */
    size_t lse_elems;
} op_state;

static void state_free(op_state *st) {
    free(st->mask.bytes), free(st->slopes), free(st->ref), free(st->ref_lse), free(st->ref_orig), free(st->lse_term);
    if (st->kind == OP_FORWARD_KVCACHE) op_kv_free(&st->kv);
    else if (st->kind == OP_KV_DECODE) op_dec_free(&st->dec);
    else th_problem_free(&st->pr);
}

/* ---------------------------------------------------------------- baselines */

static void free_rounded(th_problem *rounded) { free(rounded->q.buf), free(rounded->k.buf), free(rounded->v.buf); }

/* Relative L2 and largest finite LSE error of the oracle on `p` (other inputs) against the case's oracle. */
static double oracle_distance(const op_state *st, const qattn_params *p, double *lse_err) {
    th_problem other = st->pr;
    other.p = *p;
    double *o = th_xmalloc(st->n_out * sizeof *o + 8), *lse = th_xmalloc((st->pr.lse_elems + 1) * sizeof *lse);
    double e = INFINITY;
    *lse_err = INFINITY;
    if (th_oracle(&other, o, lse)) {
        e = th_compare_f64(o, st->ref, st->n_out).rel_l2;
        *lse_err = 0;
        for (size_t i = 0; i < st->pr.lse_elems; i++)
            if (isfinite(st->ref_lse[i]) && fabs(lse[i] - st->ref_lse[i]) > *lse_err) *lse_err = fabs(lse[i] - st->ref_lse[i]);
    }
    free(o), free(lse);
    return e;
}

/* FP16/BF16 precision: the inputs rounded to the precision, then the oracle. */
static double rounding_baseline(const op_state *st, int32_t precision, double *lse_err) {
    th_problem rounded;
    th_problem_rounded_copy(&rounded, &st->pr, precision);
    double e = oracle_distance(st, &rounded.p, lse_err);
    free_rounded(&rounded);
    return e;
}

/* Codes of one tensor (q, k or v of p) in a contiguous [tokens, heads, D] layout. */
static void codes_alloc(qattn_ctx *ctx, qattn_int8_tensor *t, const th_problem *pr, int which, int32_t gran, int32_t block, bool smooth) {
    const qattn_params *p = &pr->p;
    int64_t heads = which ? p->n_kv_heads : p->n_heads, D = p->head_dim;
    int64_t tokens = which ? (pr->c.varlen ? pr->cu_k[pr->c.batch] : p->batch * p->seqlen_k) : pr->rows;
    int64_t ns = 0;
    qattn_int8_scale_count(ctx, p, which, gran, block, &ns);
    memset(t, 0, sizeof *t);
    t->data = th_xmalloc((size_t)(tokens * heads * D) + 1);
    t->scale = th_xmalloc((size_t)ns * 4 + 4);
    t->mean = smooth ? th_xmalloc((size_t)(p->batch * heads * D) * 4 + 4) : NULL;
    t->granularity = gran, t->block_size = block;
    t->head_stride = D, t->seq_stride = heads * D;
    t->batch_stride = (which ? p->seqlen_k : p->seqlen_q) * t->seq_stride;
}

static void codes_free(qattn_int8_tensor *t) { free(t->data), free(t->scale), free(t->mean); }

/* Dequantizes t into a float copy of tensor `which` (same strides as the problem's view). */
static float *dequantized(qattn_ctx *ctx, const th_problem *pr, int which, const qattn_int8_tensor *t, const th_tensor *view) {
    float *x = th_xmalloc(view->elems * sizeof(float));
    for (size_t i = 0; i < view->elems; i++) x[i] = NAN;
    qattn_params p = pr->p;
    p.qkv_dtype = pr->c.qkv_dtype;
    qattn_status s = qattn_dequantize_int8(ctx, &p, which, t, x + view->offset);
    TH_CHECK(s == QATTN_OK, "baseline dequantize %d: %s", which, qattn_ctx_last_error(ctx));
    return x;
}

/* The INT8 / INT4 baseline: Q, K, V quantized and dequantized as cfg does, then the oracle. */
static double quant_baseline(const op_state *st, const qattn_lowp_cfg *cfg, bool int4, double *lse_err) {
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 1);
    if (!ctx) return INFINITY;
    const th_problem *pr = &st->pr;
    qattn_params p = pr->p;
    const th_tensor *views[3] = {&pr->q, &pr->k, &pr->v};
    int32_t gran[3] = {cfg->q_gran, cfg->k_gran, cfg->v_gran}, blk[3] = {cfg->q_block, cfg->k_block, cfg->v_block};
    bool smooth[3] = {false, cfg->k_smooth != 0, cfg->v_smooth != 0};
    if (int4) { /* Q, K per token through the joint transform, V per token minus its mean */
        for (int w = 0; w < 3; w++) gran[w] = QATTN_QUANT_PER_TOKEN, blk[w] = 1, smooth[w] = w == 2;
        smooth[1] = true;
    }
    qattn_int8_tensor t[3];
    bool v_float = !int4 && cfg->p_mode == QATTN_P_FP32; /* sage: V stays FP32 */
    for (int w = 0; w < 3; w++) codes_alloc(ctx, &t[w], pr, w, gran[w], blk[w], smooth[w]);
    qattn_status s = QATTN_OK;
    if (int4 || cfg->qk_smooth) /* Q and K together: codes of the transformed rows (Q' K'^T = Q K^T) */
        s = qattn_quantize_qk_smoothed(ctx, &p, cfg->qk_smooth, cfg->qk_smooth_min_exp, cfg->qk_rotate, int4 ? cfg->qk_code_max : 127, NULL,
                                       &t[0], &t[1], NULL, NULL);
    else
        for (int w = 0; w < 2 && s == QATTN_OK; w++) s = qattn_quantize_int8(ctx, &p, w, &t[w]);
    TH_CHECK(s == QATTN_OK, "baseline quantize q/k: %s", qattn_ctx_last_error(ctx));
    if (!v_float) {
        s = qattn_quantize_int8(ctx, &p, QATTN_TENSOR_V, &t[2]);
        TH_CHECK(s == QATTN_OK, "baseline quantize v: %s", qattn_ctx_last_error(ctx));
    }
    if (int4) { /* the codes really are 4-bit: within [-7, 7], each row's largest value at +-7 */
        int bad_code = 0, has_seven = 0;
        for (int w = 0; w < 2; w++) {
            int64_t tokens = w ? (pr->c.varlen ? pr->cu_k[pr->c.batch] : p.batch * p.seqlen_k) : pr->rows;
            int64_t n = tokens * (w ? p.n_kv_heads : p.n_heads) * p.head_dim;
            for (int64_t i = 0; i < n; i++) bad_code |= t[w].data[i] < -7 || t[w].data[i] > 7, has_seven |= abs(t[w].data[i]) == 7;
        }
        TH_CHECK(!bad_code, "a Q/K code outside [-7, 7]");
        TH_CHECK(pr->rows == 0 || has_seven, "no Q/K code reaches +-7 (each row's largest value should)");
    }
    float *deq[3];
    for (int w = 0; w < 3; w++) deq[w] = w == 2 && v_float ? NULL : dequantized(ctx, pr, w, &t[w], views[w]);
    qattn_params bp = pr->p;
    bp.qkv_dtype = QATTN_DTYPE_F32;
    bp.q = deq[0] + pr->q.offset, bp.k = deq[1] + pr->k.offset;
    if (deq[2]) bp.v = deq[2] + pr->v.offset;
    th_problem rounded; /* sage's FP32 V: the inputs as given, as float */
    if (!deq[2]) {
        th_problem_rounded_copy(&rounded, pr, QATTN_PRECISION_FP32);
        bp.v = rounded.p.v;
    }
    double e = oracle_distance(st, &bp, lse_err);
    if (!deq[2]) free_rounded(&rounded);
    for (int w = 0; w < 3; w++) free(deq[w]), codes_free(&t[w]);
    qattn_ctx_destroy(ctx);
    return e;
}

/* INT8 (default scheme) on the reference ISA: INT4 must be less accurate on the same inputs. */
static double int8_error(const op_state *st) {
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 1);
    if (!ctx) return 0.0;
    th_problem pr = st->pr;
    pr.p.precision = QATTN_PRECISION_INT8, pr.p.int8_scheme = QATTN_INT8_DEFAULT;
    double e = 0.0;
    if (TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "int8 for comparison: %s", qattn_ctx_last_error(ctx))) {
        float *out = th_xmalloc(st->n_out * sizeof *out + 4);
        th_problem_gather_o(&pr, out);
        e = th_compare(out, st->ref, st->n_out).rel_l2;
        free(out);
    }
    qattn_ctx_destroy(ctx);
    return e;
}

/* The case's bound on the CPU targets (the top of this file). */
static op_bound cpu_bound(const op_case *oc, const op_state *st) {
    op_bound b;
    memset(&b, 0, sizeof b);
    int32_t prec = oc->c.precision;
    double lse_base = 0.0;
    if (prec == QATTN_PRECISION_INT8) {
        qattn_lowp_cfg cfg;
        qattn_lowp_scheme_cfg(oc->int8_scheme, &cfg);
        b.baseline = quant_baseline(st, &cfg, false, &lse_base);
        b.rel_l2 = int8_k[oc->int8_scheme] * b.baseline + FLOOR;
        b.lse_abs = 0.02 + 3.0 * lse_base;
    } else if (prec == QATTN_PRECISION_INT4) {
        qattn_lowp_cfg cfg;
        qattn_lowp_int4_cfg(&cfg);
        b.baseline = quant_baseline(st, &cfg, true, &lse_base);
        b.rel_l2 = INT4_K * b.baseline + FLOOR;
        b.min_rel_l2 = int8_error(st);
        b.lse_abs = 2.0 * lse_base + 0.05;
    } else if (is_fp8(prec)) {
        b.rel_l2 = prec == QATTN_PRECISION_FP8_E4M3 ? 0.06 : 0.12;
        b.lse_abs = INFINITY;
    } else {
        b.cosine = true;
        b.rel_l2 = FP32_REL_L2 + output_rounding(oc->c.o_dtype);
        b.lse_rel = FP32_LSE_REL;
        if (rounds_inputs(prec)) {
            b.baseline = rounding_baseline(st, prec, &lse_base);
            b.rel_l2 += BASELINE_FACTOR * b.baseline;
            b.lse_abs = BASELINE_FACTOR * lse_base;
        }
    }
    return b;
}

static op_bound cuda_bound(const op_case *oc, const op_bound *cpu) {
    op_bound b = *cpu;
    if (oc->kind == OP_KV_DECODE) { /* the top of this file, "KV-cache decode" */
        b.rel_l2 = fmax(cpu->rel_l2, dec_cuda_rel_l2(oc->dec.cache_dtype));
        b.lse_abs = cpu->lse_abs + DEC_CUDA_LSE_ABS;
        return b;
    }
    if (oc->c.precision == QATTN_PRECISION_INT4) { /* the top of this file, "CUDA targets" */
        b.cosine = false;
        return b;
    }
    bool int8 = oc->c.precision == QATTN_PRECISION_INT8;
    bool bf16 = oc->c.qkv_dtype == QATTN_DTYPE_BF16 || oc->c.precision == QATTN_PRECISION_BF16;
    double rel = int8 ? 5e-2 : bf16 ? 1.6e-2 : 2e-3;
    b.rel_l2 = fmax(cpu->rel_l2, rel + output_rounding(oc->c.o_dtype));
    b.min_rel_l2 = 0.0;
    b.cosine = false;
    b.lse_abs = fmax(cpu->lse_abs, int8 ? 0.1 : 1e-2);
    return b;
}

/* ---------------------------------------------------------------- making a case */

static void describe_forward(const op_case *oc, const th_case *c, char *buf, size_t len) {
    char base[1024];
    th_describe(c, base, sizeof base);
    int n = snprintf(buf, len, "%s", base);
    if (n < 0 || (size_t)n >= len) return;
    if (c->precision == QATTN_PRECISION_INT8) n += snprintf(buf + n, len - (size_t)n, " scheme=%s", int8_scheme_name[oc->int8_scheme]);
    static const char *dists[] = {"normal", "uniform", "outlier", "sink", "spread", "heads", "outlier12"};
    if (oc->dist != OP_DIST_NORMAL && (size_t)n < len) n += snprintf(buf + n, len - (size_t)n, " dist=%s", dists[oc->dist]);
    if ((oc->softcap > 0 || oc->alibi) && (size_t)n < len)
        n += snprintf(buf + n, len - (size_t)n, " softcap=%g alibi=%s", (double)oc->softcap, oc->alibi == 2 ? "[B,H]" : oc->alibi ? "[H]" : "none");
    const op_mask *m = &oc->mask;
    if (m->bq && (size_t)n < len)
        n += snprintf(buf + n, len - (size_t)n, " block_mask=%dx%d density=%.2f%s%s%s%s pad=%d", m->bq, m->bk, m->density,
                      m->share_heads ? " shared-heads" : "", m->share_batch ? " shared-batch" : "", m->zero_rows ? " zero-rows" : "",
                      m->nan_dead ? " nan-in-hidden-block" : "", m->pad);
    if (oc->user_workspace && (size_t)n < len) n += snprintf(buf + n, len - (size_t)n, " user-workspace");
    for (int i = 0; i < 2 && oc->poke[i].tensor && (size_t)n < len; i++) {
        const op_poke *k = &oc->poke[i];
        n += snprintf(buf + n, len - (size_t)n, " %c[%lld,%lld,%lld,%lld]=%g", k->tensor, (long long)k->b, (long long)k->pos, (long long)k->head,
                      (long long)k->c, (double)k->value);
    }
}

/* The case's pokes: single input elements set to NaN or Inf. */
static void apply_pokes(th_problem *pr, const op_case *oc) {
    for (int i = 0; i < 2 && oc->poke[i].tensor; i++) {
        const op_poke *k = &oc->poke[i];
        th_tensor *t = k->tensor == 'q' ? &pr->q : k->tensor == 'k' ? &pr->k : &pr->v;
        th_problem_set(pr, t, k->b, k->pos, k->head, k->c, k->value);
    }
}

static void describe(const op_case *oc, const th_case *c, char *buf, size_t len) {
    if (oc->kind == OP_FORWARD_KVCACHE) op_kv_describe(oc, c->seed, buf, len);
    else if (oc->kind == OP_KV_DECODE) op_dec_describe(oc, c->seed, buf, len);
    else describe_forward(oc, c, buf, len);
}

static bool state_make_forward(op_state *st, const op_case *oc, const th_case *c) {
    if (!th_problem_make(&st->pr, c)) return false;
    th_problem *pr = &st->pr;
    pr->p.int8_scheme = oc->int8_scheme;
    th_rng rng;
    th_rng_init(&rng, c->seed ^ 0x5eedu);
    apply_dist(pr, oc->dist, &rng);
    if (oc->mask.bq) {
        mask_make(&st->mask, &oc->mask, c, &rng);
        pr->p.block_mask = st->mask.bytes;
        pr->p.block_mask_q = oc->mask.bq, pr->p.block_mask_k = oc->mask.bk;
        pr->p.block_mask_batch_stride = st->mask.bs, pr->p.block_mask_head_stride = st->mask.hs;
        pr->p.block_mask_row_stride = st->mask.rs;
        if (oc->mask.nan_dead) poison_hidden_block(pr, &oc->mask);
    }
    if (oc->edit) oc->edit(pr);
    apply_pokes(pr, oc);
    pr->p.softcap = oc->softcap;
    if (oc->alibi) {
        int64_t stride = 0;
        st->slopes = make_slopes(oc, &stride, &st->n_slopes);
        pr->p.alibi_slopes = st->slopes, pr->p.alibi_batch_stride = stride;
    }
    st->n_out = (size_t)pr->rows * (size_t)c->n_heads * (size_t)c->head_dim;
    st->ref = th_xmalloc(st->n_out * sizeof *st->ref + 8);
    st->ref_lse = th_xmalloc((pr->lse_elems + 1) * sizeof *st->ref_lse);
    if (!th_oracle(pr, st->ref, st->ref_lse)) return false;
    if ((oc->softcap > 0 || oc->alibi) && st->n_out > 0) { /* not vacuous: the modifiers change the oracle's answer */
        qattn_params plain = pr->p;
        plain.softcap = 0.0f, plain.alibi_slopes = NULL, plain.alibi_batch_stride = 0;
        double lse_err;
        double d = oracle_distance(st, &plain, &lse_err);
        TH_CHECK(d > 1e-3, "the modifiers change the oracle's output by only %.3e", d);
    }
    st->bound = cpu_bound(oc, st);
    if (oc->rel_l2_bound > 0) st->bound.rel_l2 = oc->rel_l2_bound;
    st->o = pr->o.buf, st->o_size = pr->o.elems * dtype_bytes(pr->o.dtype);
    st->lse = pr->lse, st->lse_elems = pr->lse ? pr->lse_elems : 0;
    return true;
}

/* The cache's inputs are exact in their dtype and o is FP32: the FP32 bound (ops_kvcache.c). */
static bool state_make_kvcache(op_state *st, const op_case *oc, const th_case *c) {
    op_kv_problem *kv = &st->kv;
    op_kv_make(kv, oc, c->seed);
    st->n_out = kv->n_out;
    st->ref = th_xmalloc(st->n_out * sizeof *st->ref + 8);
    st->ref_lse = th_xmalloc((kv->n_lse + 1) * sizeof *st->ref_lse);
    op_kv_oracle(kv, st->ref, st->ref_lse);
    st->bound.cosine = true;
    st->bound.rel_l2 = FP32_REL_L2;
    st->bound.lse_rel = FP32_LSE_REL;
    st->o = kv->o, st->o_size = kv->n_out * sizeof(float);
    st->lse = kv->lse, st->lse_elems = kv->n_lse;
    return true;
}

/* Two oracles (the dequantized cache, the original values) and the decode's bounds (the top of this file). */
static bool state_make_decode(op_state *st, const op_case *oc, const th_case *c) {
    op_dec_problem *d = &st->dec;
    op_dec_make(d, oc, c->seed);
    st->n_out = d->n_out;
    st->ref = th_xmalloc(st->n_out * sizeof *st->ref + 8);
    st->ref_orig = th_xmalloc(st->n_out * sizeof *st->ref_orig + 8);
    st->ref_lse = th_xmalloc((d->n_lse + 1) * sizeof *st->ref_lse);
    op_dec_oracle(d, st->ref, st->ref_lse, st->ref_orig);
    int32_t t = oc->dec.cache_dtype;
    st->bound.rel_l2 = dec_rel_l2(t);
    st->bound.lse_rel = FP32_LSE_REL; /* INT8: plus lse_term per entry */
    st->bound.orig_rel_l2 = dec_orig_rel_l2(t);
    if (t == QATTN_DTYPE_I8) {
        st->lse_term = th_xmalloc((d->n_lse + 1) * sizeof *st->lse_term);
        op_dec_q16_lse_term(d, st->lse_term);
    }
    st->o = d->o, st->o_size = d->n_out * sizeof(float);
    st->lse = d->lse, st->lse_elems = d->n_lse;
    return true;
}

static bool state_make(op_state *st, const op_case *oc, const th_case *c) {
    memset(st, 0, sizeof *st);
    st->kind = oc->kind;
    if (oc->kind == OP_KV_DECODE) return state_make_decode(st, oc, c);
    return oc->kind == OP_FORWARD_KVCACHE ? state_make_kvcache(st, oc, c) : state_make_forward(st, oc, c);
}

/* ---------------------------------------------------------------- running on a target */

/* A caller workspace of exactly the size asked for, 64-byte aligned, filled with NaN bytes so that a
 * read of unwritten workspace shows. */
static void *workspace_alloc(qattn_ctx *ctx, const qattn_params *p, size_t *bytes) {
    *bytes = 0;
    qattn_status s = qattn_workspace_size(ctx, p, bytes);
    TH_CHECK(s == QATTN_OK, "qattn_workspace_size: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
    TH_CHECK(*bytes > 0, "workspace size is 0 for a non-empty problem");
    void *ws = NULL;
    if (*bytes == 0 || posix_memalign(&ws, 64, *bytes) != 0) return NULL;
    memset(ws, 0xff, *bytes);
    return ws;
}

/* One byte short of the workspace asked for: refused, naming the workspace. */
static void check_short_workspace(qattn_ctx *ctx, qattn_params p, void *ws, size_t bytes) {
    p.workspace = ws, p.workspace_size = bytes - 1;
    qattn_status s = qattn_forward(ctx, &p);
    TH_CHECK(s == QATTN_ERR_CAPACITY, "workspace one byte short: got %s, want QATTN_ERR_CAPACITY", qattn_status_str(s));
    TH_CHECK(strstr(qattn_ctx_last_error(ctx), "workspace") != NULL, "message does not name the workspace: '%s'", qattn_ctx_last_error(ctx));
}

static qattn_status run_on_host(qattn_ctx *ctx, const op_case *oc, op_state *st) {
    th_problem *pr = &st->pr;
    if (!oc->user_workspace) return qattn_forward(ctx, &pr->p);
    size_t bytes;
    void *ws = workspace_alloc(ctx, &pr->p, &bytes);
    if (!ws) return QATTN_ERR_OUT_OF_MEMORY;
    qattn_params p = pr->p;
    p.workspace = ws, p.workspace_size = bytes;
    qattn_status s = qattn_forward(ctx, &p);
    check_short_workspace(ctx, pr->p, ws, bytes);
    free(ws);
    return s;
}

#if defined(QATTN_TEST_CUDA)
void *op_to_device(const void *host, size_t bytes) {
    if (!host) return NULL;
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) return NULL;
    cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
    return d;
}

/* The same call with every array of p in device memory; o and lse copied back whole (padding too,
 * so that the written-elements check sees stray writes). */
static qattn_status run_on_device(qattn_ctx *ctx, const op_case *oc, op_state *st) {
    th_problem *pr = &st->pr;
    size_t qb = pr->q.elems * dtype_bytes(pr->q.dtype), kb = pr->k.elems * dtype_bytes(pr->k.dtype), vb = pr->v.elems * dtype_bytes(pr->v.dtype);
    size_t ob = pr->o.elems * dtype_bytes(pr->o.dtype), lb = pr->lse ? (pr->lse_elems + 16) * sizeof(float) : 0;
    size_t cub = (size_t)(pr->c.batch + 1) * sizeof(int32_t);
    char *dq = op_to_device(pr->q.buf, qb), *dk = op_to_device(pr->k.buf, kb), *dv = op_to_device(pr->v.buf, vb), *dob = op_to_device(pr->o.buf, ob);
    float *dlse = op_to_device(pr->lse, lb);
    int32_t *dcq = pr->c.varlen ? op_to_device(pr->cu_q, cub) : NULL, *dck = pr->c.varlen ? op_to_device(pr->cu_k, cub) : NULL;
    uint8_t *dmask = op_to_device(st->mask.bytes, st->mask.size);
    float *dslopes = op_to_device(st->slopes, st->n_slopes * sizeof(float));
    qattn_params p = pr->p;
    p.q = dq + pr->q.offset * (int64_t)dtype_bytes(pr->q.dtype);
    p.k = dk + pr->k.offset * (int64_t)dtype_bytes(pr->k.dtype);
    p.v = dv + pr->v.offset * (int64_t)dtype_bytes(pr->v.dtype);
    p.o = dob + pr->o.offset * (int64_t)dtype_bytes(pr->o.dtype);
    p.lse = dlse;
    if (pr->c.varlen) p.cu_seqlens_q = dcq, p.cu_seqlens_k = dck;
    if (dmask) p.block_mask = dmask;
    if (dslopes) p.alibi_slopes = dslopes;
    void *dws = NULL;
    if (oc->user_workspace) {
        size_t bytes = 0;
        qattn_workspace_size(ctx, &p, &bytes);
        if (cudaMalloc(&dws, bytes ? bytes : 1) == cudaSuccess) p.workspace = dws, p.workspace_size = bytes;
    }
    qattn_status s = qattn_forward(ctx, &p);
    cudaDeviceSynchronize();
    cudaMemcpy(pr->o.buf, dob, ob, cudaMemcpyDeviceToHost);
    if (pr->lse) cudaMemcpy(pr->lse, dlse, lb, cudaMemcpyDeviceToHost);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dob), cudaFree(dlse), cudaFree(dcq), cudaFree(dck), cudaFree(dmask), cudaFree(dslopes);
    cudaFree(dws);
    return s;
}
#endif

/* Whether the CUDA backend runs the case: qattn_supports for a forward; the KV-cache forward and the
 * decode (qattn_kv_decode_cuda) are called, and their refusal (QATTN_ERR_UNSUPPORTED: an FP32 cache,
 * a head dim the decode does not take) is counted after the call (calls_counting_refusal). */
static bool runs_on_cuda(qattn_ctx *ctx, const op_case *oc, op_state *st) {
    if (oc->kind != OP_FORWARD) return true;
    return qattn_supports(ctx, &st->pr.p) == QATTN_OK;
}

static bool calls_counting_refusal(op_kind kind) { return kind == OP_KV_DECODE || kind == OP_FORWARD_KVCACHE; }

static const char *call_name(op_kind kind, bool cpu) {
    if (kind == OP_KV_DECODE) return cpu ? "qattn_kv_decode" : "qattn_kv_decode_cuda";
    return kind == OP_FORWARD_KVCACHE ? "qattn_forward_kvcache" : "qattn_forward";
}

/* One call on a target, outputs poisoned first (and the cache as it was before any call; a CPU
 * decode reads the cache built on its context, run_ctx). */
static qattn_status run(qattn_ctx *ctx, const op_case *oc, op_state *st, bool cpu) {
    if (oc->kind == OP_KV_DECODE) return cpu ? op_dec_run_cpu(&st->dec, ctx) : op_dec_run_cuda(&st->dec, ctx);
    if (oc->kind == OP_FORWARD_KVCACHE) {
        op_kv_restore_cache(&st->kv);
        op_kv_poison_outputs(&st->kv);
        if (cpu) return qattn_forward_kvcache(ctx, &st->kv.p, &st->kv.kv);
#if defined(QATTN_TEST_CUDA)
        return op_kv_run_cuda(&st->kv, ctx);
#else
        return QATTN_ERR_UNSUPPORTED;
#endif
    }
    th_problem_poison(&st->pr);
    if (cpu) return run_on_host(ctx, oc, st);
#if defined(QATTN_TEST_CUDA)
    return run_on_device(ctx, oc, st);
#else
    return QATTN_ERR_UNSUPPORTED;
#endif
}

/* The output and LSE of one run, kept for the bitwise comparisons. */
typedef struct op_bytes {
    void *o;
    float *lse;
    size_t o_size;
    const char *from; /* the target it came from */
} op_bytes;

static void bytes_keep(op_bytes *b, const op_state *st, const char *from) {
    b->o_size = st->o_size;
    b->o = th_xmalloc(b->o_size);
    memcpy(b->o, st->o, b->o_size);
    b->lse = st->lse ? th_xmalloc(st->lse_elems * sizeof(float) + 1) : NULL;
    if (st->lse) memcpy(b->lse, st->lse, st->lse_elems * sizeof(float));
    b->from = from;
}

static void bytes_free(op_bytes *b) {
    free(b->o), free(b->lse);
    memset(b, 0, sizeof *b);
}

static void bytes_expect_same(const op_bytes *b, const op_state *st, const char *label, const char *what) {
    TH_CHECK(memcmp(b->o, st->o, b->o_size) == 0, "[%s] output differs bitwise from %s (%s)", label, b->from, what);
    if (st->lse) TH_CHECK(memcmp(b->lse, st->lse, st->lse_elems * sizeof(float)) == 0, "[%s] LSE differs bitwise from %s (%s)", label, b->from, what);
}

/* LSE entries outside the bound: NaN where the oracle's is NaN, infinities exactly, finite ones within it. */
static size_t lse_outside(const op_state *st, const op_bound *b, size_t *worst) {
    size_t bad = 0;
    double worst_err = 0;
    *worst = 0;
    for (size_t i = 0; i < st->lse_elems; i++) {
        double r = st->ref_lse[i], got = st->lse[i];
        if (isnan(r) || isnan(got)) {
            if (!(isnan(r) && isnan(got)) && !bad++) *worst = i;
            continue;
        }
        if (isinf(r) || isinf(got)) {
            if (!(r == got) && !bad++) *worst = i;
            continue;
        }
        double err = fabs(got - r);
        if (!(err <= b->lse_rel * (1.0 + fabs(r)) + b->lse_abs + (st->lse_term ? st->lse_term[i] : 0.0))) bad++;
        if (!(err <= worst_err)) worst_err = err, *worst = i;
    }
    return bad;
}

/* What the call wrote besides o and lse, and whether it wrote all of them: true when right. Then
 * the output in the oracle's layout. */
static bool check_written(const op_state *st, float *out, const char *label) {
    if (st->kind == OP_FORWARD_KVCACHE) {
        memcpy(out, st->kv.o, st->n_out * sizeof *out);
        return op_kv_check_after(&st->kv, st->ref, label);
    }
    if (st->kind == OP_KV_DECODE) {
        memcpy(out, st->dec.o, st->n_out * sizeof *out);
        return op_dec_check_after(&st->dec, label);
    }
    th_problem_gather_o(&st->pr, out);
    return th_problem_check_written(&st->pr);
}

/* Every check of one run against the oracle; true when all pass. */
static bool check_run(const op_state *st, const op_bound *b, float *out, const char *label) {
    bool good = check_written(st, out, label);
    th_metrics m = th_compare(out, st->ref, st->n_out);
    good &= TH_CHECK(m.nonfinite == 0, "[%s] %zu outputs differ from the oracle in NaN/Inf-ness", label, m.nonfinite);
    good &= TH_CHECK(m.rel_l2 <= b->rel_l2, "[%s] relative L2 %.3e above the bound %.3e (baseline %.3e)", label, m.rel_l2, b->rel_l2, b->baseline);
    if (b->min_rel_l2 > 0)
        good &= TH_CHECK(m.rel_l2 > b->min_rel_l2, "[%s] relative L2 %.3e not above INT8's %.3e", label, m.rel_l2, b->min_rel_l2);
    if (b->cosine) good &= TH_CHECK(m.cosine >= 1.0 - b->rel_l2, "[%s] cosine %.9f below 1 - %.3e", label, m.cosine, b->rel_l2);
    if (st->lse) {
        size_t worst, bad = lse_outside(st, b, &worst);
        good &= TH_CHECK(bad == 0, "[%s] %zu LSE entries off (worst %zu: %.9g vs oracle %.9g)", label, bad, worst, (double)st->lse[worst],
                         st->ref_lse[worst]);
    }
    if (st->ref_orig && b->orig_rel_l2 > 0) { /* the INT8-cache decode: the storage error, against the original values */
        double e = th_compare(out, st->ref_orig, st->n_out).rel_l2;
        good &= TH_CHECK(e <= b->orig_rel_l2, "[%s] relative L2 against the original values %.3e above the bound %.3e", label, e, b->orig_rel_l2);
    }
    if (!good) th_metrics_print(label, &m);
    return good;
}

/* A target's context: a new one, except for a decode on the CPU, whose targets of one ISA share
 * the context their cache was built on (ops_decode.h), with the target's thread count. */
static qattn_ctx *run_ctx(const op_target *t, op_state *st, bool cpu) {
    if (cpu && st->kind == OP_KV_DECODE) return op_dec_cpu_ctx(&st->dec, t->isa, t->n_threads);
    return target_ctx(t);
}

static void run_ctx_done(qattn_ctx *ctx, const op_state *st, bool cpu) {
    if (!(cpu && st->kind == OP_KV_DECODE)) qattn_ctx_destroy(ctx); /* the decode's stays with its problem */
}

/* Which CPU runs must agree bitwise across ISAs: the integer forward paths on every ISA; the
 * INT8-cache decode on the SIMD ISAs (docs/KVCACHE.md: the AVX-VNNI and AVX-512 decode kernels
 * are bitwise the AVX2 kernel; the reference kernel computes the same integers, but its softmax
 * takes libm's exp2f, not the vector exp2). */
static bool bitwise_across_isas(const op_case *oc, int32_t isa) {
    if (oc->kind == OP_KV_DECODE) return oc->dec.cache_dtype == QATTN_DTYPE_I8 && isa != QATTN_ISA_REF;
    return is_integer(oc->c.precision);
}

void op_run_case(const op_case *oc, int index, const op_target *targets, int n_targets) {
    th_case c = oc->c;
    c.seed = th_derive_seed((uint64_t)index);
    char desc[1400];
    describe(oc, &c, desc, sizeof desc);
    if (!th_selected(desc)) return;
    th_set_context(desc);
    op_state st;
    if (!state_make(&st, oc, &c)) {
        state_free(&st);
        th_set_context(NULL);
        return;
    }
    float *out = th_xmalloc(st.n_out * sizeof *out + 4);
    op_bytes per_isa, first_cpu; /* the first run of this ISA; the first CPU run that must agree across ISAs */
    memset(&per_isa, 0, sizeof per_isa), memset(&first_cpu, 0, sizeof first_cpu);
    int32_t per_isa_of = -1;
    double worst = 0.0, worst_orig = 0.0;
    for (int ti = 0; ti < n_targets; ti++) {
        const op_target *t = &targets[ti];
        bool cpu = t->backend == QATTN_BACKEND_CPU;
        if (cpu && !(oc->threads & (1u << t->n_threads))) continue;
        qattn_ctx *ctx = run_ctx(t, &st, cpu);
        if (!TH_CHECK(ctx != NULL, "[%s] no context", t->name)) continue;
        if (!cpu && !runs_on_cuda(ctx, oc, &st)) {
            g_unsupported[ti]++;
            run_ctx_done(ctx, &st, cpu);
            continue;
        }
        qattn_status s = run(ctx, oc, &st, cpu);
        if (!cpu && calls_counting_refusal(oc->kind) && s == QATTN_ERR_UNSUPPORTED) { /* refused: counted, not failed */
            g_unsupported[ti]++;
            run_ctx_done(ctx, &st, cpu);
            continue;
        }
        bool ok = TH_CHECK(s == QATTN_OK, "[%s] %s: %s: %s", t->name, call_name(oc->kind, cpu), qattn_status_str(s), qattn_ctx_last_error(ctx));
        run_ctx_done(ctx, &st, cpu);
        if (!ok) continue;
        g_ran[ti]++;
        op_bound b = cpu ? st.bound : cuda_bound(oc, &st.bound);
        check_run(&st, &b, out, t->name);
        if (oc->property) oc->property(oc, &st.pr, out, t->name);
        double e = th_compare(out, st.ref, st.n_out).rel_l2;
        worst = e > worst ? e : worst;
        if (st.ref_orig) {
            e = th_compare(out, st.ref_orig, st.n_out).rel_l2;
            worst_orig = e > worst_orig ? e : worst_orig;
        }
        if (!cpu) continue;
        /* the same ISA gives bitwise identical results for any thread count (docs/ARCHITECTURE.md "Numerics") */
        if (per_isa.o && per_isa_of == t->isa) bytes_expect_same(&per_isa, &st, t->name, "thread counts");
        else bytes_free(&per_isa), bytes_keep(&per_isa, &st, t->name), per_isa_of = t->isa;
        /* the integer paths give bitwise identical results on every ISA (the INT8-cache decode on every SIMD ISA) */
        if (bitwise_across_isas(oc, t->isa)) {
            if (first_cpu.o) bytes_expect_same(&first_cpu, &st, t->name, "ISAs");
            else bytes_keep(&first_cpu, &st, t->name);
        }
    }
    printf("  %s\n    worst rel L2 %.3e, bound %.3e", desc, worst, st.bound.rel_l2);
    if (st.bound.baseline > 0) printf(" (baseline %.3e)", st.bound.baseline);
    if (st.ref_orig && st.bound.orig_rel_l2 > 0) printf("; against the original values %.3e, bound %.3e", worst_orig, st.bound.orig_rel_l2);
    else if (st.ref_orig) printf("; against the original values %.3e (storage checked per element)", worst_orig);
    printf("\n");
    bytes_free(&per_isa), bytes_free(&first_cpu);
    free(out);
    state_free(&st);
    th_set_context(NULL);
}
