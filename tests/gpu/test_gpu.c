/* GPU correctness test for the CUDA backend: every case runs qattn_forward on the device with
 * poisoned outputs (NaN bit patterns) and compares the whole output and LSE with the FP64
 * oracle (qattn_oracle_f64) on the same f16/bf16 inputs. Exits 77 (skip) without a device.
 * With --int8 it also checks the quantization pass bitwise against the CPU's (check_i8_quant). Head dims 32, 64,
 * 80, 96, 128, 160, 192, 256 and softcap / ALiBi run at FP16/BF16; the INT8 run checks that what its path
 * lacks (other head dims than 64 and 128, varlen, softcap, ALiBi) is refused.
 * CTest runs it as gpu_forward and gpu_forward_int8 (label gpu; skipped without a device). Usage: qattn_gpu_test [--small] [--int8] [--bs] [--mma | --alt]
 *   --bs: block-sparse cases instead (block_mask; with --int8 at precision INT8).
 *   --small: a handful of small cases (for compute-sanitizer memcheck / racecheck).
 *   --mma: the mma.sync kernels only (what sm_80 runs); --alt: FP16/BF16 cases also run on the mma.sync
 *   kernel and the two outputs are compared (the INT8 run always does this). */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "qattn.h"
#include "quant/lowp.h" /* qattn_quantize_qk_smoothed: the CPU side of the transforms (src/ is on this test's include path) */

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(2);                                                                            \
        }                                                                                       \
    } while (0)

typedef struct tcase {
    int b, lq, lk, h, hk, d, causal, wl, wr;
    int dtype, odtype, precision;
    int varlen;        /* 1: cu_seqlens with lengths from lens_q/lens_k */
    int kv_pad;        /* extra heads in the K/V cache (strided views) */
    int lens_q[4], lens_k[4];
    /* block-sparse (--bs): bq > 0 gives a block mask of bq x bk blocks, kind BM_*, density pct (BM_RANDOM*) */
    int bq, bk, bm_kind, bm_pct;
    float softcap;     /* 0 = off */
    int alibi;         /* 0 none, 1 slopes [H] (ALiBi's geometric 2^(-8 (h + 1) / H)), 2 [B, H] (random in [0, 0.3), rows H + 3 apart) */
} tcase;

enum { BM_RANDOM = 1, BM_ZERO, BM_ONES, BM_RANDOM_SHARED_EMPTY, BM_WINDOW_GLOBAL };

static void describe(const tcase *c, char *buf, size_t n) {
    char mods[48] = "";
    if (c->softcap > 0.0f) snprintf(mods, sizeof mods, " softcap%g", (double)c->softcap);
    if (c->alibi) snprintf(mods + strlen(mods), sizeof mods - strlen(mods), " alibi%s", c->alibi == 1 ? "[H]" : "[B,H]");
    int k = snprintf(buf, n, "b%d lq%d lk%d h%d hk%d d%d causal%d win(%d,%d) %s->%s prec%d%s%s%s", c->b, c->lq, c->lk, c->h, c->hk, c->d, c->causal,
                     c->wl, c->wr, c->dtype == QATTN_DTYPE_BF16 ? "bf16" : "f16",
                     c->odtype == QATTN_DTYPE_F32 ? "f32" : c->odtype == QATTN_DTYPE_BF16 ? "bf16" : "f16", c->precision, c->varlen ? " varlen" : "",
                     c->kv_pad ? " kv-strided" : "", mods);
    static const char *kinds[] = {"", "random", "zero", "ones", "random-shared-emptyrows", "window+global"};
    if (c->bq > 0 && k > 0 && (size_t)k < n)
        snprintf(buf + k, n - (size_t)k, " bm%dx%d %s%s%d%%", c->bq, c->bk, kinds[c->bm_kind], c->bm_kind == BM_RANDOM || c->bm_kind == BM_RANDOM_SHARED_EMPTY ? " " : " ~",
                 c->bm_pct);
}

