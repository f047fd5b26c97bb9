/* qattn accuracy: whole-tensor error of every precision / INT8 scheme against the FP64 oracle,
 * on N(0,1), U(0,1) and realistic inputs (outlier channels in K, an attention sink, heads of
 * very different scale, rotary-embedded keys with large channels, a sink plus outliers), and a
 * one-line verdict per method against the INT8 bar (rel L1 <= 0.02 everywhere, <= 0.013 on N(0,1));
 * int4 (4-bit Q/K codes) is far less accurate than INT8 and is held to the same bar, so its verdict
 * says how far it is from INT8's.
 * Default (quick): B 1, H 8, HK 2, L 1024, D 128, non-causal (about half a minute on two cores).
 * --full: L 1k and 4k, causal and not, GQA and MHA, plus L 16k (H 2, HK 1, causal) on the inputs
 * with structure (several minutes: the FP64 oracle of L 4k costs ~17 GFLOP). Shape flags: that shape only.
 * Progress goes to stderr.
 *   qattn accuracy [--inputs LIST] [--methods LIST] [--candidates] [--full] [shape flags] [--json]
 * --candidates adds the candidate INT8 configurations that decided the default scheme
 * (docs/FORMAT.md); it uses the library's internal configuration entry point. */
#include "cli.h"

#include "quant/lowp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "accuracy";

enum { IN_NORMAL, IN_UNIFORM, IN_OUTLIER, IN_SINK, IN_HEADS, IN_ROTARY, IN_SINKOUT, IN_COUNT };
static const char *input_names[IN_COUNT] = {"normal", "uniform", "outlier", "sink", "heads", "rotary", "sinkout"};

/* Outlier channels of K: 4 of every 128 carry a large, mostly constant component (x12 spread,
 * +10 offset), the rest is N(0,1). */
static void add_outlier_channels(float *k, int64_t nk, int64_t D) {
    for (int64_t i = 0; i < nk; i++)
        if ((i % D) % 32 == 5) k[i] = k[i] * 12.0f + 10.0f;
}

/* RoPE (the rotate-half pairing of Llama: channel c < D/2 with c + D/2), angle pos * 10000^(-2c/D),
 * on x [B, L, Ht, D]. */
static void apply_rope(float *x, int64_t B, int64_t L, int64_t Ht, int64_t D) {
    int64_t half = D / 2;
    for (int64_t b = 0; b < B; b++)
        for (int64_t pos = 0; pos < L; pos++)
            for (int64_t h = 0; h < Ht; h++) {
                float *r = x + ((b * L + pos) * Ht + h) * D;
                for (int64_t c = 0; c < half; c++) {
                    double th = (double)pos * pow(10000.0, -2.0 * (double)c / (double)D);
                    double cs = cos(th), sn = sin(th), a = r[c], bb = r[c + half];
                    r[c] = (float)(a * cs - bb * sn);
                    r[c + half] = (float)(a * sn + bb * cs);
                }
            }
}

