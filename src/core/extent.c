/* The memory a strided view reaches, and the check that outputs overlap no input (qattn never
 * computes in place): used by validation (api.c) and by every entry point that takes tensors. */
#include "core/extent.h"

#include "core/checked.h"

int64_t qattn_view_max_index(int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t n2, int64_t s2, int64_t d) {
    int64_t terms[3], total = d - 1;
    if (!qattn_mul_i64(n0 - 1, s0, &terms[0]) || !qattn_mul_i64(n1 - 1, s1, &terms[1]) || !qattn_mul_i64(n2 - 1, s2, &terms[2])) return -1;
    for (int i = 0; i < 3; i++)
        if (!qattn_add_i64(total, terms[i], &total)) return -1;
    return total;
}

/* True when distinct (i0, i1, i2, d) of the output map to distinct elements: sorted by stride,
 * each axis must step past everything the smaller axes reach. */
static bool output_is_injective(const int64_t ext[4], const int64_t str[4]) {
    int idx[4] = {0, 1, 2, 3};
    for (int a = 1; a < 4; a++)
        for (int b = a; b > 0 && str[idx[b]] < str[idx[b - 1]]; b--) {
            int t = idx[b];
            idx[b] = idx[b - 1];
            idx[b - 1] = t;
        }
    int64_t reach = 0; /* largest offset reached by the axes so far */
    for (int a = 0; a < 4; a++) {
        int i = idx[a];
        if (ext[i] <= 1) continue;
        if (str[i] <= reach) return false;
        reach += (ext[i] - 1) * str[i];
    }
    return true;
}

bool qattn_view_is_injective(int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t n2, int64_t s2, int64_t d) {
    int64_t ext[4] = {n0, n1, n2, d}, str[4] = {s0, s1, s2, 1};
    return output_is_injective(ext, str);
}

qattn_extent qattn_view_extent(const char *name, const void *base, int64_t elem_bytes, int64_t n0, int64_t s0, int64_t n1, int64_t s1,
                               int64_t n2, int64_t s2, int64_t d) {
    qattn_extent e = {name, (uintptr_t)base, (uintptr_t)base};
    if (!base || n0 <= 0 || n1 <= 0 || n2 <= 0 || d <= 0) return e;
    int64_t top = qattn_view_max_index(n0, s0, n1, s1, n2, s2, d), bytes;
    if (top < 0 || !qattn_mul_i64(top + 1, elem_bytes, &bytes) || (uint64_t)bytes > UINTPTR_MAX - e.lo) e.hi = UINTPTR_MAX;
    else e.hi = e.lo + (uintptr_t)bytes;
    return e;
}

static bool extents_overlap(const qattn_extent *a, const qattn_extent *b) {
    return a->lo < a->hi && b->lo < b->hi && a->lo < b->hi && b->lo < a->hi;
}

qattn_status qattn_check_disjoint(qattn_ctx *ctx, const char *function, const qattn_extent *outs, int n_outs, const qattn_extent *ins,
                                  int n_ins) {
    for (int i = 0; i < n_outs; i++) {
        for (int j = 0; j < n_ins; j++)
            if (extents_overlap(&outs[i], &ins[j]))
                return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                                  "%s: output %s overlaps input %s (bytes [%p, %p) and [%p, %p)); qattn does not compute in place", function,
                                  outs[i].name, ins[j].name, (void *)outs[i].lo, (void *)outs[i].hi, (void *)ins[j].lo, (void *)ins[j].hi);
        for (int j = 0; j < i; j++)
            if (extents_overlap(&outs[i], &outs[j]))
                return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: outputs %s and %s overlap (bytes [%p, %p) and [%p, %p))", function,
                                  outs[j].name, outs[i].name, (void *)outs[j].lo, (void *)outs[j].hi, (void *)outs[i].lo, (void *)outs[i].hi);
    }
    return QATTN_OK;
}

qattn_status qattn_check_params_disjoint(qattn_ctx *ctx, const qattn_params *p, int64_t qkv_elem_bytes) {
    if (p->batch == 0) return QATTN_OK;
    bool varlen = p->cu_seqlens_q != NULL;
    int64_t nb = varlen ? 1 : p->batch, lq = p->seqlen_q, lk = p->seqlen_k, D = p->head_dim;
    /* Device offsets are not read (that would synchronise the stream), and batch * max length only
     * bounds the packed totals: tensors allocated back to back would look overlapping. The check is
     * then not made (qattn.h says so). */
    if (varlen && ctx->backend != QATTN_BACKEND_CPU) return QATTN_OK;
    if (varlen) { /* host offsets, validated: the packed totals */
        lq = p->cu_seqlens_q[p->batch];
        lk = p->cu_seqlens_k[p->batch];
    }
    qattn_extent ins[5] = {
        qattn_view_extent("q", p->q, qkv_elem_bytes, nb, p->q_batch_stride, lq, p->q_seq_stride, p->n_heads, p->q_head_stride, D),
        qattn_view_extent("k", p->k, qkv_elem_bytes, nb, p->k_batch_stride, lk, p->k_seq_stride, p->n_kv_heads, p->k_head_stride, D),
        qattn_view_extent("v", p->v, qkv_elem_bytes, nb, p->v_batch_stride, lk, p->v_seq_stride, p->n_kv_heads, p->v_head_stride, D),
        /* alibi_slopes: [B, H] with batch stride alibi_batch_stride, or one shared [H] row */
        qattn_view_extent("alibi_slopes", p->alibi_slopes, 4, p->alibi_batch_stride ? p->batch : 1, p->alibi_batch_stride, 1, 0, 1, 0,
                          p->n_heads),
    };
    qattn_extent outs[2] = {
        qattn_view_extent("o", p->o, qattn_dtype_bytes(p->o_dtype), nb, p->o_batch_stride, lq, p->o_seq_stride, p->n_heads, p->o_head_stride, D),
        /* lse: contiguous [B, H, Lq] (varlen [H, total_q]) floats */
        qattn_view_extent("lse", p->lse, 4, 1, 0, 1, 0, nb * p->n_heads, lq, lq),
    };
    int64_t nq = p->block_mask ? (p->seqlen_q + p->block_mask_q - 1) / p->block_mask_q : 0;
    int64_t nk = p->block_mask ? (p->seqlen_k + p->block_mask_k - 1) / p->block_mask_k : 0;
    ins[4] = qattn_view_extent("block_mask", p->block_mask, 1, p->batch, p->block_mask_batch_stride, p->n_heads, p->block_mask_head_stride,
                               nq, p->block_mask_row_stride, nk);
    return qattn_check_disjoint(ctx, "qattn_forward", outs, 2, ins, 5);
}
