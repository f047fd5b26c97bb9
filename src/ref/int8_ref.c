/* Scalar reference INT8 micro-kernels (contracts and packed layouts: src/quant/lowp.h).
 * Portable C11, always built; the AVX2 kernels (src/cpu/x86/int8_avx2.c) must reproduce
 * these results bit for bit: the integer products are exact, and the float steps use the
 * same operations in the same order (fmaf where the vector code fuses). */
#include "quant/lowp.h"

#include <float.h>

const uint64_t qattn_exp2f_table[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b, 0x3fef54873168b9aa,
    0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74,
    0x3feea11473eb0187, 0x3feea589994cce13, 0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540};

void qattn_i8_qk_ref(const int8_t *q, int m, int d, const int8_t *kpack, int npad, int32_t *s) {
    for (int r = 0; r < m; r++)
        for (int j = 0; j < npad; j++) {
            int32_t acc = 0;
            for (int c = 0; c < d; c++) acc += (int32_t)q[r * d + c] * (int32_t)kpack[(c / 4) * npad * 4 + j * 4 + c % 4];
            s[r * npad + j] = acc;
        }
}

static void scores_ref(const int32_t *s, int m, int npad, const float *sq, const float *sk, float *sf) {
    for (int r = 0; r < m; r++)
        for (int j = 0; j < npad; j++) {
            float x = (float)s[r * npad + j] * sq[r] * sk[j];
            x = x > FLT_MAX ? FLT_MAX : x;
            x = x < -FLT_MAX ? -FLT_MAX : x;
            sf[r * npad + j] = x;
        }
}

