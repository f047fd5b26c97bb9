/* The context every layer receives, and what every layer uses through it: the message of the
 * last error (qattn_fail), allocation through the user's hooks. src/core/context.c creates it. */
#ifndef QATTN_CORE_CONTEXT_H
#define QATTN_CORE_CONTEXT_H

#include "qattn.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define QATTN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define QATTN_PRINTF(a, b)
#endif

#define QATTN_ERR_LEN 512
#define QATTN_ALIGN 64

struct qattn_ctx {
    int32_t backend; /* qattn_backend, resolved (never AUTO) */
    int32_t isa;     /* qattn_isa, resolved (never AUTO) */
    int32_t n_threads;
    int32_t cuda_device;
    int32_t cuda_kernels; /* qattn_cuda_kernels */
    const struct qattn_cpu_kernels *kernels; /* the ISA's kernel table (src/ref, src/cpu/x86) */
    void *(*alloc)(size_t bytes, void *user);
    void (*free)(void *ptr, void *user);
    void *alloc_user;
    void *cuda_state; /* owned by the CUDA backend */
    struct qattn_pool *pool; /* the CPU worker threads (src/core/threads.c), started on first use */
    char last_error[QATTN_ERR_LEN];
};

/* Record a message on ctx and return status (so callers write `return qattn_fail(...)`). */
qattn_status qattn_fail(qattn_ctx *ctx, qattn_status status, const char *fmt, ...) QATTN_PRINTF(3, 4);

/* qattn_ctx_create_ex without the backend binding (api.c does it: ctx->kernels, the CUDA state):
 * options checked, context allocated, ISA and backend resolved, thread pool made. On success *out
 * is the new context; on failure *out is NULL and message says why. src/core/context.c. */
qattn_status qattn_ctx_new(qattn_ctx **out, const qattn_ctx_options *options, char *message, size_t message_size);
/* Joins ctx's threads and frees it through its own hooks (its backend released by the caller);
 * message, when not NULL, receives ctx's last error first (a creation failing after qattn_ctx_new). */
void qattn_ctx_delete(qattn_ctx *ctx, char *message, size_t message_size);
/* qattn_ctx_get_info's fields but cuda_available (the CUDA backend's, filled by api.c). */
qattn_status qattn_ctx_describe(const qattn_ctx *ctx, qattn_ctx_info *info);

/* 64-byte aligned allocation through the context's hooks; NULL on failure or bytes == 0.
 * src/core/alloc.c. */
void *qattn_alloc(qattn_ctx *ctx, size_t bytes);
void qattn_free(qattn_ctx *ctx, void *ptr);

#endif
