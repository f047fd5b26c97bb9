/* qattn internals shared by api.c and the backends: the core (context, error reporting,
 * allocation, CPU features, the validators: the headers of src/core, included here), scalar conversions, the mask and sequence geometry, and the CPU kernel table.
 * Nothing here is public; nothing here exits or aborts. */
#ifndef QATTN_INTERNAL_H
#define QATTN_INTERNAL_H

#include "qattn.h"

#include "core/context.h"
#include "core/checked.h"
#include "core/cpu_features.h"
#include "core/extent.h"
#include "core/validate.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* A hint to fetch every 64-byte line that [p, p + bytes) touches, where the compiler has the builtin;
 * no effect on any result. locality as __builtin_prefetch's: 3 into L1 (the KV decode's next block),
 * 2 into L2 (the quantizer's streams, measured a little faster than L1, which otherwise stall on the
 * L1 fill buffers; also lines about to be stored to). A macro, not a function: GCC finds a function
 * whose only statements are prefetches free of side effects and deletes its calls. */
#if defined(__GNUC__)
#define QATTN_PREFETCH(p, bytes, locality)                                                          \
    do {                                                                                            \
        const char *pf_c_ = (const char *)(p), *pf_e_ = pf_c_ + (bytes);                            \
        for (pf_c_ -= (uintptr_t)pf_c_ & 63; pf_c_ < pf_e_; pf_c_ += 64) __builtin_prefetch(pf_c_, 0, locality); \
    } while (0)
#else
#define QATTN_PREFETCH(p, bytes, locality) ((void)(p), (void)(bytes))
#endif

/* ---------------------------------------------------------------- CPU kernel table */

/* Partial online-softmax state of m query rows over some range of keys, in base-2 units:
 * row_max[r] = max of log2e*scale*s over the keys seen so far (-inf if none),
 * row_sum[r] = sum of exp2(score - row_max[r]), acc[r*ld + d] = sum of exp2(score - row_max) * v.
 * Merging two states of the same rows over disjoint key ranges is exact (qattn_state_merge). */
typedef struct qattn_tile_state {
    float *row_max; /* [m] */
    float *row_sum; /* [m] */
    float *acc;     /* [m][ld_acc] */
    int64_t ld_acc;
} qattn_tile_state;

/* Score modifiers of one tile (softcap and ALiBi, qattn_params), in the kernels' base-2 units
 * (a score is log2(e) * scale * q.k). Applied once per score, after Q K^T and before the row max:
 *   s = cap * tanh(s / cap)                 when cap > 0   (cap = softcap * log2(e))
 *   s = s - slope[r] * |diag[r] - j|        when slope != NULL (slope = ALiBi slope * log2(e))
 * diag[r]: the tile-local key index on row r's diagonal, i + Lk - Lq - t0 (it may lie outside the
 * tile); float, so distances are exact below 2^24 keys. The LSE of these scores is the LSE the
 * header promises. NULL (or cap 0 and slope NULL) = no modifier. */
typedef struct qattn_score_mod {
    float cap;          /* 0 = no softcap */
    float inv_cap;      /* 1 / cap */
    const float *slope; /* [m] or NULL */
    const float *diag;  /* [m], with slope */
} qattn_score_mod;

/* tanh for FP32: Eigen's odd rational approximation (degree 13 / 6 in x) on [-7.905, 7.905],
 * where tanh rounds to +-1 beyond; x itself below 4e-4. Relative error at most 2.9e-7 (5 ulp)
 * against FP64 tanh over all floats in [-20, 20] (checked exhaustively when written); NaN stays
 * NaN, +-inf gives +-1. Written with fmaf so that a vector port in the same order gives the same
 * bits; inline so that kernel files compiled with -mfma get vfmadd. */
