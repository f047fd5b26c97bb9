#!/usr/bin/env bash
# One device call for a change to the block-sparse kernels, on prebuilt binaries (dev/gpu/prebuilt.sh pack
# with the change as .ab/p/NAME.patch; unpacked here): the
# shipped build's block-sparse tests; the variant's tests (block-sparse FP16/BF16 and INT8, and the dense
# FP16/BF16 set: the kernels' producers are shared); compute-sanitizer memcheck and racecheck of the
# variant's small block-sparse sets; then bench/gpu_blocksparse.py alternated between the shipped library
# and the variant's, twice each.
# Usage: LIMIT=240 OUT=$OUT VARIANT=NAME bash dev/gpu/bs_ab_call.sh
set -u
LIMIT=${LIMIT:-240}
VARIANT=${VARIANT:?set VARIANT to the NAME of .ab/p/NAME.patch}
. bench/gpu_lib.sh
. dev/gpu/prebuilt.sh unpack
VT=$Q/gpu_test_$VARIANT VLIB=$Q/$VARIANT/libqattn.so
stamp "block-sparse A/B: $LIB against $VLIB"
cs="compute-sanitizer --error-exitcode 3"
run_bg base_bs $(left 150) $T --bs
run_bg base_bs_i8 $(left 150) $T --bs --int8
run_bg v_bs $(left 150) $VT --bs
run_bg v_bs_i8 $(left 150) $VT --bs --int8
run_bg v_f16 $(left 150) $VT
run_bg v_mem_bs $(left 150) $cs --tool memcheck $VT --small --bs
run_bg v_mem_bs_i8 $(left 150) $cs --tool memcheck $VT --small --bs --int8
run_bg v_race_bs $(left 150) $cs --tool racecheck $VT --small --bs
run_bg v_race_bs_i8 $(left 150) $cs --tool racecheck $VT --small --bs --int8
wait
stamp "checks done"
tests_summary base_bs base_bs_i8 v_bs v_bs_i8 v_f16 v_mem_bs v_mem_bs_i8 v_race_bs v_race_bs_i8
for r in 1 2; do
  for n in base $VARIANT; do
    l=$LIB
    [ "$n" = base ] || l=$VLIB
    timeout $(left 5) python3 bench/gpu_blocksparse.py --lib "$l" --reps 10 --out "$OUT/bs_${n}_$r" 2>&1 | grep -v -i warn > "$OUT/bs_${n}_$r.log"
    echo "== $n (round $r)"
    grep -E "^\| (fp16|int8) \| (dense|1.00|0.25|0.10|0.05) |acceptance" "$OUT/bs_${n}_$r.log"
  done
done
stamp end
