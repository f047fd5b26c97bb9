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
start_decode_checks build-gpu/tests/test_ops $LIB 240
wait
stamp "checks done"
decode_checks_summary
for r in 1 2; do for n in new base; do L=$LIB; [ $n = base ] && L=/tmp/b-base/libqattn.so
  timeout $(left 10) python3 bench/gpu_decode.py --lib $L --out /tmp/d-$n > $OUT/dec_$n$r.log 2>&1
  echo "decode $n round $r rc=$?: $(grep CORRECTNESS $OUT/dec_$n$r.log)"; grep -E "^FAIL" $OUT/dec_$n$r.log | head -4
  grep -E "^\| (qattn|SDPA|Flash)" $OUT/dec_$n$r.log | cut -d'|' -f2-5,9,12,13,15; done; done
stamp end
