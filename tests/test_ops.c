/* The op table: every qattn_forward, qattn_forward_kvcache and qattn_kv_decode case, run on every
 * target this machine has against the FP64 oracle (tests/ops.h says what a case and a target are,
 * tests/ops.c how a case runs and what its tolerance is and why, tests/ops_kvcache.c how a
 * KV-cache forward case is made, tests/ops_decode.c how a decode case is).
 *
 * Targets: each CPU ISA tier (ref, avx2, avxvnni, avx512: the ones a context can be created for)
 * with 1, 2 and 3 threads (and 8, which only the decode cases name), then the CUDA backend with
 * each cuda_kernels choice when the tests were built with CUDA and a device is visible. Since the
 * table enumerates the ISAs itself, CI runs it once, not once per QATTN_ISA tier (label all-isas,
 * .ci/run).
 *
 * Each case runs on the targets of the thread counts it names (OP_T*); every run has poisoned
 * outputs and must write every output and LSE element and nothing outside them, stay within the
 * case's bound against the oracle (NaN and Inf exactly where the oracle has them), and agree
 * bitwise with the other thread counts of its ISA; INT8 and INT4 runs agree bitwise across ISAs
 * too, INT8-cache decodes across the SIMD ISAs. A KV-cache forward case's cache must hold exactly
 * the expected contents after the append; a decode case's cache (built on each target's context,
 * its empty slots poisoned) must read back what the oracle read, and its output must also stay
 * within the storage bound against the oracle on the original values; a numerics case's property
 * (exact zeros, which rows are NaN, ...) must hold on every run.
 *
 * Adding a case: append it to the section of its kind in build_table() (make it with fwd(), or
 * edge() for numerics, or add a row to the kvcache or decode section's array; then set what
 * differs). A case's seed is its index: adding a case at the end of the table keeps every other
 * case's data. QATTN_TEST_FILTER=<text> runs the cases whose description contains text. */
#include "ops.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* A forward case with the defaults: FP32 in and out, precision AUTO, no mask, LSE, contiguous,
 * 1/2/3 threads. */
static op_case fwd(const char *name, int64_t B, int64_t Lq, int64_t Lk, int H, int HK, int D) {
    op_case x;
    memset(&x, 0, sizeof x);
    th_case *c = &x.c;
    c->name = name;
    c->batch = B, c->seqlen_q = Lq, c->seqlen_k = Lk;
    c->n_heads = H, c->n_kv_heads = HK, c->head_dim = D;
    c->qkv_dtype = c->o_dtype = QATTN_DTYPE_F32;
    c->precision = QATTN_PRECISION_AUTO;
    c->window_left = c->window_right = -1;
    c->with_lse = true;
    x.threads = OP_T123;
    return x;
}

/* Varlen over n sequences; seqlen_q/k become the longest (the bound qattn_params passes). */
static void set_varlen(th_case *c, int n, const int32_t *cu_q, const int32_t *cu_k) {
    c->varlen = true;
    c->batch = n;
    int32_t max_q = 0, max_k = 0;
    for (int b = 0; b <= n; b++) {
        c->cu_q[b] = cu_q[b], c->cu_k[b] = cu_k[b];
        if (b && cu_q[b] - cu_q[b - 1] > max_q) max_q = cu_q[b] - cu_q[b - 1];
        if (b && cu_k[b] - cu_k[b - 1] > max_k) max_k = cu_k[b] - cu_k[b - 1];
    }
    c->seqlen_q = max_q, c->seqlen_k = max_k;
}

static op_mask mask(int bq, int bk, double density) {
    op_mask m;
    memset(&m, 0, sizeof m);
    m.bq = bq, m.bk = bk, m.density = density;
    return m;
}

#define MAX_CASES 320

/* FP32 / FP16 / BF16 inputs, outputs and precisions: tails, Lq != Lk, masks, head dims, GQA,
 * varlen, strided views, split-KV decode, caller workspace. */