static uint64_t rng = 88172645463325252ull;
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}
static float nrand(void) {
    double u1 = urand() + 1e-12, u2 = urand();
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
static uint16_t f2h(float f) { /* round to nearest even, normal range only (test data) */
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax < 0x38800000u) return (uint16_t)sign;
    ax += 0xfffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | ((ax - 0x38000000u) >> 13));
}
static uint16_t f2bf(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
static float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
    if (e == 0x1f) bits = sign | 0x7f800000u | (m << 13);
    else if (e == 0) bits = sign; /* flush subnormals (not produced here) */
    else bits = sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static float bf2f(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* max |x - y| / max |y| over n outputs of dtype dt (device copies read back) */
static double out_rel_diff(const void *x, const void *y, size_t n, int dt) {
    double md = 0, my = 0;
    for (size_t i = 0; i < n; i++) {
        float a = dt == QATTN_DTYPE_F32 ? ((const float *)x)[i] : dt == QATTN_DTYPE_BF16 ? bf2f(((const uint16_t *)x)[i]) : h2f(((const uint16_t *)x)[i]);
        float b = dt == QATTN_DTYPE_F32 ? ((const float *)y)[i] : dt == QATTN_DTYPE_BF16 ? bf2f(((const uint16_t *)y)[i]) : h2f(((const uint16_t *)y)[i]);
        if (isnan(a) != isnan(b)) return INFINITY;
        if (isnan(a)) continue;
        if (fabs(a - b) > md) md = fabs(a - b);
        if (fabs(b) > my) my = fabs(b);
    }
    return my > 0 ? md / my : md;
}

/* Test hook of the CUDA backend (src/cuda/quant_i8.cu): workspace offsets of qi, sq, ki, sk, vt, sv, vm, km, sharp, sigma. */
void qattn_cuda_i8_offsets(const qattn_params *p, size_t off[10], int32_t pads[2]);

typedef struct qcase {
    int b, lq, lk, h, hk, d, dtype, kv_pad;
    int wide; /* bf16 only. 1: |x| spread over 2^-40..2^40 (the means' exact-sum check fails, the CPU's order is redone);
               * 2: |x| ~ 2^100..2^120 (the float sum of |x| overflows, the double sums do not) */
    int sharp; /* Q and K of kv head 0 times 3: its units are sharp (sigma ~ 9 x N(0,1)'s 0.009), the others not */
    int int4;  /* precision INT4: Q and K codes in [-7, 7] (the CPU's qk_code_max 7), no sharp units */
} qcase;

static int bits_differ(float x, float y) { return memcmp(&x, &y, 4) != 0; }

/* Runs an INT8 forward with a caller workspace, then compares the workspace with the CPU: Q and K codes and
 * scales with the default scheme's channel transforms (qattn_quantize_qk_smoothed, no sharp-unit residuals),
 * K's mean in the codes' domain and V's mean (the CPU's double sums), and V's
 * codes and per-(channel, 128-key tile) scales recomputed here from the CPU's V mean with the CPU's rule
 * (y = v - mean, inv = 127 / max|y|, clamp(rne(y * inv))). All bit for bit; padding rows zero.
 * wgmma: the context stores the wgmma kernel's swizzled, tile-major images (D 128 on compute capability 9.0).
 * c->int4: precision INT4, the same pass with Q and K codes in [-7, 7]: against the CPU's codes of code max 7,
 * and no sharp-unit flags (the GPU's stay unwritten, the CPU's INT4 has none). */
static int check_i8_quant(qattn_ctx *gpu, int wgmma, qattn_ctx *cpu, const qcase *c, cudaStream_t stream) {
    const int D = c->d, HKS = c->hk + c->kv_pad, bf = c->dtype == QATTN_DTYPE_BF16;
    wgmma = wgmma && D == 128;
    const size_t nq = (size_t)c->b * c->lq * c->h * D, nk = (size_t)c->b * c->lk * HKS * D;
    uint16_t *hq = malloc(nq * 2), *hk = malloc(nk * 2), *hv = malloc(nk * 2);
    for (size_t i = 0; i < nq; i++) hq[i] = bf ? f2bf(nrand() * (c->sharp && (int)(i / D % c->h) < c->h / c->hk ? 3.f : 1.f))
                                              : f2h(nrand() * (c->sharp && (int)(i / D % c->h) < c->h / c->hk ? 3.f : 1.f));
    for (size_t i = 0; i < nk; i++) {
        float sk = c->sharp && i / D % HKS == 0 ? 3.f : 1.f, sv = 1.f;
        if (c->wide == 1) sk = ldexpf(1.f, (int)(urand() * 81) - 40), sv = ldexpf(1.f, (int)(urand() * 81) - 40);
        if (c->wide == 2) sk = ldexpf(1.f, 100 + (int)(urand() * 21)), sv = ldexpf(1.f, 100 + (int)(urand() * 21));
        hk[i] = bf ? f2bf(nrand() * sk + 0.5f * sk) : f2h((nrand() + 0.5f) * sk); /* a nonzero mean */
        hv[i] = bf ? f2bf(nrand() * sv - 0.25f * sv) : f2h(nrand() * sv - 0.25f * sv);
    }
    qattn_params p;
    qattn_params_init(&p);
    p.batch = c->b, p.seqlen_q = c->lq, p.seqlen_k = c->lk, p.n_heads = c->h, p.n_kv_heads = c->hk, p.head_dim = D;
    p.qkv_dtype = c->dtype, p.o_dtype = QATTN_DTYPE_F32, p.precision = c->int4 ? QATTN_PRECISION_INT4 : QATTN_PRECISION_INT8;
    qattn_params_set_contiguous(&p);
    p.k_seq_stride = p.v_seq_stride = (int64_t)HKS * D;
    p.k_batch_stride = p.v_batch_stride = (int64_t)c->lk * HKS * D;
    void *dq, *dk, *dv, *dout, *ws;
    float *dlse;
    size_t wsz = 0;
    CK(cudaMalloc(&dq, nq * 2));
    CK(cudaMalloc(&dk, nk * 2));
    CK(cudaMalloc(&dv, nk * 2));
    CK(cudaMalloc(&dout, nq * 4));
    CK(cudaMalloc((void **)&dlse, (size_t)c->b * c->h * c->lq * 4));
    CK(cudaMemcpy(dq, hq, nq * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dk, hk, nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv, hv, nk * 2, cudaMemcpyHostToDevice));
    p.q = dq, p.k = dk, p.v = dv, p.o = dout, p.lse = dlse, p.stream = stream;
    if (qattn_workspace_size(gpu, &p, &wsz) != QATTN_OK) return printf("FAIL quant: workspace_size: %s\n", qattn_ctx_last_error(gpu)), 1;
    CK(cudaMalloc(&ws, wsz));
    CK(cudaMemset(ws, 0x5a, wsz)); /* poison: every byte the checks read must be written */
    CK(cudaDeviceSynchronize());
    p.workspace = ws, p.workspace_size = wsz;
    qattn_status s = qattn_forward(gpu, &p);
    if (s != QATTN_OK) return printf("FAIL quant: forward: %s: %s\n", qattn_status_str(s), qattn_ctx_last_error(gpu)), 1;
    CK(cudaStreamSynchronize(stream));
    unsigned char *hw = malloc(wsz);
    CK(cudaMemcpy(hw, ws, wsz, cudaMemcpyDeviceToHost));
    size_t off[10];
    int32_t pads[2];
    qattn_cuda_i8_offsets(&p, off, pads);
    const int32_t *gsharp = (const int32_t *)(hw + off[8]);
    const float *gsigma = (const float *)(hw + off[9]);
    const int LQP = pads[0], LKP = pads[1], NT = LKP / 128;
    const int8_t *gqi = (const int8_t *)(hw + off[0]), *gki = (const int8_t *)(hw + off[2]), *gvt = (const int8_t *)(hw + off[4]);
    const float *gsq = (const float *)(hw + off[1]), *gsk = (const float *)(hw + off[3]), *gsv = (const float *)(hw + off[5]);
    const float *gvm = (const float *)(hw + off[6]), *gkm = (const float *)(hw + off[7]);

    /* the CPU's quantization of the same host data */
    qattn_params hp = p;
    hp.q = hq, hp.k = hk, hp.v = hv, hp.o = hw, hp.lse = NULL, hp.stream = NULL, hp.workspace = NULL, hp.workspace_size = 0;
    int8_t *cq = malloc(nq), *ck = malloc((size_t)c->b * c->lk * c->hk * D), *cv = malloc((size_t)c->b * c->lk * c->hk * D);
    float *csq = malloc((size_t)c->b * c->lq * c->h * 4), *csk = malloc((size_t)c->b * c->lk * c->hk * 4);
    float *ckm = malloc((size_t)c->b * c->hk * D * 4), *cvm = malloc((size_t)c->b * c->hk * D * 4), *cvs = malloc((size_t)c->b * c->hk * D * 4);
    qattn_int8_tensor tq = {cq, csq, NULL, QATTN_QUANT_PER_TOKEN, 1, (int64_t)c->lq * c->h * D, (int64_t)c->h * D, D, 0};
    qattn_int8_tensor tk = {ck, csk, ckm, QATTN_QUANT_PER_TOKEN, 1, (int64_t)c->lk * c->hk * D, (int64_t)c->hk * D, D, 0};
    qattn_int8_tensor tv = {cv, cvs, cvm, QATTN_QUANT_PER_CHANNEL, 1, (int64_t)c->lk * c->hk * D, (int64_t)c->hk * D, D, 0};
    /* Q and K: the default scheme's channel transforms (docs/FORMAT.md section 7); tk's mean is then
     * H(mu / f / n), what the GPU's LSE shift uses. With rf the CPU also decides the sharp units (its
     * codes stay those of the call without rf; the residual codes are the CPU's alone). */
    const int units = c->b * c->hk;
    uint8_t *csharp = malloc(units);
    float *csigma = malloc(units * sizeof(float));
    int8_t *qres = malloc(nq), *kres = malloc((size_t)c->b * c->lk * c->hk * D);
    const qattn_qk_refine rf = {QATTN_QK_REFINE_NOISE, qattn_effective_scale(&hp), qres, kres, csharp, csigma};
    if ((s = qattn_quantize_qk_smoothed(cpu, &hp, QATTN_QK_SMOOTH_MAX_EXP, 0, 1, c->int4 ? 7 : 127, NULL, &tq, &tk, NULL, c->int4 ? NULL : &rf)) !=
            QATTN_OK ||
        (s = qattn_quantize_int8(cpu, &hp, QATTN_TENSOR_V, &tv)) != QATTN_OK)
        return printf("FAIL quant: CPU quantize: %s: %s\n", qattn_status_str(s), qattn_ctx_last_error(cpu)), 1;

    size_t bad_q = 0, bad_k = 0, bad_v = 0, bad_m = 0;
    for (int b = 0; b < c->b; b++) /* Q: Qi [B, H, LQP, D] */
        for (int h = 0; h < c->h; h++)
            for (int t = 0; t < LQP; t++) {
                const int64_t r = ((int64_t)b * c->h + h) * LQP + t;
                const int in = t < c->lq;
                bad_q += bits_differ(gsq[r], in ? csq[((int64_t)b * c->lq + t) * c->h + h] : 0.f);
                for (int x = 0; x < D; x++) {
                    const int pos = wgmma ? ((((x >> 4) ^ (t & 7)) << 4) | (x & 15)) : x;
                    bad_q += gqi[r * D + pos] != (in ? cq[(((int64_t)b * c->lq + t) * c->h + h) * D + x] : 0);
                    bad_q += c->int4 && abs(gqi[r * D + pos]) > 7;
                }
            }
    for (int b = 0; b < c->b; b++)
        for (int h = 0; h < c->hk; h++) {
            const int64_t bh = (int64_t)b * c->hk + h;
            for (int x = 0; x < D; x++) bad_m += bits_differ(gkm[bh * D + x], ckm[bh * D + x]) + bits_differ(gvm[bh * D + x], cvm[bh * D + x]);
            for (int t = 0; t < LKP; t++) { /* K: Ki [B, HK, LKP, D] */
                const int64_t r = bh * LKP + t;
                const int in = t < c->lk;
                bad_k += bits_differ(gsk[r], in ? csk[((int64_t)b * c->lk + t) * c->hk + h] : 0.f);
                for (int x = 0; x < D; x++) {
                    const int pos = wgmma ? ((((x >> 4) ^ (t & 7)) << 4) | (x & 15)) : x;
                    bad_k += gki[r * D + pos] != (in ? ck[(((int64_t)b * c->lk + t) * c->hk + h) * D + x] : 0);
                    bad_k += c->int4 && abs(gki[r * D + pos]) > 7;
                }
            }
            for (int tile = 0; tile < NT; tile++) /* V: per (channel, tile) scale, keys permuted in groups of 16 */
                for (int x = 0; x < D; x++) {
                    const float mu = cvm[bh * D + x];
                    float amax = 0.f;
                    for (int t = tile * 128; t < tile * 128 + 128 && t < c->lk; t++) {
                        const uint16_t raw = hv[((int64_t)b * c->lk + t) * HKS * D + (int64_t)h * D + x];
                        const float y = fabsf((bf ? bf2f(raw) : h2f(raw)) - mu);
                        amax = y > amax ? y : amax;
                    }
                    const float inv = amax > 0.f ? 127.0f / amax : 0.0f;
                    bad_v += bits_differ(gsv[(bh * NT + tile) * D + x], amax / 127.0f);
                    for (int l = 0; l < 128; l++) {
                        const int lg = l & 15, t = tile * 128 + (l & ~15) + 8 * ((lg & 3) >> 1) + 2 * (lg >> 2) + (lg & 1);
                        int8_t want = 0;
                        if (t < c->lk) {
                            const uint16_t raw = hv[((int64_t)b * c->lk + t) * HKS * D + (int64_t)h * D + x];
                            float q = nearbyintf(((bf ? bf2f(raw) : h2f(raw)) - mu) * inv);
                            want = (int8_t)(q > 127.f ? 127.f : q < -127.f ? -127.f : q);
                        }
                        const size_t at = wgmma ? ((size_t)(bh * NT + tile) * D + x) * 128 + ((((l >> 4) ^ (x & 7)) << 4) | (l & 15))
                                                : (size_t)(bh * D + x) * LKP + tile * 128 + l;
                        bad_v += gvt[at] != want;
                    }
                }
        }
    /* Sharp units: the GPU's sigma (double sums in another order, stored as float) within 1e-6 of the CPU's
     * (float rounding is 6e-8 on each side) and the same flags; with c->sharp, kv head 0's units sharp and
     * the others not (the case is built so), so a flag that never or always fires fails too. */
    size_t bad_u = 0;
    int n_sharp = 0;
    for (int u = 0; u < units && !c->int4; u++) {
        const float x = gsigma[u], y = csigma[u];
        bad_u += isfinite(y) ? !(fabsf(x - y) <= 1e-6f * y) : isfinite(x);
        bad_u += gsharp[u] != (csharp[u] ? 1 : 0);
        n_sharp += csharp[u] != 0;
        if (c->sharp) bad_u += (csharp[u] != 0) != (u % c->hk == 0);
    }
    /* and the output: a sharp unit runs the FP16 kernel (its bounds in run_case: 2e-3 f16, 1.6e-2 bf16, LSE
     * 1e-2), the others INT8 (0.05, 0.1); per unit, relative L2 against the FP64 oracle */
    size_t bad_o = 0;
    if (c->sharp) {
        double *o64 = malloc(nq * sizeof(double)), *l64 = malloc((size_t)c->b * c->h * c->lq * sizeof(double));
        float *ho = malloc(nq * 4), *hl = malloc((size_t)c->b * c->h * c->lq * 4);
        CK(cudaMemcpy(ho, dout, nq * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hl, dlse, (size_t)c->b * c->h * c->lq * 4, cudaMemcpyDeviceToHost));
        qattn_params op = hp;
        op.o = o64;
        if ((s = qattn_oracle_f64(cpu, &op, o64, l64)) != QATTN_OK) return printf("FAIL quant: oracle: %s\n", qattn_ctx_last_error(cpu)), 1;
        for (int u = 0; u < units; u++) {
            const int b = u / c->hk, g = u % c->hk, grp = c->h / c->hk;
            double num = 0, den = 0, lerr = 0;
            for (int t = 0; t < c->lq; t++)
                for (int h = g * grp; h < (g + 1) * grp; h++) {
                    for (int x = 0; x < D; x++) {
                        const size_t i = (((size_t)b * c->lq + t) * c->h + h) * D + x;
                        num += (ho[i] - o64[i]) * (ho[i] - o64[i]), den += o64[i] * o64[i];
                    }
                    const size_t li = ((size_t)b * c->h + h) * c->lq + t;
                    lerr = fmax(lerr, isfinite(hl[li]) ? fabs(hl[li] - l64[li]) : INFINITY);
                }
            const double rel = sqrt(num / den), tol = csharp[u] ? (bf ? 1.6e-2 : 2e-3) : 0.05, ltol = csharp[u] ? 1e-2 : 0.1;
            if (!(rel <= tol) || !(lerr <= ltol)) {
                bad_o++;
                printf("     unit b%d g%d (%s): rel L2 %.2e (tol %.0e), LSE %.2e (tol %.0e)\n", b, g, csharp[u] ? "sharp" : "not sharp", rel, tol, lerr, ltol);
            }
        }
        free(o64), free(l64), free(ho), free(hl);
    }
    const int fail = bad_q || bad_k || bad_v || bad_m || bad_u || bad_o;
    printf("%s %squant vs CPU b%d lq%d lk%d h%d hk%d d%d %s%s%s%s %s: Q codes/scales %zu differ, K %zu, V %zu, means %zu, sharp units (%d) %zu, "
           "outputs %zu\n",
           fail ? "FAIL" : "ok  ", c->int4 ? "int4 " : "", c->b, c->lq, c->lk, c->h, c->hk, D, bf ? "bf16" : "f16", c->kv_pad ? " kv-strided" : "",
           c->wide == 1 ? " wide-range" : c->wide == 2 ? " huge" : "", c->sharp ? " sharp" : "", wgmma ? "wgmma layout" : "mma layout",
           bad_q, bad_k, bad_v, bad_m, n_sharp, bad_u, bad_o);
    free(hq), free(hk), free(hv), free(hw), free(cq), free(ck), free(cv), free(csq), free(csk), free(ckm), free(cvm), free(cvs);
    free(csharp), free(csigma), free(qres), free(kres);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse), cudaFree(ws);
    return fail;
}

/* gpu_alt: NULL, or a second CUDA context that runs the mma.sync kernel where gpu runs a wgmma kernel
 * (compute capability 9.0). INT8: its output must match gpu's up to FP32 rounding (same arithmetic).
 * FP16/BF16: the two round P to the input dtype against running maxima of different key tiles (64 and
 * 128 keys), so they agree to a few units of that rounding; the bound catches layout and schedule
 * errors (whole wrong rows or columns give differences of the order of the outputs). */
static int run_case(qattn_ctx *gpu, qattn_ctx *gpu_alt, qattn_ctx *cpu, const tcase *c, cudaStream_t stream) {
    char desc[256];
    describe(c, desc, sizeof desc);
    int64_t tq, tk; /* rows of the packed token axis */
    int32_t cuq[5] = {0}, cuk[5] = {0};
    if (c->varlen) {
        for (int i = 0; i < c->b; i++) {
            cuq[i + 1] = cuq[i] + c->lens_q[i];
            cuk[i + 1] = cuk[i] + c->lens_k[i];
        }
        tq = cuq[c->b];
        tk = cuk[c->b];
    } else {
        tq = (int64_t)c->b * c->lq;
        tk = (int64_t)c->b * c->lk;
    }
    const int D = c->d, HKS = c->hk + c->kv_pad; /* heads in the K/V cache rows */
    size_t nq = (size_t)tq * c->h * D, nk = (size_t)tk * HKS * D;
    uint16_t *hq = malloc(nq * 2), *hk = malloc(nk * 2), *hv = malloc(nk * 2);
    for (size_t i = 0; i < nq; i++) hq[i] = c->dtype == QATTN_DTYPE_BF16 ? f2bf(nrand()) : f2h(nrand());
    for (size_t i = 0; i < nk; i++) hk[i] = c->dtype == QATTN_DTYPE_BF16 ? f2bf(nrand()) : f2h(nrand());
    for (size_t i = 0; i < nk; i++) hv[i] = c->dtype == QATTN_DTYPE_BF16 ? f2bf(nrand()) : f2h(nrand());
    int osz = c->odtype == QATTN_DTYPE_F32 ? 4 : 2;
    void *dq, *dk, *dv, *dout;
    float *dlse;
    int32_t *dcuq = NULL, *dcuk = NULL;
    size_t nlse = (size_t)c->h * (c->varlen ? (size_t)tq : (size_t)c->b * c->lq);
    CK(cudaMalloc(&dq, nq * 2 + 16));
    CK(cudaMalloc(&dk, nk * 2 + 16));
    CK(cudaMalloc(&dv, nk * 2 + 16));
    CK(cudaMalloc(&dout, nq * osz + 16));
    CK(cudaMalloc((void **)&dlse, nlse * 4 + 16));
    CK(cudaMemcpy(dq, hq, nq * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dk, hk, nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv, hv, nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(dout, 0xff, nq * osz)); /* NaN in every output dtype */
    CK(cudaMemset(dlse, 0xff, nlse * 4));
    float *hslopes = NULL, *dslopes = NULL;
    const int64_t slope_bs = c->alibi == 2 ? c->h + 3 : 0;
    if (c->alibi) {
        const size_t ns = c->alibi == 2 ? (size_t)c->b * (size_t)slope_bs : (size_t)c->h;
        hslopes = malloc(ns * 4);
        for (size_t i = 0; i < ns; i++) hslopes[i] = c->alibi == 1 ? exp2f(-8.0f * (float)(i + 1) / (float)c->h) : (float)(urand() * 0.3);
        CK(cudaMalloc((void **)&dslopes, ns * 4));
        CK(cudaMemcpy(dslopes, hslopes, ns * 4, cudaMemcpyHostToDevice));
    }
    if (c->varlen) {
        CK(cudaMalloc((void **)&dcuq, sizeof cuq));
        CK(cudaMalloc((void **)&dcuk, sizeof cuk));
        CK(cudaMemcpy(dcuq, cuq, sizeof cuq, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dcuk, cuk, sizeof cuk, cudaMemcpyHostToDevice));
    }

    /* Block mask [B, H, nqb, nkb] (host copy for the oracle, device copy for the GPU); BM_RANDOM_SHARED_EMPTY: one
     * map for every head (head stride 0) with every third query block's row zero (rows that see no key). */
    uint8_t *hbm = NULL, *dbm = NULL;
    int64_t nqb = 0, nkb = 0;
    if (c->bq > 0) {
        nqb = (c->lq + c->bq - 1) / c->bq, nkb = (c->lk + c->bk - 1) / c->bk;
        const size_t nbm = (size_t)c->b * c->h * nqb * nkb;
        hbm = malloc(nbm + 1);
        for (size_t i = 0; i < nbm; i++) {
            const int64_t kb = (int64_t)(i % nkb), qb = (int64_t)((i / nkb) % nqb);
            switch (c->bm_kind) {
            case BM_ZERO: hbm[i] = 0; break;
            case BM_ONES: hbm[i] = 1; break;
            case BM_WINDOW_GLOBAL: hbm[i] = (kb >= qb - 1 && kb <= qb + 1) || kb == 0 || qb == 0; break;
            case BM_RANDOM_SHARED_EMPTY: hbm[i] = qb % 3 == 1 ? 0 : (uint8_t)(urand() * 100 < c->bm_pct ? 1 + (int)(urand() * 200) : 0); break;
            default: hbm[i] = (uint8_t)(urand() * 100 < c->bm_pct ? 1 + (int)(urand() * 200) : 0); /* any nonzero byte computes */
            }
        }
        CK(cudaMalloc((void **)&dbm, nbm + 16));
        CK(cudaMemcpy(dbm, hbm, nbm, cudaMemcpyHostToDevice));
    }

    qattn_params p;
    qattn_params_init(&p);
    p.batch = c->b;
    p.seqlen_q = c->lq;
    p.seqlen_k = c->lk;
    p.n_heads = c->h;
    p.n_kv_heads = c->hk;
    p.head_dim = D;
    p.qkv_dtype = c->dtype;
    p.o_dtype = c->odtype;
    p.precision = c->precision;
    p.causal = c->causal;
    p.window_left = c->wl;
    p.window_right = c->wr;
    qattn_params_set_contiguous(&p);
    p.k_seq_stride = p.v_seq_stride = (int64_t)HKS * D;
    p.k_batch_stride = p.v_batch_stride = (int64_t)c->lk * HKS * D;
    if (c->varlen) {
        int mq = 0, mk = 0;
        for (int i = 0; i < c->b; i++) {
            if (c->lens_q[i] > mq) mq = c->lens_q[i];
            if (c->lens_k[i] > mk) mk = c->lens_k[i];
        }
        p.seqlen_q = mq;
        p.seqlen_k = mk;
    }
    p.q = dq, p.k = dk, p.v = dv, p.o = dout, p.lse = dlse;
    p.cu_seqlens_q = dcuq, p.cu_seqlens_k = dcuk;
    p.stream = stream;
    if (dbm) {
        p.block_mask = dbm, p.block_mask_q = c->bq, p.block_mask_k = c->bk;
        p.block_mask_row_stride = nkb;
        p.block_mask_head_stride = c->bm_kind == BM_RANDOM_SHARED_EMPTY ? 0 : nqb * nkb;
        p.block_mask_batch_stride = (int64_t)c->h * nqb * nkb;
    }
    p.softcap = c->softcap;
    p.alibi_slopes = dslopes, p.alibi_batch_stride = slope_bs;
    /* The copies and memsets above are on the legacy stream, which a non-blocking stream does not
     * wait for (and a pageable host-to-device copy may return before its DMA ends): without this the
     * kernel could read the previous case's inputs or have its outputs re-poisoned (seen under load). */
    CK(cudaDeviceSynchronize());
    qattn_status s = qattn_forward(gpu, &p);
    /* not implemented on the INT8 path (varlen, head dims other than 64 and 128, softcap, ALiBi), nor block masks off the
     * wgmma kernels' shapes (blocks not multiples of 128 query rows and of the key tile, varlen, INT8 off D 128): must be
     * refused */
    const int bs_tile = c->d == 256 ? 64 : 128;
    if ((c->precision == QATTN_PRECISION_INT8 && (c->varlen || (c->d != 64 && c->d != 128) || c->softcap > 0.0f || c->alibi)) ||
        (c->bq > 0 && (c->bq % 128 || c->bk % bs_tile || c->varlen || (c->precision == QATTN_PRECISION_INT8 && c->d != 128)))) {
        printf("%s %-72s -> %s: %s\n", s == QATTN_ERR_UNSUPPORTED ? "ok  " : "FAIL", desc, qattn_status_str(s), qattn_ctx_last_error(gpu));
        cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse), cudaFree(dcuq), cudaFree(dcuk), cudaFree(dbm), cudaFree(dslopes);
        free(hq), free(hk), free(hv), free(hbm), free(hslopes);
        return s != QATTN_ERR_UNSUPPORTED;
    }
    if (s != QATTN_OK) {
        printf("FAIL %s: qattn_forward: %s: %s\n", desc, qattn_status_str(s), qattn_ctx_last_error(gpu));
        return 1;
    }
    CK(cudaStreamSynchronize(stream));
    CK(cudaGetLastError());
    void *hout = malloc(nq * osz);
    float *hlse = malloc(nlse * 4);
    CK(cudaMemcpy(hout, dout, nq * osz, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hlse, dlse, nlse * 4, cudaMemcpyDeviceToHost));
    double alt_diff = 0;
    /* BM_ONES: the dense kernel's output (the same tiles in the same order: bitwise expected, but the two
     * instantiations' FMA contraction is the compiler's, so only a difference beyond rounding fails) */
    int bs_bits = 0;
    double bs_diff = 0;
    if (dbm && c->bm_kind == BM_ONES) {
        void *hout2 = malloc(nq * osz);
        CK(cudaMemset(dout, 0xff, nq * osz));
        CK(cudaDeviceSynchronize());
        qattn_params pd = p;
        pd.block_mask = NULL;
        s = qattn_forward(gpu, &pd);
        if (s != QATTN_OK) {
            printf("FAIL %s: qattn_forward (dense): %s: %s\n", desc, qattn_status_str(s), qattn_ctx_last_error(gpu));
            return 1;
        }
        CK(cudaStreamSynchronize(stream));
        CK(cudaMemcpy(hout2, dout, nq * osz, cudaMemcpyDeviceToHost));
        bs_bits = memcmp(hout, hout2, nq * osz) != 0;
        bs_diff = out_rel_diff(hout, hout2, nq, c->odtype);
        free(hout2);
    }
    if (gpu_alt && dbm) { /* the mma.sync kernels refuse block masks with a message */
        s = qattn_supports(gpu_alt, &p);
        if (s != QATTN_ERR_UNSUPPORTED || !strstr(qattn_ctx_last_error(gpu_alt), "block_mask")) {
            printf("FAIL %s: the mma.sync context accepts the block mask (%s: %s)\n", desc, qattn_status_str(s), qattn_ctx_last_error(gpu_alt));
            return 1;
        }
    } else if (gpu_alt) {
        void *hout2 = malloc(nq * osz);
        CK(cudaMemset(dout, 0xff, nq * osz));
        CK(cudaDeviceSynchronize()); /* the poison first (legacy stream, see above) */
        s = qattn_forward(gpu_alt, &p);
        if (s != QATTN_OK) {
            printf("FAIL %s: qattn_forward (the mma.sync kernel): %s: %s\n", desc, qattn_status_str(s), qattn_ctx_last_error(gpu_alt));
            return 1;
        }
        CK(cudaStreamSynchronize(stream));
        CK(cudaMemcpy(hout2, dout, nq * osz, cudaMemcpyDeviceToHost));
        alt_diff = out_rel_diff(hout, hout2, nq, c->odtype);
        free(hout2);
    }

    /* Oracle on the host copies. */
    qattn_params hp = p;
    hp.q = hq, hp.k = hk, hp.v = hv, hp.o = NULL, hp.lse = NULL, hp.stream = NULL;
    hp.cu_seqlens_q = c->varlen ? cuq : NULL;
    hp.cu_seqlens_k = c->varlen ? cuk : NULL;
    hp.block_mask = hbm;
    hp.alibi_slopes = hslopes;
    double *o64 = malloc(nq * sizeof(double)), *l64 = malloc(nlse * sizeof(double));
    hp.o = o64; /* ignored by the oracle, but validation wants non-NULL */
    s = qattn_oracle_f64(cpu, &hp, o64, l64);
    if (s != QATTN_OK) {
        printf("FAIL %s: oracle: %s: %s\n", desc, qattn_status_str(s), qattn_ctx_last_error(cpu));
        return 1;
    }
    double num2 = 0, den2 = 0, num1 = 0, den1 = 0, maxabs = 0, lse_err = 0;
    size_t bad = 0, lse_bad = 0;
    for (size_t i = 0; i < nq; i++) {
        float x = c->odtype == QATTN_DTYPE_F32 ? ((float *)hout)[i]
                  : c->odtype == QATTN_DTYPE_BF16 ? bf2f(((uint16_t *)hout)[i])
                                                  : h2f(((uint16_t *)hout)[i]);
        if (!isfinite(x)) {
            bad++;
            continue;
        }
        double d = x - o64[i];
        num2 += d * d, den2 += o64[i] * o64[i], num1 += fabs(d), den1 += fabs(o64[i]);
        if (fabs(d) > maxabs) maxabs = fabs(d);
    }
    for (size_t i = 0; i < nlse; i++) {
        if (isinf(l64[i]) && l64[i] < 0) {
            if (!(isinf(hlse[i]) && hlse[i] < 0)) lse_bad++;
            continue;
        }
        if (!isfinite(hlse[i])) {
            lse_bad++;
            continue;
        }
        double d = fabs(hlse[i] - l64[i]);
        if (d > lse_err) lse_err = d;
    }
    double rel2 = den2 > 0 ? sqrt(num2 / den2) : sqrt(num2), rel1 = den1 > 0 ? num1 / den1 : num1;
    double tol = c->precision == QATTN_PRECISION_INT8 ? 0.05 : c->dtype == QATTN_DTYPE_BF16 ? 1.6e-2 : 2e-3;
    double lse_tol = c->precision == QATTN_PRECISION_INT8 ? 0.1 : 1e-2;
    /* The two INT8 kernels share the arithmetic (exact integer products, the same FP32 formulas): a
     * difference above FP32 rounding of the output means a layout or schedule error, not quantization. */
    const double alt_tol = c->precision != QATTN_PRECISION_INT8 ? (c->dtype == QATTN_DTYPE_BF16 ? 4e-2 : 1e-2)
                           : c->odtype == QATTN_DTYPE_F32         ? 1e-5
                           : c->odtype == QATTN_DTYPE_BF16        ? 8e-3
                                                                  : 1e-3;
    int fail = bad || lse_bad || !(rel2 <= tol) || !(lse_err <= lse_tol) || !(alt_diff <= alt_tol) || !(bs_diff <= 1e-3);
    printf("%s %-72s relL1 %.2e relL2 %.2e (tol %.0e) maxabs %.2e lse %.2e nonfinite %zu lse_bad %zu", fail ? "FAIL" : "ok  ", desc, rel1,
           rel2, tol, maxabs, lse_err, bad, lse_bad);
    if (gpu_alt && !c->varlen && !dbm) printf(" wgmma-vs-mma %.1e (tol %.0e)", alt_diff, alt_tol);
    if (dbm && c->bm_kind == BM_ONES) printf(" vs dense: %s %.1e (tol 1e-3)", bs_bits ? "differs" : "bitwise equal", bs_diff);
    printf("\n");
    free(hq), free(hk), free(hv), free(hout), free(hlse), free(o64), free(l64), free(hslopes);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse), cudaFree(dslopes);
    if (dcuq) cudaFree(dcuq), cudaFree(dcuk);
    if (dbm) cudaFree(dbm);
    free(hbm);
    return fail;
}

