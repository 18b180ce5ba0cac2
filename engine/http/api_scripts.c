/* api_scripts.c - /v1/strategies and /v1/consensus-algorithms: what a tenant may use, and its
 * own overrides, uploaded as Lua, validated before they are accepted, versioned by content. */
#include "core/jsonx.h"
#include "core/log.h"
#include "http/api.h"
#include "http/validate.h"
#include "panel/engine.h"
#include "script/registry.h"
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

#define SOURCE_MAX (256 * 1024)

static store_script_kind store_kind(script_kind k)
{
    return k == SCRIPT_STRATEGY ? STORE_SCRIPT_STRATEGY : STORE_SCRIPT_CONSENSUS;
}

/* A malformed name cannot name a script: 404 like any other missing one. */
static bool valid_name(http_request *req, const char *name)
{
    bool ok = validate_script_name(name);
    if (!ok)
        http_reply_error(req, 404, "not_found", "no such script");
    return ok;
}

static cJSON *entry_json(const script_entry *e, bool with_source)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", e->name);
    cJSON_AddStringToObject(o, "kind", e->kind == SCRIPT_STRATEGY ? "strategy" : "consensus");
    cJSON_AddStringToObject(o, "description", e->info.description ? e->info.description : "");
    cJSON_AddStringToObject(o, "version", e->version);
    cJSON_AddStringToObject(o, "origin", e->origin ? e->origin : "builtin");
    if (e->kind == SCRIPT_STRATEGY) {
        cJSON *params = e->info.params_json ? cJSON_Parse(e->info.params_json) : NULL;
        cJSON_AddItemToObject(o, "params", params ? params : cJSON_CreateObject());
        if (e->info.consensus != NULL)
            cJSON_AddStringToObject(o, "consensus", e->info.consensus);
        else
            cJSON_AddNullToObject(o, "consensus");
        cJSON *nodes = e->info.nodes_json ? cJSON_Parse(e->info.nodes_json) : NULL;
        cJSON_AddItemToObject(o, "nodes", nodes ? nodes : cJSON_CreateArray());
        cJSON_AddStringToObject(o, "start", e->info.start ? e->info.start : "");
    }
    if (with_source)
        cJSON_AddStringToObject(o, "source", e->source ? e->source : "");
    return o;
}

/* The tenant (for its slug and flags); replies on failure. */
static bool load_tenant(http_request *req, api_deps *d, store_tenant *t)
{
    ap_err err = {0};
    if (store_tenant_get(d->store, http_principal_of(req)->tenant_id, t, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return false;
    }
    if (d->registry == NULL) {
        http_reply_error(req, 503, "unavailable", "scripts are not available on this server");
        return false;
    }
    return true;
}

/* Resolves name for the tenant as its panels would. */
static ap_status resolve(api_deps *d, const store_tenant *t, script_kind kind, const char *name,
                         script_entry *out, ap_err *err)
{
    return panel_engine_resolve_script(d->store, d->registry, t->id, t->slug, kind, name, out, err);
}

static bool strategy_disabled(const store_tenant *t, script_kind kind, const char *name)
{
    return kind == SCRIPT_STRATEGY && !api_tenant_strategy_enabled(t, name);
}

static void list(http_request *req, void *app, script_kind kind)
{
    api_deps *d = app;
    store_tenant t = {0};
    char *json = NULL;
    cJSON *all = NULL;
    ap_err err = {0};
    if (!load_tenant(req, d, &t))
        goto out;
    if (panel_engine_list_scripts(d->engine, t.id, kind, &json, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        goto out;
    }
    all = cJSON_Parse(json);
    cJSON *body = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(body, "data");
    cJSON *item;
    cJSON_ArrayForEach(item, all)
    {
        const char *name = jsonx_string(item, "name");
        if (name == NULL || strategy_disabled(&t, kind, name))
            continue;
        cJSON *o = cJSON_Duplicate(item, true);
        cJSON_AddStringToObject(o, "kind", kind == SCRIPT_STRATEGY ? "strategy" : "consensus");
        if (!cJSON_HasObjectItem(o, "description"))
            cJSON_AddStringToObject(o, "description", "");
        cJSON_AddItemToArray(data, o);
    }
    http_reply_json(req, 200, body);
out:
    cJSON_Delete(all);
    free(json);
    store_tenant_free(&t);
}

static void get(http_request *req, void *app, script_kind kind)
{
    api_deps *d = app;
    const char *name = http_param(req, "name");
    store_tenant t = {0};
    script_entry e = {0};
    ap_err err = {0};
    if (!valid_name(req, name) || !load_tenant(req, d, &t))
        goto out;
    if (strategy_disabled(&t, kind, name)) {
        http_reply_error(req, 403, "strategy_disabled",
                         "the strategy \"%s\" is disabled for this tenant", name);
        goto out;
    }
    ap_status rc = resolve(d, &t, kind, name, &e, &err);
    if (rc == AP_NOTFOUND)
        http_reply_error(req, 404, "not_found", "no script named \"%s\"", name);
    else if (rc != AP_OK)
        http_reply_ap_err(req, &err);
    else
        http_reply_json(req, 200, entry_json(&e, true));
out:
    script_entry_free(&e);
    store_tenant_free(&t);
}

/* The uploaded source: the raw body (text/x-lua, text/plain) or {"source": "..."}. */
static const char *upload_source(http_request *req, size_t *len)
{
    const char *ctype = http_header(req, "Content-Type");
    if (http_is_json_type(ctype)) {
        cJSON *body = http_json_body(req);
        static const char *const fields[] = {"source", NULL};
        const char *src;
        if (body == NULL || !validate_known_fields(req, body, fields) ||
            !validate_string(req, body, "source", true, SOURCE_MAX, &src))
            return NULL;
        *len = strlen(src);
        return src;
    }
    const char *src = http_body(req, len);
    if (*len == 0 || *len > SOURCE_MAX || memchr(src, '\0', *len) != NULL ||
        !jsonx_utf8_valid(src, *len)) {
        http_reply_error(req, 400, "invalid_script",
                         "send the script as UTF-8 Lua source of 1 to %d bytes", SOURCE_MAX);
        return NULL;
    }
    return src;
}

/* The line of a "name.lua:LINE: message" error, 0 when there is none. */
static long error_line(const char *msg)
{
    const char *p = strstr(msg, ".lua:");
    if (p == NULL)
        return 0;
    char *end = NULL;
    long line = strtol(p + 5, &end, 10);
    return end != p + 5 && *end == ':' ? line : 0;
}

static void reply_invalid_script(http_request *req, const char *msg, int line)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "code", "invalid_script");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "request_id", http_request_id(req));
    if (line <= 0)
        line = (int)error_line(msg);
    if (line > 0)
        cJSON_AddNumberToObject(e, "line", (double)line);
    http_reply_json(req, 422, root);
}

