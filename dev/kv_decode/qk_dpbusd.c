/* Q.K of one decode call (4 query rows x 16 keys x D 128, INT8 keys, int16 q) two ways, the same
 * int32 dots, one thread, L1/L2-resident (64 blocks), thread CPU time, min over passes:
 *
 *   wssd: the shipped AVX-512 kernel's Q.K (src/cpu/x86/kv_attend_avx512.c): K sign-extended to
 *         int16, vpdpwssd with the q16 rows (lanes = channel pairs), 16 accumulators per 4 keys,
 *         one 16-lane reduction per 16 dots;
 *   busd: keys transposed so lanes = keys (two 16x16 dword transposes per block, 128 shuffles),
 *         q16 split exactly as 256 qh + ql (ql u8, qh s8): ql . k by vpdpbusd(ql broadcast, K),
 *         qh . k by vpdpbusd(K ^ 0x80, qh broadcast) - 128 sum(qh); no reductions, no sign
 *         extension; 512 vpdpbusd per block (two per 16 x 8-bit product), as many as vpdpwssd.
 *
 *   cc -O3 -std=gnu11 -march=native dev/kv_decode/qk_dpbusd.c -o /tmp/qk && /tmp/qk
 *
 * (-O3: at -O2 GCC 12 keeps the accumulator arrays of qk_wssd in memory.) Zen 4 VM, 2026-12-06:
 * vpdpwssd 92.7-92.8 ns, transposed vpdpbusd 87.5 ns per call; 256 products-instructions alone
 * take ~70 ns (dev/kv_decode/kernel_budget.c's floor / 2).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { M = 4, D = 128, N = 16, NB = 64 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline __m512i dpwssd(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}
static inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
    return acc;
}

/* dots[t * 4 + r] */
static __attribute__((noinline)) void qk_wssd(const int16_t *q16, const int8_t *kc, int32_t *dots) {
    for (int j = 0; j < N; j += 4) {
        __m512i a[4][4];
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < 4; t++) a[r][t] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int c = 0; c < D; c += 32) {
            __m512i k[4];
            for (int t = 0; t < 4; t++) k[t] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(kc + (j + t) * D + c)));
            for (int r = 0; r < 4; r++) {
                __m512i qv = _mm512_loadu_si512(q16 + r * D + c);
                for (int t = 0; t < 4; t++) a[r][t] = dpwssd(a[r][t], qv, k[t]);
            }
        }
#define PAIR32(x, y) _mm512_add_epi32(_mm512_unpacklo_epi32((x), (y)), _mm512_unpackhi_epi32((x), (y)))
#define PAIR64(x, y) _mm512_add_epi32(_mm512_unpacklo_epi64((x), (y)), _mm512_unpackhi_epi64((x), (y)))
        __m512i x[4];
        for (int t = 0; t < 4; t++) x[t] = PAIR64(PAIR32(a[0][t], a[1][t]), PAIR32(a[2][t], a[3][t]));
        __m512i s01 = _mm512_add_epi32(_mm512_shuffle_i32x4(x[0], x[1], 0x44), _mm512_shuffle_i32x4(x[0], x[1], 0xEE));
        __m512i s23 = _mm512_add_epi32(_mm512_shuffle_i32x4(x[2], x[3], 0x44), _mm512_shuffle_i32x4(x[2], x[3], 0xEE));
        _mm512_storeu_si512(dots + j * 4, _mm512_add_epi32(_mm512_shuffle_i32x4(s01, s23, 0x88), _mm512_shuffle_i32x4(s01, s23, 0xDD)));
    }
}