/* Two calls of one context on two streams, queued back to back: the wgmma kernel's work counter is per
 * context, so the second call must wait for the first (a shared counter reset mid-run skips or repeats
 * items: rows left at the NaN poison, or different bits). Both outputs must be complete and equal. */
static int two_streams(qattn_ctx *gpu) {
    const int B = 2, L = 1000, H = 8, HK = 2, D = 128;
    const size_t nq = (size_t)B * L * H * D, nk = (size_t)B * L * HK * D;
    uint16_t *h = malloc((nq + 2 * nk) * 2), *o1 = malloc(nq * 2), *o2 = malloc(nq * 2);
    for (size_t i = 0; i < nq + 2 * nk; i++) h[i] = f2h(nrand());
    void *dqkv, *d1, *d2;
    CK(cudaMalloc(&dqkv, (nq + 2 * nk) * 2));
    CK(cudaMalloc(&d1, nq * 2));
    CK(cudaMalloc(&d2, nq * 2));
    CK(cudaMemcpy(dqkv, h, (nq + 2 * nk) * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(d1, 0xff, nq * 2));
    CK(cudaMemset(d2, 0xff, nq * 2));
    CK(cudaDeviceSynchronize());
    cudaStream_t s1, s2;
    CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    qattn_params p;
    qattn_params_init(&p);
    p.batch = B, p.seqlen_q = p.seqlen_k = L, p.n_heads = H, p.n_kv_heads = HK, p.head_dim = D;
    p.qkv_dtype = p.o_dtype = QATTN_DTYPE_F16;
    p.causal = 1;
    qattn_params_set_contiguous(&p);
    p.q = dqkv, p.k = (uint16_t *)dqkv + nq, p.v = (uint16_t *)dqkv + nq + nk;
    int fail = 0;
    p.o = d1, p.stream = s1;
    fail |= qattn_forward(gpu, &p) != QATTN_OK;
    p.o = d2, p.stream = s2;
    fail |= qattn_forward(gpu, &p) != QATTN_OK;
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(o1, d1, nq * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(o2, d2, nq * 2, cudaMemcpyDeviceToHost));
    size_t nan = 0, diff = 0;
    for (size_t i = 0; i < nq; i++) {
        nan += (isnan(h2f(o1[i])) != 0) + (isnan(h2f(o2[i])) != 0);
        diff += o1[i] != o2[i];
    }
    fail |= nan != 0 || diff != 0;
    printf("%s two streams, one context (b%d l%d h%d hk%d d%d causal f16): nonfinite %zu, differing outputs %zu\n", fail ? "FAIL" : "ok  ", B, L, H,
           HK, D, nan, diff);
    cudaStreamDestroy(s1), cudaStreamDestroy(s2);
    cudaFree(dqkv), cudaFree(d1), cudaFree(d2);
    free(h), free(o1), free(o2);
    return fail;
}

/* qattn_forward_calibrated on the GPU (the calibration's three arrays in device memory), D d, dtype dt:
 * 1. one sequence, calibrated with qattn_calibrate (CPU) on that sequence: outputs and LSE bitwise those
 *    of qattn_forward (the same factors and means, so the same workspace and kernels);
 * 2. two sequences (GQA, causal, Lq < Lk) with the calibration of the first only: against the FP64
 *    oracle within the INT8 tolerance of run_case (0.05 relative L2: the factors are exact powers of two
 *    and the means only centre the codes, so a calibration from similar data costs little accuracy);
 * 3. a factor that is not a power of two (kv head 0): every output of its query heads NaN, the other
 *    heads' unchanged (bitwise), the call QATTN_OK (the host does not read device arrays);
 * 4. refusals: a calibration of another shape, a NULL array. */
static int check_i8_calibrated(qattn_ctx *gpu, qattn_ctx *cpu, int D, int dt, cudaStream_t stream) {
    const int B = 2, LQ = 150, LK = 333, H = 4, HK = 2, bf = dt == QATTN_DTYPE_BF16;
    const size_t nq = (size_t)B * LQ * H * D, nk = (size_t)B * LK * HK * D, nc = (size_t)HK * D;
    uint16_t *hq = malloc(nq * 2), *hk = malloc(nk * 2), *hv = malloc(nk * 2);
    for (size_t i = 0; i < nq; i++) hq[i] = bf ? f2bf(nrand()) : f2h(nrand());
    for (size_t i = 0; i < nk; i++) {
        const float shift = (float)(i % D % 7) - 3.f; /* channel means, K outlier channels */
        hk[i] = bf ? f2bf(nrand() * (i % D % 16 == 3 ? 8.f : 1.f) + shift) : f2h(nrand() * (i % D % 16 == 3 ? 8.f : 1.f) + shift);
        hv[i] = bf ? f2bf(nrand() - 0.5f * shift) : f2h(nrand() - 0.5f * shift);
    }
    float *cal_arr = calloc(6 * nc, 4);
    qattn_calibration cal = {HK, D, 0, cal_arr, cal_arr + nc, cal_arr + 2 * nc, cal_arr + 3 * nc, cal_arr + 4 * nc, cal_arr + 5 * nc};
    qattn_params p;
    qattn_params_init(&p);
    p.batch = 1, p.seqlen_q = LQ, p.seqlen_k = LK, p.n_heads = H, p.n_kv_heads = HK, p.head_dim = D;
    p.qkv_dtype = dt, p.o_dtype = QATTN_DTYPE_F32, p.precision = QATTN_PRECISION_INT8;
    qattn_params_set_contiguous(&p);
    qattn_params hp = p;
    hp.q = hq, hp.k = hk, hp.v = hv;
    qattn_status s = qattn_calibrate(cpu, &hp, &cal); /* the first sequence */
    if (s != QATTN_OK) return printf("FAIL calibrated: qattn_calibrate: %s\n", qattn_ctx_last_error(cpu)), 1;
    void *dq, *dk, *dv;
    float *dout, *dlse, *dcal;
    CK(cudaMalloc(&dq, nq * 2));
    CK(cudaMalloc(&dk, nk * 2));
    CK(cudaMalloc(&dv, nk * 2));
    CK(cudaMalloc((void **)&dout, 2 * nq * 4));
    CK(cudaMalloc((void **)&dlse, 2 * (size_t)B * H * LQ * 4));
    CK(cudaMalloc((void **)&dcal, 3 * nc * 4));
    CK(cudaMemcpy(dq, hq, nq * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dk, hk, nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv, hv, nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dcal, cal_arr, 3 * nc * 4, cudaMemcpyHostToDevice));
    qattn_calibration dcalib = {HK, D, cal.tokens, dcal, dcal + nc, dcal + 2 * nc, NULL, NULL, NULL};
    p.q = dq, p.k = dk, p.v = dv, p.stream = stream;
    const size_t no1 = (size_t)LQ * H * D, nl1 = (size_t)H * LQ;
    float *ho = malloc(2 * nq * 4), *hl = malloc(2 * (size_t)B * H * LQ * 4);
    int fail = 0;
    /* 1. one sequence: dynamic into the first halves, calibrated into the second */
    CK(cudaMemset(dout, 0xff, 2 * nq * 4));
    CK(cudaMemset(dlse, 0xff, 2 * (size_t)B * H * LQ * 4));
    CK(cudaDeviceSynchronize());
    p.o = dout, p.lse = dlse;
    s = qattn_forward(gpu, &p);
    qattn_params pc = p;
    pc.o = dout + no1, pc.lse = dlse + nl1;
    if (s == QATTN_OK) s = qattn_forward_calibrated(gpu, &pc, &dcalib);
    if (s != QATTN_OK) return printf("FAIL calibrated: forward: %s: %s\n", qattn_status_str(s), qattn_ctx_last_error(gpu)), 1;
    CK(cudaStreamSynchronize(stream));
    CK(cudaMemcpy(ho, dout, 2 * no1 * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hl, dlse, 2 * nl1 * 4, cudaMemcpyDeviceToHost));
    size_t nan1 = 0;
    for (size_t i = 0; i < no1; i++) nan1 += !isfinite(ho[i]);
    const int same = memcmp(ho, ho + no1, no1 * 4) == 0 && memcmp(hl, hl + nl1, nl1 * 4) == 0;
    fail |= !same || nan1 > 0;
    printf("%s calibrated, one sequence (lq%d lk%d h%d hk%d d%d %s): outputs and LSE %s the dynamic pass's, nonfinite %zu\n", !same || nan1 ? "FAIL" : "ok  ",
           LQ, LK, H, HK, D, bf ? "bf16" : "f16", same ? "bitwise" : "differ from", nan1);
    /* 2. two sequences, causal, the first one's calibration */
    p.batch = pc.batch = B, p.causal = pc.causal = 1;
    qattn_params_set_contiguous(&pc);
    pc.q = dq, pc.k = dk, pc.v = dv, pc.o = dout, pc.lse = dlse, pc.stream = stream;
    CK(cudaMemset(dout, 0xff, nq * 4));
    CK(cudaDeviceSynchronize());
    s = qattn_forward_calibrated(gpu, &pc, &dcalib);
    if (s != QATTN_OK) return printf("FAIL calibrated: forward (two sequences): %s\n", qattn_ctx_last_error(gpu)), 1;
    CK(cudaStreamSynchronize(stream));
    CK(cudaMemcpy(ho, dout, nq * 4, cudaMemcpyDeviceToHost));
    double *o64 = malloc(nq * sizeof(double)), *l64 = malloc((size_t)B * H * LQ * sizeof(double));
    hp = pc;
    hp.q = hq, hp.k = hk, hp.v = hv, hp.o = o64, hp.lse = NULL, hp.stream = NULL;
    if ((s = qattn_oracle_f64(cpu, &hp, o64, l64)) != QATTN_OK) return printf("FAIL calibrated: oracle: %s\n", qattn_ctx_last_error(cpu)), 1;
    double num = 0, den = 0;
    size_t nan2 = 0;
    for (size_t i = 0; i < nq; i++) {
        if (!isfinite(ho[i])) nan2++;
        else num += (ho[i] - o64[i]) * (ho[i] - o64[i]), den += o64[i] * o64[i];
    }
    const double rel2 = sqrt(num / den);
    fail |= nan2 > 0 || !(rel2 <= 0.05);
    printf("%s calibrated, two sequences causal with the first's calibration: relL2 %.2e (tol 5e-2) nonfinite %zu\n", nan2 || !(rel2 <= 0.05) ? "FAIL" : "ok  ",
           rel2, nan2);
    /* 3. a factor of 3 in kv head 0's channel 5: heads 0 and 1 (kv head 0) NaN, heads 2 and 3 as before */
    const float three = 3.f;
    CK(cudaMemcpy(dcal + 5, &three, 4, cudaMemcpyHostToDevice));
    pc.o = dout + nq;
    CK(cudaMemset(dout + nq, 0, nq * 4));
    CK(cudaDeviceSynchronize());
    s = qattn_forward_calibrated(gpu, &pc, &dcalib);
    CK(cudaStreamSynchronize(stream));
    CK(cudaMemcpy(ho + nq, dout + nq, nq * 4, cudaMemcpyDeviceToHost));
    size_t not_nan = 0, moved = 0;
    for (size_t i = 0; i < nq; i++) {
        const int h = (int)(i / D % H);
        if (h < 2) not_nan += !isnan(ho[nq + i]);
        else moved += memcmp(&ho[i], &ho[nq + i], 4) != 0;
    }
    const int ok3 = s == QATTN_OK && not_nan == 0 && moved == 0;
    fail |= !ok3;
    printf("%s calibrated, bad factor in kv head 0 -> %s: its heads' outputs not NaN %zu, other heads changed %zu\n", ok3 ? "ok  " : "FAIL",
           qattn_status_str(s), not_nan, moved);
    /* 4. refusals */
    qattn_calibration bad = dcalib;
    bad.n_kv_heads = HK + 1;
    const qattn_status r1 = qattn_forward_calibrated(gpu, &pc, &bad);
    const int ok4a = r1 == QATTN_ERR_INVALID_ARGUMENT && strstr(qattn_ctx_last_error(gpu), "kv heads") != NULL;
    bad = dcalib;
    bad.v_mean = NULL;
    const qattn_status r2 = qattn_forward_calibrated(gpu, &pc, &bad);
    const int ok4b = r2 == QATTN_ERR_NULL_POINTER && strstr(qattn_ctx_last_error(gpu), "v_mean") != NULL;
    fail |= !ok4a || !ok4b;
    printf("%s calibrated refusals: other shape -> %s, NULL v_mean -> %s\n", ok4a && ok4b ? "ok  " : "FAIL", qattn_status_str(r1), qattn_status_str(r2));
    free(hq), free(hk), free(hv), free(cal_arr), free(ho), free(hl), free(o64), free(l64);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse), cudaFree(dcal);
    return fail;
}

