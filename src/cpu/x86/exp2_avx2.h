/* The AVX2 exp2 shared by the FP32 tile kernel and the KV decode kernel (only included from
 * files under src/cpu/x86/, which are compiled with -mavx2 -mfma). The INT8 kernels keep their
 * own polynomial: theirs is mirrored bit for bit by a scalar reference. */
#ifndef QATTN_EXP2_AVX2_H
#define QATTN_EXP2_AVX2_H

#include <immintrin.h>

/* 2^x for x <= 0 (the only range attention uses: score - running max) or NaN.
 * x < -125 (including -inf) gives 0: such a term is below 2^-125 of the row's largest term,
 * which contributes 1 to the same sum, so flushing it changes nothing at FP32. NaN stays NaN
 * (max_ps returns its second operand when either is NaN; the final compare is ordered).
 * 2^x = 2^n * 2^f, n = round(x), f in [-0.5, 0.5], 2^f by the Cephes exp2f polynomial
 * (degree 6, about 1 ulp). n >= -125 keeps 2^n * [0.707, 1.414] a normal number. */
static inline __attribute__((always_inline)) __m256 qattn_exp2_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-125.0f);
    __m256 xc = _mm256_max_ps(lo, x);
    __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(xc, n);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23); /* NaN: cvt gives INT_MIN, << 23 gives 0 */
    __m256 r = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    return _mm256_blendv_ps(r, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
}

#endif
