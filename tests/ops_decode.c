/* The OP_KV_DECODE cases' problems (ops_decode.h): qattn_kv_decode over the paged cache object
 * (include/qattn.h "KV cache and decode", docs/KVCACHE.md) and, built with CUDA,
 * qattn_kv_decode_cuda over a device copy of it (docs/gpu_decode.md).
 *
 * A case's cache (FP16, BF16 or INT8 storage, INT8 with or without a calibration of the case's
 * own data) holds n_seqs sequences under ids 7, 5, 3, 1 (not dense, not ordered), each appended
 * in pieces of 1, 4, 13, 40, ... tokens (across block boundaries), K with an x8 outlier channel
 * (channel 3 of kv head 0), like real activations. Every allocation of the contexts that build
 * and decode it is filled with 0xff bytes (poison_hooks), so the slots past a sequence's
 * end in its last block hold NaN codes or NaN scales. The CPU targets of one ISA decode a cache
 * built on the context they share (thread counts set with qattn_ctx_set_threads, as a caller
 * would), a CUDA target one built on a CPU context and copied to the device; each cache must read
 * back exactly what the oracles were computed from, and the CPU decodes must leave every byte of
 * its arena and block table as built. tests/ops.c holds the bounds. */
#define _POSIX_C_SOURCE 200809L /* posix_memalign */
#include "ops_decode.h"

#if defined(QATTN_TEST_CUDA)
#include <cuda_runtime_api.h>
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *cache_name(int32_t t) { return t == QATTN_DTYPE_F16 ? "f16" : t == QATTN_DTYPE_BF16 ? "bf16" : "i8"; }

static void *poison_alloc(size_t bytes, void *user) {
    (void)user;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) return NULL;
    memset(p, 0xff, bytes);
    return p;
}

static void poison_free(void *p, void *user) {
    (void)user;
    free(p);
}

/* Context options with allocator hooks that fill every allocation with 0xff bytes: the cache's
 * slots past a sequence's end hold NaN codes (FP16/BF16) or NaN scales (INT8), the decode's
 * scratch NaN, so a read of either shows. */
static void poison_hooks(qattn_ctx_options *opt) {
    opt->alloc = poison_alloc;
    opt->free = poison_free;
    opt->alloc_user = NULL;
}

/* A CPU context of isa with the poisoning allocator. */
static qattn_ctx *poisoned_cpu_ctx(int32_t isa, int32_t threads) {
    qattn_ctx_options opt;
    memset(&opt, 0, sizeof opt);
    opt.backend = QATTN_BACKEND_CPU, opt.isa = isa, opt.n_threads = threads;
    poison_hooks(&opt);
    qattn_ctx *ctx = NULL;
    qattn_status s = qattn_ctx_create(&ctx, &opt);
    TH_CHECK(s == QATTN_OK, "qattn_ctx_create(isa %s, poisoning allocator): %s", th_isa_name(isa), qattn_status_str(s));
    return s == QATTN_OK ? ctx : NULL;
}

/* The case's cache on ctx: created, calibrated when the case says so, every sequence appended in
 * uneven pieces. NULL (reported) on failure. */
static qattn_kv_cache *build_cache(const op_dec_problem *pr, qattn_ctx *ctx, const char *label) {
    const op_decode *d = &pr->oc.dec;
    qattn_kv_cache_options o;
    memset(&o, 0, sizeof o);
    o.n_kv_heads = pr->HK, o.head_dim = pr->D, o.block_size = d->block, o.dtype = d->cache_dtype, o.n_blocks = pr->n_blocks, o.max_seqs = 8;
    qattn_kv_cache *c = NULL;
    qattn_status s = qattn_kv_cache_create(ctx, &o, &c);
    if (!TH_CHECK(s == QATTN_OK, "[%s] kv_cache_create: %s: %s", label, qattn_status_str(s), qattn_ctx_last_error(ctx))) return NULL;
    if (d->calibrated) {
        s = qattn_kv_cache_set_calibration(ctx, c, &pr->cal);
        if (!TH_CHECK(s == QATTN_OK, "[%s] set_calibration: %s", label, qattn_ctx_last_error(ctx))) goto fail;
    }
    size_t row = (size_t)pr->HK * (size_t)pr->D;
    for (int b = 0; b < pr->B; b++) {
        int64_t done = 0, piece = 1, len = d->lens[b];
        while (done < len) {
            int64_t n = piece < len - done ? piece : len - done;
            size_t off = ((size_t)pr->cu_k[b] + (size_t)done) * row;
            s = qattn_kv_cache_append(ctx, c, pr->ids[b], pr->k + off, pr->v + off, n, QATTN_DTYPE_F32);
            if (!TH_CHECK(s == QATTN_OK, "[%s] append: %s", label, qattn_ctx_last_error(ctx))) goto fail;
            done += n;
            piece = piece * 3 + 1;
        }
    }
    return c;
fail:
    qattn_kv_cache_destroy(ctx, c);
    return NULL;
}

