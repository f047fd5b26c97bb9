#!/usr/bin/env bash
# One device call with nothing built on the device (dev/gpu/prebuilt.sh pack, carry [".gl"]): the op table's
# KV-decode cases on the CUDA targets, compute-sanitizer memcheck and racecheck of the decode kernels
# (bench/gpu_decode.py --small), python/tests/test_gpu.py, the INT8 GPU tests of the library and of each
# quantization-pass variant (.ab/v/NAME.cu at pack time); then dev/gpu/quant_pass_ab.py over the library and
# the variants, and, with NCU=1 and time left, Nsight Compute's source-level stall sampling of the pass.
# Usage: LIMIT=300 OUT=$OUT bash dev/gpu/quant_prebuilt_call.sh
set -u
LIMIT=${LIMIT:-300}
. bench/gpu_lib.sh
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
. dev/gpu/prebuilt.sh unpack
variants=$(for f in $Q/gpu_test_*; do [ -f "$f" ] && basename "$f" | sed 's/^gpu_test_//'; done)
stamp "unpacked (variants: $variants)"
start_decode_checks $OPS $LIB $(left 60)
run_bg test_i8 $(left 60) $T --int8
for n in $variants; do run_bg test_i8_$n $(left 60) $Q/gpu_test_$n --int8; done
wait
stamp "checks done"
decode_checks_summary
tests_summary test_i8 $(for v in $variants; do echo test_i8_$v; done)
libs="new=$LIB"; for n in $variants; do libs="$libs $n=$Q/$n/libqattn.so"; done
timeout $(left 10) python3 dev/gpu/quant_pass_ab.py $libs 2>&1 | grep -v -i warn | tee $OUT/pass_ab.log
stamp "A/B done"
if [ "${NCU:-0}" = 1 ] && [ "$(left)" -gt 60 ]; then
  QATTN_LIBRARY=$LIB PYTHONPATH=$PWD/python timeout $(left 5) ncu --set full --kernel-name regex:i8q_fused --launch-skip 1 --launch-count 1 \
    -o /tmp/pass -f python3 dev/gpu/fwd_i8_once.py > $OUT/ncu_pass.log 2>&1
  ncu -i /tmp/pass.ncu-rep --page details > $OUT/pass_details.txt 2>&1
  ncu -i /tmp/pass.ncu-rep --page source --csv --print-source sass > /tmp/pass_source.csv 2>&1
  python3 dev/gpu/ncu_stalls.py /tmp/pass_source.csv 30 | tee $OUT/pass_hot.txt
  grep -E "Duration|DRAM Throughput|Compute \(SM\)|Issue Slots Busy|No Eligible|Achieved Occupancy|Warp Cycles Per Issued|L2 Hit" $OUT/pass_details.txt | head -20
fi
stamp end
