/* Block-sparse attention (qattn_params.block_mask): the arguments the library must refuse, with a
 * status and a message that names them (block sizes not a multiple of 16, negative or overflowing
 * strides, a mask overlapping the output, reserved fields, softcap / ALiBi with a mask at INT8 and
 * FP8), through qattn_forward and qattn_supports alike. The masked results against the FP64 oracle
 * on every ISA and thread count (mask blocks of 16 to 128 against the 64-key tiles, causal and
 * windows on top, varlen, GQA with shared and per-head maps, zero rows, split-KV decode, NaN in
 * hidden blocks, FP16/BF16, softcap and ALiBi, INT8 and FP8) are cases of the op table
 * (tests/test_ops.c; tolerances in tests/ops.c). */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A valid FP32 problem the refused arguments are set on. */
static th_case refusal_case(void) {
    th_case c;
    memset(&c, 0, sizeof c);
    c.name = "refused";
    c.batch = 1, c.seqlen_q = 64, c.seqlen_k = 64;
    c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 64;
    c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F32;
    c.window_left = c.window_right = -1;
    c.with_lse = true;
    return c;
}

/* ---------------------------------------------------------------- refused arguments */

static void expect(qattn_ctx *ctx, const qattn_params *p, qattn_status want, const char *text, const char *what) {
    qattn_status s = qattn_forward(ctx, p);
    TH_CHECK(s == want, "%s: got %s, want %s (%s)", what, qattn_status_str(s), qattn_status_str(want), qattn_ctx_last_error(ctx));
    TH_CHECK(strstr(qattn_ctx_last_error(ctx), text) != NULL, "%s: message '%s' does not mention '%s'", what, qattn_ctx_last_error(ctx), text);
    s = qattn_supports(ctx, p);
    TH_CHECK(s == want, "%s: qattn_supports says %s, want %s", what, qattn_status_str(s), qattn_status_str(want));
}

static void test_refused(void) {
    printf("  refused arguments\n");
    th_case c = refusal_case();
    c.seed = th_derive_seed(999);
    th_problem pr;
    th_problem_make(&pr, &c);
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
    uint8_t bytes[64];
    memset(bytes, 1, sizeof bytes);
    qattn_params p = pr.p;
    p.block_mask = bytes, p.block_mask_q = 16, p.block_mask_k = 16;
    p.block_mask_row_stride = 4, p.block_mask_head_stride = 16;
    TH_CHECK(qattn_forward(ctx, &p) == QATTN_OK, "a valid mask: %s", qattn_ctx_last_error(ctx));
    qattn_params bad = p;
    bad.block_mask_q = 8;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "multiple of 16", "block_mask_q 8");
    bad = p, bad.block_mask_k = 0;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "multiple of 16", "block_mask_k 0");
    bad = p, bad.block_mask_k = 40;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "multiple of 16", "block_mask_k 40");
    bad = p, bad.block_mask_head_stride = -1;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, ">= 0", "negative head stride");
    bad = p, bad.block_mask_row_stride = INT64_MAX / 2;
    expect(ctx, &bad, QATTN_ERR_OVERFLOW, "block mask", "row stride overflowing the index");
    bad = p, bad.reserved0 = 1;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "reserved0", "reserved0 1");
    /* the mask inside the output: refused like any input overlapping an output */
    bad = p, bad.block_mask = (const uint8_t *)pr.p.o + 8;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "block_mask", "mask overlapping o");
    /* the block mask of the low-precision paths goes through the same validation */
    bad = p, bad.precision = QATTN_PRECISION_INT8, bad.block_mask_q = 24;
    expect(ctx, &bad, QATTN_ERR_INVALID_ARGUMENT, "multiple of 16", "INT8 with block_mask_q 24");
    /* softcap / ALiBi with a mask run on the FP paths (tests/test_ops.c); INT8 and FP8 refuse them */
    float slopes[2] = {0.25f, 0.5f};
    bad = p, bad.precision = QATTN_PRECISION_INT8, bad.softcap = 10.0f;
    expect(ctx, &bad, QATTN_ERR_UNSUPPORTED, "softcap", "INT8 with a block mask and softcap");
    bad = p, bad.precision = QATTN_PRECISION_FP8_E4M3, bad.alibi_slopes = slopes;
    expect(ctx, &bad, QATTN_ERR_UNSUPPORTED, "alibi_slopes", "FP8 with a block mask and ALiBi");
    qattn_ctx_destroy(ctx);
    th_problem_free(&pr);
}

int main(void) {
    th_init("test_blocksparse");
    test_refused();
    return th_finish();
}