/* Reports whether c reads back exactly kd, vd, the values the oracle saw (when: what happened to it). */
static bool cache_matches(op_dec_problem *pr, qattn_ctx *ctx, const qattn_kv_cache *c, const char *label, const char *when) {
    size_t row = (size_t)pr->HK * (size_t)pr->D;
    size_t e = (size_t)pr->cu_k[pr->B] * row;
    bool ok = true;
    for (int b = 0; b < pr->B && ok; b++)
        ok = qattn_kv_cache_read(ctx, c, pr->ids[b], 0, pr->oc.dec.lens[b], pr->rk + (size_t)pr->cu_k[b] * row, pr->rv + (size_t)pr->cu_k[b] * row) ==
             QATTN_OK;
    ok = ok && memcmp(pr->rk, pr->kd, e * sizeof(float)) == 0 && memcmp(pr->rv, pr->vd, e * sizeof(float)) == 0;
    return TH_CHECK(ok, "[%s] the cache %s does not read back what the oracle read", label, when);
}

/* qattn_calibrate over the case's own q, K, V (varlen, one sequence per entry). */
static void calibrate(op_dec_problem *pr, qattn_ctx *ctx) {
    int64_t n = (int64_t)pr->HK * pr->D;
    pr->cal_mem = th_xmalloc((size_t)(6 * n) * sizeof(float));
    float *m = pr->cal_mem;
    pr->cal = (qattn_calibration){pr->HK, pr->D, 0, m, m + n, m + 2 * n, m + 3 * n, m + 4 * n, m + 5 * n};
    qattn_params p;
    qattn_params_init(&p);
    p.q = pr->q, p.k = pr->k, p.v = pr->v;
    p.batch = pr->B, p.n_heads = pr->H, p.n_kv_heads = pr->HK, p.head_dim = pr->D;
    p.seqlen_q = pr->Lq;
    for (int b = 0; b < pr->B; b++) p.seqlen_k = pr->oc.dec.lens[b] > p.seqlen_k ? pr->oc.dec.lens[b] : p.seqlen_k;
    p.cu_seqlens_q = pr->cu_q, p.cu_seqlens_k = pr->cu_k;
    qattn_params_set_contiguous(&p);
    qattn_status s = qattn_calibrate(ctx, &p, &pr->cal);
    TH_CHECK(s == QATTN_OK, "calibrate: %s", qattn_ctx_last_error(ctx));
}

