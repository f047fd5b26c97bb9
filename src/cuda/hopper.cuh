/* PTX wrappers of the sm_90a kernels (fwd_wgmma_i8.cu, fwd_wgmma_f16.cu), written once: mbarriers,
 * bulk and tensor (TMA) copies, shared-memory matrix descriptors, wgmma fences and groups, named
 * barriers, setmaxnreg. Everything is defined only in the sm_90a device pass (QATTN_SM90A_DEVICE);
 * the other passes see an empty namespace and the kernels compile to a trap there. */
#ifndef QATTN_CUDA_HOPPER_CUH
#define QATTN_CUDA_HOPPER_CUH

#include "cuda_common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define QATTN_SM90A_DEVICE 1
#endif

namespace qattn_sm90 {
/* Block-sparse kernels' shared ring (see bm_row): NST <= 4 key tile indices, then the mask row pointer. */
constexpr int RING_ROW = 16, RING_BYTES = 24;
#if defined(QATTN_SM90A_DEVICE)

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
/* after the inits, before the barrier that publishes them to the other threads and the copy engine */
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
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
/* One box of a 4-D tensor map (a __grid_constant__ kernel parameter) at coordinates c0..c3 (innermost
 * first) into shared memory, completing on bar; elements outside the tensor arrive as zeros and count
 * in the transaction bytes like the others. */
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void *tmap, int c0, int c1, int c2, int c3, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
                 "l"(tmap), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const void *tmap) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(tmap) : "memory");
}

/* Shared-memory matrix descriptor of a K-major tile of 128-byte rows with the 128-byte swizzle:
 * 8-row groups 1024 bytes apart (stride byte offset), leading byte offset unused (1). The k step of
 * 32 bytes inside the swizzled row is an address offset (+2 in 16-byte units). */
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}
/* The same for an MN-major operand (the B of a transposed wgmma): 128-byte rows of 64 16-bit MN
 * elements, one row per k; groups of 8 k rows 1024 bytes apart (stride byte offset) and the next 64 MN
 * elements mn_bytes further (leading byte offset; PTX ISA, "canonical layouts": MN-major 128-byte
 * swizzle ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))). A k step of 16 is +2048 bytes. */
__device__ __forceinline__ uint64_t desc_sw128_mn(uint32_t saddr, uint32_t mn_bytes) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)((mn_bytes & 0x3FFFF) >> 4) << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

/* Named barriers (0 is __syncthreads) over N threads. */
template <int N> __device__ __forceinline__ void named_sync(int id) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(N) : "memory"); }
template <int N> __device__ __forceinline__ void named_arrive(int id) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(N) : "memory"); }

/* Register budget of a warpgroup role; takes effect with __launch_bounds__(threads, 1). */
template <int R> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R)); }
template <int R> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R)); }

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
/* Pin a register's value at this point of the program (accumulators and register operands of
 * in-flight wgmma: read after the wait, so the compiler neither reads them early nor reuses them). */
