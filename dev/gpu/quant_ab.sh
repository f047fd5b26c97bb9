#!/usr/bin/env bash
# One device call: the INT8 quantization pass of three source trees (this one and two under .ab/, made
# with `git archive COMMIT | tar -x -C .ab/NAME` and edited, carried as untracked files) built side by
# side, then bench/gpu_compare.py on each, alternated twice; prints its quantization-pass columns.
set -u
T0=$(date +%s); st(){ echo "[$(( $(date +%s)-T0 )) s] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
for v in main base qsc256; do
  src=.; [ $v != main ] && src=.ab/$v
  (cmake -S $src -B /tmp/b-$v -DQATTN_CUDA=ON -DCMAKE_BUILD_TYPE=Release > $OUT/cfg-$v.log 2>&1 && timeout 400 cmake --build /tmp/b-$v -j6 --target qattn > $OUT/build-$v.log 2>&1; echo "$v build rc=$?") &
done; wait; st built
for r in 1 2; do for v in base main qsc256; do
  timeout 100 python3 bench/gpu_compare.py --lib /tmp/b-$v/libqattn.so --out $OUT/cmp-$v-$r --dims 128 --lens 4096,16384 --no-peers --reps 10 > $OUT/cmp-$v-$r.log 2>&1
  echo "== $v round $r"; grep -A6 "quant ms" $OUT/cmp-$v-$r.log | grep -E "^\| 128" | cut -d'|' -f2-5,11-16
done; done; st end
