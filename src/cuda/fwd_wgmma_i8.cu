/* INT8 flash attention forward for Hopper (sm_90a): wgmma for both products, head dim 128.
 *
 * Same scheme and numerics as the mma.sync kernel (fwd_mma_i8.cu, whose quantization kernels feed
 * this one): S = Q K^T as s8 x s8 -> s32, P = u8 codes of exp2(s - m_tile) against the tile's own row
 * max, O += P V as u8 x s8 -> s32 with the per-tile V scales, dequantization in FP32 registers.
 * What changes is the schedule, the reason being that the mma.sync kernel is bound by instruction
 * issue and by the latency of its dependent chains (two warps per scheduler, docs/gpu.md):
 * - One block = 128 query rows of one (batch, head): warpgroup 0 is the producer, warpgroups 1 and 2
 *   are consumers of 64 rows each. The producer's single thread streams the K, Vt and scale tiles of
 *   128 keys with 1-D bulk copies (cp.async.bulk, completion on an mbarrier) into NST stages; the
 *   quantization kernels wrote the codes as the shared-memory image of a tile (128-byte swizzle), so
 *   a tile is one contiguous copy and needs no address arithmetic per element.
 * - Consumers: S(t) = Q K(t)^T with four wgmma m64n128k32 (Q and K from shared memory through
 *   descriptors), softmax in registers, then P(t) V(t) with four wgmma whose A operand is the P codes
 *   in registers (the S accumulator layout is the A fragment, as for mma.sync; Vt's keys are permuted
 *   inside 16-key groups to match). P V(t) is left running while the next tile's S is issued, and the
 *   O update of tile t happens after both complete, so the tensor cores work on one warpgroup's
 *   products while the other warpgroup does its softmax.
 * - setmaxnreg: the producer drops to 24 registers, consumers rise to 240 (O 64 + S 64 + PV 64 + P 16).
 * Integer accumulators start at the bit pattern of 1.5 * 2^23 (as in the mma.sync kernel) so the
 * int -> float conversion is free. */
#include "cuda_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

namespace {

#ifndef QATTN_I8W_STAGES
#define QATTN_I8W_STAGES 3
#endif
constexpr int D = 128, BM = 128, BN = 128, NST = QATTN_I8W_STAGES, NTHREADS = 384;
constexpr int TILE = BN * D;                     /* bytes of a K or Vt tile */
constexpr int OFF_Q = 0, OFF_K = OFF_Q + BM * D; /* all tile offsets are multiples of 1024 */
constexpr int OFF_V = OFF_K + NST * TILE;
constexpr int OFF_SK = OFF_V + NST * TILE;
constexpr int OFF_SV = OFF_SK + NST * BN * 4;
constexpr int OFF_BAR = OFF_SV + NST * D * 4;
constexpr int SMEM = OFF_BAR + (2 * NST + 1) * 8 + 1024; /* + alignment slack of the dynamic base */

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define QATTN_WGMMA_OK 1
constexpr int I2F_BIAS = 0x4B400000;
constexpr float I2F_BIASF = 12582912.f;

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
    asm volatile("{\n.reg .pred p;\nWAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra WAIT_%=;\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
/* bytes (multiple of 16) from global to shared, completing as transaction bytes on bar */
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void *src, int bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst), "l"(src), "r"(bytes),
                 "r"(bar)
                 : "memory");
}

/* Shared-memory matrix descriptor of a K-major tile of 128-byte rows with the 128-byte swizzle:
 * 8-row groups 1024 bytes apart (stride byte offset), leading byte offset unused (1). The k step of
 * 32 bytes inside the swizzled row is an address offset (+2 in 16-byte units). */
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
/* Pin a register's value at this point of the program (accumulators of in-flight wgmma). */
__device__ __forceinline__ void reg_fence(int &r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }

#define QATTN_R8(i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), "+r"(d[i + 6]), "+r"(d[i + 7])
#define QATTN_D64                                                                                                                                  \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                     \
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"

