/* qattn accuracy: whole-tensor error of every precision / INT8 scheme against the FP64 oracle,
 * on N(0,1), U(0,1) and realistic inputs (outlier channels in K, an attention sink, heads of
 * very different scale). Default shape B 1, H 8, L 4096, D 128 (the oracle costs ~17 GFLOP in
 * FP64: about a minute per input on two cores).
 *   qattn accuracy [--inputs normal,uniform,outlier,sink,heads] [--candidates] [shape flags] [--json]
 * --candidates adds the candidate INT8 configurations that decided the default scheme
 * (docs/FORMAT.md); it uses the library's internal configuration entry point. */
#include "cli.h"

#include "quant/lowp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "accuracy";

enum { IN_NORMAL, IN_UNIFORM, IN_OUTLIER, IN_SINK, IN_HEADS, IN_COUNT };
static const char *input_names[IN_COUNT] = {"normal", "uniform", "outlier", "sink", "heads"};

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
        /* Rotary-embedded LLM keys: a few channels (here 4 of every 128) carry a large, mostly
         * constant component (x12 spread, +10 offset), the rest is N(0,1). */
        for (int64_t i = 0; i < nk; i++) {
            int64_t c = i % D;
            if (c % 32 == 5) k[i] = k[i] * 12.0f + 10.0f;
        }
    } else if (which == IN_SINK) {
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
    int candidate; /* index into cands + 1, or 0 */
} method;

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
    *n = i;
}

static void usage(void) {
    printf("usage: qattn accuracy [options]\n"
           "  --inputs LIST    comma-separated: normal,uniform,outlier,sink,heads (default all)\n"
           "  --methods LIST   comma-separated: fp16,bf16,fp8-e4m3,fp8-e5m2,int8-intfa,int8-sage,int8 (default all)\n"
           "  --candidates     also the candidate INT8 configurations for the default scheme\n");
    cli_opts_print_help(stdout);
}

int qattn_cli_accuracy(int argc, char **argv) {
    cli_opts o;
    cli_opts_init(&o);
    const char *inputs = "normal,uniform,outlier,sink,heads";
    const char *methods = "fp16,bf16,fp8-e4m3,fp8-e5m2,int8-intfa,int8-sage,int8";
    int candidates = 0;
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
    if (o.seqlen_q == 1024 && !o.shape_given) o.seqlen_q = 4096; /* the accuracy default */
    qattn_params p;
    qattn_params_init(&p);
    cli_opts_to_params(&o, &p);
    p.precision = QATTN_PRECISION_FP32;
    qattn_ctx_options co;
    cli_opts_to_ctx_options(&o, &co);
    qattn_ctx *ctx;
    if (qattn_ctx_create(&ctx, &co) != QATTN_OK) {
        cli_error(CMD, "cannot create a context (backend/isa options)");
        return CLI_EXIT_FAILURE;
    }

    method all[32];
    int nm = 0;
    static const method known[] = {
        {"fp16", QATTN_PRECISION_FP16, 0, 0},          {"bf16", QATTN_PRECISION_BF16, 0, 0},
        {"fp8-e4m3", QATTN_PRECISION_FP8_E4M3, 0, 0},  {"fp8-e5m2", QATTN_PRECISION_FP8_E5M2, 0, 0},
        {"int8-intfa", QATTN_PRECISION_INT8, QATTN_INT8_INTFA, 0}, {"int8-sage", QATTN_PRECISION_INT8, QATTN_INT8_SAGE, 0},
        {"int8", QATTN_PRECISION_INT8, QATTN_INT8_DEFAULT, 0},
    };
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
        const char *hit = strstr(methods, known[k].name);
        size_t len = strlen(known[k].name);
        while (hit && !((hit == methods || hit[-1] == ',') && (hit[len] == ',' || hit[len] == '\0'))) hit = strstr(hit + 1, known[k].name);
        if (hit) all[nm++] = known[k];
    }
    cand cands[16];
    int nc = 0;
    if (candidates) {
        cand_list(cands, &nc);
        for (int c = 0; c < nc; c++) all[nm++] = (method){cands[c].name, QATTN_PRECISION_INT8, 0, c + 1};
    }

    int64_t nq = p.batch * p.seqlen_q * p.n_heads * p.head_dim, nk = p.batch * p.seqlen_k * p.n_kv_heads * p.head_dim;
    float *q = cli_alloc((size_t)nq * 4, "q", CMD), *k = cli_alloc((size_t)nk * 4, "k", CMD), *v = cli_alloc((size_t)nk * 4, "v", CMD);
    float *out = cli_alloc((size_t)nq * 4, "o", CMD);
    double *ref = cli_alloc((size_t)nq * 8, "oracle", CMD);
    if (!q || !k || !v || !out || !ref) return CLI_EXIT_FAILURE;
    p.q = q, p.k = k, p.v = v, p.o = out;
    if (!o.json)
        printf("qattn accuracy: B %lld, H %d, HK %d, Lq %lld, Lk %lld, D %d%s; metrics over the whole output vs the FP64 oracle\n",
               (long long)p.batch, p.n_heads, p.n_kv_heads, (long long)p.seqlen_q, (long long)p.seqlen_k, p.head_dim,
               p.causal ? ", causal" : "");
    int rc = CLI_EXIT_OK;
    for (int in = 0; in < IN_COUNT; in++) {
        const char *hit = strstr(inputs, input_names[in]);
        if (!hit) continue;
        make_inputs(in, &p, q, k, v, o.seed + (uint64_t)in);
        double t0 = cli_now_seconds();
        qattn_status s = qattn_oracle_f64(ctx, &p, ref, NULL);
        if (s != QATTN_OK) {
            cli_error(CMD, "oracle: %s", qattn_ctx_last_error(ctx));
            rc = CLI_EXIT_FAILURE;
            break;
        }
        if (!o.json)
            printf("\ninputs %-8s (oracle %.1f s)\n  %-38s %10s %10s %10s %12s\n", input_names[in], cli_now_seconds() - t0, "method", "MRE",
                   "rel L1", "rel L2", "cosine");
        for (int mi = 0; mi < nm; mi++) {
            qattn_params pm = p;
            pm.precision = all[mi].precision;
            pm.int8_scheme = all[mi].scheme;
            double t1 = cli_now_seconds();
            s = all[mi].candidate ? qattn_lowp_forward_cfg(ctx, &pm, &cands[all[mi].candidate - 1].cfg) : qattn_forward(ctx, &pm);
            double secs = cli_now_seconds() - t1;
            if (s != QATTN_OK) {
                cli_error(CMD, "%s: %s", all[mi].name, qattn_ctx_last_error(ctx));
                rc = CLI_EXIT_FAILURE;
                continue;
            }
            cli_metrics m;
            cli_metrics_compute(out, ref, nq, &m);
            if (o.json) {
                cli_json j;
                cli_json_begin(&j, stdout);
                cli_json_str(&j, "command", "accuracy");
                cli_json_str(&j, "inputs", input_names[in]);
                cli_json_str(&j, "method", all[mi].name);
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
    }
    cli_free(q), cli_free(k), cli_free(v), cli_free(out), cli_free(ref);
    qattn_ctx_destroy(ctx);
    return rc;
}
