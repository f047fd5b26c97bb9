/* The steps of qattn_forward_kvcache on the CUDA backend (kvcache_driver.cu, kvcache.cu) as
 * host-and-device functions of one element or one 16-byte chunk, so that tests/test_kvcache_steps.cu
 * runs them on the host, without a device, against the CPU backend's qattn_forward_kvcache:
 * - append: a new token's K element (rotated) and V element into the cache at its slot;
 * - rotate_q: a query element, rotated, into a contiguous [B, Lq, H, D] copy;
 * - gather: 8 cache elements of one call's sequences into its contiguous keys or values;
 * - lse_scatter: a varlen call's LSE back into [B, H, Lq];
 * - the plan (dense runs of equal key counts, or varlen calls), each call's parameters, and the
 *   check for two appends to one slot.
 * Every index a step reads was checked on the host first (forward_kvcache.c): page ids and
 * cache_seqlens come from the host's checked copy, never from the caller's device arrays. */
#ifndef QATTN_CUDA_KVCACHE_STEPS_CUH
#define QATTN_CUDA_KVCACHE_STEPS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include "qattn.h"

/* One cache tensor (K or V): element strides of its page (paged) or sequence (contiguous) axis,
 * token and head axes. */
struct kvc_view {
    uint16_t *base;
    int64_t ps, ss, hs;
};

/* Where sequence b's tokens live: through a compact block table [B, max_blocks] of checked page
 * ids, or contiguous (table NULL). */
struct kvc_pages {
    const int32_t *table;
    int64_t max_blocks;
    int32_t page;
};

/* The rotary tables (device or host floats [len, dim / 2]); cos NULL: no rotary. */
struct kvc_rope {
    const float *cos, *sin;
    int32_t dim, interleaved;
};

/* The new tokens [B, Sn, HK, D] (element strides) and where they go. */
struct kvc_append_args {
    const uint16_t *k_new, *v_new;
    int64_t kn_bs, kn_ss, kn_hs, vn_bs, vn_ss, vn_hs;
    kvc_view k, v;
    kvc_pages pages;
    kvc_rope rope;
    const int32_t *cs; /* checked cache_seqlens [B] */
    int64_t sn;
    int32_t hk, d, bf16;
};

/* The queries [B, Lq, H, D] (element strides) rotated into contiguous qr. */
struct kvc_rotate_args {
    const uint16_t *q;
    int64_t q_bs, q_ss, q_hs;
    uint16_t *qr;
    kvc_rope rope;
    const int32_t *cs;
    int64_t lq;
    int32_t h, d, bf16, per_position;
};

/* One forward call's keys and values, sequences b0 .. b0 + nb - 1, gathered into contiguous dk, dv:
 * dense, lk keys each, [nb, lk, HK, D]; varlen (cu_k: the call's nb + 1 key offsets), packed
 * [cu_k[nb], HK, D]. */
struct kvc_gather_args {
    kvc_view k, v;
    kvc_pages pages;
    uint16_t *dk, *dv;
    const int32_t *cu_k;
    int64_t b0, nb, lk;
    int32_t hk, d;
};

/* A varlen call's LSE [H, nb * Lq] (the forward's varlen layout) into the call's rows of lse [B, H, Lq]. */
struct kvc_lse_args {
    const float *src;
    float *lse;
    int64_t b0, nb, lq;
    int32_t h;
};

#define KVC_HD __host__ __device__ __forceinline__

/* Token t of sequence b: its element offset in a cache tensor (head 0, channel 0). */
KVC_HD int64_t kvc_slot(const kvc_pages &pg, const kvc_view &v, int64_t b, int64_t t) {
    if (pg.table) return (int64_t)pg.table[b * pg.max_blocks + t / pg.page] * v.ps + t % pg.page * v.ss;
    return b * v.ps + t * v.ss;
}

KVC_HD float kvc_load(const uint16_t *x, int64_t i, int32_t bf16) {
    return bf16 ? __bfloat162float(__ushort_as_bfloat16(x[i])) : __half2float(__ushort_as_half(x[i]));
}

