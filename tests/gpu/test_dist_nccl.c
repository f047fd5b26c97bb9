/* qattn_dist over NCCL (one GPU per rank; ranks from mpirun when built with MPI, else one rank):
 * exact distributed attention (FP16, INT8), Star phase 1 and distributed decode on device
 * memory, against the single-GPU results and the FP64 oracle, poisoned outputs, bitwise
 * determinism run to run. Not registered with CTest (CPU CI has no GPU); bench/gpu_dist.sh
 * runs it. Exits 77 without a device.
 * Tolerances: on the GPU the kernels round P to FP16 (or quantize it to INT8) after the
 * online-softmax rescaling, so a shard's partial is a different rounding of its rows than the
 * single-GPU pass makes: the distributed error against the FP64 oracle must stay within 1.5x
 * the single-GPU error plus the FP32 floor 1e-5; one rank must equal qattn_forward bit for bit.
 * Star phase 1 against its definition (one pass over [anchor ; block]) and decode against the
 * single-GPU decode: 2e-3 relative L2, the FP16 bound of tests/gpu/test_gpu.c. */
#define _POSIX_C_SOURCE 200809L
#include "qattn.h"
#include "qattn_dist.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(QATTN_HAVE_MPI)
#include <mpi.h>
#endif

static int g_rank = 0, g_size = 1, g_fail = 0, g_checks = 0;
static qattn_ctx *g_ctx, *g_host;
static qattn_dist *g_dist;

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        g_checks++;                                                      \
        if (!(cond)) {                                                   \
            g_fail++;                                                    \
            fprintf(stderr, "FAIL rank %d %s:%d: ", g_rank, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                \
            fputc('\n', stderr);                                         \
        }                                                                \
    } while (0)

static void *dev_alloc(size_t n) {
    void *p = NULL;
    if (cudaMalloc(&p, n ? n : 16) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc(%zu) failed\n", n);
        exit(2);
    }
    return p;
}
static void *dev_copy(const void *h, size_t n) {
    void *d = dev_alloc(n);
    cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    return d;
}
static void *host_copy(const void *d, size_t n) {
    void *h = malloc(n ? n : 16);
    cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost);
    return h;
}

