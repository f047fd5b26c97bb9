/* AVX-512 INT8 micro-kernels (the *_avx512.c flags: AVX-512 F/BW/VL/DQ, AVX512-VNNI; chosen when
 * ctx->isa is AVX512). Contracts and packed layouts: src/quant/lowp.h. The same 8-bit packs as the
 * AVX-VNNI table (pack8 = 1): a 64-byte load of the K pack at group c/4 is 16 keys x 4 channels,
 * and of vp8 at key quad j/4 is 16 channels x 4 keys, so the layouts serve 16-lane vectors as they
 * are; npad % 16 == 8 and D % 16 == 8 tails use masked loads and stores.
 *
 * Integer products: vpdpbusd on ZMM (u8 x s8, four adjacent byte products summed into each s32
 * lane with the accumulator, no saturation in this non-"s" form): 64 multiply-adds per
 * instruction. Q K^T uses the +128 offset of the AVX-VNNI kernel (k XOR 0x80 is k + 128 as u8, so
 * acc = S + 128 * sum_c q_c and S = acc - 128 * qsum[row]); P V multiplies the u8 P codes by the s8
 * V codes directly. The bounds are those of int8_vnni.c (|acc| <= 256 * 255 * 127 < 2^31,
 * |S| < 2^24, |PV| <= 64 * 255 * 127 < 2^24): every sum is exact, so it is the reference's int32.
 *
 * Float steps (the fused P step, quant_row, center_amax) do the reference's operations per element
 * in its order; only sums whose order the contract fixes need care: e_sum is the 8-lane chain
 * (lane j % 8, keys ascending), so the 16-lane e vectors are added to an 8-lane accumulator one
 * 256-bit half at a time (keys 16v..16v+7, then 16v+8..16v+15). Maxima are exact in any order (the
 * + 0.0f of the contract fixes the sign of a zero max). So every slot equals the scalar reference
 * bit for bit (tests/test_int8.c). The non-default P modes' slots (scores, softmax, rowmax,
 * softmax_vs, pv_f32) and the 16-bit ones (unused here) are the AVX2 kernels. */
#include "quant/lowp.h"

#include <float.h>
#include <math.h>
#include <immintrin.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE int32_t load_i32(const void *p) {
    int32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* acc + vpdpbusd(a u8, b s8) through inline asm: with the _mm512_dpbusd_epi32 builtin (its
 * accumulator is tied to the destination) GCC 12 copied accumulators through other registers and
 * the stack inside the 6 x 4 block loops (perf annotate: 5 vmovdqa32 to the stack per 24 vpdpbusd);
 * "+v" keeps each accumulator in one of the 32 ZMM registers. Same instruction, same result. */
static ALWAYS_INLINE __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

/* The first n lanes (n >= 16: all). */
static ALWAYS_INLINE __mmask16 lanes16(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }

/* ---------------------------------------------------------------- Q K^T */

/* MR rows x NV vectors of 16 keys from key j (the last vector's lanes: `last`); qu: the rows' codes
 * + 128 as u8 (stride d), koff[v] = 128 * (sum of the channels of each key of vector v). Per group
 * of 4 channels: NV K loads (s8, as packed), then one vpdpbusd per row and vector with the row's 4
 * biased Q codes broadcast: acc = sum_c (q + 128) k = S + 128 * ksum. No other vector operation in
 * the loop (the earlier form biased K, XOR per load and vector, 4 extra uops per 24 vpdpbusd). */
static ALWAYS_INLINE void qk_block(const uint8_t *qu, int mr, int d, const int8_t *kpack, int npad, int j, int nv, __mmask16 last,
                                   const __m512i *koff, int32_t *s) {
    __m512i acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_si512();
    const int8_t *kb = kpack + (size_t)j * 4;
    for (int c = 0; c < d; c += 4, kb += (size_t)npad * 4) {
        __m512i kv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) kv[v] = _mm512_maskz_loadu_epi32(v == nv - 1 ? last : (__mmask16)0xFFFF, kb + 64 * v);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            __m512i qb = _mm512_set1_epi32(load_i32(qu + (size_t)i * d + c)); /* 4 codes + 128, u8 */
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[i][v] = dpbusd(acc[i][v], qb, kv[v]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            _mm512_mask_storeu_epi32(s + (size_t)i * npad + j + 16 * v, v == nv - 1 ? last : (__mmask16)0xFFFF, _mm512_sub_epi32(acc[i][v], koff[v]));
}

/* MR rows (a compile-time constant at each call) over all npad keys. */
static ALWAYS_INLINE void qk_rows(const uint8_t *qu, int mr, int d, const int8_t *kpack, int npad, int nv, __mmask16 last, const __m512i *koff,
                                  int32_t *s) {
    switch (nv) {
    case 4: qk_block(qu, mr, d, kpack, npad, 0, 4, last, koff, s); break;
    case 3: qk_block(qu, mr, d, kpack, npad, 0, 3, last, koff, s); break;
    case 2: qk_block(qu, mr, d, kpack, npad, 0, 2, last, koff, s); break;
    default: qk_block(qu, mr, d, kpack, npad, 0, 1, last, koff, s); break;
    }
}

/* Q K^T with the Q codes as the unsigned operand: the tile's key sums once (vpdpbusd of ones, exact),
 * the rows' codes + 128 once into qu (XOR 0x80), then blocks of 6 rows, the last 1 .. 5 rows as one
 * block. Bounds as before: |acc| <= 256 * 255 * 127 < 2^31, S exact. */
static void qk_avx512(const int8_t *q, int m, int d, const int8_t *kpack, int npad, int32_t *s) {
    _Alignas(64) uint8_t qu[QATTN_I8_TILE * 256];
    int nv = (npad + 15) / 16;
    __mmask16 last = lanes16(npad - 16 * (nv - 1));
    __m512i koff[4];
    const __m512i ones = _mm512_set1_epi8(1);
    for (int v = 0; v < nv; v++) {
        __m512i a = _mm512_setzero_si512();
        for (int c = 0; c < d; c += 4) a = dpbusd(a, ones, _mm512_maskz_loadu_epi32(v == nv - 1 ? last : (__mmask16)0xFFFF, kpack + (size_t)c * npad + 64 * v));
        koff[v] = _mm512_slli_epi32(a, 7);
    }
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    for (int r0 = 0; r0 < m; r0 += QATTN_I8_TILE) { /* rows in chunks of 64 (a unit has more only with a group above 64) */
        int mc = m - r0 < QATTN_I8_TILE ? m - r0 : QATTN_I8_TILE;
        size_t nq = (size_t)mc * d;
        for (size_t i = 0; i < nq; i += 64) {
            __mmask64 k = nq - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (nq - i)) - 1);
            _mm512_mask_storeu_epi8(qu + i, k, _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, q + (size_t)r0 * d + i), bias));
        }
        int32_t *sc = s + (size_t)r0 * npad;
        int r = 0;
        for (; r + 6 <= mc; r += 6) qk_rows(qu + (size_t)r * d, 6, d, kpack, npad, nv, last, koff, sc + (size_t)r * npad);
        int32_t *sr = sc + (size_t)r * npad;
        const uint8_t *qr = qu + (size_t)r * d;
        switch (mc - r) {
        case 5: qk_rows(qr, 5, d, kpack, npad, nv, last, koff, sr); break;
        case 4: qk_rows(qr, 4, d, kpack, npad, nv, last, koff, sr); break;
        case 3: qk_rows(qr, 3, d, kpack, npad, nv, last, koff, sr); break;
        case 2: qk_rows(qr, 2, d, kpack, npad, nv, last, koff, sr); break;
        case 1: qk_rows(qr, 1, d, kpack, npad, nv, last, koff, sr); break;
        default: break;
        }
    }
}

