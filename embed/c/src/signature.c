/* Signed bundles (docs/bundle-format.md): the manifest in RFC 8785 canonical JSON, checked against an Ed25519
   signature from a trusted key with OpenSSL's libcrypto. */
#include "signature.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "sha256.h"

#define PAYLOAD_PREFIX "edgevae-bundle-signature-v1\n"

typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} buffer;

static void put(buffer *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 4096) + n;
        char *grown = realloc(b->data, cap);
        if (!grown) { b->failed = 1; return; }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void puts_(buffer *b, const char *s) { put(b, s, strlen(s)); }

/* A double as ECMAScript's Number.prototype.toString prints it: the shortest digits that round-trip, placed by
   the ECMAScript rules (fixed notation for 1e-7 <= |x| < 1e21, else d.ddde+N). */
/* The shortest decimal digits that read back as |x| (as ECMAScript and Python's repr choose them): for each
   precision p, printf's correctly rounded p digits m, or the neighbour m +- 1 when m itself does not round-trip
   (x = 2^-24 prints 5.960464477539062e-08, which reads back as another double; 5.960464477539063e-08 does not).
   Sets digits (no trailing zeros) and n with |x| = 0.digits * 10^n. */
static void shortest_digits(double ax, char digits[24], int *n) {
    for (int p = 1; p <= 17; p++) {
        char text[40], candidate[48];
        snprintf(text, sizeof text, "%.*e", p - 1, ax);
        unsigned long long m = 0;
        for (const char *c = text; *c != 'e'; c++) if (*c != '.') m = m * 10 + (unsigned long long)(*c - '0');
        int scale = atoi(strchr(text, 'e') + 1) - (p - 1); /* |x| ~ m * 10^scale */
        unsigned long long tries[3] = {m, m + 1, m - 1};
        for (int t = 0; t < 3; t++) {
            if (tries[t] == 0) continue;
            snprintf(candidate, sizeof candidate, "%llue%d", tries[t], scale);
            if (strtod(candidate, NULL) != ax && p < 17) continue;
            int k = snprintf(digits, 24, "%llu", tries[t]);
            *n = k + scale;
            while (k > 1 && digits[k - 1] == '0') digits[--k] = '\0';
            return;
        }
    }
}

/* A double as ECMAScript's Number.prototype.toString prints it: the shortest digits, placed by the ECMAScript
   rules (fixed notation for 1e-7 <= |x| < 1e21, else d.ddde+N). */
static void put_number(buffer *b, double x) {
    char digits[24] = "0", out[64];
    int n = 1, at;
    if (x == 0) { puts_(b, "0"); return; }
    if (!isfinite(x)) { puts_(b, "null"); return; } /* unreachable from json_parse, which refuses them */
    shortest_digits(fabs(x), digits, &n);
    int k = (int)strlen(digits);
    if (k <= n && n <= 21) { /* the digits, then n - k zeros */
        at = snprintf(out, sizeof out, "%s", digits);
        while (at < n) out[at++] = '0';
        out[at] = '\0';
    } else if (0 < n && n <= 21) {
        snprintf(out, sizeof out, "%.*s.%s", n, digits, digits + n);
    } else if (-6 < n && n <= 0) { /* "0.", -n zeros, the digits */
        at = snprintf(out, sizeof out, "0.");
        for (int z = 0; z < -n; z++) out[at++] = '0';
        snprintf(out + at, sizeof out - (size_t)at, "%s", digits);
    } else {
        snprintf(out, sizeof out, "%c%s%se%c%d", digits[0], k > 1 ? "." : "", digits + 1, n - 1 >= 0 ? '+' : '-',
                 abs(n - 1));
    }
    if (x < 0) puts_(b, "-");
    puts_(b, out);
}

static void put_string(buffer *b, const char *s) {
    puts_(b, "\"");
    for (; *s; s++) {
        char esc[8];
        switch (*s) {
        case '"': puts_(b, "\\\""); break;
        case '\\': puts_(b, "\\\\"); break;
        case '\b': puts_(b, "\\b"); break;
        case '\f': puts_(b, "\\f"); break;
        case '\n': puts_(b, "\\n"); break;
        case '\r': puts_(b, "\\r"); break;
        case '\t': puts_(b, "\\t"); break;
        default:
            if ((unsigned char)*s < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)*s); puts_(b, esc); }
            else put(b, s, 1);
        }
    }
    puts_(b, "\"");
}

static int by_key(const void *a, const void *b) {
    return strcmp((*(const json *const *)a)->key, (*(const json *const *)b)->key);
}

