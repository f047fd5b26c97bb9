/* AVX2 INT8 micro-kernels (compiled with -mavx2 -mfma -mf16c; chosen when ctx->isa is AVX2).
 * Contracts and packed layouts: src/quant/lowp.h. Each kernel returns exactly what its scalar
 * reference in src/ref/int8_ref.c returns (tests/test_int8.c checks it bit for bit).
 *
 * Why no intermediate saturates (also in docs/FORMAT.md, "AVX2 kernels"):
 *
 * Q K^T (qk16). Codes are widened to 16 bits by the packers and multiplied with
 * _mm256_madd_epi16, which forms s16 x s16 products and adds pairs exactly in 32 bits: codes are
 * in [-127, 127] (a stored -128 is read as -127), so |q0*k0 + q1*k1| <= 2 * 127 * 127 = 32258,
 * and |S| <= D * 127 * 127 <= 256 * 16129 = 4 129 024 < 2^24 (the float conversion is exact).
 * (maddubs, u8 x s8 with s16 saturation, would need the |q| x sign(k, q) trick and measured slower.)
 *
 * P V (pv_acc). P codes are u8 in [0, 255] and V codes s8: maddubs would saturate
 * (255 * 127 * 2 = 64770 > 32767), so the packer widens both to 16 bits and _mm256_madd_epi16
 * multiplies s16 by s16 into exact 32-bit products and adds pairs in 32 bits: |p0*v0 + p1*v1| <= 2 * 255 * 127 =
 * 64770, no saturation anywhere; over a tile of at most 64 keys |O| <= 64 * 255 * 127 =
 * 2 072 640 < 2^24 (exact in float).
 *
 * Float kernels (scores, softmax, FP32 P V) do the reference's operations in the reference's
 * order, with vfmadd where it uses fmaf, so they agree bit for bit too. */
#include "quant/lowp.h"

#include <float.h>
#include <math.h>
#include <immintrin.h>

#include "cpu/x86/int8_acc_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE int32_t load_i32(const void *p) {
    int32_t w;
    memcpy(&w, p, 4);
    return w;
}

void qattn_i8_scores_avx2(const int32_t *s, int m, int npad, const float *sq, const float *sk, float *sf) {
    const __m256 hi = _mm256_set1_ps(FLT_MAX), lo = _mm256_set1_ps(-FLT_MAX);
    for (int r = 0; r < m; r++) {
        __m256 a = _mm256_set1_ps(sq[r]);
        for (int j = 0; j < npad; j += 8) {
            __m256 x = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(s + (size_t)r * npad + j)));
            x = _mm256_mul_ps(_mm256_mul_ps(x, a), _mm256_loadu_ps(sk + j));
            x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
            _mm256_storeu_ps(sf + (size_t)r * npad + j, x);
        }
    }
}

static ALWAYS_INLINE __m256 exp2_poly8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-127.0f));
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.5252733804059841e-05f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530393381610e-04f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-02f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}

void qattn_i8_softmax_avx2(const float *sf, int lo, int hi, int npad, float ref, float mult, int16_t *codes, float *pf,
                         int32_t *code_sum, float *e_sum) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i vlo = _mm256_set1_epi32(lo - 1), vhi = _mm256_set1_epi32(hi);
    const __m256 vref = _mm256_set1_ps(ref), vmult = _mm256_set1_ps(mult);
    __m256 esum = _mm256_setzero_ps();
    __m256i csum = _mm256_setzero_si256();
    for (int j = 0; j < npad; j += 8) {
        __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(j));
        __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(idx, vlo), _mm256_cmpgt_epi32(vhi, idx));
        __m256 e = exp2_poly8(_mm256_sub_ps(_mm256_loadu_ps(sf + j), vref));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(in));
        esum = _mm256_add_ps(esum, e);
        __m256i code = _mm256_cvtps_epi32(_mm256_mul_ps(e, vmult)); /* round to nearest even */
        csum = _mm256_add_epi32(csum, code);
        if (codes) {
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(code, code), 0x08);
            _mm_storeu_si128((__m128i *)(codes + j), _mm256_castsi256_si128(packed));
        }
        if (pf) _mm256_storeu_ps(pf + j, e);
    }
    float l[8];
    int32_t c[8];
    _mm256_storeu_ps(l, esum);
    _mm256_storeu_si256((__m256i *)c, csum);
    *e_sum = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    *code_sum = ((c[0] + c[1]) + (c[2] + c[3])) + ((c[4] + c[5]) + (c[6] + c[7]));
}

