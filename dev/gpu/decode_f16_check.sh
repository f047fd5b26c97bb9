#!/usr/bin/env bash
# One call for the GPU decode kernels: this tree and a base tree (.ab/base, e.g. main as `git archive`d
# there) built side by side; the op table's KV-decode cases on the CUDA targets, compute-sanitizer memcheck
# and racecheck (the decode kernels) of bench/gpu_decode.py --small, python/tests/test_gpu.py; then
# bench/gpu_decode.py (its 24 correctness cases, then the timings) on both libraries, alternated, twice.
# Usage: LIMIT=560 OUT=$OUT bash dev/gpu/decode_f16_check.sh
set -u
LIMIT=${LIMIT:-560}
. bench/gpu_lib.sh
(cmake -S .ab/base -B /tmp/b-base -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DQATTN_BUILD_TESTS=OFF > "$OUT/cfg-base.log" 2>&1 &&
  timeout 400 cmake --build /tmp/b-base -j6 --target qattn > "$OUT/build-base.log" 2>&1; echo "base build rc=$?") &
{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && timeout 300 cmake --build build-gpu -j12 --target qattn test_ops; } \
  > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
stamp built
nvidia-smi --query-gpu=name --format=csv,noheader
C="compute-sanitizer --kernel-name kns=kvd_ --error-exitcode 3"
(QATTN_TEST_FILTER=kv_decode timeout 240 build-gpu/tests/test_ops > $OUT/ops_dec.log 2>&1; echo "rc=$?" >> $OUT/ops_dec.log) &
run_bg mem_dec 240 $C --tool memcheck python3 bench/gpu_decode.py --lib $LIB --small --out /tmp/dm
run_bg race_dec 240 $C --tool racecheck python3 bench/gpu_decode.py --lib $LIB --small --out /tmp/dr
(cd python && QATTN_LIBRARY=../$LIB timeout 240 python3 -m pytest -q tests/test_gpu.py > $OUT/pyt.log 2>&1; echo "rc=$?" >> $OUT/pyt.log) &
wait
stamp "checks done"
echo "ops_dec: $(grep -E 'target cuda' $OUT/ops_dec.log | tr -s ' ' | tr '\n' ';') $(grep '^\[test_ops\]' $OUT/ops_dec.log) $(tail -1 $OUT/ops_dec.log)"
grep -E "FAIL" $OUT/ops_dec.log | head -8
for n in mem_dec race_dec; do f=$OUT/$n.log; echo "$n: $(grep -E 'CORRECTNESS' $f) $(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' $f) $(tail -1 $f)"; grep -E "^FAIL" $f | head -4; done
echo "pytest: $(tail -2 $OUT/pyt.log | tr '\n' ' ')"; grep -E "FAILED|Error" $OUT/pyt.log | head -5
for r in 1 2; do for n in new base; do L=$LIB; [ $n = base ] && L=/tmp/b-base/libqattn.so
  timeout $(left 10) python3 bench/gpu_decode.py --lib $L --out /tmp/d-$n > $OUT/dec_$n$r.log 2>&1
  echo "decode $n round $r rc=$?: $(grep CORRECTNESS $OUT/dec_$n$r.log)"; grep -E "^FAIL" $OUT/dec_$n$r.log | head -4
  grep -E "^\| (qattn|SDPA|Flash)" $OUT/dec_$n$r.log | cut -d'|' -f2-5,9,12,13,15; done; done
stamp end
