/* Helpers shared by the qattn CLI subcommands: option parsing, PRNG, metrics, JSON lines,
 * timing. Declared (and documented) in cli.h. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "npy.h"
#include "qattn_internal.h" /* scalar FP16/BF16 conversions only */

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void cli_error(const char *command, const char *fmt, ...) {
    fprintf(stderr, "qattn %s: ", command);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---------------------------------------------------------------- names (the tables: src/core/names.c) */

const char *cli_isa_names(void) {
    static char list[128];
    if (!list[0]) qattn_isa_name_list("|", list, sizeof list);
    return list;
}

/* ---------------------------------------------------------------- flag parsing */

int cli_flag_is(const char *arg, const char *name) { return strcmp(arg, name) == 0; }

int cli_flag_value(int argc, char **argv, int *i, const char *name, const char **value, const char *command) {
    const char *arg = argv[*i];
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0) return 0;
    if (arg[n] == '=') {
        *value = arg + n + 1;
        return 1;
    }
    if (arg[n] != '\0') return 0;
    if (*i + 1 >= argc) {
        cli_error(command, "%s needs a value", name);
        return -1;
    }
    *i += 1;
    *value = argv[*i];
    return 1;
}

int cli_parse_int64(const char *text, int64_t min, int64_t max, int64_t *out, const char *flag, const char *command) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (text[0] == '\0' || *end != '\0' || errno == ERANGE) {
        cli_error(command, "%s: '%s' is not an integer", flag, text);
        return -1;
    }
    if (v < min || v > max) {
        cli_error(command, "%s is %lld; it must be in %lld..%lld", flag, v, (long long)min, (long long)max);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

int cli_parse_float(const char *text, float *out, const char *flag, const char *command) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (text[0] == '\0' || *end != '\0' || !isfinite(v) || fabs(v) > FLT_MAX) {
        cli_error(command, "%s: '%s' is not a finite number", flag, text);
        return -1;
    }
    if (v != 0.0 && (float)v == 0.0f) {
        cli_error(command, "%s: '%s' is below the smallest float32 (about 1.4e-45): it would round to 0", flag, text);
        return -1;
    }
    *out = (float)v;
    return 0;
}

void cli_opts_init(cli_opts *o) {
    memset(o, 0, sizeof *o);
    o->batch = 1;
    o->heads = 8;
    o->kv_heads = 0;
    o->seqlen_q = 1024;
    o->seqlen_k = 0;
    o->head_dim = 128;
    o->window_left = -1;
    o->window_right = -1;
    o->precision = QATTN_PRECISION_FP32;
    o->int8_scheme = QATTN_INT8_DEFAULT;
    o->backend = QATTN_BACKEND_AUTO;
    o->isa = QATTN_ISA_AUTO;
    o->iters = 5;
    o->warmup = 1;
    o->seed = 1;
    o->distribution = CLI_DIST_NORMAL;
}

/* Parse "L,R" (each an integer >= -1) for --window. */
static int parse_window(const char *text, int32_t *left, int32_t *right, const char *command) {
    const char *comma = strchr(text, ',');
    char buf[64];
    if (!comma || (size_t)(comma - text) >= sizeof buf) {
        cli_error(command, "--window: '%s' is not L,R (two integers, -1 = unbounded)", text);
        return -1;
    }
    memcpy(buf, text, (size_t)(comma - text));
    buf[comma - text] = '\0';
    int64_t l, r;
    if (cli_parse_int64(buf, -1, INT32_MAX, &l, "--window left", command) ||
        cli_parse_int64(comma + 1, -1, INT32_MAX, &r, "--window right", command))
        return -1;
    *left = (int32_t)l;
    *right = (int32_t)r;
    return 0;
}

/* One entry per integer-valued common flag: where it goes and its range. */
typedef struct int_flag {
    const char *name;
    int64_t min, max;
    int is_shape; /* counts as "a shape was given" */
} int_flag;

