/* The quantizer's row passes alone, over a B1 L H8 D128 FP32 tensor (process CPU time, 1 thread,
 * medians): a plain AVX-512 read of the tensor (the memory floor), the table's stats_row (min/max,
 * and the double sums), tok_codes (smoothing factors, rotation, codes), each token-major as
 * src/quant/quant.c runs them (no prefetch), then the same on one row kept in L1 (the compute alone),
 * and the row slots tok_codes replaced, one by one.
 * Build: cc -O2 -std=gnu11 -mavx512f -DQATTN_HAVE_X86 [-DEVMB=1024] -Iinclude -Isrc dev/cpu_int8/rowpass.c build/libqattn.a -lpthread -lm -o build/i8_rowpass
 * Run:   build/i8_rowpass [L rounds] */
#define _POSIX_C_SOURCE 199309L
#include "quant/lowp.h"

#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef EVMB
#define EVMB 64 /* MB read between passes, to evict the tensor from L2 */
#endif

static double now(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
    int64_t L = argc > 1 ? atoll(argv[1]) : 2048, H = 8, D = 128;
    int rounds = argc > 2 ? atoi(argv[2]) : 9;
    const qattn_int8_kernels *K = &qattn_int8_kernels_avx512;
    size_t n = (size_t)(L * H * D);
    float *x = aligned_alloc(64, n * 4), *ev = aligned_alloc(64, 64u << 20), *f = aligned_alloc(64, D * 4), *mu = aligned_alloc(64, D * 4);
    int8_t *codes = aligned_alloc(64, n);
    int32_t *sq = aligned_alloc(64, (size_t)(L * H) * 4);
    for (size_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (16u << 20); i++) ev[i] = 1.0f;
    for (int c = 0; c < D; c++) f[c] = 1.0f, mu[c] = 0.01f;
    double acc[8][256];
    float mn[8][256], mx[8][256];
    enum { NT = 12 };
    static const char *name[NT] = {"read", "stats min/max", "stats sum+min/max", "tok_codes rot", "tok_codes rot, one row (L1)", "composed slots, one row (L1)", "scale_center_amax (L1)", "rotate_row (L1)", "quant_row (L1)", "stats min/max (L1)", "stats sum+min/max (L1)", "stats sum (L1)"};
    double t[NT][64];
    volatile float sink = 0;
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < NT; k++) {
            __m512 e = _mm512_setzero_ps(); /* evict: 64 MB */
            for (size_t i = 0; i < (16u << 20); i += 16) e = _mm512_add_ps(e, _mm512_load_ps(ev + i));
            sink += _mm512_reduce_add_ps(e);
            double t0 = now();
            if (k == 0) {
                __m512 m = _mm512_setzero_ps();
                for (size_t i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_load_ps(x + i));
                sink += _mm512_reduce_max_ps(m);
            } else if (k < 3) {
                for (int64_t i = 0; i < L; i++)
                    for (int64_t h = 0; h < H; h++) sink += (float)K->stats_row(x + (i * H + h) * D, (int)D, k == 2 ? acc[h] : NULL, mn[h], mx[h]);
            } else if (k >= 9) {
                for (int64_t i = 0; i < L; i++)
                    for (int64_t h = 0; h < H; h++)
                        sink += (float)K->stats_row(x + h * D, (int)D, k >= 10 ? acc[h] : NULL, k == 11 ? NULL : mn[h], mx[h]);
            } else if (k >= 6) {
                float y[256];
                for (int c = 0; c < D; c++) y[c] = x[c];
                for (int64_t i = 0; i < L; i++)
                    for (int64_t h = 0; h < H; h++) {
                        if (k == 6) sink += K->scale_center_amax(x + h * D, f, mu, (int)D, y);
                        else if (k == 7) sink += K->rotate_row(y, (int)D, 1.0f);
                        else K->quant_row(y, (int)D, 1.0f, codes + h * D);
                    }
            } else if (k == 5) {
                float y[256];
                for (int64_t i = 0; i < L; i++)
                    for (int64_t h = 0; h < H; h++) {
                        (void)K->scale_center_amax(x + h * D, f, mu, (int)D, y);
                        float a = K->rotate_row(y, (int)D, 1.0f / 128);
                        K->quant_row(y, (int)D, a > 0 ? 127.0f / a : 0.0f, codes + h * D);
                        int32_t s2 = 0;
                        for (int c = 0; c < D; c++) s2 += codes[h * D + c] * codes[h * D + c];
                        sq[i * H + h] = s2;
                        sink += a;
                    }
            } else if (k == 4) {
                for (int64_t i = 0; i < L; i++)
                    for (int64_t h = 0; h < H; h++) sink += K->tok_codes(x + h * D, f, mu, (int)D, 1.0f / 128, 127.0f, codes + h * D, sq + i * H + h);
            } else {
                for (int64_t i = 0; i < L; i++)
                    for (int64_t h = 0; h < H; h++)
                        sink += K->tok_codes(x + (i * H + h) * D, f, mu, (int)D, 1.0f / 128, 127.0f, codes + (i * H + h) * D, sq + i * H + h);
            }
            t[k][r] = (now() - t0) * 1e3;
        }
    printf("L %lld H %lld D %lld, %.1f MB, CPU ms (median of %d):", (long long)L, (long long)H, (long long)D, n * 4 / 1048576.0, rounds);
    for (int k = 0; k < NT; k++) qsort(t[k], (size_t)rounds, sizeof(double), cmp), printf("  %s %.3f", name[k], t[k][rounds / 2]);
    printf("\n");
    return 0;
}
