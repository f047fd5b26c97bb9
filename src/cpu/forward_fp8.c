/* CPU driver of emulated FP8 attention (precision FP8_E4M3 / FP8_E5M2), for accuracy
 * comparisons only; qattn_cpu_forward_lowp (src/cpu/forward_lowp.c) hands FP8 precisions here.
 * Q, K and V are copied to FP32 (contiguous [tokens][heads][D], in the workspace) and rounded to
 * FP8 with one scale per tensor; then the work units of src/cpu/units.c run on the pool, as in the
 * FP and INT8 drivers: unit = (sequence, kv head, block of query positions), its rows all query
 * heads of the group at those positions (FP8_BLOCK_ROWS rows; one position's when a group has more
 * heads), handed out in the plan's order.
 * Each row: its visible keys in tiles of at most QATTN_FP8_TILE keys from its first visible key,
 * cut at the block mask's key blocks (hidden blocks skipped), each tile through the reference
 * kernel qattn_fp8_attend_row_tile (src/ref/fp8_ref.c); then the row is normalized and stored
 * with its LSE. The KV axis is never split (qattn_units_plan_unsplit): the emulation rounds
 * P = exp2(s - m) to FP8 against the row's running max m, which depends on where the row's tiles
 * start and on every key before them, so a split's partial (its own max, then qattn_state_merge's
 * rescale of rounded values) would change the result. Each row is computed whole, by one task, in
 * the same order whatever the unit's size or the thread count: results do not depend on either. */
#include "quant/lowp.h"

#include "cpu/threads.h"
#include "cpu/units.h"

#include <float.h>
#include <stdatomic.h>

typedef struct fjob {
    const qattn_params *p;
    qattn_units units; /* the work units and their hand-out order (src/cpu/units.h) */
    float *q, *k, *v;  /* rounded copies, contiguous [tokens][heads][D] */
    float (*rnd)(float);
    atomic_int overflow; /* a row's scaled scores overflowed float32 (the inputs are finite here) */
} fjob;

#define FP8_BLOCK_ROWS 16 /* query rows (positions x group heads) per unit */

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

/* Query row i of head h of sequence b: every visible key, then O and LSE. */
static void fp8_row(const fjob *j, int64_t b, const qattn_seq *s, int64_t i, int64_t h) {
    const qattn_params *p = j->p;
    int64_t H = p->n_heads, HK = p->n_kv_heads, D = p->head_dim;
    int64_t q0 = p->cu_seqlens_q ? p->cu_seqlens_q[b] : b * p->seqlen_q;
    int64_t k0 = p->cu_seqlens_k ? p->cu_seqlens_k[b] : b * p->seqlen_k;
    int64_t g = h / j->units.group;
    float qs = qattn_effective_scale(p) * 1.4426950408889634f;
    float acc[256];
    const float *q = j->q + ((q0 + i) * H + h) * D;
    int64_t lo, hi;
    qattn_key_range(i, s->lq, s->lk, p->window_left, qattn_window_right(p), &lo, &hi);
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
    int64_t ob = s->o_off + i * p->o_seq_stride + h * p->o_head_stride;
    bool empty = m == -INFINITY;
    if (!empty && !(isfinite(l) && isfinite(m))) atomic_store((atomic_int *)&j->overflow, 1);
    for (int64_t c = 0; c < D; c++) qattn_store(p->o, p->o_dtype, ob + c, empty ? 0.0f : acc[c] / l);
    if (p->lse) p->lse[s->lse_off + h * s->lse_head_stride + i] = empty ? -INFINITY : (m + log2f(l)) * 0.6931471805599453f;
}

/* One unit: its rows (positions i0 .. i0 + n_pos - 1, the query heads of kv head u.g), each whole. */
static void fp8_unit(void *arg, int64_t task, int worker) {
    (void)worker;
    const fjob *j = arg;
    qattn_unit u = qattn_unit_of(&j->units, qattn_units_task(&j->units, task));
    qattn_seq s = qattn_seq_view(j->p, u.b);
    int64_t i0;
    int n_pos = qattn_unit_positions(&j->units, &u, s.lq, &i0);
    for (int pi = 0; pi < n_pos; pi++)
        for (int hg = 0; hg < j->units.group; hg++) fp8_row(j, u.b, &s, i0 + pi, (int64_t)u.g * j->units.group + hg);
}

/* Floats of the rounded copies of Q, K and V. */
static size_t copies_floats(const qattn_params *p) {
    int64_t tq = tokens_of(p, true), tk = tokens_of(p, false);
    return (size_t)(tq * p->n_heads + 2 * tk * p->n_kv_heads) * (size_t)p->head_dim;
}

/* Workspace: the units' hand-out order (qattn_units_workspace), then the copies of Q, K, V. */
static size_t fp8_bytes(const qattn_units *u, const qattn_params *p) {
    size_t copies = copies_floats(p);
    return copies == 0 ? 0 : qattn_units_workspace_bytes(u, p) + copies * sizeof(float);
}

size_t qattn_cpu_fp8_workspace_bytes(const qattn_params *p) {
    qattn_units u;
    qattn_units_plan_unsplit(&u, p, FP8_BLOCK_ROWS);
    return fp8_bytes(&u, p);
}

qattn_status qattn_cpu_forward_fp8(qattn_ctx *ctx, const qattn_params *p) {
    bool e4m3 = p->precision == QATTN_PRECISION_FP8_E4M3;
    float maxv = e4m3 ? 448.0f : 57344.0f;
    int64_t tq = tokens_of(p, true), tk = tokens_of(p, false), D = p->head_dim;
    size_t nq = (size_t)(tq * p->n_heads * D), nk = (size_t)(tk * p->n_kv_heads * D);
    fjob j = {.p = p, .rnd = e4m3 ? qattn_round_fp8_e4m3 : qattn_round_fp8_e5m2};
    qattn_units_plan_unsplit(&j.units, p, FP8_BLOCK_ROWS);
    size_t need = fp8_bytes(&j.units, p);
    if (need == 0) return QATTN_OK;
    void *mem;
    qattn_status s = qattn_workspace_take(ctx, p->workspace, p->workspace_size, need, &mem);
    if (s != QATTN_OK) return s;
    qattn_units_workspace(&j.units, p, NULL, mem); /* the hand-out order; no partials */
    j.q = (float *)(void *)((unsigned char *)mem + qattn_units_workspace_bytes(&j.units, p));
    j.k = j.q + nq;
    j.v = j.k + nk;
    float *bufs[3] = {j.q, j.k, j.v};
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
        atomic_init(&j.overflow, 0);
        qattn_units_run(ctx->pool, &j.units, qattn_workers_for(ctx->n_threads, j.units.n_units), fp8_unit, NULL, &j);
        if (atomic_load(&j.overflow))
            s = qattn_fail(ctx, QATTN_ERR_OVERFLOW, "scale %g: scaled scores overflow float32 although the inputs are finite "
                           "(|scale * q.k| must stay well below %g); scale the inputs or the scale down",
                           (double)qattn_effective_scale(p), (double)(FLT_MAX / 1.4426950408889634));
    }
    qattn_workspace_release(ctx, mem, p->workspace);
    return s;
}
