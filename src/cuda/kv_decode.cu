/* GPU split-KV decode (FlashDecoding style) over a device copy of the paged KV cache: the kernels
 * and their thin launch wrappers (kv_decode_kernels.cuh). The driver, kv_decode_driver.cu, checks
 * the arguments, plans the splits, holds the scratch and calls the wrappers (layout:
 * src/kv/kv_internal.h, scheme and measurements: docs/gpu_decode.md).
 *
 * Split kernels: one thread block per (row chunk, KV split, kv head, sequence). A row chunk is 8 or
 * 16 query rows of one kv head's group (GQA heads x new tokens), so each K/V token is read once per
 * chunk. Each warp streams its own tiles of 16 tokens through a cp.async ring in shared memory
 * (kvd_warp_ring: 4 stages for kvd_mma, 3 for kvd_mma16). S = q K^T and O^T = V^T P^T run on
 * mma.sync tensor cores: kvd_mma for the INT8 cache, kvd_mma16 for the FP16/BF16 caches (q and the
 * softmax weights split into 16-bit parts: FP32-level precision). Online softmax in FP32 with exp2.
 * Partials (max, sum, acc[D]) per split go to scratch; the last block of a unit to finish (an
 * arrival counter per unit) combines the unit's splits in split order (fixed order: results are
 * run-to-run deterministic) and writes o and lse, so a decode is one launch per 128 sequences.
 * INT8 queries are first turned into the codes' domain by kvd_prep_q. The residency of each split
 * kernel (for the split count) is measured once per context (qattn_kvd_prepare_slot, called by
 * the driver's qattn_cuda_prepare_kvd).
 * A first version without the shared-memory pipeline (loads held in registers, 250 registers per
 * thread for INT8) measured 752-807 us against 617 us for INT8 at B16 H32 HK8 D128 kv-len 32k on
 * the H100 and was removed (docs/notes/gpu_decode_history.md keeps its figures). */
#include <math.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "qattn.h"

#include "cuda_common.cuh"
#include "kv_decode_kernels.cuh"

