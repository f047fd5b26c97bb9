/* INT8 decode kernel vs its multiply floor and the memory stream, one thread, CPU time.
 *
 *   cc -O2 -std=gnu11 -march=native -DQATTN_HAVE_X86 -Iinclude -Isrc dev/kv_decode/kernel_budget.c BUILD/libqattn.a -lpthread -lm -o /tmp/kb
 *   /tmp/kb [passes] [1: no prefetch hints | 2: linear next-block prefetch in run_cache]
 *   KB_DECODE_ONLY=1 /tmp/kb 200   (the decode alone, for perf record)
 *
 * Prints, min over `passes` (alternated within each pass):
 *   l2     ns per qattn_kv_attend_avx512 call, 4 rows x 16 tokens x D 128, 64 blocks (L2-resident)
 *   floor  ns for the call's 512 vpdpwssd zmm alone (16 independent accumulators): the integer
 *          multiply work of one call (4 rows x 16 tokens x 128 channels, Q.K and P.V, 16x16-bit
 *          pairs, 32 products per instruction)
 *   dram   ns per call over 16384 blocks spread over 72 MB (one thread's share of the 32k bench,
 *          next-block prefetch hints as the driver gives them)
 *   cache  as dram, over the cache's block layout and walk (run_cache)
 *   decode qattn_kv_decode on an INT8 cache of the same shape, per (block, kv head), process CPU
 *          time (env KB_THREADS: the context's threads, default 1)
 *   read   ns to sum the same bytes (4224 per call) with a scalar 4-accumulator loop (the
 *          bench's probe loop), i.e. the one-thread read time per call
 * The per-key budget: bytes per key and kv head = 2 x 128 codes + 8 scale bytes = 264. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kv/kv_internal.h"
#include "qattn.h"

static int g_nopf, g_linear; /* argv[2] = 1: no prefetch hints; 2: run_cache prefetches the next block linearly */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

enum { M = 4, D = 128, N = 16, L2B = 64, DRB = 16384 };
#define BLOCK_BYTES (2 * N * D + 2 * N * 4 + 56) /* one (block, head): K, V, scales, padded to 64 */

static void floor512(__m512i *acc) {
    __m512i a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3], a4 = acc[4], a5 = acc[5], a6 = acc[6], a7 = acc[7];
    __m512i a8 = acc[8], a9 = acc[9], a10 = acc[10], a11 = acc[11], a12 = acc[12], a13 = acc[13], a14 = acc[14], a15 = acc[15];
    __m512i b = _mm512_set1_epi16(3), c = _mm512_set1_epi16(5);
    for (int i = 0; i < 32; i++) {
#define DP(x) __asm__ volatile("vpdpwssd %2, %1, %0" : "+v"(x) : "v"(b), "v"(c));
        DP(a0) DP(a1) DP(a2) DP(a3) DP(a4) DP(a5) DP(a6) DP(a7) DP(a8) DP(a9) DP(a10) DP(a11) DP(a12) DP(a13) DP(a14) DP(a15)
#undef DP
    }
    acc[0] = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                              _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    acc[1] = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)),
                              _mm512_add_epi32(_mm512_add_epi32(a12, a13), _mm512_add_epi32(a14, a15)));
}

static double run_blocks(const uint8_t *arena, int nb, const int16_t *q16, const float *qsc, float *mem, float *scratch) {
    qattn_tile_state st = {mem, mem + M, mem + 2 * M, D};
    for (int r = 0; r < M; r++) st.row_max[r] = -INFINITY, st.row_sum[r] = 0;
    memset(st.acc, 0, M * D * 4);
    int32_t lo[M] = {0, 0, 0, 0}, hi[M] = {N, N, N, N};
    double t0 = now();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = arena + (size_t)b * BLOCK_BYTES, *nx = b + 1 < nb ? blk + BLOCK_BYTES : NULL;
        qattn_kv_prefetch pf = {nx, nx ? nx + N * D : NULL, N * D};
        qattn_kv_attend_avx512(NULL, q16, qsc, M, D, QATTN_DTYPE_I8, blk, blk + N * D, (const float *)(blk + 2 * N * D),
                               (const float *)(blk + 2 * N * D) + N, N, lo, hi, &st, scratch, nx && !g_nopf ? &pf : NULL);
    }
    return (now() - t0) / nb;
}

