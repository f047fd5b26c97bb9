/* The context's state: allocation through its hooks, creation (options checked, ISA and backend
 * chosen, thread pool made), deletion, threads and info. The backend binding (the ISA's kernel
 * table, the CUDA state) is api.c's, which creates and destroys contexts through these. Every
 * layer allocates and reports through the context; QATTN_ISA / QATTN_BACKEND are read here and
 * nowhere else. */
#define _POSIX_C_SOURCE 200809L
#include "qattn_internal.h"

#include "core/names.h"
#include "core/threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---------------------------------------------------------------- allocation */

static void *default_alloc(size_t bytes, void *user) {
    (void)user;
    void *ptr = NULL;
    size_t rounded = (bytes + QATTN_ALIGN - 1) / QATTN_ALIGN * QATTN_ALIGN;
    if (rounded < bytes) return NULL;
    if (posix_memalign(&ptr, QATTN_ALIGN, rounded) != 0) return NULL;
    return ptr;
}

static void default_free(void *ptr, void *user) {
    (void)user;
    free(ptr);
}

/* ---------------------------------------------------------------- context */

static int online_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > QATTN_MAX_THREADS ? QATTN_MAX_THREADS : (int)n);
}

/* Environment override (QATTN_ISA / QATTN_BACKEND) applies only where the option is AUTO.
 * Returns -1 for an unknown name so the caller can report it. */
static int32_t isa_from_env(void) {
    const char *s = getenv("QATTN_ISA");
    return !s || !*s ? QATTN_ISA_AUTO : qattn_isa_from_name(s);
}

static int32_t backend_from_env(void) {
    const char *s = getenv("QATTN_BACKEND");
    return !s || !*s ? QATTN_BACKEND_AUTO : qattn_backend_from_name(s);
}

static qattn_status choose_isa(qattn_ctx *ctx, int32_t requested) {
    int32_t isa = requested;
    if (isa == QATTN_ISA_AUTO) {
        isa = isa_from_env();
        if (isa < 0) {
            char names[64];
            qattn_isa_name_list(", ", names, sizeof names);
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "QATTN_ISA=%s is not one of %s", getenv("QATTN_ISA"), names);
        }
    }
#if defined(QATTN_HAVE_X86)
    bool have_avx2 = qattn_cpu_has_avx2();
    bool have_vnni = have_avx2 && qattn_cpu_has_avxvnni();
    bool have_avx512 = qattn_cpu_has_avx512();
#else
    bool have_avx2 = false, have_vnni = false, have_avx512 = false;
#endif
    if (isa == QATTN_ISA_AUTO)
        isa = have_avx512 ? QATTN_ISA_AVX512 : have_vnni ? QATTN_ISA_AVXVNNI : have_avx2 ? QATTN_ISA_AVX2 : QATTN_ISA_REF;
    if (isa == QATTN_ISA_AVX2 && !have_avx2)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "ISA avx2 requested but this CPU/OS does not support AVX2+FMA+F16C");
    if (isa == QATTN_ISA_AVXVNNI && !have_vnni)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "ISA avxvnni requested but this CPU/OS does not support AVX2+FMA+F16C+AVX-VNNI");
    if (isa == QATTN_ISA_AVX512 && !have_avx512)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED,
                          "ISA avx512 requested but this CPU/OS does not support AVX-512 F/BW/VL/DQ+AVX512-VNNI with ZMM state");
    ctx->isa = isa;
    return QATTN_OK;
}

static qattn_status choose_backend(qattn_ctx *ctx, int32_t requested) {
    int32_t backend = requested;
    if (backend == QATTN_BACKEND_AUTO) {
        backend = backend_from_env();
        if (backend < 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "QATTN_BACKEND=%s is not one of cpu, cuda", getenv("QATTN_BACKEND"));
        if (backend == QATTN_BACKEND_AUTO) backend = QATTN_BACKEND_CPU;
    }
    ctx->backend = backend;
    return QATTN_OK;
}

/* A creation failure before the context exists: the message goes to the caller's buffer. */
static qattn_status create_fail(char *message, size_t message_size, qattn_status status, const char *fmt, ...) QATTN_PRINTF(4, 5);
static qattn_status create_fail(char *message, size_t message_size, qattn_status status, const char *fmt, ...) {
    if (message && message_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(message, message_size, fmt, ap);
        va_end(ap);
    }
    return status;
}

