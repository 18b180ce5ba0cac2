#include "script/params.h"

#include "core/jsonx.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define PARAMS_MAX_DEPTH 16
#define PARAMS_MAX_TEXT (256 * 1024)

static const char *const known_types[] = {"integer", "number", "string", "boolean", "array"};
static const char *const known_fields[] = {"type",        "default",   "min",       "max",
                                           "enum",        "min_items", "max_items", "required",
                                           "description", "above"};

static bool is_integral(const cJSON *v)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
           v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 9007199254740992.0;
}

static const char *type_of(const cJSON *d)
{
    return jsonx_string(d, "type");
}

/* Checks one value against one declaration; err names the param. */
static ap_status check_value(const char *name, const cJSON *d, const cJSON *v, ap_err *err)
{
    const char *t = type_of(d);
    if (t == NULL)
        return ap_err_set(err, AP_INVALID, "param '%s' has no type", name);
    const cJSON *min = cJSON_GetObjectItemCaseSensitive(d, "min");
    const cJSON *max = cJSON_GetObjectItemCaseSensitive(d, "max");
    if (strcmp(t, "integer") == 0 || strcmp(t, "number") == 0) {
        bool integer = strcmp(t, "integer") == 0;
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || (integer && !is_integral(v)))
            return ap_err_set(err, AP_INVALID, "param '%s' must be %s", name,
                              integer ? "a whole number" : "a number");
        if (cJSON_IsNumber(min) && v->valuedouble < min->valuedouble)
            return ap_err_set(err, AP_INVALID, "param '%s' must be at least %g (got %g)", name,
                              min->valuedouble, v->valuedouble);
        if (cJSON_IsNumber(max) && v->valuedouble > max->valuedouble)
            return ap_err_set(err, AP_INVALID, "param '%s' must be at most %g (got %g)", name,
                              max->valuedouble, v->valuedouble);
        return AP_OK;
    }
    if (strcmp(t, "string") == 0) {
        if (!cJSON_IsString(v))
            return ap_err_set(err, AP_INVALID, "param '%s' must be a string", name);
        const cJSON *en = cJSON_GetObjectItemCaseSensitive(d, "enum");
        if (cJSON_IsArray(en)) {
            const cJSON *e;
            cJSON_ArrayForEach(e, en)
            {
                if (cJSON_IsString(e) && strcmp(e->valuestring, v->valuestring) == 0)
                    return AP_OK;
            }
            char opts[160] = "";
            size_t used = 0;
            cJSON_ArrayForEach(e, en)
            {
                if (!cJSON_IsString(e) || used + 4 >= sizeof opts)
                    continue;
                int w = snprintf(opts + used, sizeof opts - used, "%s%s", used ? ", " : "",
                                 e->valuestring);
                if (w > 0)
                    used += (size_t)w < sizeof opts - used ? (size_t)w : sizeof opts - used - 1;
            }
            return ap_err_set(err, AP_INVALID, "param '%s' must be one of: %s (got \"%.40s\")",
                              name, opts, v->valuestring);
        }
        if (cJSON_IsNumber(min) && (double)strlen(v->valuestring) < min->valuedouble)
            return ap_err_set(err, AP_INVALID, "param '%s' must be at least %g characters", name,
                              min->valuedouble);
        if (cJSON_IsNumber(max) && (double)strlen(v->valuestring) > max->valuedouble)
            return ap_err_set(err, AP_INVALID, "param '%s' must be at most %g characters", name,
                              max->valuedouble);
        return AP_OK;
    }
    if (strcmp(t, "boolean") == 0) {
        if (!cJSON_IsBool(v))
            return ap_err_set(err, AP_INVALID, "param '%s' must be true or false", name);
        return AP_OK;
    }
    /* array of strings */
    if (!cJSON_IsArray(v))
        return ap_err_set(err, AP_INVALID, "param '%s' must be a list of strings", name);
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e))
            return ap_err_set(err, AP_INVALID, "param '%s' must be a list of strings", name);
    }
    double n = cJSON_GetArraySize(v);
    const cJSON *mi = cJSON_GetObjectItemCaseSensitive(d, "min_items");
    const cJSON *ma = cJSON_GetObjectItemCaseSensitive(d, "max_items");
    if (cJSON_IsNumber(mi) && n < mi->valuedouble)
        return ap_err_set(err, AP_INVALID, "param '%s' needs at least %g items (got %g)", name,
                          mi->valuedouble, n);
    if (cJSON_IsNumber(ma) && n > ma->valuedouble)
        return ap_err_set(err, AP_INVALID, "param '%s' takes at most %g items (got %g)", name,
                          ma->valuedouble, n);
    return AP_OK;
}

