/* Emulated FP8 arithmetic (precision FP8_E4M3 / FP8_E5M2), the reference kernels of the FP8
 * driver src/cpu/forward_fp8.c, for accuracy comparisons only:
 *   qattn_round_fp8_e4m3 / _e5m2   one value: nearest even, saturating to the largest finite
 *                                  value (E4M3 448, E5M2 57344), subnormals kept, NaN stays NaN;
 *   qattn_fp8_round_scaled         one tensor with one scale (amax / fp8_max, as
 *                                  FlashAttention-FP8 baselines do);
 *   qattn_fp8_attend_row_tile      one query row against one tile of n <= QATTN_FP8_TILE keys:
 *                                  P = exp2(s - m) rounded to FP8 without a scale (it lies in
 *                                  [0, 1]), everything else FP32; the row sum uses the unrounded P
 *                                  (FlashAttention-3's FP8 forward does the same).
 * Scalar code; no allocation, no threads, no validation. */
#include "quant/lowp.h"

static float round_fp8(float x, int mbits, int emin, float maxv) {
    if (isnan(x)) return x;
    float a = fabsf(x);
    if (a == 0.0f) return x;
    int e;
    frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1): exponent of the leading bit is e - 1 */
    e -= 1;
    if (e < emin) e = emin; /* subnormal range: fixed quantum */
    float q = ldexpf(1.0f, e - mbits);
    float r = nearbyintf(a / q) * q; /* a / q and * q are exact (powers of two) unless a is huge */
    if (!(r <= maxv)) r = maxv;      /* saturate (also +inf) */
    return x < 0 ? -r : r;
}

float qattn_round_fp8_e4m3(float x) { return round_fp8(x, 3, -6, 448.0f); }
float qattn_round_fp8_e5m2(float x) { return round_fp8(x, 2, -14, 57344.0f); }

void qattn_fp8_round_scaled(float *x, int64_t n, float amax, float maxv, float (*rnd)(float)) {
    if (amax == 0.0f) return;
    float s = amax / maxv;
    for (int64_t i = 0; i < n; i++) x[i] = rnd(x[i] / s) * s;
}

void qattn_fp8_attend_row_tile(const float *q, const float *k, const float *v, int64_t kv_stride, int64_t d, int64_t n,
                               float qs, float (*rnd)(float), float *m_io, float *l_io, float *acc) {
    float sc[QATTN_FP8_TILE];
    float m = *m_io, l = *l_io;
    float mb = -INFINITY;
    for (int64_t jj = 0; jj < n; jj++) {
        const float *kr = k + jj * kv_stride;
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (int64_t c = 0; c < d; c += 4) {
            a0 += q[c] * kr[c];
            a1 += q[c + 1] * kr[c + 1];
            a2 += q[c + 2] * kr[c + 2];
            a3 += q[c + 3] * kr[c + 3];
        }
        sc[jj] = ((a0 + a1) + (a2 + a3)) * qs;
        mb = sc[jj] > mb ? sc[jj] : mb;
    }
    float mn = m > mb ? m : mb;
    float alpha = m == -INFINITY ? 0.0f : exp2f(m - mn);
    l *= alpha;
    for (int64_t c = 0; c < d; c++) acc[c] *= alpha;
    for (int64_t jj = 0; jj < n; jj++) {
        float e = exp2f(sc[jj] - mn);
        l += e;
        float pr = rnd(e);
        const float *vr = v + jj * kv_stride;
        for (int64_t c = 0; c < d; c++) acc[c] += pr * vr[c];
    }
    *m_io = mn;
    *l_io = l;
}
