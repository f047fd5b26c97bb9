/* The CPU driver for FP32/FP16/BF16 attention: cuts the problem into work units, packs Q and
 * K/V tiles to FP32 (rounded to the call's precision), runs the ISA's tile kernel, merges
 * split-KV partials in a fixed order and writes O and LSE. Memory is O(tile) per thread plus,
 * for prefill, one FP32 copy of K/V (O(Lk x D), capped; none for FP32 K/V with contiguous rows:
 * see make_plan), never Lq x Lk.
 *
 * Work unit = (sequence b, kv head g, block of query positions, KV split). The rows of a unit
 * are all query heads of group g at those positions, so each K/V tile is packed once per
 * group (GQA). Whether and how the KV axis is split depends on the shape alone, never on the
 * thread count, so results are bitwise identical for any number of threads. */
#include "qattn_internal.h"

#include "cpu/block_mask.h"
#include "cpu/threads.h"

#include <float.h>

#define BLOCK_ROWS 256       /* query rows (positions x group heads) per unit: each unit packs every K/V tile once,
                                so more rows, less packing per FLOP: 128 beat 64 by 9% on prefill; 256 beats 128 by
                                3-4% (Zen 4, avx512 and avx2, 1 thread), 512 by 6-7% but with twice the L2 footprint
                                (Q + acc 512 KiB at D 128) and half the units to share among threads */
#define TILE_KEYS 64         /* keys per K/V tile */
#define DECODE_TILE_KEYS 32  /* ...for decode: 16 and 32 measured alike, 64 and 128 slower (FP32 64: +35%) */
#define SPLIT_MIN_KEYS 512   /* a KV split covers at least this many keys */
#define SPLIT_UNITS_BELOW 32 /* split the KV axis only when there are fewer units than this */
#define SPLIT_TARGET 64      /* ...and aim for about this many units after splitting */
#define DIRECT_KV_MAX_ROWS 16 /* FP32 K/V are read in place when a unit has at most this many rows */
#define DECODE_MAX_ROWS 64    /* a unit takes all kv heads when they have at most this many rows in all */
#define QATTN_MAX_UNIT_HEADS DECODE_MAX_ROWS /* so at most this many heads per unit */
#define PREPACK_KEYS 256                      /* keys per task of the K/V pre-pack pass */
#define PREPACK_MAX_BYTES ((size_t)512 << 20) /* above this, units pack their own tiles */

static const float LOG2E = 1.4426950408889634f;
static const float LN2 = 0.6931471805599453f;

