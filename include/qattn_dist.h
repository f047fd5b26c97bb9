/* qattn_dist: attention over a sequence sharded across processes (MPI, CPU) or GPUs (NCCL).
 *
 * Library: libqattn_dist.a, on top of libqattn.a (link both, plus MPI and/or NCCL). It is
 * built with the MPI transport when CMake finds MPI, with the NCCL transport when it finds CUDA
 * and NCCL; a missing transport's create function returns QATTN_ERR_UNSUPPORTED with a message.
 * docs/dist.md gives the design, the formulas and measured figures.
 *
 * Three operations, each a COLLECTIVE call (every rank of the communicator calls it, with the
 * same shapes; a rank's argument or compute error is reported on every rank, never a hang):
 *
 *  (a) qattn_dist_forward: exact attention of the full query set against keys sharded in
 *      contiguous ranges. Rank r holds keys [key_offset_r, key_offset_r + seqlen_k) of a
 *      global sequence of seqlen_k_total keys; masks use the GLOBAL positions (bottom-right
 *      aligned to seqlen_k_total, as in qattn.h). Each rank computes its partial (O_r, LSE_r)
 *      with qattn_forward, then the partials are merged exactly:
 *          M = max_r LSE_r,  w_r = exp(LSE_r - M),  O = sum_r w_r O_r / sum_r w_r,
 *          LSE = M + log(sum_r w_r)
 *      summed in rank order 0..N-1, so the result is bitwise identical run to run and on
 *      every rank (one rank gives exactly qattn_forward's result). Transport: an all-to-all
 *      by query rows (rank c merges row chunk c), then an all-gather of the merged chunks.
 *  (b) Star Attention (Acharya et al., 2024): phase 1, qattn_star_encode (local, no
 *      communication): a context block attends to the anchor (the first anchor tokens of the
 *      context) prepended to itself; phase 2: the query tokens attend to every rank's block
 *      KV (anchor not included) and their own KV (appended to the last rank's shard) by
 *      qattn_dist_forward, which is exact.
 *  (c) qattn_dist_kv_decode: decode over a paged KV cache whose sequences are sharded across
 *      ranks (each rank's qattn_kv_cache holds a contiguous token range of each sequence, the
 *      tail rank holding the newest tokens), one merge per step.
 *
 * Outputs are written on every rank. Partials are FP32 whatever o_dtype is. */
#ifndef QATTN_DIST_H
#define QATTN_DIST_H

#include "qattn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qattn_dist qattn_dist;

typedef enum qattn_dist_transport {
    QATTN_DIST_MPI = 1,  /* host memory, CPU contexts */
    QATTN_DIST_NCCL = 2, /* device memory, CUDA contexts (one GPU per rank) */
} qattn_dist_transport;

/* A communicator over an MPI communicator: mpi_comm points to an MPI_Comm (so this header needs
 * no mpi.h). MPI must be initialised; the communicator is duplicated (qattn's traffic never
 * matches the caller's) with errors returned, not fatal. Collective over mpi_comm. */
QATTN_API qattn_status qattn_dist_create_mpi(qattn_ctx *ctx, const void *mpi_comm, qattn_dist **dist);

/* A communicator over an NCCL communicator: nccl_comm points to an ncclComm_t, used (not
 * owned) by qattn; ctx must be a CUDA context on the communicator's device. */
QATTN_API qattn_status qattn_dist_create_nccl(qattn_ctx *ctx, const void *nccl_comm, qattn_dist **dist);

QATTN_API void qattn_dist_destroy(qattn_dist *dist); /* NULL is a no-op; not collective */

