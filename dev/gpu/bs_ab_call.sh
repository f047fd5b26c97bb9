#!/usr/bin/env bash
# One device call for changes to the block-sparse / INT8 wgmma kernels, on prebuilt binaries
# (dev/gpu/prebuilt.sh pack with each change as .ab/p/NAME.patch; unpacked here): the shipped build's
# block-sparse tests; per variant its tests (block-sparse FP16/BF16 and INT8, the dense FP16/BF16 and INT8
# sets: the kernels' producers and row stores are shared); compute-sanitizer memcheck and racecheck of
# the small block-sparse (FP16, INT8) and INT8 sets of the variants named in SAN (default: all); then bench/gpu_blocksparse.py alternated between the shipped
# library and the variants', twice each.
# Usage: LIMIT=240 OUT=$OUT VARIANTS="NAME ..." [SAN="NAME ..."] bash dev/gpu/bs_ab_call.sh
set -u
LIMIT=${LIMIT:-240}
VARIANTS=${VARIANTS:-${VARIANT:?set VARIANTS to the NAMEs of .ab/p/NAME.patch}}
SAN=${SAN:-$VARIANTS}
. bench/gpu_lib.sh
. dev/gpu/prebuilt.sh unpack
stamp "block-sparse A/B: $LIB against $VARIANTS"
cs="compute-sanitizer --error-exitcode 3"
run_bg base_bs $(left 150) $T --bs
run_bg base_bs_i8 $(left 150) $T --bs --int8
logs="base_bs base_bs_i8"
for v in $VARIANTS; do
  VT=$Q/gpu_test_$v
  run_bg ${v}_bs $(left 150) $VT --bs
  run_bg ${v}_bs_i8 $(left 150) $VT --bs --int8
  run_bg ${v}_f16 $(left 150) $VT
  run_bg ${v}_i8 $(left 150) $VT --int8
  logs="$logs ${v}_bs ${v}_bs_i8 ${v}_f16 ${v}_i8"
  case " $SAN " in *" $v "*) ;; *) continue ;; esac
  for t in memcheck racecheck; do
    run_bg ${v}_${t}_bs $(left 150) $cs --tool $t $VT --small --bs
    run_bg ${v}_${t}_bs_i8 $(left 150) $cs --tool $t $VT --small --bs --int8
    run_bg ${v}_${t}_i8 $(left 150) $cs --tool $t $VT --small --int8
    logs="$logs ${v}_${t}_bs ${v}_${t}_bs_i8 ${v}_${t}_i8"
  done
done
wait
stamp "checks done"
tests_summary $logs
for r in 1 2; do
  for n in base $VARIANTS; do
    l=$LIB
    [ "$n" = base ] || l=$Q/$n/libqattn.so
    timeout $(left 5) python3 bench/gpu_blocksparse.py --lib "$l" --reps 10 --out "$OUT/bs_${n}_$r" 2>&1 | grep -v -i warn > "$OUT/bs_${n}_$r.log"
    echo "== $n (round $r)"
    grep -E "^\| (fp16|int8) \| (dense|1.00|0.25|0.10|0.05) |acceptance" "$OUT/bs_${n}_$r.log"
  done
done
stamp end
