#!/usr/bin/env bash
# qattn_dist on the GPU (NCCL): build with CUDA (NCCL from the CUDA toolkit; MPI when installed),
# run the NCCL test with one rank (and with every GPU when mpirun and >= 2 GPUs are there), then
# time qattn bench --dist nccl (exact, Star, decode) against the plain single-GPU bench of the
# same shape. Logs and JSON lines under $OUT (default ./out).
# Usage: bench/gpu_dist.sh            Env: LENS="32768 131072" (exact-mode lengths)
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/nvidia_smi.txt" 2>&1
cat "$OUT/nvidia_smi.txt"
B=build-gpu-dist
cmake -S . -B $B -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DQATTN_BUILD_TESTS=ON > "$OUT/build.log" 2>&1
grep "qattn_dist:" "$OUT/build.log"
if ! grep -q "qattn_dist: MPI [A-Z]*, NCCL ON" "$OUT/build.log"; then
  echo "NCCL not found by CMake (nccl.h / libnccl next to the CUDA toolkit): nothing to run"; tail -20 "$OUT/build.log"; exit 1
fi
cmake --build $B -j16 --target qattn_cli qattn_dist_nccl_test >> "$OUT/build.log" 2>&1
rc=$?
grep -E "error|warning" "$OUT/build.log" | head -20
if [ $rc -ne 0 ]; then tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; fi
T=$B/tests/gpu/qattn_dist_nccl_test
Q=$B/qattn
n_gpu=$(nvidia-smi -L 2>/dev/null | wc -l)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
launch() { # launch N cmd...: N ranks through mpirun when available, else one process
  local n=$1; shift
  if [ "$n" -gt 1 ]; then mpirun -np "$n" "$@"; else "$@"; fi
}
$T > "$OUT/test_nccl_1rank.log" 2>&1; echo "NCCL test, 1 rank: rc=$?"; grep -E "FAIL|PASSED|FAILED|rel_l2|counters" "$OUT/test_nccl_1rank.log"
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 3 $T > "$OUT/san_memcheck_nccl.log" 2>&1
  echo "memcheck, 1 rank: rc=$?"; tail -2 "$OUT/san_memcheck_nccl.log"
fi
if command -v mpirun >/dev/null && [ "$n_gpu" -ge 2 ]; then
  launch "$n_gpu" $T > "$OUT/test_nccl_${n_gpu}rank.log" 2>&1; echo "NCCL test, $n_gpu ranks: rc=$?"
  grep -E "FAIL|PASSED|FAILED|rel_l2" "$OUT/test_nccl_${n_gpu}rank.log"
fi
ranks="1"
if command -v mpirun >/dev/null && [ "$n_gpu" -ge 2 ]; then ranks="1 2"; fi
for L in ${LENS:-32768 131072}; do
  common="--heads 16 --kv-heads 16 --head-dim 128 --seqlen-q $L --causal --precision fp16 --iters 5 --warmup 2 --json"
  $Q bench --backend cuda $common >> "$OUT/bench_single_gpu.jsonl" 2>> "$OUT/bench.err"
  for n in $ranks; do
    launch "$n" $Q bench --dist nccl $common >> "$OUT/bench_dist_nccl.jsonl" 2>> "$OUT/bench.err"
  done
done
for n in $ranks; do
  launch "$n" $Q bench --dist nccl --mode star --heads 16 --head-dim 128 --seqlen-k 131072 --seqlen-q 256 --anchor 8192 \
    --precision fp16 --iters 5 --warmup 2 --json >> "$OUT/bench_dist_star.jsonl" 2>> "$OUT/bench.err"
done
for n in $ranks; do
  launch "$n" $Q bench --dist nccl --mode decode --kv-len 131072 --kv-dtype fp16 --heads 32 --kv-heads 8 --head-dim 128 \
    --iters 20 --warmup 3 --json >> "$OUT/bench_dist_decode.jsonl" 2>> "$OUT/bench.err"
done
cat "$OUT/bench_single_gpu.jsonl" "$OUT/bench_dist_nccl.jsonl" "$OUT/bench_dist_star.jsonl" "$OUT/bench_dist_decode.jsonl" 2>/dev/null
tail -5 "$OUT/bench.err" 2>/dev/null