namespace {

__device__ __forceinline__ float ld_any(const void *p, int dt, int64_t i) {
    if (dt == QATTN_DTYPE_F32) return ((const float *)p)[i];
    if (dt == QATTN_DTYPE_F16) return __half2float(((const __half *)p)[i]);
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

__device__ __forceinline__ void st_any(void *p, int dt, int64_t i, float x) {
    if (dt == QATTN_DTYPE_F32) ((float *)p)[i] = x;
    else if (dt == QATTN_DTYPE_F16) ((__half *)p)[i] = __float2half_rn(x);
    else ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(x);
}

/* Keys row (query i of Lq) sees: bottom-right aligned, as qattn_key_range. */
__device__ __forceinline__ void key_range(int i, int lq, int L, int causal, int wl, int &lo, int &hi) {
    int diag = i + L - lq;
    int a = wl < 0 ? 0 : diag - wl;
    int b = causal ? diag + 1 : L;
    if (a < 0) a = 0;
    if (b > L) b = L;
    if (b < a) b = a;
    lo = a;
    hi = b;
}

/* Row R of kv head g's rows (GQA heads fastest, then new tokens): its query i and head hh, and the keys
 * [lo, hi) it sees in a sequence of L keys. */
__device__ __forceinline__ void kvd_row(const qattn_kvd_args &a, int R, int g, int L, int &i, int &hh, int &lo, int &hi) {
    i = R / a.group, hh = g * a.group + R % a.group;
    key_range(i, a.lq, L, a.causal, a.wl, lo, hi);
}

/* The cache block of token t of a sequence whose page-table row is tab, and t's offset in it. */
__device__ __forceinline__ const uint8_t *kvd_token_block(const qattn_kvd_args &a, const int32_t *tab, int t, int &off) {
    const int lb = a.bs_shift >= 0 ? t >> a.bs_shift : t / a.bs;
    off = t - lb * a.bs;
    return a.arena + (int64_t)__ldg(tab + lb) * a.block_bytes;
}

/* A query row's int16 codes as the CPU decode's qattn_kv_quantize_q16: max |code| 32767, one scale per
 * row, NaN for a row with a non-finite value. The row lies on G consecutive lanes (a shuffle group), N
 * values each (qf); returns the scale, inv its inverse (0 for an all-zero row). */
template <int G, int N> __device__ __forceinline__ float kvd_q16_scale(const float *qf, float &inv) {
    float am = 0.0f;
#pragma unroll
    for (int c = 0; c < N; c++) {
        const float x = fabsf(qf[c]);
        am = !(x <= 3.4e38f) ? INFINITY : fmaxf(am, x);
    }
#pragma unroll
    for (int o = 1; o < G; o <<= 1) am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
    inv = 0.0f;
    if (am == INFINITY) return NAN;
    if (am > 0.0f) {
        inv = 32767.0f / am;
        return am / 32767.0f;
    }
    return 0.0f;
}

/* Four values' int16 codes rne(x inv) as a signed high-byte word h4 and an unsigned low-byte word l4
 * (code = hi * 256 + lo: the two int8 products of the exact integer dot product). */
__device__ __forceinline__ void kvd_q16_pack4(const float *x, float inv, uint32_t &h4, uint32_t &l4) {
    h4 = l4 = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float t = rintf(__fmul_rn(x[j], inv));
        t = fminf(fmaxf(t, -32767.0f), 32767.0f);
        const int v = (int)t;
        h4 |= (uint32_t)((v >> 8) & 0xFF) << (8 * j);
        l4 |= (uint32_t)(v & 0xFF) << (8 * j);
    }
}

/* A warp's ring of ST cp.async stages over its tiles w, w + NW, .. of ntile: issue(j, stage) starts tile
 * j's copies into a stage (one commit group per tile, empty groups past the end, so that the wait count
 * stays ST - 1), compute(n, stage) runs once tile w + n NW has arrived; the stage is refilled only
 * after it. Loop bounds are warp-uniform. */
template <int ST, int NW, class Issue, class Compute>
__device__ __forceinline__ void kvd_warp_ring(int w, int ntile, Issue &&issue, Compute &&compute) {
#pragma unroll
    for (int s = 0; s < ST - 1; s++) {
        if (w + s * NW < ntile) issue(w + s * NW, s);
        qattn_cp_async_commit();
    }
    for (int n = 0; w + n * NW < ntile; n++) {
        const int jn = w + (n + ST - 1) * NW;
        if (jn < ntile) issue(jn, (n + ST - 1) % ST);
        qattn_cp_async_commit();
        qattn_cp_async_wait<ST - 1>();
        __syncwarp();
        compute(n, n % ST);
        __syncwarp(); /* the stage is refilled at the next iteration */
    }
    qattn_cp_async_wait<0>();
    __syncwarp();
}

/* The end of both split kernels' block: the NW warps' states for the chunk's NROWS rows (each warp's area at
 * smem + k * WARP: the row maxima [NROWS], the row sums [NROWS], the accumulators [NROWS][D]; written
 * before a barrier) merged into the split's partial rows of a.part (max, sum, D values), rows past a.rows
 * skipped. */
template <int D, int NROWS, int NW, int WARP>
__device__ __forceinline__ void kvd_merge_warps(const qattn_kvd_args &a, int rc, int g, int bl, int split, const uint8_t *smem) {
    for (int x = threadIdx.x; x < NROWS * D; x += NW * 32) {
        const int r = x / D, c = x % D, R = rc * NROWS + r;
        if (R >= a.rows) continue;
        float m = -INFINITY;
#pragma unroll
        for (int k = 0; k < NW; k++) m = fmaxf(m, reinterpret_cast<const float *>(smem + k * WARP)[r]);
        float sl = 0.0f, sa = 0.0f;
        if (m != -INFINITY) {
#pragma unroll
            for (int k = 0; k < NW; k++) {
                const float *rk = reinterpret_cast<const float *>(smem + k * WARP);
                const float f = qattn_ex2(rk[r] - m);
                sl += rk[NROWS + r] * f;
                sa += rk[2 * NROWS + r * D + c] * f;
            }
        }
        float *dst = a.part + ((((int64_t)bl * a.hk + g) * a.nsplit + split) * a.rows_pad + R) * (D + 2);
        if (c == 0) {
            dst[0] = m;
            dst[1] = sl;
        }
        dst[2 + c] = sa;
    }
}

/* End of a split block, after its partial (rows rc * M .. of kv head g, sequence bl) is stored:
 * the block counts itself in its unit (row chunk, kv head, sequence) and the unit's last block
 * merges the unit's nsplit partials, in split order with the arithmetic of the former merge
 * kernel (bitwise the same results), then puts the counter back to 0 for the next launch.
 * Memory order (as a CUTLASS semaphore): the barrier puts the block's partial stores before
 * thread 0's fence + count (a release that covers them); the last block's thread 0 fences after
 * the count (acquire), then the barrier, then the block reads the partials, through L2. An empty
 * split (past the sequence's end) counts like any other, with m = -inf. nsplit 1: the one block
 * is the last and reads back its own partial. One warp per row, lanes over the channels. */
template <int D, int M, int NW> __device__ __forceinline__ void kvd_finish(const qattn_kvd_args &a, int rc, int g, int bl) {
    __syncthreads();
    int last = 0;
    if (threadIdx.x == 0) {
        __threadfence();
        unsigned *cnt = a.cnt + ((int64_t)bl * a.hk + g) * a.n_rc + rc;
        last = atomicAdd(cnt, 1u) == (unsigned)a.nsplit - 1u;
        if (last) {
            *cnt = 0u; /* no other block of this launch touches it again */
            __threadfence();
        }
    }
    if (!__syncthreads_or(last)) return;
    constexpr int CL = D / 32; /* channels per lane */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, b = a.b0 + bl;
    const int64_t sstride = (int64_t)a.rows_pad * (D + 2);
    for (int r = w; r < M; r += NW) { /* warp-uniform */
        const int R = rc * M + r;
        if (R >= a.rows) break;
        const float *p0 = a.part + (((int64_t)bl * a.hk + g) * a.nsplit * a.rows_pad + R) * (D + 2);
        float m = -INFINITY;
        for (int s = 0; s < a.nsplit; s++) m = fmaxf(m, __ldcg(p0 + s * sstride));
        float L = 0.0f;
        if (m != -INFINITY)
            for (int s = 0; s < a.nsplit; s++) L += __ldcg(p0 + s * sstride + 1) * exp2f(__ldcg(p0 + s * sstride) - m);
        const int i = R / a.group, hh = g * a.group + R % a.group;
        const int64_t ob = (((int64_t)b * a.lq + i) * a.h + hh) * D;
        const bool empty = m == -INFINITY;
        float o[CL];
#pragma unroll
        for (int k = 0; k < CL; k++) o[k] = 0.0f;
        if (!empty) {
            for (int s = 0; s < a.nsplit; s++) {
                const float *ps = p0 + s * sstride;
                const float f = exp2f(__ldcg(ps) - m);
#pragma unroll
                for (int k = 0; k < CL; k++) o[k] += __ldcg(ps + 2 + lane + 32 * k) * f;
            }
#pragma unroll
            for (int k = 0; k < CL; k++) o[k] /= L;
            if (a.muv)
#pragma unroll
                for (int k = 0; k < CL; k++) o[k] += a.muv[(int64_t)g * D + lane + 32 * k];
        }
#pragma unroll
        for (int k = 0; k < CL; k++) st_any(a.o, a.o_dtype, ob + lane + 32 * k, o[k]);
        const int64_t li = ((int64_t)b * a.h + hh) * a.lq + i;
        if (a.lse && lane == 0)
            a.lse[li] = empty ? -INFINITY : (m + log2f(L)) * 0.69314718055994531f + (a.lse_corr ? a.lse_corr[li] : 0.0f);
    }
}

/* INT8 cache: every query row into the codes' domain (src/kv/kv_internal.h), z = H(q qscale f) with
 * the block Hadamard transform of the CPU (qattn_rotate_row: blocks of NB channels, the same
 * butterfly stages in the same order) but without its 1/NB, so that the split kernels, reading z
 * as FP32 with qscale 1, make the int16 codes of the CPU's H(q f / NB) with NB times its scale,
 * which is the CPU's scale after its own "times NB" (NB a power of two: both exact). Also the
 * LSE shift of K's mean, scale q . mu_k (FP32, channel order, as the CPU). One block of D threads
 * per row; rows (b, i, hh) in q's order. */
template <int D, int NB> __global__ void __launch_bounds__(D) kvd_prep_q(const void *q, int q_dtype, float qscale, float scale,
                                                                          const float *tf, int hk, int h, int lq, float *z, float *corr) {
    __shared__ float y[D];
    const int64_t row = blockIdx.x;
    const int c = threadIdx.x, hh = (int)(row % h), g = hh / (h / hk);
    const float *f = tf + (int64_t)g * D, *muk = tf + ((int64_t)hk + g) * D;
    y[c] = __fmul_rn(__fmul_rn(ld_any(q, q_dtype, row * D + c), qscale), f[c]);
    __syncthreads();
#pragma unroll
    for (int len = 1; len < NB; len <<= 1) {
        const float mine = y[c], other = y[c ^ len];
        __syncthreads();
        y[c] = (c & len) ? __fsub_rn(other, mine) : __fadd_rn(mine, other);
        __syncthreads();
    }
    z[row * D + c] = y[c];
    if (c == 0) {
        float s = 0.0f;
        for (int k = 0; k < D; k++) s = __fadd_rn(s, __fmul_rn(ld_any(q, q_dtype, row * D + k), muk[k]));
        const int64_t b = row / ((int64_t)lq * h), i = row / h % lq;
        corr[(b * h + hh) * lq + i] = __fmul_rn(s, scale);
    }
}

/* ---- The split kernels, on tensor cores (mma.sync, sm_80+): kvd_mma (INT8 cache) and kvd_mma16
 * (FP16/BF16 cache). One block of NWM warps per (row chunk, KV split, kv head, sequence), each warp
 * streaming its own 16-token tiles through a private cp.async ring (kvd_warp_ring), split partials
 * merged in a fixed order (kvd_merge_warps, kvd_finish). A row chunk is NR = 8 * R8 query rows of one
 * kv head's group (GQA heads x new tokens; R8 2 when there are more than 8). In both:
 *   S = q K^T (rows x 16 tokens, rows on the M side): K B-fragments by ldmatrix from the [token][row
 *       bytes] tile (16-byte chunks XOR-swizzled by the cp.async writes, kvdm_off).
 *   O^T += V^T P^T (D x rows, 16 tokens per mma.m16n8k16 -> f32): the rows are the N = 8 side, so an
 *       8-row chunk fills the mma (no padding rows in the P.V work). P^T's B fragment is the S
 *       accumulator layout itself (tokens 2t, 2t+1 of row g); the weights are split into NP parts of
 *       the mma's 16-bit type (kvdm_split: f16 hi + lo ~22 bits, bf16 hi + mid + lo ~24 bits), one
 *       mma per part, so P.V keeps FP32-level precision. V^T A-fragments by ldmatrix.trans.
 *   Online softmax in FP32 (exp2), the running max per row; acc rescaled only when some row's max
 *       grows (warp vote), alpha brought to the accumulator rows by two shuffles.
 * kvd_mma: S by mma.m16n8k32 s8.s8 (q16 high byte, signed) and u8.s8 (low byte, unsigned) into
 *   int32, s = hi * 256 + lo exactly (|s| <= 32767 * 127 * 128 < 2^31), scaled as the CPU decode:
 *   ((float)s * qsc_row) * ksc_token; weights w = p * vsc_token as f16 hi + lo; V^T fragments:
 *   ldmatrix.trans of the int8 tile viewed as b16 gives a thread tokens (2t, 2t+1) x channels (2g,
 *   2g+1); one prmt into 0x64xx halves (code + 128 + 1024 after an xor 0x80) and one f16x2 subtract
 *   of 1152 give the exact codes for the channel-even and the channel-odd M rows.
 * kvd_mma16: S by mma.m16n8k16 in the cache's type, q scaled per row by a power of two (max |q| in
 *   [1, 2): exact, and inside f16's range) and split into NP parts like the weights, so the scores
 *   keep FP32-level precision; the cached K and V values are the mma operands as they are (no
 *   conversion instruction per value). */
/* Stages of the per-warp ring. kvd_mma, measured 2026-11-23 (H100, B16 H32 HK8 D128 kv 32k, same
 * call as the memcheck fix): 3 stages 559 us (66.5% of copy bandwidth), 4 stages 489 us (77.0%).
 * kvd_mma16's tiles are twice the bytes: 3 stages (96 KB a block, 2 blocks per SM), the bytes in
 * flight per SM of kvd_mma's 4 (docs/gpu_decode.md). The alternatives are source edits for a device
 * call (dev/cuda_tuning/variant.sh), not switches. */
constexpr int TM = 16, STM = 4, NWM = 4, STH = 3;

/* A split kernel's shared memory: per warp a ring of ST tile stages, each K rows [TM][ROW bytes], V rows, then
 * when SCALES (INT8) the K and V scales [2][TM]; a lane copies 16-byte chunks of TPP tokens per pass, NP passes
 * a tile. kvd_mma: int8 codes, D bytes a row; kvd_mma16: f16 / bf16 values, 2 D bytes a row. */
template <int ROW_, bool SCALES_, int ST> struct kvd_cfg {
    static constexpr int ROW = ROW_, CPR = ROW / 16; /* 16-byte chunks per row */
    static constexpr bool SCALES = SCALES_;
    static constexpr int STAGE = 2 * TM * ROW + (SCALES ? 2 * TM * 4 : 0), WARP = ST * STAGE, SMEM = NWM * WARP;
    static constexpr int TPP = 32 / CPR, NP = TM / TPP;
};
template <int D> using kvdm_cfg = kvd_cfg<D, true, STM>;
template <int D> using kvdh_cfg = kvd_cfg<2 * D, false, STH>;

/* Byte offset of 16-byte chunk c of token row r in a tile of CPR chunks a row: chunks XOR-swizzled so
 * that the 8 rows an ldmatrix matrix reads (same logical chunk) fall in 8 distinct bank groups. */
template <int CPR> __device__ __forceinline__ uint32_t kvdm_off(int r, int c) {
    return (uint32_t)((r * CPR + (CPR >= 8 ? (c ^ (r & 7)) : (c ^ ((r >> 1) & 3)))) * 16);
}
/* Two int8 codes (bytes sel of x ^ 0x80808080, i.e. code + 128) to an exact f16 pair. */
__device__ __forceinline__ uint32_t kvdm_v2h(uint32_t xx, uint32_t sel) {
    uint32_t r = __byte_perm(xx, 0x64646464u, sel), d; /* 1024 + code + 128 */
    asm("sub.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(r), "r"(0x64806480u)); /* - 1152 */
    return d;
}
/* A 4-byte cp.async (the tile's K and V scales), zero-filled when n is 0. */
__device__ __forceinline__ void kvd_cp4(uint32_t dst, const void *src, int n) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
/* Two floats as an f16 or bf16 pair, rounded to nearest (x0 -> low 16 bits: the smaller k index), and back. */
template <bool BF16> __device__ __forceinline__ uint32_t kvdm_pack2(float x0, float x1) {
    if (BF16) {
        __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    __half2 h = __floats2half2_rn(x0, x1);
    return *reinterpret_cast<uint32_t *>(&h);
}
template <bool BF16> __device__ __forceinline__ float2 kvdm_unpack2(uint32_t u) {
    if (BF16) return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u));
    return __half22float2(*reinterpret_cast<const __half2 *>(&u));
}
/* x0, x1 as NP pairs of the 16-bit type whose sum is x to ~11 NP bits (f16) or ~8 NP bits (bf16): each part
 * the rounding of what the previous ones left (x - rn(x) is exact in FP32). */
template <bool BF16, int NP> __device__ __forceinline__ void kvdm_split(float x0, float x1, uint32_t (&part)[NP]) {
#pragma unroll
    for (int k = 0; k < NP; k++) {
        part[k] = kvdm_pack2<BF16>(x0, x1);
        if (k + 1 < NP) {
            const float2 h = kvdm_unpack2<BF16>(part[k]);
            x0 -= h.x;
            x1 -= h.y;
        }
    }
}

/* A split block's unit: row chunk rc, KV split, kv head kh, sequence bl of the launch (its id, length L and
 * index b in the call), and the split's tokens [c0, c1) (empty, c1 == c0, for a split past the end: no tile
 * is read). */
struct kvd_unit {
    int rc, split, kh, bl, id, L, b, c0, c1;
};
__device__ __forceinline__ kvd_unit kvd_block_unit(const qattn_kvd_args &a) {
    kvd_unit u;
    u.rc = blockIdx.x % a.n_rc, u.split = blockIdx.x / a.n_rc, u.kh = blockIdx.y, u.bl = blockIdx.z;
    u.id = a.seq_id[u.bl], u.L = a.seq_len[u.bl], u.b = a.b0 + u.bl;
    u.c0 = u.split * a.split_tokens, u.c1 = max(u.c0, min(u.L, u.c0 + a.split_tokens));
    return u;
}

/* The warp's online-softmax state before its first tile: running max -inf, sum 0, accumulators 0. */
template <int D, int R8> __device__ __forceinline__ void mma_state_init(float (&mx)[R8], float (&l)[R8], float (&acc)[R8][D / 16][4]) {
#pragma unroll
    for (int ri = 0; ri < R8; ri++) {
        mx[ri] = -INFINITY;
        l[ri] = 0.0f;
#pragma unroll
        for (int cb = 0; cb < D / 16; cb++) acc[ri][cb][0] = acc[ri][cb][1] = acc[ri][cb][2] = acc[ri][cb][3] = 0.0f;
    }
}

/* Row R of a tensor-core kernel's chunk: false past a.rows; else its query i and head hh, its key range
 * clipped to the split [c0, c1) (lo, hi; empty past a.rows), and [kb, ke) widened to cover it. */
__device__ __forceinline__ bool mma_row_range(const qattn_kvd_args &a, int R, int kh, int L, int c0, int c1, int &i, int &hh, int &lo, int &hi, int &kb,
                                              int &ke) {
    i = hh = lo = hi = 0;
    if (R >= a.rows) return false;
    kvd_row(a, R, kh, L, i, hh, lo, hi);
    lo = max(lo, c0);
    hi = min(hi, c1);
    if (lo < hi) {
        kb = min(kb, lo);
        ke = max(ke, hi);
    }
    return true;
}

/* kvd_mma's rows ri * 8 + g8 of the chunk (rows rc * NR + ..): their key ranges (mma_row_range: vlo, vhi, valid,
 * kb, ke) and q as int16 codes in m16n8k32 A fragments (qah / qal: this thread's channels kc * 32 + {0, 16} +
 * 4 t4 + 0..3) with a scale per row (qsc). R8 1: the fragments' second-row halves are 0. */
template <int D, int R8>
__device__ __forceinline__ void mma_rows(const qattn_kvd_args &a, int rc, int kh, int b, int L, int c0, int c1, int g8, int t4, int (&vlo)[R8],
                                         int (&vhi)[R8], bool (&valid)[R8], float (&qsc)[R8], uint32_t (&qah)[D / 32][4], uint32_t (&qal)[D / 32][4],
                                         int &kb, int &ke) {
    constexpr int KC = D / 32, NR = 8 * R8;
#pragma unroll
    for (int ri = 0; ri < R8; ri++) {
        int i, hh, lo, hi;
        valid[ri] = mma_row_range(a, rc * NR + ri * 8 + g8, kh, L, c0, c1, i, hh, lo, hi, kb, ke);
        float qf[KC][2][4];
        if (valid[ri]) {
            const int64_t qb = (((int64_t)b * a.lq + i) * a.h + hh) * D + 4 * t4;
#pragma unroll
            for (int kc = 0; kc < KC; kc++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
#pragma unroll
                    for (int j = 0; j < 4; j++) qf[kc][hf][j] = ld_any(a.q, a.q_dtype, qb + kc * 32 + hf * 16 + j) * a.qscale;
        } else {
#pragma unroll
            for (int kc = 0; kc < KC; kc++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
#pragma unroll
                    for (int j = 0; j < 4; j++) qf[kc][hf][j] = 0.0f;
        }
        vlo[ri] = lo;
        vhi[ri] = hi;
        float inv;
        qsc[ri] = kvd_q16_scale<4, KC * 8>(&qf[0][0][0], inv); /* a row lies on a quad */
#pragma unroll
        for (int kc = 0; kc < KC; kc++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) kvd_q16_pack4(qf[kc][hf], inv, qah[kc][2 * hf + ri], qal[kc][2 * hf + ri]); /* a0 / a2: row g8; a1 / a3: row g8 + 8 */
    }
    if (R8 == 1)
#pragma unroll
        for (int kc = 0; kc < KC; kc++) qah[kc][1] = qah[kc][3] = qal[kc][1] = qal[kc][3] = 0u;
}

/* kvd_mma16's rows ri * 8 + g8 of the chunk: their key ranges (mma_row_range: vlo, vhi, valid, kb, ke) and q
 * times qscale as m16n8k16 A fragments of the cache's type: each row times 2^-e, e the exponent of its largest
 * |value| (so that it lies in [1, 2): exact, and inside f16's range; qsc = 2^e, NaN for a row with a
 * non-finite value, whose fragments are 0), split into NP parts (kvdm_split). qa[k][ks]: part k, this thread's
 * channels ks * 16 + 2 t4 + {0, 1} (a0 row g8, a1 row g8 + 8) and those + 8 (a2, a3). R8 1: the second-row
 * halves are 0. */
template <int D, bool BF16, int R8, int NP>
__device__ __forceinline__ void mma16_rows(const qattn_kvd_args &a, int rc, int kh, int b, int L, int c0, int c1, int g8, int t4, int (&vlo)[R8],
                                           int (&vhi)[R8], bool (&valid)[R8], float (&qsc)[R8], uint32_t (&qa)[NP][D / 16][4], int &kb, int &ke) {
    constexpr int KS = D / 16, NR = 8 * R8;
#pragma unroll
    for (int ri = 0; ri < R8; ri++) {
        int i, hh, lo, hi;
        valid[ri] = mma_row_range(a, rc * NR + ri * 8 + g8, kh, L, c0, c1, i, hh, lo, hi, kb, ke);
        vlo[ri] = lo;
        vhi[ri] = hi;
        float qf[KS][2][2]; /* [ks][hf][j]: channel ks * 16 + 8 hf + 2 t4 + j */
        const int64_t qb = (((int64_t)b * a.lq + i) * a.h + hh) * D + 2 * t4;
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
#pragma unroll
                for (int j = 0; j < 2; j++) qf[ks][hf][j] = valid[ri] ? ld_any(a.q, a.q_dtype, qb + ks * 16 + 8 * hf + j) * a.qscale : 0.0f;
        float am = 0.0f; /* the row's largest |value|, +inf when one is not finite; a row lies on a quad */
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const float x = fabsf(qf[ks][hf][j]);
                    am = !(x <= 3.4e38f) ? INFINITY : fmaxf(am, x);
                }
        am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, 1));
        am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, 2));
        float inv = 0.0f;
        qsc[ri] = am == INFINITY ? NAN : 0.0f;
        if (am > 0.0f && am < INFINITY) {
            const int e = max(-126, min(126, ilogbf(am)));
            qsc[ri] = __int_as_float((127 + e) << 23);
            inv = __int_as_float((127 - e) << 23);
        }
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                uint32_t part[NP];
                kvdm_split<BF16, NP>(inv > 0.0f ? qf[ks][hf][0] * inv : 0.0f, inv > 0.0f ? qf[ks][hf][1] * inv : 0.0f, part);
