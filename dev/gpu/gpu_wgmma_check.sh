#!/usr/bin/env bash
# One device call for the INT8 kernels: build, GPU tests (FP16, INT8 with the wgmma-vs-mma.sync
# cross-check), memcheck on the small INT8 cases, then bench/gpu_compare.py --quick with the default
# INT8 kernel (wgmma on compute capability 9.0) and with the mma.sync kernels (--kernels mma), same call.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu -j16 --target qattn qattn_gpu_test; } > /tmp/build.log 2>&1 \
  || { tail -40 /tmp/build.log; exit 1; }
grep -E "warning" /tmp/build.log | head
T=build-gpu/tests/gpu/qattn_gpu_test
timeout 300 $T > /tmp/test_f16.log 2>&1; echo "test f16 rc=$?"; grep -E "FAIL|PASSED|FAILED" /tmp/test_f16.log
timeout 300 $T --int8 > "$OUT/test_i8.log" 2>&1; echo "test int8 rc=$?"; cat "$OUT/test_i8.log"
timeout 300 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --int8 > "$OUT/san_memcheck_i8.log" 2>&1; echo "memcheck int8 rc=$?"; tail -3 "$OUT/san_memcheck_i8.log"
PYTHONUNBUFFERED=1 timeout 400 python3 bench/gpu_compare.py --lib build-gpu/libqattn.so --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" | grep -vE "^done|Warn|warn_once"
mkdir -p /tmp/mma
PYTHONUNBUFFERED=1 timeout 400 python3 bench/gpu_compare.py --lib build-gpu/libqattn.so --kernels mma --out /tmp/mma "$@" 2>&1 | tee "$OUT/mma_bench.log" | grep -vE "^done|Warn|warn_once"
cp /tmp/mma/gpu_compare.json "$OUT/mma_gpu_compare.json"
