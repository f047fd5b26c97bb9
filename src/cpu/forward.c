/* The CPU driver for FP32/FP16/BF16 attention: cuts the problem into work units, packs Q and
 * K/V tiles to FP32 (rounded to the call's precision), runs the ISA's tile kernel, merges
 * split-KV partials in a fixed order and writes O and LSE. Memory is O(tile) per thread plus,
 * for prefill, one FP32 copy of K/V (O(Lk x D), capped; none for FP32 K/V with contiguous rows:
 * see make_plan), never Lq x Lk.
 *
 * Work unit = (sequence b, kv head g, block of query positions, KV split): the plan of
 * src/cpu/units.c, shared with the INT8/INT4 driver. The rows of a unit are all query heads of
 * group g at those positions, so each K/V tile is packed once per group (GQA). Whether and how
 * the KV axis is split depends on the shape alone, never on the thread count, so results are
 * bitwise identical for any number of threads. */
#include "qattn_internal.h"

#include "cpu/block_mask.h"
#include "cpu/threads.h"
#include "cpu/units.h"

#include <float.h>

#define BLOCK_ROWS 256       /* query rows (positions x group heads) per unit: each unit packs every K/V tile once,
                                so more rows, less packing per FLOP: 128 beat 64 by 9% on prefill; 256 beats 128 by
                                3-4% (Zen 4, avx512 and avx2, 1 thread), 512 by 6-7% but with twice the L2 footprint
                                (Q + acc 512 KiB at D 128) and half the units to share among threads */
#define DECODE_TILE_KEYS 32  /* keys per tile for decode (QATTN_TILE_KEYS otherwise): 16 and 32 measured alike,
                                64 and 128 slower (FP32 64: +35%) */
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
    qattn_units units;  /* the work units, their KV split and hand-out order (src/cpu/units.h) */
    float qscale;       /* scale * log2(e) */
    int32_t precision;
    bool direct_kv;     /* the kernel reads K/V in place (see make_plan) */
    bool prepack;       /* K/V packed once for all units, per kv head (see make_plan) */
    int64_t total_k;    /* keys over the batch (the pre-pack's token axis) */
    int64_t n_kchunks;  /* pre-pack tasks per sequence */
    int tile_keys;      /* keys per tile: QATTN_TILE_KEYS, or DECODE_TILE_KEYS for decode-shaped plans */
    float softcap2;     /* softcap * log2(e): the kernels' base-2 units; 0 = off */
    bool alibi;         /* p->alibi_slopes given */
    /* workspace */
    size_t worker_floats; /* floats of scratch per worker */
    float *scratch;       /* n_workers * worker_floats */
    float *partials;      /* each unit's state when n_split > 1 (qattn_units_partials_floats) */
    float *kv_packed;     /* K then V, each [HK][total_k][D], when prepack */
    /* The first (lowest (b, h, i)) query row whose scaled scores overflowed float32 with finite
     * q and k; INT64_MAX if none. Written by workers, hence atomic. */
    atomic_llong overflow_row;
} plan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static void make_plan(plan *pl, const qattn_ctx *ctx, const qattn_params *p) {
    memset(pl, 0, sizeof *pl);
    pl->p = p;
    pl->kern = ctx->kernels;
    /* Decode (at most DECODE_MAX_ROWS rows over all kv heads): one unit takes every kv head of its
     * key range, so it reads whole [heads, D] rows of K/V, contiguous in the usual [B, L, HK, D]
     * layout, instead of one head's D values per 4 KiB page (which defeats the hardware prefetcher
     * and the TLB). */
    qattn_units_plan(&pl->units, p, BLOCK_ROWS, DECODE_MAX_ROWS);
    pl->qscale = qattn_effective_scale(p) * LOG2E;
    pl->precision = p->precision == QATTN_PRECISION_AUTO ? QATTN_PRECISION_FP32 : p->precision;
    /* FP32 K/V need no conversion; with few rows per unit (decode) each key is used by few
     * rows, so copying it into a packed tile costs more than reading it strided. With many
     * rows the packed tile wins: rows of stride H*D alias in L1 and would be re-read from L2.
     * Either way the kernel sees the same values, so results do not change. */
    bool f32_kv = p->qkv_dtype == QATTN_DTYPE_F32 && pl->precision == QATTN_PRECISION_FP32 && p->k_seq_stride == p->v_seq_stride;
    bool few_rows = (p->seqlen_q < pl->units.block_pos ? p->seqlen_q : pl->units.block_pos) * pl->units.group <= DIRECT_KV_MAX_ROWS;
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
    pl->tile_keys = ((pl->direct_kv && few_rows) || pl->units.heads > 1) ? DECODE_TILE_KEYS : QATTN_TILE_KEYS;
    /* Prefill: every unit of a kv head walks the same K/V, and packing a 64-key tile reads 64 rows
     * H*D elements apart (a new page each at H*D >= 1024 FP32), which waits on L3 and page walks:
     * 14% of a 1-thread L2048 D128 run with 256-row units (perf, Zen 4). So when several units
     * share a head's keys, one pass packs K/V first, reading whole [HK, D] token rows in order,
     * and units read their tiles from it: the same values, so the same results. */
    pl->total_k = p->cu_seqlens_k ? p->cu_seqlens_k[p->batch] : p->batch * p->seqlen_k;
    pl->n_kchunks = ceil_div(p->seqlen_k > 0 ? p->seqlen_k : 1, PREPACK_KEYS);
    size_t prepack_bytes = (size_t)2 * (size_t)p->n_kv_heads * (size_t)pl->total_k * (size_t)p->head_dim * sizeof(float);
    pl->prepack = !pl->direct_kv && pl->units.heads == 1 && pl->units.n_qblocks >= 2 && pl->total_k > 0 && prepack_bytes <= PREPACK_MAX_BYTES;
    int64_t D = p->head_dim, m = pl->units.rows, hm = (int64_t)pl->units.rows * pl->units.heads;
    pl->softcap2 = p->softcap * LOG2E;
    pl->alibi = p->alibi_slopes != NULL;
    /* q pack and state (max, sum, acc) for every head of the unit, k pack, v pack, scores, lo/hi,
     * lo/hi after the block mask, ALiBi slopes of every row of every head and the rows' diagonals */
    pl->worker_floats = (size_t)(hm * D + 2 * QATTN_TILE_KEYS * D + m * QATTN_TILE_KEYS + hm * (D + 2) + 4 * m + hm + m);
    pl->worker_floats = (pl->worker_floats + 15) / 16 * 16; /* keep each worker 64-byte aligned */
}

