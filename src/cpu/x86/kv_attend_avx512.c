/* AVX-512 decode kernel over one cache block (contract: qattn_kv_attend_fn in src/kv/kv_internal.h),
 * the AVX-512 kernel table's decode entry (kv_attend). It is the AVX2 kernel (included
 * below with QATTN_KV_AVX512) with its two INT8 integer engines on ZMM: Q.K and P.V by vpdpwssd
 * (s16 x s16 pairs summed into s32, non-saturating), 32 products per instruction where the AVX2
 * kernel forms 16 with vpmaddwd + vpaddd. The int32 sums are exact (bounds in kv_attend_avx2.c,
 * "INT8"), so they are the same values, and the float steps around them (scores, softmax, weights,
 * the per-chunk fused multiply-add into acc) are the AVX2 kernel's, element for element: the
 * output is bitwise the AVX2 kernel's (tests/test_kv_cache.c). FP16/BF16 caches take the ZMM path below.
 *
 * Layout on ZMM. Q.K: 32 channels per step (K codes of four tokens sign-extended to int16, the 4
 * rows' q16 rows), 4 rows x 4 tokens of accumulators reduced to 16 scores at once (reduce16).
 * P.V: 32 channels of two tokens are byte-interleaved within 128-bit lanes and sign-extended, so
 * the accumulators hold channels [0..7 | 16..23] and [8..15 | 24..31]; two lane shuffles restore
 * channel order before the store. d % 32 != 0 tails use masked loads. Why this stays near half the
 * read bandwidth on Zen 4 (the multiply floor): docs/KVCACHE.md. */
#define QATTN_KV_AVX512 1
/* The next block's codes are prefetched into L2, not L1: with the faster ZMM engines the L1
 * prefetches of a whole head's K and V (64 lines per call) stalled on full miss buffers (perf: a
 * quarter of the engines' samples on prefetcht0). Zen 4 VM, INT8 cache, B1 H32 HK8 D128 kv 32k, 2
 * threads, 3 alternated rounds under load 2.8: T1 6.93 / 6.97 / 6.74 ms, T0 9.73 / 8.32 / 8.52,
 * T2 7.71 / 6.79 / 11.33 (medians of 30 calls). */
#define KV_PF_HINT _MM_HINT_T1
#include "cpu/x86/kv_attend_avx2.c"

/* acc + vpdpwssd(a, b) through inline asm ("+v": one register per accumulator; the builtin ties
 * the accumulator and made GCC copy it through other registers, see kv_attend_avx2.c). */
ALWAYS_INLINE __m512i dot_acc_zmm(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

/* Bytes [0, n) of 32 (n >= 32: all). */
ALWAYS_INLINE __mmask32 bytes32(int n) { return n >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << n) - 1); }

/* Lane sums of the 16 accumulators a[r][t] (row r, token t) as [t0 r0..3 | t1 r0..3 | t2 .. | t3 ..]
 * (integer adds: exact in any order). Per token the rows are paired within 128-bit lanes (unpack +
 * add twice: [r0 r1 r2 r3] partials in each of the four lanes); then the four tokens' lane partials
 * are transposed and added by two rounds of 128-bit shuffles: 45 operations for 16 scores (the
 * two-token version took 24 per 8 scores). */