#pragma unroll
                for (int k = 0; k < NP; k++) qa[k][ks][2 * hf + ri] = part[k];
            }
    }
    if (R8 == 1)
#pragma unroll
        for (int k = 0; k < NP; k++)
#pragma unroll
            for (int ks = 0; ks < KS; ks++) qa[k][ks][1] = qa[k][ks][3] = 0u;
}

/* The warp's tokens: [kb, ke) widened to what any row of the chunk sees in the split; rows past a.rows then
 * see all of it (their q is 0, their output dropped); [wlo, whi), the tokens every row sees, whose tiles need
 * no mask. */
template <int R8>
__device__ __forceinline__ void mma_chunk_range(const bool (&valid)[R8], int (&vlo)[R8], int (&vhi)[R8], int &kb, int &ke, int &wlo, int &whi) {
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
        kb = min(kb, __shfl_xor_sync(0xffffffffu, kb, o));
        ke = max(ke, __shfl_xor_sync(0xffffffffu, ke, o));
    }
    wlo = kb, whi = ke;
#pragma unroll
    for (int ri = 0; ri < R8; ri++) {
        if (!valid[ri]) {
            vlo[ri] = kb;
            vhi[ri] = ke;
        }
        wlo = max(wlo, vlo[ri]);
        whi = min(whi, vhi[ri]);
    }
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
        wlo = max(wlo, __shfl_xor_sync(0xffffffffu, wlo, o));
        whi = min(whi, __shfl_xor_sync(0xffffffffu, whi, o));
    }
}

