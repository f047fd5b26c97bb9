#!/usr/bin/env bash
# One device call for a change to the INT8 kernels: this tree (build-gpu, library and GPU test) and the
# base under .ab/base (`git archive BASE | tar -x -C .ab/base`, carried untracked), built side by side;
# then the INT8 GPU tests, compute-sanitizer memcheck and racecheck of the small INT8 set, python/tests/test_gpu.py, bench/gpu_accuracy.py on
# both libraries, and bench/gpu_compare.py (D 64 and 128, L 4k and 16k, SDPA only) alternated base /
# this tree twice. Logs under $OUT.
set -u
LIMIT=570
. "$(dirname "$0")/../../bench/gpu_lib.sh"
(cmake -S .ab/base -B /tmp/b-base -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DQATTN_BUILD_TESTS=OFF > "$OUT/cfg-base.log" 2>&1 &&
  timeout 300 cmake --build /tmp/b-base -j8 --target qattn > "$OUT/build-base.log" 2>&1; echo "base build rc=$?") &
gpu_build
wait
BASE=/tmp/b-base/libqattn.so
run_bg test_i8 150 $T --int8
run_bg test_bs_i8 150 $T --bs --int8
run_bg memcheck_i8 150 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --int8
run_bg racecheck_i8 200 compute-sanitizer --tool racecheck --error-exitcode 3 $T --small --int8
wait
for n in test_i8 test_bs_i8 memcheck_i8 racecheck_i8; do
  f="$OUT/$n.log"
  echo "$n: ok $(grep -c '^ok' "$f"), FAIL $(grep -c FAIL "$f"), $(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$f") $(tail -1 "$f")"
  grep FAIL "$f" | head -8
done
ABS_OUT=$(cd "$OUT" && pwd)
(cd python && QATTN_LIBRARY=../$LIB timeout 90 python3 -m pytest -q tests/test_gpu.py > "$ABS_OUT/pytest_gpu.log" 2>&1; echo "rc=$?" >> "$ABS_OUT/pytest_gpu.log")
tail -4 "$OUT/pytest_gpu.log"
stamp "tests done"
for v in new base; do
  lib=$LIB; [ $v = base ] && lib=$BASE
  PYTHONPATH=python QATTN_LIBRARY=$lib timeout 100 python3 bench/gpu_accuracy.py > "$OUT/accuracy-$v.log" 2>&1
  echo "== accuracy $v rc=$?"; cat "$OUT/accuracy-$v.log"
done
stamp "accuracy done"
for r in 1 2; do for v in base new; do
  lib=$LIB; src=.; [ $v = base ] && lib=$BASE && src=.ab/base # each tree's own script: the base may lack a new path
  timeout $(left 5) python3 $src/bench/gpu_compare.py --lib $lib --out "$OUT/cmp-$v-$r" --dims 64,128 --lens 4096,16384 --no-peers --reps 10 \
    > "$OUT/cmp-$v-$r.log" 2>&1
  echo "== compare $v round $r rc=$?"; grep -E "^\|" "$OUT/cmp-$v-$r.log" | head -40
done; done
stamp end
