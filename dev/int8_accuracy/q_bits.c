/* How much of the default scheme's error on sharp heads comes from Q's 8-bit codes: the baseline
 * "dequantize the scheme's codes, then FP64 attention" with Q at 8 bits (the shipped codes), with
 * Q at 16 bits (per-token scale amax / 32767 after the same transforms: what an int16-Q product,
 * e.g. the AVX2 qk16 kernel fed wider codes, would see) and with Q unrounded; K, V as shipped.
 * Also Q at 10 bits (codes within ±511): |S| <= 256 * 511 * 127 < 2^24 keeps (float)S exact with the same
 * int16 operands of qk16 (vpmaddwd; AVX-VNNI's vpdpwssd for the 8-bit tier), so it is the cheap variant.
 * Inputs: qattn accuracy's "heads" (Q/K of head h scaled 0.3 .. 3, V 0.01 .. 100) and N(0,1).
 * Build: cc -O2 -std=gnu11 -Iinclude -Isrc dev/int8_accuracy/q_bits.c build/libqattn.a -lpthread -lm -o build/q_bits
 * Run:   build/q_bits [L H HK D] */
#include "quant/lowp.h"

#include <stdio.h>
#include <stdlib.h>

static uint64_t st = 7;
static double unif(void) { st = st * 6364136223846793005ull + 1442695040888963407ull; return ((st >> 11) + 0.5) / 9007199254740992.0; }
static float gauss(void) { return (float)(sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif())); }

static double rel_l1(const double *a, const double *r, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += fabs(a[i] - r[i]), den += fabs(r[i]);
    return num / den;
}

int main(int argc, char **argv) {
    int64_t L = argc > 1 ? atoll(argv[1]) : 1024;
    int H = argc > 2 ? atoi(argv[2]) : 8, HK = argc > 3 ? atoi(argv[3]) : 2, D = argc > 4 ? atoi(argv[4]) : 128, G = H / HK;
    qattn_ctx *ctx;
    if (qattn_ctx_create(&ctx, NULL) != QATTN_OK) return 1;
    size_t nq = (size_t)L * H * D, nk = (size_t)L * HK * D;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *qd = malloc(nq * 4), *kd = malloc(nk * 4), *vd = malloc(nk * 4);
    double *ref = malloc(nq * 8), *o = malloc(nq * 8);
    int8_t *cq = malloc(nq), *ck = malloc(nk), *cv = malloc(nk);
    float *sq = malloc((size_t)L * H * 4), *sk = malloc((size_t)L * HK * 4), *sv = malloc((size_t)L * HK * 4);
    float *mk = malloc((size_t)HK * D * 4), *mv = malloc((size_t)HK * D * 4), *fac = malloc((size_t)HK * D * 4);
    for (int input = 0; input < 2; input++) {
        for (size_t i = 0; i < nq; i++) q[i] = gauss();
        for (size_t i = 0; i < nk; i++) k[i] = gauss(), v[i] = gauss();
        if (input == 1) /* "heads": mixed scales, the sharpest head with V x100 */
            for (int64_t t = 0; t < L; t++) {
                for (int h = 0; h < H; h++)
                    for (int c = 0; c < D; c++) q[(t * H + h) * D + c] *= 0.3f * powf(10.0f, H > 1 ? (float)h / (float)(H - 1) : 0.0f);
                for (int g = 0; g < HK; g++) {
                    float x = HK > 1 ? (float)g / (float)(HK - 1) : 0.0f;
                    for (int c = 0; c < D; c++) k[(t * HK + g) * D + c] *= 0.3f * powf(10.0f, x), v[(t * HK + g) * D + c] *= 0.01f * powf(10.0f, 4 * x);
                }
            }
        qattn_params p;
        qattn_params_init(&p);
        p.batch = 1, p.seqlen_q = p.seqlen_k = L, p.n_heads = H, p.n_kv_heads = HK, p.head_dim = D;
        qattn_params_set_contiguous(&p);
        p.q = q, p.k = k, p.v = v, p.o = qd;
        qattn_oracle_f64(ctx, &p, ref, NULL);
        qattn_int8_tensor tq = {cq, sq, NULL, QATTN_QUANT_PER_TOKEN, 1, L * H * D, H * D, D, 0};
        qattn_int8_tensor tk = {ck, sk, mk, QATTN_QUANT_PER_TOKEN, 1, L * HK * D, HK * D, D, 0};
        qattn_int8_tensor tv = {cv, sv, mv, QATTN_QUANT_PER_TOKEN, 1, L * HK * D, HK * D, D, 0};
        if (qattn_quantize_qk_smoothed(ctx, &p, QATTN_QK_SMOOTH_MAX_EXP, 0, 1, NULL, &tq, &tk, fac) != QATTN_OK ||
            qattn_quantize_int8(ctx, &p, QATTN_TENSOR_V, &tv) != QATTN_OK)
            return fprintf(stderr, "%s\n", qattn_ctx_last_error(ctx)), 1;
        qattn_dequantize_int8(ctx, &p, QATTN_TENSOR_K, &tk, kd);
        qattn_dequantize_int8(ctx, &p, QATTN_TENSOR_V, &tv, vd);
        printf("%s, L %lld H %d HK %d D %d: baseline rel L1 (codes dequantized, FP64 attention)\n", input ? "heads" : "normal", (long long)L, H, HK, D);
        static const int widths[4] = {8, 10, 16, 0}; /* 0: unrounded */
        for (int wi = 0; wi < 4; wi++) {
            int bits = widths[wi];
            float top = bits == 10 ? 511.0f : 32767.0f;
            if (bits == 8)
                qattn_dequantize_int8(ctx, &p, QATTN_TENSOR_Q, &tq, qd);
            else
                for (int64_t r = 0; r < L * H; r++) { /* the transformed row, rounded to `bits` or not at all */
                    float *y = qd + r * D;
                    const float *f = fac + (r % H / G) * D;
                    for (int c = 0; c < D; c++) y[c] = q[r * D + c] * f[c];
                    float amax = qattn_rotate_row(y, D, 1.0f / (float)qattn_rotate_block(D)) * (float)qattn_rotate_block(D);
                    for (int c = 0; c < D; c++) y[c] *= (float)qattn_rotate_block(D); /* Q's rows: H(q f), the codes' scale carries n */
                    if (bits && amax > 0)
                        for (int c = 0; c < D; c++) y[c] = nearbyintf(y[c] * (top / amax)) * (amax / top);
                }
            qattn_params pb = p;
            pb.q = qd, pb.k = kd, pb.v = vd;
            qattn_oracle_f64(ctx, &pb, o, NULL);
            printf("  Q %-10s K, V 8-bit: %.3e\n", bits == 8 ? "8-bit" : bits == 10 ? "10-bit" : bits == 16 ? "16-bit" : "unrounded",
                   rel_l1(o, ref, nq));
        }
    }
    return 0;
}