/* Inputs [B, L, H, D] contiguous. */
static void make_inputs(int which, const qattn_params *p, float *q, float *k, float *v, uint64_t seed) {
    cli_rng r;
    cli_rng_seed(&r, seed);
    int64_t D = p->head_dim, H = p->n_heads, HK = p->n_kv_heads;
    int64_t nq = p->batch * p->seqlen_q * H * D, nk = p->batch * p->seqlen_k * HK * D;
    if (which == IN_UNIFORM) {
        cli_fill_uniform(&r, q, nq, 0.0f, 1.0f);
        cli_fill_uniform(&r, k, nk, 0.0f, 1.0f);
        cli_fill_uniform(&r, v, nk, 0.0f, 1.0f);
        return;
    }
    cli_fill_normal(&r, q, nq, 0.0f, 1.0f);
    cli_fill_normal(&r, k, nk, 0.0f, 1.0f);
    cli_fill_normal(&r, v, nk, 0.0f, 1.0f);
    if (which == IN_OUTLIER) {
        add_outlier_channels(k, nk, D);
    } else if (which == IN_ROTARY) {
        /* Rotary-embedded keys as in LLMs: before RoPE, a few channel pairs of K are large (x8
         * with a +6 offset: two slow pairs, which stay near-constant after rotation, and two fast
         * ones, which RoPE turns into large zero-mean oscillations), Q's same pairs x2; then RoPE
         * on both with the token position. */
        static const int pairs[4] = {3, 11, -1, -5}; /* negative: from the slow (high) end */
        for (int pi = 0; pi < 4; pi++) {
            int64_t c = pairs[pi] >= 0 ? pairs[pi] : D / 2 + pairs[pi];
            for (int64_t i = 0; i < nk; i += D)
                k[i + c] = k[i + c] * 8.0f + 6.0f, k[i + c + D / 2] = k[i + c + D / 2] * 8.0f + 6.0f;
            for (int64_t i = 0; i < nq; i += D) q[i + c] *= 2.0f, q[i + c + D / 2] *= 2.0f;
        }
        apply_rope(q, p->batch, p->seqlen_q, H, D);
        apply_rope(k, p->batch, p->seqlen_k, HK, D);
    } else if (which == IN_SINK || which == IN_SINKOUT) {
        /* An attention sink: every query shares a head-specific direction u (q = 0.6 N + u), key 0
         * of each sequence is 1.5 u (it draws most of the attention), and its value is small. */
        float *u = malloc((size_t)(H * D) * sizeof(float));
        if (!u) return;
        cli_fill_normal(&r, u, H * D, 0.0f, 1.0f);
        for (int64_t i = 0; i < nq; i++) q[i] = 0.6f * q[i] + u[i % (H * D)];
        int64_t group = H / HK;
        for (int64_t b = 0; b < p->batch; b++)
            for (int64_t g = 0; g < HK; g++)
                for (int64_t c = 0; c < D; c++) {
                    int64_t idx = ((b * p->seqlen_k) * HK + g) * D + c;
                    k[idx] = 1.5f * u[(g * group) * D + c];
                    v[idx] *= 0.05f;
                }
        free(u);
        if (which == IN_SINKOUT) add_outlier_channels(k, nk, D); /* the sink key gets them too */
    } else if (which == IN_HEADS) {
        /* Heads of very different scale: Q/K of head h scaled by 0.3 .. 3 (flat to very peaked
         * softmax), V by 0.01 .. 100. */
        int64_t tq = p->batch * p->seqlen_q, tk = p->batch * p->seqlen_k;
        for (int64_t t = 0; t < tq; t++)
            for (int64_t h = 0; h < H; h++) {
                float s = 0.3f * powf(10.0f, H > 1 ? (float)h / (float)(H - 1) : 0.0f);
                for (int64_t c = 0; c < D; c++) q[(t * H + h) * D + c] *= s;
            }
        for (int64_t t = 0; t < tk; t++)
            for (int64_t g = 0; g < HK; g++) {
                float x = HK > 1 ? (float)g / (float)(HK - 1) : 0.0f;
                float s = 0.3f * powf(10.0f, x), sv = 0.01f * powf(10.0f, 4.0f * x);
                for (int64_t c = 0; c < D; c++) k[(t * HK + g) * D + c] *= s, v[(t * HK + g) * D + c] *= sv;
            }
    }
}

typedef struct method {
    const char *name;
    int32_t precision, scheme;
    int candidate; /* index into cands + 1, or 0; CAL_*: the calibrated prefill or an INT8 KV-cache decode */
} method;

enum { CAL_PREFILL = -1, KV_PLAIN = -2, KV_CALIBRATED = -3 };
#define KV_ROWS 64 /* decode: the last KV_ROWS query positions as new tokens over the whole cache */

/* INT8 KV-cache decode of batch entry 0 (p: B 1, Lq == Lk): K, V appended, the last n query
 * positions decoded (causal as p: bottom-right aligned, so each row sees what it sees in the
 * prefill), written to out rows [Lq - n, Lq). cal: NULL, or set on the cache first. */
