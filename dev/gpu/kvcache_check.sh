#!/usr/bin/env bash
# One device call for qattn_forward_kvcache on the CUDA backend (src/cuda/kvcache_driver.cu), on the
# prebuilt tree (here: `bash dev/gpu/prebuilt.sh pack`; the call carries .gl): the op table's kvcache
# cases on the CUDA targets (the cache after the append bitwise, o and lse against the FP64 oracle),
# the same under compute-sanitizer memcheck, python/tests/test_gpu.py's kvcache tests (GPU against the
# CPU backend; refusals), the CLI's (qattn bench --kvcache --backend cuda), FlashAttention's paged and
# kvcache forward tests on the GPU when .fa/ is carried (dev/fa_tests/pack.sh .fa), then bench/gpu_kvcache.py.
# Carry [".gl"] (and ".fa"). Usage: OUT=$OUT LIMIT=300 bash dev/gpu/kvcache_check.sh
OUT=${OUT:-out} LIMIT=${LIMIT:-300}
. bench/gpu_lib.sh
. dev/gpu/prebuilt.sh unpack
export QATTN_TEST_FILTER=kvcache
run_bg ops_kvcache 120 "$OPS"
run_bg ops_kvcache_memcheck 200 compute-sanitizer --tool memcheck "$OPS"
wait
unset QATTN_TEST_FILTER
stamp "op table"
grep -E "cuda/(auto|mma)|FAIL|checks" "$OUT/ops_kvcache.log" | tail -12
grep -E "ERROR SUMMARY|FAIL" "$OUT/ops_kvcache_memcheck.log" | head -5
tail -1 "$OUT/ops_kvcache.log" "$OUT/ops_kvcache_memcheck.log"
QATTN_LIBRARY=$LIB PYTHONPATH=python timeout "$(left 60)" python3 -m pytest -q -rs python/tests/test_gpu.py -k kvcache > "$OUT/py_kvcache.log" 2>&1
tail -3 "$OUT/py_kvcache.log"
QATTN_CLI=$CLI timeout 60 python3 -m pytest -q -rs tests/cli/test_cli.py -k kvcache > "$OUT/cli_kvcache.log" 2>&1
tail -2 "$OUT/cli_kvcache.log"
$CLI bench --kvcache --backend cuda --batch 16 --kv-len 8192 --seqlen-q 1 --page-size 16 --iters 20 > "$OUT/cli_bench_kvcache.txt" 2>&1
cat "$OUT/cli_bench_kvcache.txt"
stamp "pytest, CLI"
if [ -d .fa ]; then # FlashAttention's paged / kvcache forward tests on the GPU (dev/fa_tests/pack.sh .fa here)
  python3 -m pip install -q --no-index --no-deps .fa/wheels/*.whl
  FA_DEVICE=cuda QATTN_LIBRARY=$LIB FA_JOBS=0 FA_SUMMARY=$OUT/fa_summary.txt FA_SAMPLE=1/200 FA_MAX_SEQLEN_K=20000 \
    FA_TESTS="test_flash_attn_kvcache test_flash_attn_varlen_paged_kv_num_splits test_flash_attn_kvcache_paged_block_table_bounds" \
    timeout "$(left 120)" dev/fa_tests/run.sh .fa > "$OUT/fa.log" 2>&1
  tail -3 "$OUT/fa.log"
  cat "$OUT/fa_summary.txt"
  stamp "FlashAttention's tests"
fi
QATTN_LIBRARY=$LIB PYTHONPATH=python timeout "$(left 5)" python3 bench/gpu_kvcache.py --out "$OUT" > "$OUT/bench_kvcache.log" 2>&1
cat "$OUT/bench_kvcache.log"
stamp "done"
