/* CPU attention in INT8 (precision INT8 and qattn_forward_quantized) and INT4; FP8 precisions
 * are handed to their own driver, src/cpu/forward_fp8.c (emulated FP8).
 *
 * INT8: the FP inputs are quantized once into the workspace (token-level PTQ, the scheme's
 * granularities and smoothing, src/quant/quant.c), then the codes are cut into work units by the
 * plan src/cpu/forward.c uses too (src/cpu/units.c): work unit = (sequence, kv head, block of
 * query positions, KV split), whose rows are all query heads of the group; per K/V tile of 64 keys:
 *     S  = Qc Kc^T                 int8 x int8 -> int32        (kernel qk)
 *     sf = S * sq[row] * sk[key]   scale * log2(e) folded in sq (kernel scores)
 *     online softmax in FP32; P -> 8-bit codes                  (kernel softmax)
 *     PV = Pc Vc                   8-bit x int8 -> int32       (kernel pv)
 *     acc = acc * alpha + (fac[row] * sv[channel]) * PV        (FP32, here)
 * P modes (src/quant/lowp.h): DEFAULT (P_U8_VSCALED) has per-token V scales sv[key]: it forms
 * w = exp2(s - m_block) * sv[key], quantizes w to u8 codes x255 against the block's own row max
 * of w (so the largest gets 255) and folds beta = exp2(m_block - m_running) * max(w) / 255 into
 * fac; the row sum adds beta * sum(exp2(s - m_block)). P_U8_BLOCKMAX does the same without V
 * scales (sum from the codes actually multiplied); INT-FA quantizes against the running max with
 * x127 and sums the unquantized P; SAGE keeps P and V in FP32.
 * DEFAULT also smooths and rotates Q and K per channel before rounding (src/quant/quant.c,
 * docs/FORMAT.md section 7); the driver sees only their codes, scales and K's mean in the codes'
 * domain, so nothing here depends on it.
 * K smoothing shifts every score of a row by q . mean_k: softmax is unchanged and the LSE gets
 * scale * q . mean_k back; V smoothing adds mean_v to each normalised output row.
 * The split of the work depends on the shape only, and every float step runs in a fixed order:
 * results are bitwise identical for any thread count, and between the ref, avx2 and avxvnni kernels
 * (the table's pack8 picks 16-bit packs + qk16/pv_acc or 8-bit packs + qk/pv_acc8, pv_acc8u after
 * the default scheme's u8 P codes: same exact sums). Every slot of every table is filled (the
 * reference kernel where an ISA has no vector one), so each is called without a NULL test. */
#include "quant/lowp.h"

#include "cpu/block_mask.h"
#include "cpu/threads.h"
#include "cpu/units.h"

#define BLOCK_ROWS 64 /* query rows (positions x group heads) per unit */

/* A packed K/V slot holds one tile of the plan's QATTN_TILE_KEYS keys, which the INT8 kernels take
 * whole (npad <= QATTN_I8_TILE); KV splits start on a slot. */
_Static_assert(QATTN_TILE_KEYS == QATTN_I8_TILE, "a plan tile is one INT8 kernel tile");

static const float LOG2E = 1.4426950408889634f;
static const float LN2 = 0.6931471805599453f;

/* ---------------------------------------------------------------- plan */

typedef struct lplan {
    const qattn_params *p;
    const qattn_int8_inputs *qi;
    const qattn_int8_kernels *kern;
    int32_t p_mode;
    const void *v_fp; /* FP V source (P_FP32 mode, dynamic path), else NULL */
    const qattn_qk_refine *rf; /* sharp units' residual codes, or NULL */
    bool refine;               /* slots hold a K residual pack too */
    qattn_units units; /* the work units, their KV split and hand-out order (src/cpu/units.h) */
    float scale, qscale;
    size_t worker_bytes;
    unsigned char *scratch;
    float *partials;
    /* K/V packed once per call: slot (tile_base(b) + t) * n_kv_heads + g holds keys
     * [64 t, 64 t + 64) of sequence b, kv head g: K pack, V pack (int16 or float), sk, svk, and
     * (refine) the K residual pack, filled for sharp (b, g) only. */
    int64_t n_slots, max_tiles;
    size_t slot_bytes, pack_bytes;
    size_t k_bytes, v_bytes; /* a slot's K pack (and K residual pack) and V pack, 64-byte multiples */
    unsigned char *packs;
} lplan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Softcap and ALiBi are implemented by the FP paths only so far (docs/FORMAT.md says what the
 * INT8 schemes need for them: softcap is not shift-invariant, so K smoothing must be undone first). */
static qattn_status refuse_score_mods(qattn_ctx *ctx, const qattn_params *p) {
    if (!p->alibi_slopes && p->softcap == 0.0f) return QATTN_OK;
    return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "%s is not implemented for precision %d (INT8/INT4/FP8) on the CPU backend yet; use FP32, FP16 or BF16",
                      p->alibi_slopes ? "alibi_slopes" : "softcap", p->precision);
}
static size_t al64(size_t x) { return (x + 63) / 64 * 64; }

/* Per-worker scratch, each piece 64-byte aligned. */
typedef struct wmem {
    int16_t *qc;     /* [rows][D] */
    float *sq;       /* [rows] q scale * scale * log2e */
    float *corr;     /* [rows] LSE correction (natural log) from K smoothing */
    int16_t *kp;     /* K pack (16-bit, qk16 layout) */
    float *sk;       /* [TILE] */
    void *vp;        /* V pack: int16 [TILE][D] or float [TILE][D] */
    int32_t *s;      /* [rows][TILE] */
    float *sf;       /* [rows][TILE] */
    void *pc;        /* int16 codes or float P, [rows][TILE] */
    void *pv;        /* int32 or float [rows][D] */
    float *state;    /* max[rows], sum[rows], acc[rows][D] */
    int32_t *lo, *hi;
    float *alpha, *fac;
    float *sv, *mv;  /* [D] V channel scales and V mean of the unit's (b, g) */
    float *svk;      /* [TILE] V token scales (P_U8_VSCALED) */
    int16_t *qr;     /* [rows][D] Q residual codes (sharp units), qc's layout */
    int32_t *s2;     /* [rows][TILE] a residual product (sharp units) */
    int16_t *kr;     /* the tile's K residual pack (sharp units; points into the slot) */
    int64_t *rx, *ry; /* [rows] each row's visible keys [rx, ry) of the sequence (qattn_key_range) */
} wmem;

