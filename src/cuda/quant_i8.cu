/* The INT8 path's quantization pass (int8_scheme DEFAULT, non-varlen): f16/bf16 Q, K, V into the
 * workspace codes, scales and means that the attention kernels (fwd_mma_i8.cu, fwd_wgmma_i8.cu) read.
 * Scheme and layouts: fwd_mma_i8.cu's header. One launch, i8q_fused (a second only when LSE is asked),
 * whose blocks take work items in ticket order (an atomic counter), of three kinds:
 *   1. statistics (stats_q_part): per-chunk statistics of K and V per (sequence, kv head, channel): the
 *      sum in double, the sum of |x| and the smallest nonzero |x| (the last two prove the sum exact,
 *      below); the last chunk of a (b, kv head) bh computes bh's K and V means (mean_one) and raises
 *      ready[bh];
 *   2. K/V tiles (kv_part): per 128-key tile, K rows (per token, mean subtracted) and V (transposed, per
 *      channel and tile, mean subtracted), both written as the attention kernels' images; a tile issues
 *      its loads, then waits for ready[bh];
 *   3. Q rows (stats_q_part past the statistics items): quantized per token, no mean; they come last.
 * Order: the statistics of bh + lag just before the tiles of bh, lag chosen so ~24 MB of K/V lie between
 * the two reads of a row, which the tiles then find in L2 (K/V read from DRAM about once). A waiting item
 * only waits on items with smaller tickets, which are running or done: no deadlock. Measured (H200, D 128,
 * B*L = 16k): 0.194-0.204 ms against 0.224-0.232 ms for the three separate launches it replaced.
 * Rows: one group of D/8 lanes per row, 16-byte loads, 8-byte (K, Q) or 16-byte (V) stores.
 *
 * Bitwise agreement with the CPU (src/quant/quant.c): codes = clamp(rne(y * inv), +-127) with
 * y = x - mean, inv = 127 / max|y| (0 for an all-zero row), scale = max|y| / 127, as the CPU's quant_row;
 * the means as the CPU's: the double sum over positions ascending, divided in double, rounded to float.
 * The GPU sums in parallel in double. Every f16/bf16 value is a multiple of 2^e (e: the exponent of the
 * last mantissa bit of the smallest nonzero |x| of the channel), so while sum |x| < 2^(53 + e) every
 * partial sum, in any order, is exact, and the parallel result equals the CPU's. mean_one checks that
 * bound per channel (sum |x| in float, with a factor 2 of margin for its rounding) and otherwise redoes
 * the channel's sum in the CPU's order (one thread, all positions: slow, met only by data mixing
 * magnitudes more than ~2^29 apart, e.g. N(0,1) never does).
 *
 * Per-channel smoothing factors (a per-channel max|Q| over a GQA group and max|K|, applied before the
 * codes) would add two max accumulators to the statistics pass and move Q's quantization after the
 * statistics items (Q read twice: once for the max, once for the codes). */
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
constexpr int CH = 512;   /* tokens per chunk of the statistics */
constexpr int QRI = 4;    /* Q rows per lane group and block (loads issued together) */

inline size_t align256(size_t x) { return (x + 255) / 256 * 256; }

int lk_padded(int lk) { return (lk + BN - 1) / BN * BN; }
int n_chunks(int lk) { return (lk + CH - 1) / CH; }

struct i8_layout {
    size_t qi, sq, ki, sk, vt, sv, vm, km, psum, pabs, pmin, qsh, sched, ctl, total;
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
    L.km = off, off += align256(B * HK * D * 4);
    L.psum = off, off += align256(nst * 8);
    L.pabs = off, off += align256(nst * 4);
    L.pmin = off, off += align256(nst * 4);
    L.qsh = off, off += align256(B * H * lq_pad * 4);
    L.sched = off, off += 256;
    L.ctl = off, off += align256((1 + 2 * B * HK) * 4); /* ticket, done[bh], ready[bh]; zeroed with sched */
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

/* The CPU's code: clamp(rne(y * inv), -127, 127), low byte. */
__device__ __forceinline__ uint32_t code8(float y, float inv) { return (uint32_t)max(-127, min(127, __float2int_rn(y * inv))); }

/* max over the G lanes of a row's group (consecutive lanes, G a power of two <= 32); NaN propagates. */
template <int G> __device__ __forceinline__ float group_max(float m) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) m = qattn_fmax_nan(m, __shfl_xor_sync(0xffffffffu, m, o));
    return m;
}

