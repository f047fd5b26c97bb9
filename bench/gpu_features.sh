#!/usr/bin/env bash
# One device call (under ~9 minutes) for the GPU features of the FlashAttention-user list: block-sparse
# masks on the wgmma kernels, head dims 32/80/160/192 and softcap / ALiBi on mma.sync. Logs and JSON under
# $OUT (default ./out), each step with a timeout:
#  1. builds (CUDA on, Release, -j16) the library and the GPU test;
#  2. the GPU tests side by side: FP16/BF16 (every head dim, softcap, ALiBi), INT8, --bs, --bs --int8;
#  3. compute-sanitizer memcheck of --small, --small --bs and --small --bs --int8, side by side;
#  4. bench/gpu_blocksparse.py: time vs density at L 16k, B1 H16 D128, FP16 and INT8, dense in the same run;
#  5. bench/gpu_compare.py at D 32/64/80/128/160/192, L 4k, against SDPA (FP16 only), then bench/gpu_mods.py.
set -u
LIMIT=540
. "$(dirname "$0")/gpu_lib.sh"
gpu_build
start_gpu_tests
wait
gpu_tests_summary
stamp "tests done"
run_bg memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small
run_bg memcheck_bs 120 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --bs
run_bg memcheck_bs_i8 120 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small --bs --int8
wait
for n in memcheck memcheck_bs memcheck_bs_i8; do
  f="$OUT/$n.log"
  echo "$n: ok $(grep -c '^ok' "$f"), FAIL $(grep -c FAIL "$f"), $(grep -m1 'ERROR SUMMARY' "$f") $(tail -1 "$f")"
done
stamp "memcheck done"
timeout $(left 120) python3 bench/gpu_blocksparse.py --lib $LIB --out "$OUT" --reps 10 > "$OUT/bench_bs.log" 2>&1
echo "gpu_blocksparse rc=$?"
cat "$OUT/bench_bs.log"
stamp "block-sparse bench done"
timeout $(left 50) python3 bench/gpu_compare.py --lib $LIB --out "$OUT/dims" --dims 32,64,80,128,160,192 --lens 4096 \
  --no-int8 --no-peers --reps 10 > "$OUT/bench_dims.log" 2>&1
echo "gpu_compare rc=$?"
grep -E "^\||Error|unavailable|failed" "$OUT/bench_dims.log" | grep -v "qattn i8 all" | head -20
timeout $(left) python3 bench/gpu_mods.py --lib $LIB --dims 128 --lens 4096 --reps 10 > "$OUT/mods.log" 2>&1
echo "gpu_mods rc=$?"
grep -E "^\||failed" "$OUT/mods.log"
stamp "end"