/* ---------------------------------------------------------------- P V + accumulator update */

/* dst = dst * alpha + (fac * sv) * (float)pv on the lanes of m: three roundings, no fusion, the
 * reference's order (as qattn_i8_acc_update8). */
static ALWAYS_INLINE void acc_update16(float *dst, __mmask16 m, __m512 alpha, __m512 fac, const float *sv, __m512i pv) {
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(fac, _mm512_maskz_loadu_ps(m, sv)), _mm512_cvtepi32_ps(pv));
    _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, dst), alpha), y));
}

/* MR rows x NV vectors of 16 channels from channel c (the last vector's lanes: `last`); p8: the
 * rows' u8 codes, stride ps; sv NULL: every channel scale is 1 (the default scheme's per-token V
 * scales), so the epilogue drops the fac * sv product and, for rows with alpha 1, the dst * alpha
 * one (both exact identities, the same bits). Per quad of keys: NV V loads (16 channels x 4 keys each), then one
 * vpdpbusd per row and vector with the row's 4 codes broadcast. */
static ALWAYS_INLINE void pv_block(const uint8_t *p8, int ps, int mr, int j0, int j1, const int8_t *vp8, int d, int c, int nv, __mmask16 last,
                                   const float *alpha, const float *fac, const float *sv, const int32_t *lo, const int32_t *hi,
                                   float *accp, int64_t ld) {
    __m512i acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_si512();
    const int8_t *vb = vp8 + (size_t)j0 * d + (size_t)c * 4;
    for (int j = j0; j < j1; j += 4, vb += (size_t)d * 4) {
        __m512i vv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) vv[v] = _mm512_maskz_loadu_epi32(v == nv - 1 ? last : (__mmask16)0xFFFF, vb + 64 * v);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            __m512i pb = _mm512_set1_epi32(load_i32(p8 + (size_t)i * ps + j)); /* codes of keys j .. j+3 */
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[i][v] = dpbusd(acc[i][v], pb, vv[v]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        if (lo[i] >= hi[i]) continue;
        __m512 a = _mm512_set1_ps(alpha[i]), f = _mm512_set1_ps(fac[i]);
        float *dst = accp + (size_t)i * (size_t)ld + c;
        if (sv) {
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc_update16(dst + 16 * v, v == nv - 1 ? last : (__mmask16)0xFFFF, a, f, sv + c + 16 * v, acc[i][v]);
        } else if (alpha[i] == 1.0f) { /* sv = 1, alpha = 1: (fac * 1) * pv = fac * pv and dst * 1 = dst, exactly */
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                __mmask16 mv = v == nv - 1 ? last : (__mmask16)0xFFFF;
                __m512 y = _mm512_mul_ps(f, _mm512_cvtepi32_ps(acc[i][v]));
                _mm512_mask_storeu_ps(dst + 16 * v, mv, _mm512_add_ps(_mm512_maskz_loadu_ps(mv, dst + 16 * v), y));
            }
        } else { /* sv = 1 */
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                __mmask16 mv = v == nv - 1 ? last : (__mmask16)0xFFFF;
                __m512 y = _mm512_mul_ps(f, _mm512_cvtepi32_ps(acc[i][v]));
                _mm512_mask_storeu_ps(dst + 16 * v, mv, _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mv, dst + 16 * v), a), y));
            }
        }
    }
}

/* MR rows (compile-time constant at each call), all d channels: blocks of 64, then the rest. */
static ALWAYS_INLINE void pv_rows(const uint8_t *p8, int ps, int mr, int j0, int j1, const int8_t *vp8, int d, const float *alpha,
                                  const float *fac, const float *sv, const int32_t *lo, const int32_t *hi, float *o, int64_t ld) {
    int c = 0;
    for (; c + 64 <= d; c += 64) pv_block(p8, ps, mr, j0, j1, vp8, d, c, 4, 0xFFFF, alpha, fac, sv, lo, hi, o, ld);
    int rest = d - c, nv = (rest + 15) / 16;
    __mmask16 last = lanes16(rest - 16 * (nv - 1));
    switch (nv) {
    case 3: pv_block(p8, ps, mr, j0, j1, vp8, d, c, 3, last, alpha, fac, sv, lo, hi, o, ld); break;
    case 2: pv_block(p8, ps, mr, j0, j1, vp8, d, c, 2, last, alpha, fac, sv, lo, hi, o, ld); break;
    case 1: pv_block(p8, ps, mr, j0, j1, vp8, d, c, 1, last, alpha, fac, sv, lo, hi, o, ld); break;
    default: break;
    }
}

/* Whether sv[0 .. d) are all exactly 1.0f. */
static bool all_ones(const float *sv, int d) {
    __mmask16 bad = 0;
    for (int c = 0; c < d; c += 16) bad |= _mm512_mask_cmp_ps_mask(lanes16(d - c), _mm512_maskz_loadu_ps(lanes16(d - c), sv + c), _mm512_set1_ps(1.0f), _CMP_NEQ_UQ);
    return bad == 0;
}

/* pv_acc8 with u8 codes pc8[r * npad + j] (the fused P step's output): 6-row blocks, then the rest as one. */
static void pv_acc8u_avx512(const uint8_t *pc8, int m, int npad, const int8_t *vpack8, int d, const float *alpha, const float *fac,
                            const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld) {
    sv = all_ones(sv, d) ? NULL : sv;
    int r = 0;
    /* each block's keys: the groups of 4 that meet some row's [lo, hi) (the codes outside are 0: a causal
     * diagonal tile's first rows skip its last keys; the exact sums are unchanged) */
#define PV_ROWS(MR)                                                                                                                   \
    do {                                                                                                                              \
        int j0 = npad, j1 = 0;                                                                                                        \
        for (int i_ = r; i_ < r + (MR); i_++)                                                                                         \
            if (lo[i_] < hi[i_]) j0 = lo[i_] < j0 ? lo[i_] : j0, j1 = hi[i_] > j1 ? hi[i_] : j1;                                      \
        if (j0 < j1)                                                                                                                  \
            pv_rows(pc8 + (size_t)r * npad, npad, MR, j0 & ~3, (j1 + 3) & ~3, vpack8, d, alpha + r, fac + r, sv, lo + r, hi + r,     \
                    acc + (size_t)r * (size_t)ld, ld);                                                                                \
    } while (0)
    for (; r + 6 <= m; r += 6) PV_ROWS(6);
    switch (m - r) { /* the last 1 .. 5 rows as one block */
    case 5: PV_ROWS(5); break;
    case 4: PV_ROWS(4); break;
    case 3: PV_ROWS(3); break;
    case 2: PV_ROWS(2); break;
    case 1: PV_ROWS(1); break;
    default: break;
    }
#undef PV_ROWS
}

