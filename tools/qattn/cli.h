/* The qattn command-line tool: declarations shared by its subcommands (info, bench, run,
 * accuracy). Helpers here are for tools only: they print to stdout/stderr and never touch
 * library internals beyond the public API (plus the scalar FP16/BF16 conversions).
 * Every subcommand is `int qattn_cli_<name>(int argc, char **argv)` where argv[0] is the
 * subcommand name; it returns the process exit status (0 ok, 1 runtime failure, 2 usage error). */
#ifndef QATTN_CLI_H
#define QATTN_CLI_H

#include "qattn.h"

#include "core/names.h"

#include <stdint.h>
#include <stdio.h>

/* ---------------------------------------------------------------- subcommands */

int qattn_cli_info(int argc, char **argv);
int qattn_cli_bench(int argc, char **argv);
int qattn_cli_run(int argc, char **argv);
int qattn_cli_accuracy(int argc, char **argv); /* tools/qattn/accuracy.c */
int qattn_cli_calibrate(int argc, char **argv); /* tools/qattn/calibrate.c */
/* Read a calibration file of `qattn calibrate` ([3, HK, D] float32) into cal (k_factor, k_mean,
 * v_mean point into *mem; free(*mem) when done). 0, or -1 after printing why. */
int cli_load_calibration(const char *path, int32_t kv_heads, int32_t head_dim, qattn_calibration *cal, float **mem, const char *command);
int qattn_cli_bench_decode(int argc, char **argv); /* tools/qattn/bench_decode.c: qattn bench --decode */
int qattn_cli_bench_kvcache(int argc, char **argv); /* tools/qattn/bench_kvcache.c: qattn bench --kvcache */
/* tools/qattn/bench_dist.c: qattn bench --dist mpi|nccl (wanted: 1 if argv asks for it) */
int qattn_cli_bench_dist(int argc, char **argv);
int qattn_cli_bench_dist_wanted(int argc, char **argv);

/* Exit statuses. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILURE = 1, CLI_EXIT_USAGE = 2 };

/* ---------------------------------------------------------------- messages */

/* Print "qattn <command>: <message>\n" to stderr: the one line a failing command leaves. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void cli_error(const char *command, const char *fmt, ...);

/* ---------------------------------------------------------------- common options */

/* The options shared by commands that describe one attention problem (bench, accuracy).
 * Zero/negative "unset" conventions are documented per field; cli_opts_init sets them. */
typedef struct cli_opts {
    int64_t batch;     /* --batch B (default 1) */
    int32_t heads;     /* --heads H (default 8) */
    int32_t kv_heads;  /* --kv-heads HK (0 = same as heads) */
    int64_t seqlen_q;  /* --seqlen-q LQ (default 1024) */
    int64_t seqlen_k;  /* --seqlen-k LK (0 = same as seqlen_q) */
    int32_t head_dim;  /* --head-dim D (default 128) */
    int shape_given;   /* 1 if any of the shape flags above was on the command line */

    int32_t causal;       /* --causal */
    int32_t window_left;  /* --window L,R (-1 = unbounded) */
    int32_t window_right;
    float scale;          /* --scale S (0 = 1/sqrt(D)) */

    int32_t precision;   /* --precision fp32|fp16|bf16|int8 (qattn_precision; default FP32) */
    int precision_given; /* 1 if --precision was on the command line */
    int32_t int8_scheme; /* --int8-scheme qattn|intfa|sage */
    int32_t backend;     /* --backend cpu|cuda (qattn_backend; AUTO if not given) */
    int32_t isa;         /* --isa (a name of cli_isa_names(); qattn_isa; AUTO if not given) */
    int32_t cuda_kernels; /* --cuda-kernels auto|mma (qattn_cuda_kernels; AUTO if not given) */
    int32_t threads;     /* --threads T (0 = all online cores) */

    int iters;           /* --iters N (default 5) */
    int warmup;          /* --warmup N (default 1) */
    uint64_t seed;       /* --seed S (default 1) */
    int distribution;    /* --dist normal|uniform|heads (cli_distribution) */
    int json;            /* --json: one JSON object per line instead of a table */
} cli_opts;

/* CLI_DIST_HEADS: N(0,1) with heads of mixed scale (qattn accuracy's "heads": Q of head h and K of kv
 * head g x 0.3 .. 3, V x 0.01 .. 100); qattn bench prefill only, elsewhere N(0,1). */
typedef enum cli_distribution { CLI_DIST_NORMAL = 0, CLI_DIST_UNIFORM = 1, CLI_DIST_HEADS = 2 } cli_distribution;

void cli_opts_init(cli_opts *o);