__device__ __forceinline__ void reg_fence(int &r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(float &r) { asm volatile("" : "+f"(r)::"memory"); }

/* ---------------------------------------------------------------- persistent grids' work items */
/* The work items of a launch: (query block, batch, head) triples of BM rows, taken by the blocks of a
 * persistent grid in the order below. Heads go in groups of hg (batch, head) pairs; inside a group the
 * heavy (late) causal query blocks come first, over all heads of the group, so the longest items start
 * first (near-perfect balance for causal) while the blocks in flight at any time share the K/V of a
 * few heads in L2. The producer decodes each item once and passes it to the consumers with its Q (the
 * divisions cost a consumer ~700 cycles at every item crossing: traced, docs/notes/gpu_history.md round 6). */
struct work_item {
    int b, h, hkv, m0, t_first, t_last; /* b < 0: no more items; key tiles of BN: [t_first, t_last) */
};
template <int BM, int BN> __device__ __forceinline__ work_item decode_item(const qattn_cuda_args &a, int item, int hg) {
    const int n_mblk = (a.lq + BM - 1) / BM, n_bh = a.batch * a.h, grp = item / (hg * n_mblk), r = item - grp * (hg * n_mblk);
    const int in_grp = min(hg, n_bh - grp * hg), bh = grp * hg + r % in_grp;
    work_item w;
    w.b = bh / a.h, w.h = bh - w.b * a.h, w.hkv = w.h / (a.h / a.hk);
    w.m0 = (n_mblk - 1 - r / in_grp) * BM;
    int lo_first, hi_first, lo_last, hi_last;
    qattn_fwd_key_range(w.m0, a.lq, a.lk, a.wl, a.wr, lo_first, hi_first);
    qattn_fwd_key_range(min(w.m0 + BM, a.lq) - 1, a.lq, a.lk, a.wl, a.wr, lo_last, hi_last);
    w.t_first = lo_first / BN;
    w.t_last = hi_last > lo_first ? (hi_last + BN - 1) / BN : w.t_first;
    return w;
}

/* Block-sparse items (qattn_cuda_bmask; the kernels' BS instantiations). The item's BM rows lie in one
 * query block of the mask (bq % BM == 0) and each key tile of BN in one key block (bk % BN == 0), so a tile
 * is either skipped whole or computed with the dense masks only. The producer warp counts the item's live
 * tiles (the consumers see the count as [0, n)) and writes each live tile's index into a ring of NST ints
 * next to its stage, before the arrive that completes the stage's barrier, so a consumer reads it after
 * its wait. The walk runs in all 32 lanes of the producer's first warp, one tile's mask byte per lane:
 * a word of 32 tiles costs one load's latency (a lane 0 that read the bytes one after another waited
 * ~250 dependent loads per item); lane 0 alone issues the copies and arrives. */
__device__ __forceinline__ const uint8_t *bm_row(const qattn_cuda_bmask &bm, const work_item &w) {
    return bm.m + (int64_t)w.b * bm.bs + (int64_t)w.h * bm.hs + (int64_t)(w.m0 / bm.bq) * bm.rs;
}
/* Live tiles of [c, c + 32) cut at t_last: bit i for tile c + i (the same word in every lane). */
template <int BN> __device__ __forceinline__ uint32_t bm_word(const uint8_t *row, const qattn_cuda_bmask &bm, int c, int t_last) {
    const int tt = c + (int)(threadIdx.x & 31);
    return __ballot_sync(0xffffffffu, tt < t_last && row[tt * BN / bm.bk] != 0);
}
/* The walk over one item's tiles: the word of tiles [c, c + 32) still to take. The row pointer waits in
 * shared memory at ra (ring + RING_ROW): held in registers through the producer's loop it spilled. */
struct bm_walk {
    int c;
    uint32_t word;
};
/* At an item's start, in the whole warp: its live tiles of [t_first, t_last) counted (each lane its tiles
 * t_first + lane + 32 i, loads independent), and the walk set on its first word. */
template <int BN>
__device__ __forceinline__ int bm_walk_start(bm_walk &bw, uint32_t ra, const uint8_t *row, const qattn_cuda_bmask &bm, int t_first, int t_last) {
    int n = 0;
#pragma unroll 1
    for (int tt = t_first + (int)(threadIdx.x & 31); tt < t_last; tt += 32) n += row[tt * BN / bm.bk] != 0;
    if ((threadIdx.x & 31) == 0) asm volatile("st.shared.b64 [%0], %1;\n" ::"r"(ra), "l"((uint64_t)row) : "memory");
    __syncwarp();
    bw.c = t_first, bw.word = bm_word<BN>(row, bm, t_first, t_last);
    return __reduce_add_sync(0xffffffffu, n);
}
/* The next live tile, t_last when none is left (the whole warp; the word is warp-uniform). */
template <int BN> __device__ __forceinline__ int bm_walk_next(bm_walk &bw, uint32_t ra, const qattn_cuda_bmask &bm, int t_last) {
    while (bw.word == 0u) {
        bw.c += 32;
        if (bw.c >= t_last) return t_last;
        uint64_t row;
        asm volatile("ld.shared.b64 %0, [%1];\n" : "=l"(row) : "r"(ra) : "memory");
        bw.word = bm_word<BN>((const uint8_t *)row, bm, bw.c, t_last);
    }
    const int tt = bw.c + __ffs(bw.word) - 1;
    bw.word &= bw.word - 1u;
    return tt;
}
/* The producer posts an item to its Q buffer's slot: dense, as decoded; BS, with its live tiles counted by
 * the whole warp and renumbered [0, n) for the consumers (the walk set on its first tile), the slot written
 * by the lead lane. Returns the number of key tiles the item computes. */
template <bool BS, int BN>
__device__ __forceinline__ int post_item(work_item &slot, const work_item &w, bm_walk &bw, uint32_t ra, const qattn_cuda_bmask &bm, bool lead) {
    if (!BS) {
        slot = w;
        return w.t_last - w.t_first;
    }
    work_item wc = w;
    wc.t_first = 0, wc.t_last = bm_walk_start<BN>(bw, ra, bm_row(bm, w), bm, w.t_first, w.t_last);
    if (lead) slot = wc;
    return wc.t_last;
}
/* The producer's next ticket from the atomic counter: WARP, claimed by lane 0 for its whole warp. */
template <bool WARP> __device__ __forceinline__ int next_ticket(int *sched) {
    if (!WARP) return atomicAdd(sched, 1);
    int t = 0;
    if ((threadIdx.x & 31) == 0) t = atomicAdd(sched, 1);
    return __shfl_sync(0xffffffffu, t, 0);
}
__device__ __forceinline__ int ring_read(uint32_t addr) {
    int v;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ void ring_write(uint32_t addr, int v) { asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory"); }

/* Rows of an item that see no key: zeros, LSE -inf (the rule of qattn.h). Zero has the same bits in
 * every output dtype; rows are 16-byte aligned (the backend's rule), so the quad writes 16-byte chunks.
 * row0 and row0 + 8: this thread's rows (an m16 accumulator tile). */
template <int D> __device__ __forceinline__ void store_empty_rows(const qattn_cuda_args &a, int b, int h, int row0, int t4) {
    const int64_t es = a.o_dtype == 0 ? 4 : 2, ooff = (int64_t)b * a.o_bs + (int64_t)h * a.o_hs;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + 8 * r;
        if (row >= a.lq) continue;
        unsigned char *rowp = (unsigned char *)a.o + (ooff + (int64_t)row * a.o_ss) * es;
        for (int c = t4; c < D * es / 16; c += 4) *(uint4 *)(rowp + 16 * c) = make_uint4(0u, 0u, 0u, 0u);
        if (a.lse && t4 == 0) a.lse[((int64_t)b * a.h + h) * a.lq + row] = -INFINITY;
    }
}
#endif
} // namespace qattn_sm90

/* Head groups of a persistent launch (see decode_item): at least two grids' worth of items. */
inline int qattn_sm90_head_group(int64_t n_mblk, int64_t n_bh, int grid) {
    int64_t hg = (2 * (int64_t)grid + n_mblk - 1) / n_mblk;
    return (int)(hg > n_bh ? n_bh : hg);
}

/* The 32 / 64 / 128 accumulator operands of an m64n64 / m64n128 / m64n256 wgmma ({%0..%31}, ...); QATTN_WG_R8 / QATTN_WG_F8: 8 of them
 * as integer / float in-out operands of array d. */
#define QATTN_WG_R8(i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), "+r"(d[i + 6]), "+r"(d[i + 7])
#define QATTN_WG_F8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define QATTN_WG_D128                                                                                                                              \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                     \
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"            \
    "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"            \
    "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,"  \
    "%124,%125,%126,%127}"
#define QATTN_WG_D32 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define QATTN_WG_D64                                                                                                                               \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                     \
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"

#endif /* QATTN_CUDA_HOPPER_CUH */
