#!/usr/bin/env bash
# A/B of two qattn builds on `qattn bench --precision int8` (wall-clock medians of the bench itself),
# alternated ROUNDS times per shape; prints each pair and the median ratio new/old per shape.
# Usage: bash dev/int8_accuracy/bench_ab.sh OLD/qattn NEW/qattn [ROUNDS]   (env THREADS, SHAPES="..." to override)
set -euo pipefail
old=$1 new=$2 rounds=${3:-5}
shapes=("--seqlen-q 1024" "--seqlen-q 1024 --causal" "--seqlen-q 2048" "--seqlen-q 2048 --causal" "--seqlen-q 4096" "--seqlen-q 4096 --causal")
[ -n "${SHAPES:-}" ] && IFS=';' read -r -a shapes <<< "$SHAPES"
threads=${THREADS:-0}
ms() { "$1" bench --precision int8 --heads 8 --kv-heads 2 --head-dim 128 --iters 5 --threads "$threads" --json $2 | python3 -c "import sys,json; print(json.loads(sys.stdin.readline())['ms'])"; }
for s in "${shapes[@]}"; do
  ratios=()
  line="$s:"
  for ((r = 0; r < rounds; r++)); do
    a=$(ms "$old" "$s"); b=$(ms "$new" "$s")
    ratios+=("$(python3 -c "print($b / $a)")")
    line+=" $a/$b"
  done
  med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "$line  -> median new/old $med"
done
