/* Token-level symmetric INT8 quantization of Q, K, V (docs/FORMAT.md): per token, per block of
 * tokens, per head or per channel, with optional smoothing (mean over tokens subtracted), its
 * inverse, the default scheme's joint Q/K channel transforms (power-of-two smoothing factors and
 * a block Hadamard rotation, docs/FORMAT.md section 7), and the checks of the pre-quantized
 * forward's int8 inputs (its entry point, qattn_forward_quantized, is in src/api.c).
 * Work is split over (sequence, head) or (sequence, positions), each task independent, so results
 * do not depend on the thread count. */
#include "quant/lowp.h"

#include "cpu/threads.h"

#include <stdalign.h>

_Static_assert(sizeof(qattn_int8_tensor) == 64, "qattn_int8_tensor is 64 bytes (docs/FORMAT.md)");
_Static_assert(alignof(qattn_int8_tensor) == 8, "qattn_int8_tensor is 8-byte aligned");
_Static_assert(sizeof(qattn_int8_inputs) == 192, "qattn_int8_inputs is 192 bytes (docs/FORMAT.md)");
_Static_assert(offsetof(qattn_int8_tensor, granularity) == 24 && offsetof(qattn_int8_tensor, batch_stride) == 32,
               "qattn_int8_tensor field offsets (docs/FORMAT.md)");

/* ---------------------------------------------------------------- geometry of one tensor */

typedef struct tview {
    const void *src; /* FP source (p->q / k / v) */
    int64_t bs, ss, hs; /* p's strides for it */
    int64_t max_len;
    int32_t n_heads;
    const int32_t *cu;
} tview;

static tview view_of(const qattn_params *p, int32_t which) {
    tview v;
    v.cu = which == QATTN_TENSOR_Q ? p->cu_seqlens_q : p->cu_seqlens_k;
    v.max_len = which == QATTN_TENSOR_Q ? p->seqlen_q : p->seqlen_k;
    v.n_heads = which == QATTN_TENSOR_Q ? p->n_heads : p->n_kv_heads;
    if (which == QATTN_TENSOR_Q) {
        v.src = p->q, v.bs = p->q_batch_stride, v.ss = p->q_seq_stride, v.hs = p->q_head_stride;
    } else if (which == QATTN_TENSOR_K) {
        v.src = p->k, v.bs = p->k_batch_stride, v.ss = p->k_seq_stride, v.hs = p->k_head_stride;
    } else {
        v.src = p->v, v.bs = p->v_batch_stride, v.ss = p->v_seq_stride, v.hs = p->v_head_stride;
    }
    return v;
}

static int64_t seq_len(const tview *v, int64_t b) { return v->cu ? (int64_t)v->cu[b + 1] - v->cu[b] : v->max_len; }
static int64_t seq_tok0(const tview *v, int64_t b) { return v->cu ? v->cu[b] : b * v->max_len; }
/* Element offset of (b, pos 0) with strides (bs, ss). */
static int64_t seq_off(const tview *v, int64_t b, int64_t bs, int64_t ss) { return v->cu ? (int64_t)v->cu[b] * ss : b * bs; }

int64_t qattn_quant_scale_count(const qattn_params *p, int32_t which, int32_t granularity, int32_t block_size) {
    tview v = view_of(p, which);
    int64_t tokens = v.cu ? v.cu[p->batch] : p->batch * v.max_len;
    switch (granularity) {
    case QATTN_QUANT_PER_TOKEN: return tokens * v.n_heads;
    case QATTN_QUANT_PER_BLOCK: return p->batch * v.n_heads * ((v.max_len + block_size - 1) / block_size);
    case QATTN_QUANT_PER_HEAD: return p->batch * v.n_heads;
    default: return p->batch * v.n_heads * p->head_dim;
    }
}

qattn_status qattn_quant_check_tensor(qattn_ctx *ctx, int32_t which, int32_t granularity, int32_t block_size) {
    if (which < QATTN_TENSOR_Q || which > QATTN_TENSOR_V)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "which is %d; expected QATTN_TENSOR_Q, _K or _V (0, 1, 2)", which);
    if (granularity < QATTN_QUANT_PER_TOKEN || granularity > QATTN_QUANT_PER_CHANNEL)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "granularity %d is not a qattn_quant_granularity", granularity);
    if (granularity == QATTN_QUANT_PER_BLOCK && block_size < 1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "block_size is %d; PER_BLOCK needs >= 1 tokens per block", block_size);
    return QATTN_OK;
}

/* ---------------------------------------------------------------- quantization tasks */

typedef struct qjob {
    const qattn_params *p;
    tview v;
    qattn_int8_tensor *t;
    const qattn_int8_kernels *kern;
    int64_t *bad; /* per task: 0, or 1 + the element's (pos * D + c) of the first non-finite value */
    int64_t hper; /* heads per quant_mean_task */
    bool checked;   /* PER_TOKEN: the first phase checked finiteness */
    bool want_mean; /* PER_TOKEN first phase: compute t->mean */
    float *cmin, *cmax; /* PER_TOKEN first phase: per-channel min / max, [(b * Ht + h) * D + c], or NULL */
    const float *mul;   /* PER_TOKEN codes: row * mul[b * mul_bstride + (h / mul_group) * D + c] - mean, or NULL */
    int64_t mul_bstride, mul_group;
    bool rotate;        /* with mul: then y times pre and the block Hadamard transform (qattn_rotate_row) */
    float pre;
    int32_t scale_shift; /* PER_TOKEN codes: stored scale = (amax / cmax) * 2^scale_shift */
    float code_max;      /* cmax, the largest code: 0 = 127 (INT8); 7 for INT4's Q and K */
    int8_t *res;          /* refine_tok_task: residual codes (the layout of t->data) */
    int32_t *code_sq;     /* PER_TOKEN codes: sum of the squared codes of each row, [tok * Ht + h] (the scales' index), or NULL */
    const uint8_t *sharp; /* refine_tok_task: [B][HK] sharp units; head h belongs to kv head h / mul_group */
} qjob;

