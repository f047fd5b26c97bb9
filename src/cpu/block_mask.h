/* Block-sparse attention (qattn_params.block_mask) for the CPU drivers: which key blocks a work
 * unit's rows need, where a key tile must end so that every row sees an interval of it, how to
 * cut a unit's KV splits and order the units by their live work. Reads the mask only; the
 * kernels never see it (they get per-row key intervals, as for the window mask). */
#ifndef QATTN_CPU_BLOCK_MASK_H
#define QATTN_CPU_BLOCK_MASK_H

#include "qattn_internal.h"

/* The block-mask rows of a unit: query heads [h0, h1) at positions [i0, i1) of sequence b,
 * that is mask rows (h, qb) for h in [h0, h1), qb in [qb0, qb1). */
typedef struct qattn_bm_rows {
    const qattn_params *p;
    int64_t b;
    int h0, h1;
    int64_t qb0, qb1;
} qattn_bm_rows;

static inline qattn_bm_rows qattn_bm_rows_of(const qattn_params *p, int64_t b, int h0, int h1, int64_t i0, int64_t i1) {
    qattn_bm_rows r = {p, b, h0, h1, i0 / p->block_mask_q, (i1 - 1) / p->block_mask_q + 1};
    return r;
}

/* Whether key block kb is computed for at least one of the rows. */
bool qattn_bm_any_live(const qattn_bm_rows *r, int64_t kb);

/* The first key in [t0, t1) whose block is computed for some row; t1 if none. */
int64_t qattn_bm_next_live(const qattn_bm_rows *r, int64_t t0, int64_t t1);

/* The end (<= t1) of the keys from t0 over which no row's mask changes: the first key block
 * boundary in (t0, t1) after which the set of live (head, query block) rows differs, else t1.
 * A tile [t0, end) is then all visible or all hidden for each row (an interval per row). */
int64_t qattn_bm_uniform_end(const qattn_bm_rows *r, int64_t t0, int64_t t1);

/* The first key of KV split `split` of n_split over keys [0, lk): the splits cut the key blocks
 * that are live for some row and meet [k0, k1) into n_split runs of (nearly) equal count, so each
 * split has the same work whatever the density; split 0 starts at 0 and split n_split at lk. */
int64_t qattn_bm_split_start(const qattn_bm_rows *r, int64_t k0, int64_t k1, int64_t split, int64_t n_split, int64_t lk);

/* Keys [*k_begin, *k_end) a work unit may touch: the union of the window intervals of query
 * positions [i0, i0 + n_pos) of sequence s, cut to KV split `split` of n_split. Without a block
 * mask (bm NULL, or one split) a split is keys [split * split_keys, + split_keys); with one, the
 * splits hold equal numbers of the unit's live key blocks (qattn_bm_split_start). Both CPU drivers. */
void qattn_bm_unit_key_range(const qattn_params *p, const qattn_seq *s, int64_t i0, int n_pos, int64_t split, int64_t n_split,
                             int64_t split_keys, const qattn_bm_rows *bm, int64_t *k_begin, int64_t *k_end);

/* Work estimate of a unit: for each of its query blocks, its positions in [i0, i1) times the key
 * blocks meeting [k0, k1) that some head computes for it. Only orders units (never changes results). */
int64_t qattn_bm_cost(const qattn_bm_rows *r, int64_t i0, int64_t i1, int64_t k0, int64_t k1);

/* qattn_bm_cost of the unit of query heads [h0, h1) at positions [i0, i0 + block_pos) (cut to the
 * sequence) of sequence b, KV split `split` (as qattn_bm_unit_key_range); 0 when i0 >= s->lq. */
int64_t qattn_bm_unit_cost_of(const qattn_params *p, const qattn_seq *s, int64_t b, int h0, int h1, int64_t i0, int block_pos, int64_t split,
                              int64_t n_split, int64_t split_keys);

/* A unit and its cost; qattn_bm_sort_units orders them by cost, largest first (ties: lower unit
 * first), so the thread pool's dynamic hand-out starts the long units early and ends balanced. */
typedef struct qattn_bm_unit_cost {
    int64_t cost, unit;
} qattn_bm_unit_cost;

void qattn_bm_sort_units(qattn_bm_unit_cost *units, int64_t n);

#endif
