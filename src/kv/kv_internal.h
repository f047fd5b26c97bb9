/* Internals of the paged KV cache (src/kv/): the cache layout, shared by the cache operations,
 * the decode driver and the decode kernels (reference here, AVX2 in src/cpu/x86/kv_*.c).
 * The layout is pointer-free apart from the arena base: a CUDA backend can hold the same arena
 * and int32 block table in device memory and address blocks the same way. */
#ifndef QATTN_KV_INTERNAL_H
#define QATTN_KV_INTERNAL_H

#include "qattn_internal.h"

/* Physical block layout (block_bytes bytes, 64-byte aligned pieces):
 *   K codes [HK][block_size][D]   (uint16 FP16/BF16, or int8)
 *   V codes [HK][block_size][D]
 *   INT8 only: K scales [HK][block_size] float, V scales [HK][block_size] float
 * so the tokens of one (block, kv head) are contiguous: a decode unit streams them once. */
struct qattn_kv_cache {
    int32_t n_kv_heads, head_dim, block_size, dtype, max_seqs;
    int32_t elem_bytes;      /* 2 (FP16/BF16) or 1 (INT8) */
    int64_t n_blocks, max_blocks_per_seq;
    int64_t head_bytes;      /* block_size * D * elem_bytes: one head's codes in one block */
    int64_t v_offset;        /* byte offset of V codes in a block */
    int64_t ks_offset;       /* byte offset of K scales (INT8), else 0 */
    int64_t vs_offset;       /* byte offset of V scales (INT8), else 0 */
    int64_t block_bytes;     /* stride between physical blocks */
    uint8_t *arena;          /* n_blocks * block_bytes */
    int32_t *block_table;    /* [max_seqs][max_blocks_per_seq] physical ids, -1 unused */
    int64_t *seq_len;        /* [max_seqs] tokens held */
    int32_t *refcount;       /* [n_blocks] sequences referencing each block */
    int32_t *free_stack;     /* [n_blocks]; free_stack[0..n_free) are free, the top is used next */
    int64_t n_free;
    int64_t bytes_total;
    /* INT8: the channel transforms, [5][HK][D] floats at the arena's tail (arena + n_blocks *
     * block_bytes, so a byte copy of the arena carries them to a device): f, mu_k, mu_v, mu_k / f,
     * H(mu_k / f / n) (the codes' domain, src/quant/lowp.h). K rows are stored as codes of
     * H((k / f - mu_k / f) / n), V rows of v - mu_v; decode turns q into H(q f / n) with its int16
     * scale times n. Factors 1 and means 0 (the rotation alone) until qattn_kv_cache_set_calibration.
     * NULL for FP16/BF16. */
    float *calib;
};

/* Bytes of the transforms at the arena's tail: 5 HK D floats for INT8, else 0. */
static inline int64_t qattn_kv_transform_bytes(const qattn_kv_cache *c) {
    return c->dtype == QATTN_DTYPE_I8 ? 5 * (int64_t)c->n_kv_heads * c->head_dim * (int64_t)sizeof(float) : 0;
}

/* The transform arrays of an INT8 cache. */
enum { QATTN_KV_CAL_F = 0, QATTN_KV_CAL_MUK = 1, QATTN_KV_CAL_MUV = 2, QATTN_KV_CAL_MUKF = 3, QATTN_KV_CAL_MUKR = 4 };
static inline const float *qattn_kv_cal(const qattn_kv_cache *c, int which, int g) {
    return c->calib + ((int64_t)which * c->n_kv_heads + g) * c->head_dim;
}

/* The cache's shape for qattn_validate_decode (src/core/validate.h), fn naming the decode; the
 * caller adds its own limits (seqlen_q, head dims, overlap check). */
static inline qattn_decode_limits qattn_kv_decode_limits(const qattn_kv_cache *c, const char *fn) {
    qattn_decode_limits lim;
    memset(&lim, 0, sizeof lim);
    lim.fn = fn;
    lim.n_kv_heads = c->n_kv_heads;
    lim.head_dim = c->head_dim;
    lim.max_seqs = c->max_seqs;
    lim.seq_len = c->seq_len;
    return lim;
}

static inline uint8_t *qattn_kv_block(const qattn_kv_cache *c, int32_t phys) {
    return c->arena + (int64_t)phys * c->block_bytes;
}

