/* Same-process A/B of the INT8 prefill paths on one shape: the previous default (no Q/K channel
 * transforms), the current default (dynamic statistics pass + codes) and the calibrated path
 * (static transforms from qattn_calibrate, one pass), alternated, median of each.
 * Build: cc -O2 -std=gnu11 -Iinclude -Isrc dev/int8_accuracy/prefill_ab.c build/libqattn.a -lpthread -lm -o build/prefill_ab
 * Run:   build/prefill_ab [L H HK D rounds causal threads]   (process CPU time of all threads: the work, less
 *        sensitive than wall time to the machine's other load; threads default 1) */
#define _POSIX_C_SOURCE 199309L
#include "quant/lowp.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
    int64_t L = argc > 1 ? atoll(argv[1]) : 2048;
    int H = argc > 2 ? atoi(argv[2]) : 8, HK = argc > 3 ? atoi(argv[3]) : 2, D = argc > 4 ? atoi(argv[4]) : 128;
    int rounds = argc > 5 ? atoi(argv[5]) : 9, causal = argc > 6 ? atoi(argv[6]) : 0;
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
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *o = malloc(nq * 4);
    uint64_t s = 42;
    for (size_t i = 0; i < nq; i++) s = s * 6364136223846793005ull + 1442695040888963407ull, q[i] = (float)((s >> 40) % 2001) / 1000.0f - 1.0f;
    for (size_t i = 0; i < nk; i++) s = s * 6364136223846793005ull + 1442695040888963407ull, k[i] = (float)((s >> 40) % 2001) / 1000.0f - 1.0f;
    for (size_t i = 0; i < nk; i++) s = s * 6364136223846793005ull + 1442695040888963407ull, v[i] = (float)((s >> 40) % 2001) / 1000.0f - 1.0f;
    p.q = q, p.k = k, p.v = v, p.o = o;
    size_t ws;
    qattn_workspace_size(ctx, &p, &ws);
    p.workspace = aligned_alloc(64, (ws + 63) / 64 * 64), p.workspace_size = ws;
    float *cm = calloc((size_t)6 * HK * D, 4);
    qattn_calibration cal = {HK, D, 0, cm, cm + HK * D, cm + 2 * HK * D, cm + 3 * HK * D, cm + 4 * HK * D, cm + 5 * HK * D};
    if (qattn_calibrate(ctx, &p, &cal) != QATTN_OK) return 1;
    qattn_lowp_cfg old;
    qattn_lowp_scheme_cfg(QATTN_INT8_DEFAULT, &old);
    old.qk_smooth = old.qk_rotate = 0;
    double t[3][64];
    static const char *name[3] = {"previous default (no Q/K transforms)", "default, dynamic", "default, calibrated"};
    for (int r = 0; r < rounds + 1; r++)
        for (int m = 0; m < 3; m++) {
            double t0 = now();
            qattn_status st = m == 0 ? qattn_lowp_forward_cfg(ctx, &p, &old) : m == 1 ? qattn_forward(ctx, &p) : qattn_forward_calibrated(ctx, &p, &cal);
            if (st != QATTN_OK) return fprintf(stderr, "%s\n", qattn_ctx_last_error(ctx)), 1;
            if (r > 0) t[m][r - 1] = (now() - t0) * 1e3; /* round 0 warms up */
        }
    printf("L %lld H %d HK %d D %d%s, %d rounds alternated, median CPU ms:\n", (long long)L, H, HK, D, causal ? " causal" : "", rounds);
    double med[3];
    for (int m = 0; m < 3; m++) {
        qsort(t[m], (size_t)rounds, sizeof(double), cmp);
        med[m] = t[m][rounds / 2];
        printf("  %-40s %8.2f ms  (min %.2f, max %.2f)\n", name[m], med[m], t[m][0], t[m][rounds - 1]);
    }
    printf("  dynamic / previous %.3f, calibrated / dynamic %.3f\n", med[1] / med[0], med[2] / med[1]);
    return 0;
}