typedef struct plan {
    const qattn_params *p;
    const qattn_kv_rows *kv; /* K/V rows through a page table / per-sequence key counts; NULL: p's views */
    const qattn_cpu_kernels *kern;
    int group;          /* query heads per kv head */
    int block_pos;      /* query positions per unit */
    int rows;           /* block_pos * group: rows per kv head of a unit */
    int heads;          /* kv heads per unit (1, or all of them for decode; see make_plan) */
    int64_t n_qblocks;  /* per sequence, for the longest sequence */
    int64_t n_split;    /* KV splits per (b, g, qblock) */
    int64_t split_keys; /* keys per split (a multiple of TILE_KEYS) */
    int64_t n_units;    /* batch * HK * n_qblocks * n_split */
    float qscale;       /* scale * log2(e) */
    int32_t precision;
    bool direct_kv;     /* the kernel reads K/V in place (see make_plan) */
    bool prepack;       /* K/V packed once for all units, per kv head (see make_plan) */
    int64_t total_k;    /* keys over the batch (the pre-pack's token axis) */
    int64_t n_kchunks;  /* pre-pack tasks per sequence */
    int tile_keys;      /* keys per tile: TILE_KEYS, or DECODE_TILE_KEYS for decode-shaped plans */
    float softcap2;     /* softcap * log2(e): the kernels' base-2 units; 0 = off */
    bool alibi;         /* p->alibi_slopes given */
    /* workspace */
    size_t worker_floats; /* floats of scratch per worker */
    float *scratch;       /* n_workers * worker_floats */
    float *partials;      /* n_units * rows * (D + 2), when n_split > 1 */
    float *kv_packed;     /* K then V, each [HK][total_k][D], when prepack */
    qattn_bm_unit_cost *order; /* with a block mask: the units, longest first (see qattn_cpu_forward) */
    /* The first (lowest (b, h, i)) query row whose scaled scores overflowed float32 with finite
     * q and k; INT64_MAX if none. Written by workers, hence atomic. */
    atomic_llong overflow_row;
} plan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static void make_plan(plan *pl, const qattn_ctx *ctx, const qattn_params *p) {
    memset(pl, 0, sizeof *pl);
    pl->p = p;
    pl->kern = ctx->kernels;
    pl->group = p->n_heads / p->n_kv_heads;
    pl->block_pos = pl->group >= BLOCK_ROWS ? 1 : BLOCK_ROWS / pl->group;
    pl->rows = pl->block_pos * pl->group;
    pl->n_qblocks = ceil_div(p->seqlen_q, pl->block_pos);
    /* Decode (few rows per kv head): one unit takes every kv head of its key range, so it reads
     * whole [heads, D] rows of K/V, contiguous in the usual [B, L, HK, D] layout, instead of one
     * head's D values per 4 KiB page (which defeats the hardware prefetcher and the TLB). */
    int64_t eff_rows = (p->seqlen_q < pl->block_pos ? p->seqlen_q : pl->block_pos) * pl->group;
    pl->heads = eff_rows * p->n_kv_heads <= DECODE_MAX_ROWS ? p->n_kv_heads : 1;
    int64_t units = p->batch * (p->n_kv_heads / pl->heads) * pl->n_qblocks;
    pl->n_split = 1;
    if (units > 0 && units < SPLIT_UNITS_BELOW && p->seqlen_k >= 2 * SPLIT_MIN_KEYS) {
        int64_t want = ceil_div(SPLIT_TARGET, units);
        int64_t most = p->seqlen_k / SPLIT_MIN_KEYS;
        pl->n_split = want < most ? want : most;
    }
    pl->split_keys = ceil_div(ceil_div(p->seqlen_k > 0 ? p->seqlen_k : 1, pl->n_split), TILE_KEYS) * TILE_KEYS;
    pl->n_units = units * pl->n_split;
    pl->qscale = qattn_effective_scale(p) * LOG2E;
    pl->precision = p->precision == QATTN_PRECISION_AUTO ? QATTN_PRECISION_FP32 : p->precision;
    /* FP32 K/V need no conversion; with few rows per unit (decode) each key is used by few
     * rows, so copying it into a packed tile costs more than reading it strided. With many
     * rows the packed tile wins: rows of stride H*D alias in L1 and would be re-read from L2.
     * Either way the kernel sees the same values, so results do not change. */
    bool f32_kv = p->qkv_dtype == QATTN_DTYPE_F32 && pl->precision == QATTN_PRECISION_FP32 && p->k_seq_stride == p->v_seq_stride;
    bool few_rows = (p->seqlen_q < pl->block_pos ? p->seqlen_q : pl->block_pos) * pl->group <= DIRECT_KV_MAX_ROWS;
    /* ...and for any row count when a head's K/V rows are already contiguous ([B, HK, L, D], torch's
     * SDPA layout: seq stride D): the packed copy would hold the same bytes in the same order.
     * (Zen 4, avx512, 1 thread, B1 H8 L2048/4096 D128 against the pre-pack: see docs/cpu_kernels.md.) */
    bool rows_contiguous = p->k_seq_stride == p->head_dim;
    pl->direct_kv = f32_kv && (few_rows || rows_contiguous);
    /* Tried and dropped: software prefetch of the next tile's K/V rows (no gain for decode once
     * its units read whole contiguous [HK, D] rows; about 10% loss for prefill; on Zen 4 with
     * 256-row units, every line of the next tile's rows to L2: -2% to +4%, within the noise);
     * reading FP32 K/V in place for prefill when rows are H*D apart ([B, L, H, D]; Zen 4, avx512: within
     * the noise; contiguous rows are read in place, above); packing all the
     * unit's heads in one sequential sweep of [n][HK*D] rows (FP16 decode unchanged, FP32 packed
     * that way 25% slower than read in place). */
    pl->tile_keys = ((pl->direct_kv && few_rows) || pl->heads > 1) ? DECODE_TILE_KEYS : TILE_KEYS;
    /* Prefill: every unit of a kv head walks the same K/V, and packing a 64-key tile reads 64 rows
     * H*D elements apart (a new page each at H*D >= 1024 FP32), which waits on L3 and page walks:
     * 14% of a 1-thread L2048 D128 run with 256-row units (perf, Zen 4). So when several units
     * share a head's keys, one pass packs K/V first, reading whole [HK, D] token rows in order,
     * and units read their tiles from it: the same values, so the same results. */
    pl->total_k = p->cu_seqlens_k ? p->cu_seqlens_k[p->batch] : p->batch * p->seqlen_k;
    pl->n_kchunks = ceil_div(p->seqlen_k > 0 ? p->seqlen_k : 1, PREPACK_KEYS);
    size_t prepack_bytes = (size_t)2 * (size_t)p->n_kv_heads * (size_t)pl->total_k * (size_t)p->head_dim * sizeof(float);
    pl->prepack = !pl->direct_kv && pl->heads == 1 && pl->n_qblocks >= 2 && pl->total_k > 0 && prepack_bytes <= PREPACK_MAX_BYTES;
    int64_t D = p->head_dim, m = pl->rows, hm = (int64_t)pl->rows * pl->heads;
    pl->softcap2 = p->softcap * LOG2E;
    pl->alibi = p->alibi_slopes != NULL;
    /* q pack and state (max, sum, acc) for every head of the unit, k pack, v pack, scores, lo/hi,
     * lo/hi after the block mask, ALiBi slopes of every row of every head and the rows' diagonals */
    pl->worker_floats = (size_t)(hm * D + 2 * TILE_KEYS * D + m * TILE_KEYS + hm * (D + 2) + 4 * m + hm + m);
    pl->worker_floats = (pl->worker_floats + 15) / 16 * 16; /* keep each worker 64-byte aligned */
}