void op_dec_make(op_dec_problem *pr, const op_case *oc, uint64_t seed) {
    memset(pr, 0, sizeof *pr);
    pr->oc = *oc;
    const op_decode *d = &oc->dec;
    pr->B = (int)oc->c.batch, pr->Lq = (int)oc->c.seqlen_q, pr->H = oc->c.n_heads, pr->HK = oc->c.n_kv_heads, pr->D = oc->c.head_dim;
    for (int b = 0; b < pr->B; b++) {
        pr->cu_q[b + 1] = pr->cu_q[b] + pr->Lq, pr->cu_k[b + 1] = pr->cu_k[b] + d->lens[b];
        pr->ids[b] = 7 - 2 * b; /* ids need not be dense or ordered */
        pr->n_blocks += (d->lens[b] + d->block - 1) / d->block;
    }
    pr->n_blocks += 2;
    size_t tk = (size_t)pr->cu_k[pr->B], tq = (size_t)pr->cu_q[pr->B];
    size_t kv_e = tk * (size_t)pr->HK * (size_t)pr->D, q_e = tq * (size_t)pr->H * (size_t)pr->D;
    pr->k = th_xmalloc(kv_e * 4 + 4), pr->v = th_xmalloc(kv_e * 4 + 4), pr->q = th_xmalloc(q_e * 4 + 4);
    pr->kd = th_xmalloc(kv_e * 4 + 4), pr->vd = th_xmalloc(kv_e * 4 + 4);
    pr->rk = th_xmalloc(kv_e * 4 + 4), pr->rv = th_xmalloc(kv_e * 4 + 4);
    pr->held_isa = -1;
    th_rng rng;
    th_rng_init(&rng, seed);
    th_fill_normal(pr->k, kv_e, &rng, 0, 1);
    th_fill_normal(pr->v, kv_e, &rng, 0, 1);
    th_fill_normal(pr->q, q_e, &rng, 0, 1);
    for (size_t t = 0; t < tk; t++) pr->k[t * (size_t)pr->HK * (size_t)pr->D + 3] *= 8.0f; /* an outlier channel in K */
    pr->n_out = q_e, pr->n_lse = tq * (size_t)pr->H;
    pr->o = th_xmalloc((pr->n_out + OP_DEC_GUARD) * sizeof(float));
    pr->lse = th_xmalloc((pr->n_lse + OP_DEC_GUARD) * sizeof(float));
    /* the read-back every target's cache must match: a cache built the same way on a reference context */
    qattn_ctx *ctx = poisoned_cpu_ctx(QATTN_ISA_REF, 1);
    if (!ctx) return;
    if (d->calibrated) calibrate(pr, ctx);
    qattn_kv_cache *c = build_cache(pr, ctx, "make");
    size_t row = (size_t)pr->HK * (size_t)pr->D;
    for (int b = 0; c && b < pr->B; b++) {
        qattn_status s = qattn_kv_cache_read(ctx, c, pr->ids[b], 0, d->lens[b], pr->kd + (size_t)pr->cu_k[b] * row, pr->vd + (size_t)pr->cu_k[b] * row);
        TH_CHECK(s == QATTN_OK, "kv_cache_read: %s", qattn_ctx_last_error(ctx));
    }
    if (c && (d->cache_dtype == QATTN_DTYPE_F16 || d->cache_dtype == QATTN_DTYPE_BF16)) {
        /* FP16/BF16 storage is one rounding to nearest of each value: |stored - x| <= u |x| with u = 2^-11
         * (FP16) or 2^-8 (BF16), plus half of FP16's subnormal spacing (2^-25) for the few |x| below its
         * normal range */
        const double u = d->cache_dtype == QATTN_DTYPE_F16 ? 0x1p-11 : 0x1p-8, sub = d->cache_dtype == QATTN_DTYPE_F16 ? 0x1p-25 : 0.0;
        size_t bad = 0;
        for (size_t i = 0; i < kv_e; i++)
            bad += !(fabs((double)pr->kd[i] - pr->k[i]) <= u * fabs(pr->k[i]) + sub) + !(fabs((double)pr->vd[i] - pr->v[i]) <= u * fabs(pr->v[i]) + sub);
        TH_CHECK(bad == 0, "%zu cached K/V values are not the original values rounded to nearest (%s)", bad, cache_name(d->cache_dtype));
    }
    qattn_kv_cache_destroy(ctx, c);
    qattn_ctx_destroy(ctx);
}

/* The bytes of the held cache's arena (its empty slots and transforms included) and block table. */
static bool held_bytes(const op_dec_problem *pr, qattn_kv_cache_layout *lay) {
    return TH_CHECK(qattn_kv_cache_export(pr->held, pr->held_cache, lay) == QATTN_OK, "export: %s", qattn_ctx_last_error(pr->held));
}

/* The shared context and its cache, after checking that the decodes wrote nothing in the cache:
 * its arena and block table hold the bytes they held when it was built. */
static void release_held(op_dec_problem *pr) {
    qattn_kv_cache_layout lay;
    if (pr->held_cache && pr->snap && held_bytes(pr, &lay)) {
        size_t ab = (size_t)lay.arena_bytes, tb = (size_t)lay.table_entries * sizeof(int32_t);
        TH_CHECK(memcmp(pr->snap, lay.arena, ab) == 0 && memcmp(pr->snap + ab, lay.block_table, tb) == 0,
                 "[%s] the decodes changed the cache's arena or block table", th_isa_name(pr->held_isa));
    }
    free(pr->snap);
    qattn_kv_cache_destroy(pr->held, pr->held_cache);
    qattn_ctx_destroy(pr->held);
    pr->held = NULL, pr->held_cache = NULL, pr->held_isa = -1, pr->snap = NULL;
}