KVC_HD uint16_t kvc_round(float x, int32_t bf16) {
    return bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(x)) : __half_as_ushort(__float2half_rn(x));
}

/* Channel c of a row at rotary position pos, given the row's values at c (x) and at c's partner
 * (y): the CPU's rule (src/kv/rotary.c): each pair in double, where the products of floats are
 * exact (so a fused multiply-add gives the same sum), rounded once to float. */
KVC_HD int kvc_rope_partner(const kvc_rope &r, int c) {
    const int half = r.dim / 2;
    return r.interleaved ? c ^ 1 : c < half ? c + half : c - half;
}

KVC_HD float kvc_rope_value(const kvc_rope &r, int64_t pos, int c, float x, float y) {
    const int half = r.dim / 2;
    const bool first = r.interleaved ? (c & 1) == 0 : c < half;
    const int64_t a = pos * half + (r.interleaved ? c / 2 : first ? c : c - half);
    const double co = r.cos[a], si = r.sin[a];
    return first ? (float)((double)x * co - (double)y * si) : (float)((double)y * si + (double)x * co);
}

/* Channel c of a row (16-bit values of the dtype) at rotary position pos: rotated and rounded to the
 * dtype when c < r.dim, else as is (bit for bit). */
KVC_HD uint16_t kvc_rope_bits(const kvc_rope &r, int64_t pos, const uint16_t *row, int c, int32_t bf16) {
    if (!r.cos || c >= r.dim) return row[c];
    return kvc_round(kvc_rope_value(r, pos, c, kvc_load(row, c, bf16), kvc_load(row, kvc_rope_partner(r, c), bf16)), bf16);
}

/* Element e of a contiguous [B, L, heads, D] index space: e = ((b L + i) heads + h) D + c. */
struct kvc_elem {
    int64_t b, i;
    int h, c;
};

KVC_HD kvc_elem kvc_split(int64_t e, int64_t L, int heads, int D) {
    const int64_t row = e / D, bi = row / heads;
    return kvc_elem{bi / L, bi % L, (int)(row % heads), (int)(e % D)};
}

/* Element e of the B * Sn * HK * D new-token elements: its K (rotated) and V into the cache. */
KVC_HD void kvc_append(const kvc_append_args &a, int64_t e) {
    const kvc_elem x = kvc_split(e, a.sn, a.hk, a.d);
    const int64_t t = a.cs[x.b] + x.i;
    const int64_t kn = x.b * a.kn_bs + x.i * a.kn_ss + x.h * a.kn_hs, vn = x.b * a.vn_bs + x.i * a.vn_ss + x.h * a.vn_hs;
    a.k.base[kvc_slot(a.pages, a.k, x.b, t) + x.h * a.k.hs + x.c] = kvc_rope_bits(a.rope, t, a.k_new + kn, x.c, a.bf16);
    a.v.base[kvc_slot(a.pages, a.v, x.b, t) + x.h * a.v.hs + x.c] = a.v_new[vn + x.c]; /* V as is: bit for bit */
}

/* Element e of the B * Lq * H * D query elements, rotated into qr (same index). */
KVC_HD void kvc_rotate_q(const kvc_rotate_args &a, int64_t e) {
    const kvc_elem x = kvc_split(e, a.lq, a.h, a.d);
    const int64_t pos = a.cs[x.b] + (a.per_position ? x.i : 0);
    a.qr[e] = kvc_rope_bits(a.rope, pos, a.q + x.b * a.q_bs + x.i * a.q_ss + x.h * a.q_hs, x.c, a.bf16);
}

/* The chunks of 8 elements (16 bytes) of sequence b0 + i of a call: its keys x HK x D / 8. */
KVC_HD int64_t kvc_gather_chunks(const kvc_gather_args &a, int64_t i) {
    const int64_t lk = a.cu_k ? a.cu_k[i + 1] - a.cu_k[i] : a.lk;
    return lk * a.hk * (a.d / 8);
}

/* Chunk x (< kvc_gather_chunks) of sequence b0 + i of a call: its keys and values. The cache bases
 * are 16-byte aligned and their strides multiples of 8 (checked). */
