/* The argument validators every layer calls downward (src/core/validate.c): qattn_validate for a
 * qattn_params, qattn_validate_decode for a qattn_decode_params against a KV cache's shape. */
#ifndef QATTN_CORE_VALIDATE_H
#define QATTN_CORE_VALIDATE_H

#include "qattn.h"

#include <stdbool.h>
#include <stdint.h>

/* Checks every field of p that every backend relies on; reads cu_seqlens only when
 * read_offsets is true (host memory). Returns the status and sets the message. */
qattn_status qattn_validate(qattn_ctx *ctx, const qattn_params *p, bool read_offsets);

/* n_heads above this is refused by both decodes. */
#define QATTN_DECODE_MAX_HEADS 4096

/* What a decode params is checked against: the cache's shape as plain numbers (the core includes
 * no KV-cache header; src/kv/kv_internal.h fills them from a cache: qattn_kv_decode_limits) and
 * what the calling decode runs. */
typedef struct qattn_decode_limits {
    const char *fn;          /* the entry point: every message starts with it */
    int32_t n_kv_heads;      /* the cache's kv heads: n_heads must be a multiple */
    int32_t head_dim;        /* the cache's head dim */
    int32_t max_seqs;        /* seq_ids must lie in 0..max_seqs-1 */
    const int64_t *seq_len;  /* [max_seqs] tokens each sequence holds (host memory) */
    int32_t max_seqlen_q;    /* seqlen_q must lie in 1..max_seqlen_q */
    int32_t n_head_dims;     /* > 0: the head dims the caller runs, head_dims[0..n_head_dims-1] */
    const int32_t *head_dims; /* (QATTN_ERR_UNSUPPORTED for any other); 0: any */
    bool check_overlap;      /* q, o and lse are views to check: the outputs overlap no input */
} qattn_decode_limits;

/* Checks dp against lim before anything else of a decode runs: the head dim (when restricted),
 * n_seqs, seqlen_q, n_heads, the dtypes, causal, window_left, scale; with n_seqs > 0 also q, o,
 * seq_ids (not NULL), every listed sequence id and its length (>= seqlen_q), and with
 * lim->check_overlap the outputs' overlap. max_len (may be NULL) receives the longest listed
 * sequence's length (0 for no sequence). Returns the status and sets the message. */
qattn_status qattn_validate_decode(qattn_ctx *ctx, const qattn_decode_params *dp, const qattn_decode_limits *lim, int64_t *max_len);

#endif
