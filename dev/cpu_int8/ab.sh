#!/usr/bin/env bash
# A/B of two i8_ratio builds (dev/cpu_int8/ratio.c linked against two libraries), INT8 only,
# alternated ROUNDS times: prints each pair of medians (process CPU ms, 1 thread) and the load.
# Usage: bash dev/cpu_int8/ab.sh A B [L causal rounds iters]
set -euo pipefail
a=$1 b=$2 L=${3:-2048} c=${4:-1} rounds=${5:-5} it=${6:-5}
med() { "$1" "$L" "$c" "$it" 4 1 8 128 1 | awk '/int8:/ {for (i = 1; i <= NF; i++) if ($i == "median") print $(i + 1)}'; }
echo "L $L causal $c, load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 0; r < rounds; r++)); do x=$(med "$a"); y=$(med "$b"); echo "  A $x  B $y  B/A $(python3 -c "print(round($y / $x, 3))")"; done
echo "  load after: $(cut -d' ' -f1-3 /proc/loadavg)"
