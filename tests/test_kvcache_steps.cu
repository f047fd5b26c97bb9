/* The CUDA backend's qattn_forward_kvcache steps (src/cuda/kvcache_steps.cuh), run on the host: no
 * device needed, so this runs wherever the CUDA backend is built. The GPU run of the whole call is
 * the op table's kvcache section on the CUDA target (tests/ops.c). On the op table's kvcache
 * problems at FP16 and BF16 (tests/ops_kvcache.c: shuffled pages whose unused table entries are
 * invalid ids, padded strides, empty slots poisoned with NaN), the steps the CUDA driver queues,
 * each over every index, must give:
 * - the append: exactly the expected cache (the new V, the new K rotated by the suite's FP64
 *   rotary and rounded once to float, then to the dtype), nothing else written;
 * - rotate_q: the rotated queries bit for bit as the CPU backend rounds them (include/qattn.h);
 * - the plans (dense runs of equal key counts, and varlen calls over any key counts), gather,
 *   per-call parameters and LSE scatter, run through the CPU backend's qattn_forward (each plan
 *   also with a budget of one token, so every sequence gets its own call, and with at most two
 *   sequences per call): o and lse bitwise equal to the CPU backend's qattn_forward_kvcache, whose forward
 *   reads the same keys through the block table (same tiles, same order), and within the op
 *   table's FP32 bound of the FP64 oracle;
 * - the refusal of two appends to one cache slot: found exactly where hand-made tables make one. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "ops_kvcache.h"
#include "qattn_internal.h"
}
#include "cuda/kvcache_steps.cuh"

struct step_case {
    const char *name;
    int B, Lq, Sn, H, HK, D, page;
    int32_t cs[4];
    int causal, wl, wr, rd, inter;
    int32_t dtype;
    int q_bhld;
    float softcap;
    int alibi;
};

static op_case make_case(const step_case &k) {
    op_case x;
    memset(&x, 0, sizeof x);
    x.kind = OP_FORWARD_KVCACHE;
    x.c.name = k.name;
    x.c.batch = k.B, x.c.seqlen_q = k.Lq, x.c.n_heads = k.H, x.c.n_kv_heads = k.HK, x.c.head_dim = k.D;
    x.c.qkv_dtype = k.dtype, x.c.o_dtype = QATTN_DTYPE_F32;
    x.c.causal = k.causal, x.c.window_left = k.wl, x.c.window_right = k.wr, x.c.qo_bhld = k.q_bhld != 0;
    x.kv.seqlen_new = k.Sn, x.kv.page = k.page;
    memcpy(x.kv.cache_seqlens, k.cs, sizeof x.kv.cache_seqlens);
    x.kv.rotary_dim = k.rd, x.kv.rotary_interleaved = k.inter;
    x.softcap = k.softcap, x.alibi = k.alibi;
    return x;
}

/* The append over every element, as append_kernel runs it. */
static void run_append(op_kv_problem *pr, const kvc_pages &pages) {
    const qattn_kvcache_params &kv = pr->kv;
    const qattn_params &p = pr->p;
    const kvc_view kc = {(uint16_t *)kv.k_cache, kv.k_page_stride, kv.k_seq_stride, kv.k_head_stride};
    const kvc_view vc = {(uint16_t *)kv.v_cache, kv.v_page_stride, kv.v_seq_stride, kv.v_head_stride};
    const kvc_rope rope = {kv.rotary_cos, kv.rotary_sin, kv.rotary_dim, kv.rotary_interleaved};
    const kvc_append_args a = {(const uint16_t *)kv.k_new, (const uint16_t *)kv.v_new, kv.k_new_batch_stride, kv.k_new_seq_stride, kv.k_new_head_stride,
                               kv.v_new_batch_stride, kv.v_new_seq_stride, kv.v_new_head_stride, kc, vc, pages, rope, pr->cs, kv.seqlen_new,
                               p.n_kv_heads, p.head_dim, p.qkv_dtype == QATTN_DTYPE_BF16};
    const int64_t n = p.batch * kv.seqlen_new * p.n_kv_heads * p.head_dim;
    for (int64_t e = 0; e < n; e++) kvc_append(a, e);
}

