/* CPU attention in INT8 and emulated FP8 (precision INT8 / FP8_E4M3 / FP8_E5M2).
 * Not yet implemented in this build: both entry points say so. */
#include "qattn_internal.h"

qattn_status qattn_cpu_forward_lowp(qattn_ctx *ctx, const qattn_params *p) {
    return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "precision %d is not supported by the CPU backend in this build", p->precision);
}

qattn_status qattn_cpu_lowp_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes) {
    *bytes = 0;
    return qattn_cpu_forward_lowp(ctx, p);
}
