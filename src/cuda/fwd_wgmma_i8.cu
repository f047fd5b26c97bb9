/* INT8 flash attention forward for Hopper (sm_90a): wgmma for both products, head dim 128.
 *
 * Same scheme and numerics as the mma.sync kernel (fwd_mma_i8.cu; quant_i8.cu's kernels feed both
 * of them): S = Q K^T as s8 x s8 -> s32, P = u8 codes of exp2(s - m_tile) against the tile's own row
 * max, O += P V as u8 x s8 -> s32 with the per-tile V scales, dequantization in FP32 registers.
 * What changes is the schedule, the reason being that the mma.sync kernel is bound by instruction
 * issue and by the latency of its dependent chains (two warps per scheduler, docs/gpu.md):
 * - Persistent grid: one block per SM takes work items of 128 query rows of one (batch, head) from an
 *   atomic counter until they run out (decode_item: the order). Warpgroup 0 is the producer, warpgroups
 *   1 and 2 are consumers of 64 rows each. The producer's single thread streams the K, Vt and scale tiles of
 *   128 keys with 1-D bulk copies (cp.async.bulk, completion on an mbarrier) into NST stages; the
 *   quantization kernels wrote the codes as the shared-memory image of a tile (128-byte swizzle), so
 *   a tile is one contiguous copy and needs no address arithmetic per element.
 * - Consumers: S(t) = Q K(t)^T with four wgmma m64n128k32 (Q and K from shared memory through
 *   descriptors), softmax in registers, then P(t) V(t) with four wgmma whose A operand is the P codes
 *   in registers (the S accumulator layout is the A fragment, as for mma.sync; Vt's keys are permuted
 *   inside 16-key groups to match). P V(t) is issued together with the next tile's S, and the O
 *   update of tile t runs after both complete, in one block with the softmax of tile t + 1 (ptxas
 *   puts that wait at the block's top, so the softmax does not overlap the warpgroup's own P V; an
 *   order that makes it overlap was measured 5-11% slower: dev/gpu/wait_overlap.patch); the tensor
 *   cores work on one warpgroup's products while the other warpgroup does its softmax.
 * - setmaxnreg: the producer drops to 24 registers, consumers rise to 240 (O 64 + S 64 + PV 64 + P 16).
 * Integer accumulators start at the bit pattern of 1.5 * 2^23 (as in the mma.sync kernel) so the
 * int -> float conversion is free. */
#include "cuda_common.cuh"
#include "hopper.cuh"
#include "i8_rows.cuh"

#include <math.h>
#include <string.h>