/* A warp's walk over its split's tiles, from ts (kb aligned down to 16 tokens: one cache block when bs % 16 ==
 * 0), ntile of them: its page-table row, its ring (generic and shared-window addresses), whether whole tiles
 * lie in one cache block (blk16), and the lane's copy slots: chunk cpc of tokens ctr + i TPP, at dsto[i]. */
template <class CF> struct kvd_walk {
    const int32_t *tab;
    uint8_t *wbase;
    uint32_t wsm;
    int ts, ntile, cpc, ctr;
    bool blk16;
    uint32_t dsto[CF::NP];
};
template <class CF>
__device__ __forceinline__ kvd_walk<CF> kvd_warp_walk(const qattn_kvd_args &a, int id, int w, int lane, int kb, int ke, uint8_t *smem) {
    kvd_walk<CF> k;
    k.tab = a.table + (int64_t)id * a.table_ld;
    k.wbase = smem + w * CF::WARP;
    k.wsm = qattn_smem_u32(k.wbase);
    k.ts = kb & ~(TM - 1);
    k.ntile = ke > kb ? (ke - k.ts + TM - 1) / TM : 0;
    k.blk16 = a.bs % TM == 0;
    k.cpc = lane % CF::CPR, k.ctr = lane / CF::CPR;
#pragma unroll
    for (int i = 0; i < CF::NP; i++) k.dsto[i] = kvdm_off<CF::CPR>(k.ctr + i * CF::TPP, k.cpc);
    return k;
}