static int store_int_flag(cli_opts *o, const char *name, int64_t v) {
    if (!strcmp(name, "--batch")) o->batch = v;
    else if (!strcmp(name, "--heads")) o->heads = (int32_t)v;
    else if (!strcmp(name, "--kv-heads")) o->kv_heads = (int32_t)v;
    else if (!strcmp(name, "--seqlen-q")) o->seqlen_q = v;
    else if (!strcmp(name, "--seqlen-k")) o->seqlen_k = v;
    else if (!strcmp(name, "--head-dim")) o->head_dim = (int32_t)v;
    else if (!strcmp(name, "--threads")) o->threads = (int32_t)v;
    else if (!strcmp(name, "--iters")) o->iters = (int)v;
    else if (!strcmp(name, "--warmup")) o->warmup = (int)v;
    else if (!strcmp(name, "--seed")) o->seed = (uint64_t)v;
    else return 0;
    return 1;
}

cli_flag_result cli_opts_parse_flag(cli_opts *o, int argc, char **argv, int *i, const char *command) {
    static const int_flag int_flags[] = {
        {"--batch", 1, INT32_MAX, 1},   {"--heads", 1, 4096, 1},       {"--kv-heads", 1, 4096, 1},
        {"--seqlen-q", 1, INT32_MAX, 1}, {"--seqlen-k", 1, INT32_MAX, 1}, {"--head-dim", 1, 4096, 1},
        {"--threads", 0, QATTN_MAX_THREADS, 0},     {"--iters", 1, 1000000, 0},    {"--warmup", 0, 1000000, 0},
        {"--seed", 0, INT64_MAX, 0},
    };
    const char *arg = argv[*i];
    const char *value = NULL;
    int r;

    if (cli_flag_is(arg, "--causal")) {
        o->causal = 1;
        return CLI_FLAG_CONSUMED;
    }
    if (cli_flag_is(arg, "--json")) {
        o->json = 1;
        return CLI_FLAG_CONSUMED;
    }
    for (size_t f = 0; f < sizeof int_flags / sizeof int_flags[0]; f++) {
        r = cli_flag_value(argc, argv, i, int_flags[f].name, &value, command);
        if (r < 0) return CLI_FLAG_ERROR;
        if (r == 0) continue;
        int64_t v;
        if (cli_parse_int64(value, int_flags[f].min, int_flags[f].max, &v, int_flags[f].name, command)) return CLI_FLAG_ERROR;
        store_int_flag(o, int_flags[f].name, v);
        if (int_flags[f].is_shape) o->shape_given = 1;
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--window", &value, command)) != 0) {
        if (r < 0 || parse_window(value, &o->window_left, &o->window_right, command)) return CLI_FLAG_ERROR;
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--scale", &value, command)) != 0) {
        if (r < 0 || cli_parse_float(value, &o->scale, "--scale", command)) return CLI_FLAG_ERROR;
        if (o->scale == 0.0f) {
            /* 0 means "default" to the library; refuse it rather than silently changing it. */
            cli_error(command, "--scale 0 is not allowed; omit --scale for 1/sqrt(head_dim)");
            return CLI_FLAG_ERROR;
        }
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--precision", &value, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        int p = qattn_precision_from_name(value);
        if (p < 0) {
            cli_error(command, "--precision: '%s' is not one of fp32, fp16, bf16, int8, int4, fp8_e4m3, fp8_e5m2", value);
            return CLI_FLAG_ERROR;
        }
        o->precision = p;
        o->precision_given = 1;
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--int8-scheme", &value, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        int s = qattn_int8_scheme_from_name(value);
        if (s < 0) {
            cli_error(command, "--int8-scheme: '%s' is not one of qattn, intfa, sage", value);
            return CLI_FLAG_ERROR;
        }
        o->int8_scheme = s;
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--backend", &value, command)) != 0)
        return r < 0 || cli_backend_parse(value, &o->backend, command) ? CLI_FLAG_ERROR : CLI_FLAG_CONSUMED;
    if ((r = cli_flag_value(argc, argv, i, "--isa", &value, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        o->isa = qattn_isa_from_name(value);
        if (o->isa < 0) {
            cli_error(command, "--isa: '%s' is not one of %s", value, cli_isa_names());
            return CLI_FLAG_ERROR;
        }
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--cuda-kernels", &value, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        if (!strcmp(value, "auto")) o->cuda_kernels = QATTN_CUDA_KERNELS_AUTO;
        else if (!strcmp(value, "mma")) o->cuda_kernels = QATTN_CUDA_KERNELS_MMA;
        else {
            cli_error(command, "--cuda-kernels: '%s' is not one of auto, mma", value);
            return CLI_FLAG_ERROR;
        }
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--dist", &value, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        if (!strcmp(value, "normal")) o->distribution = CLI_DIST_NORMAL;
        else if (!strcmp(value, "uniform")) o->distribution = CLI_DIST_UNIFORM;
        else if (!strcmp(value, "heads")) o->distribution = CLI_DIST_HEADS;
        else {
            cli_error(command, "--dist: '%s' is not one of normal, uniform, heads", value);
            return CLI_FLAG_ERROR;
        }
        return CLI_FLAG_CONSUMED;
    }
    return CLI_FLAG_UNKNOWN;
}

void cli_opts_print_help(FILE *f) {
    fputs("Shape (any of these replaces the default shape set of bench):\n"
          "  --batch B           batch size (default 1)\n"
          "  --heads H           query heads (default 8)\n"
          "  --kv-heads HK       key/value heads, H % HK == 0 (default H)\n"
          "  --seqlen-q LQ       query length (default 1024)\n"
          "  --seqlen-k LK       key length (default LQ)\n"
          "  --head-dim D        head dimension, 8..256 step 8 (default 128; CUDA: 32, 64, 80, 96, 128, 160, 192, 256)\n"
          "Mask and math:\n"
          "  --causal            causal mask, aligned to the bottom-right corner\n"
          "  --window L,R        local window (-1 = unbounded side)\n"
          "  --scale S           softmax scale (default 1/sqrt(D))\n"
          "  --precision P       fp32|fp16|bf16|int8 (also int4: 4-bit Q/K codes, CPU; fp8_e4m3, fp8_e5m2)\n"
          "  --int8-scheme S     qattn|intfa|sage (with --precision int8)\n"
          "Execution:\n"
          "  --backend B         cpu|cuda (default: QATTN_BACKEND, else cuda if a GPU is visible, else cpu)\n"
          "  --isa I             ISA (default: QATTN_ISA, else the best available)\n"
          "  --cuda-kernels K    auto|mma: CUDA kernels (auto: wgmma on compute capability 9.0; mma: mma.sync everywhere)\n"
          "  --threads T         CPU threads (0 = all online cores)\n"
          "  --iters N           timed iterations, median reported (default 5)\n"
          "  --warmup N          untimed iterations first (default 1)\n"
          "  --seed S            PRNG seed for the inputs (default 1)\n"
          "  --dist D            normal|uniform|heads: N(0,1), U(0,1), or N(0,1) with heads of mixed scale\n"
          "                      (qattn accuracy's 'heads'; prefill bench only, elsewhere N(0,1)) (default normal)\n"
          "  --json              one JSON object per line\n",
          f);
    fprintf(f, "ISAs: %s\n", cli_isa_names());
}

void cli_opts_to_params(const cli_opts *o, qattn_params *p) {
    p->batch = o->batch;
    p->seqlen_q = o->seqlen_q;
    p->seqlen_k = o->seqlen_k > 0 ? o->seqlen_k : o->seqlen_q;
    p->n_heads = o->heads;
    p->n_kv_heads = o->kv_heads > 0 ? o->kv_heads : o->heads;
    p->head_dim = o->head_dim;
    p->causal = o->causal;
    p->window_left = o->window_left;
    p->window_right = o->window_right;
    p->scale = o->scale;
    p->precision = o->precision;
    p->int8_scheme = o->int8_scheme;
    qattn_params_set_contiguous(p);
}

/* ---------------------------------------------------------------- score modifiers */

cli_flag_result cli_score_mods_parse_flag(cli_score_mods *m, int argc, char **argv, int *i, const char *command) {
    const char *value = NULL;
    int r;
    if (cli_flag_is(argv[*i], "--alibi")) {
        if (m->alibi_path) {
            cli_error(command, "--alibi and --alibi-slopes exclude each other");
            return CLI_FLAG_ERROR;
        }
        m->alibi = 1;
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--alibi-slopes", &value, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        if (m->alibi || !value[0]) {
            cli_error(command, m->alibi ? "--alibi and --alibi-slopes exclude each other" : "--alibi-slopes: empty path");
            return CLI_FLAG_ERROR;
        }
        m->alibi_path = value;
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--softcap", &value, command)) != 0) {
        if (r < 0 || cli_parse_float(value, &m->softcap, "--softcap", command)) return CLI_FLAG_ERROR;
        if (!(m->softcap > 0.0f) || !isfinite(m->softcap)) {
            cli_error(command, "--softcap is %s; it must be finite and > 0 (omit it for no softcap)", value);
            return CLI_FLAG_ERROR;
        }
        return CLI_FLAG_CONSUMED;
    }
    return CLI_FLAG_UNKNOWN;
}

void cli_score_mods_print_help(FILE *f) {
    fputs("Score modifiers (CPU backend, fp32/fp16/bf16):\n"
          "  --softcap X         scores become X * tanh(score / X) (X > 0)\n"
          "  --alibi             ALiBi with the paper's slopes for H heads (2^(-8(h+1)/H) for a power of two)\n"
          "  --alibi-slopes F    ALiBi slopes from a float32 .npy, [H] or [B, H]\n",
          f);
}

void cli_alibi_standard_slopes(int32_t heads, float *out) {
    int32_t n = 1;
    while (n * 2 <= heads) n *= 2; /* the largest power of two <= heads */
    for (int32_t h = 0; h < n; h++) out[h] = (float)exp2(-8.0 * (h + 1) / n);
    /* the rest: slopes of 2n heads at odd positions 2^(-8(2k+1)/(2n)), k = 0, 1, ... */
    for (int32_t k = 0; n + k < heads; k++) out[n + k] = (float)exp2(-8.0 * (2 * k + 1) / (2.0 * n));
}

int cli_score_mods_apply(const cli_score_mods *m, qattn_params *p, float **mem, const char *command) {
    *mem = NULL;
    p->softcap = m->softcap;
    p->alibi_slopes = NULL;
    p->alibi_batch_stride = 0;
    if (m->alibi) {
        if (!(*mem = cli_alloc((size_t)p->n_heads * sizeof(float), "the ALiBi slopes", command))) return -1;
        cli_alibi_standard_slopes(p->n_heads, *mem);
    } else if (m->alibi_path) {
        cli_npy_array a;
        char err[CLI_NPY_ERR_LEN];
        if (cli_npy_read(m->alibi_path, &a, err, sizeof err)) {
            cli_error(command, "--alibi-slopes %s: %s", m->alibi_path, err);
            return -1;
        }
        bool per_head = a.ndim == 1 && a.shape[0] == p->n_heads;
        bool per_seq = a.ndim == 2 && a.shape[0] == p->batch && a.shape[1] == p->n_heads;
        if (a.dtype != CLI_NPY_F32 || !(per_head || per_seq)) {
            cli_error(command, "--alibi-slopes %s: expected float32 [%d] or [%lld, %d]", m->alibi_path, p->n_heads, (long long)p->batch,
                      p->n_heads);
            cli_npy_free(&a);
            return -1;
        }
        if (!(*mem = cli_alloc((size_t)a.count * sizeof(float), "the ALiBi slopes", command))) {
            cli_npy_free(&a);
            return -1;
        }
        memcpy(*mem, a.data, (size_t)a.count * sizeof(float));
        p->alibi_batch_stride = per_seq ? p->n_heads : 0;
        cli_npy_free(&a);
    }
    p->alibi_slopes = *mem;
    return 0;
}

const char *cli_score_mods_alibi_name(const cli_score_mods *m) { return m->alibi ? "paper" : m->alibi_path ? m->alibi_path : "none"; }

void cli_opts_to_ctx_options(const cli_opts *o, qattn_ctx_options *c) {
    memset(c, 0, sizeof *c);
    c->backend = o->backend;
    c->isa = o->isa;
    c->n_threads = o->threads;
    c->cuda_kernels = o->cuda_kernels;
}

qattn_ctx *cli_ctx_create(const qattn_ctx_options *c, const char *command) {
    qattn_ctx *ctx = NULL;
    char why[256];
    qattn_status s = qattn_ctx_create_ex(&ctx, c, why, sizeof why);
    if (s != QATTN_OK) {
        cli_error(command, "cannot create a context (backend %s, isa %s): %s", c ? qattn_backend_name(c->backend) : "auto",
                  c ? qattn_isa_name(c->isa) : "auto", why[0] ? why : qattn_status_str(s));
        return NULL;
    }
    return ctx;
}

/* ---------------------------------------------------------------- PRNG */

void cli_rng_seed(cli_rng *r, uint64_t seed) {
    r->state = seed;
    r->has_spare_normal = 0;
    r->spare_normal = 0.0;
}

uint64_t cli_rng_next_u64(cli_rng *r) {
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double cli_rng_uniform(cli_rng *r) { return (double)(cli_rng_next_u64(r) >> 11) * 0x1.0p-53; }

double cli_rng_normal(cli_rng *r) {
    if (r->has_spare_normal) {
        r->has_spare_normal = 0;
        return r->spare_normal;
    }
    /* 1 - u lies in (0, 1], so the log is finite. */
    double radius = sqrt(-2.0 * log(1.0 - cli_rng_uniform(r)));
    double angle = 6.283185307179586 * cli_rng_uniform(r);
    r->spare_normal = radius * sin(angle);
    r->has_spare_normal = 1;
    return radius * cos(angle);
}

void cli_fill_normal(cli_rng *r, float *x, int64_t n, float mean, float stddev) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)(mean + stddev * cli_rng_normal(r));
}

void cli_fill_uniform(cli_rng *r, float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * cli_rng_uniform(r));
}

