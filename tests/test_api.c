/* The public API's contract outside the numbers: every bad argument gives the documented
 * status and a last-error message naming the problem (docs/ARCHITECTURE.md "Contracts"), nothing is written on
 * failure, qattn_supports / qattn_workspace_size agree with qattn_forward, context options
 * and the QATTN_ISA / QATTN_BACKEND environment overrides, ctx info, status strings, and the
 * O(L) memory promise of qattn_workspace_size. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static qattn_ctx *g_ctx;
static th_problem g_pr; /* a valid problem the bad-argument cases start from */
static int32_t g_cu_q[3] = {0, 17, 30}, g_cu_k[3] = {0, 20, 29};

/* ---------------------------------------------------------------- bad arguments, table-driven */

typedef void (*mutate_fn)(qattn_params *p);

static void q_null(qattn_params *p) { p->q = NULL; }
static void k_null(qattn_params *p) { p->k = NULL; }
static void v_null(qattn_params *p) { p->v = NULL; }
static void o_null(qattn_params *p) { p->o = NULL; }
static void batch_negative(qattn_params *p) { p->batch = -1; }
static void seqlen_q_negative(qattn_params *p) { p->seqlen_q = -3; }
static void seqlen_k_negative(qattn_params *p) { p->seqlen_k = -1; }
static void seqlen_too_big(qattn_params *p) { p->seqlen_k = (int64_t)1 << 31; }
static void n_heads_zero(qattn_params *p) { p->n_heads = 0; }
static void n_kv_heads_negative(qattn_params *p) { p->n_kv_heads = -2; }
static void heads_not_divisible(qattn_params *p) { p->n_heads = 4, p->n_kv_heads = 3; }
static void head_dim_zero(qattn_params *p) { p->head_dim = 0; }
static void head_dim_small(qattn_params *p) { p->head_dim = 4; }
static void head_dim_not_step(qattn_params *p) { p->head_dim = 12; }
static void head_dim_large(qattn_params *p) { p->head_dim = 264; }
static void head_dim_odd(qattn_params *p) { p->head_dim = 60; }
static void qkv_dtype_bad(qattn_params *p) { p->qkv_dtype = 7; }
static void qkv_dtype_negative(qattn_params *p) { p->qkv_dtype = -1; }
static void qkv_dtype_i8(qattn_params *p) { p->qkv_dtype = QATTN_DTYPE_I8; }
static void o_dtype_bad(qattn_params *p) { p->o_dtype = 9; }
static void o_dtype_i8(qattn_params *p) { p->o_dtype = QATTN_DTYPE_I8; }
static void precision_bad(qattn_params *p) { p->precision = 99; }
static void precision_negative(qattn_params *p) { p->precision = -1; }
static void int8_scheme_bad(qattn_params *p) { p->int8_scheme = 17; }
static void causal_two(qattn_params *p) { p->causal = 2; }
static void causal_negative(qattn_params *p) { p->causal = -1; }
static void window_left_bad(qattn_params *p) { p->window_left = -2; }
static void window_right_bad(qattn_params *p) { p->window_right = -7; }
static void scale_nan(qattn_params *p) { p->scale = NAN; }
static void scale_inf(qattn_params *p) { p->scale = -INFINITY; }
static void only_cu_q(qattn_params *p) { p->cu_seqlens_q = g_cu_q; }
static void only_cu_k(qattn_params *p) { p->cu_seqlens_k = g_cu_k; }
static int32_t g_bad_cu[3];
static void varlen(qattn_params *p, int32_t a, int32_t b, int32_t c) {
    g_bad_cu[0] = a, g_bad_cu[1] = b, g_bad_cu[2] = c;
    p->cu_seqlens_q = g_bad_cu;
    p->cu_seqlens_k = g_cu_k;
}
static void cu_not_from_zero(qattn_params *p) { varlen(p, 1, 10, 20); }
static void cu_decreasing(qattn_params *p) { varlen(p, 0, 12, 9); }
static void cu_above_max(qattn_params *p) { varlen(p, 0, 2, 20); } /* 18 > seqlen_q 17 */
static void cu_k_above_max(qattn_params *p) {
    g_bad_cu[0] = 0, g_bad_cu[1] = 18, g_bad_cu[2] = 20; /* 18 > seqlen_k 17 */
    p->cu_seqlens_q = g_cu_q;
    p->cu_seqlens_k = g_bad_cu;
    p->seqlen_q = 17;
}
static void q_seq_stride_negative(qattn_params *p) { p->q_seq_stride = -1; }
static void k_head_stride_negative(qattn_params *p) { p->k_head_stride = -64; }
static void v_batch_stride_negative(qattn_params *p) { p->v_batch_stride = -5; }
static void o_seq_stride_negative(qattn_params *p) { p->o_seq_stride = -256; }
static void k_batch_stride_overflow(qattn_params *p) { p->k_batch_stride = INT64_MAX - 10; }
static void q_seq_stride_overflow(qattn_params *p) { p->q_seq_stride = INT64_MAX / 4; }
static void v_head_stride_overflow(qattn_params *p) { p->v_head_stride = INT64_MAX / 2 + 1; }
static void o_heads_overlap(qattn_params *p) { p->o_head_stride = 0; }
static void o_rows_overlap(qattn_params *p) { p->o_seq_stride = p->o_head_stride; }
static void o_cols_overlap(qattn_params *p) { p->o_head_stride = 32; } /* < head_dim 64 */
static void o_batches_overlap(qattn_params *p) { p->o_batch_stride = p->o_seq_stride; }
static void workspace_size_without_workspace(qattn_params *p) { p->workspace_size = 4096; }

