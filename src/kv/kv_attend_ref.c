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

void qattn_kv_attend_ref(const float *q, int m, int d, int32_t dtype, const void *kc, const void *vc, const float *ks, const float *vs,
                         int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st, float *scratch) {
    (void)n;
    bool i8 = dtype == QATTN_DTYPE_I8;
    for (int r = 0; r < m; r++) {
        if (lo[r] >= hi[r]) continue;
        const float *qr = q + (int64_t)r * d;
        float *s = scratch;
        float tile_max = -INFINITY;
        for (int j = lo[r]; j < hi[r]; j++) {
            float dot = 0.0f;
            for (int c = 0; c < d; c++) dot += qr[c] * code_at(dtype, kc, (int64_t)j * d + c);
            if (i8) dot *= ks[j];
            s[j] = dot;
            if (dot > tile_max) tile_max = dot;
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
        float sum = 0.0f;
        for (int j = lo[r]; j < hi[r]; j++) {
            float pj = exp2f(s[j] - new_max);
            sum += pj;
            float w = i8 ? pj * vs[j] : pj;
            for (int c = 0; c < d; c++) acc[c] += w * code_at(dtype, vc, (int64_t)j * d + c);
        }
        st->row_sum[r] += sum;
    }
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