namespace {
using namespace qattn_sm90;

/* NST: stages of K/Vt tiles. Alternatives to it, to TAU (the softmax step) and to the ping-pong turns
 * are source edits for a device call (dev/cuda_tuning/variant.sh), not switches here. */
constexpr int D = 128, BM = 128, BN = 128, NST = 3, NTHREADS = 384;
constexpr int TILE = BN * D;                     /* bytes of a K or Vt tile */
constexpr int OFF_Q = 0, OFF_K = OFF_Q + 2 * BM * D; /* two Q buffers; all tile offsets are multiples of 1024 */
constexpr int OFF_V = OFF_K + NST * TILE;
constexpr int OFF_SK = OFF_V + NST * TILE;
constexpr int OFF_SV = OFF_SK + NST * BN * 4;
constexpr int OFF_SQ = OFF_SV + NST * D * 4;      /* the Q rows' scales, per Q buffer */
constexpr int OFF_BAR = OFF_SQ + 2 * BM * 4;       /* full[NST], empty[NST], Q full[2], Q empty[2] */
constexpr int OFF_ITEM = OFF_BAR + (2 * NST + 4) * 8; /* the work_item of each Q buffer */
constexpr int OFF_RING = OFF_ITEM + 2 * 32;          /* block-sparse: the key tile of each stage */
constexpr int SMEM = OFF_RING + RING_BYTES + 1024;   /* + alignment slack of the dynamic base */
static_assert(OFF_RING % 8 == 0 && NST <= 4, "the block-sparse ring");

/* What a consumer thread needs of the item in hand: where its rows go, their row factors, the key
 * ranges of its two rows and of its warpgroup's rows (masks), the item's key tiles and Q buffer. */
struct item_rows {
    int b, h, m0, qb, t_first, t_last;
    int64_t bhk;
    float rf[2];
    int lo0, hi0, lo1, hi1, wlo_last, whi_first;
};

#if defined(QATTN_SM90A_DEVICE)
#define QATTN_WGMMA_OK 1
constexpr int I2F_BIAS = 0x4B400000;
constexpr float I2F_BIASF = 12582912.f;

/* d[64] += A (64 x 32 s8, shared) * B (32 x 128 s8, shared, K-major) */
__device__ __forceinline__ void wgmma_ss_s8(int d[64], uint64_t da, uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 " QATTN_WG_D64 ", %64, %65, p;\n}\n"
                 : QATTN_WG_R8(0), QATTN_WG_R8(8), QATTN_WG_R8(16), QATTN_WG_R8(24), QATTN_WG_R8(32), QATTN_WG_R8(40), QATTN_WG_R8(48), QATTN_WG_R8(56)
                 : "l"(da), "l"(db), "r"(1));
}
/* d[64] += A (64 x 32 u8, registers) * B (32 x 128 s8, shared, K-major) */
__device__ __forceinline__ void wgmma_rs_u8s8(int d[64], const uint32_t a[4], uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32.u8.s8 " QATTN_WG_D64 ", {%64,%65,%66,%67}, %68, p;\n}\n"
                 : QATTN_WG_R8(0), QATTN_WG_R8(8), QATTN_WG_R8(16), QATTN_WG_R8(24), QATTN_WG_R8(32), QATTN_WG_R8(40), QATTN_WG_R8(48), QATTN_WG_R8(56)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}


/* The consumer steps (inlined; the arrays stay in registers). */
__device__ __forceinline__ void fence64(int r[64]) {
#pragma unroll
    for (int i = 0; i < 64; i++) reg_fence(r[i]);
}
__device__ __forceinline__ void fence_pa(uint32_t pa[4][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int j = 0; j < 4; j++) reg_fence(pa[kk][j]);
}
/* Ping-pong (FlashAttention-3): the two consumer warpgroups take turns at issuing their GEMMs, so
 * one's softmax runs while the tensor cores work for the other. */
__device__ __forceinline__ void turn_begin(int wg) { named_sync<256>(1 + wg); }
__device__ __forceinline__ void turn_end(int wg) { named_arrive<256>(2 - wg); }
/* S = Q K^T as biased floats (accumulators start at 1.5 * 2^23) */
__device__ __forceinline__ void issue_s(int si[64], uint64_t dq, uint32_t sk_tile) {
#pragma unroll
    for (int i = 0; i < 64; i++) si[i] = I2F_BIAS;
    const uint64_t dk = desc_sw128(sk_tile);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 32; kk++) wgmma_ss_s8(si, dq + 2 * kk, dk + 2 * kk);
    wg_commit();
}
__device__ __forceinline__ void issue_pv(int pv[64], const uint32_t pa[4][4], uint32_t sv_tile) {
#pragma unroll
    for (int i = 0; i < 64; i++) pv[i] = I2F_BIAS;
    const uint64_t dv = desc_sw128(sv_tile);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 32; kk++) wgmma_rs_u8s8(pv, pa[kk], dv + 2 * kk);
    wg_commit();
}
/* O = O * alpha + beta * (P V) * sv_d(tile); alpha is 1 for the whole warp on most tiles */
__device__ __forceinline__ void o_update(float o[D / 8][4], const int pv[64], const float *svt, int t4, const float alpha[2], const float beta[2],
                                         bool rescale) {
    if (rescale) {
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            const float2 vs = *(const float2 *)(svt + j * 8 + 2 * t4);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float v = (e & 1) ? vs.y : vs.x;
                const float x = fmaf(__int_as_float(pv[4 * j + e]), v, -I2F_BIASF * v);
                o[j][e] = fmaf(o[j][e], alpha[e >> 1], x * beta[e >> 1]);
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            const float2 vs = *(const float2 *)(svt + j * 8 + 2 * t4);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float v = (e & 1) ? vs.y : vs.x;
                const float x = fmaf(__int_as_float(pv[4 * j + e]), v, -I2F_BIASF * v);
                o[j][e] = fmaf(x, beta[e >> 1], o[j][e]);
            }
        }
    }
}
/* How far (base-2 exponent) a tile's row max may exceed the row's reference max before the reference
 * moves (lazy rescale, below). */