/* Starts the copies of the walk's tile j of kv head kh (tokens [tb, tb + TM)) into ring stage st (CF: K rows, V
 * rows, then when SCALES the K and V scales): whole 16-token pieces of one block when blk16 (below), else per
 * token with tokens outside [kb, ke) zero-filled. */
template <class CF>
__device__ __forceinline__ void mma_issue(const qattn_kvd_args &a, const kvd_walk<CF> &wk, int kh, int j, int kb, int ke, int st, int lane) {
    constexpr int ROW = CF::ROW, TPP = CF::TPP, NP = CF::NP;
    constexpr bool SCALES = CF::SCALES;
    const int tb = wk.ts + j * TM, cpc = wk.cpc, ctr = wk.ctr;
    const int32_t *tab = wk.tab;
    const uint32_t(&dsto)[NP] = wk.dsto;
    const uint32_t sK = wk.wsm + st * CF::STAGE, sV = sK + TM * ROW, sS = sV + TM * ROW;
    /* warp-uniform: the whole tile lies in one block, every address is valid. FP16/BF16 tiles (no scales) only
     * when it lies inside [kb, ke) too: a token outside may hold anything, an Inf or NaN that a weight of 0
     * would not cancel in the P.V mma (INT8 codes are finite, and a masked token's scale is never used). */
    if (wk.blk16 && (SCALES || (tb >= kb && tb + TM <= ke))) {
        int off0;
        const uint8_t *blk = kvd_token_block(a, tab, tb, off0);
        const uint8_t *pk = blk + (int64_t)kh * a.head_bytes + (int64_t)(off0 + ctr) * ROW + cpc * 16;
#pragma unroll
        for (int i = 0; i < NP; i++) {
            qattn_cp_async16(sK + dsto[i], pk + i * TPP * ROW, 16);
            qattn_cp_async16(sV + dsto[i], pk + a.v_off + i * TPP * ROW, 16);
        }
        if (SCALES && lane < 8) qattn_cp_async16(sS + lane * 16, blk + (lane < 4 ? a.ks_off : a.vs_off) + ((int64_t)kh * a.bs + off0 + 4 * (lane & 3)) * 4, 16);
        return;
    }
#pragma unroll
    for (int i = 0; i < NP; i++) {
        const int t = tb + ctr + i * TPP;
        const uint8_t *srcK = a.arena, *srcV = a.arena;
        int n = 0;
        if (t >= kb && t < ke) {
            int off;
            const uint8_t *blk = kvd_token_block(a, tab, t, off); /* sets off: a statement of its own */
            srcK = blk + (int64_t)kh * a.head_bytes + (int64_t)off * ROW + cpc * 16;
            srcV = srcK + a.v_off;
            n = 16;
        }
        qattn_cp_async16(sK + dsto[i], srcK, n);
        qattn_cp_async16(sV + dsto[i], srcV, n);
    }
    if (!SCALES) return;
    const int t = tb + (lane & 15);
    const uint8_t *src = a.arena;
    int n = 0;
    if (t >= kb && t < ke) {
        int off;
        const uint8_t *blk = kvd_token_block(a, tab, t, off);
        src = blk + (lane < 16 ? a.ks_off : a.vs_off) + ((int64_t)kh * a.bs + off) * 4;
        n = 4;
    }
    kvd_cp4(sS + lane * 4, src, n);
}

/* Scores of tokens outside a row's [vlo, vhi) to -inf (C fragments: [nt] tokens tb + nt * 8 .., e: token
 * 2 t4 + e of row g8 of group ri). */
template <int R8>
__device__ __forceinline__ void mma_mask(int tb, int t4, const int (&vlo)[R8], const int (&vhi)[R8], float (&s)[R8][2][2]) {
#pragma unroll
    for (int ri = 0; ri < R8; ri++)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int t = tb + nt * 8 + 2 * t4 + e;
                if (!(t >= vlo[ri] && t < vhi[ri])) s[ri][nt][e] = -INFINITY;
            }
}

/* kvd_mma: S of the tile at sK for the R8 row groups (C fragments: [nt] tokens nt * 8 .. + 7; e: token 2 t4 + e of
 * row g8): the int16 codes' exact products (s8 high byte, u8 low byte) scaled as the CPU decode, ((float)s
 * qsc_row) ksc_token; tokens outside a row's [vlo, vhi) masked unless the tile is full. */
