/* Kernel lab for the CPU FP path: checks a SIMD ISA (avx2 or avx512) against ref and the FP64 oracle
 * on awkward shapes, then times the standard shapes (ref, avx2, avx512 where the CPU has them).
 * Build: cc -O2 -std=c11 -Iinclude dev/cpu_fp/check.c build/libqattn.a -lpthread -lm -o build/cpu_fp_check
 * Run:   build/cpu_fp_check check [avx2|avx512] | bench [threads] [reps] [prefill|decode|all] */
#define _POSIX_C_SOURCE 199309L
#include "qattn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 88172645463325252ull;
static float frand(void) { /* N(0,1)-ish: sum of 4 uniforms */
    float s = 0;
    for (int i = 0; i < 4; i++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        s += (float)(rng >> 40) / (float)(1 << 24);
    }
    return (s - 2.0f) * 1.7320508f;
}
static uint16_t f2h(float f) { /* GCC's _Float16 rounds to nearest even */
    _Float16 h = (_Float16)f; uint16_t u; memcpy(&u, &h, 2); return u;
}

/* With one thread, process CPU time: other load on a shared machine then matters less. */
static int use_cpu_clock;
static double now(void) {
    struct timespec t;
    clock_gettime(use_cpu_clock ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

typedef struct { int B, Lq, Lk, H, HK, D, causal, wl, wr, dtype, nan_k, nan_v, threads; } cs;

static const char *isa_name(int isa) { return isa == QATTN_ISA_REF ? "ref" : isa == QATTN_ISA_AVX2 ? "avx2" : isa == QATTN_ISA_AVX512 ? "avx512" : "?"; }
static int simd_isa = QATTN_ISA_AVX2; /* the ISA check_case compares against ref */

static qattn_ctx *make_ctx(int isa, int threads) {
    qattn_ctx_options o = {0};
    o.isa = isa; o.n_threads = threads;
    qattn_ctx *c; if (qattn_ctx_create(&c, &o) != QATTN_OK) { fprintf(stderr, "ctx fail\n"); exit(1); }
    return c;
}

static void fill(qattn_params *p, const cs *c, void **q, void **k, void **v) {
    qattn_params_init(p);
    p->batch = c->B; p->seqlen_q = c->Lq; p->seqlen_k = c->Lk; p->n_heads = c->H; p->n_kv_heads = c->HK; p->head_dim = c->D;
    p->causal = c->causal; p->window_left = c->wl; p->window_right = c->wr; p->qkv_dtype = c->dtype;
    qattn_params_set_contiguous(p);
    size_t nq = (size_t)c->B * c->Lq * c->H * c->D, nk = (size_t)c->B * c->Lk * c->HK * c->D;
    size_t es = c->dtype == QATTN_DTYPE_F32 ? 4 : 2;
    *q = malloc(nq * es); *k = malloc(nk * es); *v = malloc(nk * es);
    void *arr[3] = {*q, *k, *v}; size_t cnt[3] = {nq, nk, nk};
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; i < cnt[a]; i++) {
            float x = frand();
            if (es == 4) ((float *)arr[a])[i] = x;
            else if (c->dtype == QATTN_DTYPE_F16) ((uint16_t *)arr[a])[i] = f2h(x);
            else { uint32_t u; memcpy(&u, &x, 4); ((uint16_t *)arr[a])[i] = (uint16_t)(u >> 16); }
        }
    if (c->nan_k >= 0 && es == 4) ((float *)*k)[(size_t)c->nan_k * c->HK * c->D + 3] = NAN;
    if (c->nan_v >= 0 && es == 4) ((float *)*v)[(size_t)c->nan_v * c->HK * c->D + 5] = INFINITY;
    p->q = *q; p->k = *k; p->v = *v;
}

static int check_case(const cs *c) {
    qattn_params p; void *q, *k, *v;
    fill(&p, c, &q, &k, &v);
    size_t no = (size_t)c->B * c->Lq * c->H * c->D, nl = (size_t)c->B * c->H * c->Lq;
    float *o_ref = malloc(no * 4), *o_avx = malloc(no * 4), *o_avx1 = malloc(no * 4), *l_ref = malloc(nl * 4), *l_avx = malloc(nl * 4);
    double *o64 = malloc(no * 8), *l64 = malloc(nl * 8);
    qattn_ctx *cr = make_ctx(QATTN_ISA_REF, 2), *ca = make_ctx(simd_isa, 2), *ca1 = make_ctx(simd_isa, 1);
    int st = 0;
    p.o = o_ref; p.lse = l_ref; st |= qattn_forward(cr, &p);
    p.o = o_avx; p.lse = l_avx; st |= qattn_forward(ca, &p);
    p.o = o_avx1; p.lse = NULL; st |= qattn_forward(ca1, &p);
    st |= qattn_oracle_f64(cr, &p, o64, l64);
    if (st) { printf("status error %d: %s %s\n", st, qattn_ctx_last_error(ca), qattn_ctx_last_error(cr)); return 1; }
    double e2 = 0, r2 = 0, e2r = 0, maxe = 0, lmax = 0; long nan_mismatch = 0;
    for (size_t i = 0; i < no; i++) {
        int na = isnan(o_avx[i]) || isinf(o_avx[i]), nr = isnan(o_ref[i]) || isinf(o_ref[i]), n64 = isnan(o64[i]) || isinf(o64[i]);
        if (na != nr || na != n64) { nan_mismatch++; continue; }
        if (na) continue;
        double d = o_avx[i] - o64[i], dr = o_ref[i] - o64[i];
        e2 += d * d; r2 += o64[i] * o64[i]; e2r += dr * dr; if (fabs(d) > maxe) maxe = fabs(d);
    }
    for (size_t i = 0; i < nl; i++) {
        if (isinf(l64[i]) || isnan(l64[i])) { if (!(isinf(l_avx[i]) == isinf(l64[i]) && isnan(l_avx[i]) == isnan(l64[i]))) nan_mismatch++; continue; }
        double d = fabs(l_avx[i] - l64[i]); if (d > lmax) lmax = d;
    }
    int bit = memcmp(o_avx, o_avx1, no * 4) == 0;
    double rel = r2 > 0 ? sqrt(e2 / r2) : sqrt(e2), relr = r2 > 0 ? sqrt(e2r / r2) : sqrt(e2r);
    int bad = nan_mismatch || !bit || rel > 5e-6 || lmax > 1e-4;
    printf("%s %s B%d Lq%d Lk%d H%d HK%d D%d c%d w%d/%d dt%d nanK%d infV%d: relL2 simd %.2e ref %.2e maxabs %.1e lse %.1e nanmis %ld bitwise1v2 %d\n",
           bad ? "FAIL" : "ok  ", isa_name(simd_isa), c->B, c->Lq, c->Lk, c->H, c->HK, c->D, c->causal, c->wl, c->wr, c->dtype, c->nan_k, c->nan_v, rel, relr, maxe, lmax,
           nan_mismatch, bit);
    qattn_ctx_destroy(cr); qattn_ctx_destroy(ca); qattn_ctx_destroy(ca1);
    free(q); free(k); free(v); free(o_ref); free(o_avx); free(o_avx1); free(l_ref); free(l_avx); free(o64); free(l64);
    return bad;
}

static void bench(const cs *c, int isa, int threads, int reps) {
    qattn_params p; void *q, *k, *v;
    fill(&p, c, &q, &k, &v);
    size_t no = (size_t)c->B * c->Lq * c->H * c->D;
    float *o = malloc(no * 4); p.o = o;
    qattn_ctx *ctx = make_ctx(isa, threads);
    qattn_forward(ctx, &p);
    double best = 1e30, tot = 0; double ts[64];
    for (int r = 0; r < reps; r++) {
        double t0 = now(); qattn_forward(ctx, &p); double t = now() - t0; ts[r] = t; tot += t; if (t < best) best = t;
    }
    for (int i = 0; i < reps; i++) for (int j = i + 1; j < reps; j++) if (ts[j] < ts[i]) { double x = ts[i]; ts[i] = ts[j]; ts[j] = x; }
    double med = ts[reps / 2];
    double flops = 4.0 * c->B * c->H * (double)c->Lq * c->Lk * c->D * (c->causal ? 0.5 : 1.0);
    double kvbytes = 2.0 * c->B * c->HK * (double)c->Lk * c->D * (c->dtype == QATTN_DTYPE_F32 ? 4 : 2);
    printf("%-4s t%d B%d H%d HK%d D%d Lq%d Lk%d causal%d dt%d: best %.3f ms med %.3f ms  %.1f GFLOP/s (best) %.1f (med)  KV %.1f GB/s\n",
           isa_name(isa), threads, c->B, c->H, c->HK, c->D, c->Lq, c->Lk, c->causal, c->dtype, best * 1e3, med * 1e3,
           flops / best * 1e-9, flops / med * 1e-9, kvbytes / best * 1e-9);
    (void)tot;
    qattn_ctx_destroy(ctx); free(q); free(k); free(v); free(o);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "check";
    if (!strcmp(mode, "check")) {
        if (argc > 2) simd_isa = !strcmp(argv[2], "avx512") ? QATTN_ISA_AVX512 : QATTN_ISA_AVX2;
        int fails = 0, Ls[] = {1, 17, 113, 203}, Ds[] = {32, 64, 80, 128, 256, 40};
        for (int li = 0; li < 4; li++)
            for (int di = 0; di < 6; di++) {
                cs c = {1, Ls[li], Ls[li], 8, 8 / (1 << (di % 3)) , Ds[di], di & 1, -1, -1, QATTN_DTYPE_F32, -1, -1, 0};
                if (c.HK == 2) c.HK = 1;
                fails += check_case(&c);
            }
        cs extra[] = {
            {2, 17, 203, 8, 1, 64, 1, -1, -1, 0, -1, -1, 0},   /* causal Lq<Lk, MQA */
            {1, 203, 17, 4, 4, 128, 1, -1, -1, 0, -1, -1, 0},  /* causal Lq>Lk: fully masked rows */
            {1, 113, 113, 4, 2, 80, 0, 7, 3, 0, -1, -1, 0},    /* window */
            {1, 203, 203, 8, 8, 64, 0, 0, 0, 0, -1, -1, 0},    /* window 0/0: diagonal only */
            {1, 113, 203, 8, 2, 128, 1, 20, -1, 0, 50, 60, 0}, /* NaN K row / Inf V row */
            {1, 113, 113, 8, 8, 128, 0, -1, -1, 0, 50, 60, 0},
            {1, 1, 4099, 32, 8, 128, 0, -1, -1, 0, -1, -1, 0},  /* decode, split */
            {1, 1, 4099, 32, 8, 128, 0, -1, -1, 1, -1, -1, 0},  /* decode f16 */
            {1, 113, 203, 8, 2, 128, 1, -1, -1, 1, -1, -1, 0},  /* f16 */
            {1, 113, 203, 8, 2, 64, 0, -1, -1, 2, -1, -1, 0},   /* bf16 */
            {1, 113, 113, 8, 8, 64, 0, 0, 0, 0, 50, -1, 0},     /* a row that sees only a NaN key */
            {2, 1, 2000, 8, 1, 64, 0, -1, -1, 0, 700, 900, 0},  /* decode MQA, NaN/Inf rows */
            {3, 2, 1500, 16, 4, 80, 1, -1, -1, 1, -1, -1, 0},   /* decode 2 queries, causal, f16 */
            {1, 1, 1100, 4, 4, 256, 0, 100, -1, 0, -1, -1, 0},  /* decode with a window */
        };
        for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) fails += check_case(&extra[i]);
        printf("%d failures\n", fails);
        return fails != 0;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 2, reps = argc > 3 ? atoi(argv[3]) : 5;
    use_cpu_clock = threads == 1;
    const char *which = argc > 4 ? argv[4] : "all";
    cs pre = {1, 2048, 2048, 8, 8, 128, 0, -1, -1, 0, -1, -1, 0};
    cs dec = {1, 1, 32768, 32, 8, 128, 0, -1, -1, 0, -1, -1, 0};
    for (int isa = QATTN_ISA_REF; isa <= QATTN_ISA_AVX512; isa++) {
        if (isa == QATTN_ISA_AVXVNNI || (!strcmp(mode, "bench-simd") && isa == QATTN_ISA_REF)) continue;
        qattn_ctx_options o = {0};
        qattn_ctx *probe;
        o.isa = isa;
        if (qattn_ctx_create(&probe, &o) != QATTN_OK) continue; /* not on this CPU */
        qattn_ctx_destroy(probe);
        if (strcmp(which, "decode")) {
            pre.causal = 0; bench(&pre, isa, threads, isa == QATTN_ISA_REF ? 1 : reps);
            pre.causal = 1; bench(&pre, isa, threads, isa == QATTN_ISA_REF ? 1 : reps);
        }
        if (strcmp(which, "prefill")) {
            dec.dtype = 0; bench(&dec, isa, threads, reps);
            dec.dtype = 1; bench(&dec, isa, threads, reps);
        }
    }
    return 0;
}