/* Result of offering one argument to a flag parser. */
typedef enum cli_flag_result {
    CLI_FLAG_CONSUMED = 0, /* recognised; *i advanced past its value if it had one */
    CLI_FLAG_UNKNOWN = 1,  /* not one of this parser's flags; nothing printed */
    CLI_FLAG_ERROR = 2,    /* recognised but its value is bad; the message is printed */
} cli_flag_result;

/* Offer argv[*i] to the common-option parser. Accepts "--flag value" and "--flag=value".
 * On CLI_FLAG_CONSUMED, *i points at the last argument used. `command` names the caller in
 * error messages. */
cli_flag_result cli_opts_parse_flag(cli_opts *o, int argc, char **argv, int *i, const char *command);

/* Print the help lines of the common options (for a command's --help). */
void cli_opts_print_help(FILE *f);

/* Fill the shape fields of p (batch, lengths, heads, head_dim, mask, scale, precision,
 * scheme) from o, plus contiguous strides. Pointers and dtypes are left to the caller. */
void cli_opts_to_params(const cli_opts *o, qattn_params *p);

/* Score modifiers of run and bench (qattn_params softcap / alibi_slopes): --softcap X, --alibi (the
 * ALiBi paper's slopes for H heads) or --alibi-slopes FILE.npy (float32 [H] or [B, H]). */
typedef struct cli_score_mods {
    float softcap;          /* 0 = off */
    int alibi;              /* --alibi */
    const char *alibi_path; /* --alibi-slopes */
} cli_score_mods;

/* Offer argv[*i] to the score-modifier flags (as cli_opts_parse_flag). */
cli_flag_result cli_score_mods_parse_flag(cli_score_mods *m, int argc, char **argv, int *i, const char *command);
void cli_score_mods_print_help(FILE *f);
/* The ALiBi paper's slopes for `heads` heads: 2^(-8(h+1)/H) for a power-of-two H; otherwise those
 * of the power of two n below H, then every other slope of 2n, until there are H. */
void cli_alibi_standard_slopes(int32_t heads, float *out);
/* Set p->softcap and p->alibi_slopes / alibi_batch_stride from m for p's n_heads and batch; the
 * slopes live in *mem (NULL when none; free with cli_free). 0, or -1 after printing why. */
int cli_score_mods_apply(const cli_score_mods *m, qattn_params *p, float **mem, const char *command);
/* "none", "paper" or the slopes file, for JSON output. */
const char *cli_score_mods_alibi_name(const cli_score_mods *m);

/* Context options (backend, isa, threads) from o. */
void cli_opts_to_ctx_options(const cli_opts *o, qattn_ctx_options *c);

/* qattn_ctx_create_ex; on failure prints "qattn <command>: cannot create a context (backend B,
 * isa I): <the library's reason>" and returns NULL. */
qattn_ctx *cli_ctx_create(const qattn_ctx_options *c, const char *command);

/* Helpers for a command's own flags. If argv[*i] is `name` or `name=...`, set *value to
 * the flag's value (the next argument, advancing *i, or the text after '='), and return 1;
 * a missing value prints an error and returns -1; any other argument returns 0. */
int cli_flag_value(int argc, char **argv, int *i, const char *name, const char **value, const char *command);
/* 1 if argv[i] is exactly the boolean flag `name`. */
int cli_flag_is(const char *arg, const char *name);
/* Integer flags of a sub-command: `name V` with V in [lo, hi] stored in *dst. Offers argv[*i] to
 * each (as cli_opts_parse_flag). */
typedef struct cli_int_flag {
    const char *name;
    int64_t *dst, lo, hi;
} cli_int_flag;
cli_flag_result cli_int_flags_parse(const cli_int_flag *flags, size_t n, int argc, char **argv, int *i, const char *command);
/* --isa NAME (qattn_isa_from_name) and --seed S, shared by the bench sub-commands (as above). */
cli_flag_result cli_isa_seed_parse(int32_t *isa, uint64_t *seed, int argc, char **argv, int *i, const char *command);
/* --backend's value (cpu, cuda) into *backend: 0, or -1 after a message. */
int cli_backend_parse(const char *value, int32_t *backend, const char *command);

/* Strict number parsing: the whole string must be a number within [min, max]. 0 on success;
 * on failure print "qattn <command>: <flag> ..." and return -1. */
int cli_parse_int64(const char *text, int64_t min, int64_t max, int64_t *out, const char *flag, const char *command);
int cli_parse_float(const char *text, float *out, const char *flag, const char *command);

/* Names <-> enum values: src/core/names.h (qattn_precision_name, qattn_isa_from_name, ...), the
 * library's one table per enum, so flags, JSON and library messages spell values alike. */
const char *cli_isa_names(void); /* every ISA name, "ref|avx2|...", for help texts */

/* ---------------------------------------------------------------- random inputs */