static qattn_status kv_decode_rows(qattn_ctx *ctx, const qattn_params *p, const qattn_calibration *cal, float *out, int64_t n) {
    qattn_kv_cache_options ko = {p->n_kv_heads, p->head_dim, 16, QATTN_DTYPE_I8, p->seqlen_k / 16 + 2, 1, 0, 0};
    qattn_kv_cache *c;
    qattn_status s = qattn_kv_cache_create(ctx, &ko, &c);
    if (s != QATTN_OK) return s;
    if (cal) s = qattn_kv_cache_set_calibration(ctx, c, cal);
    if (s == QATTN_OK) s = qattn_kv_cache_append(ctx, c, 0, p->k, p->v, p->seqlen_k, QATTN_DTYPE_F32);
    int64_t row = (int64_t)p->n_heads * p->head_dim, first = p->seqlen_q - n;
    int32_t id = 0;
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = (const float *)p->q + first * row, dp.o = out + first * row, dp.seq_ids = &id, dp.n_seqs = 1;
    dp.seqlen_q = (int32_t)n, dp.n_heads = p->n_heads, dp.causal = p->causal, dp.scale = p->scale;
    if (s == QATTN_OK) s = qattn_kv_decode(ctx, c, &dp);
    qattn_kv_cache_destroy(ctx, c);
    return s;
}

/* --candidates: the default scheme's predicted logit noise sigma of every (sequence, kv head) and
 * which units are sharp (docs/FORMAT.md section 7, "Sharp units"), printed under the input's table. */
static void print_sigma(qattn_ctx *ctx, const qattn_params *p) {
    int64_t H = p->n_heads, HK = p->n_kv_heads, D = p->head_dim, B = p->batch;
    int64_t nq = B * p->seqlen_q * H * D, nk = B * p->seqlen_k * HK * D, units = B * HK;
    int8_t *codes = malloc((size_t)(2 * nq + 2 * nk));
    float *fl = malloc((size_t)(B * p->seqlen_q * H + B * p->seqlen_k * HK + B * HK * D + units) * sizeof(float));
    uint8_t *sharp = malloc((size_t)units);
    if (!codes || !fl || !sharp) {
        free(codes), free(fl), free(sharp);
        return;
    }
    qattn_int8_tensor tq = {codes, fl, NULL, QATTN_QUANT_PER_TOKEN, 0, p->seqlen_q * H * D, H * D, D, 0};
    qattn_int8_tensor tk = {codes + nq, fl + B * p->seqlen_q * H, fl + B * p->seqlen_q * H + B * p->seqlen_k * HK, QATTN_QUANT_PER_TOKEN, 0,
                            p->seqlen_k * HK * D, HK * D, D, 0};
    float *sigma = tk.mean + B * HK * D;
    qattn_qk_refine rf = {QATTN_QK_REFINE_NOISE, qattn_effective_scale(p), codes + nq + nk, codes + 2 * nq + nk, sharp, sigma};
    if (qattn_quantize_qk_smoothed(ctx, p, QATTN_QK_SMOOTH_MAX_EXP, 0, 1, 127, NULL, &tq, &tk, NULL, &rf) == QATTN_OK) {
        printf("  predicted logit noise sigma per (b, kv head), threshold %.3f:", (double)QATTN_QK_REFINE_NOISE);
        for (int64_t u = 0; u < units && u < 16; u++) printf(" %.4f%s", (double)sigma[u], sharp[u] ? "*" : "");
        printf("%s\n", units > 16 ? " ..." : "");
    }
    free(codes), free(fl), free(sharp);
}

/* The candidates for the default scheme (docs/FORMAT.md, "Choosing the default scheme"). */
typedef struct cand {
    const char *name;
    qattn_lowp_cfg cfg;
} cand;

