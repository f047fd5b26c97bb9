/* AVX-512 FP tile kernel for the CPU driver (compiled with the AVX-512 flags, the *_avx512.c rule in
 * CMakeLists.txt; chosen only when ctx->isa is QATTN_ISA_AVX512). Contract: qattn_attend_tile_fn in
 * qattn_internal.h; same rules as the AVX2 kernel (attend_tile_avx2.c): FP32, no fast-math, masked
 * keys skipped (never multiplied by 0), rescale only when the max grows.
 *
 * Shapes: q [m][ldq], k and v [n][ldkv], d a multiple of 8 (so a row is whole 16-lane vectors plus
 * at most one 8-lane half, done with a mask). Scores live in scratch as s[m][n], then p in place. */
#include "qattn_internal.h"

#include "kv/kv_internal.h" /* the decode kernel of the table */
#include "quant/lowp.h"       /* its INT8 table */

#include "cpu/x86/pack_kind.h"

#include <immintrin.h>

#include "cpu/x86/exp2_avx512.h"

#define QATTN_INLINE static inline __attribute__((always_inline))

/* Register blocking (32 zmm registers; Zen 4 retires one 16-lane FMA per cycle, Sapphire Rapids two):
 *   S = Q K^T (m >= KT_MIN_ROWS): K is transposed to kt[d][64] once per 64 keys, then 6 query rows
 *     x 4 vectors of 16 keys = 24 accumulators; per step of d: 4 loads of kt and 6 broadcasts of q
 *     (memory operands of the FMAs) for 24 FMAs, and no horizontal sums.
 *   S = Q K^T (m < KT_MIN_ROWS, decode): the transpose would cost more than the products (d*n moves
 *     for m*n*d/16 FMAs), so dot products along d: 4 rows x 4 keys = 16 accumulators.
 *   acc += P V: 6 rows x 4 vectors (64 columns) = 24 accumulators; per key 4 loads of v and 6
 *     broadcasts of p for 24 FMAs. */
#define QK_ROWS 6
#define QK_VECS 4
#define KT_KEYS (16 * QK_VECS) /* keys per transposed chunk */
#define KT_MIN_ROWS 16
#define DOT_ROWS 4
#define DOT_KEYS 4
#define PV_ROWS 6
#define PV_VECS 4
#define MAX_D QATTN_HEAD_DIM_MAX /* the kt buffer: qattn_validate caps head_dim */

/* Lanes [0, count) of a 16-lane vector (count may exceed 16). */
QATTN_INLINE __mmask16 lanes(int count) { return count >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << count) - 1u); }

/* ---------------------------------------------------------------- S = Q K^T, transposed K */