/* mr rows x nv groups of 8 channels, j ascending with one fma per product (as the reference). */
static ALWAYS_INLINE void pvf_block(const float *p, int mr, int npad, const float *v, int d, int c, int nv, float *o) {
    __m256 acc[4][3];
    for (int i = 0; i < mr; i++)
        for (int k = 0; k < nv; k++) acc[i][k] = _mm256_setzero_ps();
    for (int j = 0; j < npad; j++) {
        __m256 vv[3];
        for (int k = 0; k < nv; k++) vv[k] = _mm256_loadu_ps(v + (size_t)j * d + c + 8 * k);
        for (int i = 0; i < mr; i++) {
            __m256 pb = _mm256_set1_ps(p[(size_t)i * npad + j]);
            for (int k = 0; k < nv; k++) acc[i][k] = _mm256_fmadd_ps(pb, vv[k], acc[i][k]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int k = 0; k < nv; k++) _mm256_storeu_ps(o + (size_t)i * d + c + 8 * k, acc[i][k]);
}

void qattn_i8_pv_f32_avx2(const float *p, int m, int npad, const float *v, int d, float *o) {
    int r = 0;
    for (; r + 4 <= m; r += 4) {
        int c = 0;
        for (; c + 24 <= d; c += 24) pvf_block(p + (size_t)r * npad, 4, npad, v, d, c, 3, o + (size_t)r * d);
        for (; c < d; c += 8) pvf_block(p + (size_t)r * npad, 4, npad, v, d, c, 1, o + (size_t)r * d);
    }
    for (; r < m; r++) {
        int c = 0;
        for (; c + 24 <= d; c += 24) pvf_block(p + (size_t)r * npad, 1, npad, v, d, c, 3, o + (size_t)r * d);
        for (; c < d; c += 8) pvf_block(p + (size_t)r * npad, 1, npad, v, d, c, 1, o + (size_t)r * d);
    }
}

/* 16-bit Q K^T: mr rows x nv groups of 8 keys; pmaddwd's pair sums are exact in 32 bits
 * (|q0 k0 + q1 k1| <= 2 * 127 * 127), one instruction per 16 products. */
static ALWAYS_INLINE void qk16_block(const int16_t *q, int mr, int d, const int16_t *kpack, int npad, int j, int nv, int32_t *s) {
    __m256i acc[6][2];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++) acc[i][v] = _mm256_setzero_si256();
    for (int cp = 0; cp < d / 2; cp++) {
        const int16_t *kb = kpack + (size_t)cp * (size_t)npad * 2 + (size_t)j * 2;
        __m256i kv[2];
        for (int v = 0; v < nv; v++) kv[v] = _mm256_loadu_si256((const __m256i *)(kb + 16 * v));
        for (int i = 0; i < mr; i++) {
            __m256i qb = _mm256_set1_epi32(load_i32(q + (size_t)i * d + (size_t)cp * 2));
            for (int v = 0; v < nv; v++) acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(qb, kv[v]));
        }
    }
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++) _mm256_storeu_si256((__m256i *)(s + (size_t)i * npad + j + 8 * v), acc[i][v]);
}

