/* qattn bench --decode: decode over the paged KV cache (qattn_kv_decode), per storage dtype in
 * one run, with a read-bandwidth probe of this machine and the error against the FP64 oracle
 * (on the dequantized cache and on the original FP32 values).
 *
 *   qattn bench --decode --kv-len 32768 --kv-dtype fp16,int8 --batch 1 --heads 32 --kv-heads 8 \
 *               --head-dim 128 --seqlen-q 1 --threads 2 --iters 20 [--block-size 16] [--json]
 *
 * Reports per dtype: median time, tokens/s (B * Lq / time), GB/s of cache read (K and V codes
 * plus INT8 scales of every visible token, each read once per query group), that rate as a
 * fraction of the probe's read bandwidth, and rel L2 errors. Entry point for the CLI:
 * qattn_cli_bench_decode (argv[0] is the subcommand name; --decode itself is accepted). */
#include "cli.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

int qattn_cli_bench_decode(int argc, char **argv);

#define CMD "bench --decode"
#define PROBE_BYTES ((size_t)256 << 20)

/* ---------------------------------------------------------------- bandwidth probe */

typedef struct probe_arg {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} probe_arg;

static void *probe_worker(void *arg) {
    probe_arg *a = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= a->n; i += 4) {
        s0 += a->p[i], s1 += a->p[i + 1], s2 += a->p[i + 2], s3 += a->p[i + 3];
    }
    a->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* Read bandwidth (bytes/s): T threads each summing its slice of a 256 MiB buffer; median of 7. */
static double probe_read_bandwidth(int threads) {
    uint64_t *buf = cli_alloc(PROBE_BYTES, "bandwidth probe buffer", CMD);
    if (!buf) return NAN;
    size_t n = PROBE_BYTES / 8;
    for (size_t i = 0; i < n; i++) buf[i] = i;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    double times[7];
    volatile uint64_t sink = 0;
    for (int rep = 0; rep < 7; rep++) {
        pthread_t th[64];
        probe_arg args[64];
        size_t per = n / (size_t)threads;
        double t0 = cli_now_seconds();
        for (int t = 0; t < threads; t++) {
            args[t] = (probe_arg){.p = buf + per * t, .n = per};
            if (t > 0 && pthread_create(&th[t], NULL, probe_worker, &args[t]) != 0) probe_worker(&args[t]), th[t] = 0;
        }
        probe_worker(&args[0]);
        for (int t = 1; t < threads; t++)
            if (th[t]) pthread_join(th[t], NULL);
        times[rep] = cli_now_seconds() - t0;
        for (int t = 0; t < threads; t++) sink += args[t].sum;
    }
    (void)sink;
    cli_free(buf);
    return (double)PROBE_BYTES / cli_median(times, 7);
}

/* ---------------------------------------------------------------- options */

typedef struct dopts {
    int64_t kv_len, batch, heads, kv_heads, head_dim, seqlen_q, threads, iters, block_size;
    int32_t dtypes[3];
    int n_dtypes;
    int json, check;
    int32_t isa;
    uint64_t seed;
} dopts;

static int parse_dtypes(const char *text, dopts *o) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s", text);
    o->n_dtypes = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int32_t t = qattn_dtype_from_name(tok);
        if (t != QATTN_DTYPE_F16 && t != QATTN_DTYPE_BF16 && t != QATTN_DTYPE_I8) t = -1; /* storage dtypes only */
        if (t < 0 || o->n_dtypes == 3) {
            cli_error(CMD, "--kv-dtype '%s': expected a comma list of fp16, bf16, int8 (at most 3)", text);
            return -1;
        }
        o->dtypes[o->n_dtypes++] = t;
    }
    return o->n_dtypes > 0 ? 0 : -1;
}

static void usage(FILE *f) {
    fprintf(f, "usage: qattn bench --decode [--kv-len N] [--kv-dtype fp16|bf16|int8[,...]] [--batch B] [--heads H]\n"
               "         [--kv-heads HK] [--head-dim D] [--seqlen-q LQ] [--threads T] [--iters N] [--block-size BS]\n"
               "         [--isa %s] [--seed S] [--no-check] [--json]\n"
               "Decode over the paged KV cache. Defaults: --kv-len 32768 --kv-dtype fp16,int8 --batch 1 --heads 32\n"
               "--kv-heads 8 --head-dim 128 --seqlen-q 1 --threads 0 (all cores) --iters 20 --block-size 16.\n"
               "Reports tokens/s, GB/s of cache read, the fraction of this machine's read bandwidth (a 256 MiB\n"
               "multi-threaded probe) and rel L2 error vs the FP64 oracle on the original FP32 K/V (rel_l2) and on\n"
               "the dequantized cache (rel_l2_dequant); the first dtype listed is the baseline of 'speedup'.\n", cli_isa_names());
}

