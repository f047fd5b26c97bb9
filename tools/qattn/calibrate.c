/* qattn calibrate: the default INT8 scheme's static channel transforms (qattn_calibrate) from
 * sample Q, K, V .npy files of one layer, written as one float32 .npy [3, HK, D]: rows
 * k_factor, k_mean, v_mean (docs/FORMAT.md section 7); `qattn run --calibration` reads it.
 *   qattn calibrate --out CAL.npy Q.npy K.npy V.npy [Q2.npy K2.npy V2.npy ...]
 * Each triple is one call of qattn_calibrate (shapes as for qattn run), accumulated. */
#include "cli.h"
#include "npy.h"

#include <stdlib.h>
#include <string.h>

static const char *const CMD = "calibrate";

static void usage(void) {
    printf("usage: qattn calibrate --out CAL.npy Q.npy K.npy V.npy [Q2.npy K2.npy V2.npy ...]\n"
           "  Q [B, Lq, H, D]; K, V [B, Lk, HK, D]; float32 or float16 .npy. Each triple is one sample of the\n"
           "  layer; the statistics accumulate over all of them (qattn_calibrate).\n"
           "  Writes CAL.npy, float32 [3, HK, D]: k_factor (powers of two), k_mean, v_mean; use it with\n"
           "  qattn run --precision int8 --calibration CAL.npy.\n"
           "  --threads T, --isa I as for qattn run.\n");
}

int cli_load_calibration(const char *path, int32_t kv_heads, int32_t head_dim, qattn_calibration *cal, float **mem, const char *command) {
    cli_npy_array a;
    char err[CLI_NPY_ERR_LEN];
    if (cli_npy_read(path, &a, err, sizeof err)) {
        cli_error(command, "%s: %s", path, err);
        return -1;
    }
    if (a.dtype != CLI_NPY_F32 || a.ndim != 3 || a.shape[0] != 3 || a.shape[1] != kv_heads || a.shape[2] != head_dim) {
        cli_error(command, "%s: a calibration is float32 [3, %d, %d] for these inputs (qattn calibrate); this file is %s with %d dimensions",
                  path, kv_heads, head_dim, a.dtype == CLI_NPY_F32 ? "float32" : "float16", a.ndim);
        cli_npy_free(&a);
        return -1;
    }
    int64_t n = (int64_t)kv_heads * head_dim;
    memset(cal, 0, sizeof *cal);
    cal->n_kv_heads = kv_heads, cal->head_dim = head_dim;
    *mem = a.data; /* the caller frees it with free() */
    cal->k_factor = *mem, cal->k_mean = *mem + n, cal->v_mean = *mem + 2 * n;
    return 0;
}