static uint64_t rng = 88172645463325252ull;
static float nrand(void) {
    double u[2];
    for (int i = 0; i < 2; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        u[i] = (double)(rng >> 11) * (1.0 / 9007199254740992.0);
    }
    return (float)(sqrt(-2.0 * log(u[0] + 1e-12)) * cos(6.283185307179586 * u[1]));
}
static uint16_t f2h(float f) { /* round to nearest even, normal range (test data) */
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax < 0x38800000u) return (uint16_t)sign;
    ax += 0xfffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | ((ax - 0x38000000u) >> 13));
}
/* n FP16 N(0,1) values, the same on every rank (the generator restarts from seed). */
static uint16_t *random_f16(size_t n, uint64_t seed) {
    rng = 88172645463325252ull ^ (seed * 0x9e3779b97f4a7c15ull);
    uint16_t *x = malloc(n * 2);
    for (size_t i = 0; i < n; i++) x[i] = f2h(nrand());
    return x;
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
static double rel_l2_64(const float *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
static size_t count_nan(const float *x, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += isnan(x[i]) != 0;
    return k;
}

static void even_shard(int64_t total, int r, int n, int64_t *off, int64_t *len) {
    int64_t base = total / n, extra = total % n;
    *off = r * base + (r < extra ? r : extra);
    *len = base + (r < extra ? 1 : 0);
}

typedef struct fcase {
    int64_t lq, lk;
    int32_t h, hk, d, causal, precision;
} fcase;

static void test_exact(const fcase *c, uint64_t seed) {
    size_t nq = (size_t)(c->lq * c->h * c->d), nkv = (size_t)(c->lk * c->hk * c->d), nl = (size_t)(c->h * c->lq);
    uint16_t *q = random_f16(nq, seed), *k = random_f16(nkv, seed + 1), *v = random_f16(nkv, seed + 2);
    void *dq = dev_copy(q, nq * 2), *dk = dev_copy(k, nkv * 2), *dv = dev_copy(v, nkv * 2);
    float *dO = dev_alloc(nq * 4), *dL = dev_alloc(nl * 4), *dO1 = dev_alloc(nq * 4), *dL1 = dev_alloc(nl * 4);
    qattn_params p;
    qattn_params_init(&p);
    p.q = dq, p.k = dk, p.v = dv, p.o = dO1, p.lse = dL1, p.batch = 1, p.seqlen_q = c->lq, p.seqlen_k = c->lk;
    p.n_heads = c->h, p.n_kv_heads = c->hk, p.head_dim = c->d, p.qkv_dtype = QATTN_DTYPE_F16, p.o_dtype = QATTN_DTYPE_F32;
    p.precision = c->precision, p.causal = c->causal;
    qattn_params_set_contiguous(&p);
    qattn_status s = qattn_forward(g_ctx, &p);
    CHECK(s == QATTN_OK, "single-GPU forward: %s", qattn_ctx_last_error(g_ctx));
    cudaDeviceSynchronize();
    float *o1 = host_copy(dO1, nq * 4), *l1 = host_copy(dL1, nl * 4), *o[2], *l[2];
    int64_t off, len;
    even_shard(c->lk, g_rank, g_size, &off, &len);
    qattn_params lp = p;
    lp.k = (const uint16_t *)dk + off * c->hk * c->d, lp.v = (const uint16_t *)dv + off * c->hk * c->d, lp.seqlen_k = len, lp.o = dO, lp.lse = dL;
    qattn_params_set_contiguous(&lp);
    for (int run = 0; run < 2; run++) {
        cudaMemset(dO, 0xff, nq * 4), cudaMemset(dL, 0xff, nl * 4); /* NaN */
        s = qattn_dist_forward(g_ctx, g_dist, &lp, off, c->lk);
        CHECK(s == QATTN_OK, "qattn_dist_forward: %s", qattn_ctx_last_error(g_ctx));
        o[run] = host_copy(dO, nq * 4), l[run] = host_copy(dL, nl * 4);
    }
    CHECK(count_nan(o[0], nq) == 0 && count_nan(l[0], nl) == 0, "outputs not written");
    CHECK(!memcmp(o[0], o[1], nq * 4) && !memcmp(l[0], l[1], nl * 4), "two runs differ");
    if (g_size == 1) CHECK(!memcmp(o[0], o1, nq * 4) && !memcmp(l[0], l1, nl * 4), "one rank differs from qattn_forward");
    /* FP64 oracle on the host copies */
    qattn_params hp = p;
    hp.q = q, hp.k = k, hp.v = v, hp.o = o1, hp.lse = NULL;
    double *o64 = malloc(nq * 8);
    CHECK(qattn_oracle_f64(g_host, &hp, o64, NULL) == QATTN_OK, "oracle");
    double e = rel_l2_64(o[0], o64, nq), e1 = rel_l2_64(o1, o64, nq);
    CHECK(e <= 1.5 * e1 + 1e-5, "rel L2 %.3e vs oracle above 1.5 x single-GPU %.3e", e, e1);
    if (g_rank == 0)
        printf("exact Lq %lld Lk %lld H %d HK %d D %d causal %d prec %d ranks %d: rel_l2 %.3e (single %.3e), vs single %.3e\n", (long long)c->lq,
               (long long)c->lk, c->h, c->hk, c->d, c->causal, c->precision, g_size, e, e1, rel_l2(o[0], o1, nq));
    free(q), free(k), free(v), free(o1), free(l1), free(o[0]), free(o[1]), free(l[0]), free(l[1]), free(o64);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dO), cudaFree(dL), cudaFree(dO1), cudaFree(dL1);
}

/* Star phase 1 on this rank's block of lc tokens / N against one pass over [anchor ; block]. */
static void test_star(int64_t lc, int64_t anchor, int32_t h, int32_t hk, int32_t d, uint64_t seed) {
    size_t qrow = (size_t)h * d, kvrow = (size_t)hk * d;
    uint16_t *q = random_f16(lc * qrow, seed), *k = random_f16(lc * kvrow, seed + 1), *v = random_f16(lc * kvrow, seed + 2);
    int64_t off, len;
    even_shard(lc, g_rank, g_size, &off, &len);
    int64_t a = off < anchor ? off : anchor;
    uint16_t *kc = malloc((a + len) * kvrow * 2), *vc = malloc((a + len) * kvrow * 2);
    memcpy(kc, k, a * kvrow * 2), memcpy(kc + a * kvrow, k + off * kvrow, len * kvrow * 2);
    memcpy(vc, v, a * kvrow * 2), memcpy(vc + a * kvrow, v + off * kvrow, len * kvrow * 2);
    void *dq = dev_copy(q + off * qrow, len * qrow * 2), *dk = dev_copy(kc, (a + len) * kvrow * 2), *dv = dev_copy(vc, (a + len) * kvrow * 2);
    float *dO = dev_alloc(len * qrow * 4), *dD = dev_alloc(len * qrow * 4);
    qattn_params p;
    qattn_params_init(&p);
    p.q = dq, p.k = (uint16_t *)dk + a * kvrow, p.v = (uint16_t *)dv + a * kvrow, p.o = dO, p.batch = 1, p.seqlen_q = p.seqlen_k = len;
    p.n_heads = h, p.n_kv_heads = hk, p.head_dim = d, p.qkv_dtype = QATTN_DTYPE_F16, p.o_dtype = QATTN_DTYPE_F32, p.causal = 1;
    qattn_params_set_contiguous(&p);
    cudaMemset(dO, 0xff, len * qrow * 4);
    qattn_status s = qattn_star_encode(g_ctx, &p, dk, dv, a);
    CHECK(s == QATTN_OK, "qattn_star_encode: %s", qattn_ctx_last_error(g_ctx));
    qattn_params pd = p;
    pd.k = dk, pd.v = dv, pd.seqlen_k = a + len, pd.o = dD;
    qattn_params_set_contiguous(&pd);
    CHECK(qattn_forward(g_ctx, &pd) == QATTN_OK, "definition: %s", qattn_ctx_last_error(g_ctx));
    cudaDeviceSynchronize();
    float *o = host_copy(dO, len * qrow * 4), *od = host_copy(dD, len * qrow * 4);
    double e = rel_l2(o, od, len * qrow);
    CHECK(count_nan(o, len * qrow) == 0 && e <= 2e-3, "star phase 1 rel L2 %.3e vs its definition above 2e-3", e);
    if (g_rank == 0) printf("star Lc %lld anchor %lld ranks %d: phase 1 rel_l2 vs definition %.3e\n", (long long)lc, (long long)anchor, g_size, e);
    free(q), free(k), free(v), free(kc), free(vc), free(o), free(od);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dO), cudaFree(dD);
}

