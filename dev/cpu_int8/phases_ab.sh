#!/usr/bin/env bash
# Alternates i8_phases builds (dev/cpu_int8/phases.c linked against each library) N times and prints,
# per build, the median and the minimum over the runs of each phase's median (quant Q,K; quant V;
# tile loop; total), process CPU ms, 1 thread; on a shared machine the minimum is the steadier figure.
# Usage: bash dev/cpu_int8/phases_ab.sh "L causal rounds" N BIN...
set -euo pipefail
args=$1 n=$2; shift 2
tmp=$(mktemp -d)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 0; r < n; r++)); do
  for b in "$@"; do "$b" $args | sed 's/.*: //' | awk '{print $3, $6, $9, $11}' >> "$tmp/$(echo "$b" | tr / _)"; done
done
for b in "$@"; do
  python3 - "$tmp/$(echo "$b" | tr / _)" "$b" <<'PY'
import sys, statistics as st
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
cols = list(zip(*rows))
names = ["quant Q,K", "quant V", "tile loop", "total"]
print(f"{sys.argv[2]:32s}", "  ".join(f"{n} med {st.median(c):6.2f} min {min(c):6.2f}" for n, c in zip(names, cols)))
PY
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$tmp"