/* Rank, size, and counters since creation or the last reset. */
typedef struct qattn_dist_info {
    int32_t transport;    /* qattn_dist_transport */
    int32_t rank, size;
    int32_t reserved;
    int64_t bytes_sent;   /* payload bytes this rank sent to other ranks */
    int64_t collectives;  /* collective operations issued */
    double comm_seconds;  /* wall time this rank spent in them (NCCL: the stream is synchronised
                             before and after each, so this excludes queued compute) */
    double compute_seconds; /* wall time in the local attention and the merge */
    double sync_seconds;    /* the part of comm_seconds spent in the descriptor exchange that opens
                               each call: mostly waiting for the slowest rank (load imbalance) */
} qattn_dist_info;

QATTN_API qattn_status qattn_dist_get_info(const qattn_dist *dist, qattn_dist_info *info);
QATTN_API qattn_status qattn_dist_reset_stats(qattn_dist *dist);

/* (a) Exact sequence-parallel attention. p describes this rank's problem: the full queries
 * q [B, Lq, H, D], this rank's keys/values k, v [B, seqlen_k, HK, D] (its shard: global keys
 * key_offset .. key_offset + seqlen_k - 1), o [B, Lq, H, D] and optional lse [B, H, Lq] for the
 * merged result. Masks (causal, windows) refer to global positions, as in qattn.h with
 * Lk = seqlen_k_total: key j is visible to query i when
 * i + seqlen_k_total - Lq - window_left <= j <= i + seqlen_k_total - Lq + window_right. No cu_seqlens. The shards of all ranks must tile
 * [0, seqlen_k_total) without overlap (checked); a shard may be empty. Precisions: those
 * qattn_forward supports on ctx (FP32/FP16/BF16/INT8 on the CPU); INT8 quantizes per token, so
 * sharding changes only the per-tile rounding of P. MPI: host pointers; NCCL: device pointers,
 * queued on p->stream, synchronised before return. Workspace: the library allocates
 * 2 * ceil(B*Lq / N) * N * H * (D + pad) floats (pad 1 on the host, 8 on a GPU). */
QATTN_API qattn_status qattn_dist_forward(qattn_ctx *ctx, qattn_dist *dist, const qattn_params *p, int64_t key_offset,
                                          int64_t seqlen_k_total);

/* (b) Star Attention phase 1 for one context block, local. p: the block's queries, keys and
 * values (seqlen_q == seqlen_k: the block's own tokens), o and optional lse. anchor_k/anchor_v:
 * the keys/values of the anchor_len tokens prepended (the context's first tokens), laid out
 * with p's k/v strides (NULL when anchor_len is 0: the first block, which is the anchor).
 * Result: attention of each block token over [anchor ; block] with the block's own mask
 * (causal: a block token sees all the anchor and the block tokens up to itself), computed as
 * two qattn_forward calls merged exactly by LSE (no concatenation copy). Host or device
 * pointers by ctx's backend. Phase 2 is qattn_dist_forward over the blocks' own KV. */
QATTN_API qattn_status qattn_star_encode(qattn_ctx *ctx, const qattn_params *p, const void *anchor_k, const void *anchor_v,
                                         int64_t anchor_len);

/* (c) Distributed decode. Each rank's cache holds its token range of every listed sequence;
 * tail_rank's cache holds the newest tokens (the seqlen_q queries' own K/V), where dp's causal
 * applies; every other rank's tokens all precede the queries and are all visible (a rank
 * whose shard of a sequence is empty contributes nothing). dp as for qattn_kv_decode (q on
 * every rank); window_left must be -1; a non-tail shard must hold 0 or >= seqlen_q tokens.
 * dev: NULL for MPI (host cache, qattn_kv_decode); for NCCL the device copy of this rank's
 * cache (qattn_kv_decode_cuda, q/o/lse device pointers, every shard non-empty). */
QATTN_API qattn_status qattn_dist_kv_decode(qattn_ctx *ctx, qattn_dist *dist, const qattn_kv_cache *cache,
                                            const qattn_kv_device_cache *dev, const qattn_decode_params *dp, int32_t tail_rank);

#ifdef __cplusplus
}
#endif

#endif /* QATTN_DIST_H */