KVC_HD void kvc_gather(const kvc_gather_args &a, int64_t i, int64_t x) {
    const int cpr = a.d / 8;
    const int c8 = (int)(x % cpr);
    const int64_t r = x / cpr, t = r / a.hk, b = a.b0 + i;
    const int g = (int)(r % a.hk);
    const int64_t row = (a.cu_k ? a.cu_k[i] : i * a.lk) + t; /* in the gathered tensor */
    const int64_t ks = kvc_slot(a.pages, a.k, b, t) + g * a.k.hs + c8 * 8, vs = kvc_slot(a.pages, a.v, b, t) + g * a.v.hs + c8 * 8;
    const int64_t dst = (row * a.hk + g) * a.d + c8 * 8;
    *(uint4 *)(a.dk + dst) = *(const uint4 *)(a.k.base + ks);
    *(uint4 *)(a.dv + dst) = *(const uint4 *)(a.v.base + vs);
}

/* Element e of the H * nb * Lq of a varlen call's LSE. */
KVC_HD void kvc_lse_scatter(const kvc_lse_args &a, int64_t e) {
    const int64_t rows = a.nb * a.lq, h = e / rows, r = e % rows;
    a.lse[((a.b0 + r / a.lq) * a.h + h) * a.lq + r % a.lq] = a.src[e];
}

/* The forward calls over sequences b0 .. b0 + nb - 1. Dense (cu < 0): a run of consecutive sequences
 * with equal key counts lk, [nb, lk, HK, D] gathered. Varlen: consecutive sequences of any key counts
 * (lk the largest), packed; its nb + 1 key offsets (from 0) at cu_k[cu] and query offsets (i * Lq)
 * at cu_q[cu]. tokens: the keys it gathers. */
struct kvc_call {
    int64_t b0, nb, lk, tokens, cu;
};

/* The calls for key counts lk[batch]: varlen or dense runs, each cut so that it gathers at most
 * max(budget_tokens, its longest sequence) keys and holds at most max_batch sequences. calls[] holds
 * up to batch entries, cu_k[] and cu_q[] up to 2 * batch (varlen). Returns the number of calls and
 * the most keys one gathers in *scratch_tokens. */
inline int64_t kvc_plan(const int32_t *lk, int64_t batch, int64_t lq, bool varlen, int64_t budget_tokens, int64_t max_batch, kvc_call *calls,
                        int32_t *cu_k, int32_t *cu_q, int64_t *scratch_tokens) {
    int64_t n = 0, n_cu = 0;
    *scratch_tokens = 0;
    for (int64_t b = 0; b < batch; b++) {
        kvc_call *last = n ? &calls[n - 1] : nullptr;
        const bool joins = last && last->nb < max_batch && last->tokens + lk[b] <= budget_tokens && (varlen || last->lk == lk[b]);
        if (joins) {
            last->nb++;
            last->tokens += lk[b];
            last->lk = lk[b] > last->lk ? lk[b] : last->lk;
        } else {
            if (varlen && last) n_cu += last->nb + 1;
            calls[n++] = kvc_call{b, 1, lk[b], lk[b], varlen ? n_cu : -1};
            last = &calls[n - 1];
            if (varlen) cu_k[n_cu] = 0, cu_q[n_cu] = 0;
        }
        if (varlen) {
            cu_k[last->cu + last->nb] = (int32_t)last->tokens;
            cu_q[last->cu + last->nb] = (int32_t)(last->nb * lq);
        }
        if (last->tokens > *scratch_tokens) *scratch_tokens = last->tokens;
    }
    return n;
}

/* The cache slots sequence b appends to, one span per page it writes: page id, offsets [lo, hi). */
struct kvc_span {
    int64_t page, lo, hi, b;
};

/* The spans the appends of seqlen_new tokens at cs[b] (pages of ps tokens) make, over all sequences. */
inline int64_t kvc_append_span_count(const int32_t *cs, int64_t batch, int64_t ps, int64_t seqlen_new) {
    int64_t n = 0;
    for (int64_t b = 0; b < batch; b++) n += (cs[b] + seqlen_new - 1) / ps - cs[b] / ps + 1;
    return n;
}

