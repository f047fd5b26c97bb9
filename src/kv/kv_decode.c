/* Decode over the paged KV cache: split-KV across threads with an exact fixed-order merge.
 *
 * The plan is src/cpu/units.c's (qattn_units_plan_decode): work unit = (listed sequence b, KV
 * split), taking every kv head. For each cache block of its range it walks the kv
 * heads g in order; the rows of head g are all query heads of group g at all seqlen_q new
 * positions (row g*m + r: position r / group, head g*group + r % group, m = group * seqlen_q), so
 * each block region of a kv head is read once per query group, and a unit streams whole
 * physical blocks sequentially (a per-head unit would touch 2 x block_size*D bytes per block
 * and skip the rest: measured 2-4x slower, a strided pattern the prefetchers do not follow).
 * Splits cut the KV axis at block boundaries (the plan's granule is the cache page); the split
 * length depends on the shape only (n_seqs, the longest listed sequence), never on the thread
 * count, and partials are merged in split order (qattn_units_merge_splits), so results are
 * bitwise identical for any thread count. */
#include "kv/kv_internal.h"

#include "cpu/threads.h"
#include "cpu/units.h"
#include "quant/lowp.h"

#include <float.h>

#define MAX_SEQLEN_Q 64

static const float LOG2E = 1.4426950408889634f;
static const float LN2 = 0.6931471805599453f;

typedef struct dplan {
    const qattn_kv_cache *c;
    const qattn_decode_params *dp;
    qattn_kv_attend_fn attend;
    qattn_units u; /* u.rows: the rows of one kv head (group * seqlen_q) */
    int all_rows;  /* u.rows * HK: a unit's rows */
    int D;
    float qscale, scale;
    int32_t wr; /* window_right: 0 when causal, else -1 */
    size_t worker_floats;
    float *scratch;
    float *partials; /* qattn_units_partials_floats: when the KV axis is split */
    /* split: the scaled queries (and INT8 codes) of each listed sequence, prepared once per
     * decode instead of once per split (the same values: the same function on the same input) */
    float *qall, *qscall; /* [n_seqs][all_rows][D], [n_seqs][all_rows] */
    int16_t *q16all;      /* [n_seqs][all_rows][dq] */
    /* The first (lowest b * H * Lq + h * Lq + i) row whose scaled scores overflowed float32 with
     * finite q and keys (see note_if_overflow); INT64_MAX if none. */
    atomic_llong overflow_row;
} dplan;

void qattn_decode_params_init(qattn_decode_params *dp) {
    if (!dp) return;
    memset(dp, 0, sizeof *dp);
    dp->seqlen_q = 1;
    dp->q_dtype = QATTN_DTYPE_F32;
    dp->o_dtype = QATTN_DTYPE_F32;
    dp->causal = 1;
    dp->window_left = -1;
}

static qattn_status validate(qattn_ctx *ctx, const qattn_kv_cache *c, const qattn_decode_params *dp) {
    if (!c || !dp) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_kv_decode: %s is NULL", !c ? "cache" : "params");
    qattn_decode_limits lim = qattn_kv_decode_limits(c, "qattn_kv_decode"); /* any head dim the cache holds */
    lim.max_seqlen_q = MAX_SEQLEN_Q;
    lim.check_overlap = true; /* host views */
    return qattn_validate_decode(ctx, dp, &lim, NULL);
}

static void make_plan(dplan *pl, qattn_ctx *ctx, const qattn_kv_cache *c, const qattn_decode_params *dp) {
    memset(pl, 0, sizeof *pl);
    pl->c = c;
    pl->dp = dp;
    pl->attend = ctx->kernels->kv_attend;
    pl->D = c->head_dim;
    int64_t max_len = 0;
    for (int32_t b = 0; b < dp->n_seqs; b++)
        if (c->seq_len[dp->seq_ids[b]] > max_len) max_len = c->seq_len[dp->seq_ids[b]];
    qattn_units_plan_decode(&pl->u, dp->n_seqs, dp->n_heads, c->n_kv_heads, dp->seqlen_q, max_len, c->block_size);
    pl->all_rows = pl->u.rows * pl->u.heads;
    pl->scale = dp->scale != 0.0f ? dp->scale : 1.0f / sqrtf((float)c->head_dim);
    pl->qscale = pl->scale * LOG2E;
    pl->wr = dp->causal ? 0 : -1;
    int64_t m = pl->u.rows, M = pl->all_rows, D = pl->D, n = c->block_size;
    int64_t dq = (D + 15) / 16 * 16;
    /* q pack, a unit's state (max, sum, acc of all heads' rows), kernel scratch, lo/hi int32, q16 [M][dq] + scales */
    pl->worker_floats = (size_t)(M * D) + qattn_unit_state_floats(&pl->u, (int)D) + (size_t)(QATTN_KV_SCRATCH_FLOATS(m, n) + 2 * m + M * dq / 2 + M);
    pl->worker_floats = (pl->worker_floats + 15) / 16 * 16;
}

