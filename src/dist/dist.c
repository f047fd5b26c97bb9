/* qattn_dist's operations (include/qattn_dist.h): exact sequence-parallel attention, Star
 * Attention's phase 1 and distributed decode, written once over the transport table
 * (dist_internal.h) and the record operations (host loops here, GPU kernels in
 * dist_kernels.cu). Every collective call first exchanges a small descriptor (status and
 * shapes) so that one rank's bad argument fails every rank instead of hanging them. */
#define _POSIX_C_SOURCE 200809L
#include "dist/dist_internal.h"

#include "kv/kv_internal.h"

#include <stdlib.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- communicator shell */

qattn_dist *qattn_dist_new(qattn_ctx *ctx) {
    qattn_dist *d = calloc(1, sizeof *d);
    if (!d) qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "cannot allocate the communicator");
    return d;
}

void qattn_dist_destroy(qattn_dist *d) {
    if (!d) return;
    if (d->ops && d->ops->destroy) d->ops->destroy(d);
    free(d);
}

qattn_status qattn_dist_get_info(const qattn_dist *d, qattn_dist_info *info) {
    if (!d || !info) return QATTN_ERR_NULL_POINTER;
    *info = d->stats;
    info->transport = d->transport;
    info->rank = d->rank;
    info->size = d->size;
    return QATTN_OK;
}

qattn_status qattn_dist_reset_stats(qattn_dist *d) {
    if (!d) return QATTN_ERR_NULL_POINTER;
    memset(&d->stats, 0, sizeof d->stats);
    return QATTN_OK;
}

/* ---------------------------------------------------------------- buffers and record operations */

typedef struct where {
    bool dev;     /* device memory (CUDA) */
    void *stream; /* cudaStream_t when dev */
} where;

#if defined(QATTN_HAVE_CUDA)
static qattn_status cuda_failed(qattn_ctx *ctx, const char *what, int code) {
    return qattn_fail(ctx, QATTN_ERR_BACKEND, "qattn_dist: %s failed (CUDA error %d)", what, code);
}
#endif

static qattn_status buf_alloc(qattn_ctx *ctx, where w, size_t bytes, void **ptr) {
    *ptr = NULL;
    if (bytes < 64) bytes = 64; /* so that a zero-sized problem still gets a valid pointer */
#if defined(QATTN_HAVE_CUDA)
    if (w.dev) {
        int e = qattn_dist_dev_alloc(ptr, bytes);
        return e ? qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_dist: cannot allocate %zu bytes of device memory (CUDA error %d)", bytes, e)
                 : QATTN_OK;
    }
#endif
    *ptr = qattn_alloc(ctx, bytes);
    return *ptr ? QATTN_OK : qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_dist: cannot allocate %zu bytes", bytes);
}

static void buf_free(qattn_ctx *ctx, where w, void *ptr) {
    if (!ptr) return;
#if defined(QATTN_HAVE_CUDA)
    if (w.dev) {
        qattn_dist_dev_free(ptr);
        return;
    }
#endif
    qattn_free(ctx, ptr);
}

/* Records with no visible key: LSE -inf, output 0 (what qattn_forward writes for such a row). */
static qattn_status rec_set_empty(qattn_ctx *ctx, where w, float *rec, int64_t n_rec, int R) {
#if defined(QATTN_HAVE_CUDA)
    if (w.dev) {
        int e = qattn_dist_dev_set_empty(rec, n_rec, R, w.stream);
        return e ? cuda_failed(ctx, "set_empty", e) : QATTN_OK;
    }
#endif
    for (int64_t i = 0; i < n_rec; i++) {
        rec[i * R] = -INFINITY;
        memset(rec + i * R + 1, 0, (size_t)(R - 1) * sizeof(float));
    }
    return QATTN_OK;
}

/* lse [B, H, m] of the first m query rows (of Lq per sequence) into float 0 of record
 * (b*Lq + i)*H + h. */
static qattn_status rec_put_lse(qattn_ctx *ctx, where w, float *rec, const float *lse, int64_t B, int32_t H, int64_t Lq, int64_t m, int R) {
#if defined(QATTN_HAVE_CUDA)
    if (w.dev) {
        int e = qattn_dist_dev_put_lse(rec, lse, B, H, Lq, m, R, w.stream);
        return e ? cuda_failed(ctx, "put_lse", e) : QATTN_OK;
    }
#endif
    for (int64_t b = 0; b < B; b++)
        for (int32_t h = 0; h < H; h++)
            for (int64_t i = 0; i < m; i++) rec[((b * Lq + i) * H + h) * R] = lse[(b * H + h) * m + i];
    return QATTN_OK;
}