ALWAYS_INLINE __m512i reduce16(__m512i a[4][4]) {
#define PAIR32(x, y) _mm512_add_epi32(_mm512_unpacklo_epi32((x), (y)), _mm512_unpackhi_epi32((x), (y)))
#define PAIR64(x, y) _mm512_add_epi32(_mm512_unpacklo_epi64((x), (y)), _mm512_unpackhi_epi64((x), (y)))
    __m512i x[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) x[t] = PAIR64(PAIR32(a[0][t], a[1][t]), PAIR32(a[2][t], a[3][t]));
#undef PAIR64
#undef PAIR32
    /* x[t] lanes: [c0 c1 c2 c3], each [r0..r3]; s01 = [x0 c0+c2, x0 c1+c3, x1 c0+c2, x1 c1+c3] */
    __m512i s01 = _mm512_add_epi32(_mm512_shuffle_i32x4(x[0], x[1], _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_i32x4(x[0], x[1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512i s23 = _mm512_add_epi32(_mm512_shuffle_i32x4(x[2], x[3], _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_i32x4(x[2], x[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_i32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* As the AVX2 scores_rows_i8 (same arguments, same outputs: the same integer dots and the same
 * two float multiplies per score), four tokens per step: 16 accumulators (4 rows x 4 tokens) keep
 * 64 independent vpdpwssd per step in flight, one reduce16 per 16 scores, and the scale, mask and
 * max work on ZMM. With two tokens per step (8 accumulators) Q.K ran at ~2.4x its
 * vpdpwssd count (dev/kv_decode/kernel_budget.c). Scores are stored for whole steps: tokens past
 * jhi (at most 3, inside the scratch) get -inf, so the odd count's pad token of the softmax passes
 * is -inf as before; their codes are token jhi - 1's (no read past the block). */
ALWAYS_INLINE void scores_rows_i8_body(int R, const int16_t *q16, const float *qsc, int d, const int8_t *kc, const float *ks, int jlo, int jhi,
                                       const int32_t *lo, const int32_t *hi, float *s, const uint8_t *pf, int64_t pf_bytes, __m256 *mx_out) {
    const int64_t ldq = (d + 15) / 16 * 16;
    const int16_t *q0 = q16, *q1 = q16 + (R > 1 ? ldq : 0), *q2 = q16 + (R > 2 ? 2 * ldq : 0), *q3 = q16 + (R > 3 ? 3 * ldq : 0);
    const rows4 rc = rows4_of(R, qsc, lo, hi, jlo, jhi);
    const bool no_mask = rc.all_visible && ((jhi - jlo) & 3) == 0;
    const __m512 qs = _mm512_broadcast_f32x4(_mm256_castps256_ps128(rc.qs));
    const __m512i lov = _mm512_broadcast_i32x4(_mm256_castsi256_si128(rc.lo)), hiv = _mm512_broadcast_i32x4(_mm256_castsi256_si128(rc.hi));
    const __m512i tok = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const int dfull = d & ~31;
    const __mmask32 tail = bytes32(d - dfull); /* d % 32 channels (a multiple of 8) */
    const int64_t pf_step = prefetch_step(pf_bytes, (jhi - jlo + 3) / 4);
    int64_t pf_at = 0;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int j = jlo; j < jhi; j += 4) {
        const int nj = jhi - j < 4 ? jhi - j : 4;
        prefetch_lines(pf, pf_at, pf_at + pf_step, pf_bytes);
        pf_at += pf_step;
        /* the keys' scales first (loaded after the dot loop, this load held up retirement: perf) */
        const __m512 ksv = _mm512_permutexvar_ps(tok, _mm512_castps128_ps512(_mm_maskz_loadu_ps((__mmask8)((1u << nj) - 1u), ks + j)));
        const int8_t *kp[4];
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) kp[t] = kc + (int64_t)(t < nj ? j + t : jhi - 1) * d;
        __m512i a[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) a[r][t] = _mm512_setzero_si512();
#define QK_STEP(c, KLOAD, QLOAD)                                                                                                           \
    do {                                                                                                                                   \
        __m512i k[4], qv;                                                                                                                  \
        for (int t = 0; t < 4; t++) k[t] = _mm512_cvtepi8_epi16(KLOAD(kp[t] + (c)));                                                     \
        qv = QLOAD(q0 + (c));                                                                                                              \
        for (int t = 0; t < 4; t++) a[0][t] = dot_acc_zmm(a[0][t], qv, k[t]);                                                              \
        qv = QLOAD(q1 + (c));                                                                                                              \
        for (int t = 0; t < 4; t++) a[1][t] = dot_acc_zmm(a[1][t], qv, k[t]);                                                              \
        qv = QLOAD(q2 + (c));                                                                                                              \
        for (int t = 0; t < 4; t++) a[2][t] = dot_acc_zmm(a[2][t], qv, k[t]);                                                              \
        qv = QLOAD(q3 + (c));                                                                                                              \
        for (int t = 0; t < 4; t++) a[3][t] = dot_acc_zmm(a[3][t], qv, k[t]);                                                              \
    } while (0)
#define KLOAD_FULL(p) _mm256_loadu_si256((const __m256i *)(p))
#define KLOAD_TAIL(p) _mm256_maskz_loadu_epi8(tail, (p))
#define QLOAD_FULL(p) _mm512_loadu_si512((const void *)(p))
#define QLOAD_TAIL(p) _mm512_maskz_loadu_epi16(tail, (p))
#pragma GCC unroll 8
        for (int c = 0; c < dfull; c += 32) QK_STEP(c, KLOAD_FULL, QLOAD_FULL);
        if (dfull < d) QK_STEP(dfull, KLOAD_TAIL, QLOAD_TAIL);
#undef QLOAD_TAIL
#undef QLOAD_FULL
#undef KLOAD_TAIL
#undef KLOAD_FULL
#undef QK_STEP
        /* ((float)dot * qsc) * ks_j, lane t*4 + r (the pad tokens' scale 0: masked below) */
        __m512 sv = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(reduce16(a)), qs), ksv);
        if (!no_mask) {
            const __m512i jv = _mm512_add_epi32(_mm512_set1_epi32(j), tok);
            const __mmask16 out = _mm512_cmpgt_epi32_mask(lov, jv) | _mm512_cmpge_epi32_mask(jv, hiv);
            sv = _mm512_mask_blend_ps(out, sv, _mm512_set1_ps(-INFINITY));
        }
        _mm512_storeu_ps(s + (int64_t)(j - jlo) * 4, sv);
        mx = _mm512_max_ps(sv, mx); /* keeps mx when sv is NaN, like the reference's `s > max` */
    }
    /* [t even rows | t odd rows] as the AVX2 path's (lanes 0..7 hold tokens 0, 1; 8..15 tokens 2, 3) */
    *mx_out = _mm256_max_ps(_mm512_castps512_ps256(mx), _mm512_extractf32x8_ps(mx, 1));
}

/* D 128 (the common head dim) with the channel loop fully unrolled, other D through the loop. */
static __attribute__((noinline)) void scores_rows_i8(int R, const int16_t *q16, const float *qsc, int d, const int8_t *kc, const float *ks, int jlo,
                                                     int jhi, const int32_t *lo, const int32_t *hi, float *s, const uint8_t *pf, int64_t pf_bytes,
                                                     __m256 *mx_out) {
    if (d == 128) scores_rows_i8_body(R, q16, qsc, 128, kc, ks, jlo, jhi, lo, hi, s, pf, pf_bytes, mx_out);
    else scores_rows_i8_body(R, q16, qsc, d, kc, ks, jlo, jhi, lo, hi, s, pf, pf_bytes, mx_out);
}

/* P.V of 4 rows over NB blocks of 32 channels from c (NB = 2: 64 channels, 16 accumulators;
 * NB = 1 with `k` masking a tail): per token pair, the V codes of both tokens interleaved by byte
 * and sign-extended (channels [0..7 | 16..23] and [8..15 | 24..31] of each block), then one
 * vpdpwssd per row and vector with the row's pair of int16 weights broadcast. */
ALWAYS_INLINE void pv_cols(int NB, __mmask32 k, int R, const int8_t *vc, int d, int c, int pairs, int full_pairs, const int32_t *wp,
                           const float *ws, float *const *acc) {
    __m512i a[4][4];
    for (int r = 0; r < 4; r++)
        for (int x = 0; x < 2 * NB; x++) a[r][x] = _mm512_setzero_si512();
    for (int t = 0; t < pairs; t++) {
        const int8_t *p0 = vc + c + (int64_t)(2 * t) * d; /* tokens 2t, 2t + 1 of the chunk (vc: its first token) */
        const int8_t *p1 = t < full_pairs ? p0 + d : p0;  /* an odd count's pad token: weight 0, any codes */
        __m512i v[4];
#pragma GCC unroll 2
        for (int b = 0; b < NB; b++) {
            __m256i x0 = NB == 1 ? _mm256_maskz_loadu_epi8(k, p0 + 32 * b) : _mm256_loadu_si256((const __m256i *)(p0 + 32 * b));
            __m256i x1 = NB == 1 ? _mm256_maskz_loadu_epi8(k, p1 + 32 * b) : _mm256_loadu_si256((const __m256i *)(p1 + 32 * b));
            v[2 * b] = _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(x0, x1));     /* channels [0..7 | 16..23] */
            v[2 * b + 1] = _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(x0, x1)); /* channels [8..15 | 24..31] */
        }
        const int32_t *w = wp + (int64_t)t * 4;
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512i wv = _mm512_set1_epi32(w[r]);
#pragma GCC unroll 4
            for (int x = 0; x < 2 * NB; x++) a[r][x] = dot_acc_zmm(a[r][x], v[x], wv);
        }
    }
    /* channel order back: [0..15] = [lo(A) | lo(B)], [16..31] = [hi(A) | hi(B)]; acc += (float)sum * ws */
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        if (r >= R) break;
        __m512 sc = _mm512_set1_ps(ws[r]);
#pragma GCC unroll 2
        for (int b = 0; b < NB; b++) {
            float *o = acc[r] + c + 32 * b;
            int nch = NB == 1 ? d - c : 32;
            if (nch > 32) nch = 32;
            const __mmask16 m0 = nch >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nch) - 1u);
            const __mmask16 m1 = nch >= 32 ? (__mmask16)0xFFFF : nch > 16 ? (__mmask16)((1u << (nch - 16)) - 1u) : (__mmask16)0;
            __m512i A = a[r][2 * b], B = a[r][2 * b + 1];
            __m512i c0 = _mm512_inserti64x4(A, _mm512_castsi512_si256(B), 1), c1 = _mm512_shuffle_i64x2(A, B, 0xEE);
            _mm512_mask_storeu_ps(o, m0, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c0), sc, _mm512_maskz_loadu_ps(m0, o)));
            if (m1) _mm512_mask_storeu_ps(o + 16, m1, _mm512_fmadd_ps(_mm512_cvtepi32_ps(c1), sc, _mm512_maskz_loadu_ps(m1, o + 16)));
        }
    }
}