/* A worker's scratch (worker_floats): q pack [M][D], then the state of a unit (qattn_unit_state),
 * then the rest (run_unit). */
static float *worker_scratch(const dplan *pl, int worker) { return pl->scratch + (size_t)worker * pl->worker_floats; }

/* The state of kv head g of unit `task`: its partial when the KV axis is split (merged after all
 * splits ran), else in the worker's scratch. */
static qattn_tile_state head_state(const dplan *pl, int64_t task, int worker, int g) {
    if (pl->u.n_split > 1) return qattn_unit_partial(&pl->u, pl->partials, task, g, pl->D);
    return qattn_unit_state(&pl->u, worker_scratch(pl, worker) + (int64_t)pl->all_rows * pl->D, g, pl->D);
}

/* The block loop below software-prefetches the next physical block (blocks need not be adjacent in the
 * arena): the kernel prefetches one kv head's K and V regions at a time (qattn_kv_prefetch),
 * interleaved with the compute of the current block so that few misses are outstanding at once;
 * this issues the INT8 scales, once per block. Tuning (2-vCPU Xeon dev VM, 2 threads, 32k, FP16):
 * none 5.6-6.1 GB/s, whole next block at once (NTA) 1.6-2.9 GB/s, per head every line (this)
 * 7.3-8.0 GB/s, per head every 2nd or 4th line 5.0-5.7 GB/s. */

/* Sequence b's queries for the kernels: qpack [M][D] (times scale*log2 e), for INT8 also q16
 * [M][dq] (zero pad) and qsc [M]. Row R = g*m + r (kv head g, its row r). */
static void prep_q(const dplan *pl, int32_t b, float *qpack, int16_t *q16, float *qsc) {
    const qattn_decode_params *dp = pl->dp;
    int m = pl->u.rows, M = pl->all_rows, D = pl->D, H = dp->n_heads, group = pl->u.group;
    int64_t Lq = dp->seqlen_q, dq = (D + 15) / 16 * 16;
    bool i8 = pl->c->dtype == QATTN_DTYPE_I8;
    for (int R = 0; R < M; R++) {
        int g = R / m, r = R % m;
        int h = g * group + r % group;
        int64_t qi = (((int64_t)b * Lq + r / group) * H + h) * D;
        for (int cc = 0; cc < D; cc++) qpack[(int64_t)R * D + cc] = qattn_load(dp->q, dp->q_dtype, qi + cc) * pl->qscale;
        int nb = pl->c->calib ? qattn_rotate_block(D) : 1;
        if (pl->c->calib) { /* INT8: the keys' domain, H(q f / n), its scale times n (docs/KVCACHE.md, INT8 scheme) */
            const float *f = qattn_kv_cal(pl->c, QATTN_KV_CAL_F, g);
            for (int cc = 0; cc < D; cc++) qpack[(int64_t)R * D + cc] *= f[cc];
            (void)qattn_rotate_row(qpack + (int64_t)R * D, D, 1.0f / (float)nb);
        }
        if (i8) {
            qattn_kv_quantize_q16(qpack + (int64_t)R * D, D, q16 + (int64_t)R * dq, qsc + R);
            qsc[R] *= (float)nb;
            for (int64_t cc = D; cc < dq; cc++) q16[(int64_t)R * dq + cc] = 0;
        }
    }
}