static size_t partial_floats(const plan *pl) {
    return (size_t)pl->rows * (size_t)pl->heads * (size_t)(pl->p->head_dim + 2);
}

static size_t prepack_floats(const plan *pl) {
    return pl->prepack ? (size_t)2 * (size_t)pl->p->n_kv_heads * (size_t)pl->total_k * (size_t)pl->p->head_dim : 0;
}

/* Whether units are handed out in another order than their index (order_units): with a block mask,
 * and with a causal or windowed mask, where units of one plan differ in cost (causal: the last query
 * block of a head sees all its keys, the first one tile). */
static bool wants_order(const plan *pl) {
    const qattn_params *p = pl->p;
    return pl->n_units > 1 && (p->block_mask || p->causal || p->window_left >= 0 || p->window_right >= 0);
}

static size_t order_bytes(const plan *pl) {
    return wants_order(pl) ? (size_t)pl->n_units * sizeof(qattn_bm_unit_cost) : 0;
}

static size_t plan_bytes(const plan *pl, int n_workers) {
    size_t partials = pl->n_split > 1 ? (size_t)pl->n_units * partial_floats(pl) : 0;
    return ((size_t)n_workers * pl->worker_floats + partials + prepack_floats(pl)) * sizeof(float) + order_bytes(pl);
}

/* Sequence b's geometry; with kv, its own key count. */
static qattn_seq seq_view(const plan *pl, int64_t b) {
    qattn_seq s = qattn_seq_view(pl->p, b);
    if (pl->kv) s.lk = pl->kv->seqlens_k[b];
    return s;
}

/* Element offset of key/value token t (head 0) of sequence b in a tensor with these batch and
 * sequence strides, whose sequence b starts at seq_off: p's view, or a page of a paged cache. */
static int64_t kv_token_offset(const plan *pl, int64_t b, int64_t seq_off, int64_t t, int64_t batch_stride, int64_t seq_stride) {
    const qattn_kv_rows *kv = pl->kv;
    if (!kv || !kv->block_table) return seq_off + t * seq_stride;
    int64_t page = kv->block_table[b * kv->block_table_stride + t / kv->page_size];
    return page * batch_stride + t % kv->page_size * seq_stride;
}

/* The end of the run of keys from t whose rows are evenly strided (one page when paged): a tile the
 * kernel reads in place (one stride) stops there; a packed tile is gathered run by run. */
static int64_t kv_run_end(const plan *pl, int64_t t) {
    if (!pl->kv || !pl->kv->block_table) return INT64_MAX;
    return (t / pl->kv->page_size + 1) * pl->kv->page_size;
}

/* Token index of sequence b's first key on the pre-pack's axis. */
static int64_t packed_key_base(const plan *pl, int64_t b) {
    return pl->p->cu_seqlens_k ? pl->p->cu_seqlens_k[b] : b * pl->p->seqlen_k;
}

/* Pre-pack task (sequence b, chunk of PREPACK_KEYS keys): each key's [HK, D] row of K, then of V,
 * to kv_packed[head][token][D] (rounded to the call's precision, as the units' own packing). */
static void prepack_task(void *arg, int64_t task, int worker) {
    (void)worker;
    const plan *pl = arg;
    const qattn_params *p = pl->p;
    int64_t b = task / pl->n_kchunks, t0 = task % pl->n_kchunks * PREPACK_KEYS;
    qattn_seq s = seq_view(pl, b);
    int64_t t1 = t0 + PREPACK_KEYS < s.lk ? t0 + PREPACK_KEYS : s.lk, base = packed_key_base(pl, b), D = p->head_dim;
    int64_t plane = pl->total_k * D; /* one kv head's [total_k][D] */
    float *kdst = pl->kv_packed, *vdst = pl->kv_packed + (size_t)p->n_kv_heads * (size_t)plane;
    for (int64_t t = t0; t < t1; t++) {
        int64_t koff = kv_token_offset(pl, b, s.k_off, t, p->k_batch_stride, p->k_seq_stride);
        int64_t voff = kv_token_offset(pl, b, s.v_off, t, p->v_batch_stride, p->v_seq_stride);
        pl->kern->pack_rows_f32(p->k, p->qkv_dtype, pl->precision, koff, p->k_head_stride, p->n_kv_heads, (int)D, 1.0f, kdst + (base + t) * D,
                                plane);
        pl->kern->pack_rows_f32(p->v, p->qkv_dtype, pl->precision, voff, p->v_head_stride, p->n_kv_heads, (int)D, 1.0f, vdst + (base + t) * D,
                                plane);
    }
}

