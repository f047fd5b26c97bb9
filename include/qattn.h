/* qattn: exact and INT8 memory-efficient attention for CPUs and NVIDIA GPUs.
 *
 * This header is the whole public API. It computes
 *
 *     O = softmax(scale * Q K^T + mask) V
 *
 * without ever materialising the Lq x Lk score matrix (online softmax, in tiles),
 * for Q, K, V in FP32 / FP16 / BF16 (FP32 accumulation) and, approximately, in INT8 (and with
 * 4-bit Q/K codes: QATTN_PRECISION_INT4).
 *
 * Usage:
 *
 *     qattn_ctx *ctx;
 *     if (qattn_ctx_create(&ctx, NULL) != QATTN_OK) ...;      // NULL: defaults
 *     qattn_params p;
 *     qattn_params_init(&p);
 *     p.q = q; p.k = k; p.v = v; p.o = o;                     // [B, L, H, D] float32
 *     p.batch = B; p.seqlen_q = Lq; p.seqlen_k = Lk;
 *     p.n_heads = H; p.n_kv_heads = HK; p.head_dim = D;
 *     p.causal = 1;
 *     qattn_params_set_contiguous(&p);                        // strides of [B, L, H, D]
 *     qattn_status s = qattn_forward(ctx, &p);
 *     if (s != QATTN_OK) fprintf(stderr, "%s: %s\n", qattn_status_str(s), qattn_ctx_last_error(ctx));
 *     qattn_ctx_destroy(ctx);
 *
 * Conventions
 * - Every function returns a qattn_status; on error the context's last-error message
 *   says what was wrong. Nothing here exits, aborts or asserts on user input.
 * - Layout: tensors are [batch, seq, heads, head_dim] by default; any layout whose last
 *   (head_dim) axis is contiguous is accepted through 64-bit element strides, so K and V
 *   may be views into a larger cache. Strides are counted in elements, never bytes.
 * - Masks: key j (of Lk) is visible to query i (of Lq) when
 *       i + Lk - Lq - window_left <= j <= i + Lk - Lq + window_right
 *   (FlashAttention's convention, aligned to the bottom-right corner); -1 means unbounded
 *   on that side, and causal means window_right = 0. A query that sees no key gets a zero
 *   output row and log-sum-exp -inf.
 * - NaN/Inf: a non-finite input value reaches exactly the output rows whose computation
 *   uses it (a query row, or the rows that see a key/value token); it never spreads to
 *   other rows and is never hidden.
 * - Thread safety: a context may be used by one thread at a time; distinct contexts are
 *   independent. There is no global mutable state.
 */
#ifndef QATTN_H
#define QATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QATTN_VERSION_MAJOR 0
#define QATTN_VERSION_MINOR 1
#define QATTN_VERSION_PATCH 0

#if defined(_WIN32)
#define QATTN_API __declspec(dllexport)
#else
#define QATTN_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------- status */

typedef enum qattn_status {
    QATTN_OK = 0,
    QATTN_ERR_NULL_POINTER = -1,     /* a required pointer is NULL */
    QATTN_ERR_INVALID_ARGUMENT = -2, /* a shape, stride, flag or value is out of range */
    QATTN_ERR_UNSUPPORTED = -3,      /* valid, but this backend/ISA/dtype cannot do it */
    QATTN_ERR_OUT_OF_MEMORY = -4,    /* an allocation failed */
    QATTN_ERR_OVERFLOW = -5,         /* a size computation overflows 64 bits */
    QATTN_ERR_BACKEND = -6,          /* the backend failed (a CUDA or thread error) */
    QATTN_ERR_CAPACITY = -7,         /* a fixed-size resource (workspace, cache blocks) is exhausted */
} qattn_status;

/* A constant string naming the status ("QATTN_ERR_INVALID_ARGUMENT: invalid argument"). */
QATTN_API const char *qattn_status_str(qattn_status status);

/* "0.1.0" */
QATTN_API const char *qattn_version(void);

/* ---------------------------------------------------------------- enums */

typedef enum qattn_dtype {
    QATTN_DTYPE_F32 = 0,
    QATTN_DTYPE_F16 = 1,  /* IEEE binary16 */
    QATTN_DTYPE_BF16 = 2, /* bfloat16 */
    QATTN_DTYPE_I8 = 3,   /* signed 8-bit codes with a scale (pre-quantized inputs) */
} qattn_dtype;

/* The precision the attention is computed in. Inputs are converted to it first;
 * accumulation is always FP32 (INT32 for INT8 products). */
typedef enum qattn_precision {
    QATTN_PRECISION_AUTO = 0, /* the inputs' own dtype */
    QATTN_PRECISION_FP32 = 1,
    QATTN_PRECISION_FP16 = 2,     /* Q, K, V rounded to FP16 */
    QATTN_PRECISION_BF16 = 3,     /* Q, K, V rounded to BF16 */
    QATTN_PRECISION_INT8 = 4,     /* dynamic token-level INT8 quantization, see int8_scheme */
    QATTN_PRECISION_FP8_E4M3 = 5, /* emulated FP8 attention (accuracy comparisons, CPU only) */
    QATTN_PRECISION_FP8_E5M2 = 6,
    QATTN_PRECISION_INT4 = 7,     /* Q, K as 4-bit codes [-7, 7] (INT8 default scheme otherwise; CPU, and CUDA as its INT8; docs/FORMAT.md section 8) */
} qattn_precision;

/* INT8 schemes (docs/FORMAT.md describes each). */
typedef enum qattn_int8_scheme {
    QATTN_INT8_DEFAULT = 0, /* "qattn": the most accurate fully-INT8 scheme */
    QATTN_INT8_INTFA = 1,   /* "intfa": INT-FlashAttention as published */
    QATTN_INT8_SAGE = 2,    /* "sage": INT8 QK^T with K smoothing, FP PV (SageAttention-1 style) */
} qattn_int8_scheme;

