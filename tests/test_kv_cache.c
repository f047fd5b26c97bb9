/* The paged KV cache (include/qattn.h "KV cache and decode", docs/KVCACHE.md), what is not one
 * (case x target) oracle check: cache operations (append across block boundaries, fork +
 * copy-on-write, free, reuse of freed blocks, exhaustion leaving the cache unchanged, bad arguments
 * with messages), the decode's bad arguments, NaN and Inf reaching exactly the rows that see them
 * (every ISA), the INT8 decode kernels called directly against the scalar reference and each other
 * bit for bit, and the INT8 cache's transforms (rotation, calibration) against plain codes, their
 * export and refusals. qattn_kv_decode against the FP64 oracle on every target is the op table's
 * (tests/test_ops.c, "KV-cache decode"; tests/ops_decode.c). */
#include "harness.h"

#if (defined(__x86_64__) || defined(__i386__)) && !defined(QATTN_HAVE_X86)
#define QATTN_HAVE_X86 1 /* the library's x86 kernels exist on these targets (CMakeLists.txt) */
#endif
#include "kv/kv_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int32_t g_isas[TH_MAX_ISAS];
static int g_n_isas = 0;

static const char *dt_name(int32_t t) { return t == QATTN_DTYPE_F16 ? "f16" : t == QATTN_DTYPE_BF16 ? "bf16" : "i8"; }

