/* Strict .npy reader/writer for the qattn CLI (format described in npy.h and at
 * https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html).
 * Never trusts the file: every length is checked before it is used. */
#define _POSIX_C_SOURCE 200809L
#include "npy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
/* A header longer than this is not something numpy writes for an array of <= 8 dims;
 * refusing it bounds the allocation a hostile file can ask for. */
#define NPY_MAX_HEADER_LEN (1u << 20)

static int fail(char *err, size_t err_len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---------------------------------------------------------------- header dict parsing */

/* Text from the file is echoed in messages: keep it to printable ASCII so a hostile header
 * cannot break the one-line error (newlines) or the terminal (escape codes). */
static const char *printable(const char *in, char *out, size_t out_len) {
    size_t n = 0;
    for (; *in && n + 1 < out_len; in++) out[n++] = (*in >= 0x20 && *in < 0x7f) ? *in : '?';
    out[n] = '\0';
    return out;
}

/* A cursor over the header text. The grammar accepted is the Python literal numpy writes:
 *   { 'key': value, ... }   value := 'string' | True | False | ( int, ... )
 * with optional whitespace between tokens and an optional trailing comma. */
typedef struct cursor {
    const char *s;
    size_t len, pos;
} cursor;

static void skip_space(cursor *c) {
    while (c->pos < c->len && (c->s[c->pos] == ' ' || c->s[c->pos] == '\t' || c->s[c->pos] == '\n' || c->s[c->pos] == '\r'))
        c->pos++;
}

static int accept_char(cursor *c, char ch) {
    skip_space(c);
    if (c->pos < c->len && c->s[c->pos] == ch) {
        c->pos++;
        return 1;
    }
    return 0;
}

/* A quoted string ('...' or "...", no escapes: numpy's keys and dtypes need none). */
static int parse_string(cursor *c, char *buf, size_t buf_len) {
    skip_space(c);
    if (c->pos >= c->len || (c->s[c->pos] != '\'' && c->s[c->pos] != '"')) return -1;
    char quote = c->s[c->pos++];
    size_t n = 0;
    while (c->pos < c->len && c->s[c->pos] != quote) {
        if (c->s[c->pos] == '\\' || n + 1 >= buf_len) return -1;
        buf[n++] = c->s[c->pos++];
    }
    if (c->pos >= c->len) return -1;
    c->pos++; /* closing quote */
    buf[n] = '\0';
    return 0;
}

static int accept_word(cursor *c, const char *word) {
    skip_space(c);
    size_t n = strlen(word);
    if (c->len - c->pos >= n && !memcmp(c->s + c->pos, word, n)) {
        c->pos += n;
        return 1;
    }
    return 0;
}

/* A non-negative decimal integer that fits int64 (numpy may write "3L" on Python 2: accept L). */
static int parse_dim(cursor *c, int64_t *out) {
    skip_space(c);
    if (c->pos >= c->len || c->s[c->pos] < '0' || c->s[c->pos] > '9') return -1;
    int64_t v = 0;
    while (c->pos < c->len && c->s[c->pos] >= '0' && c->s[c->pos] <= '9') {
        int digit = c->s[c->pos++] - '0';
        if (v > (INT64_MAX - digit) / 10) return -2;
        v = v * 10 + digit;
    }
    if (c->pos < c->len && c->s[c->pos] == 'L') c->pos++;
    *out = v;
    return 0;
}

static int parse_shape(cursor *c, cli_npy_array *out, char *err, size_t err_len) {
    if (!accept_char(c, '(')) return fail(err, err_len, "header: 'shape' is not a tuple");
    out->ndim = 0;
    if (accept_char(c, ')')) return 0;
    for (;;) {
        int64_t dim;
        int r = parse_dim(c, &dim);
        if (r == -2) return fail(err, err_len, "header: a shape dimension overflows 64 bits");
        if (r < 0) return fail(err, err_len, "header: 'shape' holds something other than non-negative integers");
        if (out->ndim >= CLI_NPY_MAX_DIMS) return fail(err, err_len, "header: more than %d dimensions", CLI_NPY_MAX_DIMS);
        out->shape[out->ndim++] = dim;
        int comma = accept_char(c, ',');
        if (accept_char(c, ')')) return 0;
        if (!comma) return fail(err, err_len, "header: 'shape' tuple is malformed");
    }
}

static int parse_descr(const char *descr, cli_npy_array *out, char *err, size_t err_len) {
    if (!strcmp(descr, "<f4")) out->dtype = CLI_NPY_F32;
    else if (!strcmp(descr, "<f2")) out->dtype = CLI_NPY_F16;
    else if (!strcmp(descr, "|u1") || !strcmp(descr, "|b1")) out->dtype = CLI_NPY_U8; /* byte maps (a block mask) */
    else {
        char shown[64];
        return fail(err, err_len, "dtype '%s' is not supported (want little-endian float32 '<f4' or float16 '<f2', or uint8 '|u1' / bool '|b1' for a mask)",
                    printable(descr, shown, sizeof shown));
    }
    return 0;
}

int cli_npy_parse_header(const char *text, size_t len, cli_npy_array *out, char *err, size_t err_len) {
    cursor c = {text, len, 0};
    int have_descr = 0, have_order = 0, have_shape = 0;
    char key[32], descr[64], shown[32];
    if (!accept_char(&c, '{')) return fail(err, err_len, "header is not a dict");
    while (!accept_char(&c, '}')) {
        if (parse_string(&c, key, sizeof key)) return fail(err, err_len, "header: expected a quoted key");
        if (!accept_char(&c, ':')) return fail(err, err_len, "header: expected ':' after '%s'", printable(key, shown, sizeof shown));
        if (!strcmp(key, "descr")) {
            if (have_descr++) return fail(err, err_len, "header: 'descr' given twice");
            if (parse_string(&c, descr, sizeof descr)) return fail(err, err_len, "header: 'descr' is not a simple dtype string (structured dtype?)");
            if (parse_descr(descr, out, err, err_len)) return -1;
        } else if (!strcmp(key, "fortran_order")) {
            if (have_order++) return fail(err, err_len, "header: 'fortran_order' given twice");
            if (accept_word(&c, "True")) return fail(err, err_len, "Fortran-order arrays are not supported; save a C-order array (np.ascontiguousarray)");
            if (!accept_word(&c, "False")) return fail(err, err_len, "header: 'fortran_order' is not True or False");
        } else if (!strcmp(key, "shape")) {
            if (have_shape++) return fail(err, err_len, "header: 'shape' given twice");
            if (parse_shape(&c, out, err, err_len)) return -1;
        } else {
            return fail(err, err_len, "header: unexpected key '%s'", printable(key, shown, sizeof shown));
        }
        if (!accept_char(&c, ',')) {
            if (!accept_char(&c, '}')) return fail(err, err_len, "header: expected ',' or '}' after '%s'", printable(key, shown, sizeof shown));
            break;
        }
    }
    skip_space(&c); /* numpy pads with spaces and ends with '\n' */
    if (c.pos != c.len) return fail(err, err_len, "header: unexpected text after the dict");
    if (!have_descr || !have_order || !have_shape)
        return fail(err, err_len, "header: missing '%s'", !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    return 0;
}

/* ---------------------------------------------------------------- reading */

static uint32_t read_le(const unsigned char *b, int n) {
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* Element count and byte count of the array, refusing any overflow. */
static int data_size(cli_npy_array *a, size_t *bytes, char *err, size_t err_len) {
    int64_t count = 1;
    for (int d = 0; d < a->ndim; d++) {
        if (a->shape[d] != 0 && count > INT64_MAX / a->shape[d]) return fail(err, err_len, "the shape's element count overflows 64 bits");
        count *= a->shape[d];
    }
    size_t elem = a->dtype == CLI_NPY_F32 ? 4 : a->dtype == CLI_NPY_F16 ? 2 : 1;
    if ((uint64_t)count > SIZE_MAX / elem) return fail(err, err_len, "the data size overflows this machine's size_t");
    a->count = count;
    *bytes = (size_t)count * elem;
    return 0;
}

static int read_header(FILE *f, cli_npy_array *out, long long *header_end, char *err, size_t err_len) {
    unsigned char pre[12];
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return fail(err, err_len, "not a .npy file (bad magic)");
    int major = pre[6], minor = pre[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0)
        return fail(err, err_len, "unsupported .npy format version %d.%d (want 1.0, 2.0 or 3.0)", major, minor);
    int len_bytes = major == 1 ? 2 : 4;
    if (fread(pre + 8, 1, (size_t)len_bytes, f) != (size_t)len_bytes) return fail(err, err_len, "truncated .npy header");
    uint32_t header_len = read_le(pre + 8, len_bytes);
    if (header_len == 0 || header_len > NPY_MAX_HEADER_LEN)
        return fail(err, err_len, "header length %u is not plausible", (unsigned)header_len);
    char *text = malloc(header_len);
    if (!text) return fail(err, err_len, "out of memory reading the header");
    int rc = 0;
    if (fread(text, 1, header_len, f) != header_len) rc = fail(err, err_len, "truncated .npy header");
    else if (memchr(text, '\0', header_len)) rc = fail(err, err_len, "header contains a NUL byte");
    else rc = cli_npy_parse_header(text, header_len, out, err, err_len);
    free(text);
    *header_end = 8 + len_bytes + (long long)header_len;
    return rc;
}

/* Read a whole file whose dtype is byte maps (want_bytes) or floats (!want_bytes). */
static int read_npy(const char *path, cli_npy_array *out, int want_bytes, char *err, size_t err_len);

int cli_npy_read(const char *path, cli_npy_array *out, char *err, size_t err_len) { return read_npy(path, out, 0, err, err_len); }

int cli_npy_read_u8(const char *path, cli_npy_array *out, char *err, size_t err_len) { return read_npy(path, out, 1, err, err_len); }

static int read_npy(const char *path, cli_npy_array *out, int want_bytes, char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. The
     * type is checked on the descriptor itself (no race with a rename between stat and open). */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return fail(err, err_len, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail(err, err_len, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, err_len, "not a regular file (%s)", S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISDIR(st.st_mode) ? "a directory" : "a device or socket");
    }
    int flags = fcntl(fd, F_GETFL);
    FILE *f = flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0 ? NULL : fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return fail(err, err_len, "cannot open: %s", strerror(errno));
    }
    long long header_end = 0;
    size_t bytes = 0;
    if (read_header(f, out, &header_end, err, err_len) || data_size(out, &bytes, err, err_len)) {
        fclose(f);
        memset(out, 0, sizeof *out);
        return -1;
    }
    if ((out->dtype == CLI_NPY_U8) != (want_bytes != 0)) {
        fclose(f);
        memset(out, 0, sizeof *out);
        return fail(err, err_len, want_bytes ? "dtype is a float; a mask is uint8 '|u1' or bool '|b1'"
                                             : "dtype uint8/bool is not supported here (want little-endian float32 '<f4' or float16 '<f2')");
    }
    /* The file must hold exactly the header and the data. */
    long long file_size = (long long)st.st_size;
    long long have = file_size - header_end;
    if (have < 0 || (unsigned long long)have < (unsigned long long)bytes) {
        fclose(f);
        memset(out, 0, sizeof *out);
        return fail(err, err_len, "truncated: the header promises %zu data bytes, the file has %lld", bytes, have < 0 ? 0 : have);
    }
    if ((unsigned long long)have > (unsigned long long)bytes) {
        fclose(f);
        memset(out, 0, sizeof *out);
        return fail(err, err_len, "%lld unexpected bytes after the data (shape in the header is wrong?)", have - (long long)bytes);
    }
    out->data = malloc(bytes ? bytes : 1);
    if (!out->data) {
        fclose(f);
        memset(out, 0, sizeof *out);
        return fail(err, err_len, "out of memory for %zu data bytes", bytes);
    }
    if (fread(out->data, 1, bytes, f) != bytes) {
        fclose(f);
        cli_npy_free(out);
        return fail(err, err_len, "read error (file changed while reading?)");
    }
    fclose(f);
    /* The data is little-endian; this tool targets little-endian hosts only. */
    return 0;
}

void cli_npy_free(cli_npy_array *a) {
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------- writing */

/* The version 1.0 header: magic, version, length, dict padded with spaces so the data starts
 * at a multiple of 64 bytes (what numpy writes), ending in '\n'. Returns its total size. */
static size_t format_header(char *buf, size_t buf_len, int ndim, const int64_t *shape) {
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int d = 0; d < ndim; d++) n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)shape[d], d + 1 < ndim ? " " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    size_t total = 10 + (size_t)n + 1;
    total = (total + 63) / 64 * 64;
    if (total > buf_len) return 0;
    size_t header_len = total - 10;
    memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (char)(header_len & 0xff);
    buf[9] = (char)(header_len >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', header_len - (size_t)n - 1);
    buf[total - 1] = '\n';
    return total;
}

int cli_npy_write_f32_temp(const char *path, const float *data, int ndim, const int64_t *shape, char **tmp_path, char *err,
                           size_t err_len) {
    *tmp_path = NULL;
    if (ndim < 0 || ndim > CLI_NPY_MAX_DIMS) return fail(err, err_len, "cannot write %d dimensions", ndim);
    size_t count = 1;
    for (int d = 0; d < ndim; d++) count *= (size_t)shape[d];
    char header[1024];
    size_t header_size = format_header(header, sizeof header, ndim, shape);
    if (!header_size) return fail(err, err_len, "header too long");

    size_t path_len = strlen(path);
    char *tmp = malloc(path_len + 16);
    if (!tmp) return fail(err, err_len, "out of memory");
    /* Same folder as the target, so rename() is atomic and never crosses file systems. */
    snprintf(tmp, path_len + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return fail(err, err_len, "cannot create a file next to it: %s", strerror(e));
    }
    FILE *f = fdopen(fd, "wb");
    int ok = f != NULL;
    if (ok) ok = fwrite(header, 1, header_size, f) == header_size;
    if (ok) ok = fwrite(data, sizeof *data, count, f) == count;
    if (f) ok = (fclose(f) == 0) && ok;
    else close(fd);
    if (ok) {
        /* mkstemp makes the file 0600; give it the usual permissions of a new file. */
        mode_t mask = umask(0);
        umask(mask);
        ok = chmod(tmp, 0666 & ~mask) == 0;
    }
    if (!ok) {
        int e = errno;
        remove(tmp);
        free(tmp);
        return fail(err, err_len, "write failed: %s", strerror(e));
    }
    *tmp_path = tmp;
    return 0;
}
