/* json.h - (internal to script/) JSON <-> Lua values for the sandbox's `json` table and the host.
 *
 * Encoding is deterministic (object keys sorted), raw (no metamethods run), bounded in depth
 * and output size; invalid UTF-8 becomes U+FFFD and NaN/inf become null. A table is an array
 * when its keys are exactly 1..n; an empty table is an object unless marked by json.array().
 * Decoding is bounded in input size and depth; null becomes nil. */
#ifndef AP_SCRIPT_JSON_H
#define AP_SCRIPT_JSON_H

#include "core/status.h"

#include <lua.h>
#include <stddef.h>

#define SCRIPT_JSON_MAX_DEPTH 64
#define SCRIPT_JSON_DECODE_MAX (1024 * 1024)
#define SCRIPT_JSON_ENCODE_MAX (8 * 1024 * 1024)

/* Pushes the `json` library table (encode, decode, array). Raises on memory errors. */
void script_json_push_lib(lua_State *L);

/* Encodes the value at idx into *out (caller frees), at most max bytes. Never raises. */
ap_status script_json_encode(lua_State *L, int idx, size_t max, char **out, ap_err *err);

/* Decodes text and pushes the value (nil for null). Raises on memory errors, so call it
 * from protected code. */
ap_status script_json_push(lua_State *L, const char *text, size_t len, ap_err *err);

/* script_json_push for texts the host encoded itself with a larger bound (ctx.state): at
 * most max bytes. */
ap_status script_json_push_max(lua_State *L, const char *text, size_t len, size_t max, ap_err *err);

#endif