typedef enum qattn_backend {
    QATTN_BACKEND_AUTO = 0, /* QATTN_BACKEND env var if set, else CPU */
    QATTN_BACKEND_CPU = 1,
    QATTN_BACKEND_CUDA = 2, /* pointers in qattn_params are device pointers */
} qattn_backend;

typedef enum qattn_isa {
    QATTN_ISA_AUTO = 0, /* QATTN_ISA env var if set, else the best the CPU and OS support */
    QATTN_ISA_REF = 1,  /* portable scalar C */
    QATTN_ISA_AVX2 = 2, /* AVX2 + FMA + F16C */
    QATTN_ISA_AVXVNNI = 3, /* AVX2 + AVX-VNNI (vpdpbusd): INT8 kernels; FP kernels as AVX2 */
    /* AVX-512 F/BW/VL/DQ + AVX512-VNNI (EVEX vpdpbusd, which the INT8 kernels rely on), ZMM state
     * enabled by the OS; also runs the AVX2 kernels, so it needs AVX2+FMA+F16C as well. A CPU with
     * AVX-512 but without VNNI (Skylake-X) gets avx2. Zen 4, Ice Lake / Sapphire Rapids and later. */
    QATTN_ISA_AVX512 = 4,
} qattn_isa;

/* ---------------------------------------------------------------- context */

typedef struct qattn_ctx qattn_ctx;

/* The largest thread count a context accepts (qattn_ctx_create, qattn_ctx_set_threads): the
 * CPU backend's per-worker scratch is sized by it, and the online-core default is capped to it. */
#define QATTN_MAX_THREADS 256

/* Which kernels the CUDA backend runs (qattn_ctx_options.cuda_kernels). */
typedef enum qattn_cuda_kernels {
    QATTN_CUDA_KERNELS_AUTO = 0, /* the fastest the device runs: wgmma on compute capability 9.0, else mma.sync */
    QATTN_CUDA_KERNELS_MMA = 1,  /* the mma.sync kernels (the sm_80 path) on every device, e.g. to compare them;
                                    block-sparse calls, which only the wgmma kernels run, are then refused */
} qattn_cuda_kernels;

/* Options for qattn_ctx_create; zero-initialise, or pass NULL for all defaults. */
typedef struct qattn_ctx_options {
    int32_t backend;     /* qattn_backend */
    int32_t isa;         /* qattn_isa (CPU backend) */
    int32_t n_threads;   /* CPU threads: 0 = the number of online cores, else 1..QATTN_MAX_THREADS */
    int32_t cuda_device; /* CUDA device ordinal */
    /* Allocator hooks; both NULL = malloc/free. alloc must return 64-byte aligned memory. */
    void *(*alloc)(size_t bytes, void *user);
    void (*free)(void *ptr, void *user);
    void *alloc_user;
    int32_t cuda_kernels; /* qattn_cuda_kernels (CUDA backend; a CPU context ignores it) */
    int32_t reserved;     /* 0 */
} qattn_ctx_options;

QATTN_API qattn_status qattn_ctx_create(qattn_ctx **ctx, const qattn_ctx_options *options);

/* qattn_ctx_create that also says why it failed: on error *ctx is NULL and, when message is not
 * NULL, message holds the reason (at most message_size bytes, NUL-terminated; "" on success),
 * e.g. "QATTN_ISA=bogus is not one of ...". No global state is involved. */
QATTN_API qattn_status qattn_ctx_create_ex(qattn_ctx **ctx, const qattn_ctx_options *options, char *message, size_t message_size);
QATTN_API void qattn_ctx_destroy(qattn_ctx *ctx); /* NULL is a no-op */

/* The message of the last failed call on ctx ("" after a success). Valid until the next call. */
QATTN_API const char *qattn_ctx_last_error(const qattn_ctx *ctx);

/* What a context chose. */
typedef struct qattn_ctx_info {
    int32_t backend;   /* qattn_backend actually used */
    int32_t isa;       /* qattn_isa actually used */
    int32_t n_threads;
    int32_t cuda_available; /* 1 if this build has CUDA and a device is visible */
    char isa_name[16];      /* "ref", "avx2", "avxvnni", "avx512" */
    char device_name[96];   /* CPU model or GPU name */
} qattn_ctx_info;

QATTN_API qattn_status qattn_ctx_get_info(const qattn_ctx *ctx, qattn_ctx_info *info);

/* Change the thread count of a CPU context (0 = online cores, else 1..QATTN_MAX_THREADS). */
QATTN_API qattn_status qattn_ctx_set_threads(qattn_ctx *ctx, int32_t n_threads);

/* ---------------------------------------------------------------- parameters */

/* One attention call. Plain data, fixed-width types: mirrored field for field by the
 * Python binding. Initialise with qattn_params_init, then fill. */
