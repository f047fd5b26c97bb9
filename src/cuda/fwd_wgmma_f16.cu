/* FP16/BF16 flash attention forward for Hopper (sm_90a): wgmma for both products, head dims 64, 96
 * (laid out as 128), 128 and 256, non-varlen; the backend runs everything else (and every other chip)
 * on the mma.sync kernel (fwd_mma_f16.cu), whose semantics this one keeps (masks, windows, GQA, LSE,
 * output dtypes, empty rows). Schedule (FlashAttention-3's, and the INT8 wgmma kernel's):
 * - Persistent grid: one block per SM takes work items of 128 query rows of one (batch, head) in
 *   decode_item's order (heavy causal blocks first) from an atomic counter (a.sched, zeroed before each
 *   launch), claiming its next item when it starts one. Warpgroup 0 is the producer: one thread loads
 *   the user's strided [B, L, H, D] tensors with TMA tensor copies (boxes of 64 columns x the tile's
 *   rows, 128-byte swizzle: a tile is D / 64 boxes; rows past the sequence arrive as zeros) into the Q
 *   buffers and NST stages of K and of V, each with its own mbarriers, so that K(t) is released as soon
 *   as S(t) has read it.
 * - Warpgroups 1 and 2 take 64 query rows each. S(t) = Q K(t)^T: D / 16 wgmma m64nBNk16 from shared
 *   memory (K-major descriptors); online softmax in FP32 registers; P(t) rounded to the input dtype in
 *   registers is the A operand of O += P(t) V(t) (the accumulator layout is the A fragment), V from
 *   shared memory as an MN-major (transposed) operand. P V(t) is issued together with S(t + 1); ptxas
 *   puts the wait for both at the top of the softmax's block, so each warpgroup's softmax of t + 1
 *   starts after P V(t) is done (a branch that keeps the wait below the softmax was measured 5-11%
 *   slower: dev/gpu/wait_overlap.patch). The two consumer warpgroups take turns at issuing (named
 *   barriers), so one's softmax overlaps the other's products.
 * - setmaxnreg: the producer drops to 24 registers, consumers rise to 240 (D 128: O 64 + S 64 + P 32;
 *   D 256: O 128 + S 32 + P 16). */
#include "hopper.cuh"
#include "rows.cuh"

#include <cuda.h> /* CUtensorMap and the encode function's types only: the entry point comes from the runtime */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cudaTypedefs.h>
#include <math.h>
#include <string.h>