void qattn_state_merge(qattn_tile_state *a, const qattn_tile_state *b, int m, int d) {
    for (int r = 0; r < m; r++) {
        float mb = b->row_max[r];
        if (mb == -INFINITY) continue; /* b saw no key for this row */
        float ma = a->row_max[r];
        float mx = ma > mb ? ma : mb;
        float fa = ma == -INFINITY ? 0.0f : exp2f(ma - mx);
        float fb = exp2f(mb - mx);
        float *acc_a = a->acc + r * a->ld_acc;
        const float *acc_b = b->acc + r * b->ld_acc;
        for (int c = 0; c < d; c++) acc_a[c] = acc_a[c] * fa + acc_b[c] * fb;
        a->row_sum[r] = a->row_sum[r] * fa + b->row_sum[r] * fb;
        a->row_max[r] = mx;
    }
}

/* Unit index -> (b, g, qblock, split). */
typedef struct unit {
    int64_t b, qb, split;
    int g;
} unit;

static unit unit_of(const plan *pl, int64_t task) {
    unit u;
    u.split = task % pl->n_split;
    task /= pl->n_split;
    u.qb = task % pl->n_qblocks;
    task /= pl->n_qblocks;
    int64_t n_hb = pl->p->n_kv_heads / pl->heads;
    u.g = (int)(task % n_hb) * pl->heads; /* first kv head of the unit */
    u.b = task / n_hb;
    return u;
}

/* Row r of a unit is position i0 + r / group of query head g * group + r % group: the group's
 * heads of one position are rows of stride q_head_stride, packed by one call. */
static void pack_q(const plan *pl, const qattn_seq *s, int64_t i0, int n_pos, int g, float *qpack) {
    const qattn_params *p = pl->p;
    int D = p->head_dim;
    for (int pi = 0; pi < n_pos; pi++) {
        int64_t base = s->q_off + (i0 + pi) * p->q_seq_stride + (int64_t)g * pl->group * p->q_head_stride;
        pl->kern->pack_rows_f32(p->q, p->qkv_dtype, pl->precision, base, p->q_head_stride, pl->group, D, pl->qscale,
                                qpack + (int64_t)pi * pl->group * D, D);
    }
}

/* Keys t0 .. t0+n-1 of kv head g of sequence b (src starting at seq_off) to dst [n][D], one pack
 * per run of evenly strided rows (the whole tile unless paged). */
static void pack_kv(const plan *pl, const void *src, int64_t b, int64_t seq_off, int64_t batch_stride, int64_t seq_stride, int64_t head_stride,
                    int g, int64_t t0, int64_t n, float *dst) {
    const qattn_params *p = pl->p;
    for (int64_t t = t0, e; t < t0 + n; t = e) {
        e = kv_run_end(pl, t) < t0 + n ? kv_run_end(pl, t) : t0 + n;
        int64_t off = kv_token_offset(pl, b, seq_off, t, batch_stride, seq_stride) + (int64_t)g * head_stride;
        pl->kern->pack_rows_f32(src, p->qkv_dtype, pl->precision, off, seq_stride, (int)(e - t), p->head_dim, 1.0f, dst + (t - t0) * p->head_dim,
                                p->head_dim);
    }
}

/* Whether a row is finite as the kernels saw it (rounded to the call's precision: 1e5 is Inf in FP16). */
static bool row_is_finite(const plan *pl, const void *src, int64_t base, int d) {
    for (int c = 0; c < d; c++)
        if (!isfinite(qattn_round_to(pl->precision, qattn_load(src, pl->p->qkv_dtype, base + c)))) return false;
    return true;
}

/* A row whose state is not finite either saw a non-finite q/k value (reported as NaN/Inf by
 * design) or had finite inputs whose scaled scores overflowed float32 (scale * log2e * q.k
 * beyond FLT_MAX: Inf - Inf in the softmax). The kernels cannot tell the two apart; this rare
 * path (taken only for non-finite rows) can, by reading the row's q and visible keys again.
 * The overflow is recorded; qattn_cpu_forward then refuses the call with the row named. */
static void note_if_overflow(const plan *pl, const qattn_seq *s, int64_t b, int64_t i, int h) {
    const qattn_params *p = pl->p;
    int D = p->head_dim, g = h / pl->group;
    if (!row_is_finite(pl, p->q, s->q_off + i * p->q_seq_stride + (int64_t)h * p->q_head_stride, D)) return;
    int64_t lo, hi;
    qattn_key_range(i, s->lq, s->lk, p->window_left, qattn_window_right(p), &lo, &hi);
    for (int64_t j = lo; j < hi; j++)
        if (!row_is_finite(pl, p->k, kv_token_offset(pl, b, s->k_off, j, p->k_batch_stride, p->k_seq_stride) + (int64_t)g * p->k_head_stride, D))
            return;
    long long row = ((long long)b * p->n_heads + h) * p->seqlen_q + i;
    qattn_atomic_min((atomic_llong *)&pl->overflow_row, row);
}