static qattn_kv_cache *make_cache(qattn_ctx *ctx, int HK, int D, int BS, int32_t dtype, int64_t n_blocks, int max_seqs) {
    qattn_kv_cache_options o;
    memset(&o, 0, sizeof o);
    o.n_kv_heads = HK, o.head_dim = D, o.block_size = BS, o.dtype = dtype, o.n_blocks = n_blocks, o.max_seqs = max_seqs;
    qattn_kv_cache *c = NULL;
    qattn_status s = qattn_kv_cache_create(ctx, &o, &c);
    TH_CHECK(s == QATTN_OK, "kv_cache_create: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
    return s == QATTN_OK ? c : NULL;
}

static qattn_kv_cache_info info_of(qattn_ctx *ctx, const qattn_kv_cache *c) {
    qattn_kv_cache_info i;
    qattn_kv_cache_get_info(ctx, c, &i);
    return i;
}

static int64_t seq_len(qattn_ctx *ctx, const qattn_kv_cache *c, int s) {
    int64_t l = -1;
    qattn_kv_cache_seq_len(ctx, c, s, &l);
    return l;
}

/* Reads seq back and compares with expected FP32 values rounded as the storage rounds (FP16: exact). */
static bool read_equals(qattn_ctx *ctx, const qattn_kv_cache *c, int s, const float *k, const float *v, int64_t n, int HK, int D) {
    size_t e = (size_t)n * HK * D;
    float *rk = th_xmalloc(e * sizeof(float) + 4), *rv = th_xmalloc(e * sizeof(float) + 4);
    bool ok = qattn_kv_cache_read(ctx, c, s, 0, n, rk, rv) == QATTN_OK;
    for (size_t i = 0; ok && i < e; i++) {
        if (rk[i] != k[i] || rv[i] != v[i]) ok = false; /* the data are FP16-exact: equality is exact */
    }
    free(rk), free(rv);
    return ok;
}

/* N(0,1) values made exactly representable in FP16 (so an FP16 cache stores them exactly). */
static void fill_f16_exact(float *x, size_t n, th_rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(round(th_rng_normal(rng) * 256.0) / 256.0);
}

static void test_cache_ops(void) {
    th_set_context("cache operations (f16, HK 2, D 32, block 8)");
    printf("  cache operations\n");
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 1);
    if (!ctx) return;
    const int HK = 2, D = 32, BS = 8;
    qattn_kv_cache *c = make_cache(ctx, HK, D, BS, QATTN_DTYPE_F16, 6, 4);
    if (!c) return;
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(1000));
    size_t row = (size_t)HK * D;
    float *k = th_xmalloc(64 * row * sizeof(float)), *v = th_xmalloc(64 * row * sizeof(float));
    fill_f16_exact(k, 64 * row, &rng);
    fill_f16_exact(v, 64 * row, &rng);

    /* append across block boundaries: 5, then 8 (crosses into block 2) */
    TH_CHECK(qattn_kv_cache_append(ctx, c, 0, k, v, 5, QATTN_DTYPE_F32) == QATTN_OK, "append 5: %s", qattn_ctx_last_error(ctx));
    TH_CHECK(qattn_kv_cache_append(ctx, c, 0, k + 5 * row, v + 5 * row, 8, QATTN_DTYPE_F32) == QATTN_OK, "append 8");
    TH_CHECK(seq_len(ctx, c, 0) == 13, "seq 0 length %lld, expected 13", (long long)seq_len(ctx, c, 0));
    TH_CHECK(info_of(ctx, c).used_blocks == 2, "13 tokens of block 8 use %lld blocks, expected 2", (long long)info_of(ctx, c).used_blocks);
    TH_CHECK(read_equals(ctx, c, 0, k, v, 13, HK, D), "seq 0 reads back differently after appends across a block boundary");

    /* fork shares blocks; append to the fork copies the shared partial block (CoW) */
    TH_CHECK(qattn_kv_cache_fork(ctx, c, 0, 1) == QATTN_OK, "fork: %s", qattn_ctx_last_error(ctx));
    TH_CHECK(info_of(ctx, c).used_blocks == 2, "fork used new blocks (%lld used)", (long long)info_of(ctx, c).used_blocks);
    TH_CHECK(seq_len(ctx, c, 1) == 13, "fork length %lld", (long long)seq_len(ctx, c, 1));
    float *k1 = th_xmalloc(64 * row * sizeof(float)), *v1 = th_xmalloc(64 * row * sizeof(float));
    memcpy(k1, k, 13 * row * sizeof(float));
    memcpy(v1, v, 13 * row * sizeof(float));
    memcpy(k1 + 13 * row, k + 40 * row, 2 * row * sizeof(float));
    memcpy(v1 + 13 * row, v + 40 * row, 2 * row * sizeof(float));
    TH_CHECK(qattn_kv_cache_append(ctx, c, 1, k + 40 * row, v + 40 * row, 2, QATTN_DTYPE_F32) == QATTN_OK, "append to fork: %s",
             qattn_ctx_last_error(ctx));
    TH_CHECK(info_of(ctx, c).used_blocks == 3, "CoW: %lld blocks used, expected 3", (long long)info_of(ctx, c).used_blocks);
    TH_CHECK(read_equals(ctx, c, 0, k, v, 13, HK, D), "the fork's append changed the parent");
    TH_CHECK(read_equals(ctx, c, 1, k1, v1, 15, HK, D), "the fork reads back wrong after copy-on-write");
    /* the parent's last block is now its own: appending needs no copy */
    TH_CHECK(qattn_kv_cache_append(ctx, c, 0, k + 13 * row, v + 13 * row, 3, QATTN_DTYPE_F32) == QATTN_OK, "append parent");
    TH_CHECK(info_of(ctx, c).used_blocks == 3, "parent append after CoW used a block (%lld)", (long long)info_of(ctx, c).used_blocks);
    TH_CHECK(read_equals(ctx, c, 0, k, v, 16, HK, D), "parent reads back wrong");
    TH_CHECK(read_equals(ctx, c, 1, k1, v1, 15, HK, D), "fork changed by the parent's append");

    /* exhaustion: 3 free blocks; 4 blocks' worth fails and changes nothing */
    qattn_kv_cache_info before = info_of(ctx, c);
    qattn_status s = qattn_kv_cache_append(ctx, c, 2, k, v, 25, QATTN_DTYPE_F32);
    TH_CHECK(s == QATTN_ERR_CAPACITY, "append beyond capacity returned %s", qattn_status_str(s));
    TH_CHECK(strstr(qattn_ctx_last_error(ctx), "free blocks") != NULL, "capacity message: '%s'", qattn_ctx_last_error(ctx));
    qattn_kv_cache_info after = info_of(ctx, c);
    TH_CHECK(memcmp(&before, &after, sizeof before) == 0 && seq_len(ctx, c, 2) == 0, "failed append changed the cache");
    TH_CHECK(read_equals(ctx, c, 0, k, v, 16, HK, D) && read_equals(ctx, c, 1, k1, v1, 15, HK, D), "failed append changed data");
    /* exactly filling works */
    TH_CHECK(qattn_kv_cache_append(ctx, c, 2, k, v, 24, QATTN_DTYPE_F32) == QATTN_OK, "append filling the cache: %s", qattn_ctx_last_error(ctx));
    TH_CHECK(info_of(ctx, c).free_blocks == 0, "free blocks %lld after filling", (long long)info_of(ctx, c).free_blocks);
    /* CoW needs a block too: fork of seq 1 (partial last block) then append -> capacity */
    TH_CHECK(qattn_kv_cache_fork(ctx, c, 1, 3) == QATTN_OK, "fork at full capacity: %s", qattn_ctx_last_error(ctx));
    s = qattn_kv_cache_append(ctx, c, 3, k, v, 1, QATTN_DTYPE_F32);
    TH_CHECK(s == QATTN_ERR_CAPACITY, "append needing a CoW block with none free returned %s", qattn_status_str(s));
    TH_CHECK(seq_len(ctx, c, 3) == 15 && read_equals(ctx, c, 1, k1, v1, 15, HK, D), "failed CoW append changed the cache");

    /* free and reuse */
    TH_CHECK(qattn_kv_cache_free_seq(ctx, c, 2) == QATTN_OK, "free seq 2");
    TH_CHECK(info_of(ctx, c).free_blocks == 3, "free blocks %lld after freeing 3", (long long)info_of(ctx, c).free_blocks);
    TH_CHECK(qattn_kv_cache_free_seq(ctx, c, 1) == QATTN_OK, "free seq 1");
    TH_CHECK(info_of(ctx, c).free_blocks == 3, "freeing a shared sequence released blocks (%lld free)", (long long)info_of(ctx, c).free_blocks);
    TH_CHECK(read_equals(ctx, c, 3, k1, v1, 15, HK, D), "the surviving fork lost its data when its parent was freed");
    TH_CHECK(qattn_kv_cache_free_seq(ctx, c, 3) == QATTN_OK && qattn_kv_cache_free_seq(ctx, c, 0) == QATTN_OK, "free 3, 0");
    TH_CHECK(info_of(ctx, c).free_blocks == 6 && info_of(ctx, c).tokens_stored == 0, "not everything freed");
    TH_CHECK(qattn_kv_cache_append(ctx, c, 1, k, v, 48, QATTN_DTYPE_F32) == QATTN_OK, "reuse of all freed blocks: %s", qattn_ctx_last_error(ctx));
    TH_CHECK(read_equals(ctx, c, 1, k, v, 48, HK, D), "data in reused blocks");

    /* bad arguments: status + message, nothing changed */
    before = info_of(ctx, c);
    struct {
        qattn_status got, want;
        const char *what;
    } bad[] = {
        {qattn_kv_cache_append(ctx, NULL, 0, k, v, 1, QATTN_DTYPE_F32), QATTN_ERR_NULL_POINTER, "NULL cache"},
        {qattn_kv_cache_append(ctx, c, 4, k, v, 1, QATTN_DTYPE_F32), QATTN_ERR_INVALID_ARGUMENT, "seq id 4 of 4"},
        {qattn_kv_cache_append(ctx, c, -1, k, v, 1, QATTN_DTYPE_F32), QATTN_ERR_INVALID_ARGUMENT, "seq id -1"},
        {qattn_kv_cache_append(ctx, c, 0, k, v, -1, QATTN_DTYPE_F32), QATTN_ERR_INVALID_ARGUMENT, "n_tokens -1"},
        {qattn_kv_cache_append(ctx, c, 0, NULL, v, 1, QATTN_DTYPE_F32), QATTN_ERR_NULL_POINTER, "NULL k"},
        {qattn_kv_cache_append(ctx, c, 0, k, v, 1, QATTN_DTYPE_I8), QATTN_ERR_INVALID_ARGUMENT, "i8 input"},
        {qattn_kv_cache_fork(ctx, c, 0, 0), QATTN_ERR_INVALID_ARGUMENT, "fork onto itself"},
        {qattn_kv_cache_fork(ctx, c, 0, 1), QATTN_ERR_INVALID_ARGUMENT, "fork into a non-empty sequence"},
        {qattn_kv_cache_read(ctx, c, 1, 40, 9, k1, v1), QATTN_ERR_INVALID_ARGUMENT, "read past the end"},
        {qattn_kv_cache_free_seq(ctx, c, 9), QATTN_ERR_INVALID_ARGUMENT, "free seq 9"},
        {qattn_kv_cache_seq_len(ctx, c, 0, NULL), QATTN_ERR_NULL_POINTER, "NULL len"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        TH_CHECK(bad[i].got == bad[i].want, "%s: got %s, expected %s", bad[i].what, qattn_status_str(bad[i].got), qattn_status_str(bad[i].want));
    after = info_of(ctx, c);
    TH_CHECK(memcmp(&before, &after, sizeof before) == 0, "a bad call changed the cache");
    TH_CHECK(qattn_kv_cache_fork(ctx, c, 0, 1) != QATTN_OK && strstr(qattn_ctx_last_error(ctx), "free it first"), "fork message '%s'",
             qattn_ctx_last_error(ctx));
    qattn_kv_cache_destroy(ctx, c);

    /* create: bad options */
    qattn_kv_cache_options o;
    memset(&o, 0, sizeof o);
    o.n_kv_heads = 2, o.head_dim = 30, o.block_size = 16, o.dtype = QATTN_DTYPE_F16, o.n_blocks = 4, o.max_seqs = 1;
    qattn_kv_cache *bc = NULL;
    TH_CHECK(qattn_kv_cache_create(ctx, &o, &bc) == QATTN_ERR_INVALID_ARGUMENT && bc == NULL && strstr(qattn_ctx_last_error(ctx), "head_dim"),
             "head_dim 30 accepted or message '%s'", qattn_ctx_last_error(ctx));
    for (int bad_d = 4; bad_d <= 264; bad_d += 260) { /* below and above the range: the message gives it */
        o.head_dim = bad_d;
        TH_CHECK(qattn_kv_cache_create(ctx, &o, &bc) == QATTN_ERR_INVALID_ARGUMENT && bc == NULL &&
                     strstr(qattn_ctx_last_error(ctx), "8..256 in steps of 8"),
                 "head_dim %d accepted or message '%s'", bad_d, qattn_ctx_last_error(ctx));
    }
    o.head_dim = 64, o.dtype = QATTN_DTYPE_F32;
    TH_CHECK(qattn_kv_cache_create(ctx, &o, &bc) == QATTN_ERR_INVALID_ARGUMENT, "f32 storage accepted");
    o.dtype = QATTN_DTYPE_I8, o.block_size = 0;
    TH_CHECK(qattn_kv_cache_create(ctx, &o, &bc) == QATTN_ERR_INVALID_ARGUMENT, "block_size 0 accepted");

    /* INT8: a non-finite input is refused and changes nothing */
    c = make_cache(ctx, HK, D, BS, QATTN_DTYPE_I8, 4, 2);
    if (c) {
        TH_CHECK(qattn_kv_cache_append(ctx, c, 0, k, v, 3, QATTN_DTYPE_F32) == QATTN_OK, "i8 append");
        float saved = v[4 * row + 7];
        v[4 * row + 7] = NAN;
        s = qattn_kv_cache_append(ctx, c, 0, k + 3 * row, v + 3 * row, 9, QATTN_DTYPE_F32);
        v[4 * row + 7] = saved;
        TH_CHECK(s == QATTN_ERR_INVALID_ARGUMENT && strstr(qattn_ctx_last_error(ctx), "finite"), "i8 NaN append: %s '%s'", qattn_status_str(s),
                 qattn_ctx_last_error(ctx));
        TH_CHECK(seq_len(ctx, c, 0) == 3 && info_of(ctx, c).used_blocks == 1, "refused i8 append changed the cache");
        qattn_kv_cache_destroy(ctx, c);
    }
    free(k), free(v), free(k1), free(v1);
    qattn_ctx_destroy(ctx);
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- decode: transforms, arguments, NaN/Inf */

/* A decode problem's shape, for the FP64 oracle and the calibration below. */
typedef struct dcase {
    int H, HK, D, BS, Lq, causal, window_left, n_seqs;
    int lens[4];
} dcase;

static void run_oracle(qattn_ctx *ctx, const dcase *dc, const float *q, const float *k, const float *v, const int32_t *cu_q,
                       const int32_t *cu_k, double *o64, double *lse64) {
    qattn_params p;
    qattn_params_init(&p);
    p.q = q, p.k = k, p.v = v;
    p.o = o64; /* validated, not written: the oracle writes o64 */
    p.batch = dc->n_seqs;
    p.seqlen_q = dc->Lq;
    int maxl = 0;
    for (int b = 0; b < dc->n_seqs; b++) maxl = dc->lens[b] > maxl ? dc->lens[b] : maxl;
    p.seqlen_k = maxl;
    p.n_heads = dc->H, p.n_kv_heads = dc->HK, p.head_dim = dc->D;
    p.causal = dc->causal;
    p.window_left = dc->window_left;
    p.cu_seqlens_q = cu_q, p.cu_seqlens_k = cu_k;
    qattn_params_set_contiguous(&p);
    qattn_status s = qattn_oracle_f64(ctx, &p, o64, lse64);
    TH_CHECK(s == QATTN_OK, "oracle: %s: %s", qattn_status_str(s), qattn_ctx_last_error(ctx));
}

/* A calibration of the decode case's own K, V and queries (varlen, one sequence per entry). */
static void calibrate_case(qattn_ctx *ctx, const dcase *dc, const float *q, const float *k, const float *v, const int32_t *cu_q,
                           const int32_t *cu_k, qattn_calibration *cal, float *mem) {
    int64_t n = (int64_t)dc->HK * dc->D;
    *cal = (qattn_calibration){dc->HK, dc->D, 0, mem, mem + n, mem + 2 * n, mem + 3 * n, mem + 4 * n, mem + 5 * n};
    qattn_params p;
    qattn_params_init(&p);
    p.q = q, p.k = k, p.v = v;
    p.batch = dc->n_seqs, p.n_heads = dc->H, p.n_kv_heads = dc->HK, p.head_dim = dc->D;
    p.seqlen_q = dc->Lq;
    for (int b = 0; b < dc->n_seqs; b++) p.seqlen_k = dc->lens[b] > p.seqlen_k ? dc->lens[b] : p.seqlen_k;
    p.cu_seqlens_q = cu_q, p.cu_seqlens_k = cu_k;
    qattn_params_set_contiguous(&p);
    qattn_status s = qattn_calibrate(ctx, &p, cal);
    TH_CHECK(s == QATTN_OK, "calibrate: %s", qattn_ctx_last_error(ctx));
}

/* The INT8 cache's transforms on keys with outlier channels (offset +10, spread x12 in 4 of 128
 * channels, as qattn accuracy's "outlier"). Without transforms (plain per-token codes, simulated
 * here with the cache's own row quantizer and the FP64 oracle) the K scale of every token is set
 * by the outliers (step ~30/127 against ~3/127 for N(0,1) channels); the default cache's rotation
 * spreads them over the 128 channels (max |y| ~7), so its error against the original values must
 * fall below half the plain one, and so must a calibration's (means removed, factors, rotation;
 * better than the rotation alone on this seed, 9.4e-3 against 1.29e-2, though not on every draw).
 * Then the export carries the transforms at the arena's tail, and the calibration's refusals: a
 * non-empty or FP16 cache, bad factors. */
static void test_decode_calibration_gain(void) {
    th_set_context("decode calibration gain");
    printf("  decode transforms gain and refusals\n");
    qattn_ctx *ctx = th_ctx(QATTN_ISA_AUTO, 2);
    if (!ctx) return;
    dcase dc = {8, 2, 128, 16, 4, 1, -1, 1, {700}};
    int32_t cu_q[2] = {0, 4}, cu_k[2] = {0, 700};
    size_t kv_e = (size_t)700 * 2 * 128, q_e = (size_t)4 * 8 * 128;
    float *k = th_xmalloc(kv_e * 4), *v = th_xmalloc(kv_e * 4), *q = th_xmalloc(q_e * 4), *o = th_xmalloc(q_e * 4);
    float *kp = th_xmalloc(kv_e * 4), *vp = th_xmalloc(kv_e * 4);
    double *ref = th_xmalloc(q_e * 8), *ref_plain = th_xmalloc(q_e * 8);
    float *mem = th_xmalloc((size_t)6 * 2 * 128 * 4);
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(1000));
    th_fill_normal(k, kv_e, &rng, 0, 1), th_fill_normal(v, kv_e, &rng, 0, 1), th_fill_normal(q, q_e, &rng, 0, 1);
    for (size_t i = 0; i < kv_e; i++)
        if (i % 128 % 32 == 5) k[i] = k[i] * 12.0f + 10.0f;
    run_oracle(ctx, &dc, q, k, v, cu_q, cu_k, ref, NULL);
    int8_t codes[128];
    for (size_t r = 0; r < kv_e / 128; r++) /* plain per-token codes of each (token, kv head) row */
        for (int which = 0; which < 2; which++) {
            const float *x = (which ? v : k) + r * 128;
            float *y = (which ? vp : kp) + r * 128, sc = qattn_kv_quantize_row(x, 128, codes);
            for (int i = 0; i < 128; i++) y[i] = sc * (float)codes[i];
        }
    run_oracle(ctx, &dc, q, kp, vp, cu_q, cu_k, ref_plain, NULL);
    for (size_t i = 0; i < q_e; i++) o[i] = (float)ref_plain[i];
    double err_plain = th_compare(o, ref, q_e).rel_l2;
    qattn_calibration cal;
    calibrate_case(ctx, &dc, q, k, v, cu_q, cu_k, &cal, mem);
    double err[2];
    int32_t id = 0;
    for (int calib = 0; calib < 2; calib++) {
        qattn_kv_cache *c = make_cache(ctx, 2, 128, 16, QATTN_DTYPE_I8, 50, 2);
        if (!c) break;
        if (calib) TH_CHECK(qattn_kv_cache_set_calibration(ctx, c, &cal) == QATTN_OK, "set: %s", qattn_ctx_last_error(ctx));
        TH_CHECK(qattn_kv_cache_append(ctx, c, 0, k, v, 700, QATTN_DTYPE_F32) == QATTN_OK, "append");
        qattn_decode_params dp;
        qattn_decode_params_init(&dp);
        dp.q = q, dp.o = o, dp.seq_ids = &id, dp.n_seqs = 1, dp.seqlen_q = 4, dp.n_heads = 8;
        TH_CHECK(qattn_kv_decode(ctx, c, &dp) == QATTN_OK, "decode: %s", qattn_ctx_last_error(ctx));
        err[calib] = th_compare(o, ref, q_e).rel_l2;
        qattn_kv_cache_layout lay;
        TH_CHECK(qattn_kv_cache_export(ctx, c, &lay) == QATTN_OK, "export: %s", qattn_ctx_last_error(ctx));
        TH_CHECK(lay.arena_bytes == lay.n_blocks * lay.block_bytes + 5 * 2 * 128 * 4, "arena_bytes %lld", (long long)lay.arena_bytes);
        const float *tail = (const float *)((const uint8_t *)lay.arena + lay.n_blocks * lay.block_bytes);
        for (int i = 0; i < 2 * 128; i++) { /* factors, then K and V means */
            if (!TH_CHECK(tail[i] == (calib ? cal.k_factor[i] : 1.0f) && tail[256 + i] == (calib ? cal.k_mean[i] : 0.0f) &&
                              tail[512 + i] == (calib ? cal.v_mean[i] : 0.0f),
                          "exported transforms, entry %d", i))
                break;
        }
        if (calib)
            TH_CHECK(qattn_kv_cache_set_calibration(ctx, c, &cal) == QATTN_ERR_INVALID_ARGUMENT &&
                         strstr(qattn_ctx_last_error(ctx), "holds 700 tokens"),
                     "set on a non-empty cache: %s", qattn_ctx_last_error(ctx));
        qattn_kv_cache_destroy(ctx, c);
    }
    printf("    INT8 decode vs original, outlier keys: plain codes %.3e, default (rotated) %.3e, calibrated %.3e\n", err_plain, err[0],
           err[1]);
    TH_CHECK(err[0] < 0.5 * err_plain, "the rotation does not halve the decode error (%.3e vs %.3e)", err[0], err_plain);
    TH_CHECK(err[1] < 0.5 * err_plain, "the calibration does not halve the decode error (%.3e vs %.3e)", err[1], err_plain);
    qattn_kv_cache *f16 = make_cache(ctx, 2, 128, 16, QATTN_DTYPE_F16, 4, 1), *i8 = make_cache(ctx, 2, 128, 16, QATTN_DTYPE_I8, 4, 1);
    if (f16 && i8) {
        TH_CHECK(qattn_kv_cache_set_calibration(ctx, f16, &cal) == QATTN_ERR_INVALID_ARGUMENT, "fp16 cache accepted a calibration");
        TH_CHECK(qattn_kv_cache_set_calibration(ctx, NULL, &cal) == QATTN_ERR_NULL_POINTER, "NULL cache");
        TH_CHECK(qattn_kv_cache_set_calibration(ctx, i8, NULL) == QATTN_ERR_NULL_POINTER, "NULL cal");
        qattn_calibration bad = cal;
        bad.head_dim = 64;
        TH_CHECK(qattn_kv_cache_set_calibration(ctx, i8, &bad) == QATTN_ERR_INVALID_ARGUMENT, "head_dim mismatch");
        float keep = cal.k_factor[0];
        cal.k_factor[0] = 0.0f;
        TH_CHECK(qattn_kv_cache_set_calibration(ctx, i8, &cal) == QATTN_ERR_INVALID_ARGUMENT, "factor 0 accepted");
        cal.k_factor[0] = keep;
        cal.k_mean[1] = NAN;
        TH_CHECK(qattn_kv_cache_set_calibration(ctx, i8, &cal) == QATTN_ERR_INVALID_ARGUMENT, "NaN mean accepted");
    }
    qattn_kv_cache_destroy(ctx, f16), qattn_kv_cache_destroy(ctx, i8);
    free(k), free(v), free(q), free(o), free(ref), free(mem), free(kp), free(vp), free(ref_plain);
    qattn_ctx_destroy(ctx);
    th_set_context(NULL);
}

static void test_decode_bad_args(void) {
    th_set_context("decode bad arguments");
    printf("  decode bad arguments\n");
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 1);
    if (!ctx) return;
    qattn_kv_cache *c = make_cache(ctx, 2, 64, 16, QATTN_DTYPE_I8, 4, 2);
    float kv[2 * 2 * 64] = {0}, q[4 * 64] = {0}, o[4 * 64];
    qattn_kv_cache_append(ctx, c, 0, kv, kv, 2, QATTN_DTYPE_F32);
    int32_t ids[1] = {0};
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = q, dp.o = o, dp.seq_ids = ids, dp.n_seqs = 1, dp.n_heads = 4;
    TH_CHECK(qattn_kv_decode(ctx, c, &dp) == QATTN_OK, "valid decode: %s", qattn_ctx_last_error(ctx));
    dp.seqlen_q = 3;
    TH_CHECK(qattn_kv_decode(ctx, c, &dp) == QATTN_ERR_INVALID_ARGUMENT && strstr(qattn_ctx_last_error(ctx), "fewer than seqlen_q"),
             "seqlen_q above the length: '%s'", qattn_ctx_last_error(ctx));
    dp.seqlen_q = 1, dp.n_heads = 3;
    TH_CHECK(qattn_kv_decode(ctx, c, &dp) == QATTN_ERR_INVALID_ARGUMENT, "n_heads 3 with 2 kv heads accepted");
    dp.n_heads = 4, ids[0] = 2;
    TH_CHECK(qattn_kv_decode(ctx, c, &dp) == QATTN_ERR_INVALID_ARGUMENT && strstr(qattn_ctx_last_error(ctx), "out of range"), "seq id 2 accepted");
    ids[0] = 1;
    TH_CHECK(qattn_kv_decode(ctx, c, &dp) == QATTN_ERR_INVALID_ARGUMENT, "empty sequence accepted");
    ids[0] = 0, dp.o = NULL;
    TH_CHECK(qattn_kv_decode(ctx, c, &dp) == QATTN_ERR_NULL_POINTER, "NULL o accepted");
    dp.o = o, dp.window_left = -2;
    TH_CHECK(qattn_kv_decode(ctx, c, &dp) == QATTN_ERR_INVALID_ARGUMENT, "window_left -2 accepted");
    TH_CHECK(qattn_kv_decode(ctx, NULL, &dp) == QATTN_ERR_NULL_POINTER, "NULL cache accepted");
    qattn_kv_cache_destroy(ctx, c);
    qattn_ctx_destroy(ctx);
    th_set_context(NULL);
}

