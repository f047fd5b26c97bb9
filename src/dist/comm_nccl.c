/* The NCCL transport of qattn_dist (device memory, one GPU per rank): the all-to-all as grouped
 * ncclSend/ncclRecv pairs, the all-gather as in-place ncclAllGather, both on the call's stream;
 * the small descriptor goes through a device buffer. Built when CMake finds CUDA and NCCL
 * (QATTN_HAVE_NCCL); otherwise qattn_dist_create_nccl says so. */
#include "dist/dist_internal.h"

#if defined(QATTN_HAVE_NCCL)
#include <cuda_runtime.h>
#include <nccl.h>

#include <stdlib.h>

typedef struct nccl_impl {
    ncclComm_t comm; /* the caller's; not destroyed here */
    int64_t *desc;   /* device scratch for the descriptor all-gather */
    int desc_n;
} nccl_impl;

static qattn_status nccl_failed(qattn_ctx *ctx, const char *what, ncclResult_t r) {
    return qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_dist (NCCL): %s failed: %s", what, ncclGetErrorString(r));
}

static qattn_status nccl_allgather_i64(qattn_ctx *ctx, qattn_dist *d, const int64_t *mine, int64_t *all, int n) {
    nccl_impl *m = d->impl;
    if (m->desc_n < n * d->size) {
        cudaFree(m->desc);
        m->desc = NULL;
        m->desc_n = 0;
        if (cudaMalloc((void **)&m->desc, (size_t)n * d->size * sizeof(int64_t)) != cudaSuccess)
            return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_dist (NCCL): cannot allocate the descriptor buffer");
        m->desc_n = n * d->size;
    }
    if (cudaMemcpy(m->desc + (size_t)d->rank * n, mine, (size_t)n * sizeof(int64_t), cudaMemcpyHostToDevice) != cudaSuccess)
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_dist (NCCL): cannot copy the descriptor to the device");
    ncclResult_t r = ncclAllGather(m->desc + (size_t)d->rank * n, m->desc, (size_t)n, ncclInt64, m->comm, 0);
    if (r != ncclSuccess) return nccl_failed(ctx, "ncclAllGather (descriptor)", r);
    if (cudaMemcpy(all, m->desc, (size_t)n * d->size * sizeof(int64_t), cudaMemcpyDeviceToHost) != cudaSuccess)
        return qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_dist (NCCL): cannot copy the descriptors back");
    return QATTN_OK;
}

static qattn_status nccl_alltoall_f32(qattn_ctx *ctx, qattn_dist *d, const float *send, float *recv, int64_t count, void *stream) {
    nccl_impl *m = d->impl;
    ncclResult_t r = ncclGroupStart();
    for (int peer = 0; r == ncclSuccess && peer < d->size; peer++) {
        r = ncclSend(send + (size_t)peer * count, (size_t)count, ncclFloat, peer, m->comm, (cudaStream_t)stream);
        if (r == ncclSuccess) r = ncclRecv(recv + (size_t)peer * count, (size_t)count, ncclFloat, peer, m->comm, (cudaStream_t)stream);
    }
    ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
    return r == ncclSuccess ? QATTN_OK : nccl_failed(ctx, "ncclSend/ncclRecv (all-to-all)", r);
}

static qattn_status nccl_allgather_f32(qattn_ctx *ctx, qattn_dist *d, float *buf, int64_t count, void *stream) {
    nccl_impl *m = d->impl;
    ncclResult_t r = ncclAllGather(buf + (size_t)d->rank * count, buf, (size_t)count, ncclFloat, m->comm, (cudaStream_t)stream);
    return r == ncclSuccess ? QATTN_OK : nccl_failed(ctx, "ncclAllGather", r);
}

static void nccl_destroy(qattn_dist *d) {
    nccl_impl *m = d->impl;
    if (!m) return;
    cudaFree(m->desc);
    free(m);
    d->impl = NULL;
}

static const qattn_dist_ops nccl_ops = {nccl_allgather_i64, nccl_alltoall_f32, nccl_allgather_f32, nccl_destroy};

qattn_status qattn_dist_create_nccl(qattn_ctx *ctx, const void *nccl_comm, qattn_dist **dist) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!dist || !nccl_comm) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_dist_create_nccl: %s is NULL", !dist ? "dist" : "nccl_comm");
    *dist = NULL;
    if (ctx->backend != QATTN_BACKEND_CUDA)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_dist_create_nccl: the NCCL transport moves device memory; ctx must be a CUDA context");
    ncclComm_t comm = *(const ncclComm_t *)nccl_comm;
    int rank = 0, size = 0, dev = -1;
    ncclResult_t r = ncclCommUserRank(comm, &rank);
    if (r == ncclSuccess) r = ncclCommCount(comm, &size);
    if (r == ncclSuccess) r = ncclCommCuDevice(comm, &dev);
    if (r != ncclSuccess) return nccl_failed(ctx, "ncclCommUserRank/Count/CuDevice", r);
    if (dev != ctx->cuda_device)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qattn_dist_create_nccl: the communicator is on device %d, the context on device %d", dev,
                          ctx->cuda_device);
    nccl_impl *m = calloc(1, sizeof *m);
    qattn_dist *d = qattn_dist_new(ctx);
    if (!m || !d) {
        free(m);
        free(d);
        return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_dist_create_nccl: out of memory");
    }
    m->comm = comm;
    d->transport = QATTN_DIST_NCCL;
    d->rank = rank;
    d->size = size;
    d->on_device = 1;
    d->ops = &nccl_ops;
    d->impl = m;
    *dist = d;
    return QATTN_OK;
}

#else

qattn_status qattn_dist_create_nccl(qattn_ctx *ctx, const void *nccl_comm, qattn_dist **dist) {
    (void)nccl_comm;
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (dist) *dist = NULL;
    return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_dist_create_nccl: this build of qattn_dist has no NCCL (CMake found no CUDA or NCCL)");
}

#endif
