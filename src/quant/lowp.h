/* Internals of the INT8 / FP8 paths: the INT8 micro-kernel table (scalar reference in
 * src/ref/int8_ref.c, AVX2 in src/cpu/x86/int8_avx2.c, AVX-VNNI in int8_vnni.c, AVX-512 in
 * int8_avx512.c; every slot of every table is filled; each ISA's CPU kernel table points at its
 * own), the packed tile layouts they share, the scheme configuration of the low-precision driver
 * (src/cpu/forward_lowp.c) and the FP8 emulation (kernels src/ref/fp8_ref.c, driver
 * src/cpu/forward_fp8.c). Nothing here is public. */
#ifndef QATTN_QUANT_LOWP_H
#define QATTN_QUANT_LOWP_H

#include "qattn_internal.h"

/* ---------------------------------------------------------------- packed layouts
 * A K/V tile holds n <= QATTN_I8_TILE keys, padded with zero codes to npad = round_up(n, 8).
 *   K pack (int8):  kp[(c / 4) * npad * 4 + j * 4 + c % 4] = k[j][c]   ("4 channels of 8 keys"
 *                   per 32-byte vector, the VNNI layout), c < D (D % 8 == 0).
 *   V pack (int16): vp[(j / 2) * D * 2 + c * 2 + j % 2] = v[j][c]      (key pairs interleaved)
 *   V pack (int8):  vp8[(j / 4) * D * 4 + c * 4 + j % 4] = v[j][c]     ("4 keys of 8 channels" per
 *                   32-byte vector, the vpdpbusd layout; kernel pv_acc8)
 *   P codes (int16): pc[r * npad + j], 0 <= code <= 255, zero for masked and padded keys.
 *   Q codes (int8): q[r * D + c], codes in [-127, 127] (packers turn -128 into -127).
 * Every code in a pack is in [-127, 127] (K, V, Q) or [0, 255] (P). */
#define QATTN_I8_TILE 64

/* S[r * npad + j] = sum_c q[r][c] * k[j][c]   (exact int32; |S| <= 256 * 127 * 127). */
typedef void (*qattn_i8_qk_fn)(const int8_t *q, int m, int d, const int8_t *kpack, int npad, int32_t *s);
/* O[r * d + c] = sum_j pc[r][j] * v[j][c]      (exact int32; |O| <= 64 * 255 * 127). */
/* sf[r * npad + j] = clamp((float)S[r * npad + j] * sq[r] * sk[j], -FLT_MAX, FLT_MAX). */
typedef void (*qattn_i8_scores_fn)(const int32_t *s, int m, int npad, const float *sq, const float *sk, float *sf);
/* One row: for lo <= j < hi, e = exp2(sf[j] - ref) (qattn_exp2_poly), code = rint(e * mult);
 * outside [lo, hi) code = 0, e = 0, for j < npad. Writes codes (if codes != NULL) or e into pf
 * (if pf != NULL), *code_sum = sum of codes, *e_sum = sum of e in the fixed 8-lane order
 * (lane j % 8, lanes combined ((0+1)+(2+3))+((4+5)+(6+7))). */
typedef void (*qattn_i8_softmax_fn)(const float *sf, int lo, int hi, int npad, float ref, float mult, int16_t *codes,
                                    float *pf, int32_t *code_sum, float *e_sum);
/* O[r * d + c] = sum_j p[r * npad + j] * v[j * d + c], j ascending, fused multiply-add. */
typedef void (*qattn_f32_pv_fn)(const float *p, int m, int npad, const float *v, int d, float *o);

/* As qk with 16-bit operands (the driver's layout: pmaddwd forms exact pair sums, no
 * saturation bound to keep): q[r * d + c] int16, K pack kp[(c / 2) * npad * 2 + j * 2 + c % 2]
 * int16 ("2 channels of 8 keys" per 32-byte vector). Same exact int32 S. */
typedef void (*qattn_i16_qk_fn)(const int16_t *q, int m, int d, const int16_t *kpack, int npad, int32_t *s);
/* Row max of sf[lo .. hi) (lo < hi), returned plus 0.0f (so a -0 max reads +0 on every ISA). */
typedef float (*qattn_i8_rowmax_fn)(const float *sf, int lo, int hi);
/* The default scheme's P row (P_U8_VSCALED), for j < npad: e_j = exp2(sf[j] - ref) (qattn_exp2_poly)
 * for lo <= j < hi, else 0; w_j = e_j * svk[j]; *w_max = max(0, max w_j); inv = w_max > 0 ?
 * 255 / w_max : 0; codes[j] = rint(w_j * inv) (0 outside [lo, hi)); *e_sum = sum of e in the
 * softmax kernel's fixed 8-lane order. */
