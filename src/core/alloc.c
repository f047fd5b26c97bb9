/* qattn_alloc / qattn_free: every layer's allocation, through the hooks of the context (the
 * defaults, 64-byte aligned, are set at creation: src/core/context.c). A file of its own so that
 * the thread pool (src/core/threads.c) allocates without calling back into context.c. */
#include "core/context.h"

void *qattn_alloc(qattn_ctx *ctx, size_t bytes) {
    if (bytes == 0) return NULL;
    return ctx->alloc(bytes, ctx->alloc_user);
}

void qattn_free(qattn_ctx *ctx, void *ptr) {
    if (ptr) ctx->free(ptr, ctx->alloc_user);
}
