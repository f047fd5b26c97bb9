/* INT8 (default scheme, quantization included) against FP32 prefill on one ISA, same inputs, same
 * process, the two alternated; process CPU time (1 thread by default: the work, less sensitive to
 * the machine's other load than wall time). Prints the medians, their ratio and a hash of each
 * output (bit-exactness checks across builds and ISAs).
 * Build: cc -O2 -std=gnu11 -Iinclude -Isrc dev/cpu_int8/ratio.c build/libqattn.a -lpthread -lm -o build/i8_ratio
 * Run:   build/i8_ratio [L causal rounds isa threads H D only]   (isa: 0 auto, 1 ref, 2 avx2, 3 avxvnni, 4 avx512; only: 0 fp32, 1 int8,
 *        for a profiler) */
#define _POSIX_C_SOURCE 199309L
#include "qattn.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static uint64_t hash(const void *p, size_t n) { /* FNV-1a */
    const unsigned char *c = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
    return h;
}
static uint64_t rs = 42;
static float gauss(void) { /* Box-Muller from a 64-bit LCG */
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = ((rs >> 11) + 1.0) / 9007199254740993.0;
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    double u2 = (rs >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

int main(int argc, char **argv) {
    int64_t L = argc > 1 ? atoll(argv[1]) : 2048;
    int causal = argc > 2 ? atoi(argv[2]) : 0, rounds = argc > 3 ? atoi(argv[3]) : 5;
    qattn_ctx_options co;
    memset(&co, 0, sizeof co);
    co.isa = argc > 4 ? atoi(argv[4]) : QATTN_ISA_AVX512;
    co.n_threads = argc > 5 ? atoi(argv[5]) : 1;
    int H = argc > 6 ? atoi(argv[6]) : 8, D = argc > 7 ? atoi(argv[7]) : 128, only = argc > 8 ? atoi(argv[8]) : -1;
    qattn_ctx *ctx;
    if (qattn_ctx_create(&ctx, &co) != QATTN_OK) return fprintf(stderr, "ctx\n"), 1;
    qattn_params p;
    qattn_params_init(&p);
    p.batch = 1, p.seqlen_q = p.seqlen_k = L, p.n_heads = p.n_kv_heads = H, p.head_dim = D, p.causal = causal;
    qattn_params_set_contiguous(&p);
    size_t n = (size_t)(L * H * D);
    float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *o[2] = {malloc(n * 4), malloc(n * 4)};
    for (size_t i = 0; i < n; i++) q[i] = gauss();
    for (size_t i = 0; i < n; i++) k[i] = gauss();
    for (size_t i = 0; i < n; i++) v[i] = gauss();
    p.q = q, p.k = k, p.v = v, p.o = o[0];
    int prec[2] = {QATTN_PRECISION_FP32, QATTN_PRECISION_INT8};
    void *ws[2];
    size_t wsz[2];
    for (int m = 0; m < 2; m++) {
        p.precision = prec[m];
        if (qattn_workspace_size(ctx, &p, &wsz[m]) != QATTN_OK) return fprintf(stderr, "%s\n", qattn_ctx_last_error(ctx)), 1;
        ws[m] = aligned_alloc(64, (wsz[m] + 64) / 64 * 64);
    }
    double t[2][256];
    for (int r = 0; r < rounds + 1; r++)
        for (int m = 0; m < 2; m++) {
            if (only >= 0 && m != only) { t[m][r > 0 ? r - 1 : 0] = 1; continue; }
            p.precision = prec[m], p.o = o[m], p.workspace = ws[m], p.workspace_size = wsz[m];
            double t0 = now();
            if (qattn_forward(ctx, &p) != QATTN_OK) return fprintf(stderr, "%s\n", qattn_ctx_last_error(ctx)), 1;
            if (r > 0) t[m][r - 1] = (now() - t0) * 1e3; /* round 0 warms up */
        }
    double med[2];
    printf("L %lld H %d D %d%s isa %d threads %d, %d rounds alternated, CPU ms:\n", (long long)L, H, D, causal ? " causal" : "", co.isa,
           co.n_threads, rounds);
    for (int m = 0; m < 2; m++) {
        printf("  %s:", m ? "int8" : "fp32");
        for (int r = 0; r < rounds; r++) printf(" %.1f", t[m][r]);
        qsort(t[m], (size_t)rounds, sizeof(double), cmp);
        med[m] = t[m][rounds / 2];
        printf("  median %.2f min %.2f  hash %016llx\n", med[m], t[m][0], (unsigned long long)hash(o[m], n * 4));
    }
    printf("  fp32/int8 median %.3f  min %.3f\n", med[0] / med[1], t[0][0] / t[1][0]);
    return 0;
}