qattn_status qattn_ctx_new(qattn_ctx **out, const qattn_ctx_options *options, char *message, size_t message_size) {
    if (message && message_size > 0) message[0] = '\0';
    if (!out) return create_fail(message, message_size, QATTN_ERR_NULL_POINTER, "ctx (the output pointer) is NULL");
    *out = NULL;
    qattn_ctx_options opt;
    memset(&opt, 0, sizeof opt);
    if (options) opt = *options;
    if ((opt.alloc == NULL) != (opt.free == NULL))
        return create_fail(message, message_size, QATTN_ERR_INVALID_ARGUMENT, "alloc and free hooks must be given together (alloc %s, free %s)",
                           opt.alloc ? "set" : "NULL", opt.free ? "set" : "NULL");
    if (opt.backend < QATTN_BACKEND_AUTO || opt.backend > QATTN_BACKEND_CUDA)
        return create_fail(message, message_size, QATTN_ERR_INVALID_ARGUMENT, "backend %d is not a qattn_backend (0 auto, 1 cpu, 2 cuda)", opt.backend);
    if (opt.isa < QATTN_ISA_AUTO || opt.isa > QATTN_ISA_AVX512)
        return create_fail(message, message_size, QATTN_ERR_INVALID_ARGUMENT, "isa %d is not a qattn_isa", opt.isa);
    if (opt.n_threads < 0 || opt.n_threads > QATTN_MAX_THREADS)
        return create_fail(message, message_size, QATTN_ERR_INVALID_ARGUMENT, "n_threads is %d; expected 0 (all cores) to %d", opt.n_threads,
                           QATTN_MAX_THREADS);
    if (opt.cuda_device < 0)
        return create_fail(message, message_size, QATTN_ERR_INVALID_ARGUMENT, "cuda_device is %d; it must be >= 0", opt.cuda_device);
    if (opt.cuda_kernels != QATTN_CUDA_KERNELS_AUTO && opt.cuda_kernels != QATTN_CUDA_KERNELS_MMA)
        return create_fail(message, message_size, QATTN_ERR_INVALID_ARGUMENT, "cuda_kernels is %d; expected 0 (auto) or 1 (mma)", opt.cuda_kernels);
    if (opt.reserved != 0)
        return create_fail(message, message_size, QATTN_ERR_INVALID_ARGUMENT, "qattn_ctx_options.reserved is %d; it must be 0", opt.reserved);

    void *(*alloc)(size_t, void *) = opt.alloc ? opt.alloc : default_alloc;
    void (*dealloc)(void *, void *) = opt.free ? opt.free : default_free;
    qattn_ctx *ctx = alloc(sizeof *ctx, opt.alloc_user);
    if (!ctx) return create_fail(message, message_size, QATTN_ERR_OUT_OF_MEMORY, "out of memory allocating the context (%zu bytes)", sizeof *ctx);
    memset(ctx, 0, sizeof *ctx);
    ctx->alloc = alloc;
    ctx->free = dealloc;
    ctx->alloc_user = opt.alloc_user;
    ctx->n_threads = opt.n_threads ? opt.n_threads : online_cores();
    ctx->cuda_device = opt.cuda_device;
    ctx->cuda_kernels = opt.cuda_kernels;

    qattn_status s = choose_isa(ctx, opt.isa);
    if (s == QATTN_OK && !(ctx->pool = qattn_pool_create(ctx))) s = qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot create the thread pool");
    if (s == QATTN_OK) s = choose_backend(ctx, opt.backend);
    if (s != QATTN_OK) {
        qattn_pool_destroy(ctx, ctx->pool);
        create_fail(message, message_size, s, "%s", ctx->last_error); /* the context dies here: hand its reason over */
        dealloc(ctx, opt.alloc_user);
        return s;
    }
    *out = ctx;
    return QATTN_OK;
}

void qattn_ctx_delete(qattn_ctx *ctx, char *message, size_t message_size) {
    qattn_pool_destroy(ctx, ctx->pool);
    create_fail(message, message_size, QATTN_OK, "%s", ctx->last_error);
    ctx->free(ctx, ctx->alloc_user);
}

const char *qattn_ctx_last_error(const qattn_ctx *ctx) {
    return ctx ? ctx->last_error : "qattn_ctx_last_error: ctx is NULL";
}

qattn_status qattn_ctx_set_threads(qattn_ctx *ctx, int32_t n_threads) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    if (n_threads < 0 || n_threads > QATTN_MAX_THREADS)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "n_threads is %d; expected 0 (all cores) to %d", n_threads, QATTN_MAX_THREADS);
    ctx->n_threads = n_threads ? n_threads : online_cores();
    qattn_pool_resize(ctx->pool, ctx->n_threads);
    return QATTN_OK;
}

static void cpu_model_name(char *buf, size_t len) {
    snprintf(buf, len, "cpu");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *colon = strchr(line, ':');
            if (colon) {
                colon++;
                while (*colon == ' ') colon++;
                colon[strcspn(colon, "\n")] = '\0';
                snprintf(buf, len, "%s", colon);
            }
            break;
        }
    }
    fclose(f);
}

qattn_status qattn_ctx_describe(const qattn_ctx *ctx, qattn_ctx_info *info) {
    if (!ctx || !info) return QATTN_ERR_NULL_POINTER;
    memset(info, 0, sizeof *info);
    info->backend = ctx->backend;
    info->isa = ctx->isa;
    info->n_threads = ctx->n_threads;
    snprintf(info->isa_name, sizeof info->isa_name, "%s", ctx->kernels->name);
    cpu_model_name(info->device_name, sizeof info->device_name);
    return QATTN_OK;
}
