/* AVX2 + FMA + F16C decode kernel over one cache block (contract: qattn_kv_attend_fn in
 * src/kv/kv_internal.h; reference: src/kv/kv_attend_ref.c). Codes are converted to FP32 in
 * registers (F16C for FP16, shift for BF16, sign-extend + convert for INT8) and never written
 * back: each token's K and V codes are read once per call for all m rows (the query group).
 * FP16/BF16: FP32 FMAs. INT8: integer products (AVX2 has no VNNI, so vpmaddwd): K codes
 * sign-extended to int16 times q held as int16 (16 products per instruction), and P.V with the
 * weights p*vs held as int16 against pairs of tokens interleaved on the fly, so both halves use
 * the integer pipes as well as the FMA pipes. Integer sums are exact; semantics in kv_internal.h.
 * Rows are processed 4 at a time (register blocking: 4 rows x 2 tokens of score accumulators,
 * 4 rows x 16 channels of output accumulators). */
#include "kv/kv_internal.h"

#include <immintrin.h>

#include "cpu/x86/exp2_avx2.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __m256 load8(int32_t dtype, const void *base, int64_t idx) {
    if (dtype == QATTN_DTYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + idx)));
    if (dtype == QATTN_DTYPE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + idx))), 16));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)base + idx))));
}

