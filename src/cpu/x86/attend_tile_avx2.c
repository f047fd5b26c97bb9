/* AVX2 + FMA micro-kernels for the CPU driver (compiled with -mavx2 -mfma -mf16c only here).
 * Contract: qattn_attend_tile_fn in qattn_internal.h. Slots not yet vectorised use the
 * reference entries. */
#include "qattn_internal.h"

const qattn_cpu_kernels qattn_kernels_avx2 = {
    .name = "avx2",
    .attend_tile_f32 = qattn_attend_tile_f32_ref,
};