static size_t wmem_layout(const lplan *pl, unsigned char *base, wmem *w) {
    size_t R = (size_t)pl->units.rows, D = (size_t)pl->p->head_dim, T = QATTN_TILE_KEYS, off = 0;
#define TAKE(field, type, bytes)                                  \
    do {                                                          \
        if (w) w->field = (type)(void *)(base + off);             \
        off += al64(bytes);                                       \
    } while (0)
    TAKE(qc, int16_t *, R * D * 2);
    TAKE(sq, float *, R * 4);
    TAKE(corr, float *, R * 4);
    TAKE(kp, int16_t *, T * D * 2);
    TAKE(sk, float *, T * 4);
    TAKE(vp, void *, T * D * 4);
    TAKE(s, int32_t *, R * T * 4);
    TAKE(sf, float *, R * T * 4);
    TAKE(pc, void *, R * T * 4);
    TAKE(pv, void *, R * D * 4);
    TAKE(state, float *, R * (D + 2) * 4);
    TAKE(lo, int32_t *, R * 4);
    TAKE(hi, int32_t *, R * 4);
    TAKE(alpha, float *, R * 4);
    TAKE(fac, float *, R * 4);
    TAKE(sv, float *, D * 4);
    TAKE(mv, float *, D * 4);
    TAKE(svk, float *, T * 4);
    TAKE(qr, int16_t *, R * D * 2);
    TAKE(s2, int32_t *, R * T * 4);
    TAKE(rx, int64_t *, R * 8);
    TAKE(ry, int64_t *, R * 8);
#undef TAKE
    return off;
}

static void make_plan(lplan *pl, const qattn_ctx *ctx, const qattn_params *p, bool refine, int32_t p_mode) {
    memset(pl, 0, sizeof *pl);
    pl->p = p;
    pl->refine = refine;
    pl->kern = ctx->kernels->int8;
    qattn_units_plan(&pl->units, p, BLOCK_ROWS, 0); /* one kv head per unit: the packed slots are per head */
    pl->scale = qattn_effective_scale(p);
    pl->qscale = pl->scale * LOG2E;
    pl->worker_bytes = wmem_layout(pl, NULL, NULL);
    pl->max_tiles = ceil_div(p->seqlen_k, QATTN_TILE_KEYS);
    pl->n_slots = (p->cu_seqlens_k ? p->cu_seqlens_k[p->batch] / QATTN_TILE_KEYS + p->batch : p->batch * pl->max_tiles) * p->n_kv_heads;
    /* Slots hold the table's own formats only (8-bit K/V packs with pack8, else 16-bit; float V for
     * P_FP32), so that a kv head's slots, consecutive (slot_of), stay a compact run: with room for
     * every format (64 KiB a slot at D 128) and the heads interleaved, one head's tiles were 512 KiB
     * apart, all on the same L2 sets, and a unit's sweep evicted its own K/V packs. */
    size_t T = QATTN_TILE_KEYS, D = (size_t)p->head_dim, code = pl->kern->pack8 ? 1 : 2;
    pl->k_bytes = al64(T * D * code);
    pl->v_bytes = p_mode == QATTN_P_FP32 ? al64(T * D * 4) : al64(T * D * code);
    pl->slot_bytes = pl->k_bytes + pl->v_bytes + 2 * al64(T * 4) + (refine ? pl->k_bytes : 0);
    pl->pack_bytes = (size_t)pl->n_slots * pl->slot_bytes;
}

/* First slot of sequence b: sum of ceil(len / 64) over earlier sequences is at most this. */
static int64_t tile_base(const lplan *pl, int64_t b) {
    const qattn_params *p = pl->p;
    return p->cu_seqlens_k ? p->cu_seqlens_k[b] / QATTN_TILE_KEYS + b : b * pl->max_tiles;
}

typedef struct kvslot {
    int16_t *kp;
    void *vp;
    float *sk, *svk;
    int16_t *kr; /* K residual pack (pl->refine), else NULL */
} kvslot;

/* Slot (kv head g, tile tile of sequence b): head-major, so a head's tiles are consecutive. */
static kvslot slot_of(const lplan *pl, int64_t b, int g, int64_t tile) {
    int64_t tiles = pl->n_slots / pl->p->n_kv_heads; /* slots per head */
    unsigned char *base = pl->packs + (size_t)(g * tiles + tile_base(pl, b) + tile) * pl->slot_bytes;
    size_t T = QATTN_TILE_KEYS;
    kvslot k;
    k.kp = (int16_t *)(void *)base;
    k.vp = base + pl->k_bytes;
    k.sk = (float *)(void *)(base + pl->k_bytes + pl->v_bytes);
    k.svk = k.sk + al64(T * 4) / 4;
    k.kr = pl->refine ? (int16_t *)(void *)(base + pl->k_bytes + pl->v_bytes + 2 * al64(T * 4)) : NULL;
    return k;
}

/* Workspace: per-worker scratch, the packed K/V slots, the units' split partials and hand-out order
 * (qattn_units_workspace); each piece starts 64-byte aligned. */
static size_t plan_bytes(const lplan *pl, int nw) {
    return (size_t)nw * pl->worker_bytes + pl->pack_bytes + qattn_units_workspace_bytes(&pl->units, pl->p);
}

size_t qattn_lowp_run_bytes(const qattn_ctx *ctx, const qattn_params *p, bool refine, int32_t p_mode) {
    lplan pl;
    make_plan(&pl, ctx, p, refine, p_mode);
    return pl.units.n_units > 0 ? plan_bytes(&pl, qattn_workers_for(ctx->n_threads, pl.units.n_units)) : 0;
}

/* ---------------------------------------------------------------- unit geometry */

/* Offsets of sequence b in an int8 tensor (its own strides) and token index base. */
static int64_t i8_off(const qattn_params *p, const qattn_int8_tensor *t, const int32_t *cu, int64_t b) {
    return cu ? (int64_t)cu[b] * t->seq_stride : b * t->batch_stride;
}
static int64_t tok_base(const int32_t *cu, int64_t b, int64_t max_len) { return cu ? cu[b] : b * max_len; }

/* Q codes, row scales and LSE corrections of a unit's rows; qc may be NULL (merge phase). */
/* Row r of a unit (position i0 + r / group, head g * group + r % group): its Q codes and head. */
static const int8_t *q_row(const lplan *pl, int64_t off, int64_t i0, int g, int r, int *head) {
    const qattn_int8_tensor *tq = &pl->qi->q;
    *head = g * pl->units.group + r % pl->units.group;
    return tq->data + off + (i0 + r / pl->units.group) * tq->seq_stride + (int64_t)*head * tq->head_stride;
}

#define LSE_ROWS 64 /* rows per lse_dots call */

