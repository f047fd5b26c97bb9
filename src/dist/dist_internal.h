/* Internals of qattn_dist (src/dist/): the communicator object, the transport table that the
 * MPI (comm_mpi.c) and NCCL (comm_nccl.c) transports fill, and the record operations (pack the
 * partial LSE, merge partials, unpack) on the host (dist.c) and on the GPU (dist_kernels.cu).
 *
 * Partial layout ("records"): one record of R floats per (query row, head), row = b*Lq + i,
 * record index row*H + h; float 0 is the partial LSE (natural log, -inf: no visible key),
 * floats hdr..hdr+D-1 the normalised partial output. hdr is 1 on the host and 8 on a GPU (the
 * CUDA kernels need 16-byte aligned rows and strides that are multiples of 8 elements). */
#ifndef QATTN_DIST_INTERNAL_H
#define QATTN_DIST_INTERNAL_H

#include "qattn_dist.h"
#include "qattn_internal.h"

typedef struct qattn_dist_ops {
    /* all[r * n + i] = rank r's mine[i]; host memory; n small. */
    qattn_status (*allgather_i64)(qattn_ctx *ctx, qattn_dist *d, const int64_t *mine, int64_t *all, int n);
    /* send holds size chunks of count floats, chunk c for rank c; recv[s * count ...] gets
     * sender s's chunk for this rank. */
    qattn_status (*alltoall_f32)(qattn_ctx *ctx, qattn_dist *d, const float *send, float *recv, int64_t count, void *stream);
    /* In place: buf[rank * count ...] of every rank to buf on every rank. */
    qattn_status (*allgather_f32)(qattn_ctx *ctx, qattn_dist *d, float *buf, int64_t count, void *stream);
    void (*destroy)(qattn_dist *d);
} qattn_dist_ops;

struct qattn_dist {
    int32_t transport; /* qattn_dist_transport */
    int32_t rank, size;
    int32_t on_device; /* buffers are device memory (NCCL) */
    const qattn_dist_ops *ops;
    void *impl; /* the transport's own state */
    qattn_dist_info stats;
};

/* Create the shell of a communicator (rank, size, ops, impl filled by the transport). */
qattn_dist *qattn_dist_new(qattn_ctx *ctx);

/* Where the output of a merge goes: o [B, Lq, H, D] of o_dtype through the strides, lse
 * contiguous [B, H, Lq] (may be NULL). */
typedef struct qattn_dist_out {
    void *o;
    int32_t o_dtype;
    int64_t o_bs, o_ss, o_hs;
    float *lse;
    int64_t batch, seqlen_q;
    int32_t n_heads, head_dim;
} qattn_dist_out;

#if defined(QATTN_HAVE_CUDA)
/* GPU record operations (dist_kernels.cu), queued on stream (a cudaStream_t). 0 on success, else
 * the CUDA error code. */
int qattn_dist_dev_alloc(void **ptr, size_t bytes);
void qattn_dist_dev_free(void *ptr);
int qattn_dist_dev_sync(void *stream);
int qattn_dist_dev_set_empty(float *rec, int64_t n_rec, int R, void *stream);
int qattn_dist_dev_put_lse(float *rec, const float *lse, int64_t batch, int32_t H, int64_t Lq, int64_t m, int R, void *stream);
int qattn_dist_dev_put_o(float *rec, const float *o, int64_t n_rec, int D, int R, int hdr, void *stream);
int qattn_dist_dev_merge(const float *in, int n_parts, int64_t part_floats, int64_t n_rec, int D, int R, int hdr, float *out,
                         void *stream);
int qattn_dist_dev_unpack(const float *rec, const qattn_dist_out *out, int R, int hdr, void *stream);
#endif

#endif /* QATTN_DIST_INTERNAL_H */