typedef struct bad_arg {
    const char *name;
    mutate_fn mutate;
    qattn_status want;
    const char *word; /* must appear in qattn_ctx_last_error */
} bad_arg;

static const bad_arg BAD_ARGS[] = {
    {"q NULL", q_null, QATTN_ERR_NULL_POINTER, "q is NULL"},
    {"k NULL", k_null, QATTN_ERR_NULL_POINTER, "k is NULL"},
    {"v NULL", v_null, QATTN_ERR_NULL_POINTER, "v is NULL"},
    {"o NULL", o_null, QATTN_ERR_NULL_POINTER, "o is NULL"},
    {"batch < 0", batch_negative, QATTN_ERR_INVALID_ARGUMENT, "negative"},
    {"seqlen_q < 0", seqlen_q_negative, QATTN_ERR_INVALID_ARGUMENT, "negative"},
    {"seqlen_k < 0", seqlen_k_negative, QATTN_ERR_INVALID_ARGUMENT, "negative"},
    {"seqlen_k 2^31", seqlen_too_big, QATTN_ERR_INVALID_ARGUMENT, "2^31"},
    {"n_heads 0", n_heads_zero, QATTN_ERR_INVALID_ARGUMENT, "n_heads"},
    {"n_kv_heads < 0", n_kv_heads_negative, QATTN_ERR_INVALID_ARGUMENT, "n_kv_heads"},
    {"H % HK != 0", heads_not_divisible, QATTN_ERR_INVALID_ARGUMENT, "does not divide"},
    {"head_dim 0", head_dim_zero, QATTN_ERR_INVALID_ARGUMENT, "head_dim"},
    {"head_dim 4", head_dim_small, QATTN_ERR_UNSUPPORTED, "8..256 in steps of 8"},
    {"head_dim 12", head_dim_not_step, QATTN_ERR_UNSUPPORTED, "head_dim 12"},
    {"head_dim 264", head_dim_large, QATTN_ERR_UNSUPPORTED, "8..256 in steps of 8"},
    {"head_dim 60", head_dim_odd, QATTN_ERR_UNSUPPORTED, "head_dim 60"},
    {"qkv_dtype 7", qkv_dtype_bad, QATTN_ERR_INVALID_ARGUMENT, "qkv_dtype"},
    {"qkv_dtype -1", qkv_dtype_negative, QATTN_ERR_INVALID_ARGUMENT, "qkv_dtype"},
    {"qkv_dtype i8", qkv_dtype_i8, QATTN_ERR_UNSUPPORTED, "i8"},
    {"o_dtype 9", o_dtype_bad, QATTN_ERR_INVALID_ARGUMENT, "o_dtype"},
    {"o_dtype i8", o_dtype_i8, QATTN_ERR_INVALID_ARGUMENT, "o_dtype"},
    {"precision 99", precision_bad, QATTN_ERR_INVALID_ARGUMENT, "precision"},
    {"precision -1", precision_negative, QATTN_ERR_INVALID_ARGUMENT, "precision"},
    {"int8_scheme 17", int8_scheme_bad, QATTN_ERR_INVALID_ARGUMENT, "int8_scheme"},
    {"causal 2", causal_two, QATTN_ERR_INVALID_ARGUMENT, "causal"},
    {"causal -1", causal_negative, QATTN_ERR_INVALID_ARGUMENT, "causal"},
    {"window_left -2", window_left_bad, QATTN_ERR_INVALID_ARGUMENT, "window"},
    {"window_right -7", window_right_bad, QATTN_ERR_INVALID_ARGUMENT, "window"},
    {"scale NaN", scale_nan, QATTN_ERR_INVALID_ARGUMENT, "scale"},
    {"scale -Inf", scale_inf, QATTN_ERR_INVALID_ARGUMENT, "scale"},
    {"cu_seqlens_q only", only_cu_q, QATTN_ERR_INVALID_ARGUMENT, "together"},
    {"cu_seqlens_k only", only_cu_k, QATTN_ERR_INVALID_ARGUMENT, "together"},
    {"cu_seqlens_q[0] != 0", cu_not_from_zero, QATTN_ERR_INVALID_ARGUMENT, "must be 0"},
    {"cu_seqlens_q decreasing", cu_decreasing, QATTN_ERR_INVALID_ARGUMENT, "decreases"},
    {"cu_seqlens_q above seqlen_q", cu_above_max, QATTN_ERR_INVALID_ARGUMENT, "maximum"},
    {"cu_seqlens_k above seqlen_k", cu_k_above_max, QATTN_ERR_INVALID_ARGUMENT, "cu_seqlens_k"},
    {"q_seq_stride < 0", q_seq_stride_negative, QATTN_ERR_INVALID_ARGUMENT, "negative stride"},
    {"k_head_stride < 0", k_head_stride_negative, QATTN_ERR_INVALID_ARGUMENT, "negative stride"},
    {"v_batch_stride < 0", v_batch_stride_negative, QATTN_ERR_INVALID_ARGUMENT, "negative stride"},
    {"o_seq_stride < 0", o_seq_stride_negative, QATTN_ERR_INVALID_ARGUMENT, "negative stride"},
    {"k_batch_stride overflows", k_batch_stride_overflow, QATTN_ERR_OVERFLOW, "overflow"},
    {"q_seq_stride overflows", q_seq_stride_overflow, QATTN_ERR_OVERFLOW, "overflow"},
    {"v_head_stride overflows", v_head_stride_overflow, QATTN_ERR_OVERFLOW, "overflow"},
    {"o heads overlap (stride 0)", o_heads_overlap, QATTN_ERR_INVALID_ARGUMENT, "overlap"},
    {"o rows overlap heads", o_rows_overlap, QATTN_ERR_INVALID_ARGUMENT, "overlap"},
    {"o head stride < head_dim", o_cols_overlap, QATTN_ERR_INVALID_ARGUMENT, "overlap"},
    {"o batches overlap", o_batches_overlap, QATTN_ERR_INVALID_ARGUMENT, "overlap"},
    {"workspace_size without workspace", workspace_size_without_workspace, QATTN_ERR_NULL_POINTER, "workspace"},
};

