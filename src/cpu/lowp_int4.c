/* Precision INT4 (QATTN_PRECISION_INT4) on the CPU: Q and K as 4-bit codes in [-7, 7], the
 * "INT4-compatible" idea of SageAttention2 / INT-FlashAttention, as a configuration of the INT8
 * driver (src/cpu/forward_lowp.c). The codes are held one per int8, so the INT8 kernels compute
 * Q K^T exactly (|S| <= 256 * 7 * 7) and every result is bit-identical across ref / avx2 /
 * avxvnni / avx512 as INT8's is; P and V are the INT8 default scheme's. docs/FORMAT.md section 8
 * gives the math and the measurements that chose this configuration. */
#include "quant/lowp.h"

void qattn_lowp_int4_cfg(qattn_lowp_cfg *cfg) {
    /* The INT8 default scheme (per-token Q and K after the power-of-two channel balancing and the
     * block Hadamard rotation, K smoothed by its mean, V per token minus its mean folded into u8
     * P codes), with 4-bit Q and K codes. Measured against per-token without the transforms and
     * per block of 64 tokens (qattn accuracy --candidates): the transforms cut INT4's error the
     * most where a few channels are large, and per-token never loses to per-block. */
    qattn_lowp_scheme_cfg(QATTN_INT8_DEFAULT, cfg);
    cfg->qk_code_max = 7;
    cfg->qk_refine_noise = 0.0f; /* the residual refinement is for INT8 codes (docs/FORMAT.md section 7) */
}
