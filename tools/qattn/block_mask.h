/* Block masks for the qattn CLI (tools/qattn/block_mask.c): the --block-mask / --block-size /
 * --block-sparse / --density flags, the built-in patterns and the live-pair count. */
#ifndef QATTN_CLI_BLOCK_MASK_H
#define QATTN_CLI_BLOCK_MASK_H

#include "cli.h"

typedef struct cli_block_mask_opts {
    const char *file;  /* --block-mask FILE.npy, or NULL */
    int pattern;       /* --block-sparse: 0 random, 1 blockbert, 2 window; -1 = none */
    double density;    /* --density X in (0, 1] */
    int density_given;
    int32_t bq, bk;    /* --block-size BQ[,BK] (default 64, 64) */
    int size_given;
} cli_block_mask_opts;

void cli_block_mask_opts_init(cli_block_mask_opts *m);

/* Offer argv[*i] to the block-mask flags (with_patterns: --block-sparse and --density too). */
cli_flag_result cli_block_mask_parse_flag(cli_block_mask_opts *m, int argc, char **argv, int *i, int with_patterns, const char *command);

/* The flags' consistency (a pattern needs a density, ...): 0, or -1 after printing why. */
int cli_block_mask_check(const cli_block_mask_opts *m, const char *command);

void cli_block_mask_print_help(FILE *f, int with_patterns);
const char *cli_block_pattern_name(int pattern); /* "random", ..., "file" for -1 */

/* Fill map, contiguous [heads, nq, nk], with pattern (0 random, 1 blockbert, 2 window) at about
 * density; random draws from seed. 0, or -1 when out of memory. */
int cli_block_mask_build(int pattern, double density, int64_t heads, int64_t nq, int64_t nk, uint64_t seed, uint8_t *map);

/* Give p (shapes set) the mask m asks for: read from the file (checked against p's shape) or built.
 * *mem holds the bytes (cli_free when done; NULL when m asks for none). 0, or -1 after printing. */
int cli_block_mask_attach(const cli_block_mask_opts *m, qattn_params *p, uint64_t seed, uint8_t **mem, const char *command);

/* (query, key) pairs computed under every mask of p (window/causal and block mask), summed over
 * the batch and the query heads. */
int64_t cli_live_pairs(const qattn_params *p);

#endif