static void cand_list(cand *c, int *n) {
    qattn_lowp_cfg base;
    qattn_lowp_scheme_cfg(QATTN_INT8_INTFA, &base);
    int i = 0;
    c[i].name = "A intfa(q,k tok; v head; P127 run)", c[i++].cfg = base;
    qattn_lowp_cfg x = base;
    x.p_mode = QATTN_P_U8_RUNNING;
    c[i].name = "B A + u8 P x255", c[i++].cfg = x;
    x.p_mode = QATTN_P_U8_BLOCKMAX;
    c[i].name = "C B + block row max", c[i++].cfg = x;
    x.k_smooth = 1;
    c[i].name = "D C + K smoothing", c[i++].cfg = x;
    x.v_gran = QATTN_QUANT_PER_CHANNEL;
    c[i].name = "E D + V per channel", c[i++].cfg = x;
    x.v_smooth = 1;
    c[i].name = "F E + V smoothing", c[i++].cfg = x;
    qattn_lowp_cfg y = x;
    y.p_mode = QATTN_P_S8_BLOCKMAX;
    c[i].name = "G F with P x127", c[i++].cfg = y;
    y = x;
    y.q_gran = y.k_gran = QATTN_QUANT_PER_BLOCK;
    c[i].name = "H F with per-block(64) Q,K", c[i++].cfg = y;
    y = x;
    y.v_gran = QATTN_QUANT_PER_HEAD;
    c[i].name = "I F with V per head", c[i++].cfg = y;
    y = x;
    y.v_gran = QATTN_QUANT_PER_TOKEN, y.p_mode = QATTN_P_U8_VSCALED;
    c[i].name = "J F with V per token folded into P", c[i++].cfg = y;
    y.v_smooth = 0;
    c[i].name = "K J without V smoothing", c[i++].cfg = y;
    y.v_smooth = 1;
    y.qk_smooth = QATTN_QK_SMOOTH_MAX_EXP;
    c[i].name = "L J + Q/K channel smoothing (2^e)", c[i++].cfg = y;
    qattn_lowp_cfg z = y;
    z.qk_smooth_min_exp = 2;
    c[i].name = "M L, factor 1 where |e| < 2", c[i++].cfg = z;
    z = y;
    z.qk_smooth = 2;
    c[i].name = "N L with |e| <= 2", c[i++].cfg = z;
    z = y;
    z.qk_rotate = 1;
    c[i].name = "O L + Hadamard rotation of Q, K", c[i++].cfg = z;
    z.qk_smooth = 1;
    c[i].name = "P O with |e| <= 1", c[i++].cfg = z;
    z.p_mode = QATTN_P_FP32;
    c[i].name = "X O with FP32 P and V", c[i++].cfg = z;
    z = y;
    z.qk_rotate = 1; /* O again: the residual codes of sharp units (docs/FORMAT.md section 7) */
    z.qk_refine_noise = QATTN_QK_REFINE_NOISE;
    c[i].name = "Y O + residual Q/K of sharp units", c[i++].cfg = z;
    z.qk_refine_noise = 0.03f;
    c[i].name = "Y1 Y with threshold 0.03", c[i++].cfg = z;
    z.qk_refine_noise = 0.0075f;
    c[i].name = "Y2 Y with threshold 0.0075", c[i++].cfg = z;
    z.qk_refine_noise = 1e-30f;
    c[i].name = "Y3 Y, every unit refined", c[i++].cfg = z;
    *n = i;
}

/* The candidates for precision int4 (docs/FORMAT.md section 8): which Q/K groups share a scale
 * and whether the default scheme's channel transforms run before rounding to 4 bits. P and V are
 * the INT8 default scheme's in all of them. */
static void cand_list_int4(cand *c, int *n) {
    qattn_lowp_cfg base;
    qattn_lowp_scheme_cfg(QATTN_INT8_DEFAULT, &base);
    base.qk_code_max = 7;
    base.qk_smooth = base.qk_rotate = 0;
    int i = *n;
    c[i].name = "int4 T per token, no Q/K transform", c[i++].cfg = base;
    qattn_lowp_cfg x = base;
    x.q_gran = x.k_gran = QATTN_QUANT_PER_BLOCK;
    x.q_block = x.k_block = 64;
    c[i].name = "int4 B per block of 64 tokens", c[i++].cfg = x;
    x = base;
    x.qk_smooth = QATTN_QK_SMOOTH_MAX_EXP;
    c[i].name = "int4 S T + channel balancing (2^e)", c[i++].cfg = x;
    x = base;
    x.qk_smooth = 1, x.qk_smooth_min_exp = 2, x.qk_rotate = 1; /* every factor 1: the rotation alone */
    c[i].name = "int4 R T + Hadamard rotation", c[i++].cfg = x;
    x.qk_smooth = QATTN_QK_SMOOTH_MAX_EXP, x.qk_smooth_min_exp = 0;
    c[i].name = "int4 SR T + balancing + rotation", c[i++].cfg = x;
    *n = i;
}

