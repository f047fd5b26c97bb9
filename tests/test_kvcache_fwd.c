/* qattn_forward_kvcache (include/qattn.h "attention over a KV cache", docs/KVCACHE.md), the rotary
 * helpers (qattn_rotary_apply, qattn_kv_cache_append_rotary).
 *
 * Each case builds a cache (paged with shuffled page ids and a block table whose unused entries
 * are invalid, or contiguous; padded strides, so FP32 decode reads K/V in place and the other
 * cases pack them; every slot that holds no token poisoned with NaN),
 * appends new tokens with rotary embedding and attends, on every ISA this CPU has, then checks:
 * - the cache after the call equals the cache before with exactly the appended slots replaced by
 *   the new V and the new K rotated by this file's own FP64 rotary (rounded once to float, then to
 *   the dtype: the documented rule, so equality is exact), nothing else written;
 * - o (poisoned before) and lse against the FP64 oracle on the gathered K/V and the rotated Q
 *   (qattn_oracle_f64, varlen over the per-sequence key counts). The oracle sees exactly the values
 *   the kernels see (inputs exact in their dtype, o float32), so only FP32 accumulation differs:
 *   relative L2 <= 1e-5 and |lse - ref| <= 1e-5 (1 + |ref|), the FP32 bounds of tests/ops.c
 *   (sqrt(D + Lk) * 2^-24 ~ 4e-6 at D 128, Lk 1500, with headroom; a wrong key or mask is >= 1e-3);
 *   cases with softcap and ALiBi slopes [B, H] too (the oracle applies them in FP64 with libm's
 *   tanh; their FP32 rounding is far below the bound: tests/ops.c), so ALiBi distances
 *   must come from each sequence's own key count cache_seqlens[b] + seqlen_new;
 * - 1 and 3 threads bitwise identical;
 * and that bad arguments are refused with a message and the cache unchanged. */
#include "harness.h"

#include "qattn_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL_L2 1e-5
#define LSE_REL 1e-5

static int32_t g_isas[TH_MAX_ISAS];
static int g_n_isas = 0;

typedef struct kcase {
    const char *name;
    int B, Lq, Sn, H, HK, D;
    int page;          /* tokens per page; 0 = contiguous cache */
    int32_t cs[4];     /* cache_seqlens */
    int causal, wl, wr;
    int rd, inter;     /* rotary_dim (0: none), interleaved */
    int32_t dtype;     /* of q, caches, new tokens */
    int q_bhld;        /* q stored [B, H, Lq, D] (a strided view) instead of [B, Lq, H, D] */
    float softcap;     /* 0 = off */
    int alibi;         /* 1: ALiBi slopes [B, H] (alibi_batch_stride H), different per sequence */
} kcase;

static int64_t esize(int32_t dt) { return dt == QATTN_DTYPE_F32 ? 4 : 2; }

/* The test's own rotary: each pair in double, rounded once to float (include/qattn.h's rule). */
static void rotate64(const float *cos, const float *sin, int rd, int inter, int64_t pos, float *x) {
    int half = rd / 2;
    for (int c = 0; c < half; c++) {
        int i0 = inter ? 2 * c : c, i1 = inter ? 2 * c + 1 : c + half;
        double a = x[i0], b = x[i1], co = cos[pos * half + c], si = sin[pos * half + c];
        x[i0] = (float)(a * co - b * si);
        x[i1] = (float)(a * si + b * co);
    }
}

/* The value a float becomes when stored in dtype. */
static float in_dtype(int32_t dt, float x) {
    uint16_t h;
    switch (dt) {
    case QATTN_DTYPE_F16: h = qattn_f32_to_f16(x); return qattn_f16_to_f32(h);
    case QATTN_DTYPE_BF16: h = qattn_f32_to_bf16(x); return qattn_bf16_to_f32(h);
    default: return x;
    }
}

/* One concrete problem: the cache tensors, the new tokens, q, the tables. */
typedef struct kprob {
    kcase c;
    qattn_params p;
    qattn_kvcache_params kv;
    void *kc, *vc;           /* caches */
    size_t cache_bytes;      /* of each */
    void *kc_before, *vc_before, *kc_expect, *vc_expect;
    void *q, *knew, *vnew;   /* q [B, Lq, H, D], new [B, Sn, HK, D], contiguous, dtype */
    int32_t *table, cs[4];
    float *cos, *sin;
    int64_t capacity, max_blocks, n_pages, table_stride;
    float *o, *lse;
    float *slopes;           /* [B, H] when c->alibi */
} kprob;

static int64_t slot(const kprob *pr, int which, int64_t b, int64_t t, int g) {
    const qattn_kvcache_params *kv = &pr->kv;
    int64_t ps = which ? kv->v_page_stride : kv->k_page_stride, ss = which ? kv->v_seq_stride : kv->k_seq_stride,
            hs = which ? kv->v_head_stride : kv->k_head_stride;
    if (pr->c.page) return (int64_t)pr->table[b * pr->table_stride + t / pr->c.page] * ps + t % pr->c.page * ss + g * hs;
    return b * ps + t * ss + g * hs;
}