/* pv_acc8 with int16 codes: each row narrowed to u8 once (vpmovwb truncates: exact for [0, 255]). */
static void pv_acc8_avx512(const int16_t *pc, int m, int npad, const int8_t *vpack8, int d, const float *alpha, const float *fac,
                           const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld) {
    _Alignas(64) uint8_t p8[QATTN_I8_TILE];
    const float *sv1 = all_ones(sv, d) ? NULL : sv;
    for (int r = 0; r < m; r++) {
        for (int j = 0; j < npad; j += 32) {
            __mmask32 k = npad - j >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (npad - j)) - 1);
            _mm256_mask_storeu_epi8(p8 + j, k, _mm512_cvtepi16_epi8(_mm512_maskz_loadu_epi16(k, pc + (size_t)r * npad + j)));
        }
        pv_rows(p8, QATTN_I8_TILE, 1, 0, npad, vpack8, d, alpha + r, fac + r, sv1, lo + r, hi + r, acc + (size_t)r * (size_t)ld, ld);
    }
}

/* ---------------------------------------------------------------- the fused P step */

/* qattn_exp2_poly on 16 lanes: the same operations (vroundscaleps nearest = vroundps nearest). */
static ALWAYS_INLINE __m512 exp2_poly16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-127.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.5252733804059841e-05f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381610e-04f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    /* p * 2^n: vscalefps is the product with the exact power of two, rounded once (the reference's
     * p * two_n, denormal results included), but 2^n for n = -127 is 0 in the reference (a zero
     * exponent field): those lanes (x < -126.5, since rint(-126.5) = -126) are zeroed. One
     * instruction for the conversion, add, shift and multiply of the bit construction. */
    return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.5f), _CMP_GE_OQ), p, n);
}

/* qattn_exp2f (src/quant/lowp.h) on 8 lanes of double, the same operations per lane: kd = x + shift,
 * ki its bits, r = x - (kd - shift), s = table[ki % 32] + (ki << 47) as a double (the table as four
 * vectors: two 16-entry two-source permutes, bit 4 of the index picks one), y = fma(fma(r, C0, C1),
 * r * r, fma(r, C2, 1)) * s, rounded to float; x <= -150 (and -inf) gives 0, -150 < x < -149 gives
 * 2^-149, as the scalar function. */
static ALWAYS_INLINE __m256 exp2f_v8(__m256 x) {
    const __m512d shift = _mm512_set1_pd(QATTN_EXP2F_SHIFT);
    __m512d xd = _mm512_cvtps_pd(x), kd = _mm512_add_pd(xd, shift);
    __m512i ki = _mm512_castpd_si512(kd);
    __m512d r = _mm512_sub_pd(xd, _mm512_sub_pd(kd, shift));
    const __m512i *tab = (const __m512i *)(const void *)qattn_exp2f_table;
    __m512i t0 = _mm512_permutex2var_epi64(_mm512_loadu_si512(tab), ki, _mm512_loadu_si512(tab + 1));
    __m512i t1 = _mm512_permutex2var_epi64(_mm512_loadu_si512(tab + 2), ki, _mm512_loadu_si512(tab + 3));
    __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)), t0, t1);
    __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47)));
    __m512d z = _mm512_fmadd_pd(r, _mm512_set1_pd(QATTN_EXP2F_C0), _mm512_set1_pd(QATTN_EXP2F_C1));
    __m512d y = _mm512_fmadd_pd(r, _mm512_set1_pd(QATTN_EXP2F_C2), _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, _mm512_mul_pd(r, r), y);
    __m256 e = _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
    e = _mm256_mask_blend_ps(_mm256_cmp_ps_mask(x, _mm256_set1_ps(-149.0f), _CMP_LT_OQ), e, _mm256_set1_ps(0x1p-149f));
    return _mm256_maskz_mov_ps(_mm256_cmp_ps_mask(x, _mm256_set1_ps(-150.0f), _CMP_GT_OQ), e); /* !(x > -150): 0 */
}

/* Keys 16 v .. 16 v + 15 inside [lo, hi). */
static ALWAYS_INLINE __mmask16 key_mask16(int v, int lo, int hi) {
    __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(16 * v));
    return _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(lo)) & _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(hi));
}

/* G rows of the fused P step over npad keys (NV = ceil(npad / 16) vectors per row, the rows in
 * registers); FULL: lo = 0, hi = npad = 64 for every row, no masks. Lanes at or past npad are
 * loaded as 0, lie outside [lo, hi) and are never stored. G > 1 interleaves independent rows: one
 * row alone is a chain of dependent steps (loads, scores, max reduction, exp2f, exp2 polynomial,
 * max reduction, division, codes) that left the vector units mostly idle (measured: 115 TSC ticks
 * per 64-key row alone, see docs/int8_results.md). pc: the rows' codes (stride npad). */
static ALWAYS_INLINE void p_vs_rows16(int G, const int32_t *s, int npad, int nv, bool full, bool clamp, const float *sq, const float *sk,
                                      const int32_t *lo, const int32_t *hi, const float *svk, float *row_max, float *row_sum, void *pc, int u8,
                                      float *alpha, float *fac) {
    const __m512 fmax = _mm512_set1_ps(FLT_MAX), fmin = _mm512_set1_ps(-FLT_MAX);
    __m512 x[4][4];
    __mmask16 in[4][4];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < 4; v++) x[r][v] = _mm512_setzero_ps(), in[r][v] = 0;
    float mb[4], al[4], beta[4];