qattn_ctx *op_dec_cpu_ctx(op_dec_problem *pr, int32_t isa, int32_t n_threads) {
    if (pr->held && pr->held_isa == isa) {
        qattn_status s = qattn_ctx_set_threads(pr->held, n_threads);
        return TH_CHECK(s == QATTN_OK, "qattn_ctx_set_threads(%d): %s", n_threads, qattn_status_str(s)) ? pr->held : NULL;
    }
    release_held(pr);
    pr->held = poisoned_cpu_ctx(isa, n_threads);
    if (!pr->held) return NULL;
    pr->held_isa = isa;
    pr->held_cache = build_cache(pr, pr->held, th_isa_name(isa));
    qattn_kv_cache_layout lay;
    if (!pr->held_cache || !cache_matches(pr, pr->held, pr->held_cache, th_isa_name(isa), "built on this ISA's context") || !held_bytes(pr, &lay)) {
        release_held(pr);
        return NULL;
    }
    size_t ab = (size_t)lay.arena_bytes, tb = (size_t)lay.table_entries * sizeof(int32_t);
    pr->snap = th_xmalloc(ab + tb);
    memcpy(pr->snap, lay.arena, ab), memcpy(pr->snap + ab, lay.block_table, tb);
    return pr->held;
}

void op_dec_free(op_dec_problem *pr) {
    release_held(pr);
    free(pr->k), free(pr->v), free(pr->q), free(pr->kd), free(pr->vd), free(pr->rk), free(pr->rv), free(pr->cal_mem), free(pr->o), free(pr->lse);
    memset(pr, 0, sizeof *pr);
}

/* The FP64 oracle on q and the given K, V (varlen over the sequences' lengths). */
static void oracle_on(const op_dec_problem *pr, const float *k, const float *v, double *o64, double *lse_hq) {
    qattn_params p;
    qattn_params_init(&p);
    p.q = pr->q, p.k = k, p.v = v;
    p.o = o64; /* validated, not written: the oracle writes o64 */
    p.batch = pr->B, p.seqlen_q = pr->Lq;
    for (int b = 0; b < pr->B; b++) p.seqlen_k = pr->oc.dec.lens[b] > p.seqlen_k ? pr->oc.dec.lens[b] : p.seqlen_k;
    p.n_heads = pr->H, p.n_kv_heads = pr->HK, p.head_dim = pr->D;
    p.causal = pr->oc.c.causal, p.window_left = pr->oc.c.window_left;
    p.cu_seqlens_q = pr->cu_q, p.cu_seqlens_k = pr->cu_k;
    qattn_params_set_contiguous(&p);
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 1);
    if (!ctx) return;
    qattn_status s = qattn_oracle_f64(ctx, &p, o64, lse_hq);
    TH_CHECK(s == QATTN_OK, "oracle: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
    qattn_ctx_destroy(ctx);
}

void op_dec_oracle(const op_dec_problem *pr, double *o64, double *lse64, double *orig64) {
    size_t tq = (size_t)pr->cu_q[pr->B];
    double *lse_hq = th_xmalloc(pr->n_lse * sizeof(double) + 8);
    oracle_on(pr, pr->kd, pr->vd, o64, lse_hq);
    oracle_on(pr, pr->k, pr->v, orig64, NULL);
    for (int b = 0; b < pr->B; b++) /* varlen [H, total_q] -> the decode's [n_seqs, H, Lq] */
        for (int h = 0; h < pr->H; h++)
            for (int i = 0; i < pr->Lq; i++) lse64[((size_t)b * pr->H + h) * pr->Lq + i] = lse_hq[(size_t)h * tq + (size_t)pr->cu_q[b] + i];
    free(lse_hq);
}