typedef void (*qattn_i8_softmax_vs_fn)(const float *sf, int lo, int hi, int npad, float ref, const float *svk, int16_t *codes,
                                       float *e_sum, float *w_max);
/* For each row r < m with lo[r] < hi[r]: acc[r * ld + c] = acc[r * ld + c] * alpha[r] +
 * (fac[r] * sv[c]) * (float)PV[r][c], PV[r][c] = sum_j pc[r][j] * v[j][c] exactly (as the pv kernel);
 * rows with lo[r] >= hi[r] untouched. Three roundings, in this order, no fusion. */
typedef void (*qattn_i8_pv_acc_fn)(const int16_t *pc, int m, int npad, const int16_t *vpack, int d, const float *alpha,
                                   const float *fac, const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld);
/* Quantize one row: dst[c] = clamp(nearbyint(y[c] * inv), -127, 127) (the exact float product,
 * round to nearest even), c < d. */
typedef void (*qattn_i8_quant_row_fn)(const float *y, int d, float inv, int8_t *dst);
/* pv_acc with the 8-bit V pack vp8 (layout above; npad % 4 == 0, npad <= QATTN_I8_TILE): the same
 * exact PV, the same float update, so the same result bit for bit. */
typedef void (*qattn_i8_pv_acc8_fn)(const int16_t *pc, int m, int npad, const int8_t *vpack8, int d, const float *alpha,
                                    const float *fac, const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld);

/* The whole default-scheme (P_U8_VSCALED) P step of a tile, fused: for each row r < m, from the
 * exact S (int32, stride npad): sf = scores(S) (the scores kernel's clamp((float)S * sq[r] * sk[j])),
 * mb = rowmax(sf, lo[r], hi[r]), then the driver's state update (m_new, alpha = qattn_exp2f(m_old - m_new)
 * or 0, beta = qattn_exp2f(mb - m_new)) and softmax_vs(sf, ..., ref = mb), row_sum = row_sum * alpha +
 * beta * e_sum, row_max = m_new, fac = beta * w_max / 255; rows with lo >= hi get zero codes,
 * alpha 1, fac 0 and keep their state. Bit for bit the unfused sequence (scores, rowmax,
 * softmax_vs and those float steps), which is what the reference kernel runs; the driver calls
 * it for every tile of the default scheme.
 * codes: int16 [m][npad], or u8 [m][npad] when u8 is non-zero (codes are in [0, 255] either way). */
typedef void (*qattn_i8_p_vs_tile_fn)(const int32_t *s, int m, int npad, const float *sq, const float *sk, const int32_t *lo,
                                      const int32_t *hi, const float *svk, float *row_max, float *row_sum, void *codes, int u8,
                                      float *alpha, float *fac);
/* pv_acc8 with u8 P codes pc8[r * npad + j]: the same exact PV and float update. The codes of row r
 * outside [lo[r], hi[r]) are 0 (as p_vs_tile writes them), so a kernel may leave those keys out. */
typedef void (*qattn_i8_pv_acc8u_fn)(const uint8_t *pc8, int m, int npad, const int8_t *vpack8, int d, const float *alpha,
                                     const float *fac, const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld);

/* The INT8 kernel table of an ISA, reached through the ISA's CPU kernel table (ctx->kernels->int8,
 * qattn_internal.h), so callers never pick it by ISA. Every slot is filled (tests/test_int8.c checks
 * it): where an ISA has no vector version of a kernel, the slot points at the reference one
 * (src/ref/int8_ref.c), so callers never test for NULL. */
