/* The reference decode kernel over one cache block (contract: qattn_kv_attend_fn in
 * kv_internal.h), portable scalar C. The AVX2 kernel (src/cpu/x86/kv_attend_avx2.c) is
 * tested against it. */
#include "kv/kv_internal.h"


static inline float code_at(int32_t dtype, const void *base, int64_t idx) {
    switch (dtype) {
    case QATTN_DTYPE_F16: return qattn_f16_to_f32(((const uint16_t *)base)[idx]);
    case QATTN_DTYPE_BF16: return qattn_bf16_to_f32(((const uint16_t *)base)[idx]);
    default: return (float)((const int8_t *)base)[idx];
    }
}

static void attend_fp_ref(const float *q, int m, int d, int32_t dtype, const void *kc, const void *vc, int n, const int32_t *lo,
                          const int32_t *hi, qattn_tile_state *st, float *scratch) {
    (void)n;
    for (int r = 0; r < m; r++) {
        if (lo[r] >= hi[r]) continue;
        const float *qr = q + (int64_t)r * d;
        float *s = scratch;
        float tile_max = -INFINITY;
        for (int j = lo[r]; j < hi[r]; j++) {
            float dot = 0.0f;
            for (int c = 0; c < d; c++) dot += qr[c] * code_at(dtype, kc, (int64_t)j * d + c);
            s[j] = dot;
            if (dot > tile_max) tile_max = dot;
        }
        float old_max = st->row_max[r];
        float new_max = tile_max > old_max ? tile_max : old_max;
        float *acc = st->acc + r * st->ld_acc;
        if (new_max == -INFINITY) { /* the row saw keys but no score is above -inf: all NaN (or -inf) */
            for (int c = 0; c < d; c++) acc[c] = NAN;
            st->row_max[r] = st->row_sum[r] = NAN; /* never a hidden "empty" row */
            continue;
        }
        if (new_max > old_max) {
            float alpha = exp2f(old_max - new_max);
            st->row_sum[r] *= alpha;
            for (int c = 0; c < d; c++) acc[c] *= alpha;
            st->row_max[r] = new_max;
        }
        float sum = 0.0f;
        for (int j = lo[r]; j < hi[r]; j++) {
            float pj = exp2f(s[j] - new_max);
            sum += pj;
            for (int c = 0; c < d; c++) acc[c] += pj * code_at(dtype, vc, (int64_t)j * d + c);
        }
        st->row_sum[r] += sum;
    }
}

static void attend_i8_ref(const int16_t *q16, const float *qsc, int m, int d, const int8_t *kc, const int8_t *vc, const float *ks,
                          const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st, float *scratch) {
    (void)n;
    for (int r = 0; r < m; r++) {
        if (lo[r] >= hi[r]) continue;
        const int16_t *qr = q16 + (int64_t)r * ((d + 15) / 16 * 16);
        float *s = scratch;
        float tile_max = -INFINITY;
        for (int j = lo[r]; j < hi[r]; j++) {
            int32_t dot = 0;
            for (int c = 0; c < d; c++) dot += (int32_t)qr[c] * (int32_t)kc[(int64_t)j * d + c];
            float sj = ((float)dot * qsc[r]) * ks[j];
            s[j] = sj;
            if (sj > tile_max) tile_max = sj;
        }
        float old_max = st->row_max[r];
        float new_max = tile_max > old_max ? tile_max : old_max;
        float *acc = st->acc + r * st->ld_acc;
        if (new_max > old_max) {
            float alpha = exp2f(old_max - new_max);
            st->row_sum[r] *= alpha;
            for (int c = 0; c < d; c++) acc[c] *= alpha;
            st->row_max[r] = new_max;
        }
        float sum = 0.0f, wmax = 0.0f;
        bool nan = false;
        for (int j = lo[r]; j < hi[r]; j++) {
            float pj = exp2f(s[j] - new_max);
            sum += pj;
            float w = pj * vs[j];
            s[j] = w;
            if (w > wmax) wmax = w;
            if (w != w) nan = true;
        }
        st->row_sum[r] += sum;
        if (nan) { /* a NaN score (NaN query): the row's state becomes NaN, never a hidden empty row */
            for (int c = 0; c < d; c++) acc[c] = NAN;
            st->row_max[r] = NAN;
            st->row_sum[r] = NAN;
            continue;
        }
        if (wmax == 0.0f) continue;
        float inv = 32767.0f / wmax, ws = wmax / 32767.0f;
        for (int j0 = lo[r]; j0 < hi[r]; j0 += 256) {
            int j1 = j0 + 256 < hi[r] ? j0 + 256 : hi[r];
            for (int c = 0; c < d; c++) {
                int32_t a = 0;
                for (int j = j0; j < j1; j++) a += (int32_t)rintf(s[j] * inv) * (int32_t)vc[(int64_t)j * d + c];
                acc[c] += (float)a * ws;
            }
        }
    }
}

void qattn_kv_attend_ref(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc, const void *vc,
                         const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st, float *scratch,
                         const qattn_kv_prefetch *pf) {
    if (pf) { /* the hint, all up front: next to the scalar compute, its timing does not matter */
        QATTN_PREFETCH(pf->k, pf->bytes, 3);
        QATTN_PREFETCH(pf->v, pf->bytes, 3);
    }
    if (dtype == QATTN_DTYPE_I8)
        attend_i8_ref(q16, qsc, m, d, kc, vc, ks, vs, n, lo, hi, st, scratch);
    else
        attend_fp_ref(q, m, d, dtype, kc, vc, n, lo, hi, st, scratch);
}

void qattn_kv_quantize_q16(const float *q, int d, int16_t *q16, float *qsc) {
    float amax = 0.0f;
    bool finite = true;
    for (int c = 0; c < d; c++) {
        float a = fabsf(q[c]);
        if (!(a <= 3.4e38f)) finite = false;
        else if (a > amax) amax = a;
    }
    if (!finite || amax == 0.0f) {
        memset(q16, 0, (size_t)d * sizeof *q16);
        *qsc = finite ? 0.0f : NAN;
        return;
    }
    float inv = 32767.0f / amax;
    for (int c = 0; c < d; c++) {
        /* round half to even without a libm call: exact for |x| < 2^22 (here <= 32767) */
        float t = (q[c] * inv + 12582912.0f) - 12582912.0f;
        q16[c] = (int16_t)(t > 32767.0f ? 32767.0f : t < -32767.0f ? -32767.0f : t);
    }
    *qsc = amax / 32767.0f;
}

float qattn_kv_quantize_row(const float *x, int d, int8_t *codes) {
    float amax = 0.0f;
    for (int c = 0; c < d; c++) {
        float a = fabsf(x[c]);
        if (a > amax) amax = a;
    }
    if (amax == 0.0f) {
        memset(codes, 0, (size_t)d);
        return 0.0f;
    }
    float scale = amax / 127.0f;
    float inv = 127.0f / amax;
    for (int c = 0; c < d; c++) {
        float t = rintf(x[c] * inv);
        if (t > 127.0f) t = 127.0f;
        if (t < -127.0f) t = -127.0f;
        codes[c] = (int8_t)t;
    }
    return scale;
}