#pragma GCC unroll 4
    for (int r = 0; r < G; r++) {
        const __m512 a = _mm512_set1_ps(sq[r]);
        __m512 mx = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __mmask16 ld = full ? (__mmask16)0xFFFF : lanes16(npad - 16 * v);
            __m512 t = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(ld, s + (size_t)r * npad + 16 * v));
            t = _mm512_mul_ps(_mm512_mul_ps(t, a), _mm512_maskz_loadu_ps(ld, sk + 16 * v));
            x[r][v] = clamp ? _mm512_max_ps(_mm512_min_ps(t, fmax), fmin) : t; /* !clamp: |t| < FLT_MAX known */
            in[r][v] = full ? (__mmask16)0xFFFF : key_mask16(v, lo[r], hi[r]);
            mx = full ? _mm512_max_ps(mx, x[r][v]) : _mm512_mask_max_ps(mx, in[r][v], mx, x[r][v]);
        }
        mb[r] = _mm512_reduce_max_ps(mx) + 0.0f; /* exact; + 0.0f: a zero max is +0 whatever the order */
    }
    { /* the state update: alpha and beta of the G rows, one 8-lane exp2f (no libm call, no spill) */
        _Alignas(32) float arg[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ex[8];
        bool first[4];
#pragma GCC unroll 4
        for (int r = 0; r < G; r++) {
            float m_old = row_max[r], m_new = m_old > mb[r] ? m_old : mb[r];
            first[r] = m_old == -INFINITY;
            arg[r] = first[r] ? 0.0f : m_old - m_new;
            arg[4 + r] = mb[r] - m_new;
            row_max[r] = m_new;
        }
        _mm256_store_ps(ex, exp2f_v8(_mm256_load_ps(arg)));
#pragma GCC unroll 4
        for (int r = 0; r < G; r++) al[r] = first[r] ? 0.0f : ex[r], beta[r] = ex[4 + r];
    }
#pragma GCC unroll 4
    for (int r = 0; r < G; r++) {
        const __m512 vref = _mm512_set1_ps(mb[r]);
        __m256 esum = _mm256_setzero_ps(); /* the contract's 8-lane chain */
        __m512 wmax = _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m512 e = exp2_poly16(_mm512_sub_ps(x[r][v], vref));
            if (!full) e = _mm512_maskz_mov_ps(in[r][v], e);
            esum = _mm256_add_ps(esum, _mm512_castps512_ps256(e));
            if (full || 16 * v + 8 < npad) esum = _mm256_add_ps(esum, _mm512_extractf32x8_ps(e, 1));
            __mmask16 ld = full ? (__mmask16)0xFFFF : lanes16(npad - 16 * v);
            x[r][v] = _mm512_mul_ps(e, _mm512_maskz_loadu_ps(ld, svk + 16 * v)); /* w; 0 outside [lo, hi) */
            wmax = _mm512_max_ps(wmax, x[r][v]);
        }
        float wm = _mm512_reduce_max_ps(wmax); /* >= +0: every w is +0 or positive */
        float inv = wm > 0.0f ? 255.0f / wm : 0.0f;
        const __m512 vinv = _mm512_set1_ps(inv);
        if (full && u8) { /* 64 codes in [0, 255]: two saturating packs (exact here), one dword permute, one store */
            __m512i c0 = _mm512_cvtps_epi32(_mm512_mul_ps(x[r][0], vinv)), c1 = _mm512_cvtps_epi32(_mm512_mul_ps(x[r][1], vinv));
            __m512i c2 = _mm512_cvtps_epi32(_mm512_mul_ps(x[r][2], vinv)), c3 = _mm512_cvtps_epi32(_mm512_mul_ps(x[r][3], vinv));
            __m512i b = _mm512_packus_epi16(_mm512_packus_epi32(c0, c1), _mm512_packus_epi32(c2, c3)); /* lane L: c0..c3 [4L, 4L + 4) */
            b = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), b);
            _mm512_storeu_si512((uint8_t *)pc + (size_t)r * npad, b);
        } else
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __mmask16 st = full ? (__mmask16)0xFFFF : lanes16(npad - 16 * v);
            __m512i code = _mm512_cvtps_epi32(_mm512_mul_ps(x[r][v], vinv)); /* round to nearest even; in [0, 255] */
            if (u8)
                _mm512_mask_cvtusepi32_storeu_epi8((uint8_t *)pc + (size_t)r * npad + 16 * v, st, code);
            else
                _mm512_mask_cvtepi32_storeu_epi16((int16_t *)pc + (size_t)r * npad + 16 * v, st, code);
        }
        float l[8];
        _mm256_storeu_ps(l, esum);
        float es = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        row_sum[r] = row_sum[r] * al[r] + beta[r] * es;
        alpha[r] = al[r];
        fac[r] = beta[r] * wm / 255.0f;
    }
}

static ALWAYS_INLINE bool row_full(const int32_t *lo, const int32_t *hi, int r) { return lo[r] == 0 && hi[r] == 64; }

/* Whether clamp((float)S * a * sk[j]) needs its clamp for row scale a: not when |a| * max |sk| * 2^32
 * < FLT_MAX (|S| < 2^31; two roundings add less than a factor 2), where min / max with +-FLT_MAX
 * return the product unchanged. The bound is taken in double (no overflow; a NaN: clamp). */
static ALWAYS_INLINE bool needs_clamp(float a, double skmax) { return !((double)fabsf(a) * skmax * 4294967296.0 < (double)FLT_MAX); }

static void p_vs_tile_avx512(const int32_t *s, int m, int npad, const float *sq, const float *sk, const int32_t *lo, const int32_t *hi,
                             const float *svk, float *row_max, float *row_sum, void *codes, int u8, float *alpha, float *fac) {
    size_t esz = u8 ? 1 : 2;
    int nv = (npad + 15) / 16;
    __m512 kmx = _mm512_setzero_ps();
    for (int v = 0; v < nv; v++) kmx = _mm512_max_ps(kmx, _mm512_abs_ps(_mm512_maskz_loadu_ps(lanes16(npad - 16 * v), sk + 16 * v)));
    float skm = _mm512_reduce_max_ps(kmx);
    double skmax = skm == skm ? (double)skm : INFINITY;
    int r = 0;
    while (r < m) {
        unsigned char *cr = (unsigned char *)codes + (size_t)r * npad * esz;
        if (npad == 64 && r + 4 <= m && row_full(lo, hi, r) && row_full(lo, hi, r + 1) && row_full(lo, hi, r + 2) && row_full(lo, hi, r + 3)) {
            if (needs_clamp(sq[r], skmax) || needs_clamp(sq[r + 1], skmax) || needs_clamp(sq[r + 2], skmax) || needs_clamp(sq[r + 3], skmax))
                p_vs_rows16(4, s + (size_t)r * npad, 64, 4, true, true, sq + r, sk, lo + r, hi + r, svk, row_max + r, row_sum + r, cr, u8, alpha + r,
                            fac + r);
            else
                p_vs_rows16(4, s + (size_t)r * npad, 64, 4, true, false, sq + r, sk, lo + r, hi + r, svk, row_max + r, row_sum + r, cr, u8,
                            alpha + r, fac + r);
            r += 4;
            continue;
        }
        if (r + 4 <= m && lo[r] < hi[r] && lo[r + 1] < hi[r + 1] && lo[r + 2] < hi[r + 2] && lo[r + 3] < hi[r + 3]) {
            /* four rows with keys, not all whole (a causal diagonal tile, a window's edge): the
             * single-row path's masked steps on four interleaved rows, each row's result unchanged */
            p_vs_rows16(4, s + (size_t)r * npad, npad, nv, false, true, sq + r, sk, lo + r, hi + r, svk, row_max + r, row_sum + r, cr, u8,
                        alpha + r, fac + r);
            r += 4;
            continue;
        }
        if (lo[r] >= hi[r]) {
            memset(cr, 0, (size_t)npad * esz);
            alpha[r] = 1.0f;
            fac[r] = 0.0f;
        } else {
            p_vs_rows16(1, s + (size_t)r * npad, npad, nv, false, true, sq + r, sk, lo + r, hi + r, svk, row_max + r, row_sum + r, cr, u8, alpha + r,
                        fac + r);
        }
        r++;
    }
}