/* Fixed V rows (an attention sink's small value row; quant_i8.cu, kv_part): the INT8 kernels add back what
 * V's codes per channel and tile lose of such a row. Data: B 1, L 700 (six key tiles, the last partial),
 * H 4, HK 2, FP16, bench/gpu_accuracy.py's sink twice: a direction u per kv head, q = 0.6 N + u, keys 0
 * and 300 = 1.5 u and 1.4 u, their value rows x0.05 and x0.03; every V row j has the row 699 - j = -v_j,
 * so V's mean is exactly 0 and each sink has a small mirror row. No unit may be sharp (it would run the
 * FP16 kernel, not the INT8 fix-up: checked through the workspace's flags). Run A takes these inputs; run B the same with the two
 * sinks' value rows (and mirrors) replaced by their dequantized codes, which code to the same codes and
 * leave every tile maximum, so the two runs differ by the fixed rows' residuals alone:
 *   O_A - O_B = sum over the fixed keys j of p^_ij (v_j^A - v_j^B)   (p^: the kernel's weights)
 * against the oracle's O*_A - O*_B = sum_j p*_ij (v_j^A - v_j^B). Bound: relative L2 e^0.2 - 1 = 0.22,
 * the weight ratio p^ / p* = exp(score error - LSE error), each within 0.1 (run_case's INT8 LSE bound).
 * Without the fix the two runs give the same output (relative error 1). With bm (the wgmma kernel only),
 * key block 0 is masked for query blocks 1 and 3: their rows must get nothing of key 0. Also A against the
 * oracle within run_case's INT8 bound (0.05 relative L2). */
