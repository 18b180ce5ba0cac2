#include "http/validate.h"

#include "core/jsonx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CURSOR_MAX 128

bool validate_known_fields(http_request *req, const cJSON *obj, const char *const *allowed)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, obj)
    {
        size_t i = 0;
        while (allowed[i] != NULL && strcmp(allowed[i], m->string) != 0)
            i++;
        if (allowed[i] == NULL) {
            http_reply_error(req, 400, "unknown_field", "unknown field \"%.64s\"", m->string);
            return false;
        }
    }
    return true;
}

static bool missing(http_request *req, const char *key)
{
    http_reply_error(req, 400, "missing_field", "\"%s\" is required", key);
    return false;
}

bool validate_string(http_request *req, const cJSON *obj, const char *key, bool required,
                     size_t max_len, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (v == NULL || cJSON_IsNull(v))
        return required ? missing(req, key) : true;
    if (!cJSON_IsString(v)) {
        http_reply_error(req, 400, "invalid_field", "\"%s\" must be a string", key);
        return false;
    }
    size_t n = strlen(v->valuestring);
    if (n == 0 || n > max_len) {
        http_reply_error(req, 400, "invalid_field", "\"%s\" must be 1 to %zu bytes long", key,
                         max_len);
        return false;
    }
    if (!jsonx_utf8_valid(v->valuestring, n)) {
        http_reply_error(req, 400, "invalid_field", "\"%s\" is not valid UTF-8", key);
        return false;
    }
    *out = v->valuestring;
    return true;
}

bool validate_number(http_request *req, const cJSON *obj, const char *key, bool required,
                     double min, double max, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL || cJSON_IsNull(v))
        return required ? missing(req, key) : true;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < min ||
        v->valuedouble > max) {
        http_reply_error(req, 400, "invalid_field", "\"%s\" must be a number from %g to %g", key,
                         min, max);
        return false;
    }
    *out = v->valuedouble;
    return true;
}

bool validate_integer(http_request *req, const cJSON *obj, const char *key, bool required,
                      int64_t min, int64_t max, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL)
        return required ? missing(req, key) : true;
    /* compared as doubles before the cast: a double out of int64_t's range has no cast */
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < (double)min ||
        v->valuedouble > (double)max || v->valuedouble != trunc(v->valuedouble)) {
        http_reply_error(req, 400, "invalid_field",
                         "\"%s\" must be a whole number from %lld to %lld", key, (long long)min,
                         (long long)max);
        return false;
    }
    *out = (int64_t)v->valuedouble;
    return true;
}

bool validate_string_array(http_request *req, const cJSON *obj, const char *key, bool required,
                           int max_items, size_t max_len, const cJSON **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (v == NULL || cJSON_IsNull(v))
        return required ? missing(req, key) : true;
    bool ok = cJSON_IsArray(v) && cJSON_GetArraySize(v) <= max_items;
    const cJSON *item;
    cJSON_ArrayForEach(item, v)
    {
        if (!ok)
            break;
        ok = cJSON_IsString(item) && item->valuestring[0] != '\0' &&
             strlen(item->valuestring) <= max_len &&
             jsonx_utf8_valid(item->valuestring, strlen(item->valuestring));
    }
    if (!ok) {
        http_reply_error(req, 400, "invalid_field",
                         "\"%s\" must be an array of at most %d non-empty strings of at most "
                         "%zu bytes",
                         key, max_items, max_len);
        return false;
    }
    *out = v;
    return true;
}

bool validate_decimal(const char *s, int64_t max, int64_t *out)
{
    int64_t v = 0;
    size_t n = 0;
    for (; s[n] >= '0' && s[n] <= '9'; n++) {
        if (n == 18)
            return false;
        v = v * 10 + (s[n] - '0');
    }
    if (n == 0 || s[n] != '\0' || v > max)
        return false;
    *out = v;
    return true;
}

bool validate_page(http_request *req, int dflt, int max, int *limit, const char **cursor)
{
    const char *l = http_query(req, "limit");
    *limit = dflt;
    if (l != NULL) {
        int64_t v = 0;
        if (!validate_decimal(l, max, &v) || v < 1) {
            http_reply_error(req, 400, "invalid_parameter", "limit must be an integer from 1 to %d",
                             max);
            return false;
        }
        *limit = (int)v;
    }
    const char *c = http_query(req, "cursor");
    if (c != NULL && strlen(c) >= CURSOR_MAX) {
        http_reply_error(req, 400, "invalid_parameter", "cursor is not one this API returned");
        return false;
    }
    *cursor = c != NULL ? c : "";
    return true;
}

bool validate_id_param(http_request *req, const char *name, char out[IDS_UUID_LEN + 1])
{
    const char *v = http_param(req, name);
    if (v == NULL || !ids_uuid_normalize(v, out)) {
        http_reply_error(req, 404, "not_found", "no such object");
        return false;
    }
    return true;
}

bool validate_script_name(const char *s)
{
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
             s[i] == '-';
    return ok;
}
