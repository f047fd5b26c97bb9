/* qattn bench --kvcache: qattn_forward_kvcache (append + rotary + attention over a paged or
 * contiguous cache tensor, flash_attn_with_kvcache) against qattn_forward on the same keys gathered
 * into a plain [B, Lk, HK, D] tensor with the queries already rotated, in one run, plus the error of
 * both against the FP64 oracle. On the CPU backend or, with --backend cuda, on the GPU (every tensor
 * copied to the device once; each timed call synchronised).
 *
 *   qattn bench --kvcache --kv-len 8192 --seqlen-q 1 --batch 1 --heads 32 --kv-heads 8 --head-dim 128 \
 *               --page-size 16 --rotary-dim 128 --dtype fp16 --threads 1 --iters 20 [--backend cuda] [--json]
 *
 * Each timed call appends the same seqlen-q new tokens at position kv-len (idempotent), so every
 * iteration does the whole job: append, rotate, attend over kv-len + seqlen-q keys. Entry point:
 * qattn_cli_bench_kvcache (argv[0] is the subcommand name; --kvcache itself is accepted). */
#include "cli.h"
#include "device.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CMD "bench --kvcache"

typedef struct kopts {
    int64_t kv_len, batch, heads, kv_heads, head_dim, seqlen_q, page_size, rotary_dim, threads, iters;
    int32_t dtype, isa, backend;
    int json, check;
    uint64_t seed;
} kopts;


static void usage(FILE *f) {
    fprintf(f, "usage: qattn bench --kvcache [--kv-len N] [--seqlen-q LQ] [--batch B] [--heads H] [--kv-heads HK] [--head-dim D]\n"
               "         [--page-size P] [--rotary-dim R] [--dtype fp32|fp16|bf16] [--threads T] [--iters N] [--isa %s]\n"
               "         [--backend cpu|cuda] [--seed S] [--no-check] [--json]\n"
               "qattn_forward_kvcache: append LQ new tokens (keys rotated) at position N of every sequence's cache, rotate\n"
               "the LQ causal queries, attend over N + LQ keys. Defaults: --kv-len 8192 --seqlen-q 1 --batch 1 --heads 32\n"
               "--kv-heads 8 --head-dim 128 --page-size 16 (0 = contiguous cache) --rotary-dim = head-dim (0 = none)\n"
               "--dtype fp16 --threads 0 (all cores) --iters 20. Peer in the same run: qattn_forward on the same keys in a\n"
               "plain [B, N + LQ, HK, D] tensor with pre-rotated queries ('ratio' = its time / this call's). rel_l2: both\n"
               "outputs against the FP64 oracle. --backend cuda: both on the GPU (fp16/bf16), each call synchronised.\n", cli_isa_names());
}