namespace {
using namespace qattn_sm90;

constexpr int BM = 128, NTHREADS = 384;
constexpr int HALF_COLS = 64;   /* columns of a 128-byte row: a tile is D / 64 such column blocks */
constexpr int QHALF = BM * 128; /* bytes of a 64-column block of a Q tile (16 KB) */
/* The shape per head dim; every shared-memory offset is a multiple of 1024 (the swizzle's period).
 * D 64 and 128: key tiles of 128, two Q buffers (the next item's Q loads while the current one runs).
 * D 256: O alone is 128 registers a thread, so key tiles of 64 (S 32 + P 16 registers) and one Q
 * buffer (64 KB): the next item's Q loads after the current item's last S. */
template <int D> struct f16w_cfg {
    static constexpr int BN = D == 256 ? 64 : 128, NQ = D == 256 ? 1 : 2, NST = 2; /* NST: stages of K and of V */
    static constexpr int KHALF = BN * 128;                       /* bytes of a 64-column block of a K or V tile */
    static constexpr int QTILE = BM * D * 2, KTILE = BN * D * 2; /* bytes */
    static constexpr int OFF_Q = 0, OFF_K = OFF_Q + NQ * QTILE, OFF_V = OFF_K + NST * KTILE;
    static constexpr int OFF_BAR = OFF_V + NST * KTILE;           /* K full[NST], K empty[NST], V full[NST], V empty[NST], Q full[NQ], Q empty[NQ] */
    static constexpr int OFF_ITEM = OFF_BAR + (4 * NST + 2 * NQ) * 8; /* the work_item of each Q buffer */
    static constexpr int OFF_RING = OFF_ITEM + NQ * 32;                /* block-sparse: the key tile of each stage */
    static constexpr int SMEM = OFF_RING + RING_BYTES + 1024;          /* + alignment slack of the dynamic base */
    static_assert(KHALF % 1024 == 0 && QHALF % 1024 == 0, "column blocks start on the swizzle's period");
    static_assert(OFF_RING % 8 == 0 && NST <= 4, "the block-sparse ring");
};

/* What a consumer thread needs of the item in hand: where its rows go, the key ranges of its two rows
 * and of its warpgroup's rows (masks), the item's key tiles and Q buffer. */
struct item_rows {
    int b, h, m0, qb, t_first, t_last;
    int lo0, hi0, lo1, hi1, wlo_last, whi_first;
};

#if defined(QATTN_SM90A_DEVICE)
#define QATTN_F16W_OK 1

/* d[N / 2] (+)= A (64 x 16, shared, K-major) * B (16 x N, shared, K-major), N 64 or 128; acc 0: d = A B */
template <bool BF16, int N> __device__ __forceinline__ void wgmma_ss(float *d, uint64_t da, uint64_t db, int acc) {
    if (N == 64) {
        if (BF16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " QATTN_WG_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                         : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24)
                         : "l"(da), "l"(db), "r"(acc));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " QATTN_WG_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                         : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24)
                         : "l"(da), "l"(db), "r"(acc));
    } else if (BF16)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " QATTN_WG_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24), QATTN_WG_F8(32), QATTN_WG_F8(40), QATTN_WG_F8(48),
                       QATTN_WG_F8(56)
                     : "l"(da), "l"(db), "r"(acc));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " QATTN_WG_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24), QATTN_WG_F8(32), QATTN_WG_F8(40), QATTN_WG_F8(48),
                       QATTN_WG_F8(56)
                     : "l"(da), "l"(db), "r"(acc));
}
/* d[N / 2] += A (64 x 16, registers) * B (16 x N, shared, MN-major: imm-trans-b 1), N 64, 128 or 256 */
template <bool BF16, int N> __device__ __forceinline__ void wgmma_rs(float *d, const uint32_t a[4], uint64_t db) {
    if (N == 256) {
        if (BF16)
            asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " QATTN_WG_D128 ", {%128,%129,%130,%131}, %132, 1, 1, 1, 1;\n"
                         : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24), QATTN_WG_F8(32), QATTN_WG_F8(40), QATTN_WG_F8(48),
                           QATTN_WG_F8(56), QATTN_WG_F8(64), QATTN_WG_F8(72), QATTN_WG_F8(80), QATTN_WG_F8(88), QATTN_WG_F8(96), QATTN_WG_F8(104),
                           QATTN_WG_F8(112), QATTN_WG_F8(120)
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
        else
            asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " QATTN_WG_D128 ", {%128,%129,%130,%131}, %132, 1, 1, 1, 1;\n"
                         : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24), QATTN_WG_F8(32), QATTN_WG_F8(40), QATTN_WG_F8(48),
                           QATTN_WG_F8(56), QATTN_WG_F8(64), QATTN_WG_F8(72), QATTN_WG_F8(80), QATTN_WG_F8(88), QATTN_WG_F8(96), QATTN_WG_F8(104),
                           QATTN_WG_F8(112), QATTN_WG_F8(120)
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
    } else if (N == 64) {
        if (BF16)
            asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " QATTN_WG_D32 ", {%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
                         : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24)
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
        else
            asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " QATTN_WG_D32 ", {%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
                         : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24)
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
    } else if (BF16)
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " QATTN_WG_D64 ", {%64,%65,%66,%67}, %68, 1, 1, 1, 1;\n"
                     : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24), QATTN_WG_F8(32), QATTN_WG_F8(40), QATTN_WG_F8(48),
                       QATTN_WG_F8(56)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
    else
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " QATTN_WG_D64 ", {%64,%65,%66,%67}, %68, 1, 1, 1, 1;\n"
                     : QATTN_WG_F8(0), QATTN_WG_F8(8), QATTN_WG_F8(16), QATTN_WG_F8(24), QATTN_WG_F8(32), QATTN_WG_F8(40), QATTN_WG_F8(48),
                       QATTN_WG_F8(56)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

