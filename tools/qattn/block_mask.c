/* Block masks for qattn run and bench (qattn_params.block_mask): the flags, a .npy map read from
 * a file, and BlockBERT-style patterns built at a given density:
 *   random     each (head, query block) row computes round(density * nk) key blocks, drawn
 *              uniformly without replacement (so the density is exact per row);
 *   blockbert  BlockBERT's permutation pattern: the query and key blocks are grouped into
 *              n = round(1 / density) equal bands; head h lets query band i see key band
 *              (i + h) mod n (a different permutation per head; n = 1 is dense);
 *   window     a sliding window of w key blocks either side of the (scaled) diagonal plus one
 *              global block (key block 0 seen by every query, query block 0 sees every key),
 *              w chosen so that the density is about the one asked for. */
#include "block_mask.h"

#include "npy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const pattern_names[] = {"random", "blockbert", "window"};

void cli_block_mask_opts_init(cli_block_mask_opts *m) {
    memset(m, 0, sizeof *m);
    m->pattern = -1;
    m->bq = m->bk = 64;
}

static int parse_block_size(const char *text, cli_block_mask_opts *m, const char *command) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s", text);
    char *comma = strchr(buf, ',');
    if (comma) *comma = '\0';
    int64_t bq, bk;
    if (cli_parse_int64(buf, 16, 1 << 30, &bq, "--block-size", command)) return -1;
    bk = bq;
    if (comma && cli_parse_int64(comma + 1, 16, 1 << 30, &bk, "--block-size", command)) return -1;
    if (bq % 16 || bk % 16) {
        cli_error(command, "--block-size %s: each side must be a multiple of 16", text);
        return -1;
    }
    m->bq = (int32_t)bq, m->bk = (int32_t)bk;
    return 0;
}

