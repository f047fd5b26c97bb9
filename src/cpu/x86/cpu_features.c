/* Run-time x86 feature detection: AVX2, FMA, F16C (and AVX-VNNI) in CPUID *and* the YMM state enabled
 * by the OS (XGETBV), so a kernel is only chosen where it can run. */
#include "qattn_internal.h"

#include <cpuid.h>

static unsigned long long read_xcr0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

bool qattn_cpu_has_avx2(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
    if (!(osxsave && fma && f16c && avx)) return false;
    if ((read_xcr0() & 0x6) != 0x6) return false; /* XMM and YMM state saved by the OS */
    if (__get_cpuid_max(0, NULL) < 7) return false;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 5)) != 0; /* AVX2 */
}

/* AVX-VNNI (the VEX-encoded vpdpbusd / vpdpwssd on 256-bit registers): CPUID leaf 7 subleaf 1,
 * EAX bit 4, with the YMM state enabled by the OS. Intel Alder Lake, Sapphire Rapids and later,
 * AMD Zen 5 (Zen 4 has only the EVEX AVX512-VNNI form, not this one), not Zen 3. Callers check
 * qattn_cpu_has_avx2 too: the avxvnni kernels also use AVX2, FMA and F16C. */
bool qattn_cpu_has_avxvnni(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    if (!(c & (1u << 27))) return false;               /* OSXSAVE: XGETBV is usable */
    if ((read_xcr0() & 0x6) != 0x6) return false;      /* XMM and YMM state saved by the OS */
    if (__get_cpuid_max(0, NULL) < 7) return false;
    __cpuid_count(7, 0, a, b, c, d);
    if (a < 1) return false;                           /* no subleaf 1 */
    __cpuid_count(7, 1, a, b, c, d);
    return (a & (1u << 4)) != 0;                       /* AVX-VNNI */
}
