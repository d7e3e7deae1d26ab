#ifndef EDGEVAE_JSON_H
#define EDGEVAE_JSON_H
#include <stddef.h>

/* A small JSON reader for edgevae.json: a tree of values; objects keep their members in order. */
typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json {
    json_type type;
    double number;          /* JSON_NUMBER; JSON_BOOL: 0 or 1 */
    char *string;           /* JSON_STRING (UTF-8, NUL-terminated) */
    char *key;              /* the member name when inside an object */
    struct json *child;     /* first element or member */
    struct json *next;      /* next sibling */
    size_t count;           /* number of children */
} json;

/* Parse text (len bytes); NULL on error, with a message in err (err_len bytes). Free with json_free. */
json *json_parse(const char *text, size_t len, char *err, size_t err_len);
void json_free(json *value);
/* Member of an object by name, or NULL. */
const json *json_get(const json *object, const char *key);
/* Follow a path of member names (NULL-terminated list); NULL when any step is missing. */
const json *json_path(const json *root, const char *const *keys);

#endif