/* The decode kernel, qattn_kv_attend_fn (qattn_internal.h; the kv_attend slot of each ISA's
 * kernel table): update the online-softmax state of m query rows with n consecutive tokens of
 * one kv head held in one cache block.
 *   q:      [m][d] FP32, already multiplied by scale*log2(e)
 *   q16, qsc: INT8 cache only (else NULL): q as int16 codes [m][ldq], ldq = d rounded up to 16
 *           (the pad is zero), with one scale per row,
 *           q ~= qsc[r] * q16 (symmetric, max |q16| = 32767; qsc NaN for a non-finite row)
 *   kc, vc: codes [n][d]: uint16 FP16/BF16 or int8, by dtype (QATTN_DTYPE_F16/BF16/I8)
 *   ks, vs: INT8 per-token scales [n] (NULL otherwise); the value is scale * code
 *   lo[r], hi[r]: tokens row r sees, 0 <= lo <= hi <= n; others are skipped (never times 0)
 *   scratch: at least QATTN_KV_SCRATCH_FLOATS(m, n) floats
 * FP16/BF16 (reference semantics, src/kv/kv_attend_ref.c): s_j = sum_c q[c]*v(k[c]) in FP32;
 * rescale only when the max grows; p_j = exp2(s_j - max); acc += p_j * v_j.
 * INT8: integer products, exact in int32 in every implementation:
 *   s_j = ((float)sum_c q16[c]*k8[c] * qsc) * ks_j
 *   w_j = p_j * vs_j;  W = max_j w_j over the row's tokens;  w16_j = rint(w_j * 32767 / W)
 *   acc[c] += (float)(sum_j w16_j * v8_j[c]) * (W / 32767)   (int32 sums over <= 256 tokens)
 * so the only approximations beyond the stored codes are q and the softmax weights held to
 * 16 bits (relative error ~2^-16, far below the INT8 codes' own). */
/* pf (may be NULL): regions of the next cache block to software-prefetch during the call, one kv
 * head's K codes and V codes (bytes each). A hint: the SIMD kernels spread the prefetches over
 * their compute loops (INT8) or issue them up front (FP16/BF16), so memory traffic overlaps the
 * arithmetic; the reference issues them up front. */
struct qattn_kv_prefetch {
    const uint8_t *k, *v;
    int64_t bytes;
};
#define QATTN_KV_SCRATCH_FLOATS(m, n) ((int64_t)3 * ((m) > 4 ? (m) : 4) * (n) + 64)

#if defined(QATTN_HAVE_X86)
void qattn_kv_attend_avx2(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc,
                          const void *vc, const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st,
                          float *scratch, const qattn_kv_prefetch *pf);
/* AVX-VNNI (src/cpu/x86/kv_attend_vnni.c): INT8 via vpdpwssd, bitwise equal to the AVX2 kernel;
 * other dtypes forward to the AVX2 kernel. The AVX-VNNI table's entry. */
void qattn_kv_attend_vnni(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc,
                          const void *vc, const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st,
                          float *scratch, const qattn_kv_prefetch *pf);
/* AVX-512 (src/cpu/x86/kv_attend_avx512.c): INT8 via vpdpwssd on ZMM, bitwise equal to the AVX2
 * kernel; FP16/BF16 on ZMM. The AVX-512 table's entry. */
void qattn_kv_attend_avx512(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc,
                            const void *vc, const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st,
                            float *scratch, const qattn_kv_prefetch *pf);
#endif

/* q rows to int16 codes with one scale per row (see above); d values. */
void qattn_kv_quantize_q16(const float *q, int d, int16_t *q16, float *qsc);

/* Symmetric per-token INT8 quantization of d values: scale = max|x|/127, code = rint(x/scale)
 * clamped to [-127, 127] (0 scale and 0 codes for an all-zero row). Returns the scale. */
float qattn_kv_quantize_row(const float *x, int d, int8_t *codes);

/* Rotary embedding tables (src/kv/rotary.c): cos, sin float32 [len][dim / 2]; dim even, 2..D;
 * interleaved: channel pairs (2c, 2c+1), else (c, c + dim/2). Rule: include/qattn.h,
 * qattn_kvcache_params. */
typedef struct qattn_rotary {
    const float *cos, *sin;
    int64_t len;
    int32_t dim, interleaved;
} qattn_rotary;

/* Checks a rotary description for rows of head_dim values; messages start with fn. */
qattn_status qattn_rotary_check(qattn_ctx *ctx, const char *fn, const qattn_rotary *r, int32_t head_dim);

/* QATTN_ERR_INVALID_ARGUMENT naming `what` when positions first .. first + n - 1 (n >= 1) do not
 * all lie in the table (first < 0 or first + n > len). */
qattn_status qattn_rotary_check_positions(qattn_ctx *ctx, const char *fn, const qattn_rotary *r, const char *what, int64_t first, int64_t n);

/* Rotates the first r->dim values of row x at table row pos (checked by the caller), each pair in
 * double, rounded once to float. */
void qattn_rotary_row(const qattn_rotary *r, int64_t pos, float *x);

#endif
