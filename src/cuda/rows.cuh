/* Per-row pieces shared by the attention kernels (fwd_mma_i8.cu, fwd_wgmma_i8.cu, fwd_wgmma_f16.cu): a
 * thread holds query rows row0 and row0 + 8 of an m16 accumulator tile, two columns of each group of 8
 * (the mma.sync and wgmma layouts agree); the four lanes of a quad hold the same rows. */
#ifndef QATTN_CUDA_ROWS_CUH
#define QATTN_CUDA_ROWS_CUH

#include "cuda_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

/* 4 x 4 transpose of 32-bit words across the lanes of a quad (two butterfly stages): lane t4 ends with
 * x[e] = the word x[t4] of lane e. */
__device__ __forceinline__ void qattn_quad_transpose(uint32_t x[4], int t4) {
#pragma unroll
    for (int m = 1; m <= 2; m <<= 1)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if (e & m) continue;
            const bool hi = t4 & m;
            const uint32_t recv = __shfl_xor_sync(0xffffffffu, hi ? x[e] : x[e ^ m], m);
            if (hi) x[e] = recv;
            else x[e ^ m] = recv;
        }
}

/* One output row of NG groups of 8 columns from this lane's two columns of each group (x, y), in the
 * output dtype, at element offset rbase of a.o; stored only if row < a.lq (every lane of the quad takes
 * part in the transposes). A thread holds two columns of each group of 8, so a direct store is 4 bytes a lane
 * and touches 8 rows per instruction; the quad first transposes its groups so that each lane writes 8
 * whole columns in 16-byte stores (4x fewer store instructions; traced in the INT8 wgmma kernel,
 * docs/gpu.md round 6). The backend admits only 16-byte aligned outputs with strides of multiples of 8
 * elements, so these are always aligned. NG: a multiple of 4. */
template <int NG>
__device__ __forceinline__ void qattn_store_row(const qattn_cuda_args &a, int64_t rbase, int row, int t4, const float (&x)[NG], const float (&y)[NG]) {
#pragma unroll
    for (int k = 0; k < NG / 4; k++) {
        const int64_t idx = rbase + (4 * k + t4) * 8;
        if (a.o_dtype == 0) {
            uint32_t xs[4], ys[4];
#pragma unroll
            for (int e = 0; e < 4; e++) xs[e] = __float_as_uint(x[4 * k + e]), ys[e] = __float_as_uint(y[4 * k + e]);
            qattn_quad_transpose(xs, t4);
            qattn_quad_transpose(ys, t4);
            if (row < a.lq) {
                *(uint4 *)((float *)a.o + idx) = make_uint4(xs[0], ys[0], xs[1], ys[1]);
                *(uint4 *)((float *)a.o + idx + 4) = make_uint4(xs[2], ys[2], xs[3], ys[3]);
            }
        } else {
            uint32_t w[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                if (a.o_dtype == 1) {
                    const __half2 v = __floats2half2_rn(x[4 * k + e], y[4 * k + e]);
                    w[e] = *(const uint32_t *)&v;
                } else {
                    const __nv_bfloat162 v = __floats2bfloat162_rn(x[4 * k + e], y[4 * k + e]);
                    w[e] = *(const uint32_t *)&v;
                }
            }
            qattn_quad_transpose(w, t4);
            if (row < a.lq) *(uint4 *)((uint16_t *)a.o + idx) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

/* The online softmax's per-row steps, shared by the kernels (the decode kernels keep their own layouts). */

/* A row's max over the four lanes of its quad (each holds some of the row's columns). NaN propagates in the
 * INT8 kernels (NAN_MAX: a non-finite score makes its row non-finite, since their row sums count codes)
 * and is dropped in the FP16/BF16 kernels (fmaxf: the exponential propagates it instead). */
template <bool NAN_MAX> __device__ __forceinline__ float qattn_quad_max(float m) {
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
        const float x = __shfl_xor_sync(0xffffffffu, m, o);
        m = NAN_MAX ? qattn_fmax_nan(m, x) : fmaxf(m, x);
    }
    return m;
}

/* FP16/BF16 kernels (the reference is the running max): the row's new max m (over the old max and the
 * tile) replaces mx; returns m * sl2, what the tile's scores subtract in base 2 (0 while the row has seen
 * no key), and sets alpha = exp2(mx sl2 - m sl2), the factor of what was accumulated (1 when the max did
 * not grow, 0 from -inf). */
__device__ __forceinline__ float qattn_f16_max_step(float &mx, float m, float sl2, float &alpha) {
    const float msc = m == -INFINITY ? 0.f : m * sl2;
    alpha = qattn_ex2(mx * sl2 - msc);
    mx = m;
    return msc;
}

/* INT8 kernels: P is coded against the tile's own row max mb, and O and l are relative to the row's
 * reference max mx, which moves to mb only when mb exceeds it by more than TAU in the base-2 exponent
 * (lazy rescale; TAU 0: the running max). Sets alpha = exp2((mx - new) rf), the factor of what was
 * accumulated (0 from -inf), and beta = exp2((mb - new) rf), the tile's (0 for a tile the row does not
 * see; <= 2^TAU); returns whether the reference moved (TAU 0: not computed, false). */
template <int TAU> __device__ __forceinline__ bool qattn_i8_max_step(float &mx, float mb, float rf, float &alpha, float &beta) {
    float mn;
    bool up = false;
    if constexpr (TAU == 0) {
        mn = fmaxf(mx, mb);
        alpha = mx == -INFINITY ? 0.f : qattn_ex2((mx - mn) * rf);
    } else {
        up = (mb - mx) * rf > (float)TAU; /* false for NaN; true from -inf */
        mn = up ? mb : mx;
        alpha = mx == -INFINITY ? 0.f : up ? qattn_ex2((mx - mn) * rf) : 1.f;
    }
    beta = mb == -INFINITY ? 0.f : qattn_ex2((mb - mn) * rf);
    mx = mn;
    return up;
}

#endif /* QATTN_CUDA_ROWS_CUH */