static void test_bad_arguments(void) {
    size_t n = sizeof BAD_ARGS / sizeof BAD_ARGS[0];
    size_t o_bytes = g_pr.o.elems * (g_pr.o.dtype == QATTN_DTYPE_F32 ? 4 : 2);
    void *poisoned = th_xmalloc(o_bytes);
    for (size_t i = 0; i < n; i++) {
        const bad_arg *ba = &BAD_ARGS[i];
        if (!th_selected(ba->name)) continue;
        th_set_context(ba->name);
        qattn_params p = g_pr.p;
        ba->mutate(&p);
        th_problem_poison(&g_pr);
        memcpy(poisoned, g_pr.o.buf, o_bytes);
        qattn_status s = qattn_forward(g_ctx, &p);
        const char *msg = qattn_ctx_last_error(g_ctx);
        TH_CHECK(s == ba->want, "%s: qattn_forward returned %s, want %s", ba->name, qattn_status_str(s), qattn_status_str(ba->want));
        TH_CHECK(strstr(msg, ba->word) != NULL, "%s: message '%s' does not contain '%s'", ba->name, msg, ba->word);
        TH_CHECK(memcmp(poisoned, g_pr.o.buf, o_bytes) == 0, "%s: the output was written although the call failed", ba->name);
        /* qattn_supports and qattn_workspace_size must reject the same way */
        qattn_status sup = qattn_supports(g_ctx, &p);
        TH_CHECK(sup == s, "%s: qattn_supports says %s, qattn_forward %s", ba->name, qattn_status_str(sup), qattn_status_str(s));
        TH_CHECK(strstr(qattn_ctx_last_error(g_ctx), ba->word) != NULL, "%s: qattn_supports message '%s' lacks '%s'", ba->name,
                 qattn_ctx_last_error(g_ctx), ba->word);
        size_t bytes = 12345;
        qattn_status ws = qattn_workspace_size(g_ctx, &p, &bytes);
        TH_CHECK(ws == s, "%s: qattn_workspace_size says %s, qattn_forward %s", ba->name, qattn_status_str(ws), qattn_status_str(s));
        /* the FP64 oracle validates identically (except the workspace, which it ignores) */
        if (ba->mutate != workspace_size_without_workspace) {
            double dummy[1];
            qattn_status os = qattn_oracle_f64(g_ctx, &p, dummy, NULL);
            TH_CHECK(os == s, "%s: qattn_oracle_f64 says %s, qattn_forward %s", ba->name, qattn_status_str(os), qattn_status_str(s));
        }
    }
    th_set_context(NULL);
    free(poisoned);
    printf("  %zu bad-argument cases\n", n);
}

static void test_null_ctx_and_params(void) {
    th_set_context("NULL ctx / params");
    qattn_params p = g_pr.p;
    size_t bytes;
    double o64[1];
    TH_CHECK(qattn_forward(NULL, &p) == QATTN_ERR_NULL_POINTER, "qattn_forward(NULL ctx)");
    TH_CHECK(qattn_supports(NULL, &p) == QATTN_ERR_NULL_POINTER, "qattn_supports(NULL ctx)");
    TH_CHECK(qattn_workspace_size(NULL, &p, &bytes) == QATTN_ERR_NULL_POINTER, "qattn_workspace_size(NULL ctx)");
    TH_CHECK(qattn_oracle_f64(NULL, &p, o64, NULL) == QATTN_ERR_NULL_POINTER, "qattn_oracle_f64(NULL ctx)");
    TH_CHECK(qattn_forward(g_ctx, NULL) == QATTN_ERR_NULL_POINTER, "qattn_forward(NULL params)");
    TH_CHECK(strstr(qattn_ctx_last_error(g_ctx), "params") != NULL, "message for NULL params: '%s'", qattn_ctx_last_error(g_ctx));
    TH_CHECK(qattn_supports(g_ctx, NULL) == QATTN_ERR_NULL_POINTER, "qattn_supports(NULL params)");
    TH_CHECK(qattn_workspace_size(g_ctx, NULL, &bytes) == QATTN_ERR_NULL_POINTER, "qattn_workspace_size(NULL params)");
    TH_CHECK(qattn_workspace_size(g_ctx, &p, NULL) == QATTN_ERR_NULL_POINTER, "qattn_workspace_size(NULL bytes)");
    TH_CHECK(strstr(qattn_ctx_last_error(g_ctx), "bytes") != NULL, "message for NULL bytes: '%s'", qattn_ctx_last_error(g_ctx));
    TH_CHECK(qattn_oracle_f64(g_ctx, &p, NULL, NULL) == QATTN_ERR_NULL_POINTER, "qattn_oracle_f64(NULL o64)");
    TH_CHECK(qattn_ctx_last_error(NULL) != NULL, "qattn_ctx_last_error(NULL) must return a string");
    TH_CHECK(qattn_ctx_get_info(NULL, NULL) == QATTN_ERR_NULL_POINTER, "qattn_ctx_get_info(NULL)");
    TH_CHECK(qattn_ctx_set_threads(NULL, 1) == QATTN_ERR_NULL_POINTER, "qattn_ctx_set_threads(NULL)");
    qattn_ctx_destroy(NULL); /* a no-op */
    qattn_params_init(NULL);
    qattn_params_set_contiguous(NULL);
    /* a failure is followed by a success: the message is cleared */
    TH_CHECK(qattn_forward(g_ctx, &p) == QATTN_OK, "valid params after a failure: %s", qattn_ctx_last_error(g_ctx));
    TH_CHECK(qattn_ctx_last_error(g_ctx)[0] == '\0', "last error after a success is '%s', want ''", qattn_ctx_last_error(g_ctx));
    th_set_context(NULL);
}