/* A device copy of a host cache. */
static qattn_kv_device_cache upload_cache(const qattn_kv_cache *c, void **arena, void **table) {
    qattn_kv_cache_layout l;
    qattn_kv_cache_export(g_host, c, &l);
    *arena = dev_copy(l.arena, (size_t)l.arena_bytes);
    *table = dev_copy(l.block_table, (size_t)l.table_entries * 4);
    qattn_kv_device_cache dev = {*arena, *table, NULL};
    return dev;
}

static void test_decode(int64_t L, int32_t lq, uint64_t seed) {
    const int H = 16, HK = 2, D = 128;
    qattn_kv_cache_options co;
    memset(&co, 0, sizeof co);
    co.n_kv_heads = HK, co.head_dim = D, co.block_size = 16, co.dtype = QATTN_DTYPE_F16, co.n_blocks = L / 16 + 8, co.max_seqs = 1;
    qattn_kv_cache *whole = NULL, *mine = NULL;
    CHECK(qattn_kv_cache_create(g_host, &co, &whole) == QATTN_OK && qattn_kv_cache_create(g_host, &co, &mine) == QATTN_OK, "cache create");
    size_t row = (size_t)HK * D;
    float *k = malloc(L * row * 4), *v = malloc(L * row * 4);
    rng = seed;
    for (size_t i = 0; i < L * row; i++) k[i] = nrand(), v[i] = nrand();
    qattn_kv_cache_append(g_host, whole, 0, k, v, L, QATTN_DTYPE_F32);
    int64_t piece = (L - lq) / g_size, off = piece * g_rank, n = g_rank == g_size - 1 ? L - off : piece;
    qattn_kv_cache_append(g_host, mine, 0, k + off * row, v + off * row, n, QATTN_DTYPE_F32);
    void *wa, *wt, *ma, *mt;
    qattn_kv_device_cache dw = upload_cache(whole, &wa, &wt), dm = upload_cache(mine, &ma, &mt);
    size_t nq = (size_t)lq * H * D;
    float *q = malloc(nq * 4);
    for (size_t i = 0; i < nq; i++) q[i] = nrand();
    float *dq = dev_copy(q, nq * 4), *dO = dev_alloc(nq * 4), *dO1 = dev_alloc(nq * 4);
    int32_t id = 0;
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = dq, dp.o = dO1, dp.seq_ids = &id, dp.n_seqs = 1, dp.seqlen_q = lq, dp.n_heads = H;
    CHECK(qattn_kv_decode_cuda(g_ctx, whole, &dw, &dp) == QATTN_OK, "single-GPU decode: %s", qattn_ctx_last_error(g_ctx));
    dp.o = dO;
    cudaMemset(dO, 0xff, nq * 4);
    qattn_status s = qattn_dist_kv_decode(g_ctx, g_dist, mine, &dm, &dp, g_size - 1);
    CHECK(s == QATTN_OK, "qattn_dist_kv_decode: %s", qattn_ctx_last_error(g_ctx));
    cudaDeviceSynchronize();
    float *o = host_copy(dO, nq * 4), *o1 = host_copy(dO1, nq * 4);
    double e = rel_l2(o, o1, nq);
    CHECK(count_nan(o, nq) == 0 && e <= 2e-3, "decode rel L2 %.3e vs single-GPU above 2e-3", e);
    if (g_size == 1) CHECK(!memcmp(o, o1, nq * 4), "one rank differs from qattn_kv_decode_cuda");
    if (g_rank == 0) printf("decode L %lld Lq %d ranks %d: rel_l2 vs single-GPU %.3e\n", (long long)L, lq, g_size, e);
    qattn_kv_cache_destroy(g_host, whole), qattn_kv_cache_destroy(g_host, mine);
    free(k), free(v), free(q), free(o), free(o1);
    cudaFree(wa), cudaFree(wt), cudaFree(ma), cudaFree(mt), cudaFree(dq), cudaFree(dO), cudaFree(dO1);
}

