/* Rotary position embedding (RoPE) with FlashAttention's conventions: the table checks, one row's
 * rotation, and qattn_rotary_apply. Scalar C on purpose: keys rotated here are stored in caches
 * and compared bit for bit, so the rounding must not depend on the ISA (each pair is computed in
 * double, where the products of floats are exact, and rounded once to float). */
#include "kv/kv_internal.h"

qattn_status qattn_rotary_check(qattn_ctx *ctx, const char *fn, const qattn_rotary *r, int32_t head_dim) {
    if (!r->cos || !r->sin) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: rotary_%s is NULL (give both cos and sin)", fn, !r->cos ? "cos" : "sin");
    if (r->dim < 2 || r->dim % 2 != 0 || r->dim > head_dim)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: rotary_dim is %d; it must be even and 2..head_dim (%d)", fn, r->dim, head_dim);
    if (r->interleaved != 0 && r->interleaved != 1)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: rotary_interleaved is %d; it must be 0 or 1", fn, r->interleaved);
    int64_t entries;
    if (r->len < 1 || !qattn_mul_i64(r->len, r->dim / 2, &entries) || entries > INT64_MAX / 4)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: rotary_len is %lld; it must be >= 1 (and len * rotary_dim / 2 floats addressable)",
                          fn, (long long)r->len);
    return QATTN_OK;
}

qattn_status qattn_rotary_check_positions(qattn_ctx *ctx, const char *fn, const qattn_rotary *r, const char *what, int64_t first, int64_t n) {
    if (first < 0 || first > r->len - n) /* no first + n: it may overflow */
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: %s need rotary positions %lld..%lld, but the cos/sin tables have %lld rows", fn, what,
                          (long long)first, (long long)first + (n - 1), (long long)r->len);
    return QATTN_OK;
}

void qattn_rotary_row(const qattn_rotary *r, int64_t pos, float *x) {
    int half = r->dim / 2;
    const float *cs = r->cos + pos * half, *sn = r->sin + pos * half;
    for (int c = 0; c < half; c++) {
        int i0 = r->interleaved ? 2 * c : c, i1 = r->interleaved ? 2 * c + 1 : c + half;
        double a = x[i0], b = x[i1], co = cs[c], si = sn[c];
        x[i0] = (float)(a * co - b * si);
        x[i1] = (float)(a * si + b * co);
    }
}

qattn_status qattn_rotary_apply(qattn_ctx *ctx, void *x, int32_t dtype, int64_t n_tokens, int32_t n_heads, int32_t head_dim, int64_t position,
                                const float *cos, const float *sin, int64_t rotary_len, int32_t rotary_dim, int32_t interleaved) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    const char *fn = "qattn_rotary_apply";
    if (ctx->backend != QATTN_BACKEND_CPU) return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s runs on the CPU backend (host memory) only", fn);
    if (dtype != QATTN_DTYPE_F32 && dtype != QATTN_DTYPE_F16 && dtype != QATTN_DTYPE_BF16)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: dtype %d is not f32, f16 or bf16", fn, dtype);
    if (n_tokens < 0 || n_heads < 1 || head_dim < 1 || head_dim > 256)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: n_tokens %lld, n_heads %d, head_dim %d: expected n_tokens >= 0, n_heads >= 1, head_dim 1..256",
                          fn, (long long)n_tokens, n_heads, head_dim);
    qattn_rotary r = {cos, sin, rotary_len, rotary_dim, interleaved};
    qattn_status s = qattn_rotary_check(ctx, fn, &r, head_dim);
    if (s != QATTN_OK || n_tokens == 0) return s;
    if (!x) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: x is NULL", fn);
    int64_t elems;
    if (!qattn_mul_i64(n_tokens, (int64_t)n_heads * head_dim, &elems) || elems > INT64_MAX / 4)
        return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "%s: %lld tokens x %d heads x %d overflows", fn, (long long)n_tokens, n_heads, head_dim);
    s = qattn_rotary_check_positions(ctx, fn, &r, "the tokens", position, n_tokens);
    if (s != QATTN_OK) return s;
    float row[256];
    for (int64_t t = 0; t < n_tokens; t++)
        for (int32_t h = 0; h < n_heads; h++) {
            int64_t base = (t * n_heads + h) * head_dim;
            for (int c = 0; c < rotary_dim; c++) row[c] = qattn_load(x, dtype, base + c);
            qattn_rotary_row(&r, position + t, row);
            for (int c = 0; c < rotary_dim; c++) qattn_store(x, dtype, base + c, row[c]);
        }
    return QATTN_OK;
}