/* o contiguous [n_rec][D] float into the records' outputs. */
static qattn_status rec_put_o(qattn_ctx *ctx, where w, float *rec, const float *o, int64_t n_rec, int D, int R, int hdr) {
#if defined(QATTN_HAVE_CUDA)
    if (w.dev) {
        int e = qattn_dist_dev_put_o(rec, o, n_rec, D, R, hdr, w.stream);
        return e ? cuda_failed(ctx, "put_o", e) : QATTN_OK;
    }
#endif
    for (int64_t i = 0; i < n_rec; i++) memcpy(rec + i * R + hdr, o + i * D, (size_t)D * sizeof(float));
    return QATTN_OK;
}

/* The exact LSE merge of n_parts partials of each record (part k at in + k * part_floats), in
 * part order: M = max LSE_k, w_k = exp(LSE_k - M), O = (sum w_k O_k) / sum w_k,
 * LSE = M + log(sum w_k). A part with LSE -inf is skipped (w = 0, its O is 0); a NaN LSE makes
 * the record NaN (the row's computation used a NaN). One part gives its own values exactly
 * (w = exp(0) = 1). out may be one of the parts: a record is read whole before it is written. */
static void host_merge(const float *in, int n_parts, int64_t part_floats, int64_t n_rec, int D, int R, int hdr, float *out) {
    float acc[256];
    for (int64_t i = 0; i < n_rec; i++) {
        float mx = -INFINITY;
        bool nan = false;
        for (int k = 0; k < n_parts; k++) {
            float l = in[k * part_floats + i * R];
            if (isnan(l)) nan = true;
            else if (l > mx) mx = l;
        }
        float *dst = out + i * R;
        if (nan || mx == -INFINITY) {
            float fill = nan ? NAN : 0.0f;
            dst[0] = nan ? NAN : -INFINITY;
            for (int c = 0; c < D; c++) dst[hdr + c] = fill;
            continue;
        }
        float sum = 0.0f;
        for (int c = 0; c < D; c++) acc[c] = 0.0f;
        for (int k = 0; k < n_parts; k++) {
            const float *src = in + k * part_floats + i * R;
            if (src[0] == -INFINITY) continue;
            float wk = expf(src[0] - mx);
            sum += wk;
            for (int c = 0; c < D; c++) acc[c] += wk * src[hdr + c];
        }
        float inv = 1.0f / sum;
        dst[0] = mx + logf(sum);
        for (int c = 0; c < D; c++) dst[hdr + c] = acc[c] * inv;
    }
}

static qattn_status rec_merge(qattn_ctx *ctx, where w, const float *in, int n_parts, int64_t part_floats, int64_t n_rec, int D, int R,
                              int hdr, float *out) {
#if defined(QATTN_HAVE_CUDA)
    if (w.dev) {
        int e = qattn_dist_dev_merge(in, n_parts, part_floats, n_rec, D, R, hdr, out, w.stream);
        return e ? cuda_failed(ctx, "merge", e) : QATTN_OK;
    }
#endif
    host_merge(in, n_parts, part_floats, n_rec, D, R, hdr, out);
    return QATTN_OK;
}

static qattn_status rec_unpack(qattn_ctx *ctx, where w, const float *rec, const qattn_dist_out *out, int R, int hdr) {
#if defined(QATTN_HAVE_CUDA)
    if (w.dev) {
        int e = qattn_dist_dev_unpack(rec, out, R, hdr, w.stream);
        if (!e) e = qattn_dist_dev_sync(w.stream);
        return e ? cuda_failed(ctx, "unpack", e) : QATTN_OK;
    }
#endif
    int64_t H = out->n_heads, D = out->head_dim, Lq = out->seqlen_q;
    for (int64_t b = 0; b < out->batch; b++)
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t h = 0; h < H; h++) {
                const float *r = rec + ((b * Lq + i) * H + h) * R;
                int64_t base = b * out->o_bs + i * out->o_ss + h * out->o_hs;
                for (int64_t c = 0; c < D; c++) qattn_store(out->o, out->o_dtype, base + c, r[hdr + c]);
                if (out->lse) out->lse[(b * H + h) * Lq + i] = r[0];
            }
    return QATTN_OK;
}

/* ---------------------------------------------------------------- collectives with accounting */

