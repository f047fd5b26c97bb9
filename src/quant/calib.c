/* INT8 calibration (qattn_calibrate): running per-(kv head, channel) statistics of sample Q, K, V
 * and the power-of-two Q/K factors derived from them, the static form of what the default
 * scheme's quantization pass computes per call (src/quant/quant.c, docs/FORMAT.md section 7).
 * Arguments are validated by src/api.c (with qattn_check_calibration, here for the KV cache too). */
#include "quant/lowp.h"

/* Factors powers of two within 2^-32 .. 2^32 (so Q times f and K over f are exact), means finite. */
qattn_status qattn_check_calibration(qattn_ctx *ctx, const qattn_calibration *cal, int32_t kv_heads, int32_t head_dim, qattn_cal_use use) {
    if (!cal) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "cal (the calibration) is NULL");
    if (cal->n_kv_heads != kv_heads || cal->head_dim != head_dim)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "calibration is for %d kv heads of dim %d; the call has %d of dim %d",
                          cal->n_kv_heads, cal->head_dim, kv_heads, head_dim);
    if (cal->tokens < 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "calibration tokens is %lld", (long long)cal->tokens);
    const float *arr[6] = {cal->k_factor, cal->k_mean, cal->v_mean, cal->q_absmax, cal->k_min, cal->k_max};
    static const char *name[6] = {"k_factor", "k_mean", "v_mean", "q_absmax", "k_min", "k_max"};
    for (int i = 0; i < (use == QATTN_CAL_STATS ? 6 : 3); i++)
        if (!arr[i]) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "calibration %s is NULL", name[i]);
    /* qattn_calibrate overwrites the factors and the statistics are its own; device arrays are not
     * readable here (the CUDA kernels turn a bad factor into NaN outputs, qattn.h) */
    if (use != QATTN_CAL_HOST) return QATTN_OK;
    int64_t n = (int64_t)cal->n_kv_heads * cal->head_dim;
    for (int64_t i = 0; i < n; i++) {
        float f = cal->k_factor[i];
        int e;
        if (!(f >= 0x1p-32f && f <= 0x1p32f) || frexpf(f, &e) != 0.5f)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "calibration k_factor[%lld] is %g; factors are powers of two in 2^-32 .. 2^32",
                              (long long)i, (double)f);
        if (!isfinite(cal->k_mean[i]) || !isfinite(cal->v_mean[i]))
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "calibration %s[%lld] is %g; means must be finite",
                              isfinite(cal->k_mean[i]) ? "v_mean" : "k_mean", (long long)i,
                              (double)(isfinite(cal->k_mean[i]) ? cal->v_mean[i] : cal->k_mean[i]));
    }
    return QATTN_OK;
}

/* The first non-finite element of tensor `which` (0 when all are finite), as 1 + its index in
 * (sequence, position, head, channel) order, and its coordinates. */
typedef struct bad_at {
    int64_t b, pos, head, c;
    bool found;
} bad_at;

static void note_bad(bad_at *w, int64_t b, int64_t pos, int64_t h, int64_t c) {
    if (!w->found) *w = (bad_at){b, pos, h, c, true};
}