/* ---------------------------------------------------------------- metrics */

void cli_metrics_compute(const float *out, const double *ref, int64_t n, cli_metrics *m) {
    double abs_err_sum = 0, abs_ref_sum = 0, err_sq = 0, ref_sq = 0, out_sq = 0, dot = 0, max_abs = 0, rel_sum = 0;
    int64_t nonfinite = 0;
    for (int64_t i = 0; i < n; i++) {
        double o = out[i], r = ref[i];
        if (!isfinite(o) || !isfinite(r)) nonfinite++;
        double e = fabs(o - r);
        abs_err_sum += e;
        abs_ref_sum += fabs(r);
        err_sq += e * e;
        ref_sq += r * r;
        out_sq += o * o;
        dot += o * r;
        /* Written so a NaN error makes max_abs NaN instead of being skipped. */
        if (!(e <= max_abs)) max_abs = e;
        rel_sum += e / (fabs(r) + 1e-5);
    }
    m->count = n;
    m->nonfinite = nonfinite;
    m->max_abs = max_abs;
    m->rel_l1 = abs_ref_sum > 0 ? abs_err_sum / abs_ref_sum : (abs_err_sum > 0 ? INFINITY : 0.0);
    m->rel_l2 = ref_sq > 0 ? sqrt(err_sq / ref_sq) : (err_sq > 0 ? INFINITY : 0.0);
    m->cosine = (ref_sq > 0 && out_sq > 0) ? dot / (sqrt(ref_sq) * sqrt(out_sq)) : (ref_sq == out_sq ? 1.0 : 0.0);
    m->mre = n > 0 ? rel_sum / (double)n : 0.0;
}

