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
gpu_tests_summary() {
  for n in f16 i8 bs bs_i8; do
    local f="$OUT/test_$n.log"
    echo "$n: ok $(grep -c '^ok' "$f"), FAIL $(grep -c FAIL "$f"), $(tail -1 "$f")"
    grep FAIL "$f" | head -8
  done
}