static inline float qattn_tanhf(float x) {
    const float clamp = 7.90531110763549805f;
    float xc = x < -clamp ? -clamp : (x > clamp ? clamp : x); /* NaN passes through */
    float x2 = xc * xc;
    float p = fmaf(x2, -2.76076847742355e-16f, 2.00018790482477e-13f);
    p = fmaf(p, x2, -8.60467152213735e-11f);
    p = fmaf(p, x2, 5.12229709037114e-08f);
    p = fmaf(p, x2, 1.48572235717979e-05f);
    p = fmaf(p, x2, 6.37261928875436e-04f);
    p = fmaf(p, x2, 4.89352455891786e-03f);
    float q = fmaf(x2, 1.19825839466702e-06f, 1.18534705686654e-04f);
    q = fmaf(q, x2, 2.26843463243900e-03f);
    q = fmaf(q, x2, 4.89352518554385e-03f);
    float r = p * xc / q;
    return fabsf(x) < 0.0004f ? x : r; /* a select, not a branch: the row loops stay vectorisable */
}

static inline bool qattn_score_mod_active(const qattn_score_mod *mod) { return mod && (mod->cap > 0.0f || mod->slope); }

/* The two steps of qattn_score_mod_row, for kernels that replace one with their own vector code. */
static inline void qattn_score_softcap_row(const qattn_score_mod *mod, float *s, int lo, int hi) {
    float cap = mod->cap, inv = mod->inv_cap;
    for (int j = lo; j < hi; j++) s[j] = cap * qattn_tanhf(s[j] * inv);
}

static inline void qattn_score_alibi_row(const qattn_score_mod *mod, int r, float *s, int lo, int hi) {
    float slope = mod->slope[r], diag = mod->diag[r];
    for (int j = lo; j < hi; j++) s[j] -= slope * fabsf(diag - (float)j);
}

/* Row r's scores s[lo, hi) (tile-local key indices) with mod applied in place. Kernels call it
 * once per row, only when qattn_score_mod_active: no cost without modifiers. GCC vectorises both
 * loops for AVX-512 (masked lanes); for AVX2 it leaves the tanh loop scalar, so the AVX2 kernel has
 * its own (attend_tile_avx2.c). */
static inline void qattn_score_mod_row(const qattn_score_mod *mod, int r, float *s, int lo, int hi) {
    if (mod->cap > 0.0f) qattn_score_softcap_row(mod, s, lo, hi);
    if (mod->slope) qattn_score_alibi_row(mod, r, s, lo, hi);
}

/* Update the state of m query rows with n keys of one K/V tile.
 *   q:   [m][ldq] FP32, already multiplied by scale*log2(e)
 *   k,v: [n][ldkv] FP32 (rounded to the call's precision by the packer)
 *   lo[r], hi[r]: the keys of this tile row r may see, 0 <= lo <= hi <= n (an interval: every
 *                 mask qattn supports is one). Keys outside it are skipped, not multiplied by 0,
 *                 so NaN/Inf in a masked key never reaches the row.
 *   scratch: at least m*n floats.
 *   mod: softcap / ALiBi of the tile's rows (qattn_score_mod), or NULL.
 * Rules (docs/ARCHITECTURE.md "Numerics"): rescale only when the max grows; a row with no visible key so far keeps
 * row_max -inf, row_sum 0, acc 0. */
typedef void (*qattn_attend_tile_fn)(const float *q, int64_t ldq, int m, int d,
                                     const float *k, const float *v, int64_t ldkv, int n,
                                     const int32_t *lo, const int32_t *hi, const qattn_score_mod *mod,
                                     qattn_tile_state *st, float *scratch);

/* Pack rows of a Q/K/V tensor to FP32 rounded to the call's precision, times mul:
 *   dst[r*ldd + c] = round_to(precision, load(src, dtype, idx0 + r*src_stride + c)) * mul
 * for r < rows, c < d (mul = 1 for K/V: exact, NaN stays NaN; scale*log2e for Q). */
typedef void (*qattn_pack_rows_fn)(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows,
                                   int d, float mul, float *dst, int64_t ldd);

/* Update the state of m query rows with n tokens of one kv head held in one KV-cache block: the
 * decode's kernel. Its contract, next to the cache layout it reads: src/kv/kv_internal.h. */
