/* AVX2 + FMA micro-kernels for the CPU driver (compiled with -mavx2 -mfma -mf16c only here).
 * Contract: qattn_attend_tile_fn in qattn_internal.h. FP32 throughout, no fast-math: the
 * exp2 below is a polynomial with explicit -inf / NaN handling, and masked keys are skipped
 * (never multiplied by 0), so a NaN/Inf in a key outside a row's interval never reaches it.
 *
 * Shapes: q [m][ldq], k and v [n][ldkv], d a multiple of 8 (qattn_validate guarantees it).
 * Scores live in scratch as s[m][n] and are overwritten in place by the probabilities p. */
#include "qattn_internal.h"

#include "kv/kv_internal.h" /* the decode kernel of the table */
#include "quant/lowp.h"       /* its INT8 table */

#include <immintrin.h>

#include "cpu/x86/exp2_avx2.h"

#define QATTN_INLINE static inline __attribute__((always_inline))

/* Register blocking (16 ymm registers):
 *   S = Q K^T: 3 query rows x 4 keys = 12 accumulators along d, + 3 q vectors + 1 k vector.
 *              Loads per step: 7 for 12 FMAs, so the two FMA ports are the bound.
 *   acc += P V: 6 rows x 2 vectors (16 columns) = 12 accumulators + 2 v + 1 broadcast p.
 *              Loads per key: 8 for 12 FMAs. */
#define QK_ROWS 3
#define QK_KEYS 4
#define PV_ROWS 6
#define PV_VECS 2

/* Lanes [0, count) set, for the partial vector at the end of a row's key interval. */
QATTN_INLINE __m256i lane_mask(int count) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), idx);
}

QATTN_INLINE float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