static void prep_q_task(void *arg, int64_t b, int worker) {
    (void)worker;
    const dplan *pl = arg;
    int64_t M = pl->all_rows, D = pl->D, dq = (D + 15) / 16 * 16;
    prep_q(pl, (int32_t)b, pl->qall + b * M * D, pl->q16all + b * M * dq, pl->qscall + b * M);
}

static void run_unit(void *arg, int64_t task, int worker) {
    const dplan *pl = arg;
    const qattn_kv_cache *c = pl->c;
    const qattn_decode_params *dp = pl->dp;
    qattn_unit un = qattn_unit_of(&pl->u, task);
    int32_t b = (int32_t)un.b;
    int32_t id = dp->seq_ids[b];
    int64_t L = c->seq_len[id], Lq = dp->seqlen_q;
    int m = pl->u.rows, M = pl->all_rows, D = pl->D, BS = c->block_size, HK = c->n_kv_heads, group = pl->u.group;

    float *qpack = worker_scratch(pl, worker);
    float *kscratch = qpack + (int64_t)M * D + qattn_unit_state_floats(&pl->u, D); /* after the unit's state (head_state) */
    int32_t *lo = (int32_t *)(kscratch + QATTN_KV_SCRATCH_FLOATS(m, BS));
    int32_t *hi = lo + m;
    int64_t dq = (D + 15) / 16 * 16;
    int16_t *q16 = (int16_t *)(hi + m);
    float *qsc = (float *)(q16 + (int64_t)M * dq);
    bool i8 = c->dtype == QATTN_DTYPE_I8;
    for (int g = 0; g < HK; g++) { /* an empty split (past the sequence's end) leaves these for the merge */
        qattn_tile_state st = head_state(pl, task, worker, g);
        qattn_state_reset(&st, m, D);
    }

    int64_t a0, b0, a1, b1;
    qattn_key_range(0, Lq, L, dp->window_left, pl->wr, &a0, &b0);
    qattn_key_range(Lq - 1, Lq, L, dp->window_left, pl->wr, &a1, &b1);
    int64_t k_begin = a0, k_end = b1 > b0 ? b1 : b0;
    int64_t c0 = un.split * pl->u.split_keys, c1 = c0 + pl->u.split_keys;
    if (k_begin < c0) k_begin = c0;
    if (k_end > c1) k_end = c1;
    if (k_begin >= k_end) return;

    if (pl->qall) { /* prepared once per sequence (prep_q_task) */
        qpack = pl->qall + (int64_t)b * M * D;
        q16 = pl->q16all + (int64_t)b * M * dq;
        qsc = pl->qscall + (int64_t)b * M;
    } else {
        prep_q(pl, b, qpack, q16, qsc);
    }
    const int32_t *table = c->block_table + (int64_t)id * c->max_blocks_per_seq;
    for (int64_t t0 = k_begin; t0 < k_end;) {
        int64_t lb = t0 / BS, blk_start = lb * BS;
        int64_t t1 = blk_start + BS < k_end ? blk_start + BS : k_end;
        int n = (int)(t1 - t0);
        const uint8_t *next = t1 < k_end ? qattn_kv_block(c, table[lb + 1]) : NULL;
        for (int r = 0; r < m; r++) {
            int64_t a, e;
            qattn_key_range(r / group, Lq, L, dp->window_left, pl->wr, &a, &e);
            a = a < t0 ? 0 : a - t0;
            e = e > t1 ? n : e - t0;
            if (e < a) e = a;
            lo[r] = (int32_t)a;
            hi[r] = (int32_t)e;
        }
        const uint8_t *blk = qattn_kv_block(c, table[lb]);
        int off = (int)(t0 - blk_start);
        for (int g = 0; g < HK; g++) {
            int64_t code = (int64_t)g * c->head_bytes + (int64_t)off * D * c->elem_bytes;
            const float *ks = NULL, *vs = NULL;
            if (c->dtype == QATTN_DTYPE_I8) {
                ks = (const float *)(blk + c->ks_offset) + (int64_t)g * BS + off;
                vs = (const float *)(blk + c->vs_offset) + (int64_t)g * BS + off;
            }
            qattn_kv_prefetch pf = {NULL, NULL, 0};
            if (next) { /* head g's K and V codes of the next block: issued by the kernel, between its loads */
                pf.k = next + (int64_t)g * c->head_bytes;
                pf.v = next + c->v_offset + (int64_t)g * c->head_bytes;
                pf.bytes = c->head_bytes;
                if (g == 0 && c->ks_offset) QATTN_PREFETCH(next + c->ks_offset, c->block_bytes - c->ks_offset, 3);
            }
            qattn_tile_state st = head_state(pl, task, worker, g);
            pl->attend(qpack + (int64_t)g * m * D, i8 ? q16 + (int64_t)g * m * dq : NULL, i8 ? qsc + (int64_t)g * m : NULL, m, D, c->dtype, blk + code, blk + c->v_offset + code, ks, vs, n, lo, hi, &st, kscratch, next ? &pf : NULL);
        }
        t0 = t1;
    }
}

