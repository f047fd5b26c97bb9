#!/usr/bin/env bash
# The AVX-512 tier's CPU figures in one run (docs/benchmarks.md): the FMA peaks (AVX2 and AVX-512),
# FP32 prefill B1 H8 D128 L 2048/4096 causal and not with --isa avx2 and avx512 alternated ROUNDS
# times (medians and the per-round avx512/avx2 ratios), the peak again, then bench/cpu_compare.py
# (torch SDPA, and ggml where the ggml-python package is installed) in the same session.
# Usage: bash bench/cpu_avx512.sh [build-dir]   (env ROUNDS, default 3; THREADS, default all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
rounds=${ROUNDS:-3}
threads=${THREADS:-$(nproc)}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== $(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) threads=$threads load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$build/cpu_peak" "$threads"
for r in $(seq "$rounds"); do
  for L in 2048 4096; do
    for causal in "" --causal; do
      for isa in avx2 avx512; do
        "$build/qattn" bench --seqlen-q "$L" --heads 8 --head-dim 128 --precision fp32 --isa "$isa" \
          --threads "$threads" --iters 3 $causal --json | sed "s/^{/{\"round\": $r, /" >>"$log"
      done
    done
  done
done
python3 - "$log" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = sorted({(r["seqlen_q"], r["causal"]) for r in rows})
print(f"{'L':>5} {'causal':>6} | {'avx2 GF/s':>9} {'avx512 GF/s':>11} | avx512/avx2 per round")
for L, c in keys:
    sel = [r for r in rows if r["seqlen_q"] == L and r["causal"] == c]
    g = {isa: [r["gflops"] for r in sel if r["isa"] == isa] for isa in ("avx2", "avx512")}
    per = [b / a for a, b in zip(g["avx2"], g["avx512"])]
    print(f"{L:>5} {str(bool(c)):>6} | {statistics.median(g['avx2']):>9.1f} {statistics.median(g['avx512']):>11.1f} | "
          + " ".join(f"{x:.3f}" for x in per))
EOF
"$build/cpu_peak" "$threads"
ggml_flag=""
python3 -c "import ggml" 2>/dev/null && ggml_flag=--ggml
PYTHONPATH=python QATTN_LIBRARY="$build/libqattn.so" python3 bench/cpu_compare.py --threads "$threads" --isa avx2,avx512 --iters 5 $ggml_flag
