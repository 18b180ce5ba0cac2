#include "http/api.h"

typedef struct route_def {
    const char *method;
    const char *pattern;
    http_handler handler;
    unsigned flags;
} route_def;

static const route_def routes[] = {
    {"GET", "/health", api_health, HTTP_PUBLIC},
    {"GET", "/ready", api_ready, HTTP_PUBLIC},
};

ap_status api_register(router *r, ap_err *err)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        ap_status rc = router_add(r, routes[i].method, routes[i].pattern, (void *)routes[i].handler,
                                  routes[i].flags);
        if (rc != AP_OK)
            return ap_err_set(err, rc, "cannot register %s %s", routes[i].method,
                              routes[i].pattern);
    }
    return AP_OK;
}
