#!/usr/bin/env bash
# A/B on the device: the INT8 quantization pass fused into one launch (dev/quant_i8_fused.patch) against
# the shipped three kernels (src/cuda/quant_i8.cu). The fused pass takes its work items in ticket order
# (atomic counter, so an item only waits on items already running): the statistics of (b, kv head) bh + lag
# just before bh's K/V tiles, which issue their loads and then wait for bh's means (computed by bh's last
# statistics block), so the second read of K/V comes from L2 (lag keeps ~24 MB between the two reads);
# the Q blocks last. Expected: K/V read from DRAM once, ~288 instead of ~416 MiB at B*L = 16k, D 128.
# Builds the patched copy, runs its INT8 GPU tests (bitwise quantization check included) and memcheck on
# the small cases, then bench/gpu_compare.py --no-peers for shipped, fused, shipped (drift check).
# Needs build-gpu from bench/gpu_quant.sh (run by `bash bench/gpu_quant.sh fused`).
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
SRC=/tmp/qattn-fused-src BLD=/tmp/qattn-fused-build
rm -rf "$SRC" && mkdir -p "$SRC"
tar --exclude='./build*' --exclude=./.git --exclude=./wheels --exclude=./out -cf - . | tar -x -C "$SRC"
(cd "$SRC" && patch -p1 -s < dev/quant_i8_fused.patch) || exit 1
{ cmake -S "$SRC" -B $BLD -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build $BLD -j16 --target qattn qattn_gpu_test; } \
  > "$OUT/fused_build.log" 2>&1 || { tail -30 "$OUT/fused_build.log"; exit 1; }
timeout 200 $BLD/tests/gpu/qattn_gpu_test --int8 > "$OUT/fused_test_i8.log" 2>&1
echo "fused tests rc=$?: ok $(grep -c '^ok' "$OUT/fused_test_i8.log"), FAIL $(grep -c FAIL "$OUT/fused_test_i8.log")"
grep -E "FAIL|quant vs CPU" "$OUT/fused_test_i8.log"
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 $BLD/tests/gpu/qattn_gpu_test --small --int8 > "$OUT/fused_memcheck.log" 2>&1
echo "fused memcheck rc=$?: $(tail -1 "$OUT/fused_memcheck.log")"
for v in shipped fused shipped2; do
  lib=build-gpu/libqattn.so
  [ $v = fused ] && lib=$BLD/libqattn.so
  timeout 150 python3 bench/gpu_compare.py --lib $lib --out "$OUT/ab_$v" --no-peers --dims 128 --lens 1024,4096,16384 --reps 10 \
    > "$OUT/ab_$v.log" 2>&1
  echo "== $v (rc=$?)"
  grep -A8 "^Peers" "$OUT/ab_$v.log" | grep -E "^\|"
done
