/* api_tenant.c - GET /v1/tenant: the caller's tenant as a frontend shows it. */
#include "http/api.h"
#include "core/jsonx.h"
#include "store/store.h"

#include <math.h>
#include <stdio.h>

void api_tenant_get(http_request *req, void *app)
{
    api_deps *d = app;
    const http_principal *p = http_principal_of(req);
    store_tenant t = {0};
    ap_err err = {0};
    if (store_tenant_get(d->store, p->tenant_id, &t, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "id", t.id);
    cJSON_AddStringToObject(body, "slug", t.slug);
    cJSON_AddStringToObject(body, "name", t.name);
    cJSON *cfg = t.config != NULL ? cJSON_Parse(t.config) : NULL;
    const char *sections[] = {"branding", "flags", "limits"};
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
        cJSON *v = cfg != NULL ? cJSON_DetachItemFromObjectCaseSensitive(cfg, sections[i]) : NULL;
        cJSON_AddItemToObject(body, sections[i], v != NULL ? v : cJSON_CreateObject());
    }
    cJSON *ds = cfg != NULL ? cJSON_GetObjectItemCaseSensitive(cfg, "default_strategy") : NULL;
    cJSON_AddStringToObject(body, "default_strategy",
                            cJSON_IsString(ds) ? ds->valuestring : "council");
    cJSON_AddStringToObject(body, "role", p->role == STORE_ROLE_ADMIN ? "admin" : "member");
    cJSON_Delete(cfg);
    store_tenant_free(&t);
    http_reply_json(req, 200, body);
}

bool api_tenant_flag_off(const store_tenant *t, const char *flag)
{
    cJSON *cfg = t->config != NULL ? cJSON_Parse(t->config) : NULL;
    bool off =
        cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItem(cfg, "flags"), flag));
    cJSON_Delete(cfg);
    return off;
}

bool api_tenant_strategy_enabled(const store_tenant *t, const char *strategy)
{
    char flag[96];
    snprintf(flag, sizeof flag, "strategy.%s", strategy);
    return !api_tenant_flag_off(t, flag);
}

int64_t api_tenant_limit(api_deps *d, const char *tenant_id, const char *name)
{
    store_tenant t = {0};
    int64_t v =
        store_tenant_get(d->store, tenant_id, &t, NULL) == AP_OK ? store_tenant_limit(&t, name) : 0;
    store_tenant_free(&t);
    return v;
}