typedef struct qattn_int8_kernels {
    const char *name;
    qattn_i8_qk_fn qk;
    qattn_i8_scores_fn scores;
    qattn_i8_softmax_fn softmax;
    qattn_f32_pv_fn pv_f32;
    qattn_i8_rowmax_fn rowmax;
    qattn_i8_softmax_vs_fn softmax_vs;
    qattn_i8_pv_acc_fn pv_acc;
    qattn_i8_quant_row_fn quant_row;
    qattn_i16_qk_fn qk16;
    qattn_i8_pv_acc8_fn pv_acc8;
    /* Which products and packs the driver uses (a choice of data layout, not a missing kernel):
     * 0 = 16-bit packs, qk16 + pv_acc, int16 P codes (AVX2: pmaddwd is the fast multiply); 1 = 8-bit
     * Q codes, K pack and vp8, qk + pv_acc8 / pv_acc8u with u8 P codes (AVX-VNNI: vpdpbusd). Same result. */
    int32_t pack8;
    qattn_i8_p_vs_tile_fn p_vs_tile; /* the default scheme's P step (u8 codes when pack8) */
    qattn_i8_pv_acc8u_fn pv_acc8u;   /* after p_vs_tile's u8 codes, when pack8 */
    /* y[c] = row[c] - mu[c] (c < d, d % 8 == 0), returns max |y[c]| (exact; +0 for all zeros). */
    float (*center_amax)(const float *row, const float *mu, int d, float *y);
    /* The quantizer's other per-row passes (called by src/quant/quant.c), each bit for bit the
     * scalar definition (the reference kernels): */
    /* y[c] = row[c] * f[c] - mu[c] (two roundings, no fusion), returns max |y[c]| (d % 8 == 0). */
    float (*scale_center_amax)(const float *row, const float *f, const float *mu, int d, float *y);
    /* qattn_rotate_row (below): y *= pre, the same butterfly additions, returns max |y|. */
    float (*rotate_row)(float *y, int d, float pre);
    /* One row of the statistics pass, with its finiteness check: returns non-zero when the row holds
     * an Inf or NaN (then acc, mn and mx hold unspecified values: the caller reports the row and
     * drops them); else returns 0 after acc[c] += (double)row[c] if acc; mn[c] = row[c] < mn[c] ?
     * row[c] : mn[c] and mx[c] = row[c] > mx[c] ? row[c] : mx[c] if mn (d % 8 == 0). */
    int (*stats_row)(const float *row, int d, double *acc, float *mn, float *mx);
    /* The driver's LSE corrections (K smoothing): for r < m, dot[r] = sum over c < d, ascending, of
     * (float)code * mk[c], code = base[off[r] + c] with -128 read as -127; each product rounded,
     * then added to the running float sum (from 0.0f), no fusion (d % 8 == 0, off[r] >= 0). */
    void (*lse_dots)(const int8_t *base, const int32_t *off, int m, int d, const float *mk, float *dot);
    /* The 8-bit packs (pack8 tables) of a tile from n key rows src + j * stride (n <= npad <= 64,
     * npad % 8 == 0, d % 8 == 0), codes -128 read as -127, keys n .. npad - 1 zero:
     *   pack8_k: kp[(c / 4) * npad * 4 + j * 4 + c % 4] = code(j, c)   (qk's K pack)
     *   pack8_v: vp[(j / 4) * d * 4 + c * 4 + j % 4] = code(j, c)      (pv_acc8's vp8) */
    void (*pack8_k)(const int8_t *src, int64_t stride, int n, int npad, int d, int8_t *kp);
    void (*pack8_v)(const int8_t *src, int64_t stride, int n, int npad, int d, int8_t *vp);
    /* The PER_TOKEN code pass of one row (d % 8 == 0, d <= 256), fused: y = scale_center_amax(row, f,
     * mu), or center_amax(row, mu) when f is NULL; then, when pre > 0, amax = rotate_row(y, d, pre);
     * amax the returned max |y| of the last step; dst = quant_row(y, amax > 0 ? cmax / amax : 0);
     * *sq = the sum of the squared codes (exact int32) when sq is not NULL. Returns amax. Bit for bit
     * that sequence of the reference slots (qattn_i8_tok_codes_compose, the reference). */
    float (*tok_codes)(const float *row, const float *f, const float *mu, int d, float pre, float cmax, int8_t *dst, int32_t *sq);
    /* The driver's finalize of one FP32 output row: dst[c] = acc[c] * inv + mv[c], c < d (a product
     * then a sum: two roundings, no fusion; d % 8 == 0). */
    void (*out_row)(const float *acc, float inv, const float *mv, int d, float *dst);
    /* Q codes of m rows into the 8-bit rows of qk (pack8 tables): row r at src + (r / group) * ss +
     * (r % group) * hs (a unit's rows: positions, each with its group's heads) to dst[r * d + c], -128
     * read as -127 (d % 8 == 0). */
    void (*pack8_q)(const int8_t *src, int64_t ss, int64_t hs, int group, int m, int d, int8_t *dst);
} qattn_int8_kernels;

/* A stored code as the kernels read it: -128 (a caller's pre-quantized tensor may hold it) as -127, so
 * that codes stay symmetric. */
static inline int8_t qattn_i8_clamp_code(int8_t q) { return q == -128 ? (int8_t)-127 : q; }