/* The code range of a job: [-cmax, cmax]. */
static inline float job_code_max(const qjob *j) { return j->code_max > 0.0f ? j->code_max : 127.0f; }

static inline float ld(const qjob *j, int64_t off, int64_t pos, int64_t c) {
    return qattn_load(j->v.src, j->p->qkv_dtype, off + pos * j->v.ss + c);
}

/* Row pos of the FP source as float: a pointer into the source for F32 (no copy), else converted
 * into dst. */
static const float *ld_row(const qjob *j, int64_t off, int64_t pos, int64_t d, float *dst) {
    int64_t base = off + pos * j->v.ss;
    if (j->p->qkv_dtype == QATTN_DTYPE_F32) return (const float *)j->v.src + base;
    for (int64_t c = 0; c < d; c++) dst[c] = qattn_load(j->v.src, j->p->qkv_dtype, base + c);
    return dst;
}

/* Prefetch the source rows of heads [h0, h1) at position pos (the next position a token-major pass
 * reads): with heads packed a token is one 4 KiB page at D 128, H 8, and the hardware prefetcher
 * does not cross pages, so without this each token's first loads wait on memory. The passes issue
 * one head's row before each row they quantize (measured: a whole token's lines at once stalled on
 * the full miss queue; one row at a time, quant Q,K 5.2 -> 4.6 ms at L 2048). */
#define PREFETCH_ROWS(j, off, pos, h0, h1)                                                                  \
    do {                                                                                                    \
        size_t esz_ = (size_t)qattn_dtype_bytes((j)->p->qkv_dtype);                                         \
        const char *base_ = (const char *)(j)->v.src + (size_t)((off) + (pos) * (j)->v.ss) * esz_;          \
        for (int64_t h_ = (h0); h_ < (h1); h_++)                                                            \
            QATTN_PREFETCH(base_ + (size_t)(h_ * (j)->v.hs) * esz_, (size_t)(j)->p->head_dim * esz_, 2); \
    } while (0)

/* First non-finite element of a row (one is known to exist). */
static int64_t first_bad(const float *row, int64_t d) {
    for (int64_t c = 0; c < d; c++)
        if (!isfinite(row[c])) return c;
    return 0;
}

/* cmax / amax, or 0 for an all-zero group: codes are clamp(nearbyint(y * inv), -127, 127), the
 * quant_row kernels' rule (x * inv with |x| <= amax cannot overflow; the clamp catches the
 * product rounding to just above 127). With cmax = 7 (INT4) |y * inv| <= 7 (1 + 2^-22), which
 * rounds to at most 7: the same kernels give codes in [-7, 7] without another clamp. */
static inline float inv_scale(float amax, float cmax) { return amax > 0.0f ? cmax / amax : 0.0f; }

static inline int8_t to_code(float y, float inv) {
    float c = nearbyintf(y * inv);
    c = c > 127.0f ? 127.0f : (c < -127.0f ? -127.0f : c);
    return (int8_t)c;
}

/* PER_BLOCK, PER_HEAD and PER_CHANNEL (PER_TOKEN: quant_tok_task, quant_mean_task): task = (b, h). */
static void quant_task(void *arg, int64_t task, int worker) {
    (void)worker;
    const qjob *j = arg;
    const qattn_params *p = j->p;
    qattn_int8_tensor *t = j->t;
    int64_t Ht = j->v.n_heads, D = p->head_dim;
    int64_t b = task / Ht, h = task % Ht;
    int64_t n = seq_len(&j->v, b), tok0 = seq_tok0(&j->v, b);
    int64_t off = seq_off(&j->v, b, j->v.bs, j->v.ss) + h * j->v.hs;
    int64_t toff = seq_off(&j->v, b, t->batch_stride, t->seq_stride) + h * t->head_stride;
    float mu_buf[256], rowbuf[256], y[256];
    double acc[256];
    for (int64_t c = 0; c < D; c++) mu_buf[c] = 0.0f, acc[c] = 0.0;
    int8_t *dst = t->data + toff;
    int32_t gran = t->granularity;

    /* non-finite check (first in (position, channel) order) and the mean, in one row-wise pass;
     * each channel's sum runs over positions in ascending order */
    for (int64_t i = 0; i < n; i++) {
        const float *row = ld_row(j, off, i, D, rowbuf);
        if (qattn_row_nonfinite(row, D)) {
            j->bad[task] = 1 + i * D + first_bad(row, D);
            return;
        }
        if (t->mean)
            for (int64_t c = 0; c < D; c++) acc[c] += row[c];
    }
    if (t->mean) {
        for (int64_t c = 0; c < D; c++) {
            mu_buf[c] = n > 0 ? (float)(acc[c] / (double)n) : 0.0f;
            t->mean[(b * Ht + h) * D + c] = mu_buf[c];
        }
    }
    const float *mu = mu_buf;
    if (gran == QATTN_QUANT_PER_BLOCK || gran == QATTN_QUANT_PER_HEAD) {
        int64_t span = gran == QATTN_QUANT_PER_BLOCK ? t->block_size : (n > 0 ? n : 1);
        if (gran == QATTN_QUANT_PER_BLOCK) { /* blocks past this sequence's end (varlen) */
            int64_t nblk = (j->v.max_len + span - 1) / span;
            for (int64_t k = 0; k < nblk; k++) t->scale[(b * Ht + h) * nblk + k] = 0.0f;
        }
        if (gran == QATTN_QUANT_PER_HEAD) t->scale[b * Ht + h] = 0.0f;
        for (int64_t i0 = 0; i0 < n; i0 += span) {
            int64_t i1 = i0 + span < n ? i0 + span : n;
            float amax = 0.0f;
            for (int64_t i = i0; i < i1; i++) {
                const float *row = ld_row(j, off, i, D, rowbuf);
                for (int64_t c = 0; c < D; c++) {
                    float a = fabsf(row[c] - mu[c]);
                    amax = a > amax ? a : amax;
                }
            }
            float inv = inv_scale(amax, job_code_max(j));
            for (int64_t i = i0; i < i1; i++) {
                const float *row = ld_row(j, off, i, D, rowbuf);
                for (int64_t c = 0; c < D; c++) y[c] = row[c] - mu[c];
                j->kern->quant_row(y, (int)D, inv, dst + i * t->seq_stride);
            }
            int64_t si = qattn_scale_index(gran, t->block_size, b, tok0 + i0, i0, h, Ht, j->v.max_len, D, 0);
            t->scale[si] = amax / job_code_max(j);
        }
    } else { /* PER_CHANNEL */
        for (int64_t c = 0; c < D; c++) {
            float amax = 0.0f;
            for (int64_t i = 0; i < n; i++) {
                float a = fabsf(ld(j, off, i, c) - mu[c]);
                amax = a > amax ? a : amax;
            }
            float inv = inv_scale(amax, 127.0f); /* V only: never INT4 */
            for (int64_t i = 0; i < n; i++) dst[i * t->seq_stride + c] = to_code(ld(j, off, i, c) - mu[c], inv);
            t->scale[(b * Ht + h) * D + c] = amax / 127.0f;
        }
    }
}

