/* validate.h - checks of request input for API handlers.
 *
 * Each check either succeeds or replies with the JSON error envelope itself (400 naming the
 * field, or 404 for a malformed object id, which cannot exist) and returns false, so handlers
 * read as a list of `if (!validate_...) return;`. */
#ifndef AP_HTTP_VALIDATE_H
#define AP_HTTP_VALIDATE_H

#include "core/ids.h"
#include "http/server.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

/* Rejects members of obj that are not in allowed (a NULL-terminated list). */
bool validate_known_fields(http_request *req, const cJSON *obj, const char *const *allowed);

/* A string member of 1..max_len bytes of valid UTF-8 (absent: *out = NULL, an error only when
 * required). *out is borrowed from obj. */
bool validate_string(http_request *req, const cJSON *obj, const char *key, bool required,
                     size_t max_len, const char **out);

/* A finite number member within [min, max] (absent: *out unchanged unless required). */
bool validate_number(http_request *req, const cJSON *obj, const char *key, bool required,
                     double min, double max, double *out);

/* A whole-number member within [min, max] (|min|, |max| at most 2^53, where doubles are still
 * exact); 1.0 counts as whole, 1.5, "1" and null do not. Absent: *out unchanged unless
 * required. Null is refused rather than read as absent: a client that meant to send a number
 * and lost it would otherwise get the meaning of leaving it out. */
bool validate_integer(http_request *req, const cJSON *obj, const char *key, bool required,
                      int64_t min, int64_t max, int64_t *out);

/* An array member of at most max_items strings of at most max_len bytes each; *out borrowed. */
bool validate_string_array(http_request *req, const cJSON *obj, const char *key, bool required,
                           int max_items, size_t max_len, const cJSON **out);

/* Whether s is a script name: 1 to 64 bytes of a-z, 0-9, '_' and '-'. Replies nothing. */
bool validate_script_name(const char *s);

/* Whether s is a plain decimal count from 0 to max: digits only (no sign, space or other
 * spelling strtol would take), at most 18 of them. *out gets the value. Replies nothing. */
bool validate_decimal(const char *s, int64_t max, int64_t *out);
/* ?limit= (1..max, default dflt) and ?cursor= (opaque, bounded). */
bool validate_page(http_request *req, int dflt, int max, int *limit, const char **cursor);

/* The path parameter `name` as a canonical UUID; a malformed id answers 404. */
bool validate_id_param(http_request *req, const char *name, char out[IDS_UUID_LEN + 1]);

#endif