/* As the AVX2 pv_rows_i8 (same arguments, same outputs): 64 channels per pass, then 32 or a tail. */
static __attribute__((noinline)) void pv_rows_i8(int R, const int8_t *vc, int d, int j0, int j1, const int32_t *wp, const float *ws,
                                                 float *const *acc, const uint8_t *pf, int64_t pf_bytes) {
    const int pairs = (j1 - j0 + 1) / 2, full_pairs = (j1 - j0) / 2;
    const int64_t pf_step = prefetch_step(pf_bytes, (d + 63) / 64);
    int64_t pf_at = 0;
    const int8_t *v0 = vc + (int64_t)j0 * d;
    int c = 0;
    for (; c + 64 <= d; c += 64) {
        prefetch_lines(pf, pf_at, pf_at + pf_step, pf_bytes); /* next block's V, spread over the passes */
        pf_at += pf_step;
        pv_cols(2, ~(__mmask32)0, R, v0, d, c, pairs, full_pairs, wp, ws, acc);
    }
    for (; c < d; c += 32) {
        prefetch_lines(pf, pf_at, pf_at + pf_step, pf_bytes);
        pf_at += pf_step;
        pv_cols(1, bytes32(d - c), R, v0, d, c, pairs, full_pairs, wp, ws, acc);
    }
}