/* ---------------------------------------------------------------- dtypes */

size_t cli_dtype_size(int32_t dtype) { return dtype == QATTN_DTYPE_F32 ? 4 : 2; }

void cli_convert_to_f32(const void *src, int32_t dtype, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = qattn_load(src, dtype, i);
}

void cli_convert_from_f32(const float *src, void *dst, int32_t dtype, int64_t n) {
    for (int64_t i = 0; i < n; i++) qattn_store(dst, dtype, i, src[i]);
}

/* ---------------------------------------------------------------- JSON */

void cli_json_begin(cli_json *j, FILE *f) {
    j->f = f;
    j->n_fields = 0;
    fputc('{', f);
}

static void json_key(cli_json *j, const char *key) {
    if (j->n_fields++) fputs(", ", j->f);
    fprintf(j->f, "\"%s\": ", key);
}

void cli_json_str(cli_json *j, const char *key, const char *value) {
    json_key(j, key);
    fputc('"', j->f);
    for (const unsigned char *c = (const unsigned char *)value; *c; c++) {
        if (*c == '"' || *c == '\\') fprintf(j->f, "\\%c", *c);
        else if (*c < 0x20) fprintf(j->f, "\\u%04x", *c);
        else fputc(*c, j->f);
    }
    fputc('"', j->f);
}