/* Normalise a finished state and write O and LSE for the unit's rows. */
static void write_rows(const plan *pl, const qattn_seq *s, int64_t b, int64_t i0, int n_pos, int g, const qattn_tile_state *st) {
    const qattn_params *p = pl->p;
    int D = p->head_dim;
    for (int pi = 0; pi < n_pos; pi++)
        for (int hg = 0; hg < pl->group; hg++) {
            int r = pi * pl->group + hg, h = g * pl->group + hg;
            int64_t i = i0 + pi;
            int64_t base = s->o_off + i * p->o_seq_stride + (int64_t)h * p->o_head_stride;
            float l = st->row_sum[r], mx = st->row_max[r];
            const float *acc = st->acc + r * st->ld_acc;
            bool empty = mx == -INFINITY; /* saw no key: zeros, LSE -inf, never 0/0 */
            if (!empty && !(isfinite(l) && isfinite(mx))) note_if_overflow(pl, s, b, i, h);
            float inv = empty ? 0.0f : 1.0f / l;
            if (p->o_dtype == QATTN_DTYPE_F32 && !empty) { /* the common case, without a dtype switch per element */
                float *o = (float *)p->o + base;
                for (int c = 0; c < D; c++) o[c] = acc[c] * inv;
            } else {
                for (int c = 0; c < D; c++) qattn_store(p->o, p->o_dtype, base + c, empty ? 0.0f : acc[c] * inv);
            }
            if (p->lse) p->lse[s->lse_off + (int64_t)h * s->lse_head_stride + i] = empty ? -INFINITY : (mx + log2f(l)) * LN2;
        }
}

/* Keys [*k_begin, *k_end) unit u may touch (qattn_bm_unit_key_range). */
static void unit_key_range(const plan *pl, const unit *u, const qattn_seq *s, int64_t i0, int n_pos, const qattn_bm_rows *bm,
                           int64_t *k_begin, int64_t *k_end) {
    qattn_bm_unit_key_range(pl->p, s, i0, n_pos, u->split, pl->n_split, pl->split_keys, bm, k_begin, k_end);
}

/* lo/hi of the unit's m rows (position i0 + r / group) for keys [t0, t0 + n): their window. */
static void window_intervals(const plan *pl, const qattn_seq *s, int64_t i0, int m, int64_t t0, int n, int32_t *lo, int32_t *hi) {
    const qattn_params *p = pl->p;
    for (int r = 0; r < m; r++) {
        int64_t a, b;
        qattn_key_range(i0 + r / pl->group, s->lq, s->lk, p->window_left, qattn_window_right(p), &a, &b);
        a = a < t0 ? 0 : a - t0;
        b = b > t0 + n ? n : b - t0;
        if (b < a) b = a;
        lo[r] = (int32_t)a;
        hi[r] = (int32_t)b;
    }
}

/* The window intervals lo/hi of kv head g's rows narrowed by the block mask to mlo/mhi for a tile
 * starting at key t0 (the tile lies in blocks of one mask pattern: qattn_bm_uniform_end), so a
 * row keeps its whole interval or none. */
static void mask_intervals(const plan *pl, int64_t b, int64_t i0, int m, int g, int64_t t0, const int32_t *lo, const int32_t *hi,
                           int32_t *mlo, int32_t *mhi) {
    const qattn_params *p = pl->p;
    int64_t kb = t0 / p->block_mask_k;
    for (int r = 0; r < m; r++) {
        int h = g * pl->group + r % pl->group;
        bool live = qattn_block_mask_row(p, b, h, (i0 + r / pl->group) / p->block_mask_q)[kb] != 0;
        mlo[r] = live ? lo[r] : 0;
        mhi[r] = live ? hi[r] : 0;
    }
}

/* Runs the tile kernel on the rows that see some key of the tile: one call per run of consecutive
 * mask query blocks that have such a row (rows of a block no row of which sees the tile are not
 * multiplied at all). q, k, v, ldkv, n, mod and st are the tile kernel's arguments for all m rows
 * (mod's per-row slopes and diagonals are offset to each run, as q and st are). */
static void attend_live_runs(const plan *pl, int64_t i0, int n_pos, const float *q, const float *k, const float *v, int64_t ldkv, int n,
                             const int32_t *lo, const int32_t *hi, const qattn_score_mod *mod, qattn_tile_state *st, float *scores) {
    const qattn_params *p = pl->p;
    int G = pl->group, D = p->head_dim;
    int64_t bq = p->block_mask_q;
    int run_start = -1; /* first position of the current run, or -1 */
    for (int pos = 0; pos <= n_pos;) {
        int end = pos; /* the mask query block of position pos, cut to the unit */
        bool live = false;
        if (pos < n_pos) {
            end = (int)(((i0 + pos) / bq + 1) * bq - i0);
            if (end > n_pos) end = n_pos;
            for (int r = pos * G; r < end * G && !live; r++) live = lo[r] < hi[r];
        }
        if (live && run_start < 0) run_start = pos;
        if (!live && run_start >= 0) { /* the run [run_start, pos) ends */
            int r0 = run_start * G, mr = (pos - run_start) * G;
            qattn_tile_state sub = {st->row_max + r0, st->row_sum + r0, st->acc + (int64_t)r0 * st->ld_acc, st->ld_acc};
            qattn_score_mod sub_mod;
            if (mod) {
                sub_mod = *mod;
                if (mod->slope) sub_mod.slope = mod->slope + r0, sub_mod.diag = mod->diag + r0;
            }
            pl->kern->attend_tile_f32(q + (int64_t)r0 * D, D, mr, D, k, v, ldkv, n, lo + r0, hi + r0, mod ? &sub_mod : NULL, &sub, scores);
            run_start = -1;
        }
        if (pos == n_pos) break;
        pos = end;
    }
}