static void test_batch_zero(void) {
    th_set_context("batch 0");
    qattn_params p = g_pr.p;
    p.batch = 0;
    th_problem_poison(&g_pr);
    TH_CHECK(qattn_forward(g_ctx, &p) == QATTN_OK, "batch 0: %s", qattn_ctx_last_error(g_ctx));
    size_t bytes = 99;
    TH_CHECK(qattn_workspace_size(g_ctx, &p, &bytes) == QATTN_OK && bytes == 0, "batch 0 workspace %zu, want 0", bytes);
    TH_CHECK(qattn_supports(g_ctx, &p) == QATTN_OK, "qattn_supports(batch 0)");
    /* nothing to read or write: NULL tensors are fine too */
    p.q = p.k = p.v = NULL;
    p.o = NULL;
    p.lse = NULL;
    TH_CHECK(qattn_forward(g_ctx, &p) == QATTN_OK, "batch 0 with NULL tensors: %s", qattn_ctx_last_error(g_ctx));
    /* Lq = 0: no rows, OK */
    p = g_pr.p;
    p.seqlen_q = 0;
    qattn_params_set_contiguous(&p);
    TH_CHECK(qattn_forward(g_ctx, &p) == QATTN_OK, "seqlen_q 0: %s", qattn_ctx_last_error(g_ctx));
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- status strings */

static void test_status_strings(void) {
    th_set_context("qattn_status_str");
    static const struct {
        qattn_status s;
        const char *name;
    } codes[] = {{QATTN_OK, "QATTN_OK"},
                 {QATTN_ERR_NULL_POINTER, "QATTN_ERR_NULL_POINTER"},
                 {QATTN_ERR_INVALID_ARGUMENT, "QATTN_ERR_INVALID_ARGUMENT"},
                 {QATTN_ERR_UNSUPPORTED, "QATTN_ERR_UNSUPPORTED"},
                 {QATTN_ERR_OUT_OF_MEMORY, "QATTN_ERR_OUT_OF_MEMORY"},
                 {QATTN_ERR_OVERFLOW, "QATTN_ERR_OVERFLOW"},
                 {QATTN_ERR_BACKEND, "QATTN_ERR_BACKEND"},
                 {QATTN_ERR_CAPACITY, "QATTN_ERR_CAPACITY"}};
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        const char *str = qattn_status_str(codes[i].s);
        TH_CHECK(str != NULL && strncmp(str, codes[i].name, strlen(codes[i].name)) == 0 && str[strlen(codes[i].name)] == ':',
                 "qattn_status_str(%d) = '%s', want it to start with '%s:'", (int)codes[i].s, str ? str : "(null)", codes[i].name);
    }
    const char *unknown = qattn_status_str((qattn_status)-99);
    TH_CHECK(unknown != NULL && strstr(unknown, "unknown") != NULL, "qattn_status_str(-99) = '%s'", unknown ? unknown : "(null)");
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", QATTN_VERSION_MAJOR, QATTN_VERSION_MINOR, QATTN_VERSION_PATCH);
    TH_CHECK(strcmp(qattn_version(), want) == 0, "qattn_version() = '%s', want '%s'", qattn_version(), want);
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- contexts */

typedef struct alloc_counter {
    long allocs, frees;
} alloc_counter;

static void *counting_alloc(size_t bytes, void *user) {
    ((alloc_counter *)user)->allocs++;
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 1) == 0 ? p : NULL;
}

static void counting_free(void *ptr, void *user) {
    ((alloc_counter *)user)->frees++;
    free(ptr);
}

static qattn_status create_with(qattn_ctx **out, int32_t backend, int32_t isa, int32_t threads) {
    qattn_ctx_options o;
    memset(&o, 0, sizeof o);
    o.backend = backend, o.isa = isa, o.n_threads = threads;
    return qattn_ctx_create(out, &o);
}