/* Token-major pass for PER_TOKEN: task = (sequence, QCHUNK positions), each position's heads in
 * memory order (one contiguous token when heads are packed), so reads stream instead of hopping a
 * token stride per row. Row y = x * f - mu (f: the smoothing factors j->mul, powers of two, or 1;
 * mu: t->mean, or 0), then the per-row codes and scale. Without a first phase (!j->checked) the
 * non-finite check runs here: bad[(b * Ht + h) * nchunk + chunk] = the first non-finite of that
 * head in the chunk. */
#define QCHUNK 32
#define QUANT_HGROUP 8

/* The row y a PER_TOKEN code pass quantizes for (sequence b, head h) from the source row, and max |y|:
 * y = row * f - mu (j->mul), then rotated (j->rotate), or row - mu. */
static float tok_row_y(const qjob *j, const float *row, int64_t b, int64_t h, const float *mu, float *y) {
    int64_t D = j->p->head_dim;
    const qattn_int8_kernels *K = j->kern; /* every slot filled (the reference where an ISA has no vector one) */
    if (j->mul) {
        const float *f = j->mul + b * j->mul_bstride + (h / j->mul_group) * D;
        if (j->rotate) {
            (void)K->scale_center_amax(row, f, mu, (int)D, y);
            return K->rotate_row(y, (int)D, j->pre);
        }
        return K->scale_center_amax(row, f, mu, (int)D, y);
    }
    return K->center_amax(row, mu, (int)D, y);
}

static const float zero_mu[256];

static void quant_tok_task(void *arg, int64_t task, int worker) {
    (void)worker;
    const qjob *j = arg;
    const qattn_params *p = j->p;
    qattn_int8_tensor *t = j->t;
    int64_t Ht = j->v.n_heads, D = p->head_dim, nchunk = (j->v.max_len + QCHUNK - 1) / QCHUNK;
    int64_t b = task / nchunk, ch = task % nchunk;
    int64_t n = seq_len(&j->v, b), tok0 = seq_tok0(&j->v, b);
    int64_t i0 = ch * QCHUNK, i1 = i0 + QCHUNK < n ? i0 + QCHUNK : n;
    int64_t off0 = seq_off(&j->v, b, j->v.bs, j->v.ss);
    int64_t toff0 = seq_off(&j->v, b, t->batch_stride, t->seq_stride);
    float rowbuf[256], cmax = job_code_max(j), smul = ldexpf(1.0f, j->scale_shift);
    for (int64_t i = i0; i < i1; i++) {
        for (int64_t h = 0; h < Ht; h++) {
            if (i + 1 < n) PREFETCH_ROWS(j, off0, i + 1, h, h + 1);
            const float *row = ld_row(j, off0 + h * j->v.hs, i, D, rowbuf);
            if (!j->checked && qattn_row_nonfinite(row, D)) {
                int64_t *slot = &j->bad[(b * Ht + h) * nchunk + ch];
                if (!*slot) *slot = 1 + i * D + first_bad(row, D);
                continue;
            }
            const float *mu = t->mean ? t->mean + (b * Ht + h) * D : zero_mu;
            const float *f = j->mul ? j->mul + b * j->mul_bstride + (h / j->mul_group) * D : NULL;
            int8_t *dst = t->data + toff0 + h * t->head_stride + i * t->seq_stride;
            /* tok_row_y, quant_row with inv_scale and the codes' sum of squares, in one kernel */
            float amax = j->kern->tok_codes(row, f, mu, (int)D, f && j->rotate ? j->pre : 0.0f, cmax, dst,
                                            j->code_sq ? &j->code_sq[(tok0 + i) * Ht + h] : NULL);
            t->scale[(tok0 + i) * Ht + h] = amax / cmax * smul; /* = ldexpf(amax / cmax, scale_shift): a power of two >= 1, exact */
        }
    }
}

/* Residual codes of the sharp units (task = (sequence, QCHUNK positions), as quant_tok_task): for
 * head h of a sharp (b, h / mul_group), the same y and inv as the code pass, u = y * inv (the
 * code pass's product), c = the stored code (rne(u), clamped), r = rne(128 (u - c)): u - c is exact
 * (|u - c| <= 1/2, c an integer near u) and so is 128 (u - c), so r is exact rounding of it;
 * |r| <= 64. Rows of other units are not touched. */
