/* libFuzzer harness: a signature file (edgevae.sig) checked against a fixed manifest and a fixed trusted key. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "signature.h"

static const char MANIFEST[] = "{\"format\": \"edgevae-bundle\", \"schema_version\": 1, \"files\": {\"encoder.onnx\": "
                               "{\"sha256\": \"00\", \"bytes\": 1}}, \"latent_dim\": 4}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static json *manifest = NULL;
    static trusted_key key;
    char err[1024];
    if (!manifest) {
        manifest = json_parse(MANIFEST, sizeof MANIFEST - 1, err, sizeof err);
        memset(key.raw, 7, sizeof key.raw);
        strcpy(key.fingerprint, "sha256:0123456789abcdef0123456789abcdef");
    }
    char *text = malloc(size + 1); /* the program hands the file over NUL-terminated */
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    verify_signature(manifest, text, size, &key, 1, err, sizeof err);
    free(text);
    return 0;
}
