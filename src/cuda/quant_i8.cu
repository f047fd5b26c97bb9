/* The INT8 path's quantization pass (int8_scheme DEFAULT, non-varlen): f16/bf16 Q, K, V into the
 * workspace codes, scales and means that the attention kernels (fwd_mma_i8.cu, fwd_wgmma_i8.cu) read.
 * Scheme and layouts: fwd_mma_i8.cu's header. One launch, i8q_fused, then the small i8q_sharp (the
 * sharp units' flags, below) and, when LSE is asked, i8q_qshift.
 *
 * i8q_fused's blocks take work items in ticket order (an atomic counter). Per (b, kv head) bh, its
 * first reads:
 *   0. Q ranges (qstat_part): max |q| per channel over the group's heads and QSC positions, atomicMax
 *      into qa[bh], counted in qdone[bh];
 *   1. statistics (stats_part), one item per chunk of CH tokens and tensor (K or V): per channel the sum
 *      in double, the sum of |x| and the smallest nonzero |x| (the last two prove the sum exact, below),
 *      and K's min/max; the last of bh's items computes its K and V means (mean_one), waits for bh's Q
 *      ranges, sets the channel factors f = 2^e (the CPU's qattn_qk_smooth_exp), mu / f and the LSE's
 *      mean H(mu / f / n), and raises ready[bh];
 * and its second reads, each issuing its loads and then waiting for ready[bh]:
 *   2. K tiles (k_part) and V tiles (v_part), one item per 128-key tile and tensor: K rows coded per token as
 *      H((k / f - mu / f) / n); V transposed, per channel and tile, mean subtracted, the rows those codes
 *      represent badly listed with their residuals (fixed V rows, VFIX_K); both written as the attention
 *      kernels' images;
 *   3. Q rows (q_rows_part): coded per token as H(q f / n), scales times n.
 * The first reads of bh + lag come just before the second reads of bh, lag chosen so ~24 MB of Q, K and V
 * lie between the two reads of a row, which the second read then finds in L2. A waiting item only waits
 * on items with smaller tickets, which are running or done: no deadlock. Items are split by tensor so
 * that no kind holds more than ~80 registers: three blocks of 256 threads per SM.
 * Rows: Q and K one group of D/16 lanes per row (16 channels each, 16-byte stores), the Hadamard rotation
 * (rotate_row16: the CPU's butterfly stages in its order) across the row's lanes; V one group of D/8 lanes
 * per row, codes transposed through shared memory. Codes are rounded by adding 1.5 * 2^23 (code8).
 * Measured (H100, D 128, B*L 16k, H 16; docs/benchmarks.md): 0.245-0.28 ms; 0.27-0.30 with 8 channels per
 * Q/K lane and a conversion per code; 0.37-0.44 ms for the previous order (every Q range first, every Q
 * row last, K and V in one item: 128 registers, two blocks per SM, Q read twice from DRAM); a per-item
 * timeline (dev/gpu/quant_trace.py) showed the Q rows alone taking the last 150 us of it.
 *
 * Bitwise agreement with the CPU (src/quant/quant.c; docs/FORMAT.md section 7, the CPU's dynamic path
 * without the sharp-unit residuals; for finite inputs: a NaN product codes to 0xff where the CPU's codes
 * to 0, and its row or channel scale is then NaN or Inf, so no output depends on it): codes =
 * clamp(rne(y * inv), +-127) with inv = 127 / max|y| (0 for an all-zero row), scale = max|y| / 127, as
 * the CPU's quant_row; the means as the CPU's: the double sum over positions ascending, divided in
 * double, rounded to float. The GPU sums in parallel in double.
 * Every f16/bf16 value is a multiple of 2^e (e: the exponent of the last mantissa bit of the smallest
 * nonzero |x| of the channel), so while sum |x| < 2^(53 + e) every partial sum, in any order, is exact,
 * and the parallel result equals the CPU's. mean_one checks that bound per channel (sum |x| in float,
 * with a factor 2 of margin for its rounding) and otherwise redoes the channel's sum in the CPU's order
 * (one thread, all positions: slow, met only by data mixing magnitudes more than ~2^29 apart, e.g.
 * N(0,1) never does).
 *
 * Precision INT4 (docs/FORMAT.md section 8) is this pass with Q and K codes in [-7, 7] (qk_code_max 7),
 * still one per byte, so the attention kernels run them unchanged: the CPU's INT4 codes, bit for bit.
 *
 * Calibrated (qattn_forward_calibrated): the factors and means come from the calibration's device
 * arrays (i8q_calib_kernel, one small launch before), and the fused launch holds only K/V tiles and Q
 * rows: Q, K and V are each read once. */
extern "C" {
#include "qattn.h"
}
#include "cuda_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <string.h>

namespace {

constexpr int BN = 128;   /* the attention kernels' key tile (Vt tiles, sv per tile) */
constexpr int QPAD = 128; /* Qi rows padded to the wgmma kernel's query block */
constexpr int NT = 256;   /* threads per block, every kernel here */
constexpr int SHARP_SLICES = 8; /* blocks per (b, kv head) of i8q_sharp_kernel */
constexpr int CH = 512;   /* tokens per chunk of the statistics */
constexpr int QRI = 4;    /* Q rows per lane group and block (loads issued together) */
constexpr int QSC = 256; /* query positions per Q-range item (all heads of one kv head's group); 64: 4-5% slower pass (H100) */
constexpr int QK_MAX_EXP = 32; /* QATTN_QK_SMOOTH_MAX_EXP: the factors' largest |exponent| */
/* A V row v'_j is fixed (its residual kept, qattn_cuda_args.vfix_n) when on each of its slices of 8 channels
 * the expected rounding error of the codes per channel and tile, averaged over the slices, exceeds 1/64 of
 * the slice: sum_{c in slice} v'_jc^2 < (sum_c sv_c^2 / 12) / (D / 8) * 64^2. A sink's value row x0.05 of
 * the others is fixed; an N(0,1) row would need all D/8 slices below ~0.2 of their mean square (each
 * about 1% likely), never seen. */
constexpr float VFIX_K = 12.f / (64.f * 64.f);

inline size_t align256(size_t x) { return (x + 255) / 256 * 256; }

int lk_padded(int lk) { return (lk + BN - 1) / BN * BN; }
int n_chunks(int lk) { return (lk + CH - 1) / CH; }
int n_qchunks(int lq) { return (lq + QSC - 1) / QSC; }

struct i8_layout {
    size_t qi, sq, ki, sk, vt, sv, vm, km, kmf, fk, finv, psum, pabs, pmin, pkmin, pkmax, qsh, csq, csk, sharp, sigma, spart, vfkey, vfres, sched, ctl, qa,
        sdone, vfn, total;
};

i8_layout layout(const qattn_cuda_args &a, int lk_pad) {
    i8_layout L;
    const size_t B = (size_t)a.batch, H = (size_t)a.h, HK = (size_t)a.hk, D = (size_t)a.d;
    const size_t lq_pad = ((size_t)a.lq + QPAD - 1) / QPAD * QPAD, nst = B * HK * (size_t)n_chunks(a.lk) * 2 * D;
    size_t off = 0;
    L.qi = off, off += align256(B * H * lq_pad * D);
    L.sq = off, off += align256(B * H * lq_pad * 4);
    L.ki = off, off += align256(B * HK * (size_t)lk_pad * D);
    L.sk = off, off += align256(B * HK * (size_t)lk_pad * 4);
    L.vt = off, off += align256(B * HK * D * (size_t)lk_pad);
    L.sv = off, off += align256(B * HK * (size_t)(lk_pad / BN) * D * 4);
    L.vm = off, off += align256(B * HK * D * 4);
    L.km = off, off += align256(B * HK * D * 4);   /* H(mu / f / n): the LSE shift's K mean */
    L.kmf = off, off += align256(B * HK * D * 4);  /* mu / f: what K rows are centred by */
    L.fk = off, off += align256(B * HK * D * 4);   /* f */
    L.finv = off, off += align256(B * HK * D * 4); /* 1 / f */
    L.psum = off, off += align256(nst * 8);
    L.pabs = off, off += align256(nst * 4);
    L.pmin = off, off += align256(nst * 4);
    L.pkmin = off, off += align256(nst / 2 * 4);
    L.pkmax = off, off += align256(nst / 2 * 4);
    L.qsh = off, off += align256(B * H * lq_pad * 4);
    L.csq = off, off += align256(B * H * lq_pad * 4);        /* sum of squared codes per Q row (sharp units) */
    L.csk = off, off += align256(B * HK * (size_t)lk_pad * 4); /* ... per K row */
    L.sharp = off, off += align256(B * HK * 4);               /* [b][kv head]: 1 = sharp */
    L.sigma = off, off += align256(B * HK * 4);               /* [b][kv head]: the predicted logit noise */
    L.spart = off, off += align256(B * HK * SHARP_SLICES * 4 * 8); /* [unit][slice][4]: i8q_sharp_kernel's partial sums */
    L.vfkey = off, off += align256(B * HK * QATTN_I8_VFIX_MAX * 4);     /* fixed V rows: keys [bh][VFIX_MAX] */
    L.vfres = off, off += align256(B * HK * QATTN_I8_VFIX_MAX * D * 4); /* ... and residuals [bh][VFIX_MAX][D] */
    L.sched = off, off += 256;
    L.ctl = off, off += align256((1 + 3 * B * HK) * 4); /* ticket, done[bh], ready[bh], qdone[bh]; zeroed with sched */
    L.qa = off, off += align256(B * HK * D * 4);        /* max |q| as float bits (atomicMax), zeroed with sched */
    L.sdone = off, off += align256(B * HK * 4);         /* i8q_sharp_kernel's blocks done per unit, zeroed with sched */
    L.vfn = off, off += align256(B * HK * 4);           /* fixed V rows per bh (atomicAdd), zeroed with sched */
    L.total = off;
    return L;
}

/* 8 f16/bf16 values (16 bytes) as float (exact). */
template <bool BF16> __device__ __forceinline__ void cvt8(const uint4 u, float f[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (BF16) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        } else {
            const float2 x = __half22float2(*(const __half2 *)&w[i]);
            f[2 * i] = x.x;
            f[2 * i + 1] = x.y;
        }
    }
}