static void fill_random(void *x, int32_t dt, int64_t n, th_rng *rng) {
    for (int64_t i = 0; i < n; i++) qattn_store(x, dt, i, (float)th_rng_normal(rng));
}

static int64_t rotary_rows_needed(const kcase *c) {
    int64_t need = 1;
    bool per_pos = c->causal || c->wl >= 0 || c->wr >= 0;
    for (int b = 0; b < c->B; b++) {
        int64_t k_end = c->cs[b] + c->Sn, q_end = c->cs[b] + (per_pos ? c->Lq : 1);
        if (k_end > need) need = k_end;
        if (c->Lq > 0 && q_end > need) need = q_end;
    }
    return need;
}

static void kprob_free(kprob *pr) {
    free(pr->kc), free(pr->vc), free(pr->kc_before), free(pr->vc_before), free(pr->kc_expect), free(pr->vc_expect);
    free(pr->q), free(pr->knew), free(pr->vnew), free(pr->table), free(pr->cos), free(pr->sin), free(pr->o), free(pr->lse);
    free(pr->slopes);
    memset(pr, 0, sizeof *pr);
}

static void kprob_make(kprob *pr, const kcase *c, uint64_t seed) {
    memset(pr, 0, sizeof *pr);
    pr->c = *c;
    th_rng rng;
    th_rng_init(&rng, seed);
    int64_t B = c->B, HK = c->HK, D = c->D, dt = c->dtype, eb = esize(c->dtype);
    int64_t longest = 0;
    for (int b = 0; b < c->B; b++) longest = c->cs[b] + c->Sn > longest ? c->cs[b] + c->Sn : longest;
    qattn_params_init(&pr->p);
    qattn_params *p = &pr->p;
    p->batch = B, p->seqlen_q = c->Lq, p->n_heads = c->H, p->n_kv_heads = c->HK, p->head_dim = c->D;
    p->qkv_dtype = c->dtype, p->o_dtype = QATTN_DTYPE_F32, p->causal = c->causal, p->window_left = c->wl, p->window_right = c->wr;
    qattn_params_set_contiguous(p);
    if (c->q_bhld) p->q_head_stride = (int64_t)c->Lq * D, p->q_seq_stride = D;
    p->k_batch_stride = p->k_seq_stride = p->k_head_stride = p->v_batch_stride = p->v_seq_stride = p->v_head_stride = 0;

    qattn_kvcache_params *kv = &pr->kv;
    qattn_kvcache_params_init(kv);
    kv->seqlen_new = c->Sn;
    memcpy(pr->cs, c->cs, sizeof pr->cs);
    kv->cache_seqlens = pr->cs;
    int64_t n0, n1;
    if (c->page) {
        pr->max_blocks = longest / c->page + 2; /* a spare block per sequence: capacity > the longest */
        pr->table_stride = pr->max_blocks + 3;
        pr->n_pages = B * pr->max_blocks + 5;
        pr->capacity = pr->max_blocks * c->page;
        pr->table = th_xmalloc((size_t)(B * pr->table_stride) * sizeof(int32_t));
        int32_t *perm = th_xmalloc((size_t)pr->n_pages * sizeof(int32_t));
        for (int64_t i = 0; i < pr->n_pages; i++) perm[i] = (int32_t)i;
        for (int64_t i = pr->n_pages - 1; i > 0; i--) { /* shuffled page ids */
            int64_t j = (int64_t)(th_rng_u64(&rng) % (uint64_t)(i + 1));
            int32_t t = perm[i];
            perm[i] = perm[j], perm[j] = t;
        }
        int64_t next = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < pr->table_stride; j++) {
                bool used = j * c->page < c->cs[b] + c->Sn;
                /* entries no token reaches are invalid ids: reading one would be a bug */
                pr->table[b * pr->table_stride + j] = used ? perm[next++] : (j % 2 ? -5 : (int32_t)(pr->n_pages + 7));
            }
        free(perm);
        kv->block_table = pr->table, kv->block_table_stride = pr->table_stride, kv->max_blocks = pr->max_blocks;
        kv->n_pages = pr->n_pages, kv->page_size = c->page;
        n0 = pr->n_pages, n1 = c->page;
    } else {
        pr->capacity = longest + 5;
        kv->cache_len = pr->capacity;
        n0 = B, n1 = pr->capacity;
    }
    qattn_kvcache_params_set_contiguous(kv, p);
    /* padded rows and pages (strided views); K and V alike, so FP32 decode reads them in place */
    kv->k_seq_stride = kv->v_seq_stride = HK * D + 8;
    kv->k_page_stride = kv->v_page_stride = n1 * kv->k_seq_stride + 16;
    int64_t kelems = n0 * kv->k_page_stride, velems = n0 * kv->v_page_stride;
    pr->cache_bytes = (size_t)((kelems > velems ? kelems : velems) * eb);
    pr->kc = th_xmalloc(pr->cache_bytes), pr->vc = th_xmalloc(pr->cache_bytes);
    for (int64_t i = 0; i < (int64_t)pr->cache_bytes / eb; i++) qattn_store(pr->kc, dt, i, NAN), qattn_store(pr->vc, dt, i, NAN);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < c->cs[b]; t++)
            for (int g = 0; g < HK; g++)
                for (int64_t d = 0; d < D; d++) {
                    qattn_store(pr->kc, dt, slot(pr, 0, b, t, g) + d, (float)th_rng_normal(&rng));
                    qattn_store(pr->vc, dt, slot(pr, 1, b, t, g) + d, (float)th_rng_normal(&rng));
                }
    kv->k_cache = pr->kc, kv->v_cache = pr->vc;

    int64_t qn = B * c->Lq * c->H * D, nn = B * c->Sn * HK * D;
    pr->q = th_xmalloc((size_t)(qn * eb) + 4), pr->knew = th_xmalloc((size_t)(nn * eb) + 4), pr->vnew = th_xmalloc((size_t)(nn * eb) + 4);
    fill_random(pr->q, c->dtype, qn, &rng);
    fill_random(pr->knew, c->dtype, nn, &rng);
    fill_random(pr->vnew, c->dtype, nn, &rng);
    p->q = pr->q;
    if (c->Sn) kv->k_new = pr->knew, kv->v_new = pr->vnew;
    if (c->rd) {
        int64_t rows = rotary_rows_needed(c), half = c->rd / 2;
        pr->cos = th_xmalloc((size_t)(rows * half) * sizeof(float)), pr->sin = th_xmalloc((size_t)(rows * half) * sizeof(float));
        for (int64_t i = 0; i < rows * half; i++) {
            double angle = th_rng_uniform(&rng, 0.0, 6.283185307179586);
            pr->cos[i] = (float)cos(angle), pr->sin[i] = (float)sin(angle);
        }
        kv->rotary_cos = pr->cos, kv->rotary_sin = pr->sin, kv->rotary_len = rows, kv->rotary_dim = c->rd, kv->rotary_interleaved = c->inter;
    }
    pr->o = th_xmalloc((size_t)qn * sizeof(float) + 4);
    pr->lse = th_xmalloc((size_t)(B * c->H * c->Lq) * sizeof(float) + 4);
    p->o = pr->o, p->lse = pr->lse;
    p->softcap = c->softcap;
    if (c->alibi) {
        pr->slopes = th_xmalloc((size_t)(B * c->H) * sizeof(float));
        for (int64_t i = 0; i < B * c->H; i++) pr->slopes[i] = 0.02f + 0.07f * (float)(i % c->H) + 0.03f * (float)(i / c->H);
        p->alibi_slopes = pr->slopes, p->alibi_batch_stride = c->H;
    }

    /* the cache before, and what it must hold after */
    pr->kc_before = th_xmalloc(pr->cache_bytes), pr->vc_before = th_xmalloc(pr->cache_bytes);
    pr->kc_expect = th_xmalloc(pr->cache_bytes), pr->vc_expect = th_xmalloc(pr->cache_bytes);
    memcpy(pr->kc_before, pr->kc, pr->cache_bytes), memcpy(pr->vc_before, pr->vc, pr->cache_bytes);
    memcpy(pr->kc_expect, pr->kc, pr->cache_bytes), memcpy(pr->vc_expect, pr->vc, pr->cache_bytes);
    float row[256];
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < c->Sn; j++)
            for (int g = 0; g < HK; g++) {
                int64_t t = c->cs[b] + j, src = ((b * c->Sn + j) * HK + g) * D;
                for (int64_t d = 0; d < D; d++) row[d] = qattn_load(pr->knew, dt, src + d);
                if (c->rd) rotate64(pr->cos, pr->sin, c->rd, c->inter, t, row);
                for (int64_t d = 0; d < D; d++) {
                    qattn_store(pr->kc_expect, dt, slot(pr, 0, b, t, g) + d, row[d]);
                    qattn_store(pr->vc_expect, dt, slot(pr, 1, b, t, g) + d, qattn_load(pr->vnew, dt, src + d));
                }
            }
}

