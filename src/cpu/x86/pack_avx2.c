/* AVX2 + F16C packer: rows of Q/K/V (F32/F16/BF16) to FP32 rounded to the call's precision,
 * times mul. Contract: qattn_pack_rows_fn in qattn_internal.h. The conversions done here are
 * exact (F16/BF16 -> F32 widen; F32 -> F16 -> F32 is round-to-nearest-even, as the scalar
 * qattn_f32_to_f16); the other precision/dtype pairs go to the reference packer. */
#include "qattn_internal.h"

#include "cpu/x86/pack_kind.h"

#include <immintrin.h>

void qattn_pack_rows_f32_avx2(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows, int d,
                              float mul, float *dst, int64_t ldd);

/* d is a multiple of 8 (validated), so no tail loop. */
void qattn_pack_rows_f32_avx2(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows, int d,
                              float mul, float *dst, int64_t ldd) {
    qattn_pack_kind kind = qattn_pack_kind_of(dtype, precision, d);
    if (kind == QATTN_PACK_REF) {
        qattn_pack_rows_f32_ref(src, dtype, precision, idx0, src_stride, rows, d, mul, dst, ldd);
        return;
    }
    const __m256 vm = _mm256_set1_ps(mul);
    bool scale = mul != 1.0f;
    for (int r = 0; r < rows; r++) {
        int64_t base = idx0 + r * src_stride;
        float *row = dst + r * ldd;
        for (int c = 0; c < d; c += 8) {
            __m256 x;
            if (kind == QATTN_PACK_WIDEN_F16) {
                x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + base + c)));
            } else if (kind == QATTN_PACK_WIDEN_BF16) {
                __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + base + c)));
                x = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
            } else {
                x = _mm256_loadu_ps((const float *)src + base + c);
                if (precision == QATTN_PRECISION_FP16)
                    x = _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
            if (scale) x = _mm256_mul_ps(x, vm);
            _mm256_storeu_ps(row + c, x);
        }
    }
}
