/* Same-process A/B of the sharp-unit refinement (docs/FORMAT.md section 7, "Sharp units"): the
 * default INT8 scheme without it (qk_refine_noise = 0: the previous default's code path) and with
 * it (the default), on N(0,1) and on heads of mixed scale (qattn accuracy's "heads"), alternated,
 * median process CPU time of each (less sensitive than wall time to the machine's other load).
 * Build: cc -O2 -std=gnu11 -Iinclude -Isrc dev/int8_accuracy/sharp_ab.c build/libqattn.a -lpthread -lm -o build/sharp_ab
 * Run:   build/sharp_ab [L H HK D rounds causal threads] */
#define _POSIX_C_SOURCE 199309L
#include "quant/lowp.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static uint64_t s = 42;
static float gauss(void) { /* Box-Muller from a 64-bit LCG */
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    double u = ((s >> 11) + 0.5) / 9007199254740992.0;
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    double w = (s >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w));
}

int main(int argc, char **argv) {
    int64_t L = argc > 1 ? atoll(argv[1]) : 2048;
    int H = argc > 2 ? atoi(argv[2]) : 8, HK = argc > 3 ? atoi(argv[3]) : 2, D = argc > 4 ? atoi(argv[4]) : 128;
    int rounds = argc > 5 ? atoi(argv[5]) : 9, causal = argc > 6 ? atoi(argv[6]) : 0;
    if (rounds > 64) rounds = 64;
    qattn_ctx_options co;
    memset(&co, 0, sizeof co);
    co.n_threads = argc > 7 ? atoi(argv[7]) : 1;
    qattn_ctx *ctx;
    if (qattn_ctx_create(&ctx, &co) != QATTN_OK) return 1;
    qattn_params p;
    qattn_params_init(&p);
    p.batch = 1, p.seqlen_q = p.seqlen_k = L, p.n_heads = H, p.n_kv_heads = HK, p.head_dim = D, p.causal = causal;
    p.precision = QATTN_PRECISION_INT8;
    qattn_params_set_contiguous(&p);
    size_t nq = (size_t)(L * H * D), nk = (size_t)(L * HK * D);
    float *in[2][3], *o = malloc(nq * 4);
    for (int d = 0; d < 2; d++) {
        size_t n[3] = {nq, nk, nk};
        for (int w = 0; w < 3; w++) {
            in[d][w] = malloc(n[w] * 4);
            for (size_t i = 0; i < n[w]; i++) {
                float x = gauss();
                if (d == 1) { /* heads: Q of head h and K of kv head g x 0.3 .. 3, V x 0.01 .. 100 */
                    int64_t Ht = w ? HK : H, h = (int64_t)(i / (size_t)D) % Ht;
                    float f = Ht > 1 ? (float)h / (float)(Ht - 1) : 0.0f;
                    x *= w == 2 ? 0.01f * powf(10.0f, 4.0f * f) : 0.3f * powf(10.0f, f);
                }
                in[d][w][i] = x;
            }
        }
    }
    p.o = o;
    p.q = in[0][0], p.k = in[0][1], p.v = in[0][2];
    size_t ws;
    qattn_workspace_size(ctx, &p, &ws);
    p.workspace = aligned_alloc(64, (ws + 63) / 64 * 64), p.workspace_size = ws;
    qattn_lowp_cfg off, on;
    qattn_lowp_scheme_cfg(QATTN_INT8_DEFAULT, &on);
    off = on;
    off.qk_refine_noise = 0.0f;
    static double t[4][65];
    static const char *name[4] = {"N(0,1), without refinement", "N(0,1), default (refinement)", "heads, without refinement",
                                  "heads, default (refinement)"};
    for (int r = 0; r < rounds + 1; r++)
        for (int m = 0; m < 4; m++) {
            int d = m / 2;
            p.q = in[d][0], p.k = in[d][1], p.v = in[d][2];
            double t0 = now();
            qattn_status st = qattn_lowp_forward_cfg(ctx, &p, m % 2 ? &on : &off);
            if (st != QATTN_OK) return fprintf(stderr, "%s\n", qattn_ctx_last_error(ctx)), 1;
            if (r > 0) t[m][r - 1] = (now() - t0) * 1e3; /* round 0 warms up */
        }
    printf("L %lld H %d HK %d D %d%s, %d threads, %d rounds alternated, median CPU ms:\n", (long long)L, H, HK, D, causal ? " causal" : "",
           co.n_threads, rounds);
    double med[4];
    for (int m = 0; m < 4; m++) {
        qsort(t[m], (size_t)rounds, sizeof(double), cmp);
        med[m] = t[m][rounds / 2];
        printf("  %-32s %8.2f ms  (min %.2f, max %.2f)\n", name[m], med[m], t[m][0], t[m][rounds - 1]);
    }
    printf("  with / without: N(0,1) %.3f, heads %.3f\n", med[1] / med[0], med[3] / med[2]);
    return 0;
}
