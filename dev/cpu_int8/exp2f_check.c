/* Exhaustive checks over every float x <= 0 (-0 .. -inf): qattn_exp2f (src/quant/lowp.h) against
 * libm's exp2f (equal on glibc 2.28+, whose algorithm it writes out) and against the AVX-512 kernel's
 * 8-lane exp2f_v8, and the P codes' polynomial qattn_exp2_poly against the kernel's exp2_poly16 (the
 * kernel file is included, so its static functions are reachable).
 * Build: cc -O2 -std=gnu11 -DQATTN_HAVE_X86 -Iinclude -Isrc -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mavx2 \
 *          dev/cpu_int8/exp2f_check.c build/libqattn.a -lpthread -lm -o build/exp2f_check
 * Run:   build/exp2f_check      (about 30 s) */
#include "cpu/x86/int8_avx512.c"

#include <stdio.h>

int main(void) {
    uint64_t n = 0, bad_libm = 0, bad_vec = 0, bad_poly = 0;
    _Alignas(64) float xs[16], got[16];
    int kp = 0;
    int k = 0;
    for (uint64_t u = 0x80000000u; u <= 0xff800000u; u++) {
        uint32_t b = (uint32_t)u;
        float x;
        memcpy(&x, &b, 4);
        float ref = qattn_exp2f(x), lib = exp2f(x);
        if (memcmp(&ref, &lib, 4) && bad_libm++ < 5) printf("x %a: qattn_exp2f %a, libm %a\n", x, ref, lib);
        {
            static _Alignas(64) float px[16], pg[16];
            px[kp++] = x;
            if (kp == 16 || u == 0xff800000u) {
                _mm512_store_ps(pg, exp2_poly16(_mm512_load_ps(px)));
                for (int i = 0; i < kp; i++) {
                    float r = qattn_exp2_poly(px[i]);
                    if (memcmp(&r, &pg[i], 4) && bad_poly++ < 5) printf("x %a: qattn_exp2_poly %a, exp2_poly16 %a\n", px[i], r, pg[i]);
                }
                kp = 0;
            }
        }
        xs[k++] = x;
        if (k == 8 || u == 0xff800000u) {
            _mm256_store_ps(got, exp2f_v8(_mm256_load_ps(xs)));
            for (int i = 0; i < k; i++) {
                float r = qattn_exp2f(xs[i]);
                if (memcmp(&r, &got[i], 4) && bad_vec++ < 5) printf("x %a: qattn_exp2f %a, exp2f_v8 %a\n", xs[i], r, got[i]);
            }
            k = 0;
        }
        n++;
    }
    printf("%llu values x <= 0: %llu differ from libm exp2f, %llu between the scalar and the 8-lane version; exp2_poly16 vs "
           "qattn_exp2_poly: %llu differ\n",
           (unsigned long long)n, (unsigned long long)bad_libm, (unsigned long long)bad_vec, (unsigned long long)bad_poly);
    return bad_libm || bad_vec || bad_poly;
}
