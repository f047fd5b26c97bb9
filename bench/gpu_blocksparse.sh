#!/usr/bin/env bash
# One device call for block-sparse attention on the GPU (issue 17 item 5), logs and JSON under $OUT
# (default ./out), each step with its timeout, the whole under ~8 minutes:
#  1. builds (CUDA on, Release, -j16) the library and the GPU test;
#  2. the GPU tests side by side: dense FP16, dense INT8, --bs, --bs --int8 (ok / FAIL counts);
#  3. compute-sanitizer memcheck of the small block-sparse cases, FP16 and INT8;
#  4. bench/gpu_blocksparse.py: time vs density (5/10/25/50/100%) at L 16k, B1 H16 D128, FP16 and INT8,
#     dense as the baseline in the same process (non-causal, then causal if time is left).
# Estimate: build 1.5-2 min, tests 1.5-2 min, memcheck 1 min, benchmark 1-2 min.
#   OUT=/tmp/out bash bench/gpu_blocksparse.sh
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }
left() { # seconds left before the ~7.5 minute mark (at least 20)
  local l=$((450 - ($(date +%s) - T0)))
  echo $((l < 20 ? 20 : l))
}
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)" 2>&1 | tail -1

{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && timeout 200 cmake --build build-gpu -j16 --target qattn qattn_gpu_test; } > "$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; exit 1; }
stamp "built"
LIB=build-gpu/libqattn.so
T=build-gpu/tests/gpu/qattn_gpu_test

run_test() { # name, args...
  local name=$1
  shift
  (timeout 150 stdbuf -oL $T "$@" > "$OUT/test_$name.log" 2>&1; echo "rc=$?" >> "$OUT/test_$name.log") &
}
run_test f16
run_test i8 --int8
run_test bs --bs
run_test bs_i8 --bs --int8
wait
for n in f16 i8 bs bs_i8; do
  f="$OUT/test_$n.log"
  echo "$n: ok $(grep -c '^ok' "$f"), FAIL $(grep -c FAIL "$f"), $(grep -E '^(PASSED|FAILED)' "$f" | tail -1) $(tail -1 "$f")"
  grep FAIL "$f" | head -8
done
stamp "tests done"
for mode in "" "--int8"; do
  timeout 90 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --bs $mode > "$OUT/memcheck_bs${mode/--/_}.log" 2>&1
  echo "memcheck --small --bs $mode rc=$?: $(grep -c '^ok' "$OUT/memcheck_bs${mode/--/_}.log") ok, $(grep -c FAIL "$OUT/memcheck_bs${mode/--/_}.log") FAIL, $(tail -1 "$OUT/memcheck_bs${mode/--/_}.log")"
  grep -m3 "Invalid\|ERROR SUMMARY" "$OUT/memcheck_bs${mode/--/_}.log"
done
stamp "memcheck done"
timeout $(left) python3 bench/gpu_blocksparse.py --lib $LIB --out "$OUT" > "$OUT/bench.log" 2>&1
echo "gpu_blocksparse rc=$?"
cat "$OUT/bench.log"
stamp "bench done"
if [ "$(left)" -gt 60 ]; then
  mkdir -p "$OUT/causal"
  timeout $(left) python3 bench/gpu_blocksparse.py --lib $LIB --out "$OUT/causal" --causal --densities 1,0.25,0.1 --reps 10 > "$OUT/bench_causal.log" 2>&1
  echo "gpu_blocksparse --causal rc=$?"
  cat "$OUT/bench_causal.log"
fi
stamp "end"
