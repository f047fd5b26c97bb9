/* Per-row pieces shared by the two INT8 attention kernels (fwd_mma_i8.cu, fwd_wgmma_i8.cu): a thread
 * holds query rows row0 and row0 + 8 of an m16 accumulator tile (the mma.sync and wgmma layouts agree). */
#ifndef QATTN_CUDA_I8_ROWS_CUH
#define QATTN_CUDA_I8_ROWS_CUH

#include "rows.cuh"

/* Row factors sq * scale * log2 e, kept > 0 so that a masked -inf score stays -inf (an all-zero Q row
 * has sq 0: its scores are exactly 0 whatever the factor). sq_row0: the scale of row0, in global or
 * shared memory, with row0 + 8 behind it. */
__device__ __forceinline__ void qattn_i8_row_factors(const qattn_cuda_args &a, const float *sq_row0, int row0, float rf[2]) {
    rf[0] = fmaxf(row0 < a.lq ? sq_row0[0] * a.scale_log2 : 0.f, 1e-30f);
    rf[1] = fmaxf(row0 + 8 < a.lq ? sq_row0[8] * a.scale_log2 : 0.f, 1e-30f);
}

/* O = acc / l + mean_v[d] (l counts P codes, in units of 255 p; V smoothing adds the mean back; rows
 * that see no key stay 0) and LSE = ln(sum p) + the K-smoothing shift; l is summed over the quad.
 * Two costs of this store showed in a per-step clock trace of the wgmma kernel (H200, docs/gpu.md):
 * - every load comes before the first store: the compiler cannot tell the output from the inputs, so
 *   a load placed after a store waits for it (interleaved: 32 dependent round trips to L2 per item,
 *   about 9600 cycles, the cost of 2-3 key tiles);
 * - 4-byte stores touching 8 rows per instruction: qattn_store_row (rows.cuh) writes 16-byte chunks. */
template <int D>
__device__ __forceinline__ void qattn_i8_store_rows(const qattn_cuda_args &a, int b, int h, int64_t bhk, int row0, int t4,
                                                    const float (&o)[D / 8][4], const float mx[2], const float l[2], const float rf[2]) {
    const float *vmg = a.vm + bhk * D; /* bhk = b * HK + the kv head of h */
    float2 mv[D / 8];
#pragma unroll
    for (int i = 0; i < D / 8; i++) mv[i] = *(const float2 *)(vmg + i * 8 + 2 * t4);
    const bool lse = a.lse && t4 == 0;
    const float *qshg = a.qsh + ((int64_t)b * a.h + h) * a.lq_pad + row0; /* rows < lq_pad: always readable */
    const float qsh[2] = {lse ? qshg[0] : 0.f, lse ? qshg[8] : 0.f};
    const int64_t ooff = (int64_t)b * a.o_bs + (int64_t)h * a.o_hs;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int row = row0 + 8 * r;
        const float inv = sum > 0.f ? 1.f / sum : 0.f, mf = sum > 0.f ? 1.f : 0.f;
        float x[D / 8], y[D / 8];
#pragma unroll
        for (int i = 0; i < D / 8; i++) x[i] = fmaf(o[i][2 * r], inv, mv[i].x * mf), y[i] = fmaf(o[i][2 * r + 1], inv, mv[i].y * mf);
        qattn_store_row<D / 8>(a, ooff + (int64_t)row * a.o_ss, row, t4, x, y);
        if (lse && row < a.lq)
            a.lse[((int64_t)b * a.h + h) * a.lq + row] =
                sum > 0.f ? (mx[r] * rf[r] + log2f(sum * (1.f / 255.f))) * 0.69314718055994531f + qsh[r] : -INFINITY;
    }
}

#endif /* QATTN_CUDA_I8_ROWS_CUH */
