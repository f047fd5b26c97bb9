/* A small, strict reader and writer of NumPy .npy files for the qattn CLI.
 * Reads format versions 1.0, 2.0 and 3.0, C order, little-endian float32 ('<f4') or
 * float16 ('<f2') (and, through cli_npy_read_u8 only, uint8 / bool byte maps), up to CLI_NPY_MAX_DIMS dimensions. Everything is validated: magic, version,
 * header length, the header dict (exactly the keys descr, fortran_order, shape), sizes
 * (overflow), and the file length, which must be exactly header + data: a truncated file
 * and trailing bytes are both errors, since either means the file is not what its header says.
 * Writes version 1.0 float32 files to temporary files that the caller renames once every output
 * is written, so a failed run never leaves a partial output nor touches an existing one. Errors are one line (no path, no newline) in err. */
#ifndef QATTN_CLI_NPY_H
#define QATTN_CLI_NPY_H

#include <stddef.h>
#include <stdint.h>

#define CLI_NPY_MAX_DIMS 8
#define CLI_NPY_ERR_LEN 256

typedef enum cli_npy_dtype { CLI_NPY_F32 = 0, CLI_NPY_F16 = 1, CLI_NPY_U8 = 2 } cli_npy_dtype;

typedef struct cli_npy_array {
    cli_npy_dtype dtype;
    int ndim;
    int64_t shape[CLI_NPY_MAX_DIMS];
    int64_t count; /* product of shape (1 for ndim 0) */
    void *data;    /* count elements of dtype, malloc'ed; free with cli_npy_free */
} cli_npy_array;

/* Parse the header dict text (between the length field and the data; its trailing spaces and
 * newline included) into dtype, ndim and shape. 0 on success, -1 with err filled. */
int cli_npy_parse_header(const char *text, size_t len, cli_npy_array *out, char *err, size_t err_len);

/* Read a whole .npy file. 0 on success, -1 with err filled (and *out empty). */
int cli_npy_read(const char *path, cli_npy_array *out, char *err, size_t err_len);

/* The same for a byte map (a block mask): uint8 '|u1' or bool '|b1' (cli_npy_read refuses those,
 * this refuses floats); dtype CLI_NPY_U8. */
int cli_npy_read_u8(const char *path, cli_npy_array *out, char *err, size_t err_len);

void cli_npy_free(cli_npy_array *a);

/* Write float32 data of the given shape to a new temporary file next to path (same folder, so a
 * rename() to path is atomic). 0 on success with *tmp_path (malloc'ed) naming it: the caller
 * renames or removes it, then frees the name. -1 with err filled and nothing left behind. */
int cli_npy_write_f32_temp(const char *path, const float *data, int ndim, const int64_t *shape, char **tmp_path, char *err,
                           size_t err_len);

#endif /* QATTN_CLI_NPY_H */