/* ---------------------------------------------------------------- the driver's rows */

/* dst = acc * inv + mv: a product and a sum, each rounded, as the scalar loop. */
static void out_row_avx512(const float *acc, float inv, const float *mv, int d, float *dst) {
    const __m512 vi = _mm512_set1_ps(inv);
    for (int c = 0; c < d; c += 16) {
        __mmask16 k = lanes16(d - c);
        _mm512_mask_storeu_ps(dst + c, k, _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, acc + c), vi), _mm512_maskz_loadu_ps(k, mv + c)));
    }
}

/* Q rows into qk's 8-bit rows, -128 -> -127 by a byte max; the rows are a token stride apart, so each
 * is prefetched PF_AHEAD rows before it is copied (their misses overlap). */
#define PF_AHEAD 8
static ALWAYS_INLINE void prefetch_row(const int8_t *row, int d) {
    for (int c = 0; c < d; c += 64) _mm_prefetch((const char *)row + c, _MM_HINT_T0);
    _mm_prefetch((const char *)row + d - 1, _MM_HINT_T0);
}
static void pack8_q_avx512(const int8_t *src, int64_t ss, int64_t hs, int group, int m, int d, int8_t *dst) {
    for (int r = 0; r < m && r < PF_AHEAD; r++) prefetch_row(src + (r / group) * ss + (r % group) * hs, d);
    const __m512i lo = _mm512_set1_epi8(-127);
    for (int r = 0; r < m; r++) {
        int rn = r + PF_AHEAD;
        if (rn < m) prefetch_row(src + (rn / group) * ss + (rn % group) * hs, d);
        const int8_t *row = src + (r / group) * ss + (r % group) * hs;
        for (int c = 0; c < d; c += 64) {
            __mmask64 k = d - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (d - c)) - 1);
            _mm512_mask_storeu_epi8(dst + (size_t)r * d + c, k, _mm512_max_epi8(_mm512_maskz_loadu_epi8(k, row + c), lo));
        }
    }
}

/* ---------------------------------------------------------------- quantization rows */

static void quant_row_avx512(const float *y, int d, float inv, int8_t *dst) {
    const __m512 vinv = _mm512_set1_ps(inv), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    for (int c = 0; c < d; c += 16) {
        __mmask16 k = lanes16(d - c);
        __m512 x = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + c), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
        _mm512_mask_cvtsepi32_storeu_epi8(dst + c, k, _mm512_cvtps_epi32(x)); /* in [-127, 127]: no saturation */
    }
}

static float center_amax_avx512(const float *row, const float *mu, int d, float *y) {
    __m512 m = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
        __mmask16 k = lanes16(d - c);
        __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, row + c), _mm512_maskz_loadu_ps(k, mu + c));
        _mm512_mask_storeu_ps(y + c, k, v);
        m = _mm512_max_ps(m, _mm512_abs_ps(v)); /* finite inputs: max is exact; masked lanes are +0 */
    }
    return _mm512_reduce_max_ps(m);
}

/* y = row * f - mu (a product then a difference: two roundings, as the scalar loop) and max |y|. */
static float scale_center_amax_avx512(const float *row, const float *f, const float *mu, int d, float *y) {
    __m512 m = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
        __mmask16 k = lanes16(d - c);
        __m512 v = _mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, row + c), _mm512_maskz_loadu_ps(k, f + c)), _mm512_maskz_loadu_ps(k, mu + c));
        _mm512_mask_storeu_ps(y + c, k, v);
        m = _mm512_max_ps(m, _mm512_abs_ps(v)); /* exact; masked lanes are +0 */
    }
    return _mm512_reduce_max_ps(m);
}

/* One in-register butterfly stage of pairs (k, k + len), len = 1, 2, 4, 8 (pairs inside a vector):
 * sw is v with each pair's lanes swapped, sg is +1 in the pair's lower lane and -1 in its upper one;
 * fma(v, sg, sw) is one rounding of v + sw = y[k] + y[k + len] in the lower lane (a + c: IEEE
 * addition commutes) and of sw - v = y[k] - y[k + len] in the upper one (a - c, which IEEE defines as
 * a + (-c), signed zeros included): the definition's two operations, bit for bit, in two uops
 * (a permute and an FMA) instead of an add, a subtract and a blend. */
static ALWAYS_INLINE __m512 bfly_in(__m512 v, __m512 sw, __mmask16 upper) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_fmadd_ps(v, _mm512_mask_blend_ps(upper, one, _mm512_set1_ps(-1.0f)), sw); /* sg: a constant */
}

/* The butterflies of qattn_rotate_row on nv <= 16 vectors v (the row, already times pre), blocks of n
 * channels: stages 1, 2, 4 (8) inside vectors, 16 .. n/2 between vectors, in the definition's order;
 * d % 16 == 8 happens only with n = 8 (the last vector's upper lanes, zero, never mix in). */
static ALWAYS_INLINE void rotate_regs(__m512 *v, int nv, int n) {
    for (int i = 0; i < nv; i++) {
        v[i] = bfly_in(v[i], _mm512_permute_ps(v[i], _MM_SHUFFLE(2, 3, 0, 1)), 0xAAAA);
        v[i] = bfly_in(v[i], _mm512_permute_ps(v[i], _MM_SHUFFLE(1, 0, 3, 2)), 0xCCCC);
        v[i] = bfly_in(v[i], _mm512_shuffle_f32x4(v[i], v[i], _MM_SHUFFLE(2, 3, 0, 1)), 0xF0F0);
        if (n >= 16) v[i] = bfly_in(v[i], _mm512_shuffle_f32x4(v[i], v[i], _MM_SHUFFLE(1, 0, 3, 2)), 0xFF00);
    }
    for (int step = 1; 16 * step < n; step <<= 1) /* len = 16 step: whole vectors */
        for (int i = 0; i < nv; i += 2 * step)
            for (int k = i; k < i + step; k++) {
                __m512 a = v[k], c = v[k + step];
                v[k] = _mm512_add_ps(a, c);
                v[k + step] = _mm512_sub_ps(a, c);
            }
}