static void usage(void) {
    printf("usage: qattn accuracy [options]\n"
           "  --inputs LIST    comma-separated: normal,uniform,outlier,sink,heads,rotary,sinkout (default all)\n"
           "  --methods LIST   comma-separated: fp16,bf16,fp8-e4m3,fp8-e5m2,int8-intfa,int8-sage,int8,int8-calibrated,int4\n"
           "                   (default all; int8-calibrated: the default scheme with static transforms from\n"
           "                   qattn_calibrate on another draw of the same inputs, another seed)\n"
           "                   kv-int8,kv-int8-calibrated (decode of the last 64 positions over an INT8 KV cache,\n"
           "                   plain or with that calibration; errors over those rows; B 1, Lq = Lk only)\n"
           "  --candidates     also the candidate INT8 configurations for the default scheme and the\n"
           "                   candidate INT4 configurations (scale groups, Q/K transforms)\n"
           "  --full           L 1k and 4k, causal and not, GQA and MHA, and L 16k (several minutes);\n"
           "                   default: one quick shape (B 1, H 8, HK 2, L 1024, D 128); shape flags: that shape\n");
    cli_opts_print_help(stdout);
}

/* 1 if `name` is an item of the comma-separated list. */
static int in_list(const char *list, const char *name) {
    size_t len = strlen(name);
    for (const char *hit = strstr(list, name); hit; hit = strstr(hit + 1, name))
        if ((hit == list || hit[-1] == ',') && (hit[len] == ',' || hit[len] == '\0')) return 1;
    return 0;
}

/* One shape of the run: heads, lengths, causal; `structured` limits it to the inputs with
 * structure (the L 16k shape). */
typedef struct shape {
    int32_t heads, kv_heads;
    int64_t len;
    int32_t causal, structured;
} shape;

/* The bar of issue 14 for the default INT8 scheme, applied to every method's verdict. */
#define BAR_ANY 0.02
#define BAR_NORMAL 0.013

typedef struct verdict {
    double worst;            /* largest rel L1 over inputs and shapes */
    char worst_at[64];
    double normal_worst;     /* largest rel L1 on N(0,1) */
    int runs, failed;
} verdict;