template <int N> __device__ __forceinline__ void fence_regs(float *r) {
#pragma unroll
    for (int i = 0; i < N; i++) reg_fence(r[i]);
}
template <int BN> __device__ __forceinline__ void fence_pa(uint32_t pa[BN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
        for (int j = 0; j < 4; j++) reg_fence(pa[kk][j]);
}
/* Ping-pong (FlashAttention-3): the consumer warpgroups take turns at issuing their products. */
__device__ __forceinline__ void turn_begin(int wg) { named_sync<256>(1 + wg); }
__device__ __forceinline__ void turn_end(int wg) { named_arrive<256>(2 - wg); }

/* S = Q K^T: q_rows, this warpgroup's 64 rows of the Q buffer (first half); k_tile, the K stage. A k
 * step of 16 columns is 32 bytes inside the swizzled row (+2 in the descriptor), the next half of the
 * columns QHALF (KHALF) bytes further. */
template <int D, bool BF16> __device__ __forceinline__ void issue_s(float *si, uint32_t q_rows, uint32_t k_tile) {
    using C = f16w_cfg<D>;
    const uint64_t dq = desc_sw128(q_rows), dk = desc_sw128(k_tile);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        wgmma_ss<BF16, C::BN>(si, dq + (kk / 4) * (QHALF / 16) + (kk % 4) * 2, dk + (kk / 4) * (C::KHALF / 16) + (kk % 4) * 2, kk > 0);
    wg_commit();
}
/* O += P V: V's rows are keys (a k step of 16 keys is 2048 bytes), its column halves KHALF apart (the
 * MN-major leading byte offset; unused at D 64). */
template <int D, bool BF16>
__device__ __forceinline__ void issue_pv(float *o, const uint32_t pa[f16w_cfg<D>::BN / 16][4], uint32_t v_tile) {
    using C = f16w_cfg<D>;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < C::BN / 16; kk++) wgmma_rs<BF16, D>(o, pa[kk], desc_sw128_mn(v_tile + kk * 16 * 128, C::KHALF));
    wg_commit();
}

/* Online softmax of key tile n0 (the mma.sync kernel's rule: base 2, the scale folded into one FFMA per
 * score, the reference is the running max, fmaxf drops NaN scores from the max and the exponential
 * propagates them): scores to unnormalised probabilities in place, the running max and sum, and the
 * factor alpha of O (exactly 1 where the max did not grow). */
template <int BN>
__device__ __forceinline__ void softmax_step(float *s, int n0, const item_rows &w, int t4, float sl2, float mx[2], float l[2], float alpha[2]) {
    /* masks on the tiles some row of this warpgroup does not fully see */
    if (!(n0 >= w.wlo_last && n0 + BN <= w.whi_first)) {
#pragma unroll
        for (int n = 0; n < BN / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = n0 + n * 8 + 2 * t4 + (e & 1);
                const bool vis = e < 2 ? (col >= w.lo0 && col < w.hi0) : (col >= w.lo1 && col < w.hi1);
                if (!vis) s[4 * n + e] = -INFINITY;
            }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float m0 = mx[r], m1 = -INFINITY; /* two chains */
#pragma unroll
        for (int n = 0; n < BN / 8; n += 2) {
            m0 = fmaxf(m0, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
            m1 = fmaxf(m1, fmaxf(s[4 * n + 4 + 2 * r], s[4 * n + 4 + 2 * r + 1]));
        }
        const float msc = qattn_f16_max_step(mx[r], qattn_quad_max<false>(fmaxf(m0, m1)), sl2, alpha[r]);
        float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
            const float p0 = qattn_ex2(fmaf(s[4 * n + 2 * r], sl2, -msc)), p1 = qattn_ex2(fmaf(s[4 * n + 2 * r + 1], sl2, -msc));
            s[4 * n + 2 * r] = p0, s[4 * n + 2 * r + 1] = p1;
            sum[n & 3] += p0 + p1;
        }
        l[r] = fmaf(l[r], alpha[r], (sum[0] + sum[1]) + (sum[2] + sum[3]));
    }
}
/* P (the S accumulator layout) as the A fragments of the 16-key steps, rounded to the input dtype */
template <bool BF16, int BN> __device__ __forceinline__ void make_pa(const float *s, uint32_t pa[BN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float x = s[8 * kk + 2 * i], y = s[8 * kk + 2 * i + 1];
            if (BF16) {
                const __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
                pa[kk][i] = *(const uint32_t *)&v;
            } else {
                const __half2 v = __floats2half2_rn(x, y);
                pa[kk][i] = *(const uint32_t *)&v;
            }
        }
}
/* O *= alpha on every tile. Skipping it where no row max of the warp grew (a warp vote and a branch)
 * measured 3-5% slower at D 128, L 4k/16k (H100, 2026-12-05, same-process A/B, docs/notes/gpu_history.md round 7). */
template <int D> __device__ __forceinline__ void rescale_o(float o[D / 2], const float alpha[2]) {
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] *= alpha[(i >> 1) & 1];
}

/* O / l and LSE of this thread's rows row0 and row0 + 8 (the mma.sync kernel's epilogue: rows that saw
 * no key get 0 and LSE -inf), the first DV columns. Every load of the item came before (a load after a
 * store would wait for it, traced in the INT8 wgmma kernel). */