qattn_status qattn_calib_accumulate(qattn_ctx *ctx, const qattn_params *p, qattn_calibration *cal) {
    int64_t H = p->n_heads, HK = p->n_kv_heads, D = p->head_dim, group = H / HK, n = HK * D;
    /* new statistics into scratch first: cal changes only when every sample is finite */
    size_t bytes = (size_t)n * (2 * sizeof(double) + 3 * sizeof(float));
    unsigned char *mem = qattn_alloc(ctx, bytes);
    if (!mem) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_calibrate: cannot allocate %zu bytes", bytes);
    double *ksum = (double *)(void *)mem, *vsum = ksum + n;
    float *qa = (float *)(void *)(vsum + n), *kmn = qa + n, *kmx = kmn + n;
    for (int64_t i = 0; i < n; i++) ksum[i] = vsum[i] = 0.0, qa[i] = 0.0f, kmn[i] = INFINITY, kmx[i] = -INFINITY;
    int64_t tokens = 0;
    bad_at bq = {0}, bk = {0}, bv = {0};
    for (int64_t b = 0; b < p->batch; b++) {
        qattn_seq s = qattn_seq_view(p, b);
        for (int64_t i = 0; i < s.lq; i++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t c = 0; c < D; c++) {
                    float x = qattn_load(p->q, p->qkv_dtype, s.q_off + i * p->q_seq_stride + h * p->q_head_stride + c);
                    if (!isfinite(x)) note_bad(&bq, b, i, h, c);
                    float a = fabsf(x);
                    float *slot = qa + (h / group) * D + c;
                    *slot = a > *slot ? a : *slot;
                }
        /* K and V: per channel, positions ascending (double sums), as the per-call statistics */
        for (int64_t i = 0; i < s.lk; i++)
            for (int64_t g = 0; g < HK; g++)
                for (int64_t c = 0; c < D; c++) {
                    float x = qattn_load(p->k, p->qkv_dtype, s.k_off + i * p->k_seq_stride + g * p->k_head_stride + c);
                    float y = qattn_load(p->v, p->qkv_dtype, s.v_off + i * p->v_seq_stride + g * p->v_head_stride + c);
                    if (!isfinite(x)) note_bad(&bk, b, i, g, c);
                    if (!isfinite(y)) note_bad(&bv, b, i, g, c);
                    int64_t j = g * D + c;
                    ksum[j] += x, vsum[j] += y;
                    kmn[j] = x < kmn[j] ? x : kmn[j];
                    kmx[j] = x > kmx[j] ? x : kmx[j];
                }
        tokens += s.lk;
    }
    const bad_at *bad = bq.found ? &bq : bk.found ? &bk : bv.found ? &bv : NULL;
    if (bad) {
        qattn_free(ctx, mem);
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                          "qattn_calibrate: %s has a non-finite value at (sequence %lld, position %lld, head %lld, channel %lld)",
                          bad == &bq ? "q" : bad == &bk ? "k" : "v", (long long)bad->b, (long long)bad->pos, (long long)bad->head,
                          (long long)bad->c);
    }
    int64_t old = cal->tokens, total = old + tokens;
    for (int64_t j = 0; j < n; j++) {
        bool first = old == 0;
        if (total > 0) { /* mean = (old mean * old count + new sum) / total, in double */
            cal->k_mean[j] = (float)(((first ? 0.0 : (double)cal->k_mean[j] * (double)old) + ksum[j]) / (double)total);
            cal->v_mean[j] = (float)(((first ? 0.0 : (double)cal->v_mean[j] * (double)old) + vsum[j]) / (double)total);
        } else
            cal->k_mean[j] = cal->v_mean[j] = 0.0f;
        float oq = first ? 0.0f : cal->q_absmax[j];
        cal->q_absmax[j] = qa[j] > oq ? qa[j] : oq;
        float omn = first ? INFINITY : cal->k_min[j], omx = first ? -INFINITY : cal->k_max[j];
        cal->k_min[j] = kmn[j] < omn ? kmn[j] : omn;
        cal->k_max[j] = kmx[j] > omx ? kmx[j] : omx;
        /* the factor as the per-call pass forms it (qattn_quantize_qk_smoothed) */
        float mu = cal->k_mean[j], hi = cal->k_max[j] - mu, lo = mu - cal->k_min[j];
        float ka = hi > lo ? hi : lo;
        if (!(ka > 0.0f)) ka = 0.0f;
        cal->k_factor[j] = ldexpf(1.0f, qattn_qk_smooth_exp(cal->q_absmax[j], ka, QATTN_QK_SMOOTH_MAX_EXP, 0));
    }
    cal->tokens = total;
    qattn_free(ctx, mem);
    return QATTN_OK;
}