template <int D, int R8>
__device__ __forceinline__ void mma_scores(uint32_t sK, const uint32_t (&koff)[D / 32], const uint32_t (&qah)[D / 32][4], const uint32_t (&qal)[D / 32][4],
                                           const float (&qsc)[R8], const float (&ksc)[2][2], int tb, int t4, bool full, const int (&vlo)[R8],
                                           const int (&vhi)[R8], float (&s)[R8][2][2]) {
    int sh[2][4] = {}, sl[2][4] = {};
#pragma unroll
    for (int kc = 0; kc < D / 32; kc++) {
        uint32_t kr[4];
        qattn_ldsm_x4(kr, sK + koff[kc]);
        qattn_mma_s8s8(sh[0], qah[kc], kr[0], kr[1]);
        qattn_mma_s8s8(sh[1], qah[kc], kr[2], kr[3]);
        qattn_mma_u8s8(sl[0], qal[kc], kr[0], kr[1]);
        qattn_mma_u8s8(sl[1], qal[kc], kr[2], kr[3]);
    }
#pragma unroll
    for (int ri = 0; ri < R8; ri++)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) s[ri][nt][e] = ((float)(sh[nt][2 * ri + e] * 256 + sl[nt][2 * ri + e]) * qsc[ri]) * ksc[nt][e];
    if (!full) mma_mask<R8>(tb, t4, vlo, vhi, s);
}

/* kvd_mma16: S of the tile at sK for the R8 row groups (C fragments as mma_scores): the NP parts of q times
 * the cached K values (mma.m16n8k16, FP32 accumulators, two chains: even and odd channel blocks), times the
 * row's scale; tokens outside a row's [vlo, vhi) masked unless the tile is full. */
template <int D, bool BF16, int R8, int NP>
__device__ __forceinline__ void mma16_scores(uint32_t sK, const uint32_t (&koff)[D / 16], const uint32_t (&qa)[NP][D / 16][4], const float (&qsc)[R8],
                                             int tb, int t4, bool full, const int (&vlo)[R8], const int (&vhi)[R8], float (&s)[R8][2][2]) {
    float c[2][2][4] = {};
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        uint32_t kr[4];
        qattn_ldsm_x4(kr, sK + koff[ks]);
#pragma unroll
        for (int k = 0; k < NP; k++) {
            qattn_mma_f16<BF16>(c[ks & 1][0], qa[k][ks], kr[0], kr[1]);
            qattn_mma_f16<BF16>(c[ks & 1][1], qa[k][ks], kr[2], kr[3]);
        }
    }
#pragma unroll
    for (int ri = 0; ri < R8; ri++)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) s[ri][nt][e] = (c[0][nt][2 * ri + e] + c[1][nt][2 * ri + e]) * qsc[ri];
    if (!full) mma_mask<R8>(tb, t4, vlo, vhi, s);
}

/* The online softmax's max step over one tile: each row's running max mx (over its quad), and, when some
 * row's max grew (a warp vote), l and the accumulator rows rescaled (alpha brought to the accumulator's
 * rows by two shuffles). */
template <int D, int R8>
__device__ __forceinline__ void mma_softmax_max(const float (&s)[R8][2][2], int t4, float (&mx)[R8], float (&l)[R8], float (&acc)[R8][D / 16][4]) {
    float alpha[R8];
    bool grow = false;
#pragma unroll
    for (int ri = 0; ri < R8; ri++) {
        float tm = fmaxf(fmaxf(s[ri][0][0], s[ri][0][1]), fmaxf(s[ri][1][0], s[ri][1][1]));
        tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, 1));
        tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, 2));
        const float nm = fmaxf(mx[ri], tm);
        alpha[ri] = 1.0f;
        if (nm > mx[ri]) {
            alpha[ri] = qattn_ex2(mx[ri] - nm); /* 0 from -inf */
            grow = true;
        }
        mx[ri] = nm;
    }
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
        for (int ri = 0; ri < R8; ri++) {
            l[ri] *= alpha[ri];
            const float a0 = __shfl_sync(0xffffffffu, alpha[ri], 8 * t4), a1 = __shfl_sync(0xffffffffu, alpha[ri], 8 * t4 + 4);
#pragma unroll
            for (int cb = 0; cb < D / 16; cb++) {
                acc[ri][cb][0] *= a0;
                acc[ri][cb][1] *= a1;
                acc[ri][cb][2] *= a0;
                acc[ri][cb][3] *= a1;
            }
        }
    }
}

/* The tile's weights p = exp2(s - mx) into l and, times the token's V scale (1 for FP16/BF16 caches), into
 * P^T B fragments w[ri][nt] as NP parts of the 16-bit type (kvdm_split); masked scores weigh 0 (never times
 * a scale). */
template <int R8, bool BF16, int NP>
__device__ __forceinline__ void mma_weights(const float (&s)[R8][2][2], const float (&mx)[R8], const float (&vsc)[2][2], bool full, float (&l)[R8],
                                            uint32_t (&w)[R8][2][NP]) {
#pragma unroll
    for (int ri = 0; ri < R8; ri++) {
        const float mref = mx[ri] == -INFINITY ? 0.0f : mx[ri];
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            float wv[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float p = qattn_ex2(s[ri][nt][e] - mref);
                l[ri] += p;
                wv[e] = p * vsc[nt][e];
                if (!full && s[ri][nt][e] == -INFINITY) wv[e] = 0.0f;
            }
            kvdm_split<BF16, NP>(wv[0], wv[1], w[ri][nt]);
        }
    }
}

/* kvd_mma: O^T += V^T P^T over the tile at sV: M = 16 channels (cb * 16 + 2 g8, + 1 for m = g8 + 8), the
 * exact V codes as f16 from ldmatrix.trans, two f16 mma per row group (the weights' high and low parts). */
template <int D, int R8>
__device__ __forceinline__ void mma_accumulate_v(uint32_t sV, const uint32_t (&voff)[D / 32], const uint32_t (&w)[R8][2][2], float (&acc)[R8][D / 16][4]) {
#pragma unroll
    for (int p = 0; p < D / 32; p++) {
        uint32_t vr[4];
        qattn_ldsm_x4_t(vr, sV + voff[p]);
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const uint32_t x = vr[2 * u] ^ 0x80808080u, y = vr[2 * u + 1] ^ 0x80808080u;
            const uint32_t va[4] = {kvdm_v2h(x, 0x4240u), kvdm_v2h(x, 0x4341u), kvdm_v2h(y, 0x4240u), kvdm_v2h(y, 0x4341u)};
#pragma unroll
            for (int ri = 0; ri < R8; ri++) {
                qattn_mma_f16<false>(acc[ri][2 * p + u], va, w[ri][0][0], w[ri][1][0]);
                qattn_mma_f16<false>(acc[ri][2 * p + u], va, w[ri][0][1], w[ri][1][1]);
            }
        }
    }
}

/* kvd_mma16: O^T += V^T P^T over the tile at sV: M = 16 channels (cb * 16 + g8, + 8 for m = g8 + 8), the
 * cached values from ldmatrix.trans as they are (the same chunk offsets as K's, koff), one mma per part of
 * the weights. */
template <int D, bool BF16, int R8, int NP>
__device__ __forceinline__ void mma16_accumulate_v(uint32_t sV, const uint32_t (&voff)[D / 16], const uint32_t (&w)[R8][2][NP], float (&acc)[R8][D / 16][4]) {
#pragma unroll
    for (int cb = 0; cb < D / 16; cb++) {
        uint32_t va[4];
        qattn_ldsm_x4_t(va, sV + voff[cb]);
#pragma unroll
        for (int ri = 0; ri < R8; ri++)
#pragma unroll
            for (int k = 0; k < NP; k++) qattn_mma_f16<BF16>(acc[ri][cb], va, w[ri][0][k], w[ri][1][k]);
    }
}