/* d[64] += A (64 x 32 s8, shared) * B (32 x 128 s8, shared, K-major) */
__device__ __forceinline__ void wgmma_ss_s8(int d[64], uint64_t da, uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 " QATTN_D64 ", %64, %65, p;\n}\n"
                 : QATTN_R8(0), QATTN_R8(8), QATTN_R8(16), QATTN_R8(24), QATTN_R8(32), QATTN_R8(40), QATTN_R8(48), QATTN_R8(56)
                 : "l"(da), "l"(db), "r"(1));
}
/* d[64] += A (64 x 32 u8, registers) * B (32 x 128 s8, shared, K-major) */
__device__ __forceinline__ void wgmma_rs_u8s8(int d[64], const uint32_t a[4], uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32.u8.s8 " QATTN_D64 ", {%64,%65,%66,%67}, %68, p;\n}\n"
                 : QATTN_R8(0), QATTN_R8(8), QATTN_R8(16), QATTN_R8(24), QATTN_R8(32), QATTN_R8(40), QATTN_R8(48), QATTN_R8(56)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

__device__ __forceinline__ uint32_t p2u8bits(float p) { return __float_as_uint(fmaf(p, 255.f, 12582912.f)); }
__device__ __forceinline__ uint32_t pack4(uint32_t x0, uint32_t x1, uint32_t x2, uint32_t x3) {
    return __byte_perm(__byte_perm(x0, x1, 0x0040), __byte_perm(x2, x3, 0x0040), 0x5410);
}
__device__ __forceinline__ float fmax_nan(float x, float y) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;\n" : "=f"(r) : "f"(x), "f"(y));
    return r;
}
__device__ __forceinline__ void key_range(int i, int lq, int lk, int wl, int wr, int &lo, int &hi) {
    int diag = i + lk - lq;
    lo = wl < 0 ? 0 : max(diag - wl, 0);
    hi = wr < 0 ? lk : min(diag + wr + 1, lk);
    if (hi < lo) hi = lo;
}
#endif