typedef struct qattn_params {
    /* Tensors. q: [B, Lq, H, D]; k, v: [B, Lk, HK, D]; o: [B, Lq, H, D] (through the strides).
     * With cu_seqlens, the batch axis is packed: q [total_q, H, D], k/v [total_k, HK, D]. */
    const void *q;
    const void *k;
    const void *v;
    void *o;
    /* Optional (NULL = not wanted): natural-log log-sum-exp of the scaled scores per query row,
     * float32, contiguous [B, H, Lq] (varlen: [H, total_q]); -inf for a row that sees no key. */
    float *lse;

    int64_t batch;
    int64_t seqlen_q; /* Lq; with cu_seqlens, the largest sequence length (an upper bound) */
    int64_t seqlen_k; /* Lk; likewise */
    int32_t n_heads;    /* H */
    int32_t n_kv_heads; /* HK; H % HK == 0 (GQA / MQA) */
    /* D: 8..256, a multiple of 8 (the CPU backend runs every such D; the CUDA backend 32, 64, 80, 96,
     * 128, 160, 192 and 256, INT8 64 and 128, and returns QATTN_ERR_UNSUPPORTED for the others) */
    int32_t head_dim;

    int32_t qkv_dtype; /* qattn_dtype of q, k and v (F32, F16 or BF16) */
    int32_t o_dtype;   /* qattn_dtype of o (F32, F16 or BF16) */
    int32_t precision; /* qattn_precision */
    int32_t int8_scheme; /* qattn_int8_scheme, used when precision is INT8 */

    int32_t causal;       /* 0 or 1; 1 forces window_right = 0 */
    int32_t window_left;  /* -1 = unbounded */
    int32_t window_right; /* -1 = unbounded */
    float scale;          /* softmax scale; 0 = 1/sqrt(head_dim) */

    /* Element strides (not bytes), >= 0. The head_dim axis is contiguous (stride 1).
     * batch strides are ignored when cu_seqlens are given. */
    int64_t q_batch_stride, q_seq_stride, q_head_stride;
    int64_t k_batch_stride, k_seq_stride, k_head_stride;
    int64_t v_batch_stride, v_seq_stride, v_head_stride;
    int64_t o_batch_stride, o_seq_stride, o_head_stride;

    /* Variable-length batches (both or neither): batch+1 non-decreasing offsets starting at 0,
     * sequence b being rows [cu[b], cu[b+1]). Host memory on the CPU backend, device memory
     * on CUDA. A sequence may be empty. */
    const int32_t *cu_seqlens_q;
    const int32_t *cu_seqlens_k;

    /* Optional scratch memory (see qattn_workspace_size); NULL = the library allocates (CUDA: once
     * per context, grown when a call needs more; the calls that use it run in call order, a call on
     * another stream than the previous one waiting for it). */
    void *workspace;
    size_t workspace_size;

    void *stream; /* cudaStream_t for the CUDA backend; NULL = the default stream */

    /* ---- score modifiers and block sparsity (FlashAttention's names and conventions) ----
     * The score of query i and key j (positions within their sequence) is
     *     s = scale * q_i . k_j
     *     s = softcap * tanh(s / softcap)            when softcap > 0
     *     s = s - slope_h * |i + Lk - Lq - j|        when alibi_slopes is given (h: the query head)
     * and a key hidden by the window/causal mask or by a zero block of block_mask gets no weight.
     * The log-sum-exp is that of these final scores (the FP64 oracle applies the same formula).
     * softcap and alibi_slopes are implemented on the CPU backend at precision AUTO, FP32, FP16 and
     * BF16, by qattn_forward and qattn_forward_kvcache (Lk = that sequence's key count), in every
     * ISA's kernels, and by the CUDA backend's qattn_forward with FP16/BF16 inputs (slopes in device
     * memory; such calls run the mma.sync kernel, also on compute capability 9.0). Refused with
     * QATTN_ERR_UNSUPPORTED: at INT8, INT4 and FP8 (qattn_forward, qattn_forward_quantized,
     * qattn_forward_calibrated; on the CUDA backend too), and by qattn_dist. */
    const float *alibi_slopes;  /* float32 [H], or [B, H] rows alibi_batch_stride apart; NULL = none.
                                   Finite. Host memory on the CPU backend, device memory on CUDA. */
    int64_t alibi_batch_stride; /* elements between sequences' slopes (>= H); 0 = one [H] array for all */
    float softcap;              /* 0 = off; else finite and > 0 */
    int32_t block_mask_q;       /* query rows per block of block_mask: a positive multiple of 16 */
    /* Block-sparse attention (BlockBERT): a uint8 bitmap of (query block, key block) pairs,
     * [B, H, ceil(Lq / block_mask_q), ceil(Lk / block_mask_k)] through the element strides below
     * (the key-block axis contiguous; a stride of 0 shares the map along that axis, e.g. one map
     * for every head). Nonzero: the pair is computed (then subject to the other masks); zero: the
     * pair is skipped and its keys get no weight. Blocks count from the first token of each
     * sequence (varlen too). NULL = dense. Host memory on the CPU backend (FP32/FP16/BF16, INT8 and
     * FP8: skipped pairs cost no products, so time follows the density; softcap and alibi_slopes
     * combine with it on the FP paths). Device memory on the CUDA backend, which runs it on its
     * sm_90a kernels only (compute capability 9.0; FP16/BF16 at every head dim it takes, INT8 at
     * 128; not varlen) with block_mask_q a multiple of 128 and block_mask_k of 128 (64 at head_dim
     * 256), and refuses the rest (QATTN_ERR_UNSUPPORTED, docs/gpu.md). qattn_dist and
     * qattn_forward_kvcache refuse it. The map's bytes must not overlap o or lse. */
    const uint8_t *block_mask;
    int32_t block_mask_k;       /* keys per block of block_mask: a positive multiple of 16 */
    int32_t reserved0;          /* 0 */
    int64_t block_mask_batch_stride, block_mask_head_stride, block_mask_row_stride;
} qattn_params;

/* Defaults: F32 in and out, precision AUTO, no mask, window -1/-1, scale 0 (= 1/sqrt(D)),
 * everything else zero. */
QATTN_API void qattn_params_init(qattn_params *p);

/* Fill all strides for contiguous [B, L, H, D] tensors (packed [total, H, D] with cu_seqlens)
 * from batch, seqlen_q, seqlen_k, n_heads, n_kv_heads and head_dim. A stride whose product
 * overflows int64 is set to INT64_MAX, which qattn_forward then refuses (QATTN_ERR_OVERFLOW). */
QATTN_API void qattn_params_set_contiguous(qattn_params *p);

/* ---------------------------------------------------------------- attention */

/* QATTN_OK if qattn_forward would run these parameters on ctx's backend, else the status it
 * would return, with the reason in the last-error message. Reads no tensor data. */
QATTN_API qattn_status qattn_supports(qattn_ctx *ctx, const qattn_params *p);

/* Bytes of scratch memory qattn_forward needs for these parameters (0 is possible). */
QATTN_API qattn_status qattn_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes);