static void test_ctx_options(void) {
    th_set_context("qattn_ctx_create options");
    qattn_ctx *ctx = (qattn_ctx *)&ctx; /* not NULL: a failed create must reset it */
    qattn_ctx_options o;
    TH_CHECK(qattn_ctx_create(NULL, NULL) == QATTN_ERR_NULL_POINTER, "qattn_ctx_create(NULL)");
    TH_CHECK(create_with(&ctx, 7, 0, 0) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "backend 7");
    TH_CHECK(create_with(&ctx, -1, 0, 0) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "backend -1");
    TH_CHECK(create_with(&ctx, QATTN_BACKEND_CPU, 9, 0) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "isa 9");
    TH_CHECK(create_with(&ctx, QATTN_BACKEND_CPU, QATTN_ISA_AVX512 + 1, 0) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "isa 5 (one past the last)");
    TH_CHECK(create_with(&ctx, QATTN_BACKEND_CPU, -1, 0) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "isa -1");
    TH_CHECK(create_with(&ctx, QATTN_BACKEND_CPU, 0, -1) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "n_threads -1");
    memset(&o, 0, sizeof o);
    o.cuda_device = -1;
    TH_CHECK(qattn_ctx_create(&ctx, &o) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "cuda_device -1");
    {
        char msg[160];
        int32_t bad[] = {-1, 2, INT32_MAX};
        for (int i = 0; i < 3; i++) {
            memset(&o, 0, sizeof o);
            o.backend = QATTN_BACKEND_CPU, o.cuda_kernels = bad[i];
            TH_CHECK(qattn_ctx_create_ex(&ctx, &o, msg, sizeof msg) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL && strstr(msg, "cuda_kernels"),
                     "cuda_kernels %d: '%s'", bad[i], msg);
        }
        memset(&o, 0, sizeof o);
        o.backend = QATTN_BACKEND_CPU, o.reserved = 1;
        TH_CHECK(qattn_ctx_create_ex(&ctx, &o, msg, sizeof msg) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL && strstr(msg, "reserved"),
                 "reserved 1: '%s'", msg);
        o.reserved = 0, o.cuda_kernels = QATTN_CUDA_KERNELS_MMA; /* a CPU context ignores the CUDA kernel choice */
        TH_CHECK(qattn_ctx_create(&ctx, &o) == QATTN_OK && ctx != NULL, "cpu context with cuda_kernels MMA");
        qattn_ctx_destroy(ctx);
        ctx = NULL;
    }
    alloc_counter counter = {0, 0};
    memset(&o, 0, sizeof o);
    o.alloc = counting_alloc; /* without free */
    o.alloc_user = &counter;
    TH_CHECK(qattn_ctx_create(&ctx, &o) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "alloc hook without free hook");
    o.alloc = NULL, o.free = counting_free;
    TH_CHECK(qattn_ctx_create(&ctx, &o) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL, "free hook without alloc hook");

    /* allocator hooks are used, and every allocation is freed */
    o.alloc = counting_alloc, o.free = counting_free, o.backend = QATTN_BACKEND_CPU, o.isa = QATTN_ISA_REF, o.n_threads = 2;
    if (TH_CHECK(qattn_ctx_create(&ctx, &o) == QATTN_OK, "create with allocator hooks")) {
        TH_CHECK(qattn_forward(ctx, &g_pr.p) == QATTN_OK, "forward with allocator hooks: %s", qattn_ctx_last_error(ctx));
        qattn_ctx_destroy(ctx);
        TH_CHECK(counter.allocs >= 2 && counter.allocs == counter.frees, "allocator hooks: %ld allocs, %ld frees (want >= 2, equal)",
                 counter.allocs, counter.frees);
    }

    /* the CUDA backend: either a CUDA context, or a clear refusal */
    ctx = NULL;
    qattn_status s = create_with(&ctx, QATTN_BACKEND_CUDA, 0, 0);
    if (s == QATTN_OK) {
        qattn_ctx_info info;
        TH_CHECK(qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.backend == QATTN_BACKEND_CUDA, "cuda ctx info backend");
        qattn_ctx_destroy(ctx);
    } else {
        TH_CHECK((s == QATTN_ERR_UNSUPPORTED || s == QATTN_ERR_BACKEND) && ctx == NULL, "backend cuda: %s", qattn_status_str(s));
    }
    th_set_context(NULL);
}