__global__ void __launch_bounds__(NTHREADS, 1) fwd_i8_wgmma_kernel(const __grid_constant__ qattn_cuda_args a) {
#if defined(QATTN_WGMMA_OK)
    extern __shared__ unsigned char smem_raw[];
    const uint32_t sbase = (qattn_smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned char *smem = smem_raw + (sbase - qattn_smem_u32(smem_raw));
    const uint32_t bar_full = sbase + OFF_BAR, bar_empty = bar_full + NST * 8, bar_q = bar_empty + NST * 8;

    const int b = blockIdx.z, h = blockIdx.y, hk = h / (a.h / a.hk);
    const int lq = a.lq, lk = a.lk;
    const int m0 = (int)(gridDim.x - 1 - blockIdx.x) * BM; /* heavy (late) causal blocks first */
    const int mrows = min(BM, lq - m0);
    int lo_first, hi_first, lo_last, hi_last;
    key_range(m0, lq, lk, a.wl, a.wr, lo_first, hi_first);
    key_range(m0 + mrows - 1, lq, lk, a.wl, a.wr, lo_last, hi_last);
    const int t_first = lo_first / BN, t_last = hi_last > lo_first ? (hi_last + BN - 1) / BN : t_first;
    const int64_t bhk = (int64_t)b * a.hk + hk, ntile_all = a.lk_pad / BN;

    if (threadIdx.x == 0) {
        for (int s = 0; s < NST; s++) {
            mbar_init(bar_full + 8 * s, 1);
            mbar_init(bar_empty + 8 * s, 256);
        }
        mbar_init(bar_q, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (threadIdx.x < 128) { /* producer warpgroup: one thread issues every copy */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
        if (threadIdx.x == 0 && t_last > t_first) {
            mbar_expect_tx(bar_q, BM * D);
            bulk_g2s(sbase + OFF_Q, a.qi + (((int64_t)b * a.h + h) * a.lq_pad + m0) * D, BM * D, bar_q);
            for (int tt = t_first, it = 0; tt < t_last; tt++, it++) {
                const int s = it % NST;
                mbar_wait(bar_empty + 8 * s, ((it / NST) & 1) ^ 1);
                mbar_expect_tx(bar_full + 8 * s, 2 * TILE + BN * 4 + D * 4);
                bulk_g2s(sbase + OFF_K + s * TILE, a.ki + (bhk * a.lk_pad + (int64_t)tt * BN) * D, TILE, bar_full + 8 * s);
                bulk_g2s(sbase + OFF_V + s * TILE, a.vt + (bhk * ntile_all + tt) * TILE, TILE, bar_full + 8 * s);
                bulk_g2s(sbase + OFF_SK + s * BN * 4, a.sk + bhk * a.lk_pad + (int64_t)tt * BN, BN * 4, bar_full + 8 * s);
                bulk_g2s(sbase + OFF_SV + s * D * 4, a.sv + (bhk * ntile_all + tt) * D, D * 4, bar_full + 8 * s);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n");

    const int wg = threadIdx.x / 128 - 1, tw = threadIdx.x % 128, warp = tw / 32, lane = tw % 32;
    const int g = lane / 4, t4 = lane % 4;
    const int row0 = m0 + wg * 64 + warp * 16 + g, row1 = row0 + 8;
    /* this warpgroup's rows: the tiles every one of them sees in full need no mask */
    int wlo_first, whi_first, wlo_last, whi_last;
    key_range(min(m0 + wg * 64, lq - 1), lq, lk, a.wl, a.wr, wlo_first, whi_first);
    key_range(min(m0 + wg * 64 + 63, lq - 1), lq, lk, a.wl, a.wr, wlo_last, whi_last);
    int lo0, hi0, lo1, hi1;
    key_range(row0, lq, lk, a.wl, a.wr, lo0, hi0);
    key_range(row1, lq, lk, a.wl, a.wr, lo1, hi1);
    const float *sqg = a.sq + ((int64_t)b * a.h + h) * a.lq_pad;
    float rf[2] = {row0 < lq ? sqg[row0] * a.scale_log2 : 0.f, row1 < lq ? sqg[row1] * a.scale_log2 : 0.f};
    rf[0] = fmaxf(rf[0], 1e-30f), rf[1] = fmaxf(rf[1], 1e-30f);

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    if (t_last > t_first) {
        const uint64_t dq = desc_sw128(sbase + OFF_Q + wg * 64 * D);
        int pv[64];          /* P V of the previous tile, in flight across the next S */
        uint32_t pa[4][4];   /* its A operand (P codes), kept intact until it completes */
        float alpha_p[2] = {1.f, 1.f}, beta_p[2] = {0.f, 0.f};
        int s_prev = 0;
        mbar_wait(bar_q, 0);
        for (int tt = t_first, it = 0; tt < t_last; tt++, it++) {
            const int s = it % NST;
            const int n0 = tt * BN;
            mbar_wait(bar_full + 8 * s, (it / NST) & 1);
            /* S = Q K^T as biased floats */
            int si[64];
#pragma unroll
            for (int i = 0; i < 64; i++) si[i] = I2F_BIAS;
            const uint64_t dk = desc_sw128(sbase + OFF_K + s * TILE);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < D / 32; kk++) wgmma_ss_s8(si, dq + 2 * kk, dk + 2 * kk);
            wg_commit();
            wg_wait<0>(); /* S(t) and P V(t-1) */
#pragma unroll
            for (int i = 0; i < 64; i++) reg_fence(si[i]);
            if (it > 0) {
#pragma unroll
                for (int i = 0; i < 64; i++) reg_fence(pv[i]);
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
#pragma unroll
                    for (int j = 0; j < 4; j++) reg_fence(pa[kk][j]);
                /* O = O * alpha + beta * (P V) * sv_d(tile) */
                const float *svt = (const float *)(smem + OFF_SV + s_prev * D * 4);
#pragma unroll
                for (int j = 0; j < D / 8; j++) {
                    const float2 vs = *(const float2 *)(svt + j * 8 + 2 * t4);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const float v = (e & 1) ? vs.y : vs.x;
                        const float x = fmaf(__int_as_float(pv[4 * j + e]), v, -I2F_BIASF * v);
                        o[j][e] = fmaf(o[j][e], alpha_p[e >> 1], x * beta_p[e >> 1]);
                    }
                }
                mbar_arrive(bar_empty + 8 * s_prev);
            }
            /* s = (Q.K) * sk_j; masks on the tiles some row of this warpgroup does not fully see */
            const float *skt = (const float *)(smem + OFF_SK + s * BN * 4);
            float sf[64];
#pragma unroll
            for (int n = 0; n < BN / 8; n++) {
                const float2 skv = *(const float2 *)(skt + n * 8 + 2 * t4);
                const float bx = -I2F_BIASF * skv.x, by = -I2F_BIASF * skv.y;
                sf[4 * n + 0] = fmaf(__int_as_float(si[4 * n + 0]), skv.x, bx);
                sf[4 * n + 1] = fmaf(__int_as_float(si[4 * n + 1]), skv.y, by);
                sf[4 * n + 2] = fmaf(__int_as_float(si[4 * n + 2]), skv.x, bx);
                sf[4 * n + 3] = fmaf(__int_as_float(si[4 * n + 3]), skv.y, by);
            }
            if (!(n0 >= wlo_last && n0 + BN <= whi_first)) {
#pragma unroll
                for (int n = 0; n < BN / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int col = n0 + n * 8 + 2 * t4 + (e & 1);
                        const bool vis = e < 2 ? (col >= lo0 && col < hi0) : (col >= lo1 && col < hi1);
                        if (!vis) sf[4 * n + e] = -INFINITY;
                    }
            }
            float alpha[2], beta[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mb = -INFINITY;
#pragma unroll
                for (int n = 0; n < BN / 8; n++) mb = fmax_nan(mb, fmax_nan(sf[4 * n + 2 * r], sf[4 * n + 2 * r + 1]));
                mb = fmax_nan(mb, __shfl_xor_sync(0xffffffffu, mb, 1));
                mb = fmax_nan(mb, __shfl_xor_sync(0xffffffffu, mb, 2));
                const float mn = fmaxf(mx[r], mb);
                alpha[r] = mx[r] == -INFINITY ? 0.f : qattn_ex2((mx[r] - mn) * rf[r]);
                beta[r] = mb == -INFINITY ? 0.f : qattn_ex2((mb - mn) * rf[r]);
                mx[r] = mn;
                const float msc = mb == -INFINITY ? 0.f : mb * rf[r];
#pragma unroll
                for (int n = 0; n < BN / 8; n++) {
                    sf[4 * n + 2 * r] = qattn_ex2(fmaf(sf[4 * n + 2 * r], rf[r], -msc));
                    sf[4 * n + 2 * r + 1] = qattn_ex2(fmaf(sf[4 * n + 2 * r + 1], rf[r], -msc));
                }
            }
            /* P as u8 A fragments of 32 keys (the S accumulator layout; Vt keys permuted to match) */
#pragma unroll
            for (int kk = 0; kk < BN / 32; kk++) {
                const float *x = sf + 16 * kk;
                pa[kk][0] = pack4(p2u8bits(x[0]), p2u8bits(x[1]), p2u8bits(x[4]), p2u8bits(x[5]));
                pa[kk][1] = pack4(p2u8bits(x[2]), p2u8bits(x[3]), p2u8bits(x[6]), p2u8bits(x[7]));
                pa[kk][2] = pack4(p2u8bits(x[8]), p2u8bits(x[9]), p2u8bits(x[12]), p2u8bits(x[13]));
                pa[kk][3] = pack4(p2u8bits(x[10]), p2u8bits(x[11]), p2u8bits(x[14]), p2u8bits(x[15]));
            }
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
            /* P V(t), left running */
#pragma unroll
            for (int i = 0; i < 64; i++) pv[i] = I2F_BIAS;
            const uint64_t dv = desc_sw128(sbase + OFF_V + s * TILE);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < BN / 32; kk++) wgmma_rs_u8s8(pv, pa[kk], dv + 2 * kk);
            wg_commit();
            alpha_p[0] = alpha[0], alpha_p[1] = alpha[1], beta_p[0] = beta[0], beta_p[1] = beta[1];
            s_prev = s;
        }
        wg_wait<0>();
#pragma unroll
        for (int i = 0; i < 64; i++) reg_fence(pv[i]);
        {
            const float *svt = (const float *)(smem + OFF_SV + s_prev * D * 4);
#pragma unroll
            for (int j = 0; j < D / 8; j++) {
                const float2 vs = *(const float2 *)(svt + j * 8 + 2 * t4);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float v = (e & 1) ? vs.y : vs.x;
                    const float x = fmaf(__int_as_float(pv[4 * j + e]), v, -I2F_BIASF * v);
                    o[j][e] = fmaf(o[j][e], alpha_p[e >> 1], x * beta_p[e >> 1]);
                }
            }
        }
    }

    /* O = acc / l + mean_v[d] (l counts P codes; V smoothing; rows that see no key stay 0) */
    const float *vmg = a.vm + bhk * D;
    const int64_t ooff = (int64_t)b * a.o_bs + (int64_t)h * a.o_hs;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int row = r == 0 ? row0 : row1;
        const float inv = sum > 0.f ? 1.f / sum : 0.f, mf = sum > 0.f ? 1.f : 0.f;
        if (row < lq) {
            const int64_t base = ooff + (int64_t)row * a.o_ss + 2 * t4;
#pragma unroll
            for (int i = 0; i < D / 8; i++) {
                const float2 mv = *(const float2 *)(vmg + i * 8 + 2 * t4);
                const float x = fmaf(o[i][2 * r], inv, mv.x * mf), y = fmaf(o[i][2 * r + 1], inv, mv.y * mf);
                const int64_t idx = base + i * 8;
                if (a.o_dtype == 1) *(__half2 *)((__half *)a.o + idx) = __floats2half2_rn(x, y);
                else if (a.o_dtype == 2) *(__nv_bfloat162 *)((__nv_bfloat16 *)a.o + idx) = __floats2bfloat162_rn(x, y);
                else *(float2 *)((float *)a.o + idx) = make_float2(x, y);
            }
            if (a.lse && t4 == 0)
                a.lse[((int64_t)b * a.h + h) * lq + row] =
                    sum > 0.f ? (mx[r] * rf[r] + log2f(sum * (1.f / 255.f))) * 0.69314718055994531f + a.qsh[((int64_t)b * a.h + h) * a.lq_pad + row]
                              : -INFINITY;
        }
    }
#else
    __trap(); /* built without sm_90a: the host never launches this kernel there */
#endif
}

} // namespace

cudaError_t qattn_cuda_prepare_i8_wgmma(void) {
    return cudaFuncSetAttribute(fwd_i8_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
}

cudaError_t qattn_cuda_launch_i8_wgmma(const qattn_cuda_args &a, cudaStream_t stream) {
    if (a.d != D) return cudaErrorInvalidValue;
    dim3 grid((unsigned)((a.lq + BM - 1) / BM), (unsigned)a.h, (unsigned)a.batch);
    fwd_i8_wgmma_kernel<<<grid, NTHREADS, SMEM, stream>>>(a);
    return cudaGetLastError();
}
