/* router.h - maps (method, path) to a handler, with {name} path parameters.
 *
 * Routes are added once at start-up and matched concurrently afterwards (read-only). A path
 * that matches no pattern is "not found"; one that matches patterns only under other methods
 * is "method not allowed", and the Allow list names those methods. */
#ifndef AP_ROUTER_H
#define AP_ROUTER_H

#include "core/status.h"

#include <stddef.h>

#define ROUTER_MAX_PARAMS 4
#define ROUTER_PARAM_MAX 128 /* longest value of one path parameter, with its NUL */

typedef struct router router;

typedef struct router_match {
    void *handler;  /* what was registered; opaque to the router */
    unsigned flags; /* what was registered */
    int nparams;
    const char *names[ROUTER_MAX_PARAMS]; /* borrowed from the router */
    char values[ROUTER_MAX_PARAMS][ROUTER_PARAM_MAX];
} router_match;

typedef enum router_result {
    ROUTER_FOUND = 0,
    ROUTER_NOT_FOUND = 1,
    ROUTER_METHOD_NOT_ALLOWED = 2,
} router_result;

/* A new empty router; caller frees with router_free. NULL when out of memory. */
router *router_new(void);

/* Frees the router; r may be NULL. */
void router_free(router *r);

/* Adds a route; pattern is like "/v1/panels/{id}/events". AP_INVALID for a malformed pattern
 * or a duplicate (method, pattern). Strings are copied. */
ap_status router_add(router *r, const char *method, const char *pattern, void *handler,
                     unsigned flags);

/* Matches a request. On ROUTER_METHOD_NOT_ALLOWED, allow (if not NULL) receives the allowed
 * methods, comma-separated ("GET, POST"). A parameter longer than ROUTER_PARAM_MAX - 1 bytes
 * does not match. */
router_result router_match_path(const router *r, const char *method, const char *path,
                                router_match *m, char *allow, size_t allow_cap);

/* Calls fn for every route in the order added; for the OpenAPI coverage test. */
void router_each(const router *r, void (*fn)(const char *method, const char *pattern, void *ud),
                 void *ud);

#endif