/* Whether token t of seq's kv head g holds finite K codes (FP16/BF16; INT8 appends refuse
 * non-finite values, so INT8 keys always are). */
static bool key_is_finite(const qattn_kv_cache *c, int32_t seq, int g, int64_t t) {
    if (c->dtype == QATTN_DTYPE_I8) return true;
    const uint8_t *blk = qattn_kv_block(c, c->block_table[(int64_t)seq * c->max_blocks_per_seq + t / c->block_size]);
    const uint16_t *k = (const uint16_t *)(blk + (int64_t)g * c->head_bytes + (t % c->block_size) * c->head_dim * c->elem_bytes);
    for (int i = 0; i < c->head_dim; i++)
        if (!isfinite(c->dtype == QATTN_DTYPE_F16 ? qattn_f16_to_f32(k[i]) : qattn_bf16_to_f32(k[i]))) return false;
    return true;
}

/* A non-finite row with a finite q row and finite visible keys overflowed float32 in
 * scale * log2e * q.k (the kernels cannot tell that from a non-finite input; this rare path,
 * taken for non-finite rows only, can). Recorded; qattn_kv_decode then returns QATTN_ERR_OVERFLOW. */
static void note_if_overflow(const dplan *pl, int64_t b, int h, int i) {
    const qattn_decode_params *dp = pl->dp;
    int D = pl->D, H = dp->n_heads, Lq = dp->seqlen_q, g = h / pl->u.group;
    int64_t qi = ((b * Lq + i) * H + h) * D;
    for (int c = 0; c < D; c++)
        if (!isfinite(qattn_load(dp->q, dp->q_dtype, qi + c))) return;
    int32_t seq = dp->seq_ids[b];
    int64_t lo, hi;
    qattn_key_range(i, Lq, pl->c->seq_len[seq], dp->window_left, pl->wr, &lo, &hi);
    for (int64_t t = lo; t < hi; t++)
        if (!key_is_finite(pl->c, seq, g, t)) return;
    long long row = (b * H + h) * (long long)Lq + i;
    qattn_atomic_min((atomic_llong *)&pl->overflow_row, row);
}

/* O (and LSE) of the rows of listed sequence b's kv head g, from their finished state. */
static void write_head_rows(const dplan *pl, int64_t b, int g, const qattn_tile_state *st) {
    const qattn_decode_params *dp = pl->dp;
    int D = pl->D, H = dp->n_heads, Lq = dp->seqlen_q, group = pl->u.group;
    for (int r = 0; r < pl->u.rows; r++) {
        int h = g * group + r % group, i = r / group;
        int64_t oi = ((b * Lq + i) * H + h) * D;
        float l = st->row_sum[r], mx = st->row_max[r];
        const float *acc = st->acc + (int64_t)r * st->ld_acc;
        bool empty = mx == -INFINITY;
        if (!empty && !(isfinite(l) && isfinite(mx))) note_if_overflow(pl, b, h, i);
        float inv = empty ? 0.0f : 1.0f / l;
        const float *mv = pl->c->calib ? qattn_kv_cal(pl->c, QATTN_KV_CAL_MUV, g) : NULL;
        for (int cc = 0; cc < D; cc++) qattn_store(dp->o, dp->o_dtype, oi + cc, empty ? 0.0f : acc[cc] * inv + (mv ? mv[cc] : 0.0f));
        float corr = 0.0f; /* K smoothing shifted every score of the row by scale * q . mu_k */
        if (pl->c->calib && dp->lse && !empty) {
            const float *mk = qattn_kv_cal(pl->c, QATTN_KV_CAL_MUK, g);
            for (int cc = 0; cc < D; cc++) corr += qattn_load(dp->q, dp->q_dtype, oi + cc) * mk[cc];
            corr *= pl->scale;
        }
        if (dp->lse) dp->lse[(b * H + h) * Lq + i] = empty ? -INFINITY : (mx + log2f(l)) * LN2 + corr;
    }
}

