/* The work-unit plan of the CPU attention drivers (src/cpu/forward.c, FP; src/cpu/forward_lowp.c,
 * INT8/INT4; src/cpu/forward_fp8.c, emulated FP8; src/kv/kv_decode.c, the KV-cache decode): how a
 * call is cut into units, how the KV axis is split, how many workers run the units, in which order
 * the pool hands them out, where the units' partials and order lie in the workspace, how the split
 * partials are merged back, and how a driver takes its workspace (the caller's or its own).
 *
 * Work unit = (sequence b, kv heads [g, g + heads), block of query positions, KV split). The rows
 * of a unit are all query heads of its kv heads at those positions, so each K/V tile is read once
 * per group (GQA). Everything here depends on the shape alone, never on the thread count, and the
 * partials of a split unit are merged in split order: results are bitwise identical for any
 * number of threads and any hand-out order. What a unit computes (packing, kernels, the rest of
 * the workspace, writing O and LSE) stays with each driver. */
#ifndef QATTN_CPU_UNITS_H
#define QATTN_CPU_UNITS_H

#include "qattn_internal.h"

#include "core/threads.h"
#include "cpu/block_mask.h"

#define QATTN_TILE_KEYS 64          /* keys per K/V tile of the FP and INT8 drivers; their KV splits are whole tiles */
#define QATTN_SPLIT_MIN_KEYS 512    /* a KV split covers at least this many keys */
#define QATTN_SPLIT_UNITS_BELOW 32  /* split the KV axis only when there are fewer units than this */
#define QATTN_SPLIT_TARGET 64       /* ...and aim for about this many units after splitting */
/* The KV-cache decode's threshold (qattn_units_plan_decode): its units are (sequence, split), so it
 * splits below 64 listed sequences. A split costs the decode little (one merge of rows x (D + 2)
 * floats per kv head against the pages it streams), and 32 would stop splitting 32..63 sequences,
 * leaving threads idle wherever there are more threads than sequences. */
#define QATTN_SPLIT_UNITS_BELOW_DECODE 64

typedef struct qattn_units {
    int group;          /* query heads per kv head */
    int block_pos;      /* query positions per unit */
    int rows;           /* block_pos * group: rows per kv head of a unit */
    int heads;          /* kv heads per unit: 1, or all of them for decode shapes (qattn_units_plan) and the KV-cache decode */
    int head_blocks;    /* units per (sequence, query block, split): n_kv_heads / heads */
    int64_t n_qblocks;  /* query blocks per sequence, for the longest sequence */
    int64_t n_split;    /* KV splits per (b, kv heads, query block) */
    int64_t split_keys; /* keys per split (whole tiles) */
    int64_t n_units;    /* batch * head_blocks * n_qblocks * n_split */
    const qattn_bm_unit_cost *order; /* the hand-out order (qattn_units_order), NULL: index order */
} qattn_units;

/* The plan for p. A unit holds block_rows query rows (positions x group heads; one position when
 * a group has more heads). all_heads_rows > 0: when every kv head's rows of a query block total
 * at most all_heads_rows, one unit takes all kv heads (decode: it reads whole [HK, D] K/V rows,
 * contiguous, instead of one head's D values per page); 0: one kv head per unit. The KV axis is
 * split only when there are few units, into whole tiles of at least QATTN_SPLIT_MIN_KEYS keys. */
void qattn_units_plan(qattn_units *u, const qattn_params *p, int block_rows, int all_heads_rows);

/* qattn_units_plan(u, p, block_rows, 0) with the KV axis never split (n_split 1): for a driver whose
 * rows' results depend on where their key tiles start (the FP8 emulation, src/cpu/forward_fp8.c). */
void qattn_units_plan_unsplit(qattn_units *u, const qattn_params *p, int block_rows);

/* The plan of the KV-cache decode (qattn_kv_decode): one unit per (listed sequence, KV split)
 * takes every kv head and all seqlen_q new positions (one query block, u->rows = group * seqlen_q
 * rows per kv head). max_keys: the longest listed sequence. The KV axis is split as in
 * qattn_units_plan, below QATTN_SPLIT_UNITS_BELOW_DECODE units, in whole cache pages of page_keys
 * tokens, so a unit streams whole physical blocks; a split past a shorter sequence's end (or past
 * max_keys, where whole pages overshoot) is empty. */
void qattn_units_plan_decode(qattn_units *u, int64_t n_seqs, int n_heads, int n_kv_heads, int seqlen_q, int64_t max_keys, int64_t page_keys);

/* One unit: sequence b, first kv head g (the unit has u->heads of them), query block qb, KV split. */
typedef struct qattn_unit {
    int64_t b, qb, split;
    int g;
} qattn_unit;

/* Unit index -> (b, g, qb, split); the split varies fastest, so the splits of one (b, g, qb) are
 * consecutive indices and their partials adjacent. */
qattn_unit qattn_unit_of(const qattn_units *u, int64_t index);

/* The unit the pool's task t runs: t itself, or its place in the hand-out order. */
static inline int64_t qattn_units_task(const qattn_units *u, int64_t t) { return u->order ? u->order[t].unit : t; }

/* The query positions of unit un in a sequence of lq queries: the first in *i0, their count
 * returned; 0 when the block lies past the sequence's end (a shorter sequence of a varlen batch). */
int qattn_unit_positions(const qattn_units *u, const qattn_unit *un, int64_t lq, int64_t *i0);

/* Keys [*k_begin, *k_end) unit un may touch (qattn_bm_unit_key_range with the plan's split). */
void qattn_unit_key_range(const qattn_units *u, const qattn_params *p, const qattn_unit *un, const qattn_seq *s, int64_t i0, int n_pos,
                          const qattn_bm_rows *bm, int64_t *k_begin, int64_t *k_end);

