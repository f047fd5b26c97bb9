/* Status strings, the version string and qattn_fail, the one way a message reaches the context:
 * every layer reports through these, so they sit at the bottom. */
#include "core/context.h"

#include <stdio.h>

#define QATTN_STR2(x) #x
#define QATTN_STR(x) QATTN_STR2(x)

const char *qattn_version(void) {
    return QATTN_STR(QATTN_VERSION_MAJOR) "." QATTN_STR(QATTN_VERSION_MINOR) "." QATTN_STR(QATTN_VERSION_PATCH);
}

const char *qattn_status_str(qattn_status status) {
    switch (status) {
    case QATTN_OK: return "QATTN_OK: success";
    case QATTN_ERR_NULL_POINTER: return "QATTN_ERR_NULL_POINTER: a required pointer is NULL";
    case QATTN_ERR_INVALID_ARGUMENT: return "QATTN_ERR_INVALID_ARGUMENT: invalid argument";
    case QATTN_ERR_UNSUPPORTED: return "QATTN_ERR_UNSUPPORTED: not supported by this backend";
    case QATTN_ERR_OUT_OF_MEMORY: return "QATTN_ERR_OUT_OF_MEMORY: out of memory";
    case QATTN_ERR_OVERFLOW: return "QATTN_ERR_OVERFLOW: size computation overflows";
    case QATTN_ERR_BACKEND: return "QATTN_ERR_BACKEND: backend failure";
    case QATTN_ERR_CAPACITY: return "QATTN_ERR_CAPACITY: capacity exhausted";
    }
    return "unknown qattn status";
}

qattn_status qattn_fail(qattn_ctx *ctx, qattn_status status, const char *fmt, ...) {
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
        va_end(ap);
    }
    return status;
}