static void pack_q(const lplan *pl, int64_t b, int64_t i0, int n_pos, int g, int16_t *qc, float *sq, float *corr) {
    const qattn_params *p = pl->p;
    const qattn_int8_tensor *tq = &pl->qi->q, *tk = &pl->qi->k;
    int D = p->head_dim, m = n_pos * pl->units.group;
    int64_t off = i8_off(p, tq, p->cu_seqlens_q, b), tb = tok_base(p->cu_seqlens_q, b, p->seqlen_q);
    const float *mk = tk->mean ? tk->mean + ((int64_t)b * p->n_kv_heads + g) * D : NULL;
    for (int r = 0; r < m; r++) {
        int h;
        int64_t i = i0 + r / pl->units.group;
        const int8_t *src = q_row(pl, off, i0, g, r, &h);
        float s = tq->scale[qattn_scale_index(tq->granularity, tq->block_size, b, tb + i, i, h, p->n_heads, p->seqlen_q, D, 0)];
        sq[r] = s * pl->qscale;
        corr[r] = s; /* times q . mean_k * scale below */
        if (qc && !pl->kern->pack8)
            for (int c = 0; c < D; c++) qc[r * D + c] = qattn_i8_clamp_code(src[c]);
    }
    if (qc && pl->kern->pack8 && m > 0) { /* qk's 8-bit rows: the table's packer */
        int h;
        pl->kern->pack8_q(q_row(pl, off, i0, g, 0, &h), tq->seq_stride, tq->head_stride, pl->units.group, m, D, (int8_t *)qc);
    }
    /* LSE corrections: dot = sum_c code * mean_k[c], c ascending (the table's lse_dots, the rows as
     * offsets from the first one; rows too far apart for int32 offsets take the reference kernel in
     * groups that fit, the same sums) */
    if (!mk || !p->lse) { /* no K mean, or no LSE asked for (the corrections enter the LSE only) */
        for (int r = 0; r < m; r++) corr[r] = 0.0f;
        return;
    }
    for (int r0 = 0; r0 < m; r0 += LSE_ROWS) {
        int nr = m - r0 < LSE_ROWS ? m - r0 : LSE_ROWS, h;
        int32_t roff[LSE_ROWS];
        float dot[LSE_ROWS];
        const int8_t *first = q_row(pl, off, i0, g, r0, &h);
        bool fits = true;
        for (int k = 0; k < nr; k++) {
            ptrdiff_t o = q_row(pl, off, i0, g, r0 + k, &h) - first;
            fits &= o >= 0 && o <= INT32_MAX - D;
            roff[k] = fits ? (int32_t)o : 0;
        }
        if (fits) pl->kern->lse_dots(first, roff, nr, D, mk, dot);
        else
            for (int k = 0; k < nr; k++) roff[k] = 0, qattn_i8_lse_dots_ref(q_row(pl, off, i0, g, r0 + k, &h), roff + k, 1, D, mk, dot + k);
        for (int k = 0; k < nr; k++) corr[r0 + k] = dot[k] * corr[r0 + k] * pl->scale;
    }
}

/* Whether (b, g) is a sharp unit (residual codes, docs/FORMAT.md section 7). */
static bool unit_sharp(const lplan *pl, int64_t b, int g) {
    return pl->rf && pl->rf->sharp[b * pl->p->n_kv_heads + g];
}

/* The Q residual codes of a unit's rows into qr, in qc's layout (pack_q's): 8-bit r for the pack8
 * tables; for the 16-bit packs the combined operand 128 c + r (|128 c + r| <= 128 * 127 + 64 = 16 320,
 * an int16), so that tile_scores needs two products there instead of three. */
static void pack_qr(const lplan *pl, int64_t b, int64_t i0, int n_pos, int g, int16_t *qr) {
    const qattn_params *p = pl->p;
    const qattn_int8_tensor *tq = &pl->qi->q;
    int D = p->head_dim, m = n_pos * pl->units.group;
    int64_t off = i8_off(p, tq, p->cu_seqlens_q, b);
    for (int r = 0; r < m; r++) {
        int h;
        const int8_t *codes = q_row(pl, off, i0, g, r, &h);
        const int8_t *src = pl->rf->q_res + (codes - tq->data); /* the same place in the residual array */
        if (pl->kern->pack8) memcpy((int8_t *)qr + (size_t)r * D, src, (size_t)D);
        else
            for (int c = 0; c < D; c++) qr[r * D + c] = (int16_t)(128 * qattn_i8_clamp_code(codes[c]) + src[c]);
    }
}

/* K tile: keys t0 .. t0+n of (b, g) into the 16-bit pack of qk16 (or the 8-bit pack of qk when the
 * table says pack8), zero-padded to npad. */
static void pack_k(const lplan *pl, const int8_t *data, int64_t b, int g, int64_t t0, int n, int npad, int16_t *kp, float *sk) {
    const qattn_params *p = pl->p;
    const qattn_int8_tensor *t = &pl->qi->k; /* codes from data (t->data, or the residuals), in t's layout */
    int D = p->head_dim;
    int64_t off = i8_off(p, t, p->cu_seqlens_k, b), tb = tok_base(p->cu_seqlens_k, b, p->seqlen_k);
    if (pl->kern->pack8) /* qk's 8-bit pack: the table's packer */
        pl->kern->pack8_k(data + off + t0 * t->seq_stride + (int64_t)g * t->head_stride, t->seq_stride, n, npad, D, (int8_t *)(void *)kp);
    for (int j = 0; j < npad; j++) {
        if (j < n) {
            int64_t i = t0 + j;
            const int8_t *src = data + off + i * t->seq_stride + (int64_t)g * t->head_stride;
            if (!pl->kern->pack8)
                for (int c = 0; c < D; c++) kp[(c / 2) * npad * 2 + j * 2 + c % 2] = qattn_i8_clamp_code(src[c]);
            if (sk) sk[j] = t->scale[qattn_scale_index(t->granularity, t->block_size, b, tb + i, i, g, p->n_kv_heads, p->seqlen_k, D, 0)];
        } else {
            if (!pl->kern->pack8)
                for (int c = 0; c < D; c += 4)
                    memset(kp + (size_t)(c / 2) * npad * 2 + (size_t)j * 2, 0, 4), memset(kp + (size_t)(c / 2 + 1) * npad * 2 + (size_t)j * 2, 0, 4);
            if (sk) sk[j] = 0.0f;
        }
    }
}

static void pack_v_i16(const lplan *pl, int64_t b, int g, int64_t t0, int n, int npad, int16_t *vp, float *svk) {
    const qattn_params *p = pl->p;
    const qattn_int8_tensor *t = &pl->qi->v;
    int D = p->head_dim;
    int64_t off = i8_off(p, t, p->cu_seqlens_k, b), tb = tok_base(p->cu_seqlens_k, b, p->seqlen_k);
    bool per_key = pl->p_mode == QATTN_P_U8_VSCALED && t->granularity != QATTN_QUANT_PER_CHANNEL;
    if (pl->kern->pack8) /* pv_acc8's vp8 (4 keys of each channel adjacent): the table's packer */
        pl->kern->pack8_v(t->data + off + t0 * t->seq_stride + (int64_t)g * t->head_stride, t->seq_stride, n, npad, D, (int8_t *)(void *)vp);
    for (int j = 0; j < npad; j++) {
        const int8_t *src = j < n ? t->data + off + (t0 + j) * t->seq_stride + (int64_t)g * t->head_stride : NULL;
        if (!pl->kern->pack8)
            for (int c = 0; c < D; c++) vp[(j / 2) * D * 2 + c * 2 + j % 2] = src ? qattn_i8_clamp_code(src[c]) : 0;
        svk[j] = !src ? 0.0f
                 : per_key ? t->scale[qattn_scale_index(t->granularity, t->block_size, b, tb + t0 + j, t0 + j, g, p->n_kv_heads, p->seqlen_k, D, 0)]
                           : 1.0f;
    }
}