/* Sums of the 8 lanes of a, b, c, d as lanes 0..3. */
ALWAYS_INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* FP16/BF16 scores of rows r0..r0+R-1 for tokens [j0, j1): s[r*n + j] = q_r . k_j. */
ALWAYS_INLINE void scores_rows(int R, const float *q, int d, int32_t dtype, const void *kc, int n, int j0, int j1,
                               float *s) {
    const float *qr[4];
    for (int r = 0; r < 4; r++) qr[r] = q + (int64_t)(r < R ? r : 0) * d;
    int j = j0;
    for (; j + 2 <= j1; j += 2) {
        __m256 a[4][2];
        for (int r = 0; r < R; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
        const int64_t b0 = (int64_t)j * d, b1 = b0 + d;
        for (int c = 0; c < d; c += 8) {
            __m256 k0 = load8(dtype, kc, b0 + c), k1 = load8(dtype, kc, b1 + c);
            for (int r = 0; r < R; r++) {
                __m256 qv = _mm256_loadu_ps(qr[r] + c);
                a[r][0] = _mm256_fmadd_ps(qv, k0, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(qv, k1, a[r][1]);
            }
        }
        for (int r = R; r < 4; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
        __m128 s0 = hsum4(a[0][0], a[1][0], a[2][0], a[3][0]);
        __m128 s1 = hsum4(a[0][1], a[1][1], a[2][1], a[3][1]);
        float t0[4], t1[4];
        _mm_storeu_ps(t0, s0);
        _mm_storeu_ps(t1, s1);
        for (int r = 0; r < R; r++) {
            s[(int64_t)r * n + j] = t0[r];
            s[(int64_t)r * n + j + 1] = t1[r];
        }
    }
    for (; j < j1; j++) {
        __m256 a[4];
        for (int r = 0; r < 4; r++) a[r] = _mm256_setzero_ps();
        const int64_t b0 = (int64_t)j * d;
        for (int c = 0; c < d; c += 8) {
            __m256 k0 = load8(dtype, kc, b0 + c);
            for (int r = 0; r < R; r++) a[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qr[r] + c), k0, a[r]);
        }
        __m128 s0 = hsum4(a[0], a[1], a[2], a[3]);
        float t0[4];
        _mm_storeu_ps(t0, s0);
        for (int r = 0; r < R; r++) s[(int64_t)r * n + j] = t0[r];
    }
}

/* acc[r] += w[r][j] * v_j for rows r0..r0+R-1, tokens [j0, j1), channels [c, c+16) (W = 2 vectors)
 * or [c, c+8) (W = 1). check: skip tokens outside each row's [lo, hi). */
ALWAYS_INLINE void pv_rows(int R, int W, bool check, int32_t dtype, const void *vc, int d, int n, int c, int j0, int j1, const float *w,
                           const int32_t *lo, const int32_t *hi, float *const *acc) {
    __m256 a[4][2];
    for (int r = 0; r < R; r++)
        for (int x = 0; x < W; x++) a[r][x] = _mm256_loadu_ps(acc[r] + c + 8 * x);
    for (int j = j0; j < j1; j++) {
        __m256 v[2];
        for (int x = 0; x < W; x++) v[x] = load8(dtype, vc, (int64_t)j * d + c + 8 * x);
        for (int r = 0; r < R; r++) {
            if (check && (j < lo[r] || j >= hi[r])) continue;
            __m256 p = _mm256_broadcast_ss(w + (int64_t)r * n + j);
            for (int x = 0; x < W; x++) a[r][x] = _mm256_fmadd_ps(p, v[x], a[r][x]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int x = 0; x < W; x++) _mm256_storeu_ps(acc[r] + c + 8 * x, a[r][x]);
}

ALWAYS_INLINE void pv_chunk(int R, bool check, int32_t dtype, const void *vc, int d, int n, int j0, int j1, const float *w,
                            const int32_t *lo, const int32_t *hi, float *const *acc) {
    int c = 0;
    for (; c + 16 <= d; c += 16) pv_rows(R, 2, check, dtype, vc, d, n, c, j0, j1, w, lo, hi, acc);
    if (c < d) pv_rows(R, 1, check, dtype, vc, d, n, c, j0, j1, w, lo, hi, acc);
}


/* ---------------------------------------------------------------- INT8
 * Layout inside one call (rows r0..r0+3 of a 4-row block, tokens relative to jlo, the union of
 * the rows' ranges): scores and weights token-major, s[t*4 + r], so one 8-lane vector holds two
 * tokens x four rows and every pass (max, exp2, sum, weight max, int16 conversion) is vector-wide
 * with no per-row scalar loop; (row, token) pairs outside the row's [lo, hi) hold -inf scores,
 * hence exactly 0 weights, so P.V needs no range checks. Weights go to int16 pairs by token pair,
 * wp[t*4 + r] = (w16[2t][r], w16[2t+1][r]) as one int32: P.V broadcasts one int32 per row and pair.
 *
 * Integer products. AVX2: vpmaddwd (two s16 x s16 products summed into s32) + vpaddd. AVX-VNNI
 * (kv_attend_vnni.c includes this file with QATTN_KV_VNNI): vpdpwssd, the same two products and
 * the same s32 add in one instruction (non-saturating form, wraps like vpaddd); the pair sum
 * itself is exact in both (|2 * 32767 * 128| < 2^31; vpmaddwd's only wrap, -32768 * -32768 twice,
 * cannot occur since q16 >= -32767). So both give the same int32 values as the scalar reference.
 * Why no s32 lane overflows (codes bounded by 128 in magnitude, even though stored codes are
 * clamped to [-127, 127]; head_dim <= 256; block_size <= 1024 but P.V sums <= 256 tokens):
 *   Q.K: |q16| <= 32767, |k8| <= 128: every partial sum of the D <= 256 products is bounded by
 *        256 * 32767 * 128 = 1 073 709 056 < 2^31 - 1 = 2 147 483 647 (any lane, any hadd step).
 *   P.V: 0 <= w16 <= 32767, |v8| <= 128, <= 256 tokens per chunk: 256 * 32767 * 128 =
 *        1 073 709 056 < 2^31 - 1. */
#if defined(QATTN_KV_VNNI)
/* vpdpwssd through inline asm: with the _mm256_dpwssd_avx_epi32 builtin (its accumulator is tied
 * to the destination) GCC 13 copied every loop-carried accumulator through another register and
 * the stack on each iteration (perf annotate: ~1/3 of the kernel's cycles on vmovdqa); "+x"
 * keeps each accumulator in one register. Same instruction, same result. */
ALWAYS_INLINE __m256i dot_acc_vnni(__m256i acc, __m256i a, __m256i b) {
    __asm__("%{vex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(b));
    return acc;
}
#define DOT_ACC(acc, a, b) dot_acc_vnni((acc), (a), (b))
#else
#define DOT_ACC(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif

#ifndef KV_PF_HINT /* the cache level the next block is prefetched into (kv_attend_avx512.c: L2) */
#define KV_PF_HINT _MM_HINT_T0
#endif
/* Software prefetch of bytes [from, to) of p (to clamped to end), whole 64-byte lines. */
ALWAYS_INLINE void prefetch_lines(const uint8_t *p, int64_t from, int64_t to, int64_t end) {
    if (to > end) to = end;
    for (int64_t o = from; o < to; o += 64) _mm_prefetch((const char *)(p + o), KV_PF_HINT);
}

/* Bytes of a prefetch region to issue per loop iteration so that `iters` iterations cover it. */
ALWAYS_INLINE int64_t prefetch_step(int64_t bytes, int64_t iters) { return iters > 0 ? ((bytes + iters - 1) / iters + 63) & ~(int64_t)63 : bytes; }

/* Two tokens' per-token scales as [x[j] x4 | x[j+1] x4] (x[j] twice when !two: no read past n). */
ALWAYS_INLINE __m256 pair_scale(const float *x, int j, bool two) {
    __m128 a = _mm_set1_ps(x[j]), b = two ? _mm_set1_ps(x[j + 1]) : a;
    return _mm256_insertf128_ps(_mm256_castps128_ps256(a), b, 1);
}

/* 16 (full) or 8 int8 codes at p, sign-extended to int16 (upper lanes zero when 8). */
ALWAYS_INLINE __m256i load_k16(const int8_t *p, bool full) {
    return _mm256_cvtepi8_epi16(full ? _mm_loadu_si128((const __m128i *)p) : _mm_loadl_epi64((const __m128i *)p));
}

/* The per-row constants of a 4-row block for the token-major score layout [t0 rows | t1 rows]:
 * q scales (qsc NULL: unused), lo and hi, and whether all 4 rows see all of [jlo, jhi) with an
 * even count (then no -inf mask is needed; an odd count's pad token still needs it). Rows >= R:
 * row 0's scale and an empty range. R == 4 reads the arrays straight (GCC built the padded copies
 * with 32-bit stores read back by 128-bit loads: store-forwarding stalls on every call). */
typedef struct rows4 {
    __m256 qs;
    __m256i lo, hi;
    bool all_visible;
} rows4;

ALWAYS_INLINE rows4 rows4_of(int R, const float *qsc, const int32_t *lo, const int32_t *hi, int jlo, int jhi) {
    __m128 qs4 = _mm_setzero_ps();
    __m128i lov, hiv;
    if (R == 4) {
        if (qsc) qs4 = _mm_loadu_ps(qsc);
        lov = _mm_loadu_si128((const __m128i *)lo);
        hiv = _mm_loadu_si128((const __m128i *)hi);
    } else {
        if (qsc) qs4 = _mm_setr_ps(qsc[0], qsc[R > 1 ? 1 : 0], qsc[R > 2 ? 2 : 0], qsc[0]);
        lov = _mm_setr_epi32(lo[0], R > 1 ? lo[1] : 0, R > 2 ? lo[2] : 0, 0);
        hiv = _mm_setr_epi32(hi[0], R > 1 ? hi[1] : 0, R > 2 ? hi[2] : 0, 0);
    }
    rows4 c;
    c.qs = _mm256_insertf128_ps(_mm256_castps128_ps256(qs4), qs4, 1);
    c.lo = _mm256_insertf128_si256(_mm256_castsi128_si256(lov), lov, 1);
    c.hi = _mm256_insertf128_si256(_mm256_castsi128_si256(hiv), hiv, 1);
    c.all_visible = R == 4 && ((jhi - jlo) & 1) == 0;
    for (int r = 0; r < R && c.all_visible; r++) c.all_visible = lo[r] <= jlo && hi[r] >= jhi;
    return c;
}

/* Scores sv of tokens j, j + 1 ([t0 rows | t1 rows]) to -inf where a row cannot see the token. */
ALWAYS_INLINE __m256 mask_pair(__m256 sv, int j, const rows4 *c) {
    if (c->all_visible) return sv;
    __m256i jv = _mm256_add_epi32(_mm256_set1_epi32(j), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(c->lo, jv), _mm256_cmpgt_epi32(_mm256_add_epi32(jv, _mm256_set1_epi32(1)), c->hi));
    return _mm256_blendv_ps(sv, _mm256_set1_ps(-INFINITY), _mm256_castsi256_ps(out));
}

/* The INT8 pair's integer dots to scores: ((float)dot * qsc) * ks_j, masked. */
ALWAYS_INLINE __m256 scores_pair_i8(__m256i dot, const float *ks, int j, bool two, const rows4 *c) {
    return mask_pair(_mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), c->qs), pair_scale(ks, j, two)), j, c);
}

#if defined(QATTN_KV_AVX512)
/* The ZMM engines, defined in kv_attend_avx512.c after this file (same contracts as below). */
static void scores_rows_i8(int R, const int16_t *q16, const float *qsc, int d, const int8_t *kc, const float *ks, int jlo, int jhi,
                           const int32_t *lo, const int32_t *hi, float *s, const uint8_t *pf, int64_t pf_bytes, __m256 *mx_out);
static void pv_rows_i8(int R, const int8_t *vc, int d, int j0, int j1, const int32_t *wp, const float *ws, float *const *acc,
                       const uint8_t *pf, int64_t pf_bytes);
/* The FP16/BF16 path on ZMM (kv_attend_avx512.c). */
static void attend_fp_avx512(int32_t dtype, const float *q, int m, int d, const void *kc, const void *vc, const int32_t *lo, const int32_t *hi,
                             qattn_tile_state *st, float *scratch);
#else
/* INT8 scores of 4 rows for tokens [jlo, jhi): s[(j - jlo)*4 + r] = ((float)(q16 . k8) * qsc) * ks_j,
 * -inf outside the row's [lo, hi) (rows >= R: lo = hi = 0; the pad token of an odd count is >= hi).
 * Always 4 rows (rows >= R reuse row 0's q and are masked): fixed named accumulators keep GCC from
 * shuffling them through extra registers and the stack (vpdpwssd ties its accumulator); noinline
 * (here and in pv_rows_i8) gives the loops all 16 ymm registers: inlined into the softmax code,
 * GCC kept its constants live and spilled a V operand in the P.V loop. */
static __attribute__((noinline)) void scores_rows_i8(int R, const int16_t *q16, const float *qsc, int d, const int8_t *kc, const float *ks, int jlo, int jhi,
                                  const int32_t *lo, const int32_t *hi, float *s, const uint8_t *pf, int64_t pf_bytes, __m256 *mx_out) {
    const int64_t ldq = (d + 15) / 16 * 16; /* q16 rows are zero-padded to a multiple of 16 */
    const int16_t *q0 = q16, *q1 = q16 + (R > 1 ? ldq : 0), *q2 = q16 + (R > 2 ? 2 * ldq : 0), *q3 = q16 + (R > 3 ? 3 * ldq : 0);
    const rows4 rc = rows4_of(R, qsc, lo, hi, jlo, jhi);
    const int dfull = d & ~15;
    const int64_t pf_step = prefetch_step(pf_bytes, (jhi - jlo + 1) / 2);
    int64_t pf_at = 0;
    __m256 mx = _mm256_set1_ps(-INFINITY); /* per-row tile max, [t0 rows | t1 rows] */
    for (int j = jlo; j < jhi; j += 2) {
        bool two = j + 1 < jhi;
        prefetch_lines(pf, pf_at, pf_at + pf_step, pf_bytes); /* next block's K, spread over the loop */
        pf_at += pf_step;
        __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        const int8_t *k0p = kc + (int64_t)j * d, *k1p = two ? k0p + d : k0p;
#define QK_STEP(c, full)                                                                                                                   \
    do {                                                                                                                                   \
        __m256i k0 = load_k16(k0p + (c), full), k1 = load_k16(k1p + (c), full), qv;                                                       \
        qv = _mm256_loadu_si256((const __m256i *)(q0 + (c)));                                                                              \
        a00 = DOT_ACC(a00, qv, k0), a01 = DOT_ACC(a01, qv, k1);                                                                            \
        qv = _mm256_loadu_si256((const __m256i *)(q1 + (c)));                                                                              \
        a10 = DOT_ACC(a10, qv, k0), a11 = DOT_ACC(a11, qv, k1);                                                                            \
        qv = _mm256_loadu_si256((const __m256i *)(q2 + (c)));                                                                              \
        a20 = DOT_ACC(a20, qv, k0), a21 = DOT_ACC(a21, qv, k1);                                                                            \
        qv = _mm256_loadu_si256((const __m256i *)(q3 + (c)));                                                                              \
        a30 = DOT_ACC(a30, qv, k0), a31 = DOT_ACC(a31, qv, k1);                                                                            \
    } while (0)
        for (int c = 0; c < dfull; c += 16) QK_STEP(c, true);
        if (dfull < d) QK_STEP(dfull, false); /* 8 channels (d is a multiple of 8) */
#undef QK_STEP
        /* 8 accumulators -> [t0: rows 0..3 | t1: rows 0..3] (integer adds: exact in any order) */
        __m256i x0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a00, a10), _mm256_hadd_epi32(a20, a30));
        __m256i x1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a01, a11), _mm256_hadd_epi32(a21, a31));
        __m256i dot = _mm256_add_epi32(_mm256_permute2x128_si256(x0, x1, 0x20), _mm256_permute2x128_si256(x0, x1, 0x31));
        __m256 sv = scores_pair_i8(dot, ks, j, two, &rc);
        _mm256_storeu_ps(s + (int64_t)(j - jlo) * 4, sv);
        mx = _mm256_max_ps(sv, mx); /* keeps mx when sv is NaN, like the reference's `s > max` */
    }
    *mx_out = mx;
}