/* 16x16 transpose in registers: r[i] = row i -> r[j] = column j. */
QATTN_INLINE void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* r[4i+k], 128-bit lane L: column 4L+k of rows 4i..4i+3 */
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int k = 0; k < 4; k++) {
        __m512 y0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88), y1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
        __m512 y2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88), y3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
        t[k] = _mm512_shuffle_f32x4(y0, y2, 0x88);
        t[8 + k] = _mm512_shuffle_f32x4(y0, y2, 0xdd);
        t[4 + k] = _mm512_shuffle_f32x4(y1, y3, 0x88);
        t[12 + k] = _mm512_shuffle_f32x4(y1, y3, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* kt[c][j] = k[j][c] for j < nk (<= KT_KEYS), c < d; keys nk .. round16(nk) are zero, so the score
 * vectors past the tile's last key read defined values (and are never stored). Keys are read only
 * below nk, columns only below d. */
static void transpose_keys(const float *k, int64_t ldk, int nk, int d, float *kt) {
    for (int j0 = 0; j0 < nk; j0 += 16) {
        int rows = nk - j0 < 16 ? nk - j0 : 16;
        for (int c0 = 0; c0 < d; c0 += 16) {
            __mmask16 cm = lanes(d - c0);
            __m512 r[16];
            for (int i = 0; i < 16; i++) r[i] = i < rows ? _mm512_maskz_loadu_ps(cm, k + (j0 + i) * ldk + c0) : _mm512_setzero_ps();
            transpose16(r);
            int cols = d - c0 < 16 ? d - c0 : 16;
            for (int i = 0; i < cols; i++) _mm512_store_ps(kt + (c0 + i) * KT_KEYS + j0, r[i]);
        }
    }
}

/* s[r][16v ..] for R rows and C key vectors of kt (from vector v0 of the chunk), stored for the
 * keys below nk only. q is [R][ldq]; s points at the chunk's first key of row 0. */
QATTN_INLINE void qk_block_t(const int R, const int C, const float *q, int64_t ldq, const float *kt, int d, int v0, int nk, float *s,
                             int64_t lds) {
    __m512 acc[QK_ROWS][QK_VECS];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    const float *kc = kt + 16 * v0;
    for (int i = 0; i < d; i++, kc += KT_KEYS) {
        __m512 kv[QK_VECS];
        for (int c = 0; c < C; c++) kv[c] = _mm512_load_ps(kc + 16 * c);
        for (int r = 0; r < R; r++) {
            __m512 qb = _mm512_set1_ps(q[r * ldq + i]);
            for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(qb, kv[c], acc[r][c]);
        }
    }
    for (int c = 0; c < C; c++) {
        int j = 16 * (v0 + c);
        __mmask16 m = lanes(nk - j);
        for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(s + r * lds + j, m, acc[r][c]);
    }
}

QATTN_INLINE void qk_rows_t(const int R, const float *q, int64_t ldq, const float *kt, int d, int v0, int v1, int nk, float *s, int64_t lds) {
    switch (v1 - v0) {
    case 4: qk_block_t(R, 4, q, ldq, kt, d, v0, nk, s, lds); break;
    case 3: qk_block_t(R, 3, q, ldq, kt, d, v0, nk, s, lds); break;
    case 2: qk_block_t(R, 2, q, ldq, kt, d, v0, nk, s, lds); break;
    default: qk_block_t(R, 1, q, ldq, kt, d, v0, nk, s, lds); break;
    }
}

/* Scores of every row with a visible key, over the union of its block's intervals, chunk by chunk. */
static void qk_transposed(const float *q, int64_t ldq, int m, int d, const float *k, int64_t ldk, int n, const int32_t *lo,
                          const int32_t *hi, float *s, int64_t lds) {
    _Alignas(64) float kt[MAX_D * KT_KEYS];
    for (int jb = 0; jb < n; jb += KT_KEYS) {
        int nk = n - jb < KT_KEYS ? n - jb : KT_KEYS;
        transpose_keys(k + jb * ldk, ldk, nk, d, kt);
        for (int r0 = 0; r0 < m; r0 += QK_ROWS) {
            int R = m - r0 < QK_ROWS ? m - r0 : QK_ROWS;
            int j0 = nk, j1 = 0; /* the block's keys within this chunk */
            for (int r = r0; r < r0 + R; r++) {
                int a = lo[r] - jb, b = hi[r] - jb;
                if (a < 0) a = 0;
                if (b > nk) b = nk;
                if (a < b) {
                    if (a < j0) j0 = a;
                    if (b > j1) j1 = b;
                }
            }
            if (j0 >= j1) continue;
            int v0 = j0 / 16, v1 = (j1 + 15) / 16;
            const float *qr = q + r0 * ldq;
            float *sr = s + r0 * lds + jb;
            switch (R) {
            case 6: qk_rows_t(6, qr, ldq, kt, d, v0, v1, nk, sr, lds); break;
            case 5: qk_rows_t(5, qr, ldq, kt, d, v0, v1, nk, sr, lds); break;
            case 4: qk_rows_t(4, qr, ldq, kt, d, v0, v1, nk, sr, lds); break;
            case 3: qk_rows_t(3, qr, ldq, kt, d, v0, v1, nk, sr, lds); break;
            case 2: qk_rows_t(2, qr, ldq, kt, d, v0, v1, nk, sr, lds); break;
            default: qk_rows_t(1, qr, ldq, kt, d, v0, v1, nk, sr, lds); break;
            }
        }
    }
}

/* ---------------------------------------------------------------- S = Q K^T, dot products (few rows) */

/* The sum of the 16 lanes of a, b, c, e as one vector [a, b, c, e]. */
QATTN_INLINE __m128 hsum4_ps(__m512 a, __m512 b, __m512 c, __m512 e) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 e8 = _mm256_add_ps(_mm512_castps512_ps256(e), _mm512_extractf32x8_ps(e, 1));
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, e8));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* s[r][j] = q[r] . k[j] for R rows (R <= DOT_ROWS) and J keys (J == DOT_KEYS or 1). */
QATTN_INLINE void qk_block_dot(const int R, const int J, const float *q, int64_t ldq, const float *k, int64_t ldk, int d, float *s,
                               int64_t lds) {
    __m512 acc[DOT_ROWS][DOT_KEYS];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) acc[r][j] = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
        __mmask16 cm = lanes(d - c); /* the zeroed lanes of a d % 16 == 8 tail add nothing */
        __m512 qv[DOT_ROWS];
        for (int r = 0; r < R; r++) qv[r] = _mm512_maskz_loadu_ps(cm, q + r * ldq + c);
        for (int j = 0; j < J; j++) {
            __m512 kv = _mm512_maskz_loadu_ps(cm, k + j * ldk + c);
            for (int r = 0; r < R; r++) acc[r][j] = _mm512_fmadd_ps(qv[r], kv, acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++) {
        if (J == DOT_KEYS)
            _mm_storeu_ps(s + r * lds, hsum4_ps(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
        else
            s[r * lds] = _mm512_reduce_add_ps(acc[r][0]);
    }
}

QATTN_INLINE void qk_rows_dot(const int R, const float *q, int64_t ldq, const float *k, int64_t ldk, int d, int j0, int j1, float *s,
                              int64_t lds) {
    int j = j0;
    for (; j + DOT_KEYS <= j1; j += DOT_KEYS) qk_block_dot(R, DOT_KEYS, q, ldq, k + j * ldk, ldk, d, s + j, lds);
    for (; j < j1; j++) qk_block_dot(R, 1, q, ldq, k + j * ldk, ldk, d, s + j, lds);
}

static void qk_dot(const float *q, int64_t ldq, int m, int d, const float *k, int64_t ldk, const int32_t *lo, const int32_t *hi, float *s,
                   int64_t lds) {
    for (int r0 = 0; r0 < m; r0 += DOT_ROWS) {
        int R = m - r0 < DOT_ROWS ? m - r0 : DOT_ROWS;
        int j0 = 1 << 30, j1 = 0;
        for (int r = r0; r < r0 + R; r++)
            if (lo[r] < hi[r]) {
                if (lo[r] < j0) j0 = lo[r];
                if (hi[r] > j1) j1 = hi[r];
            }
        if (j0 >= j1) continue;
        const float *qr = q + r0 * ldq;
        float *sr = s + r0 * lds;
        switch (R) {
        case 4: qk_rows_dot(4, qr, ldq, k, ldk, d, j0, j1, sr, lds); break;
        case 3: qk_rows_dot(3, qr, ldq, k, ldk, d, j0, j1, sr, lds); break;
        case 2: qk_rows_dot(2, qr, ldq, k, ldk, d, j0, j1, sr, lds); break;
        default: qk_rows_dot(1, qr, ldq, k, ldk, d, j0, j1, sr, lds); break;
        }
    }
}

/* ---------------------------------------------------------------- acc += P V */

/* acc[r][c0 .. c0+16C) += sum over keys [j0, j1) of p[r][j] * v[j][c0 ..], for R rows; the last
 * vector has the lanes of cm (a d % 16 == 8 tail), the others are whole. */
QATTN_INLINE void pv_block(const int R, const int C, const float *p, int64_t ldp, const float *v, int64_t ldv, int j0, int j1, float *acc,
                           int64_t lda, __mmask16 cm) {
    __m512 a[PV_ROWS][PV_VECS];
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < C - 1; c++) a[r][c] = _mm512_loadu_ps(acc + r * lda + 16 * c);
        a[r][C - 1] = _mm512_maskz_loadu_ps(cm, acc + r * lda + 16 * (C - 1));
    }
    for (int j = j0; j < j1; j++) {
        __m512 vv[PV_VECS];
        for (int c = 0; c < C - 1; c++) vv[c] = _mm512_loadu_ps(v + j * ldv + 16 * c);
        vv[C - 1] = _mm512_maskz_loadu_ps(cm, v + j * ldv + 16 * (C - 1));
        for (int r = 0; r < R; r++) {
            __m512 pr = _mm512_set1_ps(p[r * ldp + j]);
            for (int c = 0; c < C; c++) a[r][c] = _mm512_fmadd_ps(pr, vv[c], a[r][c]);
        }
    }
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < C - 1; c++) _mm512_storeu_ps(acc + r * lda + 16 * c, a[r][c]);
        _mm512_mask_storeu_ps(acc + r * lda + 16 * (C - 1), cm, a[r][C - 1]);
    }
}

