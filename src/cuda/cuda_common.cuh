/* Shared pieces of the CUDA backend (C++ side only): the kernel argument struct, the
 * mma.sync / ldmatrix / cp.async wrappers, and the launch entry points of each kernel file.
 * Kernels take qattn_cuda_args by value (docs/ARCHITECTURE.md "Numerics"). */
#ifndef QATTN_CUDA_COMMON_CUH
#define QATTN_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

/* Everything a forward kernel reads, resolved on the host (scale, windows, GQA ratio). */
struct qattn_cuda_args {
    const void *q, *k, *v;
    void *o;
    float *lse;
    int64_t q_bs, q_ss, q_hs; /* element strides */
    int64_t k_bs, k_ss, k_hs;
    int64_t v_bs, v_ss, v_hs;
    int64_t o_bs, o_ss, o_hs;
    const int32_t *cu_q, *cu_k; /* device offsets or NULL */
    int32_t batch, lq, lk;      /* lq/lk: the lengths (varlen: upper bounds) */
    int32_t h, hk, d;
    int32_t o_dtype;            /* qattn_dtype */
    int32_t wl, wr;             /* windows, -1 = unbounded (causal already folded into wr = 0) */
    float scale;                /* softmax scale */
    float scale_log2;           /* scale * log2(e) */
    /* INT8 path: quantized tensors and scales in the workspace (layouts: fwd_mma_i8.cu; written by quant_i8.cu). */
    const int8_t *qi, *ki, *vt;
    const float *sq, *sk, *sv, *vm; /* sv per (kv head, key tile, channel); vm: V smoothing mean */
    const float *qsh;           /* per query row: scale * q . mean_k (LSE correction of K smoothing) */
    int32_t lk_pad;             /* Lk rounded up to the INT8 key tile (Vt row length) */
    int32_t lq_pad;             /* Lq rounded up to the largest INT8 query block (Qi, sq, qsh row length) */
    int32_t i8_wgmma;           /* 1: the sm_90a wgmma kernel (fwd_wgmma_i8.cu) and its tiled, pre-swizzled layout */
    int32_t *sched;             /* the wgmma kernel's work counter (workspace; zeroed by the quantization pass) */
    /* Fixed V rows (quant_i8.cu, v_part): the keys whose codes per channel and tile lose more than
     * 1/64 of the row (a sink's small value row), per (b, kv head) their count vfix_n, keys vfix_key
     * [bh][QATTN_I8_VFIX_MAX] and residuals v' - codes * sv vfix_res [bh][QATTN_I8_VFIX_MAX][D]; the
     * kernels' epilogue adds the residuals back (i8_rows.cuh). A count above the maximum: none fixed. */
    const int32_t *vfix_n, *vfix_key;
    const float *vfix_res;
    /* Sharp units (per (b, kv head), 1 = sharp; quant_i8.cu): the INT8 kernels leave the work items of the
     * units flagged in skip_units (NULL: none) and the FP16/BF16 mma.sync kernel runs only the units
     * flagged in only_units (NULL: all), so those units get the FP16 kernel's accuracy. */
    const int32_t *skip_units, *only_units;
    int32_t n_sm;               /* multiprocessors of the device (persistent grids) */
    /* Score modifiers, the FP16/BF16 mma.sync kernel only (fwd_mma_f16.cu's MODS instantiations; the
     * backend sends no other kernel a call that has them). */
    int32_t mods;               /* 1: softcap and/or ALiBi given */
    float softcap_in;           /* scale / softcap */
    float softcap_out;          /* softcap * log2(e); 0 = no softcap */
    const float *alibi;         /* device slopes [H], or [B, H] rows alibi_bs apart; NULL = none */
    int64_t alibi_bs;           /* 0: one [H] row for every sequence */
};

/* Block-sparse attention on the sm_90a wgmma kernels (qattn_params.block_mask, device memory): a separate
 * kernel parameter after the dense ones, so that the dense instantiations keep their parameter offsets and
 * code. bq is a multiple of the kernels' 128 query rows and bk of their key tile (checked by the backend). */
struct qattn_cuda_bmask {
    const uint8_t *m;       /* NULL: dense */
    int64_t bs, hs, rs;     /* element strides: batch, head, query block (key blocks contiguous) */
    int32_t bq, bk;         /* query rows and keys per block */
};