/* INT8 P.V for 4 rows over tokens [j0, j1) (at most 256; wp from j0's pair; an odd count's pad
 * weight is 0, so its V operand may be any codes: token j0 + 2t is used, no branch):
 * acc[r] += (float)(sum_j w16[j][r] * v8_j) * ws[r], stored for rows < R (rows >= R have weight 0). */
static __attribute__((noinline)) void pv_rows_i8(int R, const int8_t *vc, int d, int j0, int j1, const int32_t *wp, const float *ws, float *const *acc,
                                                  const uint8_t *pf, int64_t pf_bytes) {
    const int pairs = (j1 - j0 + 1) / 2, full_pairs = (j1 - j0) / 2;
    const int64_t pf_step = prefetch_step(pf_bytes, (d + 15) / 16);
    int64_t pf_at = 0;
    for (int c = 0; c < d; c += 16) {
        prefetch_lines(pf, pf_at, pf_at + pf_step, pf_bytes); /* next block's V, spread over the loop */
        pf_at += pf_step;
        const bool full = c + 16 <= d; /* else 8 channels: only the low half is used and stored */
        __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        const int8_t *p = vc + (int64_t)j0 * d + c;
        const int64_t step = 2 * (int64_t)d;
#define PV_STEP(t, x0, x1)                                                                                                                 \
    do {                                                                                                                                   \
        __m256i vlo = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x0, x1)); /* channels c..c+7, tokens j, j+1 */                              \
        __m256i vhi = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(x0, x1)); /* channels c+8..c+15 */                                          \
        const int32_t *w = wp + (int64_t)(t) * 4;                                                                                          \
        __m256i wv = _mm256_set1_epi32(w[0]);                                                                                              \
        a00 = DOT_ACC(a00, vlo, wv), a01 = DOT_ACC(a01, vhi, wv);                                                                          \
        wv = _mm256_set1_epi32(w[1]);                                                                                                      \
        a10 = DOT_ACC(a10, vlo, wv), a11 = DOT_ACC(a11, vhi, wv);                                                                          \
        wv = _mm256_set1_epi32(w[2]);                                                                                                      \
        a20 = DOT_ACC(a20, vlo, wv), a21 = DOT_ACC(a21, vhi, wv);                                                                          \
        wv = _mm256_set1_epi32(w[3]);                                                                                                      \
        a30 = DOT_ACC(a30, vlo, wv), a31 = DOT_ACC(a31, vhi, wv);                                                                          \
    } while (0)
        if (full) {
            for (int t = 0; t < full_pairs; t++, p += step) {
                __m128i x0 = _mm_loadu_si128((const __m128i *)p), x1 = _mm_loadu_si128((const __m128i *)(p + d));
                PV_STEP(t, x0, x1);
            }
            if (full_pairs < pairs) {
                __m128i x0 = _mm_loadu_si128((const __m128i *)p);
                PV_STEP(full_pairs, x0, x0);
            }
        } else {
            for (int t = 0; t < full_pairs; t++, p += step) {
                __m128i x0 = _mm_loadl_epi64((const __m128i *)p), x1 = _mm_loadl_epi64((const __m128i *)(p + d));
                PV_STEP(t, x0, x1);
            }
            if (full_pairs < pairs) {
                __m128i x0 = _mm_loadl_epi64((const __m128i *)p);
                PV_STEP(full_pairs, x0, x0);
            }
        }
