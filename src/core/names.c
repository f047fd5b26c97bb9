/* The one table per enum of the names users see (flags, environment variables, JSON, messages).
 * Spellings are the CLI's and the Python binding's: dtypes read fp32/fp16/bf16/int8 like the
 * precisions, not the f16/i8 of the C enum names. */
#include "core/names.h"

#include "qattn.h"

#include <stdio.h>
#include <string.h>

typedef struct name_entry {
    const char *name;
    int32_t value;
} name_entry;

#define COUNT(table) (sizeof(table) / sizeof(table)[0])

static const name_entry dtype_names[] = {
    {"fp32", QATTN_DTYPE_F32}, {"fp16", QATTN_DTYPE_F16}, {"bf16", QATTN_DTYPE_BF16}, {"int8", QATTN_DTYPE_I8}};
static const name_entry precision_names[] = {
    {"fp32", QATTN_PRECISION_FP32}, {"fp16", QATTN_PRECISION_FP16},         {"bf16", QATTN_PRECISION_BF16},
    {"int8", QATTN_PRECISION_INT8}, {"int4", QATTN_PRECISION_INT4},         {"fp8_e4m3", QATTN_PRECISION_FP8_E4M3},
    {"fp8_e5m2", QATTN_PRECISION_FP8_E5M2}};
static const name_entry int8_scheme_names[] = {{"qattn", QATTN_INT8_DEFAULT}, {"intfa", QATTN_INT8_INTFA}, {"sage", QATTN_INT8_SAGE}};
static const name_entry backend_names[] = {{"cpu", QATTN_BACKEND_CPU}, {"cuda", QATTN_BACKEND_CUDA}};
static const name_entry isa_names[] = {{"ref", QATTN_ISA_REF}, {"avx2", QATTN_ISA_AVX2}, {"avxvnni", QATTN_ISA_AVXVNNI}, {"avx512", QATTN_ISA_AVX512}};
static const name_entry granularity_names[] = {
    {"token", QATTN_QUANT_PER_TOKEN}, {"block", QATTN_QUANT_PER_BLOCK}, {"head", QATTN_QUANT_PER_HEAD}, {"channel", QATTN_QUANT_PER_CHANNEL}};

static const char *name_of(const name_entry *table, size_t n, int32_t value) {
    for (size_t i = 0; i < n; i++)
        if (table[i].value == value) return table[i].name;
    return "unknown";
}

static int32_t value_of(const name_entry *table, size_t n, const char *name) {
    for (size_t i = 0; name && i < n; i++)
        if (!strcmp(table[i].name, name)) return table[i].value;
    return -1;
}

const char *qattn_dtype_name(int32_t dtype) { return name_of(dtype_names, COUNT(dtype_names), dtype); }
int32_t qattn_dtype_from_name(const char *name) { return value_of(dtype_names, COUNT(dtype_names), name); }

const char *qattn_precision_name(int32_t precision) {
    return precision == QATTN_PRECISION_AUTO ? "auto" : name_of(precision_names, COUNT(precision_names), precision);
}
int32_t qattn_precision_from_name(const char *name) { return value_of(precision_names, COUNT(precision_names), name); }

const char *qattn_int8_scheme_name(int32_t scheme) { return name_of(int8_scheme_names, COUNT(int8_scheme_names), scheme); }
int32_t qattn_int8_scheme_from_name(const char *name) { return value_of(int8_scheme_names, COUNT(int8_scheme_names), name); }

const char *qattn_backend_name(int32_t backend) {
    return backend == QATTN_BACKEND_AUTO ? "auto" : name_of(backend_names, COUNT(backend_names), backend);
}
int32_t qattn_backend_from_name(const char *name) { return value_of(backend_names, COUNT(backend_names), name); }

const char *qattn_isa_name(int32_t isa) { return isa == QATTN_ISA_AUTO ? "auto" : name_of(isa_names, COUNT(isa_names), isa); }
int32_t qattn_isa_from_name(const char *name) { return value_of(isa_names, COUNT(isa_names), name); }

const char *qattn_granularity_name(int32_t granularity) { return name_of(granularity_names, COUNT(granularity_names), granularity); }
int32_t qattn_granularity_from_name(const char *name) { return value_of(granularity_names, COUNT(granularity_names), name); }

void qattn_isa_name_list(const char *sep, char *buf, size_t len) {
    size_t at = 0;
    if (len) buf[0] = '\0';
    for (size_t i = 0; i < COUNT(isa_names) && at < len; i++) {
        int n = snprintf(buf + at, len - at, "%s%s", i ? sep : "", isa_names[i].name);
        if (n > 0) at += (size_t)n;
    }
}
