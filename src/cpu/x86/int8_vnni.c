/* AVX-VNNI INT8 micro-kernels (compiled with -mavx2 -mfma -mf16c -mavxvnni; chosen when ctx->isa is
 * AVXVNNI, which api.c grants only where CPUID.(7,1):EAX[4] and XGETBV say so). Contracts and packed
 * layouts: src/quant/lowp.h. The two integer products use vpdpbusd (u8 x s8, four adjacent byte
 * products summed into each s32 lane together with the accumulator: 32 multiply-adds per
 * instruction, no intermediate rounding or saturation in this non-"s" form); every other slot is
 * the AVX2 kernel. Table flag pack8 = 1: the driver hands qk 8-bit Q codes and the 8-bit K pack,
 * and pv_acc8 the 8-bit V pack vp8. Results equal the scalar references bit for bit
 * (tests/test_int8.c): the integer sums are exact, so they are the same int32 values, and the float
 * epilogue is the AVX2 one (the reference's operations in its order).
 *
 * Why nothing overflows (also docs/FORMAT.md §5, "AVX-VNNI kernels"). Codes: Q, K, V in
 * [-127, 127] (the packers turn -128 into -127; the arguments below hold for -128 as well), P in
 * [0, 255]; D <= 256 (the API's largest head dim), npad <= QATTN_I8_TILE = 64 keys.
 *
 * Q K^T (qk_vnni). vpdpbusd wants one unsigned operand; q and k are both signed. The +128 offset
 * trick: a = k XOR 0x80 is the byte k + 128 read as u8 (in [1, 255]), b = q (s8), so
 *     acc = sum_c (k_c + 128) q_c = S + 128 * sum_c q_c,   S = acc - 128 * qsum[row].
 * Bounds: each vpdpbusd adds four products, |4 * 255 * 127| = 129 540; every partial acc is a
 * sum of at most D such terms, |acc| <= 256 * 255 * 127 = 8 290 560 < 2^31; |128 * qsum| <=
 * 128 * 256 * 127 = 4 161 536; |S| <= 256 * 127 * 127 = 4 129 024 < 2^24. No s32 lane ever
 * wraps, so S is the exact integer the reference sums (and (float)S is exact).
 * (The alternative |q| x sign(k, q) needs a vpsignb per product instruction; the offset costs one
 * vpxor per K vector, shared by all rows of the block, and one qsum per row.)
 *
 * P V (pv_acc8_vnni). a = P code (u8, <= 255), b = V code (s8): four products per lane per
 * instruction, |4 * 255 * 127| = 129 540; over npad <= 64 keys |PV| <= 64 * 255 * 127 = 2 072 640
 * < 2^24 < 2^31: exact, and exact in float. The int16 P codes of a 4-row block are narrowed to u8
 * once (vpackuswb: exact for codes in [0, 255]) into a stack buffer. */
#include "kv/kv_internal.h" /* the decode kernel of the table */
#include "quant/lowp.h"

#include <immintrin.h>

#include "cpu/x86/int8_acc_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE int32_t load_i32(const void *p) {
    int32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* ---------------------------------------------------------------- Q K^T */

/* Sum of one row of d codes (d % 8 == 0): vpdpbusd against bytes of 1, then a scalar tail. */
static ALWAYS_INLINE int32_t row_sum_i8(const int8_t *q, int d) {
    const __m256i ones = _mm256_set1_epi8(1);
    __m256i acc = _mm256_setzero_si256();
    int c = 0;
    for (; c + 32 <= d; c += 32) acc = _mm256_dpbusd_avx_epi32(acc, ones, _mm256_loadu_si256((const __m256i *)(q + c)));
    int32_t l[8];
    _mm256_storeu_si256((__m256i *)l, acc);
    int32_t sum = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    for (; c < d; c++) sum += q[c];
    return sum;
}

