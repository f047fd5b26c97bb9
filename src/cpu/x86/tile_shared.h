/* The ISA-independent parts of the AVX2 and AVX-512 FP tile kernels: the online-softmax update
 * of a row's running state, and P V over a block of rows with per-row key intervals. Included once
 * by each kernel file, after it defines its register-blocked
 *   pv_rows(const int R, const float *p, int64_t ldp, const float *v, int64_t ldv, int d,
 *           int j0, int j1, float *acc, int64_t lda)   (R <= 6, always inlined)
 * so that each gets these functions built on its own pv_rows and compiled with its own flags. */
#ifndef QATTN_TILE_SHARED_H
#define QATTN_TILE_SHARED_H

#include <math.h>

/* A row's running state meets a tile whose visible scores peak at tile_max. Every visible score
 * NaN or -inf (a non-finite input): the row becomes NaN, as in the reference kernel (row_max -inf
 * would make it a zero row and hide the NaN; its P V update then only adds to NaN), and this
 * returns false. Else the max the tile's probabilities
 * are taken against goes to *use_max; the sum and acc are rescaled only when the max grows. */
static inline bool softmax_update_state(float tile_max, int d, float *row_max, float *row_sum, float *acc, float *use_max) {
    if (!(tile_max > -INFINITY)) {
        *row_max = NAN;
        *row_sum = NAN;
        for (int c = 0; c < d; c++) acc[c] = NAN;
        return false;
    }
    float old_max = *row_max;
    float new_max = tile_max > old_max ? tile_max : old_max;
    if (new_max > old_max) {
        float alpha = exp2f(old_max - new_max);
        *row_sum *= alpha;
        for (int c = 0; c < d; c++) acc[c] *= alpha;
        *row_max = new_max;
    }
    *use_max = new_max;
    return true;
}

/* One row over keys [j0, j1) (the parts of a row's interval outside its block's common one). */
static void pv_one(const float *p, const float *v, int64_t ldv, int d, int j0, int j1, float *acc) {
    if (j0 < j1) pv_rows(1, p, 0, v, ldv, d, j0, j1, acc, 0);
}

/* Rows [0, R) of P V (R <= 6): the keys every row of the block sees go through the R-row kernel,
 * the rest of each row's interval through the one-row kernel (skipped keys stay skipped). */
static void pv_row_block(int R, const float *p, int64_t ldp, const float *v, int64_t ldv, int d, const int32_t *lo, const int32_t *hi,
                         float *acc, int64_t lda) {
    int a = 0, b = 1 << 30;
    for (int r = 0; r < R; r++) {
        if (lo[r] > a) a = lo[r];
        if (hi[r] < b) b = hi[r];
    }
    if (a >= b) { /* no key common to all rows (or an empty row): row by row */
        for (int r = 0; r < R; r++) pv_one(p + r * ldp, v, ldv, d, lo[r], hi[r], acc + r * lda);
        return;
    }
    switch (R) {
    case 6: pv_rows(6, p, ldp, v, ldv, d, a, b, acc, lda); break;
    case 5: pv_rows(5, p, ldp, v, ldv, d, a, b, acc, lda); break;
    case 4: pv_rows(4, p, ldp, v, ldv, d, a, b, acc, lda); break;
    case 3: pv_rows(3, p, ldp, v, ldv, d, a, b, acc, lda); break;
    case 2: pv_rows(2, p, ldp, v, ldv, d, a, b, acc, lda); break;
    default: pv_rows(1, p, ldp, v, ldv, d, a, b, acc, lda); break;
    }
    for (int r = 0; r < R; r++) {
        pv_one(p + r * ldp, v, ldv, d, lo[r], a, acc + r * lda);
        pv_one(p + r * ldp, v, ldv, d, b, hi[r], acc + r * lda);
    }
}

#endif
