#!/usr/bin/env python3
"""Instrument a copy of src/cuda/quant_i8.cu with a per-item timeline (dev only, never shipped).

    python3 dev/gpu/quant_trace.py SRC DST

writes DST: SRC whose fused kernel records, per work item (ticket), its kind (0 Q ranges, 1 statistics,
2 K/V tiles, 3 Q rows), SM, and %globaltimer at the start, after its wait (0 if none) and at the end,
into a device array that `qattn_dev_qtrace` copies out (dev/gpu/quant_timeline.py reads it)."""
import re
import sys

src, dst = sys.argv[1], sys.argv[2]
s = open(src).read()

defs = '''
struct qtrace_rec { int item, kind, sm, pad; unsigned long long t0, t1, t2; };
__device__ qtrace_rec g_qtrace[1 << 16];
__shared__ unsigned long long s_qt1;
__shared__ int s_qkind, s_item;
__device__ __forceinline__ unsigned long long gtime() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
#define QKIND(k) do { if (threadIdx.x == 0) s_qkind = (k); } while (0)
#define QT1() do { if (threadIdx.x == 0) s_qt1 = gtime(); } while (0)
'''
anchor = "constexpr int QK_MAX_EXP"
i = s.index("\n", s.index(anchor)) + 1
s = s[:i] + defs + s[i:]

def sub(old, new, count=1):
    global s
    assert s.count(old) >= 1, old
    s = s.replace(old, new, count)

# kinds
sub("    constexpr int G = D / 8, RG = NT / G, U = 4;\n", "    constexpr int G = D / 8, RG = NT / G, U = 4;\n    QKIND(0);\n")
if "void stats_q_part" in s:  # the pass before per-bh Q rows
    sub("    if (blk >= nst) {\n", "    QKIND(blk >= nst ? 3 : 1);\n    if (blk >= nst) {\n")
    sub("                while (*rd == 0) __nanosleep(100);\n            }\n        }\n        __threadfence();\n",
        "                while (*rd == 0) __nanosleep(100);\n            }\n        }\n        QT1();\n        __threadfence();\n")
else:
    sub("void stats_part(const qattn_cuda_args &a, int blk, int nch, const i8_aux &w, unsigned char *smem) {\n",
        "void stats_part(const qattn_cuda_args &a, int blk, int nch, const i8_aux &w, unsigned char *smem) {\n    QKIND(1);\n")
    sub("void q_rows_part(const qattn_cuda_args &a, int bh, int j, int8_t *qi, float *sq, const i8_aux &w) {\n",
        "void q_rows_part(const qattn_cuda_args &a, int bh, int j, int8_t *qi, float *sq, const i8_aux &w) {\n    QKIND(3);\n")
    sub("        while (*rd == 0) __nanosleep(100);\n    }\n    __syncthreads();\n",
        "        while (*rd == 0) __nanosleep(100);\n        QT1();\n    }\n    __syncthreads();\n")
sub("        while (atomicAdd(w.qdone + bh, 0) < w.nqc) __nanosleep(100);\n",
    "        while (atomicAdd(w.qdone + bh, 0) < w.nqc) __nanosleep(100);\n    if (threadIdx.x == 0 && a.lq > 0) s_qt1 = gtime();\n")
sub("void k_part(const qattn_cuda_args &a, int bh, int tile, const i8_aux &w, int8_t *ki, float *sk, unsigned char *smem) {\n",
    "void k_part(const qattn_cuda_args &a, int bh, int tile, const i8_aux &w, int8_t *ki, float *sk, unsigned char *smem) {\n    QKIND(2);\n")
sub("                                       unsigned char *smem) {\n", "                                       unsigned char *smem) {\n    QKIND(2);\n")  # v_part
sub("        while (atomicAdd(w.ready + bh, 0) == 0) __nanosleep(200);\n",
    "        while (atomicAdd(w.ready + bh, 0) == 0) __nanosleep(200);\n    QT1();\n", -1)  # k_part and v_part

# the kernel: its body becomes a device function, the kernel records the item after it
m = re.search(r"template <int D, bool BF16>\n__global__ void __launch_bounds__\(NT, (\d)\) i8q_fused_kernel\((.*?)\) \{\n", s, re.S)
params = m.group(2)
body_start = m.end()
body_end = s.index("\n}\n", body_start) + 3
body = s[body_start:body_end]
body = body.replace("    __shared__ int s_item;\n", "")
body = body.replace("        return;\n    }\n", "        return;\n    }\n", 1)
names = [p.strip().split()[-1].lstrip("*&") for p in params.replace("\n", " ").split(",")]
kernel = ("template <int D, bool BF16>\n__device__ __forceinline__ void fused_body(" + params + ") {\n" + body +
          "template <int D, bool BF16>\n__global__ void __launch_bounds__(NT, " + m.group(1) + ") i8q_fused_kernel(" + params + ") {\n"
          "    if (threadIdx.x == 0) s_qt1 = 0ull;\n"
          "    const unsigned long long t0 = gtime();\n"
          "    fused_body<D, BF16>(" + ", ".join(names) + ");\n"
          "    __syncthreads();\n"
          "    if (threadIdx.x == 0 && s_item < (1 << 16)) {\n"
          "        unsigned sm;\n        asm volatile(\"mov.u32 %0, %%smid;\" : \"=r\"(sm));\n"
          "        qtrace_rec r;\n        r.item = s_item, r.kind = s_qkind, r.sm = (int)sm, r.pad = 0, r.t0 = t0, r.t1 = s_qt1, r.t2 = gtime();\n"
          "        g_qtrace[s_item] = r;\n    }\n}\n")
s = s[:m.start()] + kernel + s[body_end:]

s += '''
extern "C" __attribute__((visibility("default"))) int qattn_dev_qtrace(void *dst, int n) {
    cudaDeviceSynchronize();
    return (int)cudaMemcpyFromSymbol(dst, g_qtrace, (size_t)n * sizeof(qtrace_rec));
}
extern "C" __attribute__((visibility("default"))) int qattn_dev_qtrace_reset(void) {
    void *p = nullptr;
    cudaGetSymbolAddress(&p, g_qtrace);
    return (int)cudaMemset(p, 0, sizeof(g_qtrace));
}
'''
open(dst, "w").write(s)