/* mr rows x nv groups of 8 keys starting at key j; qoff[i] = 128 * qsum of row i. */
static ALWAYS_INLINE void qk_block(const int8_t *q, int mr, int d, const int8_t *kpack, int npad, int j, int nv, const int32_t *qoff,
                                   int32_t *s) {
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    __m256i acc[6][2];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++) acc[i][v] = _mm256_setzero_si256();
    const int8_t *kb = kpack + (size_t)j * 4;
    for (int g = 0; g < d / 4; g++, kb += (size_t)npad * 4) {
        __m256i ku[2];
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) ku[v] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(kb + 32 * v)), bias); /* k + 128 */
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            __m256i qb = _mm256_set1_epi32(load_i32(q + (size_t)i * d + (size_t)g * 4));
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++) acc[i][v] = _mm256_dpbusd_avx_epi32(acc[i][v], ku[v], qb);
        }
    }
    for (int i = 0; i < mr; i++) {
        __m256i off = _mm256_set1_epi32(qoff[i]);
        for (int v = 0; v < nv; v++)
            _mm256_storeu_si256((__m256i *)(s + (size_t)i * npad + j + 8 * v), _mm256_sub_epi32(acc[i][v], off));
    }
}

/* The main block, 6 rows x 16 keys, with named accumulators: the array form above makes gcc 12
 * store every accumulator to the stack on each step (measured: 11 stores per 12 vpdpbusd). */
static void qk_block_6x2(const int8_t *q, int d, const int8_t *kpack, int npad, int j, const int32_t *qoff, int32_t *s) {
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256i a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    const int8_t *kb = kpack + (size_t)j * 4;
    const int8_t *q0 = q, *q1 = q + d, *q2 = q + 2 * (size_t)d, *q3 = q + 3 * (size_t)d, *q4 = q + 4 * (size_t)d, *q5 = q + 5 * (size_t)d;
    for (int c = 0; c < d; c += 4, kb += (size_t)npad * 4) {
        __m256i k0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)kb), bias); /* k + 128 */
        __m256i k1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(kb + 32)), bias);
        __m256i b = _mm256_set1_epi32(load_i32(q0 + c));
        a00 = _mm256_dpbusd_avx_epi32(a00, k0, b), a01 = _mm256_dpbusd_avx_epi32(a01, k1, b);
        b = _mm256_set1_epi32(load_i32(q1 + c));
        a10 = _mm256_dpbusd_avx_epi32(a10, k0, b), a11 = _mm256_dpbusd_avx_epi32(a11, k1, b);
        b = _mm256_set1_epi32(load_i32(q2 + c));
        a20 = _mm256_dpbusd_avx_epi32(a20, k0, b), a21 = _mm256_dpbusd_avx_epi32(a21, k1, b);
        b = _mm256_set1_epi32(load_i32(q3 + c));
        a30 = _mm256_dpbusd_avx_epi32(a30, k0, b), a31 = _mm256_dpbusd_avx_epi32(a31, k1, b);
        b = _mm256_set1_epi32(load_i32(q4 + c));
        a40 = _mm256_dpbusd_avx_epi32(a40, k0, b), a41 = _mm256_dpbusd_avx_epi32(a41, k1, b);
        b = _mm256_set1_epi32(load_i32(q5 + c));
        a50 = _mm256_dpbusd_avx_epi32(a50, k0, b), a51 = _mm256_dpbusd_avx_epi32(a51, k1, b);
    }
#define QK_STORE(I, X0, X1)                                                                                                           \
    do {                                                                                                                              \
        __m256i off = _mm256_set1_epi32(qoff[I]);                                                                                     \
        _mm256_storeu_si256((__m256i *)(s + (size_t)(I) * npad + j), _mm256_sub_epi32(X0, off));                                      \
        _mm256_storeu_si256((__m256i *)(s + (size_t)(I) * npad + j + 8), _mm256_sub_epi32(X1, off));                                  \
    } while (0)
    QK_STORE(0, a00, a01);
    QK_STORE(1, a10, a11);
    QK_STORE(2, a20, a21);
    QK_STORE(3, a30, a31);
    QK_STORE(4, a40, a41);
    QK_STORE(5, a50, a51);
#undef QK_STORE
}

