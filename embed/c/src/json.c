/* A small recursive-descent JSON reader (RFC 8259), written for edgevae's C scorer. */
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *p, *end;
    char *err;
    size_t err_len;
    int depth;
} reader;

static json *value(reader *r);

static void fail(reader *r, const char *what) {
    if (r->err[0] == '\0') snprintf(r->err, r->err_len, "%s", what);
}

static void skip_space(reader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

static json *node(json_type type) {
    json *v = calloc(1, sizeof(json));
    if (v) v->type = type;
    return v;
}

static int hex4(reader *r, unsigned *out) {
    if (r->end - r->p < 4) return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = *r->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *out, unsigned cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Reads a string after its opening quote; the result is at most as long as the source text. */
static char *string(reader *r) {
    const char *start = r->p;
    char *out = malloc((size_t)(r->end - start) + 1);
    size_t n = 0;
    if (!out) { fail(r, "out of memory"); return NULL; }
    while (r->p < r->end && *r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        if (c < 0x20) { fail(r, "control character in a string"); free(out); return NULL; }
        if (c != '\\') { out[n++] = (char)c; continue; }
        if (r->p >= r->end) break;
        char e = *r->p++;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (simple && e != '\0') { out[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"]; continue; }
        unsigned cp, lo;
        if (e != 'u' || !hex4(r, &cp)) { fail(r, "bad escape in a string"); free(out); return NULL; }
        if (cp >= 0xD800 && cp < 0xDC00 && r->end - r->p >= 6 && r->p[0] == '\\' && r->p[1] == 'u') {
            r->p += 2;
            if (!hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF) { fail(r, "bad surrogate pair"); free(out); return NULL; }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        n += put_utf8(out + n, cp);
    }
    if (r->p >= r->end) { fail(r, "unterminated string"); free(out); return NULL; }
    r->p++; /* closing quote */
    out[n] = '\0';
    return out;
}

static json *container(reader *r, char close) {
    json *v = node(close == ']' ? JSON_ARRAY : JSON_OBJECT), *last = NULL;
    if (!v) { fail(r, "out of memory"); return NULL; }
    if (++r->depth > 64) { fail(r, "nested too deeply"); return v; }
    skip_space(r);
    if (r->p < r->end && *r->p == close) { r->p++; r->depth--; return v; }
    for (;;) {
        char *key = NULL;
        skip_space(r);
        if (close == '}') {
            if (r->p >= r->end || *r->p != '"') { fail(r, "expected a member name"); return v; }
            r->p++;
            if (!(key = string(r))) return v;
            skip_space(r);
            if (r->p >= r->end || *r->p != ':') { free(key); fail(r, "expected ':'"); return v; }
            r->p++;
        }
        json *item = value(r);
        if (!item) { free(key); return v; }
        item->key = key;
        if (last) last->next = item; else v->child = item;
        last = item;
        v->count++;
        skip_space(r);
        if (r->p < r->end && *r->p == ',') { r->p++; continue; }
        if (r->p < r->end && *r->p == close) { r->p++; r->depth--; return v; }
        fail(r, close == ']' ? "expected ',' or ']'" : "expected ',' or '}'");
        return v;
    }
}

static int literal(reader *r, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0) return 0;
    r->p += n;
    return 1;
}

static json *value(reader *r) {
    skip_space(r);
    if (r->p >= r->end) { fail(r, "unexpected end of text"); return NULL; }
    char c = *r->p;
    json *v = NULL;
    if (c == '{' || c == '[') { r->p++; v = container(r, c == '{' ? '}' : ']'); }
    else if (c == '"') {
        r->p++;
        char *s = string(r);
        if (s && (v = node(JSON_STRING))) v->string = s; else free(s);
    } else if (literal(r, "true")) { if ((v = node(JSON_BOOL))) v->number = 1; }
    else if (literal(r, "false")) v = node(JSON_BOOL);
    else if (literal(r, "null")) v = node(JSON_NULL);
    else {
        char buf[64];
        size_t n = 0;
        while (r->p + n < r->end && n < sizeof buf - 1 && strchr("+-0123456789.eE", r->p[n])) n++;
        memcpy(buf, r->p, n);
        buf[n] = '\0';
        char *stop;
        double d = strtod(buf, &stop);
        if (n == 0 || stop != buf + n) { fail(r, "bad number or unexpected character"); return NULL; }
        if (!isfinite(d)) { fail(r, "number out of range"); return NULL; } /* 1e999: no JSON reader agrees on it */
        r->p += n;
        if ((v = node(JSON_NUMBER))) v->number = d;
    }
    if (!v) fail(r, "out of memory");
    return v;
}

json *json_parse(const char *text, size_t len, char *err, size_t err_len) {
    reader r = {text, text + len, err, err_len, 0};
    err[0] = '\0';
    json *v = value(&r);
    skip_space(&r);
    if (v && r.err[0] == '\0' && r.p != r.end) fail(&r, "text after the JSON value");
    if (r.err[0] != '\0') { json_free(v); return NULL; }
    return v;
}

void json_free(json *v) {
    while (v) {
        json *next = v->next;
        json_free(v->child);
        free(v->string);
        free(v->key);
        free(v);
        v = next;
    }
}

const json *json_get(const json *object, const char *key) {
    if (!object || object->type != JSON_OBJECT) return NULL;
    for (const json *m = object->child; m; m = m->next)
        if (strcmp(m->key, key) == 0) return m;
    return NULL;
}

const json *json_path(const json *root, const char *const *keys) {
    for (; root && *keys; keys++) root = json_get(root, *keys);
    return root;
}