template <bool BF16> __device__ __forceinline__ float ld1(const void *base, int64_t idx) {
    const uint16_t v = ((const uint16_t *)base)[idx];
    return BF16 ? __uint_as_float((uint32_t)v << 16) : __half2float(__ushort_as_half(v));
}

__device__ __forceinline__ uint4 ld16(const void *base, int64_t idx) { return *(const uint4 *)((const uint16_t *)base + idx); }

/* The CPU's code: clamp(rne(y * inv), +-127), in the low byte (the other bytes are not the code's sign).
 * |y inv| <= 127 (1 + 2^-22) rounds to at most 127, so no clamp is needed; adding 1.5 * 2^23 to the
 * rounded product rounds it to an integer (rne) in the low mantissa bits: two full-rate FP32 operations
 * instead of a conversion. A NaN product (a non-finite value, whose row or channel scale is then NaN or
 * Inf, so no output depends on its code) gives the byte 0xff where the CPU's gives 0. */
__device__ __forceinline__ uint32_t code8(float y, float inv) { return __float_as_uint(__fadd_rn(__fmul_rn(y, inv), 12582912.f)); }
/* the same code as a signed integer */
__device__ __forceinline__ int code8_int(float y, float inv) { return (int)(int8_t)(code8(y, inv) & 0xffu); }

/* max over the G lanes of a row's group (consecutive lanes, G a power of two <= 32); NaN propagates. */
template <int G> __device__ __forceinline__ float group_max(float m) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) m = qattn_fmax_nan(m, __shfl_xor_sync(0xffffffffu, m, o));
    return m;
}

/* sum over the G lanes of a row's group: each step adds a pair in both lanes (a + b = b + a), so every
 * lane of the group ends with the same bits. */
template <int G> __device__ __forceinline__ float group_sum(float s) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

/* Q and K rows: a group of D/16 lanes per row, 16 consecutive channels per lane. Per-row costs (the max,
 * the division, the store address) are shared by 16 values, and the rotation has one cross-lane stage
 * fewer than with 8 channels per lane (measured: 8-10% of the pass at L 1k-4k, docs/benchmarks.md). */
/* The CPU's butterfly stages len = 1, 2, 4, 8 on 16 consecutive channels (lower index a + c, upper a - c). */
__device__ __forceinline__ void fwht16(float y[16]) {
#pragma unroll
    for (int len = 1; len < 16; len <<= 1)
#pragma unroll
        for (int i = 0; i < 16; i++)
            if (!(i & len)) {
                const float a = y[i], c = y[i + len];
                y[i] = __fadd_rn(a, c), y[i + len] = __fsub_rn(a, c);
            }
}
/* The CPU's qattn_rotate_row(y, D, 1 / n) on a row held by D/16 lanes (D 64 or 128, so one block of n = D):
 * every value times 1/n (exact), stages 1 .. 8 in the lane, then stages len = 16 .. n/2 between lanes cg
 * and cg ^ (len / 16), the lower lane keeping a + c, the upper a - c: both rn(o + sg y), one FFMA (sg y
 * exact). */
template <int D> __device__ __forceinline__ void rotate_row16(float y[16]) {
    static_assert(D == 64 || D == 128, "one Hadamard block of D channels");
#pragma unroll
    for (int i = 0; i < 16; i++) y[i] = __fmul_rn(y[i], 1.0f / D);
    fwht16(y);
    const int cg = threadIdx.x % (D / 16);
#pragma unroll
    for (int m = 1; m < D / 16; m <<= 1) {
        const float sg = (cg & m) ? -1.f : 1.f;
#pragma unroll
        for (int i = 0; i < 16; i++) y[i] = __fmaf_rn(sg, y[i], __shfl_xor_sync(0xffffffffu, y[i], m));
    }
}
/* One row held by D/16 lanes (16 values each, y centred): this lane's 16 codes as one 16-byte chunk and
 * the row's scale, codes in [-cmax, cmax] (127; precision INT4's Q and K 7: |y inv| <= cmax (1 + 2^-22)
 * rounds to at most cmax, as the CPU's). A non-finite value makes the scale NaN or Inf, and so every
 * score of the row. */
template <int D> __device__ __forceinline__ float quant_row16(const float y[16], uint4 &codes, float cmax) {
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < 16; i++) m = qattn_fmax_nan(m, fabsf(y[i]));
    m = group_max<D / 16>(m);
    const float inv = m > 0.f ? cmax / m : 0.f;
    codes.x = qattn_pack4(code8(y[0], inv), code8(y[1], inv), code8(y[2], inv), code8(y[3], inv));
    codes.y = qattn_pack4(code8(y[4], inv), code8(y[5], inv), code8(y[6], inv), code8(y[7], inv));
    codes.z = qattn_pack4(code8(y[8], inv), code8(y[9], inv), code8(y[10], inv), code8(y[11], inv));
    codes.w = qattn_pack4(code8(y[12], inv), code8(y[13], inv), code8(y[14], inv), code8(y[15], inv));
    return m / cmax;
}
/* The sum of the squared codes of a row held by the D/16 lanes of its group: exact in int32 (<= 256 *
 * 127^2), the same in every lane. */
