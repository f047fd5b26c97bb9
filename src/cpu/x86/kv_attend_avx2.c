/* AVX2 + FMA + F16C decode kernel over one cache block (contract: qattn_kv_attend_fn in
 * src/kv/kv_internal.h; reference: src/kv/kv_attend_ref.c). Codes are converted to FP32 in
 * registers (F16C for FP16, shift for BF16, sign-extend + convert for INT8) and never written
 * back: each token's K and V codes are read once per call for all m rows (the query group).
 * FP16/BF16: FP32 FMAs. INT8: integer products (AVX2 has no VNNI, so vpmaddwd): K codes
 * sign-extended to int16 times q held as int16 (16 products per instruction), and P.V with the
 * weights p*vs held as int16 against pairs of tokens interleaved on the fly, so both halves use
 * the integer pipes as well as the FMA pipes. Integer sums are exact; semantics in kv_internal.h.
 * Rows are processed 4 at a time (register blocking: 4 rows x 2 tokens of score accumulators,
 * 4 rows x 16 channels of output accumulators). */
#include "kv/kv_internal.h"

#include <immintrin.h>

#include "cpu/x86/exp2_avx2.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __m256 load8(int32_t dtype, const void *base, int64_t idx) {
    if (dtype == QATTN_DTYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + idx)));
    if (dtype == QATTN_DTYPE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + idx))), 16));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)base + idx))));
}