/* Whether a row (d % 8 == 0) holds an Inf or NaN: x * 0 is NaN exactly for those, and a sum with a NaN
 * term is NaN in any order, so 8 independent lanes (vectorisable) decide it. */
static inline int qattn_row_nonfinite(const float *row, int64_t d) {
    float z[8] = {0};
    for (int64_t c = 0; c < d; c += 8)
        for (int k = 0; k < 8; k++) z[k] += row[c + k] * 0.0f;
    float t = ((z[0] + z[1]) + (z[2] + z[3])) + ((z[4] + z[5]) + (z[6] + z[7]));
    return t != t;
}

/* tok_codes as the sequence of its steps, given the row kernels of one table (the reference, and the
 * tables that have no fused version; inlined, so the calls are direct). */
static inline float qattn_i8_tok_codes_compose(float (*center_amax)(const float *, const float *, int, float *),
                                               float (*scale_center_amax)(const float *, const float *, const float *, int, float *),
                                               float (*rotate_row)(float *, int, float),
                                               void (*quant_row)(const float *, int, float, int8_t *), const float *row, const float *f,
                                               const float *mu, int d, float pre, float cmax, int8_t *dst, int32_t *sq) {
    float y[256];
    float amax = f ? scale_center_amax(row, f, mu, d, y) : center_amax(row, mu, d, y);
    if (pre > 0.0f) amax = rotate_row(y, d, pre);
    quant_row(y, d, amax > 0.0f ? cmax / amax : 0.0f, dst);
    if (sq) {
        int32_t s = 0;
        for (int c = 0; c < d; c++) s += (int32_t)dst[c] * dst[c];
        *sq = s;
    }
    return amax;
}

extern const qattn_int8_kernels qattn_int8_kernels_ref;
/* Reference kernels exported for the ISA tables' slots that have no vector version (and
 * qattn_rotate_row, below, the reference rotate_row). */
void qattn_i8_pv_acc8_ref(const int16_t *pc, int m, int npad, const int8_t *vpack8, int d, const float *alpha, const float *fac,
                          const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld);
void qattn_i8_pv_acc8u_ref(const uint8_t *pc8, int m, int npad, const int8_t *vpack8, int d, const float *alpha, const float *fac,
                           const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld);
float qattn_i8_scale_center_amax_ref(const float *row, const float *f, const float *mu, int d, float *y);
int qattn_i8_stats_row_ref(const float *row, int d, double *acc, float *mn, float *mx);
void qattn_i8_lse_dots_ref(const int8_t *base, const int32_t *off, int m, int d, const float *mk, float *dot);
void qattn_i8_pack8_k_ref(const int8_t *src, int64_t stride, int n, int npad, int d, int8_t *kp);
void qattn_i8_pack8_v_ref(const int8_t *src, int64_t stride, int n, int npad, int d, int8_t *vp);
void qattn_i8_out_row_ref(const float *acc, float inv, const float *mv, int d, float *dst);
void qattn_i8_pack8_q_ref(const int8_t *src, int64_t ss, int64_t hs, int group, int m, int d, int8_t *dst);
#if defined(QATTN_HAVE_X86)
extern const qattn_int8_kernels qattn_int8_kernels_avx2;
extern const qattn_int8_kernels qattn_int8_kernels_avxvnni;
extern const qattn_int8_kernels qattn_int8_kernels_avx512; /* src/cpu/x86/int8_avx512.c */
/* The AVX2 kernels (int8_avx2.c), exported so that the AVX-VNNI table points at them directly. */
void qattn_i8_qk_ref(const int8_t *q, int m, int d, const int8_t *kpack, int npad, int32_t *s);
void qattn_i8_scores_avx2(const int32_t *s, int m, int npad, const float *sq, const float *sk, float *sf);
void qattn_i8_softmax_avx2(const float *sf, int lo, int hi, int npad, float ref, float mult, int16_t *codes, float *pf,
                           int32_t *code_sum, float *e_sum);
void qattn_i8_pv_f32_avx2(const float *p, int m, int npad, const float *v, int d, float *o);
void qattn_i8_qk16_avx2(const int16_t *q, int m, int d, const int16_t *kpack, int npad, int32_t *s);
float qattn_i8_rowmax_avx2(const float *sf, int lo, int hi);
void qattn_i8_softmax_vs_avx2(const float *sf, int lo, int hi, int npad, float ref, const float *svk, int16_t *codes, float *e_sum,
                              float *w_max);