template <int D> __device__ __forceinline__ int32_t code_sq16(const uint4 c) {
    int32_t s = __dp4a((int)c.x, (int)c.x, __dp4a((int)c.y, (int)c.y, __dp4a((int)c.z, (int)c.z, __dp4a((int)c.w, (int)c.w, 0))));
#pragma unroll
    for (int o = 1; o < D / 16; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

/* Unnormalized Hadamard transform of srot[0 .. D) in place, the CPU's butterfly stages in order (len 1,
 * 2, .. D/2, lower index a + c, upper a - c). Called by every thread of a block of at least D threads;
 * srot written before the call, read after it. */
template <int D> __device__ __forceinline__ void hadamard_shared(float *srot) {
    const int d = threadIdx.x;
    for (int len = 1; len < D; len <<= 1) {
        __syncthreads();
        float v = 0.f;
        if (d < D) v = (d & len) ? __fsub_rn(srot[d ^ len], srot[d]) : __fadd_rn(srot[d], srot[d ^ len]);
        __syncthreads();
        if (d < D) srot[d] = v;
    }
    __syncthreads();
}

/* The CPU's qattn_qk_smooth_exp(qa, ka, 32, 0) for qa, ka >= 0: e = ceil(ilogb(ka / qa) / 2) in
 * [-32, 32], 0 unless qa, ka and their ratio are normal and qa, ka <= 2^100. */
__device__ __forceinline__ int smooth_exp(float qa, float ka) {
    const auto normal = [](float x) { return x >= 1.17549435e-38f && x <= 3.40282347e38f; };
    if (!(normal(qa) && normal(ka)) || qa > 0x1p100f || ka > 0x1p100f) return 0;
    const float r = __fdiv_rn(ka, qa);
    if (!normal(r)) return 0;
    const int n = ilogbf(r);
    const int e = n >= 0 ? (n + 1) / 2 : -((-n) / 2);
    return max(-QK_MAX_EXP, min(QK_MAX_EXP, e));
}

/* Byte offset in a code row image of the 8 codes of lane group cg (channels 8 cg ..) for row t. */
template <int D> __device__ __forceinline__ int row_pos(const qattn_cuda_args &a, int t, int cg) {
    return qattn_i8_chunk_at<D>(a, t, cg >> 1) | ((cg & 1) << 3);
}

/* Running statistics of 8 channels: the sum (double), the sum of |x|, and per channel pair the smallest
 * (bits of |x|) - 1 as 16-bit halves (0 wraps to 0xffff: zeros never count as the smallest). */
struct chan_stats {
    double s[8];
    float ab[8];
    uint32_t mn[4];
    float lo[8], hi[8]; /* the channel's min and max (K's range about its mean, for the factors) */
};

template <bool BF16, int X> __device__ __forceinline__ void stats_add(chan_stats &st, const uint4 u) {
    float f[8];
    cvt8<BF16>(u, f);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        st.s[i] += (double)f[i], st.ab[i] += fabsf(f[i]);
        if (X == 0) st.lo[i] = fminf(st.lo[i], f[i]), st.hi[i] = fmaxf(st.hi[i], f[i]);
    }
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; j++) st.mn[j] = __vminu2(st.mn[j], __vsub2(w[j] & 0x7fff7fffu, 0x00010001u));
}

/* Item kind 0. Item it of [0, B*HK*nqc): positions [QSC c, QSC c + QSC) of (b, kv head g) = it / nqc, all the
 * group's heads: per channel max |q| (NaN propagates), atomicMax into qa[bg][D] (non-negative floats order as
 * their bits), then qdone[bg] counts the item (after a fence: the statistics item that waits for the count
 * then reads every max). */
template <int D, bool BF16>
__device__ __forceinline__ void qstat_part(const qattn_cuda_args &a, int it, int nqc, unsigned *qa, int *qdone, unsigned char *smem) {
    constexpr int G = D / 8, RG = NT / G, U = 4;
    const int cg = threadIdx.x % G, rg = threadIdx.x / G;
    const int bg = it / nqc, c = it % nqc, b = bg / a.hk, g = bg % a.hk, grp = a.h / a.hk;
    const int t0 = c * QSC, nrow = (min(a.lq, t0 + QSC) - t0) * grp;
    float m[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int r = rg; r < nrow; r += U * RG) {
        uint4 u[U];
#pragma unroll
        for (int k = 0; k < U; k++) {
            const int rr = r + k * RG, t = t0 + rr / grp, h = g * grp + rr % grp;
            u[k] = rr < nrow ? ld16(a.q, (int64_t)b * a.q_bs + (int64_t)t * a.q_ss + (int64_t)h * a.q_hs + cg * 8) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int k = 0; k < U; k++) {
            float y[8];
            cvt8<BF16>(u[k], y);
#pragma unroll
            for (int i = 0; i < 8; i++) m[i] = qattn_fmax_nan(m[i], fabsf(y[i]));
        }
    }
    float(*sm)[D] = (float(*)[D])smem;
#pragma unroll
    for (int i = 0; i < 8; i++) sm[rg][cg * 8 + i] = m[i];
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += NT) {
        float x = 0.f;
        for (int k = 0; k < RG; k++) x = qattn_fmax_nan(x, sm[k][d]);
        atomicMax(qa + (size_t)bg * D + d, __float_as_uint(x));
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(qdone + bg, 1);
}

/* The pass's device arrays beyond the attention kernels' (quant_i8.cu's layout). */
struct i8_aux {
    double *psum;
    float *pabs;
    uint32_t *pmin;
    float *pkmin, *pkmax; /* [bh][chunk][D]: K's channel min / max per chunk */
    float *km, *kmf, *fk, *finv, *vm;
    unsigned *qa; /* [bh][D] max |q| bits */
    int32_t *csq, *csk; /* sum of squared codes per Q row [B, H, lq_pad] and per K row [bh][lk_pad] */
    int *done, *ready, *qdone;
    int nqc; /* Q-range items per (b, kv head) */
    int *vfn, *vfkey; /* fixed V rows: count per bh, keys [bh][VFIX_MAX] */
    float *vfres;     /* ... residuals [bh][VFIX_MAX][D] */
    float qk_cmax;    /* the Q and K codes' largest value: 127, or 7 (precision INT4) */
};

/* Item kind 1. Chunk c of (b, kv head) bh and tensor X (K 0, V 1), blk = (bh * nch + c) * 2 + X: per channel
 * partial statistics psum/pabs/pmin [bh][c][x][D], and for K pkmin/pkmax [bh][c][D]; the last of bh's 2 nch
 * items computes bh's means and factors and raises ready[bh]. */