static int parse(int argc, char **argv, dopts *o) {
    memset(o, 0, sizeof *o);
    o->kv_len = 32768, o->batch = 1, o->heads = 32, o->kv_heads = 8, o->head_dim = 128, o->seqlen_q = 1;
    o->iters = 20, o->block_size = 16, o->check = 1, o->seed = 1;
    o->dtypes[0] = QATTN_DTYPE_F16, o->dtypes[1] = QATTN_DTYPE_I8, o->n_dtypes = 2;
    const cli_int_flag ints[] = {{"--kv-len", &o->kv_len, 1, 1 << 24},   {"--batch", &o->batch, 1, 4096},     {"--heads", &o->heads, 1, 4096},
                {"--kv-heads", &o->kv_heads, 1, 4096},  {"--head-dim", &o->head_dim, 8, 256}, {"--seqlen-q", &o->seqlen_q, 1, 64},
                {"--threads", &o->threads, 0, QATTN_MAX_THREADS},    {"--iters", &o->iters, 1, 100000},  {"--block-size", &o->block_size, 1, 1024}};
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        int r;
        if (cli_flag_is(argv[i], "--decode")) continue;
        if (cli_flag_is(argv[i], "--json")) { o->json = 1; continue; }
        if (cli_flag_is(argv[i], "--no-check")) { o->check = 0; continue; }
        if (cli_flag_is(argv[i], "--help") || cli_flag_is(argv[i], "-h")) { usage(stdout); return 1; }
        cli_flag_result fr = cli_int_flags_parse(ints, sizeof ints / sizeof ints[0], argc, argv, &i, CMD);
        if (fr == CLI_FLAG_UNKNOWN) fr = cli_isa_seed_parse(&o->isa, &o->seed, argc, argv, &i, CMD);
        if (fr == CLI_FLAG_ERROR) return -1;
        if (fr == CLI_FLAG_CONSUMED) continue;
        if ((r = cli_flag_value(argc, argv, &i, "--kv-dtype", &val, CMD)) != 0) {
            if (r < 0 || parse_dtypes(val, o) != 0) return -1;
            continue;
        }
        cli_error(CMD, "unknown option '%s' (try qattn bench --decode --help)", argv[i]);
        return -1;
    }
    if (o->heads % o->kv_heads != 0) { cli_error(CMD, "--kv-heads %lld does not divide --heads %lld", (long long)o->kv_heads, (long long)o->heads); return -1; }
    if (o->head_dim % 8 != 0) { cli_error(CMD, "--head-dim %lld: must be a multiple of 8", (long long)o->head_dim); return -1; }
    if (o->seqlen_q > o->kv_len) { cli_error(CMD, "--seqlen-q %lld exceeds --kv-len %lld", (long long)o->seqlen_q, (long long)o->kv_len); return -1; }
    return 0;
}

/* ---------------------------------------------------------------- one dtype */

typedef struct result {
    double seconds, best_seconds, tokens_per_s, gbps, bw_fraction, rel_l2, rel_l2_dequant, bytes;
    int ok;
} result;

static qattn_status oracle(qattn_ctx *ctx, const dopts *o, const float *q, const float *k, const float *v, const int32_t *cu_q,
                           const int32_t *cu_k, double *o64) {
    qattn_params p;
    qattn_params_init(&p);
    p.q = q, p.k = k, p.v = v, p.o = o64;
    p.batch = o->batch, p.seqlen_q = o->seqlen_q, p.seqlen_k = o->kv_len;
    p.n_heads = (int32_t)o->heads, p.n_kv_heads = (int32_t)o->kv_heads, p.head_dim = (int32_t)o->head_dim;
    p.causal = 1;
    p.cu_seqlens_q = cu_q, p.cu_seqlens_k = cu_k;
    qattn_params_set_contiguous(&p);
    return qattn_oracle_f64(ctx, &p, o64, NULL);
}

