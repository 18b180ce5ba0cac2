#include "llm/http_schema.h"

#include "core/jsonx.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_DEPTH 32
#define PATH_MAX_LEN 160

typedef struct ctx {
    char *why;
    size_t cap;
    char path[PATH_MAX_LEN];
} ctx;

static bool fail(ctx *c, const char *msg)
{
    if (c->why != NULL && c->cap > 0)
        snprintf(c->why, c->cap, "%s: %s", c->path[0] ? c->path : "$", msg);
    return false;
}

static cJSON *parse_span(const char *s, size_t n)
{
    return n > 0 ? jsonx_parse(s, n, MAX_DEPTH, NULL) : NULL;
}

cJSON *llm_schema_extract(const char *text, size_t len)
{
    if (text == NULL || len == 0)
        return NULL;
    cJSON *v = parse_span(text, len);
    if (v != NULL)
        return v;
    const char *fence = memmem(text, len, "```", 3);
    if (fence != NULL) {
        const char *body = memchr(fence, '\n', len - (size_t)(fence - text));
        const char *end = body != NULL ? memmem(body, len - (size_t)(body - text), "```", 3) : NULL;
        if (end != NULL && (v = parse_span(body + 1, (size_t)(end - body - 1))) != NULL)
            return v;
    }
    /* The first '{' or '[' to its matching bracket, skipping strings. */
    size_t start = 0;
    while (start < len && text[start] != '{' && text[start] != '[')
        start++;
    int depth = 0;
    bool in_str = false;
    for (size_t i = start; i < len; i++) {
        char ch = text[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = false;
            continue;
        }
        if (ch == '"')
            in_str = true;
        else if (ch == '{' || ch == '[')
            depth++;
        else if ((ch == '}' || ch == ']') && --depth == 0)
            return parse_span(text + start, i - start + 1);
    }
    return NULL;
}

static bool type_is(const cJSON *v, const char *t)
{
    if (strcmp(t, "object") == 0)
        return cJSON_IsObject(v);
    if (strcmp(t, "array") == 0)
        return cJSON_IsArray(v);
    if (strcmp(t, "string") == 0)
        return cJSON_IsString(v);
    if (strcmp(t, "boolean") == 0)
        return cJSON_IsBool(v);
    if (strcmp(t, "null") == 0)
        return cJSON_IsNull(v);
    if (strcmp(t, "number") == 0)
        return cJSON_IsNumber(v) && isfinite(v->valuedouble);
    if (strcmp(t, "integer") == 0)
        return cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
               v->valuedouble == floor(v->valuedouble);
    return true; /* an unknown type name constrains nothing */
}

static bool get_num(const cJSON *s, const char *k, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, k);
    if (!cJSON_IsNumber(v))
        return false;
    *out = v->valuedouble;
    return true;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static bool check(ctx *c, const cJSON *s, const cJSON *v, int depth);

/* Runs check with ".key" or "[i]" appended to the path, restoring it afterwards. */
static bool check_at(ctx *c, const cJSON *s, const cJSON *v, int depth, const char *key, int idx)
{
    size_t len = strlen(c->path);
    if (len == 0)
        len = (size_t)snprintf(c->path, sizeof c->path, "$");
    if (key != NULL)
        snprintf(c->path + len, sizeof c->path - len, ".%.40s", key);
    else
        snprintf(c->path + len, sizeof c->path - len, "[%d]", idx);
    bool ok = check(c, s, v, depth + 1);
    if (ok)
        c->path[len] = '\0';
    return ok;
}

static bool check_type(ctx *c, const cJSON *s, const cJSON *v)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (cJSON_IsString(t)) {
        if (!type_is(v, t->valuestring)) {
            char msg[64];
            snprintf(msg, sizeof msg, "expected %.20s", t->valuestring);
            return fail(c, msg);
        }
    } else if (cJSON_IsArray(t)) {
        const cJSON *e = NULL;
        cJSON_ArrayForEach(e, t)
        {
            if (cJSON_IsString(e) && type_is(v, e->valuestring))
                return true;
        }
        return fail(c, "value of the wrong type");
    }
    return true;
}

static bool check_enum(ctx *c, const cJSON *s, const cJSON *v)
{
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (cJSON_IsArray(en)) {
        const cJSON *e = NULL;
        bool found = false;
        cJSON_ArrayForEach(e, en)
        {
            if (cJSON_Compare(e, v, true))
                found = true;
        }
        if (!found)
            return fail(c, "not one of the enum values");
    }
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(s, "const");
    if (k != NULL && !cJSON_Compare(k, v, true))
        return fail(c, "not the required constant");
    return true;
}

