/* Between the GPU decode's driver (kv_decode_driver.cu: checks, split plan, scratch, launches)
 * and its kernels (kv_decode.cu): the kernels' argument struct, the residency slots of the split
 * kernels, and the thin launch wrappers the driver calls. C++ only; no qattn_ctx, no cache here. */
#ifndef QATTN_CUDA_KV_DECODE_KERNELS_CUH
#define QATTN_CUDA_KV_DECODE_KERNELS_CUH

#include <cuda_runtime.h>
#include <stdint.h>

constexpr int QATTN_KVD_SEQ_CHUNK = 128; /* sequences per launch: their ids and lengths ride in the kernel arguments */

/* Everything a split kernel reads, resolved by the driver; passed by value (__grid_constant__). */
struct qattn_kvd_args {
    const uint8_t *arena;
    const int32_t *table;
    const void *q;
    void *o;
    float *lse;
    float *part; /* [n_seqs_chunk][hk][nsplit][rows_pad][D+2] */
    unsigned *cnt; /* [n_seqs_chunk][hk][n_rc] blocks of the unit done; 0 before and after a launch */
    int64_t table_ld, block_bytes, head_bytes, v_off, ks_off, vs_off;
    int32_t bs, bs_shift;           /* bs_shift >= 0 when bs is a power of two */
    int32_t b0;                     /* first sequence of this chunk (index into dp's arrays) */
    int32_t lq, h, hk, group, rows, n_rc, rows_pad;
    int32_t split_tokens, nsplit;
    int32_t q_dtype, o_dtype, causal, wl;
    float qscale;
    const float *muv;      /* INT8: V's mean [HK][D] (the arena's transforms), added to each output row; else NULL */
    const float *lse_corr; /* INT8: [n_seqs][H][Lq] scale * q . mu_k, added to the LSE (kvd_prep_q); else NULL */
    int32_t seq_id[QATTN_KVD_SEQ_CHUNK];
    int32_t seq_len[QATTN_KVD_SEQ_CHUNK];
};

/* Split-kernel instances with a residency slot: kvd_mma<D 64|128, R8 1|2> (4, the INT8 cache) and
 * kvd_mma16<D 64|128, DT 0|1, R8 1|2> (8, the FP16 and BF16 caches). DT: 0 FP16, 1 BF16. */
constexpr int QATTN_KVD_SLOTS = 12;
constexpr int qattn_kvd_slot_mma(int D, int R8) { return (D == 128 ? 2 : 0) + (R8 == 2 ? 1 : 0); }
constexpr int qattn_kvd_slot_mma16(int D, int DT, int R8) { return 4 + ((D == 128 ? 2 : 0) + DT) * 2 + (R8 == 2 ? 1 : 0); }

/* Slot's instance, once per context with its device current: raise its shared-memory limit, then
 * *resident = its blocks resident per SM (for the split count). */
cudaError_t qattn_kvd_prepare_slot(int slot, int *resident);

/* Launchers: each returns the launch's cudaGetLastError. The split kernels' shared-memory limits
 * were raised by qattn_kvd_prepare_slot.
 * INT8 query transform kvd_prep_q<D, D> (D 64 or 128): one block of D threads per query row, rows
 * blocks; z [rows][D] FP32 and corr [n_seqs][H][Lq] in scratch. */
cudaError_t qattn_kvd_launch_prep_q(int D, unsigned rows, const void *q, int q_dtype, float qscale, float scale, const float *tf, int hk,
                                    int h, int lq, float *z, float *corr, cudaStream_t st);
/* kvd_mma16<D, DT, R8> (D 64|128, DT 0|1, R8 1|2) over grid, 4 warps a block. */
cudaError_t qattn_kvd_launch_mma16(const qattn_kvd_args &a, int D, int DT, int R8, dim3 grid, cudaStream_t st);
/* kvd_mma<D, R8> (D 64|128, R8 1|2) over grid, 4 warps a block. */
cudaError_t qattn_kvd_launch_mma(const qattn_kvd_args &a, int D, int R8, dim3 grid, cudaStream_t st);

#endif
