/* Softcap and ALiBi (qattn_params.softcap, alibi_slopes, alibi_batch_stride): the values the
 * library must refuse, with a status and a message and never a crash (NaN slopes, negative,
 * infinite or NaN softcaps, a slope stride below H, the modifiers at INT8 and FP8), and with a
 * block mask: accepted on FP32, refused at INT8. The modifiers' values against the FP64 oracle on
 * every ISA and thread count (causal and not, Lq != Lk, one query, GQA, varlen with an empty
 * sequence, head_dim 64 to 256, slopes [H] and [B, H], FP16/BF16) are cases of the op table
 * (tests/test_ops.c; tolerances in tests/ops.c). */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A valid FP32 problem the refused values are set on. */
static th_case refusal_case(void) {
    th_case c;
    memset(&c, 0, sizeof c);
    c.name = "refuse";
    c.batch = 2, c.seqlen_q = 8, c.seqlen_k = 8;
    c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 64;
    c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F32;
    c.window_left = c.window_right = -1;
    c.with_lse = true;
    return c;
}

/* Bad values: a status and a message, never a crash; the low-precision paths refuse the modifiers. */
static void test_refusals(void) {
    th_set_context("refusals");
    th_case c = refusal_case();
    th_problem pr;
    if (!th_problem_make(&pr, &c)) return;
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
    if (!ctx) return;
    float slopes[8] = {0.5f, 0.25f, NAN, 0.0625f, 1, 1, 1, 1};
    struct {
        const char *what;
        float softcap;
        const float *slopes;
        int64_t stride;
        int32_t precision;
        qattn_status want;
    } bad[] = {
        {"NaN slope", 0.0f, slopes, 0, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"negative softcap", -1.0f, NULL, 0, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"infinite softcap", INFINITY, NULL, 0, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"NaN softcap", NAN, NULL, 0, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"stride < H", 0.0f, slopes + 4, 3, QATTN_PRECISION_AUTO, QATTN_ERR_INVALID_ARGUMENT},
        {"softcap at INT8", 5.0f, NULL, 0, QATTN_PRECISION_INT8, QATTN_ERR_UNSUPPORTED},
        {"alibi at FP8", 0.0f, slopes + 4, 0, QATTN_PRECISION_FP8_E4M3, QATTN_ERR_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qattn_params p = pr.p;
        p.softcap = bad[i].softcap, p.alibi_slopes = bad[i].slopes, p.alibi_batch_stride = bad[i].stride, p.precision = bad[i].precision;
        qattn_status s = qattn_forward(ctx, &p);
        TH_CHECK(s == bad[i].want, "%s: qattn_forward gave %s (%s), expected %s", bad[i].what, qattn_status_str(s), qattn_ctx_last_error(ctx),
                 qattn_status_str(bad[i].want));
        TH_CHECK(strlen(qattn_ctx_last_error(ctx)) > 0, "%s: no message", bad[i].what);
        qattn_status sup = qattn_supports(ctx, &p);
        TH_CHECK(sup == bad[i].want, "%s: qattn_supports gave %s, expected %s", bad[i].what, qattn_status_str(sup), qattn_status_str(bad[i].want));
        double o64[2 * 8 * 4 * 64];
        if (bad[i].want == QATTN_ERR_INVALID_ARGUMENT)
            TH_CHECK(qattn_oracle_f64(ctx, &p, o64, NULL) == bad[i].want, "%s: the oracle accepted it", bad[i].what);
    }
    /* with a block mask (one all-ones row shared by every row, head and sequence): softcap and ALiBi
     * run on FP32 (tests/test_ops.c checks the values) and are refused at INT8 */
    qattn_params p = pr.p;
    static uint8_t map[256];
    memset(map, 1, sizeof map);
    static const float mask_slopes[64] = {0.25f, 0.5f, 0.125f, 0.0625f, 0.25f, 0.5f, 0.125f, 0.0625f};
    p.block_mask = map, p.block_mask_q = 16, p.block_mask_k = 16;
    p.softcap = 10.0f, p.alibi_slopes = mask_slopes, p.alibi_batch_stride = 0;
    qattn_status s = qattn_forward(ctx, &p);
    TH_CHECK(s == QATTN_OK, "softcap and ALiBi with a block mask: %s (%s)", qattn_status_str(s), qattn_ctx_last_error(ctx));
    p.precision = QATTN_PRECISION_INT8;
    s = qattn_forward(ctx, &p);
    TH_CHECK(s == QATTN_ERR_UNSUPPORTED && strstr(qattn_ctx_last_error(ctx), "not implemented for precision"),
             "INT8 with a block mask, softcap and ALiBi: %s (%s)", qattn_status_str(s), qattn_ctx_last_error(ctx));
    qattn_ctx_destroy(ctx);
    th_problem_free(&pr);
    th_set_context(NULL);
}

int main(void) {
    th_init("test_score_mods");
    test_refusals();
    return th_finish();
}
