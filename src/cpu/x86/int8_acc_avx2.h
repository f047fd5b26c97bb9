/* The INT8 P V accumulator update for 8 channels, shared by the AVX2 and AVX-VNNI kernels
 * (included only from src/cpu/x86/, compiled with -mavx2): one definition of its rounding order
 * keeps both ISAs bit-identical to the scalar reference (src/ref/int8_ref.c):
 *     dst = dst * alpha + (fac * sv) * (float)pv      three roundings, no fusion. */
#ifndef QATTN_INT8_ACC_AVX2_H
#define QATTN_INT8_ACC_AVX2_H

#include <immintrin.h>

static inline __attribute__((always_inline)) void qattn_i8_acc_update8(float *dst, __m256 alpha, __m256 fac, const float *sv,
                                                                       __m256i pv) {
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(fac, _mm256_loadu_ps(sv)), _mm256_cvtepi32_ps(pv));
    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(dst), alpha), y));
}

#endif
