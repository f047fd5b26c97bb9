/* Overflow-checked int64 arithmetic for sizes and offsets. */
#ifndef QATTN_CORE_CHECKED_H
#define QATTN_CORE_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

/* Overflow-checked int64 arithmetic, the one place for it: true and *out = a op b when the
 * result fits, false (and *out unspecified) when it overflows. */
static inline bool qattn_mul_i64(int64_t a, int64_t b, int64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool qattn_add_i64(int64_t a, int64_t b, int64_t *out) { return !__builtin_add_overflow(a, b, out); }

#endif