/* Attention forward. Writes every element of o (and lse if given).
 * o and lse must not overlap q, k, v or each other (byte ranges from the shapes, strides and
 * dtypes): in-place attention is refused with QATTN_ERR_INVALID_ARGUMENT naming both tensors
 * (qattn_supports says the same; the same rule holds for qattn_forward_quantized, qattn_kv_decode
 * and the k/v outputs of qattn_kv_cache_read; on the CUDA backend with cu_seqlens, whose offsets
 * stay in device memory, it is not checked). Scaled scores scale * q.k must fit float32
 * (|scale * q.k| < FLT_MAX / log2(e), about 2.4e38): a row whose scores overflow with finite
 * inputs makes the call return QATTN_ERR_OVERFLOW naming the row (o is then unspecified), where
 * the float kernels would otherwise give NaN. */
QATTN_API qattn_status qattn_forward(qattn_ctx *ctx, const qattn_params *p);

/* The FP64 oracle: naive attention in double precision on the CPU, for tests and for users
 * who want to check a result. Reads q, k, v (host memory, any qkv_dtype) with the masks,
 * scale, GQA and varlen of p, ignores o, lse, precision and workspace, and writes
 * o64 contiguous [B, Lq, H, D] (varlen: [total_q, H, D]) and, if lse64 is not NULL,
 * lse64 [B, H, Lq] (varlen: [H, total_q]). Memory: O(Lk) scratch. */
QATTN_API qattn_status qattn_oracle_f64(qattn_ctx *ctx, const qattn_params *p, double *o64, double *lse64);

/* ---------------------------------------------------------------- attention over a KV cache */
/* (section: FlashAttention's flash_attn_with_kvcache on caller-owned cache tensors; docs/KVCACHE.md) */

/* The cache of qattn_forward_kvcache: caller-owned K/V tensors, paged through a block table or
 * contiguous per sequence, plus the new tokens to append and the rotary tables. Initialise with
 * qattn_kvcache_params_init. Every array is host memory on the CPU backend and device memory on the
 * CUDA backend (cache_seqlens and block_table too: the call reads them back once). Shapes use p's batch B,
 * n_kv_heads HK, head_dim D and qkv_dtype (the caches, k_new and v_new all have it).
 *
 * Sequence b holds cache_seqlens[b] tokens before the call; its seqlen_new new tokens (k_new,
 * v_new) are written at positions cache_seqlens[b] .. + seqlen_new - 1 (K rotated first, see
 * rotary below), then its queries attend to all Lk_b = cache_seqlens[b] + seqlen_new keys with
 * qattn.h's mask rule (bottom-right aligned: Lq = p->seqlen_q, Lk = Lk_b per sequence). */
typedef struct qattn_kvcache_params {
    /* Paged (block_table given): [n_pages, page_size, HK, D]; contiguous: [B, cache_len, HK, D].
     * Element strides: page_stride steps pages (paged) or sequences (contiguous); the head_dim
     * axis is contiguous. Updated in place when seqlen_new > 0. */
    void *k_cache;
    void *v_cache;
    int64_t k_page_stride, k_seq_stride, k_head_stride;
    int64_t v_page_stride, v_seq_stride, v_head_stride;
    /* Paged: int32 [B, max_blocks], rows block_table_stride (>= max_blocks) apart; entry
     * [b, j] is the page holding tokens j*page_size .. (j+1)*page_size - 1 of sequence b (only the
     * entries a sequence's Lk_b tokens reach are read, each checked to be in 0..n_pages-1).
     * NULL: contiguous cache of cache_len tokens per sequence. */
    const int32_t *block_table;
    int64_t block_table_stride;
    int64_t max_blocks;
    int64_t n_pages;    /* paged: pages in k_cache / v_cache */
    int64_t cache_len;  /* contiguous: token capacity per sequence */
    int32_t page_size;  /* paged: tokens per page, a positive multiple of 16 */
    int32_t rotary_dim; /* 0 (no rotary) or even, 2..D: channels 0..rotary_dim-1 rotated */
    const int32_t *cache_seqlens; /* int32 [B], >= 0: tokens already in the cache */
    /* New tokens [B, seqlen_new, HK, D] (element strides; head_dim contiguous); NULL when
     * seqlen_new is 0. All or nothing: Lk_b beyond the capacity (max_blocks * page_size, or
     * cache_len) is QATTN_ERR_CAPACITY before anything is written. */
    const void *k_new;
    const void *v_new;
    int64_t seqlen_new;
    int64_t k_new_batch_stride, k_new_seq_stride, k_new_head_stride;
    int64_t v_new_batch_stride, v_new_seq_stride, v_new_head_stride;
    /* Rotary embedding (RoPE), FlashAttention's semantics. cos, sin: float32 [rotary_len,
     * rotary_dim / 2] contiguous; both or neither; given only with new tokens (seqlen_new >= 1).
     * New key j of sequence b is rotated at position cache_seqlens[b] + j before it is stored;
     * query i at cache_seqlens[b] + i when causal or windowed (window_left or window_right not
     * -1), else every query at cache_seqlens[b]. A position at or beyond rotary_len is refused.
     * Pair (x, y) at angle index c becomes (x cos - y sin, x sin + y cos), computed in double and
     * rounded once to float32, then to qkv_dtype (queries and keys alike); the pairs are channels
     * (2c, 2c+1) when rotary_interleaved (GPT-J), (c, c + rotary_dim/2) otherwise (GPT-NeoX).
     * Channels rotary_dim..D-1 pass unchanged. */
    const float *rotary_cos;
    const float *rotary_sin;
    int64_t rotary_len;
    int32_t rotary_interleaved; /* 0 or 1 */
    int32_t reserved0;          /* 0 */
    int64_t reserved[4];        /* 0 */
} qattn_kvcache_params;

/* Defaults: everything zero (no cache, no rotary). */
QATTN_API void qattn_kvcache_params_init(qattn_kvcache_params *kv);

/* Fill kv's strides for contiguous caches ([n_pages, page_size, HK, D] when block_table is set,
 * else [B, cache_len, HK, D]) and contiguous [B, seqlen_new, HK, D] new tokens, from p's
 * n_kv_heads and head_dim and kv's page_size / cache_len and seqlen_new. An overflowing stride
 * is set to INT64_MAX, which qattn_forward_kvcache refuses. */