typedef struct qattn_kv_prefetch qattn_kv_prefetch;
typedef void (*qattn_kv_attend_fn)(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc,
                                   const void *vc, const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi,
                                   qattn_tile_state *st, float *scratch, const qattn_kv_prefetch *pf);

/* The INT8 micro-kernels of an ISA: their own table (src/quant/lowp.h), held by the CPU table. */
struct qattn_int8_kernels;

/* One table per ISA, the context's ctx->kernels: every kernel a CPU driver calls, so that no driver
 * picks kernels by ISA. Every slot starts as the reference entry, so no slot is NULL. */
typedef struct qattn_cpu_kernels {
    const char *name;
    qattn_attend_tile_fn attend_tile_f32;
    qattn_pack_rows_fn pack_rows_f32;
    qattn_kv_attend_fn kv_attend; /* qattn_kv_decode's kernel */
    /* The ISA's INT8 table (the INT8/INT4 driver's kernels and the quantizer's row passes; every
     * slot of it filled too): qattn_int8_kernels_ref, _avx2, _avxvnni or _avx512. */
    const struct qattn_int8_kernels *int8;
} qattn_cpu_kernels;

extern const qattn_cpu_kernels qattn_kernels_ref;
/* The reference entries, for ISA tables to start from. */
void qattn_attend_tile_f32_ref(const float *q, int64_t ldq, int m, int d, const float *k, const float *v, int64_t ldkv, int n,
                               const int32_t *lo, const int32_t *hi, const qattn_score_mod *mod, qattn_tile_state *st, float *scratch);
void qattn_pack_rows_f32_ref(const void *src, int32_t dtype, int32_t precision, int64_t idx0, int64_t src_stride, int rows, int d,
                             float mul, float *dst, int64_t ldd);
void qattn_kv_attend_ref(const float *q, const int16_t *q16, const float *qsc, int m, int d, int32_t dtype, const void *kc, const void *vc,
                         const float *ks, const float *vs, int n, const int32_t *lo, const int32_t *hi, qattn_tile_state *st, float *scratch,
                         const qattn_kv_prefetch *pf); /* src/kv/kv_attend_ref.c */
#if defined(QATTN_HAVE_X86)
extern const qattn_cpu_kernels qattn_kernels_avx2;
extern const qattn_cpu_kernels qattn_kernels_avxvnni; /* the AVX2 FP entries and the AVX-VNNI decode kernel */
extern const qattn_cpu_kernels qattn_kernels_avx512;
#endif
/* The table of a resolved ISA (ref when the build has no x86 kernels), src/cpu/kernel_tables.c. */
const qattn_cpu_kernels *qattn_cpu_kernel_table(int32_t isa);

/* Whether the ISA runs the AVX2 kernels (AVX-VNNI is AVX2 plus vpdpbusd, AVX-512 a superset of
 * both except the VEX vpdpbusd: every AVX2 kernel applies to both). */
static inline bool qattn_isa_has_avx2(int32_t isa) { return isa == QATTN_ISA_AVX2 || isa == QATTN_ISA_AVXVNNI || isa == QATTN_ISA_AVX512; }

/* ---------------------------------------------------------------- validation */

/* The head dims qattn accepts (the CPU backend runs all of them; the CUDA backend a listed few,
 * refused by its own supports check): QATTN_HEAD_DIM_MIN .. QATTN_HEAD_DIM_MAX in steps of
 * QATTN_HEAD_DIM_STEP. The CPU kernels work on 8-float (32-byte) groups of channels, and the
 * INT8 packs on 4- and 8-channel groups, so every multiple of 8 is whole vectors or masked ones.
 * QATTN_HEAD_DIM_RANGE is the phrase every refusal message uses. */
