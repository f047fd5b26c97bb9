/* AVX-512 FP kernels for the CPU driver (compiled with the AVX-512 flags, the *_avx512.c rule in
 * CMakeLists.txt; chosen only when ctx->isa is QATTN_ISA_AVX512). Contract: qattn_attend_tile_fn
 * and qattn_pack_rows_fn in qattn_internal.h. For now the AVX2 kernels fill the table. */
#include "qattn_internal.h"

static void attend_tile_w(const float *q, int64_t ldq, int m, int d, const float *k, const float *v, int64_t ldkv, int n, const int32_t *lo,
                          const int32_t *hi, qattn_tile_state *st, float *scratch) {
    qattn_kernels_avx2.attend_tile_f32(q, ldq, m, d, k, v, ldkv, n, lo, hi, st, scratch);
}

void qattn_pack_rows_f32_avx2(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows, int d,
                              float mul, float *dst, int64_t ldd); /* pack_avx2.c */

const qattn_cpu_kernels qattn_kernels_avx512 = {
    .name = "avx512",
    .attend_tile_f32 = attend_tile_w,
    .pack_rows_f32 = qattn_pack_rows_f32_avx2,
};
