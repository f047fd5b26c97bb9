/* INT8 flash attention forward with mma.sync.m16n8k32 (sm_80+); quant_i8.cu quantizes the FP16/BF16
 * inputs (non-varlen) into the layouts below.
 *
 * Scheme (the CUDA side of int8_scheme DEFAULT, docs/FORMAT.md section 3, with V per channel):
 *   K smoothing: K' = K - mean over tokens of K, per (batch, kv head, channel). Exact for softmax
 *     (every score of a query row shifts by the same q.mean); the LSE gets scale * q.mean back.
 *   V smoothing: V' = V - mean over tokens of V (per channel); O = P V' + mean (rows sum to 1).
 *   Q, K': per-token symmetric INT8, scale = max|x| / 127 (sq [B,H,Lq], sk [B,HK,Lk_pad]).
 *   V': symmetric INT8 per channel and 128-key tile, sv [B,HK,Lk_pad/128,D] = max|v'| / 127; vm [B,HK,D] = mean;
 *     the rows these codes represent badly (a sink's small value row) keep their residuals, added back in
 *     the epilogue (qattn_cuda_args.vfix_n, i8_rows.cuh).
 *   Q, K', the means: bitwise the CPU's (quant_i8.cu).
 *   S = sq_i * sk_j * (Qi . Ki_j)                 mma s8 x s8 -> s32
 *   P = exp2(s - m_tile) against the tile's own row max (as the CPU scheme: the largest p of the tile
 *     gets code 255 whatever the running max), u8 = rn(255 p); O += P_u8 x V_s8 (mma u8 x s8 -> s32:
 *     the .u8.s8 form of m16n8k32 keeps 8 bits of P), and the FP32 accumulation
 *     acc = acc * exp2(m_old - m_new) + exp2(m_tile - m_new) * PV * sv_d(tile), l likewise with the integer
 *     sum of the tile's u8 codes (dp4a; round 2: the FP32 sum of the unquantized p); at the end
 *     O = acc / l + mean_d.
 *   Round 1 quantized P against the running max: small late probabilities lost bits as L grew
 *   (rel L1 1.6e-2 at L 1k to 2.4e-2 at 16k, D 128); the tile max makes the error independent of L.
 * Layouts in the workspace (all contiguous, rows padded with zero codes and zero scales):
 * Qi [B,H,Lq_pad,D] s8; Ki [B,HK,Lk_pad,D] s8; Vt [B,HK,D,Lk_pad] s8, transposed so the PV B-fragments
 * load with ldmatrix, keys permuted inside each 16-key group to match the P fragment held in the S
 * accumulators (vt_perm: position l of a 16-key group holds key 8 ((l & 3) >> 1) + 2 (l >> 2) + (l & 1)).
 * With a.i8_wgmma (the sm_90a kernel, fwd_wgmma_i8.cu) the same codes are
 * stored as the shared-memory image of its tiles, so one bulk copy per tile lands them ready for wgmma:
 * the 16-byte chunk c of a 128-byte row r sits at chunk c ^ (r & 7) (the 128-byte swizzle), and Vt is
 * tile-major [B,HK,Lk_pad/128][D][128]. */
#include "cuda_common.cuh"
#include "i8_rows.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

