/* The work-unit plan shared by the FP, INT8/INT4 and FP8 CPU drivers and the KV-cache decode, and the
 * workspace they take: see units.h. */
#include "cpu/units.h"

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The KV split of `units` units over n_keys keys. Few units leave threads idle: below units_below
 * the KV axis is split, into at most n_keys / QATTN_SPLIT_MIN_KEYS splits, each a whole number of
 * granules (keys). The count comes from the shape alone, never the thread count. */
static void plan_split(qattn_units *u, int64_t units, int64_t n_keys, int64_t granule, int64_t units_below) {
    u->n_split = 1;
    if (units > 0 && units < units_below && n_keys >= 2 * QATTN_SPLIT_MIN_KEYS) {
        int64_t want = ceil_div(QATTN_SPLIT_TARGET, units);
        int64_t most = n_keys / QATTN_SPLIT_MIN_KEYS;
        u->n_split = want < most ? want : most;
    }
    u->split_keys = ceil_div(ceil_div(n_keys > 0 ? n_keys : 1, u->n_split), granule) * granule;
    u->n_units = units * u->n_split;
}

/* qattn_units_plan, splitting below units_below units (0: never). */
static void plan_units(qattn_units *u, const qattn_params *p, int block_rows, int all_heads_rows, int64_t units_below) {
    memset(u, 0, sizeof *u);
    u->group = p->n_heads / p->n_kv_heads;
    u->block_pos = u->group >= block_rows ? 1 : block_rows / u->group;
    u->rows = u->block_pos * u->group;
    u->n_qblocks = ceil_div(p->seqlen_q, u->block_pos);
    /* the rows of one kv head in a query block: fewer than rows when there are fewer queries (decode) */
    int64_t head_rows = (p->seqlen_q < u->block_pos ? p->seqlen_q : u->block_pos) * u->group;
    u->heads = all_heads_rows > 0 && head_rows * p->n_kv_heads <= all_heads_rows ? p->n_kv_heads : 1;
    u->head_blocks = p->n_kv_heads / u->heads;
    plan_split(u, p->batch * u->head_blocks * u->n_qblocks, p->seqlen_k, QATTN_TILE_KEYS, units_below);
}

void qattn_units_plan(qattn_units *u, const qattn_params *p, int block_rows, int all_heads_rows) {
    plan_units(u, p, block_rows, all_heads_rows, QATTN_SPLIT_UNITS_BELOW);
}

void qattn_units_plan_unsplit(qattn_units *u, const qattn_params *p, int block_rows) { plan_units(u, p, block_rows, 0, 0); }

void qattn_units_plan_decode(qattn_units *u, int64_t n_seqs, int n_heads, int n_kv_heads, int seqlen_q, int64_t max_keys, int64_t page_keys) {
    memset(u, 0, sizeof *u);
    u->group = n_heads / n_kv_heads;
    u->block_pos = seqlen_q;
    u->rows = seqlen_q * u->group;
    u->heads = n_kv_heads;
    u->head_blocks = 1;
    u->n_qblocks = 1;
    plan_split(u, n_seqs, max_keys, page_keys, QATTN_SPLIT_UNITS_BELOW_DECODE);
}

qattn_unit qattn_unit_of(const qattn_units *u, int64_t index) {
    qattn_unit un;
    un.split = index % u->n_split;
    index /= u->n_split;
    un.qb = index % u->n_qblocks;
    index /= u->n_qblocks;
    un.g = (int)(index % u->head_blocks) * u->heads;
    un.b = index / u->head_blocks;
    return un;
}

int qattn_unit_positions(const qattn_units *u, const qattn_unit *un, int64_t lq, int64_t *i0) {
    *i0 = un->qb * u->block_pos;
    if (*i0 >= lq) return 0;
    return (int)(lq - *i0 < u->block_pos ? lq - *i0 : u->block_pos);
}

void qattn_unit_key_range(const qattn_units *u, const qattn_params *p, const qattn_unit *un, const qattn_seq *s, int64_t i0, int n_pos,
                          const qattn_bm_rows *bm, int64_t *k_begin, int64_t *k_end) {
    qattn_bm_unit_key_range(p, s, i0, n_pos, un->split, u->n_split, u->split_keys, bm, k_begin, k_end);
}

int qattn_workers_for(int n_threads, int64_t n_tasks) {
    int64_t n = n_threads;
    if (n > n_tasks) n = n_tasks;
    if (n > QATTN_MAX_THREADS) n = QATTN_MAX_THREADS;
    return n < 1 ? 1 : (int)n;
}

bool qattn_units_want_order(const qattn_units *u, const qattn_params *p) {
    return u->n_units > 1 && (p->block_mask || p->causal || p->window_left >= 0 || p->window_right >= 0);
}

size_t qattn_units_order_bytes(const qattn_units *u, const qattn_params *p) {
    return qattn_units_want_order(u, p) ? (size_t)u->n_units * sizeof(qattn_bm_unit_cost) : 0;
}