void qattn_i8_qk16_avx2(const int16_t *q, int m, int d, const int16_t *kpack, int npad, int32_t *s) {
    int r = 0;
#define QK16_ROWS(MR)                                                                                                    \
    do {                                                                                                                 \
        int j = 0;                                                                                                       \
        for (; j + 16 <= npad; j += 16) qk16_block(q + (size_t)r * d, MR, d, kpack, npad, j, 2, s + (size_t)r * npad);   \
        for (; j < npad; j += 8) qk16_block(q + (size_t)r * d, MR, d, kpack, npad, j, 1, s + (size_t)r * npad);          \
    } while (0)
    for (; r + 6 <= m; r += 6) QK16_ROWS(6);
    for (; r + 4 <= m; r += 4) QK16_ROWS(4);
    for (; r < m; r++) QK16_ROWS(1);
#undef QK16_ROWS
}

static float hmax8(__m256 v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    float m = l[0];
    for (int i = 1; i < 8; i++) m = l[i] > m ? l[i] : m;
    return m;
}

/* Max is exact and the inputs are finite: only the sign of a zero max could depend on the
 * order, and adding +0.0f makes it +0 on both ISAs. */
float qattn_i8_rowmax_avx2(const float *sf, int lo, int hi) {
    int j = lo;
    float mb = sf[lo];
    if (hi - lo >= 8) {
        __m256 m = _mm256_loadu_ps(sf + lo);
        for (j = lo + 8; j + 8 <= hi; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(sf + j));
        mb = hmax8(m);
    } else {
        j = lo + 1;
    }
    for (; j < hi; j++) mb = sf[j] > mb ? sf[j] : mb;
    return mb + 0.0f;
}

void qattn_i8_softmax_vs_avx2(const float *sf, int lo, int hi, int npad, float ref, const float *svk, int16_t *codes, float *e_sum,
                            float *w_max) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i vlo = _mm256_set1_epi32(lo - 1), vhi = _mm256_set1_epi32(hi);
    const __m256 vref = _mm256_set1_ps(ref);
    __m256 esum = _mm256_setzero_ps(), wmax = _mm256_setzero_ps();
    float wbuf[QATTN_I8_TILE];
    for (int j = 0; j < npad; j += 8) {
        __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(j));
        __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(idx, vlo), _mm256_cmpgt_epi32(vhi, idx));
        __m256 e = exp2_poly8(_mm256_sub_ps(_mm256_loadu_ps(sf + j), vref));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(in));
        esum = _mm256_add_ps(esum, e);
        __m256 w = _mm256_mul_ps(e, _mm256_loadu_ps(svk + j)); /* 0 outside [lo, hi) (svk finite) */
        wmax = _mm256_max_ps(wmax, w);
        _mm256_storeu_ps(wbuf + j, w);
    }
    float wm = hmax8(wmax);
    float inv = wm > 0.0f ? 255.0f / wm : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int j = 0; j < npad; j += 8) {
        __m256i code = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(wbuf + j), vinv));
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(code, code), 0x08);
        _mm_storeu_si128((__m128i *)(codes + j), _mm256_castsi256_si128(packed));
    }
    float l[8];
    _mm256_storeu_ps(l, esum);
    *e_sum = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    *w_max = wm;
}

/* acc[r][c] = alpha[r] * acc[r][c] + fac[r] * sv[c] * (P V)[r][c] for mr rows x nv groups of 8 channels; P V exact in int32 (pmaddwd). */
static ALWAYS_INLINE void pv_acc_block(const int16_t *pc, int mr, int npad, const int16_t *vpack, int d, int c, int nv,
                                       const float *alpha, const float *fac, const float *sv, const int32_t *lo, const int32_t *hi,
                                       float *accp, int64_t ld) {
    __m256i acc[4][3];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++) acc[i][v] = _mm256_setzero_si256();
    for (int jp = 0; jp < npad / 2; jp++) {
        const int16_t *vb = vpack + (size_t)jp * d * 2 + (size_t)c * 2;
        __m256i vv[3];
        for (int v = 0; v < nv; v++) vv[v] = _mm256_loadu_si256((const __m256i *)(vb + 16 * v));
        for (int i = 0; i < mr; i++) {
            __m256i pb = _mm256_set1_epi32(load_i32(pc + (size_t)i * npad + 2 * jp));
            for (int v = 0; v < nv; v++) acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(pb, vv[v]));
        }
    }
    for (int i = 0; i < mr; i++) {
        if (lo[i] >= hi[i]) continue;
        __m256 a = _mm256_set1_ps(alpha[i]), f = _mm256_set1_ps(fac[i]);
        for (int v = 0; v < nv; v++) qattn_i8_acc_update8(accp + (size_t)i * (size_t)ld + c + 8 * v, a, f, sv + c + 8 * v, acc[i][v]);
    }
}

