/* cpu_peak: the machine's FP32 FMA peak (GFLOP/s, 1 thread and all threads; 8-lane AVX2 and, where
 * the CPU has it, 16-lane AVX-512) and its memory bandwidth (memcpy and read-only, GB/s), the
 * ceilings CPU attention figures are compared to. Built by CMake as target cpu_peak (AVX2+FMA flags
 * on this file only; the AVX-512 loop has its own target attribute and runs only where
 * __builtin_cpu_supports says so). Run: build/cpu_peak [threads]
 * FMA: 12 (AVX2) or 16 (AVX-512) independent accumulator chains per thread (latency 4 x 2 ports
 * needs >= 8), so the loop is bound by FMA throughput, not latency. Zen 4 runs a 16-lane FMA as two
 * 8-lane halves (same peak as AVX2); Intel server cores with two 512-bit ports double it.
 * The 1-thread FMA peaks are also given in process CPU time (the loop's own cycles, as
 * bench/cpu_compare.py --threads 1 --clock cpu times qattn), steadier on a shared machine.
 * Bandwidth: 256 MiB buffers, far beyond cache. */
#define _POSIX_C_SOURCE 200112L
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define FMA_ITERS 20000000L

static void *fma_worker(void *out) {
    /* distinct starting values: identical chains would be merged into one by the compiler */
    __m256 a0 = _mm256_set1_ps(1.00f), a1 = _mm256_set1_ps(1.01f), a2 = _mm256_set1_ps(1.02f), a3 = _mm256_set1_ps(1.03f);
    __m256 a4 = _mm256_set1_ps(1.04f), a5 = _mm256_set1_ps(1.05f), a6 = _mm256_set1_ps(1.06f), a7 = _mm256_set1_ps(1.07f);
    __m256 a8 = _mm256_set1_ps(1.08f), a9 = _mm256_set1_ps(1.09f), a10 = _mm256_set1_ps(1.10f), a11 = _mm256_set1_ps(1.11f);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < FMA_ITERS; i++) {
        a0 = _mm256_fmadd_ps(a0, m, c); a1 = _mm256_fmadd_ps(a1, m, c); a2 = _mm256_fmadd_ps(a2, m, c);
        a3 = _mm256_fmadd_ps(a3, m, c); a4 = _mm256_fmadd_ps(a4, m, c); a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c); a7 = _mm256_fmadd_ps(a7, m, c); a8 = _mm256_fmadd_ps(a8, m, c);
        a9 = _mm256_fmadd_ps(a9, m, c); a10 = _mm256_fmadd_ps(a10, m, c); a11 = _mm256_fmadd_ps(a11, m, c);
        /* opaque to the optimiser: the 12 FMAs must really run each iteration */
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
        __asm__ volatile("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    _mm256_storeu_ps(out, s); /* keeps the chains alive */
    return NULL;
}

#define FMA512_CHAIN(i) a##i = _mm512_fmadd_ps(a##i, m, c)
__attribute__((target("avx512f"))) static void *fma512_worker(void *out) {
    __m512 a0 = _mm512_set1_ps(1.00f), a1 = _mm512_set1_ps(1.01f), a2 = _mm512_set1_ps(1.02f), a3 = _mm512_set1_ps(1.03f);
    __m512 a4 = _mm512_set1_ps(1.04f), a5 = _mm512_set1_ps(1.05f), a6 = _mm512_set1_ps(1.06f), a7 = _mm512_set1_ps(1.07f);
    __m512 a8 = _mm512_set1_ps(1.08f), a9 = _mm512_set1_ps(1.09f), a10 = _mm512_set1_ps(1.10f), a11 = _mm512_set1_ps(1.11f);
    __m512 a12 = _mm512_set1_ps(1.12f), a13 = _mm512_set1_ps(1.13f), a14 = _mm512_set1_ps(1.14f), a15 = _mm512_set1_ps(1.15f);
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (long i = 0; i < FMA_ITERS / 2; i++) { 
        FMA512_CHAIN(0); FMA512_CHAIN(1); FMA512_CHAIN(2); FMA512_CHAIN(3); FMA512_CHAIN(4); FMA512_CHAIN(5); FMA512_CHAIN(6); FMA512_CHAIN(7);
        FMA512_CHAIN(8); FMA512_CHAIN(9); FMA512_CHAIN(10); FMA512_CHAIN(11); FMA512_CHAIN(12); FMA512_CHAIN(13); FMA512_CHAIN(14);
        FMA512_CHAIN(15);
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7));
        __asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13), "+v"(a14), "+v"(a15));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)),
                                       _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15))));
    _mm512_storeu_ps(out, s);
    return NULL;
}