#define QATTN_HEAD_DIM_MIN 8
#define QATTN_HEAD_DIM_MAX 256
#define QATTN_HEAD_DIM_STEP 8
#define QATTN_HEAD_DIM_RANGE "8..256 in steps of 8"
static inline bool qattn_head_dim_supported(int32_t d) {
    return d >= QATTN_HEAD_DIM_MIN && d <= QATTN_HEAD_DIM_MAX && d % QATTN_HEAD_DIM_STEP == 0;
}

/* The softmax scale p asks for (0 means 1/sqrt(D)). */
static inline float qattn_effective_scale(const qattn_params *p) {
    return p->scale != 0.0f ? p->scale : 1.0f / sqrtf((float)p->head_dim);
}

/* The effective right window (causal forces 0). */
static inline int32_t qattn_window_right(const qattn_params *p) {
    return p->causal ? 0 : p->window_right;
}

/* ---------------------------------------------------------------- geometry */

/* One sequence of the batch: element offsets of its first row in q, k, v, o, its lengths,
 * and the index of its first query row in the LSE layout. */
typedef struct qattn_seq {
    int64_t q_off, k_off, v_off, o_off;
    int64_t lq, lk;
    int64_t lse_off;    /* lse index of (head 0, row 0) of this sequence */
    int64_t lse_head_stride;
} qattn_seq;

static inline qattn_seq qattn_seq_view(const qattn_params *p, int64_t b) {
    qattn_seq s;
    if (p->cu_seqlens_q) {
        int64_t q0 = p->cu_seqlens_q[b], k0 = p->cu_seqlens_k[b];
        s.lq = p->cu_seqlens_q[b + 1] - q0;
        s.lk = p->cu_seqlens_k[b + 1] - k0;
        s.q_off = q0 * p->q_seq_stride;
        s.o_off = q0 * p->o_seq_stride;
        s.k_off = k0 * p->k_seq_stride;
        s.v_off = k0 * p->v_seq_stride;
        s.lse_off = q0;
        s.lse_head_stride = p->cu_seqlens_q[p->batch];
    } else {
        s.lq = p->seqlen_q;
        s.lk = p->seqlen_k;
        s.q_off = b * p->q_batch_stride;
        s.o_off = b * p->o_batch_stride;
        s.k_off = b * p->k_batch_stride;
        s.v_off = b * p->v_batch_stride;
        s.lse_off = b * (int64_t)p->n_heads * p->seqlen_q;
        s.lse_head_stride = p->seqlen_q;
    }
    return s;
}

/* Keys [*lo, *hi) visible to query i of a sequence with lengths lq, lk (bottom-right aligned).
 * window_left/right: -1 = unbounded. Empty when *lo == *hi. */
static inline void qattn_key_range(int64_t i, int64_t lq, int64_t lk, int32_t window_left,
                                   int32_t window_right, int64_t *lo, int64_t *hi) {
    int64_t diag = i + lk - lq;
    int64_t a = window_left < 0 ? 0 : diag - window_left;
    int64_t b = window_right < 0 ? lk : diag + window_right + 1;
    if (a < 0) a = 0;
    if (b > lk) b = lk;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}

/* ---------------------------------------------------------------- block mask (BlockBERT) */

/* Row qblock of p's block mask for sequence b and query head h: one byte per key block, nonzero
 * where the (query block, key block) pair is computed. p->block_mask must not be NULL. */
static inline const uint8_t *qattn_block_mask_row(const qattn_params *p, int64_t b, int h, int64_t qblock) {
    return p->block_mask + b * p->block_mask_batch_stride + (int64_t)h * p->block_mask_head_stride + qblock * p->block_mask_row_stride;
}

/* Whether key j may be seen by query i (positions in sequence b) of query head h as far as the
 * block mask goes (true without one); the window/causal mask applies on top. */
static inline bool qattn_block_mask_allows(const qattn_params *p, int64_t b, int h, int64_t i, int64_t j) {
    return !p->block_mask || qattn_block_mask_row(p, b, h, i / p->block_mask_q)[j / p->block_mask_k] != 0;
}

/* ---------------------------------------------------------------- scalar conversions */