/* What q's 16-bit codes add to an INT8 cache's LSE (tests/ops.c, the decode's bounds), per LSE entry
 * [B, H, Lq]: six standard deviations of the score error they cause, scale ||q f|| max_j ||(k_j - mu)
 * / f|| / (sqrt(12) 32767), f and mu the cache's channel factors and K mean (1 and 0 uncalibrated), j
 * over the sequence's cached keys (kd, what the kernels see). Derivation: the kernel scores q' . k'
 * times n, q' = H(q f / n), k' = H((k - mu) / f / n), n the rotation's block (one size per row), and
 * q' is held as codes of step qsc = max |q'| / 32767, each off by at most qsc / 2, independently per
 * channel: the score error has standard deviation n qsc ||k'|| / sqrt(12), and with ||k'|| = ||(k -
 * mu) / f|| / sqrt(n) (H H = n I) and qsc <= ||q'|| / 32767 = ||q f|| / (sqrt(n) 32767) that is at most
 * ||q f|| ||(k - mu) / f|| / (sqrt(12) 32767), whatever n. The LSE is a softmax-weighted mean of the
 * scores, so its error is within the largest key's. For D <= 12 six of these deviations also cover
 * the worst case sqrt(D) qsc ||k'|| / 2; above, the error is a sum of D >= 16 independent rounding
 * terms, whose tails are lighter than a normal's. */
void op_dec_q16_lse_term(const op_dec_problem *pr, double *term) {
    const int D = pr->D, grp = pr->H / pr->HK;
    const bool cal = pr->oc.dec.calibrated;
    const double c = 6.0 / (sqrt(12.0) * 32767.0) / sqrt((double)D); /* the default scale 1 / sqrt(D) */
    for (int b = 0; b < pr->B; b++)
        for (int h = 0; h < pr->H; h++) {
            const int g = h / grp;
            const float *f = cal ? pr->cal.k_factor + (size_t)g * D : NULL, *mu = cal ? pr->cal.k_mean + (size_t)g * D : NULL;
            double kmax = 0.0;
            for (int t = pr->cu_k[b]; t < pr->cu_k[b + 1]; t++) {
                const float *k = pr->kd + ((size_t)t * pr->HK + g) * D;
                double s = 0.0;
                for (int x = 0; x < D; x++) {
                    const double y = ((double)k[x] - (mu ? mu[x] : 0.0)) / (f ? f[x] : 1.0);
                    s += y * y;
                }
                kmax = fmax(kmax, sqrt(s));
            }
            for (int i = 0; i < pr->Lq; i++) {
                const float *q = pr->q + ((size_t)(pr->cu_q[b] + i) * pr->H + h) * D;
                double s = 0.0;
                for (int x = 0; x < D; x++) {
                    const double y = (double)q[x] * (f ? f[x] : 1.0);
                    s += y * y;
                }
                term[((size_t)b * pr->H + h) * pr->Lq + i] = c * sqrt(s) * kmax;
            }
        }
}

static void poison_outputs(op_dec_problem *pr) {
    memset(pr->o, 0xff, (pr->n_out + OP_DEC_GUARD) * sizeof(float));
    memset(pr->lse, 0xff, (pr->n_lse + OP_DEC_GUARD) * sizeof(float));
}

static void decode_params(const op_dec_problem *pr, qattn_decode_params *dp) {
    qattn_decode_params_init(dp);
    dp->q = pr->q, dp->o = pr->o, dp->lse = pr->lse, dp->seq_ids = pr->ids, dp->n_seqs = pr->B, dp->seqlen_q = pr->Lq, dp->n_heads = pr->H;
    dp->causal = pr->oc.c.causal, dp->window_left = pr->oc.c.window_left;
}

qattn_status op_dec_run_cpu(op_dec_problem *pr, qattn_ctx *ctx) {
    poison_outputs(pr);
    qattn_decode_params dp;
    decode_params(pr, &dp);
    return qattn_kv_decode(ctx, pr->held_cache, &dp);
}

#if defined(QATTN_TEST_CUDA)
/* The cache on a CPU context, its arena and block table copied to the device whole (the INT8
 * transforms at the arena's tail with them); q on the device, o and lse copied there poisoned
 * and back whole, guards included. */
