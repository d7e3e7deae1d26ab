/* libFuzzer harness: the input decoder (PGM/PPM in all the variants it reads, raw float32) on arbitrary bytes.
   The first byte picks the model's shape and whether the bytes are raw float32; the rest is the file. */
#include <stdint.h>
#include <stdlib.h>

#include "inputs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const input_shape shapes[4] = {{1, 28, 28}, {3, 28, 28}, {1, 2, 3}, {3, 1, 1}};
    if (size < 1) return 0;
    const input_shape *shape = &shapes[data[0] & 3];
    int raw = (data[0] >> 2) & 1, channels = 0;
    float *x = malloc(sizeof(float) * (size_t)shape->channels * (size_t)shape->height * (size_t)shape->width);
    char err[256];
    if (x) decode_input(shape, data + 1, size - 1, raw, x, &channels, err, sizeof err);
    free(x);
    return 0;
}