static size_t prepack_floats(const plan *pl) {
    return pl->prepack ? (size_t)2 * (size_t)pl->p->n_kv_heads * (size_t)pl->total_k * (size_t)pl->p->head_dim : 0;
}

/* Workspace: per-worker scratch, the units' split partials and hand-out order (qattn_units_workspace),
 * the K/V pre-pack; each piece starts 64-byte aligned. */
static size_t scratch_bytes(const plan *pl, int n_workers) { return (size_t)n_workers * pl->worker_floats * sizeof(float); }
static size_t plan_bytes(const plan *pl, int n_workers) {
    return scratch_bytes(pl, n_workers) + qattn_units_workspace_bytes(&pl->units, pl->p) + prepack_floats(pl) * sizeof(float);
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

/* Row r of a unit is position i0 + r / group of query head g * group + r % group: the group's
 * heads of one position are rows of stride q_head_stride, packed by one call. */
static void pack_q(const plan *pl, const qattn_seq *s, int64_t i0, int n_pos, int g, float *qpack) {
    const qattn_params *p = pl->p;
    int D = p->head_dim;
    for (int pi = 0; pi < n_pos; pi++) {
        int64_t base = s->q_off + (i0 + pi) * p->q_seq_stride + (int64_t)g * pl->units.group * p->q_head_stride;
        pl->kern->pack_rows_f32(p->q, p->qkv_dtype, pl->precision, base, p->q_head_stride, pl->units.group, D, pl->qscale,
                                qpack + (int64_t)pi * pl->units.group * D, D);
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
    int D = p->head_dim, g = h / pl->units.group;
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
        for (int hg = 0; hg < pl->units.group; hg++) {
            int r = pi * pl->units.group + hg, h = g * pl->units.group + hg;
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

/* lo/hi of the unit's m rows (position i0 + r / group) for keys [t0, t0 + n): their window. */
static void window_intervals(const plan *pl, const qattn_seq *s, int64_t i0, int m, int64_t t0, int n, int32_t *lo, int32_t *hi) {
    const qattn_params *p = pl->p;
    for (int r = 0; r < m; r++) {
        int64_t a, b;
        qattn_key_range(i0 + r / pl->units.group, s->lq, s->lk, p->window_left, qattn_window_right(p), &a, &b);
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
        int h = g * pl->units.group + r % pl->units.group;
        bool live = qattn_block_mask_row(p, b, h, (i0 + r / pl->units.group) / p->block_mask_q)[kb] != 0;
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
    int G = pl->units.group, D = p->head_dim;
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
    task = qattn_units_task(&pl->units, task); /* what a unit computes does not depend on when it runs */
    qattn_unit u = qattn_unit_of(&pl->units, task);
    qattn_seq s = seq_view(pl, u.b);
    int64_t i0;
    int n_pos = qattn_unit_positions(&pl->units, &u, s.lq, &i0);
    if (n_pos == 0) return;
    int m = n_pos * pl->units.group, D = p->head_dim;

    float *w = pl->scratch + (size_t)worker * pl->worker_floats;
    int64_t hm = (int64_t)pl->units.rows * pl->units.heads;
    float *qpack = w; /* [heads][rows][D] */
    float *kpack = qpack + hm * D;
    float *vpack = kpack + (int64_t)pl->tile_keys * D;
    float *scores = vpack + (int64_t)pl->tile_keys * D;
    float *state_mem = scores + (int64_t)pl->units.rows * pl->tile_keys;
    int32_t *lo = (int32_t *)(state_mem + hm * (D + 2));
    int32_t *hi = lo + pl->units.rows;
    int32_t *mlo = hi + pl->units.rows, *mhi = mlo + pl->units.rows; /* lo/hi narrowed by the block mask */
    float *slopes = (float *)(mhi + pl->units.rows);                  /* [heads][rows], base-2 units */
    float *diag = slopes + hm;                                        /* [rows] */

    bool split = pl->units.n_split > 1;
    qattn_tile_state st[QATTN_MAX_UNIT_HEADS];
    int H = pl->units.heads;
    for (int hh = 0; hh < H; hh++) st[hh] = qattn_unit_state_begin(&pl->units, pl->partials, task, state_mem, hh, m, D);

    qattn_bm_rows bm_rows, *bm = NULL; /* the unit's rows of the block mask, if any */
    if (p->block_mask) {
        bm_rows = qattn_bm_rows_of(p, u.b, u.g * pl->units.group, (u.g + H) * pl->units.group, i0, i0 + n_pos);
        bm = &bm_rows;
    }
    int64_t k_begin, k_end;
    qattn_unit_key_range(&pl->units, p, &u, &s, i0, n_pos, bm, &k_begin, &k_end);
    if (bm) k_begin = qattn_bm_next_live(bm, k_begin, k_end);

    if (k_begin < k_end)
        for (int hh = 0; hh < H; hh++) pack_q(pl, &s, i0, n_pos, u.g + hh, qpack + (int64_t)hh * pl->units.rows * D);
    qattn_score_mod mods[QATTN_MAX_UNIT_HEADS];
    bool modified = pl->softcap2 > 0.0f || pl->alibi;
    for (int hh = 0; modified && hh < H; hh++) {
        mods[hh] = (qattn_score_mod){.cap = pl->softcap2, .inv_cap = pl->softcap2 > 0.0f ? 1.0f / pl->softcap2 : 0.0f,
                                     .slope = pl->alibi ? slopes + (int64_t)hh * pl->units.rows : NULL, .diag = diag};
        for (int r = 0; pl->alibi && r < m; r++) /* row r is query head (u.g + hh) * group + r % group */
            slopes[(int64_t)hh * pl->units.rows + r] =
                p->alibi_slopes[u.b * p->alibi_batch_stride + (u.g + hh) * pl->units.group + r % pl->units.group] * LOG2E;
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
        for (int r = 0; pl->alibi && r < m; r++) diag[r] = (float)(i0 + r / pl->units.group + s.lk - s.lq - t0);
        for (int hh = 0; hh < H; hh++) {
            int g = u.g + hh;
            const float *qh = qpack + (int64_t)hh * pl->units.rows * D;
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

/* Second phase of a split run: the partials of one (b, g, qblock), merged in split order, to O and LSE. */
static void merge_unit(void *arg, int64_t task, int worker) {
    (void)worker;
    const plan *pl = arg;
    qattn_unit u = qattn_units_merge_unit(&pl->units, task);
    qattn_seq s = seq_view(pl, u.b);
    int64_t i0;
    int n_pos = qattn_unit_positions(&pl->units, &u, s.lq, &i0);
    if (n_pos == 0) return;
    int m = n_pos * pl->units.group, D = pl->p->head_dim;
    for (int hh = 0; hh < pl->units.heads; hh++) {
        qattn_tile_state total = qattn_units_merge_splits(&pl->units, pl->partials, task, hh, m, D);
        write_rows(pl, &s, u.b, i0, n_pos, u.g + hh, &total);
    }
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
    *bytes = pl.units.n_units > 0 ? plan_bytes(&pl, qattn_workers_for(ctx->n_threads, pl.units.n_units)) : 0;
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
    if (kv && kv->block_table && pl.direct_kv && pl.tile_keys == QATTN_TILE_KEYS) pl.direct_kv = false;
    if (pl.units.n_units == 0) return QATTN_OK; /* no query rows anywhere */
    int nw = qattn_workers_for(ctx->n_threads, pl.units.n_units);
    void *mem;
    s = qattn_workspace_take(ctx, p->workspace, p->workspace_size, plan_bytes(&pl, nw), &mem);
    if (s != QATTN_OK) return s;
    unsigned char *units_mem = (unsigned char *)mem + scratch_bytes(&pl, nw);
    pl.scratch = mem;
    pl.partials = qattn_units_workspace(&pl.units, p, kv ? kv->seqlens_k : NULL, units_mem);
    pl.kv_packed = (float *)(void *)(units_mem + qattn_units_workspace_bytes(&pl.units, p));
    if (pl.prepack) qattn_parallel_for(ctx->pool, ctx->n_threads, p->batch * pl.n_kchunks, prepack_task, &pl);
    atomic_init(&pl.overflow_row, INT64_MAX);
    qattn_units_run(ctx->pool, &pl.units, nw, run_unit, merge_unit, &pl);
    qattn_workspace_release(ctx, mem, p->workspace);
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