/* One decode of sequence 0 over a fresh cache of dtype holding the L tokens of k and v (HK heads of
 * D, blocks of 16), on isa with 2 threads; dp: the caller's q, o, lse and shape fields (seq_ids and
 * n_seqs are set here). Returns false when this CPU lacks the ISA (nothing run). */
static bool decode_fresh(int32_t isa, int32_t dtype, int HK, int D, int64_t n_blocks, const float *k, const float *v, int L,
                         qattn_decode_params *dp) {
    qattn_ctx *ctx = th_ctx(isa, 2);
    if (!ctx) return false;
    qattn_kv_cache *c = make_cache(ctx, HK, D, 16, dtype, n_blocks, 1);
    int32_t id = 0;
    bool ok = c && qattn_kv_cache_append(ctx, c, 0, k, v, L, QATTN_DTYPE_F32) == QATTN_OK;
    TH_CHECK(ok, "append: %s", qattn_ctx_last_error(ctx));
    dp->seq_ids = &id, dp->n_seqs = 1;
    if (ok) TH_CHECK(qattn_kv_decode(ctx, c, dp) == QATTN_OK, "decode: %s", qattn_ctx_last_error(ctx));
    dp->seq_ids = NULL;
    qattn_kv_cache_destroy(ctx, c);
    qattn_ctx_destroy(ctx);
    return ok;
}