static inline float qattn_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* Inf / NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: value = man * 2^-24 */
        float f = (float)man * 5.9604644775390625e-8f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* Round to nearest even; overflow to Inf; NaN stays NaN. */
static inline uint16_t qattn_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: Inf */
    if (ax < 0x38800000u) {                                    /* below 2^-14: subnormal or zero */
        float a;
        memcpy(&a, &ax, 4);
        /* a * 2^24 rounded to nearest even integer gives the subnormal mantissa */
        float m = a * 16777216.0f;
        uint32_t mi = (uint32_t)lrintf(m);
        return (uint16_t)(sign | mi);
    }
    uint32_t mant_odd = (ax >> 13) & 1u;
    ax += 0xfffu + mant_odd; /* round to nearest even at bit 13 */
    return (uint16_t)(sign | ((ax - 0x38000000u) >> 13));
}

static inline float qattn_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static inline uint16_t qattn_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* Element idx of a tensor of the given dtype (F32, F16, BF16), as float. */
static inline float qattn_load(const void *base, int32_t dtype, int64_t idx) {
    switch (dtype) {
    case QATTN_DTYPE_F16: return qattn_f16_to_f32(((const uint16_t *)base)[idx]);
    case QATTN_DTYPE_BF16: return qattn_bf16_to_f32(((const uint16_t *)base)[idx]);
    default: return ((const float *)base)[idx];
    }
}

static inline void qattn_store(void *base, int32_t dtype, int64_t idx, float value) {
    switch (dtype) {
    case QATTN_DTYPE_F16: ((uint16_t *)base)[idx] = qattn_f32_to_f16(value); break;
    case QATTN_DTYPE_BF16: ((uint16_t *)base)[idx] = qattn_f32_to_bf16(value); break;
    default: ((float *)base)[idx] = value; break;
    }
}

/* Round an FP32 value to the given precision (FP16/BF16), or return it unchanged. */
static inline float qattn_round_to(int32_t precision, float x) {
    switch (precision) {
    case QATTN_PRECISION_FP16: return qattn_f16_to_f32(qattn_f32_to_f16(x));
    case QATTN_PRECISION_BF16: return qattn_bf16_to_f32(qattn_f32_to_bf16(x));
    default: return x;
    }
}

/* ---------------------------------------------------------------- backends */

/* CPU backend (src/cpu/forward.c). p is validated. */
qattn_status qattn_cpu_forward(qattn_ctx *ctx, const qattn_params *p);

/* Where the CPU driver finds K/V rows when they are not p's plain views (qattn_forward_kvcache):
 * sequence b has seqlens_k[b] keys (p->seqlen_k is then their maximum). Without a block table,
 * token t of sequence b is at b * k_batch_stride + t * k_seq_stride as usual. With one, it is at
 * page * k_batch_stride + (t % page_size) * k_seq_stride, page = block_table[b * block_table_stride
 * + t / page_size] (the batch stride steps pages); likewise for v. Page ids are validated. */
typedef struct qattn_kv_rows {
    const int32_t *seqlens_k;   /* [B] */
    const int32_t *block_table; /* NULL: not paged */
    int64_t block_table_stride;
    int32_t page_size;
} qattn_kv_rows;

/* qattn_cpu_forward with K/V rows from kv (p validated apart from its k/v views, which kv
 * describes; p->cu_seqlens_* NULL). kv NULL is qattn_cpu_forward. */
qattn_status qattn_cpu_forward_kv(qattn_ctx *ctx, const qattn_params *p, const qattn_kv_rows *kv);

/* (qattn_view_is_injective and qattn_view_max_index, for views of caches: src/core/extent.h) */
qattn_status qattn_cpu_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes);

