#!/usr/bin/env bash
# Round-2 device call: bench/gpu_run.sh on the default build (tests, sanitizers, full benchmark),
# then the tuning alternatives (QATTN_F16_MT=1: 8 warps x 16 rows; QATTN_I8_D64_BLOCKS=2) built in
# build-gpu-alt, tested and benchmarked the same way. Logs under $OUT/default and $OUT/alt.
set -u
OUT=${OUT:-out}
OUT=$OUT/default bash bench/gpu_run.sh "$@"
mkdir -p "$OUT/alt"
{ cmake -S . -B build-gpu-alt -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=-DQATTN_F16_MT=1 -DQATTN_I8_D64_BLOCKS=2" && \
  cmake --build build-gpu-alt -j16 --target qattn qattn_gpu_test; } > "$OUT/alt/build.log" 2>&1 || { tail -20 "$OUT/alt/build.log"; exit 1; }
build-gpu-alt/tests/gpu/qattn_gpu_test > "$OUT/alt/test_f16.log" 2>&1; echo "alt test f16 rc=$?"
build-gpu-alt/tests/gpu/qattn_gpu_test --int8 > "$OUT/alt/test_i8.log" 2>&1; echo "alt test int8 rc=$?"
PYTHONUNBUFFERED=1 python3 bench/gpu_compare.py --lib build-gpu-alt/libqattn.so --out "$OUT/alt" "$@" 2>&1 | tee "$OUT/alt/bench.log" | grep -vE "^done"
