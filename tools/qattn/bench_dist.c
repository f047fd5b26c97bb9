/* qattn bench --dist mpi|nccl: attention across ranks (include/qattn_dist.h), one process per
 * rank, started by mpirun (MPI also bootstraps NCCL; one NCCL rank runs without MPI).
 *
 *   mpirun -np 2 qattn bench --dist mpi --seqlen-q 32768 --heads 1 --head-dim 64 --threads 1
 *   mpirun -np 2 qattn bench --dist mpi --mode star --seqlen-k 32768 --seqlen-q 64 --anchor 4096
 *   qattn bench --dist nccl --seqlen-q 131072 --heads 8 --head-dim 128 --causal
 *   mpirun -np 2 qattn bench --dist mpi --mode decode --kv-len 32768 --kv-dtype int8 --heads 32 --kv-heads 8
 *
 * exact: qattn_dist_forward, the keys sharded in contiguous ranges (with a mask: ranges balanced
 *        by visible (query, key) pairs, so that every rank has the same work; --shards even to
 *        cut equal key counts). Time = max over ranks of one call, median over --iters.
 * star:  phase 1 (qattn_star_encode of each rank's context block of seqlen_k / N tokens with the
 *        anchor) and phase 2 (seqlen_q query tokens over every block plus their own KV, exact),
 *        each timed; accuracy: phase 1's rel-L1 against exact causal attention on the last rows
 *        of every block, phase 2's against the FP64 oracle.
 * decode: qattn_dist_kv_decode, --batch sequences of --kv-len tokens in a paged cache
 *        (--kv-dtype fp16|int8) sharded over the ranks, --seqlen-q new tokens on the last rank;
 *        one step timed; rank 0 compares with single-process decode of the whole cache.
 * Every rank generates the same inputs from --seed and keeps its shard. JSON (rank 0) adds
 * ranks, bytes_sent (per rank per call), comm_ms (sync_ms of it: the opening descriptor exchange,
 * mostly waiting for the slowest rank), compute_ms and cpu_ms (per call, the slowest rank). */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "device.h"
#include "qattn_dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(QATTN_HAVE_MPI)
#include <mpi.h>
#endif
#if defined(QATTN_HAVE_NCCL)
#include <cuda_runtime.h>
#include <nccl.h>
#endif

static const char *const CMD = "bench --dist";
#define ORACLE_ROWS 64

enum { MODE_EXACT = 0, MODE_STAR = 1, MODE_DECODE = 2 };
static const char *const mode_names[] = {"exact", "star", "decode"};

typedef struct dist_opts {
    cli_opts o;
    int transport; /* QATTN_DIST_MPI / QATTN_DIST_NCCL */
    int mode;
    int64_t anchor;  /* star: anchor tokens (0 = one block, as in the paper) */
    int even_shards; /* exact: equal key counts even when causal */
    int64_t kv_len;  /* decode: tokens per sequence (default 32768) */
    int32_t kv_dtype; /* decode: cache storage, QATTN_DTYPE_F16 or QATTN_DTYPE_I8 */
    int seqlen_q_given;
} dist_opts;

/* The communicator's world: rank, size, and how to reduce a double across ranks. */
typedef struct world {
    int rank, size;
    int mpi; /* MPI is initialised and used for the reductions */
} world;

static double max_over_ranks(const world *w, double x) {
#if defined(QATTN_HAVE_MPI)
    if (w->mpi) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
#endif
    (void)w;
    return x;
}

static double sum_over_ranks(const world *w, double x) {
#if defined(QATTN_HAVE_MPI)
    if (w->mpi) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#endif
    (void)w;
    return x;
}

static void barrier(const world *w) {
#if defined(QATTN_HAVE_MPI)
    if (w->mpi) MPI_Barrier(MPI_COMM_WORLD);
#endif
    (void)w;
}

int qattn_cli_bench_dist_wanted(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        if (!strcmp(argv[i], "--dist") && i + 1 < argc) v = argv[i + 1];
        else if (!strncmp(argv[i], "--dist=", 7)) v = argv[i] + 7;
        if (v && (!strcmp(v, "mpi") || !strcmp(v, "nccl"))) return 1;
    }
    return 0;
}

static void print_help(void) {
    printf("usage: [mpirun -np N] qattn bench --dist mpi|nccl [--mode exact|star] [options]\n"
           "Attention across N ranks (one process each): MPI on CPU contexts, NCCL on one GPU per rank.\n"
           "  --mode exact     qattn_dist_forward: all queries, keys sharded in contiguous ranges (default)\n"
           "  --mode star      Star Attention: phase 1 (blocks of seqlen-k/N context tokens with the anchor),\n"
           "                   phase 2 (seqlen-q query tokens over every block, exact)\n"
           "  --mode decode    qattn_dist_kv_decode: --batch sequences of --kv-len tokens (default 32768) in a\n"
           "                   paged cache (--kv-dtype fp16|int8) sharded over the ranks, --seqlen-q new tokens\n"
           "                   (default 1) on the last rank; one step timed, compared with single-process decode\n"
           "  --anchor A       star: anchor tokens (default: one block)\n"
           "  --shards even    exact: equal key counts (default for causal: ranges with equal visible pairs)\n"
           "Rank 0 prints; JSON adds ranks, bytes_sent, comm_ms, compute_ms.\n\n");
    cli_opts_print_help(stdout);
}