/* Low-precision CPU paths (precision INT8 / INT4 / FP8_E4M3 / FP8_E5M2), src/cpu/forward_lowp.c. */
qattn_status qattn_cpu_forward_lowp(qattn_ctx *ctx, const qattn_params *p);
qattn_status qattn_cpu_lowp_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes);
/* INT8 default scheme with a calibration's static channel transforms (p and cal validated). */
qattn_status qattn_cpu_forward_calibrated(qattn_ctx *ctx, const qattn_params *p, const qattn_calibration *cal);
/* qattn_calibrate's work, src/quant/calib.c (p and cal validated). */
qattn_status qattn_calib_accumulate(qattn_ctx *ctx, const qattn_params *p, qattn_calibration *cal);
/* How a calibration is about to be used: by qattn_calibrate (all six arrays, host), by a host consumer
 * (k_factor, k_mean, v_mean: read here), by the CUDA backend (the three are device memory: pointers only). */
typedef enum qattn_cal_use { QATTN_CAL_STATS, QATTN_CAL_HOST, QATTN_CAL_DEVICE } qattn_cal_use;
/* A calibration's shape and arrays, and for a host consumer its factors (powers of two in
 * 2^-32 .. 2^32) and finite means; src/quant/calib.c. */
qattn_status qattn_check_calibration(qattn_ctx *ctx, const qattn_calibration *cal, int32_t kv_heads, int32_t head_dim, qattn_cal_use use);

static inline bool qattn_precision_is_lowp(int32_t precision) {
    return precision == QATTN_PRECISION_INT8 || precision == QATTN_PRECISION_INT4 || precision == QATTN_PRECISION_FP8_E4M3 ||
           precision == QATTN_PRECISION_FP8_E5M2;
}

/* State views into a contiguous block laid out as max[m], sum[m], acc[m][d]. */
static inline qattn_tile_state qattn_state_view(float *base, int m, int d) {
    qattn_tile_state st = {.row_max = base, .row_sum = base + m, .acc = base + 2 * m, .ld_acc = d};
    return st;
}

/* The state of rows that have seen no key: max -inf, sum 0, acc 0. */
static inline void qattn_state_reset(qattn_tile_state *st, int m, int d) {
    for (int r = 0; r < m; r++) {
        st->row_max[r] = -INFINITY;
        st->row_sum[r] = 0.0f;
    }
    memset(st->acc, 0, (size_t)m * (size_t)d * sizeof(float));
}

/* Online merge of partial state b into a for m rows, width d (exact; fixed order); src/cpu/units.c. */
void qattn_state_merge(qattn_tile_state *a, const qattn_tile_state *b, int m, int d);

#if defined(QATTN_HAVE_CUDA)
/* CUDA backend (src/cuda/). p is validated (without reading cu_seqlens). */
qattn_status qattn_cuda_init(qattn_ctx *ctx);
void qattn_cuda_release(qattn_ctx *ctx);
qattn_status qattn_cuda_supports(qattn_ctx *ctx, const qattn_params *p);
qattn_status qattn_cuda_forward(qattn_ctx *ctx, const qattn_params *p);
/* INT8 default scheme with a calibration whose k_factor, k_mean, v_mean are device arrays (p, cal validated). */
qattn_status qattn_cuda_forward_calibrated(qattn_ctx *ctx, const qattn_params *p, const qattn_calibration *cal);
qattn_status qattn_cuda_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes);
int qattn_cuda_device_count(void);
/* qattn_forward_kvcache's device side (kvcache_driver.cu): reads rows x width int32 from device src (rows
 * src_stride apart) into host dst, synchronising stream; then, everything checked on the host with
 * those copies (cs: cache_seqlens, table: the block table's first table_width entries per sequence,
 * NULL when contiguous; lk: each sequence's key count), appends and attends. */
struct qattn_kvcache_params;
struct qattn_rotary;
qattn_status qattn_cuda_read_i32(qattn_ctx *ctx, void *stream, int32_t *dst, const int32_t *src, int64_t src_stride, int64_t width, int64_t rows);
qattn_status qattn_cuda_forward_kvcache(qattn_ctx *ctx, const qattn_params *p, const struct qattn_kvcache_params *kv, const struct qattn_rotary *r,
                                        const int32_t *cs, const int32_t *table, int64_t table_width, const int32_t *lk);
#endif

#endif /* QATTN_INTERNAL_H */
