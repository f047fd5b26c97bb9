/* An OP_FORWARD_KVCACHE case made concrete (tests/ops.h): the cache tensors, the new tokens, q, the
 * block table and the rotary tables, the cache's contents before the call and what they must be
 * after it, and the FP64 oracle over the expected cache. tests/ops.c runs it on every target;
 * tests/test_kvcache_fwd.c builds one to check the refusals against. */
#ifndef QATTN_TEST_OPS_KVCACHE_H
#define QATTN_TEST_OPS_KVCACHE_H

#include "ops.h"

typedef struct op_kv_problem {
    op_case oc;
    qattn_params p;
    qattn_kvcache_params kv;
    void *kc, *vc;           /* caches */
    size_t cache_bytes;      /* of each */
    void *kc_before, *vc_before, *kc_expect, *vc_expect;
    void *q, *knew, *vnew;   /* q [B, Lq, H, D], new [B, Sn, HK, D], contiguous, dtype */
    int32_t *table, cs[4];
    float *cos, *sin;
    int64_t capacity, max_blocks, n_pages, table_stride;
    float *o, *lse;          /* o [B, Lq, H, D] (the oracle's layout), lse [B, H, Lq] */
    size_t n_out, n_lse;
    float *slopes;           /* [B, H] when oc.alibi */
} op_kv_problem;

void op_kv_make(op_kv_problem *pr, const op_case *oc, uint64_t seed);
void op_kv_free(op_kv_problem *pr);
/* The cache as it was before any call. */
void op_kv_restore_cache(op_kv_problem *pr);
/* o and lse filled with NaN. */
void op_kv_poison_outputs(op_kv_problem *pr);
/* The FP64 oracle on the expected cache and the rotated queries: o64 [B, Lq, H, D], lse64 [B, H, Lq]. */
void op_kv_oracle(const op_kv_problem *pr, double *o64, double *lse64);
/* The call on a CUDA context (tests built with QATTN_TEST_CUDA): every array copied to the device,
 * the caches, o and lse copied back whole. */
qattn_status op_kv_run_cuda(op_kv_problem *pr, qattn_ctx *ctx);
/* After a call: the cache holds exactly the expected contents and every output element was written. */
bool op_kv_check_after(const op_kv_problem *pr, const double *o64, const char *label);
void op_kv_describe(const op_case *oc, uint64_t seed, char *buf, size_t len);
/* The test's own rotary: each pair in double, rounded once to float (include/qattn.h's rule). */
void op_kv_rotate(const float *cos, const float *sin, int rd, int inter, int64_t pos, float *x);

#endif /* QATTN_TEST_OPS_KVCACHE_H */