static int parse_args(int argc, char **argv, dist_opts *d) {
    memset(d, 0, sizeof *d);
    cli_opts_init(&d->o);
    d->o.iters = 3;
    d->kv_len = 32768;
    d->kv_dtype = QATTN_DTYPE_F16;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int r;
        if (cli_flag_is(argv[i], "--help") || cli_flag_is(argv[i], "-h")) return 1;
        if ((r = cli_flag_value(argc, argv, &i, "--dist", &v, CMD)) != 0) {
            if (r < 0) return -1;
            if (!strcmp(v, "mpi")) d->transport = QATTN_DIST_MPI;
            else if (!strcmp(v, "nccl")) d->transport = QATTN_DIST_NCCL;
            else {
                cli_error(CMD, "--dist: '%s' is not mpi or nccl", v);
                return -1;
            }
            continue;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--mode", &v, CMD)) != 0) {
            if (r < 0) return -1;
            if (!strcmp(v, "exact")) d->mode = MODE_EXACT;
            else if (!strcmp(v, "star")) d->mode = MODE_STAR;
            else if (!strcmp(v, "decode")) d->mode = MODE_DECODE;
            else {
                cli_error(CMD, "--mode: '%s' is not exact, star or decode", v);
                return -1;
            }
            continue;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--anchor", &v, CMD)) != 0) {
            if (r < 0 || cli_parse_int64(v, 0, INT32_MAX, &d->anchor, "--anchor", CMD)) return -1;
            continue;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--kv-len", &v, CMD)) != 0) {
            if (r < 0 || cli_parse_int64(v, 1, INT32_MAX, &d->kv_len, "--kv-len", CMD)) return -1;
            continue;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--kv-dtype", &v, CMD)) != 0) {
            if (r < 0) return -1;
            d->kv_dtype = qattn_dtype_from_name(v);
            if (d->kv_dtype != QATTN_DTYPE_F16 && d->kv_dtype != QATTN_DTYPE_I8) {
                cli_error(CMD, "--kv-dtype: '%s' is not fp16 or int8", v);
                return -1;
            }
            continue;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--shards", &v, CMD)) != 0) {
            if (r < 0) return -1;
            if (strcmp(v, "even") && strcmp(v, "balanced")) {
                cli_error(CMD, "--shards: '%s' is not even or balanced", v);
                return -1;
            }
            d->even_shards = !strcmp(v, "even");
            continue;
        }
        if (!strcmp(argv[i], "--seqlen-q") || !strncmp(argv[i], "--seqlen-q=", 11)) d->seqlen_q_given = 1;
        cli_flag_result fr = cli_opts_parse_flag(&d->o, argc, argv, &i, CMD);
        if (fr == CLI_FLAG_ERROR) return -1;
        if (fr == CLI_FLAG_UNKNOWN) {
            cli_error(CMD, "unknown option '%s' (try qattn bench --dist mpi --help)", argv[i]);
            return -1;
        }
    }
    if (d->transport == QATTN_DIST_NCCL && !d->o.precision_given) d->o.precision = QATTN_PRECISION_FP16;
    if (d->mode == MODE_DECODE) {
        if (!d->seqlen_q_given) d->o.seqlen_q = 1;
        if (d->o.seqlen_q > 64 || d->o.seqlen_q > d->kv_len) {
            cli_error(CMD, "--mode decode: --seqlen-q %lld must be 1..64 and at most --kv-len", (long long)d->o.seqlen_q);
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- shards */

/* Key shard of rank r: equal counts, or (balanced) cut where the running count of visible
 * (query, key) pairs crosses r/N of the total, the mask of p deciding visibility. */
static void key_shard(const qattn_params *p, int balanced, int r, int n, int64_t *off, int64_t *len) {
    int64_t lk = p->seqlen_k, lq = p->seqlen_q;
    int32_t wr = p->causal ? 0 : p->window_right, wl = p->window_left;
    if (!balanced || (wr < 0 && wl < 0)) {
        int64_t base = lk / n, extra = lk % n;
        *off = r * base + (r < extra ? r : extra);
        *len = base + (r < extra ? 1 : 0);
        return;
    }
    /* key j is seen by the queries j - (lk - lq) - wr <= i <= j - (lk - lq) + wl (-1: unbounded) */
    double total = (double)cli_visible_pairs(p) / (double)p->batch, run = 0;
    int64_t cut[2] = {-1, -1};
    for (int64_t j = 0; j <= lk; j++) {
        if (cut[0] < 0 && run >= total * r / n) cut[0] = j;
        if (cut[1] < 0 && (run >= total * (r + 1) / n || j == lk)) cut[1] = r == n - 1 ? lk : j;
        if (j == lk) break;
        int64_t first = wr < 0 ? 0 : j - (lk - lq) - wr, last = wl < 0 ? lq - 1 : j - (lk - lq) + wl;
        if (first < 0) first = 0;
        if (last > lq - 1) last = lq - 1;
        run += last >= first ? (double)(last - first + 1) : 0.0;
    }
    if (cut[0] < 0) cut[0] = lk;
    if (r == n - 1) cut[1] = lk;
    *off = cut[0];
    *len = cut[1] - cut[0];
}

/* ---------------------------------------------------------------- tensors */

static int32_t storage_dtype(int32_t precision) {
    return precision == QATTN_PRECISION_FP16 ? QATTN_DTYPE_F16 : precision == QATTN_PRECISION_BF16 ? QATTN_DTYPE_BF16 : QATTN_DTYPE_F32;
}

static void *random_tensor(cli_rng *rng, int64_t n, int32_t dtype) {
    float *tmp = cli_alloc((size_t)n * sizeof(float), "random inputs", CMD);
    void *out = cli_alloc((size_t)n * cli_dtype_size(dtype), "inputs", CMD);
    if (!tmp || !out) {
        cli_free(tmp), cli_free(out);
        return NULL;
    }
    cli_fill_normal(rng, tmp, n, 0.0f, 1.0f);
    cli_convert_from_f32(tmp, out, dtype, n);
    cli_free(tmp);
    return out;
}

/* Where tensors live for the call: host pointers, or device copies (NCCL). */
typedef struct placed {
    int on_device;
    void *ptrs[8];
    int n;
} placed;

static const void *place(placed *pl, const void *host, size_t bytes) {
    if (!pl->on_device) return host;
    void *d = cli_device_alloc(bytes ? bytes : 16);
    if (!d || cli_device_upload(d, host, bytes)) {
        cli_device_free(d);
        return NULL;
    }
    pl->ptrs[pl->n++] = d;
    return d;
}

static void *place_out(placed *pl, void *host, size_t bytes) {
    if (!pl->on_device) return host;
    void *d = cli_device_alloc(bytes ? bytes : 16);
    if (d) pl->ptrs[pl->n++] = d;
    return d;
}

static void unplace(placed *pl) {
    for (int i = 0; i < pl->n; i++) cli_device_free(pl->ptrs[i]);
    pl->n = 0;
}

static int fetch(const placed *pl, void *host, const void *dev, size_t bytes) {
    return pl->on_device ? cli_device_download(host, dev, bytes) : 0;
}

/* ---------------------------------------------------------------- error against a reference */

/* rel-L1, rel-L2, max |diff| of out (o_dtype, contiguous rows of H*D) against the oracle on the
 * last `rows` queries of p (whole K/V in p). */
static int oracle_metrics(qattn_ctx *host, const qattn_params *p, const void *out_rows, int32_t o_dtype, int64_t rows, cli_metrics *m) {
    qattn_params sub = *p;
    sub.seqlen_q = rows;
    sub.q = (const char *)p->q + (size_t)((p->seqlen_q - rows) * p->q_seq_stride) * cli_dtype_size(p->qkv_dtype);
    sub.lse = NULL;
    sub.o = (void *)out_rows; /* ignored by the oracle, but must not be NULL */
    size_t n = (size_t)(rows * p->n_heads * p->head_dim);
    double *ref = cli_alloc(n * sizeof(double), "oracle output", CMD);
    float *got = cli_alloc(n * sizeof(float), "output", CMD);
    int rc = -1;
    if (ref && got && qattn_oracle_f64(host, &sub, ref, NULL) == QATTN_OK) {
        cli_convert_to_f32(out_rows, o_dtype, got, (int64_t)n);
        cli_metrics_compute(got, ref, (int64_t)n, m);
        rc = 0;
    } else if (ref && got) {
        cli_error(CMD, "oracle: %s", qattn_ctx_last_error(host));
    }
    cli_free(ref), cli_free(got);
    return rc;
}

/* ---------------------------------------------------------------- the runs */

typedef struct dist_result {
    double ms, comm_ms, sync_ms, compute_ms, bytes_sent, gflops;
    double cpu_ms; /* process CPU time per call, the largest rank's: on a shared machine the wall time
                      depends on what else runs, this does much less */
    double phase1_ms, star_rel_l1; /* star */
    cli_metrics err;
    int64_t oracle_rows;
} dist_result;

static int fail_status(qattn_ctx *ctx, qattn_status s, const char *what) {
    cli_error(CMD, "%s: %s: %s", what, qattn_status_str(s), qattn_ctx_last_error(ctx));
    return -1;
}

static double process_cpu_seconds(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0.0;
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Time `iters` collective calls after `warmup`; per call the slowest rank's time. */
typedef qattn_status (*call_fn)(void *arg);

static int time_calls(const world *w, const cli_opts *o, qattn_ctx *ctx, qattn_dist *dist, call_fn fn, void *arg, dist_result *r) {
    double *t = cli_alloc((size_t)o->iters * sizeof(double), "timings", CMD);
    if (!t) return -1;
    double cpu = 0;
    for (int it = 0; it < o->warmup + o->iters; it++) {
        if (it == o->warmup && dist) qattn_dist_reset_stats(dist);
        barrier(w);
        double c0 = process_cpu_seconds(), t0 = cli_now_seconds();
        qattn_status s = fn(arg);
        double dt = cli_now_seconds() - t0;
        if (it >= o->warmup) cpu += process_cpu_seconds() - c0;
        if (s != QATTN_OK) {
            cli_free(t);
            return fail_status(ctx, s, "the timed call");
        }
        dt = max_over_ranks(w, dt);
        if (it >= o->warmup) t[it - o->warmup] = dt * 1e3;
    }
    r->ms = cli_median(t, o->iters);
    r->cpu_ms = max_over_ranks(w, cpu * 1e3 / o->iters);
    cli_free(t);
    if (dist) {
        qattn_dist_info info;
        qattn_dist_get_info(dist, &info);
        r->comm_ms = max_over_ranks(w, info.comm_seconds * 1e3 / o->iters);
        r->sync_ms = max_over_ranks(w, info.sync_seconds * 1e3 / o->iters);
        r->compute_ms = max_over_ranks(w, info.compute_seconds * 1e3 / o->iters);
        r->bytes_sent = max_over_ranks(w, (double)info.bytes_sent / o->iters);
    }
    return 0;
}

typedef struct fwd_arg {
    qattn_ctx *ctx;
    qattn_dist *dist;
    qattn_params *p;
    int64_t off, total;
    const void *anchor_k, *anchor_v;
    int64_t anchor_len;
} fwd_arg;

static qattn_status call_dist_forward(void *a) {
    fwd_arg *f = a;
    return qattn_dist_forward(f->ctx, f->dist, f->p, f->off, f->total);
}

static qattn_status call_star_encode(void *a) {
    fwd_arg *f = a;
    return qattn_star_encode(f->ctx, f->p, f->anchor_k, f->anchor_v, f->anchor_len);
}

typedef struct decode_arg {
    qattn_ctx *ctx;
    qattn_dist *dist;
    const qattn_kv_cache *cache;
    const qattn_kv_device_cache *dev;
    const qattn_decode_params *dp;
    int32_t tail;
} decode_arg;

static qattn_status call_dist_decode(void *a) {
    decode_arg *f = a;
    return qattn_dist_kv_decode(f->ctx, f->dist, f->cache, f->dev, f->dp, f->tail);
}

/* Exact mode. */
static int run_exact(const world *w, const dist_opts *d, qattn_ctx *ctx, qattn_ctx *host, qattn_dist *dist, qattn_params *proto,
                     dist_result *r) {
    const cli_opts *o = &d->o;
    qattn_params p = *proto;
    int64_t nq = p.batch * p.seqlen_q * p.n_heads * p.head_dim, nkv = p.batch * p.seqlen_k * p.n_kv_heads * p.head_dim;
    cli_rng rng;
    cli_rng_seed(&rng, o->seed);
    void *q = random_tensor(&rng, nq, p.qkv_dtype), *k = random_tensor(&rng, nkv, p.qkv_dtype), *v = random_tensor(&rng, nkv, p.qkv_dtype);
    void *out = cli_alloc((size_t)nq * cli_dtype_size(p.o_dtype), "O", CMD);
    placed pl = {.on_device = d->transport == QATTN_DIST_NCCL};
    int rc = -1;
    if (!q || !k || !v || !out) goto done;
    int64_t off, len;
    key_shard(&p, !d->even_shards && p.batch == 1, w->rank, w->size, &off, &len);
    size_t es = cli_dtype_size(p.qkv_dtype), row = (size_t)p.n_kv_heads * p.head_dim * es;
    qattn_params lp = p;
    lp.seqlen_k = len;
    qattn_params_set_contiguous(&lp);
    /* a batch > 1 keeps the whole tensors' batch stride (the shard is a view) */
    lp.k_batch_stride = lp.v_batch_stride = p.seqlen_k * p.n_kv_heads * p.head_dim;
    if (pl.on_device) { /* NCCL: copy only this rank's shard (B 1) or the whole K/V */
        size_t kv_bytes = (size_t)nkv * es;
        lp.q = place(&pl, q, (size_t)nq * es);
        const char *kd = place(&pl, k, kv_bytes), *vd = place(&pl, v, kv_bytes);
        lp.k = kd ? kd + off * row : NULL, lp.v = vd ? vd + off * row : NULL;
        lp.o = place_out(&pl, out, (size_t)nq * cli_dtype_size(p.o_dtype));
        if (!lp.q || !kd || !vd || !lp.o) {
            cli_error(CMD, "cannot allocate or copy device memory");
            goto done;
        }
    } else {
        lp.q = q, lp.k = (char *)k + off * row, lp.v = (char *)v + off * row, lp.o = out;
    }
    fwd_arg fa = {ctx, dist, &lp, off, p.seqlen_k, NULL, NULL, 0};
    if (time_calls(w, o, ctx, dist, call_dist_forward, &fa, r)) goto done;
    r->gflops = 4.0 * p.n_heads * p.head_dim * (double)cli_visible_pairs(&p) / (r->ms * 1e-3) * 1e-9;
    if (fetch(&pl, out, lp.o, (size_t)nq * cli_dtype_size(p.o_dtype))) {
        cli_error(CMD, "cannot copy the output back");
        goto done;
    }
    r->oracle_rows = p.seqlen_q < ORACLE_ROWS ? p.seqlen_q : ORACLE_ROWS;
    if (w->rank == 0 && p.batch == 1) {
        qattn_params full = p;
        full.q = q, full.k = k, full.v = v;
        size_t orow = (size_t)p.n_heads * p.head_dim * cli_dtype_size(p.o_dtype);
        if (oracle_metrics(host, &full, (char *)out + (size_t)(p.seqlen_q - r->oracle_rows) * orow, p.o_dtype, r->oracle_rows, &r->err)) goto done;
    }
    rc = 0;
done:
    unplace(&pl);
    cli_free(q), cli_free(k), cli_free(v), cli_free(out);
    return rc;
}

/* Star mode: context seqlen_k tokens in blocks, seqlen_q query tokens after it. */
static int run_star(const world *w, const dist_opts *d, qattn_ctx *ctx, qattn_ctx *host, qattn_dist *dist, qattn_params *proto,
                    dist_result *r) {
    const cli_opts *o = &d->o;
    qattn_params p = *proto;
    int64_t lc = p.seqlen_k, nqt = p.seqlen_q, L = lc + nqt, H = p.n_heads, HK = p.n_kv_heads, D = p.head_dim;
    size_t es = cli_dtype_size(p.qkv_dtype), qrow = (size_t)(H * D), kvrow = (size_t)(HK * D), os = cli_dtype_size(p.o_dtype);
    cli_rng rng;
    cli_rng_seed(&rng, o->seed);
    void *q = random_tensor(&rng, L * (int64_t)qrow, p.qkv_dtype), *k = random_tensor(&rng, L * (int64_t)kvrow, p.qkv_dtype),
         *v = random_tensor(&rng, L * (int64_t)kvrow, p.qkv_dtype);
    int64_t base = lc / w->size, off = base * w->rank, len = w->rank == w->size - 1 ? lc - off : base;
    int64_t anchor = d->anchor > 0 ? d->anchor : base, a = off < anchor ? off : anchor;
    void *o1 = cli_alloc((size_t)len * qrow * os, "phase 1 output", CMD), *o2 = cli_alloc((size_t)nqt * qrow * os, "phase 2 output", CMD);
    placed pl = {.on_device = d->transport == QATTN_DIST_NCCL};
    int rc = -1;
    if (!q || !k || !v || !o1 || !o2) goto done;
    const char *qd = place(&pl, q, (size_t)L * qrow * es), *kd = place(&pl, k, (size_t)L * kvrow * es), *vd = place(&pl, v, (size_t)L * kvrow * es);
    void *o1d = place_out(&pl, o1, (size_t)len * qrow * os), *o2d = place_out(&pl, o2, (size_t)nqt * qrow * os);
    if (!qd || !kd || !vd || !o1d || !o2d) {
        cli_error(CMD, "cannot allocate or copy device memory");
        goto done;
    }
    /* Phase 1: this rank's block with its anchor (local). */
    qattn_params p1 = p;
    p1.q = qd + off * qrow * es, p1.k = kd + off * kvrow * es, p1.v = vd + off * kvrow * es, p1.o = o1d;
    p1.seqlen_q = p1.seqlen_k = len, p1.causal = 1, p1.window_left = p1.window_right = -1;
    qattn_params_set_contiguous(&p1);
    fwd_arg f1 = {ctx, dist, &p1, 0, 0, kd, vd, a};
    dist_result r1;
    memset(&r1, 0, sizeof r1);
    if (time_calls(w, o, ctx, NULL, call_star_encode, &f1, &r1)) goto done;
    r->phase1_ms = r1.ms;
    /* Phase 2: the queries over every block; their own K/V on the last rank. */
    qattn_params p2 = p;
    int64_t len2 = len + (w->rank == w->size - 1 ? nqt : 0);
    p2.q = qd + lc * qrow * es, p2.k = p1.k, p2.v = p1.v, p2.o = o2d, p2.seqlen_q = nqt, p2.seqlen_k = len2, p2.causal = 1;
    p2.window_left = p2.window_right = -1;
    qattn_params_set_contiguous(&p2);
    fwd_arg f2 = {ctx, dist, &p2, off, L, NULL, NULL, 0};
    if (time_calls(w, o, ctx, dist, call_dist_forward, &f2, r)) goto done;
    qattn_params pe = p2;
    pe.seqlen_k = L;
    r->gflops = 4.0 * H * D * (double)cli_visible_pairs(&pe) / (r->ms * 1e-3) * 1e-9;
    if (fetch(&pl, o1, o1d, (size_t)len * qrow * os) || fetch(&pl, o2, o2d, (size_t)nqt * qrow * os)) {
        cli_error(CMD, "cannot copy the outputs back");
        goto done;
    }
    /* Phase 1 vs exact causal attention over the context, on the last rows of every block. */
    int64_t rows = len < ORACLE_ROWS ? len : ORACLE_ROWS;
    double sums[2] = {0, 0};
    if (rows > 0) {
        /* the last `rows` queries of the causal problem [0, off + len) x [0, off + len) */
        qattn_params sub = p;
        sub.q = (char *)q + (size_t)(off + len - rows) * qrow * es, sub.k = k, sub.v = v;
        sub.seqlen_q = rows, sub.seqlen_k = off + len, sub.causal = 1, sub.window_left = sub.window_right = -1, sub.lse = NULL, sub.o = o1;
        qattn_params_set_contiguous(&sub);
        size_t n = (size_t)rows * qrow;
        double *ref = cli_alloc(n * sizeof(double), "oracle", CMD);
        float *got = cli_alloc(n * sizeof(float), "output", CMD);
        if (!ref || !got || qattn_oracle_f64(host, &sub, ref, NULL) != QATTN_OK) {
            cli_free(ref), cli_free(got);
            cli_error(CMD, "oracle for the phase 1 sample failed");
            goto done;
        }
        cli_convert_to_f32((char *)o1 + (size_t)(len - rows) * qrow * os, p.o_dtype, got, (int64_t)n);
        for (size_t i = 0; i < n; i++) sums[0] += fabs(got[i] - ref[i]), sums[1] += fabs(ref[i]);
        cli_free(ref), cli_free(got);
    }
    sums[0] = sum_over_ranks(w, sums[0]), sums[1] = sum_over_ranks(w, sums[1]);
    r->star_rel_l1 = sums[1] > 0 ? sums[0] / sums[1] : 0;
    r->oracle_rows = nqt < ORACLE_ROWS ? nqt : ORACLE_ROWS;
    if (w->rank == 0) {
        qattn_params full = pe;
        full.q = (char *)q + lc * qrow * es, full.k = k, full.v = v;
        qattn_params_set_contiguous(&full);
        if (oracle_metrics(host, &full, (char *)o2 + (size_t)(nqt - r->oracle_rows) * qrow * os, p.o_dtype, r->oracle_rows, &r->err)) goto done;
    }
    rc = 0;
done:
    unplace(&pl);
    cli_free(q), cli_free(k), cli_free(v), cli_free(o1), cli_free(o2);
    return rc;
}

/* Decode mode: B sequences of kv_len tokens; rank r < N-1 holds tokens [r*piece, (r+1)*piece),
 * the last rank the rest (with the Lq new tokens). One decode step is timed; rank 0 also builds
 * the whole cache and compares with single-process decode. */
static int run_decode(const world *w, const dist_opts *d, qattn_ctx *ctx, qattn_ctx *host, qattn_dist *dist, const qattn_params *p,
                      dist_result *r) {
    const cli_opts *o = &d->o;
    int64_t L = d->kv_len, Lq = p->seqlen_q, B = p->batch, H = p->n_heads, HK = p->n_kv_heads, D = p->head_dim;
    int64_t piece = (L - Lq) / w->size, off = piece * w->rank, len = w->rank == w->size - 1 ? L - off : piece;
    if (piece < Lq && w->rank != w->size - 1) len = 0, off = 0; /* a non-tail shard must hold 0 or >= Lq tokens */
    if (piece < Lq && w->rank == w->size - 1) off = 0, len = L;
    int64_t bs = 16, per_seq = (len + bs - 1) / bs, whole_seq = (L + bs - 1) / bs;
    qattn_kv_cache_options co;
    memset(&co, 0, sizeof co);
    co.n_kv_heads = (int32_t)HK, co.head_dim = (int32_t)D, co.block_size = (int32_t)bs, co.dtype = d->kv_dtype;
    co.max_seqs = (int32_t)B, co.n_blocks = B * (per_seq > 0 ? per_seq : 1);
    qattn_kv_cache *mine = NULL, *whole = NULL;
    float *kv = NULL, *q = NULL, *out = NULL, *ref = NULL;
    int32_t *ids = NULL;
    placed pl = {.on_device = d->transport == QATTN_DIST_NCCL};
    void *arena = NULL, *table = NULL;
    int rc = -1;
    qattn_status s = qattn_kv_cache_create(host, &co, &mine);
    if (s == QATTN_OK && w->rank == 0) {
        co.n_blocks = B * whole_seq;
        s = qattn_kv_cache_create(host, &co, &whole);
    }
    if (s != QATTN_OK) {
        fail_status(host, s, "creating the KV cache");
        goto done;
    }
    size_t row = (size_t)(HK * D);
    kv = cli_alloc((size_t)L * row * 2 * sizeof(float), "K/V", CMD);
    q = cli_alloc((size_t)(B * Lq * H * D) * sizeof(float), "queries", CMD);
    out = cli_alloc((size_t)(B * Lq * H * D) * sizeof(float), "output", CMD);
    ids = cli_alloc((size_t)B * sizeof(int32_t), "sequence ids", CMD);
    if (!kv || !q || !out || !ids) goto done;
    cli_rng rng;
    cli_rng_seed(&rng, o->seed);
    for (int64_t b = 0; b < B; b++) {
        ids[b] = (int32_t)b;
        cli_fill_normal(&rng, kv, L * (int64_t)row * 2, 0.0f, 1.0f); /* K then V of sequence b */
        const float *k = kv, *v = kv + L * row;
        if (len > 0) s = qattn_kv_cache_append(host, mine, (int32_t)b, k + off * row, v + off * row, len, QATTN_DTYPE_F32);
        if (s == QATTN_OK && whole) s = qattn_kv_cache_append(host, whole, (int32_t)b, k, v, L, QATTN_DTYPE_F32);
        if (s != QATTN_OK) {
            fail_status(host, s, "appending to the KV cache");
            goto done;
        }
    }
    cli_fill_normal(&rng, q, B * Lq * H * D, 0.0f, 1.0f);
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.seq_ids = ids, dp.n_seqs = (int32_t)B, dp.seqlen_q = (int32_t)Lq, dp.n_heads = (int32_t)H, dp.causal = 1;
    size_t qbytes = (size_t)(B * Lq * H * D) * sizeof(float);
    dp.q = place(&pl, q, qbytes);
    dp.o = place_out(&pl, out, qbytes);
    qattn_kv_device_cache dev = {0};
    if (pl.on_device) {
        qattn_kv_cache_layout lay;
        qattn_kv_cache_export(host, mine, &lay);
        arena = (void *)place(&pl, lay.arena, (size_t)lay.arena_bytes);
        table = (void *)place(&pl, lay.block_table, (size_t)lay.table_entries * sizeof(int32_t));
        dev.arena = arena, dev.block_table = table;
    }
    if (!dp.q || !dp.o || (pl.on_device && (!arena || !table))) {
        cli_error(CMD, "cannot allocate or copy device memory");
        goto done;
    }
    decode_arg da = {ctx, dist, mine, pl.on_device ? &dev : NULL, &dp, w->size - 1};
    if (time_calls(w, o, ctx, dist, call_dist_decode, &da, r)) goto done;
    if (fetch(&pl, out, dp.o, qbytes)) {
        cli_error(CMD, "cannot copy the output back");
        goto done;
    }
    r->gflops = 4.0 * H * D * (double)(B * Lq) * (double)L / (r->ms * 1e-3) * 1e-9; /* causal among the new tokens ignored */
    r->oracle_rows = 0;
    if (whole) { /* rank 0: single-process decode of the whole cache */
        ref = cli_alloc(qbytes, "reference", CMD);
        if (!ref) goto done;
        qattn_decode_params sp = dp;
        sp.q = q, sp.o = ref;
        s = qattn_kv_decode(host, whole, &sp);
        if (s != QATTN_OK) {
            fail_status(host, s, "single-process decode");
            goto done;
        }
        double num = 0, den = 0, l1 = 0, l1d = 0;
        for (size_t i = 0; i < qbytes / sizeof(float); i++) {
            double e = (double)out[i] - ref[i];
            num += e * e, den += (double)ref[i] * ref[i], l1 += fabs(e), l1d += fabs(ref[i]);
        }
        r->err.rel_l2 = den > 0 ? sqrt(num / den) : sqrt(num);
        r->err.rel_l1 = l1d > 0 ? l1 / l1d : l1;
    }
    rc = 0;
done:
    unplace(&pl);
    qattn_kv_cache_destroy(host, mine);
    qattn_kv_cache_destroy(host, whole);
    cli_free(kv), cli_free(q), cli_free(out), cli_free(ref), cli_free(ids);
    return rc;
}

/* ---------------------------------------------------------------- output */

static void print_result(const world *w, const dist_opts *d, const qattn_ctx_info *info, const qattn_params *p, const dist_result *r) {
    const cli_opts *o = &d->o;
    const char *transport = d->transport == QATTN_DIST_NCCL ? "nccl" : "mpi";
    if (o->json) {
        cli_json j;
        cli_json_begin(&j, stdout);
        cli_json_str(&j, "mode", mode_names[d->mode]);
        cli_json_str(&j, "transport", transport);
        cli_json_int(&j, "ranks", w->size);
        cli_json_str(&j, "backend", qattn_backend_name(info->backend));
        cli_json_str(&j, "isa", info->isa_name);
        cli_json_str(&j, "device", info->device_name);
        cli_json_int(&j, "threads", info->n_threads);
        cli_json_str(&j, "precision", qattn_precision_name(o->precision));
        cli_json_int(&j, "batch", p->batch);
        cli_json_int(&j, "heads", p->n_heads);
        cli_json_int(&j, "kv_heads", p->n_kv_heads);
        cli_json_int(&j, "seqlen_q", p->seqlen_q);
        cli_json_int(&j, "seqlen_k", p->seqlen_k);
        cli_json_int(&j, "head_dim", p->head_dim);
        cli_json_bool(&j, "causal", p->causal);
        cli_json_int(&j, "iters", o->iters);
        cli_json_num(&j, "ms", r->ms);
        cli_json_num(&j, "gflops", r->gflops);
        cli_json_num(&j, "comm_ms", r->comm_ms);
        cli_json_num(&j, "sync_ms", r->sync_ms);
        cli_json_num(&j, "compute_ms", r->compute_ms);
        cli_json_num(&j, "cpu_ms", r->cpu_ms);
        cli_json_int(&j, "bytes_sent", (int64_t)r->bytes_sent);
        if (d->mode == MODE_DECODE) {
            cli_json_int(&j, "kv_len", d->kv_len);
            cli_json_str(&j, "kv_dtype", qattn_dtype_name(d->kv_dtype));
            cli_json_num(&j, "tokens_per_s", (double)p->batch * p->seqlen_q / (r->ms * 1e-3));
        }
        if (d->mode == MODE_STAR) {
            cli_json_int(&j, "anchor", d->anchor > 0 ? d->anchor : p->seqlen_k / w->size);
            cli_json_num(&j, "phase1_ms", r->phase1_ms);
            cli_json_num(&j, "phase1_rel_l1_vs_exact", r->star_rel_l1);
        }
        if (d->mode == MODE_DECODE) {
            cli_json_num(&j, "rel_l2_vs_single", r->err.rel_l2);
        } else {
            cli_json_num(&j, "rel_l1", r->err.rel_l1);
            cli_json_num(&j, "rel_l2", r->err.rel_l2);
            cli_json_num(&j, "max_abs", r->err.max_abs);
            cli_json_int(&j, "oracle_rows", r->oracle_rows);
        }
        cli_json_end(&j);
        return;
    }
    printf("qattn %s bench --dist %s --mode %s: %d rank(s), backend %s, isa %s, threads %d, %s\n", qattn_version(), transport,
           mode_names[d->mode], w->size, qattn_backend_name(info->backend), info->isa_name, info->n_threads,
           info->device_name);
    printf("B %lld H %d HK %d Lq %lld Lk %lld D %d causal %s precision %s\n", (long long)p->batch, p->n_heads, p->n_kv_heads,
           (long long)p->seqlen_q, (long long)p->seqlen_k, p->head_dim, p->causal ? "yes" : "no", qattn_precision_name(o->precision));
    if (d->mode == MODE_STAR)
        printf("phase 1: %.3f ms (rel L1 vs exact causal on the last %d rows of each block: %.3e)\n", r->phase1_ms, ORACLE_ROWS, r->star_rel_l1);
    printf("%s: %.3f ms (median of %d), %.2f GFLOP/s, communication %.3f ms (of which waiting for the slowest rank %.3f), compute %.3f ms, CPU %.3f ms, %.0f bytes sent per rank\n",
           d->mode == MODE_STAR ? "phase 2" : d->mode == MODE_DECODE ? "step" : "call", r->ms, o->iters, r->gflops, r->comm_ms, r->sync_ms, r->compute_ms, r->cpu_ms,
           r->bytes_sent);
    if (d->mode == MODE_DECODE)
        printf("kv-len %lld, %s cache; rel L2 vs single-process decode of the whole cache: %.3e\n", (long long)d->kv_len,
               qattn_dtype_name(d->kv_dtype), r->err.rel_l2);
    else
        printf("error vs FP64 oracle (last %lld rows): rel L1 %.3e, rel L2 %.3e, max abs %.3e\n", (long long)r->oracle_rows, r->err.rel_l1,
               r->err.rel_l2, r->err.max_abs);
}

/* ---------------------------------------------------------------- command */

static int start_world(const dist_opts *d, world *w, int *argc, char ***argv) {
    memset(w, 0, sizeof *w);
    w->size = 1;
#if !defined(QATTN_HAVE_NCCL)
    if (d->transport == QATTN_DIST_NCCL) {
        cli_error(CMD, "--dist nccl: this qattn was built without NCCL (needs the CUDA backend and nccl.h)");
        return -1;
    }
#endif
#if defined(QATTN_HAVE_MPI)
    int init = 0;
    MPI_Initialized(&init);
    if (!init && MPI_Init(argc, argv) != MPI_SUCCESS) {
        cli_error(CMD, "MPI_Init failed");
        return -1;
    }
    w->mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &w->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w->size);
#else
    (void)argc, (void)argv;
    if (d->transport == QATTN_DIST_MPI) {
        cli_error(CMD, "--dist mpi: this qattn was built without MPI (install OpenMPI and rebuild)");
        return -1;
    }
#endif
    return 0;
}

static void stop_world(const world *w) {
#if defined(QATTN_HAVE_MPI)
    if (w->mpi) MPI_Finalize();
#endif
    (void)w;
}

/* The communicator for the transport; *nccl_comm receives an NCCL communicator to destroy. */
static int make_comm(const dist_opts *d, const world *w, qattn_ctx *ctx, qattn_dist **dist, void **nccl_comm) {
    qattn_status s = QATTN_ERR_UNSUPPORTED;
    *nccl_comm = NULL;
    if (d->transport == QATTN_DIST_MPI) {
#if defined(QATTN_HAVE_MPI)
        MPI_Comm comm = MPI_COMM_WORLD;
        s = qattn_dist_create_mpi(ctx, &comm, dist);
#else
        s = qattn_dist_create_mpi(ctx, NULL, dist);
#endif
    } else {
#if defined(QATTN_HAVE_NCCL)
        ncclUniqueId id;
        if (w->rank == 0) ncclGetUniqueId(&id);
#if defined(QATTN_HAVE_MPI)
        if (w->mpi) MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
#endif
        ncclComm_t *comm = malloc(sizeof *comm);
        if (!comm || ncclCommInitRank(comm, w->size, id, w->rank) != ncclSuccess) {
            free(comm);
            cli_error(CMD, "--dist nccl: ncclCommInitRank failed (rank %d of %d)", w->rank, w->size);
            return -1;
        }
        *nccl_comm = comm;
        s = qattn_dist_create_nccl(ctx, comm, dist);
#else
        (void)w;
        cli_error(CMD, "--dist nccl: this qattn was built without NCCL (needs the CUDA backend and nccl.h)");
        return -1;
#endif
    }
    return s == QATTN_OK ? 0 : fail_status(ctx, s, "creating the communicator");
}

static void free_comm(void *nccl_comm) {
#if defined(QATTN_HAVE_NCCL)
    if (nccl_comm) ncclCommDestroy(*(ncclComm_t *)nccl_comm);
#endif
    free(nccl_comm);
}

int qattn_cli_bench_dist(int argc, char **argv) {
    dist_opts d;
    int parsed = parse_args(argc, argv, &d);
    if (parsed == 1) {
        print_help();
        return CLI_EXIT_OK;
    }
    if (parsed < 0) return CLI_EXIT_USAGE;
    world w;
    if (start_world(&d, &w, &argc, &argv)) return CLI_EXIT_FAILURE;
    qattn_ctx_options copt;
    cli_opts_to_ctx_options(&d.o, &copt);
    if (d.transport == QATTN_DIST_NCCL) {
        copt.backend = QATTN_BACKEND_CUDA;
        int n_dev = 0;
#if defined(QATTN_HAVE_NCCL)
        if (cudaGetDeviceCount(&n_dev) != cudaSuccess) n_dev = 0;
        if (n_dev > 0) cudaSetDevice(w.rank % n_dev);
#endif
        copt.cuda_device = n_dev > 0 ? w.rank % n_dev : 0;
    } else {
        copt.backend = QATTN_BACKEND_CPU;
    }
    qattn_ctx *ctx = NULL, *host = NULL;
    qattn_dist *dist = NULL;
    void *nccl_comm = NULL;
    int rc = CLI_EXIT_FAILURE;
    if (!(ctx = cli_ctx_create(&copt, CMD)) || !(host = cli_ctx_create(NULL, CMD))) goto done;
    if (make_comm(&d, &w, ctx, &dist, &nccl_comm)) goto done;
    qattn_ctx_info info;
    qattn_ctx_get_info(ctx, &info);
    qattn_params p;
    qattn_params_init(&p);
    cli_opts_to_params(&d.o, &p);
    p.qkv_dtype = storage_dtype(d.o.precision);
    p.o_dtype = QATTN_DTYPE_F32;
    if (d.transport == QATTN_DIST_NCCL && p.qkv_dtype == QATTN_DTYPE_F32) p.qkv_dtype = QATTN_DTYPE_F16; /* the GPU takes f16/bf16 */
    if (d.mode != MODE_EXACT) p.causal = 1, p.window_left = p.window_right = -1; /* a causal LM's context */
    if (d.mode == MODE_DECODE) p.seqlen_k = d.kv_len;
    if (d.transport == QATTN_DIST_NCCL) qattn_params_set_contiguous(&p);
    dist_result r;
    memset(&r, 0, sizeof r);
    int bad = d.mode == MODE_STAR     ? run_star(&w, &d, ctx, host, dist, &p, &r)
              : d.mode == MODE_DECODE ? run_decode(&w, &d, ctx, host, dist, &p, &r)
                                      : run_exact(&w, &d, ctx, host, dist, &p, &r);
    if (!bad && w.rank == 0) print_result(&w, &d, &info, &p, &r);
    rc = bad ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
done:
    qattn_dist_destroy(dist);
    free_comm(nccl_comm);
    qattn_ctx_destroy(host);
    qattn_ctx_destroy(ctx);
    stop_world(&w);
    return rc;
}