template <int D, bool BF16>
__device__ __forceinline__ float mean_one(const qattn_cuda_args &a, int nch, int bh, int x, int d, const i8_aux &w);
template <int D, bool BF16, int X>
__device__ __forceinline__ void stats_part(const qattn_cuda_args &a, int blk, int nch, const i8_aux &w, unsigned char *smem) {
    constexpr int G = D / 8, RG = NT / G;
    const int cg = threadIdx.x % G, rg = threadIdx.x / G;
    double(*rs)[D] = (double(*)[D])smem;
    float(*ra)[D] = (float(*)[D])(smem + RG * D * 8);
    uint32_t(*rm)[D] = (uint32_t(*)[D])(smem + RG * D * 12);
    constexpr int x = X; /* = blk & 1 */
    const int bh = (blk >> 1) / nch, c = (blk >> 1) % nch, b = bh / a.hk, hk = bh % a.hk;
    const int t0 = c * CH, t1 = min(a.lk, t0 + CH);
    const int64_t kb = (int64_t)b * a.k_bs + (int64_t)hk * a.k_hs + cg * 8, vb = (int64_t)b * a.v_bs + (int64_t)hk * a.v_hs + cg * 8;
    chan_stats st;
#pragma unroll
    for (int i = 0; i < 8; i++) st.s[i] = 0.0, st.ab[i] = 0.f, st.lo[i] = INFINITY, st.hi[i] = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; j++) st.mn[j] = 0xffffffffu;
    const void *src = x ? a.v : a.k;
    const int64_t xb = x ? vb : kb, xs = x ? a.v_ss : a.k_ss;
    constexpr int U = 4; /* rows per lane in flight */
    for (int t = t0 + rg; t < t1; t += U * RG) {
        uint4 xu[U];
        bool in[U];
#pragma unroll
        for (int k = 0; k < U; k++) {
            const int tt = t + k * RG;
            in[k] = tt < t1;
            xu[k] = in[k] ? ld16(src, xb + (int64_t)tt * xs) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int k = 0; k < U; k++)
            if (in[k]) stats_add<BF16, X>(st, xu[k]);
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        rs[rg][cg * 8 + i] = st.s[i];
        ra[rg][cg * 8 + i] = st.ab[i];
        rm[rg][cg * 8 + i] = i & 1 ? st.mn[i / 2] >> 16 : st.mn[i / 2] & 0xffffu;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += NT) {
        double su = 0.0;
        float ab = 0.f;
        uint32_t mn = 0xffffu;
        for (int g = 0; g < RG; g++) su += rs[g][d], ab += ra[g][d], mn = min(mn, rm[g][d]);
        const size_t at = (((size_t)bh * nch + c) * 2 + x) * D + d;
        w.psum[at] = su;
        w.pabs[at] = ab;
        w.pmin[at] = mn;
    }
    if constexpr (X == 0) { /* K's channel range over the chunk (reusing rs as two float tables) */
        __syncthreads();
        float(*rlo)[D] = (float(*)[D])smem, (*rhi)[D] = (float(*)[D])(smem + RG * D * 4);
#pragma unroll
        for (int i = 0; i < 8; i++) rlo[rg][cg * 8 + i] = st.lo[i], rhi[rg][cg * 8 + i] = st.hi[i];
        __syncthreads();
        for (int d = threadIdx.x; d < D; d += NT) {
            float lo = INFINITY, hi = -INFINITY;
            for (int g = 0; g < RG; g++) lo = fminf(lo, rlo[g][d]), hi = fmaxf(hi, rhi[g][d]);
            w.pkmin[((size_t)bh * nch + c) * D + d] = lo;
            w.pkmax[((size_t)bh * nch + c) * D + d] = hi;
        }
    }
    /* the last chunk block of bh computes its means and factors (threadFenceReduction pattern) and raises ready[bh] */
    __threadfence();
    __syncthreads();
    int *last = (int *)smem;
    if (threadIdx.x == 0) *last = atomicAdd(w.done + bh, 1) == 2 * nch - 1;
    __syncthreads();
    if (!*last) return;
    __threadfence();
    float *smu = (float *)(smem + 16), *srot = smu + D;
    for (int i = threadIdx.x; i < 2 * D; i += NT) {
        const float mu = mean_one<D, BF16>(a, nch, bh, i / D, i % D, w);
        if (i < D) smu[i] = mu;
        else w.vm[(size_t)bh * D + i - D] = mu;
    }
    if (threadIdx.x == 0 && a.lq > 0) /* bh's Q ranges: items with smaller tickets, running or done */
        while (atomicAdd(w.qdone + bh, 0) < w.nqc) __nanosleep(100);
    __syncthreads();
    __threadfence();
    /* per channel, as the CPU: ka = max(kmax - mu, mu - kmin) (0 unless > 0), f = 2^e, mu / f */
    for (int d = threadIdx.x; d < D; d += NT) {
        float lo = INFINITY, hi = -INFINITY;
        for (int c2 = 0; c2 < nch; c2++)
            lo = fminf(lo, __ldcg(w.pkmin + ((size_t)bh * nch + c2) * D + d)), hi = fmaxf(hi, __ldcg(w.pkmax + ((size_t)bh * nch + c2) * D + d));
        const float mu = smu[d], up = __fsub_rn(hi, mu), dn = __fsub_rn(mu, lo);
        float ka = up > dn ? up : dn;
        if (!(ka > 0.f)) ka = 0.f;
        const int e = smooth_exp(__uint_as_float(__ldcg(w.qa + (size_t)bh * D + d)), ka);
        const float finv = ldexpf(1.f, -e), muf = __fmul_rn(mu, finv);
        w.fk[(size_t)bh * D + d] = ldexpf(1.f, e);
        w.finv[(size_t)bh * D + d] = finv;
        w.kmf[(size_t)bh * D + d] = muf;
        srot[d] = __fmul_rn(muf, 1.0f / D);
    }
    hadamard_shared<D>(srot); /* the LSE shift's mean: H(mu / f / n) */
    for (int d = threadIdx.x; d < D; d += NT) w.km[(size_t)bh * D + d] = srot[d];
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) atomicExch(w.ready + bh, 1);
}

/* For (b, kv head) bh, tensor x and channel d: the mean over the lk tokens (K: x 0, V: x 1); run by the
 * last statistics item of bh (its partial sums read through L2: __ldcg). */
template <int D, bool BF16>
__device__ __forceinline__ float mean_one(const qattn_cuda_args &a, int nch, int bh, int x, int d, const i8_aux &w) {
    constexpr int MB = BF16 ? 7 : 10, BIAS = BF16 ? 127 : 15; /* mantissa bits, exponent bias */
    double su = 0.0;
    float ab = 0.f;
    uint32_t mn = 0xffffu;
#pragma unroll 8 /* independent loads in flight: nch is 32 at L 16k, each an L2 round trip */
    for (int c = 0; c < nch; c++) {
        const size_t at = (((size_t)bh * nch + c) * 2 + x) * D + d;
        su += __ldcg(w.psum + at), ab += __ldcg(w.pabs + at), mn = min(mn, __ldcg(w.pmin + at));
    }
    /* the smallest nonzero |x| has bits mn + 1; its last mantissa bit weighs 2^lsb */
    const int e = (int)((mn + 1) >> MB), lsb = (e ? e : 1) - BIAS - MB;
    const bool exact = mn == 0xffffu || (a.lk < (1 << 23) && (double)ab < ldexp(1.0, 52 + lsb));
    if (!exact && isfinite(su)) { /* the CPU's order (non-finite inputs: the result is non-finite anyway) */
        const int b = bh / a.hk, hk = bh % a.hk;
        const void *base = x ? a.v : a.k;
        const int64_t ss = x ? a.v_ss : a.k_ss, off = x ? (int64_t)b * a.v_bs + (int64_t)hk * a.v_hs + d : (int64_t)b * a.k_bs + (int64_t)hk * a.k_hs + d;
        su = 0.0;
        for (int t = 0; t < a.lk; t++) su += (double)ld1<BF16>(base, off + (int64_t)t * ss);
    }
    return (float)(su / (double)a.lk);
}

/* Item kind 3. Item j of (b, kv head) bh: rows [QR j, QR j + QR) of bh's rows (positions [0, lq_pad) times
 * the group's heads, heads fastest: the input's order), QR = QRI * (NT / (D/8)), into Qi [B, H, lq_pad, D]
 * and sq [B, H, lq_pad] as H(q f / n), after bh's factors are ready (a smaller ticket: bh's statistics).
 * Positions past lq get zero codes and scale 0. One wait per item, f loaded once: every row of the item
 * has bh's factors. */