template <int D, int DV>
__device__ __forceinline__ void store_rows(const qattn_cuda_args &a, int b, int h, int row0, int t4, const float o[D / 2], const float mx[2],
                                           const float l[2]) {
    const int64_t ooff = (int64_t)b * a.o_bs + (int64_t)h * a.o_hs;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int row = row0 + 8 * r;
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
        for (int k = 0; k < DV / 32; k++) { /* 32 columns at a time: x and y of the whole row cost D 256 a spill */
            float x[4], y[4];
#pragma unroll
            for (int e = 0; e < 4; e++) x[e] = o[4 * (4 * k + e) + 2 * r] * inv, y[e] = o[4 * (4 * k + e) + 2 * r + 1] * inv;
            qattn_store_row<4>(a, ooff + (int64_t)row * a.o_ss + 32 * k, row, t4, x, y);
        }
        if (a.lse && t4 == 0 && row < a.lq) a.lse[((int64_t)b * a.h + h) * a.lq + row] = sum > 0.f ? mx[r] * a.scale + logf(sum) : -INFINITY;
    }
}

/* A consumer takes the next item the producer announced (Q buffer j % NQ), storing the rows of items
 * with no key on the way. False (cur unchanged) when the items have run out. */
template <int D, int DV>
__device__ __forceinline__ bool next_item(const qattn_cuda_args &a, const work_item *slot, uint32_t bar_qfull, uint32_t bar_qempty, int wg, int roff,
                                          int t4, int &j, item_rows &cur) {
    for (;;) {
        constexpr int NQ = f16w_cfg<D>::NQ;
        const int qb = j % NQ;
        mbar_wait(bar_qfull + 8 * qb, (j / NQ) & 1);
        const work_item w = slot[qb];
        if (w.b < 0) return false;
        j++;
        if (w.t_last == w.t_first) {
            store_empty_rows<DV>(a, w.b, w.h, w.m0 + roff, t4);
            mbar_arrive(bar_qempty + 8 * qb);
            continue;
        }
        cur.b = w.b, cur.h = w.h, cur.m0 = w.m0, cur.qb = qb, cur.t_first = w.t_first, cur.t_last = w.t_last;
        const int row0 = w.m0 + roff;
        /* the tiles every row of this warpgroup sees in full need no mask */
        int lo, hi;
        qattn_fwd_key_range(min(w.m0 + wg * 64, a.lq - 1), a.lq, a.lk, a.wl, a.wr, lo, cur.whi_first);
        qattn_fwd_key_range(min(w.m0 + wg * 64 + 63, a.lq - 1), a.lq, a.lk, a.wl, a.wr, cur.wlo_last, hi);
        qattn_fwd_key_range(row0, a.lq, a.lk, a.wl, a.wr, cur.lo0, cur.hi0);
        qattn_fwd_key_range(row0 + 8, a.lq, a.lk, a.wl, a.wr, cur.lo1, cur.hi1);
        return true;
    }
}
#endif

/* Persistent grid with the pipeline kept full across items (the producer loads the next item's Q and
 * tiles while the consumers finish the current one; the last P V of an item is issued with the first S
 * of the next). Tensor maps: q [DV, H, Lq, B], k and v [DV, HK, Lk, B] (innermost first), boxes of 64 x 1
 * x rows x 1 with the 128-byte swizzle. D: the shared-memory layout's head dim; DV: the real one, less
 * at D 96 (laid out as 128: the boxes' columns past 96 arrive as zeros, so both products run over
 * zero padding, and only the 96 columns are stored). */
