#!/usr/bin/env bash
# One device call: build with CUDA, run the GPU test (full + INT8), compute-sanitizer memcheck and
# racecheck on the small cases, then bench/gpu_compare.py. Logs under $OUT (default ./out).
# Usage: bench/gpu_run.sh [bench args...]   e.g. bench/gpu_run.sh --quick --no-int8
# Env: SKIP_SAN=1 skips the sanitizers, SKIP_BENCH=1 the benchmark, INT8=0 the INT8 tests.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv > "$OUT/nvidia_smi.txt" 2>&1
cat "$OUT/nvidia_smi.txt"
{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu -j16 --target qattn qattn_gpu_test; } > "$OUT/build.log" 2>&1
rc=$?
grep -E "error|warning" "$OUT/build.log" | head -20
if [ $rc -ne 0 ]; then tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; fi
T=build-gpu/tests/gpu/qattn_gpu_test
$T > "$OUT/test_f16.log" 2>&1; echo "test f16 rc=$?"; grep -E "FAIL|PASSED|FAILED" "$OUT/test_f16.log"
if [ "${INT8:-1}" = 1 ]; then
  $T --int8 > "$OUT/test_i8.log" 2>&1; echo "test int8 rc=$?"; grep -E "FAIL|PASSED|FAILED|relL2" "$OUT/test_i8.log" | head -20
fi
if [ "${SKIP_SAN:-0}" != 1 ]; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 3 $T --small > "$OUT/san_${tool}.log" 2>&1; echo "sanitizer $tool f16 rc=$?"
    tail -2 "$OUT/san_${tool}.log"
    if [ "${INT8:-1}" = 1 ]; then
      compute-sanitizer --tool $tool --error-exitcode 3 $T --small --int8 > "$OUT/san_${tool}_i8.log" 2>&1; echo "sanitizer $tool int8 rc=$?"
      tail -2 "$OUT/san_${tool}_i8.log"
    fi
  done
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py --lib build-gpu/libqattn.so --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" | grep -vE "^done"
fi