static void softmax_ref(const float *sf, int lo, int hi, int npad, float ref, float mult, int16_t *codes, float *pf,
                        int32_t *code_sum, float *e_sum) {
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int32_t csum = 0;
    for (int j = 0; j < npad; j++) {
        float e = 0.0f;
        int32_t code = 0;
        if (j >= lo && j < hi) {
            e = qattn_exp2_poly(sf[j] - ref);
            code = (int32_t)lrintf(e * mult);
        }
        lane[j % 8] += e;
        csum += code;
        if (codes) codes[j] = (int16_t)code;
        if (pf) pf[j] = e;
    }
    *code_sum = csum;
    *e_sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

static void pv_f32_ref(const float *p, int m, int npad, const float *v, int d, float *o) {
    for (int r = 0; r < m; r++)
        for (int c = 0; c < d; c++) {
            float acc = 0.0f;
            for (int j = 0; j < npad; j++) acc = fmaf(p[r * npad + j], v[j * d + c], acc);
            o[r * d + c] = acc;
        }
}

static void qk16_ref(const int16_t *q, int m, int d, const int16_t *kpack, int npad, int32_t *s) {
    for (int r = 0; r < m; r++)
        for (int j = 0; j < npad; j++) {
            int32_t acc = 0;
            for (int c = 0; c < d; c++) acc += (int32_t)q[r * d + c] * (int32_t)kpack[(c / 2) * npad * 2 + j * 2 + c % 2];
            s[r * npad + j] = acc;
        }
}

static float rowmax_ref(const float *sf, int lo, int hi) {
    float mb = sf[lo];
    for (int j = lo + 1; j < hi; j++) mb = sf[j] > mb ? sf[j] : mb;
    return mb + 0.0f;
}

static void softmax_vs_ref(const float *sf, int lo, int hi, int npad, float ref, const float *svk, int16_t *codes, float *e_sum,
                           float *w_max) {
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float wmax = 0.0f;
    for (int j = lo; j < hi; j++) {
        float e = qattn_exp2_poly(sf[j] - ref);
        lane[j % 8] += e;
        float w = e * svk[j];
        wmax = w > wmax ? w : wmax;
    }
    float inv = wmax > 0.0f ? 255.0f / wmax : 0.0f;
    for (int j = 0; j < npad; j++) {
        int32_t code = 0;
        if (j >= lo && j < hi) code = (int32_t)lrintf((qattn_exp2_poly(sf[j] - ref) * svk[j]) * inv);
        codes[j] = (int16_t)code;
    }
    *e_sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    *w_max = wmax;
}

static void pv_acc_ref(const int16_t *pc, int m, int npad, const int16_t *vpack, int d, const float *alpha, const float *fac,
                       const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld) {
    for (int r = 0; r < m; r++) {
        if (lo[r] >= hi[r]) continue;
        for (int c = 0; c < d; c++) {
            int32_t t = 0;
            for (int j = 0; j < npad; j++) t += (int32_t)pc[r * npad + j] * (int32_t)vpack[(j / 2) * d * 2 + c * 2 + j % 2];
            float *a = acc + r * ld + c;
            float x = *a * alpha[r];
            float y = (fac[r] * sv[c]) * (float)t;
            *a = x + y;
        }
    }
}

void qattn_i8_pv_acc8_ref(const int16_t *pc, int m, int npad, const int8_t *vpack8, int d, const float *alpha, const float *fac,
                          const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld) {
    for (int r = 0; r < m; r++) {
        if (lo[r] >= hi[r]) continue;
        for (int c = 0; c < d; c++) {
            int32_t t = 0;
            for (int j = 0; j < npad; j++) t += (int32_t)pc[r * npad + j] * (int32_t)vpack8[(j / 4) * d * 4 + c * 4 + j % 4];
            float *a = acc + r * ld + c;
            float x = *a * alpha[r];
            float y = (fac[r] * sv[c]) * (float)t;
            *a = x + y;
        }
    }
}

static void quant_row_ref(const float *y, int d, float inv, int8_t *dst) {
    for (int c = 0; c < d; c++) {
        float q = nearbyintf(y[c] * inv);
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        dst[c] = (int8_t)q;
    }
}

/* pv_acc8 with u8 codes: the same exact PV and float update. */
void qattn_i8_pv_acc8u_ref(const uint8_t *pc8, int m, int npad, const int8_t *vpack8, int d, const float *alpha, const float *fac,
                           const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld) {
    for (int r = 0; r < m; r++) {
        if (lo[r] >= hi[r]) continue;
        for (int c = 0; c < d; c++) {
            int32_t t = 0;
            for (int j = 0; j < npad; j++) t += (int32_t)pc8[r * npad + j] * (int32_t)vpack8[(j / 4) * d * 4 + c * 4 + j % 4];
            float *a = acc + r * ld + c;
            float x = *a * alpha[r];
            float y = (fac[r] * sv[c]) * (float)t;
            *a = x + y;
        }
    }
}

/* The fused P step as the unfused sequence it stands for, literally: scores, rowmax, the driver's
 * state update and softmax_vs, one row at a time (u8: the int16 codes narrowed, all in [0, 255]). */
static void p_vs_tile_ref(const int32_t *s, int m, int npad, const float *sq, const float *sk, const int32_t *lo, const int32_t *hi,
                          const float *svk, float *row_max, float *row_sum, void *codes, int u8, float *alpha, float *fac) {
    float sf[QATTN_I8_TILE];
    int16_t c16[QATTN_I8_TILE];
    size_t esz = u8 ? 1 : 2;
    for (int r = 0; r < m; r++) {
        void *cr = (unsigned char *)codes + (size_t)r * npad * esz;
        if (lo[r] >= hi[r]) { /* nothing visible: zero codes, state untouched */
            memset(cr, 0, (size_t)npad * esz);
            alpha[r] = 1.0f;
            fac[r] = 0.0f;
            continue;
        }
        scores_ref(s + (size_t)r * npad, 1, npad, sq + r, sk, sf);
        float mb = rowmax_ref(sf, lo[r], hi[r]);
        float m_old = row_max[r];
        float m_new = m_old > mb ? m_old : mb;
        float al = m_old == -INFINITY ? 0.0f : qattn_exp2f(m_old - m_new);
        float beta = qattn_exp2f(mb - m_new);
        float esum, wmax;
        int16_t *c = u8 ? c16 : (int16_t *)cr;
        softmax_vs_ref(sf, lo[r], hi[r], npad, mb, svk, c, &esum, &wmax);
        if (u8)
            for (int j = 0; j < npad; j++) ((uint8_t *)cr)[j] = (uint8_t)c16[j];
        row_sum[r] = row_sum[r] * al + beta * esum;
        row_max[r] = m_new;
        alpha[r] = al;
        fac[r] = beta * wmax / 255.0f;
    }
}

/* ---------------------------------------------------------------- the quantizer's row passes
 * (src/quant/quant.c calls them through the table) */

/* max |y[c]|, c < d (d % 8 == 0): 8 lanes, vectorisable; exact (any order gives the same max). */
static inline float amax8(const float *restrict y, int64_t d) {
    float m[8] = {0};
    for (int64_t c = 0; c < d; c += 8)
        for (int k = 0; k < 8; k++) {
            float a = fabsf(y[c + k]);
            m[k] = m[k] < a ? a : m[k];
        }
    float a = m[0];
    for (int k = 1; k < 8; k++) a = m[k] > a ? m[k] : a;
    return a;
}

/* y = row - mu and the largest |y|. */
static float center_amax_ref(const float *restrict row, const float *restrict mu, int d, float *restrict y) {
    for (int c = 0; c < d; c++) y[c] = row[c] - mu[c];
    return amax8(y, d);
}

/* y = row * f - mu and max |y| (each step exactly rounded, in channel order; the max is exact). */
float qattn_i8_scale_center_amax_ref(const float *restrict row, const float *restrict f, const float *restrict mu, int d,
                                     float *restrict y) {
    for (int c = 0; c < d; c++) y[c] = row[c] * f[c] - mu[c];
    return amax8(y, d);
}

/* The 8-point butterfly of stages len = 1, 2, 4 on y[0..8), in the stage order of the definition. */
static inline void fwht8(float *y) {
    float a0 = y[0] + y[1], a1 = y[0] - y[1], a2 = y[2] + y[3], a3 = y[2] - y[3];
    float a4 = y[4] + y[5], a5 = y[4] - y[5], a6 = y[6] + y[7], a7 = y[6] - y[7];
    float b0 = a0 + a2, b2 = a0 - a2, b1 = a1 + a3, b3 = a1 - a3;
    float b4 = a4 + a6, b6 = a4 - a6, b5 = a5 + a7, b7 = a5 - a7;
    y[0] = b0 + b4, y[4] = b0 - b4, y[1] = b1 + b5, y[5] = b1 - b5;
    y[2] = b2 + b6, y[6] = b2 - b6, y[3] = b3 + b7, y[7] = b3 - b7;
}

float qattn_rotate_row(float *y, int d, float pre) {
    int n = qattn_rotate_block(d);
    if (pre != 1.0f)
        for (int c = 0; c < d; c++) y[c] *= pre;
    for (int b0 = 0; b0 < d; b0 += n) {
        for (int g = b0; g < b0 + n; g += 8) fwht8(y + g); /* stages 1, 2, 4 */
        for (int len = 8; len < n; len <<= 1)            /* stages 8 .. n/2: whole 8-lane runs */
            for (int i = b0; i < b0 + n; i += 2 * len)
                for (int k = i; k < i + len; k++) {
                    float a = y[k], c = y[k + len];
                    y[k] = a + c;
                    y[k + len] = a - c;
                }
    }
    return amax8(y, d);
}

void qattn_i8_lse_dots_ref(const int8_t *base, const int32_t *off, int m, int d, const float *mk, float *dot) {
    for (int r0 = 0; r0 < m; r0 += 4) { /* 4 rows interleaved: independent chains of adds */
        int nr = m - r0 < 4 ? m - r0 : 4;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int c = 0; c < d; c++)
            for (int k = 0; k < nr; k++) {
                int8_t q = base[off[r0 + k] + c];
                acc[k] += (float)qattn_i8_clamp_code(q) * mk[c];
            }
        for (int k = 0; k < nr; k++) dot[r0 + k] = acc[k];
    }
}

