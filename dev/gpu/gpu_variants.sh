#!/usr/bin/env bash
# Round-3 device calls: the default build and tuning alternatives are built concurrently, then
# bench/gpu_run.sh on the default build (tests, sanitizers, full benchmark) and, for each alternative,
# the GPU test (FP16 + INT8), memcheck + racecheck of the INT8 small cases, and the same benchmark.
# VARIANTS: space-separated names of dev/cuda_tuning/variant.sh, each applied to its own copy of the
# tracked sources (round 3 measured dpb1, dpb4 and nwarps8 this way, then as compiler flags).
# Logs under $OUT/default and $OUT/<name>.
set -u
OUT=${OUT:-out}
VARIANTS=${VARIANTS:-"nwarps8"}
mkdir -p "$OUT"
pids=()
for n in $VARIANTS; do
  mkdir -p "$OUT/$n"
  S=/tmp/qattn-src-$n
  rm -rf $S && mkdir -p $S && git ls-files -z | xargs -0 cp --parents -t $S
  ( (cd $S && bash dev/cuda_tuning/variant.sh "$n" apply) && cmake -S $S -B build-gpu-$n -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && \
    cmake --build build-gpu-$n -j8 --target qattn qattn_gpu_test ) > "$OUT/$n/build.log" 2>&1 &
  pids+=($!)
done
OUT=$OUT/default bash bench/gpu_run.sh "$@"
for p in "${pids[@]}"; do wait $p; done
for n in $VARIANTS; do
  B=build-gpu-$n; T=$B/tests/gpu/qattn_gpu_test
  [ -x $T ] || { echo "$n build failed"; tail -20 "$OUT/$n/build.log"; continue; }
  $T > "$OUT/$n/test_f16.log" 2>&1; echo "$n test f16 rc=$?"
  $T --int8 > "$OUT/$n/test_i8.log" 2>&1; echo "$n test int8 rc=$?"
  if [ "${SKIP_SAN:-0}" != 1 ]; then
    for tool in memcheck racecheck; do
      compute-sanitizer --tool $tool --error-exitcode 3 $T --small --int8 > "$OUT/$n/san_${tool}_i8.log" 2>&1; echo "$n sanitizer $tool int8 rc=$?"
    done
  fi
  PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py --lib $B/libqattn.so --out "$OUT/$n" "$@" 2>&1 | tee "$OUT/$n/bench.log" | grep -vE "^done|Warn|warn_once"
done