/* Sums of the 8 lanes of a, b, c, d as lanes 0..3. */
ALWAYS_INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* Scores of rows r0..r0+R-1 for tokens [j0, j1): s[r*n + j] = (q_r . k_j) * ks_j. */
ALWAYS_INLINE void scores_rows(int R, const float *q, int d, int32_t dtype, const void *kc, const float *ks, int n, int j0, int j1,
                               float *s) {
    const float *qr[4];
    for (int r = 0; r < 4; r++) qr[r] = q + (int64_t)(r < R ? r : 0) * d;
    int j = j0;
    for (; j + 2 <= j1; j += 2) {
        __m256 a[4][2];
        for (int r = 0; r < R; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
        const int64_t b0 = (int64_t)j * d, b1 = b0 + d;
        for (int c = 0; c < d; c += 8) {
            __m256 k0 = load8(dtype, kc, b0 + c), k1 = load8(dtype, kc, b1 + c);
            for (int r = 0; r < R; r++) {
                __m256 qv = _mm256_loadu_ps(qr[r] + c);
                a[r][0] = _mm256_fmadd_ps(qv, k0, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(qv, k1, a[r][1]);
            }
        }
        for (int r = R; r < 4; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
        __m128 s0 = hsum4(a[0][0], a[1][0], a[2][0], a[3][0]);
        __m128 s1 = hsum4(a[0][1], a[1][1], a[2][1], a[3][1]);
        if (dtype == QATTN_DTYPE_I8) {
            s0 = _mm_mul_ps(s0, _mm_set1_ps(ks[j]));
            s1 = _mm_mul_ps(s1, _mm_set1_ps(ks[j + 1]));
        }
        float t0[4], t1[4];
        _mm_storeu_ps(t0, s0);
        _mm_storeu_ps(t1, s1);
        for (int r = 0; r < R; r++) {
            s[(int64_t)r * n + j] = t0[r];
            s[(int64_t)r * n + j + 1] = t1[r];
        }
    }
    for (; j < j1; j++) {
        __m256 a[4];
        for (int r = 0; r < 4; r++) a[r] = _mm256_setzero_ps();
        const int64_t b0 = (int64_t)j * d;
        for (int c = 0; c < d; c += 8) {
            __m256 k0 = load8(dtype, kc, b0 + c);
            for (int r = 0; r < R; r++) a[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qr[r] + c), k0, a[r]);
        }
        __m128 s0 = hsum4(a[0], a[1], a[2], a[3]);
        if (dtype == QATTN_DTYPE_I8) s0 = _mm_mul_ps(s0, _mm_set1_ps(ks[j]));
        float t0[4];
        _mm_storeu_ps(t0, s0);
        for (int r = 0; r < R; r++) s[(int64_t)r * n + j] = t0[r];
    }
}

/* acc[r] += w[r][j] * v_j for rows r0..r0+R-1, tokens [j0, j1), channels [c, c+16) (W = 2 vectors)
 * or [c, c+8) (W = 1). check: skip tokens outside each row's [lo, hi). */
ALWAYS_INLINE void pv_rows(int R, int W, bool check, int32_t dtype, const void *vc, int d, int n, int c, int j0, int j1, const float *w,
                           const int32_t *lo, const int32_t *hi, float *const *acc) {
    __m256 a[4][2];
    for (int r = 0; r < R; r++)
        for (int x = 0; x < W; x++) a[r][x] = _mm256_loadu_ps(acc[r] + c + 8 * x);
    for (int j = j0; j < j1; j++) {
        __m256 v[2];
        for (int x = 0; x < W; x++) v[x] = load8(dtype, vc, (int64_t)j * d + c + 8 * x);
        for (int r = 0; r < R; r++) {
            if (check && (j < lo[r] || j >= hi[r])) continue;
            __m256 p = _mm256_broadcast_ss(w + (int64_t)r * n + j);
            for (int x = 0; x < W; x++) a[r][x] = _mm256_fmadd_ps(p, v[x], a[r][x]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int x = 0; x < W; x++) _mm256_storeu_ps(acc[r] + c + 8 * x, a[r][x]);
}

ALWAYS_INLINE void pv_chunk(int R, bool check, int32_t dtype, const void *vc, int d, int n, int j0, int j1, const float *w,
                            const int32_t *lo, const int32_t *hi, float *const *acc) {
    int c = 0;
    for (; c + 16 <= d; c += 16) pv_rows(R, 2, check, dtype, vc, d, n, c, j0, j1, w, lo, hi, acc);
    if (c < d) pv_rows(R, 1, check, dtype, vc, d, n, c, j0, j1, w, lo, hi, acc);
}


/* INT8 scores of rows r0..r0+R-1 for tokens [j0, j1): s = ((float)(q16 . k8) * qsc) * ks_j. */
ALWAYS_INLINE void scores_rows_i8(int R, const int16_t *q16, const float *qsc, int d, const int8_t *kc, const float *ks, int n, int j0,
                                  int j1, float *s) {
    const int16_t *qr[4];
    float qs[4];
    const int64_t ldq = (d + 15) / 16 * 16; /* q16 rows are zero-padded to a multiple of 16 */
    for (int r = 0; r < 4; r++) {
        qr[r] = q16 + (int64_t)(r < R ? r : 0) * ldq;
        qs[r] = qsc[r < R ? r : 0];
    }
    __m128 qsv = _mm_loadu_ps(qs);
    int j = j0;
    for (; j < j1; j += 2) {
        bool two = j + 1 < j1;
        __m256i a[4][2];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) a[r][0] = a[r][1] = _mm256_setzero_si256();
        const int8_t *k0p = kc + (int64_t)j * d, *k1p = two ? k0p + d : k0p;
        for (int c = 0; c < d; c += 16) {
            bool full = c + 16 <= d; /* else 8 channels (d is a multiple of 8): upper lanes zero */
            __m256i k0 = _mm256_cvtepi8_epi16(full ? _mm_loadu_si128((const __m128i *)(k0p + c)) : _mm_loadl_epi64((const __m128i *)(k0p + c)));
            __m256i k1 = _mm256_cvtepi8_epi16(full ? _mm_loadu_si128((const __m128i *)(k1p + c)) : _mm_loadl_epi64((const __m128i *)(k1p + c)));
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                __m256i qv = _mm256_loadu_si256((const __m256i *)(qr[r] + c));
                a[r][0] = _mm256_add_epi32(a[r][0], _mm256_madd_epi16(qv, k0));
                a[r][1] = _mm256_add_epi32(a[r][1], _mm256_madd_epi16(qv, k1));
            }
        }
        for (int r = R; r < 4; r++) a[r][0] = a[r][1] = _mm256_setzero_si256();
        for (int t = 0; t < (two ? 2 : 1); t++) {
            __m256i ab = _mm256_hadd_epi32(a[0][t], a[1][t]), cd = _mm256_hadd_epi32(a[2][t], a[3][t]);
            __m256i abcd = _mm256_hadd_epi32(ab, cd);
            __m128i dot = _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
            __m128 sv = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(dot), qsv), _mm_set1_ps(ks[j + t]));
            float tmp[4];
            _mm_storeu_ps(tmp, sv);
            for (int r = 0; r < R; r++) s[(int64_t)r * n + j + t] = tmp[r];
        }
    }
}