QATTN_API void qattn_kvcache_params_set_contiguous(qattn_kvcache_params *kv, const qattn_params *p);

/* Append then attend, in one call (flash_attn_with_kvcache): for each sequence b, stores its new
 * K (rotated) and V in the cache at cache_seqlens[b], then computes attention of its queries
 * (rotated) over its Lk_b cached keys. Any seqlen_q >= 0: prefill with a cached prefix, chunked
 * prefill, decode, speculative decode; causal and both windows as in qattn_forward (this also
 * covers what qattn_kv_decode does not: more than 64 queries, a right window), through the same
 * CPU driver and kernels as qattn_forward (key tiles gathered page by page); bitwise identical for any
 * thread count on a given ISA. cache_seqlens is not changed: the caller advances it by seqlen_new.
 * p gives q, o, lse, batch, seqlen_q, n_heads, n_kv_heads, head_dim, dtypes, precision (AUTO,
 * FP32, FP16 or BF16; INT8/FP8 are refused: use the INT8 KV cache object above), causal, windows,
 * scale and q/o strides. p->k, p->v, p->seqlen_k, p->cu_seqlens_* and p->workspace must be
 * NULL/0 (the cache replaces them; scratch is allocated per call); p's k/v strides are ignored;
 * alibi_slopes and softcap apply as in qattn_forward (Lk = Lk_b); block_mask is refused. o and lse
 * must not overlap any input (alibi_slopes included) or the
 * caches; the caches must not overlap q, k_new, v_new or the tables (k_cache may not be
 * v_cache). Appends are written in sequence order before any attention: a page listed by
 * several sequences sees all their appends. Every argument (page ids of the entries used,
 * cache_seqlens, capacity, rotary positions, overlaps) is checked before anything is written;
 * a failure after the append (QATTN_ERR_OUT_OF_MEMORY, or QATTN_ERR_OVERFLOW for overflowing
 * scores as in qattn_forward) leaves the new tokens stored.
 * CUDA backend: FP16/BF16 tensors, the head dims and modifiers qattn_forward takes there, caches
 * 16-byte aligned with strides that are multiples of 8; queued on p->stream after one
 * synchronisation of it (the host reads cache_seqlens and the used block-table entries, checks
 * them and uploads its checked copy); the cache after the append is bitwise the CPU backend's;
 * two sequences appending to one cache slot are refused (QATTN_ERR_INVALID_ARGUMENT: the appends
 * run in parallel). The keys and values are gathered into scratch (at most 512 MiB per forward
 * call, or one sequence's) and attended by qattn_forward's kernels: one varlen call for many
 * sequences of different lengths with at most 64 queries each, else one call per run of equal
 * lengths (docs/KVCACHE.md). */
QATTN_API qattn_status qattn_forward_kvcache(qattn_ctx *ctx, const qattn_params *p, const qattn_kvcache_params *kv);

/* Rotate x in place: float32/float16/bfloat16 (dtype) contiguous [n_tokens, n_heads, head_dim],
 * token t at position + t, with the rotary rule of qattn_kvcache_params (cos, sin [rotary_len,
 * rotary_dim / 2]; interleaved 0 or 1). For the queries of a decode over the INT8 cache object
 * (qattn_kv_cache_append_rotary rotates its keys the same way). Positions beyond rotary_len are
 * refused; x is unchanged on error. */
QATTN_API qattn_status qattn_rotary_apply(qattn_ctx *ctx, void *x, int32_t dtype, int64_t n_tokens, int32_t n_heads, int32_t head_dim,
                                          int64_t position, const float *cos, const float *sin, int64_t rotary_len, int32_t rotary_dim,
                                          int32_t interleaved);

/* ---------------------------------------------------------------- INT8 quantization */
/* (section: INT8 formats, quantization API and pre-quantized forward; see docs/FORMAT.md) */

/* Symmetric INT8: a value x is stored as a code c in [-127, 127] with a scale s >= 0 and,
 * optionally, a smoothing mean mu subtracted first:  x ~= c * s + mu.  Codes are
 * round-to-nearest-even of (x - mu) / amax * 127 where amax is the largest |x - mu| of the
 * group sharing the scale, and s = amax / 127 (s = 0 and every code 0 for an all-zero group:
 * nothing is ever divided by zero). A code -128 given to qattn is read as -127.
 * Non-finite inputs are refused with QATTN_ERR_INVALID_ARGUMENT (their position named):
 * a shared scale would otherwise spread them to rows that never see them. */

/* Which rows/columns share one scale. The scale array layouts (float32, contiguous), for a
 * tensor with Ht heads (H for q, HK for k/v), B sequences of at most L tokens, head_dim D:
 *   PER_TOKEN:   [B, L, Ht]  (varlen: [total, Ht])       one scale per token and head
 *   PER_BLOCK:   [B, Ht, ceil(L / block_size)]             block_size consecutive tokens of one
 *                                                          sequence and head (blocks restart at
 *                                                          each sequence)
 *   PER_HEAD:    [B, Ht]                                   all tokens of one sequence and head
 *   PER_CHANNEL: [B, Ht, D]                                one channel over all tokens of one
 *                                                          sequence and head
 * Integer Q K^T needs Q and K scales constant along D (not PER_CHANNEL); integer P V needs V
 * scales constant along the keys (PER_HEAD or PER_CHANNEL), unless the scheme folds V's token
 * scales into P (the default scheme does). */
typedef enum qattn_quant_granularity {
    QATTN_QUANT_PER_TOKEN = 0,
    QATTN_QUANT_PER_BLOCK = 1,
    QATTN_QUANT_PER_HEAD = 2,
    QATTN_QUANT_PER_CHANNEL = 3,
} qattn_quant_granularity;

/* Which tensor of qattn_params a quantization call reads. */
typedef enum qattn_tensor_id {
    QATTN_TENSOR_Q = 0,
    QATTN_TENSOR_K = 1,
    QATTN_TENSOR_V = 2,
} qattn_tensor_id;

