/* FP16/BF16 flash attention forward with mma.sync.m16n8k16 (sm_80+; also the sm_90a build).
 * FlashAttention-2 schedule: a block owns BM = 128 query rows of one (batch, head), NWARPS warps of
 * 16 * MT rows each; K/V tiles of BN keys (64; 32 at D 256) stream through shared memory with cp.async
 * double buffering; S = Q K^T and the online softmax stay in registers; P (rounded to the input dtype)
 * times V accumulates in FP32 registers.
 * Shapes: q [.., Lq, H, D], k/v [.., Lk, HK, D], o [.., Lq, H, D] through element strides
 * (head_dim contiguous, every stride and base 16-byte aligned); lse FP32 [B, H, Lq]
 * (varlen [H, total_q]). D is 32, 64, 80, 96, 128, 160, 192 or 256 (f16_cfg: the shape per head dim).
 * MODS (a second instantiation per head dim): softcap and ALiBi (qattn.h's formula, scores kept in base-2
 * units); the plain instantiation compiles to the same code as without them. */
#include "cuda_common.cuh"
#include "rows.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

namespace {

/* MT m-tiles of 16 rows per warp: MT 2 (4 warps x 32 rows, FlashAttention-2's shape) reads each K/V
 * fragment from shared memory once for 32 rows instead of 16 (half the ldmatrix traffic per mma);
 * MT 1 is round 1's 8 warps x 16 rows. Measured 2026-11-23 on H100, TFLOP/s at D 128, L 1k/4k/16k,
 * non-causal/causal: MT 2 238 191 292 245 298 282, MT 1 231 184 271 236 281 278 (D 64: within +-5%, mixed).
 * ptxas (sm_90a): MT 2 D 128 255 registers + 216 B spill, 2 blocks/SM; MT 1 0 spill, 1 block/SM.
 * The alternative is a source edit for a device call (dev/cuda_tuning/variant.sh), not a switch. */
constexpr int F16_MT = 2;
constexpr int BM = 128;
/* The shape per head dim. DP: the row length of the shared-memory tiles, D rounded up to a multiple of
 * 64 (the 8-chunk swizzle and the ldmatrix offsets below work in groups of 64 elements): D 32 is laid
 * out as 64, 80 and 96 as 128, 160 as 192, with the products running over the D real columns only and
 * the padding never loaded or read. D above 128: one m-tile per warp (O alone is D / 2 registers a
 * thread); D 256 with key tiles of 32 (128 KB of shared memory, within sm_80's 163 KB), D 160 and 192
 * with 64 (144 KB). D 32, 80, 160 and 192 were shaped spill-free from ptxas -v (CUDA 13.0; the table per
 * instantiation is in docs/gpu.md): D 32 with MT 2 at 2 blocks (185-225 registers; at 3 blocks, 168, it
 * spilled 44 B); D 80 with MT 1 (176-194; MT 2 used 255 and spilled 8 B around the key loop). */
template <int D> struct f16_cfg {
    static_assert(D % 16 == 0 && D >= 32 && D <= 256, "head dims are multiples of 16 in [32, 256]");
    static constexpr int DP = (D + 63) / 64 * 64;
    static constexpr int MT = D > 128 || D == 80 ? 1 : F16_MT;
    static constexpr int BN = D == 256 ? 32 : 64;
    static constexpr int NWARPS = 8 / MT, NTHREADS = NWARPS * 32;
    static constexpr int MIN_BLOCKS = D > 128 || D == 80 ? 1 : D == 32 ? 2 : MT == 2 ? (DP == 64 ? 3 : 2) : (DP == 64 ? 2 : 1);
    static constexpr int SMEM = (BM * DP + 4 * BN * DP) * 2;
};

/* Swizzled address (bytes) of 16-byte chunk c of row r in a [rows][DP] 16-bit tile. */
template <int DP> __device__ __forceinline__ uint32_t swz(uint32_t base, int r, int c) {
    return base + (uint32_t)((r * (DP / 8) + (c ^ (r & 7))) * 16);
}

/* Copy the D columns of rows [0, ROWS) of a tile (global row stride ld elements) into smem rows of DP
 * elements; rows at or past nvalid are zero-filled. */
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(uint32_t sbase, const uint16_t *g, int64_t ld, int nvalid, int tid) {
    constexpr int CPR = D / 8, NT = f16_cfg<D>::NTHREADS; /* chunks per row */
    constexpr int N = ROWS * CPR, ITERS = (N + NT - 1) / NT; /* a ragged last round only where NT does not divide N */
#pragma unroll
    for (int i = 0; i < ITERS; i++) {
        int idx = tid + i * NT;
        if (N % NT != 0 && i == ITERS - 1 && idx >= N) break;
        int r = idx / CPR, c = idx % CPR;
        bool ok = r < nvalid;
        const uint16_t *src = ok ? g + (int64_t)r * ld + c * 8 : g;
        qattn_cp_async16(swz<f16_cfg<D>::DP>(sbase, r, c), src, ok ? 16 : 0);
    }
}

template <bool BF16> __device__ __forceinline__ uint32_t pack2(float x, float y) {
    uint32_t r;
    if (BF16) {
        __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
        memcpy(&r, &h, 4);
    } else {
        __half2 h = __floats2half2_rn(x, y);
        memcpy(&r, &h, 4);
    }
    return r;
}

__device__ __forceinline__ void store2(void *o, int dtype, int64_t idx, float x, float y) {
    if (dtype == 1) {
        *(__half2 *)((__half *)o + idx) = __floats2half2_rn(x, y);
    } else if (dtype == 2) {
        *(__nv_bfloat162 *)((__nv_bfloat16 *)o + idx) = __floats2bfloat162_rn(x, y);
    } else {
        *(float2 *)((float *)o + idx) = make_float2(x, y);
    }
}

/* softcap * tanh(scale * s / softcap) in base-2 units (cin = scale / softcap, cout = softcap * log2(e)),
 * tanh(y) = 1 - 2 / (e^(2y) + 1): absolute error a few FP32 ulps of 1 (ex2.approx, the approximate
 * division), so the score's is a few ulps of softcap; |y| is clamped at 15 (tanh(15) is 1 in FP32) to
 * keep e^(2y) finite; a NaN score stays NaN. */
__device__ __forceinline__ float softcap_log2(float s, float cin, float cout) {
    const float y = s * cin;
    const float e = qattn_ex2(fminf(fmaxf(y, -15.f), 15.f) * 2.8853900817779268f);
    const float t = 1.f - __fdividef(2.f, e + 1.f);
    return y != y ? y : cout * t;
}

template <int D, bool BF16, bool MODS>
__global__ void __launch_bounds__(f16_cfg<D>::NTHREADS, f16_cfg<D>::MIN_BLOCKS) fwd_f16_kernel(const qattn_cuda_args a) {
    constexpr int DP = f16_cfg<D>::DP, MT = f16_cfg<D>::MT, BN = f16_cfg<D>::BN;
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t4 = lane % 4;
    const int b = blockIdx.z, h = blockIdx.y;
    const int hk = h / (a.h / a.hk);
    if (a.only_units && !a.only_units[(int64_t)b * a.hk + hk]) return; /* the INT8 kernel's unit (backend.cu, enqueue_i8) */

    int lq = a.lq, lk = a.lk;
    int64_t qoff, koff, voff, ooff, lse_off, lse_hs;
    if (a.cu_q) {
        int q0 = a.cu_q[b], k0 = a.cu_k[b];
        lq = a.cu_q[b + 1] - q0;
        lk = a.cu_k[b + 1] - k0;
        qoff = (int64_t)q0 * a.q_ss;
        ooff = (int64_t)q0 * a.o_ss;
        koff = (int64_t)k0 * a.k_ss;
        voff = (int64_t)k0 * a.v_ss;
        lse_hs = a.cu_q[a.batch];
        lse_off = (int64_t)h * lse_hs + q0;
    } else {
        qoff = (int64_t)b * a.q_bs;
        ooff = (int64_t)b * a.o_bs;
        koff = (int64_t)b * a.k_bs;
        voff = (int64_t)b * a.v_bs;
        lse_hs = lq;
        lse_off = ((int64_t)b * a.h + h) * lq;
    }
    /* Heavier (later, under a causal mask) query blocks first. */
    const int mblk = (int)(gridDim.x - 1 - blockIdx.x);
    const int m0 = mblk * BM;
    if (m0 >= lq) return;
    const int mrows = min(BM, lq - m0);
    /* MODS: scores become base-2 logits (softcap, then ALiBi) before the mask, so the softmax multiplies
     * by 1 instead of scale * log2(e) and the LSE converts with ln 2. */
    const float sl2 = MODS ? 1.f : a.scale_log2;
    const float slope2 = MODS && a.alibi ? a.alibi[(int64_t)b * a.alibi_bs + h] * 1.4426950408889634f : 0.f;

    const uint16_t *qg = (const uint16_t *)a.q + qoff + (int64_t)h * a.q_hs + (int64_t)m0 * a.q_ss;
    const uint16_t *kg = (const uint16_t *)a.k + koff + (int64_t)hk * a.k_hs;
    const uint16_t *vg = (const uint16_t *)a.v + voff + (int64_t)hk * a.v_hs;

    int lo_first, hi_first, lo_last, hi_last;
    qattn_fwd_key_range(m0, lq, lk, a.wl, a.wr, lo_first, hi_first);
    qattn_fwd_key_range(m0 + mrows - 1, lq, lk, a.wl, a.wr, lo_last, hi_last);
    const int kbeg = lo_first, kend = hi_last;

    /* This thread's rows: g and g + 8 of each of its warp's MT m-tiles (rw0 + 16 mt + 8 r); their key
     * ranges are recomputed on the masked tiles only (registers). */
    const int rw0 = m0 + warp * 16 * MT + g;

    float o[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int i = 0; i < D / 8; i++) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    float mx[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) mx[mt][0] = mx[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;

    const uint32_t sQ = qattn_smem_u32(smem);
    const uint32_t sK = sQ + BM * DP * 2;
    const uint32_t sV = sK + 2 * BN * DP * 2;

    if (kend > kbeg) {
        const int t_first = kbeg / BN, t_last = (kend + BN - 1) / BN; /* [t_first, t_last) */
        /* Per-thread ldmatrix byte offsets. Every fragment row this lane addresses has row & 7 == lane & 7,
         * and chunk 2 j + b (j = kk & 3, b the lane's half) stays below 8, so the swizzled chunk is
         * 8 (kk >> 2) + ((2 j + b) ^ (lane & 7)): four registers per operand, the rest immediates. Round 2
         * computed the swizzle per (kk, np) and ptxas hoisted ~54 addresses out of the loop: 216 B spill at D 128. */
        const int x7 = lane & 7;
        uint32_t qo[4], ko[4], vo[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            qo[j] = (uint32_t)(((warp * 16 * MT + lane % 16) * (DP / 8) + ((2 * j + lane / 16) ^ x7)) * 16);
            ko[j] = (uint32_t)(((lane % 8 + (lane / 16) * 8) * (DP / 8) + ((2 * j + (lane / 8) % 2) ^ x7)) * 16);
            vo[j] = (uint32_t)(((lane % 16) * (DP / 8) + ((2 * j + lane / 16) ^ x7)) * 16);
        }
        load_tile<D, BM>(sQ, qg, a.q_ss, mrows, tid);
        {
            int n0 = t_first * BN;
            load_tile<D, BN>(sK, kg + (int64_t)n0 * a.k_ss, a.k_ss, lk - n0, tid);
            qattn_cp_async_commit(); /* group: Q + K(first) */
            load_tile<D, BN>(sV, vg + (int64_t)n0 * a.v_ss, a.v_ss, lk - n0, tid);
            qattn_cp_async_commit(); /* group: V(first) */
        }

        for (int tt = t_first; tt < t_last; tt++) {
            const int buf = (tt - t_first) & 1;
            /* K and V travel in separate cp.async groups: QK^T waits for K only, P V for V. Pending here:
             * K(tt), V(tt). */
            qattn_cp_async_wait<1>();
            __syncthreads(); /* K(tt) visible; every warp is done with tile tt - 1 (buffers buf ^ 1 free) */
            if (tt + 1 < t_last) {
                int n1 = (tt + 1) * BN;
                load_tile<D, BN>(sK + (buf ^ 1) * BN * DP * 2, kg + (int64_t)n1 * a.k_ss, a.k_ss, lk - n1, tid);
                qattn_cp_async_commit();
                load_tile<D, BN>(sV + (buf ^ 1) * BN * DP * 2, vg + (int64_t)n1 * a.v_ss, a.v_ss, lk - n1, tid);
            } else {
                qattn_cp_async_commit();
            }
            qattn_cp_async_commit();
            const uint32_t kb = sK + buf * BN * DP * 2, vb = sV + buf * BN * DP * 2;
            const int n0 = tt * BN;

            /* S = Q K^T for this warp's 16 MT rows x BN keys: each K fragment serves the MT m-tiles. */
            float s[MT][BN / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int i = 0; i < BN / 8; i++) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t qa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) qattn_ldsm_x4(qa[mt], sQ + qo[kk & 3] + (kk >> 2) * 128 + mt * 16 * DP * 2);
#pragma unroll
                for (int np = 0; np < BN / 16; np++) {
                    uint32_t kr[4];
                    qattn_ldsm_x4(kr, kb + ko[kk & 3] + (kk >> 2) * 128 + np * 16 * DP * 2);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        qattn_mma_f16<BF16>(s[mt][2 * np], qa[mt], kr[0], kr[1]);
                        qattn_mma_f16<BF16>(s[mt][2 * np + 1], qa[mt], kr[2], kr[3]);
                    }
                }
            }
            if (MODS) { /* qattn.h: s = softcap * tanh(s / softcap), then s -= slope * |i + Lk - Lq - j| */
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        const int d0 = rw0 + 16 * mt + 8 * r + lk - lq - n0 - 2 * t4; /* i + Lk - Lq - j at column 0 */
#pragma unroll
                        for (int n = 0; n < BN / 8; n++)
#pragma unroll
                            for (int e = 0; e < 2; e++) {
                                float x = s[mt][n][2 * r + e];
                                x = a.softcap_out > 0.f ? softcap_log2(x, a.softcap_in, a.softcap_out) : x * a.scale_log2;
                                s[mt][n][2 * r + e] = fmaf(-slope2, fabsf((float)(d0 - n * 8 - e)), x);
                            }
                    }
            }
            /* Mask only the tiles some row of the block does not fully see. */
            if (!(n0 >= lo_last && n0 + BN <= hi_first)) {
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        int lo, hi;
                        qattn_fwd_key_range(rw0 + 16 * mt + 8 * r, lq, lk, a.wl, a.wr, lo, hi);
#pragma unroll
                        for (int n = 0; n < BN / 8; n++)
#pragma unroll
                            for (int e = 0; e < 2; e++) {
                                int col = n0 + n * 8 + 2 * t4 + e;
                                if (!(col >= lo && col < hi)) s[mt][n][2 * r + e] = -INFINITY;
                            }
                    }
            }
            /* Online softmax (base 2, the scale folded into one FFMA per score). A row with no visible key so
             * far keeps max -inf. P is packed to 16 bits as it is made (pa: the PV A fragments). */
            uint32_t pa[MT][BN / 16][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    float m = mx[mt][r];
#pragma unroll
                    for (int n = 0; n < BN / 8; n++) m = fmaxf(m, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
                    float alpha;
                    const float msc = qattn_f16_max_step(mx[mt][r], qattn_quad_max<false>(m), sl2, alpha);
                    float sum = 0.f;
#pragma unroll
                    for (int n = 0; n < BN / 8; n++) {
                        float p0 = qattn_ex2(fmaf(s[mt][n][2 * r], sl2, -msc));
                        float p1 = qattn_ex2(fmaf(s[mt][n][2 * r + 1], sl2, -msc));
                        pa[mt][n / 2][(n & 1) * 2 + r] = pack2<BF16>(p0, p1);
                        sum += p0 + p1;
                    }
                    l[mt][r] = l[mt][r] * alpha + sum;
#pragma unroll
                    for (int i = 0; i < D / 8; i++) {
                        o[mt][i][2 * r] *= alpha;
                        o[mt][i][2 * r + 1] *= alpha;
                    }
                }
            qattn_cp_async_wait<2>(); /* V(tt) landed (K(tt + 1), V(tt + 1) may still be in flight) */
            __syncthreads();
            /* O += P V: each V fragment serves the MT m-tiles. */
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    uint32_t vr[4];
                    qattn_ldsm_x4_t(vr, vb + vo[dp & 3] + (dp >> 2) * 128 + kk * 16 * DP * 2);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        qattn_mma_f16<BF16>(o[mt][2 * dp], pa[mt][kk], vr[0], vr[1]);
                        qattn_mma_f16<BF16>(o[mt][2 * dp + 1], pa[mt][kk], vr[2], vr[3]);
                    }
                }
            }
        }
        qattn_cp_async_wait<0>();
    }

    /* Epilogue: normalise, write O (and LSE). */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float sum = l[mt][r];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int row = rw0 + 16 * mt + 8 * r;
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            if (row < lq) {
                void *ob = a.o;
                int64_t base = ooff + (int64_t)h * a.o_hs + (int64_t)row * a.o_ss + 2 * t4;
#pragma unroll
                for (int i = 0; i < D / 8; i++) store2(ob, a.o_dtype, base + i * 8, o[mt][i][2 * r] * inv, o[mt][i][2 * r + 1] * inv);
                if (a.lse && t4 == 0)
                    a.lse[lse_off + row] = sum > 0.f ? mx[mt][r] * (MODS ? 0.6931471805599453f : a.scale) + logf(sum) : -INFINITY;
            }
        }
}