/* A NaN in one query row reaches exactly that row's output (and LSE), on every storage dtype and ISA. */
static void test_decode_nan_query(void) {
    th_set_context("decode NaN query row");
    printf("  decode NaN query row\n");
    const int H = 4, HK = 2, D = 64, L = 300;
    static const int32_t dtypes[] = {QATTN_DTYPE_F16, QATTN_DTYPE_BF16, QATTN_DTYPE_I8};
    float *k = th_xmalloc((size_t)L * HK * D * 4), *v = th_xmalloc((size_t)L * HK * D * 4);
    float q[4 * 64], o[4 * 64], lse[4];
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(2000));
    th_fill_normal(k, (size_t)L * HK * D, &rng, 0, 1);
    th_fill_normal(v, (size_t)L * HK * D, &rng, 0, 1);
    th_fill_normal(q, 4 * 64, &rng, 0, 1);
    q[1 * D + 5] = NAN; /* head 1 (kv head 0) */
    for (int ii = 0; ii < g_n_isas; ii++)
        for (int t = 0; t < 3; t++) {
            qattn_decode_params dp;
            qattn_decode_params_init(&dp);
            dp.q = q, dp.o = o, dp.lse = lse, dp.n_heads = H;
            if (!decode_fresh(g_isas[ii], dtypes[t], HK, D, 32, k, v, L, &dp)) continue;
            for (int h = 0; h < H; h++) {
                bool all_nan = true, all_finite = true;
                for (int cc = 0; cc < D; cc++) {
                    all_nan = all_nan && isnan(o[h * D + cc]);
                    all_finite = all_finite && isfinite(o[h * D + cc]);
                }
                if (h == 1)
                    TH_CHECK(all_nan && isnan(lse[h]), "%s %s: the NaN query row is not NaN", th_isa_name(g_isas[ii]), dt_name(dtypes[t]));
                else
                    TH_CHECK(all_finite && isfinite(lse[h]), "%s %s: NaN spread to head %d", th_isa_name(g_isas[ii]), dt_name(dtypes[t]), h);
            }
        }
    free(k), free(v);
    th_set_context(NULL);
}