static void pack_v_f32(const lplan *pl, int64_t b, int g, int64_t t0, int n, int npad, float *vf) {
    const qattn_params *p = pl->p;
    int D = p->head_dim;
    if (pl->v_fp) {
        qattn_seq s = qattn_seq_view(p, b);
        for (int j = 0; j < npad; j++)
            for (int c = 0; c < D; c++)
                vf[j * D + c] = j < n ? qattn_load(pl->v_fp, p->qkv_dtype, s.v_off + (t0 + j) * p->v_seq_stride + (int64_t)g * p->v_head_stride + c)
                                      : 0.0f;
        return;
    }
    const qattn_int8_tensor *t = &pl->qi->v;
    int64_t off = i8_off(p, t, p->cu_seqlens_k, b), tb = tok_base(p->cu_seqlens_k, b, p->seqlen_k);
    const float *mu = t->mean ? t->mean + ((int64_t)b * p->n_kv_heads + g) * D : NULL;
    for (int j = 0; j < npad; j++) {
        int64_t i = t0 + j;
        for (int c = 0; c < D; c++) {
            float x = 0.0f;
            if (j < n) {
                float sc = t->scale[qattn_scale_index(t->granularity, t->block_size, b, tb + i, i, g, p->n_kv_heads, p->seqlen_k, D, c)];
                x = (float)qattn_i8_clamp_code(t->data[off + i * t->seq_stride + (int64_t)g * t->head_stride + c]) * sc + (mu ? mu[c] : 0.0f);
            }
            vf[j * D + c] = x;
        }
    }
}

/* V channel scales and mean of (b, g), integer modes. */
static void v_channel_info(const lplan *pl, int64_t b, int g, float *sv, float *mv) {
    const qattn_params *p = pl->p;
    const qattn_int8_tensor *t = &pl->qi->v;
    int D = p->head_dim;
    for (int c = 0; c < D; c++) {
        bool token_scales = pl->p_mode == QATTN_P_U8_VSCALED && t->granularity != QATTN_QUANT_PER_CHANNEL;
        sv[c] = pl->p_mode == QATTN_P_FP32 ? 0.0f
                : token_scales             ? 1.0f
                                           : t->scale[qattn_scale_index(t->granularity, t->block_size, b, 0, 0, g, p->n_kv_heads, p->seqlen_k, D, c)];
        mv[c] = (pl->p_mode != QATTN_P_FP32 && t->mean) ? t->mean[((int64_t)b * p->n_kv_heads + g) * D + c] : 0.0f;
    }
}

/* Pack task: one (sequence, tile, kv head) slot. */
static void pack_unit(void *arg, int64_t task, int worker) {
    (void)worker;
    const lplan *pl = arg;
    const qattn_params *p = pl->p;
    int g = (int)(task % p->n_kv_heads);
    int64_t t = (task / p->n_kv_heads) % pl->max_tiles, b = task / p->n_kv_heads / pl->max_tiles;
    qattn_seq s = qattn_seq_view(p, b);
    int64_t t0 = t * QATTN_TILE_KEYS;
    if (t0 >= s.lk) return;
    int n = (int)(s.lk - t0 < QATTN_TILE_KEYS ? s.lk - t0 : QATTN_TILE_KEYS), npad = (n + 7) / 8 * 8;
    kvslot k = slot_of(pl, b, g, t);
    pack_k(pl, pl->qi->k.data, b, g, t0, n, npad, k.kp, k.sk);
    if (unit_sharp(pl, b, g)) pack_k(pl, pl->rf->k_res, b, g, t0, n, npad, k.kr, NULL);
    if (pl->p_mode == QATTN_P_FP32)
        pack_v_f32(pl, b, g, t0, n, npad, k.vp);
    else
        pack_v_i16(pl, b, g, t0, n, npad, k.vp, k.svk);
}

/* ---------------------------------------------------------------- state */

static void write_rows(const lplan *pl, int64_t b, int64_t i0, int n_pos, int g, const qattn_tile_state *st, const float *corr,
                       const float *mv) {
    const qattn_params *p = pl->p;
    qattn_seq s = qattn_seq_view(p, b);
    int D = p->head_dim;
    for (int pi = 0; pi < n_pos; pi++)
        for (int hg = 0; hg < pl->units.group; hg++) {
            int r = pi * pl->units.group + hg, h = g * pl->units.group + hg;
            int64_t i = i0 + pi;
            int64_t base = s.o_off + i * p->o_seq_stride + (int64_t)h * p->o_head_stride;
            float l = st->row_sum[r], mx = st->row_max[r];
            const float *acc = st->acc + r * st->ld_acc;
            bool empty = mx == -INFINITY;
            float inv = empty ? 0.0f : 1.0f / l;
            if (!empty && p->o_dtype == QATTN_DTYPE_F32) { /* the common case: the table's row kernel */
                pl->kern->out_row(acc, inv, mv, D, (float *)p->o + base);
            } else {
                for (int c = 0; c < D; c++) qattn_store(p->o, p->o_dtype, base + c, empty ? 0.0f : acc[c] * inv + mv[c]);
            }
            if (p->lse) p->lse[s.lse_off + (int64_t)h * s.lse_head_stride + i] = empty ? -INFINITY : (mx + log2f(l)) * LN2 + corr[r];
        }
}

/* Prefetch the output rows of positions [p0, p1) of a unit, which write_rows stores to at the unit's
 * end: each row is its own run of D values a token stride apart (a page each at H 8, D 128), so the
 * stores' reads for ownership missed one after another (measured: the finalize's time halves; the
 * unit's tiles issue the rows in slices). A macro: GCC deletes the calls of a function that only
 * prefetches. */
#define PREFETCH_OUT(pl, s, i0, g, p0, p1)                                                                               \
    do {                                                                                                               \
        size_t esz_ = (size_t)qattn_dtype_bytes((pl)->p->o_dtype);                                                     \
        for (int pi_ = (p0); pi_ < (p1); pi_++)                                                                        \
            for (int hg_ = 0; hg_ < (pl)->units.group; hg_++)                                                          \
                QATTN_PREFETCH((const char *)(pl)->p->o + (size_t)((s)->o_off + ((i0) + pi_) * (pl)->p->o_seq_stride + \
                                                                        (int64_t)((g) * (pl)->units.group + hg_) * (pl)->p->o_head_stride) * esz_, \
                                    (size_t)(pl)->p->head_dim * esz_, 2);                                                 \
    } while (0)

/* ---------------------------------------------------------------- one tile */