constexpr int TAU = 8;
/* Scores of key tile n0 (stage s) to the P codes pa, the row statistics and the factors of its P V. */
__device__ __forceinline__ void softmax_step(const int si[64], const float *skt, int n0, const item_rows &w, int t4, float mx[2], float l[2],
                                             float alpha[2], float beta[2], bool &rescale, uint32_t pa[4][4]) {
    const float *rf = w.rf;
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
    /* masks on the tiles some row of this warpgroup does not fully see */
    if (!(n0 >= w.wlo_last && n0 + BN <= w.whi_first)) {
#pragma unroll
        for (int n = 0; n < BN / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = n0 + n * 8 + 2 * t4 + (e & 1);
                const bool vis = e < 2 ? (col >= w.lo0 && col < w.hi0) : (col >= w.lo1 && col < w.hi1);
                if (!vis) sf[4 * n + e] = -INFINITY;
            }
    }
    /* P against the tile's own row max mb. The reference max mx (that O and l are relative to) moves
     * only when mb exceeds it by more than TAU (qattn_i8_max_step, rows.cuh), so O needs no alpha
     * rescale on most tiles; the mma.sync kernel's TAU is 0 (the running max). */
    bool grow = false;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        /* a chain: a tree of the same maxima (depth 5 instead of 16) measured 3-4% slower (H200,
         * 2026-12-01, dev/gpu/gpu_i8_ab.py, docs/notes/gpu_history.md round 5) */
        float mb = -INFINITY;
#pragma unroll
        for (int n = 0; n < BN / 8; n++) mb = qattn_fmax_nan(mb, qattn_fmax_nan(sf[4 * n + 2 * r], sf[4 * n + 2 * r + 1]));
        mb = qattn_quad_max<true>(mb);
        grow |= qattn_i8_max_step<TAU>(mx[r], mb, rf[r], alpha[r], beta[r]);
        const float msc = mb == -INFINITY ? 0.f : mb * rf[r];
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
            sf[4 * n + 2 * r] = qattn_ex2(fmaf(sf[4 * n + 2 * r], rf[r], -msc));
            sf[4 * n + 2 * r + 1] = qattn_ex2(fmaf(sf[4 * n + 2 * r + 1], rf[r], -msc));
        }
    }
    rescale = __any_sync(0xffffffffu, grow);
    /* P as u8 A fragments of 32 keys (the S accumulator layout; Vt keys permuted to match) */
#pragma unroll
    for (int kk = 0; kk < BN / 32; kk++) {
        const float *x = sf + 16 * kk;
        pa[kk][0] = qattn_pack4(qattn_p2u8bits(x[0]), qattn_p2u8bits(x[1]), qattn_p2u8bits(x[4]), qattn_p2u8bits(x[5]));
        pa[kk][1] = qattn_pack4(qattn_p2u8bits(x[2]), qattn_p2u8bits(x[3]), qattn_p2u8bits(x[6]), qattn_p2u8bits(x[7]));
        pa[kk][2] = qattn_pack4(qattn_p2u8bits(x[8]), qattn_p2u8bits(x[9]), qattn_p2u8bits(x[12]), qattn_p2u8bits(x[13]));
        pa[kk][3] = qattn_pack4(qattn_p2u8bits(x[10]), qattn_p2u8bits(x[11]), qattn_p2u8bits(x[14]), qattn_p2u8bits(x[15]));
    }
    /* row sums of the codes actually used (exact) */
    unsigned cs0 = 0u, cs1 = 0u;
