/* libFuzzer harness: the JSON reader the manifest goes through, then what readers do with a parsed value
   (member lookups along a path, the canonical form a signature covers). */
#include <stdint.h>
#include <stdlib.h>

#include "json.h"
#include "signature.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[128];
    json *value = json_parse((const char *)data, size, err, sizeof err);
    if (!value) return 0;
    const char *keys[] = {"scoring", "method_specs", "combined", "parts", NULL};
    (void)json_path(value, keys);
    size_t len = 0;
    free(canonical_json(value, &len));
    json_free(value);
    return 0;
}
