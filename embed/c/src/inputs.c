/*
 * Decoding an input file's bytes into the model's float32 CHW array, without I/O, so that it can be fuzzed on its
 * own (embed/c/fuzz). Netpbm files are read as Pillow reads them (PIL/PpmImagePlugin.py): binary P5/P6 and plain
 * P2/P3, '#' comments anywhere in the header (to the end of the line), tokens of at most 10 characters, one
 * whitespace byte after maxval before binary samples, samples of maxval other than 255 rescaled to 8 bits with
 * round-half-to-even (Python's round) of v / maxval * 255. 16-bit files (maxval > 255, two big-endian bytes a
 * binary sample) as the Python runtime reads them: colour samples round(v / maxval * 255); grey ones Pillow's mode
 * I (v itself at maxval 65535, else round(v / maxval * 65535)), which the runtime brings to 8 bits with
 * round-half-to-even(v / 65535 * 255) when any value of the image is above 255, and leaves as they are otherwise.
 * Raw float32 (.f32/.raw): C*H*W little-endian values in [0, 1], channel-major.
 */
#include "inputs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKEN 10

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* Pillow's _read_token: skip whitespace, '#' skips to the end of the line (also inside a token), a token ends at
   whitespace (which is consumed). Returns the token's length (0: end of data), -1 when longer than MAX_TOKEN. */
static int read_token(const unsigned char *data, size_t len, size_t *pos, char *token) {
    int n = 0;
    while (*pos < len) {
        unsigned char c = data[(*pos)++];
        if (is_space(c)) {
            if (n == 0) continue;
            break;
        }
        if (c == '#') {
            while (*pos < len && data[*pos] != '\r' && data[*pos] != '\n') (*pos)++;
            if (*pos < len) (*pos)++;
            continue;
        }
        if (n == MAX_TOKEN) return -1;
        token[n++] = (char)c;
    }
    token[n] = '\0';
    return n;
}