void qattn_i8_pv_acc_avx2(const int16_t *pc, int m, int npad, const int16_t *vpack, int d, const float *alpha, const float *fac,
                          const float *sv, const int32_t *lo, const int32_t *hi, float *acc, int64_t ld);
void qattn_i8_quant_row_avx2(const float *y, int d, float inv, int8_t *dst);
float qattn_i8_center_amax_avx2(const float *row, const float *mu, int d, float *y);
float qattn_i8_tok_codes_avx2(const float *row, const float *f, const float *mu, int d, float pre, float cmax, int8_t *dst, int32_t *sq);
void qattn_i8_p_vs_tile_avx2(const int32_t *s, int m, int npad, const float *sq, const float *sk, const int32_t *lo, const int32_t *hi,
                             const float *svk, float *row_max, float *row_sum, void *codes, int u8, float *alpha, float *fac);
#endif

/* exp2(x) for x <= 0 (x = -inf gives 0), the polynomial both ISAs use, so that they agree
 * bit for bit: x clamped to >= -127, n = rint(x), f = x - n in [-0.5, 0.5], 2^f by a degree-6
 * Taylor polynomial in Horner form with fused multiply-adds (relative error < 2e-7), times 2^n
 * built in the exponent bits (2^n = 0 below n = -126). */
static inline float qattn_exp2_poly(float x) {
    if (!(x >= -127.0f)) x = -127.0f; /* also -inf */
    float n = nearbyintf(x);
    float f = x - n;
    float p = 1.5252733804059841e-05f;
    p = fmaf(p, f, 1.5403530393381610e-04f);
    p = fmaf(p, f, 1.3333558146428443e-03f);
    p = fmaf(p, f, 9.6181291076284772e-03f);
    p = fmaf(p, f, 5.5504108664821580e-02f);
    p = fmaf(p, f, 2.4022650695910071e-01f);
    p = fmaf(p, f, 6.9314718055994531e-01f);
    p = fmaf(p, f, 1.0f);
    int32_t e = (int32_t)n + 127; /* 0 .. 127 */
    uint32_t bits = (uint32_t)e << 23;
    float two_n;
    memcpy(&two_n, &bits, 4);
    return p * two_n;
}

/* 2^x for x <= 0 (and -inf), the default scheme's state-update exponential (alpha and beta of the
 * fused P step, every table and the reference). It was libm's exp2f; this is the algorithm of glibc
 * 2.28+ exp2f (from ARM's optimized-routines: x = k/32 + r, 2^(k/32) from a 32-entry table scaled
 * in the exponent bits, a degree-3 polynomial in r, in double, rounded once to float), written with
 * explicit fma so that it names every rounding: equal, bit for bit, to glibc 2.36's exp2f (its FMA
 * variant) for every float x <= 0, denormals and -inf included (checked exhaustively,
 * docs/int8_results.md), and the same on every platform and ISA, whatever the libm. The AVX-512
 * kernel evaluates it on 8 lanes of double (src/cpu/x86/int8_avx512.c) with the same operations.
 * Below -149: 0 (x <= -150, -inf) or 2^-149 (-150 < x < -149), glibc's underflow results. */
extern const uint64_t qattn_exp2f_table[32]; /* src/ref/int8_ref.c: glibc's __exp2f_data.tab */
#define QATTN_EXP2F_SHIFT 0x1.8p47             /* 0x1.8p52 / 32: kd = x + shift rounds x to k/32 */
#define QATTN_EXP2F_C0 0x1.c6af84b912394p-5
#define QATTN_EXP2F_C1 0x1.ebfce50fac4f3p-3
#define QATTN_EXP2F_C2 0x1.62e42ff0c52d6p-1
static inline float qattn_exp2f(float x) {
    if (!(x > -150.0f)) return 0.0f; /* also -inf */
    if (x < -149.0f) return 0x1p-149f;
    double xd = (double)x, kd = xd + QATTN_EXP2F_SHIFT;
    uint64_t ki, t;
    memcpy(&ki, &kd, 8);
    kd -= QATTN_EXP2F_SHIFT;
    double r = xd - kd, s;
    t = qattn_exp2f_table[ki % 32] + (ki << 47);
    memcpy(&s, &t, 8);
    double z = fma(r, QATTN_EXP2F_C0, QATTN_EXP2F_C1), r2 = r * r, y = fma(r, QATTN_EXP2F_C2, 1.0);
    y = fma(z, r2, y);
    return (float)(y * s);
}

/* ---------------------------------------------------------------- scheme configuration */

