/* The shared C test harness: seeded PRNG, fills, table-driven attention cases with a
 * describe() string that reproduces them, strided/poisoned tensors, whole-tensor metrics
 * (docs/ARCHITECTURE.md "Tolerances") and check counting. Test programs print a summary and return non-zero
 * on failure (th_finish).
 *
 * Reproducing a failure: every case prints its description, which includes its seed;
 * QATTN_TEST_SEED=<base seed> reruns the suite with the same data and QATTN_TEST_FILTER=<text>
 * runs only the cases whose description contains <text>. */
#ifndef QATTN_TEST_HARNESS_H
#define QATTN_TEST_HARNESS_H

#include "qattn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- checks and summary */

void th_init(const char *suite_name); /* reads QATTN_TEST_SEED / QATTN_TEST_FILTER, prints the seed */
uint64_t th_base_seed(void);
uint64_t th_derive_seed(uint64_t index); /* a distinct, reproducible seed per case */
bool th_selected(const char *description); /* QATTN_TEST_FILTER */
int th_finish(void);                        /* prints the summary; returns the exit status */

/* Records one check; on failure prints file:line, the message and (if set) the current case. */
bool th_check_at(bool ok, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
#define TH_CHECK(cond, ...) th_check_at((cond), __FILE__, __LINE__, __VA_ARGS__)
/* The case description printed with every failure until cleared (NULL). */
void th_set_context(const char *description);

/* ---------------------------------------------------------------- PRNG and fills */

typedef struct th_rng {
    uint64_t state;
} th_rng;

void th_rng_init(th_rng *rng, uint64_t seed);
uint64_t th_rng_u64(th_rng *rng);
double th_rng_uniform(th_rng *rng, double lo, double hi); /* [lo, hi) */
double th_rng_normal(th_rng *rng);                       /* N(0, 1), Box-Muller */
void th_fill_normal(float *x, size_t n, th_rng *rng, double mean, double std);
void th_fill_uniform(float *x, size_t n, th_rng *rng, double lo, double hi);

/* ---------------------------------------------------------------- cases */

#define TH_MAX_SEQS 8

/* One attention call, fully described. Zero means "default" for the optional fields. */
typedef struct th_case {
    const char *name;
    int32_t isa;       /* qattn_isa for the context */
    int32_t n_threads; /* for the context */
    int64_t batch, seqlen_q, seqlen_k; /* with varlen, seqlen_* are the upper bounds passed */
    int32_t n_heads, n_kv_heads, head_dim;
    int32_t qkv_dtype, o_dtype, precision;
    int32_t causal, window_left, window_right; /* windows: -1 = unbounded (set explicitly) */
    float scale;
    bool with_lse;
    bool qo_bhld;  /* q and o stored [B, H, L, D] (varlen: [H, total, D]) through strides */
    bool kv_cache; /* k and v are views into a larger, NaN-padded cache with odd strides */
    bool varlen;   /* cu_seqlens_q/k below, batch + 1 entries each */
    int32_t cu_q[TH_MAX_SEQS + 1], cu_k[TH_MAX_SEQS + 1];
    uint64_t seed;
} th_case;

/* Writes a one-line description that reproduces the case exactly. */
void th_describe(const th_case *c, char *buf, size_t len);
const char *th_dtype_name(int32_t dtype);
const char *th_precision_name(int32_t precision);
const char *th_isa_name(int32_t isa);

/* ---------------------------------------------------------------- tensors */

/* A strided 4-d view [n0, n1, n2, D] into a buffer of `elems` elements of `dtype`;
 * everything outside the view is padding. */
typedef struct th_tensor {
    void *buf;
    size_t elems;
    int32_t dtype;
    int64_t offset; /* element offset of the view's first element in buf */
    int64_t n0, n1, n2, d;
    int64_t s0, s1, s2;
} th_tensor;

float th_tensor_get(const th_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t c);
void th_tensor_set(th_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t c, float value);

/* A case made concrete: tensors filled with N(0, 1) data (padding NaN, so an out-of-view read
 * shows up as NaN), qattn_params pointing at them, an LSE buffer with a guard tail. */
typedef struct th_problem {
    th_case c;
    qattn_params p;
    th_tensor q, k, v, o;
    float *lse;
    size_t lse_elems; /* B*H*Lq (varlen: H*total_q) */
    int64_t rows;     /* query rows of the oracle layout: B*Lq (varlen: total_q) */
    int32_t cu_q[TH_MAX_SEQS + 1], cu_k[TH_MAX_SEQS + 1];
} th_problem;

/* Returns false (and reports) when an allocation fails. */
bool th_problem_make(th_problem *pr, const th_case *c);
void th_problem_free(th_problem *pr);
/* A copy whose q, k, v are FP32 holding the inputs rounded to `precision` (the baseline of
 * docs/ARCHITECTURE.md "Tolerances"), same strides; o and lse are not allocated (oracle use only). */
bool th_problem_rounded_copy(th_problem *dst, const th_problem *src, int32_t precision);
/* Sequence b's rows of q/k (packed index with varlen). */
int64_t th_seq_len_q(const th_problem *pr, int64_t b);
int64_t th_seq_len_k(const th_problem *pr, int64_t b);
/* Element (b, position, head, c) of q, k or v as seen by the library (handles varlen). */
void th_problem_set(th_problem *pr, th_tensor *t, int64_t b, int64_t pos, int64_t head, int64_t c, float value);

/* Fill o and lse (and their padding) with NaN sentinels of a payload the library never makes. */
void th_problem_poison(th_problem *pr);
/* Counts in-view output elements still holding the sentinel (not written) and out-of-view
 * elements that lost it (written outside the view); reports both. True when clean. */
bool th_problem_check_written(const th_problem *pr);
/* Output and LSE in the oracle's layouts: o [rows, H, D] float, lse as in qattn_params. */
void th_problem_gather_o(const th_problem *pr, float *out);

/* Runs the FP64 oracle on pr's inputs; o64 has rows*H*D doubles, lse64 lse_elems (may be NULL). */
bool th_oracle(const th_problem *pr, double *o64, double *lse64);

/* ---------------------------------------------------------------- metrics */

typedef struct th_metrics {
    double max_abs;  /* max |o - ref| */
    double rel_l2;   /* ||o - ref|| / ||ref|| (||o - ref|| when ref is all zero) */
    double cosine;   /* <o, ref> / (||o|| ||ref||); 1 when both are zero */
    double mre;      /* INT-FlashAttention's mean relative error: sum |o - ref| / sum |ref| */
    size_t nonfinite; /* elements of o that are NaN/Inf where ref is finite, or vice versa */
    size_t n;
} th_metrics;

th_metrics th_compare(const float *out, const double *ref, size_t n);
th_metrics th_compare_f64(const double *out, const double *ref, size_t n);
void th_metrics_print(const char *label, const th_metrics *m);

/* ---------------------------------------------------------------- misc */

void *th_xmalloc(size_t bytes); /* aborts the test program (not the library) on failure */
/* A context with the given ISA and threads; NULL (reported) on failure. */
qattn_ctx *th_ctx(int32_t isa, int32_t n_threads);
bool th_cpu_has_avx2(void); /* whether an avx2 context can be created */
#define TH_MAX_ISAS 4
/* Every CPU ISA a context can be created for on this machine, ref first; returns the count. */
int th_available_isas(int32_t isas[TH_MAX_ISAS]);
double th_seconds(void);

#endif /* QATTN_TEST_HARNESS_H */