template <int D, bool BF16>
__device__ __forceinline__ void q_rows_part(const qattn_cuda_args &a, int bh, int j, int8_t *qi, float *sq, const i8_aux &w) {
    constexpr int G = D / 16, RG = NT / G, QRK = QRI / 2; /* QRK * RG = QRI * NT / (D / 8): the item's rows, as the host counts them */
    const int cg = threadIdx.x % G, rg = threadIdx.x / G;
    const int b = bh / a.hk, g = bh % a.hk, grp = a.h / a.hk, nrow = a.lq_pad * grp;
    uint4 u[QRK][2];
#pragma unroll
    for (int k = 0; k < QRK; k++) {
        const int rr = (j * QRK + k) * RG + rg, t = rr / grp, h = g * grp + rr % grp;
        const bool in = rr < nrow && t < a.lq;
        const int64_t at = (int64_t)b * a.q_bs + (int64_t)t * a.q_ss + (int64_t)h * a.q_hs + cg * 16;
        u[k][0] = in ? ld16(a.q, at) : make_uint4(0, 0, 0, 0);
        u[k][1] = in ? ld16(a.q, at + 8) : make_uint4(0, 0, 0, 0);
    }
    /* the loads above are in flight while bh's factors may still be computed; polled with plain volatile
     * loads by one thread (atomics from every thread on one line serialised the pass, ~2 ms) */
    if (threadIdx.x == 0) {
        const volatile int *rd = w.ready + bh;
        while (*rd == 0) __nanosleep(100);
    }
    __syncthreads();
    __threadfence();
    float f[16];
    const float *fp = w.fk + (size_t)bh * D + cg * 16;
#pragma unroll
    for (int i = 0; i < 4; i++) *(float4 *)(f + 4 * i) = __ldcg((const float4 *)(fp + 4 * i));
#pragma unroll
    for (int k = 0; k < QRK; k++) {
        const int rr = (j * QRK + k) * RG + rg, t = rr / grp, h = g * grp + rr % grp;
        const bool in = rr < nrow && t < a.lq;
        float y[16];
        cvt8<BF16>(u[k][0], y), cvt8<BF16>(u[k][1], y + 8);
#pragma unroll
        for (int i = 0; i < 16; i++) y[i] = in ? __fmul_rn(y[i], f[i]) : 0.f;
        rotate_row16<D>(y); /* every lane of the warp: the shuffles need them */
        uint4 codes;
        const float sc = __fmul_rn(quant_row16<D>(y, codes, w.qk_cmax), (float)D); /* times n: exact */
        const int32_t c2 = code_sq16<D>(codes);
        if (rr >= nrow) continue;
        const int64_t r = ((int64_t)b * a.h + h) * a.lq_pad + t;
        *(uint4 *)(qi + r * D + qattn_i8_chunk_at<D>(a, t, cg)) = codes;
        if (cg == 0) sq[r] = sc, w.csq[r] = c2;
    }
}

/* A K or V tile item's wait for bh's factors and means (ready[bh], raised by bh's last statistics item,
 * a smaller ticket): one thread polls, the block waits on it; the item's loads are issued before. */
__device__ __forceinline__ void wait_factors(const i8_aux &w, int bh) {
    if (threadIdx.x == 0)
        while (atomicAdd(w.ready + bh, 0) == 0) __nanosleep(200);
    __syncthreads();
    __threadfence();
}

/* Item kind 2 for K: one 128-key tile of (b, kv head) bh, its rows still in L2 from bh's statistics items;
 * lane group rg (D/16 lanes, 16 channels each) holds keys rg + RG r. Per-token codes of
 * H((k / f - mu / f) / n) into Ki [bh][lk_pad][D], sk [bh][lk_pad]; keys past lk: zero codes, scale 0. */
template <int D, bool BF16>
__device__ __forceinline__ void k_part(const qattn_cuda_args &a, int bh, int tile, const i8_aux &w, int8_t *ki, float *sk, unsigned char *smem) {
    constexpr int G = D / 16, RG = NT / G, RPT = BN / RG;
    const int b = bh / a.hk, hk = bh % a.hk;
    const int cg = threadIdx.x % G, rg = threadIdx.x / G, c0 = cg * 16;
    const int64_t xb = (int64_t)b * a.k_bs + (int64_t)hk * a.k_hs + c0;
    uint4 xu[RPT][2];
#pragma unroll
    for (int r = 0; r < RPT; r++) {
        const int key = tile * BN + rg + RG * r;
        xu[r][0] = key < a.lk ? ld16(a.k, xb + (int64_t)key * a.k_ss) : make_uint4(0, 0, 0, 0);
        xu[r][1] = key < a.lk ? ld16(a.k, xb + (int64_t)key * a.k_ss + 8) : make_uint4(0, 0, 0, 0);
    }
    wait_factors(w, bh);
    float *skm = (float *)smem, *skinv = skm + D;
    for (int d = threadIdx.x; d < D; d += NT) skm[d] = __ldcg(w.kmf + (size_t)bh * D + d), skinv[d] = __ldcg(w.finv + (size_t)bh * D + d);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < RPT; r++) {
        const int key = tile * BN + rg + RG * r;
        const bool in = key < a.lk;
        float y[16];
        cvt8<BF16>(xu[r][0], y), cvt8<BF16>(xu[r][1], y + 8);
#pragma unroll
        for (int i = 0; i < 16; i++) y[i] = in ? __fsub_rn(__fmul_rn(y[i], skinv[c0 + i]), skm[c0 + i]) : 0.f;
        rotate_row16<D>(y);
        uint4 codes;
        const float sc = quant_row16<D>(y, codes, w.qk_cmax);
        const int32_t c2 = code_sq16<D>(codes);
        const int64_t row = (int64_t)bh * a.lk_pad + key;
        *(uint4 *)(ki + row * D + qattn_i8_chunk_at<D>(a, key, cg)) = codes;
        if (cg == 0) sk[row] = sc, w.csk[row] = c2;
    }
}

/* The fixed V rows of one tile (v_part, VFIX_K), after its codes: lane group rg takes the listed keys rg,
 * rg + RG, ..: a slot of (b, kv head) bh (more rows than slots: the count says so and none is used), the
 * key, and y - codes * sv of each lane's 8 channels (y = the row less its mean, codes as v_part's). */
template <int D, bool BF16>
__device__ __forceinline__ void vfix_rows(const qattn_cuda_args &a, int bh, const int *list, int n, const float *sinv, const float *ssc, const i8_aux &w) {
    constexpr int G = D / 8, RG = NT / G;
    const int cg = threadIdx.x % G, rg = threadIdx.x / G, lead = (threadIdx.x & 31) & ~(G - 1), c0 = cg * 8;
    const unsigned gmask = G == 32 ? 0xffffffffu : ((1u << G) - 1u) << lead;
    const int64_t xb = (int64_t)(bh / a.hk) * a.v_bs + (int64_t)(bh % a.hk) * a.v_hs + c0;
    for (int e = rg; e < n; e += RG) {
        const int key = list[e];
        int slot = 0;
        if (cg == 0) slot = atomicAdd(w.vfn + bh, 1);
        slot = __shfl_sync(gmask, slot, lead);
        if (slot >= QATTN_I8_VFIX_MAX) continue;
        float y[8];
        cvt8<BF16>(ld16(a.v, xb + (int64_t)key * a.v_ss), y);
        const size_t at = (size_t)bh * QATTN_I8_VFIX_MAX + slot;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float v = y[i] - __ldcg(w.vm + (size_t)bh * D + c0 + i);
            w.vfres[at * D + c0 + i] = fmaf(-(float)code8_int(v, sinv[c0 + i]), ssc[c0 + i], v);
        }
        if (cg == 0) w.vfkey[at] = key;
    }
}