static inline int8_t code_or_zero(const int8_t *src, int64_t stride, int n, int j, int c) {
    if (j >= n) return 0;
    return qattn_i8_clamp_code(src[j * stride + c]);
}

void qattn_i8_pack8_k_ref(const int8_t *src, int64_t stride, int n, int npad, int d, int8_t *kp) {
    for (int j = 0; j < npad; j++)
        for (int c = 0; c < d; c++) kp[(size_t)(c / 4) * npad * 4 + (size_t)j * 4 + c % 4] = code_or_zero(src, stride, n, j, c);
}

void qattn_i8_pack8_v_ref(const int8_t *src, int64_t stride, int n, int npad, int d, int8_t *vp) {
    for (int j = 0; j < npad; j++)
        for (int c = 0; c < d; c++) vp[(size_t)(j / 4) * d * 4 + (size_t)c * 4 + j % 4] = code_or_zero(src, stride, n, j, c);
}

int qattn_i8_stats_row_ref(const float *row, int d, double *acc, float *mn, float *mx) {
    if (qattn_row_nonfinite(row, d)) return 1;
    if (acc)
        for (int c = 0; c < d; c++) acc[c] += row[c];
    if (mn)
        for (int c = 0; c < d; c++) {
            mn[c] = row[c] < mn[c] ? row[c] : mn[c];
            mx[c] = row[c] > mx[c] ? row[c] : mx[c];
        }
    return 0;
}