/* max |v[i]| over nv vectors (exact; masked lanes are +0). */
static ALWAYS_INLINE float amax_regs(const __m512 *v, int nv) {
    __m512 m = _mm512_setzero_ps();
    for (int i = 0; i < nv; i++) m = _mm512_max_ps(m, _mm512_abs_ps(v[i]));
    return _mm512_reduce_max_ps(m);
}

/* qattn_rotate_row on up to 16 vectors held in registers: y *= pre on the load (the scalar
 * multiplies only when pre != 1, and y * 1 = y), then rotate_regs. */
static float rotate_row_avx512(float *y, int d, float pre) {
    int n = qattn_rotate_block(d), nv = (d + 15) / 16;
    const __m512 vp = _mm512_set1_ps(pre);
    __m512 v[16];
    for (int i = 0; i < nv; i++) v[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes16(d - 16 * i), y + 16 * i), vp);
    rotate_regs(v, nv, n);
    for (int i = 0; i < nv; i++) _mm512_mask_storeu_ps(y + 16 * i, lanes16(d - 16 * i), v[i]);
    return amax_regs(v, nv);
}

/* tok_codes with the row in registers (nv = ceil(d / 16) vectors, n = qattn_rotate_block(d)): the
 * same operations per element as scale_center_amax (or center_amax), rotate_row and quant_row, in
 * their order; the squared codes are summed in float, exactly (integers below 256 * 127^2 < 2^24). */
static ALWAYS_INLINE float tok_codes_nv(const float *row, const float *f, const float *mu, int d, int nv, int n, float pre, float cmax,
                                        int8_t *dst, int32_t *sq) {
    __m512 v[16];
    for (int i = 0; i < nv; i++) {
        __mmask16 k = lanes16(d - 16 * i);
        __m512 x = _mm512_maskz_loadu_ps(k, row + 16 * i);
        if (f) x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(k, f + 16 * i));
        v[i] = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(k, mu + 16 * i));
    }
    if (pre > 0.0f) {
        const __m512 vp = _mm512_set1_ps(pre);
        for (int i = 0; i < nv; i++) v[i] = _mm512_mul_ps(v[i], vp);
        rotate_regs(v, nv, n);
    }
    float amax = amax_regs(v, nv);
    const __m512 vinv = _mm512_set1_ps(amax > 0.0f ? cmax / amax : 0.0f), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    __m512 s2 = _mm512_setzero_ps();
    for (int i = 0; i < nv; i++) {
        __m512 x = _mm512_roundscale_ps(_mm512_mul_ps(v[i], vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
        _mm512_mask_cvtsepi32_storeu_epi8(dst + 16 * i, lanes16(d - 16 * i), _mm512_cvtps_epi32(x)); /* in [-127, 127] */
        s2 = _mm512_mask3_fmadd_ps(x, x, s2, lanes16(d - 16 * i)); /* lanes past d left out (0 * inf is NaN: code 127); integers below 2^24: exact */
    }
    if (sq) *sq = (int32_t)_mm512_reduce_add_ps(s2);
    return amax;
}

/* A butterfly between two whole vectors (len >= 16): a + c, a - c. */
#define BFLY_X(a, c)                             \
    do {                                         \
        __m512 t_ = (a);                         \
        (a) = _mm512_add_ps(t_, (c));            \
        (c) = _mm512_sub_ps(t_, (c));            \
    } while (0)

/* tok_codes_nv at d = 128 (one rotation block of 128) written out, so that the compiler keeps the
 * row in eight registers (the generic loops left it on the stack): the same operations in the same
 * order (in-vector stages 1, 2, 4, 8 per vector, then stages 16, 32, 64 between vectors). */
static ALWAYS_INLINE float tok_codes128(const float *row, const float *f, const float *mu, float pre, float cmax, int8_t *dst, int32_t *sq) {
    __m512 v0, v1, v2, v3, v4, v5, v6, v7;
#define LD(i) (f ? _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(row + 16 * (i)), _mm512_loadu_ps(f + 16 * (i))), _mm512_loadu_ps(mu + 16 * (i))) \
                 : _mm512_sub_ps(_mm512_loadu_ps(row + 16 * (i)), _mm512_loadu_ps(mu + 16 * (i))))
    v0 = LD(0), v1 = LD(1), v2 = LD(2), v3 = LD(3), v4 = LD(4), v5 = LD(5), v6 = LD(6), v7 = LD(7);
#undef LD
    if (pre > 0.0f) {
        const __m512 vp = _mm512_set1_ps(pre);
#define IN(x)                                                                                      \
    do {                                                                                           \
        x = _mm512_mul_ps(x, vp);                                                                  \
        x = bfly_in(x, _mm512_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)), 0xAAAA);                     \
        x = bfly_in(x, _mm512_permute_ps(x, _MM_SHUFFLE(1, 0, 3, 2)), 0xCCCC);                     \
        x = bfly_in(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(2, 3, 0, 1)), 0xF0F0);               \
        x = bfly_in(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(1, 0, 3, 2)), 0xFF00);               \
    } while (0)
        IN(v0); IN(v1); IN(v2); IN(v3); IN(v4); IN(v5); IN(v6); IN(v7);
#undef IN
        BFLY_X(v0, v1); BFLY_X(v2, v3); BFLY_X(v4, v5); BFLY_X(v6, v7); /* len 16 */
        BFLY_X(v0, v2); BFLY_X(v1, v3); BFLY_X(v4, v6); BFLY_X(v5, v7); /* len 32 */
        BFLY_X(v0, v4); BFLY_X(v1, v5); BFLY_X(v2, v6); BFLY_X(v3, v7); /* len 64 */
    }
    /* max |v|: vrangeps 0x0B is the operand of larger magnitude with its sign cleared (exact) */
#define AMX(a, c) _mm512_range_ps((a), (c), 0x0B)
    float amax = _mm512_reduce_max_ps(AMX(AMX(AMX(v0, v1), AMX(v2, v3)), AMX(AMX(v4, v5), AMX(v6, v7))));
#undef AMX
    const __m512 vinv = _mm512_set1_ps(amax > 0.0f ? cmax / amax : 0.0f), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    /* quant_row's clamp(rint(y * inv)) as rint(clamp(y * inv)): the same integer for every input (the
     * clamp bounds are integers; a NaN product clamps to 127 either way, vminps returning its second
     * operand), rounded by the conversion itself (embedded round-to-nearest-even, whatever MXCSR);
     * then two saturating packs (exact: codes in [-127, 127]) and one dword permute put 64 codes in
     * channel order (as the fused P step's u8 codes) */
