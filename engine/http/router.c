#include "http/router.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEGMENTS 12

typedef struct route {
    char *method;
    char *pattern;
    void *handler;
    unsigned flags;
    int nseg;
    char *seg[MAX_SEGMENTS]; /* literal segment, or "{name}" (stored without braces) */
    bool is_param[MAX_SEGMENTS];
} route;

struct router {
    route *routes;
    size_t n, cap;
};

router *router_new(void)
{
    return calloc(1, sizeof(router));
}

static void route_clear(route *rt)
{
    free(rt->method);
    free(rt->pattern);
    for (int i = 0; i < rt->nseg; i++)
        free(rt->seg[i]);
}

void router_free(router *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        route_clear(&r->routes[i]);
    free(r->routes);
    free(r);
}

static ap_status parse_pattern(route *rt, const char *pattern)
{
    if (pattern[0] != '/')
        return AP_INVALID;
    const char *p = pattern + 1;
    int nparams = 0;
    while (*p != '\0') {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || rt->nseg == MAX_SEGMENTS)
            return AP_INVALID;
        bool param = p[0] == '{' && p[len - 1] == '}';
        if (param && (len < 3 || ++nparams > ROUTER_MAX_PARAMS))
            return AP_INVALID;
        const char *s = param ? p + 1 : p;
        size_t sl = param ? len - 2 : len;
        char *copy = strndup(s, sl);
        if (copy == NULL)
            return AP_NOMEM;
        rt->seg[rt->nseg] = copy;
        rt->is_param[rt->nseg] = param;
        rt->nseg++;
        p += len;
        if (*p == '/')
            p++;
    }
    return AP_OK;
}

ap_status router_add(router *r, const char *method, const char *pattern, void *handler,
                     unsigned flags)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->routes[i].method, method) == 0 && strcmp(r->routes[i].pattern, pattern) == 0)
            return AP_INVALID;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        route *nr = realloc(r->routes, cap * sizeof *nr);
        if (nr == NULL)
            return AP_NOMEM;
        r->routes = nr;
        r->cap = cap;
    }
    route rt = {.handler = handler, .flags = flags};
    rt.method = strdup(method);
    rt.pattern = strdup(pattern);
    ap_status rc = rt.method && rt.pattern ? parse_pattern(&rt, pattern) : AP_NOMEM;
    if (rc != AP_OK) {
        route_clear(&rt);
        return rc;
    }
    r->routes[r->n++] = rt;
    return AP_OK;
}

/* Matches path against one route's segments, filling m's parameters. No trailing slash. */
static bool match_route(const route *rt, const char *path, router_match *m)
{
    if (path[0] != '/')
        return false;
    const char *p = path + 1;
    m->nparams = 0;
    if (rt->nseg == 0)
        return *p == '\0';
    for (int i = 0; i < rt->nseg; i++) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0)
            return false;
        if (rt->is_param[i]) {
            if (len >= ROUTER_PARAM_MAX)
                return false;
            m->names[m->nparams] = rt->seg[i];
            memcpy(m->values[m->nparams], p, len);
            m->values[m->nparams][len] = '\0';
            m->nparams++;
        } else if (strlen(rt->seg[i]) != len || memcmp(rt->seg[i], p, len) != 0) {
            return false;
        }
        p += len;
        bool last = i + 1 == rt->nseg;
        if (last)
            return *p == '\0';
        if (*p != '/')
            return false;
        p++;
    }
    return false;
}

router_result router_match_path(const router *r, const char *method, const char *path,
                                router_match *m, char *allow, size_t allow_cap)
{
    bool path_seen = false;
    size_t alen = 0;
    if (allow != NULL && allow_cap > 0)
        allow[0] = '\0';
    for (size_t i = 0; i < r->n; i++) {
        const route *rt = &r->routes[i];
        router_match tmp;
        if (!match_route(rt, path, &tmp))
            continue;
        if (strcmp(rt->method, method) == 0 ||
            (strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0)) {
            *m = tmp;
            m->handler = rt->handler;
            m->flags = rt->flags;
            return ROUTER_FOUND;
        }
        path_seen = true;
        if (allow != NULL) {
            size_t ml = strlen(rt->method);
            size_t sep = alen ? 2 : 0;
            if (alen + sep + ml + 1 <= allow_cap) {
                if (sep)
                    memcpy(allow + alen, ", ", 2);
                memcpy(allow + alen + sep, rt->method, ml + 1);
                alen += sep + ml;
            }
        }
    }
    return path_seen ? ROUTER_METHOD_NOT_ALLOWED : ROUTER_NOT_FOUND;
}

void router_each(const router *r, void (*fn)(const char *method, const char *pattern, void *ud),
                 void *ud)
{
    for (size_t i = 0; i < r->n; i++)
        fn(r->routes[i].method, r->routes[i].pattern, ud);
}