/* One row of D values held by D/8 lanes (8 each, y centred): the codes of this lane's 8 values and the
 * row's scale. A non-finite value makes the scale NaN or Inf, and so every score of the row. */
template <int D> __device__ __forceinline__ float quant_row8(const float y[8], uint2 &codes) {
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) m = qattn_fmax_nan(m, fabsf(y[i]));
    m = group_max<D / 8>(m);
    const float inv = m > 0.f ? 127.f / m : 0.f;
    codes.x = qattn_pack4(code8(y[0], inv), code8(y[1], inv), code8(y[2], inv), code8(y[3], inv));
    codes.y = qattn_pack4(code8(y[4], inv), code8(y[5], inv), code8(y[6], inv), code8(y[7], inv));
    return m / 127.f;
}

/* Byte offset in a 128-byte-row image of the 8 codes of lane group cg (channels 8 cg ..) for row t: with
 * the wgmma kernel (D 128) 16-byte chunk c of row t sits at chunk c ^ (t & 7) (its 128-byte swizzle). */
template <int D> __device__ __forceinline__ int row_pos(const qattn_cuda_args &a, int t, int cg) {
    return (D == 128 && a.i8_wgmma) ? (((cg >> 1) ^ (t & 7)) << 4) | ((cg & 1) << 3) : cg * 8;
}

/* Running statistics of 8 channels: the sum (double), the sum of |x|, and per channel pair the smallest
 * (bits of |x|) - 1 as 16-bit halves (0 wraps to 0xffff: zeros never count as the smallest). */
struct chan_stats {
    double s[8];
    float ab[8];
    uint32_t mn[4];
};

template <bool BF16> __device__ __forceinline__ void stats_add(chan_stats &st, const uint4 u) {
    float f[8];
    cvt8<BF16>(u, f);
#pragma unroll
    for (int i = 0; i < 8; i++) st.s[i] += (double)f[i], st.ab[i] += fabsf(f[i]);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; j++) st.mn[j] = __vminu2(st.mn[j], __vsub2(w[j] & 0x7fff7fffu, 0x00010001u));
}

/* Item kinds 1 and 3. Items [0, nst = B*HK*nch): chunk c of (b, kv head) bh: per channel and tensor (K 0, V 1)
 * partial statistics psum/pabs/pmin [bh][c][2][D]. Items [nst, nst + nqb): Q rows, QRI * (NT / (D/8)) per
 * item, rows over [B, lq_pad, H] (head fastest: the input's order) into Qi [B, H, lq_pad, D],
 * sq [B, H, lq_pad]; rows past lq get zero codes and scale 0 (the short Q items fill the launch's tail). */
template <int D, bool BF16>
__device__ __forceinline__ void mean_one(const qattn_cuda_args &a, int nch, int bh, int x, int d, const double *psum, const float *pabs,
                                         const uint32_t *pmin, float *km, float *vm);