/* Tokens a row cannot see are skipped, never multiplied by a zero weight. Lq 3 causal, window 30,
 * group 2 (a kernel block of 4 rows holds positions 0 and 1, which see tokens [8, 38] and [9, 39]):
 * an Inf in the K and V of token 39 (inside the block's token range, invisible to position 0) must
 * leave position 0 finite; an Inf at token 8 (visible to position 0 only) must leave positions 1
 * and 2 finite. FP16/BF16 caches (the codes hold Inf), every ISA. */
static void test_decode_masked_inf(void) {
    th_set_context("decode masked Inf");
    printf("  decode masked Inf\n");
    const int H = 4, HK = 2, D = 72, L = 41, LQ = 3; /* D % 16 == 8: the ZMM kernels' tail */
    static const int32_t dtypes[] = {QATTN_DTYPE_F16, QATTN_DTYPE_BF16};
    float *k = th_xmalloc((size_t)L * HK * D * 4), *v = th_xmalloc((size_t)L * HK * D * 4);
    float q[3 * 4 * 72], o[3 * 4 * 72], lse[4 * 3];
    th_rng rng;
    th_rng_init(&rng, th_derive_seed(2001));
    th_fill_normal(q, (size_t)LQ * H * D, &rng, 0, 1);
    for (int sc = 0; sc < 2; sc++) {
        int bad = sc == 0 ? 39 : 8;
        th_fill_normal(k, (size_t)L * HK * D, &rng, 0, 1);
        th_fill_normal(v, (size_t)L * HK * D, &rng, 0, 1);
        for (int i = 0; i < HK * D; i++) k[(size_t)bad * HK * D + i] = v[(size_t)bad * HK * D + i] = INFINITY;
        for (int ii = 0; ii < g_n_isas; ii++)
            for (int t = 0; t < 2; t++) {
                qattn_decode_params dp;
                qattn_decode_params_init(&dp);
                dp.q = q, dp.o = o, dp.lse = lse, dp.n_heads = H, dp.seqlen_q = LQ, dp.window_left = 30;
                if (!decode_fresh(g_isas[ii], dtypes[t], HK, D, 8, k, v, L, &dp)) continue;
                bool finite = true;
                for (int i = sc == 0 ? 0 : 1; i < (sc == 0 ? 1 : LQ); i++)
                    for (int h = 0; h < H; h++) {
                        for (int cc = 0; cc < D; cc++) finite = finite && isfinite(o[((size_t)i * H + h) * D + cc]);
                        finite = finite && isfinite(lse[h * LQ + i]);
                    }
                TH_CHECK(finite, "%s %s: an Inf in token %d reached a row that cannot see it", th_isa_name(g_isas[ii]), dt_name(dtypes[t]), bad);
            }
    }
    free(k), free(v);
    th_set_context(NULL);
}

