/* Extents of strided tensor views and the no-overlap check between outputs and inputs
 * (src/core/extent.c). */
#ifndef QATTN_CORE_EXTENT_H
#define QATTN_CORE_EXTENT_H

#include "core/context.h"

#include <stdbool.h>
#include <stdint.h>

/* The largest element index a [n0, n1, n2, d] view with strides s0, s1, s2, 1 reaches, or -1 on
 * overflow. Extents are >= 1. */
int64_t qattn_view_max_index(int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t n2, int64_t s2, int64_t d);

/* Whether a [n0, n1, n2, d] view with element strides s0, s1, s2, 1 maps distinct indices to
 * distinct elements (an output written through it never writes one element twice). */
bool qattn_view_is_injective(int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t n2, int64_t s2, int64_t d);

/* Bytes per element of a qattn_dtype. */
static inline int64_t qattn_dtype_bytes(int32_t dtype) { return dtype == QATTN_DTYPE_F32 ? 4 : dtype == QATTN_DTYPE_I8 ? 1 : 2; }

/* The bytes a tensor argument may touch, [lo, hi) as addresses (lo == hi: touches nothing). */
typedef struct qattn_extent {
    const char *name;
    uintptr_t lo, hi;
} qattn_extent;

/* The extent of a [n0, n1, n2, d] view with element strides s0, s1, s2, 1 of elem_bytes-byte
 * elements at base (an overflowing size reaches to the end of the address space). */
qattn_extent qattn_view_extent(const char *name, const void *base, int64_t elem_bytes, int64_t n0, int64_t s0, int64_t n1, int64_t s1,
                               int64_t n2, int64_t s2, int64_t d);

/* QATTN_ERR_INVALID_ARGUMENT naming the first output that overlaps an input or another output
 * (in place computation is not supported: the kernels read inputs after writing outputs). */
qattn_status qattn_check_disjoint(qattn_ctx *ctx, const char *function, const qattn_extent *outs, int n_outs, const qattn_extent *ins,
                                  int n_ins);

/* The same check for the tensors of p (o, lse against q, k, v, alibi_slopes, block_mask and each
 * other), with q/k/v
 * elements of qkv_elem_bytes bytes (1 for pre-quantized inputs). p is validated. */
qattn_status qattn_check_params_disjoint(qattn_ctx *ctx, const qattn_params *p, int64_t qkv_elem_bytes);

#endif
