/* The CPU backend's kernel binding: the kernel table of each ISA (src/ref, src/cpu/x86), which
 * api.c points a new context at (ctx->kernels). Only the table is chosen here; the ISA itself is
 * resolved by the context (src/core/context.c: options, QATTN_ISA, CPU features). */
#include "qattn_internal.h"

const qattn_cpu_kernels *qattn_cpu_kernel_table(int32_t isa) {
#if defined(QATTN_HAVE_X86)
    return isa == QATTN_ISA_AVX512    ? &qattn_kernels_avx512
           : isa == QATTN_ISA_AVXVNNI ? &qattn_kernels_avxvnni
           : isa == QATTN_ISA_AVX2    ? &qattn_kernels_avx2
                                      : &qattn_kernels_ref;
#else
    (void)isa;
    return &qattn_kernels_ref;
#endif
}