static void restore_cache(kprob *pr) {
    memcpy(pr->kc, pr->kc_before, pr->cache_bytes), memcpy(pr->vc, pr->vc_before, pr->cache_bytes);
}

static void poison_outputs(kprob *pr) {
    const kcase *c = &pr->c;
    for (int64_t i = 0; i < (int64_t)c->B * c->Lq * c->H * c->D; i++) pr->o[i] = NAN;
    for (int64_t i = 0; i < (int64_t)c->B * c->H * c->Lq; i++) pr->lse[i] = NAN;
}

/* The FP64 oracle on the gathered cache (expected contents) and the rotated queries, varlen. */
static void oracle(const kprob *pr, double *o64, double *lse_bhq) {
    const kcase *c = &pr->c;
    int64_t B = c->B, HK = c->HK, D = c->D, H = c->H, Lq = c->Lq, dt = c->dtype;
    int32_t cu_q[5], cu_k[5];
    cu_q[0] = cu_k[0] = 0;
    int64_t max_lk = 0;
    for (int b = 0; b < B; b++) {
        int64_t lk = c->cs[b] + c->Sn;
        cu_q[b + 1] = (int32_t)((b + 1) * Lq), cu_k[b + 1] = (int32_t)(cu_k[b] + lk);
        max_lk = lk > max_lk ? lk : max_lk;
    }
    int64_t tk = cu_k[B];
    float *qf = th_xmalloc((size_t)(B * Lq * H * D) * sizeof(float) + 4);
    float *kf = th_xmalloc((size_t)(tk * HK * D) * sizeof(float) + 4), *vf = th_xmalloc((size_t)(tk * HK * D) * sizeof(float) + 4);
    bool per_pos = c->causal || c->wl >= 0 || c->wr >= 0;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t h = 0; h < H; h++) {
                float *row = qf + ((b * Lq + i) * H + h) * D;
                int64_t qi = b * pr->p.q_batch_stride + i * pr->p.q_seq_stride + h * pr->p.q_head_stride;
                for (int64_t d = 0; d < D; d++) row[d] = qattn_load(pr->q, dt, qi + d);
                if (c->rd) {
                    rotate64(pr->cos, pr->sin, c->rd, c->inter, c->cs[b] + (per_pos ? i : 0), row);
                    for (int64_t d = 0; d < D; d++) row[d] = in_dtype(c->dtype, row[d]);
                }
            }
        for (int64_t t = 0; t < c->cs[b] + c->Sn; t++)
            for (int g = 0; g < HK; g++)
                for (int64_t d = 0; d < D; d++) {
                    kf[((cu_k[b] + t) * HK + g) * D + d] = qattn_load(pr->kc_expect, dt, slot(pr, 0, b, t, g) + d);
                    vf[((cu_k[b] + t) * HK + g) * D + d] = qattn_load(pr->vc_expect, dt, slot(pr, 1, b, t, g) + d);
                }
    }
    qattn_params op;
    qattn_params_init(&op);
    op.q = qf, op.k = kf, op.v = vf, op.o = qf; /* o is not written by the oracle */
    op.batch = B, op.seqlen_q = Lq, op.seqlen_k = max_lk, op.n_heads = (int32_t)H, op.n_kv_heads = (int32_t)HK, op.head_dim = (int32_t)D;
    op.causal = c->causal, op.window_left = c->wl, op.window_right = c->wr;
    op.cu_seqlens_q = cu_q, op.cu_seqlens_k = cu_k;
    op.softcap = pr->p.softcap, op.alibi_slopes = pr->p.alibi_slopes, op.alibi_batch_stride = pr->p.alibi_batch_stride;
    qattn_params_set_contiguous(&op);
    double *lse_hq = th_xmalloc((size_t)(H * B * Lq) * sizeof(double) + 8);
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 1);
    qattn_status s = qattn_oracle_f64(ctx, &op, o64, lse_hq);
    TH_CHECK(s == QATTN_OK, "oracle: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
    for (int64_t b = 0; b < B; b++) /* varlen [H, total_q] -> [B, H, Lq] */
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < Lq; i++) lse_bhq[(b * H + h) * Lq + i] = lse_hq[h * B * Lq + b * Lq + i];
    qattn_ctx_destroy(ctx);
    free(qf), free(kf), free(vf), free(lse_hq);
}