#undef PV_STEP
#define PV_STORE(r, lo_, hi_)                                                                                                              \
    do {                                                                                                                                   \
        float *o = acc[r] + c;                                                                                                             \
        __m256 sc = _mm256_broadcast_ss(ws + (r));                                                                                         \
        _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo_), sc, _mm256_loadu_ps(o)));                                             \
        if (full) _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi_), sc, _mm256_loadu_ps(o + 8)));                        \
    } while (0)
        PV_STORE(0, a00, a01);
        if (R > 1) PV_STORE(1, a10, a11);
        if (R > 2) PV_STORE(2, a20, a21);
        if (R > 3) PV_STORE(3, a30, a31);
#undef PV_STORE
    }
}

#endif

/* The online-softmax rule (docs/ARCHITECTURE.md "Numerics"), for both the INT8 and the FP16/BF16 rows: rescale the
 * row's sum and accumulator only when its max grows. */
ALWAYS_INLINE void raise_row_max(qattn_tile_state *st, int row, float *acc, int d, float old_max, float new_max) {
    if (!(new_max > old_max)) return;
    float alpha = exp2f(old_max - new_max);
    st->row_sum[row] *= alpha;
    __m256 av = _mm256_set1_ps(alpha);
    for (int c = 0; c < d; c += 8) _mm256_storeu_ps(acc + c, _mm256_mul_ps(_mm256_loadu_ps(acc + c), av));
    st->row_max[row] = new_max;
}