template <int D, bool BF16>
__device__ __forceinline__ void stats_q_part(const qattn_cuda_args &a, int blk, int nst, int nch, int8_t *qi, float *sq, double *psum,
                                             float *pabs, uint32_t *pmin, unsigned char *smem, int *done, int *ready, float *km, float *vm) {
    constexpr int G = D / 8, RG = NT / G;
    const int cg = threadIdx.x % G, rg = threadIdx.x / G;
    if (blk >= nst) {
        const int qb = blk - nst;
        const int64_t nrow = (int64_t)a.batch * a.lq_pad * a.h;
        uint4 u[QRI];
        int64_t row[QRI];
#pragma unroll
        for (int k = 0; k < QRI; k++) {
            row[k] = ((int64_t)qb * QRI + k) * RG + rg;
            const int h = (int)(row[k] % a.h);
            const int64_t bt = row[k] / a.h;
            const int t = (int)(bt % a.lq_pad), b = (int)(bt / a.lq_pad);
            u[k] = row[k] < nrow && t < a.lq ? ld16(a.q, (int64_t)b * a.q_bs + (int64_t)t * a.q_ss + (int64_t)h * a.q_hs + cg * 8)
                                              : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int k = 0; k < QRI; k++) {
            float y[8];
            cvt8<BF16>(u[k], y);
            uint2 codes;
            const float sc = quant_row8<D>(y, codes);
            if (row[k] >= nrow) continue;
            const int h = (int)(row[k] % a.h);
            const int64_t bt = row[k] / a.h;
            const int t = (int)(bt % a.lq_pad), b = (int)(bt / a.lq_pad);
            const int64_t r = ((int64_t)b * a.h + h) * a.lq_pad + t;
            *(uint2 *)(qi + r * D + row_pos<D>(a, t, cg)) = codes;
            if (cg == 0) sq[r] = sc;
        }
        return;
    }
    double(*rs)[D] = (double(*)[D])smem;
    float(*ra)[D] = (float(*)[D])(smem + RG * D * 8);
    uint32_t(*rm)[D] = (uint32_t(*)[D])(smem + RG * D * 12);
    const int s = blk, bh = s / nch, c = s % nch, b = bh / a.hk, hk = bh % a.hk;
    const int t0 = c * CH, t1 = min(a.lk, t0 + CH);
    const int64_t kb = (int64_t)b * a.k_bs + (int64_t)hk * a.k_hs + cg * 8, vb = (int64_t)b * a.v_bs + (int64_t)hk * a.v_hs + cg * 8;
    chan_stats st[2];
#pragma unroll
    for (int x = 0; x < 2; x++) {
#pragma unroll
        for (int i = 0; i < 8; i++) st[x].s[i] = 0.0, st[x].ab[i] = 0.f;
#pragma unroll
        for (int j = 0; j < 4; j++) st[x].mn[j] = 0xffffffffu;
    }
    constexpr int U = 2; /* rows per lane in flight */
    for (int t = t0 + rg; t < t1; t += U * RG) {
        uint4 ku[U], vu[U];
#pragma unroll
        for (int k = 0; k < U; k++) {
            const int tt = t + k * RG;
            ku[k] = tt < t1 ? ld16(a.k, kb + (int64_t)tt * a.k_ss) : make_uint4(0, 0, 0, 0);
            vu[k] = tt < t1 ? ld16(a.v, vb + (int64_t)tt * a.v_ss) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int k = 0; k < U; k++) stats_add<BF16>(st[0], ku[k]), stats_add<BF16>(st[1], vu[k]);
    }
#pragma unroll
    for (int x = 0; x < 2; x++) {
        if (x) __syncthreads();
#pragma unroll
        for (int i = 0; i < 8; i++) {
            rs[rg][cg * 8 + i] = st[x].s[i];
            ra[rg][cg * 8 + i] = st[x].ab[i];
            rm[rg][cg * 8 + i] = i & 1 ? st[x].mn[i / 2] >> 16 : st[x].mn[i / 2] & 0xffffu;
        }
        __syncthreads();
        for (int d = threadIdx.x; d < D; d += NT) {
            double su = 0.0;
            float ab = 0.f;
            uint32_t mn = 0xffffu;
            for (int g = 0; g < RG; g++) su += rs[g][d], ab += ra[g][d], mn = min(mn, rm[g][d]);
            const size_t at = (((size_t)bh * nch + c) * 2 + x) * D + d;
            psum[at] = su;
            pabs[at] = ab;
            pmin[at] = mn;
        }
    }
    /* the last chunk block of bh computes its means (threadFenceReduction pattern) and raises ready[bh] */
    __threadfence();
    __syncthreads();
    int *last = (int *)smem;
    if (threadIdx.x == 0) *last = atomicAdd(done + bh, 1) == nch - 1;
    __syncthreads();
    if (!*last) return;
    __threadfence();
    for (int i = threadIdx.x; i < 2 * D; i += NT) mean_one<D, BF16>(a, nch, bh, i / D, i % D, psum, pabs, pmin, km, vm);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) atomicExch(ready + bh, 1);
}

/* For (b, kv head) bh, tensor x and channel d: the mean over the lk tokens, into km (K) or vm (V)
 * [B*HK][D]; run by the last statistics item of bh (its partial sums read through L2: __ldcg). */