/* The cache's own layout (src/kv/kv_internal.h) walked as src/kv/kv_decode.c walks it: 8 kv heads per
 * block (K codes of all heads, V codes of all heads, K scales, V scales), per block the heads in
 * order, the next block's region of the same head as the prefetch hint, the next block's scales
 * prefetched at head 0. */
enum { HK = 8, CB = DRB / HK };
#define CBLOCK ((int64_t)2 * HK * N * D + 2 * HK * N * 4)
static double run_cache(const uint8_t *arena, const int16_t *q16, const float *qsc, float *mem, float *scratch) {
    qattn_tile_state st = {mem, mem + M, mem + 2 * M, D};
    for (int r = 0; r < M; r++) st.row_max[r] = -INFINITY, st.row_sum[r] = 0;
    memset(st.acc, 0, M * D * 4);
    int32_t lo[M] = {0, 0, 0, 0}, hi[M] = {N, N, N, N};
    double t0 = now();
    for (int b = 0; b < CB; b++) {
        const uint8_t *blk = arena + (size_t)b * CBLOCK, *nx = b + 1 < CB ? blk + CBLOCK : NULL;
        for (int g = 0; g < HK; g++) {
            qattn_kv_prefetch pf = {nx ? nx + g * N * D : NULL, nx ? nx + HK * N * D + g * N * D : NULL, N * D};
            if (g_linear && nx) { /* the next block as one linear stream, 1/8 of it per call */
                int64_t part = (CBLOCK / HK + 127) / 128 * 64;
                pf.k = nx + 2 * part * g, pf.v = pf.k + part, pf.bytes = part;
                if (2 * part * (g + 1) > CBLOCK) pf.bytes = (CBLOCK - 2 * part * g) / 2;
            }
            if (nx && g == 0 && !g_nopf && !g_linear)
                for (int o = 0; o < 2 * HK * N * 4; o += 64) __builtin_prefetch(nx + 2 * HK * N * D + o, 0, 3);
            const float *ks = (const float *)(blk + 2 * HK * N * D) + g * N, *vs = ks + HK * N;
            qattn_kv_attend_avx512(NULL, q16, qsc, M, D, QATTN_DTYPE_I8, blk + g * N * D, blk + HK * N * D + g * N * D, ks, vs, N, lo, hi,
                                   &st, scratch, nx && !g_nopf ? &pf : NULL);
        }
    }
    return (now() - t0) / (CB * HK);
}

/* qattn_kv_decode itself, one thread (it runs on the calling thread): B1 H32 HK8 D128 Lq1, the
 * INT8 cache of DRB / HK blocks of 16 tokens, ns per (block, kv head) = per kernel call. */
static qattn_ctx *g_ctx;
static qattn_kv_cache *g_cache;
static float *g_q, *g_o;
static void decode_setup(void) {
    qattn_ctx_options co = {0};
    co.backend = QATTN_BACKEND_CPU, co.isa = QATTN_ISA_AVX512, co.n_threads = getenv("KB_THREADS") ? atoi(getenv("KB_THREADS")) : 1;
    if (qattn_ctx_create(&g_ctx, &co) != QATTN_OK) exit(1);
    qattn_kv_cache_options o = {.n_kv_heads = HK, .head_dim = D, .block_size = N, .dtype = QATTN_DTYPE_I8, .n_blocks = CB, .max_seqs = 1};
    if (qattn_kv_cache_create(g_ctx, &o, &g_cache) != QATTN_OK) exit(1);
    int64_t L = (int64_t)CB * N, per = 1024;
    float *k = malloc((size_t)per * HK * D * 4), *v = malloc((size_t)per * HK * D * 4);
    for (int64_t t0 = 0; t0 < L; t0 += per) {
        for (int64_t i = 0; i < per * HK * D; i++) k[i] = (float)(rand() % 2001 - 1000) / 400.0f, v[i] = (float)(rand() % 2001 - 1000) / 400.0f;
        if (qattn_kv_cache_append(g_ctx, g_cache, 0, k, v, per, QATTN_DTYPE_F32) != QATTN_OK) exit(1);
    }
    free(k), free(v);
    g_q = malloc(32 * D * 4), g_o = malloc(32 * D * 4);
    for (int i = 0; i < 32 * D; i++) g_q[i] = (float)(rand() % 2001 - 1000) / 1000.0f;
}
static double run_decode(void) {
    int32_t id = 0;
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = g_q, dp.o = g_o, dp.seq_ids = &id, dp.n_seqs = 1, dp.seqlen_q = 1, dp.n_heads = 32;
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a); /* all threads' CPU time: per call of work, whatever the thread count */
    if (qattn_kv_decode(g_ctx, g_cache, &dp) != QATTN_OK) exit(1);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    return ((double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec)) / (CB * HK);
}

