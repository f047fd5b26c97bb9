/* The public entry points: context creation and destruction (the state from src/core/context.c,
 * then the backend binding), params init, then for each call validation (qattn_validate,
 * src/core/validate.c) and dispatch to a backend. Every argument problem becomes a status plus a
 * message naming the value. */
#include "qattn_internal.h"

#include "quant/lowp.h"

/* ---------------------------------------------------------------- context */

/* The backend half of context creation: the ISA's CPU kernel table, and the CUDA backend's state
 * when the context's backend is CUDA (so that creation fails at once on a missing GPU). */
static qattn_status bind_backend(qattn_ctx *ctx) {
    ctx->kernels = qattn_cpu_kernel_table(ctx->isa);
    if (ctx->backend == QATTN_BACKEND_CUDA) {
#if defined(QATTN_HAVE_CUDA)
        return qattn_cuda_init(ctx);
#else
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "backend cuda requested but this build of qattn has no CUDA backend");
#endif
    }
    return QATTN_OK;
}

qattn_status qattn_ctx_create_ex(qattn_ctx **out, const qattn_ctx_options *options, char *message, size_t message_size) {
    qattn_status s = qattn_ctx_new(out, options, message, message_size);
    if (s != QATTN_OK) return s;
    s = bind_backend(*out);
    if (s != QATTN_OK) {
        qattn_ctx_delete(*out, message, message_size); /* the context dies here: hand its reason over */
        *out = NULL;
    }
    return s;
}

qattn_status qattn_ctx_create(qattn_ctx **out, const qattn_ctx_options *options) { return qattn_ctx_create_ex(out, options, NULL, 0); }

void qattn_ctx_destroy(qattn_ctx *ctx) {
    if (!ctx) return;
#if defined(QATTN_HAVE_CUDA)
    qattn_cuda_release(ctx);
#endif
    qattn_ctx_delete(ctx, NULL, 0);
}

qattn_status qattn_ctx_get_info(const qattn_ctx *ctx, qattn_ctx_info *info) {
    qattn_status s = qattn_ctx_describe(ctx, info);
#if defined(QATTN_HAVE_CUDA)
    if (s == QATTN_OK) info->cuda_available = qattn_cuda_device_count() > 0;
#endif
    return s;
}

/* ---------------------------------------------------------------- parameters */

void qattn_params_init(qattn_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->qkv_dtype = QATTN_DTYPE_F32;
    p->o_dtype = QATTN_DTYPE_F32;
    p->precision = QATTN_PRECISION_AUTO;
    p->int8_scheme = QATTN_INT8_DEFAULT;
    p->window_left = -1;
    p->window_right = -1;
}

/* a * b * c, saturated to INT64_MAX when it overflows (qattn_validate then refuses the params). */
static int64_t stride_product(int64_t a, int64_t b, int64_t c) {
    int64_t ab, abc;
    return qattn_mul_i64(a, b, &ab) && qattn_mul_i64(ab, c, &abc) ? abc : INT64_MAX;
}

void qattn_params_set_contiguous(qattn_params *p) {
    if (!p) return;
    int64_t D = p->head_dim, H = p->n_heads, HK = p->n_kv_heads;
    p->q_head_stride = p->o_head_stride = D;
    p->q_seq_stride = p->o_seq_stride = stride_product(H, D, 1);
    p->k_head_stride = p->v_head_stride = D;
    p->k_seq_stride = p->v_seq_stride = stride_product(HK, D, 1);
    p->q_batch_stride = p->o_batch_stride = stride_product(p->seqlen_q, H, D);
    p->k_batch_stride = p->v_batch_stride = stride_product(p->seqlen_k, HK, D);
}

/* ---------------------------------------------------------------- dispatch */

static qattn_status begin(qattn_ctx *ctx, const qattn_params *p) {
    ctx->last_error[0] = '\0';
    bool host = ctx->backend == QATTN_BACKEND_CPU;
    return qattn_validate(ctx, p, host);
}

qattn_status qattn_supports(qattn_ctx *ctx, const qattn_params *p) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = begin(ctx, p);
    if (s == QATTN_OK) s = qattn_check_params_disjoint(ctx, p, qattn_dtype_bytes(p->qkv_dtype));
    if (s != QATTN_OK) return s;
#if defined(QATTN_HAVE_CUDA)
    if (ctx->backend == QATTN_BACKEND_CUDA) return qattn_cuda_supports(ctx, p);
#endif
    size_t bytes;
    return qattn_precision_is_lowp(p->precision) ? qattn_cpu_lowp_workspace_size(ctx, p, &bytes) : qattn_cpu_workspace_size(ctx, p, &bytes);
}

qattn_status qattn_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!bytes) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "bytes is NULL");
    *bytes = 0;
    qattn_status s = begin(ctx, p);
    if (s != QATTN_OK) return s;
#if defined(QATTN_HAVE_CUDA)
    if (ctx->backend == QATTN_BACKEND_CUDA) return qattn_cuda_workspace_size(ctx, p, bytes);
#endif
    return qattn_precision_is_lowp(p->precision) ? qattn_cpu_lowp_workspace_size(ctx, p, bytes) : qattn_cpu_workspace_size(ctx, p, bytes);
}

