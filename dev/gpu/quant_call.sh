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
variant_lib() { # NAME [BUILD]: .ab/v/NAME.cu -> /tmp/v-NAME/libqattn.so, objects of BUILD (default build-gpu)
  local n=$1 b=${2:-build-gpu} d=/tmp/v-$1
  mkdir -p "$d"
  cp ".ab/v/$n.cu" "src/cuda/zz_$n.cu"
  (
    cd "$b" || exit 1
    eval "$(sed -n 's/^\(CUDA_[A-Z]*\) = \(.*\)$/\1="\2"/p' CMakeFiles/qattn_objects.dir/flags.make)"
    fl=$(echo "$CUDA_FLAGS" | sed 's/-gencode=[^ ]*//g')
    # shellcheck disable=SC2086
    nvcc -forward-unknown-to-host-compiler $CUDA_DEFINES $CUDA_INCLUDES $fl -gencode=arch=compute_90a,code=sm_90a -Xptxas -v \
      -x cu -c "../src/cuda/zz_$n.cu" -o "$d/quant.o" > "$d/nvcc.log" 2>&1 || { echo "variant $n: nvcc failed"; tail -5 "$d/nvcc.log"; exit 1; }
    obj=$(ls CMakeFiles/qattn.dir/objects1* | head -1) # objects1 or objects1.rsp, by CMake version
    sed "s#CMakeFiles/qattn_objects.dir/src/cuda/quant_i8.cu.o#$d/quant.o#" "$obj" > "$d/objects"
    link=$(sed -e "s#-o libqattn.so[.0-9]*#-o $d/libqattn.so#" -e "s#@$obj#@$d/objects#" CMakeFiles/qattn.dir/link.txt)
    eval "$link" > "$d/link.log" 2>&1 || { echo "variant $n: link failed"; tail -5 "$d/link.log"; exit 1; }
    echo "variant $n: $(grep -A1 'i8q_fused_kernelILi128ELb0' "$d/nvcc.log" | grep -o '[0-9]* bytes spill stores' | head -1), $(grep -A2 'i8q_fused_kernelILi128ELb0' "$d/nvcc.log" | grep -o 'Used [0-9]* registers' | head -1)"
  )
  rm -f "src/cuda/zz_$n.cu"
}
variant_test() { # NAME: the GPU test linked with variant NAME's quantization pass -> /tmp/v-NAME/qattn_gpu_test
  local n=$1 b=${2:-build-gpu} d=/tmp/v-$1
  (
    cd "$b" || exit 1
    cp libqattn.a "$d/libqattn.a" && cp "$d/quant.o" "$d/quant_i8.cu.o" && ar r "$d/libqattn.a" "$d/quant_i8.cu.o" || exit 1
    cd tests/gpu || exit 1
    obj=$(ls CMakeFiles/qattn_gpu_test.dir/objects1* | head -1)
    sed "s#../../libqattn.a#$d/libqattn.a#" CMakeFiles/qattn_gpu_test.dir/linkLibs.rsp > "$d/linkLibs.rsp"
    g++ @"$obj" -o "$d/qattn_gpu_test" @"$d/linkLibs.rsp" \
      -L/usr/local/cuda/targets/x86_64-linux/lib/stubs -L/usr/local/cuda/targets/x86_64-linux/lib > "$d/test_link.log" 2>&1 ||
      { echo "variant $n: test link failed"; tail -5 "$d/test_link.log"; }
  )
}
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