int qattn_cli_calibrate(int argc, char **argv) {
    const char *out = NULL, *files[96];
    int nfiles = 0;
    cli_opts o;
    cli_opts_init(&o);
    for (int i = 1; i < argc; i++) {
        const char *val;
        int r;
        if (cli_flag_is(argv[i], "--help") || cli_flag_is(argv[i], "-h")) {
            usage();
            return CLI_EXIT_OK;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--out", &val, CMD)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (out) {
                cli_error(CMD, "--out given twice");
                return CLI_EXIT_USAGE;
            }
            out = val;
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1] == '-') {
            cli_flag_result fr = cli_opts_parse_flag(&o, argc, argv, &i, CMD);
            if (fr == CLI_FLAG_ERROR) return CLI_EXIT_USAGE;
            if (fr == CLI_FLAG_UNKNOWN || o.shape_given) {
                cli_error(CMD, "unknown option '%s' (qattn calibrate --help)", argv[i]);
                return CLI_EXIT_USAGE;
            }
            continue;
        }
        if (nfiles == (int)(sizeof files / sizeof files[0])) {
            cli_error(CMD, "at most %d sample files", nfiles);
            return CLI_EXIT_USAGE;
        }
        files[nfiles++] = argv[i];
    }
    if (!out || nfiles == 0 || nfiles % 3 != 0) {
        cli_error(CMD, "%s (qattn calibrate --help)", !out ? "missing --out" : "give the samples as Q K V triples of .npy files");
        return CLI_EXIT_USAGE;
    }
    qattn_ctx_options co;
    cli_opts_to_ctx_options(&o, &co);
    co.backend = QATTN_BACKEND_CPU;
    qattn_ctx *ctx;
    if (qattn_ctx_create(&ctx, &co) != QATTN_OK) {
        cli_error(CMD, "cannot create a context (isa/threads options)");
        return CLI_EXIT_FAILURE;
    }
    int rc = CLI_EXIT_FAILURE;
    float *mem = NULL;
    qattn_calibration cal;
    memset(&cal, 0, sizeof cal);
    for (int s = 0; s < nfiles / 3; s++) {
        cli_npy_array t[3];
        memset(t, 0, sizeof t);
        char err[CLI_NPY_ERR_LEN];
        int ok = 1;
        for (int w = 0; w < 3 && ok; w++)
            if (cli_npy_read(files[3 * s + w], &t[w], err, sizeof err)) {
                cli_error(CMD, "%s: %s", files[3 * s + w], err);
                ok = 0;
            }
        for (int w = 0; w < 3 && ok; w++)
            if (t[w].ndim != 4 || t[w].dtype != t[0].dtype) {
                cli_error(CMD, "%s: expected a 4-dimensional array ([B, L, heads, D]) of the same dtype as %s", files[3 * s + w], files[3 * s]);
                ok = 0;
            }
        if (ok && (t[1].shape[0] != t[0].shape[0] || t[2].shape[0] != t[0].shape[0] || memcmp(t[1].shape, t[2].shape, 4 * sizeof(int64_t)) ||
                   t[1].shape[3] != t[0].shape[3] || t[1].shape[2] < 1 || t[0].shape[2] % t[1].shape[2] != 0 || t[0].shape[2] > INT32_MAX ||
                   t[0].shape[3] > 256)) {
            cli_error(CMD, "sample %d: shapes must be Q [B, Lq, H, D], K and V [B, Lk, HK, D] with H a multiple of HK", s + 1);
            ok = 0;
        }
        if (ok && !mem) {
            int64_t n = t[1].shape[2] * t[1].shape[3];
            mem = cli_alloc((size_t)(6 * n) * sizeof(float), "the calibration", CMD);
            if (!mem) ok = 0;
            cal.n_kv_heads = (int32_t)t[1].shape[2], cal.head_dim = (int32_t)t[1].shape[3];
            cal.k_factor = mem, cal.k_mean = mem + n, cal.v_mean = mem + 2 * n;
            cal.q_absmax = mem + 3 * n, cal.k_min = mem + 4 * n, cal.k_max = mem + 5 * n;
        }
        if (ok) {
            qattn_params p;
            qattn_params_init(&p);
            p.batch = t[0].shape[0], p.seqlen_q = t[0].shape[1], p.seqlen_k = t[1].shape[1];
            p.n_heads = (int32_t)t[0].shape[2], p.n_kv_heads = (int32_t)t[1].shape[2], p.head_dim = (int32_t)t[0].shape[3];
            p.qkv_dtype = t[0].dtype == CLI_NPY_F16 ? QATTN_DTYPE_F16 : QATTN_DTYPE_F32;
            p.q = t[0].data, p.k = t[1].data, p.v = t[2].data;
            qattn_params_set_contiguous(&p);
            if (qattn_calibrate(ctx, &p, &cal) != QATTN_OK) {
                cli_error(CMD, "sample %d (%s): %s", s + 1, files[3 * s], qattn_ctx_last_error(ctx));
                ok = 0;
            }
        }
        for (int w = 0; w < 3; w++) cli_npy_free(&t[w]);
        if (!ok) goto done;
    }
    {
        char err[CLI_NPY_ERR_LEN];
        int64_t shape[3] = {3, cal.n_kv_heads, cal.head_dim};
        if (cli_npy_write_f32(out, mem, 3, shape, err, sizeof err)) {
            cli_error(CMD, "%s: %s", out, err);
            goto done;
        }
        printf("qattn calibrate: %lld key tokens, %d kv heads, head dim %d -> %s\n", (long long)cal.tokens, cal.n_kv_heads, cal.head_dim, out);
    }
    rc = CLI_EXIT_OK;
done:
    cli_free(mem);
    qattn_ctx_destroy(ctx);
    return rc;
}