static void test_env_override(void) {
    th_set_context("QATTN_ISA / QATTN_BACKEND environment");
    qattn_ctx *ctx = NULL;
    qattn_ctx_info info;
    setenv("QATTN_ISA", "bogus", 1);
    TH_CHECK(create_with(&ctx, QATTN_BACKEND_CPU, QATTN_ISA_AUTO, 1) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL,
             "QATTN_ISA=bogus must make create fail with INVALID_ARGUMENT");
    /* an explicit option wins over the environment */
    if (TH_CHECK(create_with(&ctx, QATTN_BACKEND_CPU, QATTN_ISA_REF, 1) == QATTN_OK, "explicit isa ref with QATTN_ISA=bogus")) {
        TH_CHECK(qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.isa == QATTN_ISA_REF, "explicit isa ref");
        qattn_ctx_destroy(ctx);
    }
    setenv("QATTN_ISA", "ref", 1);
    if (TH_CHECK(create_with(&ctx, QATTN_BACKEND_CPU, QATTN_ISA_AUTO, 1) == QATTN_OK, "QATTN_ISA=ref")) {
        TH_CHECK(qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.isa == QATTN_ISA_REF && !strcmp(info.isa_name, "ref"),
                 "QATTN_ISA=ref gives isa %d '%s'", info.isa, info.isa_name);
        qattn_ctx_destroy(ctx);
    }
    bool avx2 = th_cpu_has_avx2();
    setenv("QATTN_ISA", "avx2", 1);
    qattn_status s = create_with(&ctx, QATTN_BACKEND_CPU, QATTN_ISA_AUTO, 1);
    if (avx2) {
        if (TH_CHECK(s == QATTN_OK, "QATTN_ISA=avx2 on an AVX2 CPU")) {
            TH_CHECK(qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.isa == QATTN_ISA_AVX2 && !strcmp(info.isa_name, "avx2"),
                     "QATTN_ISA=avx2 gives isa %d '%s'", info.isa, info.isa_name);
            qattn_ctx_destroy(ctx);
        }
    } else {
        TH_CHECK(s == QATTN_ERR_UNSUPPORTED && ctx == NULL, "QATTN_ISA=avx2 without AVX2: %s", qattn_status_str(s));
    }
    setenv("QATTN_ISA", "avxvnni", 1); /* supported (then exactly that ISA) or refused as UNSUPPORTED */
    s = create_with(&ctx, QATTN_BACKEND_CPU, QATTN_ISA_AUTO, 1);
    if (s == QATTN_OK) {
        TH_CHECK(avx2 && qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.isa == QATTN_ISA_AVXVNNI && !strcmp(info.isa_name, "avxvnni"),
                 "QATTN_ISA=avxvnni gives isa %d '%s'", info.isa, info.isa_name);
        qattn_ctx_destroy(ctx);
    } else {
        TH_CHECK(s == QATTN_ERR_UNSUPPORTED && ctx == NULL, "QATTN_ISA=avxvnni: %s", qattn_status_str(s));
    }
    setenv("QATTN_ISA", "avx512", 1); /* supported (then exactly that ISA, which implies AVX2) or refused as UNSUPPORTED */
    s = create_with(&ctx, QATTN_BACKEND_CPU, QATTN_ISA_AUTO, 1);
    if (s == QATTN_OK) {
        TH_CHECK(avx2 && qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.isa == QATTN_ISA_AVX512 && !strcmp(info.isa_name, "avx512"),
                 "QATTN_ISA=avx512 gives isa %d '%s'", info.isa, info.isa_name);
        qattn_ctx_destroy(ctx);
    } else {
        TH_CHECK(s == QATTN_ERR_UNSUPPORTED && ctx == NULL, "QATTN_ISA=avx512: %s", qattn_status_str(s));
    }
    unsetenv("QATTN_ISA");
    setenv("QATTN_BACKEND", "bogus", 1);
    TH_CHECK(create_with(&ctx, QATTN_BACKEND_AUTO, QATTN_ISA_AUTO, 1) == QATTN_ERR_INVALID_ARGUMENT && ctx == NULL,
             "QATTN_BACKEND=bogus must make create fail");
    setenv("QATTN_BACKEND", "cpu", 1);
    if (TH_CHECK(create_with(&ctx, QATTN_BACKEND_AUTO, QATTN_ISA_AUTO, 1) == QATTN_OK, "QATTN_BACKEND=cpu")) {
        TH_CHECK(qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.backend == QATTN_BACKEND_CPU, "QATTN_BACKEND=cpu gives cpu");
        qattn_ctx_destroy(ctx);
    }
    unsetenv("QATTN_BACKEND");
    th_set_context(NULL);
}

