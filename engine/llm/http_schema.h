/* http_schema.h - checks a model's JSON answer against the JSON Schema it was asked for.
 *
 * Models are untrusted: their JSON may be wrapped in prose or code fences, may be truncated,
 * and may ignore the schema. This module extracts the JSON value from the answer text and
 * validates the subset of JSON Schema that strategies use: type (also a list), enum, const,
 * properties, required, additionalProperties (false or a schema), items, minItems, maxItems,
 * uniqueItems, minimum, maximum, exclusiveMinimum, exclusiveMaximum, minLength, maxLength,
 * anyOf, oneOf, allOf. Unknown keywords are ignored, as the standard asks. */
#ifndef AP_LLM_HTTP_SCHEMA_H
#define AP_LLM_HTTP_SCHEMA_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* Finds and parses the JSON value in an answer: the whole text, else the body of a ``` fence,
 * else the span from the first '{' or '[' to its matching end. Returns a tree (caller frees)
 * or NULL when there is none. */
cJSON *llm_schema_extract(const char *text, size_t len);

/* True when value is valid for schema; otherwise false with a short reason naming the path
 * (e.g. "$.ranking[2]: not one of the enum values") written into why. */
bool llm_schema_check(const cJSON *schema, const cJSON *value, char *why, size_t why_cap);

#endif
