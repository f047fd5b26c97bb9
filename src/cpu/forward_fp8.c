/* CPU driver of emulated FP8 attention (precision FP8_E4M3 / FP8_E5M2), for accuracy
 * comparisons only; qattn_cpu_forward_lowp (src/cpu/forward_lowp.c) hands FP8 precisions here.
 * Q, K and V are copied to FP32 (contiguous [tokens][heads][D], in the workspace) and rounded to
 * FP8 with one scale per tensor; then each (sequence, head, block of FP8_ROWS query rows) is one
 * task on the pool: per row, the visible keys in tiles of at most QATTN_FP8_TILE keys, cut at the
 * block mask's key blocks (hidden blocks skipped), each tile through the reference kernel
 * qattn_fp8_attend_row_tile (src/ref/fp8_ref.c); then the row is normalized and stored with its
 * LSE. The split depends on the shape only, so results do not depend on the thread count. */
#include "quant/lowp.h"

#include "cpu/threads.h"

#include <float.h>
#include <stdatomic.h>

typedef struct fjob {
    const qattn_params *p;
    float *q, *k, *v; /* rounded copies, contiguous [tokens][heads][D] */
    float (*rnd)(float);
    atomic_int overflow; /* a row's scaled scores overflowed float32 (the inputs are finite here) */
} fjob;

#define FP8_ROWS 16

static int64_t tokens_of(const qattn_params *p, bool isq) {
    const int32_t *cu = isq ? p->cu_seqlens_q : p->cu_seqlens_k;
    return cu ? cu[p->batch] : p->batch * (isq ? p->seqlen_q : p->seqlen_k);
}

/* Copies tensor which into dst (contiguous), returning its amax in *amax, or the first
 * non-finite value's flat index in *bad (-1 if none). */
static void gather(const qattn_params *p, int which, float *dst, float *amax, int64_t *bad) {
    bool isq = which == 0;
    const void *src = which == 0 ? p->q : which == 1 ? p->k : p->v;
    int64_t ss = which == 0 ? p->q_seq_stride : which == 1 ? p->k_seq_stride : p->v_seq_stride;
    int64_t hs = which == 0 ? p->q_head_stride : which == 1 ? p->k_head_stride : p->v_head_stride;
    int64_t heads = isq ? p->n_heads : p->n_kv_heads, D = p->head_dim;
    float mx = 0.0f;
    *bad = -1;
    int64_t row = 0;
    for (int64_t b = 0; b < p->batch; b++) {
        qattn_seq s = qattn_seq_view(p, b);
        int64_t off = which == 0 ? s.q_off : which == 1 ? s.k_off : s.v_off, n = isq ? s.lq : s.lk;
        for (int64_t i = 0; i < n; i++, row++)
            for (int64_t h = 0; h < heads; h++)
                for (int64_t c = 0; c < D; c++) {
                    float x = qattn_load(src, p->qkv_dtype, off + i * ss + h * hs + c);
                    if (!isfinite(x) && *bad < 0) *bad = (row * heads + h) * D + c;
                    float a = fabsf(x);
                    mx = a > mx ? a : mx;
                    dst[(row * heads + h) * D + c] = x;
                }
    }
    *amax = mx;
}