/* INT8 P.V for rows r0..r0+R-1 over tokens [j0, j1) (at most 256): w16 [R][pairs*2] int16 weights
 * relative to j0 (0 outside each row's range and in the pad slot), ws[r] their scales. */
ALWAYS_INLINE void pv_rows_i8(int R, const int8_t *vc, int d, int j0, int j1, const int16_t *w16, int64_t ldw, const float *ws,
                              float *const *acc) {
    int pairs = (j1 - j0 + 1) / 2;
    for (int c = 0; c < d; c += 16) {
        __m256i a[4][2];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) a[r][0] = a[r][1] = _mm256_setzero_si256();
        bool full = c + 16 <= d; /* else 8 channels: only the low half is used and stored */
        for (int t = 0; t < pairs; t++) {
            int j = j0 + 2 * t;
            const int8_t *p0 = vc + (int64_t)j * d + c, *p1 = p0 + d;
            __m128i x0 = full ? _mm_loadu_si128((const __m128i *)p0) : _mm_loadl_epi64((const __m128i *)p0);
            __m128i x1 = j + 1 >= j1 ? _mm_setzero_si128() : full ? _mm_loadu_si128((const __m128i *)p1) : _mm_loadl_epi64((const __m128i *)p1);
            __m256i lo = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x0, x1)); /* channels c..c+7, tokens j, j+1 */
            __m256i hi = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(x0, x1)); /* channels c+8..c+15 */
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                int32_t wp;
                memcpy(&wp, w16 + (int64_t)r * ldw + 2 * t, 4);
                __m256i wv = _mm256_set1_epi32(wp);
                a[r][0] = _mm256_add_epi32(a[r][0], _mm256_madd_epi16(lo, wv));
                a[r][1] = _mm256_add_epi32(a[r][1], _mm256_madd_epi16(hi, wv));
            }
        }
        for (int r = 0; r < R; r++) {
            __m256 sc = _mm256_set1_ps(ws[r]);
            _mm256_storeu_ps(acc[r] + c, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r][0]), sc, _mm256_loadu_ps(acc[r] + c)));
            if (full) _mm256_storeu_ps(acc[r] + c + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r][1]), sc, _mm256_loadu_ps(acc[r] + c + 8)));
        }
    }
}