static void begin_comm(where w, double *t0) {
#if defined(QATTN_HAVE_CUDA)
    if (w.dev) qattn_dist_dev_sync(w.stream); /* queued compute is not communication */
#endif
    *t0 = now_seconds();
}

static qattn_status end_comm(qattn_dist *d, where w, double t0, int64_t bytes, qattn_status s) {
#if defined(QATTN_HAVE_CUDA)
    if (w.dev && s == QATTN_OK && qattn_dist_dev_sync(w.stream) != 0) s = QATTN_ERR_BACKEND;
#endif
    d->stats.comm_seconds += now_seconds() - t0;
    d->stats.collectives++;
    if (s == QATTN_OK) d->stats.bytes_sent += bytes;
    return s;
}

/* The descriptor each collective call exchanges first. Fields from DESC_OP to DESC_EXTRA must be
 * equal on every rank; DESC_OFF/DESC_LEN describe the rank's key shard. */
enum { DESC_STATUS, DESC_OP, DESC_B, DESC_LQ, DESC_H, DESC_D, DESC_TOTAL, DESC_EXTRA, DESC_OFF, DESC_LEN, DESC_N };
static const char *const desc_names[DESC_N] = {"status", "operation", "batch", "seqlen_q", "n_heads", "head_dim", "seqlen_k_total",
                                               "tail_rank", "key_offset", "seqlen_k"};
enum { OP_FORWARD = 1, OP_DECODE = 2 };

typedef struct shard {
    int64_t off, len;
    int rank;
} shard;

static int shard_cmp(const void *a, const void *b) {
    const shard *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off ? 1 : x->rank - y->rank;
}

/* Every rank's shards (non-empty ones) must tile [0, total) in some order. */
static qattn_status check_tiling(qattn_ctx *ctx, const qattn_dist *d, const int64_t *all) {
    shard *sh = malloc((size_t)d->size * sizeof *sh);
    if (!sh) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_dist: cannot allocate the shard table");
    int n = 0;
    for (int r = 0; r < d->size; r++)
        if (all[r * DESC_N + DESC_LEN] > 0) sh[n++] = (shard){all[r * DESC_N + DESC_OFF], all[r * DESC_N + DESC_LEN], r};
    qsort(sh, (size_t)n, sizeof *sh, shard_cmp);
    int64_t total = all[DESC_TOTAL], end = 0;
    qattn_status s = QATTN_OK;
    for (int i = 0; i < n && s == QATTN_OK; i++) {
        if (sh[i].off != end)
            s = qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                           "qattn_dist_forward: the key shards do not tile [0, %lld): rank %d's shard starts at %lld where %lld was expected "
                           "(a gap or an overlap)",
                           (long long)total, sh[i].rank, (long long)sh[i].off, (long long)end);
        end = sh[i].off + sh[i].len;
    }
    if (s == QATTN_OK && end != total)
        s = qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "qattn_dist_forward: the key shards cover [0, %lld), not [0, seqlen_k_total = %lld)",
                       (long long)end, (long long)total);
    free(sh);
    return s;
}

/* Exchange desc (desc[DESC_STATUS] = local) and decide together: every rank returns the same
 * failure when any rank failed or the shapes differ. */
static qattn_status agree(qattn_ctx *ctx, qattn_dist *d, where w, int64_t *desc, qattn_status local, bool tiling) {
    desc[DESC_STATUS] = local;
    int64_t *all = malloc((size_t)d->size * DESC_N * sizeof(int64_t));
    if (!all) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "qattn_dist: cannot allocate the descriptor table");
    double t0;
    begin_comm(w, &t0);
    qattn_status s = d->ops->allgather_i64(ctx, d, desc, all, DESC_N);
    double c0 = d->stats.comm_seconds;
    s = end_comm(d, w, t0, (int64_t)(d->size - 1) * DESC_N * 8, s);
    d->stats.sync_seconds += d->stats.comm_seconds - c0;
    if (s == QATTN_OK && local != QATTN_OK) s = local; /* this rank's own message stays */
    for (int r = 0; s == QATTN_OK && r < d->size; r++)
        if (all[r * DESC_N + DESC_STATUS] != QATTN_OK)
            s = qattn_fail(ctx, (qattn_status)all[r * DESC_N + DESC_STATUS],
                           "qattn_dist: rank %d of %d failed with %s (that rank's last-error message says why)", r, d->size,
                           qattn_status_str((qattn_status)all[r * DESC_N + DESC_STATUS]));
    for (int r = 0; s == QATTN_OK && r < d->size; r++)
        for (int f = DESC_OP; f <= DESC_EXTRA; f++)
            if (all[r * DESC_N + f] != desc[f]) {
                s = qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                               "qattn_dist: rank %d passed %s %lld where rank %d passed %lld: every rank must pass the same shapes", r,
                               desc_names[f], (long long)all[r * DESC_N + f], d->rank, (long long)desc[f]);
                break;
            }
    if (s == QATTN_OK && tiling) s = check_tiling(ctx, d, all);
    free(all);
    return s;
}