static bool check_number(ctx *c, const cJSON *s, const cJSON *v)
{
    double x = v->valuedouble, b;
    if (get_num(s, "minimum", &b) && x < b)
        return fail(c, "below the minimum");
    if (get_num(s, "maximum", &b) && x > b)
        return fail(c, "above the maximum");
    if (get_num(s, "exclusiveMinimum", &b) && x <= b)
        return fail(c, "not above the exclusive minimum");
    if (get_num(s, "exclusiveMaximum", &b) && x >= b)
        return fail(c, "not below the exclusive maximum");
    return true;
}

static bool check_string(ctx *c, const cJSON *s, const cJSON *v)
{
    double b;
    size_t n = utf8_chars(v->valuestring);
    if (get_num(s, "minLength", &b) && (double)n < b)
        return fail(c, "string too short");
    if (get_num(s, "maxLength", &b) && (double)n > b)
        return fail(c, "string too long");
    return true;
}

static bool check_array(ctx *c, const cJSON *s, const cJSON *v, int depth)
{
    double b;
    int n = cJSON_GetArraySize(v);
    if (get_num(s, "minItems", &b) && (double)n < b)
        return fail(c, "too few items");
    if (get_num(s, "maxItems", &b) && (double)n > b)
        return fail(c, "too many items");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "uniqueItems"))) {
        for (const cJSON *a = v->child; a != NULL; a = a->next)
            for (const cJSON *z = a->next; z != NULL; z = z->next)
                if (cJSON_Compare(a, z, true))
                    return fail(c, "items are not unique");
    }
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    if (cJSON_IsObject(items)) {
        int i = 0;
        for (const cJSON *e = v->child; e != NULL; e = e->next, i++)
            if (!check_at(c, items, e, depth, NULL, i))
                return false;
    }
    return true;
}

static bool check_object(ctx *c, const cJSON *s, const cJSON *v, int depth)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *r = NULL;
    cJSON_ArrayForEach(r, req)
    {
        if (cJSON_IsString(r) && cJSON_GetObjectItemCaseSensitive(v, r->valuestring) == NULL) {
            char msg[96];
            snprintf(msg, sizeof msg, "missing required property \"%.60s\"", r->valuestring);
            return fail(c, msg);
        }
    }
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    for (const cJSON *m = v->child; m != NULL; m = m->next) {
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(props, m->string);
        if (ps != NULL) {
            if (!check_at(c, ps, m, depth, m->string, 0))
                return false;
        } else if (cJSON_IsFalse(extra)) {
            char msg[96];
            snprintf(msg, sizeof msg, "unexpected property \"%.60s\"", m->string);
            return fail(c, msg);
        } else if (cJSON_IsObject(extra) && !check_at(c, extra, m, depth, m->string, 0)) {
            return false;
        }
    }
    return true;
}

static bool check_combinators(ctx *c, const cJSON *s, const cJSON *v, int depth)
{
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(s, "allOf");
    const cJSON *e = NULL;
    cJSON_ArrayForEach(e, all)
    {
        if (!check(c, e, v, depth + 1))
            return false;
    }
    const char *names[2] = {"anyOf", "oneOf"};
    for (int k = 0; k < 2; k++) {
        const cJSON *alt = cJSON_GetObjectItemCaseSensitive(s, names[k]);
        if (!cJSON_IsArray(alt))
            continue;
        int matches = 0;
        cJSON_ArrayForEach(e, alt)
        {
            ctx quiet = {.why = NULL, .cap = 0};
            matches += check(&quiet, e, v, depth + 1);
        }
        if (matches == 0 || (k == 1 && matches > 1))
            return fail(c,
                        k == 0 ? "matches none of anyOf" : "does not match exactly one of oneOf");
    }
    return true;
}

static bool check(ctx *c, const cJSON *s, const cJSON *v, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(c, "nested too deeply");
    if (cJSON_IsTrue(s) || !cJSON_IsObject(s))
        return true; /* `true` and non-schemas accept anything */
    if (!check_type(c, s, v) || !check_enum(c, s, v) || !check_combinators(c, s, v, depth))
        return false;
    if (cJSON_IsNumber(v))
        return check_number(c, s, v);
    if (cJSON_IsString(v))
        return check_string(c, s, v);
    if (cJSON_IsArray(v))
        return check_array(c, s, v, depth);
    if (cJSON_IsObject(v))
        return check_object(c, s, v, depth);
    return true;
}

bool llm_schema_check(const cJSON *schema, const cJSON *value, char *why, size_t why_cap)
{
    ctx c = {.why = why, .cap = why_cap};
    c.path[0] = '\0';
    if (why != NULL && why_cap > 0)
        why[0] = '\0';
    return check(&c, schema, value, 0);
}