static void fp8_task(void *arg, int64_t task, int worker) {
    (void)worker;
    const fjob *j = arg;
    const qattn_params *p = j->p;
    int64_t H = p->n_heads, HK = p->n_kv_heads, D = p->head_dim, group = H / HK;
    int64_t nblk = (p->seqlen_q + FP8_ROWS - 1) / FP8_ROWS;
    int64_t blk = task % nblk, h = (task / nblk) % H, b = task / nblk / H;
    qattn_seq s = qattn_seq_view(p, b);
    int64_t q0 = p->cu_seqlens_q ? p->cu_seqlens_q[b] : b * p->seqlen_q;
    int64_t k0 = p->cu_seqlens_k ? p->cu_seqlens_k[b] : b * p->seqlen_k;
    int64_t g = h / group;
    float qs = qattn_effective_scale(p) * 1.4426950408889634f;
    float acc[256];
    for (int64_t i = blk * FP8_ROWS; i < s.lq && i < (blk + 1) * FP8_ROWS; i++) {
        const float *q = j->q + ((q0 + i) * H + h) * D;
        int64_t lo, hi;
        qattn_key_range(i, s.lq, s.lk, p->window_left, qattn_window_right(p), &lo, &hi);
        float m = -INFINITY, l = 0.0f;
        for (int64_t c = 0; c < D; c++) acc[c] = 0.0f;
        for (int64_t t0 = lo, n; t0 < hi; t0 += n) {
            int64_t end = hi; /* a tile stays inside one key block of the block mask; hidden blocks are skipped */
            if (p->block_mask) {
                int64_t bk = p->block_mask_k, next = (t0 / bk + 1) * bk;
                if (!qattn_block_mask_allows(p, b, (int)h, i, t0)) {
                    n = (next < hi ? next : hi) - t0;
                    continue;
                }
                if (next < end) end = next;
            }
            n = end - t0 < QATTN_FP8_TILE ? end - t0 : QATTN_FP8_TILE;
            int64_t kv = ((k0 + t0) * HK + g) * D; /* key t0 + jj at kv + jj * HK * D */
            qattn_fp8_attend_row_tile(q, j->k + kv, j->v + kv, HK * D, D, n, qs, j->rnd, &m, &l, acc);
        }
        int64_t ob = s.o_off + i * p->o_seq_stride + h * p->o_head_stride;
        bool empty = m == -INFINITY;
        if (!empty && !(isfinite(l) && isfinite(m))) atomic_store((atomic_int *)&j->overflow, 1);
        for (int64_t c = 0; c < D; c++) qattn_store(p->o, p->o_dtype, ob + c, empty ? 0.0f : acc[c] / l);
        if (p->lse) p->lse[s.lse_off + h * s.lse_head_stride + i] = empty ? -INFINITY : (m + log2f(l)) * 0.6931471805599453f;
    }
}

qattn_status qattn_cpu_forward_fp8(qattn_ctx *ctx, const qattn_params *p) {
    bool e4m3 = p->precision == QATTN_PRECISION_FP8_E4M3;
    float maxv = e4m3 ? 448.0f : 57344.0f;
    int64_t tq = tokens_of(p, true), tk = tokens_of(p, false), D = p->head_dim;
    size_t nq = (size_t)(tq * p->n_heads * D), nk = (size_t)(tk * p->n_kv_heads * D);
    size_t need = (nq + 2 * nk) * sizeof(float);
    if (need == 0) return QATTN_OK;
    float *mem = p->workspace;
    if (mem) {
        if (p->workspace_size < need)
            return qattn_fail(ctx, QATTN_ERR_CAPACITY, "workspace has %zu bytes; FP8 emulation needs %zu", p->workspace_size, need);
    } else {
        mem = qattn_alloc(ctx, need);
        if (!mem) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of workspace", need);
    }
    fjob j = {.p = p, .q = mem, .k = mem + nq, .v = mem + nq + nk, .rnd = e4m3 ? qattn_round_fp8_e4m3 : qattn_round_fp8_e5m2};
    float *bufs[3] = {j.q, j.k, j.v};
    qattn_status s = QATTN_OK;
    for (int w = 0; w < 3; w++) {
        float amax;
        int64_t bad;
        gather(p, w, bufs[w], &amax, &bad);
        if (bad >= 0) {
            s = qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s has a non-finite value (packed element %lld): FP8 emulation needs finite inputs",
                           w == 0 ? "q" : w == 1 ? "k" : "v", (long long)bad);
            break;
        }
        qattn_fp8_round_scaled(bufs[w], w == 0 ? (int64_t)nq : (int64_t)nk, amax, maxv, j.rnd);
    }
    if (s == QATTN_OK) {
        int64_t tasks = p->batch * p->n_heads * ((p->seqlen_q + FP8_ROWS - 1) / FP8_ROWS);
        int nt = ctx->n_threads < 1 ? 1 : (ctx->n_threads > QATTN_MAX_THREADS ? QATTN_MAX_THREADS : ctx->n_threads);
        atomic_init(&j.overflow, 0);
        if (tasks > 0) qattn_parallel_for(ctx->pool, nt, tasks, fp8_task, &j);
        if (atomic_load(&j.overflow))
            s = qattn_fail(ctx, QATTN_ERR_OVERFLOW, "scale %g: scaled scores overflow float32 although the inputs are finite "
                           "(|scale * q.k| must stay well below %g); scale the inputs or the scale down",
                           (double)qattn_effective_scale(p), (double)(FLT_MAX / 1.4426950408889634));
    }
    if (mem != p->workspace) qattn_free(ctx, mem);
    return s;
}