QATTN_INLINE float hmax_ps(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The four dot products held (8 partial sums each) in a, b, c, e, as one vector [a, b, c, e]. */
QATTN_INLINE __m128 hsum4_ps(__m256 a, __m256 b, __m256 c, __m256 e) {
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, e));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* s[r][j] = q[r] . k[j] for R rows (R <= QK_ROWS) and J keys (J == QK_KEYS or 1). */
QATTN_INLINE void qk_block(const int R, const int J, const float *q, int64_t ldq, const float *k, int64_t ldk, int d, float *s,
                           int64_t lds) {
    __m256 acc[QK_ROWS][QK_KEYS];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) acc[r][j] = _mm256_setzero_ps();
    for (int c = 0; c < d; c += 8) {
        __m256 qv[QK_ROWS];
        for (int r = 0; r < R; r++) qv[r] = _mm256_loadu_ps(q + r * ldq + c);
        for (int j = 0; j < J; j++) {
            __m256 kv = _mm256_loadu_ps(k + j * ldk + c);
            for (int r = 0; r < R; r++) acc[r][j] = _mm256_fmadd_ps(qv[r], kv, acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++) {
        if (J == 4)
            _mm_storeu_ps(s + r * lds, hsum4_ps(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
        else
            for (int j = 0; j < J; j++) s[r * lds + j] = hsum_ps(acc[r][j]);
    }
}

/* Scores of R rows over keys [j0, j1). */
QATTN_INLINE void qk_rows(const int R, const float *q, int64_t ldq, const float *k, int64_t ldk, int d, int j0, int j1, float *s,
                          int64_t lds) {
    int j = j0;
    for (; j + QK_KEYS <= j1; j += QK_KEYS) qk_block(R, QK_KEYS, q, ldq, k + j * ldk, ldk, d, s + j, lds);
    for (; j < j1; j++) qk_block(R, 1, q, ldq, k + j * ldk, ldk, d, s + j, lds);
}

/* acc[r][c0 .. c0+8C) += sum over keys [j0, j1) of p[r][j] * v[j][c0 ..], for R rows. */
QATTN_INLINE void pv_block(const int R, const int C, const float *p, int64_t ldp, const float *v, int64_t ldv, int j0, int j1, float *acc,
                           int64_t lda) {
    __m256 a[PV_ROWS][PV_VECS];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) a[r][c] = _mm256_loadu_ps(acc + r * lda + 8 * c);
    for (int j = j0; j < j1; j++) {
        __m256 vv[PV_VECS];
        for (int c = 0; c < C; c++) vv[c] = _mm256_loadu_ps(v + j * ldv + 8 * c);
        for (int r = 0; r < R; r++) {
            __m256 pr = _mm256_broadcast_ss(p + r * ldp + j);
            for (int c = 0; c < C; c++) a[r][c] = _mm256_fmadd_ps(pr, vv[c], a[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) _mm256_storeu_ps(acc + r * lda + 8 * c, a[r][c]);
}

QATTN_INLINE void pv_rows(const int R, const float *p, int64_t ldp, const float *v, int64_t ldv, int d, int j0, int j1, float *acc,
                          int64_t lda) {
    int c = 0;
    for (; c + 8 * PV_VECS <= d; c += 8 * PV_VECS) pv_block(R, PV_VECS, p, ldp, v + c, ldv, j0, j1, acc + c, lda);
    for (; c < d; c += 8) pv_block(R, 1, p, ldp, v + c, ldv, j0, j1, acc + c, lda);
}

#include "cpu/x86/tile_shared.h" /* softmax_update_state; pv_one, pv_row_block on the pv_rows above */

/* Online-softmax update of one row: scores s[lo, hi) -> probabilities in place, the running
 * max/sum/acc rescaled only when the max grows. Same rules as the reference kernel. */
static void softmax_row(float *s, int lo, int hi, int d, float *row_max, float *row_sum, float *acc) {
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int j = lo;
    for (; j + 8 <= hi; j += 8) vmax = _mm256_max_ps(_mm256_loadu_ps(s + j), vmax); /* a NaN score loses here */
    float tile_max = hmax_ps(vmax);
    for (; j < hi; j++)
        if (s[j] > tile_max) tile_max = s[j];
    float new_max;
    if (!softmax_update_state(tile_max, d, row_max, row_sum, acc, &new_max)) return;
    __m256 vm = _mm256_set1_ps(new_max), vsum = _mm256_setzero_ps();
    for (j = lo; j + 8 <= hi; j += 8) {
        __m256 pj = qattn_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        _mm256_storeu_ps(s + j, pj);
        vsum = _mm256_add_ps(vsum, pj);
    }
    if (j < hi) { /* the last partial vector: masked lanes are neither read, written nor summed */
        __m256i mask = lane_mask(hi - j);
        __m256 pj = qattn_exp2_avx2(_mm256_sub_ps(_mm256_maskload_ps(s + j, mask), vm));
        _mm256_maskstore_ps(s + j, mask, pj);
        vsum = _mm256_add_ps(vsum, _mm256_blendv_ps(_mm256_setzero_ps(), pj, _mm256_castsi256_ps(mask)));
    }
    *row_sum += hsum_ps(vsum);
}

/* qattn_tanhf on 8 lanes: the same operations in the same order (fused multiply-adds, one
 * division), so each lane gives the scalar function's bits. NaN stays NaN: max_ps/min_ps return
 * their second operand when either is NaN. */
QATTN_INLINE __m256 tanh_avx2(__m256 x) {
    const __m256 clamp = _mm256_set1_ps(7.90531110763549805f);
    __m256 xc = _mm256_min_ps(clamp, _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), clamp), x));
    __m256 x2 = _mm256_mul_ps(xc, xc);
    __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(-2.76076847742355e-16f), _mm256_set1_ps(2.00018790482477e-13f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-8.60467152213735e-11f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(5.12229709037114e-08f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(1.48572235717979e-05f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(6.37261928875436e-04f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(4.89352455891786e-03f));
    __m256 q = _mm256_fmadd_ps(x2, _mm256_set1_ps(1.19825839466702e-06f), _mm256_set1_ps(1.18534705686654e-04f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(2.26843463243900e-03f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(4.89352518554385e-03f));
    __m256 r = _mm256_div_ps(_mm256_mul_ps(p, xc), q);
    __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    return _mm256_blendv_ps(r, x, _mm256_cmp_ps(ax, _mm256_set1_ps(0.0004f), _CMP_LT_OQ));
}

/* Softcap and ALiBi of one row (qattn_score_mod_row), the tanh 8 lanes at a time. */
static void score_mod_row(const qattn_score_mod *mod, int r, float *s, int lo, int hi) {
    if (mod->cap > 0.0f) {
        __m256 cap = _mm256_set1_ps(mod->cap), inv = _mm256_set1_ps(mod->inv_cap);
        int j = lo;
        for (; j + 8 <= hi; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(cap, tanh_avx2(_mm256_mul_ps(_mm256_loadu_ps(s + j), inv))));
        qattn_score_softcap_row(mod, s, j, hi);
    }
    if (mod->slope) qattn_score_alibi_row(mod, r, s, lo, hi);
}

static void qattn_attend_tile_f32_avx2(const float *q, int64_t ldq, int m, int d, const float *k, const float *v, int64_t ldkv, int n,
                                       const int32_t *lo, const int32_t *hi, const qattn_score_mod *mod, qattn_tile_state *st,
                                   float *scratch) {
    float *s = scratch; /* [m][n] */
    int64_t lds = n;

    /* S = Q K^T over each row block's union of intervals (scores outside a row's own
     * interval are computed but never read). */
    for (int r0 = 0; r0 < m;) {
        /* 3-row blocks; four rows left go as 2 + 2 (a 1-row block loads 4 k vectors per 4 FMAs) */
        int R = m - r0 == 4 ? 2 : m - r0 < QK_ROWS ? m - r0 : QK_ROWS;
        int r_next = r0 + R;
        int j0 = n, j1 = 0;
        for (int r = r0; r < r0 + R; r++)
            if (lo[r] < hi[r]) {
                if (lo[r] < j0) j0 = lo[r];
                if (hi[r] > j1) j1 = hi[r];
            }
        if (j0 >= j1) {
            r0 = r_next;
            continue;
        }
        const float *qr = q + r0 * ldq;
        float *sr = s + r0 * lds;
        if (R == 3)
            qk_rows(3, qr, ldq, k, ldkv, d, j0, j1, sr, lds);
        else if (R == 2)
            qk_rows(2, qr, ldq, k, ldkv, d, j0, j1, sr, lds);
        else
            qk_rows(1, qr, ldq, k, ldkv, d, j0, j1, sr, lds);
        r0 = r_next;
    }

    if (qattn_score_mod_active(mod)) /* softcap / ALiBi: one pass over each row's visible scores */
        for (int r = 0; r < m; r++) score_mod_row(mod, r, s + r * lds, lo[r], hi[r]);
    for (int r = 0; r < m; r++)
        if (lo[r] < hi[r]) softmax_row(s + r * lds, lo[r], hi[r], d, st->row_max + r, st->row_sum + r, st->acc + r * st->ld_acc);

    for (int r0 = 0; r0 < m; r0 += PV_ROWS) {
        int R = m - r0 < PV_ROWS ? m - r0 : PV_ROWS;
        pv_row_block(R, s + r0 * lds, lds, v, ldkv, d, lo + r0, hi + r0, st->acc + r0 * st->ld_acc, st->ld_acc);
    }
}

/* pack_avx2.c */
void qattn_pack_rows_f32_avx2(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows, int d,
                              float mul, float *dst, int64_t ldd);

const qattn_cpu_kernels qattn_kernels_avx2 = {
    .name = "avx2",
    .attend_tile_f32 = qattn_attend_tile_f32_avx2,
    .pack_rows_f32 = qattn_pack_rows_f32_avx2,
    .kv_attend = qattn_kv_attend_avx2,
    .int8 = &qattn_int8_kernels_avx2,
};
