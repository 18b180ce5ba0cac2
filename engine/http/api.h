/* api.h - the HTTP API: registers every route and authenticates callers.
 *
 * Handlers live in http/api_*.c, one file per resource; they share the dependencies below. */
#ifndef AP_HTTP_API_H
#define AP_HTTP_API_H

#include "core/config.h"
#include "http/router.h"
#include "http/server.h"

struct store;
struct cache;
struct api_streams;
struct ratelimit;
struct script_registry;

typedef struct api_deps {
    const config *cfg; /* borrowed */
    struct store *store;
    struct cache *cache;
    void *engine;                     /* the panel engine, NULL when panels cannot run */
    http_server *server;              /* set once listening, for /metrics */
    struct script_registry *registry; /* file-based scripts; NULL without a runtime */
    struct api_streams *streams;      /* live SSE connections (api_streams_start) */
    struct ratelimit *ratelimit;      /* per-tenant request rates; NULL: unlimited */
    int64_t started_ms;
} api_deps;

/* Adds every route of the API to r. */
ap_status api_register(router *r, ap_err *err);

/* Starts the heartbeat thread of the SSE streams (fills d->streams); stop after the server. */
ap_status api_streams_start(api_deps *d, ap_err *err);
void api_streams_stop(api_deps *d);

/* The auth hook for http_server_start (app must be an api_deps *). */
bool api_authenticate(http_request *req, unsigned flags, void *app);

/* Whether key_id is still an active key of tenant: AP_OK when it is, AP_DENIED when it was
 * revoked or is not one of the tenant's keys, else the store's error (in err). max_age_ms > 0
 * accepts an "active" answer cached up to that long (a revocation is final, so it is never
 * cached); 0 asks the store. */
ap_status api_key_active(api_deps *d, const char *tenant, const char *key_id, int64_t max_age_ms,
                         ap_err *err);

/* Route handlers, grouped by resource. */
void api_health(http_request *req, void *app);
void api_ready(http_request *req, void *app);
void api_openapi(http_request *req, void *app);
void api_metrics(http_request *req, void *app);
void api_ui_index(http_request *req, void *app);
void api_ui_file(http_request *req, void *app);
void api_tenant_get(http_request *req, void *app);
void api_experts_list(http_request *req, void *app);
void api_experts_create(http_request *req, void *app);
void api_experts_get(http_request *req, void *app);
void api_experts_update(http_request *req, void *app);
void api_experts_delete(http_request *req, void *app);
void api_usage_get(http_request *req, void *app);
void api_admin_tenants_create(http_request *req, void *app);
void api_admin_keys_create(http_request *req, void *app);
void api_admin_keys_revoke(http_request *req, void *app);

void api_panels_create(http_request *req, void *app);
void api_panels_list(http_request *req, void *app);
void api_panels_get(http_request *req, void *app);
void api_panels_execute(http_request *req, void *app);
void api_panels_cancel(http_request *req, void *app);
void api_panels_input(http_request *req, void *app);
void api_panels_stream_token(http_request *req, void *app);
void api_panels_events(http_request *req, void *app);
/* /v1/strategies and /v1/consensus-algorithms (the path selects the kind of script). */
void api_scripts_list(http_request *req, void *app);
void api_scripts_get(http_request *req, void *app);
void api_scripts_put(http_request *req, void *app);
void api_scripts_delete(http_request *req, void *app);
void api_scripts_versions(http_request *req, void *app);
void api_admin_reload(http_request *req, void *app);

struct store_panel;
struct store_tenant;
/* The API representation of a panel; caller frees. */
cJSON *api_panel_json(const struct store_panel *p);
/* True when the caller's tenant has a panel of this (canonical) id, with *final (may be NULL)
 * telling whether it has ended; else replies 404 (or the store's error) and returns false. */
bool api_panel_visible(http_request *req, api_deps *d, const char *id, bool *final);
/* True when the tenant's config sets the feature flag to false. */
bool api_tenant_flag_off(const struct store_tenant *t, const char *flag);
/* False when the flag "strategy.<name>" disables the strategy for the tenant. */
bool api_tenant_strategy_enabled(const struct store_tenant *t, const char *strategy);
/* A number from the tenant's config "limits" (0: no limit, also on any error). */
int64_t api_tenant_limit(api_deps *d, const char *tenant_id, const char *name);
/* False (after replying 403) when the tenant's flags disable the strategy. */
bool api_strategy_allowed(http_request *req, const struct store_tenant *t, const char *strategy);

struct store_expert;
/* The API representation of an expert; caller frees. */
cJSON *api_expert_json(const struct store_expert *e);

#endif