static int add_forward(op_case *t, int n) {
    op_case x;
#define ADD() (t[n++] = x)
    /* tail sizes, square */
    x = fwd("tail-L1", 2, 1, 1, 4, 2, 64), ADD();
    x = fwd("tail-L17", 2, 17, 17, 4, 2, 64), ADD();
    x = fwd("tail-L113", 2, 113, 113, 4, 2, 64), ADD();
    x = fwd("tail-L203-nolse", 1, 203, 203, 4, 2, 64), x.c.with_lse = false, ADD();
    /* Lq != Lk both ways, with and without causal (bottom-right aligned; Lq > Lk causal has empty
     * first rows) */
    x = fwd("lq<lk", 2, 17, 203, 4, 4, 64), ADD();
    x = fwd("lq>lk", 2, 203, 17, 4, 4, 64), ADD();
    x = fwd("lq<lk-causal", 2, 17, 203, 4, 2, 64), x.c.causal = 1, ADD();
    x = fwd("lq>lk-causal", 2, 203, 17, 4, 2, 64), x.c.causal = 1, ADD();
    x = fwd("causal-L113", 1, 113, 113, 4, 4, 64), x.c.causal = 1, ADD();
    x = fwd("lq1-causal", 3, 1, 113, 4, 2, 64), x.c.causal = 1, ADD();
    /* head dims */
    x = fwd("D32", 1, 113, 113, 2, 1, 32), ADD();
    x = fwd("D80", 1, 113, 90, 2, 1, 80), x.c.causal = 1, ADD();
    x = fwd("D128", 1, 70, 113, 2, 2, 128), ADD();
    x = fwd("D256", 1, 40, 113, 2, 1, 256), x.c.causal = 1, ADD();
    /* D % 16 == 8: the 16-lane kernels' masked half vectors (QK, P V, packer), with many rows per
     * unit (transposed-K products) and with few (12 rows: dot products, K/V read in place) */
    x = fwd("D40", 1, 113, 203, 4, 2, 40), x.c.causal = 1, ADD();
    x = fwd("D200-few-rows", 2, 3, 203, 4, 1, 200), ADD();
    x = fwd("D72-f16", 1, 113, 113, 2, 1, 72), x.c.qkv_dtype = QATTN_DTYPE_F16, ADD();
    x = fwd("D136-win", 1, 113, 203, 4, 2, 136), x.c.window_left = 30, ADD();
    /* D below 32 (one 8-float vector per row at D 8; less than one 16-lane vector below 16): with
     * many rows per unit (AVX-512: transposed K, masked 8-lane rows), with few (dot products),
     * causal with Lq != Lk both ways, GQA, one query, varlen with empty sequences, half dtypes. */
    x = fwd("D8-causal-lq<lk", 2, 113, 203, 4, 2, 8), x.c.causal = 1, ADD();
    x = fwd("D8-causal-lq>lk", 1, 203, 17, 4, 1, 8), x.c.causal = 1, ADD();
    x = fwd("D8-lq1", 3, 1, 113, 8, 2, 8), ADD();
    x = fwd("D16-gqa4-few-rows", 2, 3, 203, 8, 2, 16), x.c.causal = 1, ADD();
    x = fwd("D16-bf16", 1, 113, 113, 4, 2, 16), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_BF16, ADD();
    x = fwd("D24-f16-in", 1, 203, 113, 4, 4, 24), x.c.qkv_dtype = QATTN_DTYPE_F16, x.c.window_left = 9, x.c.window_right = 4, ADD();
    x = fwd("D24-prec-fp16", 1, 113, 113, 4, 2, 24), x.c.precision = QATTN_PRECISION_FP16, x.c.causal = 1, ADD();
    {
        static const int32_t cu_q[] = {0, 17, 17, 130, 131}, cu_k[] = {0, 40, 45, 45, 248};
        x = fwd("D24-varlen-causal-strided", 0, 0, 0, 4, 2, 24), set_varlen(&x.c, 4, cu_q, cu_k), x.c.causal = 1, x.c.kv_cache = true,
        x.c.qo_bhld = true, ADD();
        x = fwd("D8-varlen-prepack", 0, 0, 0, 8, 1, 8), set_varlen(&x.c, 4, cu_q, cu_k), ADD();
    }
    x = fwd("D16-decode-split", 1, 1, 3000, 8, 2, 16), ADD();
    x = fwd("D8-decode-split-lq4-causal", 2, 4, 2048, 4, 1, 8), x.c.causal = 1, x.c.kv_cache = true, ADD();
    /* several query blocks per kv head (K/V pre-packed once for all units): F16 inputs, FP32
     * inputs rounded to BF16, varlen with strided K/V, all with 8 query heads per kv head */
    x = fwd("prepack-f16-causal", 1, 300, 300, 8, 1, 64), x.c.qkv_dtype = QATTN_DTYPE_F16, x.c.causal = 1, ADD();
    x = fwd("prepack-prec-bf16", 2, 203, 113, 8, 1, 80), x.c.precision = QATTN_PRECISION_BF16, ADD();
    {
        static const int32_t cu_q[] = {0, 70, 70, 183, 184}, cu_k[] = {0, 90, 95, 95, 298};
        x = fwd("prepack-varlen-kv-cache", 0, 0, 0, 8, 1, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.c.kv_cache = true, x.c.causal = 1, ADD();
    }
    /* GQA ratios 1, 4, 8 (MQA) */
    x = fwd("gqa1", 1, 113, 113, 8, 8, 64), x.c.causal = 1, ADD();
    x = fwd("gqa4", 2, 113, 203, 8, 2, 64), x.c.causal = 1, ADD();
    x = fwd("mqa8", 1, 203, 113, 8, 1, 64), ADD();
    x = fwd("mqa8-causal", 1, 17, 203, 8, 1, 64), x.c.causal = 1, ADD();
    /* windows */
    x = fwd("win-left", 1, 113, 113, 4, 2, 64), x.c.window_left = 16, ADD();
    x = fwd("win-right", 1, 113, 113, 4, 2, 64), x.c.window_right = 8, ADD();
    x = fwd("win-both", 1, 113, 203, 4, 2, 64), x.c.window_left = 7, x.c.window_right = 3, ADD();
    x = fwd("win-both-lq>lk", 1, 203, 113, 4, 2, 64), x.c.window_left = 20, x.c.window_right = 0, ADD();
    x = fwd("win-causal", 1, 113, 203, 4, 2, 64), x.c.window_left = 20, x.c.causal = 1, ADD();
    x = fwd("win-causal-wr-ignored", 1, 113, 113, 4, 2, 64), x.c.window_left = 5, x.c.window_right = 9, x.c.causal = 1, ADD();
    x = fwd("win-zero", 1, 17, 17, 2, 2, 64), x.c.window_left = 0, x.c.window_right = 0, ADD();
    /* varlen, with an empty q sequence (k 5 tokens) and an empty k sequence (q 113 rows) */
    {
        static const int32_t cu_q[] = {0, 17, 17, 130, 131}, cu_k[] = {0, 40, 45, 45, 248};
        x = fwd("varlen", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 4, cu_q, cu_k), ADD();
        x = fwd("varlen-causal", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.c.causal = 1, ADD();
        x = fwd("varlen-win-strided", 0, 0, 0, 8, 2, 80), set_varlen(&x.c, 4, cu_q, cu_k), x.c.window_left = 9, x.c.window_right = 4,
        x.c.kv_cache = true, x.c.qo_bhld = true, ADD();
        x = fwd("varlen-loose-max-f16", 0, 0, 0, 4, 1, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.c.seqlen_q = 300, x.c.seqlen_k = 250,
        x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_F16, ADD();
    }
    /* strided views: K/V in a bigger cache, q/o as [B, H, L, D] */
    x = fwd("kv-cache", 2, 113, 203, 4, 2, 64), x.c.kv_cache = true, x.c.causal = 1, ADD();
    x = fwd("qo-bhld", 2, 113, 113, 4, 2, 64), x.c.qo_bhld = true, ADD();
    x = fwd("kv-cache-qo-bhld-mqa", 2, 17, 203, 8, 1, 128), x.c.kv_cache = true, x.c.qo_bhld = true, x.c.window_left = 50, ADD();
    /* dtypes */
    x = fwd("f16-f16", 1, 113, 113, 4, 2, 64), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_F16, x.c.causal = 1, ADD();
    x = fwd("bf16-bf16", 1, 113, 113, 4, 2, 128), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_BF16, ADD();
    x = fwd("f16-in-f32-out", 1, 113, 203, 4, 2, 64), x.c.qkv_dtype = QATTN_DTYPE_F16, ADD();
    x = fwd("bf16-in-f32-out-nolse", 1, 203, 113, 4, 1, 64), x.c.qkv_dtype = QATTN_DTYPE_BF16, x.c.with_lse = false, ADD();
    x = fwd("f32-in-bf16-out", 1, 113, 113, 4, 2, 64), x.c.o_dtype = QATTN_DTYPE_BF16, ADD();
    x = fwd("f32-in-f16-out-strided", 1, 113, 113, 4, 2, 64), x.c.o_dtype = QATTN_DTYPE_F16, x.c.kv_cache = true, x.c.qo_bhld = true, ADD();
    /* precisions on FP32 inputs (and on other-dtype inputs) */
    x = fwd("prec-fp16", 1, 113, 203, 4, 2, 64), x.c.precision = QATTN_PRECISION_FP16, ADD();
    x = fwd("prec-bf16", 1, 113, 203, 4, 2, 128), x.c.precision = QATTN_PRECISION_BF16, x.c.causal = 1, ADD();
    x = fwd("prec-fp16-bf16-in", 1, 113, 113, 4, 2, 64), x.c.precision = QATTN_PRECISION_FP16, x.c.qkv_dtype = QATTN_DTYPE_BF16,
    x.c.o_dtype = QATTN_DTYPE_F16, ADD();
    x = fwd("prec-bf16-f16-in-nolse", 1, 113, 113, 4, 2, 64), x.c.precision = QATTN_PRECISION_BF16, x.c.qkv_dtype = QATTN_DTYPE_F16,
    x.c.with_lse = false, ADD();
    x = fwd("prec-fp32-explicit", 1, 17, 113, 4, 2, 64), x.c.precision = QATTN_PRECISION_FP32, ADD();
    x = fwd("prec-fp16-f16-in", 1, 113, 113, 2, 2, 64), x.c.precision = QATTN_PRECISION_FP16, x.c.qkv_dtype = QATTN_DTYPE_F16,
    x.c.o_dtype = QATTN_DTYPE_F16, ADD();
    /* explicit scale */
    x = fwd("scale-0.3", 1, 113, 113, 2, 2, 64), x.c.scale = 0.3f, ADD();
    /* decode shapes: few units (< 32) and Lk >= 1024, so the driver splits the KV axis */
    x = fwd("decode-split", 1, 1, 3000, 8, 2, 128), ADD();
    x = fwd("decode-split-f16-window", 1, 1, 3000, 8, 2, 64), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_F16, x.c.window_left = 700, ADD();
    x = fwd("decode-split-lq4-causal-cache", 2, 4, 2048, 4, 1, 64), x.c.causal = 1, x.c.kv_cache = true, ADD();
    {
        static const int32_t cu_q[] = {0, 1, 2, 3}, cu_k[] = {0, 1500, 1500, 2600};
        x = fwd("decode-split-varlen-kempty", 0, 0, 0, 8, 2, 64), set_varlen(&x.c, 3, cu_q, cu_k), ADD();
    }
    x = fwd("decode-split-prec-bf16", 1, 1, 2100, 4, 4, 64), x.c.precision = QATTN_PRECISION_BF16, ADD();
    /* a caller workspace of exactly the size asked for (and one byte short: refused), 3 threads: a
     * plain case, split-KV decode (which needs partials), D 8 and D 16 */
    x = fwd("workspace-gqa4", 2, 113, 203, 8, 2, 64), x.c.causal = 1, x.user_workspace = true, x.threads = OP_T3, ADD();
    x = fwd("workspace-decode-split", 1, 1, 3000, 8, 2, 128), x.user_workspace = true, x.threads = OP_T3, ADD();
    x = fwd("workspace-D8-causal-lq<lk", 2, 113, 203, 4, 2, 8), x.c.causal = 1, x.user_workspace = true, x.threads = OP_T3, ADD();
    x = fwd("workspace-D16-decode-split", 1, 1, 3000, 8, 2, 16), x.user_workspace = true, x.threads = OP_T3, ADD();
#undef ADD
    return n;
}

/* Softcap and ALiBi (qattn_params.softcap, alibi_slopes, alibi_batch_stride): causal and not,
 * Lq != Lk, one query, GQA, varlen with an empty sequence, head_dim 64/80/128/256, softcap 5
 * (saturating) to 50, slopes [H] and [B, H], both together, FP16 precision and BF16 inputs. */
static int add_score_mods(op_case *t, int n) {
    op_case x;
#define ADD() (t[n++] = x)
#define MODS(cap, al) (x.softcap = (cap), x.alibi = (al), x.threads = OP_T1 | OP_T3)
    x = fwd("softcap5", 2, 77, 77, 4, 4, 64), MODS(5.0f, 0), ADD();
    x = fwd("softcap50-causal", 1, 113, 203, 4, 2, 128), x.c.causal = 1, MODS(50.0f, 0), ADD();
    x = fwd("alibi-H", 2, 65, 130, 8, 8, 64), MODS(0.0f, 1), ADD();
    x = fwd("alibi-BH-causal-gqa", 3, 40, 97, 8, 2, 80), x.c.causal = 1, MODS(0.0f, 2), ADD();
    x = fwd("both-causal-lq>lk", 1, 90, 33, 4, 4, 128), x.c.causal = 1, MODS(5.0f, 1), ADD();
    x = fwd("both-d256", 2, 17, 150, 2, 1, 256), MODS(20.0f, 2), ADD();
    x = fwd("both-decode", 2, 1, 700, 8, 2, 128), x.c.causal = 1, MODS(5.0f, 2), ADD();
    x = fwd("both-decode-split", 1, 1, 1500, 4, 4, 64), MODS(30.0f, 1), ADD();
    x = fwd("alibi-window", 1, 100, 100, 4, 4, 64), x.c.window_left = 20, x.c.window_right = 7, MODS(0.0f, 1), ADD();
    {
        static const int32_t cu_q[] = {0, 30, 30, 71}, cu_k[] = {0, 50, 60, 101};
        x = fwd("both-varlen-empty", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 3, cu_q, cu_k), x.c.causal = 1, MODS(5.0f, 2), ADD();
    }
    x = fwd("both-fp16", 1, 70, 70, 4, 4, 64), x.c.causal = 1, x.c.precision = QATTN_PRECISION_FP16, MODS(5.0f, 1), ADD();
    x = fwd("both-bf16-in", 1, 70, 90, 4, 2, 128), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_BF16, MODS(50.0f, 2), ADD();
#undef MODS
#undef ADD
    return n;
}

/* Block-sparse attention (qattn_params.block_mask): mask blocks of 16, 48, 64 and 128 against the
 * kernels' 64-key tiles and 256-row units, causal and windows on top, Lq != Lk, varlen with an
 * empty sequence, GQA with shared and per-head maps, all-zero mask rows, split-KV decode, NaN in
 * K/V of blocks no row computes, FP16/BF16, softcap and ALiBi on rows cut into runs of live query
 * blocks. */
static int add_block_sparse(op_case *t, int n) {
    op_case x;
#define ADD() (t[n++] = x)
    /* block sizes against the 64-key tiles and the 256-row units */
    x = fwd("bq64-bk64-perhead", 2, 300, 300, 4, 4, 64), x.mask = mask(64, 64, 0.4), ADD();
    x = fwd("bq16-bk16-gqa-shared-causal-lq<lk", 1, 200, 333, 8, 2, 64), x.c.causal = 1, x.mask = mask(16, 16, 0.5), x.mask.share_heads = true,
    ADD();
    x = fwd("bq128-bk128-causal-D128", 1, 517, 517, 2, 1, 128), x.c.causal = 1, x.mask = mask(128, 128, 0.5), ADD();
    x = fwd("bq64-bk16-window", 1, 203, 290, 4, 2, 64), x.c.window_left = 70, x.c.window_right = 20, x.mask = mask(64, 16, 0.5), ADD();
    x = fwd("bq48-bk80-lq>lk-causal", 2, 290, 203, 4, 2, 80), x.c.causal = 1, x.mask = mask(48, 80, 0.6), x.mask.pad = 3, ADD();
    x = fwd("bq16-bk128-gqa4-perhead", 1, 260, 400, 8, 2, 64), x.mask = mask(16, 128, 0.3), ADD();
    x = fwd("zero-rows-shared-batch", 2, 150, 150, 4, 2, 64), x.mask = mask(32, 32, 0.7), x.mask.zero_rows = true, x.mask.share_batch = true,
    ADD();
    x = fwd("nan-in-hidden-block", 2, 130, 200, 4, 2, 64), x.mask = mask(64, 64, 0.6), x.mask.nan_dead = true, ADD();
    x = fwd("nan-in-hidden-block-bk16-causal", 1, 150, 150, 8, 1, 64), x.c.causal = 1, x.mask = mask(16, 16, 0.6), x.mask.nan_dead = true,
    ADD();
    x = fwd("bs-one-query", 3, 1, 213, 4, 2, 64), x.mask = mask(16, 32, 0.5), ADD();
    x = fwd("dense-mask", 1, 113, 203, 4, 2, 64), x.mask = mask(64, 64, 1.0), ADD();
    x = fwd("empty-mask", 1, 113, 203, 4, 2, 64), x.mask = mask(64, 64, 0.0), ADD();
    /* varlen with an empty q sequence and an empty k sequence; blocks count from each start */
    {
        static const int32_t cu_q[] = {0, 100, 100, 360, 361}, cu_k[] = {0, 130, 140, 140, 440};
        x = fwd("bs-varlen", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.mask = mask(32, 48, 0.5), ADD();
        x = fwd("bs-varlen-causal-kvcache", 0, 0, 0, 8, 2, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.c.causal = 1, x.c.kv_cache = true,
        x.mask = mask(64, 64, 0.5), ADD();
    }
    /* dtypes and precisions */
    x = fwd("bs-f16-f16", 1, 300, 300, 4, 2, 64), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_F16, x.c.causal = 1, x.mask = mask(64, 64, 0.5),
    ADD();
    x = fwd("bs-bf16-bf16-D128", 1, 260, 260, 4, 4, 128), x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_BF16, x.mask = mask(128, 64, 0.5), ADD();
    x = fwd("bs-prec-fp16", 1, 200, 300, 4, 2, 64), x.c.precision = QATTN_PRECISION_FP16, x.mask = mask(16, 64, 0.5), ADD();
    x = fwd("bs-prec-bf16-qo-bhld", 1, 200, 300, 4, 2, 64), x.c.precision = QATTN_PRECISION_BF16, x.c.qo_bhld = true, x.mask = mask(64, 16, 0.5),
    ADD();
    /* decode shapes: few units, split KV (splits cut at equal live blocks), all kv heads per unit */
    x = fwd("bs-decode-split", 1, 1, 3000, 8, 2, 128), x.mask = mask(16, 64, 0.3), ADD();
    x = fwd("bs-decode-split-lq4-causal-perhead", 2, 4, 2048, 4, 2, 64), x.c.causal = 1, x.mask = mask(16, 16, 0.2), ADD();
    x = fwd("bs-decode-split-f32-direct-mqa", 1, 1, 2500, 4, 1, 64), x.mask = mask(16, 128, 0.25), ADD();
    /* softcap and ALiBi with a mask: per-row slopes and diagonals follow each run of live query
     * blocks (runs start inside a unit), splits and varlen count distances per sequence */
    x = fwd("bs-softcap-alibi-bq16-bk64-perhead", 2, 300, 300, 4, 2, 64), x.mask = mask(16, 64, 0.4), x.softcap = 20.0f, x.alibi = 2, ADD();
    x = fwd("bs-softcap-alibi-causal-lq<lk-gqa4", 1, 260, 400, 8, 2, 80), x.c.causal = 1, x.mask = mask(32, 48, 0.5), x.softcap = 5.0f,
    x.alibi = 1, ADD();
    x = fwd("bs-alibi-decode-split-causal", 2, 4, 2048, 4, 2, 64), x.c.causal = 1, x.mask = mask(16, 16, 0.3), x.alibi = 2, ADD();
    {
        static const int32_t cu_q[] = {0, 100, 100, 360, 361}, cu_k[] = {0, 130, 140, 140, 440};
        x = fwd("bs-softcap-alibi-varlen", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 4, cu_q, cu_k), x.mask = mask(32, 48, 0.5), x.softcap = 30.0f,
        x.alibi = 2, ADD();
    }
    x = fwd("bs-softcap-alibi-prec-bf16", 1, 200, 300, 4, 2, 64), x.c.precision = QATTN_PRECISION_BF16, x.mask = mask(64, 16, 0.5),
    x.softcap = 10.0f, x.alibi = 1, ADD();
#undef ADD
    return n;
}

/* An INT8 case of every scheme (qattn, intfa, sage), 1 and 2 threads. */
static int add_int8_schemes(op_case *t, int n, op_case x) {
    x.c.precision = QATTN_PRECISION_INT8;
    x.threads = OP_T1 | OP_T2;
    for (int32_t scheme = QATTN_INT8_DEFAULT; scheme <= QATTN_INT8_SAGE; scheme++) x.int8_scheme = scheme, t[n++] = x;
    return n;
}

/* INT8, every scheme: distributions that stress the quantizer (uniform, outlier channels,
 * attention sinks, spread outliers, heads of mixed scale), causal with Lq != Lk, windows, GQA/MQA,
 * split-KV decode, varlen with an empty sequence, head dims 8 to 256, block masks. */
static int add_int8(op_case *t, int n) {
    op_case x;
    static const struct {
        const char *name;
        int64_t B, Lq, Lk;
        int H, HK, D, causal;
        op_dist dist;
        int wl, wr;
    } shapes[] = {
        {"int8-normal-B2-L200", 2, 200, 200, 4, 4, 64, 0, OP_DIST_NORMAL, -1, -1},
        {"int8-uniform-L256-D128", 1, 256, 256, 2, 2, 128, 0, OP_DIST_UNIFORM, -1, -1},
        {"int8-causal-lq<lk-gqa4-D80", 2, 17, 203, 8, 2, 80, 1, OP_DIST_NORMAL, -1, -1},
        {"int8-causal-lq>lk-empty-rows", 1, 203, 113, 2, 1, 32, 1, OP_DIST_NORMAL, -1, -1},
        {"int8-window-16-3-mqa-D256", 1, 150, 150, 3, 1, 256, 0, OP_DIST_NORMAL, 16, 3},
        {"int8-outlier-L300", 1, 300, 300, 2, 2, 128, 0, OP_DIST_OUTLIER, -1, -1},
        {"int8-sink-causal-L300", 1, 300, 300, 2, 2, 128, 1, OP_DIST_SINK, -1, -1},
        {"int8-decode-split-Lk3000", 1, 1, 3000, 2, 1, 64, 0, OP_DIST_NORMAL, -1, -1},
        {"int8-D8-L203", 1, 203, 203, 4, 2, 8, 0, OP_DIST_NORMAL, -1, -1},
        {"int8-D8-causal-lq<lk-mqa", 2, 17, 203, 4, 1, 8, 1, OP_DIST_NORMAL, -1, -1},
        {"int8-D8-outlier-L300", 1, 300, 300, 2, 2, 8, 0, OP_DIST_OUTLIER, -1, -1},
        {"int8-D16-causal-lq>lk-gqa", 1, 203, 113, 4, 2, 16, 1, OP_DIST_NORMAL, -1, -1},
        {"int8-D16-uniform-L256", 1, 256, 256, 2, 2, 16, 0, OP_DIST_UNIFORM, -1, -1},
        {"int8-D16-decode-split-Lk3000", 1, 1, 3000, 2, 1, 16, 0, OP_DIST_NORMAL, -1, -1},
        {"int8-D24-sink-causal-L300", 1, 300, 300, 2, 2, 24, 1, OP_DIST_SINK, -1, -1},
        {"int8-D24-window-16-3", 1, 150, 150, 3, 1, 24, 0, OP_DIST_NORMAL, 16, 3},
        {"int8-D40-spread-L203", 1, 203, 203, 2, 1, 40, 0, OP_DIST_SPREAD, -1, -1},
        {"int8-D72-causal-L113", 1, 113, 113, 2, 2, 72, 1, OP_DIST_NORMAL, -1, -1},
        {"int8-D136-gqa-lq17-lk203", 1, 17, 203, 4, 2, 136, 0, OP_DIST_NORMAL, -1, -1},
        {"int8-D200-causal-L150", 1, 150, 150, 2, 1, 200, 1, OP_DIST_NORMAL, -1, -1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        x = fwd(shapes[i].name, shapes[i].B, shapes[i].Lq, shapes[i].Lk, shapes[i].H, shapes[i].HK, shapes[i].D);
        x.c.causal = shapes[i].causal, x.dist = shapes[i].dist, x.c.window_left = shapes[i].wl, x.c.window_right = shapes[i].wr;
        n = add_int8_schemes(t, n, x);
    }
    {
        static const int32_t cu_q[] = {0, 5, 5, 75}, cu_k[] = {0, 90, 123, 193}; /* lengths 5|0|70 x 90|33|70 */
        x = fwd("int8-varlen-causal", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 3, cu_q, cu_k), x.c.causal = 1, n = add_int8_schemes(t, n, x);
        x = fwd("int8-D8-varlen-causal", 0, 0, 0, 4, 2, 8), set_varlen(&x.c, 3, cu_q, cu_k), x.c.causal = 1, n = add_int8_schemes(t, n, x);
        /* sharp units in varlen (kv head 1 of each sequence is sharp; the empty query sequence is not) */
        x = fwd("int8-heads-varlen-causal", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 3, cu_q, cu_k), x.c.causal = 1, x.dist = OP_DIST_HEADS;
        n = add_int8_schemes(t, n, x);
    }
    /* block masks narrower than, equal to and wider than the 64-key tiles */
    x = fwd("int8-mask-64x64-perhead-L300", 2, 300, 300, 4, 4, 64), x.mask = mask(64, 64, 0.4), n = add_int8_schemes(t, n, x);
    x = fwd("int8-mask-16x16-causal-lq<lk-gqa-shared", 1, 200, 333, 8, 2, 64), x.c.causal = 1, x.mask = mask(16, 16, 0.5),
    x.mask.share_heads = true, n = add_int8_schemes(t, n, x);
    x = fwd("int8-mask-128x128-causal-D128-L517", 1, 517, 517, 2, 1, 128), x.c.causal = 1, x.mask = mask(128, 128, 0.5),
    n = add_int8_schemes(t, n, x);
    x = fwd("int8-mask-32x48-lq>lk-zero-rows", 1, 203, 150, 4, 2, 64), x.mask = mask(32, 48, 0.6), x.mask.zero_rows = true,
    n = add_int8_schemes(t, n, x);
    x = fwd("int8-mask-16x128-decode-split", 1, 1, 3000, 4, 1, 64), x.mask = mask(16, 128, 0.3), n = add_int8_schemes(t, n, x);
    {
        static const int32_t cu_q[] = {0, 100, 100, 250}, cu_k[] = {0, 120, 160, 360}; /* 100|0|150 x 120|40|200 */
        x = fwd("int8-mask-32x64-varlen-causal", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 3, cu_q, cu_k), x.c.causal = 1, x.mask = mask(32, 64, 0.5);
        n = add_int8_schemes(t, n, x);
    }
    return n;
}

/* FP8 emulation (E4M3, E5M2): head dims 64, 8, 16, and with a block mask. */
static int add_fp8(op_case *t, int n) {
    for (int32_t prec = QATTN_PRECISION_FP8_E4M3; prec <= QATTN_PRECISION_FP8_E5M2; prec++) {
        static const int dims[] = {64, 8, 16};
        for (int i = 0; i < 3; i++) {
            op_case x = fwd("fp8-causal-L64", 1, 64, 64, 2, 1, dims[i]);
            x.c.causal = 1, x.c.precision = prec, x.threads = OP_T1 | OP_T2;
            t[n++] = x;
        }
        op_case x = fwd("fp8-mask-16x48-causal-lq<lk", 1, 150, 200, 2, 1, 64);
        x.c.causal = 1, x.c.precision = prec, x.threads = OP_T1 | OP_T2;
        x.mask = mask(16, 48, 0.5), x.mask.zero_rows = true;
        t[n++] = x;
    }
    return n;
}

/* Precision INT4 (docs/FORMAT.md section 8): D 64/80/128/256, tails, one query, causal with
 * Lq != Lk, GQA, varlen with an empty sequence, outlier keys, block masks; FP16/BF16 inputs (the
 * CUDA targets). */
static int add_int4(op_case *t, int n) {
    op_case x;
#define ADD() (x.c.precision = QATTN_PRECISION_INT4, x.threads = OP_T1 | OP_T2, t[n++] = x)
    x = fwd("int4-D128-L203", 2, 203, 203, 4, 4, 128), ADD();
    x = fwd("int4-D64-causal-lq<lk-gqa", 1, 113, 300, 8, 2, 64), x.c.causal = 1, ADD();
    x = fwd("int4-D80-causal-L17", 2, 17, 17, 2, 1, 80), x.c.causal = 1, ADD();
    x = fwd("int4-D256-one-query-mqa", 1, 1, 129, 4, 1, 256), ADD();
    x = fwd("int4-D128-causal-lq>lk-empty-rows", 1, 300, 113, 2, 2, 128), x.c.causal = 1, ADD();
    {
        static const int32_t cu_q[] = {0, 70, 70, 103}, cu_k[] = {0, 90, 90, 131};
        x = fwd("int4-D64-varlen-empty-gqa", 0, 0, 0, 4, 2, 64), set_varlen(&x.c, 3, cu_q, cu_k), ADD();
    }
    {
        static const int32_t cu_q[] = {0, 0, 65, 82}, cu_k[] = {0, 0, 80, 97};
        x = fwd("int4-D128-varlen-causal-empty-first", 0, 0, 0, 2, 1, 128), set_varlen(&x.c, 3, cu_q, cu_k), x.c.causal = 1, ADD();
    }
    x = fwd("int4-D128-outlier-gqa", 1, 256, 256, 8, 2, 128), x.dist = OP_DIST_OUTLIER12, ADD();
    /* FP16/BF16 inputs: the ones the CUDA backend takes (its INT8 kernels at D 64 and 128) */
    x = fwd("int4-D128-f16-causal-lq<lk-gqa", 2, 203, 330, 8, 2, 128), x.c.qkv_dtype = QATTN_DTYPE_F16, x.c.causal = 1, ADD();
    x = fwd("int4-D64-bf16-lq>lk", 1, 300, 113, 4, 4, 64), x.c.qkv_dtype = QATTN_DTYPE_BF16, x.c.o_dtype = QATTN_DTYPE_BF16, ADD();
    x = fwd("int4-D128-f16-outlier-one-query", 3, 1, 700, 4, 1, 128), x.c.qkv_dtype = QATTN_DTYPE_F16, x.dist = OP_DIST_OUTLIER12, ADD();
    /* with a block mask, in the shapes the CUDA backend's block-sparse INT8 kernels take (D 128, 128-row query
     * blocks, key blocks a multiple of the 128-key tile) */
    x = fwd("int4-bs-D128-f16-causal-gqa", 1, 517, 517, 4, 2, 128), x.c.qkv_dtype = QATTN_DTYPE_F16, x.c.causal = 1, x.mask = mask(128, 128, 0.5),
    ADD();
    x = fwd("int4-bs-D128-bf16-lq<lk", 2, 300, 700, 4, 4, 128), x.c.qkv_dtype = QATTN_DTYPE_BF16, x.mask = mask(128, 256, 0.4), ADD();
#undef ADD
    return n;
}

/* qattn_forward_kvcache over a caller's cache (tests/ops_kvcache.c): paged with shuffled pages and
 * contiguous, FP32/FP16/BF16 caches, append with rotary (halves and interleaved, on part of the
 * channels) and without new tokens, decode, speculative decode, chunked prefill, windows, causal
 * with Lq > Lk, split-KV decode over pages, softcap and ALiBi; 1 and 3 threads. */
static int add_kvcache(op_case *t, int n) {
    static const struct {
        const char *name;
        int B, Lq, Sn, H, HK, D;
        int page;          /* tokens per page; 0 = contiguous cache */
        int32_t cs[4];     /* cache_seqlens */
        int causal, wl, wr;
        int rd, inter;     /* rotary_dim (0: none), interleaved */
        int32_t dtype;     /* of q, caches, new tokens */
        int q_bhld;        /* q stored [B, H, Lq, D] (a strided view) instead of [B, Lq, H, D] */
        float softcap;     /* 0 = off */
        int alibi;         /* 1: ALiBi slopes [B, H] (alibi_batch_stride H), different per sequence */
    } cases[] = {
        /* decode, FP32 (K/V read in place), shuffled pages of 16, an empty sequence */
        {"decode", 3, 1, 1, 8, 2, 64, 16, {0, 17, 40}, 1, -1, -1, 64, 1, QATTN_DTYPE_F32, 0, 0.0f, 0},
        /* speculative decode, FP16, pages of 32, GQA off, rotary on half the channels (NeoX halves) */
        {"speculative", 2, 5, 5, 4, 4, 80, 32, {31, 70}, 1, -1, -1, 32, 0, QATTN_DTYPE_F16, 0, 0.0f, 0},
        /* chunked prefill with a cached prefix, BF16, pages of 256, MQA, the pre-pack path */
        {"chunked prefill", 2, 100, 100, 4, 1, 128, 256, {0, 300}, 1, -1, -1, 64, 1, QATTN_DTYPE_BF16, 0, 0.0f, 0},
        /* no new tokens, contiguous cache, not causal, no rotary */
        {"no append", 2, 5, 0, 6, 3, 64, 0, {0, 150}, 0, -1, -1, 0, 0, QATTN_DTYPE_F32, 1, 0.0f, 0},
        /* fewer new tokens than queries, a two-sided window (queries rotated per position) */
        {"window", 3, 5, 7, 4, 2, 64, 16, {3, 0, 50}, 0, 20, 3, 48, 0, QATTN_DTYPE_F32, 1, 0.0f, 0},
        /* not causal, not windowed: every query rotated at cache_seqlens; contiguous, FP16 */
        {"bidirectional rotary", 2, 5, 1, 4, 2, 128, 0, {10, 88}, 0, -1, -1, 128, 1, QATTN_DTYPE_F16, 0, 0.0f, 0},
        /* causal with Lq > Lk: rows that see no key (zeros, lse -inf) */
        {"causal Lq > Lk", 2, 100, 7, 2, 2, 64, 16, {0, 5}, 1, -1, -1, 0, 0, QATTN_DTYPE_F32, 0, 0.0f, 0},
        /* long decode: the KV axis is split across units (merge of partials over pages) */
        {"split decode", 1, 1, 1, 8, 1, 128, 16, {1500}, 1, -1, -1, 64, 1, QATTN_DTYPE_F32, 0, 0.0f, 0},
        {"split decode f16", 2, 1, 1, 8, 2, 64, 32, {1100, 7}, 1, 100, -1, 64, 0, QATTN_DTYPE_F16, 0, 0.0f, 0},
        /* a query block of 100 with a left window crossing page ends, D 80 */
        {"prefill window", 1, 100, 7, 4, 2, 80, 16, {200}, 1, 37, -1, 80, 1, QATTN_DTYPE_F32, 0, 0.0f, 0},
        /* softcap and ALiBi: decode read in place over pages, an empty sequence */
        {"decode softcap alibi", 3, 1, 1, 8, 2, 64, 16, {0, 17, 40}, 1, -1, -1, 64, 1, QATTN_DTYPE_F32, 0, 30.0f, 1},
        /* ...chunked prefill with a cached prefix, FP16, a left window, saturating softcap */
        {"prefill softcap alibi", 2, 37, 37, 4, 2, 80, 16, {0, 150}, 1, 50, -1, 0, 0, QATTN_DTYPE_F16, 0, 5.0f, 1},
        /* ...ALiBi alone on a split decode (partials merged across pages), BF16, not causal, Lq > new */
        {"split decode alibi", 2, 3, 1, 4, 1, 128, 32, {1100, 7}, 0, -1, -1, 0, 0, QATTN_DTYPE_BF16, 1, 0.0f, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        op_case x = fwd(cases[i].name, cases[i].B, cases[i].Lq, 0, cases[i].H, cases[i].HK, cases[i].D);
        x.kind = OP_FORWARD_KVCACHE;
        x.c.qkv_dtype = cases[i].dtype, x.c.causal = cases[i].causal, x.c.window_left = cases[i].wl, x.c.window_right = cases[i].wr;
        x.c.qo_bhld = cases[i].q_bhld != 0;
        x.kv.seqlen_new = cases[i].Sn, x.kv.page = cases[i].page;
        memcpy(x.kv.cache_seqlens, cases[i].cs, sizeof x.kv.cache_seqlens);
        x.kv.rotary_dim = cases[i].rd, x.kv.rotary_interleaved = cases[i].inter;
        x.softcap = cases[i].softcap, x.alibi = cases[i].alibi;
        x.threads = OP_T1 | OP_T3;
        t[n++] = x;
    }
    return n;
}

/* ---------------------------------------------------------------- numerics: edge cases
 *
 * docs/ARCHITECTURE.md "Numerics", qattn.h "Masks" and "NaN/Inf": fully masked rows give exact
 * zeros and LSE -inf (never NaN); NaN/Inf in one token or row reaches exactly the rows that use it
 * (the oracle's NaN pattern, element for element, plus a count of the rows, so the case cannot
 * pass by an oracle that lost the NaN); huge scores neither overflow nor lose accuracy; all-zero
 * Q is uniform attention; the scale is honoured; constant rows. Each case's property runs on
 * every target after the oracle comparison. */

/* Rows [empty_rows_from, empty_rows_to) of every batch/head must be exactly 0 with LSE -inf; no
 * NaN anywhere; finite LSE elsewhere. */
static void check_empty_rows(const op_case *oc, const th_problem *pr, const float *out, const char *label) {
    int H = pr->c.n_heads, D = pr->c.head_dim;
    size_t nonzero = 0, nan = 0, lse_bad = 0;
    for (int64_t b = 0; b < pr->c.batch; b++)
        for (int64_t i = 0; i < pr->c.seqlen_q; i++)
            for (int h = 0; h < H; h++) {
                bool empty = i >= oc->empty_rows_from && i < oc->empty_rows_to;
                const float *row = out + ((b * pr->c.seqlen_q + i) * H + h) * D;
                for (int c = 0; c < D; c++) {
                    nan += isnan(row[c]) != 0;
                    if (empty && row[c] != 0.0f) nonzero++;
                }
                if (pr->lse) {
                    float l = pr->lse[(b * H + h) * pr->c.seqlen_q + i];
                    if (empty ? !(isinf(l) && l < 0) : !isfinite(l)) lse_bad++;
                }
            }
    TH_CHECK(nan == 0, "[%s] %zu NaN outputs", label, nan);
    TH_CHECK(nonzero == 0, "[%s] %zu outputs of fully masked rows are not exactly zero", label, nonzero);
    TH_CHECK(lse_bad == 0, "[%s] %zu LSE entries wrong (-inf expected exactly on the masked rows, finite elsewhere)", label, lse_bad);
}

/* Exactly nonfinite_rows (row, head) outputs hold a non-finite value (the oracle comparison has
 * already matched the NaN/Inf pattern element for element), the rest are finite. */
static void check_nonfinite_rows(const op_case *oc, const th_problem *pr, const float *out, const char *label) {
    int H = pr->c.n_heads, D = pr->c.head_dim;
    size_t nonfinite_rows = 0;
    for (int64_t r = 0; r < pr->rows * H; r++) {
        bool any = false;
        for (int c = 0; c < D; c++) any |= !isfinite(out[r * D + c]);
        nonfinite_rows += any;
    }
    TH_CHECK(nonfinite_rows == oc->nonfinite_rows, "[%s] %zu (row, head) outputs are non-finite; expected %zu", label, nonfinite_rows,
             oc->nonfinite_rows);
}

/* Outputs are convex combinations of the visible V rows: each column within [min v, max v]. */
static void check_convex(const op_case *oc, const th_problem *pr, const float *out, const char *label) {
    (void)oc;
    int H = pr->c.n_heads, HK = pr->c.n_kv_heads, D = pr->c.head_dim;
    size_t outside = 0;
    for (int64_t b = 0; b < pr->c.batch; b++)
        for (int h = 0; h < H; h++)
            for (int c = 0; c < D; c++) {
                float lo = INFINITY, hi = -INFINITY;
                for (int64_t j = 0; j < pr->c.seqlen_k; j++) {
                    float v = th_tensor_get(&pr->v, b, j, h / (H / HK), c);
                    lo = v < lo ? v : lo;
                    hi = v > hi ? v : hi;
                }
                for (int64_t i = 0; i < pr->c.seqlen_q; i++) {
                    float o = out[((b * pr->c.seqlen_q + i) * H + h) * D + c];
                    if (!(o >= lo - 1e-6f * fabsf(lo) && o <= hi + 1e-6f * fabsf(hi))) outside++;
                }
            }
    TH_CHECK(outside == 0, "[%s] %zu outputs outside the range of V (not a convex combination)", label, outside);
}

/* All-zero Q: every visible key has score 0, so o = mean of the visible V rows and
 * LSE = ln(number of visible keys). Causal: row i sees i + 1 keys (Lq = Lk, one sequence). */
static void check_uniform(const op_case *oc, const th_problem *pr, const float *out, const char *label) {
    (void)oc;
    (void)out;
    int H = pr->c.n_heads;
    size_t bad = 0;
    for (int h = 0; h < H; h++)
        for (int64_t i = 0; i < pr->c.seqlen_q; i++) {
            double want = log((double)(i + 1));
            double got = pr->lse[h * pr->c.seqlen_q + i];
            if (!(fabs(got - want) <= 1e-5 * (1.0 + want))) bad++;
        }
    TH_CHECK(bad == 0, "[%s] %zu LSE entries differ from ln(visible keys)", label, bad);
}

/* q -> a q on every element of one sequence per batch entry (not varlen). */
static void multiply_q(th_problem *pr, float a) {
    for (int64_t b = 0; b < pr->c.batch; b++)
        for (int64_t i = 0; i < pr->c.seqlen_q; i++)
            for (int h = 0; h < pr->c.n_heads; h++)
                for (int d = 0; d < pr->c.head_dim; d++) th_tensor_set(&pr->q, b, i, h, d, a * th_tensor_get(&pr->q, b, i, h, d));
}

static void q_times_1250(th_problem *pr) { multiply_q(pr, 1250.0f); }
static void q_times_150(th_problem *pr) { multiply_q(pr, 150.0f); }

static void zero_q(th_problem *pr) {
    for (int64_t b = 0; b < pr->c.batch; b++)
        for (int64_t i = 0; i < pr->c.seqlen_q; i++)
            for (int h = 0; h < pr->c.n_heads; h++)
                for (int d = 0; d < pr->c.head_dim; d++) th_tensor_set(&pr->q, b, i, h, d, 0.0f);
}

/* Every V row of a kv head the same vector: o must equal that row (up to FP32 rounding of the
 * normalisation). */
static void constant_v_rows(th_problem *pr) {
    for (int64_t b = 0; b < pr->c.batch; b++)
        for (int64_t j = 0; j < pr->c.seqlen_k; j++)
            for (int g = 0; g < pr->c.n_kv_heads; g++)
                for (int d = 0; d < pr->c.head_dim; d++) th_tensor_set(&pr->v, b, j, g, d, 0.25f * (float)(d - 32) + (float)g);
}

/* Every K row the same vector: every score of a row equal, so uniform attention whatever Q is. */
static void constant_k_rows(th_problem *pr) {
    for (int64_t b = 0; b < pr->c.batch; b++)
        for (int64_t j = 0; j < pr->c.seqlen_k; j++)
            for (int g = 0; g < pr->c.n_kv_heads; g++)
                for (int d = 0; d < pr->c.head_dim; d++) th_tensor_set(&pr->k, b, j, g, d, 0.125f * (float)((d % 7) - 3));
}

static op_poke poke(char tensor, int64_t b, int64_t pos, int64_t head, int64_t c, float value) {
    op_poke k = {tensor, b, pos, head, c, value};
    return k;
}

/* A numerics case: 1 and 3 threads, like the loops it replaced. */
static op_case edge(const char *name, int64_t B, int64_t Lq, int64_t Lk, int H, int HK, int D) {
    op_case x = fwd(name, B, Lq, Lk, H, HK, D);
    x.threads = OP_T1 | OP_T3;
    return x;
}

static int add_numerics(op_case *t, int n) {
    op_case x;
#define ADD() (t[n++] = x)
#define EMPTY(from, to) (x.property = check_empty_rows, x.empty_rows_from = (from), x.empty_rows_to = (to))
#define NONFINITE(rows) (x.property = check_nonfinite_rows, x.nonfinite_rows = (rows))
    /* fully masked rows. Right-only window with Lq > Lk: row i sees keys <= i - 40 + 5, so rows
     * 0..34 see nothing */
    x = edge("masked-by-window", 2, 60, 20, 4, 2, 64), x.c.window_right = 5, EMPTY(0, 35), ADD();
    /* both-sided window: row i sees [i - 40 - 2, i - 40 + 1]: rows 0..38 empty */
    x = edge("masked-by-window-both", 1, 60, 20, 2, 1, 64), x.c.window_left = 2, x.c.window_right = 1, EMPTY(0, 39), ADD();
    /* no keys at all */
    x = edge("seqlen_k-0", 2, 17, 0, 4, 2, 64), EMPTY(0, 17), ADD();
    /* causal with Lq > Lk (bottom-right aligned): the first Lq - Lk rows see nothing */
    x = edge("causal-lq>lk", 2, 113, 17, 4, 1, 64), x.c.causal = 1, EMPTY(0, 113 - 17), ADD();
    /* the same through F16 output: zeros must stay zeros */
    x = edge("causal-lq>lk-f16", 1, 40, 7, 2, 2, 64), x.c.causal = 1, x.c.qkv_dtype = x.c.o_dtype = QATTN_DTYPE_F16, EMPTY(0, 33), ADD();

    /* NaN / Inf propagation. Causal Lq = Lk = 64, H 4, HK 2: key j is seen by rows i >= j of heads
     * 0 and 1 (kv head 0): NaN in K token 40 of kv head 0 reaches rows 40..63 of heads 0,1 only */
    x = edge("nan-k", 1, 64, 64, 4, 2, 64), x.c.causal = 1, x.poke[0] = poke('k', 0, 40, 0, 7, NAN), NONFINITE((64 - 40) * 2), ADD();
    /* NaN in V token 10, kv head 1, column 5: column 5 of rows 10..63 of heads 2,3 */
    x = edge("nan-v", 1, 64, 64, 4, 2, 64), x.c.causal = 1, x.poke[0] = poke('v', 0, 10, 1, 5, NAN), NONFINITE((64 - 10) * 2), ADD();
    /* A NaN key outside a sliding window must not reach anyone who does not see it: NaN in K token
     * 20, window (4, 0): rows 20..24, both heads */
    x = edge("nan-k-windowed", 1, 64, 64, 2, 1, 64), x.c.window_left = 4, x.c.window_right = 0, x.poke[0] = poke('k', 0, 20, 0, 0, NAN),
    NONFINITE(5 * 2), ADD();
    /* One query row with a NaN: exactly that (row, head) is NaN. */
    x = edge("nan-q", 1, 64, 64, 4, 2, 64), x.poke[0] = poke('q', 0, 30, 3, 0, NAN), NONFINITE(1), ADD();
    /* +Inf in one element of a Q row that sees 64 keys: its scores are +-Inf, so softmax is
     * Inf - Inf = NaN for that (row, head) in exact arithmetic too; everything else is clean. */
    x = edge("inf-q", 1, 64, 64, 4, 2, 64), x.poke[0] = poke('q', 0, 50, 1, 3, INFINITY), NONFINITE(1), ADD();
    /* Split-KV decode (Lk 3000, 1 query): a NaN key in one split reaches the merged row of the
     * heads of its kv group (kv head 1: heads 4..7), and no other; a NaN key outside the window
     * reaches nothing. */
    x = edge("nan-k-split", 1, 1, 3000, 8, 2, 64), x.poke[0] = poke('k', 0, 1700, 1, 0, NAN), NONFINITE(4), ADD();
    x = edge("nan-k-split-outside-window", 1, 1, 3000, 8, 2, 64), x.c.window_left = 600, x.poke[0] = poke('k', 0, 100, 0, 0, NAN),
    x.poke[1] = poke('v', 0, 2000, 1, 0, NAN), NONFINITE(0), ADD();
    /* Split-KV decode with a NaN query: its whole row must be NaN, even though every split
     * of that row sees only NaN scores. */
    x = edge("nan-q-split", 1, 1, 3000, 8, 2, 64), x.poke[0] = poke('q', 0, 0, 6, 9, NAN), NONFINITE(1), ADD();

    /* huge scores: scale 1, q ~ 1250 N(0,1), k ~ N(0,1), D 64: scores ~ N(0, 1e4^2), i.e. +-1e4 and beyond.
     * exp of such scores overflows unless the max is subtracted first. Tolerance: the scores
     * carry an FP32 absolute error of about |s| * 2^-24 * sqrt(D) (~5e-3 at 1e4); softmax
     * outputs move by at most that much times max|v| (~4) per row, and only on rows whose two
     * largest scores are within a few units; relative L2 over the tensor is far below 1e-2,
     * which still catches any overflow (NaN/Inf) or lost row. LSE ~ max score: relative 1e-5. */
    x = edge("huge-scores", 1, 113, 113, 4, 2, 64), x.c.scale = 1.0f, x.edit = q_times_1250, x.rel_l2_bound = 1e-2, x.property = check_convex, ADD();
    /* The same in decode with split-KV: partial maxima differ by ~1e4 between splits, so the
     * merge must rescale without overflow/underflow to NaN. */
    x = edge("huge-scores-split", 1, 1, 3000, 4, 1, 64), x.c.scale = 8.0f, /* q, k ~ N(0,1): scores ~ N(0, 64^2) * ... ~ +-1e3..1e4 */
    x.edit = q_times_150, x.rel_l2_bound = 1e-2, x.property = check_convex, ADD();

    /* uniform attention over the visible keys */
    x = edge("zero-q", 1, 113, 113, 4, 2, 64), x.c.causal = 1, x.edit = zero_q, x.property = check_uniform, ADD();
    /* scale honoured: explicit, negative (attention to the least similar keys is still a valid
     * softmax), and large */
    static const float scales[] = {0.5f, 2.0f, -0.25f};
    for (int s = 0; s < 3; s++) x = edge("scale", 1, 17, 113, 4, 2, 64), x.c.scale = scales[s], ADD();
    x = edge("constant-v", 1, 113, 203, 4, 2, 64), x.c.causal = 1, x.edit = constant_v_rows, ADD();
    x = edge("constant-k", 1, 113, 113, 4, 2, 64), x.c.causal = 1, x.edit = constant_k_rows, ADD();
#undef NONFINITE
#undef EMPTY
#undef ADD
    return n;
}

/* ---------------------------------------------------------------- KV-cache decode
 *
 * qattn_kv_decode over the cache object (tests/ops_decode.c): every shape with an FP16, a BF16, an
 * INT8 and a calibrated INT8 cache; GQA 4, MHA, MQA, head dims 8 to 256 (D 8: less than one
 * 16-lane vector; D % 32 of 8, 16, 24: the kernels' channel tails), block sizes 7, 16, 32 (lengths
 * not multiples of a block, a one-token sequence, a sequence of exactly Lq tokens), Lq 1..5 causal
 * and not, left windows (one shorter than a block), several sequences of uneven lengths, long ones
 * split across units (merged in split order): 1, 2, 3 and 8 threads. The CUDA targets run
 * qattn_kv_decode_cuda, which refuses every head dim but 64 and 128 (counted, not failed). */
static int add_kv_decode(op_case *t, int n) {
    static const struct {
        const char *name;
        int H, HK, D, block, Lq, causal, wl, n_seqs;
        int32_t lens[4];
    } shapes[] = {
        /*                              H  HK    D block Lq causal wl  n  lens */
        {"gqa4-uneven-split",           8,  2,  64, 16, 1, 1,  -1, 3, {1000, 37, 513}},
        {"mha-block7-lq3-exact-lq",     4,  4, 128,  7, 3, 1,  -1, 2, {203, 3}},       /* a sequence of exactly Lq tokens */
        {"h32-speculative-window",     32,  8, 128, 16, 2, 1, 100, 1, {3000}},         /* the acceptance shape's heads */
        {"D80-noncausal-lq4",           6,  2,  80, 32, 4, 0,  -1, 2, {113, 1200}},
        {"mqa-window17-lq5",            8,  1,  64, 16, 5, 1,  17, 4, {17, 64, 1100, 5}}, /* a window shorter than a block */
        {"D256",                        2,  2, 256, 16, 1, 1,  -1, 1, {2500}},
        {"D8-split",                    8,  2,   8, 16, 1, 1,  -1, 3, {1000, 37, 513}}, /* less than one 16-lane vector */
        {"D16-mqa-block7-lq3",          4,  1,  16,  7, 3, 1,  -1, 2, {203, 3}},
        {"D24-noncausal-lq4-window",    6,  2,  24, 32, 4, 0,  40, 2, {113, 1200}},
        {"D40-lq2",                     4,  2,  40, 16, 2, 1,  -1, 1, {700}},
        {"D136-one-token",              4,  4, 136, 16, 1, 1,  -1, 2, {300, 1}},         /* a one-token sequence */
    };
    static const struct {
        int32_t dtype;
        bool calibrated;
    } caches[] = {{QATTN_DTYPE_F16, false}, {QATTN_DTYPE_BF16, false}, {QATTN_DTYPE_I8, false}, {QATTN_DTYPE_I8, true}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (size_t j = 0; j < sizeof caches / sizeof caches[0]; j++) {
            int32_t longest = 0;
            for (int b = 0; b < shapes[i].n_seqs; b++) longest = shapes[i].lens[b] > longest ? shapes[i].lens[b] : longest;
            op_case x = fwd(shapes[i].name, shapes[i].n_seqs, shapes[i].Lq, longest, shapes[i].H, shapes[i].HK, shapes[i].D);
            x.kind = OP_KV_DECODE;
            x.c.causal = shapes[i].causal, x.c.window_left = shapes[i].wl;
            x.dec.cache_dtype = caches[j].dtype, x.dec.calibrated = caches[j].calibrated, x.dec.block = shapes[i].block;
            memcpy(x.dec.lens, shapes[i].lens, sizeof x.dec.lens);
            x.threads = OP_T123 | OP_T8;
            t[n++] = x;
        }
    return n;
}

static int build_table(op_case *t) {
    int n = 0;
    n = add_forward(t, n);
    n = add_score_mods(t, n);
    n = add_block_sparse(t, n);
    n = add_int8(t, n);
    n = add_fp8(t, n);
    n = add_int4(t, n);
    n = add_kvcache(t, n);
    n = add_numerics(t, n);
    n = add_kv_decode(t, n);
    if (n > MAX_CASES) {
        fprintf(stderr, "test_ops: %d cases, room for %d\n", n, MAX_CASES);
        return 0;
    }
    return n;
}

int main(void) {
    th_init("test_ops");
    op_target targets[OP_MAX_TARGETS];
    int n_targets = op_targets(targets);
    static op_case table[MAX_CASES + 64];
    int n = build_table(table);
    TH_CHECK(n > 0, "the table is empty or overflowed");
    for (int i = 0; i < n; i++) op_run_case(&table[i], i, targets, n_targets);
    printf("  %d cases in the table\n", n);
    op_print_summary(targets, n_targets);
    return th_finish();
}