static void describe(const kcase *c, int32_t isa, char *buf, size_t len) {
    char layout[32];
    if (c->page) snprintf(layout, sizeof layout, "page %d", c->page);
    else snprintf(layout, sizeof layout, "contiguous");
    snprintf(buf, len, "%s: B %d Lq %d new %d H %d HK %d D %d %s cs {%d,%d,%d} causal %d window (%d,%d) rotary %d%s %s%s softcap %g alibi %d isa %s",
             c->name, c->B, c->Lq, c->Sn, c->H, c->HK, c->D, layout, c->cs[0], c->B > 1 ? c->cs[1] : -1,
             c->B > 2 ? c->cs[2] : -1, c->causal, c->wl, c->wr, c->rd, c->rd ? (c->inter ? " interleaved" : " halves") : "",
             th_dtype_name(c->dtype), c->q_bhld ? " q [B,H,L,D]" : "", (double)c->softcap, c->alibi, th_isa_name(isa));
}

static void run_case(const kcase *c, uint64_t seed) {
    kprob pr;
    kprob_make(&pr, c, seed);
    int64_t nq = (int64_t)c->B * c->Lq * c->H * c->D, nl = (int64_t)c->B * c->H * c->Lq;
    double *o64 = th_xmalloc((size_t)nq * sizeof(double) + 8), *lse64 = th_xmalloc((size_t)nl * sizeof(double) + 8);
    oracle(&pr, o64, lse64);
    float *o1 = th_xmalloc((size_t)nq * sizeof(float) + 4), *l1 = th_xmalloc((size_t)nl * sizeof(float) + 4);
    for (int ii = 0; ii < g_n_isas; ii++) {
        char desc[320];
        describe(c, g_isas[ii], desc, sizeof desc);
        if (!th_selected(desc)) continue;
        th_set_context(desc);
        for (int threads = 1; threads <= 3; threads += 2) {
            qattn_ctx *ctx = th_ctx(g_isas[ii], threads);
            if (!ctx) continue;
            restore_cache(&pr);
            poison_outputs(&pr);
            qattn_status s = qattn_forward_kvcache(ctx, &pr.p, &pr.kv);
            TH_CHECK(s == QATTN_OK, "qattn_forward_kvcache: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
            qattn_ctx_destroy(ctx);
            if (s != QATTN_OK) continue;
            TH_CHECK(memcmp(pr.kc, pr.kc_expect, pr.cache_bytes) == 0, "k_cache differs from the expected contents (rotated new keys, rest unchanged)");
            TH_CHECK(memcmp(pr.vc, pr.vc_expect, pr.cache_bytes) == 0, "v_cache differs from the expected contents (new values, rest unchanged)");
            size_t unwritten = 0;
            for (int64_t i = 0; i < nq; i++) unwritten += isnan(pr.o[i]) && !isnan(o64[i]);
            TH_CHECK(unwritten == 0, "%zu output elements not written", unwritten);
            th_metrics m = th_compare(pr.o, o64, (size_t)nq);
            TH_CHECK(m.rel_l2 <= REL_L2 && m.nonfinite == 0, "%d threads: relative L2 %.3e (bound %.0e), %zu non-finite", threads, m.rel_l2, REL_L2,
                     m.nonfinite);
            double worst = 0.0;
            size_t lse_bad = 0;
            for (int64_t i = 0; i < nl; i++) {
                if (isinf(lse64[i])) {
                    lse_bad += !(isinf(pr.lse[i]) && pr.lse[i] < 0);
                    continue;
                }
                double e = fabs(pr.lse[i] - lse64[i]) / (1.0 + fabs(lse64[i]));
                if (!(e <= LSE_REL)) lse_bad++;
                worst = e > worst ? e : worst;
            }
            TH_CHECK(lse_bad == 0, "%zu lse values off (worst relative %.3e)", lse_bad, worst);
            if (threads == 1) {
                memcpy(o1, pr.o, (size_t)nq * sizeof(float)), memcpy(l1, pr.lse, (size_t)nl * sizeof(float));
                if (ii == 0) th_metrics_print(desc, &m);
            } else {
                TH_CHECK(memcmp(o1, pr.o, (size_t)nq * sizeof(float)) == 0 && memcmp(l1, pr.lse, (size_t)nl * sizeof(float)) == 0,
                         "1 and 3 threads differ");
            }
        }
    }
    th_set_context(NULL);
    free(o64), free(lse64), free(o1), free(l1);
    kprob_free(&pr);
}

static const kcase CASES[] = {
    /* decode, FP32 (K/V read in place), shuffled pages of 16, an empty sequence */
    {"decode", 3, 1, 1, 8, 2, 64, 16, {0, 17, 40}, 1, -1, -1, 64, 1, QATTN_DTYPE_F32, 0, 0.0f, 0},
    /* speculative decode, FP16, pages of 32, GQA off, rotary on half the channels (NeoX halves) */
    {"speculative", 2, 5, 5, 4, 4, 80, 32, {31, 70}, 1, -1, -1, 32, 0, QATTN_DTYPE_F16, 0, 0.0f, 0},
    /* chunked prefill with a cached prefix, BF16, pages of 256, MQA, the pre-pack path */
    {"chunked prefill", 2, 100, 100, 4, 1, 128, 256, {0, 300}, 1, -1, -1, 64, 1, QATTN_DTYPE_BF16, 0, 0.0f, 0},
    /* no new tokens, contiguous cache, not causal, no rotary */
    {"no append", 2, 5, 0, 6, 3, 64, 0, {0, 150}, 0, -1, -1, 0, 0, QATTN_DTYPE_F32, 1, 0.0f, 0},
    /* fewer new tokens than queries, a two-sided window (queries rotated per position) */
    {"window", 3, 5, 7, 4, 2, 64, 16, {3, 0, 50}, 0, 20, 3, 48, 0, QATTN_DTYPE_F32, 1, 0.0f, 0},
    /* not causal, not windowed: every query rotated at cache_seqlens; contiguous, FP16 */
    {"bidirectional rotary", 2, 5, 1, 4, 2, 128, 0, {10, 88}, 0, -1, -1, 128, 1, QATTN_DTYPE_F16, 0, 0.0f, 0},
    /* causal with Lq > Lk: rows that see no key (zeros, lse -inf) */
    {"causal Lq > Lk", 2, 100, 7, 2, 2, 64, 16, {0, 5}, 1, -1, -1, 0, 0, QATTN_DTYPE_F32, 0, 0.0f, 0},
    /* long decode: the KV axis is split across units (merge of partials over pages) */
    {"split decode", 1, 1, 1, 8, 1, 128, 16, {1500}, 1, -1, -1, 64, 1, QATTN_DTYPE_F32, 0, 0.0f, 0},
    {"split decode f16", 2, 1, 1, 8, 2, 64, 32, {1100, 7}, 1, 100, -1, 64, 0, QATTN_DTYPE_F16, 0, 0.0f, 0},
    /* a query block of 100 with a left window crossing page ends, D 80 */
    {"prefill window", 1, 100, 7, 4, 2, 80, 16, {200}, 1, 37, -1, 80, 1, QATTN_DTYPE_F32, 0, 0.0f, 0},
    /* softcap and ALiBi: decode read in place over pages, an empty sequence */
    {"decode softcap alibi", 3, 1, 1, 8, 2, 64, 16, {0, 17, 40}, 1, -1, -1, 64, 1, QATTN_DTYPE_F32, 0, 30.0f, 1},
    /* ...chunked prefill with a cached prefix, FP16, a left window, saturating softcap */
    {"prefill softcap alibi", 2, 37, 37, 4, 2, 80, 16, {0, 150}, 1, 50, -1, 0, 0, QATTN_DTYPE_F16, 0, 5.0f, 1},
    /* ...ALiBi alone on a split decode (partials merged across pages), BF16, not causal, Lq > new */
    {"split decode alibi", 2, 3, 1, 4, 1, 128, 32, {1100, 7}, 0, -1, -1, 0, 0, QATTN_DTYPE_BF16, 1, 0.0f, 1},
};

/* ---------------------------------------------------------------- bad arguments */

static void expect_refused(kprob *pr, qattn_status want, const char *what) {
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 2);
    if (!ctx) return;
    restore_cache(pr);
    qattn_status s = qattn_forward_kvcache(ctx, &pr->p, &pr->kv);
    const char *msg = qattn_ctx_last_error(ctx);
    TH_CHECK(s == want, "%s: status %s, expected %s (%s)", what, qattn_status_str(s), qattn_status_str(want), msg);
    TH_CHECK(msg[0] != '\0', "%s: no message", what);
    TH_CHECK(memcmp(pr->kc, pr->kc_before, pr->cache_bytes) == 0 && memcmp(pr->vc, pr->vc_before, pr->cache_bytes) == 0,
             "%s: the cache changed on a refused call", what);
    if (s == want && getenv("QATTN_TEST_VERBOSE")) printf("    %s: %s\n", what, msg);
    qattn_ctx_destroy(ctx);
}