static int parse(int argc, char **argv, kopts *o) {
    memset(o, 0, sizeof *o);
    o->kv_len = 8192, o->batch = 1, o->heads = 32, o->kv_heads = 8, o->head_dim = 128, o->seqlen_q = 1, o->page_size = 16;
    o->rotary_dim = -1, o->iters = 20, o->check = 1, o->seed = 1, o->dtype = QATTN_DTYPE_F16, o->backend = QATTN_BACKEND_CPU;
    const cli_int_flag ints[] = {{"--kv-len", &o->kv_len, 0, 1 << 24},       {"--batch", &o->batch, 1, 4096},        {"--heads", &o->heads, 1, 4096},
                {"--kv-heads", &o->kv_heads, 1, 4096},      {"--head-dim", &o->head_dim, 32, 256},  {"--seqlen-q", &o->seqlen_q, 1, 1 << 20},
                {"--page-size", &o->page_size, 0, 1 << 16}, {"--rotary-dim", &o->rotary_dim, 0, 256}, {"--threads", &o->threads, 0, QATTN_MAX_THREADS},
                {"--iters", &o->iters, 1, 100000}};
    for (int i = 1; i < argc; i++) {
        const char *val = NULL;
        int r;
        if (cli_flag_is(argv[i], "--kvcache")) continue;
        if (cli_flag_is(argv[i], "--json")) { o->json = 1; continue; }
        if (cli_flag_is(argv[i], "--no-check")) { o->check = 0; continue; }
        if (cli_flag_is(argv[i], "--help") || cli_flag_is(argv[i], "-h")) { usage(stdout); return 1; }
        cli_flag_result fr = cli_int_flags_parse(ints, sizeof ints / sizeof ints[0], argc, argv, &i, CMD);
        if (fr == CLI_FLAG_UNKNOWN) fr = cli_isa_seed_parse(&o->isa, &o->seed, argc, argv, &i, CMD);
        if (fr == CLI_FLAG_ERROR) return -1;
        if (fr == CLI_FLAG_CONSUMED) continue;
        if ((r = cli_flag_value(argc, argv, &i, "--backend", &val, CMD)) != 0) {
            if (r < 0 || cli_backend_parse(val, &o->backend, CMD)) return -1;
            continue;
        }
        if ((r = cli_flag_value(argc, argv, &i, "--dtype", &val, CMD)) != 0) {
            if (r < 0) return -1;
            o->dtype = qattn_dtype_from_name(val);
            if (o->dtype < 0 || o->dtype == QATTN_DTYPE_I8) { cli_error(CMD, "--dtype '%s': expected fp32, fp16 or bf16", val); return -1; }
            continue;
        }
        cli_error(CMD, "unknown option '%s' (try qattn bench --kvcache --help)", argv[i]);
        return -1;
    }
    if (o->rotary_dim < 0) o->rotary_dim = o->head_dim;
    if (o->heads % o->kv_heads != 0) { cli_error(CMD, "--kv-heads %lld does not divide --heads %lld", (long long)o->kv_heads, (long long)o->heads); return -1; }
    if (o->rotary_dim % 2 || o->rotary_dim > o->head_dim) { cli_error(CMD, "--rotary-dim %lld: must be even and <= --head-dim", (long long)o->rotary_dim); return -1; }
    return 0; /* the library checks the rest (page size, head_dim) with its own message */
}

/* A timed call; on the GPU it waits for the device, so the time is the work's, not the queueing's. */
typedef struct kv_call {
    qattn_params p;
    qattn_kvcache_params kv;
    int on_device;
} kv_call;

static qattn_status finished(qattn_status s, int on_device) { return s == QATTN_OK && on_device && cli_device_synchronize() ? QATTN_ERR_BACKEND : s; }
static qattn_status call_kvcache(qattn_ctx *ctx, void *arg) {
    kv_call *c = arg;
    return finished(qattn_forward_kvcache(ctx, &c->p, &c->kv), c->on_device);
}
static qattn_status call_forward(qattn_ctx *ctx, void *arg) {
    kv_call *c = arg;
    return finished(qattn_forward(ctx, &c->p), c->on_device);
}

/* Device copies of the host buffers (--backend cuda): up to 16, freed together. */
typedef struct device_set {
    void *d[16];
    int n;
} device_set;

static void *to_device(device_set *ds, const void *host, size_t bytes) {
    void *d = ds->n < 16 ? cli_device_alloc(bytes ? bytes : 1) : NULL;
    if (!d) return NULL;
    ds->d[ds->n++] = d;
    return host && cli_device_upload(d, host, bytes) ? NULL : d;
}

static void device_set_free(device_set *ds) {
    for (int i = 0; i < ds->n; i++) cli_device_free(ds->d[i]);
    ds->n = 0;
}