/* How P is turned into integer codes. */
typedef enum qattn_p_mode {
    QATTN_P_U8_BLOCKMAX = 0, /* u8 codes x255 against the block's own row max; sum of the codes */
    QATTN_P_S8_RUNNING = 1,  /* codes x127 against the running max; sum of unquantized P (INT-FA) */
    QATTN_P_U8_RUNNING = 2,  /* u8 codes x255 against the running max; sum of the codes */
    QATTN_P_S8_BLOCKMAX = 3, /* codes x127 against the block row max; sum of the codes */
    QATTN_P_FP32 = 4,        /* P and V in FP32 (SageAttention-1 style) */
    QATTN_P_U8_VSCALED = 5,  /* u8 codes x255 of P * sv[key] (V's token scales folded into P) against
                                the block's row max of that product; sum of unquantized P */
} qattn_p_mode;

typedef struct qattn_lowp_cfg {
    int32_t q_gran, k_gran, v_gran;    /* qattn_quant_granularity */
    int32_t q_block, k_block, v_block; /* tokens per scale for PER_BLOCK */
    int32_t k_smooth, v_smooth;        /* subtract the mean over tokens */
    int32_t p_mode;                    /* qattn_p_mode */
    /* Q/K channel smoothing (PER_TOKEN Q and K only; qattn_quantize_qk_smoothed): 0 = none, else the
     * largest |exponent| of the power-of-two factors (QATTN_QK_SMOOTH_MAX_EXP for the default). */
    int32_t qk_smooth;
    /* Factors whose |exponent| is below this are set to 1 (a dead zone, for the candidates). */
    int32_t qk_smooth_min_exp;
    /* With qk_smooth: also rotate Q and K rows by the block Hadamard transform (qattn_rotate_row). */
    int32_t qk_rotate;
    /* Largest Q/K code: 0 = 127 (INT8); 7 = INT4 codes in [-7, 7] (precision INT4), held one per
     * int8 so that the INT8 kernels and driver run them unchanged. */
    int32_t qk_code_max;
    /* Residual refinement of sharp units (INT8 codes, qk_smooth only; docs/FORMAT.md section 7,
     * "Sharp units"): a (sequence, kv head) whose predicted logit noise sigma (natural-log units)
     * exceeds this gets 7 more bits of Q and K (residual codes) in its Q K^T; 0 = never. */
    float qk_refine_noise;
} qattn_lowp_cfg;

#define QATTN_QK_SMOOTH_MAX_EXP 32
/* The default threshold on the predicted logit noise (docs/FORMAT.md section 7, measured). */
#define QATTN_QK_REFINE_NOISE 0.015f

/* Residual codes of the sharp units (docs/FORMAT.md section 7): with u = y * inv the unrounded code
 * and c = rne(u) the INT8 code, r = rne(128 (u - c)), |r| <= 64, stored in the layout (strides) of
 * the codes; the driver's S is 128 Qc Kc^T + Qr Kc^T + Qc Kr^T with the scales / 128.
 * Filled by qattn_quantize_qk_smoothed (sharp, sigma, and q_res / k_res of the sharp units only),
 * read by the driver (q_res, k_res, sharp). */
typedef struct qattn_qk_refine {
    float noise;           /* threshold on sigma: a unit is sharp when sigma > noise */
    float scale;           /* the softmax scale (natural log units, qattn_effective_scale) */
    int8_t *q_res, *k_res; /* residual codes, the layouts of tq->data and tk->data */
    uint8_t *sharp;        /* [B][HK]: 1 = sharp */
    float *sigma;          /* [B][HK]: the predicted logit noise, or NULL */
} qattn_qk_refine;

/* The configuration of a named scheme (qattn_int8_scheme), src/cpu/lowp_schemes.c. */
void qattn_lowp_scheme_cfg(int32_t scheme, qattn_lowp_cfg *cfg);
/* The configuration of precision INT4 (src/cpu/lowp_int4.c, docs/FORMAT.md section 8): the default
 * scheme with 4-bit Q and K codes. */
void qattn_lowp_int4_cfg(qattn_lowp_cfg *cfg);

/* qattn_forward at precision INT8 with an explicit configuration (for measuring candidate
 * schemes: tools/qattn/accuracy.c, tests). p is validated here. */
qattn_status qattn_lowp_forward_cfg(qattn_ctx *ctx, const qattn_params *p, const qattn_lowp_cfg *cfg);