static void test_bad_arguments(void) {
    printf("  bad arguments\n");
    th_set_context("bad arguments (decode case)");
    kprob pr;
    kprob_make(&pr, &CASES[0], th_derive_seed(900));
    qattn_kvcache_params kv0 = pr.kv;
    qattn_params p0 = pr.p;
    int64_t used = pr.table_stride + 1; /* sequence 1's second page: its tokens 16 and the new one reach it */
    int32_t keep = pr.table[used];
    pr.table[used] = (int32_t)pr.n_pages;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "page id n_pages");
    pr.table[used] = -1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "page id -1");
    pr.table[used] = keep;
    pr.cs[1] = -1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "negative cache_seqlens");
    pr.cs[1] = (int32_t)pr.capacity; /* + 1 new token: one beyond the capacity */
    expect_refused(&pr, QATTN_ERR_CAPACITY, "capacity");
    pr.cs[1] = CASES[0].cs[1];
    pr.kv.rotary_len -= 1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "rotary position beyond rotary_len");
    pr.kv = kv0;
    pr.kv.k_page_stride = INT64_MAX / 3;
    expect_refused(&pr, QATTN_ERR_OVERFLOW, "overflowing page stride");
    pr.kv = kv0;
    pr.kv.block_table_stride = INT64_MAX / 2;
    expect_refused(&pr, QATTN_ERR_OVERFLOW, "overflowing block table stride");
    pr.kv = kv0;
    pr.kv.k_seq_stride = 1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "k_cache rows overlapping");
    pr.kv = kv0;
    pr.kv.k_new = NULL;
    expect_refused(&pr, QATTN_ERR_NULL_POINTER, "k_new NULL");
    pr.kv = kv0;
    pr.kv.page_size = 24;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "page_size 24");
    pr.kv = kv0;
    pr.kv.v_cache = pr.kv.k_cache;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "v_cache is k_cache");
    pr.kv = kv0;
    pr.kv.k_new = pr.kc; /* the new tokens read from the cache being written */
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "k_new inside k_cache");
    pr.kv = kv0;
    pr.p.o = pr.kc;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "o overlapping k_cache");
    pr.p = p0;
    pr.p.lse = (float *)pr.cs;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "lse overlapping cache_seqlens");
    pr.p = p0;
    pr.p.k = pr.kc;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "p->k set");
    pr.p = p0;
    pr.p.precision = QATTN_PRECISION_INT8;
    expect_refused(&pr, QATTN_ERR_UNSUPPORTED, "INT8 precision");
    pr.p = p0;
    static const uint8_t one_block = 1;
    pr.p.block_mask = &one_block, pr.p.block_mask_q = pr.p.block_mask_k = 16;
    expect_refused(&pr, QATTN_ERR_UNSUPPORTED, "block_mask");
    pr.p = p0;
    float bad_slopes[64] = {0.5f, NAN};
    pr.p.alibi_slopes = bad_slopes;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "a NaN ALiBi slope");
    pr.p = p0;
    memset(pr.o, 0, 64 * sizeof(float)); /* finite slopes, so the overlap is what is refused */
    pr.p.alibi_slopes = pr.o;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "alibi_slopes overlapping o");
    pr.p = p0;
    pr.p.head_dim = 36;
    expect_refused(&pr, QATTN_ERR_UNSUPPORTED, "head_dim 36");
    pr.p = p0;
    pr.kv.reserved[2] = 1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "reserved field");
    pr.kv = kv0;
    pr.kv.rotary_dim = 63;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "odd rotary_dim");
    pr.kv = kv0;
    pr.kv.rotary_sin = NULL;
    expect_refused(&pr, QATTN_ERR_NULL_POINTER, "rotary_sin NULL");
    pr.kv = kv0;
    pr.kv.seqlen_new = 0, pr.kv.k_new = pr.kv.v_new = NULL;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "rotary without new tokens");
    pr.kv = kv0;
    pr.kv.cache_seqlens = NULL;
    expect_refused(&pr, QATTN_ERR_NULL_POINTER, "cache_seqlens NULL");
    pr.kv = kv0;
    pr.kv.seqlen_new = -1;
    expect_refused(&pr, QATTN_ERR_INVALID_ARGUMENT, "negative seqlen_new");
    pr.kv = kv0;
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
    if (ctx) {
        TH_CHECK(qattn_forward_kvcache(ctx, NULL, &pr.kv) == QATTN_ERR_NULL_POINTER, "params NULL");
        TH_CHECK(qattn_forward_kvcache(ctx, &pr.p, NULL) == QATTN_ERR_NULL_POINTER, "kv NULL");
        qattn_ctx_destroy(ctx);
    }
    TH_CHECK(qattn_forward_kvcache(NULL, &pr.p, &pr.kv) == QATTN_ERR_NULL_POINTER, "ctx NULL");
    /* an empty batch is a no-op that reads nothing */
    pr.p.batch = 0;
    pr.kv.cache_seqlens = NULL;
    ctx = th_ctx(QATTN_ISA_AUTO, 1);
    if (ctx) {
        restore_cache(&pr);
        qattn_status s = qattn_forward_kvcache(ctx, &pr.p, &pr.kv);
        TH_CHECK(s == QATTN_OK, "empty batch: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
        qattn_ctx_destroy(ctx);
    }
    th_set_context(NULL);
    kprob_free(&pr);
}