/* Item kind 2 for V: one 128-key tile of (b, kv head) bh, its rows still in L2 from bh's statistics items.
 * Lane group (rg, cg) holds the keys 16 g + 2 j + {0, 1, 8, 9} of the words w = rg + RG k (g = w / 4,
 * j = w % 4): the four keys whose V codes form word w of a Vt row (the key order of the P fragments,
 * vt_perm in the mma kernel). y = v - mean, per channel the tile's max|y| -> sv [bh][tile][D], codes staged
 * in shared memory as the tile's [D][128] image (16-byte chunks XOR-swizzled by channel / 8 against bank
 * conflicts), then written in 16-byte stores to Vt (tile-major and swizzled for the wgmma kernel,
 * [bh][D][lk_pad] otherwise); a row the codes represent badly (VFIX_K) also gets a fixed-row slot: its
 * key and its residual y - codes * sv. Keys past lk: zero codes, scale 0, not counted in the max. */
template <int D, bool BF16>
__device__ __forceinline__ void v_part(const qattn_cuda_args &a, int bh, int tile, int ntiles, const i8_aux &w, int8_t *vt, float *sv,
                                       unsigned char *smem) {
    constexpr int G = D / 8, RG = NT / G, WPT = 32 / RG, RPT = 4 * WPT;
    float(*smax)[D] = (float(*)[D])smem;
    float *sinv = (float *)(smem + RG * D * 4);
    uint32_t(*sw)[BN / 4] = (uint32_t(*)[BN / 4])(smem + RG * D * 4 + D * 4);
    const int cg = threadIdx.x % G, rg = threadIdx.x / G, c0 = cg * 8;
    const int64_t xb = (int64_t)(bh / a.hk) * a.v_bs + (int64_t)(bh % a.hk) * a.v_hs + c0;
    int key[RPT];
    uint4 xu[RPT];
#pragma unroll
    for (int r = 0; r < RPT; r++) {
        const int w = rg + RG * (r / 4), u = r % 4;
        key[r] = tile * BN + 16 * (w >> 2) + 2 * (w & 3) + (u & 1) + 8 * (u >> 1);
        xu[r] = key[r] < a.lk ? ld16(a.v, xb + (int64_t)key[r] * a.v_ss) : make_uint4(0, 0, 0, 0);
    }
    wait_factors(w, bh);
    float vmean[8];
    const size_t at = (size_t)bh * D + c0;
    *(float4 *)vmean = __ldcg((const float4 *)(w.vm + at)), *(float4 *)(vmean + 4) = __ldcg((const float4 *)(w.vm + at + 4));
    float vmax[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int r = 0; r < RPT; r++) {
        const bool in = key[r] < a.lk;
        float y[8];
        cvt8<BF16>(xu[r], y);
#pragma unroll
        for (int i = 0; i < 8; i++) vmax[i] = qattn_fmax_nan(vmax[i], in ? fabsf(y[i] - vmean[i]) : 0.f);
    }
    *(float4 *)&smax[rg][c0] = *(const float4 *)vmax;
    *(float4 *)&smax[rg][c0 + 4] = *(const float4 *)(vmax + 4);
    __syncthreads();
    float *ssc = (float *)(smem + RG * D * 4 + D * 4 + D * BN); /* sv of the tile */
    int *sfix_n = (int *)(ssc + D), *sfix = sfix_n + 4;           /* the tile's fixed rows: count, keys */
    if (threadIdx.x == 0) *sfix_n = 0;
    for (int d = threadIdx.x; d < D; d += NT) {
        float m = 0.f;
        for (int g = 0; g < RG; g++) m = qattn_fmax_nan(m, smax[g][d]);
        sinv[d] = m > 0.f ? 127.f / m : 0.f;
        sv[((size_t)bh * ntiles + tile) * D + d] = ssc[d] = m / 127.f;
    }
    __syncthreads();
    float inv[8], es = 0.f; /* es: the mean over the lanes of a group of their sum of sv^2, over VFIX_K */
#pragma unroll
    for (int i = 0; i < 8; i++) inv[i] = sinv[c0 + i], es = fmaf(ssc[c0 + i], ssc[c0 + i], es);
    es = group_sum<G>(es) * (1.f / (G * VFIX_K));
    const int lead = (threadIdx.x & 31) & ~(G - 1);
    const unsigned gbits = G == 32 ? 0xffffffffu : (1u << G) - 1u;
#pragma unroll
    for (int k = 0; k < WPT; k++) {
        uint32_t cw[8][4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int r = 4 * k + u;
            const bool in = key[r] < a.lk;
            float y[8], y2 = 0.f;
            cvt8<BF16>(xu[r], y);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                y[i] = in ? y[i] - vmean[i] : 0.f;
                cw[i][u] = code8(y[i], inv[i]);
                y2 = fmaf(y[i], y[i], y2);
            }
            /* fixed when every lane's 8 values are small against the group's mean rounding error (a ballot,
             * not a sum over the group: no shuffles per row) and some value is nonzero */
            const unsigned small = __ballot_sync(0xffffffffu, in && y2 < es), nonzero = __ballot_sync(0xffffffffu, y2 > 0.f);
            if (cg == 0 && ((small >> lead) & gbits) == gbits && ((nonzero >> lead) & gbits)) sfix[atomicAdd(sfix_n, 1)] = key[r];
        }
        const int w = rg + RG * k;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int d = c0 + i;
            sw[d][w ^ (((d >> 3) & 7) << 2)] = qattn_pack4(cw[i][0], cw[i][1], cw[i][2], cw[i][3]);
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < D * (BN / 16); idx += NT) {
        const int d = idx / (BN / 16), ch = idx % (BN / 16);
        const uint4 val = *(const uint4 *)&sw[d][(ch ^ ((d >> 3) & 7)) * 4];
        const size_t at = (D == 128 && a.i8_wgmma) ? (((size_t)bh * ntiles + tile) * D + d) * BN + ((ch ^ (d & 7)) << 4)
                                                    : ((size_t)bh * D + d) * a.lk_pad + tile * BN + ch * 16;
        *(uint4 *)(vt + at) = val;
    }
    if (*sfix_n) vfix_rows<D, BF16>(a, bh, sfix, *sfix_n, sinv, ssc, w); /* listed before the barrier above */
}

/* The fused pass (the file's header): per bh its first reads (nqs Q-range items, 2 nch statistics items)
 * and its second reads (ntiles K tiles, ntiles V tiles, nqr Q-row items); the first reads of bh + lag
 * just before the second reads of bh. Three blocks per SM: 80 registers (a few bytes of spill at D 128). */
