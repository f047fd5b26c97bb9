/* Times the avx2 and (where the CPU has it) avx512 attend_tile_f32 on cache-resident data (m rows x
 * n keys x d), no driver, alternating the two 5 times.
 * Build: cc -O2 -std=gnu11 -Iinclude -Isrc -DQATTN_HAVE_X86 dev/cpu_fp/tile_bench.c build/libqattn.a -lpthread -lm -o build/tile_bench
 * Run:   build/tile_bench [m n d]   (process CPU time, so other load on the machine matters less) */
#define _POSIX_C_SOURCE 199309L
#include "qattn_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

int main(int argc, char **argv) {
    int m = argc > 1 ? atoi(argv[1]) : 64, n = argc > 2 ? atoi(argv[2]) : 64, d = argc > 3 ? atoi(argv[3]) : 128;
    float *q = aligned_alloc(64, sizeof(float) * m * d), *k = aligned_alloc(64, sizeof(float) * n * d), *v = aligned_alloc(64, sizeof(float) * n * d);
    float *acc = aligned_alloc(64, sizeof(float) * m * d), *mx = malloc(4 * m), *sm = malloc(4 * m), *scr = aligned_alloc(64, 4 * (m * n + 64));
    int32_t *lo = malloc(4 * m), *hi = malloc(4 * m);
    for (int i = 0; i < m * d; i++) q[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f, acc[i] = 0;
    for (int i = 0; i < n * d; i++) k[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f, v[i] = k[i] * 0.5f;
    for (int r = 0; r < m; r++) lo[r] = 0, hi[r] = n, mx[r] = -INFINITY, sm[r] = 0;
    qattn_tile_state st = {mx, sm, acc, d};
    const qattn_cpu_kernels *ks[2] = {&qattn_kernels_avx2, &qattn_kernels_avx512};
    int n_ks = qattn_cpu_has_avx512() ? 2 : 1;
    int iters = 20000000 / (m * n * d / 64) + 1;
    double best[2] = {1e30, 1e30};
    for (int rep = 0; rep < 5; rep++)
        for (int t = 0; t < n_ks; t++) {
            double t0 = now();
            for (int i = 0; i < iters; i++) ks[t]->attend_tile_f32(q, d, m, d, k, v, d, n, lo, hi, NULL, &st, scr);
            double e = now() - t0;
            if (e < best[t]) best[t] = e;
        }
    for (int t = 0; t < n_ks; t++) printf("%s m%d n%d d%d: %.1f GFLOP/s\n", ks[t]->name, m, n, d, 4.0 * m * n * d * iters / best[t] * 1e-9);
    return 0;
}
