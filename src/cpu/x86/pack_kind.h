/* Which conversions the AVX2 and AVX-512 packers do themselves (all exact: F16/BF16 widen, F32
 * optionally through F16); every other dtype/precision pair, or d % 8 != 0, goes to the
 * reference packer. Only included from files under src/cpu/x86/. */
#ifndef QATTN_PACK_KIND_H
#define QATTN_PACK_KIND_H

#include "qattn_internal.h"

typedef enum { QATTN_PACK_REF, QATTN_PACK_WIDEN_F16, QATTN_PACK_WIDEN_BF16, QATTN_PACK_F32 } qattn_pack_kind;

static inline qattn_pack_kind qattn_pack_kind_of(int32_t dtype, int32_t precision, int d) {
    if (d & 7) return QATTN_PACK_REF;
    if (dtype == QATTN_DTYPE_F16 && (precision == QATTN_PRECISION_FP32 || precision == QATTN_PRECISION_FP16)) return QATTN_PACK_WIDEN_F16;
    if (dtype == QATTN_DTYPE_BF16 && (precision == QATTN_PRECISION_FP32 || precision == QATTN_PRECISION_BF16)) return QATTN_PACK_WIDEN_BF16;
    if (dtype == QATTN_DTYPE_F32 && (precision == QATTN_PRECISION_FP32 || precision == QATTN_PRECISION_FP16)) return QATTN_PACK_F32;
    return QATTN_PACK_REF;
}

#endif
