/* Where the INT8 forward's time goes, by phase: the joint Q/K quantization (statistics pass, codes,
 * sharp-unit noise), V's quantization, and the tile loop (qattn_lowp_run_quantized: packing, kernels,
 * output), each timed in process CPU time on 1 thread, the default scheme, the shape of the issue.
 * Mirrors qattn_lowp_forward_static's setup (dynamic path) with its own buffers.
 * Build: cc -O2 -std=gnu11 -Iinclude -Isrc dev/cpu_int8/phases.c build/libqattn.a -lpthread -lm -o build/i8_phases
 * Run:   build/i8_phases [L causal rounds] */
#define _POSIX_C_SOURCE 199309L
#include "quant/lowp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static uint64_t rs = 42;
static float gauss(void) {
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = ((rs >> 11) + 1.0) / 9007199254740993.0;
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * ((rs >> 11) / 9007199254740992.0)));
}

int main(int argc, char **argv) {
    int64_t L = argc > 1 ? atoll(argv[1]) : 2048;
    int causal = argc > 2 ? atoi(argv[2]) : 0, rounds = argc > 3 ? atoi(argv[3]) : 7, H = 8, D = 128;
    qattn_ctx_options co;
    memset(&co, 0, sizeof co);
    co.isa = QATTN_ISA_AVX512, co.n_threads = 1;
    qattn_ctx *ctx;
    if (qattn_ctx_create(&ctx, &co) != QATTN_OK) return 1;
    qattn_params p;
    qattn_params_init(&p);
    p.batch = 1, p.seqlen_q = p.seqlen_k = L, p.n_heads = p.n_kv_heads = H, p.head_dim = D, p.causal = causal;
    p.precision = QATTN_PRECISION_INT8;
    qattn_params_set_contiguous(&p);
    size_t n = (size_t)(L * H * D);
    float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *o = malloc(n * 4);
    for (size_t i = 0; i < n; i++) q[i] = gauss(), k[i] = gauss(), v[i] = gauss();
    p.q = q, p.k = k, p.v = v, p.o = o;
    qattn_lowp_cfg cfg;
    qattn_lowp_scheme_cfg(QATTN_INT8_DEFAULT, &cfg);
    qattn_int8_inputs qi;
    memset(&qi, 0, sizeof qi);
    qattn_int8_tensor *ts[3] = {&qi.q, &qi.k, &qi.v};
    int32_t gran[3] = {cfg.q_gran, cfg.k_gran, cfg.v_gran}, smooth[3] = {0, cfg.k_smooth, cfg.v_smooth};
    for (int w = 0; w < 3; w++) {
        qattn_int8_tensor *t = ts[w];
        t->data = aligned_alloc(64, n), t->scale = aligned_alloc(64, n), t->mean = smooth[w] ? aligned_alloc(64, (size_t)H * D * 4) : NULL;
        t->granularity = gran[w], t->block_size = 1, t->head_stride = D, t->seq_stride = (int64_t)H * D, t->batch_stride = L * t->seq_stride;
    }
    qattn_qk_refine rf = {cfg.qk_refine_noise, qattn_effective_scale(&p), aligned_alloc(64, n), aligned_alloc(64, n), aligned_alloc(64, 64),
                          aligned_alloc(64, 64 * 4)};
    size_t wsz = qattn_lowp_run_bytes(ctx, &p, true, cfg.p_mode);
    void *ws = aligned_alloc(64, (wsz + 63) / 64 * 64);
    double t[3][64];
    for (int r = 0; r <= rounds; r++) {
        double t0 = now();
        if (qattn_quantize_qk_smoothed(ctx, &p, cfg.qk_smooth, cfg.qk_smooth_min_exp, cfg.qk_rotate, 127, NULL, &qi.q, &qi.k, NULL, &rf)) return 2;
        double t1 = now();
        if (qattn_quantize_tensor_codes(ctx, &p, 2, &qi.v, 127)) return 3;
        double t2 = now();
        if (qattn_lowp_run_quantized(ctx, &p, &qi, cfg.p_mode, NULL, &rf, ws, wsz)) return 4;
        double t3 = now();
        if (r > 0) t[0][r - 1] = (t1 - t0) * 1e3, t[1][r - 1] = (t2 - t1) * 1e3, t[2][r - 1] = (t3 - t2) * 1e3;
    }
    printf("L %lld H %d D %d%s, 1 thread, CPU ms (median of %d): ", (long long)L, H, D, causal ? " causal" : "", rounds);
    static const char *nm[3] = {"quant Q,K", "quant V", "tile loop"};
    double tot = 0;
    for (int k2 = 0; k2 < 3; k2++) qsort(t[k2], (size_t)rounds, sizeof(double), cmp), tot += t[k2][rounds / 2];
    for (int k2 = 0; k2 < 3; k2++) printf("%s %.2f  ", nm[k2], t[k2][rounds / 2]);
    printf("total %.2f\n", tot);
    return 0;
}