/* ql/qh: [4][D / 4] dwords of 4 channel bytes; sqh[r] = sum of row r's qh. dots[r * 16 + t]. */
static __attribute__((noinline)) void qk_busd(const int32_t *ql, const int32_t *qh, const int32_t *sqh, const int8_t *kc, int32_t *dots) {
    __m512i al[4], ah[4];
    for (int r = 0; r < 4; r++) al[r] = ah[r] = _mm512_setzero_si512();
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int h = 0; h < 2; h++) {
        __m512i R[16], U[16], O[16];
        for (int t = 0; t < 16; t++) R[t] = _mm512_loadu_si512(kc + t * D + 64 * h);
        for (int i = 0; i < 4; i++) {
            __m512i a = _mm512_unpacklo_epi32(R[4 * i], R[4 * i + 1]), b = _mm512_unpackhi_epi32(R[4 * i], R[4 * i + 1]);
            __m512i c = _mm512_unpacklo_epi32(R[4 * i + 2], R[4 * i + 3]), d = _mm512_unpackhi_epi32(R[4 * i + 2], R[4 * i + 3]);
            U[4 * i + 0] = _mm512_unpacklo_epi64(a, c), U[4 * i + 1] = _mm512_unpackhi_epi64(a, c);
            U[4 * i + 2] = _mm512_unpacklo_epi64(b, d), U[4 * i + 3] = _mm512_unpackhi_epi64(b, d);
        }
        for (int j = 0; j < 4; j++) {
            __m512i v0 = _mm512_shuffle_i32x4(U[j], U[4 + j], 0x44), v1 = _mm512_shuffle_i32x4(U[j], U[4 + j], 0xEE);
            __m512i v2 = _mm512_shuffle_i32x4(U[8 + j], U[12 + j], 0x44), v3 = _mm512_shuffle_i32x4(U[8 + j], U[12 + j], 0xEE);
            O[j] = _mm512_shuffle_i32x4(v0, v2, 0x88), O[4 + j] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
            O[8 + j] = _mm512_shuffle_i32x4(v1, v3, 0x88), O[12 + j] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
        }
#pragma GCC unroll 16
        for (int c = 0; c < 16; c++) {
            __m512i ox = _mm512_xor_si512(O[c], flip);
            for (int r = 0; r < 4; r++) {
                al[r] = dpbusd(al[r], _mm512_set1_epi32(ql[r * (D / 4) + 16 * h + c]), O[c]);
                ah[r] = dpbusd(ah[r], ox, _mm512_set1_epi32(qh[r * (D / 4) + 16 * h + c]));
            }
        }
    }
    for (int r = 0; r < 4; r++)
        _mm512_storeu_si512(dots + r * 16, _mm512_add_epi32(_mm512_slli_epi32(_mm512_sub_epi32(ah[r], _mm512_set1_epi32(128 * sqh[r])), 8), al[r]));
}

int main(int argc, char **argv) {
    int passes = argc > 1 ? atoi(argv[1]) : 30;
    int8_t *kc = aligned_alloc(64, (size_t)NB * N * D);
    int16_t q16[M * D];
    int32_t ql[M * D / 4], qh[M * D / 4], sqh[M];
    srand(7);
    for (int i = 0; i < NB * N * D; i++) kc[i] = (int8_t)(rand() % 256 - 128);
    for (int i = 0; i < M * D; i++) q16[i] = (int16_t)(rand() % 65535 - 32767);
    for (int r = 0; r < M; r++) {
        sqh[r] = 0;
        for (int c = 0; c < D; c++) {
            int v = q16[r * D + c], hi = v >> 8, lo = v & 255; /* v = 256 hi + lo exactly */
            ((uint8_t *)ql)[r * D + c] = (uint8_t)lo;
            ((int8_t *)qh)[r * D + c] = (int8_t)hi;
            sqh[r] += hi;
        }
    }
    int32_t d1[64], d2[64];
    int bad = 0;
    for (int b = 0; b < NB; b++) {
        qk_wssd(q16, kc + b * N * D, d1);
        qk_busd(ql, qh, sqh, kc + b * N * D, d2);
        for (int t = 0; t < 16; t++)
            for (int r = 0; r < 4; r++) {
                int64_t ref = 0;
                for (int c = 0; c < D; c++) ref += (int64_t)q16[r * D + c] * kc[b * N * D + t * D + c];
                bad += d1[t * 4 + r] != ref || d2[r * 16 + t] != ref;
            }
    }
    double w = 1e9, u = 1e9;
    for (int p = 0; p < passes; p++) {
        double t0 = now();
        for (int rep = 0; rep < 50; rep++)
            for (int b = 0; b < NB; b++) qk_wssd(q16, kc + b * N * D, d1);
        double t = (now() - t0) / (50 * NB);
        if (t < w) w = t;
        t0 = now();
        for (int rep = 0; rep < 50; rep++)
            for (int b = 0; b < NB; b++) qk_busd(ql, qh, sqh, kc + b * N * D, d2);
        t = (now() - t0) / (50 * NB);
        if (t < u) u = t;
    }
    printf("Q.K of 4 rows x 16 keys x D 128: vpdpwssd %.1f ns, transposed vpdpbusd %.1f ns per call (%d dots differ from int64)\n", w * 1e9,
           u * 1e9, bad);
    return bad != 0;
}
