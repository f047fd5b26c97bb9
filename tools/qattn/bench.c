/* qattn bench: time attention on random inputs and check it against the FP64 oracle.
 * With no shape flag it runs a default set of prefill and decode shapes; without --precision
 * on the CPU (the main job) each shape runs in FP32 and in INT8, about 35 s on a shared 2-core
 * machine. The INT8 row of a prefill shape is qattn_forward in precision int8 (default scheme);
 * that of a decode shape (Lq 1) is qattn_kv_decode over an INT8 paged KV cache (label int8kv)
 * holding the FP32 row's K and V, appended untimed before the timed calls: an inference engine
 * quantizes K/V once, when tokens are appended, not on every decode step, as a forward in
 * precision int8 would. Reports per row: median ms over --iters (after --warmup), effective
 * GFLOP/s, GB/s, the error against qattn_oracle_f64, the speed-up over the shape's FP32 row and a
 * verdict (error within the row's tolerance or not).
 *   FLOPs = 4 * H * D * (visible (query, key) pairs summed over the batch): exactly
 *           4*B*H*Lq*Lk*D without a mask; with causal/window only the visible pairs count.
 *   Bytes = Q, K, V read once (in the precision's dtype: FP16/BF16 inputs for fp16/bf16, else
 *           FP32) + O written once (always FP32); the cache row reads K and V as the cache
 *           stores them (INT8 codes and a float scale per token and kv head).
 * The oracle reads the same (already rounded) inputs, so the error is the kernel's own; the cache
 * row's oracle reads the original FP32 K/V, so its error includes the cache's quantization. */
#include "block_mask.h"
#include "cli.h"
#include "device.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const CMD = "bench";

/* The oracle is naive FP64: above this much work (H * D * visible pairs) it checks a sample of
 * rows instead of all of them. */
#define ORACLE_FULL_WORK_LIMIT 1.0e9
/* The sample: the last rows of every sequence. The bottom-right mask alignment depends only
 * on (Lk - Lq), so a block of the LAST m rows passed as Lq' = m keeps every row's mask. */
#define ORACLE_SAMPLE_ROWS 64

typedef struct bench_case {
    int64_t batch, seqlen_q, seqlen_k;
    int32_t heads, kv_heads, head_dim, causal;
} bench_case;

/* Prefill B1 H8 L1024/2048 D64/128 causal and not; decode B1 H32 HK8 Lq1 Lk 8k/32k D128. */
static const bench_case default_cases[] = {
    {1, 1024, 1024, 8, 8, 64, 0},  {1, 1024, 1024, 8, 8, 64, 1},  {1, 1024, 1024, 8, 8, 128, 0}, {1, 1024, 1024, 8, 8, 128, 1},
    {1, 2048, 2048, 8, 8, 64, 0},  {1, 2048, 2048, 8, 8, 64, 1},  {1, 2048, 2048, 8, 8, 128, 0}, {1, 2048, 2048, 8, 8, 128, 1},
    {1, 1, 8192, 32, 8, 128, 0},   {1, 1, 32768, 32, 8, 128, 0},
};

typedef struct bench_result {
    double ms, gflops, gbps;
    cli_metrics err;
    int64_t oracle_rows; /* query rows per sequence the oracle checked */
    int checked;         /* 0 if the oracle could not run */
    double speedup;      /* FP32 ms of the same shape, same run / ms; 0 = no FP32 row to compare */
    double tolerance;    /* the largest rel_l2 accepted (see row_tolerance); 0 = none defined */
    double baseline;     /* INT8 default scheme: rel_l2 of FP64 attention on the quantize-dequantized inputs;
                            int8kv: on the cache's dequantized K, V (kv_cache_baseline) */
    double density;      /* block mask: computed pairs / pairs the window alone shows (1 without a mask) */
    int kv_cache;        /* 1: qattn_kv_decode over the INT8 KV cache (the main job's int8kv row) */
} bench_result;

/* FP32/FP16/BF16: the kernel's own error (the oracle reads the same rounded inputs), bounded as
 * in tests/ops.c (FP32 accumulation over Lk terms and exp2f: 1e-5 leaves ~3x margin at
 * Lk 3000). INT8 default scheme: 3 x the error of quantizing and dequantizing Q, K, V alone, the
 * rule of tests/ops.c (docs/FORMAT.md §6). */
#define FP_REL_L2_TOLERANCE 1e-5
#define INT8_BASELINE_FACTOR 3.0
/* Tokens per block of the main job's INT8 KV cache: qattn bench --decode's default. */
#define KV_CACHE_BLOCK_SIZE 16