/* ---------------------------------------------------------------- FP16 / BF16
 * The INT8 path's layout with FP32 arithmetic: scores token-major, s[(j - jlo) * 4 + r], -inf for
 * (row, token) pairs outside the row's range, so the softmax passes are vector-wide; Q.K on 16
 * channels per step for 2 tokens x 4 rows (FMA), reduced as in the INT8 path; P.V over 64
 * channels per pass (16 accumulators), skipping a row's invisible tokens at the range edges (never
 * multiplying them by 0: an Inf or NaN code there must not reach the row). Reference semantics
 * (kv_attend_ref.c), within the FP32 tolerance: the sums run in another order. */

/* Codes c .. c+15 of a row (FP16 or BF16) as FP32; k masks a d % 16 == 8 tail. */
ALWAYS_INLINE __m512 load16h(int32_t dtype, const void *base, int64_t idx, __mmask16 k) {
    __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)base + idx);
    if (dtype == QATTN_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* reduce8 for FP32 accumulators. */
ALWAYS_INLINE __m256 reduce8f(__m512 a0, __m512 a1, __m512 a2, __m512 a3, __m512 b0, __m512 b1, __m512 b2, __m512 b3) {
#define PAIR32(x, y) _mm512_add_ps(_mm512_unpacklo_ps((x), (y)), _mm512_unpackhi_ps((x), (y)))
#define PAIR64(x, y)                                                                                                                       \
    _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))),                                          \
                  _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))))
    __m512 q0 = PAIR64(PAIR32(a0, a1), PAIR32(a2, a3)), q1 = PAIR64(PAIR32(b0, b1), PAIR32(b2, b3));
#undef PAIR64
#undef PAIR32
    __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(q0, q1, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(q0, q1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(s, s, _MM_SHUFFLE(3, 1, 2, 0)), _mm512_shuffle_f32x4(s, s, _MM_SHUFFLE(2, 0, 3, 1)));
    return _mm512_castps512_ps256(t);
}

/* Scores of 4 rows (rows >= R reuse row 0 and are masked) for tokens [jlo, jhi), token-major, -inf
 * outside each row's range; *mx_out: [t even rows | t odd rows] maxima (NaN scores skipped). */