ALWAYS_INLINE __m128 hmax_halves(__m256 v) { return _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); }

/* After the scores of a 4-row block (token-major, block maxima mx = [t even rows | t odd rows]):
 * acc[r] for r < R; each active row's new max, the state rescaled when it grows; mrow[r] = the max
 * to subtract (0 for inactive rows: their -inf scores give 0); nanrow[r] for a row that saw keys
 * but no score above -inf (all NaN; its state is made NaN by the caller, never "empty"). */
ALWAYS_INLINE void update_row_max4(int R, const bool *active, __m256 mx, qattn_tile_state *st, int r0, int d, float **acc, float *mrow,
                                   bool *nanrow) {
    float tmax[4];
    _mm_storeu_ps(tmax, hmax_halves(mx));
    for (int r = 0; r < R; r++) {
        acc[r] = st->acc + (int64_t)(r0 + r) * st->ld_acc;
        if (!active[r]) continue;
        float old_max = st->row_max[r0 + r];
        float new_max = tmax[r] > old_max ? tmax[r] : old_max;
        if (new_max == -INFINITY) {
            nanrow[r] = true;
            continue;
        }
        raise_row_max(st, r0 + r, acc[r], d, old_max, new_max);
        mrow[r] = new_max; /* NaN when the state is NaN already: the row stays NaN */
    }
}

