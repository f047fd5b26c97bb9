# Steps shared by the one-call device scripts (bench/gpu_check.sh, bench/gpu_features.sh); source it
# after setting OUT and LIMIT (seconds the script may take). Defines LIB and T after gpu_build.
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
LIB=build-gpu/libqattn.so
T=build-gpu/tests/gpu/qattn_gpu_test
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }
left() { # seconds left before LIMIT, less $1 (at least 10)
  local l=$((LIMIT - ($(date +%s) - T0) - ${1:-0}))
  echo $((l < 10 ? 10 : l))
}
gpu_build() { # the library and the GPU test, CUDA on, Release; exits on failure
  nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader
  { cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && timeout 300 cmake --build build-gpu -j16 --target qattn qattn_gpu_test; } \
    > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  stamp "built"
}
run_bg() { # name, timeout, command...: in the background, output to $OUT/name.log with its exit status
  local name=$1 t=$2
  shift 2
  (timeout "$t" stdbuf -oL "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?" >> "$OUT/$name.log") &
}
start_gpu_tests() { # the four GPU test sets, side by side (wait, then gpu_tests_summary)
  run_bg test_f16 150 $T
  run_bg test_i8 150 $T --int8
  run_bg test_bs 150 $T --bs
  run_bg test_bs_i8 150 $T --bs --int8
}
tests_summary() { # NAME...: per $OUT/NAME.log (a test run, or one under compute-sanitizer) the ok and FAIL
  # counts, the sanitizer's summary, the exit status and the first failures
  local n f
  for n in "$@"; do
    f=$OUT/$n.log
    echo "$n: ok $(grep -c '^ok' "$f"), FAIL $(grep -c FAIL "$f"), $(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$f") $(tail -1 "$f")"
    grep -E "FAIL|Invalid|Race" "$f" | head -8
  done
}
gpu_tests_summary() { tests_summary test_f16 test_i8 test_bs test_bs_i8; }
start_decode_checks() { # OPS LIB T_S: the op table's KV-decode cases, memcheck and racecheck of the decode kernels
  # (gpu_decode.py --small), python/tests/test_gpu.py; side by side, each within T_S seconds (wait, then
  # decode_checks_summary)
  local ops=$1 lib=$2 t=$3 c="compute-sanitizer --kernel-name kns=kvd_ --error-exitcode 3" out
  out=$(cd "$OUT" && pwd)
  (QATTN_TEST_FILTER=kv_decode timeout "$t" "$ops" > "$out/ops_dec.log" 2>&1; echo "rc=$?" >> "$out/ops_dec.log") &
  run_bg mem_dec "$t" $c --tool memcheck python3 bench/gpu_decode.py --lib "$lib" --small --out /tmp/dm
  run_bg race_dec "$t" $c --tool racecheck python3 bench/gpu_decode.py --lib "$lib" --small --out /tmp/dr
  lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")
  (cd python && QATTN_LIBRARY=$lib timeout "$t" python3 -m pytest -q tests/test_gpu.py > "$out/pyt.log" 2>&1; echo "rc=$?" >> "$out/pyt.log") &
}
decode_checks_summary() {
  local f=$OUT/ops_dec.log n
  echo "ops_dec: $(grep -E 'target cuda' "$f" | tr -s ' ' | tr '\n' ';') $(grep '^\[test_ops\]' "$f") $(tail -1 "$f")"
  grep -E "FAIL" "$f" | head -8
  for n in mem_dec race_dec; do
    f=$OUT/$n.log
    echo "$n: $(grep -E 'CORRECTNESS' "$f") $(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$f") $(tail -1 "$f")"
    grep -E "^FAIL" "$f" | head -4
  done
  echo "pytest: $(tail -2 "$OUT/pyt.log" | tr '\n' ' ')"
  grep -E "FAILED|Error" "$OUT/pyt.log" | head -5
}
