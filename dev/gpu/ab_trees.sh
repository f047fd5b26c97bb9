#!/usr/bin/env bash
# One device call: the library of each named source tree built side by side ("." = this tree, others
# under .ab/NAME, made with `git archive COMMIT | tar -x -C .ab/NAME` and edited, carried untracked),
# then bench/gpu_compare.py of each tree (its own copy of the script) alternated ROUNDS times, SDPA
# only; prints the INT8 rows (TOPS all / kernel, cuDNN, quant GB/s). Usage, with OUT set:
#   bash dev/gpu/ab_trees.sh "base . nolr" [ROUNDS] [gpu_compare args]
set -u
TREES=$1; ROUNDS=${2:-2}; shift; shift || true
ARGS=${*:---dims 64,128 --lens 4096,16384}
T0=$(date +%s); st() { echo "[$(($(date +%s) - T0)) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader
for v in $TREES; do
  src=.; [ "$v" != . ] && src=.ab/$v
  b=build-ab-${v/./main}
  (cmake -S $src -B $b -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DQATTN_BUILD_TESTS=OFF > "$OUT/cfg-${v/./main}.log" 2>&1 &&
    timeout 400 cmake --build $b -j6 --target qattn > "$OUT/build-${v/./main}.log" 2>&1; echo "$v build rc=$?") &
done
wait; st built
for r in $(seq 1 $ROUNDS); do for v in $TREES; do
  src=.; [ "$v" != . ] && src=.ab/$v
  n=${v/./main}
  timeout 90 python3 $src/bench/gpu_compare.py --lib build-ab-$n/libqattn.so --out "$OUT/c-$n-$r" --no-peers --reps 20 $ARGS > "$OUT/c-$n-$r.log" 2>&1
  echo "== $n round $r rc=$?"; grep -A12 "i8 all | i8 kern | sdpa_cudnn" "$OUT/c-$n-$r.log" | grep -E "^\| [0-9]" | cut -d'|' -f2-7,15
done; done
st end
