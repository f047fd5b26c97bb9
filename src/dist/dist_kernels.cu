/* GPU record operations of qattn_dist (layout in dist_internal.h): set empty records, put a
 * partial LSE/output into records, merge partials exactly in part order (one warp per record,
 * the same formula as the host merge in dist.c), unpack to the caller's O (F32/F16/BF16,
 * strides) and LSE. Plain memory-bound kernels: the attention itself is qattn's. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

extern "C" {
#include "dist/dist_internal.h"
}

namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n) {
    int64_t g = (n + kThreads - 1) / kThreads;
    if (g > 65535 * 16) g = 65535 * 16;
    return (int)(g < 1 ? 1 : g);
}

__global__ void set_empty_kernel(float *rec, int64_t n, int R) {
    for (int64_t x = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; x < n; x += (int64_t)gridDim.x * blockDim.x)
        rec[x] = x % R == 0 ? -INFINITY : 0.0f;
}

/* lse [B, H, m] of the first m query rows (of Lq) into the records. */
__global__ void put_lse_kernel(float *rec, const float *lse, int64_t B, int H, int64_t Lq, int64_t m, int R) {
    int64_t n = B * H * m;
    for (int64_t x = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; x < n; x += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = x % m, bh = x / m, h = bh % H, b = bh / H;
        rec[((b * Lq + i) * H + h) * R] = lse[x];
    }
}

__global__ void put_o_kernel(float *rec, const float *o, int64_t n_rec, int D, int R, int hdr) {
    int64_t n = n_rec * D;
    for (int64_t x = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; x < n; x += (int64_t)gridDim.x * blockDim.x)
        rec[(x / D) * R + hdr + x % D] = o[x];
}

/* One warp per record. All lanes read every part's LSE before any lane writes (out may be
 * part 0: Star Attention's in-place merge). */
__global__ void merge_kernel(const float *in, int n_parts, int64_t part_floats, int64_t n_rec, int D, int R, int hdr, float *out) {
    int lane = threadIdx.x % 32;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t i = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32; i < n_rec; i += warps) {
        float mx = -INFINITY;
        bool nan = false;
        for (int k = 0; k < n_parts; k++) {
            float l = in[k * part_floats + i * R];
            if (isnan(l)) nan = true;
            else if (l > mx) mx = l;
        }
        float sum = 0.0f;
        if (!nan && mx != -INFINITY)
            for (int k = 0; k < n_parts; k++) {
                float l = in[k * part_floats + i * R];
                if (l != -INFINITY) sum += expf(l - mx);
            }
        __syncwarp();
        float *dst = out + i * R;
        bool empty = nan || mx == -INFINITY;
        float inv = empty ? 0.0f : 1.0f / sum;
        for (int c = lane; c < D; c += 32) {
            float acc = 0.0f;
            if (!empty)
                for (int k = 0; k < n_parts; k++) {
                    const float *src = in + k * part_floats + i * R;
                    if (src[0] != -INFINITY) acc += expf(src[0] - mx) * src[hdr + c];
                }
            dst[hdr + c] = nan ? NAN : acc * inv;
        }
        __syncwarp();
        if (lane == 0) dst[0] = nan ? NAN : empty ? -INFINITY : mx + logf(sum);
        __syncwarp();
    }
}

__global__ void unpack_kernel(const float *rec, qattn_dist_out out, int R, int hdr) {
    int64_t H = out.n_heads, D = out.head_dim, Lq = out.seqlen_q;
    int64_t n = out.batch * Lq * H * D;
    for (int64_t x = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; x < n; x += (int64_t)gridDim.x * blockDim.x) {
        int64_t c = x % D, r = x / D, h = r % H, row = r / H, i = row % Lq, b = row / Lq;
        const float *src = rec + r * R;
        float v = src[hdr + c];
        int64_t idx = b * out.o_bs + i * out.o_ss + h * out.o_hs + c;
        if (out.o_dtype == QATTN_DTYPE_F16) ((__half *)out.o)[idx] = __float2half_rn(v);
        else if (out.o_dtype == QATTN_DTYPE_BF16) ((__nv_bfloat16 *)out.o)[idx] = __float2bfloat16_rn(v);
        else ((float *)out.o)[idx] = v;
        if (c == 0 && out.lse) out.lse[(b * H + h) * Lq + i] = src[0];
    }
}

int last_error() { return (int)cudaGetLastError(); }

} // namespace

extern "C" int qattn_dist_dev_alloc(void **ptr, size_t bytes) { return (int)cudaMalloc(ptr, bytes); }

extern "C" void qattn_dist_dev_free(void *ptr) { cudaFree(ptr); }

extern "C" int qattn_dist_dev_sync(void *stream) { return (int)cudaStreamSynchronize((cudaStream_t)stream); }

extern "C" int qattn_dist_dev_set_empty(float *rec, int64_t n_rec, int R, void *stream) {
    set_empty_kernel<<<grid_for(n_rec * R), kThreads, 0, (cudaStream_t)stream>>>(rec, n_rec * R, R);
    return last_error();
}

extern "C" int qattn_dist_dev_put_lse(float *rec, const float *lse, int64_t B, int32_t H, int64_t Lq, int64_t m, int R, void *stream) {
    put_lse_kernel<<<grid_for(B * H * m), kThreads, 0, (cudaStream_t)stream>>>(rec, lse, B, H, Lq, m, R);
    return last_error();
}

extern "C" int qattn_dist_dev_put_o(float *rec, const float *o, int64_t n_rec, int D, int R, int hdr, void *stream) {
    put_o_kernel<<<grid_for(n_rec * D), kThreads, 0, (cudaStream_t)stream>>>(rec, o, n_rec, D, R, hdr);
    return last_error();
}

extern "C" int qattn_dist_dev_merge(const float *in, int n_parts, int64_t part_floats, int64_t n_rec, int D, int R, int hdr, float *out,
                                    void *stream) {
    merge_kernel<<<grid_for(n_rec * 32), kThreads, 0, (cudaStream_t)stream>>>(in, n_parts, part_floats, n_rec, D, R, hdr, out);
    return last_error();
}

extern "C" int qattn_dist_dev_unpack(const float *rec, const qattn_dist_out *out, int R, int hdr, void *stream) {
    unpack_kernel<<<grid_for(out->batch * out->seqlen_q * out->n_heads * out->head_dim), kThreads, 0, (cudaStream_t)stream>>>(rec, *out, R, hdr);
    return last_error();
}
