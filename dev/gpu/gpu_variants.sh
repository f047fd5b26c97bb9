#!/usr/bin/env bash
# Round-3 device calls: the default build and tuning alternatives are built concurrently, then
# bench/gpu_run.sh on the default build (tests, sanitizers, full benchmark) and, for each alternative,
# the GPU test (FP16 + INT8), memcheck + racecheck of the INT8 small cases, and the same benchmark.
# VARIANTS: space-separated name=CUDA_FLAGS pairs (':' stands for a space inside the flags).
# Round 3, call 1: VARIANTS="dpb1=-DQATTN_I8_DPB=1 dpb4=-DQATTN_I8_DPB=4"; call 2: VARIANTS="nw4=-DQATTN_I8_NWARPS=4"
# (then not yet the default); default now: the 8-warp blocks as the alternative.
# Logs under $OUT/default and $OUT/<name>.
set -u
OUT=${OUT:-out}
VARIANTS=${VARIANTS:-"nw8=-DQATTN_I8_NWARPS=8"}
mkdir -p "$OUT"
pids=()
for v in $VARIANTS; do
  n=${v%%=*}; f=${v#*=}; f=${f//:/ }
  mkdir -p "$OUT/$n"
  ( cmake -S . -B build-gpu-$n -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=$f" && \
    cmake --build build-gpu-$n -j8 --target qattn qattn_gpu_test ) > "$OUT/$n/build.log" 2>&1 &
  pids+=($!)
done
OUT=$OUT/default bash bench/gpu_run.sh "$@"
for p in "${pids[@]}"; do wait $p; done
for v in $VARIANTS; do
  n=${v%%=*}; B=build-gpu-$n; T=$B/tests/gpu/qattn_gpu_test
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