static ap_status check_decl_tree(const cJSON *decl, ap_err *err)
{
    if (!cJSON_IsObject(decl))
        return ap_err_set(err, AP_INVALID, "params must be a table of param declarations");
    const cJSON *d;
    cJSON_ArrayForEach(d, decl)
    {
        const char *name = d->string;
        if (!cJSON_IsObject(d))
            return ap_err_set(err, AP_INVALID,
                              "param '%s' must be declared as a table such as "
                              "{ type = \"integer\", default = 3 }",
                              name);
        const char *t = type_of(d);
        bool type_ok = false;
        for (size_t i = 0; t != NULL && i < sizeof known_types / sizeof known_types[0]; i++)
            type_ok = type_ok || strcmp(t, known_types[i]) == 0;
        if (!type_ok)
            return ap_err_set(err, AP_INVALID,
                              "param '%s' has %s type; use integer, number, string, boolean "
                              "or array",
                              name, t == NULL ? "no" : "an unknown");
        const cJSON *f;
        cJSON_ArrayForEach(f, d)
        {
            bool known = false;
            for (size_t i = 0; i < sizeof known_fields / sizeof known_fields[0]; i++)
                known = known || strcmp(f->string, known_fields[i]) == 0;
            if (!known)
                return ap_err_set(err, AP_INVALID, "param '%s' has an unknown field '%s'", name,
                                  f->string);
        }
        const cJSON *min = cJSON_GetObjectItemCaseSensitive(d, "min");
        const cJSON *max = cJSON_GetObjectItemCaseSensitive(d, "max");
        if ((min != NULL && !cJSON_IsNumber(min)) || (max != NULL && !cJSON_IsNumber(max)))
            return ap_err_set(err, AP_INVALID, "param '%s': min and max must be numbers", name);
        if (cJSON_IsNumber(min) && cJSON_IsNumber(max) && min->valuedouble > max->valuedouble)
            return ap_err_set(err, AP_INVALID, "param '%s': min (%g) is greater than max (%g)",
                              name, min->valuedouble, max->valuedouble);
        const cJSON *en = cJSON_GetObjectItemCaseSensitive(d, "enum");
        if (en != NULL) {
            if (strcmp(t, "string") != 0 || !cJSON_IsArray(en) || cJSON_GetArraySize(en) == 0)
                return ap_err_set(err, AP_INVALID,
                                  "param '%s': enum must be a non-empty list of strings on a "
                                  "string param",
                                  name);
            const cJSON *e;
            cJSON_ArrayForEach(e, en)
            {
                if (!cJSON_IsString(e))
                    return ap_err_set(err, AP_INVALID, "param '%s': enum must list strings only",
                                      name);
            }
        }
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(d, "required");
        if (req != NULL && !cJSON_IsBool(req))
            return ap_err_set(err, AP_INVALID, "param '%s': required must be true or false", name);
        const cJSON *desc = cJSON_GetObjectItemCaseSensitive(d, "description");
        if (desc != NULL && !cJSON_IsString(desc))
            return ap_err_set(err, AP_INVALID, "param '%s': description must be a string", name);
        const cJSON *above = cJSON_GetObjectItemCaseSensitive(d, "above");
        if (above != NULL) {
            const cJSON *other = cJSON_IsString(above)
                                     ? cJSON_GetObjectItemCaseSensitive(decl, above->valuestring)
                                     : NULL;
            const char *ot = other != NULL ? type_of(other) : NULL;
            bool numeric = strcmp(t, "integer") == 0 || strcmp(t, "number") == 0;
            if (!numeric || other == NULL || other == d || ot == NULL ||
                (strcmp(ot, "integer") != 0 && strcmp(ot, "number") != 0))
                return ap_err_set(err, AP_INVALID,
                                  "param '%s': above must name another integer or number param",
                                  name);
            const cJSON *dv = cJSON_GetObjectItemCaseSensitive(d, "default");
            const cJSON *ov = cJSON_GetObjectItemCaseSensitive(other, "default");
            if (cJSON_IsNumber(dv) && cJSON_IsNumber(ov) && !(dv->valuedouble > ov->valuedouble))
                return ap_err_set(err, AP_INVALID,
                                  "param '%s': its default (%g) must be greater than the default "
                                  "of '%s' (%g)",
                                  name, dv->valuedouble, above->valuestring, ov->valuedouble);
        }
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(d, "default");
        if (def != NULL) {
            ap_err inner = {0};
            if (check_value(name, d, def, &inner) != AP_OK)
                return ap_err_set(err, AP_INVALID, "the default of %s", inner.msg);
        }
    }
    return AP_OK;
}

