/* jview.h - a read-only view of one JSON document, without building a tree.
 *
 * jview_parse validates the whole text (RFC 8259 grammar, UTF-8 inside strings, nesting
 * depth) and records one token per value and per object key, in document order; lookups walk
 * the tokens in place and copy only what the caller asks for. It costs a fraction of a cJSON
 * parse for the small documents that arrive by the thousand (stream chunks): no allocation
 * while the document has at most JVIEW_INLINE tokens, one growing array beyond that.
 *
 * Values are named by token index; the root is 0, and -1 means "absent" everywhere, so
 * lookups chain: jview_get(v, jview_index(v, jview_get(v, 0, "choices"), 0), "delta"). */
#ifndef AP_JVIEW_H
#define AP_JVIEW_H

#include "core/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JVIEW_INLINE 96

typedef enum jview_type {
    JVIEW_NONE, /* an absent value (index -1) */
    JVIEW_NULL,
    JVIEW_FALSE,
    JVIEW_TRUE,
    JVIEW_NUMBER,
    JVIEW_STRING,
    JVIEW_ARRAY,
    JVIEW_OBJECT,
} jview_type;

typedef struct jview_tok {
    uint8_t type;    /* jview_type */
    uint8_t escaped; /* a string with backslash escapes: must be decoded to compare */
    uint32_t start;  /* first byte: the opening quote, bracket or brace, or the literal */
    uint32_t end;    /* one past the last byte */
    uint32_t next;   /* the token after this value and everything inside it */
    uint32_t count;  /* members of an object, elements of an array */
} jview_tok;

typedef struct jview {
    const char *src; /* borrowed: the parsed text must outlive the view */
    jview_tok *tok;
    uint32_t n, cap;
    jview_tok inline_tok[JVIEW_INLINE];
} jview;

/* An empty view with no tokens, safe to jview_free. */
void jview_init(jview *v);

/* Parses text[0..len) (borrowed) into v (no jview_init needed first). AP_INVALID with the byte
 * offset in err when the text is not one JSON value or nests deeper than max_depth containers;
 * AP_NOMEM. On any result the view must be released with jview_free. */
ap_status jview_parse(jview *v, const char *text, size_t len, int max_depth, ap_err *err);

/* Releases the token array (the view itself is the caller's). Accepts NULL. */
void jview_free(jview *v);

/* The type of value i (JVIEW_NONE for -1). */
jview_type jview_type_of(const jview *v, int i);

/* The value of key in object obj, or -1 (not an object, or no such key; the first wins). */
int jview_get(const jview *v, int obj, const char *key);

/* Element k of array arr, or -1. */
int jview_index(const jview *v, int arr, uint32_t k);

/* Members of an object or elements of an array; 0 for anything else. */
uint32_t jview_count(const jview *v, int i);

/* Decodes string value i into out (cap bytes, always NUL-terminated when cap > 0) and
 * returns its length, which may exceed cap - 1 when out was too small (as snprintf does).
 * A \u0000 escape ends the string, as in cJSON. Returns 0 when i is not a string. */
size_t jview_string(const jview *v, int i, char *out, size_t cap);

/* Whether value i is a string equal to s. */
bool jview_string_is(const jview *v, int i, const char *s);

/* The number value i, or dflt when i is no number (or has more than 63 characters). */
double jview_number(const jview *v, int i, double dflt);

#endif