/* The order units are handed out in, so the dynamic hand-out of the thread pool does not leave one
 * thread with a long unit at the end. Block mask: decreasing live work (qattn_bm_cost). Causal or
 * windowed: each kv head's query blocks last to first (causal: longest first, the one-tile diagonal
 * block last), heads in order, so consecutive units still share a head's K/V in cache; a global
 * longest-first sort interleaved the heads and ran 2-3% slower on one thread (Zen 4, L2048/L4096
 * causal, FP driver). Causal B1 H8 L2048 with 2 threads in index order ended on the longest unit
 * (the last query block of the last head). Scheduling only: every unit computes the same values
 * whichever thread runs it, whenever. */
void qattn_units_order(qattn_units *u, const qattn_params *p, const int32_t *seqlens_k, qattn_bm_unit_cost *order) {
    for (int64_t t = 0; t < u->n_units; t++) {
        if (!p->block_mask) { /* qb -> n_qblocks - 1 - qb; split and (b, g) kept */
            int64_t split = t % u->n_split, rest = t / u->n_split;
            int64_t qb = u->n_qblocks - 1 - rest % u->n_qblocks, bg = rest / u->n_qblocks;
            order[t] = (qattn_bm_unit_cost){0, (bg * u->n_qblocks + qb) * u->n_split + split};
            continue;
        }
        qattn_unit un = qattn_unit_of(u, t);
        qattn_seq s = qattn_seq_view(p, un.b);
        if (seqlens_k) s.lk = seqlens_k[un.b];
        int64_t cost = qattn_bm_unit_cost_of(p, &s, un.b, un.g * u->group, (un.g + u->heads) * u->group, un.qb * u->block_pos, u->block_pos, un.split,
                                             u->n_split, u->split_keys);
        order[t] = (qattn_bm_unit_cost){cost, t};
    }
    if (p->block_mask) qattn_bm_sort_units(order, u->n_units);
    u->order = order;
}

size_t qattn_units_partials_floats(const qattn_units *u, int head_dim) {
    return u->n_split > 1 ? (size_t)u->n_units * qattn_unit_state_floats(u, head_dim) : 0;
}

qattn_unit qattn_units_merge_unit(const qattn_units *u, int64_t merge_task) { return qattn_unit_of(u, merge_task * u->n_split); }

void qattn_state_merge(qattn_tile_state *a, const qattn_tile_state *b, int m, int d) {
    for (int r = 0; r < m; r++) {
        float mb = b->row_max[r];
        if (mb == -INFINITY) continue; /* b saw no key for this row */
        float ma = a->row_max[r];
        float mx = ma > mb ? ma : mb;
        float fa = ma == -INFINITY ? 0.0f : exp2f(ma - mx);
        float fb = exp2f(mb - mx);
        float *acc_a = a->acc + r * a->ld_acc;
        const float *acc_b = b->acc + r * b->ld_acc;
        for (int c = 0; c < d; c++) acc_a[c] = acc_a[c] * fa + acc_b[c] * fb;
        a->row_sum[r] = a->row_sum[r] * fa + b->row_sum[r] * fb;
        a->row_max[r] = mx;
    }
}

qattn_tile_state qattn_units_merge_splits(const qattn_units *u, float *partials, int64_t merge_task, int head, int m, int head_dim) {
    int64_t first = merge_task * u->n_split;
    qattn_tile_state total = qattn_unit_partial(u, partials, first, head, head_dim);
    for (int64_t k = 1; k < u->n_split; k++) {
        qattn_tile_state part = qattn_unit_partial(u, partials, first + k, head, head_dim);
        qattn_state_merge(&total, &part, m, head_dim);
    }
    return total;
}

void qattn_units_run(qattn_pool *pool, const qattn_units *u, int n_workers, qattn_task_fn run_unit, qattn_task_fn merge_unit, void *arg) {
    qattn_parallel_for(pool, n_workers, u->n_units, run_unit, arg);
    if (u->n_split > 1) qattn_parallel_for(pool, n_workers, u->n_units / u->n_split, merge_unit, arg);
}

static size_t al64(size_t x) { return (x + 63) / 64 * 64; }

size_t qattn_units_workspace_bytes(const qattn_units *u, const qattn_params *p) {
    return al64(qattn_units_partials_floats(u, p->head_dim) * sizeof(float)) + al64(qattn_units_order_bytes(u, p));
}

float *qattn_units_workspace(qattn_units *u, const qattn_params *p, const int32_t *seqlens_k, void *mem) {
    size_t partials = al64(qattn_units_partials_floats(u, p->head_dim) * sizeof(float));
    if (qattn_units_want_order(u, p)) qattn_units_order(u, p, seqlens_k, (qattn_bm_unit_cost *)(void *)((unsigned char *)mem + partials));
    return partials ? mem : NULL;
}

qattn_status qattn_workspace_take(qattn_ctx *ctx, void *given, size_t given_size, size_t need, void **mem) {
    *mem = given;
    if (given) {
        if (given_size < need)
            return qattn_fail(ctx, QATTN_ERR_CAPACITY, "workspace has %zu bytes; these parameters need %zu (qattn_workspace_size)", given_size,
                              need);
        if ((uintptr_t)given % 64 != 0) return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "workspace must be 64-byte aligned");
        return QATTN_OK;
    }
    if (need == 0) return QATTN_OK;
    *mem = qattn_alloc(ctx, need);
    if (!*mem) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of workspace", need);
    return QATTN_OK;
}

void qattn_workspace_release(qattn_ctx *ctx, void *mem, const void *given) {
    if (mem && mem != given) qattn_free(ctx, mem);
}