/* A head dim the CPU backend runs but the CUDA backend does not (16): the distributed forward and
 * decode over NCCL fail on every rank with QATTN_ERR_UNSUPPORTED (the backend's supports check and
 * qattn_kv_decode_cuda's), never reaching a kernel. */
static void test_refused_head_dim(void) {
    const int D = 16, H = 4, HK = 2, n = 20;
    qattn_params p;
    qattn_params_init(&p);
    p.batch = 1, p.seqlen_q = p.seqlen_k = 8, p.n_heads = H, p.n_kv_heads = HK, p.head_dim = D;
    p.qkv_dtype = QATTN_DTYPE_F16;
    qattn_params_set_contiguous(&p);
    p.q = p.k = p.v = p.o = (void *)(uintptr_t)256; /* never dereferenced: refused first */
    qattn_status s = qattn_dist_forward(g_ctx, g_dist, &p, g_rank * 8, 8 * g_size);
    CHECK(s == QATTN_ERR_UNSUPPORTED, "dist forward at head_dim %d: %s", D, qattn_status_str(s));
    qattn_kv_cache_options co;
    memset(&co, 0, sizeof co);
    co.n_kv_heads = HK, co.head_dim = D, co.block_size = 16, co.dtype = QATTN_DTYPE_F16, co.n_blocks = 4, co.max_seqs = 1;
    qattn_kv_cache *c = NULL;
    CHECK(qattn_kv_cache_create(g_host, &co, &c) == QATTN_OK, "cache create at head_dim %d", D);
    if (!c) return;
    float *kv = calloc((size_t)n * HK * D, 4);
    qattn_kv_cache_append(g_host, c, 0, kv, kv, n, QATTN_DTYPE_F32);
    void *arena, *table;
    qattn_kv_device_cache dev = upload_cache(c, &arena, &table);
    float *dq = dev_alloc((size_t)H * D * 4), *dO = dev_alloc((size_t)H * D * 4);
    int32_t id = 0;
    qattn_decode_params dp;
    qattn_decode_params_init(&dp);
    dp.q = dq, dp.o = dO, dp.seq_ids = &id, dp.n_seqs = 1, dp.seqlen_q = 1, dp.n_heads = H;
    s = qattn_dist_kv_decode(g_ctx, g_dist, c, &dev, &dp, g_size - 1);
    CHECK(s == QATTN_ERR_UNSUPPORTED, "dist decode at head_dim %d: %s", D, qattn_status_str(s));
    if (g_rank == 0) printf("head_dim %d refused by the NCCL forward and decode: %s\n", D, qattn_ctx_last_error(g_ctx));
    qattn_kv_cache_destroy(g_host, c);
    free(kv);
    cudaFree(arena), cudaFree(table), cudaFree(dq), cudaFree(dO);
}

