/* placeholder: replaced by the INT8 kernel */
#include "cuda_common.cuh"
cudaError_t qattn_cuda_prepare_i8(void) { return cudaSuccess; }
cudaError_t qattn_cuda_launch_i8(const qattn_cuda_args &, cudaStream_t) { return cudaErrorNotSupported; }
size_t qattn_cuda_i8_workspace(const qattn_cuda_args &) { return 0; }
cudaError_t qattn_cuda_quantize_i8(qattn_cuda_args &, int, void *, cudaStream_t) { return cudaErrorNotSupported; }