template <int D, bool BF16>
__device__ __forceinline__ void mean_one(const qattn_cuda_args &a, int nch, int bh, int x, int d, const double *psum, const float *pabs,
                                         const uint32_t *pmin, float *km, float *vm) {
    constexpr int MB = BF16 ? 7 : 10, BIAS = BF16 ? 127 : 15; /* mantissa bits, exponent bias */
    double su = 0.0;
    float ab = 0.f;
    uint32_t mn = 0xffffu;
#pragma unroll 8 /* independent loads in flight: nch is 32 at L 16k, each an L2 round trip */
    for (int c = 0; c < nch; c++) {
        const size_t at = (((size_t)bh * nch + c) * 2 + x) * D + d;
        su += __ldcg(psum + at), ab += __ldcg(pabs + at), mn = min(mn, __ldcg(pmin + at));
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
    (x ? vm : km)[(size_t)bh * D + d] = (float)(su / (double)a.lk);
}

/* Item kind 2. One item per 128-key tile of one (b, kv head) (its K/V still in L2 from bh's statistics
 * items). Lane group
 * (rg, cg) holds the keys 16 g + 2 j + {0, 1, 8, 9} of the words w = rg + RG k (g = w / 4, j = w % 4): the
 * four keys whose V codes form word w of a Vt row (the key order of the P fragments, vt_perm in the mma
 * kernel). K: per-token codes of k - mean into Ki [bh][lk_pad][D], sk [bh][lk_pad]. V: y = v - mean,
 * per channel the tile's max|y| -> sv [bh][tile][D], codes staged in shared memory as the tile's
 * [D][128] image (16-byte chunks XOR-swizzled by channel / 8 against bank conflicts), then written in
 * 16-byte stores to Vt (tile-major and swizzled for the wgmma kernel, [bh][D][lk_pad] otherwise). Keys
 * past lk: zero codes, scale 0, not counted in the max. */
template <int D, bool BF16>
__device__ __forceinline__ void kv_part(const qattn_cuda_args &a, int bh, int tile, int ntiles, const float *km, const float *vm, int8_t *ki,
                                        float *sk, int8_t *vt, float *sv, unsigned char *smem, int *ready) {
    constexpr int G = D / 8, RG = NT / G, WPT = 32 / RG, RPT = 4 * WPT;
    float(*smax)[D] = (float(*)[D])smem;
    float *sinv = (float *)(smem + RG * D * 4);
    uint32_t(*sw)[BN / 4] = (uint32_t(*)[BN / 4])(smem + RG * D * 4 + D * 4);
    const int b = bh / a.hk, hk = bh % a.hk;
    const int cg = threadIdx.x % G, rg = threadIdx.x / G, c0 = cg * 8;
    const int64_t kb = (int64_t)b * a.k_bs + (int64_t)hk * a.k_hs + c0, vb = (int64_t)b * a.v_bs + (int64_t)hk * a.v_hs + c0;
    int key[RPT];
    uint4 ku[RPT], vu[RPT];
#pragma unroll
    for (int r = 0; r < RPT; r++) {
        const int w = rg + RG * (r / 4), u = r % 4;
        key[r] = tile * BN + 16 * (w >> 2) + 2 * (w & 3) + (u & 1) + 8 * (u >> 1);
        const bool in = key[r] < a.lk;
        ku[r] = in ? ld16(a.k, kb + (int64_t)key[r] * a.k_ss) : make_uint4(0, 0, 0, 0);
        vu[r] = in ? ld16(a.v, vb + (int64_t)key[r] * a.v_ss) : make_uint4(0, 0, 0, 0);
    }
    /* the loads above are in flight while bh's means may still be computed */
    if (threadIdx.x == 0)
        while (atomicAdd(ready + bh, 0) == 0) __nanosleep(200);
    __syncthreads();
    __threadfence();
    float kmean[8], vmean[8];
    *(float4 *)kmean = __ldcg((const float4 *)(km + (size_t)bh * D + c0)), *(float4 *)(kmean + 4) = __ldcg((const float4 *)(km + (size_t)bh * D + c0 + 4));
    *(float4 *)vmean = __ldcg((const float4 *)(vm + (size_t)bh * D + c0)), *(float4 *)(vmean + 4) = __ldcg((const float4 *)(vm + (size_t)bh * D + c0 + 4));
    float vmax[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int r = 0; r < RPT; r++) {
        const bool in = key[r] < a.lk;
        float y[8];
        cvt8<BF16>(ku[r], y);
#pragma unroll
        for (int i = 0; i < 8; i++) y[i] = in ? y[i] - kmean[i] : 0.f;
        uint2 codes;
        const float sc = quant_row8<D>(y, codes);
        const int64_t row = (int64_t)bh * a.lk_pad + key[r];
        *(uint2 *)(ki + row * D + row_pos<D>(a, key[r], cg)) = codes;
        if (cg == 0) sk[row] = sc;
        cvt8<BF16>(vu[r], y);
#pragma unroll
        for (int i = 0; i < 8; i++) vmax[i] = qattn_fmax_nan(vmax[i], in ? fabsf(y[i] - vmean[i]) : 0.f);
    }
    *(float4 *)&smax[rg][c0] = *(const float4 *)vmax;
    *(float4 *)&smax[rg][c0 + 4] = *(const float4 *)(vmax + 4);
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += NT) {
        float m = 0.f;
        for (int g = 0; g < RG; g++) m = qattn_fmax_nan(m, smax[g][d]);
        sinv[d] = m > 0.f ? 127.f / m : 0.f;
        sv[((size_t)bh * ntiles + tile) * D + d] = m / 127.f;
    }
    __syncthreads();
    float inv[8];
#pragma unroll
    for (int i = 0; i < 8; i++) inv[i] = sinv[c0 + i];
#pragma unroll
    for (int k = 0; k < WPT; k++) {
        uint32_t cw[8][4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int r = 4 * k + u;
            const bool in = key[r] < a.lk;
            float y[8];
            cvt8<BF16>(vu[r], y);
#pragma unroll
            for (int i = 0; i < 8; i++) cw[i][u] = code8(in ? y[i] - vmean[i] : 0.f, inv[i]);
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
}

/* The fused pass: one launch, work items taken in ticket order (so a waiting item's predecessors are all
 * running or done: no deadlock): the statistics of (b, kv head) bh + lag come just before the K/V tiles of bh,
 * which wait for ready[bh] after issuing their loads; lag keeps ~24 MB of K/V between the two reads, so the
 * tiles' K/V come from L2. The Q blocks come last. */
template <int D, bool BF16>
__global__ void __launch_bounds__(NT, 2) i8q_fused_kernel(const qattn_cuda_args a, int nch, int ntiles, int lag, int nst, int8_t *qi, float *sq,
                                                          double *psum, float *pabs, uint32_t *pmin, float *km, float *vm, int8_t *ki, float *sk,
                                                          int8_t *vt, float *sv, int *ctl) {
    constexpr int G = D / 8, RG = NT / G;
    __shared__ __align__(16) unsigned char smem[RG * D * 16 > RG * D * 4 + D * 4 + D * BN ? RG * D * 16 : RG * D * 4 + D * 4 + D * BN];
    __shared__ int s_item;
    if (threadIdx.x == 0) s_item = atomicAdd(ctl, 1);
    __syncthreads();
    const int item = s_item, bhk = a.batch * a.hk, lg = min(lag, bhk), grp = nch + ntiles;
    int *done = ctl + 1, *ready = ctl + 1 + bhk;
    const int n0 = lg * nch, n1 = n0 + (bhk - lg) * grp, n2 = n1 + lg * ntiles;
    if (item < n0) {
        stats_q_part<D, BF16>(a, item, nst, nch, qi, sq, psum, pabs, pmin, smem, done, ready, km, vm);
    } else if (item < n1) {
        const int i = (item - n0) / grp, r = (item - n0) % grp;
        if (r < nch) stats_q_part<D, BF16>(a, (i + lg) * nch + r, nst, nch, qi, sq, psum, pabs, pmin, smem, done, ready, km, vm);
        else kv_part<D, BF16>(a, i, r - nch, ntiles, km, vm, ki, sk, vt, sv, smem, ready);
    } else if (item < n2) {
        const int i = bhk - lg + (item - n1) / ntiles;
        kv_part<D, BF16>(a, i, (item - n1) % ntiles, ntiles, km, vm, ki, sk, vt, sv, smem, ready);
    } else {
        stats_q_part<D, BF16>(a, nst + (item - n2), nst, nch, qi, sq, psum, pabs, pmin, smem, done, ready, km, vm);
    }
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

template <int D, bool BF16> cudaError_t quantize(qattn_cuda_args &a, const i8_layout &L, unsigned char *ws, cudaStream_t st) {
    constexpr int G = D / 8, RG = NT / G;
    int8_t *qi = (int8_t *)(ws + L.qi), *ki = (int8_t *)(ws + L.ki), *vt = (int8_t *)(ws + L.vt);
    float *sq = (float *)(ws + L.sq), *sk = (float *)(ws + L.sk), *sv = (float *)(ws + L.sv), *vm = (float *)(ws + L.vm), *km = (float *)(ws + L.km);
    float *qsh = (float *)(ws + L.qsh);
    a.qsh = qsh;
    a.qi = qi, a.ki = ki, a.vt = vt, a.sq = sq, a.sk = sk, a.sv = sv, a.vm = vm;
    a.sched = (int32_t *)(ws + L.sched);
    if (a.lk == 0) return cudaSuccess; /* the FP16 kernel's empty-key rule runs instead */
    const int64_t bhk = (int64_t)a.batch * a.hk, nq = (int64_t)a.batch * a.lq_pad * a.h;
    const int nch = n_chunks(a.lk), ntiles = a.lk_pad / BN;
    const int64_t nqb = (nq + QRI * RG - 1) / (QRI * RG), nst = bhk * nch, nb1 = nst + nqb, nb3 = bhk * ntiles;
    if (nb1 > INT32_MAX || nb3 > INT32_MAX || bhk > INT32_MAX) return cudaErrorInvalidConfiguration;
    cudaError_t e;
    if ((e = cudaMemsetAsync(ws + L.sched, 0, L.total - L.sched, st)) != cudaSuccess) return e; /* sched, ticket, done, ready */
    const int64_t kvb = (int64_t)4 * D * a.lk; /* K + V bytes of one bh */
    const int lag = (int)max((int64_t)1, ((int64_t)24 << 20) / max(kvb, (int64_t)1));
    i8q_fused_kernel<D, BF16><<<(unsigned)(nb1 + nb3), NT, 0, st>>>(a, nch, ntiles, lag, (int)nst, qi, sq, (double *)(ws + L.psum),
                                                                 (float *)(ws + L.pabs), (uint32_t *)(ws + L.pmin), km, vm, ki, sk, vt, sv,
                                                                 (int *)(ws + L.ctl));
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    if (a.lse) {
        i8q_qshift_kernel<D><<<(unsigned)((nq + RG - 1) / RG), NT, 0, st>>>(a, km, qsh);
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
    return cudaSuccess;
}

} // namespace

size_t qattn_cuda_i8_workspace(const qattn_cuda_args &a) { return layout(a, lk_padded(a.lk)).total; }

cudaError_t qattn_cuda_quantize_i8(qattn_cuda_args &a, int bf16, void *ws, cudaStream_t stream) {
    a.lk_pad = lk_padded(a.lk);
    a.lq_pad = (a.lq + QPAD - 1) / QPAD * QPAD;
    const i8_layout L = layout(a, a.lk_pad);
    unsigned char *w = (unsigned char *)ws;
    switch (a.d) {
    case 64: return bf16 ? quantize<64, true>(a, L, w, stream) : quantize<64, false>(a, L, w, stream);
    case 128: return bf16 ? quantize<128, true>(a, L, w, stream) : quantize<128, false>(a, L, w, stream);
    }
    return cudaErrorInvalidValue;
}

/* Test hook (tests/gpu/test_gpu.c compares the workspace with the CPU's quantization; not public API):
 * for p's shape, the byte offsets in the INT8 workspace of qi, sq, ki, sk, vt, sv, vm, km, and
 * pads = {lq_pad, lk_pad}. */
extern "C" void qattn_cuda_i8_offsets(const qattn_params *p, size_t off[8], int32_t pads[2]) {
    qattn_cuda_args a;
    memset(&a, 0, sizeof a);
    a.batch = (int32_t)p->batch, a.lq = (int32_t)p->seqlen_q, a.lk = (int32_t)p->seqlen_k;
    a.h = p->n_heads, a.hk = p->n_kv_heads, a.d = p->head_dim;
    const i8_layout L = layout(a, lk_padded(a.lk));
    const size_t o[8] = {L.qi, L.sq, L.ki, L.sk, L.vt, L.sv, L.vm, L.km};
    memcpy(off, o, sizeof o);
    pads[0] = (a.lq + QPAD - 1) / QPAD * QPAD;
    pads[1] = lk_padded(a.lk);
}
