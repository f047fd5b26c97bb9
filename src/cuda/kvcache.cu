/* qattn_forward_kvcache's kernels (kvcache_driver.cu queues them): one thread per element of the
 * append, the query rotation and the LSE scatter, one per 16-byte chunk of the gather (a grid row per
 * sequence), in grid-stride loops;
 * the steps themselves are kvcache_steps.cuh's (tested on the host). Memory-bound copies. */
#include "kvcache_steps.cuh"

namespace {

constexpr int THREADS = 256;
constexpr int64_t MAX_GRID = 65535 * 8; /* blocks per launch (per sequence: the gather); the grid-stride loops cover the rest */

__global__ void __launch_bounds__(THREADS) append_kernel(const kvc_append_args a, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)THREADS + threadIdx.x; e < n; e += (int64_t)gridDim.x * THREADS) kvc_append(a, e);
}

__global__ void __launch_bounds__(THREADS) rotate_q_kernel(const kvc_rotate_args a, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)THREADS + threadIdx.x; e < n; e += (int64_t)gridDim.x * THREADS) kvc_rotate_q(a, e);
}

/* blockIdx.y: the sequence of the call */
__global__ void __launch_bounds__(THREADS) gather_kernel(const kvc_gather_args a) {
    const int64_t n = kvc_gather_chunks(a, blockIdx.y);
    for (int64_t x = blockIdx.x * (int64_t)THREADS + threadIdx.x; x < n; x += (int64_t)gridDim.x * THREADS) kvc_gather(a, blockIdx.y, x);
}

__global__ void __launch_bounds__(THREADS) lse_scatter_kernel(const kvc_lse_args a, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)THREADS + threadIdx.x; e < n; e += (int64_t)gridDim.x * THREADS) kvc_lse_scatter(a, e);
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

cudaError_t qattn_cuda_launch_kvc_gather(const kvc_gather_args &a, int64_t longest_chunks, cudaStream_t stream) {
    gather_kernel<<<dim3(grid_for(longest_chunks), (unsigned)a.nb), THREADS, 0, stream>>>(a); /* nb <= 65535: the plan's cap */
    return cudaGetLastError();
}

cudaError_t qattn_cuda_launch_kvc_lse_scatter(const kvc_lse_args &a, int64_t n, cudaStream_t stream) {
    lse_scatter_kernel<<<grid_for(n), THREADS, 0, stream>>>(a, n);
    return cudaGetLastError();
}