/* Static (calibrated) channel transforms: Q/K smoothing factors and K mean (qk, used when
 * cfg->qk_smooth), V mean (used when cfg->v_smooth), all [HK][D] for every sequence; NULL
 * pointers fall back to the dynamic statistics. No statistics pass for what is given. */
typedef struct qattn_lowp_static {
    const float *k_factor, *k_mean, *v_mean;
} qattn_lowp_static;
qattn_status qattn_lowp_forward_static(qattn_ctx *ctx, const qattn_params *p, const qattn_lowp_cfg *cfg, const qattn_lowp_static *stat);

/* The pre-quantized driver behind qattn_forward_quantized; p and qi validated, p_mode given.
 * v_fp: when not NULL (P_FP32 mode), V is read from it (dtype, p's v strides) instead of qi->v. */
/* rf: NULL, or the sharp units' residual codes (rf->sharp, q_res, k_res), whose K residual packs
 * need refine = true in qattn_lowp_run_bytes (and its p_mode: P_FP32's slots hold float V). */
qattn_status qattn_lowp_run_quantized(qattn_ctx *ctx, const qattn_params *p, const qattn_int8_inputs *qi, int32_t p_mode,
                                      const void *v_fp, const qattn_qk_refine *rf, void *workspace, size_t workspace_size);
size_t qattn_lowp_run_bytes(const qattn_ctx *ctx, const qattn_params *p, bool refine, int32_t p_mode);

/* ---------------------------------------------------------------- quantization internals
 * (src/quant/quant.c) */

/* Scale-array index of element (b, pos, head, c); tok = packed token index (varlen) or
 * b * L + pos. */
static inline int64_t qattn_scale_index(int32_t gran, int32_t block, int64_t b, int64_t tok, int64_t pos, int64_t head,
                                        int64_t n_heads, int64_t max_len, int64_t d, int64_t c) {
    switch (gran) {
    case QATTN_QUANT_PER_TOKEN: return tok * n_heads + head;
    case QATTN_QUANT_PER_BLOCK: {
        int64_t nblk = (max_len + block - 1) / block;
        return (b * n_heads + head) * nblk + pos / block;
    }
    case QATTN_QUANT_PER_HEAD: return b * n_heads + head;
    default: return (b * n_heads + head) * d + c;
    }
}

/* Validation shared by the public functions: which, granularity and block size. */
qattn_status qattn_quant_check_tensor(qattn_ctx *ctx, int32_t which, int32_t granularity, int32_t block_size);
/* qattn_forward_quantized's checks of its int8 inputs (p: the call's params carrying qi's data and
 * strides, validated; p_mode: the scheme's): each tensor's layout and arrays, the granularities the
 * integer products accept, finite scales and means. */
qattn_status qattn_check_int8_inputs(qattn_ctx *ctx, const qattn_params *p, const qattn_int8_inputs *qi, int32_t p_mode);
/* Quantize one tensor of p without re-validating p (threads over (sequence, head)). */
qattn_status qattn_quantize_tensor(qattn_ctx *ctx, const qattn_params *p, int32_t which, qattn_int8_tensor *t);
/* The same with codes in [-code_max, code_max] (1 <= code_max <= 127; scale = amax / code_max):
 * 127 is INT8, 7 the INT4 precision's Q and K codes (docs/FORMAT.md section 8), still one code per
 * int8. PER_TOKEN and PER_BLOCK honour code_max; PER_HEAD too; PER_CHANNEL (V only) is INT8. */
qattn_status qattn_quantize_tensor_codes(qattn_ctx *ctx, const qattn_params *p, int32_t which, qattn_int8_tensor *t, int32_t code_max);
int64_t qattn_quant_scale_count(const qattn_params *p, int32_t which, int32_t granularity, int32_t block_size);

/* Per-channel Q/K smoothing (docs/FORMAT.md section 7): factors f[g][c] = 2^e (|e| <= max_exp; 1
 * where |e| < min_exp) shared by kv head g and its query heads; Q codes hold q_c * f, K codes
 * (k_c - mu_c) / f, then (rotate) both rows H(y / n) (qattn_rotate_row) with Q's scales times n,
 * so Q K^T is unchanged; tk->mean holds mu / f (rotated likewise), so the driver's LSE correction
 * q . mean stays exact.
 * Dynamic (stat == NULL): mu and the channel ranges come from this call's Q and K (a statistics
 * pass, then one pass of codes); factors written to factor_out[(b * HK + g) * D + c] if not NULL.
 * Static (stat != NULL): stat->k_factor and stat->k_mean ([HK][D], every sequence) are used as
 * given, one pass. tq, tk: PER_TOKEN, tk->mean set. */
