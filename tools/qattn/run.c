/* qattn run: attention on .npy inputs.
 *   Q [B, Lq, H, D], K and V [B, Lk, HK, D] (float32 or float16, C order)
 *   -> O float32 [B, Lq, H, D], optionally LSE float32 [B, H, Lq].
 * Any bad input ends the command with one line on stderr, a non-zero status and every existing
 * file as it was: inputs are all checked and the forward runs before anything is written, both
 * outputs are written to temporary files in their folders, and renamed over the targets only
 * when both were written. Only regular files are read or replaced. */
#define _XOPEN_SOURCE 700 /* realpath */
#include "block_mask.h"
#include "cli.h"
#include "npy.h"

#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const CMD = "run";

static void print_run_help(void) {
    printf("usage: qattn run --q Q.npy --k K.npy --v V.npy --out O.npy [options]\n"
           "  Q [B, Lq, H, D]; K, V [B, Lk, HK, D]; float32 or float16 .npy (C order, little-endian).\n"
           "  Writes O float32 [B, Lq, H, D].\n"
           "Options:\n"
           "  --lse LSE.npy       also write the log-sum-exp, float32 [B, H, Lq] (-inf: row sees no key)\n"
           "  --causal            causal mask, aligned to the bottom-right corner (Lq != Lk allowed)\n"
           "  --window L,R        local window (-1 = unbounded side)\n"
           "  --scale S           softmax scale (default 1/sqrt(D))\n"
           "  --precision P       fp32|fp16|bf16|int8 (default: the inputs' dtype)\n"
           "  --int8-scheme S     qattn|intfa|sage (with --precision int8)\n"
           "  --calibration C.npy with --precision int8 (scheme qattn): static channel transforms from qattn calibrate\n"
           "  --softcap X         scores become X * tanh(score / X) (X > 0)\n"
           "  --alibi             ALiBi, the paper's slopes for H heads (2^(-8(h+1)/H) for a power of two)\n"
           "  --alibi-slopes F    ALiBi slopes from a float32 .npy, [H] or [B, H]\n"
           "  --block-mask M.npy  block-sparse attention: uint8/bool map [H, nq, nk] or [B, H, nq, nk],\n"
           "                      nq = ceil(Lq / BQ), nk = ceil(Lk / BK); 0 = the pair of blocks is skipped\n"
           "  --block-size BQ[,BK] query and key rows per mask block, multiples of 16 (default 64)\n"
           "  --threads T         CPU threads (0 = all online cores)\n"
           "  --isa I             %s\n"
           "  --backend cpu       (the only backend for run)\n"
           "Each flag may be given once. --out and --lse must be distinct regular files (or new ones).\n",
           cli_isa_names());
}

typedef struct run_args {
    const char *q_path, *k_path, *v_path, *out_path, *lse_path;
    const char *cal_path; /* --calibration: qattn_forward_calibrated */
    cli_opts opts;
    cli_score_mods mods; /* --softcap, --alibi, --alibi-slopes */
    cli_block_mask_opts mask; /* --block-mask, --block-size */
} run_args;

/* The common flags that describe benchmarks, not a run: refused rather than ignored. */
static const char *const unused_flags[] = {"--json", "--iters", "--warmup", "--seed", "--dist"};

/* The flag name of an argument ("--x" of "--x=v"), in buf; "" for a non-flag. */
static const char *flag_name(const char *arg, char *buf, size_t len) {
    buf[0] = '\0';
    if (strncmp(arg, "--", 2) != 0) return buf;
    size_t n = strcspn(arg, "=");
    if (n >= len) n = len - 1;
    memcpy(buf, arg, n);
    buf[n] = '\0';
    return buf;
}

