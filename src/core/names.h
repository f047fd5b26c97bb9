/* The names of qattn's enum values (dtype, precision, INT8 scheme, backend, ISA, quantization
 * granularity), one table each in src/core/names.c: the library's messages, the QATTN_ISA /
 * QATTN_BACKEND environment variables and the CLI's flags and JSON all spell them from here.
 * python/qattn/_lib.py mirrors the same spellings. */
#ifndef QATTN_CORE_NAMES_H
#define QATTN_CORE_NAMES_H

#include <stddef.h>
#include <stdint.h>

/* X_name: the name of an enum value ("auto" for the AUTO values, "unknown" for a value outside
 * the enum). X_from_name: the value of a name, -1 if it names none; "auto" is not parsed (an
 * absent flag or an empty variable means AUTO). */
const char *qattn_dtype_name(int32_t dtype); /* fp32 fp16 bf16 int8 */
int32_t qattn_dtype_from_name(const char *name);
const char *qattn_precision_name(int32_t precision); /* fp32 fp16 bf16 int8 int4 fp8_e4m3 fp8_e5m2 */
int32_t qattn_precision_from_name(const char *name);
const char *qattn_int8_scheme_name(int32_t scheme); /* qattn intfa sage */
int32_t qattn_int8_scheme_from_name(const char *name);
const char *qattn_backend_name(int32_t backend); /* cpu cuda */
int32_t qattn_backend_from_name(const char *name);
const char *qattn_isa_name(int32_t isa); /* ref avx2 avxvnni avx512 */
int32_t qattn_isa_from_name(const char *name);
const char *qattn_granularity_name(int32_t granularity); /* token block head channel */
int32_t qattn_granularity_from_name(const char *name);

/* Every ISA name joined by sep ("ref|avx2|avxvnni|avx512" with sep "|"), for help texts and
 * messages; truncated to fit len. */
void qattn_isa_name_list(const char *sep, char *buf, size_t len);

#endif