static int check_i8_vfix(qattn_ctx *gpu, qattn_ctx *cpu, int D, int causal, int bm, cudaStream_t stream) {
    const int L = 700, H = 4, HK = 2, NB = (L + 127) / 128, sinks[2] = {0, 300};
    const float ksink[2] = {1.5f, 1.4f}, vsink[2] = {0.05f, 0.03f};
    const size_t nq = (size_t)L * H * D, nk = (size_t)L * HK * D;
    uint16_t *hq = malloc(nq * 2), *hk = malloc(nk * 2), *hv = malloc(2 * nk * 2), *hvb = hv + nk;
    float u[2][256];
    for (int g = 0; g < HK; g++)
        for (int c = 0; c < D; c++) u[g][c] = nrand();
    for (size_t i = 0; i < nq; i++) hq[i] = f2h(0.6f * nrand() + u[i / D % H / (H / HK)][i % D]);
    for (size_t i = 0; i < nk; i++) hk[i] = f2h(nrand());
    for (int j = 0; j < L / 2; j++)
        for (int g = 0; g < HK; g++)
            for (int c = 0; c < D; c++) {
                const float x = nrand() * (j == sinks[0] ? vsink[0] : j == sinks[1] ? vsink[1] : 1.f);
                hv[((size_t)j * HK + g) * D + c] = f2h(x), hv[((size_t)(L - 1 - j) * HK + g) * D + c] = f2h(-h2f(f2h(x)));
            }
    memcpy(hvb, hv, nk * 2);
    for (int e = 0; e < 2; e++)
        for (int g = 0; g < HK; g++)
            for (int c = 0; c < D; c++) {
                hk[((size_t)sinks[e] * HK + g) * D + c] = f2h(ksink[e] * u[g][c]);
                /* the tile's channel step, as the quantization pass: max |v - mean| / 127 (mean 0) */
                const int t0 = sinks[e] / 128 * 128, t1 = t0 + 128 < L ? t0 + 128 : L;
                float m = 0.f;
                for (int j = t0; j < t1; j++) m = fmaxf(m, fabsf(h2f(hv[((size_t)j * HK + g) * D + c])));
                const float inv = m > 0.f ? 127.f / m : 0.f, x = h2f(hv[((size_t)sinks[e] * HK + g) * D + c]);
                const float code = fminf(127.f, fmaxf(-127.f, rintf(x * inv)));
                const uint16_t deq = f2h(code * (m / 127.f));
                hvb[((size_t)sinks[e] * HK + g) * D + c] = deq, hvb[((size_t)(L - 1 - sinks[e]) * HK + g) * D + c] = f2h(-h2f(deq));
            }
    uint8_t hbm[4 * 6 * 6];
    for (int i = 0; i < H * NB * NB; i++) hbm[i] = !(i % NB == 0 && (i / NB % NB == 1 || i / NB % NB == 3));
    void *dq, *dk, *dv, *dbm, *dws;
    float *dout;
    CK(cudaMalloc(&dq, nq * 2));
    CK(cudaMalloc(&dk, nk * 2));
    CK(cudaMalloc(&dv, 2 * nk * 2));
    CK(cudaMalloc(&dbm, sizeof hbm));
    CK(cudaMalloc((void **)&dout, 2 * nq * 4));
    CK(cudaMemcpy(dq, hq, nq * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dk, hk, nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv, hv, 2 * nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dbm, hbm, sizeof hbm, cudaMemcpyHostToDevice));
    CK(cudaMemset(dout, 0xff, 2 * nq * 4));
    qattn_params p;
    qattn_params_init(&p);
    p.batch = 1, p.seqlen_q = p.seqlen_k = L, p.n_heads = H, p.n_kv_heads = HK, p.head_dim = D, p.causal = causal;
    p.qkv_dtype = QATTN_DTYPE_F16, p.o_dtype = QATTN_DTYPE_F32, p.precision = QATTN_PRECISION_INT8;
    qattn_params_set_contiguous(&p);
    if (bm) p.block_mask_q = p.block_mask_k = 128, p.block_mask_row_stride = NB, p.block_mask_head_stride = NB * NB, p.block_mask_batch_stride = H * NB * NB;
    p.stream = stream;
    p.q = dq, p.k = dk, p.v = dv, p.o = dout, p.block_mask = bm ? dbm : NULL; /* each run sets its own v and o */
    size_t wsz = 0, off[10];
    int32_t pads[2], sharp[2] = {1, 1};
    if (qattn_workspace_size(gpu, &p, &wsz) != QATTN_OK) return printf("FAIL fixed V rows: workspace_size: %s\n", qattn_ctx_last_error(gpu)), 1;
    qattn_cuda_i8_offsets(&p, off, pads);
    CK(cudaMalloc(&dws, wsz));
    p.workspace = dws, p.workspace_size = wsz;
    float *ho = malloc(2 * nq * 4);
    double *o64 = malloc(2 * nq * sizeof(double)), *l64 = malloc((size_t)H * L * sizeof(double));
    int fail = 0;
    qattn_status s = QATTN_OK;
    qattn_ctx *who = gpu;
    for (int run = 0; run < 2 && s == QATTN_OK; run++) {
        qattn_params pr = p;
        pr.q = dq, pr.k = dk, pr.v = (uint16_t *)dv + run * nk, pr.o = dout + run * nq, pr.block_mask = bm ? dbm : NULL;
        if ((s = qattn_forward(who = gpu, &pr)) != QATTN_OK) break;
        if (run == 0 && !bm) CK(cudaMemcpyAsync(sharp, (char *)dws + off[8], sizeof sharp, cudaMemcpyDeviceToHost, stream));
        if (bm) sharp[0] = sharp[1] = 0; /* with a block mask every unit runs INT8 (backend.cu) */
        pr.q = hq, pr.k = hk, pr.v = hv + run * nk, pr.o = o64 + run * nq, pr.stream = NULL, pr.block_mask = bm ? hbm : NULL;
        s = qattn_oracle_f64(who = cpu, &pr, o64 + run * nq, l64);
    }
    if (s != QATTN_OK) {
        printf("FAIL fixed V rows (d%d causal%d bm%d): %s\n", D, causal, bm, qattn_ctx_last_error(who));
        fail = 1;
    } else {
        CK(cudaStreamSynchronize(stream));
        CK(cudaMemcpy(ho, dout, 2 * nq * 4, cudaMemcpyDeviceToHost));
        double en = 0, ed = 0, an = 0, ad = 0;
        size_t bad = 0;
        for (size_t i = 0; i < nq; i++) {
            bad += !isfinite(ho[i]) || !isfinite(ho[nq + i]);
            const double dg = (double)ho[i] - ho[nq + i], dr = o64[i] - o64[nq + i];
            en += (dg - dr) * (dg - dr), ed += dr * dr;
            an += (ho[i] - o64[i]) * (ho[i] - o64[i]), ad += o64[i] * o64[i];
        }
        const double rel = ed > 0 ? sqrt(en / ed) : INFINITY, rel_a = sqrt(an / ad);
        fail = bad > 0 || !(rel <= 0.22) || !(rel_a <= 0.05) || sharp[0] || sharp[1];
        printf("%s fixed V rows (l%d h%d hk%d d%d causal%d%s): the sinks' residual relL2 %.2e (tol 0.22; ||d*|| %.2e), output relL2 %.2e (tol 5e-2), "
               "nonfinite %zu, sharp units %d (must be 0)\n",
               fail ? "FAIL" : "ok  ", L, H, HK, D, causal, bm ? " bm128 key block 0 off for query blocks 1, 3" : "", rel, sqrt(ed), rel_a, bad,
               sharp[0] + sharp[1]);
    }
    free(hq), free(hk), free(hv), free(ho), free(o64), free(l64);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dbm), cudaFree(dout), cudaFree(dws);
    return fail;
}