typedef struct decode_call {
    qattn_kv_cache *cache;
    const qattn_decode_params *dp;
} decode_call;

static qattn_status call_decode(qattn_ctx *ctx, void *arg) {
    const decode_call *c = arg;
    return qattn_kv_decode(ctx, c->cache, c->dp);
}

static int run_dtype(qattn_ctx *ctx, const dopts *o, int32_t dtype, const float *q, const float *k, const float *v, double bw, result *res) {
    memset(res, 0, sizeof *res);
    int64_t B = o->batch, L = o->kv_len, HK = o->kv_heads, D = o->head_dim, H = o->heads, Lq = o->seqlen_q;
    qattn_kv_cache *cache = cli_kv_cache_filled(ctx, dtype, (int32_t)o->block_size, B, L, (int32_t)HK, (int32_t)D, k, v, CMD);
    if (!cache) return -1;
    int32_t *ids = cli_alloc((size_t)B * sizeof(int32_t), "ids", CMD);
    float *out = cli_alloc((size_t)(B * Lq * H * D) * sizeof(float), "output", CMD);
    if (!ids || !out) { qattn_kv_cache_destroy(ctx, cache); cli_free(ids); cli_free(out); return -1; }
    for (int64_t b = 0; b < B; b++) ids[b] = (int32_t)b;
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = q, dp.o = out, dp.seq_ids = ids, dp.n_seqs = (int32_t)B, dp.seqlen_q = (int32_t)Lq, dp.n_heads = (int32_t)H;
    decode_call call = {cache, &dp};
    if (cli_time_calls(ctx, call_decode, &call, o->iters, &res->seconds, &res->best_seconds, "kv_decode", CMD)) return -1;
    /* bytes: every token's K and V codes (and INT8 scales) of every kv head, read once per group */
    double per_token = (double)HK * (2.0 * (double)D * (dtype == QATTN_DTYPE_I8 ? 1 : 2) + (dtype == QATTN_DTYPE_I8 ? 8 : 0));
    res->bytes = per_token * (double)L * (double)B;
    res->tokens_per_s = (double)(B * Lq) / res->seconds;
    res->gbps = res->bytes / res->seconds / 1e9;
    res->bw_fraction = res->bytes / res->seconds / bw;
    res->rel_l2 = res->rel_l2_dequant = NAN;
    if (o->check) {
        size_t kv_e = (size_t)(B * L * HK * D), q_e = (size_t)(B * Lq * H * D);
        float *kd = cli_alloc(kv_e * 4, "dequantized k", CMD), *vd = cli_alloc(kv_e * 4, "dequantized v", CMD);
        double *ref = cli_alloc(q_e * 8, "oracle output", CMD);
        int32_t *cu_q = cli_alloc((size_t)(B + 1) * 4, "cu_q", CMD), *cu_k = cli_alloc((size_t)(B + 1) * 4, "cu_k", CMD);
        if (kd && vd && ref && cu_q && cu_k) {
            for (int64_t b = 0; b <= B; b++) cu_q[b] = (int32_t)(b * Lq), cu_k[b] = (int32_t)(b * L);
            for (int64_t b = 0; b < B; b++) qattn_kv_cache_read(ctx, cache, (int32_t)b, 0, L, kd + b * L * HK * D, vd + b * L * HK * D);
            cli_metrics m;
            if (oracle(ctx, o, q, k, v, cu_q, cu_k, ref) == QATTN_OK) {
                cli_metrics_compute(out, ref, (int64_t)q_e, &m);
                res->rel_l2 = m.rel_l2;
            }
            if (oracle(ctx, o, q, kd, vd, cu_q, cu_k, ref) == QATTN_OK) {
                cli_metrics_compute(out, ref, (int64_t)q_e, &m);
                res->rel_l2_dequant = m.rel_l2;
            }
        }
        cli_free(kd), cli_free(vd), cli_free(ref), cli_free(cu_q), cli_free(cu_k);
    }
    res->ok = 1;
    cli_free(ids), cli_free(out);
    qattn_kv_cache_destroy(ctx, cache);
    return 0;
}