static cJSON *parse_obj(const char *text, const char *what, ap_err *err)
{
    if (text == NULL || text[0] == '\0')
        return cJSON_CreateObject();
    size_t len = strlen(text);
    if (len > PARAMS_MAX_TEXT) {
        ap_err_set(err, AP_LIMIT, "%s larger than %d bytes", what, PARAMS_MAX_TEXT);
        return NULL;
    }
    ap_err inner = {0};
    cJSON *root = jsonx_parse(text, len, PARAMS_MAX_DEPTH, &inner);
    if (root == NULL) {
        ap_err_set(err, AP_INVALID, "%s: %s", what, inner.msg);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        ap_err_set(err, AP_INVALID, "%s must be an object", what);
        return NULL;
    }
    return root;
}

ap_status script_params_check_decl(const char *decl_json, ap_err *err)
{
    cJSON *decl = parse_obj(decl_json, "params", err);
    if (decl == NULL)
        return AP_INVALID;
    ap_status rc = check_decl_tree(decl, err);
    cJSON_Delete(decl);
    return rc;
}

/* The `above` rules between the resolved values (given or default): a param with
 * above = "low" must be greater than low when both have a value. */
static ap_status check_order(const cJSON *decl, const cJSON *values, ap_err *err)
{
    const cJSON *d;
    cJSON_ArrayForEach(d, decl)
    {
        const char *other = jsonx_string(d, "above");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(values, d->string);
        const cJSON *o = other != NULL ? cJSON_GetObjectItemCaseSensitive(values, other) : NULL;
        if (cJSON_IsNumber(v) && cJSON_IsNumber(o) && !(v->valuedouble > o->valuedouble))
            return ap_err_set(err, AP_INVALID,
                              "param '%s' (%g) must be greater than param '%s' (%g)", d->string,
                              v->valuedouble, other, o->valuedouble);
    }
    return AP_OK;
}

ap_status script_params_apply(const char *decl_json, const char *given_json, char **out,
                              ap_err *err)
{
    ap_status rc = AP_INVALID;
    cJSON *result = NULL;
    *out = NULL;
    cJSON *decl = parse_obj(decl_json, "params declaration", err);
    cJSON *given = decl != NULL ? parse_obj(given_json, "params", err) : NULL;
    if (decl == NULL || given == NULL)
        goto out;
    const cJSON *g;
    cJSON_ArrayForEach(g, given)
    {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(decl, g->string);
        if (d == NULL) {
            ap_err_set(err, AP_INVALID, "unknown param '%s' (this strategy takes: %s)", g->string,
                       decl->child != NULL ? "see its params" : "no params");
            goto out;
        }
        if (check_value(g->string, d, g, err) != AP_OK)
            goto out;
    }
    result = cJSON_CreateObject();
    if (result == NULL) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    const cJSON *d;
    cJSON_ArrayForEach(d, decl)
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(given, d->string);
        if (v == NULL)
            v = cJSON_GetObjectItemCaseSensitive(d, "default");
        if (v == NULL) {
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "required"))) {
                ap_err_set(err, AP_INVALID, "param '%s' is required", d->string);
                goto out;
            }
            continue;
        }
        cJSON *copy = cJSON_Duplicate(v, true);
        if (copy == NULL || !cJSON_AddItemToObject(result, d->string, copy)) {
            cJSON_Delete(copy);
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
            goto out;
        }
    }
    if (check_order(decl, result, err) != AP_OK)
        goto out;
    *out = jsonx_print(result);
    rc = *out != NULL ? AP_OK : ap_err_set(err, AP_NOMEM, "out of memory");
