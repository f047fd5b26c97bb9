/* Which x86 ISA extensions this CPU and OS can run (src/core/cpu_features.c): the facts the context
 * chooses a kernel tier from, and kernels pick sub-variants from. */
#ifndef QATTN_CORE_CPU_FEATURES_H
#define QATTN_CORE_CPU_FEATURES_H

#include <stdbool.h>
#include <stddef.h>

#if defined(QATTN_HAVE_X86)
bool qattn_cpu_has_avx2(void);       /* CPUID + XGETBV */
bool qattn_cpu_has_avxvnni(void);    /* CPUID.(7,1):EAX[4] + XGETBV; check qattn_cpu_has_avx2 too */
bool qattn_cpu_has_avx512(void);     /* AVX-512 F/BW/VL/DQ + AVX512-VNNI + ZMM state + the AVX2 tier */
bool qattn_cpu_has_avx512bf16(void); /* CPUID.(7,1):EAX[5] + ZMM state */
#endif
/* The CPU features found, space-separated ("" on non-x86 builds), for qattn info. */
void qattn_cpu_feature_list(char *buf, size_t len);

#endif
