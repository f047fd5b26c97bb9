/* An OP_KV_DECODE case made concrete (tests/ops.h): qattn_kv_decode (and, built with CUDA,
 * qattn_kv_decode_cuda) over the library's paged cache object. The inputs (K, V, q, the sequence
 * ids, the append pieces, a calibration), the cache read back (what the decode sees) and both
 * FP64 oracles are made once. The CPU targets of one ISA share a context (its thread count set
 * per target with qattn_ctx_set_threads) and a cache built on it from the same inputs (a cache
 * belongs to the context that created it), which must read back exactly what the oracle read and
 * hold the same bytes after the decodes; a CUDA target builds its cache on a CPU context and
 * decodes a device copy. Every decode runs with poisoned outputs. tests/ops.c runs it. */
#ifndef QATTN_TEST_OPS_DECODE_H
#define QATTN_TEST_OPS_DECODE_H

#include "ops.h"

/* Floats after o and after lse that a call must leave poisoned. */
#define OP_DEC_GUARD 16

typedef struct op_dec_problem {
    op_case oc;
    int B, Lq, H, HK, D;
    float *k, *v;              /* the original values, [total keys, HK, D], sequence after sequence (cu_k) */
    float *q;                  /* [B, Lq, H, D] */
    float *kd, *vd;            /* the cache read back (qattn_kv_cache_read), as k and v */
    int32_t cu_q[5], cu_k[5], ids[4];
    int64_t n_blocks;          /* the cache's capacity: the blocks the sequences need, plus 2 */
    float *cal_mem;            /* calibrated: the arrays of cal, computed once from the case's own data */
    qattn_calibration cal;
    float *o, *lse;            /* o [B, Lq, H, D], lse [B, H, Lq], each followed by OP_DEC_GUARD floats */
    size_t n_out, n_lse;
    float *rk, *rv;            /* read-back buffers, as kd and vd */
    qattn_ctx *held;           /* the context the CPU targets of one ISA share, and its cache */
    qattn_kv_cache *held_cache;
    int32_t held_isa;
    uint8_t *snap;             /* its arena and block table as built */
} op_dec_problem;

void op_dec_make(op_dec_problem *pr, const op_case *oc, uint64_t seed);
/* Releases the shared context too (after checking that the decodes left its cache's bytes as built). */
void op_dec_free(op_dec_problem *pr);
/* The context of a CPU target of isa with n_threads: the one its ISA's targets share, created
 * with its cache when the ISA changes (the previous one released), else set to n_threads. NULL
 * (reported) on failure. The problem owns it. */
qattn_ctx *op_dec_cpu_ctx(op_dec_problem *pr, int32_t isa, int32_t n_threads);
/* The FP64 oracle on the dequantized cache (o64 [B, Lq, H, D], lse64 [B, H, Lq]) and on the
 * original values (orig64, same layout as o64). */
void op_dec_oracle(const op_dec_problem *pr, double *o64, double *lse64, double *orig64);
/* One decode, outputs poisoned first: on the shared CPU context of op_dec_cpu_ctx (its cache), or,
 * built with CUDA, on a CUDA context (a cache built on a CPU context, decoded from a device copy,
 * then checked against the oracle's read-back). */
/* INT8 cache: what q's 16-bit codes may add to each LSE entry ([B, H, Lq]; derivation in ops_decode.c). */
void op_dec_q16_lse_term(const op_dec_problem *pr, double *term);
qattn_status op_dec_run_cpu(op_dec_problem *pr, qattn_ctx *ctx);
qattn_status op_dec_run_cuda(op_dec_problem *pr, qattn_ctx *cuda_ctx);
/* After a call: every output element was written and the guards after o and lse were not. */
bool op_dec_check_after(const op_dec_problem *pr, const char *label);
void op_dec_describe(const op_case *oc, uint64_t seed, char *buf, size_t len);

#endif /* QATTN_TEST_OPS_DECODE_H */
