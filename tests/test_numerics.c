/* Numerical edge cases of qattn_forward that are not one (case x target) oracle check. The rest
 * (fully masked rows, NaN/Inf propagation, huge scores, all-zero Q, explicit scales, constant rows)
 * are the numerics section of the op table (tests/test_ops.c), each with its property checked on
 * every target. Here: scale 0 means 1/sqrt(D), bitwise the same result as passing 1/sqrtf(D), and
 * another scale changes the result (the field is read at all): a comparison of calls with each
 * other, not with the oracle. */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_default_scale(void) {
    th_case c;
    memset(&c, 0, sizeof c);
    c.name = "scale-default";
    c.batch = 1, c.seqlen_q = 17, c.seqlen_k = 113;
    c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 80;
    c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F32;
    c.window_left = c.window_right = -1;
    c.with_lse = true;
    c.seed = th_derive_seed(0);
    char desc[1024];
    th_describe(&c, desc, sizeof desc);
    if (!th_selected(desc)) return;
    printf("  %s\n", desc);
    th_set_context(desc);
    th_problem pr;
    th_problem_make(&pr, &c);
    size_t bytes = pr.o.elems * sizeof(float);
    float *first = th_xmalloc(bytes);
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 1);
    if (ctx) {
        pr.p.scale = 0.0f;
        TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "forward with scale 0");
        memcpy(first, pr.o.buf, bytes);
        pr.p.scale = 1.0f / sqrtf(80.0f);
        TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "forward with scale 1/sqrt(80)");
        TH_CHECK(memcmp(first, pr.o.buf, bytes) == 0, "scale 0 and scale 1/sqrtf(D) give different outputs");
        /* and a different scale gives a different result (the field is read at all) */
        pr.p.scale = 1.0f;
        TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "forward with scale 1");
        TH_CHECK(memcmp(first, pr.o.buf, bytes) != 0, "scale 1 gives the same output as scale 1/sqrt(D)");
    }
    qattn_ctx_destroy(ctx);
    free(first);
    th_problem_free(&pr);
    th_set_context(NULL);
}

int main(void) {
    th_init("test_numerics");
    test_default_scale();
    return th_finish();
}