static void refine_tok_task(void *arg, int64_t task, int worker) {
    (void)worker;
    const qjob *j = arg;
    const qattn_params *p = j->p;
    const qattn_int8_tensor *t = j->t;
    int64_t Ht = j->v.n_heads, D = p->head_dim, nchunk = (j->v.max_len + QCHUNK - 1) / QCHUNK, HK = p->n_kv_heads;
    int64_t b = task / nchunk, ch = task % nchunk;
    int64_t n = seq_len(&j->v, b);
    int64_t i0 = ch * QCHUNK, i1 = i0 + QCHUNK < n ? i0 + QCHUNK : n;
    int64_t off0 = seq_off(&j->v, b, j->v.bs, j->v.ss);
    int64_t toff0 = seq_off(&j->v, b, t->batch_stride, t->seq_stride);
    float rowbuf[256], y[256];
    for (int64_t i = i0; i < i1; i++)
        for (int64_t h = 0; h < Ht; h++) {
            if (!j->sharp[b * HK + h / j->mul_group]) continue;
            const float *row = ld_row(j, off0 + h * j->v.hs, i, D, rowbuf);
            const float *mu = t->mean ? t->mean + (b * Ht + h) * D : zero_mu;
            float inv = inv_scale(tok_row_y(j, row, b, h, mu, y), 127.0f);
            int64_t at = toff0 + h * t->head_stride + i * t->seq_stride;
            for (int64_t c = 0; c < D; c++) {
                float u = y[c] * inv, r = nearbyintf(128.0f * (u - (float)t->data[at + c]));
                j->res[at + c] = (int8_t)(r > 64.0f ? 64.0f : r < -64.0f ? -64.0f : r);
            }
        }
}

/* PER_TOKEN first phase: the non-finite check, and (j->want_mean) the means into t->mean and
 * (j->cmin) the per-channel min and max into cmin / cmax [(b * Ht + h) * D + c], of the heads
 * [hg * hper, hg * hper + hper) of sequence b (task = b * ngroups + hg), token by token so that
 * the group's rows are read together; each channel's sum runs over positions in ascending order
 * (double), as quant_task's. bad[b * Ht + h]: 1 + the first non-finite (pos * D + c) of head h. */
static void quant_mean_task(void *arg, int64_t task, int worker) {
    (void)worker;
    const qjob *j = arg;
    const qattn_params *p = j->p;
    qattn_int8_tensor *t = j->t;
    int64_t Ht = j->v.n_heads, D = p->head_dim, hper = j->hper, ng = (Ht + hper - 1) / hper;
    int64_t b = task / ng, h0 = (task % ng) * hper, h1 = h0 + hper < Ht ? h0 + hper : Ht;
    int64_t n = seq_len(&j->v, b);
    int64_t off0 = seq_off(&j->v, b, j->v.bs, j->v.ss);
    float rowbuf[256];
    double acc[QUANT_HGROUP][256];
    for (int64_t h = h0; h < h1; h++)
        for (int64_t c = 0; c < D; c++) {
            acc[h - h0][c] = 0.0;
            if (j->cmin) j->cmin[(b * Ht + h) * D + c] = INFINITY, j->cmax[(b * Ht + h) * D + c] = -INFINITY;
        }
    for (int64_t i = 0; i < n; i++) {
        for (int64_t h = h0; h < h1; h++) {
            if (i + 1 < n) PREFETCH_ROWS(j, off0, i + 1, h, h + 1);
            if (j->bad[b * Ht + h]) continue;
            const float *row = ld_row(j, off0 + h * j->v.hs, i, D, rowbuf);
            float *mn = j->cmin ? j->cmin + (b * Ht + h) * D : NULL, *mx = j->cmin ? j->cmax + (b * Ht + h) * D : NULL;
            if (j->kern->stats_row(row, (int)D, j->want_mean ? acc[h - h0] : NULL, mn, mx)) /* non-finite: this head's stats are dropped */
                j->bad[b * Ht + h] = 1 + i * D + first_bad(row, D);
        }
    }
    if (j->want_mean)
        for (int64_t h = h0; h < h1; h++)
            for (int64_t c = 0; c < D; c++) t->mean[(b * Ht + h) * D + c] = n > 0 ? (float)(acc[h - h0][c] / (double)n) : 0.0f;
}

static const char *tensor_name(int32_t which) { return which == QATTN_TENSOR_Q ? "q" : which == QATTN_TENSOR_K ? "k" : "v"; }

static int nthreads(const qattn_ctx *ctx) {
    return ctx->n_threads < 1 ? 1 : (ctx->n_threads > QATTN_MAX_THREADS ? QATTN_MAX_THREADS : ctx->n_threads);
}

/* Phase 1 of a PER_TOKEN tensor (quant_mean_task over head groups); returns whether it is finite. */
static bool run_stats(qattn_ctx *ctx, qjob *j) {
    int nt = nthreads(ctx);
    int64_t B = j->p->batch, Ht = j->v.n_heads;
    /* head groups: as few as keep every thread busy, at most QUANT_HGROUP heads each */
    int64_t per = B >= nt ? Ht : Ht * B / nt;
    j->hper = per < 1 ? 1 : per > QUANT_HGROUP ? QUANT_HGROUP : per;
    int64_t ng = (Ht + j->hper - 1) / j->hper, mtasks = B * ng;
    qattn_parallel_for(ctx->pool, nt > mtasks ? (int)mtasks : nt, mtasks, quant_mean_task, j);
    for (int64_t k = 0; k < B * Ht; k++)
        if (j->bad[k]) return false;
    return true;
}