int qattn_cli_bench_decode(int argc, char **argv) {
    dopts o;
    int pr = parse(argc, argv, &o);
    if (pr != 0) return pr > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    qattn_ctx_options co;
    memset(&co, 0, sizeof co);
    co.backend = QATTN_BACKEND_CPU;
    co.isa = o.isa;
    co.n_threads = (int32_t)o.threads;
    qattn_ctx *ctx = cli_ctx_create(&co, CMD);
    if (!ctx) return CLI_EXIT_FAILURE;
    qattn_ctx_info info;
    qattn_ctx_get_info(ctx, &info);
    double bw = probe_read_bandwidth(info.n_threads);
    int64_t B = o.batch, L = o.kv_len, HK = o.kv_heads, D = o.head_dim, H = o.heads, Lq = o.seqlen_q;
    size_t kv_e = (size_t)(B * L * HK * D), q_e = (size_t)(B * Lq * H * D);
    float *k = cli_alloc(kv_e * 4, "k", CMD), *v = cli_alloc(kv_e * 4, "v", CMD), *q = cli_alloc(q_e * 4, "q", CMD);
    if (!k || !v || !q) { qattn_ctx_destroy(ctx); return CLI_EXIT_FAILURE; }
    cli_rng rng;
    cli_rng_seed(&rng, o.seed);
    cli_fill_normal(&rng, k, (int64_t)kv_e, 0, 1);
    cli_fill_normal(&rng, v, (int64_t)kv_e, 0, 1);
    cli_fill_normal(&rng, q, (int64_t)q_e, 0, 1);
    if (!o.json)
        printf("decode B %lld H %lld HK %lld D %lld Lq %lld kv-len %lld block %lld, %s, %d threads; read bandwidth probe %.1f GB/s\n"
               "%-5s %10s %10s %12s %8s %8s %8s %12s %14s\n",
               (long long)B, (long long)H, (long long)HK, (long long)D, (long long)Lq, (long long)L, (long long)o.block_size, info.isa_name,
               info.n_threads, bw / 1e9, "kv", "ms", "best_ms", "tokens/s", "GB/s", "bw_frac", "speedup", "rel_l2", "rel_l2_dequant");
    int rc = CLI_EXIT_OK;
    double base = 0;
    for (int i = 0; i < o.n_dtypes; i++) {
        result r;
        if (run_dtype(ctx, &o, o.dtypes[i], q, k, v, bw, &r) != 0) { rc = CLI_EXIT_FAILURE; break; }
        if (i == 0) base = r.tokens_per_s;
        if (o.json) {
            cli_json j;
            cli_json_begin(&j, stdout);
            cli_json_str(&j, "bench", "decode");
            cli_json_str(&j, "kv_dtype", qattn_dtype_name(o.dtypes[i]));
            cli_json_int(&j, "batch", B), cli_json_int(&j, "heads", H), cli_json_int(&j, "kv_heads", HK);
            cli_json_int(&j, "head_dim", D), cli_json_int(&j, "seqlen_q", Lq), cli_json_int(&j, "kv_len", L);
            cli_json_int(&j, "block_size", o.block_size), cli_json_int(&j, "threads", info.n_threads);
            cli_json_str(&j, "isa", info.isa_name);
            cli_json_num(&j, "seconds", r.seconds);
            cli_json_num(&j, "best_seconds", r.best_seconds);
            cli_json_num(&j, "best_gbps", r.bytes / r.best_seconds / 1e9);
            cli_json_num(&j, "tokens_per_s", r.tokens_per_s);
            cli_json_num(&j, "gbps", r.gbps);
            cli_json_num(&j, "probe_gbps", bw / 1e9);
            cli_json_num(&j, "bw_fraction", r.bw_fraction);
            cli_json_num(&j, "speedup_vs_first", r.tokens_per_s / base);
            cli_json_num(&j, "rel_l2", r.rel_l2);
            cli_json_num(&j, "rel_l2_dequant", r.rel_l2_dequant);
            cli_json_end(&j);
        } else {
            printf("%-5s %10.3f %10.3f %12.1f %8.2f %8.3f %7.2fx %12.3e %14.3e\n", qattn_dtype_name(o.dtypes[i]), r.seconds * 1e3, r.best_seconds * 1e3, r.tokens_per_s, r.gbps,
                   r.bw_fraction, r.tokens_per_s / base, r.rel_l2, r.rel_l2_dequant);
        }
        fflush(stdout);
    }
    cli_free(k), cli_free(v), cli_free(q);
    qattn_ctx_destroy(ctx);
    return rc;
}