void qattn_i8_pv_acc_avx2(const int16_t *pc, int m, int npad, const int16_t *vpack, int d, const float *alpha, const float *fac,
                        const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld) {
    int r = 0;
    for (; r + 4 <= m; r += 4) {
        const int16_t *p = pc + (size_t)r * npad;
        float *o = acc + (size_t)r * (size_t)ld;
        int c = 0;
        for (; c + 24 <= d; c += 24) pv_acc_block(p, 4, npad, vpack, d, c, 3, alpha + r, fac + r, sv, lo + r, hi + r, o, ld);
        for (; c < d; c += 8) pv_acc_block(p, 4, npad, vpack, d, c, 1, alpha + r, fac + r, sv, lo + r, hi + r, o, ld);
    }
    for (; r < m; r++) {
        const int16_t *p = pc + (size_t)r * npad;
        float *o = acc + (size_t)r * (size_t)ld;
        int c = 0;
        for (; c + 24 <= d; c += 24) pv_acc_block(p, 1, npad, vpack, d, c, 3, alpha + r, fac + r, sv, lo + r, hi + r, o, ld);
        for (; c < d; c += 8) pv_acc_block(p, 1, npad, vpack, d, c, 1, alpha + r, fac + r, sv, lo + r, hi + r, o, ld);
    }
}

void qattn_i8_quant_row_avx2(const float *y, int d, float inv, int8_t *dst) {
    const __m256 vinv = _mm256_set1_ps(inv), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    int c = 0;
    for (; c + 32 <= d; c += 32) {
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            __m256 x = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(y + c + 8 * k), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q[k] = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(x, hi), lo));
        }
        __m256i a = _mm256_packs_epi32(q[0], q[1]), b = _mm256_packs_epi32(q[2], q[3]);
        __m256i bytes = _mm256_packs_epi16(a, b); /* lanes: q0[0:4] q1[0:4] q2[0:4] q3[0:4] | q0[4:8] ... */
        bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(dst + c), bytes);
    }
    for (; c < d; c++) {
        float q = nearbyintf(y[c] * inv);
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        dst[c] = (int8_t)q;
    }
}

float qattn_i8_center_amax_avx2(const float *row, const float *mu, int d, float *y) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (int c = 0; c < d; c += 8) {
        __m256 v = _mm256_sub_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(mu + c));
        _mm256_storeu_ps(y + c, v);
        m = _mm256_max_ps(m, _mm256_and_ps(v, absmask)); /* finite inputs: max is exact */
    }
    return hmax8(m);
}

/* tok_codes from this table's row kernels (the reference ones where it has none). */
float qattn_i8_tok_codes_avx2(const float *row, const float *f, const float *mu, int d, float pre, float cmax, int8_t *dst, int32_t *sq) {
    return qattn_i8_tok_codes_compose(qattn_i8_center_amax_avx2, qattn_i8_scale_center_amax_ref, qattn_rotate_row, qattn_i8_quant_row_avx2,
                                      row, f, mu, d, pre, cmax, dst, sq);
}

/* qattn_exp2f(x), with qattn_exp2f(0) = 1 taken without the evaluation (one of the driver's two per
 * row has a zero argument, since m_new is the larger of m_old and mb). */
