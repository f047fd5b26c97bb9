/* Rates of the INT8 AVX-512 tile kernels (qk, p_vs_tile, pv_acc8u) on one cache-resident tile of
 * 64 rows x 64 keys x D, against another build of the same kernel file (the A/B: the previous
 * version compiled with its table renamed to `old_table`), alternated; min over rounds of the
 * median of a batch, in TSC ticks per call. Also checks that both give the same bits.
 * Build (old = a previous int8_avx512.c):
 *   git show REV:src/cpu/x86/int8_avx512.c > build/old_avx512.c
 *   cc -O3 -std=c11 -Isrc -Iinclude -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mavx2 \
 *      -DQATTN_HAVE_X86 -Dqattn_int8_kernels_avx512=old_table -c build/old_avx512.c -o build/old_avx512.o
 *   cc -O2 -std=gnu11 -Isrc -Iinclude dev/cpu_int8/tile_rates.c build/old_avx512.o build/libqattn.a -lpthread -lm -o build/tile_rates
 * Run: build/tile_rates [D rounds] */
#include "quant/lowp.h"

#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>

extern const qattn_int8_kernels old_table;

static uint64_t rs = 7;
static uint32_t rnd(void) { rs = rs * 6364136223846793005ull + 1442695040888963407ull; return (uint32_t)(rs >> 33); }
static double unif(void) { return rnd() / 2147483648.0; }
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

enum { M = 64, N = 64, REP = 200 };

int main(int argc, char **argv) {
    int d = argc > 1 ? atoi(argv[1]) : 128, rounds = argc > 2 ? atoi(argv[2]) : 15;
    const qattn_int8_kernels *T[2] = {&old_table, &qattn_int8_kernels_avx512};
    int8_t *q = aligned_alloc(64, M * 256), *kp = aligned_alloc(64, N * 256), *vp = aligned_alloc(64, N * 256);
    for (int i = 0; i < M * d; i++) q[i] = (int8_t)((int)(rnd() % 255) - 127);
    for (int i = 0; i < N * d; i++) kp[i] = (int8_t)((int)(rnd() % 255) - 127), vp[i] = (int8_t)((int)(rnd() % 255) - 127);
    static int32_t s[2][M * N], lo[M], hi[M];
    static float sq[M], sk[N], svk[N], sv[256], rm[2][M], rsum[2][M], al[2][M], fa[2][M], acc[2][M * 256];
    static uint8_t pc[2][M * N];
    for (int r = 0; r < M; r++) sq[r] = (float)(unif() * 2e-4), lo[r] = 0, hi[r] = N;
    for (int j = 0; j < N; j++) sk[j] = (float)(unif() * 1e-1), svk[j] = (float)(0.5 + unif());
    for (int c = 0; c < d; c++) sv[c] = 1.0f;
    double t[3][2][64];
    for (int round = 0; round < rounds; round++)
        for (int w = 0; w < 2; w++) {
            const qattn_int8_kernels *K = T[w];
            uint64_t a = __rdtsc();
            for (int i = 0; i < REP; i++) K->qk(q, M, d, kp, N, s[w]);
            uint64_t b = __rdtsc();
            for (int i = 0; i < REP; i++) {
                for (int r = 0; r < M; r++) rm[w][r] = 10.0f, rsum[w][r] = 1.0f;
                K->p_vs_tile(s[w], M, N, sq, sk, lo, hi, svk, rm[w], rsum[w], pc[w], 1, al[w], fa[w]);
            }
            uint64_t c = __rdtsc();
            for (int i = 0; i < REP; i++) K->pv_acc8u(pc[w], M, N, vp, d, al[w], fa[w], sv, lo, hi, acc[w], d);
            uint64_t e = __rdtsc();
            t[0][w][round] = (double)(b - a) / REP, t[1][w][round] = (double)(c - b) / REP, t[2][w][round] = (double)(e - c) / REP;
        }
    /* in sequence, as the driver runs them: a unit of 64 rows sweeps 32 distinct K/V tiles (qk, P step,
     * P V per tile), so each kernel starts with what the others left in L1 */
    enum { NT = 32 };
    int8_t *kps = aligned_alloc(64, (size_t)NT * N * 256), *vps = aligned_alloc(64, (size_t)NT * N * 256);
    for (size_t i = 0; i < (size_t)NT * N * 256; i++) kps[i] = (int8_t)((int)(rnd() % 255) - 127), vps[i] = (int8_t)((int)(rnd() % 255) - 127);
    double sw[2][64];
    for (int round = 0; round < rounds; round++)
        for (int w = 0; w < 2; w++) {
            const qattn_int8_kernels *K = T[w];
            for (int r = 0; r < M; r++) rm[w][r] = -INFINITY, rsum[w][r] = 0.0f;
            memset(acc[w], 0, sizeof acc[w]);
            uint64_t a = __rdtsc();
            for (int t = 0; t < NT; t++) {
                K->qk(q, M, d, kps + (size_t)t * N * 256, N, s[w]);
                K->p_vs_tile(s[w], M, N, sq, sk, lo, hi, svk, rm[w], rsum[w], pc[w], 1, al[w], fa[w]);
                K->pv_acc8u(pc[w], M, N, vps + (size_t)t * N * 256, d, al[w], fa[w], sv, lo, hi, acc[w], d);
            }
            sw[w][round] = (double)(__rdtsc() - a) / NT;
        }
    bool same = !memcmp(s[0], s[1], sizeof s[0]) && !memcmp(pc[0], pc[1], sizeof pc[0]) && !memcmp(al[0], al[1], sizeof al[0]) &&
                !memcmp(fa[0], fa[1], sizeof fa[0]) && !memcmp(acc[0], acc[1], (size_t)M * d * 4);
    static const char *nm[3] = {"qk", "p_vs_tile", "pv_acc8u"};
    printf("tile 64 x 64 x D %d, TSC ticks per call (min / median of %d rounds), old vs new; same bits: %s\n", d, rounds, same ? "yes" : "NO");
    for (int k = 0; k < 3; k++) {
        double m[2][2];
        for (int w = 0; w < 2; w++) qsort(t[k][w], (size_t)rounds, sizeof(double), cmpd), m[w][0] = t[k][w][0], m[w][1] = t[k][w][rounds / 2];
        printf("  %-10s old %8.0f / %8.0f   new %8.0f / %8.0f   new/old %.3f\n", nm[k], m[0][0], m[0][1], m[1][0], m[1][1], m[1][0] / m[0][0]);
    }
    for (int w = 0; w < 2; w++) qsort(sw[w], (size_t)rounds, sizeof(double), cmpd);
    printf("  sweep of %d tiles (qk, P, P V in turn): old %8.0f / %8.0f   new %8.0f / %8.0f   new/old %.3f\n", NT, sw[0][0], sw[0][rounds / 2], sw[1][0],
           sw[1][rounds / 2], sw[1][0] / sw[0][0]);
    return same ? 0 : 1;
}
