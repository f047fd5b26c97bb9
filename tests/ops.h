/* The op table's vocabulary (tests/test_ops.c holds the table, tests/ops.c runs it).
 *
 * A case is one call described completely. Its kind says which: qattn_forward (the harness's
 * th_case: shape, dtypes, precision, masks, layout, plus what th_case does not know: INT8 scheme,
 * input distribution, softcap, ALiBi slopes, a block mask, a caller workspace),
 * qattn_forward_kvcache (th_case's shape and dtype plus the cache: pages, cached lengths, new
 * tokens, rotary; tests/ops_kvcache.c) or qattn_kv_decode over the cache object (th_case's shape
 * and masks plus the cache: storage dtype, block size, sequence lengths, a calibration;
 * tests/ops_decode.c). All carry the thread counts they run with.
 * A target is one way to run it: a CPU context of one ISA and thread count, or a CUDA context of
 * one kernel choice. The runner makes the case's inputs once, computes the FP64 oracle and the
 * case's tolerance once, then runs every target with poisoned outputs and checks every output
 * element written, the error against the oracle, what the kind adds (the cache after the append;
 * the decode's cache and its second oracle, on the original values), and the cross-target
 * invariants (bitwise identity across thread counts on one ISA; INT8 and INT4 bitwise identity
 * across ISAs; the INT8-cache decode's across the SIMD ISAs). */
#ifndef QATTN_TEST_OPS_H
#define QATTN_TEST_OPS_H

#include "harness.h"

/* ---------------------------------------------------------------- cases */

/* How q, k, v are drawn: N(0, 1) unless named (the INT8 tests' stress inputs). */
typedef enum op_dist {
    OP_DIST_NORMAL = 0,
    OP_DIST_UNIFORM, /* U[0, 1): all-positive scores, flat softmax */
    OP_DIST_OUTLIER, /* K channels c % 32 == 3 x20 + 15: rotary keys' offset outliers */
    OP_DIST_SINK,    /* token 0 of every K sequence aligned with all queries: an attention sink */
    OP_DIST_SPREAD,  /* zero-mean outliers: K x10, Q x2 in channels c % 32 == 7 */
    OP_DIST_HEADS,   /* heads of mixed scale: Q x0.3..3 per head, K x0.3..3 and V x0.01..100 per kv head */
    OP_DIST_OUTLIER12, /* K channels c % 32 == 5 x12 + 10 (the accuracy tool's outlier input) */
} op_dist;

/* A random block mask ([B, H, nq, nk] bytes, qattn.h "Block-sparse attention"). */
typedef struct op_mask {
    int bq, bk;        /* 0: no mask */
    double density;    /* probability that a (query block, key block) pair is computed */
    bool share_heads;  /* head stride 0: one map for every head */
    bool share_batch;  /* batch stride 0 */
    bool zero_rows;    /* every third (head, query block) row all zero */
    int pad;           /* row stride nk + pad (the padding bytes are never read) */
    bool nan_dead;     /* key block 1 hidden everywhere, its K and V NaN */
} op_mask;

/* Thread counts a case runs with on every CPU ISA (a bit per count: 1..3, and 8, more workers
 * than this machine's cores, which only the decode cases name). */
#define OP_T1 (1u << 1)
#define OP_T2 (1u << 2)
#define OP_T3 (1u << 3)
#define OP_T8 (1u << 8)
#define OP_T123 (OP_T1 | OP_T2 | OP_T3)

/* Which call a case makes. */
typedef enum op_kind {
    OP_FORWARD = 0,     /* qattn_forward */
    OP_FORWARD_KVCACHE, /* qattn_forward_kvcache: append to a caller's cache, then attend over it */
    OP_KV_DECODE,       /* qattn_kv_decode over a qattn_kv_cache (CUDA targets: qattn_kv_decode_cuda) */
} op_kind;

/* The cache of an OP_FORWARD_KVCACHE case (tests/ops_kvcache.c makes it). th_case gives the
 * batch, seqlen_q (queries per sequence), heads, head_dim, qkv_dtype (of q, the caches and the new
 * tokens), causal, the window and qo_bhld (q only: o is FP32 [B, Lq, H, D], with LSE); of op_case's
 * own fields, softcap, alibi and threads apply. */