int qattn_cli_accuracy(int argc, char **argv) {
    cli_opts o;
    cli_opts_init(&o);
    const char *inputs = "normal,uniform,outlier,sink,heads,rotary,sinkout";
    const char *methods = "fp16,bf16,fp8-e4m3,fp8-e5m2,int8-intfa,int8-sage,int8,int8-calibrated,int4,kv-int8,kv-int8-calibrated";
    int candidates = 0, full = 0;
    for (int i = 1; i < argc; i++) {
        const char *val;
        int r;
        if (cli_flag_is(argv[i], "--help") || cli_flag_is(argv[i], "-h")) {
            usage();
            return CLI_EXIT_OK;
        }
        if (cli_flag_is(argv[i], "--candidates")) {
            candidates = 1;
            continue;
        }
        if (cli_flag_is(argv[i], "--full")) {
            full = 1;
            continue;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--inputs", &val, CMD)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            inputs = val;
            continue;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--methods", &val, CMD)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            methods = val;
            continue;
        }
        cli_flag_result fr = cli_opts_parse_flag(&o, argc, argv, &i, CMD);
        if (fr == CLI_FLAG_ERROR) return CLI_EXIT_USAGE;
        if (fr == CLI_FLAG_UNKNOWN) {
            cli_error(CMD, "unknown option '%s' (qattn accuracy --help)", argv[i]);
            return CLI_EXIT_USAGE;
        }
    }
    if (full && (o.shape_given || o.causal)) {
        cli_error(CMD, "--full runs its own shapes; give either --full or shape flags");
        return CLI_EXIT_USAGE;
    }
    for (const char *c = inputs; *c;) { /* every listed input must be known */
        size_t len = strcspn(c, ",");
        int known = 0;
        for (int in = 0; in < IN_COUNT; in++) known |= strlen(input_names[in]) == len && !strncmp(c, input_names[in], len);
        if (!known) {
            cli_error(CMD, "unknown input '%.*s' in --inputs (normal,uniform,outlier,sink,heads,rotary,sinkout)", (int)len, c);
            return CLI_EXIT_USAGE;
        }
        c += len + (c[len] == ',');
    }
    shape shapes[8];
    int ns = 0;
    if (o.shape_given || o.causal) {
        shapes[ns++] = (shape){o.heads, o.kv_heads > 0 ? o.kv_heads : o.heads, o.seqlen_q, o.causal, 0};
    } else if (!full) {
        shapes[ns++] = (shape){8, 2, 1024, 0, 0};
    } else {
        shapes[ns++] = (shape){8, 8, 1024, 0, 0};
        shapes[ns++] = (shape){8, 2, 1024, 0, 0};
        shapes[ns++] = (shape){8, 2, 1024, 1, 0};
        shapes[ns++] = (shape){8, 2, 4096, 0, 0};
        shapes[ns++] = (shape){8, 2, 4096, 1, 0};
        shapes[ns++] = (shape){2, 1, 16384, 1, 1};
    }
    qattn_ctx_options co;
    cli_opts_to_ctx_options(&o, &co);
    qattn_ctx *ctx = cli_ctx_create(&co, CMD);
    if (!ctx) return CLI_EXIT_FAILURE;

    method all[48];
    int nm = 0;
    static const method known[] = {
        {"fp16", QATTN_PRECISION_FP16, 0, 0},          {"bf16", QATTN_PRECISION_BF16, 0, 0},
        {"fp8-e4m3", QATTN_PRECISION_FP8_E4M3, 0, 0},  {"fp8-e5m2", QATTN_PRECISION_FP8_E5M2, 0, 0},
        {"int8-intfa", QATTN_PRECISION_INT8, QATTN_INT8_INTFA, 0}, {"int8-sage", QATTN_PRECISION_INT8, QATTN_INT8_SAGE, 0},
        {"int8", QATTN_PRECISION_INT8, QATTN_INT8_DEFAULT, 0},
        {"int8-calibrated", QATTN_PRECISION_INT8, QATTN_INT8_DEFAULT, CAL_PREFILL},
        {"int4", QATTN_PRECISION_INT4, 0, 0},
        {"kv-int8 (decode, last 64 rows)", QATTN_PRECISION_INT8, 0, KV_PLAIN},
        {"kv-int8-calibrated (decode, last 64)", QATTN_PRECISION_INT8, 0, KV_CALIBRATED},
    };
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
        char key[32]; /* the list name: up to the first space */
        snprintf(key, sizeof key, "%.*s", (int)strcspn(known[k].name, " "), known[k].name);
        if (in_list(methods, key)) all[nm++] = known[k];
    }
    cand cands[32];
    int nc = 0;
    if (candidates) {
        cand_list(cands, &nc);
        cand_list_int4(cands, &nc);
        for (int c = 0; c < nc; c++) all[nm++] = (method){cands[c].name, QATTN_PRECISION_INT8, 0, c + 1};
    }
    verdict vd[48];
    memset(vd, 0, sizeof vd);
    for (int mi = 0; mi < nm; mi++) vd[mi].worst = vd[mi].normal_worst = -1.0;

    int n_in = 0, step = 0, total = 0;
    for (int in = 0; in < IN_COUNT; in++) n_in += in_list(inputs, input_names[in]);
    for (int si = 0; si < ns; si++)
        for (int in = 0; in < IN_COUNT; in++)
            total += in_list(inputs, input_names[in]) && (!shapes[si].structured || (in != IN_UNIFORM && in != IN_SINK && in != IN_HEADS));
    (void)n_in;
    int rc = CLI_EXIT_OK;
    double t_start = cli_now_seconds();
    for (int si = 0; si < ns && rc == CLI_EXIT_OK; si++) {
        cli_opts os = o;
        os.heads = shapes[si].heads, os.kv_heads = shapes[si].kv_heads, os.seqlen_q = shapes[si].len;
        os.seqlen_k = o.shape_given ? o.seqlen_k : 0, os.causal = shapes[si].causal;
        qattn_params p;
        qattn_params_init(&p);
        cli_opts_to_params(&os, &p);
        p.precision = QATTN_PRECISION_FP32;
        int64_t nq = p.batch * p.seqlen_q * p.n_heads * p.head_dim, nk = p.batch * p.seqlen_k * p.n_kv_heads * p.head_dim;
        float *q = cli_alloc((size_t)nq * 4, "q", CMD), *k = cli_alloc((size_t)nk * 4, "k", CMD), *v = cli_alloc((size_t)nk * 4, "v", CMD);
        float *out = cli_alloc((size_t)nq * 4, "o", CMD);
        double *ref = cli_alloc((size_t)nq * 8, "oracle", CMD);
        int64_t ncal = (int64_t)p.n_kv_heads * p.head_dim;
        float *calmem = cli_alloc((size_t)(6 * ncal) * 4, "calibration", CMD);
        qattn_calibration cal = {p.n_kv_heads, p.head_dim, 0, calmem, calmem + ncal, calmem + 2 * ncal, calmem + 3 * ncal,
                                 calmem + 4 * ncal, calmem + 5 * ncal};
        if (!q || !k || !v || !out || !ref || !calmem) {
            cli_free(q), cli_free(k), cli_free(v), cli_free(out), cli_free(ref), cli_free(calmem);
            rc = CLI_EXIT_FAILURE;
            break;
        }
        p.q = q, p.k = k, p.v = v, p.o = out;
        char where[48];
        snprintf(where, sizeof where, "L %lld H %d/%d%s", (long long)p.seqlen_q, p.n_heads, p.n_kv_heads, p.causal ? " causal" : "");
        if (!o.json)
            printf("%sqattn accuracy: B %lld, H %d, HK %d, Lq %lld, Lk %lld, D %d%s; metrics over the whole output vs the FP64 oracle\n",
                   si ? "\n" : "", (long long)p.batch, p.n_heads, p.n_kv_heads, (long long)p.seqlen_q, (long long)p.seqlen_k, p.head_dim,
                   p.causal ? ", causal" : "");
        for (int in = 0; in < IN_COUNT && rc == CLI_EXIT_OK; in++) {
            if (!in_list(inputs, input_names[in])) continue;
            if (shapes[si].structured && (in == IN_UNIFORM || in == IN_SINK || in == IN_HEADS)) continue;
            step++;
            fprintf(stderr, "qattn accuracy: [%d/%d] %s, inputs %s (%.0f s so far)\n", step, total, where, input_names[in],
                    cli_now_seconds() - t_start);
            int want_cal = 0;
            for (int mi = 0; mi < nm; mi++) want_cal |= all[mi].candidate == CAL_PREFILL || all[mi].candidate == KV_CALIBRATED;
            if (want_cal) { /* calibration samples: the same generator, another seed */
                make_inputs(in, &p, q, k, v, o.seed + 1000 + (uint64_t)in);
                cal.tokens = 0;
                if (qattn_calibrate(ctx, &p, &cal) != QATTN_OK) {
                    cli_error(CMD, "calibrate: %s", qattn_ctx_last_error(ctx));
                    rc = CLI_EXIT_FAILURE;
                    break;
                }
            }
            make_inputs(in, &p, q, k, v, o.seed + (uint64_t)in);
            double t0 = cli_now_seconds();
            qattn_status s = qattn_oracle_f64(ctx, &p, ref, NULL);
            if (s != QATTN_OK) {
                cli_error(CMD, "oracle: %s", qattn_ctx_last_error(ctx));
                rc = CLI_EXIT_FAILURE;
                break;
            }
            if (!o.json)
                printf("\ninputs %-8s (oracle %.1f s)\n  %-38s %10s %10s %10s %12s\n", input_names[in], cli_now_seconds() - t0, "method",
                       "MRE", "rel L1", "rel L2", "cosine");
            for (int mi = 0; mi < nm; mi++) {
                qattn_params pm = p;
                pm.precision = all[mi].precision;
                pm.int8_scheme = all[mi].scheme;
                int kv = all[mi].candidate == KV_PLAIN || all[mi].candidate == KV_CALIBRATED;
                if (kv && (p.batch != 1 || p.seqlen_q != p.seqlen_k)) continue; /* decode rows need B 1, Lq = Lk */
                int64_t nrows = kv ? (p.seqlen_q < KV_ROWS ? p.seqlen_q : KV_ROWS) : p.seqlen_q;
                int64_t first = (p.seqlen_q - nrows) * p.n_heads * p.head_dim;
                double t1 = cli_now_seconds();
                s = all[mi].candidate > 0                  ? qattn_lowp_forward_cfg(ctx, &pm, &cands[all[mi].candidate - 1].cfg)
                    : all[mi].candidate == CAL_PREFILL     ? qattn_forward_calibrated(ctx, &pm, &cal)
                    : kv                                   ? kv_decode_rows(ctx, &pm, all[mi].candidate == KV_CALIBRATED ? &cal : NULL, out, nrows)
                                                           : qattn_forward(ctx, &pm);
                double secs = cli_now_seconds() - t1;
                if (s != QATTN_OK) {
                    cli_error(CMD, "%s: %s", all[mi].name, qattn_ctx_last_error(ctx));
                    vd[mi].failed++;
                    rc = CLI_EXIT_FAILURE;
                    continue;
                }
                cli_metrics m;
                cli_metrics_compute(out + first, ref + first, nq - first, &m);
                verdict *w = &vd[mi];
                w->runs++;
                if (!(m.rel_l1 <= w->worst)) {
                    w->worst = m.rel_l1;
                    snprintf(w->worst_at, sizeof w->worst_at, "%s, %s", input_names[in], where);
                }
                if (in == IN_NORMAL && !(m.rel_l1 <= w->normal_worst)) w->normal_worst = m.rel_l1;
                if (o.json) {
                    cli_json j;
                    cli_json_begin(&j, stdout);
                    cli_json_str(&j, "command", "accuracy");
                    cli_json_str(&j, "inputs", input_names[in]);
                    char key[48]; /* the --methods name, without the table label's note */
                    snprintf(key, sizeof key, "%.*s", (int)strcspn(all[mi].name, all[mi].candidate > 0 ? "" : " "), all[mi].name);
                    cli_json_str(&j, "method", key);
                    if (kv) cli_json_int(&j, "decode_rows", nrows);
                    cli_json_int(&j, "batch", p.batch);
                    cli_json_int(&j, "heads", p.n_heads);
                    cli_json_int(&j, "kv_heads", p.n_kv_heads);
                    cli_json_int(&j, "seqlen_q", p.seqlen_q);
                    cli_json_int(&j, "seqlen_k", p.seqlen_k);
                    cli_json_int(&j, "head_dim", p.head_dim);
                    cli_json_bool(&j, "causal", p.causal);
                    cli_json_num(&j, "mre", m.mre);
                    cli_json_num(&j, "rel_l1", m.rel_l1);
                    cli_json_num(&j, "rel_l2", m.rel_l2);
                    cli_json_num(&j, "cosine", m.cosine);
                    cli_json_num(&j, "max_abs", m.max_abs);
                    cli_json_num(&j, "seconds", secs);
                    cli_json_end(&j);
                } else {
                    printf("  %-38s %10.3e %10.3e %10.3e %12.8f\n", all[mi].name, m.mre, m.rel_l1, m.rel_l2, m.cosine);
                    fflush(stdout);
                }
            }
            if (candidates && !o.json) print_sigma(ctx, &p);
        }
        cli_free(q), cli_free(k), cli_free(v), cli_free(out), cli_free(ref), cli_free(calmem);
    }
    /* one line per method: its worst rel L1 against the INT8 bar */
    if (!o.json) printf("\nverdict (INT8 bar: rel L1 <= %.3g on every input, <= %.3g on normal)\n", BAR_ANY, BAR_NORMAL);
    for (int mi = 0; mi < nm; mi++) {
        const verdict *w = &vd[mi];
        if (!w->runs) continue;
        int ok = !w->failed && w->worst <= BAR_ANY && (w->normal_worst < 0 || w->normal_worst <= BAR_NORMAL);
        if (o.json) {
            cli_json j;
            cli_json_begin(&j, stdout);
            cli_json_str(&j, "command", "accuracy-verdict");
            char key[48];
            snprintf(key, sizeof key, "%.*s", (int)strcspn(all[mi].name, all[mi].candidate > 0 ? "" : " "), all[mi].name);
            cli_json_str(&j, "method", key);
            cli_json_num(&j, "worst_rel_l1", w->worst);
            cli_json_str(&j, "worst_at", w->worst_at);
            if (w->normal_worst >= 0) cli_json_num(&j, "normal_rel_l1", w->normal_worst);
            cli_json_bool(&j, "meets_int8_bar", ok);
            cli_json_end(&j);
        } else {
            printf("  %-38s worst rel L1 %.2e (%s)", all[mi].name, w->worst, w->worst_at);
            if (w->normal_worst >= 0) printf(", normal %.2e", w->normal_worst);
            printf(": %s\n", ok ? "meets the bar" : "does not meet the bar");
        }
    }
    fprintf(stderr, "qattn accuracy: done in %.0f s\n", cli_now_seconds() - t_start);
    qattn_ctx_destroy(ctx);
    return rc;
}