/* Phase 2 of a PER_TOKEN tensor: codes and scales (quant_tok_task). */
static void run_codes(qattn_ctx *ctx, qjob *j) {
    int nt = nthreads(ctx);
    int64_t tasks = j->p->batch * ((j->v.max_len + QCHUNK - 1) / QCHUNK);
    if (nt > tasks) nt = (int)(tasks > 0 ? tasks : 1);
    if (tasks > 0) qattn_parallel_for(ctx->pool, nt, tasks, quant_tok_task, j);
}

/* bad[] -> the status naming the first non-finite input (sequences, then heads, ascending);
 * nchunk > 1: per-chunk slots (positions ascend with the chunk). */
static qattn_status report_bad(qattn_ctx *ctx, const qjob *j, int32_t which, int64_t nchunk) {
    int64_t tasks = j->p->batch * j->v.n_heads, D = j->p->head_dim;
    for (int64_t k = 0; k < tasks; k++) {
        int64_t first = 0;
        for (int64_t c = 0; c < nchunk && !first; c++) first = j->bad[k * nchunk + c];
        if (first) {
            int64_t e = first - 1;
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                              "%s has a non-finite value at (sequence %lld, position %lld, head %lld, channel %lld): INT8 quantization "
                              "needs finite inputs",
                              tensor_name(which), (long long)(k / j->v.n_heads), (long long)(e / D), (long long)(k % j->v.n_heads),
                              (long long)(e % D));
        }
    }
    return QATTN_OK;
}

qattn_status qattn_quantize_tensor(qattn_ctx *ctx, const qattn_params *p, int32_t which, qattn_int8_tensor *t) {
    return qattn_quantize_tensor_codes(ctx, p, which, t, 127);
}

qattn_status qattn_quantize_tensor_codes(qattn_ctx *ctx, const qattn_params *p, int32_t which, qattn_int8_tensor *t, int32_t code_max) {
    qjob j = {.p = p, .v = view_of(p, which), .t = t, .kern = ctx->kernels->int8, .code_max = (float)code_max};
    int64_t tasks = p->batch * j.v.n_heads;
    if (tasks == 0) return QATTN_OK;
    bool tok_major = t->granularity == QATTN_QUANT_PER_TOKEN;
    bool two_phase = tok_major && t->mean; /* means first (quant_mean_task), then the codes */
    int64_t nchunk = tok_major && !two_phase ? (j.v.max_len + QCHUNK - 1) / QCHUNK : 1;
    size_t nbad = (size_t)(tasks * nchunk);
    j.bad = qattn_alloc(ctx, nbad * sizeof(int64_t));
    if (!j.bad) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes", nbad * 8);
    memset(j.bad, 0, nbad * sizeof(int64_t));
    if (tok_major) {
        j.want_mean = two_phase;
        j.checked = two_phase;
        if (!two_phase || run_stats(ctx, &j)) run_codes(ctx, &j);
    } else {
        int nt = nthreads(ctx);
        if (nt > tasks) nt = (int)tasks;
        qattn_parallel_for(ctx->pool, nt, tasks, quant_task, &j);
    }
    qattn_status s = report_bad(ctx, &j, which, nchunk);
    qattn_free(ctx, j.bad);
    return s;
}

qattn_status qattn_quantize_tensor_fixed_mean(qattn_ctx *ctx, const qattn_params *p, int32_t which, qattn_int8_tensor *t) {
    qjob j = {.p = p, .v = view_of(p, which), .t = t, .kern = ctx->kernels->int8};
    int64_t nchunk = (j.v.max_len + QCHUNK - 1) / QCHUNK;
    size_t nbad = (size_t)(p->batch * j.v.n_heads * nchunk);
    if (nbad == 0) return QATTN_OK;
    j.bad = qattn_alloc(ctx, nbad * sizeof(int64_t));
    if (!j.bad) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes", nbad * 8);
    memset(j.bad, 0, nbad * sizeof(int64_t));
    run_codes(ctx, &j);
    qattn_status s = report_bad(ctx, &j, which, nchunk);
    qattn_free(ctx, j.bad);
    return s;
}

/* ---------------------------------------------------------------- sharp units (docs/FORMAT.md section 7)
 * Predicted noise of the scaled logits scale * q~ . k~ of unit (b, g), from the codes and scales
 * alone (q~ = sq c_q, k~ = sk c_k, the dequantized rows in the codes' domain; their dot product is
 * q . k minus the per-row K-mean shift). Rounding leaves an error e of variance 1/12 per code
 * (uniform on [-1/2, 1/2], independent), so
 *     scale (q~ . k~ - q . k) ~= scale (sq e_q . k~ + sk q~ . e_k)
 * has variance scale^2 / 12 (sq^2 |k~|^2 + sk^2 |q~|^2); averaged over the unit's rows i and keys j:
 *     sigma^2 = scale^2 / 12 (mean_i sq_i^2 * mean_j sk_j^2 |c_kj|^2 + mean_j sk_j^2 * mean_i sq_i^2 |c_qi|^2).
 * Every sum runs in double in a fixed order (positions ascending, heads ascending) in one task per
 * (b, g): the same sigma for any thread count and ISA (integer |c|^2, IEEE double). */
typedef struct noise_job {
    const qattn_params *p;
    const qattn_int8_tensor *tq, *tk;
    const qattn_qk_refine *rf;
    const int32_t *sq_q, *sq_k; /* the rows' sums of squared codes (the code pass's code_sq), scale-indexed */
} noise_job;