/* Parse argv into a; returns -1 after printing the problem, 1 for --help, 0 otherwise. */
static int parse_run_args(int argc, char **argv, run_args *a) {
    memset(a, 0, sizeof *a);
    cli_opts_init(&a->opts);
    cli_block_mask_opts_init(&a->mask);
    a->opts.precision = QATTN_PRECISION_AUTO; /* the inputs' own dtype unless asked */
    struct {
        const char *flag;
        const char **dest;
    } paths[] = {{"--q", &a->q_path}, {"--k", &a->k_path}, {"--v", &a->v_path}, {"--out", &a->out_path}, {"--lse", &a->lse_path},
                 {"--calibration", &a->cal_path}};
    int scheme_given = 0;
    char seen[32][32]; /* the flags so far: more than there are distinct flags means a repeat */
    int n_seen = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_flag_is(argv[i], "--help") || cli_flag_is(argv[i], "-h")) return 1;
        char name[32];
        flag_name(argv[i], name, sizeof name);
        for (int j = 0; j < n_seen && name[0]; j++)
            if (!strcmp(seen[j], name)) {
                cli_error(CMD, "%s is given twice", name);
                return -1;
            }
        if (name[0] && n_seen < 32) memcpy(seen[n_seen++], name, sizeof name);
        for (size_t u = 0; u < sizeof unused_flags / sizeof unused_flags[0]; u++)
            if (!strcmp(name, unused_flags[u])) {
                cli_error(CMD, "%s is not used by run (it writes .npy files; see qattn run --help)", name);
                return -1;
            }
        scheme_given |= !strcmp(name, "--int8-scheme");
        int matched = 0;
        for (size_t p = 0; p < sizeof paths / sizeof paths[0] && !matched; p++) {
            int r = cli_flag_value(argc, argv, &i, paths[p].flag, paths[p].dest, CMD);
            if (r < 0) return -1;
            if (r > 0 && (*paths[p].dest)[0] == '\0') {
                cli_error(CMD, "%s: empty path", paths[p].flag);
                return -1;
            }
            matched = r > 0;
        }
        if (matched) continue;
        cli_flag_result r = cli_score_mods_parse_flag(&a->mods, argc, argv, &i, CMD);
        if (r == CLI_FLAG_ERROR) return -1;
        if (r == CLI_FLAG_CONSUMED) continue;
        r = cli_block_mask_parse_flag(&a->mask, argc, argv, &i, 0, CMD);
        if (r == CLI_FLAG_ERROR) return -1;
        if (r == CLI_FLAG_CONSUMED) continue;
        r = cli_opts_parse_flag(&a->opts, argc, argv, &i, CMD);
        if (r == CLI_FLAG_ERROR) return -1;
        if (r == CLI_FLAG_UNKNOWN) {
            cli_error(CMD, "unknown option '%s' (try qattn run --help)", argv[i]);
            return -1;
        }
    }
    if (cli_block_mask_check(&a->mask, CMD)) return -1;
    if (a->opts.shape_given) {
        cli_error(CMD, "shape options are not used by run: the shapes come from the .npy files");
        return -1;
    }
    if (scheme_given && a->opts.precision != QATTN_PRECISION_INT8) {
        cli_error(CMD, "--int8-scheme needs --precision int8 (precision is %s)", qattn_precision_name(a->opts.precision));
        return -1;
    }
    if (a->cal_path && a->opts.precision != QATTN_PRECISION_INT8) {
        cli_error(CMD, "--calibration needs --precision int8 (precision is %s)", qattn_precision_name(a->opts.precision));
        return -1;
    }
    if (a->opts.backend == QATTN_BACKEND_CUDA) {
        cli_error(CMD, "--backend cuda is not supported by run (host .npy data): use --backend cpu");
        return -1;
    }
    a->opts.backend = QATTN_BACKEND_CPU;
    if (!a->q_path || !a->k_path || !a->v_path || !a->out_path) {
        cli_error(CMD, "missing %s (try qattn run --help)", !a->q_path ? "--q" : !a->k_path ? "--k" : !a->v_path ? "--v" : "--out");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- output paths */

/* The path with its folder resolved (symlinks, "." and ".."), for a file that may not exist yet;
 * NULL when the folder cannot be resolved. malloc'ed. */
static char *resolve_parent(const char *path) {
    char *dir_copy = strdup(path), *base_copy = strdup(path);
    char *resolved = NULL, *out = NULL;
    if (dir_copy && base_copy) resolved = realpath(dirname(dir_copy), NULL);
    if (resolved) {
        const char *base = basename(base_copy);
        size_t n = strlen(resolved) + strlen(base) + 2;
        out = malloc(n);
        if (out) snprintf(out, n, "%s/%s", resolved, base);
    }
    free(resolved);
    free(dir_copy);
    free(base_copy);
    return out;
}

/* 1 when a and b name the same file: the same (device, inode) if both exist, else the same
 * path once their folders are resolved (or, unresolvable, the same text). */
static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    if (lstat(a, &sa) == 0 && lstat(b, &sb) == 0) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    char *ra = resolve_parent(a), *rb = resolve_parent(b);
    int same = ra && rb ? !strcmp(ra, rb) : !strcmp(a, b);
    free(ra);
    free(rb);
    return same;
}

