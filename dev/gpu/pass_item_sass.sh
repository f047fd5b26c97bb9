#!/usr/bin/env bash
# SASS instructions per work item of the INT8 quantization pass (sm_90a, D 128, FP16): k_part, v_part (K and V
# tiles) and q_rows_part, each wrapped alone in a kernel, compiled, and counted with cuobjdump (their code
# is straight-line: the counts are per warp and item, bar the rare branches). Runs here, no GPU.
# Usage: bash dev/gpu/pass_item_sass.sh [BUILD]   (a CMake build dir configured with CUDA; default build)
# CUOBJDUMP: cuobjdump's path if it is not on PATH (e.g. from the nvidia-cuda-cuobjdump wheel).
set -eu
B=${1:-build}
D=$(mktemp -d)
cat > "$D/parts.cu" <<CU
#include "$PWD/src/cuda/quant_i8.cu"
namespace {
__global__ void __launch_bounds__(NT, 3) part_k(const qattn_cuda_args a, const i8_aux w, int8_t *ki, float *sk, int8_t *vt, float *sv) {
    __shared__ __align__(16) unsigned char smem[40000];
    k_part<128, false>(a, blockIdx.x, blockIdx.y, w, ki, sk, smem);
}
__global__ void __launch_bounds__(NT, 3) part_v(const qattn_cuda_args a, const i8_aux w, int8_t *ki, float *sk, int8_t *vt, float *sv) {
    __shared__ __align__(16) unsigned char smem[40000];
    v_part<128, false>(a, blockIdx.x, blockIdx.y, 8, w, vt, sv, smem);
}
__global__ void __launch_bounds__(NT, 3) part_q(const qattn_cuda_args a, const i8_aux w, int8_t *qi, float *sq) {
    q_rows_part<128, false>(a, blockIdx.x, blockIdx.y, qi, sq, w);
}
}
void *qattn_pass_parts[] = {(void *)part_k, (void *)part_v, (void *)part_q};
CU
(R=$PWD && cd "$B" && . "$R/dev/gpu/variants.sh" && nvcc_sm90a "$D/parts.cu" "$D/parts.o")
"${CUOBJDUMP:-cuobjdump}" -sass "$D/parts.o" > "$D/parts.sass"
for k in part_k part_v part_q; do # instruction lines: an address comment, then an optional predicate and the opcode
  awk -v k=$k '/Function : /{on=($0 ~ k)} on' "$D/parts.sass" | grep -oE "^\s+/\*[0-9a-f]{4,}\*/\s+(@!?U?P[0-9T] )?[A-Z0-9_.]+" |
    awk '{print $NF}' | sed 's/\..*//' | sort | uniq -c | sort -rn |
    awk -v k=$k '{t += $1; if (NR <= 10) top = top " " $2 " " $1} END {print k ": " t " instructions;" top}'
done
rm -rf "$D"