template <int D, int DV, bool BF16, bool BS>
__global__ void __launch_bounds__(NTHREADS, 1)
    fwd_f16_wgmma_kernel(const __grid_constant__ qattn_cuda_args a, const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                         const __grid_constant__ CUtensorMap tm_v, int hg, int n_items, const __grid_constant__ qattn_cuda_bmask bm) {
#if defined(QATTN_F16W_OK)
    using C = f16w_cfg<D>;
    constexpr int BN = C::BN, NQ = C::NQ, NST = C::NST;
    /* Block-sparse at D <= 128: the producer's mask walk spilled at 24 registers, the consumers fit in 232
     * (128 x 32 + 256 x 232 <= 384 x 168); at D 256 the consumers need their 240 (ptxas -v, docs/gpu.md). */
    constexpr int PROD_REGS = BS && D <= 128 ? 32 : 24, CONS_REGS = BS && D <= 128 ? 232 : 240;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t sbase = (qattn_smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned char *smem = smem_raw + (sbase - qattn_smem_u32(smem_raw));
    const uint32_t bar_kfull = sbase + C::OFF_BAR, bar_kempty = bar_kfull + NST * 8, bar_vfull = bar_kempty + NST * 8, bar_vempty = bar_vfull + NST * 8;
    const uint32_t bar_qfull = bar_vempty + NST * 8, bar_qempty = bar_qfull + NQ * 8;
    work_item *slot = (work_item *)(smem + C::OFF_ITEM); /* the item in each Q buffer */
    const uint32_t ring = sbase + C::OFF_RING;             /* BS: the key tile in each K stage */

    if (threadIdx.x == 0) {
        for (int s = 0; s < NST; s++) {
            mbar_init(bar_kfull + 8 * s, 1);
            mbar_init(bar_kempty + 8 * s, 256);
            mbar_init(bar_vfull + 8 * s, 1);
            mbar_init(bar_vempty + 8 * s, 256);
        }
        for (int i = 0; i < NQ; i++) {
            mbar_init(bar_qfull + 8 * i, 1);
            mbar_init(bar_qempty + 8 * i, 256);
        }
        mbar_init_fence();
    }
    __syncthreads();

    if (threadIdx.x < 128) { /* producer warpgroup: one thread issues every copy (BS: its warp walks the mask) */
        setmaxnreg_dec<PROD_REGS>();
        if (BS ? threadIdx.x < 32 : threadIdx.x == 0) {
            /* BS: only lane 0 waits on barriers and issues copies; the other lanes only meet it in the walk's
             * and the ticket's warp collectives, so no lane blocks on a barrier phase another lane must advance */
            const bool lead = !BS || threadIdx.x == 0;
            if (lead) {
                tma_prefetch_desc(&tm_q);
                tma_prefetch_desc(&tm_k);
                tma_prefetch_desc(&tm_v);
            }
            bm_walk bw;
            /* The consumers issue S(g) with P V(g - 1) (g: tiles counted over all items of the block), so
             * K(g) is loaded before V(g - 1); pv_* hold the V copy still to issue. */
            int g = 0, pv_hkv = 0, pv_row = 0, pv_b = 0;
            for (int j = 0, item = blockIdx.x;; j++) {
                const int qb = j % NQ;
                if (lead) mbar_wait(bar_qempty + 8 * qb, ((j / NQ) & 1) ^ 1);
                if (item >= n_items) {
                    if (lead) {
                        slot[qb].b = -1;
                        mbar_arrive(bar_qfull + 8 * qb);
                    }
                    break;
                }
                const work_item w = decode_item<BM, BN>(a, item, hg);
                const int n_live = post_item<BS, BN>(slot[qb], w, bw, ring + RING_ROW, bm, lead);
                /* the block's next item, claimed now so that its index is known before this item's loads end */
                const int next = gridDim.x + next_ticket<BS>(a.sched);
                if (lead && n_live > 0) {
                    mbar_expect_tx(bar_qfull + 8 * qb, C::QTILE);
                    for (int c = 0; c < D / 64; c++)
                        tma_load_4d(sbase + C::OFF_Q + qb * C::QTILE + c * QHALF, &tm_q, c * HALF_COLS, w.h, w.m0, w.b, bar_qfull + 8 * qb);
                } else if (lead) {
                    mbar_arrive(bar_qfull + 8 * qb);
                }
                for (int tt = w.t_first; tt < w.t_last; tt++, g++) {
                    if (BS) { /* skip the tiles of zero mask blocks */
                        tt = bm_walk_next<BN>(bw, ring + RING_ROW, bm, w.t_last);
                        if (tt == w.t_last) break;
                    }
                    if (!lead) continue;
                    const int s = g % NST;
                    mbar_wait(bar_kempty + 8 * s, ((g / NST) & 1) ^ 1);
                    if (BS) ring_write(ring + 4 * s, tt); /* before the arrive below */
                    mbar_expect_tx(bar_kfull + 8 * s, C::KTILE);
                    for (int c = 0; c < D / 64; c++)
                        tma_load_4d(sbase + C::OFF_K + s * C::KTILE + c * C::KHALF, &tm_k, c * HALF_COLS, w.hkv, tt * BN, w.b, bar_kfull + 8 * s);
                    if (g > 0) {
                        const int sp = (g - 1) % NST;
                        mbar_wait(bar_vempty + 8 * sp, (((g - 1) / NST) & 1) ^ 1);
                        mbar_expect_tx(bar_vfull + 8 * sp, C::KTILE);
                        for (int c = 0; c < D / 64; c++)
                            tma_load_4d(sbase + C::OFF_V + sp * C::KTILE + c * C::KHALF, &tm_v, c * HALF_COLS, pv_hkv, pv_row, pv_b, bar_vfull + 8 * sp);
                    }
                    pv_hkv = w.hkv, pv_row = tt * BN, pv_b = w.b;
                }
                item = next;
            }
            if (lead && g > 0) { /* the last V */
                const int sp = (g - 1) % NST;
                mbar_wait(bar_vempty + 8 * sp, (((g - 1) / NST) & 1) ^ 1);
                mbar_expect_tx(bar_vfull + 8 * sp, C::KTILE);
                for (int c = 0; c < D / 64; c++)
                    tma_load_4d(sbase + C::OFF_V + sp * C::KTILE + c * C::KHALF, &tm_v, c * HALF_COLS, pv_hkv, pv_row, pv_b, bar_vfull + 8 * sp);
            }
        }
        return;
    }
    setmaxnreg_inc<CONS_REGS>();

    const int wg = threadIdx.x / 128 - 1, tw = threadIdx.x % 128, warp = tw / 32, lane = tw % 32;
    const int t4 = lane % 4, roff = wg * 64 + warp * 16 + lane / 4; /* this thread's rows: m0 + roff, + 8 */
    const float sl2 = a.scale_log2;

    float o[D / 2], si[BN / 2];
    uint32_t pa[BN / 16][4]; /* P of the tile in hand, kept intact until its P V completes */
    float mx[2], l[2], alpha[2];
    int j = 0;     /* items taken so far (Q buffer j % NQ) */
    item_rows cur; /* the item of the tile in hand */
    if (!next_item<D, DV>(a, slot, bar_qfull, bar_qempty, wg, roff, t4, j, cur)) return;
    if (wg == 1) named_arrive<256>(1); /* warpgroup 0 issues first */
    /* Prologue: S of the first tile. Then each step issues S of the next tile (which may be the next
     * item's first) with P V of the previous one. */
    int tt = cur.t_first, g = 0;
    mbar_wait(bar_kfull, 0);
    int kt = BS ? ring_read(ring) : tt; /* the key tile (BS: tt counts the item's live tiles) */
    turn_begin(wg);
    issue_s<D, BF16>(si, sbase + C::OFF_Q + cur.qb * C::QTILE + wg * 64 * 128, sbase + C::OFF_K);
    turn_end(wg);
    wg_wait<0>();
    fence_regs<BN / 2>(si);
    mbar_arrive(bar_kempty);
    if (tt == cur.t_last - 1) mbar_arrive(bar_qempty + 8 * cur.qb); /* the item's last S has read its Q */
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.f;
    mx[0] = mx[1] = -INFINITY;
    l[0] = l[1] = 0.f;
    softmax_step<BN>(si, kt * BN, cur, t4, sl2, mx, l, alpha);
    make_pa<BF16, BN>(si, pa);
    for (;;) {
        const int gp = g;
        const int prev_b = cur.b, prev_h = cur.h, prev_m0 = cur.m0; /* where the rows go if this step crosses */
        const bool crossed = ++tt == cur.t_last;
        if (crossed) {
            if (!next_item<D, DV>(a, slot, bar_qfull, bar_qempty, wg, roff, t4, j, cur)) break;
            tt = cur.t_first;
        }
        g++;
        const int s = g % NST, sp = gp % NST;
        const uint32_t q_rows = sbase + C::OFF_Q + cur.qb * C::QTILE + wg * 64 * 128;
        mbar_wait(bar_kfull + 8 * s, (g / NST) & 1);
        if (BS) kt = ring_read(ring + 4 * s);
        else kt = tt;
        mbar_wait(bar_vfull + 8 * sp, (gp / NST) & 1);
        if (!crossed) {
            turn_begin(wg);
            issue_s<D, BF16>(si, q_rows, sbase + C::OFF_K + s * C::KTILE);
            issue_pv<D, BF16>(o, pa, sbase + C::OFF_V + sp * C::KTILE);
            turn_end(wg);
            wg_wait<1>(); /* S done; P V may still run */
            fence_regs<BN / 2>(si);
            mbar_arrive(bar_kempty + 8 * s);
            if (tt == cur.t_last - 1) mbar_arrive(bar_qempty + 8 * cur.qb);
            softmax_step<BN>(si, kt * BN, cur, t4, sl2, mx, l, alpha);
            wg_wait<0>();
            fence_regs<D / 2>(o);
            fence_pa<BN>(pa);
            mbar_arrive(bar_vempty + 8 * sp);
            rescale_o<D>(o, alpha);
            make_pa<BF16, BN>(si, pa);
            continue;
        }
        /* Crossing into a new item: that P V finishes the previous item, issued first so that its rows
         * are stored while the new item's first S runs. */
        turn_begin(wg);
        issue_pv<D, BF16>(o, pa, sbase + C::OFF_V + sp * C::KTILE);
        issue_s<D, BF16>(si, q_rows, sbase + C::OFF_K + s * C::KTILE);
        turn_end(wg);
        wg_wait<1>(); /* P V done */
        fence_regs<D / 2>(o);
        fence_pa<BN>(pa);
        mbar_arrive(bar_vempty + 8 * sp);
        store_rows<D, DV>(a, prev_b, prev_h, prev_m0 + roff, t4, o, mx, l);
#pragma unroll
        for (int i = 0; i < D / 2; i++) o[i] = 0.f;
        mx[0] = mx[1] = -INFINITY;
        l[0] = l[1] = 0.f;
        wg_wait<0>();
        fence_regs<BN / 2>(si);
        mbar_arrive(bar_kempty + 8 * s);
        /* Q is released as soon as the item's last S has read it (the next item may have no key, and the
         * one after it then needs this buffer before this step can end) */
        if (tt == cur.t_last - 1) mbar_arrive(bar_qempty + 8 * cur.qb);
        softmax_step<BN>(si, kt * BN, cur, t4, sl2, mx, l, alpha);
        make_pa<BF16, BN>(si, pa);
    }
    /* Epilogue: the last P V, the last item's rows. */
    {
        const int sp = g % NST;
        mbar_wait(bar_vfull + 8 * sp, (g / NST) & 1);
        turn_begin(wg);
        issue_pv<D, BF16>(o, pa, sbase + C::OFF_V + sp * C::KTILE);
        turn_end(wg);
        wg_wait<0>();
        fence_regs<D / 2>(o);
        fence_pa<BN>(pa);
        mbar_arrive(bar_vempty + 8 * sp);
        store_rows<D, DV>(a, cur.b, cur.h, cur.m0 + roff, t4, o, mx, l);
    }
    if (wg == 0) named_sync<256>(1); /* consume warpgroup 1's last turn hand-over */
#else
    __trap(); /* built without sm_90a: the host never launches this kernel there */
#endif
}

/* cuTensorMapEncodeTiled through the runtime's driver entry point (no link against libcuda); NULL if
 * the driver lacks it. */
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void *p = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            p = NULL;
        }
        return (PFN_cuTensorMapEncodeTiled_v12000)p;
    }();
    return fn;
}