/* Row sums over the quad, then the warp's state to red (maxima [NR], sums [NR], accumulators [NR][D]). The
 * accumulator's M row m = g8 (+ 8 for e >= 2) of channel block cb is channel cb * 16 + m for kvd_mma16 (V16)
 * and cb * 16 + 2 g8 (+ 1) for kvd_mma (its V^T fragments pair adjacent channels). */
template <int D, int R8, bool V16>
__device__ __forceinline__ void mma_warp_state(const float (&mx)[R8], float (&l)[R8], const float (&acc)[R8][D / 16][4], int g8, int t4, float *red) {
    constexpr int NR = 8 * R8;
#pragma unroll
    for (int ri = 0; ri < R8; ri++) {
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 1);
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 2);
        if (t4 == 0) {
            red[ri * 8 + g8] = mx[ri];
            red[NR + ri * 8 + g8] = l[ri];
        }
#pragma unroll
        for (int cb = 0; cb < D / 16; cb++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                red[2 * NR + (ri * 8 + 2 * t4 + (e & 1)) * D + cb * 16 + (V16 ? g8 + 8 * (e >> 1) : 2 * g8 + (e >> 1))] = acc[ri][cb][e];
    }
}

/* A split kernel's end: each warp's state to the start of its own ring (its copies are complete), then the
 * block's fixed-order merge of the warps and its output (or partial state). */
template <int D, int R8, bool V16, typename CF>
__device__ __forceinline__ void mma_block_end(const qattn_kvd_args &a, const kvd_unit &u, const float (&mx)[R8], float (&l)[R8],
                                              const float (&acc)[R8][D / 16][4], int g8, int t4, const kvd_walk<CF> &wk, const uint8_t *smem) {
    mma_warp_state<D, R8, V16>(mx, l, acc, g8, t4, reinterpret_cast<float *>(wk.wbase));
    __syncthreads();
    kvd_merge_warps<D, 8 * R8, NWM, CF::WARP>(a, u.rc, u.kh, u.bl, u.split, smem);
    kvd_finish<D, 8 * R8, NWM>(a, u.rc, u.kh, u.bl);
}

template <int D, int R8> __global__ void __launch_bounds__(NWM * 32, R8 == 1 && STM <= 3 ? 4 : 3) kvd_mma(const __grid_constant__ qattn_kvd_args a) {
    using CF = kvdm_cfg<D>;
    constexpr int ROW = CF::ROW, CPR = CF::CPR, KC = D / 32, NR = 8 * R8;
    static_assert(CPR == 4 || CPR == 8, "D 64 or 128");
    static_assert((2 * NR + NR * D) * 4 <= CF::WARP, "reduction area");
    extern __shared__ __align__(16) uint8_t kvd_smem[];

    const kvd_unit u = kvd_block_unit(a);
    const int rc = u.rc, kh = u.kh, id = u.id, L = u.L, b = u.b, c0 = u.c0, c1 = u.c1;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g8 = lane >> 2, t4 = lane & 3;

    int vlo[R8], vhi[R8];
    bool valid[R8];
    float qsc[R8];
    uint32_t qah[KC][4], qal[KC][4];
    int kb = c1, ke = c0, wlo, whi;
    mma_rows<D, R8>(a, rc, kh, b, L, c0, c1, g8, t4, vlo, vhi, valid, qsc, qah, qal, kb, ke);
    mma_chunk_range<R8>(valid, vlo, vhi, kb, ke, wlo, whi);

    float mx[R8], l[R8], acc[R8][D / 16][4];
    mma_state_init<D, R8>(mx, l, acc);
    const kvd_walk<CF> wk = kvd_warp_walk<CF>(a, id, w, lane, kb, ke, kvd_smem);
    /* ldmatrix row addresses: K (x4 per 32 channels: tokens 0-7 / 8-15 x first / second 16
     * channels), V (x4 per 32 channels: tokens 0-7 / 8-15 x channel blocks 2p, 2p + 1) */
    uint32_t koff[KC], voff[KC];
#pragma unroll
    for (int kc = 0; kc < KC; kc++) {
        koff[kc] = kvdm_off<CPR>(((lane >> 4) << 3) + (lane & 7), 2 * kc + ((lane >> 3) & 1));
        voff[kc] = kvdm_off<CPR>(lane & 15, 2 * kc + (lane >> 4));
    }
    kvd_warp_ring<STM, NWM>(
        w, wk.ntile, [&](int j, int stage) { mma_issue<CF>(a, wk, kh, j, kb, ke, stage, lane); },
        [&](int n, int stage) {
            const uint32_t sK = wk.wsm + stage * CF::STAGE, sV = sK + TM * ROW;
            const float *scl = reinterpret_cast<const float *>(wk.wbase + stage * CF::STAGE + 2 * TM * ROW);
            const int tb = wk.ts + (w + n * NWM) * TM;
            const float2 ks0 = *reinterpret_cast<const float2 *>(scl + 2 * t4), ks1 = *reinterpret_cast<const float2 *>(scl + 8 + 2 * t4);
            const float2 vs0 = *reinterpret_cast<const float2 *>(scl + TM + 2 * t4), vs1 = *reinterpret_cast<const float2 *>(scl + TM + 8 + 2 * t4);
            const float ksc[2][2] = {{ks0.x, ks0.y}, {ks1.x, ks1.y}}, vsc[2][2] = {{vs0.x, vs0.y}, {vs1.x, vs1.y}};
            const bool full = tb >= wlo && tb + TM <= whi; /* warp-uniform */
            float s[R8][2][2];
            uint32_t wt[R8][2][2];
            mma_scores<D, R8>(sK, koff, qah, qal, qsc, ksc, tb, t4, full, vlo, vhi, s);
            mma_softmax_max<D, R8>(s, t4, mx, l, acc);
            mma_weights<R8, false, 2>(s, mx, vsc, full, l, wt);
            mma_accumulate_v<D, R8>(sV, voff, wt, acc);
        });
    mma_block_end<D, R8, false, CF>(a, u, mx, l, acc, g8, t4, wk, kvd_smem);
}