static void qk_vnni(const int8_t *q, int m, int d, const int8_t *kpack, int npad, int32_t *s) {
    int r = 0;
    int32_t qoff[6];
#define QK_ROWS(MR)                                                                                                                   \
    do {                                                                                                                              \
        for (int i = 0; i < MR; i++) qoff[i] = 128 * row_sum_i8(q + (size_t)(r + i) * d, d);                                          \
        int j = 0;                                                                                                                    \
        for (; j + 16 <= npad; j += 16) qk_block(q + (size_t)r * d, MR, d, kpack, npad, j, 2, qoff, s + (size_t)r * npad);            \
        for (; j < npad; j += 8) qk_block(q + (size_t)r * d, MR, d, kpack, npad, j, 1, qoff, s + (size_t)r * npad);                   \
    } while (0)
    for (; r + 6 <= m; r += 6) {
        for (int i = 0; i < 6; i++) qoff[i] = 128 * row_sum_i8(q + (size_t)(r + i) * d, d);
        int j = 0;
        for (; j + 16 <= npad; j += 16) qk_block_6x2(q + (size_t)r * d, d, kpack, npad, j, qoff, s + (size_t)r * npad);
        for (; j < npad; j += 8) qk_block(q + (size_t)r * d, 6, d, kpack, npad, j, 1, qoff, s + (size_t)r * npad);
    }
    for (; r + 4 <= m; r += 4) QK_ROWS(4);
    for (; r < m; r++) QK_ROWS(1);
#undef QK_ROWS
}

/* ---------------------------------------------------------------- P V + accumulator update */

/* mr rows x nv groups of 8 channels starting at channel c; p8: the rows' u8 codes, stride
 * QATTN_I8_TILE. Epilogue as pv_acc_avx2: acc = acc * alpha + (fac * sv) * (float)PV. */
static ALWAYS_INLINE void pv_acc8_block(const uint8_t *p8, int ps, int mr, int npad, const int8_t *vp8, int d, int c, int nv,
                                        const float *alpha, const float *fac, const float *sv, const int32_t *lo, const int32_t *hi,
                                        float *accp, int64_t ld) {
    __m256i acc[4][3];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++) acc[i][v] = _mm256_setzero_si256();
    const int8_t *vb = vp8 + (size_t)c * 4;
    for (int jq = 0; jq < npad / 4; jq++, vb += (size_t)d * 4) {
        __m256i vv[3];
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++) vv[v] = _mm256_loadu_si256((const __m256i *)(vb + 32 * v)); /* 8 channels x 4 keys */
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            __m256i pb = _mm256_set1_epi32(load_i32(p8 + (size_t)i * ps + 4 * jq)); /* p[4jq .. 4jq+3] */
#pragma GCC unroll 3
            for (int v = 0; v < nv; v++) acc[i][v] = _mm256_dpbusd_avx_epi32(acc[i][v], pb, vv[v]);
        }
    }
    for (int i = 0; i < mr; i++) {
        if (lo[i] >= hi[i]) continue;
        __m256 a = _mm256_set1_ps(alpha[i]), f = _mm256_set1_ps(fac[i]);
        for (int v = 0; v < nv; v++) qattn_i8_acc_update8(accp + (size_t)i * (size_t)ld + c + 8 * v, a, f, sv + c + 8 * v, acc[i][v]);
    }
}

/* The main block, 6 rows x 16 channels, named accumulators (see qk_block_6x2). */
static void pv_acc8_6x2(const uint8_t *p8, int ps, int npad, const int8_t *vp8, int d, int c, const float *alpha, const float *fac, const float *sv,
                        const int32_t *lo, const int32_t *hi, float *accp, int64_t ld) {
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256i a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    const int8_t *vb = vp8 + (size_t)c * 4;
    const uint8_t *p0 = p8, *p1 = p8 + ps, *p2 = p8 + 2 * (size_t)ps, *p3 = p8 + 3 * (size_t)ps;
    const uint8_t *p4 = p8 + 4 * (size_t)ps, *p5 = p8 + 5 * (size_t)ps;
    for (int j = 0; j < npad; j += 4, vb += (size_t)d * 4) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)vb), v1 = _mm256_loadu_si256((const __m256i *)(vb + 32));
        __m256i b = _mm256_set1_epi32(load_i32(p0 + j));
        a00 = _mm256_dpbusd_avx_epi32(a00, b, v0), a01 = _mm256_dpbusd_avx_epi32(a01, b, v1);
        b = _mm256_set1_epi32(load_i32(p1 + j));
        a10 = _mm256_dpbusd_avx_epi32(a10, b, v0), a11 = _mm256_dpbusd_avx_epi32(a11, b, v1);
        b = _mm256_set1_epi32(load_i32(p2 + j));
        a20 = _mm256_dpbusd_avx_epi32(a20, b, v0), a21 = _mm256_dpbusd_avx_epi32(a21, b, v1);
        b = _mm256_set1_epi32(load_i32(p3 + j));
        a30 = _mm256_dpbusd_avx_epi32(a30, b, v0), a31 = _mm256_dpbusd_avx_epi32(a31, b, v1);
        b = _mm256_set1_epi32(load_i32(p4 + j));
        a40 = _mm256_dpbusd_avx_epi32(a40, b, v0), a41 = _mm256_dpbusd_avx_epi32(a41, b, v1);
        b = _mm256_set1_epi32(load_i32(p5 + j));
        a50 = _mm256_dpbusd_avx_epi32(a50, b, v0), a51 = _mm256_dpbusd_avx_epi32(a51, b, v1);
    }