/* A token of decimal digits as a number (at most 10 digits: no overflow); -1 when it is not one. */
static long long token_number(const char *token) {
    long long v = 0;
    if (!*token) return -1;
    for (const char *p = token; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

/* v / maxval * top rounded half to even (Python's round), at most top. */
static long long rescale_to(long long v, long long maxval, long long top) {
    if (maxval == top) return v > top ? top : v;
    double r = nearbyint((double)v / (double)maxval * (double)top); /* the default rounding mode: ties to even */
    return r > (double)top ? top : (long long)r;
}

/* The file's 8-bit samples (bands per pixel) into the model's channels: Pillow's convert("L") of RGB (ITU-R 601-2
   luma in 16-bit fixed point), or a grey sample repeated for an RGB model. */
static void store(const input_shape *shape, float *x, size_t i, const unsigned char *s, int bands) {
    size_t pixels = (size_t)shape->height * (size_t)shape->width;
    unsigned r = s[0], g = s[bands == 3 ? 1 : 0], b = s[bands == 3 ? 2 : 0];
    if (shape->channels == 1) x[i] = (float)((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) / 255.0f;
    else { x[i] = (float)r / 255.0f; x[pixels + i] = (float)g / 255.0f; x[2 * pixels + i] = (float)b / 255.0f; }
}

static int fail(char *err, size_t err_len, const char *message) {
    snprintf(err, err_len, "%s", message);
    return 0;
}

/* The header: magic, width, height, maxval. Returns the kind (2, 3, 5 or 6) or 0 with a message. */
static int read_header(const unsigned char *data, size_t len, size_t *pos, long long *w, long long *h,
                       long long *maxval, char *err, size_t err_len) {
    char token[MAX_TOKEN + 1];
    if (len < 3 || data[0] != 'P' || data[1] < '2' || data[1] > '6' || data[1] == '4' || !is_space(data[2])) {
        fail(err, err_len, "not a PGM or PPM file (P2, P3, P5 or P6)");
        return 0;
    }
    int kind = data[1] - '0';
    long long *fields[3] = {w, h, maxval};
    *pos = 3;
    for (int f = 0; f < 3; f++) {
        int n = read_token(data, len, pos, token);
        if (n == 0) { fail(err, err_len, "the header ends before its width, height and maxval"); return 0; }
        if (n < 0 || (*fields[f] = token_number(token)) < 0) {
            fail(err, err_len, "the header holds something other than a whole number");
            return 0;
        }
    }
    if (*maxval < 1 || *maxval > 65535) { fail(err, err_len, "maxval must be in 1..65535"); return 0; }
    return kind;
}

int decode_input(const input_shape *shape, const unsigned char *data, size_t len, int raw_float, float *x,
                 int *file_channels, char *err, size_t err_len) {
    size_t pixels = (size_t)shape->height * (size_t)shape->width, count = pixels * (size_t)shape->channels;
    *file_channels = shape->channels;
    if (raw_float) {
        if (len != count * sizeof(float)) {
            snprintf(err, err_len, "%zu bytes, expected %zu float32 values (%dx%dx%d)", len, count, shape->channels,
                     shape->height, shape->width);
            return 0;
        }
        memcpy(x, data, len);
        for (size_t i = 0; i < count; i++)
            if (!(x[i] >= 0.0f && x[i] <= 1.0f)) { snprintf(err, err_len, "value %g outside [0, 1]", x[i]); return 0; }
        return 1;
    }
    size_t pos = 0;
    long long w = 0, h = 0, maxval = 0;
    int kind = read_header(data, len, &pos, &w, &h, &maxval, err, err_len);
    if (!kind) return 0;
    int bands = (kind == 3 || kind == 6) ? 3 : 1;
    *file_channels = bands;
    if (w != shape->width || h != shape->height) {
        snprintf(err, err_len, "%lldx%lld, but the bundle takes %dx%d images (resize before scoring)", w, h, shape->width,
                 shape->height);
        return 0;
    }
    size_t n = pixels * (size_t)bands, width = maxval > 255 ? 2 : 1; /* bytes a binary sample */
    if (kind >= 5 && len - pos < n * width) {
        snprintf(err, err_len, "truncated (the header is not followed by %zu bytes of samples)", n * width);
        return 0;
    }
    if (kind < 5 && len - pos < n) /* a plain sample takes a byte at least: refused before allocating for them */
        return fail(err, err_len, "truncated (fewer samples than width x height)");
    int wide_grey = maxval > 255 && bands == 1; /* Pillow's mode I: 16-bit values, brought to 8 bits below */
    long long *values = malloc(n * sizeof(long long));
    if (!values) return fail(err, err_len, "out of memory");
    long long top = 0;
    char token[MAX_TOKEN + 1];
    for (size_t i = 0; i < n; i++) {
        long long v;
        if (kind >= 5) v = width == 2 ? (long long)data[pos + 2 * i] << 8 | data[pos + 2 * i + 1] : data[pos + i];
        else { /* plain: whitespace-separated decimal samples, comments allowed */
            int got = read_token(data, len, &pos, token);
            v = got > 0 ? token_number(token) : -1;
            const char *why = got == 0 ? "truncated (fewer samples than width x height)"
                            : v < 0 ? "a sample that is not a whole number" : v > maxval ? "a sample above maxval" : NULL;
            if (why) { free(values); return fail(err, err_len, why); }
        }
        if (!wide_grey) values[i] = rescale_to(v, maxval, 255);
        else values[i] = kind == 5 && maxval == 65535 ? v : rescale_to(v, maxval, 65535);
        if (values[i] > top) top = values[i];
    }
    unsigned char s[3];
    for (size_t i = 0; i < pixels; i++) {
        for (int c = 0; c < bands; c++) {
            long long v = values[i * (size_t)bands + (size_t)c];
            if (wide_grey) v = top > 255 ? (long long)nearbyint((double)v / 65535.0 * 255.0) : (v > 255 ? 255 : v);
            s[c] = (unsigned char)v;
        }
        store(shape, x, i, s, bands);
    }
    free(values);
    return 1;
}

int input_size(const unsigned char *data, size_t len, int *height, int *width, char *err, size_t err_len) {
    size_t pos = 0;
    long long w = 0, h = 0, maxval = 0;
    if (!read_header(data, len, &pos, &w, &h, &maxval, err, err_len)) return 0;
    if (w < 1 || h < 1 || w > MAX_INPUT_SIDE || h > MAX_INPUT_SIDE || w * h > MAX_INPUT_PIXELS) {
        snprintf(err, err_len, "%lldx%lld: an image must be 1..%d pixels a side and at most %lld pixels", w, h,
                 MAX_INPUT_SIDE, (long long)MAX_INPUT_PIXELS);
        return 0;
    }
    *height = (int)h;
    *width = (int)w;
    return 1;
}