/* S of a tile: Qc Kc^T, or for a sharp unit 128 Qc Kc^T + Qr Kc^T + Qc Kr^T (the driver's sq already
 * carries the 1/128). Every product is the table's exact integer kernel, the combination is int32
 * arithmetic here: the same S on every ISA. Bound for D <= 256 (codes |c| <= 127, residuals
 * |r| <= 64): 128 * 256 * 127^2 + 2 * 256 * 64 * 127 = 532 643 840 < 2^31 - 1 = 2 147 483 647, and
 * each kernel's own bound (|Qr Kc^T| <= 2 080 768, the VNNI offset form <= 256 * 255 * 127) holds.
 * 16-bit packs (ref, avx2): the same integer as (128 Qc + Qr) Kc^T + Qc Kr^T (pack_qr), two qk16
 * products; pmaddwd pair sums |q0 k0 + q1 k1| <= 2 * 16 320 * 127 = 4 145 280, the sum over D as
 * above. */
static void tile_scores(const lplan *pl, wmem *w, int m, int npad, bool sharp) {
    const qattn_int8_kernels *K = pl->kern;
    int D = pl->p->head_dim;
    if (sharp && !K->pack8) {
        size_t ns = (size_t)m * npad;
        K->qk16(w->qr, m, D, w->kp, npad, w->s);
        K->qk16(w->qc, m, D, w->kr, npad, w->s2);
        for (size_t i = 0; i < ns; i++) w->s[i] += w->s2[i];
        return;
    }
    if (K->pack8) /* 8-bit packs (AVX-VNNI); the same exact S */
        K->qk((const int8_t *)(const void *)w->qc, m, D, (const int8_t *)(const void *)w->kp, npad, w->s);
    else
        K->qk16(w->qc, m, D, w->kp, npad, w->s);
    if (!sharp) return;
    size_t ns = (size_t)m * npad;
    for (int t = 0; t < 2; t++) {
        const int16_t *a = t == 0 ? w->qr : w->qc, *kb = t == 0 ? w->kp : w->kr;
        if (K->pack8) K->qk((const int8_t *)(const void *)a, m, D, (const int8_t *)(const void *)kb, npad, w->s2);
        else K->qk16(a, m, D, kb, npad, w->s2);
        if (t == 0)
            for (size_t i = 0; i < ns; i++) w->s[i] = w->s[i] * 128 + w->s2[i];
        else
            for (size_t i = 0; i < ns; i++) w->s[i] += w->s2[i];
    }
}

static void attend_tile(const lplan *pl, wmem *w, int m, int n, qattn_tile_state *st, bool sharp) {
    const qattn_int8_kernels *K = pl->kern;
    int D = pl->p->head_dim, npad = (n + 7) / 8 * 8;
    int32_t mode = pl->p_mode;
    bool fp = mode == QATTN_P_FP32;
    float mult = (mode == QATTN_P_S8_RUNNING || mode == QATTN_P_S8_BLOCKMAX) ? 127.0f : 255.0f;
    bool blockmax = mode == QATTN_P_U8_BLOCKMAX || mode == QATTN_P_S8_BLOCKMAX;
    tile_scores(pl, w, m, npad, sharp);
    if (mode == QATTN_P_U8_VSCALED) { /* scores, row max, state and P codes in one pass; u8 codes with the 8-bit packs */
        K->p_vs_tile(w->s, m, npad, w->sq, w->sk, w->lo, w->hi, w->svk, st->row_max, st->row_sum, w->pc, K->pack8, w->alpha, w->fac);
        if (K->pack8)
            K->pv_acc8u((const uint8_t *)w->pc, m, npad, w->vp, D, w->alpha, w->fac, w->sv, w->lo, w->hi, st->acc, st->ld_acc);
        else
            K->pv_acc((int16_t *)w->pc, m, npad, w->vp, D, w->alpha, w->fac, w->sv, w->lo, w->hi, st->acc, st->ld_acc);
        return;
    }
    /* the other P modes: the unfused steps */
    K->scores(w->s, m, npad, w->sq, w->sk, w->sf);
    int16_t *codes = fp ? NULL : (int16_t *)w->pc;
    float *pf = fp ? (float *)w->pc : NULL;
    for (int r = 0; r < m; r++) {
        int lo = w->lo[r], hi = w->hi[r];
        const float *sf = w->sf + (size_t)r * npad;
        if (lo >= hi) { /* nothing visible in this tile: zero P row, state untouched */
            if (codes) memset(codes + (size_t)r * npad, 0, (size_t)npad * sizeof(int16_t));
            if (pf) memset(pf + (size_t)r * npad, 0, (size_t)npad * sizeof(float));
            w->alpha[r] = 1.0f;
            w->fac[r] = 0.0f;
            continue;
        }
        float mb = K->rowmax(sf, lo, hi);
        float m_old = st->row_max[r];
        float m_new = m_old > mb ? m_old : mb;
        float alpha = m_old == -INFINITY ? 0.0f : exp2f(m_old - m_new);
        float ref = blockmax ? mb : m_new;
        int32_t csum;
        float esum;
        float beta = blockmax ? exp2f(mb - m_new) : 1.0f;
        float add, fac = fp ? 1.0f : beta / mult;
        K->softmax(sf, lo, hi, npad, ref, mult, codes ? codes + (size_t)r * npad : NULL, pf ? pf + (size_t)r * npad : NULL, &csum, &esum);
        switch (mode) {
        case QATTN_P_S8_RUNNING:
        case QATTN_P_FP32: add = esum; break;
        default: add = beta / mult * (float)csum; break;
        }
        st->row_sum[r] = st->row_sum[r] * alpha + add;
        st->row_max[r] = m_new;
        w->alpha[r] = alpha;
        w->fac[r] = fac;
    }
    if (fp) {
        float *pv = w->pv;
        K->pv_f32(pf, m, npad, w->vp, D, pv);
        for (int r = 0; r < m; r++) {
            if (w->lo[r] >= w->hi[r]) continue;
            float a = w->alpha[r], *acc = st->acc + (size_t)r * st->ld_acc;
            const float *t = pv + (size_t)r * D;
            for (int c = 0; c < D; c++) acc[c] = acc[c] * a + t[c];
        }
    } else {
        if (K->pack8)
            K->pv_acc8(codes, m, npad, w->vp, D, w->alpha, w->fac, w->sv, w->lo, w->hi, st->acc, st->ld_acc);
        else
            K->pv_acc(codes, m, npad, w->vp, D, w->alpha, w->fac, w->sv, w->lo, w->hi, st->acc, st->ld_acc);
    }
}

/* Each row's visible keys [rx, ry) of the sequence (causal, windows), once per unit, and the largest
 * rx and smallest ry (tile_intervals' shortcut). */
static void row_ranges(const lplan *pl, const qattn_seq *s, int64_t i0, int m, int64_t *rx, int64_t *ry, int64_t *rx_max, int64_t *ry_min) {
    const qattn_params *p = pl->p;
    *rx_max = 0, *ry_min = INT64_MAX;
    for (int r = 0; r < m; r++) {
        qattn_key_range(i0 + r / pl->units.group, s->lq, s->lk, p->window_left, qattn_window_right(p), &rx[r], &ry[r]);
        *rx_max = rx[r] > *rx_max ? rx[r] : *rx_max, *ry_min = ry[r] < *ry_min ? ry[r] : *ry_min;
    }
}