/* One INT8 tensor: codes with the shape of the FP tensor it replaces ([B, L, Ht, D], varlen
 * [total, Ht, D]) through its own element strides (head_dim contiguous), the scale array laid
 * out by granularity, and the optional smoothing mean [B, Ht, D] (NULL = no smoothing).
 * Smoothing K (subtracting its mean over tokens) leaves softmax unchanged; qattn adds
 * scale * q . mean back into the LSE. Smoothing V is added back after normalisation.
 * 64 bytes on every ABI (checked with _Static_assert in src/quant/quant.c). */
typedef struct qattn_int8_tensor {
    int8_t *data;
    float *scale;
    float *mean;
    int32_t granularity; /* qattn_quant_granularity */
    int32_t block_size;  /* tokens per scale for PER_BLOCK (>= 1); ignored otherwise */
    int64_t batch_stride, seq_stride, head_stride; /* elements; batch ignored with cu_seqlens */
    int64_t reserved;    /* 0 */
} qattn_int8_tensor;

/* The three inputs of qattn_forward_quantized. 192 bytes. */
typedef struct qattn_int8_inputs {
    qattn_int8_tensor q, k, v;
} qattn_int8_inputs;

/* Number of floats of t's scale array for tensor `which` of p (shapes and cu_seqlens of p). */
QATTN_API qattn_status qattn_int8_scale_count(qattn_ctx *ctx, const qattn_params *p, int32_t which, int32_t granularity,
                                              int32_t block_size, int64_t *count);

/* Quantize tensor `which` of p (p->q, p->k or p->v, any qkv_dtype F32/F16/BF16, p's strides)
 * into t: t->data (t's strides), t->scale (t->granularity, t->block_size) and, when t->mean is
 * not NULL, the smoothing mean (computed, written to t->mean, and subtracted first). */
QATTN_API qattn_status qattn_quantize_int8(qattn_ctx *ctx, const qattn_params *p, int32_t which, qattn_int8_tensor *t);

/* The inverse: out (float32, the FP tensor's strides from p) = code * scale + mean. */
QATTN_API qattn_status qattn_dequantize_int8(qattn_ctx *ctx, const qattn_params *p, int32_t which, const qattn_int8_tensor *t,
                                             float *out);

/* Attention on pre-quantized inputs: shapes, masks, GQA, varlen, o, lse, scale and
 * int8_scheme come from p (p->q/k/v and qkv_dtype are ignored and may be NULL/anything);
 * the inputs are qi. Computes attention of the dequantized tensors with INT8 x INT8 -> INT32
 * products: scheme DEFAULT folds V's token scales into P and quantizes that to u8 codes (x255)
 * against each block's own row max,
 * INTFA to codes x127 against the running max, SAGE keeps P and V in FP32 (V dequantized).
 * Q and K scales: any granularity but PER_CHANNEL; V: any (INTFA: PER_HEAD or PER_CHANNEL).
 * Scales must be finite and >= 0. CPU backend only. qattn_forward's DEFAULT scheme also smooths
 * and rotates Q and K jointly before rounding, and gives the (sequence, kv head) units whose
 * predicted logit noise is high 7 more bits of Q and K (residual codes; docs/FORMAT.md section 7),
 * which per-tensor qattn_quantize_int8 cannot: on its codes this is the DEFAULT scheme without
 * those steps. */
QATTN_API qattn_status qattn_forward_quantized(qattn_ctx *ctx, const qattn_params *p, const qattn_int8_inputs *qi);

/* ---- INT8 calibration: static channel transforms (docs/FORMAT.md section 7) ----
 * The default INT8 scheme transforms Q and K per (kv head, channel) before rounding: K minus its
 * mean, divided by a power-of-two factor f, Q times the f of its kv head (the query heads of a
 * group share it), both then rotated by a block Hadamard transform (Q K^T unchanged); V minus its
 * mean. qattn_forward derives mean and f from each call's own Q, K, V (a statistics pass over
 * every sequence before the codes). A calibration fixes them from sample data of the layer;
 * qattn_forward_calibrated and an INT8 KV cache (qattn_kv_cache_set_calibration) then quantize
 * in one pass (per-token scales are still computed per call, so nothing saturates). */
typedef struct qattn_calibration {
    int32_t n_kv_heads; /* HK */
    int32_t head_dim;   /* D */
    int64_t tokens;     /* key/value tokens accumulated so far; 0 = empty (the next call starts over) */
    /* Caller-owned float32 arrays [HK][D]. qattn_calibrate reads and updates all six; the
     * consumers read k_factor, k_mean and v_mean only (the others may be NULL there), from host
     * memory, or from device memory for qattn_forward_calibrated on the CUDA backend. */
    float *k_factor; /* f = 2^e, |e| <= 32: Q channel times f, K channel (minus k_mean) divided by f */
    float *k_mean;   /* running mean of K over tokens */
    float *v_mean;   /* running mean of V over tokens */
    float *q_absmax; /* running max |q| over the group's query heads and positions */
    float *k_min;    /* running min of K */
    float *k_max;    /* running max of K */
} qattn_calibration;

/* Accumulate the statistics of p's q, k, v (every sequence, all positions: masks ignored; o, lse
 * not needed and may be NULL; any qkv_dtype; CPU backend) into cal (cal->tokens == 0 starts them),
 * then set cal->k_factor from them: e = ceil(ilogb(ka / qa) / 2) clamped to [-32, 32], qa =
 * q_absmax, ka = max(k_max - k_mean, k_mean - k_min) (0 when either is 0 or not normal). Non-finite
 * samples are refused (QATTN_ERR_INVALID_ARGUMENT naming the tensor and position) and cal is
 * left unchanged on any error. */
QATTN_API qattn_status qattn_calibrate(qattn_ctx *ctx, const qattn_params *p, qattn_calibration *cal);