typedef struct op_kvcache {
    int seqlen_new;            /* new tokens appended to every sequence */
    int page;                  /* tokens per page; 0: a contiguous cache */
    int32_t cache_seqlens[4];  /* tokens cached before the call, per sequence */
    int rotary_dim;            /* 0: no rotary */
    int rotary_interleaved;
} op_kvcache;

/* The cache of an OP_KV_DECODE case (tests/ops_decode.c makes it). th_case gives the batch (the
 * listed sequences, at most 4), seqlen_q (queries per sequence, the last tokens of each), heads,
 * head_dim, causal and window_left; q and o are FP32 [B, Lq, H, D], with LSE. */
typedef struct op_decode {
    int32_t cache_dtype; /* storage: QATTN_DTYPE_F16, BF16 or I8 */
    bool calibrated;     /* INT8: qattn_kv_cache_set_calibration from the case's own data */
    int block;           /* tokens per cache block */
    int32_t lens[4];     /* tokens of each sequence (>= seqlen_q) */
} op_decode;

/* One input element set after the draw: a NaN or an Inf where a numerics case wants it. */
typedef struct op_poke {
    char tensor; /* 'q', 'k' or 'v'; 0: no poke */
    int64_t b, pos, head, c;
    float value;
} op_poke;

struct op_case;
/* A property of one run's output that the oracle comparison does not pin down (exact zeros, which
 * rows are NaN, ...): out is o in the oracle's layout [rows, H, D], the LSE is pr->lse. It reports
 * through TH_CHECK, naming the target (label). */
typedef void (*op_property)(const struct op_case *oc, const th_problem *pr, const float *out, const char *label);

typedef struct op_case {
    op_kind kind;
    th_case c;
    int32_t int8_scheme; /* qattn_int8_scheme, with precision INT8 */
    op_dist dist;
    float softcap;       /* 0: off */
    int alibi;           /* 0: none, 1: slopes [H], 2: slopes [B, H] rows H + 3 apart (OP_FORWARD_KVCACHE: H apart) */
    op_mask mask;
    bool user_workspace; /* a caller workspace of exactly qattn_workspace_size bytes (and one short: refused) */
    unsigned threads;    /* OP_T* */
    op_kvcache kv;       /* OP_FORWARD_KVCACHE */
    op_decode dec;       /* OP_KV_DECODE */
    /* Edge cases (OP_FORWARD, tests/test_ops.c's numerics section): inputs edited after the draw, a
     * property checked on every run after the oracle comparison, a bound of the case's own. */
    op_poke poke[2];
    void (*edit)(th_problem *pr);    /* edits of the drawn inputs other than pokes; NULL: none */
    op_property property;            /* NULL: none */
    int64_t empty_rows_from, empty_rows_to; /* the property's rows that see no key, [from, to) of every sequence */
    size_t nonfinite_rows;           /* the property's count of non-finite (row, head) outputs */
    double rel_l2_bound;             /* 0: the bound of the case's precision (tests/ops.c); else this, derived beside the case */
} op_case;

/* ---------------------------------------------------------------- targets */

typedef struct op_target {
    char name[24];
    int32_t backend; /* QATTN_BACKEND_CPU or QATTN_BACKEND_CUDA */
    int32_t isa, n_threads;
    int32_t cuda_kernels;
} op_target;

#define OP_MAX_TARGETS (TH_MAX_ISAS * 4 + 2)
/* Every target this machine has: each CPU ISA tier x 1, 2, 3, 8 threads, then (when the tests were
 * built with CUDA and a device is visible) the CUDA backend with each cuda_kernels choice. */
int op_targets(op_target targets[OP_MAX_TARGETS]);

#if defined(QATTN_TEST_CUDA)
/* A device copy of a host buffer: NULL for NULL, or when cudaMalloc fails (the call then reports it). */
void *op_to_device(const void *host, size_t bytes);
#endif

/* ---------------------------------------------------------------- the runner */

/* Runs case `index` of the table (its seed is th_derive_seed(index)) on every target. */
void op_run_case(const op_case *oc, int index, const op_target *targets, int n_targets);
/* Prints how many cases ran on each target and how many a target did not support. */
void op_print_summary(const op_target *targets, int n_targets);

#endif /* QATTN_TEST_OPS_H */
