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

#endif /* QATTN_CUDA_ROWS_CUH */
