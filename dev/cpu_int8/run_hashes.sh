#!/usr/bin/env bash
# md5 of `qattn run` INT8 outputs (and LSE) for a few shapes x schemes x ISAs: the bits must not
# change with a kernel change, and must agree across ISAs. Usage: bash dev/cpu_int8/run_hashes.sh QATTN_BINARY [DIR]
set -euo pipefail
bin=$1 dir=${2:-/tmp/qattn_hash_inputs}
mkdir -p "$dir"
python3 - "$dir" <<'PY'
import sys, numpy as np, os
d = sys.argv[1]
shapes = {"a": (1, 203, 203, 4, 2, 80), "b": (2, 130, 130, 8, 8, 128), "c": (1, 300, 500, 6, 2, 64), "d": (1, 1024, 1024, 8, 8, 128)}
for name, (B, Lq, Lk, H, HK, D) in shapes.items():
    if os.path.exists(f"{d}/{name}_q.npy"): continue
    r = np.random.default_rng(hash(name) % 1000)
    np.save(f"{d}/{name}_q.npy", r.standard_normal((B, Lq, H, D)).astype(np.float32))
    np.save(f"{d}/{name}_k.npy", (r.standard_normal((B, Lk, HK, D)) + 0.5).astype(np.float32))
    np.save(f"{d}/{name}_v.npy", r.standard_normal((B, Lk, HK, D)).astype(np.float32))
PY
for s in a b c d; do
  for c in "" --causal; do
    for scheme in qattn intfa sage; do
      line="$s ${c:-nc} $scheme:"
      for isa in ref avx2 avxvnni avx512; do
        "$bin" run --q $dir/${s}_q.npy --k $dir/${s}_k.npy --v $dir/${s}_v.npy --out $dir/o.npy --lse $dir/l.npy --precision int8 \
          --int8-scheme $scheme --isa $isa --threads 2 $c >/dev/null 2>&1 || { line+=" $isa:-"; continue; }
        line+=" $isa:$(cat $dir/o.npy $dir/l.npy | md5sum | cut -c1-10)"
      done
      echo "$line"
    done
  done
done
