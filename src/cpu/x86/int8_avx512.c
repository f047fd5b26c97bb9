/* The INT8 kernel table of the avx512 tier (compiled with the AVX-512 flags, the *_avx512.c rule in
 * CMakeLists.txt). Its slots are the AVX2 kernels until AVX-512 ones (vpdpbusd on ZMM) replace
 * them; the AVX-VNNI kernels cannot be used here: Zen 4 has no VEX vpdpbusd. */
#include "quant/lowp.h"

const qattn_int8_kernels qattn_int8_kernels_avx512 = {
    .name = "avx512",
    .qk = qattn_i8_qk_ref, /* unused (pack8 0) */
    .scores = qattn_i8_scores_avx2,
    .softmax = qattn_i8_softmax_avx2,
    .pv_f32 = qattn_i8_pv_f32_avx2,
    .rowmax = qattn_i8_rowmax_avx2,
    .softmax_vs = qattn_i8_softmax_vs_avx2,
    .pv_acc = qattn_i8_pv_acc_avx2,
    .quant_row = qattn_i8_quant_row_avx2,
    .qk16 = qattn_i8_qk16_avx2,
    .pv_acc8 = qattn_i8_pv_acc8_ref, /* unused (pack8 0) */
    .p_vs_tile = qattn_i8_p_vs_tile_avx2,
    .center_amax = qattn_i8_center_amax_avx2,
};