static void print_bench_help(void) {
    printf("usage: qattn bench [options]\n"
           "Times qattn_forward on random inputs (N(0,1) by default) and checks it against the FP64\n"
           "oracle. Without shape options: prefill B1 H8 L1024/2048 D64/128 (causal and not) and\n"
           "decode B1 H32 HK8 Lq1 Lk 8192/32768 D128.\n"
           "  qattn bench --decode --kv-len N --kv-dtype fp16|bf16|int8 ...: decode over a paged KV cache\n"
           "            (qattn bench --decode --help lists its options).\n"
           "  qattn bench --kvcache --kv-len N --page-size P ...: qattn_forward_kvcache (append, rotary, attention over\n"
           "            paged cache tensors) vs qattn_forward on the gathered keys (qattn bench --kvcache --help).\n"
           "  GFLOP/s = 4*H*D*(visible query-key pairs, summed over the batch) / median time;\n"
           "            causal and windowed shapes count exactly the visible pairs.\n"
           "  GB/s    = bytes of Q, K, V read once (fp16/bf16: 2-byte inputs) + O written once\n"
           "            (float32) / median time.\n"
           "  Error   = relative L2 and max abs against qattn_oracle_f64 on the same inputs; on all\n"
           "            rows when H*D*pairs <= 1e9, else on the last %d query rows of each sequence\n"
           "            (column 'oracle' / key oracle_rows says which).\n"
           "  Without shape and precision options on the CPU, each shape runs in fp32 and in int8\n"
           "  (default scheme); vs_fp32 = the fp32 row's ms / this row's ms, same run. A decode\n"
           "  shape's (Lq 1) int8 row is 'int8kv' (JSON: \"kv_cache\": \"int8\"): qattn_kv_decode over\n"
           "  an INT8 paged KV cache (blocks of %d tokens) holding the fp32 row's K and V, appended\n"
           "  untimed, as an inference engine decodes; its GB/s counts the cache's INT8 codes and scales\n"
           "  (JSON: kv_cache_baseline in place of int8_baseline).\n"
           "  Verdict = rel_l2 within the tolerance: %.0e for fp32/fp16/bf16 (the kernel's own error),\n"
           "            %.0f x the int8 baseline (FP64 attention of quantize-dequantized Q, K, V) + 1e-6\n"
           "            for int8's default scheme; for int8kv, %.0f x the kv-cache baseline (FP64 attention\n"
           "            of the cache's dequantized K, V) + 1e-6. A row over its tolerance makes the exit\n"
           "            status 1.\n\n",
           ORACLE_SAMPLE_ROWS, KV_CACHE_BLOCK_SIZE, FP_REL_L2_TOLERANCE, INT8_BASELINE_FACTOR, INT8_BASELINE_FACTOR);
    cli_opts_print_help(stdout);
    cli_score_mods_print_help(stdout);
    printf("Block-sparse attention (GFLOP/s then counts the computed pairs only; density column):\n");
    cli_block_mask_print_help(stdout, 1);
}

/* The dtype Q, K, V (and O) are stored in for a precision: its own for FP16/BF16, else FP32. */
static int32_t storage_dtype(int32_t precision) {
    if (precision == QATTN_PRECISION_FP16) return QATTN_DTYPE_F16;
    if (precision == QATTN_PRECISION_BF16) return QATTN_DTYPE_BF16;
    return QATTN_DTYPE_F32;
}

/* Host tensors of one case: the inputs in the storage dtype and the output. */
typedef struct bench_tensors {
    void *q, *k, *v, *o;
    size_t q_bytes, kv_bytes, o_bytes;
} bench_tensors;

static void free_tensors(bench_tensors *t) {
    cli_free(t->q);
    cli_free(t->k);
    cli_free(t->v);
    cli_free(t->o);
    memset(t, 0, sizeof *t);
}

/* which: 0 Q, 1 K, 2 V ([.., heads, D] rows, for --dist heads). */
static int fill_random(const cli_opts *o, cli_rng *rng, void *dst, int32_t dtype, int64_t n, const qattn_params *p, int which) {
    float *tmp = cli_alloc((size_t)n * sizeof(float), "random inputs", CMD);
    if (!tmp) return -1;
    if (o->distribution == CLI_DIST_UNIFORM) cli_fill_uniform(rng, tmp, n, 0.0f, 1.0f);
    else cli_fill_normal(rng, tmp, n, 0.0f, 1.0f);
    if (o->distribution == CLI_DIST_HEADS) { /* qattn accuracy's "heads" */
        int64_t D = p->head_dim, Ht = which ? p->n_kv_heads : p->n_heads;
        for (int64_t i = 0; i < n; i++) {
            int64_t h = (i / D) % Ht;
            float x = Ht > 1 ? (float)h / (float)(Ht - 1) : 0.0f;
            tmp[i] *= which == 2 ? 0.01f * powf(10.0f, 4.0f * x) : 0.3f * powf(10.0f, x);
        }
    }
    cli_convert_from_f32(tmp, dst, dtype, n);
    cli_free(tmp);
    return 0;
}