/* ---------------------------------------------------------------- rotary on the cache object */

static void test_rotary_helpers(void) {
    printf("  rotary: qattn_rotary_apply, qattn_kv_cache_append_rotary\n");
    th_set_context("rotary helpers");
    const int HK = 2, D = 64, rd = 48, n = 21, rows = 40, half = rd / 2;
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(950));
    float *k = th_xmalloc((size_t)(n * HK * D) * sizeof(float)), *v = th_xmalloc((size_t)(n * HK * D) * sizeof(float));
    float *cs = th_xmalloc((size_t)(rows * half) * sizeof(float)), *sn = th_xmalloc((size_t)(rows * half) * sizeof(float));
    th_fill_normal(k, (size_t)(n * HK * D), &rng, 0.0, 1.0);
    th_fill_normal(v, (size_t)(n * HK * D), &rng, 0.0, 1.0);
    for (int i = 0; i < rows * half; i++) {
        double a = th_rng_uniform(&rng, 0.0, 6.283185307179586);
        cs[i] = (float)cos(a), sn[i] = (float)sin(a);
    }
    /* the expected rotation of tokens at positions 5.. (the sequence holds 5 tokens first) */
    float *kr = th_xmalloc((size_t)(n * HK * D) * sizeof(float));
    memcpy(kr, k, (size_t)(n * HK * D) * sizeof(float));
    for (int inter = 0; inter < 2; inter++) {
        memcpy(kr, k, (size_t)(n * HK * D) * sizeof(float));
        for (int t = 0; t < n; t++)
            for (int g = 0; g < HK; g++) rotate64(cs, sn, rd, inter, 5 + t, kr + (t * HK + g) * D);
        qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
        if (!ctx) break;
        /* qattn_rotary_apply: FP32 in place, bit-exact */
        float *x = th_xmalloc((size_t)(n * HK * D) * sizeof(float));
        memcpy(x, k, (size_t)(n * HK * D) * sizeof(float));
        qattn_status s = qattn_rotary_apply(ctx, x, QATTN_DTYPE_F32, n, HK, D, 5, cs, sn, rows, rd, inter);
        TH_CHECK(s == QATTN_OK && memcmp(x, kr, (size_t)(n * HK * D) * sizeof(float)) == 0, "rotary_apply (interleaved %d): %s %s", inter,
                 qattn_status_str(s), qattn_ctx_last_error(ctx));
        memcpy(x, k, (size_t)(n * HK * D) * sizeof(float));
        s = qattn_rotary_apply(ctx, x, QATTN_DTYPE_F32, n, HK, D, rows - n + 1, cs, sn, rows, rd, inter);
        TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && memcmp(x, k, (size_t)(n * HK * D) * sizeof(float)) == 0,
                 "rotary_apply beyond the table: %s, x %s", qattn_status_str(s), memcmp(x, k, (size_t)(n * HK * D) * sizeof(float)) ? "changed" : "unchanged");
        free(x);
        for (int dti = 0; dti < 2; dti++) {
            int32_t dt = dti ? QATTN_DTYPE_I8 : QATTN_DTYPE_F16;
            qattn_kv_cache_options o;
            memset(&o, 0, sizeof o);
            o.n_kv_heads = HK, o.head_dim = D, o.block_size = 16, o.dtype = dt, o.n_blocks = 8, o.max_seqs = 2;
            qattn_kv_cache *c1 = NULL, *c2 = NULL;
            if (qattn_kv_cache_create(ctx, &o, &c1) != QATTN_OK || qattn_kv_cache_create(ctx, &o, &c2) != QATTN_OK) {
                TH_CHECK(false, "cache create: %s", qattn_ctx_last_error(ctx));
                qattn_kv_cache_destroy(ctx, c1);
                break;
            }
            /* 5 tokens first, then n rotated ones; c2 gets the same tokens rotated by the test */
            TH_CHECK(qattn_kv_cache_append(ctx, c1, 0, k, v, 5, QATTN_DTYPE_F32) == QATTN_OK, "append");
            TH_CHECK(qattn_kv_cache_append(ctx, c2, 0, k, v, 5, QATTN_DTYPE_F32) == QATTN_OK, "append");
            s = qattn_kv_cache_append_rotary(ctx, c1, 0, k, v, n, QATTN_DTYPE_F32, cs, sn, 5 + n - 1, rd, inter);
            TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT, "append_rotary beyond the table: %s", qattn_status_str(s));
            int64_t len = -1;
            qattn_kv_cache_seq_len(ctx, c1, 0, &len);
            TH_CHECK(len == 5, "a refused append_rotary changed the length to %lld", (long long)len);
            s = qattn_kv_cache_append_rotary(ctx, c1, 0, k, v, n, QATTN_DTYPE_F32, cs, sn, rows, rd, inter);
            TH_CHECK(s == QATTN_OK, "append_rotary (%s): %s %s", dti ? "i8" : "f16", qattn_status_str(s), qattn_ctx_last_error(ctx));
            TH_CHECK(qattn_kv_cache_append(ctx, c2, 0, kr, v, n, QATTN_DTYPE_F32) == QATTN_OK, "append");
            size_t e = (size_t)((5 + n) * HK * D);
            float *r1 = th_xmalloc(e * sizeof(float) * 2), *r2 = th_xmalloc(e * sizeof(float) * 2);
            qattn_kv_cache_read(ctx, c1, 0, 0, 5 + n, r1, r1 + e);
            qattn_kv_cache_read(ctx, c2, 0, 0, 5 + n, r2, r2 + e);
            /* the same rounding of the same rotated values: identical codes */
            TH_CHECK(memcmp(r1, r2, 2 * e * sizeof(float)) == 0, "append_rotary (%s, interleaved %d) differs from append of the rotated keys",
                     dti ? "i8" : "f16", inter);
            free(r1), free(r2);
            qattn_kv_cache_destroy(ctx, c1), qattn_kv_cache_destroy(ctx, c2);
        }
        qattn_ctx_destroy(ctx);
    }
    th_set_context(NULL);
    free(k), free(v), free(cs), free(sn), free(kr);
}

int main(void) {
    th_init("test_kvcache_fwd");
    g_n_isas = th_available_isas(g_isas);
    printf("  cases against the FP64 oracle (%d ISAs)\n", g_n_isas);
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) run_case(&CASES[i], th_derive_seed(100 + i));
    test_bad_arguments();
    test_rotary_helpers();
    return th_finish();
}