template <int D, int DT, int R8> __global__ void __launch_bounds__(NWM * 32, 2) kvd_mma16(const __grid_constant__ qattn_kvd_args a) {
    using CF = kvdh_cfg<D>;
    constexpr bool BF16 = DT == 1;
    constexpr int ROW = CF::ROW, CPR = CF::CPR, KS = D / 16, NR = 8 * R8, NP = BF16 ? 3 : 2;
    static_assert(CPR == 8 || CPR == 16, "D 64 or 128");
    static_assert((2 * NR + NR * D) * 4 <= CF::WARP, "reduction area");
    extern __shared__ __align__(16) uint8_t kvd_smem[];

    const kvd_unit u = kvd_block_unit(a);
    const int rc = u.rc, kh = u.kh, id = u.id, L = u.L, b = u.b, c0 = u.c0, c1 = u.c1;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g8 = lane >> 2, t4 = lane & 3;

    int vlo[R8], vhi[R8];
    bool valid[R8];
    float qsc[R8];
    uint32_t qa[NP][KS][4];
    int kb = c1, ke = c0, wlo, whi;
    mma16_rows<D, BF16, R8, NP>(a, rc, kh, b, L, c0, c1, g8, t4, vlo, vhi, valid, qsc, qa, kb, ke);
    mma_chunk_range<R8>(valid, vlo, vhi, kb, ke, wlo, whi);

    float mx[R8], l[R8], acc[R8][D / 16][4];
    mma_state_init<D, R8>(mx, l, acc);
    const kvd_walk<CF> wk = kvd_warp_walk<CF>(a, id, w, lane, kb, ke, kvd_smem);
    /* ldmatrix row addresses, x4 per 16 channels: tokens 0-7 / 8-15 x channels 0-7 / 8-15 of the block; the
     * same offsets give K's B fragments (ldmatrix) and V^T's A fragments (ldmatrix.trans) */
    uint32_t off[KS];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) off[ks] = kvdm_off<CPR>(((lane >> 4) << 3) + (lane & 7), 2 * ks + ((lane >> 3) & 1));
    const float one[2][2] = {{1.0f, 1.0f}, {1.0f, 1.0f}};
    kvd_warp_ring<STH, NWM>(
        w, wk.ntile, [&](int j, int stage) { mma_issue<CF>(a, wk, kh, j, kb, ke, stage, lane); },
        [&](int n, int stage) {
            const uint32_t sK = wk.wsm + stage * CF::STAGE, sV = sK + TM * ROW;
            const int tb = wk.ts + (w + n * NWM) * TM;
            const bool full = tb >= wlo && tb + TM <= whi; /* warp-uniform */
            float s[R8][2][2];
            uint32_t wt[R8][2][NP];
            mma16_scores<D, BF16, R8, NP>(sK, off, qa, qsc, tb, t4, full, vlo, vhi, s);
            mma_softmax_max<D, R8>(s, t4, mx, l, acc);
            mma_weights<R8, BF16, NP>(s, mx, one, full, l, wt);
            mma16_accumulate_v<D, BF16, R8, NP>(sV, off, wt, acc);
        });
    mma_block_end<D, R8, true, CF>(a, u, mx, l, acc, g8, t4, wk, kvd_smem);
}

/* Launchers: the shared-memory limits were raised once per context (qattn_kvd_prepare_slot). */
template <int D, int R8> cudaError_t launchm(const qattn_kvd_args &a, dim3 grid, cudaStream_t st) {
    kvd_mma<D, R8><<<grid, NWM * 32, kvdm_cfg<D>::SMEM, st>>>(a);
    return cudaGetLastError();
}
template <int D, int DT, int R8> cudaError_t launchh(const qattn_kvd_args &a, dim3 grid, cudaStream_t st) {
    kvd_mma16<D, DT, R8><<<grid, NWM * 32, kvdh_cfg<D>::SMEM, st>>>(a);
    return cudaGetLastError();
}

/* Raise an instance's shared-memory limit, then its blocks resident per SM (for the split count). */
template <int D, int R8> cudaError_t prep_mma(int *n) {
    cudaError_t e = cudaFuncSetAttribute(kvd_mma<D, R8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kvdm_cfg<D>::SMEM);
    return e != cudaSuccess ? e : cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, kvd_mma<D, R8>, NWM * 32, kvdm_cfg<D>::SMEM);
}
template <int D, int DT, int R8> cudaError_t prep_mma16(int *n) {
    cudaError_t e = cudaFuncSetAttribute(kvd_mma16<D, DT, R8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kvdh_cfg<D>::SMEM);
    return e != cudaSuccess ? e : cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, kvd_mma16<D, DT, R8>, NWM * 32, kvdh_cfg<D>::SMEM);
}
/* One entry per residency slot, in the order of qattn_kvd_slot_mma / qattn_kvd_slot_mma16
 * (kv_decode_kernels.cuh). DT: 0 FP16, 1 BF16. */
using kvd_prep_fn = cudaError_t (*)(int *);
const kvd_prep_fn kvd_preps[] = {
    prep_mma<64, 1>,          prep_mma<64, 2>,          prep_mma<128, 1>,         prep_mma<128, 2>,         /* INT8 */
    prep_mma16<64, 0, 1>,     prep_mma16<64, 0, 2>,     prep_mma16<64, 1, 1>,     prep_mma16<64, 1, 2>,     /* D 64 FP16, BF16 */
    prep_mma16<128, 0, 1>,    prep_mma16<128, 0, 2>,    prep_mma16<128, 1, 1>,    prep_mma16<128, 1, 2>,    /* D 128 FP16, BF16 */
};
static_assert(sizeof kvd_preps / sizeof kvd_preps[0] == QATTN_KVD_SLOTS, "one residency slot per split-kernel instance");
static_assert(qattn_kvd_slot_mma(128, 2) == 3 && qattn_kvd_slot_mma16(64, 0, 1) == 4 && qattn_kvd_slot_mma16(64, 1, 2) == 7 &&
                  qattn_kvd_slot_mma16(128, 0, 1) == 8 && qattn_kvd_slot_mma16(128, 1, 2) == QATTN_KVD_SLOTS - 1,
              "the slot functions follow kvd_preps");

} // namespace

cudaError_t qattn_kvd_prepare_slot(int slot, int *resident) { return kvd_preps[slot](resident); }

cudaError_t qattn_kvd_launch_prep_q(int D, unsigned rows, const void *q, int q_dtype, float qscale, float scale, const float *tf, int hk,
                                    int h, int lq, float *z, float *corr, cudaStream_t st) {
    if (D == 64) kvd_prep_q<64, 64><<<rows, 64, 0, st>>>(q, q_dtype, qscale, scale, tf, hk, h, lq, z, corr);
    else kvd_prep_q<128, 128><<<rows, 128, 0, st>>>(q, q_dtype, qscale, scale, tf, hk, h, lq, z, corr);
    return cudaGetLastError();
}

cudaError_t qattn_kvd_launch_mma16(const qattn_kvd_args &a, int D, int DT, int R8, dim3 grid, cudaStream_t st) {
    if (D == 64) {
        if (DT == 1) return R8 == 1 ? launchh<64, 1, 1>(a, grid, st) : launchh<64, 1, 2>(a, grid, st);
        return R8 == 1 ? launchh<64, 0, 1>(a, grid, st) : launchh<64, 0, 2>(a, grid, st);
    }
    if (DT == 1) return R8 == 1 ? launchh<128, 1, 1>(a, grid, st) : launchh<128, 1, 2>(a, grid, st);
    return R8 == 1 ? launchh<128, 0, 1>(a, grid, st) : launchh<128, 0, 2>(a, grid, st);
}

cudaError_t qattn_kvd_launch_mma(const qattn_kvd_args &a, int D, int R8, dim3 grid, cudaStream_t st) {
    if (D == 64) return R8 == 1 ? launchm<64, 1>(a, grid, st) : launchm<64, 2>(a, grid, st);
    return R8 == 1 ? launchm<128, 1>(a, grid, st) : launchm<128, 2>(a, grid, st);
}
