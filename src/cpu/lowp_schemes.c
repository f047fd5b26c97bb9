/* The named INT8 schemes (qattn_int8_scheme) as configurations of the low-precision driver
 * (src/cpu/forward_lowp.c): granularities, smoothing, rotation and P mode of each. Precision INT4,
 * the default scheme with 4-bit Q and K codes, is src/cpu/lowp_int4.c. */
#include "quant/lowp.h"

void qattn_lowp_scheme_cfg(int32_t scheme, qattn_lowp_cfg *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->q_block = cfg->k_block = cfg->v_block = 64;
    switch (scheme) {
    case QATTN_INT8_INTFA: /* INT-FlashAttention: per-token Q/K, per-head V, P x127, sum of unquantized P */
        cfg->q_gran = QATTN_QUANT_PER_TOKEN, cfg->k_gran = QATTN_QUANT_PER_TOKEN, cfg->v_gran = QATTN_QUANT_PER_HEAD;
        cfg->p_mode = QATTN_P_S8_RUNNING;
        break;
    case QATTN_INT8_SAGE: /* SageAttention-1: per-block Q (128) / K (64), K smoothing, FP32 P V */
        cfg->q_gran = QATTN_QUANT_PER_BLOCK, cfg->k_gran = QATTN_QUANT_PER_BLOCK, cfg->v_gran = QATTN_QUANT_PER_HEAD;
        cfg->q_block = 128, cfg->k_block = 64;
        cfg->k_smooth = 1;
        cfg->p_mode = QATTN_P_FP32;
        break;
    default: /* qattn (docs/FORMAT.md, "Choosing the default scheme") */
        cfg->q_gran = QATTN_QUANT_PER_TOKEN, cfg->k_gran = QATTN_QUANT_PER_TOKEN, cfg->v_gran = QATTN_QUANT_PER_TOKEN;
        cfg->k_smooth = 1, cfg->v_smooth = 1;
        cfg->p_mode = QATTN_P_U8_VSCALED;
        cfg->qk_smooth = QATTN_QK_SMOOTH_MAX_EXP, cfg->qk_rotate = 1; /* candidate O */
        cfg->qk_refine_noise = QATTN_QK_REFINE_NOISE;                 /* sharp units (docs/FORMAT.md section 7) */
        break;
    }
}