/* Map of a [B, L, heads, D] tensor (element strides bs, ss, hs; D contiguous) as [D, heads, L, B] with
 * boxes of 64 x 1 x rows x 1 (at D 96 the second box is half outside: zeros). Strides of dimensions of size 1 are never used; they are given a legal
 * value. False if the driver refuses (alignment, strides): the caller falls back to mma.sync. */
bool make_map(CUtensorMap *m, const void *base, int bf16, int D, int64_t batch, int64_t len, int heads, int64_t bs, int64_t ss, int64_t hs, int rows) {
    PFN_cuTensorMapEncodeTiled_v12000 enc = encode_fn();
    if (!enc) return false;
    cuuint64_t dim[4] = {(cuuint64_t)D, (cuuint64_t)heads, (cuuint64_t)len, (cuuint64_t)batch};
    const int64_t st[3] = {heads > 1 ? hs : D, len > 1 ? ss : D, batch > 1 ? bs : D};
    cuuint64_t stride[3];
    for (int i = 0; i < 3; i++) {
        if (st[i] <= 0) return false;
        stride[i] = (cuuint64_t)st[i] * 2;
    }
    cuuint32_t box[4] = {HALF_COLS, 1, (cuuint32_t)rows, 1}, estride[4] = {1, 1, 1, 1};
    CUresult r = enc(m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, (void *)base, dim, stride, box, estride,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS;
}

/* Head groups (decode_item) for causal and windowed launches, whose items differ in cost: each group
 * lists its heavy items first, so a last group smaller than the others puts heavy items at the end of
 * the order, where the other blocks idle behind them. The smallest divisor of n_bh from hg to 2 hg makes
 * the groups equal (B*L = 16k, H 16, simulated with the atomic counter: the makespan over the mean falls
 * from 1.10 to 1.02 at L 4k and 16k, from 1.05 to 1.02 at 1k); none there: hg as it is. */
int even_head_group(int hg, int64_t n_bh) {
    for (int64_t d = hg; d <= 2 * (int64_t)hg && d <= n_bh; d++)
        if (n_bh % d == 0) return (int)d;
    return hg;
}

template <int D, int DV> cudaError_t prepare() {
    constexpr int SM = f16w_cfg<D>::SMEM;
    cudaError_t e;
    if ((e = cudaFuncSetAttribute(fwd_f16_wgmma_kernel<D, DV, false, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, SM)) != cudaSuccess ||
        (e = cudaFuncSetAttribute(fwd_f16_wgmma_kernel<D, DV, true, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, SM)) != cudaSuccess ||
        (e = cudaFuncSetAttribute(fwd_f16_wgmma_kernel<D, DV, false, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, SM)) != cudaSuccess)
        return e;
    return cudaFuncSetAttribute(fwd_f16_wgmma_kernel<D, DV, true, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, SM);
}

template <int D, int DV>
void launch(const qattn_cuda_args &a, int bf16, const CUtensorMap &tq, const CUtensorMap &tk, const CUtensorMap &tv, int grid, int hg, int n_items,
            const qattn_cuda_bmask &bm, cudaStream_t stream) {
    constexpr int SM = f16w_cfg<D>::SMEM;
    if (bm.m) {
        if (bf16) fwd_f16_wgmma_kernel<D, DV, true, true><<<grid, NTHREADS, SM, stream>>>(a, tq, tk, tv, hg, n_items, bm);
        else fwd_f16_wgmma_kernel<D, DV, false, true><<<grid, NTHREADS, SM, stream>>>(a, tq, tk, tv, hg, n_items, bm);
    } else if (bf16)
        fwd_f16_wgmma_kernel<D, DV, true, false><<<grid, NTHREADS, SM, stream>>>(a, tq, tk, tv, hg, n_items, bm);
    else
        fwd_f16_wgmma_kernel<D, DV, false, false><<<grid, NTHREADS, SM, stream>>>(a, tq, tk, tv, hg, n_items, bm);
}

} // namespace

