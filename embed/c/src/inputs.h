#ifndef EDGEVAE_INPUTS_H
#define EDGEVAE_INPUTS_H
#include <stddef.h>

/* The largest image a tiled bundle decodes: 65,536 pixels a side, 2^26 pixels (8192 x 8192; 768 MiB of float32
   for three channels). */
#define MAX_INPUT_SIDE 65536
#define MAX_INPUT_PIXELS ((long long)1 << 26)

/* The images a bundle takes: channels (1 or 3), height and width. */
typedef struct {
    int channels, height, width;
} input_shape;

/* Decode a file's bytes into x (channels * height * width float32, CHW, in [0, 1]): raw little-endian float32 when
   raw_float, else a PGM/PPM file (P2, P3, P5, P6; see inputs.c). *file_channels receives the file's own channel
   count. Returns 1, or 0 with a message in err. No I/O: fuzzed by embed/c/fuzz/fuzz_input.c. */
int decode_input(const input_shape *shape, const unsigned char *data, size_t len, int raw_float, float *x,
                 int *file_channels, char *err, size_t err_len);

/* The width and height a PGM/PPM file's header gives (what a tiled bundle decodes it at); 1, or 0 with a message
   in err. */
int input_size(const unsigned char *data, size_t len, int *height, int *width, char *err, size_t err_len);

#endif