static ALWAYS_INLINE float exp2f_or_1(float x) { return x == 0.0f ? 1.0f : qattn_exp2f(x); }

/* Keys lo <= j < hi of group v (8 keys from 8 v) as an all-ones lane mask. */
static ALWAYS_INLINE __m256 key_mask(int v, __m256i vlo, __m256i vhi) {
    __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * v));
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpgt_epi32(idx, vlo), _mm256_cmpgt_epi32(vhi, idx)));
}

/* One row of the fused P step, NV groups of 8 keys (npad = 8 NV), the row's values in registers;
 * FULL: every key visible (lo = 0, hi = npad), no masks. */
static ALWAYS_INLINE void p_vs_row(const int32_t *srow, int nv, bool full, float sqr, const float *sk, int lo, int hi, const float *svk,
                                   float *row_max, float *row_sum, void *codes, int u8, float *alpha, float *fac) {
    const __m256 fmax = _mm256_set1_ps(FLT_MAX), fmin = _mm256_set1_ps(-FLT_MAX), ninf = _mm256_set1_ps(-INFINITY);
    const __m256i vlo = _mm256_set1_epi32(lo - 1), vhi = _mm256_set1_epi32(hi);
    const __m256 a = _mm256_set1_ps(sqr);
    __m256 x[8] = {0};
    __m256 mx = ninf;
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) {
        __m256 t = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(srow + 8 * v)));
        t = _mm256_mul_ps(_mm256_mul_ps(t, a), _mm256_loadu_ps(sk + 8 * v));
        x[v] = _mm256_max_ps(_mm256_min_ps(t, fmax), fmin);
        mx = _mm256_max_ps(mx, full ? x[v] : _mm256_blendv_ps(ninf, x[v], key_mask(v, vlo, vhi)));
    }
    /* max is exact; + 0.0f makes a zero max +0 whatever the order (as rowmax) */
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    float mb = _mm_cvtss_f32(m4) + 0.0f;
    float m_old = *row_max;
    float m_new = m_old > mb ? m_old : mb;
    float al = m_old == -INFINITY ? 0.0f : exp2f_or_1(m_old - m_new);
    float beta = exp2f_or_1(mb - m_new);
    const __m256 vref = _mm256_set1_ps(mb);
    __m256 esum = _mm256_setzero_ps(), wmax = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++) {
        __m256 e = exp2_poly8(_mm256_sub_ps(x[v], vref));
        if (!full) e = _mm256_and_ps(e, key_mask(v, vlo, vhi));
        esum = _mm256_add_ps(esum, e);
        x[v] = _mm256_mul_ps(e, _mm256_loadu_ps(svk + 8 * v)); /* w */
        wmax = _mm256_max_ps(wmax, x[v]);
    }
    __m128 w4 = _mm_max_ps(_mm256_castps256_ps128(wmax), _mm256_extractf128_ps(wmax, 1));
    w4 = _mm_max_ps(w4, _mm_movehl_ps(w4, w4));
    w4 = _mm_max_ss(w4, _mm_shuffle_ps(w4, w4, 1));
    float wm = _mm_cvtss_f32(w4); /* >= +0: every w is +0 or positive */
    float inv = wm > 0.0f ? 255.0f / wm : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    if (u8) { /* codes in [0, 255]: packs (exact) then packus (exact) */
        uint8_t *c8 = codes;
        int v = 0;
        for (; v + 2 <= nv; v += 2) {
            __m256i c0 = _mm256_cvtps_epi32(_mm256_mul_ps(x[v], vinv)), c1 = _mm256_cvtps_epi32(_mm256_mul_ps(x[v + 1], vinv));
            __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(c0, c1), 0xD8); /* c0[0:8] c1[0:8] as int16 */
            __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
            _mm_storeu_si128((__m128i *)(c8 + 8 * v), b);
        }
        if (v < nv) {
            __m256i c0 = _mm256_cvtps_epi32(_mm256_mul_ps(x[v], vinv));
            __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(c0), _mm256_extracti128_si256(c0, 1));
            _mm_storel_epi64((__m128i *)(c8 + 8 * v), _mm_packus_epi16(w16, w16));
        }
    } else {
        int16_t *c16 = codes;
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) {
            __m256i code = _mm256_cvtps_epi32(_mm256_mul_ps(x[v], vinv));
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(code, code), 0x08);
            _mm_storeu_si128((__m128i *)(c16 + 8 * v), _mm256_castsi256_si128(packed));
        }
    }
    float l[8];
    _mm256_storeu_ps(l, esum);
    float es = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    *row_sum = *row_sum * al + beta * es;
    *row_max = m_new;
    *alpha = al;
    *fac = beta * wm / 255.0f;
}

