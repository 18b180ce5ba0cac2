/* api_admin.c - operator routes: tenants and their keys. Only the operator key gets here. */
#include "core/jsonx.h"
#include "http/api.h"
#include "http/validate.h"
#include "script/registry.h"
#include "store/store.h"

#include <string.h>

#define TENANT_CONFIG_MAX (64 * 1024)

static const char *const tenant_fields[] = {
    "slug", "name", "branding", "flags", "limits", "default_strategy", NULL};

static cJSON *key_json(const store_tenant *t, const store_key *k, const char *plaintext)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "tenant_id", t->id);
    cJSON_AddStringToObject(o, "slug", t->slug);
    cJSON_AddStringToObject(o, "key_id", k->id);
    cJSON_AddStringToObject(o, "role", k->role == STORE_ROLE_ADMIN ? "admin" : "member");
    cJSON_AddStringToObject(o, "api_key", plaintext);
    return o;
}

/* branding/flags/limits must be objects; flags' values booleans. Returns the tenant config
 * text (caller frees) or NULL after replying. */
static char *tenant_config_from(http_request *req, const cJSON *body)
{
    const char *sections[] = {"branding", "flags", "limits"};
    cJSON *cfg = cJSON_CreateObject();
    char *text = NULL;
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, sections[i]);
        if (v == NULL)
            continue;
        if (!cJSON_IsObject(v)) {
            http_reply_error(req, 400, "invalid_field", "\"%s\" must be an object", sections[i]);
            goto out;
        }
        cJSON_AddItemToObject(cfg, sections[i], cJSON_Duplicate(v, true));
    }
    /* A limit that is not read as one would mean no limit at all: known names, whole numbers. */
    static const char *const limit_names[] = {"requests_per_minute", "concurrent_panels",
                                              "monthly_token_budget"};
    const cJSON *l;
    cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(body, "limits"))
    {
        bool known = false;
        for (size_t i = 0; i < sizeof limit_names / sizeof limit_names[0]; i++)
            known = known || strcmp(l->string, limit_names[i]) == 0;
        if (!known) {
            http_reply_error(req, 400, "invalid_field",
                             "unknown limit \"%.64s\" (requests_per_minute, concurrent_panels, "
                             "monthly_token_budget)",
                             l->string);
            goto out;
        }
        if (!cJSON_IsNumber(l) || l->valuedouble < 0 || l->valuedouble > 1e15 ||
            l->valuedouble != (double)(int64_t)l->valuedouble) {
            http_reply_error(req, 400, "invalid_field",
                             "limit \"%s\" must be a whole number from 0 (no limit)", l->string);
            goto out;
        }
    }
    const cJSON *f;
    cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(body, "flags"))
    {
        if (!cJSON_IsBool(f)) {
            http_reply_error(req, 400, "invalid_field", "flag \"%.64s\" must be true or false",
                             f->string);
            goto out;
        }
    }
    const char *ds;
    if (!validate_string(req, body, "default_strategy", false, 64, &ds))
        goto out;
    if (ds != NULL && !validate_script_name(ds)) {
        http_reply_error(req, 400, "invalid_field",
                         "\"default_strategy\" names a strategy: a-z, 0-9, '_' and '-'");
        goto out;
    }
    if (ds != NULL)
        cJSON_AddStringToObject(cfg, "default_strategy", ds);
    text = jsonx_print(cfg);
    if (text != NULL && strlen(text) > TENANT_CONFIG_MAX) {
        cJSON_free(text);
        text = NULL;
        http_reply_error(req, 400, "invalid_field",
                         "the tenant config (branding, flags, limits) exceeds %d bytes",
                         TENANT_CONFIG_MAX);
    }
out:
    cJSON_Delete(cfg);
    return text;
}

/* A new tenant has no scripts of its own yet: its default strategy must be one the registry
 * finds for it (built in, or in config/tenants/<slug>/strategies/), or panels created from a
 * frontend's default would all fail. Replies 422 when it is not. */
static bool default_strategy_exists(http_request *req, const api_deps *d, const cJSON *body,
                                    const char *slug)
{
    const char *ds = jsonx_string(body, "default_strategy");
    if (ds == NULL || d->registry == NULL)
        return true;
    script_entry en = {0};
    ap_err err = {0};
    ap_status rc = script_registry_resolve(d->registry, slug, SCRIPT_STRATEGY, ds, &en, &err);
    script_entry_free(&en);
    if (rc == AP_NOTFOUND) {
        http_reply_error(req, 422, "unknown_strategy", "no strategy named \"%s\"", ds);
        return false;
    }
    return true;
}

void api_admin_tenants_create(http_request *req, void *app)
{
    api_deps *d = app;
    cJSON *body = http_json_body(req);
    if (body == NULL)
        return;
    const char *slug, *name;
    if (!validate_known_fields(req, body, tenant_fields) ||
        !validate_string(req, body, "slug", true, 63, &slug) ||
        !validate_string(req, body, "name", true, 200, &name))
        return;
    char *cfg = tenant_config_from(req, body);
    if (cfg == NULL || !default_strategy_exists(req, d, body, slug)) {
        cJSON_free(cfg);
        return;
    }
    store_tenant t = {0};
    store_key k;
    char key[128];
    ap_err err = {0};
    if (store_tenant_create(d->store, slug, name, cfg, &t, &err) != AP_OK ||
        store_key_create(d->store, t.id, STORE_ROLE_ADMIN, key, sizeof key, &k, &err) != AP_OK)
        http_reply_ap_err(req, &err);
    else
        http_reply_json(req, 201, key_json(&t, &k, key));
    cJSON_free(cfg);
    store_tenant_free(&t);
}

void api_admin_keys_create(http_request *req, void *app)
{
    api_deps *d = app;
    char id[IDS_UUID_LEN + 1];
    if (!validate_id_param(req, "id", id))
        return;
    cJSON *body = http_json_body(req);
    if (body == NULL)
        return;
    static const char *const fields[] = {"role", NULL};
    const char *role;
    if (!validate_known_fields(req, body, fields) ||
        !validate_string(req, body, "role", true, 16, &role))
        return;
    store_role r;
    if (strcmp(role, "member") == 0)
        r = STORE_ROLE_MEMBER;
    else if (strcmp(role, "admin") == 0)
        r = STORE_ROLE_ADMIN;
    else {
        http_reply_error(req, 400, "invalid_field", "\"role\" must be member or admin");
        return;
    }
    store_tenant t = {0};
    store_key k;
    char key[128];
    ap_err err = {0};
    if (store_tenant_get(d->store, id, &t, &err) != AP_OK ||
        store_key_create(d->store, t.id, r, key, sizeof key, &k, &err) != AP_OK)
        http_reply_ap_err(req, &err);
    else
        http_reply_json(req, 201, key_json(&t, &k, key));
    store_tenant_free(&t);
}

void api_admin_keys_revoke(http_request *req, void *app)
{
    api_deps *d = app;
    char id[IDS_UUID_LEN + 1];
    if (!validate_id_param(req, "id", id))
        return;
    ap_err err = {0};
    if (store_key_revoke(d->store, id, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    http_reply_bytes(req, 204, "application/json", "", 0);
}
