#!/usr/bin/env python3
"""variant.sh bn176: D 128 (and 96) with key tiles of 176 (FlashAttention-3's non-causal hdim-128 tile) and
one Q buffer (32 KB + 2 x 2 x 44 KB = 208 KB): S is wgmma m64n176k16 (88 accumulators), P 44 registers.
Edits the source file given (src/cuda/fwd_wgmma_f16.cu) in place; variant.sh keeps the original."""
import sys

p = sys.argv[1]
s = open(p).read()


def rep(a, b):
    global s
    assert s.count(a) == 1, a
    s = s.replace(a, b)


ops = "{" + ",".join("%%%d" % i for i in range(88)) + "}"
f8 = ", ".join("QATTN_WG_F8(%d)" % i for i in range(0, 88, 8))
asm = ('        asm volatile("{\\n.reg .pred p;\\nsetp.ne.b32 p, %90, 0;\\n"\n'
       '                     "wgmma.mma_async.sync.aligned.m64n176k16.f32.TYPE.TYPE ' + ops + ', %88, %89, p, 1, 1, 0, 0;\\n}\\n"\n'
       '                     : ' + f8 + '\n'
       '                     : "l"(da), "l"(db), "r"(acc));\n')
rep('''template <bool BF16, int N> __device__ __forceinline__ void wgmma_ss(float *d, uint64_t da, uint64_t db, int acc) {
    if (N == 64) {''', '''template <bool BF16, int N> __device__ __forceinline__ void wgmma_ss(float *d, uint64_t da, uint64_t db, int acc) {
    if (N == 176) {
        if (BF16)
''' + asm.replace("TYPE", "bf16") + '''        else
''' + asm.replace("TYPE", "f16") + '''    } else if (N == 64) {''')
rep("static constexpr int BN = D == 256 ? 64 : 128, NQ = D == 256 ? 1 : 2, NST = 2;",
    "static constexpr int BN = D == 256 ? 64 : D == 128 ? 176 : 128, NQ = D == 64 ? 2 : 1, NST = 2;")
rep("    const int bn = a.d == 256 ? f16w_cfg<256>::BN : f16w_cfg<128>::BN;",
    "    const int bn = a.d == 256 ? f16w_cfg<256>::BN : a.d == 64 ? f16w_cfg<64>::BN : f16w_cfg<128>::BN;")
open(p, "w").write(s)