/* ---------------------------------------------------------------- the merge of a collective call */

typedef struct job {
    where w;
    int R, hdr, D;
    int32_t H;
    int64_t rows;    /* query rows (b, i) */
    int64_t chunk;   /* rows per rank chunk: ceil(rows / size) */
    float *send;     /* [size * chunk * H][R]: this rank's partial, then the merged result */
    float *recv;     /* [size][chunk * H][R] */
    float *lse_tmp;  /* [B, H, Lq] partial LSE from the local call */
    float *o_tmp;    /* decode: [n_seqs, Lq, H, D] partial output */
    void *q_tmp;     /* decode: the queries of the sequences this rank's shard holds */
    int32_t *ids;    /* decode: those sequences' ids */
} job;

static void job_free(qattn_ctx *ctx, job *j) {
    buf_free(ctx, j->w, j->send);
    buf_free(ctx, j->w, j->recv);
    buf_free(ctx, j->w, j->lse_tmp);
    buf_free(ctx, j->w, j->o_tmp);
    buf_free(ctx, j->w, j->q_tmp);
    free(j->ids);
    memset(j, 0, sizeof *j);
}

/* Allocate the record buffers of a job with rows query rows of H heads of size D on a
 * communicator of n ranks; padding records are set empty. */
static void job_layout(job *j, int32_t H, int D) {
    j->D = D;
    j->H = H;
    j->hdr = j->w.dev ? 8 : 1;
    j->R = D + j->hdr;
}

static qattn_status job_alloc(qattn_ctx *ctx, job *j, int n, int64_t rows, int32_t H, int D) {
    job_layout(j, H, D);
    j->rows = rows;
    j->chunk = rows > 0 ? (rows + n - 1) / n : 0;
    double floats = (double)n * (double)j->chunk * (double)H * (double)j->R;
    if (floats * 4.0 > 0x1p62) return qattn_fail(ctx, QATTN_ERR_OVERFLOW, "qattn_dist: the partial buffers (%g floats) overflow", floats);
    size_t bytes = (size_t)floats * sizeof(float);
    qattn_status s = buf_alloc(ctx, j->w, bytes, (void **)&j->send);
    if (s == QATTN_OK) s = buf_alloc(ctx, j->w, bytes, (void **)&j->recv);
    int64_t pad_rec = ((int64_t)n * j->chunk - rows) * H;
    if (s == QATTN_OK && pad_rec > 0) s = rec_set_empty(ctx, j->w, j->send + rows * H * j->R, pad_rec, j->R);
    return s;
}

/* All-to-all by row chunks, merge of chunk `rank` in rank order, all-gather, unpack. */
static qattn_status exchange(qattn_ctx *ctx, qattn_dist *d, job *j, const qattn_dist_out *out) {
    if (j->rows == 0) return QATTN_OK;
    int64_t count = j->chunk * j->H * j->R;
    int64_t bytes = (int64_t)(d->size - 1) * count * 4;
    double t0;
    begin_comm(j->w, &t0);
    qattn_status s = d->ops->alltoall_f32(ctx, d, j->send, j->recv, count, j->w.stream);
    s = end_comm(d, j->w, t0, bytes, s);
    if (s != QATTN_OK) return s;
    double c0 = now_seconds();
    s = rec_merge(ctx, j->w, j->recv, d->size, count, j->chunk * j->H, j->D, j->R, j->hdr, j->send + d->rank * count);
    d->stats.compute_seconds += now_seconds() - c0;
    if (s != QATTN_OK) return s;
    begin_comm(j->w, &t0);
    s = d->ops->allgather_f32(ctx, d, j->send, count, j->w.stream);
    s = end_comm(d, j->w, t0, bytes, s);
    if (s != QATTN_OK) return s;
    c0 = now_seconds();
    s = rec_unpack(ctx, j->w, j->send, out, j->R, j->hdr);
    d->stats.compute_seconds += now_seconds() - c0;
    return s;
}