#define PV_UPDATE(I, X0, X1)                                                                                                          \
    do {                                                                                                                              \
        if (lo[I] < hi[I]) {                                                                                                          \
            __m256 al = _mm256_set1_ps(alpha[I]), f = _mm256_set1_ps(fac[I]);                                                         \
            float *dst = accp + (size_t)(I) * (size_t)ld + c;                                                                         \
            qattn_i8_acc_update8(dst, al, f, sv + c, X0);                                                                             \
            qattn_i8_acc_update8(dst + 8, al, f, sv + c + 8, X1);                                                                     \
        }                                                                                                                             \
    } while (0)
    PV_UPDATE(0, a00, a01);
    PV_UPDATE(1, a10, a11);
    PV_UPDATE(2, a20, a21);
    PV_UPDATE(3, a30, a31);
    PV_UPDATE(4, a40, a41);
    PV_UPDATE(5, a50, a51);
#undef PV_UPDATE
}

/* Codes [0, 255] of mr rows (int16, stride npad) as u8 rows of stride QATTN_I8_TILE; npad % 8 == 0. */
static ALWAYS_INLINE void narrow_codes(const int16_t *pc, int mr, int npad, uint8_t *p8) {
    for (int i = 0; i < mr; i++) {
        const int16_t *src = pc + (size_t)i * npad;
        uint8_t *dst = p8 + (size_t)i * QATTN_I8_TILE;
        int j = 0;
        for (; j + 16 <= npad; j += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + j)), b = _mm_loadu_si128((const __m128i *)(src + j + 8));
            _mm_storeu_si128((__m128i *)(dst + j), _mm_packus_epi16(a, b));
        }
        for (; j < npad; j += 8) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + j));
            _mm_storel_epi64((__m128i *)(dst + j), _mm_packus_epi16(a, a));
        }
    }
}

/* pv_acc8 over u8 code rows p8 (stride ps). */
static ALWAYS_INLINE void pv_acc8_rows(const uint8_t *p8, int ps, int mr, int npad, const int8_t *vpack8, int d, const float *alpha,
                                       const float *fac, const float *sv, const int32_t *lo, const int32_t *hi, float *o, int64_t ld) {
    int c = 0;
    if (mr == 6) {
        for (; c + 16 <= d; c += 16) pv_acc8_6x2(p8, ps, npad, vpack8, d, c, alpha, fac, sv, lo, hi, o, ld);
        if (c < d) { /* 8 channels left: two 3-row blocks */
            pv_acc8_block(p8, ps, 3, npad, vpack8, d, c, 1, alpha, fac, sv, lo, hi, o, ld);
            pv_acc8_block(p8 + 3 * (size_t)ps, ps, 3, npad, vpack8, d, c, 1, alpha + 3, fac + 3, sv, lo + 3, hi + 3, o + 3 * (size_t)ld, ld);
        }
        return;
    }
    if (mr == 4) {
        for (; c + 24 <= d; c += 24) pv_acc8_block(p8, ps, 4, npad, vpack8, d, c, 3, alpha, fac, sv, lo, hi, o, ld);
        for (; c < d; c += 8) pv_acc8_block(p8, ps, 4, npad, vpack8, d, c, 1, alpha, fac, sv, lo, hi, o, ld);
        return;
    }
    for (; c + 24 <= d; c += 24) pv_acc8_block(p8, ps, 1, npad, vpack8, d, c, 3, alpha, fac, sv, lo, hi, o, ld);
    for (; c < d; c += 8) pv_acc8_block(p8, ps, 1, npad, vpack8, d, c, 1, alpha, fac, sv, lo, hi, o, ld);
}

