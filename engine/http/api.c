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
    {"GET", "/openapi.json", api_openapi, HTTP_PUBLIC},
    {"GET", "/metrics", api_metrics, HTTP_PUBLIC},
    {"GET", "/v1/tenant", api_tenant_get, HTTP_AUTH_MEMBER},
    {"GET", "/v1/experts", api_experts_list, HTTP_AUTH_MEMBER},
    {"POST", "/v1/experts", api_experts_create, HTTP_AUTH_ADMIN},
    {"GET", "/v1/experts/{id}", api_experts_get, HTTP_AUTH_MEMBER},
    {"PATCH", "/v1/experts/{id}", api_experts_update, HTTP_AUTH_ADMIN},
    {"DELETE", "/v1/experts/{id}", api_experts_delete, HTTP_AUTH_ADMIN},
    {"GET", "/v1/usage", api_usage_get, HTTP_AUTH_MEMBER},
    {"POST", "/v1/admin/tenants", api_admin_tenants_create, HTTP_AUTH_OPERATOR},
    {"POST", "/v1/admin/tenants/{id}/keys", api_admin_keys_create, HTTP_AUTH_OPERATOR},
    {"DELETE", "/v1/admin/keys/{id}", api_admin_keys_revoke, HTTP_AUTH_OPERATOR},
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