template <int D, bool BF16>
__global__ void __launch_bounds__(NT, 3) i8q_fused_kernel(const qattn_cuda_args a, int nqs, int nch, int ntiles, int nqr, int lag, int8_t *qi,
                                                          float *sq, int8_t *ki, float *sk, int8_t *vt, float *sv, const i8_aux w, int *ctl) {
    constexpr int G = D / 8, RG = NT / G;
    /* v_part: V maxima, inverses, the V image, sv and the fixed rows (k_part's mu / f and 1 / f need less) */
    constexpr int KV_SMEM = RG * D * 4 + D * 4 + D * BN + D * 4 + 16 + BN * 4;
    __shared__ __align__(16) unsigned char smem[RG * D * 16 > KV_SMEM ? RG * D * 16 : KV_SMEM];
    __shared__ int s_item;
    if (threadIdx.x == 0) s_item = atomicAdd(ctl, 1);
    __syncthreads();
    const int item = s_item, bhk = a.batch * a.hk, lg = min(lag, bhk), first = nqs + 2 * nch, second = 2 * ntiles + nqr;
    const int n0 = lg * first, n1 = n0 + (bhk - lg) * (first + second);
    int bh, r;
    bool is_first;
    if (item < n0) {
        bh = item / first, r = item % first, is_first = true;
    } else if (item < n1) {
        const int i = (item - n0) / (first + second);
        r = (item - n0) % (first + second), is_first = r < first;
        bh = is_first ? i + lg : i, r -= is_first ? 0 : first;
    } else {
        bh = bhk - lg + (item - n1) / second, r = (item - n1) % second, is_first = false;
    }
    if (is_first && r < nqs) qstat_part<D, BF16>(a, bh * nqs + r, nqs, w.qa, w.qdone, smem);
    else if (is_first && ((r - nqs) & 1) == 0) stats_part<D, BF16, 0>(a, bh * 2 * nch + r - nqs, nch, w, smem);
    else if (is_first) stats_part<D, BF16, 1>(a, bh * 2 * nch + r - nqs, nch, w, smem);
    else if (r < ntiles) k_part<D, BF16>(a, bh, r, w, ki, sk, smem);
    else if (r < 2 * ntiles) v_part<D, BF16>(a, bh, r - ntiles, ntiles, w, vt, sv, smem);
    else q_rows_part<D, BF16>(a, bh, r - 2 * ntiles, qi, sq, w);
}

/* Second launch, only when the LSE is asked: qsh [B, H, lq_pad] = scale * q . mean_k with the dequantized q
 * (codes * sq, as the CPU), what K smoothing removed from the row's scores. */
template <int D> __global__ void __launch_bounds__(NT) i8q_qshift_kernel(const qattn_cuda_args a, const float *km, float *qsh) {
    constexpr int G = D / 8, RG = NT / G;
    const int cg = threadIdx.x % G;
    const int64_t r = (int64_t)blockIdx.x * RG + threadIdx.x / G; /* over [B, H, lq_pad] */
    const bool ok = r < (int64_t)a.batch * a.h * a.lq_pad;
    float dot = 0.f;
    if (ok) {
        const int t = (int)(r % a.lq_pad), h = (int)(r / a.lq_pad % a.h), b = (int)(r / a.lq_pad / a.h);
        const uint2 c = *(const uint2 *)(a.qi + r * D + row_pos<D>(a, t, cg));
        const float *mk = km + ((size_t)b * a.hk + h / (a.h / a.hk)) * D + cg * 8;
#pragma unroll
        for (int i = 0; i < 8; i++) dot = fmaf((float)(int8_t)((i < 4 ? c.x : c.y) >> (8 * (i & 3))), mk[i], dot);
    }
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (ok && cg == 0) qsh[r] = dot * a.sq[r] * a.scale;
}

/* Calibrated pass (qattn_forward_calibrated): what the last statistics item of bh computes, from the
 * calibration's device arrays kf, kmu, vmu [HK][D] instead of the call's statistics, then ready[bh]. One
 * block of D threads per bh. A factor that is not a power of two in 2^-32 .. 2^32 becomes NaN, and so
 * every output of its kv head (the host cannot read device arrays to refuse it). */
template <int D>
__global__ void __launch_bounds__(D) i8q_calib_kernel(const qattn_cuda_args a, const float *kf, const float *kmu, const float *vmu, const i8_aux w) {
    __shared__ float srot[D];
    const int bh = blockIdx.x, d = threadIdx.x;
    const size_t at = (size_t)bh * D + d, ct = (size_t)(bh % a.hk) * D + d;
    float f = kf[ct];
    if (!(f >= 0x1p-32f && f <= 0x1p32f && (__float_as_uint(f) & 0x7fffffu) == 0)) f = __int_as_float(0x7fc00000);
    const float finv = 1.f / f, muf = __fmul_rn(kmu[ct], finv); /* 1 / f exact: a power of two */
    w.fk[at] = f;
    w.finv[at] = finv;
    w.kmf[at] = muf;
    w.vm[at] = vmu[ct];
    srot[d] = __fmul_rn(muf, 1.0f / D);
    hadamard_shared<D>(srot); /* the LSE shift's mean H(mu / f / n), as the statistics item */
    w.km[at] = srot[d];
    if (d == 0) w.ready[bh] = 1; /* read by the next launch */
}

/* Sharp units (docs/FORMAT.md section 7; the CPU's noise_task, src/quant/quant.c): per (b, kv head) the
 * predicted logit noise of the INT8 Q/K codes,
 *   sigma^2 = scale^2 / 12 (mean_i sq_i^2 . mean_j sk_j^2 S_kj + mean_j sk_j^2 . mean_i sq_i^2 S_qi),
 * S the row's sum of squared codes, i over the unit's query rows (every head of the group), j over its
 * keys; the unit is sharp when sigma > noise. Blocks (unit, slice of SHARP_SLICES) sum a slice's rows in
 * double (strided per thread, then a fixed tree) into part; the unit's last block adds the slices in
 * order: the same result on every run, and against the CPU's sequential sums sigma differs by rounding
 * only (the flags too, except within that rounding of the threshold). */
__global__ void __launch_bounds__(NT) i8q_sharp_kernel(const qattn_cuda_args a, const i8_aux w, float noise, double *part, int *sdone, int32_t *sharp,
                                                       float *sigma) {
    __shared__ double red[4][NT];
    __shared__ int last;
    const int u = blockIdx.x, sl = blockIdx.y, b = u / a.hk, g = u % a.hk, grp = a.h / a.hk, tid = threadIdx.x;
    const int64_t nqr = (int64_t)a.lq * grp, q0 = nqr * sl / SHARP_SLICES, q1 = nqr * (sl + 1) / SHARP_SLICES;
    const int k0 = (int)((int64_t)a.lk * sl / SHARP_SLICES), k1 = (int)((int64_t)a.lk * (sl + 1) / SHARP_SLICES);
    double aq = 0.0, cq = 0.0, ak = 0.0, ck = 0.0;
    for (int64_t i = q0 + tid; i < q1; i += NT) { /* positions, then heads, as the CPU */
        const int64_t r = ((int64_t)b * a.h + g * grp + (int)(i % grp)) * a.lq_pad + i / grp;
        const double s2 = (double)a.sq[r] * a.sq[r];
        aq += s2, cq += s2 * w.csq[r];
    }
    for (int j = k0 + tid; j < k1; j += NT) {
        const int64_t r = (int64_t)u * a.lk_pad + j;
        const double s2 = (double)a.sk[r] * a.sk[r];
        ak += s2, ck += s2 * w.csk[r];
    }
    red[0][tid] = aq, red[1][tid] = cq, red[2][tid] = ak, red[3][tid] = ck;
    __syncthreads();
    for (int h = NT / 2; h > 0; h >>= 1) {
        if (tid < h)
#pragma unroll
            for (int x = 0; x < 4; x++) red[x][tid] += red[x][tid + h];
        __syncthreads();
    }
    if (tid < 4) part[((int64_t)u * SHARP_SLICES + sl) * 4 + tid] = red[tid][0];
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(sdone + u, 1) == SHARP_SLICES - 1;
    __syncthreads();
    if (!last || tid != 0) return;
    __threadfence();
    double t[4] = {0.0, 0.0, 0.0, 0.0};
    for (int k = 0; k < SHARP_SLICES; k++)
        for (int x = 0; x < 4; x++) t[x] += __ldcg(part + ((int64_t)u * SHARP_SLICES + k) * 4 + x);
    double sg = 0.0;
    if (a.lq > 0 && a.lk > 0) {
        const double rows = (double)nqr, nk = (double)a.lk, sc = a.scale;
        sg = sqrt(sc * sc / 12.0 * ((t[0] / rows) * (t[3] / nk) + (t[2] / nk) * (t[1] / rows)));
    }
    sigma[u] = (float)sg;
    sharp[u] = sg > (double)noise;
}