int qattn_cli_bench_kvcache(int argc, char **argv) {
    kopts o;
    int pr = parse(argc, argv, &o);
    if (pr != 0) return pr > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    qattn_ctx_options co;
    memset(&co, 0, sizeof co);
    co.backend = o.backend, co.isa = o.isa, co.n_threads = (int32_t)o.threads;
    const int on_device = o.backend == QATTN_BACKEND_CUDA;
    qattn_ctx *ctx = cli_ctx_create(&co, CMD), *hctx = ctx; /* hctx: rotary and oracle, host memory */
    if (ctx && on_device) {
        co.backend = QATTN_BACKEND_CPU;
        hctx = cli_ctx_create(&co, CMD);
    }
    if (!ctx || !hctx) {
        if (ctx) qattn_ctx_destroy(ctx);
        return CLI_EXIT_FAILURE;
    }
    device_set ds = {{0}, 0};
    qattn_ctx_info info;
    qattn_ctx_get_info(ctx, &info);
    int64_t B = o.batch, L = o.kv_len, Lq = o.seqlen_q, Lk = L + Lq, H = o.heads, HK = o.kv_heads, D = o.head_dim, P = o.page_size;
    size_t eb = cli_dtype_size(o.dtype);
    int64_t blocks = P ? (Lk + P - 1) / P : 0, n_pages = P ? B * blocks : 0, slots = P ? n_pages * P : B * Lk; /* cache token slots */
    int64_t row = HK * D, qe = B * Lq * H * D, ne = B * Lq * row, rd = o.rotary_dim;
    float *f = cli_alloc((size_t)(slots * row > qe ? slots * row : qe) * 4, "staging", CMD);
    void *kc = cli_alloc((size_t)(slots * row) * eb, "k_cache", CMD), *vc = cli_alloc((size_t)(slots * row) * eb, "v_cache", CMD);
    void *q = cli_alloc((size_t)qe * eb, "q", CMD), *qr = cli_alloc((size_t)qe * eb, "rotated q", CMD);
    void *kn = cli_alloc((size_t)ne * eb, "k_new", CMD), *vn = cli_alloc((size_t)ne * eb, "v_new", CMD);
    void *kg = cli_alloc((size_t)(B * Lk * row) * eb, "gathered k", CMD), *vg = cli_alloc((size_t)(B * Lk * row) * eb, "gathered v", CMD);
    float *o1 = cli_alloc((size_t)qe * 4, "o", CMD), *o2 = cli_alloc((size_t)qe * 4, "o peer", CMD);
    float *cs = cli_alloc((size_t)(Lk * (rd / 2 + 1)) * 4, "cos", CMD), *sn = cli_alloc((size_t)(Lk * (rd / 2 + 1)) * 4, "sin", CMD);
    int32_t *table = cli_alloc((size_t)(B * (blocks + 1)) * 4, "block table", CMD), *lens = cli_alloc((size_t)B * 4, "lens", CMD);
    int rc = CLI_EXIT_FAILURE;
    if (!f || !kc || !vc || !q || !qr || !kn || !vn || !kg || !vg || !o1 || !o2 || !cs || !sn || !table || !lens) goto done;
    cli_rng rng;
    cli_rng_seed(&rng, o.seed);
    cli_fill_normal(&rng, f, slots * row, 0, 1), cli_convert_from_f32(f, kc, o.dtype, slots * row);
    cli_fill_normal(&rng, f, slots * row, 0, 1), cli_convert_from_f32(f, vc, o.dtype, slots * row);
    cli_fill_normal(&rng, f, qe, 0, 1), cli_convert_from_f32(f, q, o.dtype, qe);
    cli_fill_normal(&rng, f, ne, 0, 1), cli_convert_from_f32(f, kn, o.dtype, ne);
    cli_fill_normal(&rng, f, ne, 0, 1), cli_convert_from_f32(f, vn, o.dtype, ne);
    for (int64_t i = 0; i < Lk * (rd / 2); i++) {
        double a = 6.283185307179586 * cli_rng_uniform(&rng);
        cs[i] = (float)cos(a), sn[i] = (float)sin(a);
    }
    for (int64_t i = 0; i < n_pages; i++) table[i] = (int32_t)i;
    for (int64_t i = n_pages - 1; i > 0; i--) { /* pages in shuffled order, as an allocator leaves them */
        int64_t j = (int64_t)(cli_rng_next_u64(&rng) % (uint64_t)(i + 1));
        int32_t t = table[i];
        table[i] = table[j], table[j] = t;
    }
    for (int64_t b = 0; b < B; b++) lens[b] = (int32_t)L;

    kv_call kc_call;
    memset(&kc_call, 0, sizeof kc_call);
    qattn_params *p = &kc_call.p;
    qattn_params_init(p);
    p->q = q, p->o = o1, p->batch = B, p->seqlen_q = Lq, p->n_heads = (int32_t)H, p->n_kv_heads = (int32_t)HK, p->head_dim = (int32_t)D;
    p->qkv_dtype = o.dtype, p->causal = 1;
    qattn_params_set_contiguous(p);
    qattn_kvcache_params *kv = &kc_call.kv;
    qattn_kvcache_params_init(kv);
    kv->k_cache = kc, kv->v_cache = vc, kv->cache_seqlens = lens, kv->k_new = kn, kv->v_new = vn, kv->seqlen_new = Lq;
    if (P) kv->block_table = table, kv->block_table_stride = kv->max_blocks = blocks, kv->n_pages = n_pages, kv->page_size = (int32_t)P;
    else kv->cache_len = Lk;
    if (rd) kv->rotary_cos = cs, kv->rotary_sin = sn, kv->rotary_len = Lk, kv->rotary_dim = (int32_t)rd;
    qattn_kvcache_params_set_contiguous(kv, p);
    size_t cache_bytes = (size_t)(slots * row) * eb, q_bytes = (size_t)qe * eb, new_bytes = (size_t)ne * eb, rot_bytes = (size_t)(Lk * (rd / 2)) * 4;
    if (on_device) { /* the same call over device copies */
        kc_call.on_device = 1;
        p->q = to_device(&ds, q, q_bytes), p->o = to_device(&ds, NULL, (size_t)qe * 4);
        kv->k_cache = to_device(&ds, kc, cache_bytes), kv->v_cache = to_device(&ds, vc, cache_bytes);
        kv->k_new = to_device(&ds, kn, new_bytes), kv->v_new = to_device(&ds, vn, new_bytes);
        kv->cache_seqlens = to_device(&ds, lens, (size_t)B * 4);
        if (P) kv->block_table = to_device(&ds, table, (size_t)(B * blocks) * 4);
        if (rd) kv->rotary_cos = to_device(&ds, cs, rot_bytes), kv->rotary_sin = to_device(&ds, sn, rot_bytes);
        if (!p->q || !p->o || !kv->k_cache || !kv->v_cache || !kv->k_new || !kv->v_new || !kv->cache_seqlens || (P && !kv->block_table) ||
            (rd && (!kv->rotary_cos || !kv->rotary_sin))) {
            cli_error(CMD, "--backend cuda: cannot allocate or copy the tensors to the device");
            goto done;
        }
    }
    double t_kv, b_kv, t_fw, b_fw;
    if (cli_time_calls(ctx, call_kvcache, &kc_call, o.iters, &t_kv, &b_kv, "qattn_forward_kvcache", CMD) != 0) goto done;
    if (on_device && (cli_device_download(kc, kv->k_cache, cache_bytes) || cli_device_download(vc, kv->v_cache, cache_bytes) ||
                      cli_device_download(o1, p->o, (size_t)qe * 4))) {
        cli_error(CMD, "--backend cuda: cannot copy the cache and output back");
        goto done;
    }

    /* the peer: the same keys gathered (after the append), the queries rotated beforehand */
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < Lk; t++) {
            int64_t src = P ? ((int64_t)table[b * blocks + t / P] * P + t % P) * row : (b * Lk + t) * row;
            memcpy((char *)kg + (size_t)((b * Lk + t) * row) * eb, (char *)kc + (size_t)src * eb, (size_t)row * eb);
            memcpy((char *)vg + (size_t)((b * Lk + t) * row) * eb, (char *)vc + (size_t)src * eb, (size_t)row * eb);
        }
    memcpy(qr, q, (size_t)qe * eb);
    for (int64_t b = 0; b < B && rd; b++)
        if (qattn_rotary_apply(hctx, (char *)qr + (size_t)(b * Lq * H * D) * eb, o.dtype, Lq, (int32_t)H, (int32_t)D, L, cs, sn, Lk, (int32_t)rd, 0) !=
            QATTN_OK) {
            cli_error(CMD, "qattn_rotary_apply: %s", qattn_ctx_last_error(hctx));
            goto done;
        }
    kv_call fw_call;
    memset(&fw_call, 0, sizeof fw_call);
    qattn_params *pf = &fw_call.p;
    qattn_params_init(pf);
    pf->q = qr, pf->k = kg, pf->v = vg, pf->o = o2, pf->batch = B, pf->seqlen_q = Lq, pf->seqlen_k = Lk;
    pf->n_heads = (int32_t)H, pf->n_kv_heads = (int32_t)HK, pf->head_dim = (int32_t)D, pf->qkv_dtype = o.dtype, pf->causal = 1;
    qattn_params_set_contiguous(pf);
    qattn_params pf_host = *pf; /* the oracle's */
    if (on_device) {
        size_t gathered = (size_t)(B * Lk * row) * eb;
        fw_call.on_device = 1;
        pf->q = to_device(&ds, qr, q_bytes), pf->k = to_device(&ds, kg, gathered), pf->v = to_device(&ds, vg, gathered);
        pf->o = to_device(&ds, NULL, (size_t)qe * 4);
        if (!pf->q || !pf->k || !pf->v || !pf->o) {
            cli_error(CMD, "--backend cuda: cannot allocate or copy the peer's tensors to the device");
            goto done;
        }
    }
    if (cli_time_calls(ctx, call_forward, &fw_call, o.iters, &t_fw, &b_fw, "qattn_forward", CMD) != 0) goto done;
    if (on_device && cli_device_download(o2, pf->o, (size_t)qe * 4)) {
        cli_error(CMD, "--backend cuda: cannot copy the peer's output back");
        goto done;
    }

    double e_kv = NAN, e_fw = NAN;
    if (o.check) {
        double *ref = cli_alloc((size_t)qe * 8, "oracle output", CMD);
        if (ref && qattn_oracle_f64(hctx, &pf_host, ref, NULL) == QATTN_OK) {
            cli_metrics m;
            cli_metrics_compute(o1, ref, qe, &m), e_kv = m.rel_l2;
            cli_metrics_compute(o2, ref, qe, &m), e_fw = m.rel_l2;
        }
        cli_free(ref);
    }
    double tokens_s = (double)(B * Lq) / t_kv;
    if (o.json) {
        cli_json j;
        cli_json_begin(&j, stdout);
        cli_json_str(&j, "bench", "kvcache");
        cli_json_str(&j, "backend", on_device ? "cuda" : "cpu");
        cli_json_str(&j, "dtype", qattn_dtype_name(o.dtype));
        cli_json_int(&j, "batch", B), cli_json_int(&j, "heads", H), cli_json_int(&j, "kv_heads", HK), cli_json_int(&j, "head_dim", D);
        cli_json_int(&j, "seqlen_q", Lq), cli_json_int(&j, "kv_len", L), cli_json_int(&j, "page_size", P), cli_json_int(&j, "rotary_dim", rd);
        cli_json_int(&j, "threads", info.n_threads), cli_json_str(&j, "isa", info.isa_name);
        cli_json_num(&j, "seconds", t_kv), cli_json_num(&j, "best_seconds", b_kv);
        cli_json_num(&j, "forward_seconds", t_fw), cli_json_num(&j, "forward_best_seconds", b_fw);
        cli_json_num(&j, "ratio", t_fw / t_kv), cli_json_num(&j, "tokens_per_s", tokens_s);
        cli_json_num(&j, "rel_l2", e_kv), cli_json_num(&j, "forward_rel_l2", e_fw);
        cli_json_end(&j);
    } else {
        char layout[32];
        if (P) snprintf(layout, sizeof layout, "page %lld", (long long)P);
        else snprintf(layout, sizeof layout, "contiguous");
        char where[64];
        if (on_device) snprintf(where, sizeof where, "cuda");
        else snprintf(where, sizeof where, "%s, %d threads", info.isa_name, info.n_threads);
        printf("kvcache B %lld H %lld HK %lld D %lld Lq %lld kv-len %lld %s rotary %lld %s, %s\n"
               "%-22s %10s %10s %12s %12s\n",
               (long long)B, (long long)H, (long long)HK, (long long)D, (long long)Lq, (long long)L, layout, (long long)rd, qattn_dtype_name(o.dtype),
               where, "call", "ms", "best_ms", "ratio", "rel_l2");
        printf("%-22s %10.3f %10.3f %11.2fx %12.3e\n", "qattn_forward_kvcache", t_kv * 1e3, b_kv * 1e3, t_fw / t_kv, e_kv);
        printf("%-22s %10.3f %10.3f %11.2fx %12.3e\n", "qattn_forward (peer)", t_fw * 1e3, b_fw * 1e3, 1.0, e_fw);
    }
    rc = CLI_EXIT_OK;
done:
    cli_free(f), cli_free(kc), cli_free(vc), cli_free(q), cli_free(qr), cli_free(kn), cli_free(vn), cli_free(kg), cli_free(vg);
    cli_free(o1), cli_free(o2), cli_free(cs), cli_free(sn), cli_free(table), cli_free(lens);
    device_set_free(&ds);
    if (hctx != ctx) qattn_ctx_destroy(hctx);
    qattn_ctx_destroy(ctx);
    return rc;
}
