#!/usr/bin/env bash
# Tuning alternatives of the CUDA kernels for a same-call A/B on the GPU machine: each edits the source in
# place (a copy of the original is kept beside it); the shipped kernels have no switches. (The FP16 wgmma
# kernel's schedule alternatives: dev/cuda_f16_wgmma/variant.sh.)
#   variant.sh NAME apply   edit the source
#   variant.sh revert       put the originals back
# NAME (the shipped choice and where it was measured: docs/gpu.md, docs/notes/gpu_history.md):
#   fwd_wgmma_i8.cu  stages2, stages4   K/Vt stages (shipped 3)
#                    tau0               the reference max is the running max (shipped: lazy, TAU 8)
#                    no_pingpong        no named-barrier turns between the two consumer warpgroups
#   fwd_mma_i8.cu    nwarps8            8 warps x 16 rows per block (shipped 4)
#                    dpb1, dpb4         d-tile pairs per P V accumulator block (shipped 2)
#                    d64_blocks1        D 64 asks ptxas for 1 block per SM, 255 registers (shipped 2)
#   fwd_mma_f16.cu   f16_mt1            one m-tile per warp, 8 warps x 16 rows (shipped 2, 4 x 32)
#   kv_decode.cu     kvd_stages3        stages of the tensor-core decode's per-warp ring (shipped 4)
set -eu
W=src/cuda/fwd_wgmma_i8.cu M=src/cuda/fwd_mma_i8.cu F=src/cuda/fwd_mma_f16.cu K=src/cuda/kv_decode.cu
case "${1:-}" in
revert)
  for X in $W $M $F $K; do [ -f $X.orig ] && mv -f $X.orig $X && touch $X; done # touch: make rebuilds it
  exit 0 ;;
stages2 | stages4 | tau0 | no_pingpong) T=$W ;;
nwarps8 | dpb1 | dpb4 | d64_blocks1) T=$M ;;
f16_mt1) T=$F ;;
kvd_stages3) T=$K ;;
*) echo "unknown variant ${1:-}; usage: $0 NAME apply | $0 revert"; exit 2 ;;
esac
[ "${2:-}" = apply ] || { echo "usage: $0 NAME apply | $0 revert"; exit 2; }
[ -f $T.orig ] || cp $T $T.orig
sub() { perl -0pi -e "$1" $T; }
case "$1" in
stages2) sub 's/\QNST = 3, NTHREADS = 384;\E/NST = 2, NTHREADS = 384;/' ;;
stages4) sub 's/\QNST = 3, NTHREADS = 384;\E/NST = 4, NTHREADS = 384;/' ;;
tau0) sub 's/\Qconstexpr int TAU = 8;\E/constexpr int TAU = 0;/' ;;
no_pingpong)
  sub 's/\Q{ named_sync<256>(1 + wg); }\E/{}/; s/\Q{ named_arrive<256>(2 - wg); }\E/{}/; s/\Q    if (wg == 1) named_arrive<256>(1);\E/    \/\/ no turns/; s/\Q    if (wg == 0) named_sync<256>(1);\E/    \/\/ no turns/' ;;
nwarps8) sub 's/\Qconstexpr int NWARPS = 4,\E/constexpr int NWARPS = 8,/' ;;
dpb1) sub 's/\Qconstexpr int DPB = 2;\E/constexpr int DPB = 1;/' ;;
dpb4) sub 's/\Qconstexpr int DPB = 2;\E/constexpr int DPB = 4;/' ;;
d64_blocks1) sub 's/\Qconstexpr int D64_BLOCKS = 2;\E/constexpr int D64_BLOCKS = 1;/' ;;
f16_mt1) sub 's/\Qconstexpr int F16_MT = 2;\E/constexpr int F16_MT = 1;/' ;;
kvd_stages3) sub 's/\Qconstexpr int TM = 16, STM = 4,\E/constexpr int TM = 16, STM = 3,/' ;;
esac
cmp -s $T $T.orig && { echo "variant $1: nothing changed (source moved on?)"; exit 1; }
echo "variant $1 applied: $(diff $T.orig $T | grep -c '^[<>]') changed lines"
