#!/usr/bin/env bash
# One device call for profiling: build, the Python binding's GPU tests, the decode correctness cases,
# then Nsight Compute (full set) on the decode split kernel (INT8 and FP16 caches, the benchmark shape)
# and on the INT8 forward kernel (B 4, H 16, L 4096, D 128). Reports and text pages under $OUT.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
{ cmake -S . -B build-gpu -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu -j16 --target qattn qattn_gpu_test; } > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
export QATTN_LIBRARY=$PWD/build-gpu/libqattn.so PYTHONPATH=$PWD/python
python3 -m pytest -q -rs python/tests/test_gpu.py 2>&1 | tail -15
python3 bench/gpu_decode.py --lib build-gpu/libqattn.so --small 2>&1 | tail -5
ncu --set full --kernel-name regex:"kvd_mma" --launch-count 4 -o /tmp/decode -f python3 bench/gpu_decode.py --lib build-gpu/libqattn.so --profile > "$OUT/ncu_decode.log" 2>&1
tail -3 "$OUT/ncu_decode.log"
ncu -i /tmp/decode.ncu-rep --page details > "$OUT/decode_details.txt" 2>&1
ncu -i /tmp/decode.ncu-rep --page source --csv --print-source sass --launch-count 1 > "$OUT/decode_i8_source.csv" 2>&1
ncu --set full --kernel-name regex:fwd_i8 --launch-skip 1 --launch-count 1 -o /tmp/fwd_i8 -f python3 dev/gpu/fwd_i8_once.py > "$OUT/ncu_fwd.log" 2>&1
tail -3 "$OUT/ncu_fwd.log"
ncu -i /tmp/fwd_i8.ncu-rep --page details > "$OUT/fwd_i8_details.txt" 2>&1
ncu -i /tmp/fwd_i8.ncu-rep --page source --csv --print-source sass > "$OUT/fwd_i8_source.csv" 2>&1
ls -la "$OUT"
grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Issue Slots Busy|No Eligible|Registers Per|Achieved Occupancy|Warp Cycles Per Issued" "$OUT/decode_details.txt" "$OUT/fwd_i8_details.txt" | head -60