QATTN_INLINE void pv_rows(const int R, const float *p, int64_t ldp, const float *v, int64_t ldv, int d, int j0, int j1, float *acc,
                          int64_t lda) {
    int c = 0;
    for (; c + 16 * PV_VECS <= d; c += 16 * PV_VECS) pv_block(R, PV_VECS, p, ldp, v + c, ldv, j0, j1, acc + c, lda, 0xffff);
    if (c == d) return;
    __mmask16 cm = lanes((d - c) % 16 ? (d - c) % 16 : 16);
    switch ((d - c + 15) / 16) {
    case 3: pv_block(R, 3, p, ldp, v + c, ldv, j0, j1, acc + c, lda, cm); break;
    case 2: pv_block(R, 2, p, ldp, v + c, ldv, j0, j1, acc + c, lda, cm); break;
    default: pv_block(R, 1, p, ldp, v + c, ldv, j0, j1, acc + c, lda, cm); break;
    }
}

#include "cpu/x86/tile_shared.h" /* softmax_update_state; pv_one, pv_row_block on the pv_rows above */

/* ---------------------------------------------------------------- online softmax */

/* One row: scores s[lo, hi) -> probabilities in place, the running max/sum/acc rescaled only when
 * the max grows. Same rules as the reference kernel; lanes outside [lo, hi) are neither read,
 * written nor summed. */