static void pv_acc8_vnni(const int16_t *pc, int m, int npad, const int8_t *vpack8, int d, const float *alpha, const float *fac,
                         const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld) {
    _Alignas(64) uint8_t p8[6 * QATTN_I8_TILE];
    int r = 0;
    for (; r + 6 <= m; r += 6) {
        narrow_codes(pc + (size_t)r * npad, 6, npad, p8);
        pv_acc8_rows(p8, QATTN_I8_TILE, 6, npad, vpack8, d, alpha + r, fac + r, sv, lo + r, hi + r, acc + (size_t)r * (size_t)ld, ld);
    }
    for (; r + 4 <= m; r += 4) {
        narrow_codes(pc + (size_t)r * npad, 4, npad, p8);
        pv_acc8_rows(p8, QATTN_I8_TILE, 4, npad, vpack8, d, alpha + r, fac + r, sv, lo + r, hi + r, acc + (size_t)r * (size_t)ld, ld);
    }
    for (; r < m; r++) {
        narrow_codes(pc + (size_t)r * npad, 1, npad, p8);
        pv_acc8_rows(p8, QATTN_I8_TILE, 1, npad, vpack8, d, alpha + r, fac + r, sv, lo + r, hi + r, acc + (size_t)r * (size_t)ld, ld);
    }
}

/* pv_acc8 with u8 codes pc8[r * npad + j] (the fused P step's output for pack8 tables): no narrowing. */
static void pv_acc8u_vnni(const uint8_t *pc8, int m, int npad, const int8_t *vpack8, int d, const float *alpha, const float *fac,
                          const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld) {
    int r = 0;
    for (; r + 6 <= m; r += 6)
        pv_acc8_rows(pc8 + (size_t)r * npad, npad, 6, npad, vpack8, d, alpha + r, fac + r, sv, lo + r, hi + r, acc + (size_t)r * (size_t)ld, ld);
    for (; r + 4 <= m; r += 4)
        pv_acc8_rows(pc8 + (size_t)r * npad, npad, 4, npad, vpack8, d, alpha + r, fac + r, sv, lo + r, hi + r, acc + (size_t)r * (size_t)ld, ld);
    for (; r < m; r++)
        pv_acc8_rows(pc8 + (size_t)r * npad, npad, 1, npad, vpack8, d, alpha + r, fac + r, sv, lo + r, hi + r, acc + (size_t)r * (size_t)ld, ld);
}

/* ---------------------------------------------------------------- the tables */

/* The other slots are the AVX2 kernels (exported by int8_avx2.c) or, where AVX2 has none, the
 * reference ones (src/ref/int8_ref.c), called directly: no wrappers. */
const qattn_int8_kernels qattn_int8_kernels_avxvnni = {
    .name = "avxvnni",
    .qk = qk_vnni,
    .scores = qattn_i8_scores_avx2,
    .softmax = qattn_i8_softmax_avx2,
    .pv_f32 = qattn_i8_pv_f32_avx2,
    .rowmax = qattn_i8_rowmax_avx2,
    .softmax_vs = qattn_i8_softmax_vs_avx2,
    .pv_acc = qattn_i8_pv_acc_avx2,
    .quant_row = qattn_i8_quant_row_avx2,
    .qk16 = qattn_i8_qk16_avx2,
    .pv_acc8 = pv_acc8_vnni,
    .pack8 = 1,
    .pv_acc8u = pv_acc8u_vnni,
    .p_vs_tile = qattn_i8_p_vs_tile_avx2,
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

/* The CPU kernel table of this ISA: the AVX2 tile kernels (docs/ARCHITECTURE.md "Numerics"), under the ISA's name,
 * the AVX-VNNI decode kernel and the INT8 table above. */
static void attend_tile_w(const float *q, int64_t ldq, int m, int d, const float *k, const float *v, int64_t ldkv, int n, const int32_t *lo,
                          const int32_t *hi, const qattn_score_mod *mod, qattn_tile_state *st, float *scratch) {
    qattn_kernels_avx2.attend_tile_f32(q, ldq, m, d, k, v, ldkv, n, lo, hi, mod, st, scratch);
}
void qattn_pack_rows_f32_avx2(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows, int d,
                              float mul, float *dst, int64_t ldd); /* pack_avx2.c */

const qattn_cpu_kernels qattn_kernels_avxvnni = {
    .name = "avxvnni",
    .attend_tile_f32 = attend_tile_w,
    .pack_rows_f32 = qattn_pack_rows_f32_avx2,
    .kv_attend = qattn_kv_attend_vnni,
    .int8 = &qattn_int8_kernels_avxvnni,
};
