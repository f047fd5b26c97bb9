/* The FP64 oracle: naive attention in double precision, one query row at a time.
 * It shares nothing with the fast paths but the mask geometry (qattn_key_range and the block
 * mask's byte lookup, qattn_block_mask_allows), so it can judge them. Memory: one row of Lk
 * scores. */
#include "qattn_internal.h"

#include <stdlib.h>

/* Softcap, then ALiBi (the header's order), in FP64 with libm's tanh. */
static double modified_score(const qattn_params *p, double score, double slope, int64_t i, int64_t j, const qattn_seq *s) {
    if (p->softcap > 0.0f) score = (double)p->softcap * tanh(score / (double)p->softcap);
    if (p->alibi_slopes) score -= slope * fabs((double)(i + s->lk - s->lq - j));
    return score;
}

static void oracle_row(const qattn_params *p, const qattn_seq *s, int64_t b, int64_t i, int h, double scale, double *scores,
                       double *o64, double *lse64) {
    int D = p->head_dim;
    int g = h / (p->n_heads / p->n_kv_heads);
    int64_t lo, hi;
    qattn_key_range(i, s->lq, s->lk, p->window_left, qattn_window_right(p), &lo, &hi);
    for (int d = 0; d < D; d++) o64[d] = 0.0;
    int64_t qb = s->q_off + i * p->q_seq_stride + (int64_t)h * p->q_head_stride;
    double mx = -INFINITY;
    double slope = p->alibi_slopes ? (double)p->alibi_slopes[b * p->alibi_batch_stride + h] : 0.0;
    bool any = false; /* a key survived both masks */
    for (int64_t j = lo; j < hi; j++) {
        if (!qattn_block_mask_allows(p, b, h, i, j)) continue;
        int64_t kb = s->k_off + j * p->k_seq_stride + (int64_t)g * p->k_head_stride;
        double dot = 0.0;
        for (int d = 0; d < D; d++)
            dot += (double)qattn_load(p->q, p->qkv_dtype, qb + d) * (double)qattn_load(p->k, p->qkv_dtype, kb + d);
        scores[j - lo] = modified_score(p, dot * scale, slope, i, j, s);
        if (scores[j - lo] > mx) mx = scores[j - lo];
        any = true;
    }
    if (!any) { /* no visible key: zero row, LSE -inf */
        if (lse64) *lse64 = -INFINITY;
        return;
    }
    double sum = 0.0;
    for (int64_t j = lo; j < hi; j++) {
        if (!qattn_block_mask_allows(p, b, h, i, j)) continue;
        double e = exp(scores[j - lo] - mx);
        sum += e;
        int64_t vb = s->v_off + j * p->v_seq_stride + (int64_t)g * p->v_head_stride;
        for (int d = 0; d < D; d++) o64[d] += e * (double)qattn_load(p->v, p->qkv_dtype, vb + d);
    }
    for (int d = 0; d < D; d++) o64[d] /= sum;
    if (lse64) *lse64 = mx + log(sum);
}

qattn_status qattn_oracle_f64(qattn_ctx *ctx, const qattn_params *p, double *o64, double *lse64) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    ctx->last_error[0] = '\0';
    qattn_status st = qattn_validate(ctx, p, true);
    if (st != QATTN_OK) return st;
    if (p->batch == 0) return QATTN_OK;
    if (!o64) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "o64 is NULL");
    int64_t max_lk = p->seqlen_k > 0 ? p->seqlen_k : 1;
    double *scores = malloc((size_t)max_lk * sizeof *scores);
    if (!scores) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "oracle: cannot allocate %lld scores", (long long)max_lk);
    double scale = (double)qattn_effective_scale(p);
    int H = p->n_heads, D = p->head_dim;
    int64_t row = 0; /* packed query row of the output */
    for (int64_t b = 0; b < p->batch; b++) {
        qattn_seq s = qattn_seq_view(p, b);
        for (int64_t i = 0; i < s.lq; i++, row++)
            for (int h = 0; h < H; h++) {
                double *lse = lse64 ? &lse64[s.lse_off + (int64_t)h * s.lse_head_stride + i] : NULL;
                oracle_row(p, &s, b, i, h, scale, scores, &o64[(row * H + h) * D], lse);
            }
    }
    free(scores);
    return QATTN_OK;
}