/* Fixed V rows per (b, kv head) at most (see qattn_cuda_args.vfix_n). */
#define QATTN_I8_VFIX_MAX 16

/* Head dims of the FP16/BF16 mma.sync kernel (fwd_mma_f16.cu); the wgmma kernel takes a subset. */
inline bool qattn_cuda_f16_head_dim_ok(int d) {
    return d == 32 || d == 64 || d == 80 || d == 96 || d == 128 || d == 160 || d == 192 || d == 256;
}
#define QATTN_CUDA_F16_HEAD_DIMS "32, 64, 80, 96, 128, 160, 192 and 256"


/* Launchers: return the launch's cudaError_t (cudaGetLastError after the launch). */
cudaError_t qattn_cuda_launch_f16(const qattn_cuda_args &a, int bf16, cudaStream_t stream); /* every head dim, a.mods too */
cudaError_t qattn_cuda_prepare_f16(void); /* raise the dynamic shared-memory limits once */
cudaError_t qattn_cuda_launch_i8(const qattn_cuda_args &a, cudaStream_t stream);
cudaError_t qattn_cuda_prepare_i8(void);
/* D 128, sm_90a only; bm: a block mask or NULL (dense) */
cudaError_t qattn_cuda_launch_i8_wgmma(const qattn_cuda_args &a, cudaStream_t stream, const qattn_cuda_bmask *bm = nullptr);
cudaError_t qattn_cuda_prepare_i8_wgmma(void);
/* D 64, 96, 128 and 256, non-varlen, sm_90a only; cudaErrorNotSupported (nothing launched) where the TMA tensor maps
 * cannot describe the tensors: the caller runs the mma.sync kernel instead (dense) or refuses (bm, a block mask). */
cudaError_t qattn_cuda_launch_f16_wgmma(const qattn_cuda_args &a, int bf16, cudaStream_t stream, const qattn_cuda_bmask *bm = nullptr);
cudaError_t qattn_cuda_prepare_f16_wgmma(void);
/* Quantize f16/bf16 q, k, v of a (non-varlen) into the INT8 workspace layout.
 * ws: device scratch of qattn_cuda_i8_workspace bytes; fills a.qi/ki/vt/sq/sk/sv.
 * cal: NULL (the channel transforms from the call's own statistics), or a calibration whose k_factor,
 * k_mean and v_mean are device arrays [HK][D] (no statistics pass: Q, K, V are read once).
 * sharp_noise > 0: the sharp units' flags too (threshold on sigma), and a.skip_units points at them.
 * qk_code_max: the Q and K codes' range [-qk_code_max, qk_code_max], 127 (INT8) or 7 (precision INT4). */
struct qattn_calibration;
size_t qattn_cuda_i8_workspace(const qattn_cuda_args &a);
cudaError_t qattn_cuda_quantize_i8(qattn_cuda_args &a, int bf16, void *ws, cudaStream_t stream, const qattn_calibration *cal, float sharp_noise,
                                  int qk_code_max);

/* ---------------------------------------------------------------- host helpers */
/* Make a device current for a scope (a library call); the caller's device is restored after. */
struct qattn_device_guard {
    int prev = -1;
    cudaError_t err = cudaSuccess;
    explicit qattn_device_guard(int dev) {
        if ((err = cudaGetDevice(&prev)) != cudaSuccess) return;
        if (prev != dev) err = cudaSetDevice(dev);
    }
    ~qattn_device_guard() {
        int cur;
        if (prev >= 0 && cudaGetDevice(&cur) == cudaSuccess && cur != prev) cudaSetDevice(prev);
    }
};
/* Grow a device buffer cached in a context to at least need bytes. cudaFree and cudaMalloc wait for
 * the device, so no earlier call still uses the old buffer; on failure the cache is left empty. */
inline cudaError_t qattn_cuda_grow(void **buf, size_t *bytes, size_t need) {
    if (*bytes >= need) return cudaSuccess;
    if (*buf) cudaFree(*buf);
    *buf = NULL;
    *bytes = 0;
    cudaError_t e = cudaMalloc(buf, need);
    if (e != cudaSuccess) {
        *buf = NULL;
        return e;
    }
    *bytes = need;
    return cudaSuccess;
}

