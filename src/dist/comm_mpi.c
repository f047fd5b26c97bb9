/* The MPI transport of qattn_dist (host memory): a duplicate of the caller's communicator with
 * MPI_ERRORS_RETURN, MPI_Alltoall / MPI_Allgather (in place) over a contiguous datatype of
 * whole chunks so that counts never overflow int. Built when CMake finds MPI (QATTN_HAVE_MPI);
 * otherwise qattn_dist_create_mpi says so. */
#include "dist/dist_internal.h"

#if defined(QATTN_HAVE_MPI)
#include <mpi.h>

#include <stdlib.h>

typedef struct mpi_impl {
    MPI_Comm comm;
} mpi_impl;

static qattn_status mpi_failed(qattn_ctx *ctx, const char *what, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
    text[len] = '\0';
    return qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_dist (MPI): %s failed: %s", what, len ? text : "unknown error");
}

static qattn_status mpi_allgather_i64(qattn_ctx *ctx, qattn_dist *d, const int64_t *mine, int64_t *all, int n) {
    mpi_impl *m = d->impl;
    int e = MPI_Allgather(mine, n, MPI_INT64_T, all, n, MPI_INT64_T, m->comm);
    return e == MPI_SUCCESS ? QATTN_OK : mpi_failed(ctx, "MPI_Allgather (descriptor)", e);
}

/* A datatype of one chunk (count floats), as count may exceed INT_MAX. */
static int chunk_type(int64_t count, MPI_Datatype *t) {
    if (count > INT32_MAX) return MPI_ERR_COUNT; /* 8 GiB per rank chunk: beyond any shape qattn validates */
    int e = MPI_Type_contiguous((int)count, MPI_FLOAT, t);
    if (e == MPI_SUCCESS) e = MPI_Type_commit(t);
    return e;
}

static qattn_status mpi_alltoall_f32(qattn_ctx *ctx, qattn_dist *d, const float *send, float *recv, int64_t count, void *stream) {
    (void)stream;
    mpi_impl *m = d->impl;
    MPI_Datatype t;
    int e = chunk_type(count, &t);
    if (e != MPI_SUCCESS) return mpi_failed(ctx, "MPI_Type_contiguous", e);
    e = MPI_Alltoall(send, 1, t, recv, 1, t, m->comm);
    MPI_Type_free(&t);
    return e == MPI_SUCCESS ? QATTN_OK : mpi_failed(ctx, "MPI_Alltoall", e);
}

static qattn_status mpi_allgather_f32(qattn_ctx *ctx, qattn_dist *d, float *buf, int64_t count, void *stream) {
    (void)stream;
    mpi_impl *m = d->impl;
    MPI_Datatype t;
    int e = chunk_type(count, &t);
    if (e != MPI_SUCCESS) return mpi_failed(ctx, "MPI_Type_contiguous", e);
    e = MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, 1, t, m->comm);
    MPI_Type_free(&t);
    return e == MPI_SUCCESS ? QATTN_OK : mpi_failed(ctx, "MPI_Allgather", e);
}

static void mpi_destroy(qattn_dist *d) {
    mpi_impl *m = d->impl;
    if (!m) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&m->comm);
    free(m);
    d->impl = NULL;
}

static const qattn_dist_ops mpi_ops = {mpi_allgather_i64, mpi_alltoall_f32, mpi_allgather_f32, mpi_destroy};

qattn_status qattn_dist_create_mpi(qattn_ctx *ctx, const void *mpi_comm, qattn_dist **dist) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!dist || !mpi_comm) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_dist_create_mpi: %s is NULL", !dist ? "dist" : "mpi_comm");
    *dist = NULL;
    if (ctx->backend != QATTN_BACKEND_CPU)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_dist_create_mpi: the MPI transport moves host memory; ctx must be a CPU context");
    int init = 0, finalized = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&finalized);
    if (!init || finalized) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qattn_dist_create_mpi: MPI is not initialised (call MPI_Init first)");
    mpi_impl *m = calloc(1, sizeof *m);
    qattn_dist *d = qattn_dist_new(ctx);
    if (!m || !d) {
        free(m);
        free(d);
        return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_dist_create_mpi: out of memory");
    }
    int e = MPI_Comm_dup(*(const MPI_Comm *)mpi_comm, &m->comm);
    if (e == MPI_SUCCESS) e = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    if (e == MPI_SUCCESS) e = MPI_Comm_rank(m->comm, &d->rank);
    if (e == MPI_SUCCESS) e = MPI_Comm_size(m->comm, &d->size);
    if (e != MPI_SUCCESS) {
        free(m);
        free(d);
        return mpi_failed(ctx, "MPI_Comm_dup", e);
    }
    d->transport = QATTN_DIST_MPI;
    d->ops = &mpi_ops;
    d->impl = m;
    *dist = d;
    return QATTN_OK;
}

#else

qattn_status qattn_dist_create_mpi(qattn_ctx *ctx, const void *mpi_comm, qattn_dist **dist) {
    (void)mpi_comm;
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (dist) *dist = NULL;
    return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_dist_create_mpi: this build of qattn_dist has no MPI (CMake found none)");
}

#endif
