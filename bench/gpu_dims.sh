#!/usr/bin/env bash
# One device call (under 6 minutes) for the GPU head dims 32/80/160/192 and softcap / ALiBi on the FP16/BF16
# path; logs and JSON under $OUT (default ./out):
#  1. builds (CUDA on, Release, -j16) the library and the GPU test; ptxas registers/spills of the FP16
#     mma.sync kernels into ptxas_f16.txt;
#  2. the GPU tests side by side: FP16/BF16 full with --alt (every head dim, softcap, ALiBi [H] and [B, H]
#     against the FP64 oracle, refusals of the other head dims; where the wgmma kernel runs, the mma.sync
#     kernel too, compared) and INT8 full (its cases, and the refusals of what it lacks);
#  3. compute-sanitizer memcheck of --small (FP16), then racecheck if time is left;
#  4. bench/gpu_compare.py at D 32, 64, 80, 128, 160, 192 (L 1k and 4k, B*L = 16k, H = 2048 / D, causal and
#     not) against SDPA's FLASH_ATTENTION and CUDNN_ATTENTION backends (where they take the head dim);
#  5. bench/gpu_mods.py: softcap and ALiBi against the plain call (D 64 and 128, L 4k).
# Each step has a timeout; estimate: build 2 min, tests 1 min, sanitizer 1 min, timings 1.5 min.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }
left() { # seconds left before the 5.6 minute mark, less $1 (at least 20)
  local l=$((335 - ($(date +%s) - T0) - ${1:-0}))
  echo $((l < 20 ? 20 : l))
}
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader
git log --oneline -1 2>/dev/null

# --threads 3: nvcc compiles sm_80, sm_90a and the compute_80 PTX of a file at once (fwd_mma_f16.cu has 64 kernels)
{ timeout 200 cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_FLAGS=--threads 3" &&
  timeout 200 cmake --build build-gpu -j16 --target qattn qattn_gpu_test; } > "$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; exit 1; }
stamp "built"
LIB=build-gpu/libqattn.so
T=build-gpu/tests/gpu/qattn_gpu_test
(timeout 60 nvcc -cubin -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Isrc/cuda -Isrc -Iinclude \
  src/cuda/fwd_mma_f16.cu -o /tmp/f16.cubin -Xptxas -v 2>&1 | grep -E "Function properties|spill|registers" |
  sed -E 's/.*fwd_f16_kernelILi([0-9]+)ELb([01])ELb([01]).*/D \1 bf16 \2 mods \3:/' | paste - - - > "$OUT/ptxas_f16.txt") &
PTX=$!

(timeout 150 stdbuf -oL $T --alt > "$OUT/test_f16.log" 2>&1; echo "rc=$?" >> "$OUT/test_f16.log") &
P1=$!
(timeout 150 stdbuf -oL $T --int8 > "$OUT/test_i8.log" 2>&1; echo "rc=$?" >> "$OUT/test_i8.log") &
P2=$!
wait $P1 $P2
for f in "$OUT/test_f16.log" "$OUT/test_i8.log"; do
  echo "$f: ok $(grep -c '^ok' $f), FAIL $(grep -c FAIL $f), $(tail -2 $f | tr '\n' ' ')"
  grep FAIL $f | head -8
done
grep -E " d(32|80|160|192) |softcap|alibi" "$OUT/test_f16.log" | head -60
stamp "tests done"
timeout 100 compute-sanitizer --tool memcheck --error-exitcode 3 $T --small > "$OUT/sanitize_memcheck.log" 2>&1
echo "memcheck f16 small rc=$?: $(grep -c '^ok' "$OUT/sanitize_memcheck.log") ok, $(grep -c FAIL "$OUT/sanitize_memcheck.log") FAIL, $(tail -1 "$OUT/sanitize_memcheck.log")"
if [ "$(left)" -gt 200 ]; then
  timeout 60 compute-sanitizer --tool racecheck --error-exitcode 3 $T --small > "$OUT/sanitize_racecheck.log" 2>&1
  echo "racecheck f16 small rc=$?: $(tail -1 "$OUT/sanitize_racecheck.log")"
fi
stamp "sanitizers done"
wait $PTX
cat "$OUT/ptxas_f16.txt"
timeout $(left 60) python3 bench/gpu_compare.py --lib $LIB --out "$OUT" --dims 32,64,80,128,160,192 --lens 1024,4096 \
  --no-int8 --no-peers --reps 10 > "$OUT/bench.log" 2>&1
echo "gpu_compare rc=$?"
grep -E "^\||Error|unavailable|failed|TFLOP" "$OUT/bench.log" | grep -v "^| D | L | causal | qattn i8 all" | head -40
stamp "compare done"
timeout $(left) python3 bench/gpu_mods.py --lib $LIB --dims 64,128 --lens 4096 --reps 10 > "$OUT/mods.log" 2>&1
echo "gpu_mods rc=$?"
grep -E "^\||failed|softcap 30" "$OUT/mods.log"
stamp "end"