/* Workers for n_tasks tasks: n_threads, at most one per task and QATTN_MAX_THREADS, at least one. */
int qattn_workers_for(int n_threads, int64_t n_tasks);

/* Whether the units are handed out in another order than their index (qattn_units_order): with a
 * block mask, and with a causal or windowed mask, where the units of one plan differ in cost
 * (causal: the last query block of a head sees all its keys, the first one tile). */
bool qattn_units_want_order(const qattn_units *u, const qattn_params *p);

/* Workspace bytes of the hand-out order (0 when qattn_units_want_order is false). */
size_t qattn_units_order_bytes(const qattn_units *u, const qattn_params *p);

/* Fills order (qattn_units_order_bytes) with the hand-out order and points u->order at it.
 * seqlens_k: per-sequence key counts when they are not p's (a KV cache), else NULL. */
void qattn_units_order(qattn_units *u, const qattn_params *p, const int32_t *seqlens_k, qattn_bm_unit_cost *order);

/* Floats of one unit's state: rows x heads x (max, sum, acc[D]). */
static inline size_t qattn_unit_state_floats(const qattn_units *u, int head_dim) {
    return (size_t)u->rows * (size_t)u->heads * (size_t)(head_dim + 2);
}

/* The state of kv head `head` (0 .. heads - 1) in one unit's state at `state`
 * (qattn_unit_state_floats): max[R], sum[R], acc[R][D] of the unit's R = rows x heads rows, head
 * h's rows from h x rows on. All heads' rows form one state, so each row of acc sits where a
 * state of R rows puts it (the decode's acc rows stay 64-byte aligned). A view of m <= rows rows.
 * Inline: the decode takes a view per (cache page, kv head). */
static inline qattn_tile_state qattn_unit_state(const qattn_units *u, float *state, int head, int head_dim) {
    int64_t all = (int64_t)u->rows * u->heads, first = (int64_t)head * u->rows;
    qattn_tile_state st = {.row_max = state + first, .row_sum = state + all + first, .acc = state + 2 * all + first * head_dim, .ld_acc = head_dim};
    return st;
}

/* Floats of the partial states of all units (one unit's state each): 0 without a split (units
 * then write their rows themselves). */
size_t qattn_units_partials_floats(const qattn_units *u, int head_dim);

/* The state of unit `index`'s kv head `head` when split: qattn_unit_state of the unit's partial. */
static inline qattn_tile_state qattn_unit_partial(const qattn_units *u, float *partials, int64_t index, int head, int head_dim) {
    return qattn_unit_state(u, partials + (size_t)index * qattn_unit_state_floats(u, head_dim), head, head_dim);
}

/* The state unit `index` accumulates kv head `head` (0 .. heads - 1) into, its m rows reset (max
 * -inf, sum 0, acc 0): the unit's partial when the KV axis is split (merged by
 * qattn_units_merge_splits once every split has run), else qattn_unit_state of the worker's own
 * state at local (qattn_unit_state_floats), which the unit then writes out itself. */
static inline qattn_tile_state qattn_unit_state_begin(const qattn_units *u, float *partials, int64_t index, float *local, int head, int m,
                                                      int head_dim) {
    qattn_tile_state st = u->n_split > 1 ? qattn_unit_partial(u, partials, index, head, head_dim) : qattn_unit_state(u, local, head, head_dim);
    qattn_state_reset(&st, m, head_dim);
    return st;
}

/* Merge task -> its unit of split 0 (the merge runs one task per (b, g, qb)). */
qattn_unit qattn_units_merge_unit(const qattn_units *u, int64_t merge_task);

/* The finished state of kv head `head` (m rows) of merge task merge_task: split 0's partial with
 * splits 1 .. n_split - 1 merged into it in split order (qattn_state_merge), so the result never
 * depends on which split finished first. */
qattn_tile_state qattn_units_merge_splits(const qattn_units *u, float *partials, int64_t merge_task, int head, int m, int head_dim);

/* Runs every unit on n_workers workers, then, when the KV axis is split, one merge task per
 * (b, g, qb): the merge starts after the last split has finished (merge_unit may be NULL for a
 * plan that never splits). */
void qattn_units_run(qattn_pool *pool, const qattn_units *u, int n_workers, qattn_task_fn run_unit, qattn_task_fn merge_unit, void *arg);

/* ---------------------------------------------------------------- workspace */

/* Bytes of the units' part of a driver's workspace: the split partials (qattn_units_partials_floats),
 * then the hand-out order (qattn_units_order_bytes), each a multiple of 64 bytes. */
size_t qattn_units_workspace_bytes(const qattn_units *u, const qattn_params *p);

/* Lays the units' part out at mem (64-byte aligned, qattn_units_workspace_bytes): fills the
 * hand-out order and points u->order at it when qattn_units_want_order (seqlens_k as for
 * qattn_units_order); returns the partials (NULL when the KV axis is not split). */
float *qattn_units_workspace(qattn_units *u, const qattn_params *p, const int32_t *seqlens_k, void *mem);

/* A driver's workspace of need bytes, in *mem: the caller's when given is not NULL (given_size
 * bytes: at least need, 64-byte aligned, else QATTN_ERR_CAPACITY / QATTN_ERR_INVALID_ARGUMENT with
 * the message), else allocated through the context's hooks (QATTN_ERR_OUT_OF_MEMORY; nothing is
 * allocated, and *mem is NULL, when need is 0). qattn_workspace_release frees what was allocated. */
qattn_status qattn_workspace_take(qattn_ctx *ctx, void *given, size_t given_size, size_t need, void **mem);
void qattn_workspace_release(qattn_ctx *ctx, void *mem, const void *given);

#endif