#define C(x) _mm512_cvt_roundps_epi32(_mm512_max_ps(_mm512_min_ps(_mm512_mul_ps((x), vinv), hi), lo), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i b0 = _mm512_permutexvar_epi32(order, _mm512_packs_epi16(_mm512_packs_epi32(C(v0), C(v1)), _mm512_packs_epi32(C(v2), C(v3))));
    __m512i b1 = _mm512_permutexvar_epi32(order, _mm512_packs_epi16(_mm512_packs_epi32(C(v4), C(v5)), _mm512_packs_epi32(C(v6), C(v7))));
#undef C
    _mm512_storeu_si512(dst, b0);
    _mm512_storeu_si512(dst + 64, b1);
    if (sq) { /* |c| * |c| summed by vpdpbusd (u8 x s8, |c| <= 127 fits both): exact */
        __m512i a0 = _mm512_abs_epi8(b0), a1 = _mm512_abs_epi8(b1);
        *sq = _mm512_reduce_add_epi32(dpbusd(dpbusd(_mm512_setzero_si512(), a0, a0), a1, a1));
    }
    return amax;
}
#undef BFLY_X

static float tok_codes_avx512(const float *row, const float *f, const float *mu, int d, float pre, float cmax, int8_t *dst, int32_t *sq) {
    if (d == 128) return tok_codes128(row, f, mu, pre, cmax, dst, sq); /* the common head dim, in registers */
    return tok_codes_nv(row, f, mu, d, (d + 15) / 16, qattn_rotate_block(d), pre, cmax, dst, sq);
}

/* The statistics pass's row: double sums (each element converted exactly, then one add, as the
 * scalar a[c] += row[c]) and the channel min / max (vminps/vmaxps return their second operand
 * unless the first is smaller / larger: the scalar selects, row finite); Inf and NaN found by
 * vfpclassps on the same loads (the sums and extrema are then unspecified, as the contract allows). */
/* The whole vectors of a row (d % 16 == 0), no masks. */
static ALWAYS_INLINE __mmask16 stats_full(const float *row, int d, double *acc, float *mn, float *mx) {
    __mmask16 bad = 0;
    for (int c = 0; c < d; c += 16) {
        __m512 r = _mm512_loadu_ps(row + c);
        bad |= _mm512_fpclass_ps_mask(r, 0x99);
        if (acc) {
            _mm512_storeu_pd(acc + c, _mm512_add_pd(_mm512_loadu_pd(acc + c), _mm512_cvtps_pd(_mm512_castps512_ps256(r))));
            _mm512_storeu_pd(acc + c + 8, _mm512_add_pd(_mm512_loadu_pd(acc + c + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(r, 1))));
        }
        if (mn) {
            _mm512_storeu_ps(mn + c, _mm512_min_ps(r, _mm512_loadu_ps(mn + c)));
            _mm512_storeu_ps(mx + c, _mm512_max_ps(r, _mm512_loadu_ps(mx + c)));
        }
    }
    return bad;
}

static int stats_row_avx512(const float *row, int d, double *acc, float *mn, float *mx) {
    if (d == 128) /* the common head dim: unrolled, each statistic's form separately */
        return (acc ? (mn ? stats_full(row, 128, acc, mn, mx) : stats_full(row, 128, acc, NULL, NULL))
                    : (mn ? stats_full(row, 128, NULL, mn, mx) : stats_full(row, 128, NULL, NULL, NULL))) != 0;
    __mmask16 bad = 0;
    for (int c = 0; c < d; c += 16) {
        __mmask16 k = lanes16(d - c);
        __m512 r = _mm512_maskz_loadu_ps(k, row + c);
        bad |= _mm512_fpclass_ps_mask(r, 0x99); /* QNaN 0x01, +Inf 0x08, -Inf 0x10, SNaN 0x80 */
        if (acc) {
            __mmask8 k0 = (__mmask8)(k & 0xFF), k1 = (__mmask8)(k >> 8);
            _mm512_mask_storeu_pd(acc + c, k0, _mm512_add_pd(_mm512_maskz_loadu_pd(k0, acc + c), _mm512_cvtps_pd(_mm512_castps512_ps256(r))));
            if (k1)
                _mm512_mask_storeu_pd(acc + c + 8, k1,
                                      _mm512_add_pd(_mm512_maskz_loadu_pd(k1, acc + c + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(r, 1))));
        }
        if (mn) {
            _mm512_mask_storeu_ps(mn + c, k, _mm512_min_ps(r, _mm512_maskz_loadu_ps(k, mn + c)));
            _mm512_mask_storeu_ps(mx + c, k, _mm512_max_ps(r, _mm512_maskz_loadu_ps(k, mx + c)));
        }
    }
    return bad != 0;
}

/* lse_dots with 16 rows in the lanes: per group of 4 channels, one gather of each row's 4 codes
 * (-128 -> -127 by a byte max), then per channel its byte sign-extended, converted, times mk[c],
 * added: each row's sum in the definition's order, one rounding per product and per add. */
static void lse_dots_avx512(const int8_t *base, const int32_t *off, int m, int d, const float *mk, float *dot) {
    const __m512i lo = _mm512_set1_epi8(-127);
    for (int r0 = 0; r0 < m; r0 += 16) {
        __mmask16 k = lanes16(m - r0);
        __m512i vo = _mm512_maskz_loadu_epi32(k, off + r0);
        __m512 acc = _mm512_setzero_ps();
        for (int c = 0; c < d; c += 4) {
            __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, vo, base + c, 1);
            g = _mm512_max_epi8(g, lo);
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(g, 24), 24)), _mm512_set1_ps(mk[c])));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(g, 16), 24)), _mm512_set1_ps(mk[c + 1])));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(g, 8), 24)), _mm512_set1_ps(mk[c + 2])));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(g, 24)), _mm512_set1_ps(mk[c + 3])));
        }
        _mm512_mask_storeu_ps(dot + r0, k, acc);
    }
}

/* In-register transpose of a 16 x 16 block of 32-bit lanes: a[i] lane j -> a[j] lane i (four stages
 * of 16 shuffles: dwords, qwords inside 128-bit lanes, then 128-bit lanes twice). */
