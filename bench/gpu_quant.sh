#!/usr/bin/env bash
# One device call for the INT8 quantization pass and the peers, logs and JSON under $OUT (default ./out):
#  1. installs the carried wheels, if any (git-ignored wheels/: FlashInfer 0.5.3 + apache-tvm-ffi +
#     SageAttention; wheels/fa4/: flash-attn-4 4.0.0b15, quack-kernels, torch-c-dlpack-ext, the
#     nvidia-cutlass-dsl 4.4.2 meta wheel, and its 74 MB libs wheel repacked as cutlass_dsl_libs_base-4.4.2.tar.xz);
#  2. builds (CUDA on, Release) the library and the GPU test;
#  3. the GPU tests, FP16 and INT8 (INT8 includes the bitwise comparison of the quantization pass with
#     the CPU's) side by side, while FlashInfer and flash-attn-4 JIT-compile their kernels on small
#     inputs in the background (CPU work, not timed);
#  4. compute-sanitizer memcheck and racecheck of the INT8 small cases (the quantization check included);
#  5. bench/gpu_compare.py at D 128, L 1k/4k/16k (B*L = 16k), causal and not: qattn FP16/INT8 (all, kernel,
#     quantization alone in GB/s against a device copy of the same run), SDPA FA2/cuDNN and the peers.
# `bash bench/gpu_quant.sh decode`: steps 1-2, then bench/gpu_decode.py (its correctness checks, qattn's
# decode against SDPA and FlashInfer's batch decode, FP16 and FP8 caches) instead of 3-5.
# Each step has a timeout; the whole stays under ~9.5 minutes (estimate: build 1.5-2 min, tests with
# the JIT warm-up 3-4 min, sanitizers 1-2 min, comparison 2 min).
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=16
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 # flash-attn-4 keeps its compiled kernels on disk: the warm-up serves the benchmark
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }
left() { # seconds left before the ~9.5 minute mark (at least 30)
  local l=$((560 - ($(date +%s) - T0)))
  echo $((l < 30 ? 30 : l))
}
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader
python3 --version

shopt -s nullglob
whl=(wheels/*.whl wheels/fa4/*.whl)
if [ ${#whl[@]} -gt 0 ]; then
  SITE=/tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE "${whl[@]}" > "$OUT/pip.log" 2>&1 ||
    { echo "pip install failed:"; tail -5 "$OUT/pip.log"; }
  for t in wheels/fa4/*.tar.xz; do tar xJf "$t" -C $SITE; done
  # the cutlass DSL's .pth is not read from a PYTHONPATH entry: its path is added here
  export PYTHONPATH=$SITE:$SITE/nvidia_cutlass_dsl/python_packages${PYTHONPATH:+:$PYTHONPATH}
fi
for m in flashinfer flash_attn.cute sageattention; do
  python3 -c "import $m; print('$m', getattr($m, '__version__', ''), 'importable')" 2>&1 | tail -1
done
stamp "wheels done"

{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu -j16 --target qattn qattn_gpu_test; } > "$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; exit 1; }
stamp "built"
LIB=build-gpu/libqattn.so
T=build-gpu/tests/gpu/qattn_gpu_test

if [ "${1:-}" = decode ]; then
  timeout $(left) python3 bench/gpu_decode.py --lib $LIB --out "$OUT" > "$OUT/decode.log" 2>&1
  echo "decode rc=$?"
  grep -E "FAIL|CORRECTNESS|copy|FlashInfer|^\|" "$OUT/decode.log"
  stamp "end"
  exit 0
fi

(timeout 300 python3 bench/gpu_compare.py --lib $LIB --warm-peers > "$OUT/warm_peers.log" 2>&1; echo "rc=$?" >> "$OUT/warm_peers.log") &
WARM=$!
(timeout 300 stdbuf -oL $T > "$OUT/test_f16.log" 2>&1; echo "rc=$?" >> "$OUT/test_f16.log") &
P1=$!
(timeout 300 stdbuf -oL $T --int8 > "$OUT/test_i8.log" 2>&1; echo "rc=$?" >> "$OUT/test_i8.log") &
P2=$!
wait $P1 $P2
for f in "$OUT/test_f16.log" "$OUT/test_i8.log"; do
  echo "$f: ok $(grep -c '^ok' $f), FAIL $(grep -c FAIL $f), $(tail -1 $f)"
  grep FAIL $f | head -5
done
grep "quant vs CPU" "$OUT/test_i8.log"
stamp "tests done"
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 $T --small --int8 > "$OUT/sanitize_$tool.log" 2>&1
  echo "$tool int8 small rc=$?: $(grep -c '^ok' "$OUT/sanitize_$tool.log") ok, $(tail -1 "$OUT/sanitize_$tool.log")"
done
stamp "sanitizers done"
wait $WARM
cat "$OUT/warm_peers.log"
stamp "peers warm"
timeout $(left) python3 bench/gpu_compare.py --lib $LIB --out "$OUT" --dims 128 --lens 1024,4096,16384 --reps 20 > "$OUT/bench.log" 2>&1
echo "gpu_compare rc=$?"
grep -E "^\||Error|skipped|failed|accuracy|^Peers|TFLOP" "$OUT/bench.log"
stamp "end"
