#!/usr/bin/env bash
# One device call for the INT8 quantization pass: this tree built (library and GPU test); each variant of
# src/cuda/quant_i8.cu under .ab/v/NAME.cu (carried untracked) compiled for sm_90a and linked with this
# tree's other objects into /tmp/v-NAME/libqattn.so; then the INT8 GPU tests, memcheck of the small INT8
# set and python/tests/test_gpu.py on this tree, the timelines of the variants named *_trace
# (dev/gpu/quant_timeline.py), and dev/gpu/quant_pass_ab.py over this tree and the other variants.
# Logs under $OUT.
set -u
LIMIT=${LIMIT:-560}
. "$(dirname "$0")/../../bench/gpu_lib.sh"
. "$(dirname "$0")/variants.sh"
if [ "${1:-}" = "--variants-only" ]; then # local check: variant libs against an existing build dir
  for f in .ab/v/*.cu; do variant_lib "$(basename "$f" .cu)" "${2:-build-gpu}"; done
  exit 0
fi
gpu_build
for f in .ab/v/*.cu; do variant_lib "$(basename "$f" .cu)" & done
wait
for n in ${TEST_VARIANTS:-}; do variant_test $n && run_bg test_i8_$n 200 /tmp/v-$n/qattn_gpu_test --int8; done
if [ -z "${SKIP_TESTS:-}" ]; then
run_bg test_i8 200 $T --int8
run_bg test_bs_i8 200 $T --bs --int8
fi
wait
stamp "variants built, INT8 tests done"
if [ -z "${SKIP_TESTS:-}" ]; then
run_bg memcheck_i8 150 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --int8
run_bg racecheck_i8 150 compute-sanitizer --tool racecheck --error-exitcode 3 $T --small --int8
ABS_OUT=$(cd "$OUT" && pwd)
(cd python && QATTN_LIBRARY=../$LIB timeout 120 python3 -m pytest -q tests/test_gpu.py > "$ABS_OUT/pytest_gpu.log" 2>&1; echo "rc=$?" >> "$ABS_OUT/pytest_gpu.log")
wait
for n in test_i8 test_bs_i8 memcheck_i8 racecheck_i8 $(for v in ${TEST_VARIANTS:-}; do echo test_i8_$v; done); do
  f="$OUT/$n.log"
  echo "$n: ok $(grep -c '^ok' "$f"), FAIL $(grep -c FAIL "$f"), $(grep -m1 'ERROR SUMMARY' "$f") $(tail -1 "$f")"
  grep FAIL "$f" | head -8
done
tail -3 "$OUT/pytest_gpu.log"
fi
stamp "tests done"
for f in .ab/v/*_trace.cu; do
  n=$(basename "$f" .cu)
  [ -f /tmp/v-$n/libqattn.so ] || continue
  echo "== timeline $n"
  timeout $(left 120) python3 dev/gpu/quant_timeline.py --lib /tmp/v-$n/libqattn.so --json "$OUT/timeline-$n.json" 2>&1 | tee "$OUT/timeline-$n.log"
done
stamp "timelines done"
libs="new=$LIB"
for f in .ab/v/*.cu; do n=$(basename "$f" .cu); case $n in *_trace) ;; *) [ -f /tmp/v-$n/libqattn.so ] && libs="$libs $n=/tmp/v-$n/libqattn.so" ;; esac; done
timeout $(left 20) python3 dev/gpu/quant_pass_ab.py $libs 2>&1 | grep -v -i warn | tee -a "$OUT/pass_ab.log"
stamp "A/B done"
if [ -f /tmp/v-main/libqattn.so ]; then # this tree against main: causal, and BF16
  timeout $(left 20) python3 dev/gpu/quant_pass_ab.py new=$LIB main=/tmp/v-main/libqattn.so --causal 2>&1 | grep -v -i warn | tee -a "$OUT/pass_ab.log"
  timeout $(left 20) python3 dev/gpu/quant_pass_ab.py new=$LIB main=/tmp/v-main/libqattn.so --dtype bf16 2>&1 | grep -v -i warn | tee -a "$OUT/pass_ab.log"
fi
stamp "causal, bf16 done"
timeout $(left 10) python3 bench/gpu_blocksparse.py --lib $LIB --reps 10 2>&1 | grep -v -i warn | tee "$OUT/blocksparse.log"
stamp end
