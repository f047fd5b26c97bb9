/* The 16-lane exp2 of the AVX-512 FP tile kernel (only included from files under src/cpu/x86/ built
 * with the AVX-512 flags). The same steps and coefficients as qattn_exp2_avx2 (exp2_avx2.h), so a
 * lane gives the same bits as the AVX2 kernel's exp2 for the same input. */
#ifndef QATTN_EXP2_AVX512_H
#define QATTN_EXP2_AVX512_H

#include <immintrin.h>

/* 2^x for x <= 0 or NaN: x < -125 (including -inf) gives 0, NaN stays NaN (see exp2_avx2.h for
 * why both are right); 2^x = 2^n * P6(f), n = round(x), f in [-0.5, 0.5]. */
static inline __attribute__((always_inline)) __m512 qattn_exp2_avx512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-125.0f);
    __m512 xc = _mm512_max_ps(lo, x);
    __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(xc, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23); /* NaN: cvt gives INT_MIN, << 23 gives 0 */
    __m512 r = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), r, _mm512_setzero_ps());
}

#endif
