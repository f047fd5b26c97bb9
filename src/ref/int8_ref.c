/* Scalar reference INT8 micro-kernels (contracts and packed layouts: src/quant/lowp.h).
 * Portable C11, always built; the AVX2 kernels (src/cpu/x86/int8_avx2.c) must reproduce
 * these results bit for bit: the integer products are exact, and the float steps use the
 * same operations in the same order (fmaf where the vector code fuses). */
#include "quant/lowp.h"

#include <float.h>

static void qk_ref(const int8_t *q, int m, int d, const int8_t *kpack, int npad, int32_t *s) {
    for (int r = 0; r < m; r++)
        for (int j = 0; j < npad; j++) {
            int32_t acc = 0;
            for (int c = 0; c < d; c++) acc += (int32_t)q[r * d + c] * (int32_t)kpack[(c / 4) * npad * 4 + j * 4 + c % 4];
            s[r * npad + j] = acc;
        }
}

static void pv_ref(const int16_t *pc, int m, int npad, const int16_t *vpack, int d, int32_t *o) {
    for (int r = 0; r < m; r++)
        for (int c = 0; c < d; c++) {
            int32_t acc = 0;
            for (int j = 0; j < npad; j++) acc += (int32_t)pc[r * npad + j] * (int32_t)vpack[(j / 2) * d * 2 + c * 2 + j % 2];
            o[r * d + c] = acc;
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

const qattn_int8_kernels qattn_int8_kernels_ref = {
    .name = "ref",
    .qk = qk_ref,
    .pv = pv_ref,
    .scores = scores_ref,
    .softmax = softmax_ref,
    .pv_f32 = pv_f32_ref,
};