/* INT8 rows r0..r0+R-1 (R <= 4): scores, online softmax, weights to int16, P.V. */
ALWAYS_INLINE void attend_rows_i8(int R, const int16_t *q16, const float *qsc, int d, const int8_t *kc, const int8_t *vc, const float *ks,
                                  const float *vs, const int32_t *lo, const int32_t *hi, qattn_tile_state *st, int r0, float *s,
                                  const qattn_kv_prefetch *pf) {
    int jlo = 1 << 30, jhi = 0;
    bool active[4] = {false, false, false, false};
    for (int r = 0; r < R; r++)
        if (lo[r] < hi[r]) {
            active[r] = true;
            if (lo[r] < jlo) jlo = lo[r];
            if (hi[r] > jhi) jhi = hi[r];
        }
    if (jlo >= jhi) {
        if (pf) prefetch_lines(pf->k, 0, pf->bytes, pf->bytes), prefetch_lines(pf->v, 0, pf->bytes, pf->bytes);
        return;
    }
    int nt = jhi - jlo, np = (nt + 1) / 2; /* tokens, token pairs (the last maybe padded) */
    __m256 mx; /* tile max per row (scores_rows_i8) */
    scores_rows_i8(R, q16, qsc, d, kc, ks, jlo, jhi, lo, hi, s, pf ? pf->k : NULL, pf ? pf->bytes : 0, &mx);
    float mrow[4] = {0, 0, 0, 0}, *acc[4];
    bool nanrow[4] = {false, false, false, false};
    update_row_max4(R, active, mx, st, r0, d, acc, mrow, nanrow);
    /* p = exp2(s - max), w = p * vs in place; row sums of p, row max of w, NaN flags */
    const __m256 mv = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(mrow)), _mm_loadu_ps(mrow), 1);
    __m256 sum = _mm256_setzero_ps(), wmv = _mm256_setzero_ps(), nanv = _mm256_setzero_ps();
    for (int t = 0; t < np; t++) {
        __m256 p = qattn_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + 8 * t), mv));
        sum = _mm256_add_ps(sum, p);
        p = _mm256_mul_ps(p, pair_scale(vs, jlo + 2 * t, jlo + 2 * t + 1 < jhi));
        wmv = _mm256_max_ps(wmv, p);
        nanv = _mm256_or_ps(nanv, _mm256_cmp_ps(p, p, _CMP_UNORD_Q));
        _mm256_storeu_ps(s + 8 * t, p);
    }
    float rsum[4], wmax[4], inv[4], ws[4], invd[4], wsd[4];
    _mm_storeu_ps(rsum, _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1)));
    const __m128 wm4 = hmax_halves(wmv), big = _mm_set1_ps(32767.0f);
    _mm_storeu_ps(wmax, wm4);
    /* the 8 divisions as 2 vector ones (IEEE division: the same values as the scalar ones) */
    _mm_storeu_ps(invd, _mm_div_ps(big, wm4));
    _mm_storeu_ps(wsd, _mm_div_ps(wm4, big));
    int nanm = _mm256_movemask_ps(nanv);
    for (int r = 0; r < 4; r++) {
        if (r < R && active[r] && ((nanm >> r) & 1 || (nanm >> (r + 4)) & 1)) nanrow[r] = true;
        bool use = r < R && active[r] && !nanrow[r] && wmax[r] > 0.0f;
        inv[r] = use ? invd[r] : 0.0f; /* 32767 / wmax; 0: the row's weights all become 0 */
        ws[r] = use ? wsd[r] : 0.0f;      /* wmax / 32767 */
        if (r >= R || !active[r]) continue;
        if (nanrow[r]) { /* a NaN weight or score (NaN query): the row's state becomes NaN */
            for (int c = 0; c < d; c++) acc[r][c] = NAN;
            st->row_max[r0 + r] = NAN;
            st->row_sum[r0 + r] = NAN;
        } else {
            st->row_sum[r0 + r] += rsum[r];
        }
    }
    /* weights to int16 pairs: w16 = rint(w * 32767 / wmax) (cvtps rounds to nearest even) */
    int32_t *wp = (int32_t *)(s + 8 * np);
    const __m256 iv = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(inv)), _mm_loadu_ps(inv), 1);
    for (int t = 0; t < np; t++) {
        __m256i x = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s + 8 * t), iv)); /* NaN * 0 rows: zeroed below */
        __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1)); /* t0 r0..3, t1 r0..3 */
        _mm_storeu_si128((__m128i *)(wp + 4 * t), _mm_unpacklo_epi16(p16, _mm_unpackhi_epi64(p16, p16)));
    }
    if (nanrow[0] | nanrow[1] | nanrow[2] | nanrow[3])
        for (int t = 0; t < np; t++)
            for (int r = 0; r < 4; r++)
                if (nanrow[r]) wp[4 * t + r] = 0;
    for (int j0 = jlo; j0 < jhi; j0 += 256) {
        int j1 = j0 + 256 < jhi ? j0 + 256 : jhi;
        bool first = j0 == jlo && pf;
        pv_rows_i8(R, vc, d, j0, j1, wp + (j0 - jlo) / 2 * 4, ws, acc, first ? pf->v : NULL, first ? pf->bytes : 0);
    }
}

