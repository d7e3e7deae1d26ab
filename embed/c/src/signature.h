#ifndef EDGEVAE_SIGNATURE_H
#define EDGEVAE_SIGNATURE_H
#include <stddef.h>

#include "json.h"

/* A trusted Ed25519 public key: its raw bytes and its fingerprint ("sha256:" + 32 hex digits). */
typedef struct {
    unsigned char raw[32];
    char fingerprint[48];
} trusted_key;

/* Reads a PEM public key file (edgevae keygen's KEY.pub). 0 with a message in err when it is not one. */
int load_trusted_key(const char *path, trusted_key *key, char *err, size_t err_len);
/* The value in RFC 8785 canonical JSON (malloc'ed, *len bytes, NUL-terminated), or NULL when out of memory. */
char *canonical_json(const json *value, size_t *len);
/* Checks edgevae.sig (sig_text, NULL when the bundle has none) over the manifest against the trusted keys.
   1 when one of them signed exactly this manifest; else 0 with the reason (unsigned, another key, altered). */
int verify_signature(const json *manifest, const char *sig_text, size_t sig_len, const trusted_key *keys, int n_keys,
                     char *err, size_t err_len);

#endif
