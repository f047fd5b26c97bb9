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

/* The fixed V rows of bh (qattn_cuda_args.vfix_n; nfix of them, at most QATTN_I8_VFIX_MAX) added back to
 * O before its division by l: per such key j that the row sees, 255 exp2((s_j - mx) rf) times j's
 * residual, s_j the row's INT8 score of key j (its codes, as the kernel's S), in the units of l (255 p
 * relative to mx). Keys in ascending order whatever the slots' order, so the sum is the same on every
 * run. bm: the call's block mask (a masked block's key is not seen), NULL if none. Costs nothing on
 * inputs without fixed rows (nfix 0: not called). */
template <int D>
__device__ __forceinline__ void qattn_i8_vfix(const qattn_cuda_args &a, int b, int h, int64_t bhk, int row0, int t4, int nfix, const qattn_cuda_bmask *bm,
                                           float (&o)[D / 8][4], const float mx[2], const float rf[2]) {
    constexpr int NC = D / 64; /* 16-byte chunks of a code row per lane of the quad */
    uint4 qc[2][NC];
    int lo[2], hi[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + 8 * r; /* < lq_pad: always readable */
        const int8_t *qp = a.qi + (((int64_t)b * a.h + h) * a.lq_pad + row) * D;
#pragma unroll
        for (int c = 0; c < NC; c++) qc[r][c] = *(const uint4 *)(qp + qattn_i8_chunk_at<D>(a, row, t4 * NC + c));
        qattn_fwd_key_range(row, a.lq, a.lk, a.wl, a.wr, lo[r], hi[r]);
        if (row >= a.lq || !(mx[r] > -INFINITY)) hi[r] = lo[r]; /* no key seen: nothing to add */
    }
    const int32_t *keys = a.vfix_key + bhk * QATTN_I8_VFIX_MAX;
    int last = -1;
    for (int n = 0; n < nfix; n++) {
        int j = 0x7fffffff, e = 0;
        for (int x = 0; x < nfix; x++) {
            const int kx = keys[x];
            if (kx > last && kx < j) j = kx, e = x;
        }
        last = j;
        const int8_t *kp = a.ki + (bhk * a.lk_pad + j) * D;
        int dot[2] = {0, 0};
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const uint4 kc = *(const uint4 *)(kp + qattn_i8_chunk_at<D>(a, j, t4 * NC + c));
#pragma unroll
            for (int r = 0; r < 2; r++)
                dot[r] = __dp4a((int)qc[r][c].x, (int)kc.x, __dp4a((int)qc[r][c].y, (int)kc.y, __dp4a((int)qc[r][c].z, (int)kc.z, __dp4a((int)qc[r][c].w, (int)kc.w, dot[r]))));
        }
        const float skj = a.sk[bhk * a.lk_pad + j];
        float wt[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            dot[r] += __shfl_xor_sync(0xffffffffu, dot[r], 1);
            dot[r] += __shfl_xor_sync(0xffffffffu, dot[r], 2);
            bool seen = j >= lo[r] && j < hi[r];
            if (seen && bm && bm->m) {
                const int row = row0 + 8 * r;
                seen = bm->m[(int64_t)b * bm->bs + (int64_t)h * bm->hs + (int64_t)(row / bm->bq) * bm->rs + j / bm->bk] != 0;
            }
            wt[r] = seen ? 255.f * exp2f(((float)dot[r] * skj - mx[r]) * rf[r]) : 0.f;
        }
        const float *res = a.vfix_res + (bhk * QATTN_I8_VFIX_MAX + e) * D + 2 * t4;
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            const float2 rv = *(const float2 *)(res + i * 8);
            o[i][0] = fmaf(wt[0], rv.x, o[i][0]), o[i][1] = fmaf(wt[0], rv.y, o[i][1]);
            o[i][2] = fmaf(wt[1], rv.x, o[i][2]), o[i][3] = fmaf(wt[1], rv.y, o[i][3]);
        }
    }
}

/* O = acc / l + mean_v[d] (l counts P codes, in units of 255 p; V smoothing adds the mean back; rows
 * that see no key stay 0; the fixed V rows added to acc first) and LSE = ln(sum p) + the K-smoothing shift; l is summed over the quad.
 * Two costs of this store showed in a per-step clock trace of the wgmma kernel (H200, docs/gpu.md):
 * - every load comes before the first store: the compiler cannot tell the output from the inputs, so
 *   a load placed after a store waits for it (interleaved: 32 dependent round trips to L2 per item,
 *   about 9600 cycles, the cost of 2-3 key tiles);
 * - 4-byte stores touching 8 rows per instruction: qattn_store_row (rows.cuh) writes 16-byte chunks. */
template <int D>
__device__ __forceinline__ void qattn_i8_store_rows(const qattn_cuda_args &a, int b, int h, int64_t bhk, int row0, int t4, float (&o)[D / 8][4],
                                                    const float mx[2], const float l[2], const float rf[2], const qattn_cuda_bmask *bm) {
    const float *vmg = a.vm + bhk * D; /* bhk = b * HK + the kv head of h */
    float2 mv[D / 8];
#pragma unroll
    for (int i = 0; i < D / 8; i++) mv[i] = *(const float2 *)(vmg + i * 8 + 2 * t4);
    const int nfix = a.vfix_n ? a.vfix_n[bhk] : 0;
    if (nfix > 0 && nfix <= QATTN_I8_VFIX_MAX) qattn_i8_vfix<D>(a, b, h, bhk, row0, t4, nfix, bm, o, mx, rf);
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