/* FP16/BF16 rows r0..r0+R-1 (R <= 4) through scores, online softmax and P.V. */
ALWAYS_INLINE void attend_rows(int R, const float *q, int d, int32_t dtype, const void *kc, const void *vc, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st, int r0, float *s,
                               float *w) {
    int jlo = n, jhi = 0, jc0 = 0, jc1 = n;
    for (int r = 0; r < R; r++) {
        if (lo[r] < hi[r]) {
            if (lo[r] < jlo) jlo = lo[r];
            if (hi[r] > jhi) jhi = hi[r];
        }
        if (lo[r] > jc0) jc0 = lo[r];
        if (hi[r] < jc1) jc1 = hi[r];
    }
    if (jlo >= jhi) return;
    scores_rows(R, q, d, dtype, kc, n, jlo, jhi, s);
    float *acc[4];
    for (int r = 0; r < R; r++) {
        acc[r] = st->acc + (int64_t)(r0 + r) * st->ld_acc;
        const float *sr = s + (int64_t)r * n;
        float *wr = w + (int64_t)r * n;
        if (lo[r] >= hi[r]) continue;
        float tile_max = -INFINITY;
        for (int j = lo[r]; j < hi[r]; j++)
            if (sr[j] > tile_max) tile_max = sr[j];
        float old_max = st->row_max[r0 + r];
        float new_max = tile_max > old_max ? tile_max : old_max;
        if (new_max == -INFINITY) { /* keys seen but no score above -inf (all NaN): a NaN row, never "empty" */
            for (int c = 0; c < d; c++) acc[r][c] = NAN;
            st->row_max[r0 + r] = st->row_sum[r0 + r] = NAN;
            for (int j = lo[r]; j < hi[r]; j++) wr[j] = 0.0f;
            continue;
        }
        raise_row_max(st, r0 + r, acc[r], d, old_max, new_max);
        __m256 mv = _mm256_set1_ps(new_max), sum = _mm256_setzero_ps();
        int j = lo[r];
        for (; j + 8 <= hi[r]; j += 8) {
            __m256 p = qattn_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(sr + j), mv));
            sum = _mm256_add_ps(sum, p);
            _mm256_storeu_ps(wr + j, p);
        }
        float tail = 0.0f;
        if (j < hi[r]) {
            float buf[8] = {0}, out[8];
            int k = hi[r] - j;
            for (int i = 0; i < k; i++) buf[i] = sr[j + i] - new_max;
            _mm256_storeu_ps(out, qattn_exp2_avx2(_mm256_loadu_ps(buf)));
            for (int i = 0; i < k; i++) {
                tail += out[i];
                wr[j + i] = out[i];
            }
        }
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        st->row_sum[r0 + r] += _mm_cvtss_f32(h) + tail;
    }
    if (jc0 < jc1) {
        pv_chunk(R, true, dtype, vc, d, n, jlo, jc0, w, lo, hi, acc);
        pv_chunk(R, false, dtype, vc, d, n, jc0, jc1, w, lo, hi, acc);
        pv_chunk(R, true, dtype, vc, d, n, jc1, jhi, w, lo, hi, acc);
    } else {
        pv_chunk(R, true, dtype, vc, d, n, jlo, jhi, w, lo, hi, acc);
    }
}

