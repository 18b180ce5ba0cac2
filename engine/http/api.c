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
    {"GET", "/", api_ui_index, HTTP_PUBLIC},
    {"GET", "/ui/{file}", api_ui_file, HTTP_PUBLIC},
    {"GET", "/v1/tenant", api_tenant_get, HTTP_AUTH_MEMBER},
    {"GET", "/v1/experts", api_experts_list, HTTP_AUTH_MEMBER},
    {"POST", "/v1/experts", api_experts_create, HTTP_AUTH_ADMIN},
    {"GET", "/v1/experts/{id}", api_experts_get, HTTP_AUTH_MEMBER},
    {"PATCH", "/v1/experts/{id}", api_experts_update, HTTP_AUTH_ADMIN},
    {"DELETE", "/v1/experts/{id}", api_experts_delete, HTTP_AUTH_ADMIN},
    {"GET", "/v1/usage", api_usage_get, HTTP_AUTH_MEMBER},
    {"POST", "/v1/panels", api_panels_create, HTTP_AUTH_MEMBER},
    {"GET", "/v1/panels", api_panels_list, HTTP_AUTH_MEMBER},
    {"GET", "/v1/panels/{id}", api_panels_get, HTTP_AUTH_MEMBER},
    {"POST", "/v1/panels/{id}/execute", api_panels_execute, HTTP_AUTH_MEMBER},
    {"POST", "/v1/panels/{id}/cancel", api_panels_cancel, HTTP_AUTH_MEMBER},
    {"POST", "/v1/panels/{id}/input", api_panels_input, HTTP_AUTH_MEMBER},
    {"POST", "/v1/panels/{id}/stream-token", api_panels_stream_token, HTTP_AUTH_MEMBER},
    {"GET", "/v1/panels/{id}/events", api_panels_events, HTTP_AUTH_MEMBER | HTTP_STREAM_TOKEN},
    {"GET", "/v1/strategies", api_scripts_list, HTTP_AUTH_MEMBER},
    {"GET", "/v1/strategies/{name}", api_scripts_get, HTTP_AUTH_MEMBER},
    {"PUT", "/v1/strategies/{name}", api_scripts_put, HTTP_AUTH_ADMIN},
    {"DELETE", "/v1/strategies/{name}", api_scripts_delete, HTTP_AUTH_ADMIN},
    {"GET", "/v1/strategies/{name}/versions", api_scripts_versions, HTTP_AUTH_MEMBER},
    {"GET", "/v1/consensus-algorithms", api_scripts_list, HTTP_AUTH_MEMBER},
    {"GET", "/v1/consensus-algorithms/{name}", api_scripts_get, HTTP_AUTH_MEMBER},
    {"PUT", "/v1/consensus-algorithms/{name}", api_scripts_put, HTTP_AUTH_ADMIN},
    {"DELETE", "/v1/consensus-algorithms/{name}", api_scripts_delete, HTTP_AUTH_ADMIN},
    {"GET", "/v1/consensus-algorithms/{name}/versions", api_scripts_versions, HTTP_AUTH_MEMBER},
    {"POST", "/v1/admin/tenants", api_admin_tenants_create, HTTP_AUTH_OPERATOR},
    {"POST", "/v1/admin/tenants/{id}/keys", api_admin_keys_create, HTTP_AUTH_OPERATOR},
    {"DELETE", "/v1/admin/keys/{id}", api_admin_keys_revoke, HTTP_AUTH_OPERATOR},
    {"POST", "/v1/admin/reload", api_admin_reload, HTTP_AUTH_OPERATOR},
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
