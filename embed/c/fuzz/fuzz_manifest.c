/* libFuzzer harness: the manifest as edgevae-score reads it (src/manifest.c) — the input contract, each method's
   entry (scoring.method_specs, or the fields older bundles carry), its parts, its calibration and tail, the map
   entry — then the p-value rule on the calibrations it accepted, at ordinary and extreme scores. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "manifest.h"

static const char *const METHODS[] = {NULL, "kl", "elbo", "too_likely", "recon", "rel_recon", "smooth_recon", "iwae",
                                      "local", "defect", "combined"};
static const double SCORES[] = {-INFINITY, -1e308, -1.0, 0.0, 0.5, 3.0, 1e308, INFINITY, NAN};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char perr[128], err[MSG];
    json *manifest = json_parse((const char *)data, size, perr, sizeof perr);
    if (!manifest) return 0;
    for (size_t i = 0; i < sizeof METHODS / sizeof METHODS[0]; i++) {
        scoring s;
        memset(&s, 0, sizeof s);
        if (read_scoring(manifest, METHODS[i], &s, err)) {
            for (size_t k = 0; k < sizeof SCORES / sizeof SCORES[0]; k++) {
                volatile double p = p_value(&s.cal, SCORES[k]);
                for (int j = 0; strcmp(s.spec.kind, "combination") == 0 && j < s.spec.n_parts; j++)
                    p += log_p_value(&s.part_ref[j], SCORES[k]);
                (void)p;
            }
        }
        free_scoring(&s);
    }
    json_free(manifest);
    return 0;
}