static qattn_status check_transport(qattn_ctx *ctx, const qattn_dist *d, const char *fn) {
    if (d->transport == QATTN_DIST_MPI && ctx->backend != QATTN_BACKEND_CPU)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: an MPI communicator needs a CPU context (host memory)", fn);
    if (d->transport == QATTN_DIST_NCCL && ctx->backend != QATTN_BACKEND_CUDA)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: an NCCL communicator needs a CUDA context (device memory)", fn);
    return QATTN_OK;
}

/* ---------------------------------------------------------------- (a) exact distributed attention */

static qattn_status forward_local(qattn_ctx *ctx, qattn_dist *d, const qattn_params *p, int64_t key_offset, int64_t total, job *j) {
    const char *fn = "qattn_dist_forward";
    if (!p) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: params is NULL", fn);
    qattn_status s = check_transport(ctx, d, fn);
    if (s != QATTN_OK) return s;
    if (p->cu_seqlens_q || p->cu_seqlens_k) return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: cu_seqlens (varlen) are not supported", fn);
    /* ALiBi depends on absolute positions, which a rank's block does not carry; softcap is not in the
     * distributed kernels either */
    if (p->alibi_slopes || p->softcap != 0.0f)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: %s is not supported by the distributed layer", fn,
                          p->alibi_slopes ? "alibi_slopes" : "softcap");
    if (p->block_mask) return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: block_mask (block-sparse attention) is not supported by qattn_dist", fn);
    if (key_offset < 0 || total < 0 || total > INT32_MAX || p->seqlen_k < 0 || key_offset > total - p->seqlen_k)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT,
                          "%s: key_offset %lld with seqlen_k %lld does not fit in seqlen_k_total %lld (0 <= total < 2^31)", fn,
                          (long long)key_offset, (long long)p->seqlen_k, (long long)total);
    s = qattn_supports(ctx, p); /* the shard's problem with the global mask: valid in the same cases */
    if (s != QATTN_OK) return s;
    qattn_params lp = *p;
    lp.causal = 0;
    /* Global key j = off + j' is visible to query i when i + c - wl <= j' <= i + c + wr with
     * c = n - Lq + shift, shift = total - off - n the keys after this shard (qattn.h's
     * bottom-right alignment to the global lengths). A finite left window hides the shard from
     * the queries from m = Lq - shift + wl on; called on the first m queries (aligned to their
     * own end), the local diagonal sits a = m - Lq + shift = min(shift, wl) after the local
     * one, so the local windows are wl - a >= 0 and wr + a >= 0. The later rows keep empty
     * records. (Without a left window m = Lq and a = shift: the whole query set.) */
    int64_t Lq = p->seqlen_q, n = p->seqlen_k, shift = total - key_offset - n;
    int64_t wl = p->window_left, wr = qattn_window_right(p);
    int64_t m = wl < 0 ? Lq : Lq - shift + wl;
    if (m > Lq) m = Lq;
    if (m < 0) m = 0;
    int64_t a = m - Lq + shift;
    int64_t wl_local = wl < 0 ? -1 : wl - a, wr_local = wr < 0 ? -1 : wr + a;
    if (wr_local > INT32_MAX)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: window_right %lld plus %lld later keys exceeds 2^31", fn, (long long)wr,
                          (long long)shift);
    j->w = (where){ctx->backend == QATTN_BACKEND_CUDA, p->stream};
    int64_t rows = p->batch * Lq;
    s = job_alloc(ctx, j, d->size, rows, p->n_heads, p->head_dim);
    if (s == QATTN_OK) s = buf_alloc(ctx, j->w, (size_t)(p->batch * p->n_heads * m) * sizeof(float), (void **)&j->lse_tmp);
    if (s == QATTN_OK && m < Lq) s = rec_set_empty(ctx, j->w, j->send, rows * p->n_heads, j->R);
    if (s != QATTN_OK || rows == 0 || m == 0) return s;
    lp.seqlen_q = m;
    lp.window_left = (int32_t)wl_local;
    lp.window_right = (int32_t)wr_local;
    lp.o = j->send + j->hdr;
    lp.o_dtype = QATTN_DTYPE_F32;
    lp.o_head_stride = j->R;
    lp.o_seq_stride = (int64_t)p->n_heads * j->R;
    lp.o_batch_stride = Lq * lp.o_seq_stride;
    lp.lse = j->lse_tmp;
    s = qattn_forward(ctx, &lp);
    if (s == QATTN_OK) s = rec_put_lse(ctx, j->w, j->send, j->lse_tmp, p->batch, p->n_heads, Lq, m, j->R);
    return s;
}

