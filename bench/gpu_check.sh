#!/usr/bin/env bash
# One device call (under ~9.5 minutes) that checks the CUDA backend after a change: logs under $OUT
# (default ./out), each step with a timeout, a summary on stdout.
#  1. builds (CUDA on, Release, -j16) the library and the GPU test;
#  2. side by side: the GPU tests (FP16/BF16, INT8, --bs, --bs --int8) and bench/gpu_decode.py
#     (correctness against the CPU decode and FP64, then its timings);
#  3. the Python GPU tests (python/tests/test_gpu.py) and bench/gpu_accuracy.py (INT8 error per input
#     distribution, GPU and CPU);
#  4. compute-sanitizer memcheck of the small FP16 and INT8 sets and of the small decode cases;
#  5. with the time left, bench/gpu_compare.py at D 128, L 4k and 16k against SDPA (no other peers).
set -u
LIMIT=570
. "$(dirname "$0")/gpu_lib.sh"
gpu_build
start_gpu_tests
run_bg decode 170 python3 bench/gpu_decode.py --lib $LIB --out "$OUT/decode"
wait
gpu_tests_summary
grep -E "FAIL|CORRECTNESS|rc=" "$OUT/decode.log" | head -12
grep -E "^\|" "$OUT/decode.log" | head -24
stamp "tests done"
ABS_OUT=$(cd "$OUT" && pwd)
(cd python && QATTN_LIBRARY=../$LIB timeout 90 python3 -m pytest -q tests/test_gpu.py > "$ABS_OUT/pytest_gpu.log" 2>&1; echo "rc=$?" >> "$ABS_OUT/pytest_gpu.log")
tail -4 "$OUT/pytest_gpu.log"
PYTHONPATH=python QATTN_LIBRARY=$LIB timeout 90 python3 bench/gpu_accuracy.py > "$OUT/accuracy.log" 2>&1
echo "gpu_accuracy rc=$?"
cat "$OUT/accuracy.log"
stamp "python done"
run_bg memcheck_f16 120 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small
run_bg memcheck_i8 120 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --int8
run_bg memcheck_decode 120 compute-sanitizer --kernel-name kns=kvd_ --tool memcheck --error-exitcode 3 python3 bench/gpu_decode.py --lib $LIB --small --out "$OUT/decode_small"
wait
for n in memcheck_f16 memcheck_i8 memcheck_decode; do
  f="$OUT/$n.log"
  echo "$n: $(grep -m1 'ERROR SUMMARY' "$f") $(grep -c FAIL "$f") FAIL, $(tail -1 "$f")"
done
stamp "memcheck done"
timeout $(left) python3 bench/gpu_compare.py --lib $LIB --out "$OUT/compare" --dims 128 --lens 4096,16384 --no-peers --reps 10 \
  > "$OUT/compare.log" 2>&1
echo "gpu_compare rc=$?"
grep -E "^\||Error|failed" "$OUT/compare.log" | head -30
stamp "end"