void qattn_i8_p_vs_tile_avx2(const int32_t *s, int m, int npad, const float *sq, const float *sk, const int32_t *lo, const int32_t *hi,
                             const float *svk, float *row_max, float *row_sum, void *codes, int u8, float *alpha, float *fac) {
    int nv = npad / 8;
    size_t esz = u8 ? 1 : 2;
    for (int r = 0; r < m; r++) {
        void *cr = (unsigned char *)codes + (size_t)r * npad * esz;
        if (lo[r] >= hi[r]) {
            memset(cr, 0, (size_t)npad * esz);
            alpha[r] = 1.0f;
            fac[r] = 0.0f;
            continue;
        }
        const int32_t *sr = s + (size_t)r * npad;
        if (nv == 8 && lo[r] == 0 && hi[r] == 64)
            p_vs_row(sr, 8, true, sq[r], sk, 0, 64, svk, row_max + r, row_sum + r, cr, u8, alpha + r, fac + r);
        else if (nv == 8)
            p_vs_row(sr, 8, false, sq[r], sk, lo[r], hi[r], svk, row_max + r, row_sum + r, cr, u8, alpha + r, fac + r);
        else
            p_vs_row(sr, nv, false, sq[r], sk, lo[r], hi[r], svk, row_max + r, row_sum + r, cr, u8, alpha + r, fac + r);
    }
}

const qattn_int8_kernels qattn_int8_kernels_avx2 = {
    .rowmax = qattn_i8_rowmax_avx2,
    .softmax_vs = qattn_i8_softmax_vs_avx2,
    .pv_acc = qattn_i8_pv_acc_avx2,
    .quant_row = qattn_i8_quant_row_avx2,
    .qk16 = qattn_i8_qk16_avx2,
    .pv_acc8 = qattn_i8_pv_acc8_ref, /* unused here (pack8 0); the AVX-VNNI table has the fast one */
    .name = "avx2",
    .qk = qattn_i8_qk_ref, /* unused here (pack8 0): the AVX-VNNI table has the fast 8-bit one */
    .scores = qattn_i8_scores_avx2,
    .softmax = qattn_i8_softmax_avx2,
    .pv_f32 = qattn_i8_pv_f32_avx2,
    .p_vs_tile = qattn_i8_p_vs_tile_avx2,
    .pv_acc8u = qattn_i8_pv_acc8u_ref, /* unused here (pack8 0) */
    .center_amax = qattn_i8_center_amax_avx2,
    /* no AVX2 versions of the quantizer's other row passes: the reference ones */
    .scale_center_amax = qattn_i8_scale_center_amax_ref,
    .rotate_row = qattn_rotate_row,
    .stats_row = qattn_i8_stats_row_ref,
    .lse_dots = qattn_i8_lse_dots_ref,
    .pack8_k = qattn_i8_pack8_k_ref,
    .pack8_v = qattn_i8_pack8_v_ref,
    .tok_codes = qattn_i8_tok_codes_avx2,
    .out_row = qattn_i8_out_row_ref,
    .pack8_q = qattn_i8_pack8_q_ref,
};