typedef struct qattn_qk_static {
    const float *k_factor, *k_mean; /* [HK][D] */
} qattn_qk_static;
/* code_max: the codes' range [-code_max, code_max] (127 INT8, 7 INT4), scales amax / code_max.
 * rf: NULL, or (code_max 127) the sharp-unit refinement: sigma per (b, g) from the codes and
 * scales, rf->sharp, and the residual codes of the sharp units' Q and K rows. */
qattn_status qattn_quantize_qk_smoothed(qattn_ctx *ctx, const qattn_params *p, int32_t max_exp, int32_t min_exp, int32_t rotate,
                                        int32_t code_max, const qattn_qk_static *stat, qattn_int8_tensor *tq, qattn_int8_tensor *tk,
                                        float *factor_out, const qattn_qk_refine *rf);
/* Block Hadamard rotation: every value times pre, then blocks of n = qattn_rotate_block(d) channels
 * (the largest power of two dividing d, at most 128) each transformed in place by the unnormalised
 * Walsh-Hadamard butterfly (stages len = 1, 2, 4, .., n/2; pairs (k, k + len): y[k] = a + c,
 * y[k + len] = a - c); returns max |y|. H H = n I: the default scheme rotates Q and K rows with
 * pre = 1/n (so no value grows: |H(y / n)| <= max |y|) and multiplies Q's scales by n.
 * qattn_rotate_row is the reference kernel (src/ref/int8_ref.c, the rotate_row slot of the tables
 * without a vector one). */
static inline int qattn_rotate_block(int d) {
    int n = d & -d; /* the largest power of two dividing d */
    return n > 128 ? 128 : n;
}
float qattn_rotate_row(float *y, int d, float pre);
/* The factor exponent for channel ranges qa (Q, over the group's heads) and ka (K about its mean):
 * e = ceil(ilogb(ka / qa) / 2) (round(log2(ka / qa) / 2) to within one half), 0 when either is 0
 * or not normal or the ratio is not finite, clamped to [-max_exp, max_exp], 0 when |e| < min_exp. */
int32_t qattn_qk_smooth_exp(float qa, float ka, int32_t max_exp, int32_t min_exp);
/* PER_TOKEN with t->mean given (not computed): one pass, codes of x - mean. */
qattn_status qattn_quantize_tensor_fixed_mean(qattn_ctx *ctx, const qattn_params *p, int32_t which, qattn_int8_tensor *t);

/* ---------------------------------------------------------------- FP8
 * Emulated FP8 attention: reference arithmetic in src/ref/fp8_ref.c, driver in src/cpu/forward_fp8.c. */

/* Round to FP8 E4M3 (max 448) or E5M2 (max 57344), nearest even, saturating to the largest
 * finite value; subnormals kept; NaN stays NaN. Returns the rounded value as float. */
float qattn_round_fp8_e4m3(float x);
float qattn_round_fp8_e5m2(float x);

/* One scale per tensor: x[i] = rnd(x[i] / s) * s for i < n, s = amax / maxv (maxv: the format's
 * largest finite value); x unchanged when amax is 0. */
void qattn_fp8_round_scaled(float *x, int64_t n, float amax, float maxv, float (*rnd)(float));

#define QATTN_FP8_TILE 64
/* One query row q[d] (d % 4 == 0) against one tile of 1 <= n <= QATTN_FP8_TILE keys, key jj at
 * k + jj * kv_stride and its value at v + jj * kv_stride (FP8-rounded FP32 copies): scores
 * s = (q . k) * qs (qs = scale * log2(e)), then the online softmax in base 2 on the row's state
 * (*m_io running max, -inf before the first key; *l_io running sum of the unrounded exp2(s - m);
 * acc[d] running sum of rnd(exp2(s - m)) * v, rescaled when the max grows). */
void qattn_fp8_attend_row_tile(const float *q, const float *k, const float *v, int64_t kv_stride, int64_t d, int64_t n,
                               float qs, float (*rnd)(float), float *m_io, float *l_io, float *acc);

/* Emulated FP8 attention (precision FP8_E4M3 / FP8_E5M2), p validated: the CPU driver,
 * src/cpu/forward_fp8.c, called by qattn_cpu_forward_lowp; and its workspace bytes (the FP32 copies
 * of Q, K, V and the units' hand-out order). */
qattn_status qattn_cpu_forward_fp8(qattn_ctx *ctx, const qattn_params *p);
size_t qattn_cpu_fp8_workspace_bytes(const qattn_params *p);

#endif