ALWAYS_INLINE void scores_rows_fp(int32_t dtype, int R, const float *q, int d, const void *kc, int jlo, int jhi, const int32_t *lo,
                                  const int32_t *hi, float *s, __m256 *mx_out) {
    const float *q0 = q, *q1 = q + (R > 1 ? d : 0), *q2 = q + (R > 2 ? 2 * d : 0), *q3 = q + (R > 3 ? 3 * d : 0);
    const rows4 rc = rows4_of(R, NULL, lo, hi, jlo, jhi);
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int j = jlo; j < jhi; j += 2) {
        const int64_t b0 = (int64_t)j * d, b1 = j + 1 < jhi ? b0 + d : b0;
        __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        for (int c = 0; c < d; c += 16) {
            const __mmask16 k = d - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)0x00FF;
            __m512 k0 = load16h(dtype, kc, b0 + c, k), k1 = load16h(dtype, kc, b1 + c, k), qv;
            qv = _mm512_maskz_loadu_ps(k, q0 + c);
            a00 = _mm512_fmadd_ps(qv, k0, a00), a01 = _mm512_fmadd_ps(qv, k1, a01);
            qv = _mm512_maskz_loadu_ps(k, q1 + c);
            a10 = _mm512_fmadd_ps(qv, k0, a10), a11 = _mm512_fmadd_ps(qv, k1, a11);
            qv = _mm512_maskz_loadu_ps(k, q2 + c);
            a20 = _mm512_fmadd_ps(qv, k0, a20), a21 = _mm512_fmadd_ps(qv, k1, a21);
            qv = _mm512_maskz_loadu_ps(k, q3 + c);
            a30 = _mm512_fmadd_ps(qv, k0, a30), a31 = _mm512_fmadd_ps(qv, k1, a31);
        }
        __m256 sv = mask_pair(reduce8f(a00, a10, a20, a30, a01, a11, a21, a31), j, &rc);
        _mm256_storeu_ps(s + (int64_t)(j - jlo) * 4, sv);
        mx = _mm256_max_ps(sv, mx); /* keeps mx when sv is NaN, like the reference's `s > max` */
    }
    *mx_out = mx;
}

/* acc[r][c ..] += sum_j p[(j - jlo) * 4 + r] * v_j over tokens [j0, j1), NV vectors of 16 channels
 * from c (the last masked by `last`); CHECK: skip tokens outside each row's [lo, hi). */