/* Allocates all four or none, and says why in one line (the sizes, the total). */
static int make_tensors(const cli_opts *o, const qattn_params *p, bench_tensors *t) {
    memset(t, 0, sizeof *t);
    size_t es = cli_dtype_size(p->qkv_dtype);
    int64_t q_dims[4] = {p->batch, p->seqlen_q, p->n_heads, p->head_dim}, kv_dims[4] = {p->batch, p->seqlen_k, p->n_kv_heads, p->head_dim};
    int64_t q_count, kv_count, o_count;
    size_t total;
    if (cli_tensor_size(q_dims, 4, es, &q_count, &t->q_bytes) || cli_tensor_size(kv_dims, 4, es, &kv_count, &t->kv_bytes) ||
        cli_tensor_size(q_dims, 4, cli_dtype_size(p->o_dtype), &o_count, &t->o_bytes) ||
        __builtin_add_overflow(t->q_bytes, t->kv_bytes, &total) || __builtin_add_overflow(total, t->kv_bytes, &total) ||
        __builtin_add_overflow(total, t->o_bytes, &total)) {
        cli_error(CMD, "Q [%lld, %lld, %lld, %lld] and K, V [%lld, %lld, %lld, %lld] are too large: their byte sizes overflow 64 bits",
                  (long long)q_dims[0], (long long)q_dims[1], (long long)q_dims[2], (long long)q_dims[3], (long long)kv_dims[0],
                  (long long)kv_dims[1], (long long)kv_dims[2], (long long)kv_dims[3]);
        return -1;
    }
    t->q = cli_alloc(t->q_bytes, "Q", NULL);
    t->k = t->q ? cli_alloc(t->kv_bytes, "K", NULL) : NULL;
    t->v = t->k ? cli_alloc(t->kv_bytes, "V", NULL) : NULL;
    t->o = t->v ? cli_alloc(t->o_bytes, "O", NULL) : NULL;
    if (!t->o) {
        cli_error(CMD, "out of memory allocating Q, K, V and O (%zu bytes in all)", total);
        return -1;
    }
    cli_rng rng;
    cli_rng_seed(&rng, o->seed);
    if (fill_random(o, &rng, t->q, p->qkv_dtype, q_count, p, 0) || fill_random(o, &rng, t->k, p->qkv_dtype, kv_count, p, 1) ||
        fill_random(o, &rng, t->v, p->qkv_dtype, kv_count, p, 2))
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- device copies (CUDA) */

typedef struct device_tensors {
    void *q, *k, *v, *o;
} device_tensors;

static void free_device(device_tensors *d) {
    cli_device_free(d->q);
    cli_device_free(d->k);
    cli_device_free(d->v);
    cli_device_free(d->o);
    memset(d, 0, sizeof *d);
}

static int upload_tensors(const bench_tensors *t, device_tensors *d) {
    memset(d, 0, sizeof *d);
    if (!cli_device_available()) {
        cli_error(CMD, "--backend cuda: this qattn binary has no CUDA runtime linked");
        return -1;
    }
    d->q = cli_device_alloc(t->q_bytes);
    d->k = cli_device_alloc(t->kv_bytes);
    d->v = cli_device_alloc(t->kv_bytes);
    d->o = cli_device_alloc(t->o_bytes);
    if (!d->q || !d->k || !d->v || !d->o || cli_device_upload(d->q, t->q, t->q_bytes) || cli_device_upload(d->k, t->k, t->kv_bytes) ||
        cli_device_upload(d->v, t->v, t->kv_bytes)) {
        cli_error(CMD, "--backend cuda: cannot allocate or copy %zu bytes of device memory", t->q_bytes + 2 * t->kv_bytes + t->o_bytes);
        free_device(d);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- timing */

static qattn_status call_forward(qattn_ctx *ctx, void *params) { return qattn_forward(ctx, params); }

typedef struct kv_decode_call {
    const qattn_kv_cache *cache;
    const qattn_decode_params *dp;
} kv_decode_call;

static qattn_status call_kv_decode(qattn_ctx *ctx, void *arg) {
    const kv_decode_call *c = arg;
    return qattn_kv_decode(ctx, c->cache, c->dp);
}

/* Warm up (o->warmup calls), then time o->iters calls of fn; *ms is the median. Every row of a
 * table times this way, so its ms columns compare. Prints the library's message on failure. */
static int time_calls(qattn_ctx *ctx, const cli_opts *o, cli_call_fn fn, void *arg, int on_device, double *ms) {
    double *samples = cli_alloc((size_t)o->iters * sizeof(double), "timings", CMD);
    if (!samples) return -1;
    int rc = -1;
    for (int it = 0; it < o->warmup + o->iters; it++) {
        double t0 = cli_now_seconds();
        qattn_status s = fn(ctx, arg);
        if (s == QATTN_OK && on_device && cli_device_synchronize()) s = QATTN_ERR_BACKEND;
        double t1 = cli_now_seconds();
        if (s != QATTN_OK) {
            const char *why = qattn_ctx_last_error(ctx);
            cli_error(CMD, "%s: %s", qattn_status_str(s), why[0] ? why : "(no message)");
            goto done;
        }
        if (it >= o->warmup) samples[it - o->warmup] = 1e3 * (t1 - t0);
    }
    *ms = cli_median(samples, o->iters);
    rc = 0;
done:
    cli_free(samples);
    return rc;
}

/* ---------------------------------------------------------------- oracle check */

/* The FP64 oracle of the last `rows` query rows of each sequence of p (all rows when rows ==
 * Lq; see ORACLE_SAMPLE_ROWS), contiguous [B, rows, H, D]: *ref, allocated. */
static int oracle_rows(qattn_ctx *ctx, const qattn_params *p, int64_t rows, double **ref) {
    int64_t H = p->n_heads, D = p->head_dim, B = p->batch, Lq = p->seqlen_q;
    qattn_params sub = *p;
    sub.seqlen_q = rows;
    sub.q = (const char *)p->q + (size_t)((Lq - rows) * p->q_seq_stride) * cli_dtype_size(p->qkv_dtype);
    sub.o = (char *)p->o + (size_t)((Lq - rows) * p->o_seq_stride) * cli_dtype_size(p->o_dtype);
    sub.lse = NULL;
    /* the sample starts on a mask block boundary (run_case picks rows so): its first query block
     * is row (Lq - rows) / BQ of the map */
    if (p->block_mask) sub.block_mask += (Lq - rows) / p->block_mask_q * p->block_mask_row_stride;
    *ref = cli_alloc((size_t)(B * rows * H * D) * sizeof(double), "the oracle output", CMD);
    if (!*ref) return -1;
    qattn_status s = qattn_oracle_f64(ctx, &sub, *ref, NULL);
    if (s != QATTN_OK) {
        cli_error(CMD, "oracle: %s", qattn_ctx_last_error(ctx));
        cli_free(*ref);
        *ref = NULL;
        return -1;
    }
    return 0;
}

/* Compare the host output o_f32 [B, Lq, H, D] with the oracle, on all rows or on the last
 * `rows` rows of each sequence (see ORACLE_SAMPLE_ROWS). */
static int check_against_oracle(qattn_ctx *ctx, const qattn_params *p, const float *o_f32, int64_t rows, cli_metrics *m) {
    int64_t H = p->n_heads, D = p->head_dim, B = p->batch, Lq = p->seqlen_q;
    size_t n = (size_t)(B * rows * H * D);
    double *ref = NULL;
    float *got = cli_alloc(n * sizeof(float), "the sampled output", CMD);
    int rc = -1;
    if (!got || oracle_rows(ctx, p, rows, &ref)) goto done;
    /* Gather the same rows of the output (contiguous [B, Lq, H, D]). */
    for (int64_t b = 0; b < B; b++)
        memcpy(got + (size_t)(b * rows * H * D), o_f32 + (size_t)((b * Lq + (Lq - rows)) * H * D), (size_t)(rows * H * D) * sizeof(float));
    cli_metrics_compute(got, ref, (int64_t)n, m);
    rc = 0;
done:
    cli_free(ref);
    cli_free(got);
    return rc;
}

/* x (F32, contiguous [B, L, Ht, D] as tensor `which` of p) replaced by dequantize(quantize(x)),
 * token scales, with the smoothing mean for K and V: the formats of precision int8 (dynamic,
 * default scheme). */
static int quantize_roundtrip(qattn_ctx *ctx, const qattn_params *p, int32_t which, float *x) {
    int64_t n_scales = 0, ht = which == QATTN_TENSOR_Q ? p->n_heads : p->n_kv_heads;
    int64_t L = which == QATTN_TENSOR_Q ? p->seqlen_q : p->seqlen_k, n = p->batch * L * ht * p->head_dim;
    qattn_int8_tensor t;
    memset(&t, 0, sizeof t);
    t.granularity = QATTN_QUANT_PER_TOKEN;
    t.block_size = 1;
    t.head_stride = p->head_dim, t.seq_stride = ht * p->head_dim, t.batch_stride = L * ht * p->head_dim;
    if (qattn_int8_scale_count(ctx, p, which, t.granularity, t.block_size, &n_scales) != QATTN_OK) {
        cli_error(CMD, "int8 baseline: %s", qattn_ctx_last_error(ctx));
        return -1;
    }
    t.data = cli_alloc((size_t)n, "int8 codes", CMD);
    t.scale = cli_alloc((size_t)n_scales * sizeof(float), "int8 scales", CMD);
    t.mean = which == QATTN_TENSOR_Q ? NULL : cli_alloc((size_t)(p->batch * ht * p->head_dim) * sizeof(float), "int8 means", CMD);
    int rc = -1;
    if (t.data && t.scale && (t.mean || which == QATTN_TENSOR_Q)) {
        qattn_status s = qattn_quantize_int8(ctx, p, which, &t);
        if (s == QATTN_OK) s = qattn_dequantize_int8(ctx, p, which, &t, x);
        if (s == QATTN_OK) rc = 0;
        else cli_error(CMD, "int8 baseline: %s", qattn_ctx_last_error(ctx));
    }
    cli_free(t.data);
    cli_free(t.scale);
    cli_free(t.mean);
    return rc;
}

/* rel_l2 of FP64 attention on other inputs (q, k, v: float32, laid out as p's) against FP64
 * attention on p's own, on the rows the oracle checks: the error that the change of inputs alone
 * causes, the baseline a quantized row's tolerance is a multiple of. */
static int oracle_shift(qattn_ctx *ctx, const qattn_params *p, const float *q, const float *k, const float *v, int64_t rows,
                        double *rel_l2) {
    qattn_params d = *p;
    d.q = q, d.k = k, d.v = v;
    double *ref = NULL, *shifted = NULL;
    float *shifted_f32 = NULL;
    int rc = -1;
    if (oracle_rows(ctx, p, rows, &ref) || oracle_rows(ctx, &d, rows, &shifted)) goto done;
    size_t n = (size_t)(p->batch * rows * p->n_heads * p->head_dim);
    shifted_f32 = cli_alloc(n * sizeof(float), "the baseline", CMD);
    if (!shifted_f32) goto done;
    for (size_t i = 0; i < n; i++) shifted_f32[i] = (float)shifted[i]; /* 6e-8 relative: nothing next to a 1e-2 baseline */
    cli_metrics m;
    cli_metrics_compute(shifted_f32, ref, (int64_t)n, &m);
    *rel_l2 = m.rel_l2;
    rc = 0;
done:
    cli_free(ref);
    cli_free(shifted);
    cli_free(shifted_f32);
    return rc;
}

/* The INT8 default scheme's baseline: rel_l2 of FP64 attention on quantize-dequantized Q, K, V
 * against FP64 attention on the originals, on the rows the oracle checks. */
static int int8_baseline(qattn_ctx *ctx, const qattn_params *p, int64_t rows, double *baseline) {
    int64_t q_n = p->batch * p->seqlen_q * p->n_heads * p->head_dim, kv_n = p->batch * p->seqlen_k * p->n_kv_heads * p->head_dim;
    float *q = cli_alloc((size_t)q_n * sizeof(float), "the int8 baseline", CMD);
    float *k = q ? cli_alloc((size_t)kv_n * sizeof(float), "the int8 baseline", CMD) : NULL;
    float *v = k ? cli_alloc((size_t)kv_n * sizeof(float), "the int8 baseline", CMD) : NULL;
    int rc = -1;
    if (v && !quantize_roundtrip(ctx, p, QATTN_TENSOR_Q, q) && !quantize_roundtrip(ctx, p, QATTN_TENSOR_K, k) &&
        !quantize_roundtrip(ctx, p, QATTN_TENSOR_V, v))
        rc = oracle_shift(ctx, p, q, k, v, rows, baseline);
    cli_free(q);
    cli_free(k);
    cli_free(v);
    return rc;
}

/* The int8kv row's baseline: rel_l2 of FP64 attention on the cache's dequantized K, V (what
 * qattn_kv_cache_read returns, in the original domain) against FP64 attention on the original
 * K, V, with the same FP32 Q: the error that storing K/V in INT8 alone causes. The decode then
 * adds only its own arithmetic (INT16 query codes, exact integer dots, FP32 softmax), so its error
 * against the oracle on the original K/V is this baseline plus a little, and it is held to
 * INT8_BASELINE_FACTOR x this baseline + 1e-6: the rule the forward's int8 rows follow with their
 * quantize-dequantize baseline (docs/FORMAT.md §6). cache belongs to ctx; host runs the oracle. */
static int kv_cache_baseline(qattn_ctx *ctx, const qattn_kv_cache *cache, qattn_ctx *host, const qattn_params *p, int64_t rows,
                             double *baseline) {
    int64_t seq_n = p->seqlen_k * p->n_kv_heads * p->head_dim;
    float *k = cli_alloc((size_t)(p->batch * seq_n) * sizeof(float), "the kv-cache baseline", CMD);
    float *v = k ? cli_alloc((size_t)(p->batch * seq_n) * sizeof(float), "the kv-cache baseline", CMD) : NULL;
    int rc = v ? 0 : -1;
    for (int64_t b = 0; b < p->batch && rc == 0; b++) {
        qattn_status s = qattn_kv_cache_read(ctx, cache, (int32_t)b, 0, p->seqlen_k, k + b * seq_n, v + b * seq_n);
        if (s != QATTN_OK) {
            cli_error(CMD, "kv-cache baseline: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
            rc = -1;
        }
    }
    if (rc == 0) rc = oracle_shift(host, p, p->q, k, v, rows, baseline);
    cli_free(k);
    cli_free(v);
    return rc;
}

/* ---------------------------------------------------------------- one case */

static void fill_case_params(const cli_opts *o, const bench_case *c, qattn_params *p) {
    qattn_params_init(p);
    cli_opts sized = *o;
    sized.batch = c->batch;
    sized.seqlen_q = c->seqlen_q;
    sized.seqlen_k = c->seqlen_k;
    sized.heads = c->heads;
    sized.kv_heads = c->kv_heads;
    sized.head_dim = c->head_dim;
    sized.causal = c->causal;
    cli_opts_to_params(&sized, p);
    p->qkv_dtype = storage_dtype(o->precision);
    /* O stays float32 so the error column shows the attention's error, not the rounding of
     * the output to FP16/BF16 (which alone is ~1e-3 relative at BF16). */
    p->o_dtype = QATTN_DTYPE_F32;
}

/* Whether the main job's INT8 row of p's shape decodes over the INT8 KV cache: a decode shape
 * (one query per sequence) that qattn_kv_decode expresses (it has no softcap, ALiBi or block mask;
 * those rows stay qattn_forward in precision int8). */
static int decodes_over_kv_cache(const qattn_params *p, const cli_block_mask_opts *mo) {
    return p->seqlen_q == 1 && p->softcap == 0.0f && !p->alibi_slopes && !mo->file && mo->pattern < 0;
}

/* Time qattn_forward on p's tensors t (on copies in device memory d when on_device), leaving the
 * output in t->o. */
static int time_forward(qattn_ctx *ctx, const cli_opts *o, const qattn_params *p, const bench_tensors *t, int on_device,
                        device_tensors *d, double *ms) {
    qattn_params timed = *p;
    if (on_device) {
        if (upload_tensors(t, d)) return -1;
        timed.q = d->q;
        timed.k = d->k;
        timed.v = d->v;
        timed.o = d->o;
    }
    if (time_calls(ctx, o, call_forward, &timed, on_device, ms)) return -1;
    if (on_device && cli_device_download(t->o, d->o, t->o_bytes)) {
        cli_error(CMD, "--backend cuda: cannot copy the output back");
        return -1;
    }
    return 0;
}

/* Time qattn_kv_decode of p's Q (float32) over cache, which holds p's K and V, output float32 in
 * p->o. At Lq 1 the one query is its sequence's last position, so causal and a right window
 * change nothing there; the left window and the scale carry over. */
static int time_kv_decode(qattn_ctx *ctx, const cli_opts *o, const qattn_params *p, const qattn_kv_cache *cache, double *ms) {
    int32_t *ids = cli_alloc((size_t)p->batch * sizeof(int32_t), "sequence ids", CMD);
    if (!ids) return -1;
    for (int64_t b = 0; b < p->batch; b++) ids[b] = (int32_t)b;
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = p->q, dp.o = p->o, dp.seq_ids = ids, dp.n_seqs = (int32_t)p->batch;
    dp.seqlen_q = (int32_t)p->seqlen_q, dp.n_heads = p->n_heads;
    dp.causal = p->causal, dp.window_left = p->window_left, dp.scale = p->scale;
    kv_decode_call call = {cache, &dp};
    int rc = time_calls(ctx, o, call_kv_decode, &call, 0, ms);
    cli_free(ids);
    return rc;
}

/* Bytes the int8kv row moves: Q read and O written in float32, and of every token and kv head
 * the K and V codes (D bytes each) and their two float scales, as qattn bench --decode counts. */
static double kv_cache_row_bytes(const qattn_params *p, const bench_tensors *t) {
    double per_token = (double)p->n_kv_heads * (2.0 * p->head_dim + 2.0 * sizeof(float));
    return (double)(t->q_bytes + t->o_bytes) + per_token * (double)p->seqlen_k * (double)p->batch;
}

/* r's error against the FP64 oracle on p's inputs and its tolerance (see FP_REL_L2_TOLERANCE);
 * cache: the int8kv row's (it belongs to ctx), else NULL. */
static int check_row(qattn_ctx *ctx, const qattn_kv_cache *cache, const qattn_params *p, const float *o_f32, bench_result *r) {
    /* The oracle runs on the host: it gets a CPU context for its error messages. */
    qattn_ctx_options host_opt = {.backend = QATTN_BACKEND_CPU};
    qattn_ctx *host = cli_ctx_create(&host_opt, CMD);
    if (!host) return -1;
    int rc = check_against_oracle(host, p, o_f32, r->oracle_rows, &r->err);
    if (rc == 0 && cache) {
        rc = kv_cache_baseline(ctx, cache, host, p, r->oracle_rows, &r->baseline);
        r->tolerance = INT8_BASELINE_FACTOR * r->baseline + 1e-6;
    } else if (rc == 0 && p->precision == QATTN_PRECISION_INT8 && p->int8_scheme == QATTN_INT8_DEFAULT) {
        rc = int8_baseline(host, p, r->oracle_rows, &r->baseline);
        r->tolerance = INT8_BASELINE_FACTOR * r->baseline + 1e-6;
    } else if (p->precision != QATTN_PRECISION_INT8 && p->precision != QATTN_PRECISION_INT4 && p->precision != QATTN_PRECISION_FP8_E4M3 &&
               p->precision != QATTN_PRECISION_FP8_E5M2) { /* quantized rows without a baseline get no tolerance */
        r->tolerance = FP_REL_L2_TOLERANCE;
    }
    qattn_ctx_destroy(host);
    return rc;
}

/* One row: time p's shape (qattn_forward, or with kv_cache_row qattn_kv_decode over an INT8 KV
 * cache filled untimed with the same K and V), then its rates, error and tolerance. */
static int run_case(qattn_ctx *ctx, const cli_opts *o, const cli_block_mask_opts *mo, const qattn_params *proto, int on_device,
                    int kv_cache_row, bench_result *r) {
    memset(r, 0, sizeof *r);
    r->kv_cache = kv_cache_row;
    qattn_params p = *proto;
    bench_tensors t;
    memset(&t, 0, sizeof t);
    device_tensors d;
    memset(&d, 0, sizeof d);
    qattn_kv_cache *cache = NULL;
    float *o_f32 = NULL;
    uint8_t *mask = NULL;
    int rc = -1;
    if (cli_block_mask_attach(mo, &p, o->seed, &mask, CMD)) goto done;
    if (make_tensors(o, &p, &t)) goto done; /* the same seed: the same Q, K, V as the shape's fp32 row */
    p.q = t.q;
    p.k = t.k;
    p.v = t.v;
    p.o = t.o;
    double bytes = (double)(t.q_bytes + 2 * t.kv_bytes + t.o_bytes);
    if (kv_cache_row) {
        cache = cli_kv_cache_filled(ctx, QATTN_DTYPE_I8, KV_CACHE_BLOCK_SIZE, p.batch, p.seqlen_k, p.n_kv_heads, p.head_dim, t.k, t.v, CMD);
        if (!cache || time_kv_decode(ctx, o, &p, cache, &r->ms)) goto done;
        bytes = kv_cache_row_bytes(&p, &t);
    } else if (time_forward(ctx, o, &p, &t, on_device, &d, &r->ms)) {
        goto done;
    }

    double pairs = (double)cli_live_pairs(&p) / p.n_heads; /* per head, as the window-only count */
    r->density = p.block_mask ? pairs / (double)cli_visible_pairs(&p) : 1.0;
    double seconds = r->ms * 1e-3;
    r->gflops = 4.0 * p.n_heads * p.head_dim * pairs / seconds * 1e-9;
    r->gbps = bytes / seconds * 1e-9;

    int64_t o_count = p.batch * p.seqlen_q * p.n_heads * p.head_dim;
    o_f32 = cli_alloc((size_t)o_count * sizeof(float), "O as float32", CMD);
    if (!o_f32) goto done;
    cli_convert_to_f32(t.o, p.o_dtype, o_f32, o_count);
    double oracle_work = (double)p.n_heads * p.head_dim * pairs;
    r->oracle_rows = oracle_work <= ORACLE_FULL_WORK_LIMIT || p.seqlen_q <= ORACLE_SAMPLE_ROWS ? p.seqlen_q : ORACLE_SAMPLE_ROWS;
    if (p.block_mask && r->oracle_rows < p.seqlen_q) /* start the sample on a mask block boundary */
        r->oracle_rows = p.seqlen_q - (p.seqlen_q - r->oracle_rows) / p.block_mask_q * p.block_mask_q;
    if (check_row(ctx, cache, &p, o_f32, r)) goto done;
    r->checked = 1;
    rc = 0;
done:
    qattn_kv_cache_destroy(ctx, cache);
    cli_free(o_f32);
    cli_free(mask);
    free_device(&d);
    free_tensors(&t);
    return rc;
}

/* ---------------------------------------------------------------- output */

static void print_table_header(const qattn_ctx_info *info, const cli_opts *o, const cli_block_mask_opts *mo) {
    printf("qattn %s bench: backend %s, isa %s, threads %d, %s inputs, %s\n", qattn_version(), qattn_backend_name(info->backend),
           info->isa_name, info->n_threads, o->distribution == CLI_DIST_UNIFORM ? "U(0,1)" : "N(0,1)", info->device_name);
    printf("median of %d iters after %d warm-up; GFLOP/s counts 4*H*D per visible (query,key) pair\n", o->iters, o->warmup);
    if (mo->file || mo->pattern >= 0)
        printf("block mask: %s %s, blocks %d x %d%s\n", mo->file ? "file" : cli_block_pattern_name(mo->pattern), mo->file ? mo->file : "pattern",
               mo->bq, mo->bk, mo->pattern >= 0 ? " (density column: computed pairs / pairs the causal/window mask alone shows)" : "");
    printf("%-6s %3s %4s %4s %6s %6s %4s %-6s %7s %10s %9s %8s %10s %10s %-14s %7s %s\n", "prec", "B", "H", "HK", "Lq", "Lk", "D", "causal",
           "density", "ms", "GFLOP/s", "GB/s", "rel_l2", "max_abs", "oracle", "vs_fp32", "verdict");
}

/* "ok: rel_l2 1.3e-02 vs 3.8e-02 (3 x int8 baseline 1.3e-02)" (int8kv: "kv-cache baseline"),
 * "OVER TOLERANCE: ...", or "-" without a tolerance. */
static void format_verdict(const bench_result *r, char *buf, size_t len) {
    if (r->tolerance <= 0) {
        snprintf(buf, len, "- (no tolerance defined for this precision/scheme)");
        return;
    }
    const char *word = r->err.rel_l2 <= r->tolerance ? "ok" : "OVER TOLERANCE";
    if (r->baseline > 0)
        snprintf(buf, len, "%s: rel_l2 %.1e vs %.1e (%.0f x %s baseline %.1e)", word, r->err.rel_l2, r->tolerance, INT8_BASELINE_FACTOR,
                 r->kv_cache ? "kv-cache" : "int8", r->baseline);
    else snprintf(buf, len, "%s: rel_l2 %.1e vs %.1e", word, r->err.rel_l2, r->tolerance);
}

static int row_within_tolerance(const bench_result *r) { return r->tolerance <= 0 || r->err.rel_l2 <= r->tolerance; }

/* The prec column: the precision's name, or int8kv for a decode over the INT8 KV cache. */
static const char *row_label(const qattn_params *p, const bench_result *r) {
    return r->kv_cache ? "int8kv" : qattn_precision_name(p->precision);
}

static void print_table_row(const qattn_params *p, const bench_result *r) {
    char oracle[32], speedup[16], verdict[128];
    if (r->oracle_rows == p->seqlen_q) snprintf(oracle, sizeof oracle, "all rows");
    else snprintf(oracle, sizeof oracle, "last %lld rows", (long long)r->oracle_rows);
    if (r->speedup > 0) snprintf(speedup, sizeof speedup, "%.2fx", r->speedup);
    else snprintf(speedup, sizeof speedup, "-");
    format_verdict(r, verdict, sizeof verdict);
    printf("%-6s %3lld %4d %4d %6lld %6lld %4d %-6s %7.3f %10.3f %9.2f %8.2f %10.3e %10.3e %-14s %7s %s\n", row_label(p, r),
           (long long)p->batch, p->n_heads, p->n_kv_heads, (long long)p->seqlen_q, (long long)p->seqlen_k, p->head_dim,
           p->causal ? "yes" : "no", r->density, r->ms, r->gflops, r->gbps, r->err.rel_l2, r->err.max_abs, oracle, speedup, verdict);
    fflush(stdout);
}

static void print_json_row(const qattn_ctx_info *info, const cli_opts *o, const cli_score_mods *mods, const qattn_params *p,
                           const bench_result *r) {
    cli_json j;
    cli_json_begin(&j, stdout);
    cli_json_str(&j, "backend", qattn_backend_name(info->backend));
    cli_json_str(&j, "isa", info->isa_name);
    cli_json_str(&j, "precision", qattn_precision_name(p->precision));
    /* the cache has its own INT8 format (docs/KVCACHE.md), not one of the forward's schemes */
    if (r->kv_cache) cli_json_str(&j, "kv_cache", qattn_dtype_name(QATTN_DTYPE_I8));
    else if (p->precision == QATTN_PRECISION_INT8) cli_json_str(&j, "int8_scheme", qattn_int8_scheme_name(p->int8_scheme));
    cli_json_int(&j, "threads", info->n_threads);
    cli_json_int(&j, "batch", p->batch);
    cli_json_int(&j, "heads", p->n_heads);
    cli_json_int(&j, "kv_heads", p->n_kv_heads);
    cli_json_int(&j, "seqlen_q", p->seqlen_q);
    cli_json_int(&j, "seqlen_k", p->seqlen_k);
    cli_json_int(&j, "head_dim", p->head_dim);
    cli_json_bool(&j, "causal", p->causal);
    cli_json_int(&j, "window_left", p->window_left);
    cli_json_int(&j, "window_right", p->window_right);
    cli_json_num(&j, "softcap", p->softcap);
    cli_json_str(&j, "alibi", cli_score_mods_alibi_name(mods));
    cli_json_num(&j, "density", r->density);
    cli_json_int(&j, "iters", o->iters);
    cli_json_num(&j, "ms", r->ms);
    cli_json_num(&j, "gflops", r->gflops);
    cli_json_num(&j, "gbps", r->gbps);
    cli_json_num(&j, "rel_l2", r->err.rel_l2);
    cli_json_num(&j, "max_abs", r->err.max_abs);
    cli_json_num(&j, "rel_l1", r->err.rel_l1);
    cli_json_num(&j, "cosine", r->err.cosine);
    cli_json_int(&j, "oracle_rows", r->oracle_rows);
    if (r->speedup > 0) cli_json_num(&j, "speedup_vs_fp32", r->speedup);
    if (r->tolerance > 0) {
        cli_json_num(&j, "tolerance", r->tolerance);
        if (r->baseline > 0) cli_json_num(&j, r->kv_cache ? "kv_cache_baseline" : "int8_baseline", r->baseline);
        cli_json_bool(&j, "within_tolerance", row_within_tolerance(r));
    }
    cli_json_end(&j);
}

/* ---------------------------------------------------------------- command */

static int parse_bench_args(int argc, char **argv, cli_opts *o, cli_score_mods *mods, cli_block_mask_opts *m) {
    cli_opts_init(o);
    memset(mods, 0, sizeof *mods);
    cli_block_mask_opts_init(m);
    for (int i = 1; i < argc; i++) {
        if (cli_flag_is(argv[i], "--help") || cli_flag_is(argv[i], "-h")) return 1;
        cli_flag_result r = cli_score_mods_parse_flag(mods, argc, argv, &i, CMD);
        if (r == CLI_FLAG_ERROR) return -1;
        if (r == CLI_FLAG_CONSUMED) continue;
        r = cli_block_mask_parse_flag(m, argc, argv, &i, 1, CMD);
        if (r == CLI_FLAG_ERROR) return -1;
        if (r == CLI_FLAG_CONSUMED) continue;
        r = cli_opts_parse_flag(o, argc, argv, &i, CMD);
        if (r == CLI_FLAG_ERROR) return -1;
        if (r == CLI_FLAG_UNKNOWN) {
            cli_error(CMD, "unknown option '%s' (try qattn bench --help)", argv[i]);
            return -1;
        }
    }
    return 0;
}

/* With no --backend and no QATTN_BACKEND, bench the best backend found: the GPU when this build
 * has CUDA and a device is visible, in FP16 (its native input type) unless --precision says. */
static void choose_best_backend(cli_opts *o) {
    const char *env = getenv("QATTN_BACKEND");
    if (o->backend != QATTN_BACKEND_AUTO || (env && *env) || !cli_device_available()) return;
    o->backend = QATTN_BACKEND_CUDA;
    if (!o->precision_given) o->precision = QATTN_PRECISION_FP16;
}

int qattn_cli_bench(int argc, char **argv) {
    for (int i = 1; i < argc; i++) /* decode over a paged KV cache has its own flags */
        if (cli_flag_is(argv[i], "--decode")) return qattn_cli_bench_decode(argc, argv);
    for (int i = 1; i < argc; i++) /* append + rotary + attention over cache tensors: its own flags too */
        if (cli_flag_is(argv[i], "--kvcache")) return qattn_cli_bench_kvcache(argc, argv);
    if (qattn_cli_bench_dist_wanted(argc, argv)) return qattn_cli_bench_dist(argc, argv); /* across ranks */
    cli_opts o;
    cli_score_mods mods;
    cli_block_mask_opts mo;
    int parsed = parse_bench_args(argc, argv, &o, &mods, &mo);
    if (parsed == 0 && cli_block_mask_check(&mo, CMD)) parsed = -1;
    if (parsed == 1) {
        print_bench_help();
        return CLI_EXIT_OK;
    }
    if (parsed < 0) return CLI_EXIT_USAGE;

    choose_best_backend(&o);
    qattn_ctx_options copt;
    cli_opts_to_ctx_options(&o, &copt);
    qattn_ctx *ctx = cli_ctx_create(&copt, CMD);
    if (!ctx) return CLI_EXIT_FAILURE;
    qattn_ctx_info info;
    qattn_ctx_get_info(ctx, &info);
    int on_device = info.backend == QATTN_BACKEND_CUDA;

    bench_case single;
    const bench_case *cases = default_cases;
    size_t n_cases = sizeof default_cases / sizeof default_cases[0];
    if (o.shape_given) {
        qattn_params shape;
        qattn_params_init(&shape);
        cli_opts_to_params(&o, &shape);
        single = (bench_case){shape.batch, shape.seqlen_q, shape.seqlen_k, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.causal};
        cases = &single;
        n_cases = 1;
    }
    /* The main job (no shape, no precision, CPU): each shape in FP32 and in INT8, the INT8 row
     * with its speed-up over the FP32 row just measured: the default scheme's forward for a
     * prefill shape, a decode over the INT8 KV cache for a decode shape (decodes_over_kv_cache). */
    int with_int8 = !o.shape_given && !o.precision_given && !on_device;
    int32_t precisions[2] = {o.precision, QATTN_PRECISION_INT8};
    if (!o.json) print_table_header(&info, &o, &mo);
    int failures = 0;
    for (size_t c = 0; c < n_cases; c++) {
        double fp32_ms = 0;
        for (int pi = 0; pi < (with_int8 ? 2 : 1); pi++) {
            cli_opts row_opts = o;
            row_opts.precision = precisions[pi];
            if (pi == 1) row_opts.int8_scheme = QATTN_INT8_DEFAULT;
            qattn_params p;
            fill_case_params(&row_opts, &cases[c], &p);
            float *slopes = NULL;
            if (cli_score_mods_apply(&mods, &p, &slopes, CMD)) {
                failures++;
                continue;
            }
            /* Ask first, so an unsupported case costs no allocation; its reason is printed. */
            qattn_params probe = p;
            probe.batch = 0; /* shape checks without tensors */
            qattn_status s = qattn_supports(ctx, &probe);
            bench_result r;
            if (s != QATTN_OK) {
                cli_error(CMD, "%s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
                failures++;
                cli_free(slopes);
                continue;
            }
            int kv_cache_row = pi == 1 && decodes_over_kv_cache(&p, &mo);
            int failed = run_case(ctx, &row_opts, &mo, &p, on_device, kv_cache_row, &r);
            if (failed) {
                failures++;
                cli_free(slopes);
                continue;
            }
            if (p.precision == QATTN_PRECISION_FP32) fp32_ms = r.ms;
            if (fp32_ms > 0 && r.ms > 0) r.speedup = fp32_ms / r.ms;
            failures += !row_within_tolerance(&r);
            if (o.json) print_json_row(&info, &o, &mods, &p, &r);
            else print_table_row(&p, &r);
            cli_free(slopes);
        }
    }
    qattn_ctx_destroy(ctx);
    return failures ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}
