#!/usr/bin/env bash
# Same-process A/B of schedule alternatives of the FP16/BF16 wgmma kernel (dev/cuda_f16_wgmma/variant.sh):
# each variant is built by editing the source, rebuilding libqattn in build-gpu (only fwd_wgmma_f16.cu
# recompiles) and copying the library aside; the source is restored and rebuilt at the end. Then
# dev/gpu/gpu_i8_ab.py --f16 times every copy (and SDPA FA2 and cuDNN) in one process, alternating, and
# compares their outputs; each variant also runs the small GPU test cases. Needs a configured build-gpu (bench/gpu_f16_wgmma.sh makes it).
# Usage: VARIANTS="static_schedule nq1_nst3" SHAPES=4k,4kc,16k,16kc bash dev/gpu/gpu_f16_wgmma_ab.sh
set -u
OUT=${OUT:-out}
VARIANTS=${VARIANTS:-static_schedule nq1_nst3}
A=/tmp/f16ab
mkdir -p "$OUT" $A
cmake --build build-gpu -j16 --target qattn > $A/build.log 2>&1 && cp -L build-gpu/libqattn.so $A/default.so || { tail -20 $A/build.log; exit 1; }
libs=(--lib default=$A/default.so)
for v in $VARIANTS; do
  if bash dev/cuda_f16_wgmma/variant.sh "$v" apply && cmake --build build-gpu -j16 --target qattn qattn_gpu_test > $A/build_$v.log 2>&1; then
    cp -L build-gpu/libqattn.so "$A/$v.so" && libs+=(--lib "$v=$A/$v.so")
    # the small GPU test cases on the variant (tails, masks, GQA, D 64/96/128/256, the mma.sync cross-check)
    timeout 60 build-gpu/tests/gpu/qattn_gpu_test --small --alt > "$A/test_$v.log" 2>&1
    echo "variant $v, small tests rc=$?: ok $(grep -c '^ok' "$A/test_$v.log"), FAIL $(grep -c '^FAIL' "$A/test_$v.log")"; grep '^FAIL' "$A/test_$v.log" | head -3
  else
    echo "variant $v: build failed"; tail -10 $A/build_$v.log
  fi
  bash dev/cuda_f16_wgmma/variant.sh revert
done
cmake --build build-gpu -j16 --target qattn qattn_gpu_test > $A/build.log 2>&1 || tail -20 $A/build.log
timeout 240 python3 dev/gpu/gpu_i8_ab.py --f16 "${libs[@]}" --shapes "${SHAPES:-4k,4kc,16k,16kc}" --out $A > "$OUT/f16w_ab.log" 2>&1
echo "A/B rc=$?"; grep -E "^\||cuDNN|Error|error" "$OUT/f16w_ab.log"