template <int D, bool BF16>
cudaError_t quantize(qattn_cuda_args &a, const i8_layout &L, unsigned char *ws, cudaStream_t st, const qattn_calibration *cal, float noise,
                     int qk_code_max) {
    constexpr int G = D / 8, RG = NT / G;
    int8_t *qi = (int8_t *)(ws + L.qi), *ki = (int8_t *)(ws + L.ki), *vt = (int8_t *)(ws + L.vt);
    float *sq = (float *)(ws + L.sq), *sk = (float *)(ws + L.sk), *sv = (float *)(ws + L.sv), *vm = (float *)(ws + L.vm), *km = (float *)(ws + L.km);
    float *qsh = (float *)(ws + L.qsh);
    a.qsh = qsh;
    a.qi = qi, a.ki = ki, a.vt = vt, a.sq = sq, a.sk = sk, a.sv = sv, a.vm = vm;
    a.sched = (int32_t *)(ws + L.sched);
    a.vfix_n = (int32_t *)(ws + L.vfn), a.vfix_key = (int32_t *)(ws + L.vfkey), a.vfix_res = (float *)(ws + L.vfres);
    if (a.lk == 0) return cudaSuccess; /* the FP16 kernel's empty-key rule runs instead */
    const int64_t bhk = (int64_t)a.batch * a.hk, nq = (int64_t)a.batch * a.lq_pad * a.h, grp = a.h / a.hk;
    const int nch = cal ? 0 : n_chunks(a.lk), ntiles = a.lk_pad / BN; /* calibrated: no statistics items */
    const int64_t nqr = (a.lq_pad * grp + QRI * RG - 1) / (QRI * RG); /* Q-row items per bh */
    cudaError_t e;
    if ((e = cudaMemsetAsync(ws + L.sched, 0, L.total - L.sched, st)) != cudaSuccess) return e; /* sched, ticket, done, ready */
    i8_aux w;
    int *ctl = (int *)(ws + L.ctl);
    w.psum = (double *)(ws + L.psum), w.pabs = (float *)(ws + L.pabs), w.pmin = (uint32_t *)(ws + L.pmin);
    w.pkmin = (float *)(ws + L.pkmin), w.pkmax = (float *)(ws + L.pkmax);
    w.km = km, w.kmf = (float *)(ws + L.kmf), w.fk = (float *)(ws + L.fk), w.finv = (float *)(ws + L.finv), w.vm = vm;
    w.qa = (unsigned *)(ws + L.qa);
    w.csq = (int32_t *)(ws + L.csq), w.csk = (int32_t *)(ws + L.csk);
    w.vfn = (int *)(ws + L.vfn), w.vfkey = (int *)(ws + L.vfkey), w.vfres = (float *)(ws + L.vfres);
    w.done = ctl + 1, w.ready = ctl + 1 + bhk, w.qdone = ctl + 1 + 2 * bhk;
    w.nqc = cal ? 0 : n_qchunks(a.lq); /* calibrated: no Q ranges */
    w.qk_cmax = (float)qk_code_max;
    /* bytes of one bh's first reads (K and V, and its Q heads unless calibrated) */
    const int64_t bh_bytes = (int64_t)4 * D * a.lk + (cal ? 0 : (int64_t)2 * D * a.lq * grp);
    const int lag = (int)max((int64_t)1, ((int64_t)24 << 20) / max(bh_bytes, (int64_t)1));
    if (cal) {
        i8q_calib_kernel<D><<<(unsigned)bhk, D, 0, st>>>(a, cal->k_factor, cal->k_mean, cal->v_mean, w);
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
    const int64_t items = bhk * (w.nqc + 2 * nch + 2 * ntiles + nqr);
    if (items > INT32_MAX || nqr > INT32_MAX) return cudaErrorInvalidConfiguration;
    i8q_fused_kernel<D, BF16><<<(unsigned)items, NT, 0, st>>>(a, w.nqc, nch, ntiles, (int)nqr, lag, qi, sq, ki, sk, vt, sv, w, ctl);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    if (noise > 0.f) {
        int32_t *sharp = (int32_t *)(ws + L.sharp);
        i8q_sharp_kernel<<<dim3((unsigned)bhk, SHARP_SLICES), NT, 0, st>>>(a, w, noise, (double *)(ws + L.spart), (int *)(ws + L.sdone), sharp,
                                                                        (float *)(ws + L.sigma));
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
        a.skip_units = sharp;
    }
    if (a.lse) {
        i8q_qshift_kernel<D><<<(unsigned)((nq + RG - 1) / RG), NT, 0, st>>>(a, km, qsh);
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
    return cudaSuccess;
}

} // namespace

size_t qattn_cuda_i8_workspace(const qattn_cuda_args &a) { return layout(a, lk_padded(a.lk)).total; }

cudaError_t qattn_cuda_quantize_i8(qattn_cuda_args &a, int bf16, void *ws, cudaStream_t stream, const qattn_calibration *cal, float sharp_noise,
                                  int qk_code_max) {
    if (qk_code_max < 1 || qk_code_max > 127) return cudaErrorInvalidValue;
    a.lk_pad = lk_padded(a.lk);
    a.lq_pad = (a.lq + QPAD - 1) / QPAD * QPAD;
    const i8_layout L = layout(a, a.lk_pad);
    unsigned char *w = (unsigned char *)ws;
    switch (a.d) {
    case 64: return bf16 ? quantize<64, true>(a, L, w, stream, cal, sharp_noise, qk_code_max) : quantize<64, false>(a, L, w, stream, cal, sharp_noise, qk_code_max);
    case 128: return bf16 ? quantize<128, true>(a, L, w, stream, cal, sharp_noise, qk_code_max)
                          : quantize<128, false>(a, L, w, stream, cal, sharp_noise, qk_code_max);
    }
    return cudaErrorInvalidValue;
}

/* Test hook (tests/gpu/test_gpu.c compares the workspace with the CPU's quantization; not public API):
 * for p's shape, the byte offsets in the INT8 workspace of qi, sq, ki, sk, vt, sv, vm, km, sharp, sigma,
 * and pads = {lq_pad, lk_pad}. */
extern "C" void qattn_cuda_i8_offsets(const qattn_params *p, size_t off[10], int32_t pads[2]) {
    qattn_cuda_args a;
    memset(&a, 0, sizeof a);
    a.batch = (int32_t)p->batch, a.lq = (int32_t)p->seqlen_q, a.lk = (int32_t)p->seqlen_k;
    a.h = p->n_heads, a.hk = p->n_kv_heads, a.d = p->head_dim;
    const i8_layout L = layout(a, lk_padded(a.lk));
    const size_t o[10] = {L.qi, L.sq, L.ki, L.sk, L.vt, L.sv, L.vm, L.km, L.sharp, L.sigma};
    memcpy(off, o, sizeof o);
    pads[0] = (a.lq + QPAD - 1) / QPAD * QPAD;
    pads[1] = lk_padded(a.lk);
}