qattn_status qattn_dist_forward(qattn_ctx *ctx, qattn_dist *d, const qattn_params *p, int64_t key_offset, int64_t total) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!d) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_dist_forward: dist is NULL");
    job j;
    memset(&j, 0, sizeof j);
    double t0 = now_seconds();
    qattn_status local = forward_local(ctx, d, p, key_offset, total, &j);
    d->stats.compute_seconds += now_seconds() - t0;
    int64_t desc[DESC_N] = {0, OP_FORWARD};
    if (p) {
        desc[DESC_B] = p->batch, desc[DESC_LQ] = p->seqlen_q, desc[DESC_H] = p->n_heads, desc[DESC_D] = p->head_dim;
        desc[DESC_TOTAL] = total, desc[DESC_OFF] = key_offset, desc[DESC_LEN] = p->seqlen_k;
    }
    qattn_status s = agree(ctx, d, j.w, desc, local, true);
    if (s == QATTN_OK) {
        qattn_dist_out out = {p->o,       p->o_dtype, p->o_batch_stride, p->o_seq_stride, p->o_head_stride,
                              p->lse,     p->batch,   p->seqlen_q,       p->n_heads,      p->head_dim};
        s = exchange(ctx, d, &j, &out);
    }
    job_free(ctx, &j);
    return s;
}

/* ---------------------------------------------------------------- (b) Star Attention phase 1 */

static qattn_status star_check(qattn_ctx *ctx, const qattn_params *p, const void *ak, const void *av, int64_t anchor_len) {
    const char *fn = "qattn_star_encode";
    if (!p) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: params is NULL", fn);
    if (p->seqlen_q != p->seqlen_k)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: a context block's queries are its keys: seqlen_q %lld != seqlen_k %lld", fn,
                          (long long)p->seqlen_q, (long long)p->seqlen_k);
    if (p->cu_seqlens_q || p->cu_seqlens_k) return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: cu_seqlens (varlen) are not supported", fn);
    /* ALiBi depends on absolute positions, which a rank's block does not carry; softcap is not in the
     * distributed kernels either */
    if (p->alibi_slopes || p->softcap != 0.0f)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: %s is not supported by the distributed layer", fn,
                          p->alibi_slopes ? "alibi_slopes" : "softcap");
    if (p->block_mask) return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: block_mask (block-sparse attention) is not supported by qattn_dist", fn);
    if (p->window_left != -1 || (!p->causal && p->window_right != -1))
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: windows (left %d, right %d) are not supported; use causal or no mask", fn,
                          p->window_left, p->window_right);
    if (anchor_len < 0 || anchor_len > INT32_MAX)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: anchor_len is %lld; it must be 0..2^31-1", fn, (long long)anchor_len);
    if (anchor_len > 0 && (!ak || !av)) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: anchor_%s is NULL", fn, !ak ? "k" : "v");
    return QATTN_OK;
}

qattn_status qattn_star_encode(qattn_ctx *ctx, const qattn_params *p, const void *ak, const void *av, int64_t anchor_len) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = star_check(ctx, p, ak, av, anchor_len);
    if (s != QATTN_OK) return s;
    if (anchor_len == 0) return qattn_forward(ctx, p); /* the first block: plain block attention */
    qattn_params pa = *p, pb = *p; /* the block's queries over the anchor (all visible) and over itself */
    pa.k = ak, pa.v = av, pa.seqlen_k = anchor_len, pa.causal = 0, pa.window_right = -1;
    s = qattn_supports(ctx, &pa);
    if (s == QATTN_OK) s = qattn_supports(ctx, &pb);
    if (s != QATTN_OK) return s;
    job j;
    memset(&j, 0, sizeof j);
    j.w = (where){ctx->backend == QATTN_BACKEND_CUDA, p->stream};
    job_layout(&j, p->n_heads, p->head_dim);
    int64_t rows = p->batch * p->seqlen_q, n_rec = rows * p->n_heads, part = n_rec * j.R;
    s = buf_alloc(ctx, j.w, 2 * (size_t)part * sizeof(float), (void **)&j.recv); /* [anchor part][block part] */
    if (s == QATTN_OK) s = buf_alloc(ctx, j.w, (size_t)n_rec * sizeof(float), (void **)&j.lse_tmp);
    if (s == QATTN_OK && rows > 0) {
        float *parts = j.recv;
        qattn_params *ps[2] = {&pa, &pb};
        for (int k = 0; k < 2 && s == QATTN_OK; k++) {
            ps[k]->o = parts + k * part + j.hdr;
            ps[k]->o_dtype = QATTN_DTYPE_F32;
            ps[k]->o_head_stride = j.R;
            ps[k]->o_seq_stride = (int64_t)p->n_heads * j.R;
            ps[k]->o_batch_stride = p->seqlen_q * ps[k]->o_seq_stride;
            ps[k]->lse = j.lse_tmp;
            s = qattn_forward(ctx, ps[k]);
            if (s == QATTN_OK) s = rec_put_lse(ctx, j.w, parts + k * part, j.lse_tmp, p->batch, p->n_heads, p->seqlen_q, p->seqlen_q, j.R);
        }
        if (s == QATTN_OK) s = rec_merge(ctx, j.w, parts, 2, part, n_rec, p->head_dim, j.R, j.hdr, parts);
        qattn_dist_out out = {p->o, p->o_dtype, p->o_batch_stride, p->o_seq_stride, p->o_head_stride, p->lse, p->batch, p->seqlen_q, p->n_heads, p->head_dim};
        if (s == QATTN_OK) s = rec_unpack(ctx, j.w, parts, &out, j.R, j.hdr);
    }
    job_free(ctx, &j);
    return s;
}