/* Object keys sort by UTF-16 code units in RFC 8785; byte order of UTF-8 equals it for the ASCII keys of a manifest. */
static void put_canonical(buffer *b, const json *v) {
    if (v->type == JSON_NULL) puts_(b, "null");
    else if (v->type == JSON_BOOL) puts_(b, v->number ? "true" : "false");
    else if (v->type == JSON_NUMBER) put_number(b, v->number);
    else if (v->type == JSON_STRING) put_string(b, v->string);
    else if (v->type == JSON_ARRAY) {
        puts_(b, "[");
        for (const json *c = v->child; c; c = c->next) { put_canonical(b, c); if (c->next) puts_(b, ","); }
        puts_(b, "]");
    } else {
        const json **members = malloc(sizeof(json *) * (v->count ? v->count : 1));
        size_t n = 0;
        if (!members) { b->failed = 1; return; }
        for (const json *c = v->child; c; c = c->next) members[n++] = c;
        qsort(members, n, sizeof(json *), by_key);
        puts_(b, "{");
        for (size_t i = 0; i < n; i++) {
            put_string(b, members[i]->key);
            puts_(b, ":");
            put_canonical(b, members[i]);
            if (i + 1 < n) puts_(b, ",");
        }
        puts_(b, "}");
        free(members);
    }
}

char *canonical_json(const json *value, size_t *len) {
    buffer b = {NULL, 0, 0, 0};
    put_canonical(&b, value);
    if (b.failed) { free(b.data); return NULL; }
    *len = b.len;
    return b.data;
}

static void fingerprint_of(const unsigned char raw[32], char out[48]) {
    char hex[65];
    sha256_hex(raw, 32, hex);
    snprintf(out, 48, "sha256:%.32s", hex);
}

int load_trusted_key(const char *path, trusted_key *key, char *err, size_t err_len) {
    FILE *f = fopen(path, "r");
    if (!f) { snprintf(err, err_len, "%s: cannot read the key file", path); return 0; }
    EVP_PKEY *pkey = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    size_t raw_len = sizeof key->raw;
    int ok = pkey && EVP_PKEY_id(pkey) == EVP_PKEY_ED25519 && EVP_PKEY_get_raw_public_key(pkey, key->raw, &raw_len) == 1 &&
             raw_len == 32;
    EVP_PKEY_free(pkey);
    if (!ok) { snprintf(err, err_len, "%s: not an Ed25519 public key (PEM, 'edgevae keygen')", path); return 0; }
    fingerprint_of(key->raw, key->fingerprint);
    return 1;
}

static int verify_ed25519(const unsigned char raw[32], const unsigned char *sig, const unsigned char *msg, size_t len) {
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = pkey && ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey) == 1 &&
             EVP_DigestVerify(ctx, sig, 64, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return ok;
}

int verify_signature(const json *manifest, const char *sig_text, size_t sig_len, const trusted_key *keys, int n_keys,
                     char *err, size_t err_len) {
    char perr[128], trusted[512] = "";
    for (int i = 0; i < n_keys; i++)
        snprintf(trusted + strlen(trusted), sizeof trusted - strlen(trusted), "%s%s", i ? ", " : "", keys[i].fingerprint);
    if (!sig_text) {
        snprintf(err, err_len, "the bundle is not signed, and only bundles signed by a trusted key may load (trusted: %s)",
                 trusted);
        return 0;
    }
    json *sig = json_parse(sig_text, sig_len, perr, sizeof perr);
    const json *who = json_get(sig, "key_fingerprint"), *value = json_get(sig, "signature");
    unsigned char decoded[128];
    int n = value && value->type == JSON_STRING && strlen(value->string) == 88
                ? EVP_DecodeBlock(decoded, (const unsigned char *)value->string, 88) : -1;
    int ok = 0, index = -1;
    if (!who || who->type != JSON_STRING || n < 64) {
        snprintf(err, err_len, "the signature file is damaged or truncated; re-sign the bundle with 'edgevae sign'");
        goto done;
    }
    for (int i = 0; i < n_keys; i++) if (strcmp(keys[i].fingerprint, who->string) == 0) index = i;
    if (index < 0) {
        snprintf(err, err_len, "signed by %s, which is not a trusted key (trusted: %s); refusing to load it", who->string,
                 trusted);
        goto done;
    }
    size_t len, prefix = strlen(PAYLOAD_PREFIX);
    char *canonical = canonical_json(manifest, &len);
    unsigned char *payload = canonical ? malloc(prefix + len) : NULL;
    if (payload) {
        memcpy(payload, PAYLOAD_PREFIX, prefix);
        memcpy(payload + prefix, canonical, len);
        ok = verify_ed25519(keys[index].raw, decoded, payload, prefix + len);
    }
    if (!ok) snprintf(err, err_len, "the signature by %s does not match the manifest: the bundle was altered after it "
                      "was signed. Refusing to load it", who->string);
    free(canonical);
    free(payload);
done:
    json_free(sig);
    return ok;
}