static void softmax_row(float *s, int lo, int hi, int d, float *row_max, float *row_sum, float *acc) {
    const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
    __m512 vmax = neg_inf;
    for (int j = lo; j < hi; j += 16) /* a NaN score loses in max_ps(score, running) */
        vmax = _mm512_max_ps(_mm512_mask_loadu_ps(neg_inf, lanes(hi - j), s + j), vmax);
    float new_max;
    if (!softmax_update_state(_mm512_reduce_max_ps(vmax), d, row_max, row_sum, acc, &new_max)) return;
    __m512 vm = _mm512_set1_ps(new_max), vsum = _mm512_setzero_ps();
    for (int j = lo; j < hi; j += 16) {
        __mmask16 km = lanes(hi - j);
        __m512 pj = qattn_exp2_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(km, s + j), vm));
        _mm512_mask_storeu_ps(s + j, km, pj);
        vsum = _mm512_mask_add_ps(vsum, km, vsum, pj);
    }
    *row_sum += _mm512_reduce_add_ps(vsum);
}

/* ---------------------------------------------------------------- the tile */

static void attend_tile_f32_avx512(const float *q, int64_t ldq, int m, int d, const float *k, const float *v, int64_t ldkv, int n,
                                   const int32_t *lo, const int32_t *hi, const qattn_score_mod *mod, qattn_tile_state *st,
                                   float *scratch) {
    float *s = scratch; /* [m][n] */
    int64_t lds = n;
    if (m >= KT_MIN_ROWS)
        qk_transposed(q, ldq, m, d, k, ldkv, n, lo, hi, s, lds);
    else
        qk_dot(q, ldq, m, d, k, ldkv, lo, hi, s, lds);

    if (qattn_score_mod_active(mod)) /* softcap / ALiBi: one pass over each row's visible scores */
        for (int r = 0; r < m; r++) qattn_score_mod_row(mod, r, s + r * lds, lo[r], hi[r]);
    for (int r = 0; r < m; r++)
        if (lo[r] < hi[r]) softmax_row(s + r * lds, lo[r], hi[r], d, st->row_max + r, st->row_sum + r, st->acc + r * st->ld_acc);

    for (int r0 = 0; r0 < m; r0 += PV_ROWS) {
        int R = m - r0 < PV_ROWS ? m - r0 : PV_ROWS;
        pv_row_block(R, s + r0 * lds, lds, v, ldkv, d, lo + r0, hi + r0, st->acc + r0 * st->ld_acc, st->ld_acc);
    }
}

/* ---------------------------------------------------------------- packer */

/* Rows of Q/K/V (F32/F16/BF16) to FP32 rounded to the call's precision, times mul (contract:
 * qattn_pack_rows_fn). The conversions here are exact (F16/BF16 widen; F32 -> F16 -> F32 rounds to
 * nearest even, as the scalar qattn_f32_to_f16); other dtype/precision pairs go to the reference. */
static void pack_rows_f32_avx512(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows, int d,
                                 float mul, float *dst, int64_t ldd) {
    qattn_pack_kind kind = qattn_pack_kind_of(dtype, precision, d);
    if (kind == QATTN_PACK_REF) {
        qattn_pack_rows_f32_ref(src, dtype, precision, idx0, src_stride, rows, d, mul, dst, ldd);
        return;
    }
    const __m512 vm = _mm512_set1_ps(mul);
    bool scale = mul != 1.0f;
    for (int r = 0; r < rows; r++) {
        int64_t base = idx0 + r * src_stride;
        float *row = dst + r * ldd;
        for (int c = 0; c < d; c += 16) {
            __mmask16 cm = lanes(d - c);
            __m512 x;
            if (kind == QATTN_PACK_WIDEN_F16) {
                x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(cm, (const uint16_t *)src + base + c));
            } else if (kind == QATTN_PACK_WIDEN_BF16) {
                __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(cm, (const uint16_t *)src + base + c));
                x = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
            } else {
                x = _mm512_maskz_loadu_ps(cm, (const float *)src + base + c);
                if (precision == QATTN_PRECISION_FP16)
                    x = _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
            if (scale) x = _mm512_mul_ps(x, vm);
            _mm512_mask_storeu_ps(row + c, cm, x);
        }
    }
}

const qattn_cpu_kernels qattn_kernels_avx512 = {
    .name = "avx512",
    .attend_tile_f32 = attend_tile_f32_avx512,
    .pack_rows_f32 = pack_rows_f32_avx512,
    .kv_attend = qattn_kv_attend_avx512,
    .int8 = &qattn_int8_kernels_avx512,
};
