#!/usr/bin/env bash
# One device call for the INT8 wgmma kernel: the default build and compile-time alternatives
# (VARIANTS="name=-DFLAG=VALUE ..."), built concurrently; the GPU INT8 test (with the wgmma-vs-mma.sync
# cross-check) and memcheck on the default build; bench/gpu_compare.py --quick on every build, and once
# with QATTN_CUDA_I8_KERNEL=mma on the default build (the mma.sync kernel), all in the same call.
set -u
OUT=${OUT:-out}
VARIANTS=${VARIANTS:-}
mkdir -p "$OUT"
pids=()
for v in default $VARIANTS; do
  n=${v%%=*}; f=""; [ "$v" != default ] && f=${v#*=}
  ( cmake -S . -B build-gpu-$n -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=$f" && \
    cmake --build build-gpu-$n -j8 --target qattn qattn_gpu_test ) > /tmp/build-$n.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; done
T=build-gpu-default/tests/gpu/qattn_gpu_test
[ -x $T ] || { tail -30 /tmp/build-default.log; exit 1; }
timeout 300 $T --int8 > "$OUT/test_i8.log" 2>&1; echo "test int8 rc=$?"; grep -E "FAIL|PASSED|FAILED|wgmma" "$OUT/test_i8.log" | cut -c1-60,150-
timeout 300 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --int8 > /tmp/memcheck.log 2>&1; echo "memcheck int8 rc=$?"; tail -1 /tmp/memcheck.log
B="python3 bench/gpu_compare.py --quick --reps 20"
PYTHONUNBUFFERED=1 timeout 300 $B --lib build-gpu-default/libqattn.so --out "$OUT" 2>&1 | tee "$OUT/bench.log" | grep -E "^\|"
QATTN_CUDA_I8_KERNEL=mma PYTHONUNBUFFERED=1 timeout 300 $B --lib build-gpu-default/libqattn.so --out /tmp/mma 2>&1 | tee "$OUT/bench_mma.log" | grep -E "^\|"
for v in $VARIANTS; do
  n=${v%%=*}
  [ -f build-gpu-$n/libqattn.so ] || { echo "$n build failed"; tail -20 /tmp/build-$n.log; continue; }
  echo "== $v"
  PYTHONUNBUFFERED=1 timeout 300 $B --lib build-gpu-$n/libqattn.so --out /tmp/$n 2>&1 | tee "$OUT/bench_$n.log" | grep -E "^\|"
done