static void noise_task(void *arg, int64_t task, int worker) {
    (void)worker;
    const noise_job *nj = arg;
    const qattn_params *p = nj->p;
    const qattn_int8_tensor *tq = nj->tq, *tk = nj->tk;
    int64_t H = p->n_heads, HK = p->n_kv_heads, G = H / HK, b = task / HK, g = task % HK;
    tview vq = view_of(p, QATTN_TENSOR_Q), vk = view_of(p, QATTN_TENSOR_K);
    int64_t nq = seq_len(&vq, b), nk = seq_len(&vk, b), q0 = seq_tok0(&vq, b), k0 = seq_tok0(&vk, b);
    double aq = 0, cq = 0, ak = 0, ck = 0;
    for (int64_t i = 0; i < nq; i++)
        for (int64_t h = g * G; h < (g + 1) * G; h++) {
            double s2 = (double)tq->scale[(q0 + i) * H + h] * tq->scale[(q0 + i) * H + h];
            aq += s2, cq += s2 * nj->sq_q[(q0 + i) * H + h];
        }
    for (int64_t i = 0; i < nk; i++) {
        double s2 = (double)tk->scale[(k0 + i) * HK + g] * tk->scale[(k0 + i) * HK + g];
        ak += s2, ck += s2 * nj->sq_k[(k0 + i) * HK + g];
    }
    double sigma = 0.0;
    if (nq > 0 && nk > 0) {
        double rows = (double)(nq * G), sc = nj->rf->scale;
        sigma = sqrt(sc * sc / 12.0 * ((aq / rows) * (ck / (double)nk) + (ak / (double)nk) * (cq / rows)));
    }
    if (nj->rf->sigma) nj->rf->sigma[task] = (float)sigma;
    nj->rf->sharp[task] = sigma > (double)nj->rf->noise;
}

/* sigma and the sharp flags of every (b, g), then the residual codes of the sharp units. */
static void refine_units(qattn_ctx *ctx, const qattn_params *p, qjob *jq, qjob *jk, const qattn_qk_refine *rf) {
    int nt = nthreads(ctx);
    int64_t units = p->batch * p->n_kv_heads;
    noise_job nj = {p, jq->t, jk->t, rf, jq->code_sq, jk->code_sq};
    qattn_parallel_for(ctx->pool, nt > units ? (int)units : nt, units, noise_task, &nj);
    bool any = false;
    for (int64_t u = 0; u < units; u++) any |= rf->sharp[u] != 0;
    if (!any) return;
    qjob *js[2] = {jq, jk};
    int8_t *res[2] = {rf->q_res, rf->k_res};
    for (int w = 0; w < 2; w++) {
        qjob *j = js[w];
        j->res = res[w], j->sharp = rf->sharp;
        int64_t tasks = p->batch * ((j->v.max_len + QCHUNK - 1) / QCHUNK);
        if (tasks > 0) qattn_parallel_for(ctx->pool, nt > tasks ? (int)tasks : nt, tasks, refine_tok_task, j);
    }
}

int32_t qattn_qk_smooth_exp(float qa, float ka, int32_t max_exp, int32_t min_exp) {
    if (!(isnormal(qa) && isnormal(ka)) || qa > 0x1p100f || ka > 0x1p100f) return 0; /* no overflow in q * f, k / f */
    float r = ka / qa;
    if (!isnormal(r)) return 0;
    int32_t n = ilogbf(r);           /* floor(log2 r), exact */
    int32_t e = n >= 0 ? (n + 1) / 2 : -((-n) / 2); /* ceil(n / 2) */
    if (e > max_exp) e = max_exp;
    if (e < -max_exp) e = -max_exp;
    if (e < min_exp && e > -min_exp) e = 0;
    return e;
}