/* Per-row key intervals of the tile at t0 (n keys), for keys [a, z) of it: each row's window
 * [rx, ry) cut to [a, z), emptied for rows whose block mask hides the key block of a (the caller
 * cuts [a, z) so that no row's mask changes inside it). True when some row sees a key. rx_max and
 * ry_min (the largest rx, the smallest ry): when [a, z) lies inside every row's window and there is
 * no block mask, every row gets [a - t0, z - t0), what the per-row cut gives. */
static bool tile_intervals(const lplan *pl, int64_t b, int64_t i0, int m, int g, int64_t t0, int n, int64_t a, int64_t z,
                           const int64_t *rx, const int64_t *ry, int64_t rx_max, int64_t ry_min, int32_t *lo, int32_t *hi) {
    const qattn_params *p = pl->p;
    if (!p->block_mask && rx_max <= a && ry_min >= z) {
        int32_t x = (int32_t)(a - t0), y = (int32_t)(z > a ? z - t0 : a - t0);
        for (int r = 0; r < m; r++) lo[r] = x, hi[r] = y;
        return m > 0 && x < y;
    }
    bool any = false;
    for (int r = 0; r < m; r++) {
        int64_t i = i0 + r / pl->units.group, x = rx[r], y = ry[r];
        if (x < a) x = a;
        if (y > z) y = z;
        if (p->block_mask && !qattn_block_mask_row(p, b, g * pl->units.group + r % pl->units.group, i / p->block_mask_q)[a / p->block_mask_k]) y = x;
        x = x < t0 ? 0 : x - t0;
        y = y > t0 + n ? n : y - t0;
        if (y < x) y = x;
        lo[r] = (int32_t)x;
        hi[r] = (int32_t)y;
        any |= x < y;
    }
    return any;
}

static void run_unit(void *arg, int64_t task, int worker) {
    const lplan *pl = arg;
    const qattn_params *p = pl->p;
    task = qattn_units_task(&pl->units, task); /* what a unit computes does not depend on when it runs */
    qattn_unit u = qattn_unit_of(&pl->units, task);
    qattn_seq s = qattn_seq_view(p, u.b);
    int64_t i0;
    int n_pos = qattn_unit_positions(&pl->units, &u, s.lq, &i0);
    if (n_pos == 0) return;
    int m = n_pos * pl->units.group, D = p->head_dim;
    wmem w;
    wmem_layout(pl, pl->scratch + (size_t)worker * pl->worker_bytes, &w);

    bool split = pl->units.n_split > 1;
    qattn_tile_state st = qattn_unit_state_begin(&pl->units, pl->partials, task, w.state, 0, m, D);

    qattn_bm_rows bm_rows, *bm = NULL; /* the unit's rows of the block mask, if any */
    if (p->block_mask) {
        bm_rows = qattn_bm_rows_of(p, u.b, u.g * pl->units.group, (u.g + 1) * pl->units.group, i0, i0 + n_pos);
        bm = &bm_rows;
    }
    int64_t k_begin, k_end;
    qattn_unit_key_range(&pl->units, p, &u, &s, i0, n_pos, bm, &k_begin, &k_end);

    pack_q(pl, u.b, i0, n_pos, u.g, w.qc, w.sq, w.corr);
    bool sharp = unit_sharp(pl, u.b, u.g);
    if (sharp) { /* S carries 128 x the codes' product: 1/128 into the row scales (exact, a power of two) */
        pack_qr(pl, u.b, i0, n_pos, u.g, w.qr);
        for (int r = 0; r < m; r++) w.sq[r] *= 0x1p-7f;
    }
    v_channel_info(pl, u.b, u.g, w.sv, w.mv);
    int64_t rx_max, ry_min;
    row_ranges(pl, &s, i0, m, w.rx, w.ry, &rx_max, &ry_min);
    /* whole packed tiles (aligned to 64 keys of the sequence); per-row ranges mask the rest. With
     * a block mask, tiles whose keys no row computes are skipped (no loads, no products), and a
     * tile holding blocks of different patterns (blocks narrower than 64 keys) runs once per
     * pattern, each run seeing only its keys (exact: the runs are disjoint key sets). */
    int64_t t_first = k_begin / QATTN_TILE_KEYS * QATTN_TILE_KEYS, n_tiles = (k_end - t_first + QATTN_TILE_KEYS - 1) / QATTN_TILE_KEYS;
    for (int64_t t0 = t_first; t0 < k_end; t0 += QATTN_TILE_KEYS) {
        int n = (int)(s.lk - t0 < QATTN_TILE_KEYS ? s.lk - t0 : QATTN_TILE_KEYS);
        if (!split) { /* O's rows, a slice per tile */
            int64_t j = (t0 - t_first) / QATTN_TILE_KEYS;
            PREFETCH_OUT(pl, &s, i0, u.g, (int)(j * n_pos / n_tiles), (int)((j + 1) * n_pos / n_tiles));
        }
        int64_t a = t0 > k_begin ? t0 : k_begin, tile_end = t0 + n < k_end ? t0 + n : k_end;
        if (bm) a = qattn_bm_next_live(bm, a, tile_end);
        while (a < tile_end) {
            int64_t z = bm ? qattn_bm_uniform_end(bm, a, tile_end) : tile_end;
            if (tile_intervals(pl, u.b, i0, m, u.g, t0, n, a, z, w.rx, w.ry, rx_max, ry_min, w.lo, w.hi)) {
                kvslot k = slot_of(pl, u.b, u.g, t0 / QATTN_TILE_KEYS);
                w.kp = k.kp, w.vp = k.vp, w.sk = k.sk, w.svk = k.svk, w.kr = k.kr;
                attend_tile(pl, &w, m, n, &st, sharp);
            }
            a = bm ? qattn_bm_next_live(bm, z, tile_end) : tile_end;
        }
    }
    if (!split) write_rows(pl, u.b, i0, n_pos, u.g, &st, w.corr, w.mv);
}

/* Second phase of a split run: the partials of one (b, g, qblock), merged in split order, to O and LSE
 * (the rows' LSE corrections and V means again: the worker's scratch holds another unit's). */
static void merge_unit(void *arg, int64_t task, int worker) {
    const lplan *pl = arg;
    const qattn_params *p = pl->p;
    qattn_unit u = qattn_units_merge_unit(&pl->units, task);
    qattn_seq s = qattn_seq_view(p, u.b);
    int64_t i0;
    int n_pos = qattn_unit_positions(&pl->units, &u, s.lq, &i0);
    if (n_pos == 0) return;
    int m = n_pos * pl->units.group, D = p->head_dim;
    wmem w;
    wmem_layout(pl, pl->scratch + (size_t)worker * pl->worker_bytes, &w);
    pack_q(pl, u.b, i0, n_pos, u.g, NULL, w.sq, w.corr);
    v_channel_info(pl, u.b, u.g, w.sv, w.mv);
    qattn_tile_state total = qattn_units_merge_splits(&pl->units, pl->partials, task, 0, m, D);
    write_rows(pl, u.b, i0, n_pos, u.g, &total, w.corr, w.mv);
}