void qattn_i8_out_row_ref(const float *acc, float inv, const float *mv, int d, float *dst) {
    for (int c = 0; c < d; c++) dst[c] = acc[c] * inv + mv[c];
}

void qattn_i8_pack8_q_ref(const int8_t *src, int64_t ss, int64_t hs, int group, int m, int d, int8_t *dst) {
    for (int r = 0; r < m; r++)
        for (int c = 0; c < d; c++) {
            dst[(size_t)r * d + c] = qattn_i8_clamp_code(src[(r / group) * ss + (r % group) * hs + c]);
        }
}

static float tok_codes_ref(const float *row, const float *f, const float *mu, int d, float pre, float cmax, int8_t *dst, int32_t *sq) {
    return qattn_i8_tok_codes_compose(center_amax_ref, qattn_i8_scale_center_amax_ref, qattn_rotate_row, quant_row_ref, row, f, mu, d, pre,
                                      cmax, dst, sq);
}

/* Every slot filled (tests/test_int8.c checks it): the reference of each kernel. */
const qattn_int8_kernels qattn_int8_kernels_ref = {
    .name = "ref",
    .qk = qattn_i8_qk_ref,
    .scores = scores_ref,
    .softmax = softmax_ref,
    .pv_f32 = pv_f32_ref,
    .rowmax = rowmax_ref,
    .softmax_vs = softmax_vs_ref,
    .pv_acc = pv_acc_ref,
    .quant_row = quant_row_ref,
    .qk16 = qk16_ref,
    .pv_acc8 = qattn_i8_pv_acc8_ref,
    .pack8 = 0,
    .p_vs_tile = p_vs_tile_ref,
    .pv_acc8u = qattn_i8_pv_acc8u_ref,
    .center_amax = center_amax_ref,
    .scale_center_amax = qattn_i8_scale_center_amax_ref,
    .rotate_row = qattn_rotate_row,
    .stats_row = qattn_i8_stats_row_ref,
    .lse_dots = qattn_i8_lse_dots_ref,
    .pack8_k = qattn_i8_pack8_k_ref,
    .pack8_v = qattn_i8_pack8_v_ref,
    .tok_codes = tok_codes_ref,
    .out_row = qattn_i8_out_row_ref,
    .pack8_q = qattn_i8_pack8_q_ref,
};