out:
    cJSON_Delete(result);
    cJSON_Delete(given);
    cJSON_Delete(decl);
    return rc;
}

static cJSON *value_from_text(const char *name, const char *type, const char *text, ap_err *err)
{
    char *end = NULL;
    errno = 0;
    /* strtoll and strtod skip leading blanks: " 2" would pass where "2 " does not */
    bool blank = isspace((unsigned char)text[0]);
    if (strcmp(type, "integer") == 0) {
        long long v = strtoll(text, &end, 10);
        if (blank || end == text || *end != '\0' || errno != 0) {
            ap_err_set(err, AP_INVALID, "param '%s' must be a whole number (got \"%.40s\")", name,
                       text);
            return NULL;
        }
        return cJSON_CreateNumber((double)v);
    }
    if (strcmp(type, "number") == 0) {
        double v = strtod(text, &end);
        if (blank || end == text || *end != '\0' || errno != 0 || !isfinite(v)) {
            ap_err_set(err, AP_INVALID, "param '%s' must be a number (got \"%.40s\")", name, text);
            return NULL;
        }
        return cJSON_CreateNumber(v);
    }
    if (strcmp(type, "boolean") == 0) {
        if (strcmp(text, "true") == 0 || strcmp(text, "1") == 0 || strcmp(text, "yes") == 0)
            return cJSON_CreateTrue();
        if (strcmp(text, "false") == 0 || strcmp(text, "0") == 0 || strcmp(text, "no") == 0)
            return cJSON_CreateFalse();
        ap_err_set(err, AP_INVALID, "param '%s' must be true or false (got \"%.40s\")", name, text);
        return NULL;
    }
    if (strcmp(type, "array") == 0) {
        /* comma-separated items, "" for none; an empty item ("a,,b", "a,") is a slip of the
         * hand, not a value */
        cJSON *arr = cJSON_CreateArray();
        const char *p = text;
        bool more = *p != '\0';
        while (arr != NULL && more) {
            const char *comma = strchr(p, ',');
            size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
            more = comma != NULL;
            if (n == 0) {
                cJSON_Delete(arr);
                ap_err_set(err, AP_INVALID,
                           "param '%s' has an empty item (items are separated by single commas)",
                           name);
                return NULL;
            }
            char *item = strndup(p, n);
            cJSON *s = item != NULL ? cJSON_CreateString(item) : NULL;
            free(item);
            if (s == NULL) {
                cJSON_Delete(arr);
                ap_err_set(err, AP_NOMEM, "out of memory");
                return NULL;
            }
            cJSON_AddItemToArray(arr, s);
            p += n + (more ? 1 : 0);
        }
        if (arr == NULL)
            ap_err_set(err, AP_NOMEM, "out of memory");
        return arr;
    }
    cJSON *s = cJSON_CreateString(text);
    if (s == NULL)
        ap_err_set(err, AP_NOMEM, "out of memory");
    return s;
}

ap_status script_params_from_text(const char *decl_json, const char *const *names,
                                  const char *const *values, size_t n, char **out, ap_err *err)
{
    ap_status rc = AP_INVALID;
    *out = NULL;
    cJSON *decl = parse_obj(decl_json, "params declaration", err);
    cJSON *obj = cJSON_CreateObject();
    if (decl == NULL || obj == NULL)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(decl, names[i]);
        if (d == NULL) {
            ap_err_set(err, AP_INVALID, "unknown param '%s'", names[i]);
            goto out;
        }
        if (cJSON_GetObjectItemCaseSensitive(obj, names[i]) != NULL) {
            ap_err_set(err, AP_INVALID, "param '%s' is given twice", names[i]);
            goto out;
        }
        const char *t = type_of(d);
        cJSON *v = value_from_text(names[i], t != NULL ? t : "string", values[i], err);
        if (v == NULL)
            goto out;
        cJSON_AddItemToObject(obj, names[i], v);
    }
    *out = jsonx_print(obj);
    rc = *out != NULL ? AP_OK : ap_err_set(err, AP_NOMEM, "out of memory");
out:
    cJSON_Delete(obj);
    cJSON_Delete(decl);
    return rc;
}