template <int D, bool BF16, bool MODS> cudaError_t launch(const qattn_cuda_args &a, cudaStream_t stream) {
    dim3 grid((unsigned)((a.lq + BM - 1) / BM), (unsigned)a.h, (unsigned)a.batch);
    fwd_f16_kernel<D, BF16, MODS><<<grid, f16_cfg<D>::NTHREADS, f16_cfg<D>::SMEM, stream>>>(a);
    return cudaGetLastError();
}

template <int D> cudaError_t launch_d(const qattn_cuda_args &a, int bf16, cudaStream_t stream) {
    if (a.mods) return bf16 ? launch<D, true, true>(a, stream) : launch<D, false, true>(a, stream);
    return bf16 ? launch<D, true, false>(a, stream) : launch<D, false, false>(a, stream);
}

template <int D> cudaError_t prepare() {
    const void *k[4] = {(const void *)fwd_f16_kernel<D, false, false>, (const void *)fwd_f16_kernel<D, true, false>,
                        (const void *)fwd_f16_kernel<D, false, true>, (const void *)fwd_f16_kernel<D, true, true>};
    for (int i = 0; i < 4; i++) {
        cudaError_t e = cudaFuncSetAttribute(k[i], cudaFuncAttributeMaxDynamicSharedMemorySize, f16_cfg<D>::SMEM);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

} // namespace

/* The head dims of qattn_cuda_f16_head_dim_ok (cuda_common.cuh). */
cudaError_t qattn_cuda_prepare_f16(void) {
    cudaError_t e;
    if ((e = prepare<32>()) != cudaSuccess || (e = prepare<64>()) != cudaSuccess || (e = prepare<80>()) != cudaSuccess ||
        (e = prepare<96>()) != cudaSuccess || (e = prepare<128>()) != cudaSuccess || (e = prepare<160>()) != cudaSuccess ||
        (e = prepare<192>()) != cudaSuccess)
        return e;
    return prepare<256>();
}

cudaError_t qattn_cuda_launch_f16(const qattn_cuda_args &a, int bf16, cudaStream_t stream) {
    switch (a.d) {
    case 32: return launch_d<32>(a, bf16, stream);
    case 64: return launch_d<64>(a, bf16, stream);
    case 80: return launch_d<80>(a, bf16, stream);
    case 96: return launch_d<96>(a, bf16, stream);
    case 128: return launch_d<128>(a, bf16, stream);
    case 160: return launch_d<160>(a, bf16, stream);
    case 192: return launch_d<192>(a, bf16, stream);
    case 256: return launch_d<256>(a, bf16, stream);
    }
    return cudaErrorInvalidValue; /* qattn_cuda_supports rejects other head dims first */
}
