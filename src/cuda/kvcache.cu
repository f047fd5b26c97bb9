/* qattn_forward_kvcache's kernels (kvcache_driver.cu queues them): one thread per element of the
 * append and of the query rotation, one per 16-byte chunk of the gather, in grid-stride loops;
 * the steps themselves are kvcache_steps.cuh's (tested on the host). Memory-bound copies. */
#include "kvcache_steps.cuh"

namespace {

constexpr int THREADS = 256;
constexpr int64_t MAX_GRID = 65535 * 8; /* blocks per launch; the grid-stride loops cover the rest */

__global__ void __launch_bounds__(THREADS) append_kernel(const kvc_append_args a, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)THREADS + threadIdx.x; e < n; e += (int64_t)gridDim.x * THREADS) kvc_append(a, e);
}

__global__ void __launch_bounds__(THREADS) rotate_q_kernel(const kvc_rotate_args a, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)THREADS + threadIdx.x; e < n; e += (int64_t)gridDim.x * THREADS) kvc_rotate_q(a, e);
}

__global__ void __launch_bounds__(THREADS) gather_kernel(const kvc_gather_args a, int64_t n) {
    for (int64_t x = blockIdx.x * (int64_t)THREADS + threadIdx.x; x < n; x += (int64_t)gridDim.x * THREADS) kvc_gather(a, x);
}

unsigned grid_for(int64_t n) {
    const int64_t blocks = (n + THREADS - 1) / THREADS;
    return (unsigned)(blocks < MAX_GRID ? blocks : MAX_GRID);
}

} // namespace

cudaError_t qattn_cuda_launch_kvc_append(const kvc_append_args &a, int64_t n, cudaStream_t stream) {
    append_kernel<<<grid_for(n), THREADS, 0, stream>>>(a, n);
    return cudaGetLastError();
}

cudaError_t qattn_cuda_launch_kvc_rotate_q(const kvc_rotate_args &a, int64_t n, cudaStream_t stream) {
    rotate_q_kernel<<<grid_for(n), THREADS, 0, stream>>>(a, n);
    return cudaGetLastError();
}

cudaError_t qattn_cuda_launch_kvc_gather(const kvc_gather_args &a, int64_t n, cudaStream_t stream) {
    gather_kernel<<<grid_for(n), THREADS, 0, stream>>>(a, n);
    return cudaGetLastError();
}