#pragma unroll
    for (int kk = 0; kk < BN / 32; kk++) {
        cs0 = __dp4a(pa[kk][0], 0x01010101u, cs0), cs0 = __dp4a(pa[kk][2], 0x01010101u, cs0);
        cs1 = __dp4a(pa[kk][1], 0x01010101u, cs1), cs1 = __dp4a(pa[kk][3], 0x01010101u, cs1);
    }
    l[0] = fmaf(l[0], alpha[0], (float)cs0 * beta[0]);
    l[1] = fmaf(l[1], alpha[1], (float)cs1 * beta[1]);
}
#endif

#if defined(QATTN_WGMMA_OK)
/* A consumer takes the next item the producer announced (Q buffer j & 1), storing the rows of items
 * with no key on the way. False (cur unchanged) when the items have run out. */
__device__ __forceinline__ bool next_item(const qattn_cuda_args &a, const work_item *slot, const float *sq_s, uint32_t bar_qfull,
                                          uint32_t bar_qempty, int wg, int roff, int t4, int &j, item_rows &cur) {
    for (;;) {
        const int qb = j & 1;
        mbar_wait(bar_qfull + 8 * qb, (j >> 1) & 1);
        const work_item w = slot[qb];
        if (w.b < 0) return false;
        j++;
        if (w.t_last == w.t_first) {
            store_empty_rows<D>(a, w.b, w.h, w.m0 + roff, t4);
            mbar_arrive(bar_qempty + 8 * qb);
            continue;
        }
        cur.b = w.b, cur.h = w.h, cur.m0 = w.m0, cur.qb = qb, cur.t_first = w.t_first, cur.t_last = w.t_last;
        cur.bhk = (int64_t)w.b * a.hk + w.hkv;
        const int row0 = w.m0 + roff;
        qattn_i8_row_factors(a, sq_s + qb * BM + roff, row0, cur.rf);
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

/* Persistent grid (one block per SM, each running items until the counter runs out) with the pipeline
 * kept full across items: the producer loads the next item's Q (two Q buffers) and tiles while the
 * consumers finish the current one, and the consumers issue the last P V of an item together with the
 * first S of the next, storing the finished rows while that S runs. Against one block per item this
 * removes the per-block start and end (launch, barrier setup, the first loads, a first S and a last P V
 * that overlap nothing): measured +4-5% at L 4k and 16k, +8% at 1k (H200, docs/notes/gpu_history.md round 5). */
template <bool BS>
__global__ void __launch_bounds__(NTHREADS, 1)
    fwd_i8_wgmma_kernel(const __grid_constant__ qattn_cuda_args a, int hg, int n_items, const __grid_constant__ qattn_cuda_bmask bm) {
#if defined(QATTN_WGMMA_OK)
    extern __shared__ unsigned char smem_raw[];
    const uint32_t sbase = (qattn_smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned char *smem = smem_raw + (sbase - qattn_smem_u32(smem_raw));
    const uint32_t bar_full = sbase + OFF_BAR, bar_empty = bar_full + NST * 8, bar_qfull = bar_empty + NST * 8, bar_qempty = bar_qfull + 16;
    work_item *slot = (work_item *)(smem + OFF_ITEM); /* the item in each Q buffer */
    const uint32_t ring = sbase + OFF_RING;           /* BS: the key tile in each stage */
    const int64_t ntile_all = a.lk_pad / BN;

    if (threadIdx.x == 0) {
        for (int s = 0; s < NST; s++) {
            mbar_init(bar_full + 8 * s, 1);
            mbar_init(bar_empty + 8 * s, 256);
        }
        for (int i = 0; i < 2; i++) {
            mbar_init(bar_qfull + 8 * i, 1);
            mbar_init(bar_qempty + 8 * i, 256);
        }
        mbar_init_fence();
    }
    __syncthreads();

    if (threadIdx.x < 128) { /* producer warpgroup: one thread issues every copy (BS: its warp walks the mask) */
        setmaxnreg_dec<24>(); /* BS too: with 32 / 232 the consumers spilled (ptxas -v) */
        if (BS ? threadIdx.x < 32 : threadIdx.x == 0) {
            /* BS: only lane 0 waits on barriers and issues copies; the other lanes only meet it in the walk's
             * and the ticket's warp collectives, so no lane blocks on a barrier phase another lane must advance */
            const bool lead = !BS || threadIdx.x == 0;
            int item = blockIdx.x, it = 0;
            bm_walk bw;
            for (int j = 0;; j++) {
                const int qb = j & 1;
                if (lead) mbar_wait(bar_qempty + 8 * qb, ((j >> 1) & 1) ^ 1);
                work_item w;
                for (; item < n_items; item = gridDim.x + next_ticket<BS>(a.sched)) { /* sharp units: the FP16 kernel's (backend.cu) */
                    w = decode_item<BM, BN>(a, item, hg);
                    if (!a.skip_units || !a.skip_units[(int64_t)w.b * a.hk + w.hkv]) break;
                }
                if (item >= n_items) {
                    if (lead) {
                        slot[qb].b = -1;
                        mbar_arrive(bar_qfull + 8 * qb);
                    }
                    break;
                }
                const int64_t bhk = (int64_t)w.b * a.hk + w.hkv;
                const int n_live = post_item<BS, BN>(slot[qb], w, bw, ring + RING_ROW, bm, lead);
                if (lead && n_live > 0) {
                    /* Q and its rows' scales (lq_pad is a multiple of BM: both copies are whole and aligned) */
                    const int64_t row = ((int64_t)w.b * a.h + w.h) * a.lq_pad + w.m0;
                    mbar_expect_tx(bar_qfull + 8 * qb, BM * D + BM * 4);
                    bulk_g2s(sbase + OFF_Q + qb * BM * D, a.qi + row * D, BM * D, bar_qfull + 8 * qb);
                    bulk_g2s(sbase + OFF_SQ + qb * BM * 4, a.sq + row, BM * 4, bar_qfull + 8 * qb);
                } else if (lead) {
                    mbar_arrive(bar_qfull + 8 * qb);
                }
                for (int tt = w.t_first; tt < w.t_last; tt++, it++) {
                    if (BS) { /* skip the tiles of zero mask blocks */
                        tt = bm_walk_next<BN>(bw, ring + RING_ROW, bm, w.t_last);
                        if (tt == w.t_last) break;
                    }
                    if (!lead) continue;
                    const int s = it % NST;
                    mbar_wait(bar_empty + 8 * s, ((it / NST) & 1) ^ 1);
                    if (BS) ring_write(ring + 4 * s, tt); /* before the arrive below */
                    mbar_expect_tx(bar_full + 8 * s, 2 * TILE + BN * 4 + D * 4);
                    bulk_g2s(sbase + OFF_K + s * TILE, a.ki + (bhk * a.lk_pad + (int64_t)tt * BN) * D, TILE, bar_full + 8 * s);
                    bulk_g2s(sbase + OFF_V + s * TILE, a.vt + (bhk * ntile_all + tt) * TILE, TILE, bar_full + 8 * s);
                    bulk_g2s(sbase + OFF_SK + s * BN * 4, a.sk + bhk * a.lk_pad + (int64_t)tt * BN, BN * 4, bar_full + 8 * s);
                    bulk_g2s(sbase + OFF_SV + s * D * 4, a.sv + (bhk * ntile_all + tt) * D, D * 4, bar_full + 8 * s);
                }
                item = gridDim.x + next_ticket<BS>(a.sched);
            }
        }
        return;
    }
    setmaxnreg_inc<240>();

    const int wg = threadIdx.x / 128 - 1, tw = threadIdx.x % 128, warp = tw / 32, lane = tw % 32;
    const int g = lane / 4, t4 = lane % 4, roff = wg * 64 + warp * 16 + g; /* this thread's rows: m0 + roff, + 8 */

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    int pv[64];        /* P V of the previous tile, issued with the next S */
    uint32_t pa[4][4]; /* its A operand (P codes), kept intact until it completes */
    int si[64];
    float alpha_p[2] = {1.f, 1.f}, beta_p[2] = {0.f, 0.f};
    bool rescale_p = true;
    int j = 0;     /* items taken so far (Q buffer j & 1) */
    item_rows cur; /* the item of the tile in hand */
    if (!next_item(a, slot, (const float *)(smem + OFF_SQ), bar_qfull, bar_qempty, wg, roff, t4, j, cur)) return;
    if (wg == 1) named_arrive<256>(1); /* warpgroup 0 issues first */
    /* Prologue: S of the first tile. Then each step issues P V of the previous tile and S of the next
     * one, which may be the next item's first (one "GEMM phase"), updates O with that P V, stores the
     * previous item's rows when the step crossed into a new item, and makes P of the new tile. */
    int tt = cur.t_first, it = 0;
    mbar_wait(bar_full, 0);
    int kt = BS ? ring_read(ring) : tt; /* the key tile (BS: tt counts the item's live tiles) */
    turn_begin(wg);
    issue_s(si, desc_sw128(sbase + OFF_Q + cur.qb * BM * D + wg * 64 * D), sbase + OFF_K);
    turn_end(wg);
    wg_wait<0>();
    fence64(si);
    if (tt == cur.t_last - 1) mbar_arrive(bar_qempty + 8 * cur.qb); /* the item's last S has read its Q */
    softmax_step(si, (const float *)(smem + OFF_SK), kt * BN, cur, t4, mx, l, alpha_p, beta_p, rescale_p, pa);
    for (;;) {
        const int s_prev = it % NST;
        item_rows prev = cur;
        const bool crossed = ++tt == cur.t_last;
        if (crossed) {
            if (!next_item(a, slot, (const float *)(smem + OFF_SQ), bar_qfull, bar_qempty, wg, roff, t4, j, cur)) break;
            tt = cur.t_first;
        }
        it++;
        const int s = it % NST;
        mbar_wait(bar_full + 8 * s, (it / NST) & 1);
        if (BS) kt = ring_read(ring + 4 * s);
        else kt = tt;
        turn_begin(wg);
        issue_pv(pv, pa, sbase + OFF_V + s_prev * TILE);
        issue_s(si, desc_sw128(sbase + OFF_Q + cur.qb * BM * D + wg * 64 * D), sbase + OFF_K + s * TILE);
        turn_end(wg);
        const float *svt = (const float *)(smem + OFF_SV + s_prev * D * 4), *skt = (const float *)(smem + OFF_SK + s * BN * 4);
        if (!crossed) {
            /* The O update of the previous tile and the softmax of this one in one block, after both
             * products: the compiler fills the softmax's dependent chains (row max, exponentials) with
             * the update's independent FMAs. Against updating O while S still runs: +3-6% at L >= 4k,
             * -3% at 1k (H200, docs/notes/gpu_history.md round 6). The rescale branch is taken outside, so that each
             * path is one block. Q is released as soon as the item's last S has read it (see below). */
            wg_wait<0>();
            fence64(pv);
            fence_pa(pa);
            fence64(si);
            if (tt == cur.t_last - 1) mbar_arrive(bar_qempty + 8 * cur.qb);
            if (rescale_p) {
                o_update(o, pv, svt, t4, alpha_p, beta_p, true);
                softmax_step(si, skt, kt * BN, cur, t4, mx, l, alpha_p, beta_p, rescale_p, pa);
            } else {
                o_update(o, pv, svt, t4, alpha_p, beta_p, false);
                softmax_step(si, skt, kt * BN, cur, t4, mx, l, alpha_p, beta_p, rescale_p, pa);
            }
            mbar_arrive(bar_empty + 8 * s_prev);
            continue;
        }
        /* Crossing into a new item: that P V finished the previous item. O is updated while the new
         * item's first S runs, the finished rows are stored, then the softmax. */
        wg_wait<1>(); /* P V done; S may still run */
        fence64(pv);
        fence_pa(pa);
        o_update(o, pv, svt, t4, alpha_p, beta_p, rescale_p);
        mbar_arrive(bar_empty + 8 * s_prev);
        qattn_i8_store_rows<D>(a, prev.b, prev.h, prev.bhk, prev.m0 + roff, t4, o, mx, l, prev.rf, BS ? &bm : nullptr);
#pragma unroll
        for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
        mx[0] = mx[1] = -INFINITY;
        l[0] = l[1] = 0.f;
        wg_wait<0>();
        fence64(si);
        /* Q is released as soon as the item's last S has read it, not when its rows are stored: the next
         * item may have no key, and the one after it then needs this buffer before this step can end */
        if (tt == cur.t_last - 1) mbar_arrive(bar_qempty + 8 * cur.qb);
        softmax_step(si, skt, kt * BN, cur, t4, mx, l, alpha_p, beta_p, rescale_p, pa);
    }
    /* Epilogue: the last P V, the last item's rows. */
    {
        const int s_prev = it % NST;
        turn_begin(wg);
        issue_pv(pv, pa, sbase + OFF_V + s_prev * TILE);
        turn_end(wg);
        wg_wait<0>();
        fence64(pv);
        fence_pa(pa);
        o_update(o, pv, (const float *)(smem + OFF_SV + s_prev * D * 4), t4, alpha_p, beta_p, rescale_p);
        qattn_i8_store_rows<D>(a, cur.b, cur.h, cur.bhk, cur.m0 + roff, t4, o, mx, l, cur.rf, BS ? &bm : nullptr);
    }
    if (wg == 0) named_sync<256>(1); /* consume warpgroup 1's last turn hand-over */
#else
    __trap(); /* built without sm_90a: the host never launches this kernel there */
#endif
}

} // namespace

cudaError_t qattn_cuda_prepare_i8_wgmma(void) {
    cudaError_t e = cudaFuncSetAttribute(fwd_i8_wgmma_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
    return e != cudaSuccess ? e : cudaFuncSetAttribute(fwd_i8_wgmma_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
}

cudaError_t qattn_cuda_launch_i8_wgmma(const qattn_cuda_args &a, cudaStream_t stream, const qattn_cuda_bmask *bmp) {
    if (a.d != D || a.n_sm < 1) return cudaErrorInvalidValue;
    const int64_t n_mblk = (a.lq + BM - 1) / BM, n_bh = (int64_t)a.batch * a.h, n_items = n_mblk * n_bh;
    if (n_items > INT32_MAX / 2) return cudaErrorInvalidValue;
    const int grid = (int)(n_items < a.n_sm ? n_items : a.n_sm);
    const int hg = qattn_sm90_head_group(n_mblk, n_bh, grid);
    if (bmp && bmp->m) {
        if (bmp->bq % BM != 0 || bmp->bk % BN != 0) return cudaErrorInvalidValue; /* the backend refuses these first */
        fwd_i8_wgmma_kernel<true><<<grid, NTHREADS, SMEM, stream>>>(a, hg, (int)n_items, *bmp);
    } else {
        qattn_cuda_bmask none;
        memset(&none, 0, sizeof none);
        fwd_i8_wgmma_kernel<false><<<grid, NTHREADS, SMEM, stream>>>(a, hg, (int)n_items, none);
    }
    return cudaGetLastError();
}