static void run_unit_and_write(void *arg, int64_t task, int worker) {
    const dplan *pl = arg;
    run_unit(arg, task, worker);
    if (pl->u.n_split > 1) return; /* merge_unit writes */
    for (int g = 0; g < pl->u.heads; g++) {
        qattn_tile_state st = head_state(pl, task, worker, g);
        write_head_rows(pl, task, g, &st);
    }
}

/* One listed sequence: its splits merged in split order, then written. */
static void merge_unit(void *arg, int64_t merge_task, int worker) {
    (void)worker;
    const dplan *pl = arg;
    qattn_unit un = qattn_units_merge_unit(&pl->u, merge_task);
    for (int g = 0; g < pl->u.heads; g++) {
        qattn_tile_state total = qattn_units_merge_splits(&pl->u, pl->partials, merge_task, g, pl->u.rows, pl->D);
        write_head_rows(pl, un.b, g, &total);
    }
}

qattn_status qattn_kv_decode(qattn_ctx *ctx, const qattn_kv_cache *cache, const qattn_decode_params *dp) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = validate(ctx, cache, dp);
    if (s != QATTN_OK) return s;
    if (dp->n_seqs == 0) return QATTN_OK;
    dplan pl;
    make_plan(&pl, ctx, cache, dp);
    int nw = qattn_workers_for(ctx->n_threads, pl.u.n_units);
    size_t partials = qattn_units_partials_floats(&pl.u, pl.D);
    /* shared prepared queries (split): qall + qscall floats, q16all int16 (as floats, rounded up) */
    size_t dq = (size_t)(pl.D + 15) / 16 * 16, qrows = (size_t)dp->n_seqs * (size_t)pl.all_rows;
    size_t qprep = pl.u.n_split > 1 ? (qrows * (size_t)pl.D + qrows + (qrows * dq + 1) / 2 + 15) / 16 * 16 : 0;
    size_t need = ((size_t)nw * pl.worker_floats + partials + qprep) * sizeof(float);
    float *mem = qattn_alloc(ctx, need);
    if (!mem) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_kv_decode: cannot allocate %zu bytes of scratch", need);
    pl.scratch = mem;
    pl.partials = mem + (size_t)nw * pl.worker_floats;
    if (qprep) {
        pl.qall = pl.partials + partials;
        pl.qscall = pl.qall + qrows * (size_t)pl.D;
        pl.q16all = (int16_t *)(pl.qscall + qrows);
        qattn_parallel_for(ctx->pool, qattn_workers_for(nw, dp->n_seqs), dp->n_seqs, prep_q_task, &pl);
    }
    atomic_init(&pl.overflow_row, INT64_MAX);
    qattn_units_run(ctx->pool, &pl.u, nw, run_unit_and_write, merge_unit, &pl);
    qattn_free(ctx, mem);
    long long row = atomic_load(&pl.overflow_row);
    if (row != INT64_MAX) {
        long long Lq = dp->seqlen_q, H = dp->n_heads;
        return qattn_fail(ctx, QATTN_ERR_OVERFLOW,
                          "qattn_kv_decode: scale %g: the scaled scores of query %lld (listed sequence %lld, head %lld) overflow float32 "
                          "in the kernel although q and the cached keys are finite (|scale * q.k| must stay well below %g; the INT8 cache's "
                          "int32 products meet float32 scales before the key scale); scale the inputs or the scale down",
                          (double)(pl.qscale / LOG2E), row % Lq, row / Lq / H, row / Lq % H, (double)(FLT_MAX / LOG2E));
    }
    return QATTN_OK;
}
