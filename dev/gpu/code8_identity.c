/* The INT8 quantization pass's code rule checked on the host, for every float p with |p| <= 127 (1 + 2^-22)
 * (the largest |y * inv| the pass can form): the low byte of the bits of p + 1.5 * 2^23 (rounded to nearest
 * even, as the GPU's FADD) equals clamp(nearbyint(p), -127, 127), the CPU's code (src/quant/quant.c).
 * ~2.2e9 values, ~20 s: gcc -O2 dev/gpu/code8_identity.c -lm -o /tmp/code8 && /tmp/code8 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    const float lim = 127.0f * (1.0f + 0x1p-22f);
    uint64_t n = 0, bad = 0;
    for (uint32_t b = 0;; b++) {
        float p; memcpy(&p, &b, 4);
        if (!(fabsf(p) <= lim)) { if (b == 0xffffffffu) break; else continue; }
        volatile float s = p + 12582912.0f;
        float sv = s; uint32_t sb; memcpy(&sb, &sv, 4);
        int8_t got = (int8_t)(sb & 0xffu);
        float c = nearbyintf(p); c = c > 127.f ? 127.f : (c < -127.f ? -127.f : c);
        int8_t want = (int8_t)c;
        n++;
        if (got != want) { if (bad++ < 5) printf("p=%a got %d want %d\n", p, got, want); }
        if (b == 0xffffffffu) break;
    }
    printf("checked %llu values, %llu differ\n", (unsigned long long)n, (unsigned long long)bad);
    return bad != 0;
}