qattn_status qattn_forward(qattn_ctx *ctx, const qattn_params *p) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = begin(ctx, p);
    if (s == QATTN_OK) s = qattn_check_params_disjoint(ctx, p, qattn_dtype_bytes(p->qkv_dtype));
    if (s != QATTN_OK) return s;
    if (p->batch == 0) return QATTN_OK;
#if defined(QATTN_HAVE_CUDA)
    if (ctx->backend == QATTN_BACKEND_CUDA) return qattn_cuda_forward(ctx, p);
#endif
    return qattn_precision_is_lowp(p->precision) ? qattn_cpu_forward_lowp(ctx, p) : qattn_cpu_forward(ctx, p);
}

/* ---------------------------------------------------------------- INT8 pre-quantized inputs */

qattn_status qattn_forward_quantized(qattn_ctx *ctx, const qattn_params *p, const qattn_int8_inputs *qi) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    if (!p) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "params is NULL");
    if (!qi) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qi (the int8 inputs) is NULL");
    if (ctx->backend != QATTN_BACKEND_CPU)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_forward_quantized runs on the CPU backend only in this build");
    qattn_params pc = *p;
    pc.q = qi->q.data, pc.k = qi->k.data, pc.v = qi->v.data;
    pc.q_batch_stride = qi->q.batch_stride, pc.q_seq_stride = qi->q.seq_stride, pc.q_head_stride = qi->q.head_stride;
    pc.k_batch_stride = qi->k.batch_stride, pc.k_seq_stride = qi->k.seq_stride, pc.k_head_stride = qi->k.head_stride;
    pc.v_batch_stride = qi->v.batch_stride, pc.v_seq_stride = qi->v.seq_stride, pc.v_head_stride = qi->v.head_stride;
    pc.qkv_dtype = QATTN_DTYPE_F32; /* element strides are dtype-independent; validation only */
    pc.precision = QATTN_PRECISION_INT8;
    qattn_status s = qattn_validate(ctx, &pc, true);
    if (s == QATTN_OK) s = qattn_check_params_disjoint(ctx, &pc, 1); /* int8 codes: one byte each */
    if (s != QATTN_OK || pc.batch == 0) return s;
    qattn_lowp_cfg cfg;
    qattn_lowp_scheme_cfg(p->int8_scheme, &cfg);
    s = qattn_check_int8_inputs(ctx, &pc, qi, cfg.p_mode);
    if (s != QATTN_OK) return s;
    return qattn_lowp_run_quantized(ctx, &pc, qi, cfg.p_mode, NULL, NULL, p->workspace, p->workspace_size);
}

/* ---------------------------------------------------------------- INT8 calibration */

qattn_status qattn_calibrate(qattn_ctx *ctx, const qattn_params *p, qattn_calibration *cal) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    if (!p) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "params is NULL");
    if (ctx->backend != QATTN_BACKEND_CPU)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "qattn_calibrate runs on the CPU backend (host pointers) only");
    if (!p->q || !p->k || !p->v) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_calibrate: %s is NULL", !p->q ? "q" : !p->k ? "k" : "v");
    qattn_params pc = *p; /* o and lse are not read: give validation a valid stand-in */
    static float dummy[1];
    pc.o = dummy, pc.lse = NULL, pc.o_dtype = QATTN_DTYPE_F32, pc.workspace = NULL, pc.workspace_size = 0;
    pc.o_head_stride = pc.head_dim, pc.o_seq_stride = (int64_t)pc.n_heads * pc.head_dim, pc.o_batch_stride = pc.seqlen_q * pc.o_seq_stride;
    qattn_status s = qattn_validate(ctx, &pc, true);
    if (s == QATTN_OK) s = qattn_check_calibration(ctx, cal, pc.n_kv_heads, pc.head_dim, QATTN_CAL_STATS);
    if (s != QATTN_OK) return s;
    return qattn_calib_accumulate(ctx, &pc, cal);
}

qattn_status qattn_forward_calibrated(qattn_ctx *ctx, const qattn_params *p, const qattn_calibration *cal) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = begin(ctx, p);
    if (s == QATTN_OK) s = qattn_check_params_disjoint(ctx, p, qattn_dtype_bytes(p->qkv_dtype));
    if (s != QATTN_OK) return s;
    if (p->precision != QATTN_PRECISION_INT8 || p->int8_scheme != QATTN_INT8_DEFAULT)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                          "qattn_forward_calibrated needs precision INT8 (%d) and int8_scheme DEFAULT (0); got precision %d, scheme %d",
                          QATTN_PRECISION_INT8, p->precision, p->int8_scheme);
    const bool device = ctx->backend == QATTN_BACKEND_CUDA;
    s = qattn_check_calibration(ctx, cal, p->n_kv_heads, p->head_dim, device ? QATTN_CAL_DEVICE : QATTN_CAL_HOST);
    if (s != QATTN_OK || p->batch == 0) return s;
#if defined(QATTN_HAVE_CUDA)
    if (device) return qattn_cuda_forward_calibrated(ctx, p, cal);
#endif
    return qattn_cpu_forward_calibrated(ctx, p, cal);
}