inline int kvc_span_order(const void *x, const void *y) {
    const kvc_span *a = (const kvc_span *)x, *b = (const kvc_span *)y;
    return a->page != b->page ? (a->page < b->page ? -1 : 1) : a->lo != b->lo ? (a->lo < b->lo ? -1 : 1) : 0;
}

/* Whether two appends (seqlen_new >= 1 tokens per sequence) land on one slot, through the block
 * table's rows (width entries each): spans[] (kvc_append_span_count entries) sorted by page and
 * offset, where any overlap shows between neighbours. Returns the first such pair, or NULL. */
inline const kvc_span *kvc_append_clash(const int32_t *cs, const int32_t *table, int64_t width, int64_t batch, int64_t ps, int64_t seqlen_new,
                                        kvc_span *spans) {
    int64_t n = 0;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t j = cs[b] / ps; j * ps < cs[b] + seqlen_new; j++) {
            const int64_t lo = cs[b] > j * ps ? cs[b] - j * ps : 0, end = cs[b] + seqlen_new - j * ps;
            spans[n++] = kvc_span{table[b * width + j], lo, end < ps ? end : ps, b};
        }
    qsort(spans, (size_t)n, sizeof *spans, kvc_span_order);
    for (int64_t i = 1; i < n; i++)
        if (spans[i].page == spans[i - 1].page && spans[i].lo < spans[i - 1].hi) return &spans[i - 1];
    return nullptr;
}

/* The kernels over n elements (append, rotate_q, lse_scatter) or a call's sequences, longest_chunks
 * the most chunks one of them has (gather), on stream (kvcache.cu). */
cudaError_t qattn_cuda_launch_kvc_append(const kvc_append_args &a, int64_t n, cudaStream_t stream);
cudaError_t qattn_cuda_launch_kvc_rotate_q(const kvc_rotate_args &a, int64_t n, cudaStream_t stream);
cudaError_t qattn_cuda_launch_kvc_gather(const kvc_gather_args &a, int64_t longest_chunks, cudaStream_t stream);
cudaError_t qattn_cuda_launch_kvc_lse_scatter(const kvc_lse_args &a, int64_t n, cudaStream_t stream);

/* One forward call's parameters: p's, for sequences c.b0 .. + c.nb - 1 (q rows q_bs, q_ss, q_hs
 * apart: p's, or the rotated copy's), over keys and values gathered into dk, dv. Varlen: cu_q, cu_k
 * are the plan's offset arrays (where the forward reads them), q and o packed (batch strides
 * Lq x seq strides: the caller checks), the LSE into lse_varlen [H, nb * Lq]. */
inline qattn_params kvc_call_params(const qattn_params *p, const void *q, int64_t q_bs, int64_t q_ss, int64_t q_hs, const kvc_call &c, void *dk,
                                    void *dv, const int32_t *cu_q, const int32_t *cu_k, float *lse_varlen) {
    const int64_t HK = p->n_kv_heads, D = p->head_dim;
    qattn_params pk = *p;
    pk.batch = c.nb;
    pk.q = (const char *)q + c.b0 * q_bs * 2;
    pk.q_batch_stride = q_bs, pk.q_seq_stride = q_ss, pk.q_head_stride = q_hs;
    pk.o = (char *)p->o + c.b0 * p->o_batch_stride * (p->o_dtype == QATTN_DTYPE_F32 ? 4 : 2);
    if (p->lse) pk.lse = c.cu >= 0 ? lse_varlen : p->lse + c.b0 * p->n_heads * p->seqlen_q;
    if (p->alibi_slopes) pk.alibi_slopes = p->alibi_slopes + c.b0 * p->alibi_batch_stride;
    pk.k = dk, pk.v = dv;
    pk.seqlen_k = c.lk;
    pk.k_head_stride = pk.v_head_stride = D;
    pk.k_seq_stride = pk.v_seq_stride = HK * D;
    pk.k_batch_stride = pk.v_batch_stride = c.cu >= 0 ? 0 : c.lk * HK * D;
    if (c.cu >= 0) pk.cu_seqlens_q = cu_q + c.cu, pk.cu_seqlens_k = cu_k + c.cu;
    return pk;
}

#endif