/* Rows r0..r0+R-1 (R <= 4) through scores, online softmax and P.V. */
ALWAYS_INLINE void attend_rows(int R, const float *q, const int16_t *q16, const float *qsc, int d, int32_t dtype, const void *kc, const void *vc, const float *ks,
                               const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st, int r0, float *s,
                               float *w) {
    int jlo = n, jhi = 0, jc0 = 0, jc1 = n;
    for (int r = 0; r < R; r++) {
        if (lo[r] < hi[r]) {
            if (lo[r] < jlo) jlo = lo[r];
            if (hi[r] > jhi) jhi = hi[r];
        }
        if (lo[r] > jc0) jc0 = lo[r];
        if (hi[r] < jc1) jc1 = hi[r];
    }
    if (jlo >= jhi) return;
    if (dtype == QATTN_DTYPE_I8)
        scores_rows_i8(R, q16, qsc, d, kc, ks, n, jlo, jhi, s);
    else
        scores_rows(R, q, d, dtype, kc, ks, n, jlo, jhi, s);
    float wmax[4] = {0, 0, 0, 0};
    bool wnan[4] = {false, false, false, false};
    float *acc[4];
    for (int r = 0; r < R; r++) {
        acc[r] = st->acc + (int64_t)(r0 + r) * st->ld_acc;
        const float *sr = s + (int64_t)r * n;
        float *wr = w + (int64_t)r * n;
        if (lo[r] >= hi[r]) continue;
        float tile_max = -INFINITY;
        for (int j = lo[r]; j < hi[r]; j++)
            if (sr[j] > tile_max) tile_max = sr[j];
        float old_max = st->row_max[r0 + r];
        float new_max = tile_max > old_max ? tile_max : old_max;
        if (new_max == -INFINITY) { /* keys seen but no score above -inf (all NaN): a NaN row, never "empty" */
            for (int c = 0; c < d; c++) acc[r][c] = NAN;
            st->row_max[r0 + r] = st->row_sum[r0 + r] = NAN;
            for (int j = lo[r]; j < hi[r]; j++) wr[j] = 0.0f;
            wnan[r] = true;
            continue;
        }
        if (new_max > old_max) {
            float alpha = exp2f(old_max - new_max);
            st->row_sum[r0 + r] *= alpha;
            __m256 av = _mm256_set1_ps(alpha);
            for (int c = 0; c < d; c += 8) _mm256_storeu_ps(acc[r] + c, _mm256_mul_ps(_mm256_loadu_ps(acc[r] + c), av));
            st->row_max[r0 + r] = new_max;
        }
        __m256 mv = _mm256_set1_ps(new_max), sum = _mm256_setzero_ps(), wmv = _mm256_setzero_ps(), nanv = _mm256_setzero_ps();
        int j = lo[r];
        for (; j + 8 <= hi[r]; j += 8) {
            __m256 p = qattn_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(sr + j), mv));
            sum = _mm256_add_ps(sum, p);
            if (dtype == QATTN_DTYPE_I8) {
                p = _mm256_mul_ps(p, _mm256_loadu_ps(vs + j));
                wmv = _mm256_max_ps(wmv, p);
                nanv = _mm256_or_ps(nanv, _mm256_cmp_ps(p, p, _CMP_UNORD_Q));
            }
            _mm256_storeu_ps(wr + j, p);
        }
        float tail = 0.0f;
        if (j < hi[r]) {
            float buf[8] = {0}, out[8];
            int k = hi[r] - j;
            for (int i = 0; i < k; i++) buf[i] = sr[j + i] - new_max;
            _mm256_storeu_ps(out, qattn_exp2_avx2(_mm256_loadu_ps(buf)));
            for (int i = 0; i < k; i++) {
                tail += out[i];
                float wv = dtype == QATTN_DTYPE_I8 ? out[i] * vs[j + i] : out[i];
                wr[j + i] = wv;
                if (wv > wmax[r]) wmax[r] = wv;
                if (wv != wv) wnan[r] = true;
            }
        }
        if (dtype == QATTN_DTYPE_I8) {
            float t8[8];
            _mm256_storeu_ps(t8, wmv);
            for (int i = 0; i < 8; i++) wmax[r] = t8[i] > wmax[r] ? t8[i] : wmax[r];
            if (_mm256_movemask_ps(nanv)) wnan[r] = true;
        }
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        st->row_sum[r0 + r] += _mm_cvtss_f32(h) + tail;
    }
    /* Tuning (the 2-vCPU Xeon dev VM, B1 H32 HK8 D128, L2-resident, 1 thread): all-float INT8 path 0.72 ms,
     * integer scores + float P.V 0.69 ms, integer scores + integer P.V (this) 0.65 ms. */
    if (dtype == QATTN_DTYPE_I8) {
        /* weights to int16 relative to jlo, zero outside each row's range; chunks of <= 256 tokens */
        int16_t *w16 = (int16_t *)(w + (int64_t)4 * n);
        int64_t ldw = n + 2;
        float ws[4];
        for (int r = 0; r < R; r++) {
            int16_t *wr16 = w16 + (int64_t)r * ldw;
            const float *wr = w + (int64_t)r * n;
            float inv = wmax[r] > 0.0f ? 32767.0f / wmax[r] : 0.0f;
            ws[r] = wmax[r] / 32767.0f;
            __m256 iv = _mm256_set1_ps(inv);
            int j = jlo;
            for (; j < jhi && j < lo[r]; j++) wr16[j - jlo] = 0;
            for (; j + 8 <= hi[r]; j += 8) {
                __m256i x = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(wr + j), iv));
                __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
                _mm_storeu_si128((__m128i *)(wr16 + (j - jlo)), p16);
            }
            for (; j < hi[r]; j++) wr16[j - jlo] = (int16_t)lrintf(wr[j] * inv);
            for (; j < jhi + 1; j++) wr16[j - jlo] = 0; /* the rest of the union and the pad slot */
            if (wnan[r]) { /* a NaN weight (NaN query): the row's state becomes NaN */
                for (int c = 0; c < d; c++) acc[r][c] = NAN;
                st->row_max[r0 + r] = NAN;
                st->row_sum[r0 + r] = NAN;
                for (int t = 0; t < jhi + 1 - jlo; t++) wr16[t] = 0;
            }
        }
        for (int j0 = jlo; j0 < jhi; j0 += 256) {
            int j1 = j0 + 256 < jhi ? j0 + 256 : jhi;
            pv_rows_i8(R, (const int8_t *)vc, d, j0, j1, w16 + (j0 - jlo), ldw, ws, acc);
        }
        return;
    }
    if (jc0 < jc1) {
        pv_chunk(R, true, dtype, vc, d, n, jlo, jc0, w, lo, hi, acc);
        pv_chunk(R, false, dtype, vc, d, n, jc0, jc1, w, lo, hi, acc);
        pv_chunk(R, true, dtype, vc, d, n, jc1, jhi, w, lo, hi, acc);
    } else {
        pv_chunk(R, true, dtype, vc, d, n, jlo, jhi, w, lo, hi, acc);
    }
}