/* An existing output must be a regular file (not a symlink, device, FIFO or folder): renaming
 * over anything else would replace it rather than write into it, which is not what was asked. */
static int check_output_path(const char *flag, const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return 0; /* absent (or unreachable: the write will say why) */
    if (!S_ISREG(st.st_mode)) {
        cli_error(CMD, "%s %s exists and is not a regular file (%s); refusing to replace it", flag, path,
                  S_ISLNK(st.st_mode) ? "a symbolic link" : S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO" : "a device or socket");
        return -1;
    }
    return 0;
}

static int check_output_paths(const run_args *a) {
    if (check_output_path("--out", a->out_path) || (a->lse_path && check_output_path("--lse", a->lse_path))) return -1;
    if (a->lse_path && same_file(a->out_path, a->lse_path)) {
        cli_error(CMD, "--out '%s' and --lse '%s' name the same file", a->out_path, a->lse_path);
        return -1;
    }
    return 0;
}

static int load_input(const char *path, cli_npy_array *a) {
    char err[CLI_NPY_ERR_LEN];
    if (cli_npy_read(path, a, err, sizeof err)) {
        cli_error(CMD, "%s: %s", path, err);
        return -1;
    }
    return 0;
}

/* Check the three shapes against each other and fill the shape fields of p. */
static int check_shapes(const run_args *a, const cli_npy_array *q, const cli_npy_array *k, const cli_npy_array *v, qattn_params *p) {
    const cli_npy_array *arrays[3] = {q, k, v};
    const char *names[3] = {"Q", "K", "V"};
    const char *paths[3] = {a->q_path, a->k_path, a->v_path};
    for (int t = 0; t < 3; t++)
        if (arrays[t]->ndim != 4) {
            cli_error(CMD, "%s: %s has %d dimensions; expected 4 (%s)", paths[t], names[t], arrays[t]->ndim,
                      t == 0 ? "[B, Lq, H, D]" : "[B, Lk, HK, D]");
            return -1;
        }
    for (int d = 0; d < 4; d++)
        if (k->shape[d] != v->shape[d]) {
            cli_error(CMD, "K shape [%lld, %lld, %lld, %lld] and V shape [%lld, %lld, %lld, %lld] differ", (long long)k->shape[0],
                      (long long)k->shape[1], (long long)k->shape[2], (long long)k->shape[3], (long long)v->shape[0],
                      (long long)v->shape[1], (long long)v->shape[2], (long long)v->shape[3]);
            return -1;
        }
    if (q->shape[0] != k->shape[0]) {
        cli_error(CMD, "batch differs: Q has %lld, K and V have %lld", (long long)q->shape[0], (long long)k->shape[0]);
        return -1;
    }
    if (q->shape[3] != k->shape[3]) {
        cli_error(CMD, "head_dim differs: Q has %lld, K and V have %lld", (long long)q->shape[3], (long long)k->shape[3]);
        return -1;
    }
    if (q->shape[2] < 1 || k->shape[2] < 1 || q->shape[2] > INT32_MAX || k->shape[2] > INT32_MAX || q->shape[3] > INT32_MAX) {
        cli_error(CMD, "heads (Q %lld, K %lld) must be in 1..2^31-1 and head_dim %lld below 2^31", (long long)q->shape[2],
                  (long long)k->shape[2], (long long)q->shape[3]);
        return -1;
    }
    if (q->shape[2] % k->shape[2] != 0) {
        cli_error(CMD, "K and V have %lld heads, which does not divide Q's %lld heads", (long long)k->shape[2], (long long)q->shape[2]);
        return -1;
    }
    p->batch = q->shape[0];
    p->seqlen_q = q->shape[1];
    p->seqlen_k = k->shape[1];
    p->n_heads = (int32_t)q->shape[2];
    p->n_kv_heads = (int32_t)k->shape[2];
    p->head_dim = (int32_t)q->shape[3];
    return 0;
}

/* The library takes one dtype for Q, K and V: keep the files' dtype when they agree, else
 * widen the float16 ones to float32 (exact). */
static int unify_dtypes(cli_npy_array *arrays[3], int32_t *qkv_dtype) {
    int all_f16 = 1, all_f32 = 1;
    for (int t = 0; t < 3; t++) {
        all_f16 &= arrays[t]->dtype == CLI_NPY_F16;
        all_f32 &= arrays[t]->dtype == CLI_NPY_F32;
    }
    if (all_f16 || all_f32) {
        *qkv_dtype = all_f16 ? QATTN_DTYPE_F16 : QATTN_DTYPE_F32;
        return 0;
    }
    for (int t = 0; t < 3; t++) {
        if (arrays[t]->dtype == CLI_NPY_F32) continue;
        float *wide = cli_alloc((size_t)arrays[t]->count * sizeof(float), "a float32 copy of an input", CMD);
        if (!wide) return -1;
        cli_convert_to_f32(arrays[t]->data, QATTN_DTYPE_F16, wide, arrays[t]->count);
        free(arrays[t]->data);
        arrays[t]->data = wide;
        arrays[t]->dtype = CLI_NPY_F32;
    }
    *qkv_dtype = QATTN_DTYPE_F32;
    return 0;
}

/* Run the forward into freshly allocated o (and lse). Prints the library's reason on failure. */
static int compute_attention(const run_args *a, qattn_params *p, float **o, float **lse) {
    qattn_ctx_options copt;
    cli_opts_to_ctx_options(&a->opts, &copt);
    qattn_ctx *ctx = cli_ctx_create(&copt, CMD);
    if (!ctx) return -1;
    qattn_status s;
    int rc = -1;
    /* Sizes were checked by the npy reader (Q fits in memory, so O, same count, does too). */
    size_t o_count = (size_t)(p->batch * p->seqlen_q * p->n_heads * p->head_dim);
    size_t lse_count = (size_t)(p->batch * p->n_heads * p->seqlen_q);
    *o = cli_alloc(o_count * sizeof(float), "O", CMD);
    *lse = a->lse_path ? cli_alloc(lse_count * sizeof(float), "LSE", CMD) : NULL;
    if (!*o || (a->lse_path && !*lse)) goto done;
    p->o = *o;
    p->lse = *lse;
    s = qattn_supports(ctx, p);
    float *cal_mem = NULL;
    qattn_calibration cal;
    if (a->cal_path && cli_load_calibration(a->cal_path, p->n_kv_heads, p->head_dim, &cal, &cal_mem, CMD)) goto done;
    if (s == QATTN_OK) s = a->cal_path ? qattn_forward_calibrated(ctx, p, &cal) : qattn_forward(ctx, p);
    cli_free(cal_mem);
    if (s != QATTN_OK) {
        cli_error(CMD, "%s", qattn_ctx_last_error(ctx)[0] ? qattn_ctx_last_error(ctx) : qattn_status_str(s));
        goto done;
    }
    rc = 0;
done:
    qattn_ctx_destroy(ctx);
    return rc;
}

/* Both outputs go to temporary files first; the targets are replaced only once both exist. */
static int write_outputs(const run_args *a, const qattn_params *p, const float *o, const float *lse) {
    char err[CLI_NPY_ERR_LEN];
    char *o_tmp = NULL, *lse_tmp = NULL;
    int64_t o_shape[4] = {p->batch, p->seqlen_q, p->n_heads, p->head_dim};
    int64_t lse_shape[3] = {p->batch, p->n_heads, p->seqlen_q};
    int rc = -1;
    if (cli_npy_write_f32_temp(a->out_path, o, 4, o_shape, &o_tmp, err, sizeof err)) {
        cli_error(CMD, "%s: %s", a->out_path, err);
        goto done;
    }
    if (a->lse_path && cli_npy_write_f32_temp(a->lse_path, lse, 3, lse_shape, &lse_tmp, err, sizeof err)) {
        cli_error(CMD, "%s: %s", a->lse_path, err);
        goto done;
    }
    if (rename(o_tmp, a->out_path) != 0) {
        cli_error(CMD, "%s: cannot replace it: %s", a->out_path, strerror(errno));
        goto done;
    }
    free(o_tmp);
    o_tmp = NULL;
    /* Same folder as its temporary file: this rename fails only if the folder changed meanwhile. */
    if (lse_tmp && rename(lse_tmp, a->lse_path) != 0) {
        cli_error(CMD, "%s: cannot replace it: %s (%s was written)", a->lse_path, strerror(errno), a->out_path);
        goto done;
    }
    free(lse_tmp);
    lse_tmp = NULL;
    rc = 0;
done:
    if (o_tmp) remove(o_tmp);
    if (lse_tmp) remove(lse_tmp);
    free(o_tmp);
    free(lse_tmp);
    return rc;
}

int qattn_cli_run(int argc, char **argv) {
    run_args a;
    int parsed = parse_run_args(argc, argv, &a);
    if (parsed == 1) {
        print_run_help();
        return CLI_EXIT_OK;
    }
    if (parsed < 0) return CLI_EXIT_USAGE;
    if (check_output_paths(&a)) return CLI_EXIT_USAGE;

    cli_npy_array q, k, v;
    memset(&q, 0, sizeof q);
    memset(&k, 0, sizeof k);
    memset(&v, 0, sizeof v);
    cli_npy_array *arrays[3] = {&q, &k, &v};
    float *o = NULL, *lse = NULL, *slopes = NULL;
    uint8_t *mask = NULL;
    int status = CLI_EXIT_FAILURE;
    qattn_params p;
    qattn_params_init(&p);

    if (load_input(a.q_path, &q) || load_input(a.k_path, &k) || load_input(a.v_path, &v)) goto done;
    if (check_shapes(&a, &q, &k, &v, &p) || unify_dtypes(arrays, &p.qkv_dtype)) goto done;
    p.q = q.data;
    p.k = k.data;
    p.v = v.data;
    p.o_dtype = QATTN_DTYPE_F32;
    p.causal = a.opts.causal;
    p.window_left = a.opts.window_left;
    p.window_right = a.opts.window_right;
    p.scale = a.opts.scale;
    p.precision = a.opts.precision;
    p.int8_scheme = a.opts.int8_scheme;
    qattn_params_set_contiguous(&p);
    if (cli_score_mods_apply(&a.mods, &p, &slopes, CMD)) goto done;
    if (cli_block_mask_attach(&a.mask, &p, 0, &mask, CMD)) goto done;
    if (compute_attention(&a, &p, &o, &lse) || write_outputs(&a, &p, o, lse)) goto done;
    status = CLI_EXIT_OK;
done:
    cli_free(o);
    cli_free(lse);
    cli_free(slopes);
    cli_free(mask);
    for (int t = 0; t < 3; t++) cli_npy_free(arrays[t]);
    return status;
}