cudaError_t qattn_cuda_prepare_f16_wgmma(void) {
    cudaError_t e;
    if ((e = prepare<64, 64>()) != cudaSuccess || (e = prepare<128, 96>()) != cudaSuccess || (e = prepare<128, 128>()) != cudaSuccess) return e;
    return prepare<256, 256>();
}

cudaError_t qattn_cuda_launch_f16_wgmma(const qattn_cuda_args &a, int bf16, cudaStream_t stream, const qattn_cuda_bmask *bmp) {
    if ((a.d != 64 && a.d != 96 && a.d != 128 && a.d != 256) || a.n_sm < 1 || a.cu_q || a.lq < 1 || a.lk < 1 || a.batch < 1) return cudaErrorNotSupported;
    const int64_t n_mblk = (a.lq + BM - 1) / BM, n_bh = (int64_t)a.batch * a.h, n_items = n_mblk * n_bh;
    if (n_items > INT32_MAX / 2) return cudaErrorNotSupported;
    const int bn = a.d == 256 ? f16w_cfg<256>::BN : f16w_cfg<128>::BN;
    CUtensorMap tq, tk, tv;
    if (!make_map(&tq, a.q, bf16, a.d, a.batch, a.lq, a.h, a.q_bs, a.q_ss, a.q_hs, BM) ||
        !make_map(&tk, a.k, bf16, a.d, a.batch, a.lk, a.hk, a.k_bs, a.k_ss, a.k_hs, bn) ||
        !make_map(&tv, a.v, bf16, a.d, a.batch, a.lk, a.hk, a.v_bs, a.v_ss, a.v_hs, bn))
        return cudaErrorNotSupported;
    const int grid = (int)(n_items < a.n_sm ? n_items : a.n_sm);
    int hg = qattn_sm90_head_group(n_mblk, n_bh, grid);
    if (a.wl >= 0 || a.wr >= 0) hg = even_head_group(hg, n_bh);
    qattn_cuda_bmask bm;
    memset(&bm, 0, sizeof bm);
    if (bmp && bmp->m) {
        if (bmp->bq % BM != 0 || bmp->bk % bn != 0) return cudaErrorInvalidValue; /* the backend refuses these first */
        bm = *bmp;
    }
    switch (a.d) {
    case 64: launch<64, 64>(a, bf16, tq, tk, tv, grid, hg, (int)n_items, bm, stream); break;
    case 96: launch<128, 96>(a, bf16, tq, tk, tv, grid, hg, (int)n_items, bm, stream); break;
    case 128: launch<128, 128>(a, bf16, tq, tk, tv, grid, hg, (int)n_items, bm, stream); break;
    default: launch<256, 256>(a, bf16, tq, tk, tv, grid, hg, (int)n_items, bm, stream);
    }
    return cudaGetLastError();
}