static double read_blocks(const uint8_t *arena, int nb, uint64_t *sink) {
    const uint64_t *p = (const uint64_t *)arena;
    size_t n = (size_t)nb * BLOCK_BYTES / 8;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    double t0 = now();
    for (size_t i = 0; i + 4 <= n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
    double t = now() - t0;
    *sink += s0 + s1 + s2 + s3;
    return t / nb;
}

int main(int argc, char **argv) {
    int passes = argc > 1 ? atoi(argv[1]) : 20;
    g_nopf = argc > 2 && atoi(argv[2]) == 1;
    g_linear = argc > 2 && atoi(argv[2]) == 2;
    uint8_t *arena = aligned_alloc(64, (size_t)DRB * BLOCK_BYTES);
    srand(1);
    for (size_t i = 0; i < (size_t)DRB * BLOCK_BYTES; i++) arena[i] = (uint8_t)(rand() % 255 + 129); /* codes -127..127 */
    for (int b = 0; b < DRB; b++) {
        float *sc = (float *)(arena + (size_t)b * BLOCK_BYTES + 2 * N * D);
        for (int j = 0; j < 2 * N; j++) sc[j] = 0.01f + 0.001f * (float)(rand() % 10);
    }
    int16_t q16[M * D];
    float qsc[M] = {1e-5f, 2e-5f, 1.5e-5f, 1e-5f};
    for (int i = 0; i < M * D; i++) q16[i] = (int16_t)(rand() % 65535 - 32767);
    float *mem = aligned_alloc(64, 4 * M * (D + 2) + 64), *scratch = aligned_alloc(64, 4 * (size_t)QATTN_KV_SCRATCH_FLOATS(M, N) + 64);
    __m512i acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_set1_epi32(i);
    double l2 = 1e9, fl = 1e9, dr = 1e9, rd = 1e9, ca = 1e9, de = 1e9;
    decode_setup();
    if (getenv("KB_DECODE_ONLY")) { /* for perf record: the decode alone */
        for (int p = 0; p < passes; p++) {
            double t = run_decode();
            if (t < de) de = t;
        }
        printf("qattn_kv_decode (%s threads): %.1f ns of CPU per call\n", getenv("KB_THREADS") ? getenv("KB_THREADS") : "1", de * 1e9);
        return 0;
    }
    uint64_t sink = 0;
    for (int p = 0; p < passes; p++) {
        for (int rep = 0; rep < 20; rep++) {
            double t = run_blocks(arena, L2B, q16, qsc, mem, scratch);
            if (t < l2) l2 = t;
        }
        double t0 = now();
        for (int i = 0; i < 2000; i++) floor512(acc);
        double t = (now() - t0) / 2000;
        if (t < fl) fl = t;
        t = run_blocks(arena, DRB, q16, qsc, mem, scratch);
        if (t < dr) dr = t;
        t = run_decode();
        if (t < de) de = t;
        t = run_cache(arena, q16, qsc, mem, scratch);
        if (t < ca) ca = t;
        t = read_blocks(arena, DRB, &sink);
        if (t < rd) rd = t;
    }
    printf("per call (4 rows x 16 keys x D 128, %d B): l2 %.1f ns, floor (512 vpdpwssd) %.1f ns, dram %.1f ns, read %.1f ns (%.1f GB/s)\n",
           BLOCK_BYTES - 56, l2 * 1e9, fl * 1e9, dr * 1e9, rd * 1e9, (BLOCK_BYTES - 56) / rd / 1e9);
    printf("cache layout (%d blocks x %d heads): %.1f ns per call; qattn_kv_decode (1 thread, same shape): %.1f ns per call\n", CB, HK, ca * 1e9, de * 1e9);
    printf("l2/floor %.2f  dram/read %.2f  (sink %llu %d)\n", l2 / fl, dr / rd, (unsigned long long)sink, _mm512_reduce_add_epi32(acc[0]) & 1);
    return 0;
}