static void run_unit(void *arg, int64_t task, int worker) {
    const plan *pl = arg;
    const qattn_params *p = pl->p;
    if (pl->order) task = pl->order[task].unit; /* the longest units first; what a unit computes does not depend on when */
    unit u = unit_of(pl, task);
    qattn_seq s = seq_view(pl, u.b);
    int64_t i0 = u.qb * pl->block_pos;
    if (i0 >= s.lq) return; /* a shorter sequence of a varlen batch */
    int n_pos = (int)(s.lq - i0 < pl->block_pos ? s.lq - i0 : pl->block_pos);
    int m = n_pos * pl->group, D = p->head_dim;

    float *w = pl->scratch + (size_t)worker * pl->worker_floats;
    int64_t hm = (int64_t)pl->rows * pl->heads;
    float *qpack = w; /* [heads][rows][D] */
    float *kpack = qpack + hm * D;
    float *vpack = kpack + (int64_t)pl->tile_keys * D;
    float *scores = vpack + (int64_t)pl->tile_keys * D;
    float *state_mem = scores + (int64_t)pl->rows * pl->tile_keys;
    int32_t *lo = (int32_t *)(state_mem + hm * (D + 2));
    int32_t *hi = lo + pl->rows;
    int32_t *mlo = hi + pl->rows, *mhi = mlo + pl->rows; /* lo/hi narrowed by the block mask */
    float *slopes = (float *)(mhi + pl->rows);           /* [heads][rows], base-2 units */
    float *diag = slopes + hm;                           /* [rows] */

    bool split = pl->n_split > 1;
    float *state_base = split ? pl->partials + (size_t)task * partial_floats(pl) : state_mem;
    qattn_tile_state st[QATTN_MAX_UNIT_HEADS];
    int H = pl->heads;
    for (int hh = 0; hh < H; hh++) {
        st[hh] = qattn_state_view(state_base + (size_t)hh * (size_t)pl->rows * (size_t)(D + 2), m, D);
        qattn_state_reset(&st[hh], m, D);
    }

    qattn_bm_rows bm_rows, *bm = NULL; /* the unit's rows of the block mask, if any */
    if (p->block_mask) {
        bm_rows = qattn_bm_rows_of(p, u.b, u.g * pl->group, (u.g + H) * pl->group, i0, i0 + n_pos);
        bm = &bm_rows;
    }
    int64_t k_begin, k_end;
    unit_key_range(pl, &u, &s, i0, n_pos, bm, &k_begin, &k_end);
    if (bm) k_begin = qattn_bm_next_live(bm, k_begin, k_end);

    if (k_begin < k_end)
        for (int hh = 0; hh < H; hh++) pack_q(pl, &s, i0, n_pos, u.g + hh, qpack + (int64_t)hh * pl->rows * D);
    qattn_score_mod mods[QATTN_MAX_UNIT_HEADS];
    bool modified = pl->softcap2 > 0.0f || pl->alibi;
    for (int hh = 0; modified && hh < H; hh++) {
        mods[hh] = (qattn_score_mod){.cap = pl->softcap2, .inv_cap = pl->softcap2 > 0.0f ? 1.0f / pl->softcap2 : 0.0f,
                                     .slope = pl->alibi ? slopes + (int64_t)hh * pl->rows : NULL, .diag = diag};
        for (int r = 0; pl->alibi && r < m; r++) /* row r is query head (u.g + hh) * group + r % group */
            slopes[(int64_t)hh * pl->rows + r] = p->alibi_slopes[u.b * p->alibi_batch_stride + (u.g + hh) * pl->group + r % pl->group] * LOG2E;
    }
    /* Tiles of tile_keys keys; a tile read in place ends with its page (one stride); with a block
     * mask, key blocks no row computes are jumped over and a tile ends where the mask pattern
     * changes, so each row sees all of a tile or none of it. */
    for (int64_t t0 = k_begin; t0 < k_end;) {
        int64_t t1 = t0 + pl->tile_keys < k_end ? t0 + pl->tile_keys : k_end;
        if (pl->direct_kv && kv_run_end(pl, t0) < t1) t1 = kv_run_end(pl, t0);
        if (bm) t1 = qattn_bm_uniform_end(bm, t0, t1);
        int n = (int)(t1 - t0);
        window_intervals(pl, &s, i0, m, t0, n, lo, hi);
        for (int r = 0; pl->alibi && r < m; r++) diag[r] = (float)(i0 + r / pl->group + s.lk - s.lq - t0);
        for (int hh = 0; hh < H; hh++) {
            int g = u.g + hh;
            const float *qh = qpack + (int64_t)hh * pl->rows * D;
            const float *kt, *vt;
            int64_t ldkv = D;
            if (bm) {
                mask_intervals(pl, u.b, i0, m, g, t0, lo, hi, mlo, mhi);
                bool any = false;
                for (int r = 0; r < m && !any; r++) any = mlo[r] < mhi[r];
                if (!any) continue; /* this kv head's rows skip the tile: no loads, no products */
            }
            if (pl->prepack) {
                size_t at = ((size_t)g * (size_t)pl->total_k + (size_t)(packed_key_base(pl, u.b) + t0)) * (size_t)D;
                kt = pl->kv_packed + at, vt = pl->kv_packed + (size_t)p->n_kv_heads * (size_t)pl->total_k * (size_t)D + at;
            } else if (pl->direct_kv) {
                kt = (const float *)p->k + kv_token_offset(pl, u.b, s.k_off, t0, p->k_batch_stride, p->k_seq_stride) +
                     (int64_t)g * p->k_head_stride;
                vt = (const float *)p->v + kv_token_offset(pl, u.b, s.v_off, t0, p->v_batch_stride, p->v_seq_stride) +
                     (int64_t)g * p->v_head_stride;
                ldkv = p->k_seq_stride;
            } else {
                pack_kv(pl, p->k, u.b, s.k_off, p->k_batch_stride, p->k_seq_stride, p->k_head_stride, g, t0, n, kpack);
                pack_kv(pl, p->v, u.b, s.v_off, p->v_batch_stride, p->v_seq_stride, p->v_head_stride, g, t0, n, vpack);
                kt = kpack, vt = vpack;
            }
            const qattn_score_mod *mod = modified ? &mods[hh] : NULL;
            if (bm)
                attend_live_runs(pl, i0, n_pos, qh, kt, vt, ldkv, n, mlo, mhi, mod, &st[hh], scores);
            else
                pl->kern->attend_tile_f32(qh, D, m, D, kt, vt, ldkv, n, lo, hi, mod, &st[hh], scores);
        }
        t0 = bm ? qattn_bm_next_live(bm, t1, k_end) : t1;
    }
    if (!split)
        for (int hh = 0; hh < H; hh++) write_rows(pl, &s, u.b, i0, n_pos, u.g + hh, &st[hh]);
}

