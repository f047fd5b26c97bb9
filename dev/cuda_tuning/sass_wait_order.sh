#!/usr/bin/env bash
# Where ptxas put the wgmma waits: compiles the two wgmma kernels for sm_90a, disassembles them and prints,
# per kernel, the run of GEMM issues, waits (WARPGROUP.DEPBAR.LE gsb0, N) and exponentials (MUFU.EX2) in
# program order. ptxas moves a wait up to the top of its basic block, so a softmax meant to overlap the
# previous P V shows as "wait 0" before its MUFU run. Needs cuobjdump: the toolkit's, or PyPI's
# nvidia-cuda-cuobjdump (pip install --target /tmp/cuobjdump nvidia-cuda-cuobjdump; PATH=/tmp/cuobjdump/nvidia/cu13/bin:$PATH).
# Usage: bash dev/cuda_tuning/sass_wait_order.sh [file.cu ...]   (default: both wgmma kernels)
set -eu
command -v cuobjdump > /dev/null || { echo "cuobjdump not found (see the header)"; exit 2; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
for f in ${*:-src/cuda/fwd_wgmma_i8.cu src/cuda/fwd_wgmma_f16.cu}; do
  nvcc -arch=sm_90a -cubin -O3 -std=c++17 --expt-relaxed-constexpr -Iinclude -Isrc -o "$T/k.cubin" "$f"
  cuobjdump -sass "$T/k.cubin" | awk '
    /Function :/ { if (n) flush(); name = $3; sub(/.*_kernel/, "", name); sub(/EEEv.*/, "", name); printf "%s\n ", name; next }
    { op = "" }
    /[IH]GMMA/ { op = "gemm" }
    /WARPGROUP.DEPBAR.LE/ { match($0, /gsb0, 0x[0-9]/); op = "wait" substr($0, RSTART + RLENGTH - 1, 1) }
    /MUFU.EX2/ { op = "ex2" }
    op != "" { if (op == last) n++; else { if (n) printf " %s%s", last, (n > 1 ? "x" n : ""); last = op; n = 1 } }
    function flush() { printf " %s%s\n", last, (n > 1 ? "x" n : ""); n = 0; last = "" }
    END { if (n) flush() }'
done