/* Calls of a context that share its cached scratch, kept in order: a call on another stream than the
 * previous one first waits for the event recorded after that one (same stream: stream order). */
struct qattn_cuda_serial {
    cudaEvent_t done;
    void *last; /* the previous call's stream */
    int used;
};
inline cudaError_t qattn_cuda_serial_init(qattn_cuda_serial *s) {
    s->last = NULL;
    s->used = 0;
    return cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming);
}
inline void qattn_cuda_serial_release(qattn_cuda_serial *s) {
    if (s->done) cudaEventDestroy(s->done);
    s->done = NULL;
}
inline cudaError_t qattn_cuda_serial_begin(const qattn_cuda_serial *s, cudaStream_t st) {
    return s->used && s->last != (void *)st ? cudaStreamWaitEvent(st, s->done, 0) : cudaSuccess;
}
inline cudaError_t qattn_cuda_serial_end(qattn_cuda_serial *s, cudaStream_t st) {
    cudaError_t e = cudaEventRecord(s->done, st);
    if (e == cudaSuccess) s->used = 1, s->last = (void *)st;
    return e;
}

/* ---------------------------------------------------------------- device helpers */
#if defined(__CUDACC__)
__device__ __forceinline__ uint32_t qattn_smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
/* 16-byte async copy; src_bytes 0 zero-fills the destination (tails). */
__device__ __forceinline__ void qattn_cp_async16(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void qattn_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void qattn_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void qattn_ldsm_x4(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void qattn_ldsm_x4_t(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
/* mma.sync m16n8k32 with s32 accumulation, c += a b: s8 x s8 (Q K^T) and u8 x s8 (P V, P as 8-bit codes). */
__device__ __forceinline__ void qattn_mma_s8s8(int c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void qattn_mma_u8s8(int c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* mma.sync m16n8k16, f16 or bf16 in, c += a b in FP32. */
template <bool BF16> __device__ __forceinline__ void qattn_mma_f16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    if (BF16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float qattn_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
/* Keys [lo, hi) that query row i of the forward sees (bottom-right aligned windows, qattn.h rule;
 * causal is wr = 0). */
__device__ __forceinline__ void qattn_fwd_key_range(int i, int lq, int lk, int wl, int wr, int &lo, int &hi) {
    int diag = i + lk - lq;
    lo = wl < 0 ? 0 : max(diag - wl, 0);
    hi = wr < 0 ? lk : min(diag + wr + 1, lk);
    if (hi < lo) hi = lo;
}
/* Byte offset of 16-byte chunk c of row t of an INT8 code image (Qi, Ki: rows of D bytes, t the token's
 * position): with the wgmma kernel (D 128) chunk c sits at c ^ (t & 7), its 128-byte swizzle. */
template <int D> __device__ __forceinline__ int qattn_i8_chunk_at(const qattn_cuda_args &a, int t, int c) {
    return ((D == 128 && a.i8_wgmma) ? c ^ (t & 7) : c) << 4;
}
/* INT8 P codes: p in [0, 1] -> the low byte of rn(255 p) (1.5 * 2^23 + 255 p keeps the integer in the
 * mantissa). */
__device__ __forceinline__ uint32_t qattn_p2u8bits(float p) { return __float_as_uint(fmaf(p, 255.f, 12582912.f)); }
/* Pack the low bytes of four words, first in the lowest byte. */
__device__ __forceinline__ uint32_t qattn_pack4(uint32_t x0, uint32_t x1, uint32_t x2, uint32_t x3) {
    return __byte_perm(__byte_perm(x0, x1, 0x0040), __byte_perm(x2, x3, 0x0040), 0x5410);
}
/* max that propagates NaN (max.NaN, sm_80+): a non-finite score makes the tile's beta NaN, and so the
 * row's O and l, since the INT8 row sum is counted from the u8 codes (which cannot hold a NaN). */
__device__ __forceinline__ float qattn_fmax_nan(float x, float y) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;\n" : "=f"(r) : "f"(x), "f"(y));
    return r;
}
#endif

#endif /* QATTN_CUDA_COMMON_CUH */