/* ---------------------------------------------------------------- (c) distributed decode */

static qattn_status decode_local(qattn_ctx *ctx, qattn_dist *d, const qattn_kv_cache *c, const qattn_kv_device_cache *dev,
                                 const qattn_decode_params *dp, int32_t tail, job *j) {
    const char *fn = "qattn_dist_kv_decode";
    if (!c || !dp) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: %s is NULL", fn, !c ? "cache" : "params");
    qattn_status s = check_transport(ctx, d, fn);
    if (s != QATTN_OK) return s;
    if ((d->transport == QATTN_DIST_NCCL) != (dev != NULL))
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: dev must be %s with an %s communicator", fn, dev ? "NULL" : "given",
                          d->transport == QATTN_DIST_NCCL ? "NCCL" : "MPI");
    if (tail < 0 || tail >= d->size)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: tail_rank is %d; it must be 0..%d", fn, tail, d->size - 1);
    if (dp->window_left != -1)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: window_left is %d; only -1 (unbounded) is supported across ranks", fn, dp->window_left);
    if (dp->n_seqs < 0 || dp->seqlen_q < 1 || dp->n_heads < 1 || dp->n_heads % c->n_kv_heads != 0)
        return qattn_kv_decode(ctx, c, dp); /* the single-process checks give the message */
    if (dp->q_dtype != QATTN_DTYPE_F32 && dp->q_dtype != QATTN_DTYPE_F16 && dp->q_dtype != QATTN_DTYPE_BF16)
        return qattn_kv_decode(ctx, c, dp); /* its message names the bad dtype */
    if (dp->n_seqs > 0 && (!dp->q || !dp->o || !dp->seq_ids))
        return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "%s: %s is NULL", fn, !dp->q ? "q" : !dp->o ? "o" : "seq_ids");
    bool is_tail = d->rank == tail;
    int32_t n_listed = 0;
    j->ids = malloc((size_t)(dp->n_seqs > 0 ? dp->n_seqs : 1) * sizeof(int32_t));
    if (!j->ids) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "%s: cannot allocate the sequence list", fn);
    for (int32_t b = 0; b < dp->n_seqs; b++) {
        int32_t id = dp->seq_ids[b];
        if (id < 0 || id >= c->max_seqs)
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: seq_ids[%d] is %d, out of range 0..%d", fn, b, id, c->max_seqs - 1);
        int64_t len = c->seq_len[id];
        if (!is_tail && len > 0 && len < dp->seqlen_q)
            return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s: rank %d holds %lld tokens of sequence %d, fewer than seqlen_q %d but not 0", fn,
                              d->rank, (long long)len, id, dp->seqlen_q);
        if (len == 0 && (is_tail || dev))
            return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "%s: rank %d holds no token of sequence %d (%s)", fn, d->rank, id,
                              is_tail ? "the tail rank holds the new tokens" : "the NCCL path needs every shard non-empty");
        if (len > 0) j->ids[n_listed++] = b;
    }
    j->w = (where){dev != NULL, dev ? dev->stream : NULL};
    int32_t H = dp->n_heads, D = c->head_dim, Lq = dp->seqlen_q;
    int64_t rows = (int64_t)dp->n_seqs * Lq, n_rec = rows * H;
    s = job_alloc(ctx, j, d->size, rows, H, D);
    if (s == QATTN_OK) s = buf_alloc(ctx, j->w, (size_t)n_rec * sizeof(float), (void **)&j->lse_tmp);
    if (s == QATTN_OK) s = buf_alloc(ctx, j->w, (size_t)n_rec * D * sizeof(float), (void **)&j->o_tmp);
    if (s != QATTN_OK || rows == 0) return s;
    qattn_decode_params lp = *dp;
    lp.o = j->o_tmp, lp.o_dtype = QATTN_DTYPE_F32, lp.lse = j->lse_tmp;
    lp.causal = is_tail ? dp->causal : 0; /* a non-tail shard precedes every query */
    if (n_listed == dp->n_seqs) {
        s = dev ? qattn_kv_decode_cuda(ctx, c, dev, &lp) : qattn_kv_decode(ctx, c, &lp);
        if (s == QATTN_OK) s = rec_put_o(ctx, j->w, j->send, j->o_tmp, n_rec, D, j->R, j->hdr);
        if (s == QATTN_OK) s = rec_put_lse(ctx, j->w, j->send, j->lse_tmp, dp->n_seqs, H, Lq, Lq, j->R);
        return s;
    }
    /* Host only: decode the sequences this shard holds, the others stay empty records. */
    size_t q_row = (size_t)Lq * H * D * (dp->q_dtype == QATTN_DTYPE_F32 ? 4 : 2);
    s = rec_set_empty(ctx, j->w, j->send, n_rec, j->R);
    if (s == QATTN_OK) s = buf_alloc(ctx, j->w, q_row * (size_t)(n_listed > 0 ? n_listed : 1), &j->q_tmp);
    if (s != QATTN_OK || n_listed == 0) return s;
    int32_t *sub_ids = malloc((size_t)n_listed * sizeof(int32_t));
    if (!sub_ids) return qattn_fail(ctx, QATTN_ERR_OUT_OF_MEMORY, "%s: cannot allocate the sequence list", fn);
    for (int32_t k = 0; k < n_listed; k++) {
        sub_ids[k] = dp->seq_ids[j->ids[k]];
        memcpy((char *)j->q_tmp + k * q_row, (const char *)dp->q + j->ids[k] * q_row, q_row);
    }
    lp.q = j->q_tmp, lp.seq_ids = sub_ids, lp.n_seqs = n_listed;
    s = qattn_kv_decode(ctx, c, &lp);
    free(sub_ids);
    if (s != QATTN_OK) return s;
    int64_t per_seq = (int64_t)Lq * H;
    for (int32_t k = 0; k < n_listed; k++) {
        int64_t b = j->ids[k];
        float *rec = j->send + b * per_seq * j->R;
        for (int32_t h = 0; h < H; h++)
            for (int32_t i = 0; i < Lq; i++) {
                float *r = rec + ((int64_t)i * H + h) * j->R;
                r[0] = j->lse_tmp[((int64_t)k * H + h) * Lq + i];
                memcpy(r + j->hdr, j->o_tmp + (((int64_t)k * Lq + i) * H + h) * D, (size_t)D * sizeof(float));
            }
    }
    return QATTN_OK;
}