int main(int argc, char **argv) {
#if defined(QATTN_HAVE_MPI)
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
#else
    (void)argc, (void)argv;
#endif
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: skipped\n");
#if defined(QATTN_HAVE_MPI)
        MPI_Finalize();
#endif
        return 77;
    }
    cudaSetDevice(g_rank % n_dev);
    qattn_ctx_options opt;
    memset(&opt, 0, sizeof opt);
    opt.backend = QATTN_BACKEND_CUDA, opt.cuda_device = g_rank % n_dev;
    if (qattn_ctx_create(&g_ctx, &opt) != QATTN_OK || qattn_ctx_create(&g_host, NULL) != QATTN_OK) {
        fprintf(stderr, "cannot create contexts\n");
        return 2;
    }
    ncclUniqueId nid;
    if (g_rank == 0) ncclGetUniqueId(&nid);
#if defined(QATTN_HAVE_MPI)
    MPI_Bcast(&nid, (int)sizeof nid, MPI_BYTE, 0, MPI_COMM_WORLD);
#endif
    ncclComm_t comm;
    if (ncclCommInitRank(&comm, g_size, nid, g_rank) != ncclSuccess) {
        fprintf(stderr, "ncclCommInitRank failed\n");
        return 2;
    }
    qattn_status s = qattn_dist_create_nccl(g_ctx, &comm, &g_dist);
    CHECK(s == QATTN_OK, "qattn_dist_create_nccl: %s", qattn_ctx_last_error(g_ctx));
    if (s == QATTN_OK) {
        const fcase cases[] = {
            {512, 1536, 8, 2, 128, 1, QATTN_PRECISION_AUTO}, {256, 700, 4, 4, 64, 0, QATTN_PRECISION_AUTO},
            {1, 4096, 16, 2, 128, 1, QATTN_PRECISION_AUTO},  {300, 300, 4, 4, 256, 1, QATTN_PRECISION_AUTO},
            {512, 1024, 8, 2, 64, 1, QATTN_PRECISION_INT8},  {128, 2048, 8, 8, 128, 0, QATTN_PRECISION_INT8},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_exact(&cases[i], 100 + 10 * i);
        test_star(2048, 256, 8, 2, 128, 500);
        test_decode(5000, 1, 600);
        test_decode(5000, 4, 610);
        test_refused_head_dim();
        /* a bad argument on rank 0 fails every rank */
        qattn_params p;
        qattn_params_init(&p);
        p.batch = 1, p.seqlen_q = p.seqlen_k = 8, p.n_heads = p.n_kv_heads = 1, p.head_dim = 64;
        if (g_rank == 0) p.cu_seqlens_q = p.cu_seqlens_k = &g_rank;
        p.qkv_dtype = QATTN_DTYPE_F16;
        qattn_params_set_contiguous(&p);
        s = qattn_dist_forward(g_ctx, g_dist, &p, g_rank * 8, 8 * g_size);
        CHECK(s == QATTN_ERR_UNSUPPORTED, "cu_seqlens on rank 0: %s", qattn_status_str(s));
        qattn_dist_info info;
        qattn_dist_get_info(g_dist, &info);
        if (g_rank == 0) printf("counters: %lld collectives, %lld bytes sent, %.3f ms communicating\n", (long long)info.collectives,
                                (long long)info.bytes_sent, info.comm_seconds * 1e3);
    }
    qattn_dist_destroy(g_dist);
    ncclCommDestroy(comm);
    qattn_ctx_destroy(g_ctx), qattn_ctx_destroy(g_host);
    printf("[test_dist_nccl rank %d] %d checks, %d failed: %s\n", g_rank, g_checks, g_fail, g_fail ? "FAILED" : "PASSED");
#if defined(QATTN_HAVE_MPI)
    int worst = g_fail;
    MPI_Allreduce(&g_fail, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    g_fail = worst;
    MPI_Finalize();
#endif
    return g_fail ? 1 : 0;
}