qattn_status qattn_quantize_qk_smoothed(qattn_ctx *ctx, const qattn_params *p, int32_t max_exp, int32_t min_exp, int32_t rotate,
                                        int32_t code_max, const qattn_qk_static *stat, qattn_int8_tensor *tq, qattn_int8_tensor *tk,
                                        float *factor_out, const qattn_qk_refine *rf) {
    int64_t B = p->batch, H = p->n_heads, HK = p->n_kv_heads, D = p->head_dim, group = H / HK;
    if (B == 0) return QATTN_OK;
    qjob jq = {.p = p, .v = view_of(p, QATTN_TENSOR_Q), .t = tq, .kern = ctx->kernels->int8, .code_max = (float)code_max};
    qjob jk = {.p = p, .v = view_of(p, QATTN_TENSOR_K), .t = tk, .kern = ctx->kernels->int8, .code_max = (float)code_max};
    int64_t nchunk_q = (jq.v.max_len + QCHUNK - 1) / QCHUNK, nchunk_k = (jk.v.max_len + QCHUNK - 1) / QCHUNK;
    bool dyn = stat == NULL;
    /* one allocation: bad flags of Q and K, factors (dynamic: [B][HK][D]; static: [HK][D]) and,
     * dynamic, Q's and K's channel min/max */
    size_t nfac = (size_t)((dyn ? B : 1) * HK * D);
    size_t nbq = (size_t)(B * H * (dyn ? 1 : nchunk_q)), nbk = (size_t)(B * HK * (dyn ? 1 : nchunk_k));
    size_t nst = dyn ? (size_t)(2 * B * H * D + 2 * B * HK * D) : 0;
    bool want_sq = rf && code_max == 127; /* the sharp-unit noise model reads the rows' sums of squared codes */
    size_t nsq = want_sq ? (size_t)(qattn_quant_scale_count(p, QATTN_TENSOR_Q, QATTN_QUANT_PER_TOKEN, 1) +
                                    qattn_quant_scale_count(p, QATTN_TENSOR_K, QATTN_QUANT_PER_TOKEN, 1))
                         : 0;
    size_t bytes = (nbq + nbk) * sizeof(int64_t) + (nfac + nst) * sizeof(float) + nsq * sizeof(int32_t);
    unsigned char *mem = qattn_alloc(ctx, bytes);
    if (!mem) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes", bytes);
    memset(mem, 0, (nbq + nbk) * sizeof(int64_t));
    jq.bad = (int64_t *)(void *)mem, jk.bad = jq.bad + nbq;
    float *fac = (float *)(void *)(jk.bad + nbk), *st = fac + nfac;
    if (want_sq) {
        jq.code_sq = (int32_t *)(void *)(st + nst);
        jk.code_sq = jq.code_sq + qattn_quant_scale_count(p, QATTN_TENSOR_Q, QATTN_QUANT_PER_TOKEN, 1);
    }
    qattn_status s = QATTN_OK;
    if (dyn) {
        jq.cmin = st, jq.cmax = st + B * H * D;
        jk.cmin = st + 2 * B * H * D, jk.cmax = jk.cmin + B * HK * D;
        jk.want_mean = true;
        jq.checked = jk.checked = true;
        bool ok = run_stats(ctx, &jq);
        if (ok) ok = run_stats(ctx, &jk);
        if (!ok) {
            s = report_bad(ctx, &jq, QATTN_TENSOR_Q, 1);
            if (s == QATTN_OK) s = report_bad(ctx, &jk, QATTN_TENSOR_K, 1);
            qattn_free(ctx, mem);
            return s;
        }
        /* factor per (b, g, c): Q's range over the group's heads, K's about its mean; K's mean
         * moves into the smoothed domain (mu / f, exact) */
        for (int64_t b = 0; b < B; b++)
            for (int64_t g = 0; g < HK; g++)
                for (int64_t c = 0; c < D; c++) {
                    float qa = 0.0f;
                    for (int64_t h = g * group; h < (g + 1) * group; h++) {
                        int64_t i = (b * H + h) * D + c;
                        float a = jq.cmax[i] > -jq.cmin[i] ? jq.cmax[i] : -jq.cmin[i];
                        qa = a > qa ? a : qa; /* n = 0: -inf max, 0 stays */
                    }
                    int64_t i = (b * HK + g) * D + c;
                    float mu = tk->mean[i];
                    float hi = jk.cmax[i] - mu, lo = mu - jk.cmin[i];
                    float ka = hi > lo ? hi : lo;
                    if (!(ka > 0.0f)) ka = 0.0f;
                    int32_t e = qattn_qk_smooth_exp(qa, ka, max_exp, min_exp);
                    fac[i] = ldexpf(1.0f, e);
                    tk->mean[i] = mu * ldexpf(1.0f, -e);
                    if (factor_out) factor_out[i] = fac[i];
                }
    } else {
        for (int64_t i = 0; i < HK * D; i++) fac[i] = stat->k_factor[i];
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < HK * D; i++) tk->mean[b * HK * D + i] = stat->k_mean[i] / fac[i];
    }
    /* codes: Q rows times f (of their kv head), K rows times 1 / f minus mu / f */
    jq.mul = fac, jq.mul_bstride = dyn ? HK * D : 0, jq.mul_group = group;
    jq.t = tq;
    float *inv = NULL;
    size_t ninv = nfac * sizeof(float);
    inv = qattn_alloc(ctx, ninv);
    if (!inv) {
        qattn_free(ctx, mem);
        return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes", ninv);
    }
    for (size_t i = 0; i < nfac; i++) inv[i] = 1.0f / fac[i]; /* powers of two: exact */
    jk.mul = inv, jk.mul_bstride = jq.mul_bstride, jk.mul_group = 1;
    /* rotated rows are H(y / n): never above max |y| (no overflow); Q's scales carry the n back */
    int nb = qattn_rotate_block((int)D);
    jq.rotate = jk.rotate = rotate != 0;
    jq.pre = jk.pre = 1.0f / (float)nb;
    jq.scale_shift = rotate ? ilogb((float)nb) : 0;
    run_codes(ctx, &jq);
    run_codes(ctx, &jk);
    if (!dyn) {
        s = report_bad(ctx, &jq, QATTN_TENSOR_Q, nchunk_q);
        if (s == QATTN_OK) s = report_bad(ctx, &jk, QATTN_TENSOR_K, nchunk_k);
    }
    /* sharp units: before the mean turns into the rotated domain (the residual pass re-forms y) */
    if (s == QATTN_OK && rf && code_max == 127) refine_units(ctx, p, &jq, &jk, rf);
    if (rotate) /* the driver's mean is in K's codes' domain: H(mu / f / n) */
        for (int64_t i = 0; i < B * HK; i++) (void)qattn_rotate_row(tk->mean + i * D, (int)D, jk.pre);
    qattn_free(ctx, inv);
    qattn_free(ctx, mem);
    return s;
}

/* ---------------------------------------------------------------- public functions */

static qattn_status check_int8_tensor(qattn_ctx *ctx, const qattn_params *p, int32_t which, const qattn_int8_tensor *t,
                                      bool need_data) {
    if (!t) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "the int8 tensor for %s is NULL", tensor_name(which));
    qattn_status s = qattn_quant_check_tensor(ctx, which, t->granularity, t->block_size);
    if (s != QATTN_OK) return s;
    if (t->reserved != 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: the int8 tensor's reserved field is %lld; it must be 0", tensor_name(which),
                          (long long)t->reserved);
    if (p->batch == 0) return QATTN_OK;
    if (need_data && (!t->data || !t->scale))
        return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: int8 data or scale is NULL", tensor_name(which));
    if (t->batch_stride < 0 || t->seq_stride < 0 || t->head_stride < 0)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: int8 strides must be >= 0 (batch %lld, seq %lld, head %lld)",
                          tensor_name(which), (long long)t->batch_stride, (long long)t->seq_stride, (long long)t->head_stride);
    return QATTN_OK;
}