ALWAYS_INLINE void pv_rows_fp(int32_t dtype, int R, int NV, __mmask16 last, bool check, const void *vc, int d, int c, int jlo, int j0, int j1,
                              const float *p, const int32_t *lo, const int32_t *hi, float *const *acc) {
    __m512 a[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int x = 0; x < NV; x++) a[r][x] = r < R ? _mm512_maskz_loadu_ps(x == NV - 1 ? last : (__mmask16)0xFFFF, acc[r] + c + 16 * x) : _mm512_setzero_ps();
    for (int j = j0; j < j1; j++) {
        __m512 v[4];
#pragma GCC unroll 4
        for (int x = 0; x < NV; x++) v[x] = load16h(dtype, vc, (int64_t)j * d + c + 16 * x, x == NV - 1 ? last : (__mmask16)0xFFFF);
        const float *pj = p + (int64_t)(j - jlo) * 4;
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            if (r >= R || (check && (j < lo[r] || j >= hi[r]))) continue;
            __m512 pb = _mm512_set1_ps(pj[r]);
#pragma GCC unroll 4
            for (int x = 0; x < NV; x++) a[r][x] = _mm512_fmadd_ps(pb, v[x], a[r][x]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int x = 0; x < NV; x++)
            if (r < R) _mm512_mask_storeu_ps(acc[r] + c + 16 * x, x == NV - 1 ? last : (__mmask16)0xFFFF, a[r][x]);
}

ALWAYS_INLINE void pv_range_fp(int32_t dtype, int R, bool check, const void *vc, int d, int jlo, int j0, int j1, const float *p, const int32_t *lo,
                               const int32_t *hi, float *const *acc) {
    if (j0 >= j1) return;
    int c = 0;
    for (; c + 64 <= d; c += 64) pv_rows_fp(dtype, R, 4, 0xFFFF, check, vc, d, c, jlo, j0, j1, p, lo, hi, acc);
    int rest = d - c, nv = (rest + 15) / 16;
    __mmask16 last = rest % 16 ? (__mmask16)0x00FF : (__mmask16)0xFFFF;
    switch (nv) {
    case 3: pv_rows_fp(dtype, R, 3, last, check, vc, d, c, jlo, j0, j1, p, lo, hi, acc); break;
    case 2: pv_rows_fp(dtype, R, 2, last, check, vc, d, c, jlo, j0, j1, p, lo, hi, acc); break;
    case 1: pv_rows_fp(dtype, R, 1, last, check, vc, d, c, jlo, j0, j1, p, lo, hi, acc); break;
    default: break;
    }
}

/* FP16/BF16 rows r0..r0+R-1 (R <= 4): scores, online softmax (rescale only when the max grows),
 * P.V. */
ALWAYS_INLINE void attend_rows_fp(int32_t dtype, int R, const float *q, int d, const void *kc, const void *vc, const int32_t *lo, const int32_t *hi,
                                  qattn_tile_state *st, int r0, float *s) {
    int jlo = 1 << 30, jhi = 0, jc0 = 0, jc1 = 1 << 30; /* union of the ranges; [jc0, jc1): seen by every row */
    bool active[4] = {false, false, false, false};
    for (int r = 0; r < R; r++) {
        if (lo[r] < hi[r]) {
            active[r] = true;
            if (lo[r] < jlo) jlo = lo[r];
            if (hi[r] > jhi) jhi = hi[r];
        }
        if (lo[r] > jc0) jc0 = lo[r];
        if (hi[r] < jc1) jc1 = hi[r];
    }
    if (jlo >= jhi) return;
    int np = (jhi - jlo + 1) / 2;
    __m256 mx;
    scores_rows_fp(dtype, R, q, d, kc, jlo, jhi, lo, hi, s, &mx);
    float mrow[4] = {0, 0, 0, 0}, *acc[4];
    bool nanrow[4] = {false, false, false, false};
    update_row_max4(R, active, mx, st, r0, d, acc, mrow, nanrow);
    /* p = exp2(s - max) in place, row sums ([t even | t odd] halves added at the end) */
    const __m256 mv = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(mrow)), _mm_loadu_ps(mrow), 1);
    __m256 sum = _mm256_setzero_ps();
    for (int t = 0; t < np; t++) {
        __m256 pt = qattn_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + 8 * t), mv));
        sum = _mm256_add_ps(sum, pt);
        _mm256_storeu_ps(s + 8 * t, pt);
    }
    float rsum[4];
    _mm_storeu_ps(rsum, _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1)));
    for (int r = 0; r < R; r++) {
        if (!active[r]) continue;
        if (nanrow[r]) {
            for (int c = 0; c < d; c++) acc[r][c] = NAN;
            st->row_max[r0 + r] = st->row_sum[r0 + r] = NAN;
        } else {
            st->row_sum[r0 + r] += rsum[r];
        }
    }
    /* NaN rows: their p may be anything; they are NaN already and stay so (p = 0 for their tokens
     * keeps the other rows' arithmetic untouched: rows never mix) */
    if (jc0 < jc1) {
        pv_range_fp(dtype, R, true, vc, d, jlo, jlo, jc0, s, lo, hi, acc);
        pv_range_fp(dtype, R, false, vc, d, jlo, jc0, jc1, s, lo, hi, acc);
        pv_range_fp(dtype, R, true, vc, d, jlo, jc1, jhi, s, lo, hi, acc);
    } else {
        pv_range_fp(dtype, R, true, vc, d, jlo, jlo, jhi, s, lo, hi, acc);
    }
}

static void attend_fp_avx512(int32_t dtype, const float *q, int m, int d, const void *kc, const void *vc, const int32_t *lo, const int32_t *hi,
                             qattn_tile_state *st, float *scratch) {
#define ROWS(R) (dtype == QATTN_DTYPE_F16 ? attend_rows_fp(QATTN_DTYPE_F16, R, q + (int64_t)r0 * d, d, kc, vc, lo + r0, hi + r0, st, r0, scratch) \
                                          : attend_rows_fp(QATTN_DTYPE_BF16, R, q + (int64_t)r0 * d, d, kc, vc, lo + r0, hi + r0, st, r0, scratch))
    int r0 = 0;
    for (; r0 + 4 <= m; r0 += 4) ROWS(4);
    switch (m - r0) {
    case 3: ROWS(3); break;
    case 2: ROWS(2); break;
    case 1: ROWS(1); break;
    default: break;
    }
#undef ROWS
}
