/* Block-sparse attention helpers of the CPU drivers (src/cpu/block_mask.h): scans of the block
 * mask over a unit's (head, query block) rows. Cost: heads x query blocks bytes per key block,
 * against at least 16 x 16 x D multiply-adds that a live block costs. */
#include "cpu/block_mask.h"

#include <stdlib.h>

bool qattn_bm_any_live(const qattn_bm_rows *r, int64_t kb) {
    for (int h = r->h0; h < r->h1; h++)
        for (int64_t qb = r->qb0; qb < r->qb1; qb++)
            if (qattn_block_mask_row(r->p, r->b, h, qb)[kb]) return true;
    return false;
}

static bool same_rows(const qattn_bm_rows *r, int64_t ka, int64_t kb) {
    for (int h = r->h0; h < r->h1; h++)
        for (int64_t qb = r->qb0; qb < r->qb1; qb++) {
            const uint8_t *row = qattn_block_mask_row(r->p, r->b, h, qb);
            if ((row[ka] != 0) != (row[kb] != 0)) return false;
        }
    return true;
}

int64_t qattn_bm_next_live(const qattn_bm_rows *r, int64_t t0, int64_t t1) {
    int64_t bk = r->p->block_mask_k;
    while (t0 < t1 && !qattn_bm_any_live(r, t0 / bk)) t0 = (t0 / bk + 1) * bk;
    return t0 < t1 ? t0 : t1;
}

int64_t qattn_bm_uniform_end(const qattn_bm_rows *r, int64_t t0, int64_t t1) {
    int64_t bk = r->p->block_mask_k, first = t0 / bk;
    for (int64_t kb = first + 1; kb * bk < t1; kb++)
        if (!same_rows(r, first, kb)) return kb * bk;
    return t1;
}

/* Key blocks meeting [k0, k1), as a block range. */
static void block_range(const qattn_bm_rows *r, int64_t k0, int64_t k1, int64_t *kb0, int64_t *kb1) {
    int64_t bk = r->p->block_mask_k;
    *kb0 = k0 / bk;
    *kb1 = k1 > k0 ? (k1 - 1) / bk + 1 : *kb0;
}

int64_t qattn_bm_split_start(const qattn_bm_rows *r, int64_t k0, int64_t k1, int64_t split, int64_t n_split, int64_t lk) {
    if (split <= 0) return 0;
    if (split >= n_split) return lk;
    int64_t kb0, kb1, live = 0;
    block_range(r, k0, k1, &kb0, &kb1);
    for (int64_t kb = kb0; kb < kb1; kb++) live += qattn_bm_any_live(r, kb);
    int64_t want = split * live / n_split; /* live blocks before this split */
    for (int64_t kb = kb0, seen = 0; kb < kb1; kb++) {
        if (!qattn_bm_any_live(r, kb)) continue;
        if (seen == want) {
            int64_t start = kb * r->p->block_mask_k;
            return start < lk ? start : lk;
        }
        seen++;
    }
    return lk;
}

int64_t qattn_bm_cost(const qattn_bm_rows *r, int64_t i0, int64_t i1, int64_t k0, int64_t k1) {
    int64_t kb0, kb1, bq = r->p->block_mask_q, cost = 0;
    block_range(r, k0, k1, &kb0, &kb1);
    for (int64_t qb = r->qb0; qb < r->qb1; qb++) {
        int64_t a = qb * bq > i0 ? qb * bq : i0, z = (qb + 1) * bq < i1 ? (qb + 1) * bq : i1, live = 0;
        for (int64_t kb = kb0; kb < kb1; kb++)
            for (int h = r->h0; h < r->h1; h++)
                if (qattn_block_mask_row(r->p, r->b, h, qb)[kb]) {
                    live++;
                    break;
                }
        cost += (z - a) * live;
    }
    return cost;
}

static int by_cost_desc(const void *a, const void *b) {
    const qattn_bm_unit_cost *x = a, *y = b;
    if (x->cost != y->cost) return x->cost > y->cost ? -1 : 1;
    return x->unit < y->unit ? -1 : x->unit > y->unit;
}

void qattn_bm_sort_units(qattn_bm_unit_cost *units, int64_t n) { qsort(units, (size_t)n, sizeof *units, by_cost_desc); }

void qattn_bm_unit_key_range(const qattn_params *p, const qattn_seq *s, int64_t i0, int n_pos, int64_t split, int64_t n_split,
                             int64_t split_keys, const qattn_bm_rows *bm, int64_t *k_begin, int64_t *k_end) {
    int64_t klo_first, khi_first, klo_last, khi_last;
    qattn_key_range(i0, s->lq, s->lk, p->window_left, qattn_window_right(p), &klo_first, &khi_first);
    qattn_key_range(i0 + n_pos - 1, s->lq, s->lk, p->window_left, qattn_window_right(p), &klo_last, &khi_last);
    int64_t c0 = split * split_keys, c1 = c0 + split_keys;
    if (bm && n_split > 1) {
        c0 = qattn_bm_split_start(bm, klo_first, khi_last, split, n_split, s->lk);
        c1 = qattn_bm_split_start(bm, klo_first, khi_last, split + 1, n_split, s->lk);
    }
    *k_begin = klo_first > c0 ? klo_first : c0;
    *k_end = khi_last < c1 ? khi_last : c1;
}

int64_t qattn_bm_unit_cost_of(const qattn_params *p, const qattn_seq *s, int64_t b, int h0, int h1, int64_t i0, int block_pos, int64_t split,
                              int64_t n_split, int64_t split_keys) {
    if (i0 >= s->lq) return 0;
    int n_pos = (int)(s->lq - i0 < block_pos ? s->lq - i0 : block_pos);
    qattn_bm_rows bm = qattn_bm_rows_of(p, b, h0, h1, i0, i0 + n_pos);
    int64_t k0, k1;
    qattn_bm_unit_key_range(p, s, i0, n_pos, split, n_split, split_keys, &bm, &k0, &k1);
    return qattn_bm_cost(&bm, i0, i0 + n_pos, k0, k1);
}