qattn_status qattn_lowp_run_quantized(qattn_ctx *ctx, const qattn_params *p, const qattn_int8_inputs *qi, int32_t p_mode,
                                      const void *v_fp, const qattn_qk_refine *rf, void *workspace, size_t workspace_size) {
    qattn_status refused = refuse_score_mods(ctx, p);
    if (refused != QATTN_OK) return refused;
    lplan pl;
    make_plan(&pl, ctx, p, rf != NULL, p_mode);
    pl.qi = qi;
    pl.rf = rf;
    pl.p_mode = p_mode;
    pl.v_fp = v_fp;
    if (pl.units.n_units == 0) return QATTN_OK;
    int nw = qattn_workers_for(ctx->n_threads, pl.units.n_units);
    void *mem;
    qattn_status s = qattn_workspace_take(ctx, workspace, workspace_size, plan_bytes(&pl, nw), &mem);
    if (s != QATTN_OK) return s;
    pl.scratch = mem;
    pl.packs = pl.scratch + (size_t)nw * pl.worker_bytes;
    pl.partials = qattn_units_workspace(&pl.units, p, NULL, pl.packs + pl.pack_bytes);
    int64_t pack_tasks = p->batch * pl.max_tiles * p->n_kv_heads;
    if (pack_tasks > 0) qattn_parallel_for(ctx->pool, qattn_workers_for(ctx->n_threads, pack_tasks), pack_tasks, pack_unit, &pl);
    qattn_units_run(ctx->pool, &pl.units, nw, run_unit, merge_unit, &pl);
    qattn_workspace_release(ctx, mem, workspace);
    return QATTN_OK;
}

/* ---------------------------------------------------------------- dynamic INT8 (qattn_forward) */

/* Bytes of the quantized copies of Q, K, V (codes, scales, means) for cfg, 64-byte pieces. */
typedef struct qbufs {
    size_t off[3][3]; /* [tensor][codes, scales, means] */
    size_t res_q, res_k, sharp, sigma; /* refinement (cfg_refines): Q and K residual codes, [B][HK] flags and sigma */
    size_t total;
} qbufs;

/* Whether cfg refines sharp units (INT8 codes after the joint Q/K transforms). */
static bool cfg_refines(const qattn_lowp_cfg *cfg) {
    return cfg->qk_refine_noise > 0.0f && cfg->qk_smooth > 0 && (cfg->qk_code_max == 0 || cfg->qk_code_max == 127);
}

static void qbufs_layout(const qattn_params *p, const qattn_lowp_cfg *cfg, qbufs *qb) {
    int32_t gran[3] = {cfg->q_gran, cfg->k_gran, cfg->v_gran};
    int32_t blk[3] = {cfg->q_block, cfg->k_block, cfg->v_block};
    size_t off = 0;
    for (int w = 0; w < 3; w++) {
        int64_t heads = w == 0 ? p->n_heads : p->n_kv_heads;
        int64_t tokens = w == 0 ? (p->cu_seqlens_q ? p->cu_seqlens_q[p->batch] : p->batch * p->seqlen_q)
                                : (p->cu_seqlens_k ? p->cu_seqlens_k[p->batch] : p->batch * p->seqlen_k);
        bool skip = w == 2 && cfg->p_mode == QATTN_P_FP32; /* V stays FP */
        qb->off[w][0] = off;
        off += skip ? 0 : al64((size_t)(tokens * heads * p->head_dim));
        qb->off[w][1] = off;
        off += skip ? 0 : al64((size_t)qattn_quant_scale_count(p, w, gran[w], blk[w]) * sizeof(float));
        qb->off[w][2] = off;
        off += skip ? 0 : al64((size_t)(p->batch * heads * p->head_dim) * sizeof(float));
    }
    qb->res_q = qb->res_k = qb->sharp = qb->sigma = off;
    if (cfg_refines(cfg)) {
        int64_t tq = p->cu_seqlens_q ? p->cu_seqlens_q[p->batch] : p->batch * p->seqlen_q;
        int64_t tk = p->cu_seqlens_k ? p->cu_seqlens_k[p->batch] : p->batch * p->seqlen_k;
        qb->res_q = off, off += al64((size_t)(tq * p->n_heads * p->head_dim));
        qb->res_k = off, off += al64((size_t)(tk * p->n_kv_heads * p->head_dim));
        qb->sharp = off, off += al64((size_t)(p->batch * p->n_kv_heads));
        qb->sigma = off, off += al64((size_t)(p->batch * p->n_kv_heads) * sizeof(float));
    }
    qb->total = off;
}

static qattn_status check_cfg(qattn_ctx *ctx, const qattn_lowp_cfg *cfg) {
    if (cfg->q_gran == QATTN_QUANT_PER_CHANNEL || cfg->k_gran == QATTN_QUANT_PER_CHANNEL)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "q and k scales cannot be PER_CHANNEL");
    if (cfg->p_mode != QATTN_P_FP32 && cfg->p_mode != QATTN_P_U8_VSCALED && cfg->v_gran != QATTN_QUANT_PER_HEAD &&
        cfg->v_gran != QATTN_QUANT_PER_CHANNEL)
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "v scales must be PER_HEAD or PER_CHANNEL for integer P V");
    if (cfg->qk_smooth && (cfg->q_gran != QATTN_QUANT_PER_TOKEN || cfg->k_gran != QATTN_QUANT_PER_TOKEN || !cfg->k_smooth))
        return qattn_fail(ctx, QATTN_ERR_UNSUPPORTED, "q/k channel smoothing needs PER_TOKEN q and k scales and k smoothing");
    if (cfg->p_mode < QATTN_P_U8_BLOCKMAX || cfg->p_mode > QATTN_P_U8_VSCALED)
        return qattn_fail(ctx, QATTN_ERR_INVALID_ARGUMENT, "p_mode %d is not a qattn_p_mode", cfg->p_mode);
    for (int w = 0; w < 3; w++) {
        int32_t g = w == 0 ? cfg->q_gran : w == 1 ? cfg->k_gran : cfg->v_gran;
        int32_t b = w == 0 ? cfg->q_block : w == 1 ? cfg->k_block : cfg->v_block;
        qattn_status s = qattn_quant_check_tensor(ctx, w, g, b);
        if (s != QATTN_OK) return s;
    }
    return QATTN_OK;
}