/* Head dims the CPU backend runs but this backend does not (8, 16, 24): qattn_supports, qattn_forward
 * (FP16 and INT8) and the GPU KV decode must return QATTN_ERR_UNSUPPORTED naming the head dim,
 * before any tensor is touched (the pointers below are never dereferenced). */
static int refuse_small_head_dims(qattn_ctx *gpu, qattn_ctx *cpu) {
    int fails = 0;
    for (int D = 8; D <= 24; D += 8)
        for (int i8 = 0; i8 < 2; i8++) {
            qattn_params p;
            qattn_params_init(&p);
            p.batch = 1, p.seqlen_q = p.seqlen_k = 8, p.n_heads = p.n_kv_heads = 1, p.head_dim = D;
            p.qkv_dtype = p.o_dtype = QATTN_DTYPE_F16;
            p.precision = i8 ? QATTN_PRECISION_INT8 : QATTN_PRECISION_AUTO;
            qattn_params_set_contiguous(&p);
            /* distinct fake addresses: the overlap check must not be what refuses */
            p.q = (void *)(uintptr_t)0x10000, p.k = (void *)(uintptr_t)0x20000, p.v = (void *)(uintptr_t)0x30000;
            p.o = (void *)(uintptr_t)0x40000;
            qattn_status sup = qattn_supports(gpu, &p), fwd = qattn_forward(gpu, &p);
            int ok = sup == QATTN_ERR_UNSUPPORTED && fwd == QATTN_ERR_UNSUPPORTED && strstr(qattn_ctx_last_error(gpu), "head_dim") != NULL;
            printf("%s forward(head_dim %d, %s) -> %s: %s\n", ok ? "ok  " : "FAIL", D, i8 ? "int8" : "f16", qattn_status_str(fwd),
                   qattn_ctx_last_error(gpu));
            fails += !ok;
        }
    for (int D = 8; D <= 24; D += 8) { /* the cache lives on the CPU context; the decode is refused first */
        qattn_kv_cache_options co;
        memset(&co, 0, sizeof co);
        co.n_kv_heads = 1, co.head_dim = D, co.block_size = 16, co.dtype = QATTN_DTYPE_I8, co.n_blocks = 4, co.max_seqs = 1;
        qattn_kv_cache *c = NULL;
        qattn_status s = qattn_kv_cache_create(cpu, &co, &c);
        if (s != QATTN_OK) {
            printf("FAIL kv_cache_create(head_dim %d): %s\n", D, qattn_ctx_last_error(cpu));
            fails++;
            continue;
        }
        qattn_decode_params dp;
        qattn_decode_params_init(&dp);
        int32_t id = 0;
        dp.q = (void *)(uintptr_t)0x10000, dp.o = (void *)(uintptr_t)0x20000, dp.seq_ids = &id, dp.n_seqs = 1, dp.n_heads = 1;
        qattn_kv_device_cache dev = {(const void *)(uintptr_t)256, (const int32_t *)(uintptr_t)256, NULL};
        s = qattn_kv_decode_cuda(gpu, c, &dev, &dp);
        int ok = s == QATTN_ERR_UNSUPPORTED && strstr(qattn_ctx_last_error(gpu), "head_dim") != NULL;
        printf("%s kv_decode_cuda(head_dim %d) -> %s: %s\n", ok ? "ok  " : "FAIL", D, qattn_status_str(s), qattn_ctx_last_error(gpu));
        fails += !ok;
        qattn_kv_cache_destroy(cpu, c);
    }
    return fails;
}