/* ------------------------------------------------------------ kernel-level reference equality
 * The INT8 decode kernels (ref, AVX2, AVX-VNNI where this CPU has it) called directly on one block.
 * Integer parts against the scalar reference, bit for bit:
 *   Q.K: each row sees one token, so row_max is that token's score ((float)dot * qsc) * ks;
 *   P.V: qsc = 0 makes every score 0 and every p exactly 1 in every exp2, so the int16 weights
 *        are rint(vs * 32767 / max vs) in all kernels and acc (from 0, one chunk) is
 *        (float)(integer P.V sum) * ws: bitwise the reference's.
 * Whole kernel: AVX-VNNI against AVX2 bit for bit (same integers, same float epilogue), with
 * random q, state carried across calls, ranges per row and > 256 tokens (two P.V chunks).
 * Codes span [-128, 127] (the overflow bounds allow -128) and q16 [-32767, 32767]. */
typedef struct kcase {
    int m, d, n;
} kcase;

static void fill_codes(int8_t *x, size_t n, th_rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = (int8_t)((int)(th_rng_u64(rng) % 256) - 128);
}

static void kernel_state_init(qattn_tile_state *st, float *mem, int m, int d) {
    st->row_max = mem, st->row_sum = mem + m, st->acc = mem + 2 * m, st->ld_acc = d;
    for (int r = 0; r < m; r++) st->row_max[r] = -INFINITY, st->row_sum[r] = 0.0f;
    memset(st->acc, 0, (size_t)m * d * sizeof(float));
}