#if !defined(QATTN_KV_VNNI) && !defined(QATTN_KV_AVX512)
ALWAYS_INLINE void attend_fp(int32_t dtype, const float *q, int m, int d, const void *kc, const void *vc, int n, const int32_t *lo,
                             const int32_t *hi, qattn_tile_state *st, float *scratch) {
    float *s = scratch, *w = scratch + (int64_t)4 * n;
    int r0 = 0;
    for (; r0 + 4 <= m; r0 += 4) attend_rows(4, q + (int64_t)r0 * d, d, dtype, kc, vc, n, lo + r0, hi + r0, st, r0, s, w);
    switch (m - r0) {
    case 3: attend_rows(3, q + (int64_t)r0 * d, d, dtype, kc, vc, n, lo + r0, hi + r0, st, r0, s, w); break;
    case 2: attend_rows(2, q + (int64_t)r0 * d, d, dtype, kc, vc, n, lo + r0, hi + r0, st, r0, s, w); break;
    case 1: attend_rows(1, q + (int64_t)r0 * d, d, dtype, kc, vc, n, lo + r0, hi + r0, st, r0, s, w); break;
    default: break;
    }
}
#endif

static void attend_i8(const int16_t *q16, const float *qsc, int m, int d, const int8_t *kc, const int8_t *vc, const float *ks, const float *vs,
                      const int32_t *lo, const int32_t *hi, qattn_tile_state *st, float *scratch, const qattn_kv_prefetch *pf) {
    const int64_t ldq = (d + 15) / 16 * 16;
    int r0 = 0; /* the prefetch goes with the first group of 4 rows */
    for (; r0 + 4 <= m; r0 += 4) attend_rows_i8(4, q16 + r0 * ldq, qsc + r0, d, kc, vc, ks, vs, lo + r0, hi + r0, st, r0, scratch, r0 ? NULL : pf);
    const qattn_kv_prefetch *pf1 = r0 ? NULL : pf;
    switch (m - r0) {
    case 3: attend_rows_i8(3, q16 + r0 * ldq, qsc + r0, d, kc, vc, ks, vs, lo + r0, hi + r0, st, r0, scratch, pf1); break;
    case 2: attend_rows_i8(2, q16 + r0 * ldq, qsc + r0, d, kc, vc, ks, vs, lo + r0, hi + r0, st, r0, scratch, pf1); break;
    case 1: attend_rows_i8(1, q16 + r0 * ldq, qsc + r0, d, kc, vc, ks, vs, lo + r0, hi + r0, st, r0, scratch, pf1); break;
    default: break;
    }
}

#if defined(QATTN_KV_AVX512)
/* The AVX-512 entry (kv_attend_avx512.c): INT8 with the ZMM engines, FP16/BF16 with the ZMM path. */
void qattn_kv_attend_avx512(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc,
                            const void *vc, const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st,
                            float *scratch, const qattn_kv_prefetch *pf) {
    (void)n;
    if (dtype != QATTN_DTYPE_I8) {
        if (pf) { /* FP16/BF16: the whole head up front (as the AVX2 kernel) */
            prefetch_lines(pf->k, 0, pf->bytes, pf->bytes);
            prefetch_lines(pf->v, 0, pf->bytes, pf->bytes);
        }
        attend_fp_avx512(dtype, q, m, d, kc, vc, lo, hi, st, scratch);
        return;
    }
    attend_i8(q16, qsc, m, d, kc, vc, ks, vs, lo, hi, st, scratch, pf);
}
#elif defined(QATTN_KV_VNNI)
/* The AVX-VNNI entry (kv_attend_vnni.c): INT8 with vpdpwssd; FP16/BF16 go to the AVX2 kernel. */
void qattn_kv_attend_vnni(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc,
                          const void *vc, const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st,
                          float *scratch, const qattn_kv_prefetch *pf) {
    if (dtype != QATTN_DTYPE_I8) {
        qattn_kv_attend_avx2(q, q16, qsc, m, d, dtype, kc, vc, ks, vs, n, lo, hi, st, scratch, pf);
        return;
    }
    attend_i8(q16, qsc, m, d, kc, vc, ks, vs, lo, hi, st, scratch, pf);
}
#else
void qattn_kv_attend_avx2(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc,
                          const void *vc, const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st,
                          float *scratch, const qattn_kv_prefetch *pf) {
    if (dtype != QATTN_DTYPE_I8 && pf) { /* FP16/BF16: the whole head up front (measured best for them, kv_decode.c) */
        prefetch_lines(pf->k, 0, pf->bytes, pf->bytes);
        prefetch_lines(pf->v, 0, pf->bytes, pf->bytes);
    }
    switch (dtype) {
    case QATTN_DTYPE_F16: attend_fp(QATTN_DTYPE_F16, q, m, d, kc, vc, n, lo, hi, st, scratch); break;
    case QATTN_DTYPE_BF16: attend_fp(QATTN_DTYPE_BF16, q, m, d, kc, vc, n, lo, hi, st, scratch); break;
    default: attend_i8(q16, qsc, m, d, kc, vc, ks, vs, lo, hi, st, scratch, pf); break;
    }
}
#endif
