/* Scalar reference INT8 micro-kernels (contracts and packed layouts: src/quant/lowp.h).
 * Portable C11, always built; the AVX2 kernels (src/cpu/x86/int8_avx2.c) must reproduce
 * these results bit for bit: the integer products are exact, and the float steps use the
 * same operations in the same order (fmaf where the vector code fuses). */
#include "quant/lowp.h"

#include <float.h>

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

const qattn_int8_kernels qattn_int8_kernels_ref = {
    .rowmax = rowmax_ref,
    .softmax_vs = softmax_vs_ref,
    .pv_acc = pv_acc_ref,
    .quant_row = quant_row_ref,
    .qk16 = qk16_ref,
    .pv_acc8 = qattn_i8_pv_acc8_ref,
    .pack8 = 0,
    .name = "ref",
    .qk = qattn_i8_qk_ref,
    .scores = scores_ref,
    .softmax = softmax_ref,
    .pv_f32 = pv_f32_ref,
};