static void test_kernel_i8_equality(void) {
    static const kcase cases[] = {{4, 128, 16}, {1, 64, 7}, {3, 80, 33}, {5, 256, 16}, {8, 128, 300}, {4, 72, 1}, {6, 128, 257},
                                  {4, 40, 19},  {2, 48, 35}, {4, 88, 64},  {7, 136, 31}, /* d % 32: 8, 16, 24 tails */
                                  {4, 8, 33},   {1, 8, 1},   {3, 16, 40},  {8, 24, 300}, {5, 16, 257}}; /* d < 32: tails only */
    enum { NK = 4 };
    static const int32_t isa_of[NK] = {QATTN_ISA_REF, QATTN_ISA_AVX2, QATTN_ISA_AVXVNNI, QATTN_ISA_AVX512};
    qattn_kv_attend_fn fns[NK] = {qattn_cpu_kernel_table(QATTN_ISA_REF)->kv_attend, NULL, NULL, NULL};
    const char *names[NK] = {"ref", "avx2", "avxvnni", "avx512"};
    for (int i = 0; i < g_n_isas; i++) /* the decode slot of each kernel table this machine runs */
        for (int f = 1; f < NK; f++)
            if (g_isas[i] == isa_of[f]) fns[f] = qattn_cpu_kernel_table(isa_of[f])->kv_attend;
    th_rng rng;
    th_rng_init(&rng, 0x5eed4b1d);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int m = cases[ci].m, d = cases[ci].d, n = cases[ci].n, ldq = (d + 15) / 16 * 16;
        int8_t *kc = th_xmalloc((size_t)n * d), *vc = th_xmalloc((size_t)n * d);
        float *ks = th_xmalloc((size_t)n * 4), *vs = th_xmalloc((size_t)n * 4), *qsc = th_xmalloc((size_t)m * 4), *q = th_xmalloc((size_t)m * d * 4);
        int16_t *q16 = th_xmalloc((size_t)m * ldq * 2);
        size_t sf = (size_t)QATTN_KV_SCRATCH_FLOATS(m, n);
        float *scratch = th_xmalloc(sf * 4), *mem[NK];
        int32_t lo[8], hi[8];
        for (int f = 0; f < NK; f++) mem[f] = th_xmalloc((size_t)m * (d + 2) * 4);
        fill_codes(kc, (size_t)n * d, &rng);
        fill_codes(vc, (size_t)n * d, &rng);
        for (int j = 0; j < n; j++) ks[j] = (float)th_rng_uniform(&rng, 1e-3, 2e-2), vs[j] = (float)th_rng_uniform(&rng, 1e-3, 2e-2);
        for (int r = 0; r < m; r++) {
            for (int c = 0; c < ldq; c++) q16[(size_t)r * ldq + c] = c < d ? (int16_t)((int)(th_rng_u64(&rng) % 65535) - 32767) : 0;
            qsc[r] = (float)th_rng_uniform(&rng, 1e-6, 1e-5);
        }
        qattn_tile_state st[NK];
        /* Q.K: row r sees token (j0 + r) only */
        bool ok = true;
        for (int j0 = 0; j0 < n && ok; j0 += m) {
            for (int r = 0; r < m; r++) lo[r] = j0 + r < n ? j0 + r : n, hi[r] = j0 + r < n ? j0 + r + 1 : n;
            for (int f = 0; f < NK; f++) {
                if (!fns[f]) continue;
                kernel_state_init(&st[f], mem[f], m, d);
                fns[f](q, q16, qsc, m, d, QATTN_DTYPE_I8, kc, vc, ks, vs, n, lo, hi, &st[f], scratch, NULL);
                if (f > 0) ok = ok && memcmp(st[f].row_max, st[0].row_max, (size_t)m * 4) == 0;
            }
        }
        TH_CHECK(ok, "kernel Q.K m %d d %d n %d: scores differ from the reference", m, d, n);
        /* P.V: qsc 0, rows' ranges staggered, one chunk (<= 256 tokens) */
        float zero[8] = {0};
        int nn = n > 256 ? 256 : n;
        for (int r = 0; r < m; r++) lo[r] = (r * 3) % (nn > 1 ? nn / 2 + 1 : 1), hi[r] = nn - (r % 2) * (nn / 3);
        for (int f = 0; f < NK; f++) {
            if (!fns[f]) continue;
            kernel_state_init(&st[f], mem[f], m, d);
            fns[f](q, q16, zero, m, d, QATTN_DTYPE_I8, kc, vc, ks, vs, nn, lo, hi, &st[f], scratch, NULL);
            if (f == 0) continue;
            bool same_max = true; /* == here: the max of all-zero scores may be -0 in one kernel and +0 in another */
            for (int r = 0; r < m; r++) same_max = same_max && st[f].row_max[r] == st[0].row_max[r];
            TH_CHECK(same_max && memcmp(st[f].row_sum, st[0].row_sum, (size_t)m * (d + 1) * 4) == 0,
                     "kernel P.V %s m %d d %d n %d: state differs from the reference", names[f], m, d, nn);
        }
        /* whole kernel, AVX-VNNI and AVX-512 vs AVX2: two calls carrying state, random scores */
        for (int f = 2; f < NK; f++) {
            if (!fns[1] || !fns[f]) continue;
            kernel_state_init(&st[1], mem[1], m, d);
            kernel_state_init(&st[f], mem[f], m, d);
            for (int call = 0; call < 2; call++) {
                for (int r = 0; r < m; r++) {
                    qsc[r] = (float)th_rng_uniform(&rng, 1e-5, 1e-4);
                    lo[r] = call == 0 ? 0 : r % 3 < n ? r % 3 : n, hi[r] = call == 0 ? n : n - (r % 2 ? n / 4 : 0);
                }
                fns[1](q, q16, qsc, m, d, QATTN_DTYPE_I8, kc, vc, ks, vs, n, lo, hi, &st[1], scratch, NULL);
                fns[f](q, q16, qsc, m, d, QATTN_DTYPE_I8, kc, vc, ks, vs, n, lo, hi, &st[f], scratch, NULL);
            }
            TH_CHECK(memcmp(mem[1], mem[f], (size_t)m * (d + 2) * 4) == 0, "kernel %s vs avx2 m %d d %d n %d: not bitwise identical", names[f], m,
                     d, n);
        }
        free(kc), free(vc), free(ks), free(vs), free(qsc), free(q), free(q16), free(scratch);
        for (int f = 0; f < NK; f++) free(mem[f]);
    }
    printf("  kernel INT8 equality: ref%s%s%s\n", fns[1] ? ", avx2" : "", fns[2] ? ", avxvnni" : "", fns[3] ? ", avx512" : "");
}

int main(void) {
    th_init("test_kv_cache");
    g_n_isas = th_available_isas(g_isas);
    test_cache_ops();
    test_decode_bad_args();
    test_decode_nan_query();
    test_decode_masked_inf();
    test_kernel_i8_equality();
    test_decode_calibration_gain();
    return th_finish();
}
