/* params.h - the typed parameters a strategy declares, and the values a panel gives them.
 *
 * A declaration is the JSON form of the strategy's `params` table:
 * { "<name>": { "type": "integer|number|string|boolean|array", "default": ..., "min": ...,
 *   "max": ..., "enum": [...], "min_items": n, "max_items": n, "required": bool,
 *   "description": "..." } }. Errors name the param and say what is wrong in plain words. */
#ifndef AP_SCRIPT_PARAMS_H
#define AP_SCRIPT_PARAMS_H

#include "core/status.h"

#include <stddef.h>

/* Checks a declaration (JSON object text). */
ap_status script_params_check_decl(const char *decl_json, ap_err *err);

/* Validates the given values (JSON object text, NULL or "" for none) against the declaration:
 * rejects unknown params, wrong types, values out of bounds or not in the enum, and missing
 * required ones; applies defaults. *out (caller frees) is the complete params object. */
ap_status script_params_apply(const char *decl_json, const char *given_json, char **out,
                              ap_err *err);

/* Turns name=value texts (as from --param) into a JSON object typed by the declaration:
 * integers, numbers, booleans (true/false/1/0/yes/no), strings, arrays (comma-separated).
 * *out caller frees. */
ap_status script_params_from_text(const char *decl_json, const char *const *names,
                                  const char *const *values, size_t n, char **out, ap_err *err);

#endif