typedef struct bw_job {
    char *src, *dst;
    size_t bytes;
    int copy;
    double sink;
} bw_job;

static void *bw_worker(void *arg) {
    bw_job *j = arg;
    if (j->copy) {
        memcpy(j->dst, j->src, j->bytes);
    } else {
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        const float *p = (const float *)j->src;
        for (size_t i = 0; i + 32 <= j->bytes / 4; i += 32) {
            s0 = _mm256_add_ps(s0, _mm256_load_ps(p + i));
            s1 = _mm256_add_ps(s1, _mm256_load_ps(p + i + 8));
            s2 = _mm256_add_ps(s2, _mm256_load_ps(p + i + 16));
            s3 = _mm256_add_ps(s3, _mm256_load_ps(p + i + 24));
        }
        float t[8];
        _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        j->sink = t[0];
    }
    return NULL;
}

/* wide: the 16-lane loop (16 chains x 16 lanes x FMA_ITERS/2), else the 8-lane one (12 x 8 x FMA_ITERS) */
/* Best of 3 in wall clock; *cpu_best (if given) the best in process CPU time (all threads' sum). */
static double run_fma_cpu(int nt, int wide, double *cpu_best) {
    pthread_t th[256];
    static float out[256][16];
    double best = 0, best_cpu = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now(), c0 = cpu_now();
        for (int i = 0; i < nt; i++) pthread_create(&th[i], NULL, wide ? fma512_worker : fma_worker, out[i]);
        for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
        double flops = wide ? (double)FMA_ITERS / 2 * 16 * 16 * 2 : (double)FMA_ITERS * 12 * 8 * 2;
        double g = nt * flops / (now() - t0) * 1e-9, gc = nt * flops / (cpu_now() - c0) * 1e-9;
        if (g > best) best = g;
        if (gc > best_cpu) best_cpu = gc;
    }
    if (cpu_best) *cpu_best = best_cpu;
    return best;
}

static double run_fma(int nt, int wide) { return run_fma_cpu(nt, wide, NULL); }

static double run_bw(int nt, int copy, char *src, char *dst, size_t bytes) {
    pthread_t th[256];
    bw_job jobs[256];
    double best = 0;
    size_t per = bytes / (size_t)nt / 64 * 64;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (int i = 0; i < nt; i++) {
            jobs[i] = (bw_job){.src = src + i * per, .dst = dst + i * per, .bytes = per, .copy = copy};
            pthread_create(&th[i], NULL, bw_worker, &jobs[i]);
        }
        for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
        double t = now() - t0;
        /* memcpy moves each byte twice (read + write), as STREAM counts it */
        double g = (double)per * nt * (copy ? 2 : 1) / t * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int all = argc > 1 ? atoi(argv[1]) : (int)(ncpu < 1 ? 1 : ncpu > 256 ? 256 : ncpu);
    if (all < 1) all = 1;
    size_t bytes = (size_t)256 << 20;
    char *src = aligned_alloc(64, bytes), *dst = aligned_alloc(64, bytes);
    if (!src || !dst) return 1;
    memset(src, 1, bytes);
    memset(dst, 0, bytes);
    printf("%-28s %12s %12s\n", "ceiling", "1 thread", "threads");
    double cpu8, cpu16;
    printf("%-28s %12.1f %12.1f   (%d threads)\n", "FP32 FMA peak, GFLOP/s", run_fma_cpu(1, 0, &cpu8), run_fma(all, 0), all);
    printf("%-28s %12.1f   (process CPU time)\n", "FP32 FMA peak, CPU time", cpu8);
    if (__builtin_cpu_supports("avx512f")) {
        printf("%-28s %12.1f %12.1f   (%d threads)\n", "FP32 AVX-512 FMA peak", run_fma_cpu(1, 1, &cpu16), run_fma(all, 1), all);
        printf("%-28s %12.1f   (process CPU time)\n", "FP32 AVX-512 peak, CPU time", cpu16);
    } else
        printf("%-28s %12s %12s\n", "FP32 AVX-512 FMA peak", "no AVX-512", "-");
    printf("%-28s %12.1f %12.1f\n", "memcpy (read+write), GB/s", run_bw(1, 1, src, dst, bytes), run_bw(all, 1, src, dst, bytes));
    printf("%-28s %12.1f %12.1f\n", "read-only, GB/s", run_bw(1, 0, src, dst, bytes), run_bw(all, 0, src, dst, bytes));
    free(src);
    free(dst);
    return 0;
}