static size_t dynamic_bytes(const qattn_ctx *ctx, const qattn_params *p, const qattn_lowp_cfg *cfg, qbufs *qb) {
    qbufs tmp;
    if (!qb) qb = &tmp;
    qbufs_layout(p, cfg, qb);
    return qb->total + qattn_lowp_run_bytes(ctx, p, cfg_refines(cfg), cfg->p_mode);
}

qattn_status qattn_lowp_forward_cfg(qattn_ctx *ctx, const qattn_params *p, const qattn_lowp_cfg *cfg) {
    return qattn_lowp_forward_static(ctx, p, cfg, NULL);
}

qattn_status qattn_lowp_forward_static(qattn_ctx *ctx, const qattn_params *p, const qattn_lowp_cfg *cfg, const qattn_lowp_static *stat) {
    if (!ctx) return QATTN_ERR_NULL_POINTER;
    qattn_status s = qattn_validate(ctx, p, true);
    if (s == QATTN_OK) s = refuse_score_mods(ctx, p);
    if (s == QATTN_OK) s = check_cfg(ctx, cfg);
    if (s != QATTN_OK || p->batch == 0) return s;
    qbufs qb;
    size_t need = dynamic_bytes(ctx, p, cfg, &qb);
    void *ws;
    s = qattn_workspace_take(ctx, p->workspace, p->workspace_size, need, &ws);
    if (s != QATTN_OK) return s;
    unsigned char *mem = ws;
    qattn_int8_inputs qi;
    memset(&qi, 0, sizeof qi);
    qattn_int8_tensor *ts[3] = {&qi.q, &qi.k, &qi.v};
    int32_t gran[3] = {cfg->q_gran, cfg->k_gran, cfg->v_gran};
    int32_t blk[3] = {cfg->q_block, cfg->k_block, cfg->v_block};
    int32_t smooth[3] = {0, cfg->k_smooth, cfg->v_smooth};
    bool fp_v = cfg->p_mode == QATTN_P_FP32;
    bool qk_joint = cfg->qk_smooth > 0; /* Q and K in one call (channel smoothing) */
    int32_t qk_code_max = cfg->qk_code_max > 0 ? cfg->qk_code_max : 127; /* 7: INT4 */
    bool refine = cfg_refines(cfg);
    qattn_qk_refine rf;
    memset(&rf, 0, sizeof rf);
    if (refine) {
        rf.noise = cfg->qk_refine_noise, rf.scale = qattn_effective_scale(p);
        rf.q_res = (int8_t *)(mem + qb.res_q), rf.k_res = (int8_t *)(mem + qb.res_k);
        rf.sharp = mem + qb.sharp, rf.sigma = (float *)(void *)(mem + qb.sigma);
    }
    s = QATTN_OK;
    for (int w = 0; w < 3 && s == QATTN_OK; w++) {
        if (w == 2 && fp_v) continue;
        int64_t heads = w == 0 ? p->n_heads : p->n_kv_heads, len = w == 0 ? p->seqlen_q : p->seqlen_k;
        qattn_int8_tensor *t = ts[w];
        t->data = (int8_t *)(mem + qb.off[w][0]);
        t->scale = (float *)(void *)(mem + qb.off[w][1]);
        t->mean = smooth[w] ? (float *)(void *)(mem + qb.off[w][2]) : NULL;
        t->granularity = gran[w];
        t->block_size = blk[w];
        t->head_stride = p->head_dim;
        t->seq_stride = heads * p->head_dim;
        t->batch_stride = len * t->seq_stride;
        if (w == 2 && stat && stat->v_mean && t->mean) { /* static: the calibrated V mean, one pass */
            for (int64_t b = 0; b < p->batch; b++)
                memcpy(t->mean + b * heads * p->head_dim, stat->v_mean, (size_t)(heads * p->head_dim) * sizeof(float));
            s = qattn_quantize_tensor_fixed_mean(ctx, p, w, t);
        } else if (w == 1 && qk_joint) { /* Q (set up at w = 0) and K together */
            qattn_qk_static qs = {stat ? stat->k_factor : NULL, stat ? stat->k_mean : NULL};
            s = qattn_quantize_qk_smoothed(ctx, p, cfg->qk_smooth, cfg->qk_smooth_min_exp, cfg->qk_rotate, qk_code_max,
                                           qs.k_factor && qs.k_mean ? &qs : NULL, &qi.q, &qi.k, NULL, refine ? &rf : NULL);
        } else if (w != 0 || !qk_joint)
            s = qattn_quantize_tensor_codes(ctx, p, w, t, w < 2 ? qk_code_max : 127);
    }
    if (s == QATTN_OK)
        s = qattn_lowp_run_quantized(ctx, p, &qi, cfg->p_mode, fp_v ? p->v : NULL, refine ? &rf : NULL, mem ? mem + qb.total : NULL,
                                     mem ? (p->workspace ? p->workspace_size : need) - qb.total : 0);
    qattn_workspace_release(ctx, mem, p->workspace);
    return s;
}

/* The configuration p asks for: precision INT4's, else its INT8 scheme's. */
static void cfg_of(const qattn_params *p, qattn_lowp_cfg *cfg) {
    if (p->precision == QATTN_PRECISION_INT4) qattn_lowp_int4_cfg(cfg);
    else qattn_lowp_scheme_cfg(p->int8_scheme, cfg);
}

qattn_status qattn_cpu_forward_lowp(qattn_ctx *ctx, const qattn_params *p) {
    qattn_status refused = refuse_score_mods(ctx, p);
    if (refused != QATTN_OK) return refused;
    if (p->precision == QATTN_PRECISION_FP8_E4M3 || p->precision == QATTN_PRECISION_FP8_E5M2) return qattn_cpu_forward_fp8(ctx, p);
    qattn_lowp_cfg cfg;
    cfg_of(p, &cfg);
    return qattn_lowp_forward_cfg(ctx, p, &cfg);
}

qattn_status qattn_cpu_forward_calibrated(qattn_ctx *ctx, const qattn_params *p, const qattn_calibration *cal) {
    qattn_lowp_cfg cfg;
    qattn_lowp_scheme_cfg(QATTN_INT8_DEFAULT, &cfg);
    qattn_lowp_static st = {cal->k_factor, cal->k_mean, cal->v_mean};
    return qattn_lowp_forward_static(ctx, p, &cfg, &st);
}

qattn_status qattn_cpu_lowp_workspace_size(qattn_ctx *ctx, const qattn_params *p, size_t *bytes) {
    *bytes = 0;
    qattn_status refused = refuse_score_mods(ctx, p);
    if (refused != QATTN_OK) return refused;
    if (p->precision == QATTN_PRECISION_FP8_E4M3 || p->precision == QATTN_PRECISION_FP8_E5M2) {
        *bytes = qattn_cpu_fp8_workspace_bytes(p);
        return QATTN_OK;
    }
    qattn_lowp_cfg cfg;
    cfg_of(p, &cfg);
    *bytes = p->batch == 0 ? 0 : dynamic_bytes(ctx, p, &cfg, NULL);
    return QATTN_OK;
}