static void test_ctx_info_and_threads(void) {
    th_set_context("qattn_ctx_get_info / set_threads");
    int32_t isas[TH_MAX_ISAS];
    int n_isas = th_available_isas(isas);
    for (int i = 0; i < n_isas; i++) {
        qattn_ctx *ctx = th_ctx(isas[i], 3);
        if (!ctx) continue;
        qattn_ctx_info info;
        memset(&info, 0x5a, sizeof info);
        TH_CHECK(qattn_ctx_get_info(ctx, &info) == QATTN_OK, "get_info");
        TH_CHECK(info.backend == QATTN_BACKEND_CPU, "info.backend %d", info.backend);
        TH_CHECK(info.isa == isas[i], "info.isa %d, want %d", info.isa, isas[i]);
        TH_CHECK(info.n_threads == 3, "info.n_threads %d, want 3", info.n_threads);
        TH_CHECK(info.cuda_available == 0 || info.cuda_available == 1, "info.cuda_available %d", info.cuda_available);
        TH_CHECK(memchr(info.isa_name, 0, sizeof info.isa_name) && !strcmp(info.isa_name, th_isa_name(isas[i])), "info.isa_name '%.16s'",
                 info.isa_name);
        TH_CHECK(memchr(info.device_name, 0, sizeof info.device_name) && info.device_name[0] != '\0', "info.device_name empty or unterminated");
        TH_CHECK(qattn_ctx_get_info(ctx, NULL) == QATTN_ERR_NULL_POINTER, "get_info(NULL info)");

        TH_CHECK(qattn_ctx_set_threads(ctx, -1) == QATTN_ERR_INVALID_ARGUMENT, "set_threads(-1)");
        TH_CHECK(strstr(qattn_ctx_last_error(ctx), "n_threads") != NULL, "set_threads message '%s'", qattn_ctx_last_error(ctx));
        TH_CHECK(qattn_ctx_set_threads(ctx, 5) == QATTN_OK && qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.n_threads == 5,
                 "set_threads(5) gives %d", info.n_threads);
        TH_CHECK(qattn_ctx_set_threads(ctx, 0) == QATTN_OK && qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.n_threads >= 1,
                 "set_threads(0) gives %d", info.n_threads);
        qattn_ctx_destroy(ctx);
    }
    /* default options: the best ISA available (the tiers are numbered in order of preference), at least one thread */
    qattn_ctx *ctx = NULL;
    if (TH_CHECK(qattn_ctx_create(&ctx, NULL) == QATTN_OK, "create with NULL options")) {
        qattn_ctx_info info;
        TH_CHECK(qattn_ctx_get_info(ctx, &info) == QATTN_OK && info.n_threads >= 1 && info.isa == isas[n_isas - 1],
                 "default ctx info: isa %d (want %d) threads %d", info.isa, isas[n_isas - 1], info.n_threads);
        qattn_ctx_destroy(ctx);
    }
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- params helpers */

static void test_params_helpers(void) {
    th_set_context("qattn_params_init / set_contiguous");
    qattn_params p;
    memset(&p, 0x77, sizeof p);
    qattn_params_init(&p);
    TH_CHECK(p.q == NULL && p.lse == NULL && p.cu_seqlens_q == NULL && p.workspace == NULL && p.workspace_size == 0 && p.stream == NULL,
             "init leaves pointers set");
    TH_CHECK(p.qkv_dtype == QATTN_DTYPE_F32 && p.o_dtype == QATTN_DTYPE_F32 && p.precision == QATTN_PRECISION_AUTO,
             "init dtypes/precision");
    TH_CHECK(p.window_left == -1 && p.window_right == -1 && p.causal == 0 && p.scale == 0.0f, "init mask defaults");
    p.batch = 3, p.seqlen_q = 5, p.seqlen_k = 7, p.n_heads = 4, p.n_kv_heads = 2, p.head_dim = 64;
    qattn_params_set_contiguous(&p);
    TH_CHECK(p.q_head_stride == 64 && p.q_seq_stride == 256 && p.q_batch_stride == 5 * 256, "q strides");
    TH_CHECK(p.o_head_stride == 64 && p.o_seq_stride == 256 && p.o_batch_stride == 5 * 256, "o strides");
    TH_CHECK(p.k_head_stride == 64 && p.k_seq_stride == 128 && p.k_batch_stride == 7 * 128, "k strides");
    TH_CHECK(p.v_head_stride == 64 && p.v_seq_stride == 128 && p.v_batch_stride == 7 * 128, "v strides");
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- supports vs forward */

static void test_supports_agrees(void) {
    th_set_context("qattn_supports agrees with qattn_forward");
    /* valid variations and the precisions this CPU build may not run (INT8/FP8) */
    static const int32_t precisions[] = {QATTN_PRECISION_AUTO, QATTN_PRECISION_FP32, QATTN_PRECISION_FP16, QATTN_PRECISION_BF16,
                                         QATTN_PRECISION_INT8, QATTN_PRECISION_FP8_E4M3, QATTN_PRECISION_FP8_E5M2};
    static const int32_t dtypes[] = {QATTN_DTYPE_F32, QATTN_DTYPE_F16, QATTN_DTYPE_BF16};
    for (size_t pi = 0; pi < sizeof precisions / sizeof precisions[0]; pi++)
        for (size_t di = 0; di < 3; di++) {
            qattn_params p = g_pr.p;
            p.precision = precisions[pi];
            p.o_dtype = dtypes[di];
            th_problem_poison(&g_pr);
            qattn_status sup = qattn_supports(g_ctx, &p);
            char sup_msg[600];
            snprintf(sup_msg, sizeof sup_msg, "%s", qattn_ctx_last_error(g_ctx));
            qattn_status fwd = qattn_forward(g_ctx, &p);
            TH_CHECK(sup == fwd, "precision %s, o %s: qattn_supports %s ('%s') but qattn_forward %s ('%s')",
                     th_precision_name(precisions[pi]), th_dtype_name(dtypes[di]), qattn_status_str(sup), sup_msg, qattn_status_str(fwd),
                     qattn_ctx_last_error(g_ctx));
            if (sup != QATTN_OK)
                TH_CHECK(sup_msg[0] != '\0', "precision %s: qattn_supports failed without a message", th_precision_name(precisions[pi]));
            if (pi < 4) TH_CHECK(sup == QATTN_OK, "precision %s must be supported on the CPU", th_precision_name(precisions[pi]));
        }
    th_set_context(NULL);
}

/* ---------------------------------------------------------------- memory is O(L) */

static size_t workspace_for(qattn_ctx *ctx, int64_t lq, int64_t lk, int causal) {
    qattn_params p;
    qattn_params_init(&p);
    static float dummy[1];
    p.q = p.k = p.v = dummy; /* never read: workspace_size reads no tensor data */
    p.o = dummy;
    p.batch = 1, p.seqlen_q = lq, p.seqlen_k = lk, p.n_heads = 8, p.n_kv_heads = 8, p.head_dim = 128, p.causal = causal;
    qattn_params_set_contiguous(&p);
    size_t bytes = 0;
    qattn_status s = qattn_workspace_size(ctx, &p, &bytes);
    TH_CHECK(s == QATTN_OK, "workspace_size(Lq %lld, Lk %lld): %s: %s", (long long)lq, (long long)lk, qattn_status_str(s),
             qattn_ctx_last_error(ctx));
    return bytes;
}

static void test_memory_linear(void) {
    th_set_context("workspace grows at most linearly in L");
    qattn_ctx *ctx = th_ctx(QATTN_ISA_REF, 2);
    if (!ctx) return;
    /* prefill: L 2048 -> 8192 (4x): at most 4x the bytes, and far below the Lq*Lk score matrix */
    size_t small = workspace_for(ctx, 2048, 2048, 1), large = workspace_for(ctx, 8192, 8192, 1);
    printf("  workspace: L=2048 %zu bytes, L=8192 %zu bytes\n", small, large);
    TH_CHECK(large <= 4 * small, "workspace grows faster than L: %zu -> %zu bytes for 4x L", small, large);
    TH_CHECK(large < (size_t)8192 * 8192 * sizeof(float), "workspace %zu bytes is not below one Lq x Lk score matrix", large);
    /* decode (split-KV partials): Lk 16384 -> 65536 */
    small = workspace_for(ctx, 1, 16384, 0), large = workspace_for(ctx, 1, 65536, 0);
    printf("  workspace: decode Lk=16384 %zu bytes, Lk=65536 %zu bytes\n", small, large);
    TH_CHECK(large <= 4 * small, "decode workspace grows faster than Lk: %zu -> %zu bytes for 4x Lk", small, large);
    qattn_ctx_destroy(ctx);
    th_set_context(NULL);
}

/* The context's thread pool: workers persist across calls and across qattn_ctx_set_threads (grow
 * lazily, shrink by joining); every call, whatever the count, gives the 1-thread bits. A decode-
 * shaped call (split KV: two parallel phases) and a prefill one, 60 calls each on one context. */
static void test_thread_pool(void) {
    th_set_context("thread pool across calls and set_threads");
    int32_t isas[TH_MAX_ISAS];
    int n_isas = th_available_isas(isas);
    th_case c;
    memset(&c, 0, sizeof c);
    c.name = "pool";
    c.batch = 1, c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 64;
    c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F32;
    c.window_left = c.window_right = -1;
    c.with_lse = true;
    const int64_t lq[2] = {1, 200}, lk[2] = {3000, 203};
    for (int shape = 0; shape < 2; shape++) {
        c.seqlen_q = lq[shape], c.seqlen_k = lk[shape];
        c.seed = th_derive_seed(900 + shape);
        th_problem pr;
        if (!th_problem_make(&pr, &c)) return;
        size_t no = pr.o.elems * (size_t)4;
        float *o1 = th_xmalloc(no), *l1 = th_xmalloc(pr.lse_elems * 4);
        qattn_ctx *ctx = th_ctx(isas[n_isas - 1], 1);
        th_problem_poison(&pr); /* the padding too: o1 is compared whole */
        if (ctx && TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "1 thread: %s", qattn_ctx_last_error(ctx))) {
            memcpy(o1, pr.o.buf, no), memcpy(l1, pr.lse, pr.lse_elems * 4);
            const int counts[6] = {4, 2, 7, 1, 3, 4};
            for (int i = 0; i < 60; i++) {
                if (i % 10 == 0) TH_CHECK(qattn_ctx_set_threads(ctx, counts[i / 10]) == QATTN_OK, "set_threads(%d)", counts[i / 10]);
                th_problem_poison(&pr);
                if (!TH_CHECK(qattn_forward(ctx, &pr.p) == QATTN_OK, "call %d: %s", i, qattn_ctx_last_error(ctx))) break;
                if (!TH_CHECK(!memcmp(o1, pr.o.buf, no) && !memcmp(l1, pr.lse, pr.lse_elems * 4),
                              "Lq %lld Lk %lld call %d (%d threads): not bitwise the 1-thread result", (long long)lq[shape], (long long)lk[shape],
                              i, counts[i / 10]))
                    break;
            }
        }
        qattn_ctx_destroy(ctx);
        free(o1), free(l1);
        th_problem_free(&pr);
    }
    th_set_context(NULL);
}

int main(void) {
    th_init("test_api");
    g_ctx = th_ctx(QATTN_ISA_REF, 2);
    if (!g_ctx) return th_finish();
    th_case c;
    memset(&c, 0, sizeof c);
    c.name = "api-base";
    c.batch = 2, c.seqlen_q = 17, c.seqlen_k = 17, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64;
    c.qkv_dtype = c.o_dtype = QATTN_DTYPE_F32;
    c.window_left = c.window_right = -1;
    c.with_lse = true;
    c.seed = th_derive_seed(0);
    th_problem_make(&g_pr, &c);
    TH_CHECK(qattn_forward(g_ctx, &g_pr.p) == QATTN_OK, "the base problem must be valid: %s", qattn_ctx_last_error(g_ctx));

    test_bad_arguments();
    test_null_ctx_and_params();
    test_batch_zero();
    test_status_strings();
    test_ctx_options();
    test_env_override();
    test_ctx_info_and_threads();
    test_params_helpers();
    test_supports_agrees();
    test_memory_linear();
    test_thread_pool();

    th_problem_free(&g_pr);
    qattn_ctx_destroy(g_ctx);
    return th_finish();
}
