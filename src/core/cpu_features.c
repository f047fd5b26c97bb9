/* Run-time x86 feature detection: AVX2, FMA, F16C, AVX-VNNI and AVX-512 (F/BW/VL/DQ, VNNI, BF16) in
 * CPUID *and* the register state enabled by the OS (XGETBV), so a kernel is only chosen where it can
 * run. qattn_cpu_feature_list names what was found (qattn info prints it). Compiled without ISA
 * flags: it must run on any x86-64 CPU, including those it then rules out. */
#include "core/cpu_features.h"

#include <stdio.h>
#include <string.h>

#if defined(QATTN_HAVE_X86)
#include <cpuid.h>

typedef struct cpu_bits {
    bool avx2, fma, f16c, avxvnni;       /* avx2 also needs the OS to save XMM+YMM */
    bool avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16;
    bool os_ymm, os_zmm;                 /* XCR0 bits 1,2 and 5,6,7 (opmask, ZMM_Hi256, Hi16_ZMM) */
} cpu_bits;

static unsigned long long read_xcr0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

static cpu_bits read_bits(void) {
    cpu_bits f;
    memset(&f, 0, sizeof f);
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    bool osxsave = c & (1u << 27), avx = c & (1u << 28);
    f.fma = c & (1u << 12);
    f.f16c = c & (1u << 29);
    if (osxsave) {
        unsigned long long xcr0 = read_xcr0();
        f.os_ymm = avx && (xcr0 & 0x6) == 0x6;
        f.os_zmm = f.os_ymm && (xcr0 & 0xe0) == 0xe0;
    }
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    unsigned int subleaves = a;
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vnni = c & (1u << 11);
    if (subleaves >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        f.avxvnni = a & (1u << 4);
        f.avx512bf16 = a & (1u << 5);
    }
    return f;
}

bool qattn_cpu_has_avx2(void) {
    cpu_bits f = read_bits();
    return f.os_ymm && f.avx2 && f.fma && f.f16c;
}

/* AVX-VNNI (the VEX-encoded vpdpbusd / vpdpwssd on 256-bit registers): CPUID leaf 7 subleaf 1,
 * EAX bit 4, with the YMM state enabled by the OS. Intel Alder Lake, Sapphire Rapids and later,
 * AMD Zen 5 (Zen 4 has only the EVEX AVX512-VNNI form, not this one), not Zen 3. Callers check
 * qattn_cpu_has_avx2 too: the avxvnni kernels also use AVX2, FMA and F16C. */
bool qattn_cpu_has_avxvnni(void) {
    cpu_bits f = read_bits();
    return f.os_ymm && f.avxvnni;
}

/* The avx512 tier: AVX-512 F/BW/VL/DQ and AVX512-VNNI with the opmask and ZMM state enabled by the
 * OS, plus everything the AVX2 tier needs (its kernels fill the slots without an AVX-512 one). */
bool qattn_cpu_has_avx512(void) {
    cpu_bits f = read_bits();
    return qattn_cpu_has_avx2() && f.os_zmm && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni;
}

bool qattn_cpu_has_avx512bf16(void) {
    cpu_bits f = read_bits();
    return f.os_zmm && f.avx512bf16;
}

void qattn_cpu_feature_list(char *buf, size_t len) {
    cpu_bits f = read_bits();
    const struct { bool on; const char *name; } all[] = {
        {f.avx2, "avx2"}, {f.fma, "fma"}, {f.f16c, "f16c"}, {f.avxvnni, "avx_vnni"}, {f.avx512f, "avx512f"},
        {f.avx512bw, "avx512bw"}, {f.avx512vl, "avx512vl"}, {f.avx512dq, "avx512dq"}, {f.avx512vnni, "avx512_vnni"},
        {f.avx512bf16, "avx512_bf16"}, {f.os_ymm, "os:ymm"}, {f.os_zmm, "os:zmm"},
    };
    size_t at = 0;
    if (len) buf[0] = '\0';
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (!all[i].on || at >= len) continue;
        int n = snprintf(buf + at, len - at, "%s%s", at ? " " : "", all[i].name);
        if (n > 0) at += (size_t)n;
    }
}

#else /* not x86: no feature to detect; only the reference tier exists */

void qattn_cpu_feature_list(char *buf, size_t len) {
    if (len) buf[0] = '\0';
}

#endif
