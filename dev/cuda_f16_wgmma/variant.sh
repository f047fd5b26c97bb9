#!/usr/bin/env bash
# Schedule alternatives of src/cuda/fwd_wgmma_f16.cu for a same-call A/B (see README.md):
#   variant.sh NAME apply   edit the source (a copy of the original is kept beside it)
#   variant.sh revert       put the original back
# NAME: static_schedule block i takes items i, i + grid, ... (no atomic counter; run 1's schedule)
#       nq1_nst3        D 128: one Q buffer and three stages of K and of V (224 KB) instead of two and two
#       uneven_groups   causal: the head groups of the INT8 kernel (the last group may be smaller)
#       bn176           D 96/128: key tiles of 176 and one Q buffer (dev/cuda_f16_wgmma/bn176.py)
#       no_pingpong     the consumer warpgroups issue their products whenever ready (no named-barrier turns)
#       watchdog        (a diagnosis, not a schedule) an mbarrier wait that spins for seconds prints the
#                       block, thread, barrier address and parity, then traps (src/cuda/hopper.cuh)
set -eu
case "${1:-}" in
revert)
  for F in src/cuda/fwd_wgmma_f16.cu src/cuda/hopper.cuh; do [ -f $F.orig ] && mv -f $F.orig $F && touch $F; done # touch: make rebuilds it
  exit 0 ;;
watchdog) F=src/cuda/hopper.cuh ;;
*) F=src/cuda/fwd_wgmma_f16.cu ;;
esac
sub() { perl -0pi -e "$1" $F; }
[ "${2:-}" = apply ] || { echo "usage: $0 NAME apply | $0 revert"; exit 2; }
[ -f $F.orig ] || cp $F $F.orig
case "$1" in
watchdog)
  sub 's/(__device__ __forceinline__ void mbar_wait\(uint32_t bar, int parity\) \{\n).*?\n\}\n/$1    for (long long i = 0;; i++) {\n        uint32_t ok;\n        asm volatile("{\\n.reg .pred p;\\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\\nselp.u32 %0, 1, 0, p;\\n}\\n" : "=r"(ok) : "r"(bar), "r"(parity) : "memory");\n        if (ok) return;\n        if (i == (1ll << 22)) {\n            if ((threadIdx.x & 31) == 0) printf("mbar_wait stuck: block %d thread %d bar 0x%x parity %d\\n", (int)blockIdx.x, (int)threadIdx.x, bar, parity);\n            __trap();\n        }\n    }\n}\n/s' ;;
static_schedule)
  sub 's/\Q                const int next = gridDim.x + atomicAdd(a.sched, 1);\E/                const int next = item + gridDim.x;/' ;;
uneven_groups)
  sub 's/\Q    if (a.wl >= 0 || a.wr >= 0) hg = even_head_group(hg, n_bh);\E\n//' ;;
bn176)
  python3 dev/cuda_f16_wgmma/bn176.py $F ;;
nq1_nst3)
  sub 's/\QNQ = D == 256 ? 1 : 2, NST = 2;\E/NQ = D == 64 ? 2 : 1, NST = D == 128 ? 3 : 2;/' ;;
no_pingpong)
  sub 's/\Q{ named_sync<256>(1 + wg); }\E/{}/; s/\Q{ named_arrive<256>(2 - wg); }\E/{}/; s/\Q    if (wg == 1) named_arrive<256>(1);\E/    \/\/ no turns/; s/\Q    if (wg == 0) named_sync<256>(1);\E/    \/\/ no turns/' ;;
*) echo "unknown variant $1"; exit 2 ;;
esac
cmp -s $F $F.orig && { echo "variant $1: nothing changed (source moved on?)"; exit 1; }
echo "variant $1 applied: $(diff $F.orig $F | grep -c '^[<>]') changed lines"