namespace {

/* BN 128 keys per tile (round 1: 64): twice the s8 mma work per softmax step and per O rescale. */
/* Query rows per block = 16 per warp. NWARPS 4 (round 3): 64-row blocks, two per SM at D 128 (the same 8 warps
 * and 255 registers per SM as 8 warps x 1 block, but the two blocks' barriers are independent, so one block's
 * softmax overlaps the other's mma; K/V come from L2 twice as often). Measured 2026-11-23 on H100, INT8 kernel
 * TOPS at D 128, L 4k / 4k causal / 16k / 16k causal: NWARPS 4 402 353 435 435, NWARPS 8 392 337 424 419
 * (same call; D 64 and L 1k also 1-10% faster with 4). */
constexpr int NWARPS = 4, BM = 16 * NWARPS, BN = 128, NTHREADS = NWARPS * 32;
/* d-tile pairs per PV accumulator block. Measured 2026-11-23 (H100, 8 warps, D 128, L 4k / 4k c / 16k / 16k c, TOPS):
 * DPB 1 385 334 418 415, DPB 2 392 337 421 420, DPB 4 388 335 418 416: within ~2%, 2 kept. */
constexpr int DPB = 2;
/* Blocks per SM asked of ptxas at D 64: 1 = 255 registers, no spill; 2 = 128 registers with ~300 B of
 * spill (ptxas -v, sm_90a); 2 measured faster (docs/gpu.md). Alternatives to these three are source edits
 * for a device call (dev/cuda_tuning/variant.sh), not switches here. */
constexpr int D64_BLOCKS = 2;

/* ---------------------------------------------------------------- attention kernel */

/* Swizzled byte address of 16-byte chunk c of row r, rows of CPR chunks (4 or 8). */
template <int CPR> __device__ __forceinline__ uint32_t swz8(uint32_t base, int r, int c) {
    int x = CPR >= 8 ? (c ^ (r & 7)) : (c ^ ((r >> 1) & 3));
    return base + (uint32_t)((r * CPR + x) * 16);
}

template <int CPR, int ROWS>
__device__ __forceinline__ void load_rows(uint32_t sbase, const int8_t *g, int64_t ld, int nvalid, int tid) {
#pragma unroll
    for (int i = 0; i < (ROWS * CPR + NTHREADS - 1) / NTHREADS; i++) {
        int idx = tid + i * NTHREADS;
        if ((ROWS * CPR) % NTHREADS == 0 || idx < ROWS * CPR) {
            int r = idx / CPR, c = idx % CPR;
            bool ok = r < nvalid;
            qattn_cp_async16(swz8<CPR>(sbase, r, c), ok ? g + r * ld + c * 16 : g, ok ? 16 : 0);
        }
    }
}


template <int D> constexpr int i8_smem_bytes() { return BM * D + 2 * BN * D + 2 * D * BN + 2 * BN * 4 + 2 * D * 4; }

/* mma whose accumulator starts from cin (first k step) rather than from its own output. */
__device__ __forceinline__ void mma_s8_c(int d[4], const uint32_t a[4], uint32_t b0, uint32_t b1, int cin) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(cin));
}
__device__ __forceinline__ void mma_u8s8_c(int d[4], const uint32_t a[4], uint32_t b0, uint32_t b1, int cin) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(cin));
}

/* Integer accumulators start at the bit pattern of 1.5 * 2^23 (I2F_BIAS): while |sum| < 2^22 the
 * int32 result read as a float is exactly 1.5 * 2^23 + sum, so the conversion costs nothing and the
 * bias folds into the FMA that scales it (x * s - 1.5 * 2^23 * s). */
constexpr int I2F_BIAS = 0x4B400000;
constexpr float I2F_BIASF = 12582912.f;