/* The rotated queries the CPU backend attends with: the suite's rotary, rounded to the dtype. */
static void expected_rotated_q(const op_kv_problem *pr, uint16_t *out) {
    const qattn_params &p = pr->p;
    const bool per_pos = p.causal || p.window_left >= 0 || p.window_right >= 0;
    float row[256];
    for (int64_t b = 0; b < p.batch; b++)
        for (int64_t i = 0; i < p.seqlen_q; i++)
            for (int64_t h = 0; h < p.n_heads; h++) {
                const int64_t src = b * p.q_batch_stride + i * p.q_seq_stride + h * p.q_head_stride, dst = ((b * p.seqlen_q + i) * p.n_heads + h) * p.head_dim;
                for (int d = 0; d < p.head_dim; d++) row[d] = qattn_load(pr->q, p.qkv_dtype, src + d);
                op_kv_rotate(pr->cos, pr->sin, pr->kv.rotary_dim, pr->kv.rotary_interleaved, pr->cs[b] + (per_pos ? i : 0), row);
                for (int d = 0; d < p.head_dim; d++) qattn_store(out, p.qkv_dtype, dst + d, row[d]);
            }
}

static void run_case(const step_case &k, uint64_t seed) {
    const op_case oc = make_case(k);
    char desc[600];
    op_kv_describe(&oc, seed, desc, sizeof desc);
    if (!th_selected(desc)) return;
    th_set_context(desc);
    printf("  %s\n", desc);
    op_kv_problem pr;
    op_kv_make(&pr, &oc, seed);
    const qattn_params &p = pr.p;
    const int64_t B = p.batch, H = p.n_heads, HK = p.n_kv_heads, D = p.head_dim, Lq = p.seqlen_q;

    /* The CPU backend's call: its outputs are the reference for the per-call forwards. */
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 1);
    op_kv_poison_outputs(&pr);
    qattn_status s = qattn_forward_kvcache(ctx, &pr.p, &pr.kv);
    TH_CHECK(s == QATTN_OK, "CPU qattn_forward_kvcache: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
    float *o_cpu = (float *)th_xmalloc(pr.n_out * sizeof(float) + 4), *lse_cpu = (float *)th_xmalloc(pr.n_lse * sizeof(float) + 4);
    memcpy(o_cpu, pr.o, pr.n_out * sizeof(float)), memcpy(lse_cpu, pr.lse, pr.n_lse * sizeof(float));

    /* The host's checked copies, as forward_kvcache.c makes them: compact table rows. */
    int32_t lk[4];
    int64_t width = pr.max_blocks;
    int32_t *table = oc.kv.page ? (int32_t *)th_xmalloc((size_t)(B * width) * sizeof(int32_t)) : NULL;
    for (int64_t b = 0; b < B; b++) {
        lk[b] = pr.cs[b] + (int32_t)pr.kv.seqlen_new;
        for (int64_t j = 0; table && j < width; j++) table[b * width + j] = pr.table[b * pr.table_stride + j];
    }
    const kvc_pages pages = {table, width, oc.kv.page};

    op_kv_restore_cache(&pr);
    run_append(&pr, pages);
    TH_CHECK(memcmp(pr.kc, pr.kc_expect, pr.cache_bytes) == 0, "append: k_cache differs from the expected contents");
    TH_CHECK(memcmp(pr.vc, pr.vc_expect, pr.cache_bytes) == 0, "append: v_cache differs from the expected contents");

    const size_t q_elems = (size_t)(B * Lq * H * D);
    uint16_t *qr = (uint16_t *)th_xmalloc(q_elems * 2 + 16);
    const bool rotary = pr.kv.rotary_dim > 0;
    if (rotary) {
        const kvc_rope rope = {pr.cos, pr.sin, pr.kv.rotary_dim, pr.kv.rotary_interleaved};
        const kvc_rotate_args a = {(const uint16_t *)pr.q, p.q_batch_stride, p.q_seq_stride, p.q_head_stride, qr, rope, pr.cs, Lq, (int32_t)H,
                                   (int32_t)D, p.qkv_dtype == QATTN_DTYPE_BF16, p.causal || p.window_left >= 0 || p.window_right >= 0};
        for (int64_t e = 0; e < (int64_t)q_elems; e++) kvc_rotate_q(a, e);
        uint16_t *want = (uint16_t *)th_xmalloc(q_elems * 2 + 16);
        expected_rotated_q(&pr, want);
        TH_CHECK(memcmp(qr, want, q_elems * 2) == 0, "rotate_q: the rotated queries differ from the CPU rule's");
        free(want);
    }

    const void *q = rotary ? (const void *)qr : pr.q;
    const int64_t q_hs = rotary ? D : p.q_head_stride, q_ss = rotary ? H * D : p.q_seq_stride, q_bs = rotary ? Lq * H * D : p.q_batch_stride;
    /* the plans: dense runs and (when q and o are packed, as the driver requires) varlen calls, each with a
     * budget of one token (a call per sequence), unbounded, and at most two sequences per call */
    const bool q_packed = rotary || p.q_batch_stride == Lq * p.q_seq_stride;
    const int64_t budgets[3] = {1, INT64_MAX / 2, INT64_MAX / 2}, max_batch[3] = {65535, 65535, 2};
    for (int plan = 0; plan < 6; plan++) {
        const bool varlen = plan >= 3;
        const int bi = plan % 3;
        if (varlen && !q_packed) continue;
        kvc_call calls[4];
        int32_t cu_k[8], cu_q[8];
        int64_t scratch_tokens;
        const int64_t n_calls = kvc_plan(lk, B, Lq, varlen, budgets[bi], max_batch[bi], calls, cu_k, cu_q, &scratch_tokens);
        int64_t covered = 0;
        for (int64_t i = 0; i < n_calls; i++) covered += calls[i].nb;
        TH_CHECK(covered == B && n_calls >= 1, "plan %d: %lld calls cover %lld of %lld sequences", plan, (long long)n_calls, (long long)covered,
                 (long long)B);
        const size_t kv_elems = (size_t)(scratch_tokens * HK * D) + 8;
        uint16_t *dk = (uint16_t *)th_xmalloc(kv_elems * 2), *dv = (uint16_t *)th_xmalloc(kv_elems * 2);
        float *lse_varlen = (float *)th_xmalloc((size_t)(H * B * Lq) * sizeof(float) + 4);
        op_kv_poison_outputs(&pr);
        const kvc_view kc = {(uint16_t *)pr.kv.k_cache, pr.kv.k_page_stride, pr.kv.k_seq_stride, pr.kv.k_head_stride};
        const kvc_view vc = {(uint16_t *)pr.kv.v_cache, pr.kv.v_page_stride, pr.kv.v_seq_stride, pr.kv.v_head_stride};
        for (int64_t i = 0; i < n_calls; i++) {
            const kvc_call &c = calls[i];
            int64_t tokens = 0, longest = 0;
            for (int64_t b = c.b0; b < c.b0 + c.nb; b++) {
                tokens += lk[b], longest = lk[b] > longest ? lk[b] : longest;
                if (!varlen) TH_CHECK(lk[b] == c.lk, "plan %d: sequence %lld has %d keys, its dense call %lld", plan, (long long)b, lk[b], (long long)c.lk);
                if (varlen)
                    TH_CHECK(cu_k[c.cu + b - c.b0 + 1] - cu_k[c.cu + b - c.b0] == lk[b] && cu_q[c.cu + b - c.b0] == (b - c.b0) * Lq,
                             "plan %d: the offsets of sequence %lld", plan, (long long)b);
            }
            TH_CHECK(c.tokens == tokens && c.lk == longest && tokens <= scratch_tokens && (c.cu >= 0) == varlen,
                     "plan %d: call %lld: tokens %lld (want %lld), lk %lld (want %lld), scratch %lld", plan, (long long)i, (long long)c.tokens,
                     (long long)tokens, (long long)c.lk, (long long)longest, (long long)scratch_tokens);
            TH_CHECK(c.nb <= max_batch[bi], "plan %d: call %lld holds %lld sequences, more than %lld", plan, (long long)i, (long long)c.nb,
                     (long long)max_batch[bi]);
            if (bi == 0) TH_CHECK(c.nb == 1 || tokens == 0, "plan %d: a budget of one token must give one sequence per call", plan);
            const kvc_gather_args g = {kc, vc, pages, dk, dv, varlen ? cu_k + c.cu : NULL, c.b0, c.nb, c.lk, (int32_t)HK, (int32_t)D};
            for (int64_t j = 0; j < c.nb; j++)
                for (int64_t x = 0; x < kvc_gather_chunks(g, j); x++) kvc_gather(g, j, x);
            qattn_params pk = kvc_call_params(&p, q, q_bs, q_ss, q_hs, c, dk, dv, cu_q, cu_k, lse_varlen);
            s = qattn_forward(ctx, &pk);
            TH_CHECK(s == QATTN_OK, "plan %d: qattn_forward of call %lld: %s: %s", plan, (long long)i, qattn_status_str(s), qattn_ctx_last_error(ctx));
            if (varlen) {
                const kvc_lse_args la = {lse_varlen, pr.lse, c.b0, c.nb, Lq, (int32_t)H};
                for (int64_t e = 0; e < H * c.nb * Lq; e++) kvc_lse_scatter(la, e);
            }
        }
        TH_CHECK(memcmp(pr.o, o_cpu, pr.n_out * sizeof(float)) == 0, "plan %d: o differs bitwise from the CPU backend's qattn_forward_kvcache", plan);
        TH_CHECK(memcmp(pr.lse, lse_cpu, pr.n_lse * sizeof(float)) == 0, "plan %d: lse differs bitwise from the CPU backend's", plan);
        free(dk), free(dv), free(lse_varlen);
    }

    /* and both against the FP64 oracle (the op table's FP32 bound: tests/ops_kvcache.c) */
    double *o64 = (double *)th_xmalloc(pr.n_out * sizeof(double) + 8), *lse64 = (double *)th_xmalloc(pr.n_lse * sizeof(double) + 8);
    op_kv_oracle(&pr, o64, lse64);
    th_metrics m = th_compare(pr.o, o64, pr.n_out);
    TH_CHECK(m.nonfinite == 0 && m.rel_l2 <= 1e-5, "against the oracle: relative L2 %.3e, %zu NaN/Inf mismatches (bound 1e-5)", m.rel_l2, m.nonfinite);
    free(o64), free(lse64), free(qr), free(table), free(o_cpu), free(lse_cpu);
    qattn_ctx_destroy(ctx);
    op_kv_free(&pr);
    th_set_context(NULL);
}

