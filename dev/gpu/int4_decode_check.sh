#!/usr/bin/env bash
# One call for the INT4 path and the decode kernels: this tree and a base tree (.ab/base, e.g. main as
# `git archive`d there) built side by side; the INT8/INT4 GPU tests, memcheck of the small set, the op
# table's INT4 and KV-decode cases on the CUDA targets, python/tests/test_gpu.py, the decode correctness
# check; gpu_compare.py --int4 and gpu_accuracy.py --int4; then bench/gpu_decode.py on both trees, twice.
# Usage: LIMIT=560 OUT=$OUT bash dev/gpu/int4_decode_check.sh
set -u
LIMIT=${LIMIT:-560}
. bench/gpu_lib.sh
(cmake -S .ab/base -B /tmp/b-base -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DQATTN_BUILD_TESTS=OFF > "$OUT/cfg-base.log" 2>&1 &&
  timeout 400 cmake --build /tmp/b-base -j6 --target qattn > "$OUT/build-base.log" 2>&1; echo "base build rc=$?") &
{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && timeout 300 cmake --build build-gpu -j12 --target qattn qattn_gpu_test test_ops; } \
  > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
stamp built
nvidia-smi --query-gpu=name --format=csv,noheader
C=compute-sanitizer
run_bg test_i8 200 $T --int8
run_bg mem_i8 200 $C --tool memcheck --error-exitcode 3 $T --small --int8
(QATTN_TEST_FILTER=int4 timeout 200 build-gpu/tests/test_ops > $OUT/ops_int4.log 2>&1; echo "rc=$?" >> $OUT/ops_int4.log) &
(QATTN_TEST_FILTER=kv_decode timeout 200 build-gpu/tests/test_ops > $OUT/ops_dec.log 2>&1; echo "rc=$?" >> $OUT/ops_dec.log) &
(cd python && QATTN_LIBRARY=../$LIB timeout 200 python3 -m pytest -q tests/test_gpu.py > $OUT/pyt.log 2>&1; echo "rc=$?" >> $OUT/pyt.log) &
run_bg dec_small 200 python3 bench/gpu_decode.py --lib $LIB --small --out /tmp/ds
wait
stamp "checks done"
for n in test_i8 mem_i8; do f="$OUT/$n.log"; echo "$n: ok $(grep -c '^ok' $f), FAIL $(grep -c FAIL $f), int4 $(grep -c 'int4 quant' $f), $(grep -m1 -E 'ERROR SUMMARY' $f) $(tail -1 $f)"; grep FAIL $f | head -5; done
grep -E "int4 quant" $OUT/test_i8.log | head -6
for n in ops_int4 ops_dec; do echo "$n: $(grep -E 'target cuda' $OUT/$n.log | tr -s ' ' | tr '\n' ';') $(grep '^\[test_ops\]' $OUT/$n.log)"; grep -E "FAIL" $OUT/$n.log | head -5; done
grep -A1 -E "int4-.*(f16|bf16)" $OUT/ops_int4.log | head -6
echo "pytest: $(tail -2 $OUT/pyt.log | tr '\n' ' ')"; grep -E "FAILED|Error" $OUT/pyt.log | head -5
echo "decode small: $(grep -E 'CORRECTNESS' $OUT/dec_small.log) $(tail -1 $OUT/dec_small.log)"
timeout $(left 330) python3 bench/gpu_compare.py --lib $LIB --dims 128 --lens 1024,4096,16384 --no-peers --int4 --reps 20 --out /tmp/cmp > $OUT/cmp.log 2>&1
echo "compare rc=$?"; sed -n '/^INT4/,/^accuracy/p' $OUT/cmp.log | head -12; grep -iE "Traceback|Error" $OUT/cmp.log | head -3
stamp "compare done"
(cd /tmp && PYTHONPATH=$OLDPWD/python QATTN_LIBRARY=$OLDPWD/$LIB timeout $(left 250) python3 $OLDPWD/bench/gpu_accuracy.py --int4 --lens 1024,4096 --inputs normal,outlier,sink,rotary,sinkout > $OUT/acc.log 2>&1; echo "acc rc=$?"); grep -E "^\|" $OUT/acc.log
stamp "accuracy done"
for r in 1 2; do for n in new base; do L=$LIB; [ $n = base ] && L=/tmp/b-base/libqattn.so
  timeout $(left 10) python3 bench/gpu_decode.py --lib $L --no-kprof --out /tmp/d-$n > $OUT/dec_$n$r.log 2>&1
  echo "decode $n round $r rc=$?:"; grep -E "^qattn.*us|^\| qattn" $OUT/dec_$n$r.log | head -6; done; done
stamp end
