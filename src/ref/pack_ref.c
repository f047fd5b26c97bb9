/* The reference packer: rows of a Q/K/V tensor (F32/F16/BF16) to FP32 rounded to the call's
 * precision, times mul, in portable scalar C. Contract: qattn_pack_rows_fn in qattn_internal.h. */
#include "qattn_internal.h"

void qattn_pack_rows_f32_ref(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows, int d,
                             float mul, float *dst, int64_t ldd) {
    for (int r = 0; r < rows; r++) {
        int64_t base = idx0 + r * src_stride;
        float *row = dst + r * ldd;
        for (int c = 0; c < d; c++) row[c] = qattn_round_to(precision, qattn_load(src, dtype, base + c)) * mul;
    }
}