/* Validates p for a quantization call: the FP tensor `which` must be given; o is not needed. */
static qattn_status begin_quant(qattn_ctx *ctx, const qattn_params *p, int32_t which) {
    if (!p) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "params is NULL");
    if (ctx->backend != QATTN_BACKEND_CPU)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "INT8 quantization runs on the CPU backend (host pointers) only");
    qattn_params pc = *p;
    static const float dummy[1];
    if (!pc.o) pc.o = (void *)dummy, pc.o_batch_stride = pc.o_seq_stride = pc.o_head_stride = 0;
    if (pc.o == (void *)dummy) { /* strides of an absent o are irrelevant: make them valid */
        pc.o_head_stride = pc.head_dim, pc.o_seq_stride = (int64_t)pc.n_heads * pc.head_dim;
        pc.o_batch_stride = pc.seqlen_q * pc.o_seq_stride;
    }
    if (!pc.q && which != QATTN_TENSOR_Q) pc.q = dummy;
    if (!pc.k && which != QATTN_TENSOR_K) pc.k = dummy;
    if (!pc.v && which != QATTN_TENSOR_V) pc.v = dummy;
    return qattn_validate(ctx, &pc, true);
}

qattn_status qattn_int8_scale_count(qattn_ctx *ctx, const qattn_params *p, int32_t which, int32_t granularity, int32_t block_size,
                                    int64_t *count) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    if (!count) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "count is NULL");
    *count = 0;
    qattn_status s = qattn_quant_check_tensor(ctx, which, granularity, block_size);
    if (s == QATTN_OK) s = begin_quant(ctx, p, which);
    if (s != QATTN_OK) return s;
    *count = qattn_quant_scale_count(p, which, granularity, block_size);
    return QATTN_OK;
}

qattn_status qattn_quantize_int8(qattn_ctx *ctx, const qattn_params *p, int32_t which, qattn_int8_tensor *t) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    qattn_status s = qattn_quant_check_tensor(ctx, which, t ? t->granularity : 0, t ? t->block_size : 1);
    if (s == QATTN_OK) s = begin_quant(ctx, p, which);
    if (s == QATTN_OK) s = check_int8_tensor(ctx, p, which, t, true);
    if (s != QATTN_OK || p->batch == 0) return s;
    return qattn_quantize_tensor(ctx, p, which, t);
}

qattn_status qattn_dequantize_int8(qattn_ctx *ctx, const qattn_params *p, int32_t which, const qattn_int8_tensor *t, float *out) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    qattn_status s = qattn_quant_check_tensor(ctx, which, t ? t->granularity : 0, t ? t->block_size : 1);
    if (s == QATTN_OK) s = begin_quant(ctx, p, which);
    if (s == QATTN_OK) s = check_int8_tensor(ctx, p, which, t, true);
    if (s != QATTN_OK || p->batch == 0) return s;
    if (!out) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "out is NULL");
    tview v = view_of(p, which);
    int64_t D = p->head_dim;
    for (int64_t b = 0; b < p->batch; b++) {
        int64_t n = seq_len(&v, b), tok0 = seq_tok0(&v, b);
        for (int64_t h = 0; h < v.n_heads; h++) {
            int64_t off = seq_off(&v, b, v.bs, v.ss) + h * v.hs;
            int64_t toff = seq_off(&v, b, t->batch_stride, t->seq_stride) + h * t->head_stride;
            for (int64_t i = 0; i < n; i++)
                for (int64_t c = 0; c < D; c++) {
                    int8_t code = t->data[toff + i * t->seq_stride + c];
                    if (code == -128) code = -127;
                    float sc = t->scale[qattn_scale_index(t->granularity, t->block_size, b, tok0 + i, i, h, v.n_heads, v.max_len, D, c)];
                    float mu = t->mean ? t->mean[(b * v.n_heads + h) * D + c] : 0.0f;
                    out[off + i * v.ss + c] = (float)code * sc + mu;
                }
        }
    }
    return QATTN_OK;
}

/* Scales finite and >= 0, means finite. */
static qattn_status check_scales(qattn_ctx *ctx, const qattn_params *p, int32_t which, const qattn_int8_tensor *t) {
    int64_t n = qattn_quant_scale_count(p, which, t->granularity, t->block_size);
    for (int64_t i = 0; i < n; i++)
        if (!(t->scale[i] >= 0.0f) || !isfinite(t->scale[i]))
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: scale[%lld] is %g; scales must be finite and >= 0", tensor_name(which),
                              (long long)i, (double)t->scale[i]);
    if (t->mean) {
        tview v = view_of(p, which);
        int64_t nm = p->batch * v.n_heads * p->head_dim;
        for (int64_t i = 0; i < nm; i++)
            if (!isfinite(t->mean[i]))
                return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: mean[%lld] is %g; means must be finite", tensor_name(which),
                                  (long long)i, (double)t->mean[i]);
    }
    return QATTN_OK;
}

qattn_status qattn_check_int8_inputs(qattn_ctx *ctx, const qattn_params *p, const qattn_int8_inputs *qi, int32_t p_mode) {
    qattn_status s;
    const qattn_int8_tensor *ts[3] = {&qi->q, &qi->k, &qi->v};
    for (int32_t w = 0; w < 3; w++) {
        s = check_int8_tensor(ctx, p, w, ts[w], true);
        if (s != QATTN_OK) return s;
    }
    if (qi->q.granularity == QATTN_QUANT_PER_CHANNEL || qi->k.granularity == QATTN_QUANT_PER_CHANNEL)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "q and k scales cannot be PER_CHANNEL: integer Q K^T sums over channels");
    if (qi->q.mean)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "q smoothing (q.mean) would change the softmax; give q.mean = NULL");
    if (p_mode != QATTN_P_FP32 && p_mode != QATTN_P_U8_VSCALED && qi->v.granularity != QATTN_QUANT_PER_HEAD &&
        qi->v.granularity != QATTN_QUANT_PER_CHANNEL)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED,
                          "v scales must be PER_HEAD or PER_CHANNEL for integer P V (scheme sage accepts any v granularity)");
    for (int32_t w = 0; w < 3; w++) {
        s = check_scales(ctx, p, w, ts[w]);
        if (s != QATTN_OK) return s;
    }
    return QATTN_OK;
}