qattn_status qattn_dist_kv_decode(qattn_ctx *ctx, qattn_dist *d, const qattn_kv_cache *c, const qattn_kv_device_cache *dev,
                                  const qattn_decode_params *dp, int32_t tail) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    if (!d) return qattn_fail(ctx, QATTN_ERR_NULL_POINTER, "qattn_dist_kv_decode: dist is NULL");
    job j;
    memset(&j, 0, sizeof j);
    double t0 = now_seconds();
    qattn_status local = decode_local(ctx, d, c, dev, dp, tail, &j);
    d->stats.compute_seconds += now_seconds() - t0;
    int64_t desc[DESC_N] = {0, OP_DECODE};
    if (dp && c) {
        desc[DESC_B] = dp->n_seqs, desc[DESC_LQ] = dp->seqlen_q, desc[DESC_H] = dp->n_heads, desc[DESC_D] = c->head_dim;
        desc[DESC_EXTRA] = tail;
    }
    qattn_status s = agree(ctx, d, j.w, desc, local, false);
    if (s == QATTN_OK) {
        int64_t H = dp->n_heads, D = c->head_dim, Lq = dp->seqlen_q;
        qattn_dist_out out = {dp->o, dp->o_dtype, Lq * H * D, H * D, D, dp->lse, dp->n_seqs, Lq, (int32_t)H, (int32_t)D};
        s = exchange(ctx, d, &j, &out);
    }
    job_free(ctx, &j);
    return s;
}