static void put(http_request *req, void *app, script_kind kind)
{
    api_deps *d = app;
    const char *name = http_param(req, "name");
    store_tenant t = {0};
    script_entry e = {0};
    ap_err err = {0};
    size_t len = 0;
    if (!valid_name(req, name) || !load_tenant(req, d, &t))
        goto out;
    if (api_tenant_flag_off(&t, "custom_strategies")) {
        http_reply_error(req, 403, "forbidden", "custom scripts are disabled for this tenant");
        goto out;
    }
    const char *src = upload_source(req, &len);
    if (src == NULL)
        goto out;
    int line = 0;
    char version[IDS_SHA256_HEX_LEN + 1];
    ap_status rc =
        panel_engine_put_script(d->engine, t.id, kind, name, src, len, version, &line, &err);
    if (rc == AP_INVALID) {
        reply_invalid_script(req, err.msg, line);
        goto out;
    }
    if (rc != AP_OK || resolve(d, &t, kind, name, &e, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        goto out;
    }
    log_fields f = {.request_id = http_request_id(req), .tenant_id = t.id};
    log_msg(LOG_LEVEL_INFO, &f, "%s \"%s\" overridden with version %.12s",
            kind == SCRIPT_STRATEGY ? "strategy" : "consensus algorithm", name, e.version);
    http_reply_json(req, 200, entry_json(&e, false));
out:
    script_entry_free(&e);
    store_tenant_free(&t);
}

static void delete (http_request *req, void *app, script_kind kind)
{
    api_deps *d = app;
    const char *name = http_param(req, "name");
    ap_err err = {0};
    if (!valid_name(req, name))
        return;
    ap_status rc = store_script_deactivate(d->store, http_principal_of(req)->tenant_id,
                                           store_kind(kind), name, &err);
    if (rc == AP_NOTFOUND)
        http_reply_error(req, 404, "not_found", "this tenant has no override of \"%s\"", name);
    else if (rc != AP_OK)
        http_reply_ap_err(req, &err);
    else
        http_reply_bytes(req, 204, "application/json", "", 0);
}

static void versions(http_request *req, void *app, script_kind kind)
{
    api_deps *d = app;
    const char *name = http_param(req, "name");
    store_script *rows = NULL;
    size_t n = 0;
    ap_err err = {0};
    if (!valid_name(req, name))
        return;
    if (store_script_list(d->store, http_principal_of(req)->tenant_id, store_kind(kind), name,
                          &rows, &n, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(body, "data");
    for (size_t i = 0; i < n; i++) {
        cJSON *v = cJSON_CreateObject();
        cJSON_AddStringToObject(v, "version", rows[i].version);
        cJSON_AddStringToObject(v, "origin", rows[i].origin ? rows[i].origin : "override");
        cJSON_AddBoolToObject(v, "active", rows[i].active);
        cJSON_AddNumberToObject(v, "created_at", (double)rows[i].created_at);
        cJSON_AddItemToArray(data, v);
    }
    store_scripts_free(rows, n);
    http_reply_json(req, 200, body);
}

/* Both resources share these handlers; the path says which kind of script it is about. */
static script_kind kind_of(const http_request *req)
{
    return strncmp(http_path(req), "/v1/consensus-algorithms", 24) == 0 ? SCRIPT_CONSENSUS
                                                                        : SCRIPT_STRATEGY;
}

void api_scripts_list(http_request *req, void *app)
{
    list(req, app, kind_of(req));
}

void api_scripts_get(http_request *req, void *app)
{
    get(req, app, kind_of(req));
}

void api_scripts_put(http_request *req, void *app)
{
    put(req, app, kind_of(req));
}

void api_scripts_delete(http_request *req, void *app)
{
    delete (req, app, kind_of(req));
}

void api_scripts_versions(http_request *req, void *app)
{
    versions(req, app, kind_of(req));
}

void api_admin_reload(http_request *req, void *app)
{
    api_deps *d = app;
    size_t changed = 0;
    ap_err err = {0};
    if (d->registry == NULL) {
        http_reply_error(req, 503, "unavailable", "scripts are not available on this server");
        return;
    }
    if (script_registry_reload(d->registry, &changed, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "changed", (double)changed);
    http_reply_json(req, 200, body);
}