/* Second phase of a split run: merge the partials of one (b, g, qblock) in split order. */
static void merge_unit(void *arg, int64_t task, int worker) {
    (void)worker;
    const plan *pl = arg;
    const qattn_params *p = pl->p;
    unit u = unit_of(pl, task * pl->n_split);
    qattn_seq s = seq_view(pl, u.b);
    int64_t i0 = u.qb * pl->block_pos;
    if (i0 >= s.lq) return;
    int n_pos = (int)(s.lq - i0 < pl->block_pos ? s.lq - i0 : pl->block_pos);
    int m = n_pos * pl->group, D = p->head_dim;
    size_t head_floats = (size_t)pl->rows * (size_t)(D + 2);
    for (int hh = 0; hh < pl->heads; hh++) {
        qattn_tile_state total = qattn_state_view(pl->partials + (size_t)(task * pl->n_split) * partial_floats(pl) + hh * head_floats, m, D);
        for (int64_t k = 1; k < pl->n_split; k++) {
            qattn_tile_state part =
                qattn_state_view(pl->partials + (size_t)(task * pl->n_split + k) * partial_floats(pl) + hh * head_floats, m, D);
            qattn_state_merge(&total, &part, m, D);
        }
        write_rows(pl, &s, u.b, i0, n_pos, u.g + hh, &total);
    }
}

/* The order units are handed out in, so the dynamic hand-out of the thread pool does not leave one
 * thread with a long unit at the end. Block mask: decreasing live work (qattn_bm_cost). Causal or
 * windowed: each kv head's query blocks last to first (causal: longest first, the one-tile diagonal
 * block last), heads in order, so consecutive units still share a head's K/V in cache; a global
 * longest-first sort interleaved the heads and ran 2-3% slower on one thread (Zen 4, L2048/L4096
 * causal). Causal B1 H8 L2048 with 2 threads in the old order ended on the longest unit (the last
 * query block of the last head). Scheduling only: every unit computes the same values whichever
 * thread runs it, whenever. */
