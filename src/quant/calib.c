/* INT8 calibration (qattn_calibrate): running per-(kv head, channel) statistics of sample Q, K, V
 * and the power-of-two Q/K factors derived from them, the static form of what the default
 * scheme's quantization pass computes per call (src/quant/quant.c, docs/FORMAT.md section 7).
 * Arguments are validated by src/api.c. */
#include "quant/lowp.h"

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