/* A small seeded PRNG (splitmix64): the same seed gives the same numbers on every machine. */
typedef struct cli_rng {
    uint64_t state;
    int has_spare_normal;
    double spare_normal;
} cli_rng;

void cli_rng_seed(cli_rng *r, uint64_t seed);
uint64_t cli_rng_next_u64(cli_rng *r);
double cli_rng_uniform(cli_rng *r); /* [0, 1) with 53 random bits */
double cli_rng_normal(cli_rng *r);  /* N(0, 1), Box-Muller */
void cli_fill_normal(cli_rng *r, float *x, int64_t n, float mean, float stddev);
void cli_fill_uniform(cli_rng *r, float *x, int64_t n, float lo, float hi);

/* ---------------------------------------------------------------- accuracy metrics */

/* Whole-tensor error of an output against a reference (docs/benchmarks.md, "Conventions"). */
typedef struct cli_metrics {
    double rel_l1;   /* sum|o-r| / sum|r| */
    double rel_l2;   /* ||o-r|| / ||r|| */
    double cosine;   /* <o,r> / (||o|| ||r||) */
    double max_abs;  /* max |o-r| */
    double mre;      /* mean(|o-r| / (|r| + 1e-5)), over all elements */
    int64_t count;   /* elements compared */
    int64_t nonfinite; /* elements where o or r is NaN/Inf (they make the metrics NaN) */
} cli_metrics;

void cli_metrics_compute(const float *out, const double *ref, int64_t n, cli_metrics *m);

/* ---------------------------------------------------------------- dtype conversion */

/* Convert n elements of a qattn_dtype (F32, F16, BF16) tensor to/from float32. */
void cli_convert_to_f32(const void *src, int32_t dtype, float *dst, int64_t n);
void cli_convert_from_f32(const float *src, void *dst, int32_t dtype, int64_t n);
size_t cli_dtype_size(int32_t dtype);

/* ---------------------------------------------------------------- JSON lines */

/* Build one JSON object on one line: cli_json_begin, then fields, then cli_json_end. */
typedef struct cli_json {
    FILE *f;
    int n_fields;
} cli_json;

void cli_json_begin(cli_json *j, FILE *f);
void cli_json_str(cli_json *j, const char *key, const char *value);
void cli_json_int(cli_json *j, const char *key, int64_t value);
void cli_json_num(cli_json *j, const char *key, double value); /* NaN/Inf become null */
void cli_json_bool(cli_json *j, const char *key, int value);
void cli_json_end(cli_json *j); /* "}\n" and flush */

/* ---------------------------------------------------------------- timing and geometry */

double cli_now_seconds(void); /* monotonic clock */
double cli_median(double *values, int n); /* sorts values in place */
/* One timed call of a bench (fn(ctx, arg)), and the timing loop of the bench sub-commands: a
 * warm-up call, then iters timed calls; *median and *best in seconds. 0, or -1 after printing
 * "<what>: <status>: <the library's message>" (the first failing call ends the loop). */
typedef qattn_status (*cli_call_fn)(qattn_ctx *ctx, void *arg);
int cli_time_calls(qattn_ctx *ctx, cli_call_fn fn, void *arg, int64_t iters, double *median, double *best, const char *what,
                   const char *command);

/* (query, key) pairs visible under the mask of p (causal/window, bottom-right aligned,
 * per the convention in qattn.h), summed over the batch, for one head. Exact, O(B*Lq). */
int64_t cli_visible_pairs(const qattn_params *p);

/* Allocate n bytes (64-byte aligned, zeroed) or print "qattn <command>: out of memory ..." and
 * return NULL (command NULL: print nothing, the caller reports). Free with cli_free. */
void *cli_alloc(size_t n, const char *what, const char *command);
void cli_free(void *p);

/* The element count (product of dims) and its bytes; -1 when either overflows int64/size_t. */
int cli_tensor_size(const int64_t *dims, int ndim, size_t elem_bytes, int64_t *count, size_t *bytes);

/* ---------------------------------------------------------------- KV cache */

/* A paged KV cache of storage `dtype` (F16, BF16, I8; default options otherwise, block_size tokens a
 * block, room for exactly these tokens) holding sequences 0..batch-1, sequence b the tokens of b in
 * the contiguous float32 k, v [batch, len, kv_heads, head_dim], one append each. NULL after printing
 * "qattn <command>: kv_cache_...: <status>: <the library's message>". Destroy with
 * qattn_kv_cache_destroy(ctx, cache). */
qattn_kv_cache *cli_kv_cache_filled(qattn_ctx *ctx, int32_t dtype, int32_t block_size, int64_t batch, int64_t len, int32_t kv_heads,
                                    int32_t head_dim, const float *k, const float *v, const char *command);

#endif /* QATTN_CLI_H */