static ALWAYS_INLINE void transpose16(__m512i a[16]) {
    __m512i b[16], c[16];
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) b[2 * k] = _mm512_unpacklo_epi32(a[2 * k], a[2 * k + 1]), b[2 * k + 1] = _mm512_unpackhi_epi32(a[2 * k], a[2 * k + 1]);
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) { /* c[4k + m], 128-bit lane L: column 4L + m of rows 4k .. 4k + 3 */
        c[4 * k + 0] = _mm512_unpacklo_epi64(b[4 * k + 0], b[4 * k + 2]);
        c[4 * k + 1] = _mm512_unpackhi_epi64(b[4 * k + 0], b[4 * k + 2]);
        c[4 * k + 2] = _mm512_unpacklo_epi64(b[4 * k + 1], b[4 * k + 3]);
        c[4 * k + 3] = _mm512_unpackhi_epi64(b[4 * k + 1], b[4 * k + 3]);
    }
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
        __m512i elo = _mm512_shuffle_i32x4(c[m], c[4 + m], _MM_SHUFFLE(2, 0, 2, 0)), ehi = _mm512_shuffle_i32x4(c[m], c[4 + m], _MM_SHUFFLE(3, 1, 3, 1));
        __m512i flo = _mm512_shuffle_i32x4(c[8 + m], c[12 + m], _MM_SHUFFLE(2, 0, 2, 0)), fhi = _mm512_shuffle_i32x4(c[8 + m], c[12 + m], _MM_SHUFFLE(3, 1, 3, 1));
        a[m] = _mm512_shuffle_i32x4(elo, flo, _MM_SHUFFLE(2, 0, 2, 0));
        a[8 + m] = _mm512_shuffle_i32x4(elo, flo, _MM_SHUFFLE(3, 1, 3, 1));
        a[4 + m] = _mm512_shuffle_i32x4(ehi, fhi, _MM_SHUFFLE(2, 0, 2, 0));
        a[12 + m] = _mm512_shuffle_i32x4(ehi, fhi, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* Row j (j < n) of a tile, channels [c, c + 64) masked to d, -128 -> -127; zero for j >= n. */
static ALWAYS_INLINE __m512i key_row64(const int8_t *src, int64_t stride, int n, int j, int c, int d) {
    if (j >= n) return _mm512_setzero_si512();
    __mmask64 k = d - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (d - c)) - 1);
    return _mm512_max_epi8(_mm512_maskz_loadu_epi8(k, src + j * stride + c), _mm512_set1_epi8(-127));
}

/* pack8_k: 16 keys x 64 channels at a time, a 16 x 16 transpose of 32-bit lanes ([key][4 channels]
 * -> [4 channels][key]); each result is one 64-byte run of the pack (8 keys: 32 bytes). */
static void pack8_k_avx512(const int8_t *src, int64_t stride, int n, int npad, int d, int8_t *kp) {
    for (int j0 = 0; j0 < npad; j0 += 16) {
        int nk = npad - j0 < 16 ? npad - j0 : 16; /* 16, or 8 at npad % 16 == 8 */
        for (int c = 0; c < d; c += 64) {
            __m512i t[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) t[i] = i < nk ? key_row64(src, stride, n, j0 + i, c, d) : _mm512_setzero_si512();
            transpose16(t);
            int ng = (d - c < 64 ? d - c : 64) / 4;
            for (int gi = 0; gi < ng; gi++)
                _mm512_mask_storeu_epi32(kp + (size_t)(c / 4 + gi) * npad * 4 + (size_t)j0 * 4, lanes16(nk), t[gi]);
        }
    }
}

/* pack8_v: 4 keys x 64 channels at a time: bytes of keys (0, 1) and (2, 3) interleaved, then pairs,
 * giving per 128-bit lane 4 channels x 4 keys; a 4 x 4 transpose of 128-bit lanes puts the 64
 * channels in order (256 bytes). */
static void pack8_v_avx512(const int8_t *src, int64_t stride, int n, int npad, int d, int8_t *vp) {
    for (int j = 0; j < npad; j += 4) {
        int8_t *dst = vp + (size_t)(j / 4) * d * 4;
        for (int c = 0; c < d; c += 64) {
            __m512i r0 = key_row64(src, stride, n, j, c, d), r1 = key_row64(src, stride, n, j + 1, c, d);
            __m512i r2 = key_row64(src, stride, n, j + 2, c, d), r3 = key_row64(src, stride, n, j + 3, c, d);
            __m512i alo = _mm512_unpacklo_epi8(r0, r1), ahi = _mm512_unpackhi_epi8(r0, r1);
            __m512i blo = _mm512_unpacklo_epi8(r2, r3), bhi = _mm512_unpackhi_epi8(r2, r3);
            __m512i v0 = _mm512_unpacklo_epi16(alo, blo), v1 = _mm512_unpackhi_epi16(alo, blo); /* lane L: channels 16L + 0..3, + 4..7 */
            __m512i v2 = _mm512_unpacklo_epi16(ahi, bhi), v3 = _mm512_unpackhi_epi16(ahi, bhi); /* + 8..11, + 12..15 */
            __m512i x0 = _mm512_shuffle_i32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0)), x1 = _mm512_shuffle_i32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1));
            __m512i x2 = _mm512_shuffle_i32x4(v2, v3, _MM_SHUFFLE(2, 0, 2, 0)), x3 = _mm512_shuffle_i32x4(v2, v3, _MM_SHUFFLE(3, 1, 3, 1));
            __m512i o[4];
            o[0] = _mm512_shuffle_i32x4(x0, x2, _MM_SHUFFLE(2, 0, 2, 0)); /* channels 0..15: v0.L0 v1.L0 v2.L0 v3.L0 */
            o[2] = _mm512_shuffle_i32x4(x0, x2, _MM_SHUFFLE(3, 1, 3, 1)); /* 32..47 */
            o[1] = _mm512_shuffle_i32x4(x1, x3, _MM_SHUFFLE(2, 0, 2, 0)); /* 16..31 */
            o[3] = _mm512_shuffle_i32x4(x1, x3, _MM_SHUFFLE(3, 1, 3, 1)); /* 48..63 */
            int nc = d - c < 64 ? d - c : 64; /* a multiple of 8: whole 32-byte halves */
            for (int q = 0; q < 4 && 16 * q < nc; q++)
                _mm512_mask_storeu_epi32(dst + (size_t)(c + 16 * q) * 4, lanes16(nc - 16 * q), o[q]);
        }
    }
}

/* ---------------------------------------------------------------- the table */

const qattn_int8_kernels qattn_int8_kernels_avx512 = {
    .name = "avx512",
    .qk = qk_avx512,
    .scores = qattn_i8_scores_avx2,
    .softmax = qattn_i8_softmax_avx2,
    .pv_f32 = qattn_i8_pv_f32_avx2,
    .rowmax = qattn_i8_rowmax_avx2,
    .softmax_vs = qattn_i8_softmax_vs_avx2,
    .pv_acc = qattn_i8_pv_acc_avx2,
    .quant_row = quant_row_avx512,
    .qk16 = qattn_i8_qk16_avx2,
    .pv_acc8 = pv_acc8_avx512,
    .pack8 = 1,
    .p_vs_tile = p_vs_tile_avx512,
    .pv_acc8u = pv_acc8u_avx512,
    .center_amax = center_amax_avx512,
    .scale_center_amax = scale_center_amax_avx512,
    .rotate_row = rotate_row_avx512,
    .stats_row = stats_row_avx512,
    .lse_dots = lse_dots_avx512,
    .pack8_k = pack8_k_avx512,
    .pack8_v = pack8_v_avx512,
    .tok_codes = tok_codes_avx512,
    .out_row = out_row_avx512,
    .pack8_q = pack8_q_avx512,
};