/* The CUDA driver's refusal of two appends to one slot (kvc_append_clash): pages of 16, block-table
 * rows of 3, hand-made tables. */
static void test_append_clash(void) {
    th_set_context("append clash");
    struct {
        int32_t cs[2];
        int64_t sn;
        int32_t table[6];
        bool clash;
        int64_t page, b0, b1;
        const char *what;
    } cases[] = {
        {{5, 20}, 3, {7, 9, 1, 8, 3, 2}, false, 0, 0, 0, "distinct pages"},
        {{5, 20}, 3, {7, 9, 1, 8, 7, 2}, true, 7, 0, 1, "a page both append to, overlapping offsets [5, 8) and [4, 7)"},
        {{5, 24}, 3, {7, 9, 1, 8, 7, 2}, false, 0, 0, 0, "a page both append to, disjoint offsets [5, 8) and [8, 11)"},
        {{0, 40}, 32, {7, 7, 1, 8, 3, 2}, true, 7, 0, 0, "one sequence listing a page twice"},
        {{14, 0}, 20, {4, 5, 6, 9, 10, 11}, false, 0, 0, 0, "spans over three pages"},
        {{14, 0}, 20, {4, 5, 6, 6, 10, 11}, true, 6, 0, 1, "the third page of one is the first of the other"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kvc_span spans[16];
        const int64_t n = kvc_append_span_count(cases[i].cs, 2, 16, cases[i].sn);
        if (!TH_CHECK(n <= 16, "%s: %lld spans", cases[i].what, (long long)n)) continue;
        const kvc_span *c = kvc_append_clash(cases[i].cs, cases[i].table, 3, 2, 16, cases[i].sn, spans);
        TH_CHECK((c != NULL) == cases[i].clash, "%s: clash %s, expected %s", cases[i].what, c ? "found" : "not found", cases[i].clash ? "one" : "none");
        if (c && cases[i].clash)
            TH_CHECK(c[0].page == cases[i].page && c[1].page == cases[i].page && c[0].b + c[1].b == cases[i].b0 + cases[i].b1 &&
                         c[0].b * c[1].b == cases[i].b0 * cases[i].b1, /* the pair in either order */
                     "%s: pages %lld/%lld, sequences %lld/%lld; expected page %lld, sequences %lld/%lld", cases[i].what, (long long)c[0].page,
                     (long long)c[1].page, (long long)c[0].b, (long long)c[1].b, (long long)cases[i].page, (long long)cases[i].b0,
                     (long long)cases[i].b1);
    }
    th_set_context(NULL);
}

int main(void) {
    th_init("test_kvcache_steps");
    test_append_clash();
    /* FP16/BF16 (the CUDA backend's dtypes): paged and contiguous, rotary both ways and partial, GQA, windows,
     * causal with Lq > Lk, equal key counts (one call) and not, empty sequences, strided q, softcap and ALiBi */
    static const step_case cases[] = {
        {"speculative", 2, 5, 5, 4, 4, 80, 32, {31, 70}, 1, -1, -1, 32, 0, QATTN_DTYPE_F16, 0, 0.0f, 0},
        {"chunked prefill", 2, 100, 100, 4, 1, 128, 256, {0, 300}, 1, -1, -1, 64, 1, QATTN_DTYPE_BF16, 0, 0.0f, 0},
        {"bidirectional rotary", 2, 5, 1, 4, 2, 128, 0, {10, 88}, 0, -1, -1, 128, 1, QATTN_DTYPE_F16, 0, 0.0f, 0},
        {"equal lengths", 3, 3, 2, 4, 2, 64, 16, {40, 40, 40}, 1, -1, -1, 64, 0, QATTN_DTYPE_F16, 1, 0.0f, 0},
        {"empty and window", 4, 4, 0, 4, 2, 64, 16, {0, 33, 0, 17}, 0, 9, 2, 0, 0, QATTN_DTYPE_BF16, 0, 0.0f, 0},
        {"causal Lq > Lk", 2, 50, 7, 2, 2, 64, 0, {0, 5}, 1, -1, -1, 16, 1, QATTN_DTYPE_F16, 0, 0.0f, 0},
        {"softcap alibi", 2, 37, 37, 4, 2, 80, 16, {0, 150}, 1, 50, -1, 0, 0, QATTN_DTYPE_F16, 0, 5.0f, 1},
        {"split decode alibi", 2, 3, 1, 4, 1, 128, 32, {1100, 7}, 0, -1, -1, 0, 0, QATTN_DTYPE_BF16, 1, 0.0f, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(cases[i], th_derive_seed(i));
    return th_finish();
}