static void order_units(plan *pl, qattn_bm_unit_cost *order) {
    const qattn_params *p = pl->p;
    for (int64_t t = 0; t < pl->n_units; t++) {
        if (!p->block_mask) { /* qb -> n_qblocks - 1 - qb; split and (b, g) kept */
            int64_t split = t % pl->n_split, rest = t / pl->n_split;
            int64_t qb = pl->n_qblocks - 1 - rest % pl->n_qblocks, bg = rest / pl->n_qblocks;
            order[t] = (qattn_bm_unit_cost){0, (bg * pl->n_qblocks + qb) * pl->n_split + split};
            continue;
        }
        unit u = unit_of(pl, t);
        qattn_seq s = seq_view(pl, u.b);
        int64_t cost = qattn_bm_unit_cost_of(p, &s, u.b, u.g * pl->group, (u.g + pl->heads) * pl->group, u.qb * pl->block_pos, pl->block_pos, u.split,
                                             pl->n_split, pl->split_keys);
        order[t] = (qattn_bm_unit_cost){cost, t};
    }
    if (p->block_mask) qattn_bm_sort_units(order, pl->n_units);
    pl->order = order;
}

static int n_workers(const qattn_ctx *ctx, const plan *pl) {
    int64_t n = ctx->n_threads;
    if (n > pl->n_units) n = pl->n_units;
    if (n > QATTN_MAX_THREADS) n = QATTN_MAX_THREADS;
    return n < 1 ? 1 : (int)n;
}

static qattn_status check_precision(qattn_ctx *ctx, const qattn_params *p) {
    switch (p->precision) {
    case QATTN_PRECISION_AUTO:
    case QATTN_PRECISION_FP32:
    case QATTN_PRECISION_FP16:
    case QATTN_PRECISION_BF16: return QATTN_OK;
    default:
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "precision %d is not supported by the CPU backend in this build", p->precision);
    }
}

qattn_status qattn_cpu_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes) {
    qattn_status s = check_precision(ctx, p);
    if (s != QATTN_OK) return s;
    plan pl;
    make_plan(&pl, ctx, p);
    *bytes = pl.n_units > 0 ? plan_bytes(&pl, n_workers(ctx, &pl)) : 0;
    return QATTN_OK;
}

qattn_status qattn_cpu_forward(qattn_ctx *ctx, const qattn_params *p) { return qattn_cpu_forward_kv(ctx, p, NULL); }

qattn_status qattn_cpu_forward_kv(qattn_ctx *ctx, const qattn_params *p, const qattn_kv_rows *kv) {
    qattn_status s = check_precision(ctx, p);
    if (s != QATTN_OK) return s;
    plan pl;
    make_plan(&pl, ctx, p);
    pl.kv = kv;
    /* A paged cache cuts in-place tiles at page ends: for prefill-shaped plans, whose in-place reading
     * comes from contiguous rows (make_plan, which does not see kv), the units pack their tiles instead
     * (no pre-pack: the workspace was sized without it). */
    if (kv && kv->block_table && pl.direct_kv && pl.tile_keys == TILE_KEYS) pl.direct_kv = false;
    if (pl.n_units == 0) return QATTN_OK; /* no query rows anywhere */
    int nw = n_workers(ctx, &pl);
    size_t need = plan_bytes(&pl, nw);
    void *mem = p->workspace;
    if (mem) {
        if (p->workspace_size < need)
            return qattn_fail(ctx, QATTN_ERR_CAPACITY, "workspace has %zu bytes; these parameters need %zu (qattn_workspace_size)",
                              p->workspace_size, need);
        if ((uintptr_t)mem % 64 != 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "workspace must be 64-byte aligned");
    } else {
        mem = qattn_alloc(ctx, need);
        if (!mem) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of workspace", need);
    }
    pl.scratch = mem;
    pl.partials = pl.scratch + (size_t)nw * pl.worker_floats;
    pl.kv_packed = pl.partials + (pl.n_split > 1 ? (size_t)pl.n_units * partial_floats(&pl) : 0);
    if (wants_order(&pl)) order_units(&pl, (qattn_bm_unit_cost *)(void *)(pl.kv_packed + prepack_floats(&pl)));
    if (pl.prepack) qattn_parallel_for(ctx->pool, ctx->n_threads, p->batch * pl.n_kchunks, prepack_task, &pl);
    atomic_init(&pl.overflow_row, INT64_MAX);
    qattn_parallel_for(ctx->pool, nw, pl.n_units, run_unit, &pl);
    if (pl.n_split > 1) qattn_parallel_for(ctx->pool, nw, pl.n_units / pl.n_split, merge_unit, &pl);
    if (mem != p->workspace) qattn_free(ctx, mem);
    long long row = atomic_load(&pl.overflow_row);
    if (row != INT64_MAX) {
        long long i = row % p->seqlen_q, h = row / p->seqlen_q % p->n_heads, b = row / p->seqlen_q / p->n_heads;
        return qattn_fail(ctx, QATTN_ERR_OVERFLOW,
                          "scale %g: the scaled scores of query row %lld (sequence %lld, head %lld) overflow float32 although q and k "
                          "are finite (|scale * q.k| must stay well below %g); scale the inputs or the scale down",
                          (double)qattn_effective_scale(p), i, b, h, (double)(FLT_MAX / LOG2E));
    }
    return QATTN_OK;
}
