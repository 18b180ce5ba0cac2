/* jsonx.h - small helpers over cJSON for reading untrusted JSON. */
#ifndef AP_JSONX_H
#define AP_JSONX_H

#include "core/status.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;

/* Parses len bytes of text; rejects trailing garbage and nesting deeper than max_depth.
 * Returns a tree the caller frees with cJSON_Delete, or NULL with err set (AP_INVALID). */
cJSON *jsonx_parse(const char *text, size_t len, int max_depth, ap_err *err);

/* Nesting depth of a tree (a scalar is 0). */
int jsonx_depth(const cJSON *item);

/* Member lookups (case-sensitive); NULL/default when absent or of another type. Borrowed. */
const char *jsonx_string(const cJSON *obj, const char *key);
double jsonx_number(const cJSON *obj, const char *key, double dflt);

/* Compact text of a tree; caller frees. NULL on allocation failure. */
char *jsonx_print(const cJSON *item);

/* Appends s[0..n) (borrowed) to b as a JSON string literal, quoted and escaped. Bytes that are
 * not valid UTF-8 become U+FFFD, so the text is always valid JSON. AP_LIMIT past b's max. */
ap_status jsonx_append_string(struct buf *b, const char *s, size_t n);

/* Room jsonx_int_text needs: a sign, 19 digits and the NUL. */
#define JSONX_INT_MAX 24

/* Writes v in decimal into out (JSONX_INT_MAX bytes), NUL-terminated; returns the length.
 * Integers are most of the numbers the engine writes, and printf is slow for them. */
size_t jsonx_int_text(char *out, int64_t v);

/* jsonx_int_text for an unsigned value (20 digits at most). */
size_t jsonx_uint_text(char *out, uint64_t v);

/* Appends a finite number as JSON: integers without a fraction, others in the fewest digits
 * that read back as the same double. AP_INVALID for NaN and infinities. */
ap_status jsonx_append_number(struct buf *b, double d);

/* True when s is valid UTF-8 of n bytes (no overlongs, no surrogates). */
bool jsonx_utf8_valid(const char *s, size_t n);

/* True when the JSON text s (n bytes) has a string with a \u0000 escape: the engine's strings
 * are C strings, which would end there and drop the rest without a word. */
bool jsonx_escapes_nul(const char *s, size_t n);

/* The first key that appears twice in one object anywhere in root (borrowed), or NULL.
 * O(n log n) per object. */
const char *jsonx_duplicate_key(const cJSON *root);

/* The end of the run of plain bytes in s[i..n) (printable ASCII other than '"' and '\\': what
 * a JSON string holds as it is), eight at a time; n when the run reaches the end. */
size_t jsonx_plain_end(const char *s, size_t i, size_t n);

#endif