void cli_json_int(cli_json *j, const char *key, int64_t value) {
    json_key(j, key);
    fprintf(j->f, "%lld", (long long)value);
}

void cli_json_num(cli_json *j, const char *key, double value) {
    json_key(j, key);
    if (isfinite(value)) fprintf(j->f, "%.9g", value);
    else fputs("null", j->f);
}

void cli_json_bool(cli_json *j, const char *key, int value) {
    json_key(j, key);
    fputs(value ? "true" : "false", j->f);
}

void cli_json_end(cli_json *j) {
    fputs("}\n", j->f);
    fflush(j->f);
}

/* ---------------------------------------------------------------- timing, geometry, memory */

double cli_now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_median(double *values, int n) {
    if (n <= 0) return NAN;
    qsort(values, (size_t)n, sizeof *values, compare_doubles);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

int cli_time_calls(qattn_ctx *ctx, cli_call_fn fn, void *arg, int64_t iters, double *median, double *best, const char *what,
                   const char *command) {
    double *t = cli_alloc((size_t)iters * sizeof(double), "times", command);
    if (!t) return -1;
    qattn_status s = fn(ctx, arg); /* warm-up */
    for (int64_t it = 0; it < iters && s == QATTN_OK; it++) {
        double t0 = cli_now_seconds();
        s = fn(ctx, arg);
        t[it] = cli_now_seconds() - t0;
    }
    if (s != QATTN_OK) {
        cli_error(command, "%s: %s: %s", what, qattn_status_str(s), qattn_ctx_last_error(ctx));
        cli_free(t);
        return -1;
    }
    *best = t[0];
    for (int64_t it = 1; it < iters; it++) *best = t[it] < *best ? t[it] : *best;
    *median = cli_median(t, (int)iters);
    cli_free(t);
    return 0;
}

int64_t cli_visible_pairs(const qattn_params *p) {
    int64_t lq = p->seqlen_q, lk = p->seqlen_k, pairs = 0;
    int32_t right = p->causal ? 0 : p->window_right;
    for (int64_t i = 0; i < lq; i++) {
        /* key j is visible when i+lk-lq-left <= j <= i+lk-lq+right (qattn.h, "Masks") */
        int64_t diag = i + lk - lq;
        int64_t lo = p->window_left < 0 ? 0 : diag - p->window_left;
        int64_t hi = right < 0 ? lk : diag + right + 1;
        if (lo < 0) lo = 0;
        if (hi > lk) hi = lk;
        if (hi > lo) pairs += hi - lo;
    }
    return pairs * p->batch;
}

void *cli_alloc(size_t n, const char *what, const char *command) {
    /* aligned_alloc wants a multiple of the alignment; 0 bytes still gets a real block so
     * callers can treat NULL as failure. */
    size_t rounded = n > SIZE_MAX - 63 ? 0 : (n + 63) / 64 * 64;
    if (n == 0) rounded = 64;
    void *p = rounded ? aligned_alloc(64, rounded) : NULL;
    if (!p) {
        if (command) cli_error(command, "out of memory allocating %s (%zu bytes)", what, n);
        return NULL;
    }
    memset(p, 0, rounded);
    return p;
}

void cli_free(void *p) { free(p); }

int cli_tensor_size(const int64_t *dims, int ndim, size_t elem_bytes, int64_t *count, size_t *bytes) {
    int64_t n = 1, b;
    for (int d = 0; d < ndim; d++)
        if (!qattn_mul_i64(n, dims[d], &n)) return -1;
    if (!qattn_mul_i64(n, (int64_t)elem_bytes, &b) || (uint64_t)b > SIZE_MAX) return -1;
    *count = n;
    *bytes = (size_t)b;
    return 0;
}

/* ---------------------------------------------------------------- KV cache */

qattn_kv_cache *cli_kv_cache_filled(qattn_ctx *ctx, int32_t dtype, int32_t block_size, int64_t batch, int64_t len, int32_t kv_heads,
                                    int32_t head_dim, const float *k, const float *v, const char *command) {
    qattn_kv_cache_options co;
    memset(&co, 0, sizeof co);
    co.n_kv_heads = kv_heads, co.head_dim = head_dim, co.block_size = block_size, co.dtype = dtype;
    co.n_blocks = batch * ((len + block_size - 1) / block_size); /* room for exactly these tokens */
    co.max_seqs = (int32_t)batch;
    qattn_kv_cache *cache = NULL;
    qattn_status s = qattn_kv_cache_create(ctx, &co, &cache);
    if (s != QATTN_OK) {
        cli_error(command, "kv_cache_create: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
        return NULL;
    }
    int64_t seq_elems = len * kv_heads * head_dim;
    for (int64_t b = 0; b < batch; b++) {
        s = qattn_kv_cache_append(ctx, cache, (int32_t)b, k + b * seq_elems, v + b * seq_elems, len, QATTN_DTYPE_F32);
        if (s != QATTN_OK) {
            cli_error(command, "kv_cache_append: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
            qattn_kv_cache_destroy(ctx, cache);
            return NULL;
        }
    }
    return cache;
}

/* ---------------------------------------------------------------- sub-command flags */

cli_flag_result cli_int_flags_parse(const cli_int_flag *flags, size_t n, int argc, char **argv, int *i, const char *command) {
    for (size_t k = 0; k < n; k++) {
        const char *val = NULL;
        int r = cli_flag_value(argc, argv, i, flags[k].name, &val, command);
        if (r < 0) return CLI_FLAG_ERROR;
        if (r == 1) return cli_parse_int64(val, flags[k].lo, flags[k].hi, flags[k].dst, flags[k].name, command) ? CLI_FLAG_ERROR : CLI_FLAG_CONSUMED;
    }
    return CLI_FLAG_UNKNOWN;
}

int cli_backend_parse(const char *value, int32_t *backend, const char *command) {
    if (!strcmp(value, "cpu")) *backend = QATTN_BACKEND_CPU;
    else if (!strcmp(value, "cuda")) *backend = QATTN_BACKEND_CUDA;
    else {
        cli_error(command, "--backend: '%s' is not one of cpu, cuda", value);
        return -1;
    }
    return 0;
}

cli_flag_result cli_isa_seed_parse(int32_t *isa, uint64_t *seed, int argc, char **argv, int *i, const char *command) {
    const char *val = NULL;
    int r;
    if ((r = cli_flag_value(argc, argv, i, "--isa", &val, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        *isa = qattn_isa_from_name(val);
        if (*isa < 0) {
            cli_error(command, "--isa '%s': expected one of %s", val, cli_isa_names());
            return CLI_FLAG_ERROR;
        }
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--seed", &val, command)) != 0) {
        int64_t s;
        if (r < 0 || cli_parse_int64(val, 0, INT64_MAX, &s, "--seed", command) != 0) return CLI_FLAG_ERROR;
        *seed = (uint64_t)s;
        return CLI_FLAG_CONSUMED;
    }
    return CLI_FLAG_UNKNOWN;
}
