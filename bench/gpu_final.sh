#!/usr/bin/env bash
# One device call: build, the GPU tests (FP16; INT8 with the wgmma-vs-mma.sync cross-check; run side by
# side on purpose), the full bench/gpu_compare.py table, compute-sanitizer memcheck and racecheck of the
# INT8 and FP16 forwards (small cases), the Python binding's GPU tests, the decode benchmark, then memcheck and racecheck of the
# decode small cases. Logs and JSON under $OUT (default ./out).
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader
{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu -j16 --target qattn qattn_gpu_test; } > /tmp/b.log 2>&1 \
  || { tail -30 /tmp/b.log; exit 1; }
T=build-gpu/tests/gpu/qattn_gpu_test
( timeout 300 stdbuf -oL $T > "$OUT/test_f16.log" 2>&1; echo "rc=$?" >> "$OUT/test_f16.log" ) &
( timeout 300 stdbuf -oL $T --int8 > "$OUT/test_i8.log" 2>&1; echo "rc=$?" >> "$OUT/test_i8.log" ) &
wait
for f in "$OUT/test_f16.log" "$OUT/test_i8.log"; do echo "$f: ok $(grep -c '^ok' $f), FAIL $(grep -c FAIL $f), $(tail -1 $f)"; grep FAIL $f | head -5; done
timeout 300 python3 bench/gpu_compare.py --lib build-gpu/libqattn.so --out "$OUT" --reps 20 > "$OUT/bench.log" 2>&1; grep -E "^\||Error" "$OUT/bench.log"
for tool in memcheck racecheck; do
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 3 $T --small --int8 > /tmp/s_$tool.log 2>&1; echo "$tool int8 forward rc=$?: $(tail -1 /tmp/s_$tool.log)"
  timeout 120 compute-sanitizer --tool $tool --error-exitcode 3 $T --small > /tmp/s16_$tool.log 2>&1; echo "$tool f16 forward rc=$?: $(tail -1 /tmp/s16_$tool.log)"
done
QATTN_LIBRARY=$PWD/build-gpu/libqattn.so PYTHONPATH=$PWD/python timeout 200 python3 -m pytest -q python/tests/test_gpu.py 2>&1 | tail -1
timeout 240 python3 bench/gpu_decode.py --lib build-gpu/libqattn.so --out "$OUT" > "$OUT/decode.log" 2>&1; grep -E "FAIL|CORRECTNESS|copy|^\|" "$OUT/decode.log"
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --kernel-name kns=kvd_ --tool $tool python3 bench/gpu_decode.py --lib build-gpu/libqattn.so --small --out /tmp/s_$tool > /tmp/d_$tool.log 2>&1
  echo "$tool decode rc=$?: $(grep -E 'CORRECTNESS|SUMMARY' /tmp/d_$tool.log | tr '\n' ' ')"
done