template <int D>
__global__ void __launch_bounds__(NTHREADS, (8 / NWARPS) * (D == 128 ? 1 : D64_BLOCKS)) fwd_i8_kernel(const qattn_cuda_args a) {
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int CPR = D / 16;      /* chunks per Q/K row */
    constexpr int VCPR = BN / 16;    /* chunks per Vt row (8) */
    static_assert(BN == 128 && 255 * 127 * BN < (1 << 22) && 127 * 127 * D < (1 << 22), "biased-float accumulators need |sum| < 2^22");
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t4 = lane % 4;
    const int b = blockIdx.z, h = blockIdx.y, hk = h / (a.h / a.hk);
    if (a.skip_units && a.skip_units[(int64_t)b * a.hk + hk]) return; /* a sharp unit: the FP16 kernel's (backend.cu, enqueue_i8) */
    const int lq = a.lq, lk = a.lk;
    const int mblk = (int)(gridDim.x - 1 - blockIdx.x);
    const int m0 = mblk * BM;
    const int mrows = min(BM, lq - m0);

    const int8_t *qg = a.qi + (((int64_t)b * a.h + h) * a.lq_pad + m0) * D;
    const int8_t *kg = a.ki + ((int64_t)b * a.hk + hk) * a.lk_pad * D;
    const int8_t *vg = a.vt + ((int64_t)b * a.hk + hk) * D * a.lk_pad;
    const float *skg = a.sk + ((int64_t)b * a.hk + hk) * a.lk_pad;
    const float *svg = a.sv + ((int64_t)b * a.hk + hk) * (a.lk_pad / BN) * D; /* [tile][D] */

    int lo_first, hi_first, lo_last, hi_last;
    qattn_fwd_key_range(m0, lq, lk, a.wl, a.wr, lo_first, hi_first);
    qattn_fwd_key_range(m0 + mrows - 1, lq, lk, a.wl, a.wr, lo_last, hi_last);
    const int kbeg = lo_first, kend = hi_last;
    const int row0 = m0 + warp * 16 + g, row1 = row0 + 8;
    int lo0, hi0, lo1, hi1;
    qattn_fwd_key_range(row0, lq, lk, a.wl, a.wr, lo0, hi0);
    qattn_fwd_key_range(row1, lq, lk, a.wl, a.wr, lo1, hi1);
    float rf[2];
    qattn_i8_row_factors(a, a.sq + ((int64_t)b * a.h + h) * a.lq_pad + row0, row0, rf);

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    const uint32_t sQ = qattn_smem_u32(smem);
    const uint32_t sK = sQ + BM * D;
    const uint32_t sV = sK + 2 * BN * D;
    const uint32_t sS = sV + 2 * D * BN;
    const float *sSf = (const float *)(smem + BM * D + 2 * BN * D + 2 * D * BN);
    const uint32_t sVs = sS + 2 * BN * 4;
    const float *sVsf = sSf + 2 * BN;

    if (kend > kbeg) {
        const int t_first = kbeg / BN, t_last = (kend + BN - 1) / BN;
        load_rows<CPR, BM>(sQ, qg, D, mrows, tid);
        auto load_kv = [&](int buf, int n0) {
            load_rows<CPR, BN>(sK + buf * BN * D, kg + (int64_t)n0 * D, D, lk - n0, tid);
            load_rows<VCPR, D>(sV + buf * D * BN, vg + n0, a.lk_pad, D, tid);
            if (tid < BN / 4) {
                int rem = (lk - n0 - tid * 4) * 4;
                rem = rem < 0 ? 0 : rem > 16 ? 16 : rem;
                qattn_cp_async16(sS + buf * BN * 4 + tid * 16, rem ? (const void *)(skg + n0 + tid * 4) : (const void *)skg, rem);
            } else if (tid < BN / 4 + D / 4) {
                const int c = tid - BN / 4;
                qattn_cp_async16(sVs + buf * D * 4 + c * 16, svg + (n0 / BN) * D + c * 4, 16);
            }
        };
        load_kv(0, t_first * BN);
        qattn_cp_async_commit();
        qattn_cp_async_wait<0>();
        __syncthreads();
        /* This warp's Q fragments stay in registers for the whole row of tiles. */
        uint32_t qa[D / 32][4];
#pragma unroll
        for (int kk = 0; kk < D / 32; kk++) qattn_ldsm_x4(qa[kk], swz8<CPR>(sQ, warp * 16 + (lane % 16), kk * 2 + lane / 16));
        /* Per-thread ldmatrix byte offsets of the K and Vt fragments for each 32-wide k step (the row
         * parts np * 16 and dp * 16 keep the swizzle phase, so they become immediates). */
        uint32_t ko[D / 32], vo[BN / 32];
#pragma unroll
        for (int kk = 0; kk < D / 32; kk++) ko[kk] = swz8<CPR>(0, (lane % 8) + (lane / 16) * 8, kk * 2 + (lane / 8) % 2);
#pragma unroll
        for (int kk = 0; kk < BN / 32; kk++) vo[kk] = swz8<VCPR>(0, (lane % 8) + (lane / 16) * 8, kk * 2 + (lane / 8) % 2);
        for (int tt = t_first; tt < t_last; tt++) {
            const int buf = (tt - t_first) & 1;
            if (tt > t_first) {
                qattn_cp_async_wait<0>();
                __syncthreads();
            }
            if (tt + 1 < t_last) load_kv(buf ^ 1, (tt + 1) * BN);
            qattn_cp_async_commit();
            const uint32_t kb = sK + buf * BN * D, vb = sV + buf * D * BN;
            const float *skt = sSf + buf * BN;
            const float *svt = sVsf + buf * D;
            const int n0 = tt * BN;

            /* S = Q K^T as biased floats (1.5 * 2^23 + s). */
            int si[BN / 8][4];
#pragma unroll
            for (int kk = 0; kk < D / 32; kk++) {
#pragma unroll
                for (int np = 0; np < BN / 16; np++) {
                    uint32_t kr[4];
                    qattn_ldsm_x4(kr, kb + ko[kk] + np * 16 * D);
                    if (kk == 0) {
                        mma_s8_c(si[2 * np], qa[kk], kr[0], kr[1], I2F_BIAS);
                        mma_s8_c(si[2 * np + 1], qa[kk], kr[2], kr[3], I2F_BIAS);
                    } else {
                        qattn_mma_s8s8(si[2 * np], qa[kk], kr[0], kr[1]);
                        qattn_mma_s8s8(si[2 * np + 1], qa[kk], kr[2], kr[3]);
                    }
                }
            }
            /* s = (Q.K) * sk_j (the row factor sq * scale * log2 e is applied in the exponent). */
            float s[BN / 8][4];
#pragma unroll
            for (int n = 0; n < BN / 8; n++) {
                const float2 skv = *(const float2 *)(skt + n * 8 + 2 * t4);
                const float bx = -I2F_BIASF * skv.x, by = -I2F_BIASF * skv.y;
                s[n][0] = fmaf(__int_as_float(si[n][0]), skv.x, bx);
                s[n][1] = fmaf(__int_as_float(si[n][1]), skv.y, by);
                s[n][2] = fmaf(__int_as_float(si[n][2]), skv.x, bx);
                s[n][3] = fmaf(__int_as_float(si[n][3]), skv.y, by);
            }
            /* Masks only on the tiles some row of the block does not fully see. */
            if (!(n0 >= lo_last && n0 + BN <= hi_first)) {
#pragma unroll
                for (int n = 0; n < BN / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int col = n0 + n * 8 + 2 * t4 + (e & 1);
                        bool vis = e < 2 ? (col >= lo0 && col < hi0) : (col >= lo1 && col < hi1);
                        if (!vis) s[n][e] = -INFINITY;
                    }
            }
            /* P against the tile's own row max mb (the largest visible p gets code 255 whatever the
             * running max is); exp2(mb - m_run) goes into the FP32 factor beta of the tile's P V and
             * row sum, exp2(m_old - m_run) into alpha. */
            float alpha[2], beta[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mb = -INFINITY;
#pragma unroll
                for (int n = 0; n < BN / 8; n++) mb = qattn_fmax_nan(mb, qattn_fmax_nan(s[n][2 * r], s[n][2 * r + 1]));
                mb = qattn_quad_max<true>(mb);
                qattn_i8_max_step<0>(mx[r], mb, rf[r], alpha[r], beta[r]);
                const float msc = mb == -INFINITY ? 0.f : mb * rf[r];
#pragma unroll
                for (int n = 0; n < BN / 8; n++) {
                    s[n][2 * r] = qattn_ex2(fmaf(s[n][2 * r], rf[r], -msc));
                    s[n][2 * r + 1] = qattn_ex2(fmaf(s[n][2 * r + 1], rf[r], -msc));
                }
            }
            /* P as u8 A-fragments, one per 32 keys (keys permuted as Vt expects). */
            uint32_t pa[BN / 32][4];
#pragma unroll
            for (int kk = 0; kk < BN / 32; kk++) {
                pa[kk][0] = qattn_pack4(qattn_p2u8bits(s[4 * kk][0]), qattn_p2u8bits(s[4 * kk][1]), qattn_p2u8bits(s[4 * kk + 1][0]), qattn_p2u8bits(s[4 * kk + 1][1]));
                pa[kk][1] = qattn_pack4(qattn_p2u8bits(s[4 * kk][2]), qattn_p2u8bits(s[4 * kk][3]), qattn_p2u8bits(s[4 * kk + 1][2]), qattn_p2u8bits(s[4 * kk + 1][3]));
                pa[kk][2] = qattn_pack4(qattn_p2u8bits(s[4 * kk + 2][0]), qattn_p2u8bits(s[4 * kk + 2][1]), qattn_p2u8bits(s[4 * kk + 3][0]), qattn_p2u8bits(s[4 * kk + 3][1]));
                pa[kk][3] = qattn_pack4(qattn_p2u8bits(s[4 * kk + 2][2]), qattn_p2u8bits(s[4 * kk + 2][3]), qattn_p2u8bits(s[4 * kk + 3][2]), qattn_p2u8bits(s[4 * kk + 3][3]));
            }
            /* Row sums of the codes actually used (dp4a: 4 codes per instruction, exact): the normalisation
             * matches the numerator's weights. Round 2 summed the FP32 p (one FADD per score). */
            {
                unsigned cs0 = 0u, cs1 = 0u;
#pragma unroll
                for (int kk = 0; kk < BN / 32; kk++) {
                    cs0 = __dp4a(pa[kk][0], 0x01010101u, cs0), cs0 = __dp4a(pa[kk][2], 0x01010101u, cs0);
                    cs1 = __dp4a(pa[kk][1], 0x01010101u, cs1), cs1 = __dp4a(pa[kk][3], 0x01010101u, cs1);
                }
                l[0] = fmaf(l[0], alpha[0], (float)cs0 * beta[0]);
                l[1] = fmaf(l[1], alpha[1], (float)cs1 * beta[1]);
            }
            /* O = O * alpha + beta * (P V), DPB pairs of 8-wide d tiles at a time: 2 DPB independent
             * accumulator chains of BN / 32 mma each (round 2: DPB 1, chains of 2). */
#pragma unroll
            for (int dp0 = 0; dp0 < D / 16; dp0 += DPB) {
                int c[DPB][2][4];
#pragma unroll
                for (int kk = 0; kk < BN / 32; kk++) {
#pragma unroll
                    for (int u = 0; u < DPB; u++) {
                        uint32_t vr[4];
                        qattn_ldsm_x4(vr, vb + vo[kk] + (dp0 + u) * 16 * BN);
                        if (kk == 0) {
                            mma_u8s8_c(c[u][0], pa[kk], vr[0], vr[1], I2F_BIAS);
                            mma_u8s8_c(c[u][1], pa[kk], vr[2], vr[3], I2F_BIAS);
                        } else {
                            qattn_mma_u8s8(c[u][0], pa[kk], vr[0], vr[1]);
                            qattn_mma_u8s8(c[u][1], pa[kk], vr[2], vr[3]);
                        }
                    }
                }
#pragma unroll
                for (int u = 0; u < DPB; u++) {
                    const int dp = dp0 + u;
                    /* the tile's V scales of this thread's 4 channels, and the bias they remove */
                    const float2 v0 = *(const float2 *)(svt + dp * 16 + 2 * t4), v1 = *(const float2 *)(svt + dp * 16 + 8 + 2 * t4);
                    const float vs0[2] = {v0.x, v0.y}, vs1[2] = {v1.x, v1.y};
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const float x0 = fmaf(__int_as_float(c[u][0][e]), vs0[e & 1], -I2F_BIASF * vs0[e & 1]);
                        const float x1 = fmaf(__int_as_float(c[u][1][e]), vs1[e & 1], -I2F_BIASF * vs1[e & 1]);
                        o[2 * dp][e] = fmaf(o[2 * dp][e], alpha[e >> 1], x0 * beta[e >> 1]);
                        o[2 * dp + 1][e] = fmaf(o[2 * dp + 1][e], alpha[e >> 1], x1 * beta[e >> 1]);
                    }
                }
            }
        }
        qattn_cp_async_wait<0>();
    }

    qattn_i8_store_rows<D>(a, b, h, (int64_t)b * a.hk + hk, row0, t4, o, mx, l, rf, nullptr);
}

template <int D> cudaError_t launch(const qattn_cuda_args &a, cudaStream_t stream) {
    dim3 grid((unsigned)((a.lq + BM - 1) / BM), (unsigned)a.h, (unsigned)a.batch);
    fwd_i8_kernel<D><<<grid, NTHREADS, i8_smem_bytes<D>(), stream>>>(a);
    return cudaGetLastError();
}

} // namespace

cudaError_t qattn_cuda_prepare_i8(void) {
    cudaError_t e = cudaFuncSetAttribute(fwd_i8_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, i8_smem_bytes<64>());
    if (e != cudaSuccess) return e;
    return cudaFuncSetAttribute(fwd_i8_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, i8_smem_bytes<128>());
}

cudaError_t qattn_cuda_launch_i8(const qattn_cuda_args &a, cudaStream_t stream) {
    switch (a.d) {
    case 64: return launch<64>(a, stream);
    case 128: return launch<128>(a, stream);
    }
    return cudaErrorInvalidValue;
}