int main(int argc, char **argv) {
    int small = 0, int8 = 0, mma = 0, alt = 0, bs = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small")) small = 1;
        if (!strcmp(argv[i], "--int8")) int8 = 1;
        if (!strcmp(argv[i], "--mma")) mma = 1; /* the mma.sync kernels only (as on sm_80) */
        if (!strcmp(argv[i], "--alt")) alt = 1; /* FP16/BF16: also run the mma.sync kernel and compare */
        if (!strcmp(argv[i], "--bs")) bs = 1;   /* block-sparse cases (the wgmma kernels, compute capability 9.0) */
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("SKIP: no CUDA device\n");
        /* The backend must refuse cleanly too. */
        qattn_ctx_options o;
        memset(&o, 0, sizeof o);
        o.backend = QATTN_BACKEND_CUDA;
        qattn_ctx *ctx = NULL;
        qattn_status s = qattn_ctx_create(&ctx, &o);
        printf("ctx_create(backend cuda) -> %s\n", qattn_status_str(s));
        return s == QATTN_ERR_UNSUPPORTED ? 77 : 1;
    }
    qattn_ctx_options o;
    memset(&o, 0, sizeof o);
    o.backend = QATTN_BACKEND_CUDA;
    qattn_ctx *gpu = NULL, *cpu = NULL;
    o.cuda_kernels = mma ? QATTN_CUDA_KERNELS_MMA : QATTN_CUDA_KERNELS_AUTO;
    qattn_status s = qattn_ctx_create(&gpu, &o);
    if (s != QATTN_OK) {
        printf("FAIL: ctx_create(cuda): %s\n", qattn_status_str(s));
        return 1;
    }
    qattn_ctx *gpu_alt = NULL;
    if ((int8 || alt || bs) && !mma) { /* the mma.sync kernels, to compare with the default (wgmma on compute capability 9.0) */
        o.cuda_kernels = QATTN_CUDA_KERNELS_MMA;
        s = qattn_ctx_create(&gpu_alt, &o);
        if (s != QATTN_OK) return 1;
    }
    o.cuda_kernels = QATTN_CUDA_KERNELS_AUTO;
    o.backend = QATTN_BACKEND_CPU;
    if (qattn_ctx_create(&cpu, &o) != QATTN_OK) return 1;
    cudaStream_t stream;
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

    const int F16 = QATTN_DTYPE_F16, BF = QATTN_DTYPE_BF16, F32 = QATTN_DTYPE_F32;
    const int P = int8 ? QATTN_PRECISION_INT8 : QATTN_PRECISION_AUTO;
    tcase small_cases[] = {
        {1, 17, 17, 2, 1, 64, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 113, 203, 2, 2, 128, 1, -1, -1, F16, F32, P, 0, 0, {0}, {0}},
        {3, 40, 70, 2, 1, 128, 1, -1, -1, BF, BF, P, 1, 0, {17, 0, 40}, {33, 5, 70}},
        {1, 130, 130, 1, 1, 64, 1, -1, -1, F16, F16, P, 0, 1, {0}, {0}},
        {1, 1100, 300, 16, 2, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}}, /* more items than SMs, the first 6 query blocks see no key */
        {1, 113, 203, 2, 1, 96, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 70, 130, 2, 2, 256, 1, -1, -1, BF, F32, P, 0, 0, {0}, {0}},
        /* head dims 32, 80, 160, 192 and the score modifiers (FP16/BF16; refused at INT8) */
        {1, 70, 130, 2, 1, 32, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 113, 70, 2, 2, 80, 1, -1, -1, BF, F32, P, 0, 1, {0}, {0}, 0, 0, 0, 0, 0.f, 2},
        {2, 40, 70, 2, 1, 160, 0, 9, 3, F16, F16, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 5.f, 1},
        {3, 40, 70, 2, 1, 192, 1, -1, -1, BF, BF, P, 1, 0, {17, 0, 40}, {33, 5, 70}, 0, 0, 0, 0, 30.f, 2},
        {1, 113, 203, 2, 1, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 2.f, 1},
    };
    tcase full_cases[] = {
        {1, 1, 1, 1, 1, 64, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {2, 1, 203, 4, 2, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {2, 17, 17, 4, 4, 64, 0, -1, -1, F16, F32, P, 0, 0, {0}, {0}},
        {2, 113, 113, 4, 1, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 203, 113, 4, 2, 64, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}}, /* Lq > Lk: first rows see nothing */
        {1, 113, 203, 4, 2, 128, 1, -1, -1, BF, BF, P, 0, 0, {0}, {0}},
        {2, 203, 203, 8, 2, 128, 0, -1, -1, BF, F32, P, 0, 0, {0}, {0}},
        {1, 300, 517, 2, 1, 64, 0, 37, 5, F16, F16, P, 0, 0, {0}, {0}}, /* sliding window */
        {1, 1000, 1000, 2, 2, 128, 1, -1, -1, F16, F16, P, 0, 1, {0}, {0}},
        {1, 777, 1500, 4, 1, 64, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {4, 203, 203, 4, 2, 128, 1, -1, -1, F16, F16, P, 1, 0, {113, 0, 203, 1}, {113, 17, 150, 1}},
        {3, 129, 257, 2, 2, 64, 0, -1, -1, BF, F16, P, 1, 0, {129, 17, 0}, {257, 0, 64}},
        {1, 2048, 2048, 2, 1, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 203, 113, 4, 2, 128, 1, -1, -1, F16, F32, P, 0, 0, {0}, {0}},  /* D 128, Lq > Lk */
        {1, 300, 517, 2, 1, 128, 0, 37, 5, F16, F32, P, 0, 0, {0}, {0}},   /* D 128 window */
        {2, 640, 1111, 8, 2, 128, 0, -1, -1, F16, F32, P, 0, 0, {0}, {0}}, /* D 128, many key tiles */
        /* more query blocks than multiprocessors (the persistent INT8 grid takes several items per block) */
        {3, 520, 390, 16, 4, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {2, 1200, 700, 24, 6, 128, 1, -1, -1, BF, F32, P, 0, 0, {0}, {0}}, /* Lq > Lk: items with no key among the others */
        /* head dims 96 (laid out as 128) and 256 (one m-tile per warp, 32-key tiles): FP16/BF16 only */
        {2, 203, 300, 4, 2, 96, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 300, 517, 2, 1, 96, 0, 37, 5, BF, F32, P, 0, 0, {0}, {0}},
        {3, 129, 257, 4, 2, 96, 0, -1, -1, F16, BF, P, 1, 0, {129, 17, 0}, {257, 0, 64}},
        {2, 1, 203, 4, 2, 256, 1, -1, -1, F16, F32, P, 0, 0, {0}, {0}},
        {2, 203, 113, 4, 2, 256, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}}, /* Lq > Lk: first rows see nothing */
        {1, 777, 1000, 2, 1, 256, 0, -1, -1, BF, BF, P, 0, 1, {0}, {0}},
        /* D 128 on the wgmma kernels (compute capability 9.0): long rows (row max growing over many tiles),
         * GQA 4:1 with strided K/V, bf16 with a window over tile edges, one key, Lq > Lk with empty items */
        {1, 3000, 3000, 4, 1, 128, 1, -1, -1, F16, BF, P, 0, 1, {0}, {0}},
        {2, 2100, 1800, 4, 2, 128, 0, -1, -1, BF, F32, P, 0, 0, {0}, {0}},
        {1, 700, 900, 4, 4, 128, 0, 200, 130, BF, F16, P, 0, 0, {0}, {0}},
        {3, 130, 1, 4, 2, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {2, 1000, 300, 8, 8, 128, 1, -1, -1, F16, F32, P, 0, 1, {0}, {0}},
        /* head dims 32 (laid out as 64), 80 (as 128), 160 (as 192) and 192 on the mma.sync kernel: causal with
         * Lq < Lk and Lq > Lk, windows, varlen with empty sequences, strided K/V, one query (FP16/BF16 only) */
        {2, 203, 300, 4, 2, 32, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 300, 517, 2, 1, 32, 0, 37, 5, BF, F32, P, 0, 0, {0}, {0}},
        {3, 129, 257, 4, 2, 32, 0, -1, -1, F16, BF, P, 1, 0, {129, 17, 0}, {257, 0, 64}},
        {1, 1000, 1000, 4, 1, 32, 1, -1, -1, F16, F16, P, 0, 1, {0}, {0}},
        {2, 203, 113, 4, 2, 80, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 777, 1000, 2, 1, 80, 0, -1, -1, BF, BF, P, 0, 1, {0}, {0}},
        {3, 129, 257, 4, 2, 80, 0, -1, -1, F16, F32, P, 1, 0, {129, 17, 0}, {257, 0, 64}},
        {2, 1, 203, 4, 2, 80, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        {1, 300, 517, 2, 1, 80, 0, 37, 5, F16, F16, P, 0, 0, {0}, {0}},
        {2, 203, 300, 4, 2, 160, 1, -1, -1, F16, F32, P, 0, 0, {0}, {0}},
        {1, 300, 517, 2, 1, 160, 0, 37, 5, BF, BF, P, 0, 0, {0}, {0}},
        {3, 129, 257, 4, 2, 160, 0, -1, -1, F16, F16, P, 1, 0, {129, 17, 0}, {257, 0, 64}},
        {2, 203, 113, 4, 2, 160, 1, -1, -1, BF, F32, P, 0, 1, {0}, {0}},
        {2, 113, 203, 4, 1, 192, 1, -1, -1, BF, F16, P, 0, 0, {0}, {0}},
        {1, 1000, 1000, 2, 2, 192, 1, -1, -1, F16, F16, P, 0, 1, {0}, {0}},
        {2, 203, 113, 4, 2, 192, 1, -1, -1, F16, F32, P, 0, 0, {0}, {0}},
        {3, 129, 257, 4, 2, 192, 0, 37, 5, BF, F32, P, 1, 0, {129, 17, 0}, {257, 0, 64}},
        {2, 1, 203, 4, 2, 192, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}},
        /* softcap and ALiBi ([H] and [B, H]; FlashAttention's bottom-right alignment |i + Lk - Lq - j|): causal
         * with Lq < Lk and Lq > Lk, windows, varlen (per-sequence Lq, Lk), GQA, every head dim; D 128 and the
         * other wgmma head dims run the mma.sync kernel when a modifier is given */
        {2, 113, 203, 4, 2, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 0.f, 1},
        {2, 203, 113, 4, 2, 64, 1, -1, -1, BF, F32, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 0.f, 2},
        {1, 300, 517, 4, 1, 96, 0, 37, 5, F16, F32, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 0.f, 1},
        {2, 777, 1000, 4, 2, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 30.f, 0},
        {2, 203, 300, 4, 2, 256, 1, -1, -1, BF, BF, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 5.f, 2},
        {3, 129, 257, 4, 2, 80, 0, -1, -1, F16, F16, P, 1, 0, {129, 17, 0}, {257, 0, 64}, 0, 0, 0, 0, 1.5f, 2},
        {4, 203, 203, 4, 2, 128, 1, -1, -1, F16, F16, P, 1, 0, {113, 0, 203, 1}, {113, 17, 150, 1}, 0, 0, 0, 0, 0.f, 2},
        {1, 1000, 1000, 2, 2, 160, 1, -1, -1, F16, F16, P, 0, 1, {0}, {0}, 0, 0, 0, 0, 2.f, 1},
        {2, 1, 203, 4, 2, 192, 1, -1, -1, F16, F32, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 0.f, 2},
        {1, 203, 113, 2, 1, 32, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 30.f, 1},
        {1, 700, 900, 4, 4, 128, 0, 200, 130, BF, F16, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 10.f, 2},
        {1, 2048, 2048, 2, 1, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 0.f, 1},
        {2, 640, 1111, 8, 2, 64, 0, -1, -1, F16, BF, P, 0, 0, {0}, {0}, 0, 0, 0, 0, 50.f, 0},
    };
    /* Block-sparse (--bs, with --int8 at INT8): vs the FP64 oracle with the mask; tails of L off the tiles, GQA,
     * causal with Lq < Lk and Lq > Lk, windows, zero / full / random / shared maps, query blocks with no key,
     * mask blocks of several tiles; the all-ones map must match the dense kernel. Shapes the kernels do
     * not take (blocks off 128 x tile, varlen, INT8 off D 128) must be refused with a message. */
    const int RND = BM_RANDOM, ZERO = BM_ZERO, ONES = BM_ONES, SHE = BM_RANDOM_SHARED_EMPTY, WG = BM_WINDOW_GLOBAL;
    tcase bs_small[] = {
        {1, 300, 400, 2, 1, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, RND, 50},
        {1, 400, 300, 2, 2, 128, 1, -1, -1, F16, F32, P, 0, 0, {0}, {0}, 256, 128, SHE, 50},
        {1, 200, 300, 2, 2, 128, 0, -1, -1, BF, BF, P, 0, 0, {0}, {0}, 128, 128, ZERO, 0},
        {1, 260, 260, 2, 1, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, ONES, 100},
        {1, 203, 300, 2, 2, 256, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 64, RND, 50},
        {1, 150, 200, 2, 2, 64, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, WG, 0},
        {1, 130, 4500, 2, 1, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, RND, 30}, /* 36 key tiles: past 32 */
        {1, 300, 300, 2, 2, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 64, 128, RND, 50}, /* refused: bq 64 */
    };
    tcase bs_full[] = {
        /* items over more than 32 key tiles (a producer walks the mask 32 tiles at a time): 71 tiles; a causal
         * left window whose ranges start inside a 32-tile word, 3 tiles per key block; D 256's 64-key tiles */
        {1, 400, 9000, 2, 1, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, RND, 15},
        {1, 600, 9000, 2, 2, 128, 1, 6000, -1, BF, F16, P, 0, 0, {0}, {0}, 128, 384, RND, 40},
        {1, 256, 5000, 2, 1, 256, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 192, RND, 30},
        {1, 1000, 1000, 4, 2, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, RND, 10},
        {2, 777, 1500, 4, 1, 128, 1, -1, -1, BF, F32, P, 0, 0, {0}, {0}, 128, 256, RND, 30},
        {1, 1500, 700, 4, 2, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 256, 128, SHE, 50}, /* Lq > Lk, empty rows */
        {1, 513, 513, 2, 2, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, ZERO, 0},
        {1, 1000, 1300, 4, 2, 128, 0, -1, -1, F16, F32, P, 0, 0, {0}, {0}, 128, 128, ONES, 100},
        {1, 2000, 2000, 4, 1, 128, 1, -1, -1, F16, BF, P, 0, 0, {0}, {0}, 128, 128, WG, 0},
        {3, 520, 390, 16, 4, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 384, RND, 40}, /* 3 tiles per key block */
        {1, 3000, 3000, 4, 2, 128, 0, -1, -1, BF, BF, P, 0, 0, {0}, {0}, 128, 128, RND, 10},
        {2, 1000, 300, 8, 8, 128, 1, -1, -1, F16, F32, P, 0, 1, {0}, {0}, 128, 128, RND, 20},  /* strided K/V */
        {2, 1, 203, 4, 2, 128, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, RND, 50},
        {3, 130, 1, 4, 2, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, RND, 50},
        {1, 700, 900, 4, 4, 128, 0, 200, 130, BF, F16, P, 0, 0, {0}, {0}, 128, 128, RND, 60}, /* window */
        {2, 700, 900, 4, 2, 64, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 128, RND, 25},
        {1, 300, 517, 2, 1, 96, 0, 37, 5, BF, F32, P, 0, 0, {0}, {0}, 128, 128, RND, 60},
        {2, 203, 300, 4, 2, 256, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 64, RND, 50},
        {1, 777, 1000, 2, 1, 256, 0, -1, -1, BF, BF, P, 0, 1, {0}, {0}, 256, 192, SHE, 40},
        {1, 300, 700, 2, 1, 256, 1, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 64, ONES, 100},
        /* refused: bq 64; bk 64 at D 128; varlen */
        {1, 300, 300, 2, 2, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 64, 128, RND, 50},
        {1, 300, 300, 2, 2, 128, 0, -1, -1, F16, F16, P, 0, 0, {0}, {0}, 128, 64, RND, 50},
        {3, 129, 257, 2, 2, 128, 0, -1, -1, BF, F16, P, 1, 0, {129, 17, 0}, {257, 0, 64}, 128, 128, RND, 50},
    };
    tcase *cases = bs ? (small ? bs_small : bs_full) : small ? small_cases : full_cases;
    int n = bs ? (small ? (int)(sizeof bs_small / sizeof *bs_small) : (int)(sizeof bs_full / sizeof *bs_full))
               : small ? (int)(sizeof small_cases / sizeof *small_cases)
                       : (int)(sizeof full_cases / sizeof *full_cases);
    int fails = 0;
    for (int i = 0; i < n; i++) fails += run_case(gpu, gpu_alt, cpu, &cases[i], stream);
    if (bs) {
    } else if (int8) { /* the quantization pass, bitwise against the CPU, in both kernels' layouts */
        const qcase qsmall[] = {{1, 203, 300, 2, 1, 128, F16, 0, 0}, {1, 17, 700, 2, 2, 64, BF, 0, 1}, {2, 130, 300, 4, 2, 128, F16, 0, 0, 1},
                                {1, 203, 300, 2, 1, 128, F16, 0, 0, 0, 1}};
        const qcase qfull[] = {
            {2, 203, 1100, 4, 2, 128, F16, 0, 0}, {1, 17, 113, 2, 1, 64, BF, 0, 0},  {3, 130, 600, 6, 3, 128, BF, 1, 0},
            {1, 64, 700, 2, 2, 64, BF, 0, 1},     {1, 1, 2500, 4, 1, 128, BF, 0, 1}, {2, 300, 1, 2, 2, 128, F16, 0, 0},
            {1, 64, 700, 2, 1, 64, BF, 0, 2},     {2, 130, 300, 4, 2, 128, F16, 0, 0, 1}, {1, 200, 500, 6, 3, 64, BF, 0, 0, 1},
            {2, 1, 700, 4, 4, 128, BF, 1, 0, 1},
            /* precision INT4: 4-bit Q/K codes, both layouts, strided K/V, one query, Lq > Lk */
            {2, 203, 1100, 4, 2, 128, F16, 0, 0, 0, 1}, {1, 64, 700, 2, 2, 64, BF, 0, 1, 0, 1}, {3, 130, 600, 6, 3, 128, BF, 1, 0, 0, 1},
            {2, 1, 700, 4, 4, 128, BF, 1, 0, 0, 1},     {2, 300, 1, 2, 2, 128, F16, 0, 0, 0, 1},
        };
        const qcase *qc = small ? qsmall : qfull;
        const int nqc = small ? (int)(sizeof qsmall / sizeof *qsmall) : (int)(sizeof qfull / sizeof *qfull);
        struct cudaDeviceProp prop;
        CK(cudaGetDeviceProperties(&prop, 0));
        const int wg = prop.major == 9 && prop.minor == 0; /* the default context's INT8 kernel at D 128 */
        for (int i = 0; i < nqc; i++) {
            fails += check_i8_quant(gpu, wg, cpu, &qc[i], stream);
            if (gpu_alt) fails += check_i8_quant(gpu_alt, 0, cpu, &qc[i], stream);
        }
        fails += check_i8_calibrated(gpu, cpu, 128, F16, stream);
        if (!small) fails += check_i8_calibrated(gpu, cpu, 64, BF, stream);
        if (gpu_alt && !small) fails += check_i8_calibrated(gpu_alt, cpu, 128, BF, stream);
        for (int causal = 0; causal < 2; causal++) {
            fails += check_i8_vfix(gpu, cpu, 128, causal, 0, stream);
            if (!small) fails += check_i8_vfix(gpu, cpu, 64, causal, 0, stream);
            if (wg) fails += check_i8_vfix(gpu, cpu, 128, causal, 1, stream);
            if (gpu_alt && !small) fails += check_i8_vfix(gpu_alt, cpu, 128, causal, 0, stream);
        }
    } else {
        fails += two_streams(gpu);
    }
    /* Unsupported combinations must be refused with a message. */
    {
        qattn_params p;
        qattn_params_init(&p);
        p.batch = 1, p.seqlen_q = p.seqlen_k = 8, p.n_heads = p.n_kv_heads = 1;
        p.qkv_dtype = F16, p.o_dtype = F16;
        /* distinct fake addresses (never dereferenced): the overlap check must not be what refuses */
        p.q = (void *)(uintptr_t)0x10000, p.k = (void *)(uintptr_t)0x20000, p.v = (void *)(uintptr_t)0x30000;
        p.o = (void *)(uintptr_t)0x40000;
        /* head dims the CPU runs but the GPU does not: refused naming the supported ones */
        const int odd_dims[] = {40, 48, 56, 72, 88, 104, 112, 120, 136, 144, 176, 208, 224, 240, 248};
        for (size_t i = 0; i < sizeof odd_dims / sizeof *odd_dims; i++) {
            p.head_dim = odd_dims[i];
            qattn_params_set_contiguous(&p);
            qattn_status sup = qattn_supports(gpu, &p), fwd = qattn_forward(gpu, &p);
            const int ok = sup == QATTN_ERR_UNSUPPORTED && fwd == QATTN_ERR_UNSUPPORTED && strstr(qattn_ctx_last_error(gpu), "head_dim 32, 64, 80") != NULL;
            printf("%s forward(head_dim %d) -> %s: %s\n", ok ? "ok  " : "FAIL", odd_dims[i], qattn_status_str(fwd), qattn_ctx_last_error(gpu));
            fails += !ok;
        }
        /* softcap and ALiBi at INT8: refused, naming the modifier */
        p.head_dim = 64, p.precision = QATTN_PRECISION_INT8;
        qattn_params_set_contiguous(&p);
        for (int m = 0; m < 2; m++) {
            p.softcap = m == 0 ? 30.0f : 0.0f;
            p.alibi_slopes = m == 1 ? (const float *)(uintptr_t)0x50000 : NULL;
            qattn_status sup = qattn_supports(gpu, &p), fwd = qattn_forward(gpu, &p);
            const int ok = sup == QATTN_ERR_UNSUPPORTED && fwd == QATTN_ERR_UNSUPPORTED &&
                           strstr(qattn_ctx_last_error(gpu), m == 0 ? "softcap" : "alibi_slopes") != NULL;
            printf("%s forward(int8, %s) -> %s: %s\n", ok ? "ok  " : "FAIL", m == 0 ? "softcap" : "alibi_slopes", qattn_status_str(fwd),
                   qattn_ctx_last_error(gpu));
            fails += !ok;
        }
        p.softcap = 0.0f, p.alibi_slopes = NULL, p.precision = QATTN_PRECISION_AUTO;
        p.head_dim = 64, p.qkv_dtype = F32, p.o_dtype = F32;
        qattn_params_set_contiguous(&p);
        s = qattn_supports(gpu, &p);
        printf("%s supports(f32 inputs) -> %s: %s\n", s == QATTN_ERR_UNSUPPORTED ? "ok  " : "FAIL", qattn_status_str(s), qattn_ctx_last_error(gpu));
        fails += s != QATTN_ERR_UNSUPPORTED;
    }
    fails += refuse_small_head_dims(gpu, cpu);
    printf("%s: %d failure(s)\n", fails ? "FAILED" : "PASSED", fails);
    cudaStreamDestroy(stream);
    qattn_ctx_destroy(gpu);
    if (gpu_alt) qattn_ctx_destroy(gpu_alt);
    qattn_ctx_destroy(cpu);
    return fails ? 1 : 0;
}