ALWAYS_INLINE void attend_dtype(int32_t dtype, const float *q, const int16_t *q16, const float *qsc, int m, int d, const void *kc, const void *vc, const float *ks,
                                const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st, float *scratch) {
    float *s = scratch, *w = scratch + (int64_t)4 * n;
    int r0 = 0;
    for (; r0 + 4 <= m; r0 += 4)
        attend_rows(4, q + (int64_t)r0 * d, q16 ? q16 + (int64_t)r0 * ((d + 15) / 16 * 16) : NULL, qsc ? qsc + r0 : NULL, d, dtype, kc, vc, ks, vs, n, lo + r0, hi + r0, st, r0, s, w);
    switch (m - r0) {
    case 3: attend_rows(3, q + (int64_t)r0 * d, q16 ? q16 + (int64_t)r0 * ((d + 15) / 16 * 16) : NULL, qsc ? qsc + r0 : NULL, d, dtype, kc, vc, ks, vs, n, lo + r0, hi + r0, st, r0, s, w); break;
    case 2: attend_rows(2, q + (int64_t)r0 * d, q16 ? q16 + (int64_t)r0 * ((d + 15) / 16 * 16) : NULL, qsc ? qsc + r0 : NULL, d, dtype, kc, vc, ks, vs, n, lo + r0, hi + r0, st, r0, s, w); break;
    case 1: attend_rows(1, q + (int64_t)r0 * d, q16 ? q16 + (int64_t)r0 * ((d + 15) / 16 * 16) : NULL, qsc ? qsc + r0 : NULL, d, dtype, kc, vc, ks, vs, n, lo + r0, hi + r0, st, r0, s, w); break;
    default: break;
    }
}

void qattn_kv_attend_avx2(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc,
                          const void *vc, const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st,
                          float *scratch) {
    switch (dtype) {
    case QATTN_DTYPE_F16: attend_dtype(QATTN_DTYPE_F16, q, NULL, NULL, m, d, kc, vc, ks, vs, n, lo, hi, st, scratch); break;
    case QATTN_DTYPE_BF16: attend_dtype(QATTN_DTYPE_BF16, q, NULL, NULL, m, d, kc, vc, ks, vs, n, lo, hi, st, scratch); break;
    default: attend_dtype(QATTN_DTYPE_I8, q, q16, qsc, m, d, kc, vc, ks, vs, n, lo, hi, st, scratch); break;
    }
}