/* qattn_forward at precision INT8, scheme DEFAULT, with cal's k_factor, k_mean and v_mean in place
 * of the per-call statistics (every sequence uses them). Results equal qattn_forward's when cal was
 * computed from the same single sequence. Same workspace as qattn_forward. On the CUDA backend those
 * three arrays are device memory (copy a qattn_calibrate result over once) that the host does not
 * read: a factor that is not a power of two in 2^-32 .. 2^32, or a non-finite mean, makes every
 * output of its kv head NaN instead of a refusal. There the quantization skips its statistics pass,
 * so Q, K and V are read once. */
QATTN_API qattn_status qattn_forward_calibrated(qattn_ctx *ctx, const qattn_params *p, const qattn_calibration *cal);

/* ---------------------------------------------------------------- KV cache and decode */
/* (section: paged KV cache with FP16/BF16/INT8 storage and decode forward) */

/* A paged KV cache (vLLM-style): physical blocks of block_size tokens, a per-sequence block
 * table mapping logical blocks to physical ones, reference-counted blocks so that forked
 * sequences share their prefix, copy-on-write of a shared, partially filled last block.
 * Storage FP16, BF16 or INT8. INT8 (docs/KVCACHE.md): symmetric per-token-per-head scales for
 * both K and V (scale = max|x| / 127 over the head_dim values of one token and head), so an
 * append never touches codes already stored; each K row is rotated by a block Hadamard
 * transform before its rounding (outlier channels spread over the block; decode rotates q to
 * match, so Q K^T is unchanged), and a calibration (qattn_kv_cache_set_calibration) may add
 * channel smoothing and means. Memory: one arena of n_blocks fixed-size blocks
 * plus O(max_seqs * max_blocks_per_seq) table entries, allocated once through the context
 * allocator. A cache belongs to the context that created it (use it with that context).
 * Sequences are numbered 0..max_seqs-1 by the caller; a sequence that holds no tokens is empty. */
typedef struct qattn_kv_cache qattn_kv_cache;

typedef struct qattn_kv_cache_options {
    int32_t n_kv_heads; /* HK >= 1 */
    int32_t head_dim;   /* D: 8..256, a multiple of 8 (qattn_kv_decode_cuda: 64 or 128) */
    int32_t block_size; /* tokens per block: 1..1024 (16 or 32 are typical) */
    int32_t dtype;      /* storage: QATTN_DTYPE_F16, QATTN_DTYPE_BF16 or QATTN_DTYPE_I8 */
    int64_t n_blocks;   /* capacity in blocks, >= 1 */
    int32_t max_seqs;   /* sequence ids are 0..max_seqs-1 */
    int32_t reserved;
    int64_t max_blocks_per_seq; /* block-table width; 0 = n_blocks */
} qattn_kv_cache_options;

typedef struct qattn_kv_cache_info {
    int64_t n_blocks;       /* capacity */
    int64_t free_blocks;    /* not referenced by any sequence */
    int64_t used_blocks;    /* n_blocks - free_blocks */
    int64_t block_bytes;    /* bytes of one physical block (codes + scales) */
    int64_t bytes_total;    /* all memory the cache holds (arena + tables + struct) */
    int64_t bytes_used;     /* used_blocks * block_bytes */
    int64_t tokens_stored;  /* sum of the sequence lengths (shared prefixes counted per sequence) */
    int32_t n_active_seqs;  /* sequences holding >= 1 token */
    int32_t reserved;
} qattn_kv_cache_info;

QATTN_API qattn_status qattn_kv_cache_create(qattn_ctx *ctx, const qattn_kv_cache_options *opt, qattn_kv_cache **cache);
QATTN_API void qattn_kv_cache_destroy(qattn_ctx *ctx, qattn_kv_cache *cache); /* NULL cache is a no-op */

/* Append n_tokens >= 0 tokens to sequence seq. k, v: contiguous [n_tokens, HK, D] of in_dtype
 * (F32, F16 or BF16). All or nothing: when the blocks needed (including a copy-on-write block)
 * exceed the free blocks or the block-table width, QATTN_ERR_CAPACITY and the cache is unchanged.
 * INT8 storage rejects non-finite values (QATTN_ERR_INVALID_ARGUMENT, cache unchanged). */
QATTN_API qattn_status qattn_kv_cache_append(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t seq, const void *k, const void *v,
                                             int64_t n_tokens, int32_t in_dtype);

/* qattn_kv_cache_append with rotary embedding on the keys: token t of k is rotated at position
 * len + t (len: the sequence's length before the call) with the rule of qattn_kvcache_params
 * (cos, sin float32 [rotary_len, rotary_dim / 2]; rotary_dim even, 2..head_dim; interleaved 0
 * or 1), in FP32 before the storage rounding or INT8 quantization (and before a calibration's
 * transforms). V is stored as given. Rotate the queries with qattn_rotary_apply at the same
 * positions. A position at or beyond rotary_len is refused; the cache is then unchanged. */
QATTN_API qattn_status qattn_kv_cache_append_rotary(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t seq, const void *k, const void *v,
                                                    int64_t n_tokens, int32_t in_dtype, const float *cos, const float *sin,
                                                    int64_t rotary_len, int32_t rotary_dim, int32_t interleaved);

/* Give an empty INT8 cache static channel transforms (cal's k_factor, k_mean, v_mean, [HK][D];
 * qattn_calibrate; docs/KVCACHE.md): appends then store K as codes of H((k - k_mean) / (f n)) (the
 * default INT8 scheme's smoothing and Hadamard rotation, docs/FORMAT.md section 7) and V as codes
 * of v - v_mean; qattn_kv_decode transforms q to match and adds the means back (output and LSE);
 * qattn_kv_cache_read returns the original domain. A calibration of factors 1 and means 0 gives
 * the rotation alone, which is what every INT8 cache applies until this call. Refused unless
 * every sequence is empty. The arrays are copied into the cache's arena (its tail), so the export
 * and a device copy carry them and qattn_kv_decode_cuda applies them as the CPU decode does. */