qattn_status op_dec_run_cuda(op_dec_problem *pr, qattn_ctx *cuda_ctx) {
    poison_outputs(pr);
    qattn_ctx *cpu = poisoned_cpu_ctx(QATTN_ISA_REF, 1);
    if (!cpu) return QATTN_ERR_INVALID_ARGUMENT;
    qattn_kv_cache *c = build_cache(pr, cpu, "cuda");
    qattn_kv_cache_layout lay;
    if (!c || !cache_matches(pr, cpu, c, "cuda", "built for the device copy") ||
        !TH_CHECK(qattn_kv_cache_export(cpu, c, &lay) == QATTN_OK, "export: %s", qattn_ctx_last_error(cpu))) {
        qattn_kv_cache_destroy(cpu, c);
        qattn_ctx_destroy(cpu);
        return QATTN_ERR_INVALID_ARGUMENT;
    }
    size_t ob = (pr->n_out + OP_DEC_GUARD) * sizeof(float), lb = (pr->n_lse + OP_DEC_GUARD) * sizeof(float);
    void *darena = op_to_device(lay.arena, (size_t)lay.arena_bytes), *dtable = op_to_device(lay.block_table, (size_t)lay.table_entries * sizeof(int32_t));
    void *dq = op_to_device(pr->q, pr->n_out * sizeof(float)), *dout = op_to_device(pr->o, ob), *dlse = op_to_device(pr->lse, lb);
    qattn_status s = QATTN_ERR_OUT_OF_MEMORY;
    if (darena && dtable && dq && dout && dlse) {
        qattn_kv_device_cache dev = {darena, dtable, NULL};
        qattn_decode_params dp;
        decode_params(pr, &dp);
        dp.q = dq, dp.o = dout, dp.lse = dlse;
        s = qattn_kv_decode_cuda(cuda_ctx, c, &dev, &dp);
        cudaDeviceSynchronize();
        cudaMemcpy(pr->o, dout, ob, cudaMemcpyDeviceToHost);
        cudaMemcpy(pr->lse, dlse, lb, cudaMemcpyDeviceToHost);
    }
    cudaFree(darena), cudaFree(dtable), cudaFree(dq), cudaFree(dout), cudaFree(dlse);
    qattn_kv_cache_destroy(cpu, c);
    qattn_ctx_destroy(cpu);
    return s;
}
#else
qattn_status op_dec_run_cuda(op_dec_problem *pr, qattn_ctx *cuda_ctx) {
    (void)pr, (void)cuda_ctx;
    return QATTN_ERR_UNSUPPORTED;
}
#endif

/* The poison's bit pattern: a NaN payload the library never makes. */
static bool poisoned(const float *x) {
    uint32_t u;
    memcpy(&u, x, 4);
    return u == 0xffffffffu;
}

bool op_dec_check_after(const op_dec_problem *pr, const char *label) {
    bool ok = true;
    size_t unwritten = 0, lse_unwritten = 0, guards = 0;
    for (size_t i = 0; i < pr->n_out; i++) unwritten += poisoned(pr->o + i);
    for (size_t i = 0; i < pr->n_lse; i++) lse_unwritten += poisoned(pr->lse + i);
    for (size_t i = 0; i < OP_DEC_GUARD; i++) guards += !poisoned(pr->o + pr->n_out + i) + !poisoned(pr->lse + pr->n_lse + i);
    ok &= TH_CHECK(unwritten == 0 && lse_unwritten == 0, "[%s] %zu output and %zu LSE elements not written", label, unwritten, lse_unwritten);
    ok &= TH_CHECK(guards == 0, "[%s] %zu elements written past the end of o or lse", label, guards);
    return ok;
}

void op_dec_describe(const op_case *oc, uint64_t seed, char *buf, size_t len) {
    const th_case *c = &oc->c;
    const op_decode *d = &oc->dec;
    snprintf(buf, len,
             "kv_decode %s: cache %s%s block %d H %d HK %d D %d Lq %lld causal %d window_left %d lens %d,%d,%d,%d (n %lld) seed=0x%016llx",
             c->name, cache_name(d->cache_dtype), d->calibrated ? " calibrated" : "", d->block, c->n_heads, c->n_kv_heads, c->head_dim,
             (long long)c->seqlen_q, c->causal, c->window_left, d->lens[0], d->lens[1], d->lens[2], d->lens[3], (long long)c->batch,
             (unsigned long long)seed);
}
