/* The OP_FORWARD_KVCACHE cases' problems (ops_kvcache.h): qattn_forward_kvcache (include/qattn.h
 * "attention over a KV cache", docs/KVCACHE.md).
 *
 * Each case builds a cache (paged with shuffled page ids and a block table whose unused entries
 * are invalid, or contiguous; padded strides, so FP32 decode reads K/V in place and the other
 * cases pack them; every slot that holds no token poisoned with NaN),
 * appends new tokens with rotary embedding and attends, on every target (tests/ops.c), then checks:
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
 * - 1 and 3 threads bitwise identical (the case's thread counts, tests/ops.c). */
#include "ops_kvcache.h"

#include "qattn_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(QATTN_TEST_CUDA)
#include <cuda_runtime_api.h>
#endif

static int64_t esize(int32_t dt) { return dt == QATTN_DTYPE_F32 ? 4 : 2; }

void op_kv_rotate(const float *cos, const float *sin, int rd, int inter, int64_t pos, float *x) {
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

static int64_t slot(const op_kv_problem *pr, int which, int64_t b, int64_t t, int g) {
    const qattn_kvcache_params *kv = &pr->kv;
    int64_t ps = which ? kv->v_page_stride : kv->k_page_stride, ss = which ? kv->v_seq_stride : kv->k_seq_stride,
            hs = which ? kv->v_head_stride : kv->k_head_stride;
    if (pr->oc.kv.page) return (int64_t)pr->table[b * pr->table_stride + t / pr->oc.kv.page] * ps + t % pr->oc.kv.page * ss + g * hs;
    return b * ps + t * ss + g * hs;
}

static void fill_random(void *x, int32_t dt, int64_t n, th_rng *rng) {
    for (int64_t i = 0; i < n; i++) qattn_store(x, dt, i, (float)th_rng_normal(rng));
}

/* Queries are rotated at their own positions when a mask needs positions, else all at cache_seqlens. */
static bool rotates_per_position(const th_case *c) { return c->causal || c->window_left >= 0 || c->window_right >= 0; }

static int64_t rotary_rows_needed(const op_case *oc) {
    const th_case *c = &oc->c;
    int64_t need = 1;
    bool per_pos = rotates_per_position(c);
    for (int b = 0; b < c->batch; b++) {
        int64_t k_end = oc->kv.cache_seqlens[b] + oc->kv.seqlen_new, q_end = oc->kv.cache_seqlens[b] + (per_pos ? c->seqlen_q : 1);
        if (k_end > need) need = k_end;
        if (c->seqlen_q > 0 && q_end > need) need = q_end;
    }
    return need;
}

void op_kv_free(op_kv_problem *pr) {
    free(pr->kc), free(pr->vc), free(pr->kc_before), free(pr->vc_before), free(pr->kc_expect), free(pr->vc_expect);
    free(pr->q), free(pr->knew), free(pr->vnew), free(pr->table), free(pr->cos), free(pr->sin), free(pr->o), free(pr->lse);
    free(pr->slopes);
    memset(pr, 0, sizeof *pr);
}

/* A block table over shuffled page ids; entries no token reaches hold invalid ids. */
static void make_block_table(op_kv_problem *pr, int64_t longest, th_rng *rng) {
    const op_case *oc = &pr->oc;
    int64_t B = oc->c.batch, page = oc->kv.page;
    pr->max_blocks = longest / page + 2; /* a spare block per sequence: capacity > the longest */
    pr->table_stride = pr->max_blocks + 3;
    pr->n_pages = B * pr->max_blocks + 5;
    pr->capacity = pr->max_blocks * page;
    pr->table = th_xmalloc((size_t)(B * pr->table_stride) * sizeof(int32_t));
    int32_t *perm = th_xmalloc((size_t)pr->n_pages * sizeof(int32_t));
    for (int64_t i = 0; i < pr->n_pages; i++) perm[i] = (int32_t)i;
    for (int64_t i = pr->n_pages - 1; i > 0; i--) { /* shuffled page ids */
        int64_t j = (int64_t)(th_rng_u64(rng) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int64_t next = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < pr->table_stride; j++) {
            bool used = j * page < oc->kv.cache_seqlens[b] + oc->kv.seqlen_new;
            /* entries no token reaches are invalid ids: reading one would be a bug */
            pr->table[b * pr->table_stride + j] = used ? perm[next++] : (j % 2 ? -5 : (int32_t)(pr->n_pages + 7));
        }
    free(perm);
}

/* The cache before, and what it must hold after: the new V, and the new K rotated by this file's rotary. */
static void make_expected_cache(op_kv_problem *pr) {
    const op_case *oc = &pr->oc;
    int64_t B = oc->c.batch, HK = oc->c.n_kv_heads, D = oc->c.head_dim, Sn = oc->kv.seqlen_new;
    int32_t dt = oc->c.qkv_dtype;
    pr->kc_before = th_xmalloc(pr->cache_bytes), pr->vc_before = th_xmalloc(pr->cache_bytes);
    pr->kc_expect = th_xmalloc(pr->cache_bytes), pr->vc_expect = th_xmalloc(pr->cache_bytes);
    memcpy(pr->kc_before, pr->kc, pr->cache_bytes), memcpy(pr->vc_before, pr->vc, pr->cache_bytes);
    memcpy(pr->kc_expect, pr->kc, pr->cache_bytes), memcpy(pr->vc_expect, pr->vc, pr->cache_bytes);
    float row[256];
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < Sn; j++)
            for (int g = 0; g < HK; g++) {
                int64_t t = pr->cs[b] + j, src = ((b * Sn + j) * HK + g) * D;
                for (int64_t d = 0; d < D; d++) row[d] = qattn_load(pr->knew, dt, src + d);
                if (oc->kv.rotary_dim) op_kv_rotate(pr->cos, pr->sin, oc->kv.rotary_dim, oc->kv.rotary_interleaved, t, row);
                for (int64_t d = 0; d < D; d++) {
                    qattn_store(pr->kc_expect, dt, slot(pr, 0, b, t, g) + d, row[d]);
                    qattn_store(pr->vc_expect, dt, slot(pr, 1, b, t, g) + d, qattn_load(pr->vnew, dt, src + d));
                }
            }
}

void op_kv_make(op_kv_problem *pr, const op_case *oc, uint64_t seed) {
    memset(pr, 0, sizeof *pr);
    pr->oc = *oc;
    const th_case *c = &oc->c;
    th_rng rng;
    th_rng_init(&rng, seed);
    int64_t B = c->batch, Lq = c->seqlen_q, H = c->n_heads, HK = c->n_kv_heads, D = c->head_dim, Sn = oc->kv.seqlen_new;
    int32_t dt = c->qkv_dtype;
    int64_t eb = esize(dt);
    int64_t longest = 0;
    for (int b = 0; b < B; b++) longest = oc->kv.cache_seqlens[b] + Sn > longest ? oc->kv.cache_seqlens[b] + Sn : longest;
    qattn_params_init(&pr->p);
    qattn_params *p = &pr->p;
    p->batch = B, p->seqlen_q = Lq, p->n_heads = (int32_t)H, p->n_kv_heads = (int32_t)HK, p->head_dim = (int32_t)D;
    p->qkv_dtype = dt, p->o_dtype = QATTN_DTYPE_F32, p->causal = c->causal, p->window_left = c->window_left, p->window_right = c->window_right;
    qattn_params_set_contiguous(p);
    if (c->qo_bhld) p->q_head_stride = Lq * D, p->q_seq_stride = D;
    p->k_batch_stride = p->k_seq_stride = p->k_head_stride = p->v_batch_stride = p->v_seq_stride = p->v_head_stride = 0;

    qattn_kvcache_params *kv = &pr->kv;
    qattn_kvcache_params_init(kv);
    kv->seqlen_new = Sn;
    memcpy(pr->cs, oc->kv.cache_seqlens, sizeof pr->cs);
    kv->cache_seqlens = pr->cs;
    int64_t n0, n1;
    if (oc->kv.page) {
        make_block_table(pr, longest, &rng);
        kv->block_table = pr->table, kv->block_table_stride = pr->table_stride, kv->max_blocks = pr->max_blocks;
        kv->n_pages = pr->n_pages, kv->page_size = oc->kv.page;
        n0 = pr->n_pages, n1 = oc->kv.page;
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
        for (int64_t t = 0; t < pr->cs[b]; t++)
            for (int g = 0; g < HK; g++)
                for (int64_t d = 0; d < D; d++) {
                    qattn_store(pr->kc, dt, slot(pr, 0, b, t, g) + d, (float)th_rng_normal(&rng));
                    qattn_store(pr->vc, dt, slot(pr, 1, b, t, g) + d, (float)th_rng_normal(&rng));
                }
    kv->k_cache = pr->kc, kv->v_cache = pr->vc;

    int64_t qn = B * Lq * H * D, nn = B * Sn * HK * D;
    pr->q = th_xmalloc((size_t)(qn * eb) + 4), pr->knew = th_xmalloc((size_t)(nn * eb) + 4), pr->vnew = th_xmalloc((size_t)(nn * eb) + 4);
    fill_random(pr->q, dt, qn, &rng);
    fill_random(pr->knew, dt, nn, &rng);
    fill_random(pr->vnew, dt, nn, &rng);
    p->q = pr->q;
    if (Sn) kv->k_new = pr->knew, kv->v_new = pr->vnew;
    if (oc->kv.rotary_dim) {
        int64_t rows = rotary_rows_needed(oc), half = oc->kv.rotary_dim / 2;
        pr->cos = th_xmalloc((size_t)(rows * half) * sizeof(float)), pr->sin = th_xmalloc((size_t)(rows * half) * sizeof(float));
        for (int64_t i = 0; i < rows * half; i++) {
            double angle = th_rng_uniform(&rng, 0.0, 6.283185307179586);
            pr->cos[i] = (float)cos(angle), pr->sin[i] = (float)sin(angle);
        }
        kv->rotary_cos = pr->cos, kv->rotary_sin = pr->sin, kv->rotary_len = rows, kv->rotary_dim = oc->kv.rotary_dim;
        kv->rotary_interleaved = oc->kv.rotary_interleaved;
    }
    pr->n_out = (size_t)qn, pr->n_lse = (size_t)(B * H * Lq);
    pr->o = th_xmalloc(pr->n_out * sizeof(float) + 4);
    pr->lse = th_xmalloc(pr->n_lse * sizeof(float) + 4);
    p->o = pr->o, p->lse = pr->lse;
    p->softcap = oc->softcap;
    if (oc->alibi) { /* slopes [B, H], different per sequence */
        pr->slopes = th_xmalloc((size_t)(B * H) * sizeof(float));
        for (int64_t i = 0; i < B * H; i++) pr->slopes[i] = 0.02f + 0.07f * (float)(i % H) + 0.03f * (float)(i / H);
        p->alibi_slopes = pr->slopes, p->alibi_batch_stride = H;
    }
    make_expected_cache(pr);
}

void op_kv_restore_cache(op_kv_problem *pr) {
    memcpy(pr->kc, pr->kc_before, pr->cache_bytes), memcpy(pr->vc, pr->vc_before, pr->cache_bytes);
}

void op_kv_poison_outputs(op_kv_problem *pr) {
    for (size_t i = 0; i < pr->n_out; i++) pr->o[i] = NAN;
    for (size_t i = 0; i < pr->n_lse; i++) pr->lse[i] = NAN;
}

void op_kv_oracle(const op_kv_problem *pr, double *o64, double *lse_bhq) {
    const op_case *oc = &pr->oc;
    const th_case *c = &oc->c;
    int64_t B = c->batch, HK = c->n_kv_heads, D = c->head_dim, H = c->n_heads, Lq = c->seqlen_q;
    int32_t dt = c->qkv_dtype;
    int rd = oc->kv.rotary_dim, inter = oc->kv.rotary_interleaved;
    int32_t cu_q[5], cu_k[5];
    cu_q[0] = cu_k[0] = 0;
    int64_t max_lk = 0;
    for (int b = 0; b < B; b++) {
        int64_t lk = pr->cs[b] + oc->kv.seqlen_new;
        cu_q[b + 1] = (int32_t)((b + 1) * Lq), cu_k[b + 1] = (int32_t)(cu_k[b] + lk);
        max_lk = lk > max_lk ? lk : max_lk;
    }
    int64_t tk = cu_k[B];
    float *qf = th_xmalloc((size_t)(B * Lq * H * D) * sizeof(float) + 4);
    float *kf = th_xmalloc((size_t)(tk * HK * D) * sizeof(float) + 4), *vf = th_xmalloc((size_t)(tk * HK * D) * sizeof(float) + 4);
    bool per_pos = rotates_per_position(c);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t h = 0; h < H; h++) {
                float *row = qf + ((b * Lq + i) * H + h) * D;
                int64_t qi = b * pr->p.q_batch_stride + i * pr->p.q_seq_stride + h * pr->p.q_head_stride;
                for (int64_t d = 0; d < D; d++) row[d] = qattn_load(pr->q, dt, qi + d);
                if (rd) {
                    op_kv_rotate(pr->cos, pr->sin, rd, inter, pr->cs[b] + (per_pos ? i : 0), row);
                    for (int64_t d = 0; d < D; d++) row[d] = in_dtype(dt, row[d]);
                }
            }
        for (int64_t t = 0; t < pr->cs[b] + oc->kv.seqlen_new; t++)
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
    op.causal = c->causal, op.window_left = c->window_left, op.window_right = c->window_right;
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

#if defined(QATTN_TEST_CUDA)
qattn_status op_kv_run_cuda(op_kv_problem *pr, qattn_ctx *ctx) {
    const qattn_params *p = &pr->p;
    const qattn_kvcache_params *kv = &pr->kv;
    size_t eb = (size_t)esize(p->qkv_dtype), B = (size_t)p->batch;
    size_t qn = B * (size_t)(p->seqlen_q * p->n_heads * p->head_dim), nn = B * (size_t)(kv->seqlen_new * p->n_kv_heads * p->head_dim);
    size_t rot = (size_t)(kv->rotary_len * (kv->rotary_dim / 2)) * sizeof(float);
    void *dkc = op_to_device(pr->kc, pr->cache_bytes), *dvc = op_to_device(pr->vc, pr->cache_bytes), *dq = op_to_device(pr->q, qn * eb);
    void *dkn = op_to_device(kv->k_new, nn * eb), *dvn = op_to_device(kv->v_new, nn * eb);
    void *dtab = op_to_device(pr->table, B * (size_t)pr->table_stride * sizeof(int32_t)), *dcs = op_to_device(pr->cs, B * sizeof(int32_t));
    void *dcos = op_to_device(kv->rotary_cos, rot), *dsin = op_to_device(kv->rotary_sin, rot);
    void *dsl = op_to_device(pr->slopes, B * (size_t)p->n_heads * sizeof(float));
    void *dout = op_to_device(pr->o, pr->n_out * sizeof(float)), *dlse = op_to_device(pr->lse, pr->n_lse * sizeof(float));
    qattn_params dp = *p;
    qattn_kvcache_params dkv = *kv;
    dp.q = dq, dp.o = dout, dp.lse = dlse, dp.alibi_slopes = p->alibi_slopes ? dsl : NULL;
    dkv.k_cache = dkc, dkv.v_cache = dvc, dkv.k_new = kv->k_new ? dkn : NULL, dkv.v_new = kv->v_new ? dvn : NULL;
    dkv.block_table = kv->block_table ? dtab : NULL, dkv.cache_seqlens = dcs;
    dkv.rotary_cos = kv->rotary_cos ? dcos : NULL, dkv.rotary_sin = kv->rotary_sin ? dsin : NULL;
    qattn_status s = qattn_forward_kvcache(ctx, &dp, &dkv);
    cudaDeviceSynchronize();
    cudaMemcpy(pr->kc, dkc, pr->cache_bytes, cudaMemcpyDeviceToHost), cudaMemcpy(pr->vc, dvc, pr->cache_bytes, cudaMemcpyDeviceToHost);
    cudaMemcpy(pr->o, dout, pr->n_out * sizeof(float), cudaMemcpyDeviceToHost), cudaMemcpy(pr->lse, dlse, pr->n_lse * sizeof(float), cudaMemcpyDeviceToHost);
    void *all[12] = {dkc, dvc, dq, dkn, dvn, dtab, dcs, dcos, dsin, dsl, dout, dlse};
    for (int i = 0; i < 12; i++) cudaFree(all[i]);
    return s;
}
#endif

bool op_kv_check_after(const op_kv_problem *pr, const double *o64, const char *label) {
    bool ok = TH_CHECK(memcmp(pr->kc, pr->kc_expect, pr->cache_bytes) == 0,
                       "[%s] k_cache differs from the expected contents (rotated new keys, rest unchanged)", label);
    ok &= TH_CHECK(memcmp(pr->vc, pr->vc_expect, pr->cache_bytes) == 0, "[%s] v_cache differs from the expected contents (new values, rest unchanged)",
                   label);
    size_t unwritten = 0;
    for (size_t i = 0; i < pr->n_out; i++) unwritten += isnan(pr->o[i]) && !isnan(o64[i]);
    ok &= TH_CHECK(unwritten == 0, "[%s] %zu output elements not written", label, unwritten);
    return ok;
}

void op_kv_describe(const op_case *oc, uint64_t seed, char *buf, size_t len) {
    const th_case *c = &oc->c;
    const op_kvcache *k = &oc->kv;
    char layout[32];
    if (k->page) snprintf(layout, sizeof layout, "page %d", k->page);
    else snprintf(layout, sizeof layout, "contiguous");
    snprintf(buf, len,
             "kvcache %s: B %lld Lq %lld new %d H %d HK %d D %d %s cs {%d,%d,%d} causal %d window (%d,%d) rotary %d%s %s%s softcap %g alibi %d "
             "seed=0x%016llx",
             c->name, (long long)c->batch, (long long)c->seqlen_q, k->seqlen_new, c->n_heads, c->n_kv_heads, c->head_dim, layout, k->cache_seqlens[0],
             c->batch > 1 ? k->cache_seqlens[1] : -1, c->batch > 2 ? k->cache_seqlens[2] : -1, c->causal, c->window_left, c->window_right,
             k->rotary_dim, k->rotary_dim ? (k->rotary_interleaved ? " interleaved" : " halves") : "", th_dtype_name(c->qkv_dtype),
             c->qo_bhld ? " q [B,H,L,D]" : "", (double)oc->softcap, oc->alibi, (unsigned long long)seed);
}
