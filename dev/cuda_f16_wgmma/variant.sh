#!/usr/bin/env bash
# Schedule alternatives of src/cuda/fwd_wgmma_f16.cu for a same-call A/B (see README.md):
#   variant.sh NAME apply   edit the source (a copy of the original is kept beside it)
#   variant.sh revert       put the original back
# NAME: rescale_always  O *= alpha on every tile (FlashAttention-3's habit), no warp vote
#       no_pingpong     the consumer warpgroups issue their products whenever ready (no named-barrier turns)
set -eu
F=src/cuda/fwd_wgmma_f16.cu
sub() { perl -0pi -e "$1" $F; }
case "${1:-}" in
revert) [ -f $F.orig ] && mv -f $F.orig $F && touch $F; exit 0 ;; # touch: make rebuilds it
esac
[ "${2:-}" = apply ] || { echo "usage: $0 NAME apply | $0 revert"; exit 2; }
[ -f $F.orig ] || cp $F $F.orig
case "$1" in
rescale_always)
  sub 's/\Q    if (!__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) return;\E\n//' ;;
no_pingpong)
  sub 's/\Q{ named_sync<256>(1 + wg); }\E/{}/; s/\Q{ named_arrive<256>(2 - wg); }\E/{}/; s/\Q    if (wg == 1) named_arrive<256>(1);\E/    \/\/ no turns/; s/\Q    if (wg == 0) named_sync<256>(1);\E/    \/\/ no turns/' ;;
*) echo "unknown variant $1"; exit 2 ;;
esac
cmp -s $F $F.orig && { echo "variant $1: nothing changed (source moved on?)"; exit 1; }
echo "variant $1 applied: $(diff $F.orig $F | grep -c '^[<>]') changed lines"