QATTN_API qattn_status qattn_kv_cache_set_calibration(qattn_ctx *ctx, qattn_kv_cache *cache, const qattn_calibration *cal);

/* Drop all tokens of seq; its blocks return to the free list when no other sequence shares them. */
QATTN_API qattn_status qattn_kv_cache_free_seq(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t seq);

/* Make empty sequence dst a copy of src sharing all of src's blocks (no data copied). A later
 * append to either copies their shared partially filled last block first (copy-on-write). */
QATTN_API qattn_status qattn_kv_cache_fork(qattn_ctx *ctx, qattn_kv_cache *cache, int32_t src, int32_t dst);

QATTN_API qattn_status qattn_kv_cache_seq_len(qattn_ctx *ctx, const qattn_kv_cache *cache, int32_t seq, int64_t *len);
QATTN_API qattn_status qattn_kv_cache_get_info(qattn_ctx *ctx, const qattn_kv_cache *cache, qattn_kv_cache_info *info);

/* Dequantize tokens [start, start+n) of seq to FP32 k, v contiguous [n, HK, D] (either may be
 * NULL). What decode sees, for tests and oracles. */
QATTN_API qattn_status qattn_kv_cache_read(qattn_ctx *ctx, const qattn_kv_cache *cache, int32_t seq, int64_t start, int64_t n,
                                           float *k, float *v);

/* Decode over the cache: for each listed sequence, its last seqlen_q tokens (already appended)
 * are the queries. Masks as in the overview with Lk = the sequence's length and Lq = seqlen_q
 * (bottom-right aligned): causal makes the new tokens causal among themselves. */
typedef struct qattn_decode_params {
    const void *q;          /* [n_seqs, seqlen_q, n_heads, head_dim] contiguous, q_dtype */
    void *o;                /* same shape, o_dtype */
    float *lse;             /* optional [n_seqs, n_heads, seqlen_q], natural log; -inf for no key */
    const int32_t *seq_ids; /* [n_seqs] sequence ids, each holding >= seqlen_q tokens */
    int32_t n_seqs;         /* >= 0 */
    int32_t seqlen_q;       /* Lq: 1..64 new tokens per sequence (more, or a right window: qattn_forward_kvcache) */
    int32_t n_heads;        /* H, a multiple of the cache's n_kv_heads (GQA) */
    int32_t q_dtype;        /* F32, F16 or BF16 */
    int32_t o_dtype;        /* F32, F16 or BF16 */
    int32_t causal;         /* 0 or 1 (default 1) */
    int32_t window_left;    /* -1 = unbounded (default) */
    float scale;            /* 0 = 1/sqrt(head_dim) */
} qattn_decode_params;

/* Defaults: F32 q and o, seqlen_q 1, causal 1, window_left -1, scale 0, everything else zero. */
QATTN_API void qattn_decode_params_init(qattn_decode_params *dp);

/* Split-KV decode with an exact fixed-order merge: bitwise identical for any thread count of a
 * given ISA. K/V of a kv head are read once per query group (all H/HK heads and Lq positions).
 * Memory: O(n_seqs * HK * splits * rows * D) scratch, never O(L^2). */
QATTN_API qattn_status qattn_kv_decode(qattn_ctx *ctx, const qattn_kv_cache *cache, const qattn_decode_params *dp);

/* ---- GPU decode over a device copy of the cache (docs/gpu_decode.md) ----
 * The cache itself lives in host memory (created and appended on a CPU context). Its layout is
 * pointer-free, so a byte copy of the arena and of the int32 block table in device memory is a
 * valid device cache: qattn_kv_cache_export gives the host arena and table, the caller copies
 * them (cudaMemcpy, whole or only the blocks/rows that changed) and passes the device pointers
 * to qattn_kv_decode_cuda. Sequence lengths are read from the host cache (they must describe
 * the device copy). */
typedef struct qattn_kv_cache_layout {
    const void *arena;          /* host: arena_bytes = n_blocks * block_bytes, then for INT8 the channel
                                   transforms (float [5][HK][D], written at creation and by
                                   qattn_kv_cache_set_calibration: copy them once after those) */
    const int32_t *block_table; /* host: [max_seqs][max_blocks_per_seq] physical ids, -1 unused */
    int64_t arena_bytes;
    int64_t table_entries;      /* max_seqs * max_blocks_per_seq */
    int64_t n_blocks, block_bytes, max_blocks_per_seq;
    int64_t head_bytes;         /* one kv head's codes in one block: block_size * D * elem_bytes */
    int64_t v_offset, ks_offset, vs_offset; /* byte offsets inside a block (scales: INT8 only, else 0) */
    int32_t n_kv_heads, head_dim, block_size, dtype, max_seqs, reserved;
} qattn_kv_cache_layout;

QATTN_API qattn_status qattn_kv_cache_export(qattn_ctx *ctx, const qattn_kv_cache *cache, qattn_kv_cache_layout *layout);

typedef struct qattn_kv_device_cache {
    const void *arena;          /* device copy of the arena, 16-byte aligned */
    const int32_t *block_table; /* device copy of the block table */
    void *stream;               /* cudaStream_t; NULL = the legacy default stream */
} qattn_kv_device_cache;

/* Split-KV decode on the GPU (ctx: backend cuda). dp as for qattn_kv_decode except that q, o
 * and lse are device pointers; seq_ids stays in host memory. head_dim 64 or 128. Queued on
 * dev->stream (one kernel launch per 128 sequences), not synchronised. The split scratch is cached
 * in ctx: allocated by the first call that needs it and grown when a call needs more (cudaMalloc,
 * which synchronises the device); it serialises ctx's decodes (a call on another stream than the
 * previous call's waits for that call on the device). The split partials are merged in a fixed
 * order: results are run-to-run deterministic. */
QATTN_API qattn_status qattn_kv_decode_cuda(qattn_ctx *ctx, const qattn_kv_cache *cache, const qattn_kv_device_cache *dev,
                                            const qattn_decode_params *dp);

#ifdef __cplusplus
}
#endif

#endif /* QATTN_H */
