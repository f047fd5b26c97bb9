#!/usr/bin/env bash
# Round-3 device call: the default build and the tuning alternatives (QATTN_I8_DPB=1: round 2's PV blocking,
# one d-tile pair per accumulator block; QATTN_I8_DPB=4) are built concurrently, then bench/gpu_run.sh on the
# default build (tests, sanitizers, full benchmark) and the INT8 test + benchmark of each alternative.
# Logs under $OUT/default and $OUT/dpb<N>.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
pids=()
for n in 1 4; do
  mkdir -p "$OUT/dpb$n"
  ( cmake -S . -B build-gpu-dpb$n -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=-DQATTN_I8_DPB=$n" && \
    cmake --build build-gpu-dpb$n -j8 --target qattn qattn_gpu_test ) > "$OUT/dpb$n/build.log" 2>&1 &
  pids+=($!)
done
OUT=$OUT/default bash bench/gpu_run.sh "$@"
for p in "${pids[@]}"; do wait $p; done
for n in 1 4; do
  B=build-gpu-dpb$n
  [ -x $B/tests/gpu/qattn_gpu_test ] || { echo "dpb$n build failed"; tail -20 "$OUT/dpb$n/build.log"; continue; }
  $B/tests/gpu/qattn_gpu_test --int8 > "$OUT/dpb$n/test_i8.log" 2>&1; echo "dpb$n test int8 rc=$?"
  PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py --lib $B/libqattn.so --out "$OUT/dpb$n" "$@" 2>&1 | tee "$OUT/dpb$n/bench.log" | grep -vE "^done"
done