cli_flag_result cli_block_mask_parse_flag(cli_block_mask_opts *m, int argc, char **argv, int *i, int with_patterns, const char *command) {
    const char *value;
    int r;
    if ((r = cli_flag_value(argc, argv, i, "--block-mask", &value, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        if (!value[0]) {
            cli_error(command, "--block-mask: empty path");
            return CLI_FLAG_ERROR;
        }
        m->file = value;
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--block-size", &value, command)) != 0) {
        if (r < 0 || parse_block_size(value, m, command)) return CLI_FLAG_ERROR;
        m->size_given = 1;
        return CLI_FLAG_CONSUMED;
    }
    if (!with_patterns) return CLI_FLAG_UNKNOWN;
    if ((r = cli_flag_value(argc, argv, i, "--block-sparse", &value, command)) != 0) {
        if (r < 0) return CLI_FLAG_ERROR;
        for (int p = 0; p < (int)(sizeof pattern_names / sizeof pattern_names[0]); p++)
            if (!strcmp(value, pattern_names[p])) m->pattern = p;
        if (m->pattern < 0) {
            cli_error(command, "--block-sparse '%s' is not one of random, blockbert, window", value);
            return CLI_FLAG_ERROR;
        }
        return CLI_FLAG_CONSUMED;
    }
    if ((r = cli_flag_value(argc, argv, i, "--density", &value, command)) != 0) {
        float d;
        if (r < 0 || cli_parse_float(value, &d, "--density", command)) return CLI_FLAG_ERROR;
        if (!(d > 0.0f && d <= 1.0f)) {
            cli_error(command, "--density %s: it must be in (0, 1]", value);
            return CLI_FLAG_ERROR;
        }
        m->density = d;
        m->density_given = 1;
        return CLI_FLAG_CONSUMED;
    }
    return CLI_FLAG_UNKNOWN;
}

int cli_block_mask_check(const cli_block_mask_opts *m, const char *command) {
    if (m->file && m->pattern >= 0) {
        cli_error(command, "--block-mask and --block-sparse exclude each other");
        return -1;
    }
    if (m->pattern >= 0 && !m->density_given) {
        cli_error(command, "--block-sparse %s needs --density X", pattern_names[m->pattern]);
        return -1;
    }
    if (m->pattern < 0 && m->density_given) {
        cli_error(command, "--density needs --block-sparse PATTERN");
        return -1;
    }
    if (!m->file && m->pattern < 0 && m->size_given) {
        cli_error(command, "--block-size needs --block-mask or --block-sparse");
        return -1;
    }
    return 0;
}

void cli_block_mask_print_help(FILE *f, int with_patterns) {
    fprintf(f, "  --block-mask M.npy  block-sparse attention: uint8/bool map [H, nq, nk] or [B, H, nq, nk],\n"
               "                      nq = ceil(Lq / BQ), nk = ceil(Lk / BK); 0 = the pair of blocks is skipped\n"
               "  --block-size BQ[,BK] query and key rows per mask block, multiples of 16 (default 64)\n");
    if (with_patterns)
        fprintf(f, "  --block-sparse P    a built-in map: random (exact density per row), blockbert (a band\n"
                   "                      permutation per head, 1/density bands), window (sliding window + one global block)\n"
                   "  --density X         fraction of block pairs computed, (0, 1] (with --block-sparse)\n");
}

const char *cli_block_pattern_name(int pattern) { return pattern >= 0 && pattern < 3 ? pattern_names[pattern] : "file"; }

/* ---------------------------------------------------------------- patterns */

static void build_random(uint8_t *row, int64_t nk, double density, cli_rng *rng, int64_t *idx) {
    int64_t want = (int64_t)llround(density * (double)nk);
    for (int64_t j = 0; j < nk; j++) idx[j] = j, row[j] = 0;
    for (int64_t j = 0; j < want; j++) { /* partial Fisher-Yates: the first `want` of a shuffle */
        int64_t pick = j + (int64_t)(cli_rng_next_u64(rng) % (uint64_t)(nk - j)), t = idx[j];
        idx[j] = idx[pick], idx[pick] = t;
        row[idx[j]] = 1;
    }
}

static void build_blockbert(uint8_t *row, int64_t qb, int64_t h, int64_t nq, int64_t nk, double density) {
    int64_t n = (int64_t)llround(1.0 / density);
    if (n < 1) n = 1;
    if (n > nq) n = nq;
    if (n > nk) n = nk;
    int64_t band = qb * n / nq, target = (band + h) % n;
    for (int64_t j = 0; j < nk; j++) row[j] = j * n / nk == target;
}

static void build_window(uint8_t *row, int64_t qb, int64_t nq, int64_t nk, double density) {
    int64_t w = (int64_t)llround((density * (double)nk - 2.0) / 2.0);
    if (w < 0) w = 0;
    int64_t diag = nq > 1 ? qb * (nk - 1) / (nq - 1) : nk - 1;
    for (int64_t j = 0; j < nk; j++) row[j] = qb == 0 || j == 0 || (j >= diag - w && j <= diag + w);
}

int cli_block_mask_build(int pattern, double density, int64_t heads, int64_t nq, int64_t nk, uint64_t seed, uint8_t *map) {
    cli_rng rng;
    cli_rng_seed(&rng, seed ^ 0xb10c5ba5e5ull);
    int64_t *idx = pattern == 0 ? malloc((size_t)nk * sizeof *idx) : NULL;
    if (pattern == 0 && !idx) return -1;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t qb = 0; qb < nq; qb++) {
            uint8_t *row = map + (h * nq + qb) * nk;
            if (pattern == 0) build_random(row, nk, density, &rng, idx);
            else if (pattern == 1) build_blockbert(row, qb, h, nq, nk, density);
            else build_window(row, qb, nq, nk, density);
        }
    free(idx);
    return 0;
}

/* ---------------------------------------------------------------- attach to params */

int cli_block_mask_attach(const cli_block_mask_opts *m, qattn_params *p, uint64_t seed, uint8_t **mem, const char *command) {
    *mem = NULL;
    if (!m->file && m->pattern < 0) return 0;
    int64_t nq = (p->seqlen_q + m->bq - 1) / m->bq, nk = (p->seqlen_k + m->bk - 1) / m->bk, H = p->n_heads;
    int64_t batches = 1;
    if (nq < 1) nq = 1;
    if (nk < 1) nk = 1;
    if (m->file) {
        cli_npy_array a;
        char err[CLI_NPY_ERR_LEN];
        if (cli_npy_read_u8(m->file, &a, err, sizeof err)) {
            cli_error(command, "%s: %s", m->file, err);
            return -1;
        }
        int ok = (a.ndim == 3 || a.ndim == 4) && a.shape[a.ndim - 3] == H && a.shape[a.ndim - 2] == nq && a.shape[a.ndim - 1] == nk &&
                 (a.ndim == 3 || a.shape[0] == p->batch);
        if (!ok) {
            cli_error(command, "%s: the mask must be [H, nq, nk] = [%lld, %lld, %lld] or [B, H, nq, nk] with B = %lld (blocks %d x %d: "
                               "nq = ceil(Lq / %d), nk = ceil(Lk / %d)); the file has %d dimensions",
                      m->file, (long long)H, (long long)nq, (long long)nk, (long long)p->batch, m->bq, m->bk, m->bq, m->bk, a.ndim);
            cli_npy_free(&a);
            return -1;
        }
        batches = a.ndim == 4 ? p->batch : 1;
        *mem = a.data; /* malloc'ed by the reader: cli_free (free) releases it */
        a.data = NULL;
    } else {
        *mem = cli_alloc((size_t)(H * nq * nk), "the block mask", command);
        if (!*mem) return -1;
        if (cli_block_mask_build(m->pattern, m->density, H, nq, nk, seed, *mem)) {
            cli_error(command, "out of memory building the block mask");
            cli_free(*mem);
            *mem = NULL;
            return -1;
        }
    }
    p->block_mask = *mem;
    p->block_mask_q = m->bq, p->block_mask_k = m->bk;
    p->block_mask_row_stride = nk, p->block_mask_head_stride = nq * nk, p->block_mask_batch_stride = batches > 1 ? H * nq * nk : 0;
    return 0;
}

int64_t cli_live_pairs(const qattn_params *p) {
    if (!p->block_mask) return cli_visible_pairs(p) * p->n_heads;
    int64_t lq = p->seqlen_q, lk = p->seqlen_k, bq = p->block_mask_q, bk = p->block_mask_k, pairs = 0;
    int32_t right = p->causal ? 0 : p->window_right;
    for (int64_t b = 0; b < p->batch; b++)
        for (int h = 0; h < p->n_heads; h++)
            for (int64_t i = 0; i < lq; i++) {
                int64_t diag = i + lk - lq;
                int64_t lo = p->window_left < 0 ? 0 : diag - p->window_left;
                int64_t hi = right < 0 ? lk : diag + right + 1;
                if (lo < 0) lo = 0;
                if (hi > lk) hi = lk;
                const uint8_t *row = p->block_mask + b * p->block_mask_batch_stride + h * p->block_mask_head_stride + i / bq * p->block_mask_row_stride;
                for (int64_t kb = lo / bk; kb * bk < hi; kb++) {
                    if (!row[kb]) continue;
                    int64_t a = kb * bk > lo ? kb * bk : lo, z = (kb + 1) * bk < hi ? (kb + 1) * bk : hi;
                    pairs += z - a;
                }
            }
    return pairs;
}
