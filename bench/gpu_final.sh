#!/usr/bin/env bash
# One device call: build (default + a decode-stages variant), GPU tests (FP16, INT8 with the
# wgmma-vs-mma.sync cross-check), memcheck of the INT8 forward and of the decode small cases,
# the decode benchmark (default and variant), then the full bench/gpu_compare.py table.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
( cmake -S . -B build-st6 -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DQATTN_BUILD_TESTS=OFF -DCMAKE_CUDA_FLAGS=-DQATTN_KVD_MMA_STAGES=6 && \
  cmake --build build-st6 -j6 --target qattn ) > /tmp/b6.log 2>&1 &
{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu -j10 --target qattn qattn_gpu_test; } > /tmp/b.log 2>&1 \
  || { tail -30 /tmp/b.log; exit 1; }
T=build-gpu/tests/gpu/qattn_gpu_test
timeout 200 $T > /tmp/t16.log 2>&1; echo "test f16 rc=$?"; grep -E "FAIL|PASSED|FAILED" /tmp/t16.log
timeout 200 $T --int8 > "$OUT/test_i8.log" 2>&1; echo "test int8 rc=$?"; grep -E "FAIL|PASSED|FAILED" "$OUT/test_i8.log"
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --int8 > /tmp/m1.log 2>&1; echo "memcheck fwd int8 rc=$?"; tail -1 /tmp/m1.log
timeout 200 compute-sanitizer --tool memcheck python3 bench/gpu_decode.py --lib build-gpu/libqattn.so --small --out /tmp/s1 > /tmp/m2.log 2>&1; echo "memcheck decode rc=$?"; grep -E "CORRECTNESS|ERROR SUMMARY" /tmp/m2.log
timeout 240 python3 bench/gpu_decode.py --lib build-gpu/libqattn.so --out "$OUT" 2>&1 | tee "$OUT/decode.log" | grep -E "FAIL|CORRECTNESS|copy|^\|"
wait
[ -f build-st6/libqattn.so ] && timeout 200 python3 bench/gpu_decode.py --lib build-st6/libqattn.so --out /tmp/st6 2>&1 | grep -E "FAIL|CORRECTNESS|copy|^\| qattn" | tee "$OUT/decode_st6.log"
timeout 300 python3 bench/gpu_compare.py --lib build-gpu/libqattn.so --out "$OUT" --reps 20 2>&1 | tee "$OUT/bench.log" | grep -E "^\|"
