#!/usr/bin/env bash
# One device call for the INT8 attention kernel: the default build, alternatives (VARIANTS="name ...",
# names of dev/cuda_tuning/variant.sh, each applied to its own copy of the tracked sources) and optionally
# another commit's source tree (BASE=dir, e.g. made with
# `git archive OLD | tar -x -C .ab/base`, carried with the call), built concurrently; the INT8 GPU tests of
# every build (side by side); then dev/gpu/gpu_i8_ab.py times every build's kernel in one process, alternating.
set -u
OUT=${OUT:-out}
VARIANTS=${VARIANTS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
build() { (cmake -S "$1" -B "$2" -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build "$2" -j6 --target qattn qattn_gpu_test) \
  > "$2.log" 2>&1 || { echo "build $2 failed"; tail -20 "$2.log"; }; }
libs=(--lib default=/tmp/v-default/libqattn.so)
build . /tmp/v-default &
for v in $VARIANTS; do
  S=/tmp/qattn-src-$v
  rm -rf $S && mkdir -p $S && git ls-files -z | xargs -0 cp --parents -t $S && (cd $S && bash dev/cuda_tuning/variant.sh "$v" apply) || continue
  build $S "/tmp/v-$v" & libs+=(--lib "$v=/tmp/v-$v/libqattn.so")
done
[ -n "${BASE:-}" ] && { build "$BASE" /tmp/v-base & libs+=(--lib base=/tmp/v-base/libqattn.so); }
wait
for d in /tmp/v-*/; do
  ( timeout 300 stdbuf -oL "$d/tests/gpu/qattn_gpu_test" --int8 > "$d/t_i8.log" 2>&1; echo "rc=$?" >> "$d/t_i8.log" ) &
done
wait
for d in /tmp/v-*/; do echo "$d: ok $(grep -c '^ok' $d/t_i8.log), FAIL $(grep -c FAIL $d/t_i8.log), $(tail -1 $d/t_i8.log)"; done
timeout 300 python3 dev/gpu/gpu_i8_ab.py "${libs[@]}" --shapes "${SHAPES:-4k,4kc,16k,16kc,1k}" --out "$OUT" > "$OUT/ab.log" 2>&1; grep -E "^\||Error" "$OUT/ab.log"
