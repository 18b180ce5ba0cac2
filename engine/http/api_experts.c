/* api_experts.c - the tenant's expert registry: /v1/experts. */
#include "core/clock.h"
#include "core/jsonx.h"
#include "http/api.h"
#include "http/validate.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 200
#define PERSONA_MAX_LEN 4000
#define EXPERTISE_MAX_ITEMS 32
#define EXPERTISE_ITEM_MAX 120
#define MODEL_MAX_LEN 200
/* The same bounds as an inline expert's: a weight of 1e-300 would silence an expert in a
 * weighted consensus without saying so. */
#define WEIGHT_MIN 0.001
#define WEIGHT_MAX 100.0

static const char *const expert_fields[] = {"name",  "role",   "expertise", "persona",
                                            "model", "weight", NULL};

cJSON *api_expert_json(const store_expert *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", e->id);
    cJSON_AddStringToObject(o, "name", e->name);
    cJSON_AddStringToObject(o, "role", e->role);
    cJSON *exp = e->expertise != NULL ? cJSON_Parse(e->expertise) : NULL;
    cJSON_AddItemToObject(o, "expertise", exp != NULL ? exp : cJSON_CreateArray());
    cJSON_AddStringToObject(o, "persona", e->persona != NULL ? e->persona : "");
    if (e->model != NULL)
        cJSON_AddStringToObject(o, "model", e->model);
    else
        cJSON_AddNullToObject(o, "model");
    cJSON_AddNumberToObject(o, "weight", e->weight);
    cJSON_AddNumberToObject(o, "created_at", (double)e->created_at);
    cJSON_AddNumberToObject(o, "updated_at", (double)e->updated_at);
    return o;
}

/* Reads the expert fields of body into e, over its current values (PATCH) or from nothing
 * (POST, where name and role are required). Strings are borrowed from body, except
 * expertise, which is allocated into *expertise_text (caller frees). */
static bool read_expert(http_request *req, const cJSON *body, bool creating, store_expert *e,
                        char **expertise_text)
{
    const char *name, *role, *persona, *model;
    const cJSON *expertise;
    double weight = creating ? 1.0 : e->weight;
    /* An update's null would read as "not given" and change nothing while answering 200;
     * only the model can be cleared. */
    static const char *const not_nullable[] = {"name", "role", "persona", "weight", "expertise"};
    for (size_t i = 0; !creating && i < sizeof not_nullable / sizeof not_nullable[0]; i++) {
        if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(body, not_nullable[i]))) {
            http_reply_error(req, 400, "invalid_field", "\"%s\" cannot be null", not_nullable[i]);
            return false;
        }
    }
    if (!validate_known_fields(req, body, expert_fields) ||
        !validate_string(req, body, "name", creating, NAME_MAX_LEN, &name) ||
        !validate_string(req, body, "role", creating, NAME_MAX_LEN, &role) ||
        !validate_string(req, body, "persona", false, PERSONA_MAX_LEN, &persona) ||
        !validate_string(req, body, "model", false, MODEL_MAX_LEN, &model) ||
        !validate_string_array(req, body, "expertise", false, EXPERTISE_MAX_ITEMS,
                               EXPERTISE_ITEM_MAX, &expertise) ||
        !validate_number(req, body, "weight", false, WEIGHT_MIN, WEIGHT_MAX, &weight))
        return false;
    if (name != NULL)
        e->name = (char *)name;
    if (role != NULL)
        e->role = (char *)role;
    if (persona != NULL || creating)
        e->persona = (char *)(persona != NULL ? persona : "");
    if (cJSON_HasObjectItem(body, "model") || creating)
        e->model = (char *)model;
    e->weight = weight;
    if (expertise != NULL || creating) {
        *expertise_text = expertise != NULL ? jsonx_print(expertise) : strdup("[]");
        if (*expertise_text == NULL) {
            http_reply_error(req, 500, "internal", "out of memory");
            return false;
        }
        e->expertise = *expertise_text;
    }
    return true;
}

static void reply_store_err(http_request *req, const ap_err *err)
{
    http_reply_ap_err(req, err);
}

/* All-time usage of the tenant's experts, keyed by expert id (a JSON object; caller frees).
 * An error leaves the counts out rather than failing the read. */
static cJSON *usage_by_expert(api_deps *d, const char *tenant)
{
    char *json = NULL;
    cJSON *out = cJSON_CreateObject();
    if (store_usage_summary(d->store, tenant, 0, clock_wall_ms() + 1, "expert", &json, NULL) !=
        AP_OK)
        return out;
    cJSON *rows = cJSON_Parse(json);
    free(json);
    cJSON *r;
    cJSON_ArrayForEach(r, rows)
    {
        const char *key = jsonx_string(r, "key");
        if (key == NULL)
            continue;
        cJSON *u = cJSON_CreateObject();
        cJSON_AddNumberToObject(u, "calls", jsonx_number(r, "calls", 0));
        cJSON_AddNumberToObject(u, "prompt_tokens", jsonx_number(r, "prompt_tokens", 0));
        cJSON_AddNumberToObject(u, "completion_tokens", jsonx_number(r, "completion_tokens", 0));
        cJSON_AddNumberToObject(u, "cost_usd", jsonx_number(r, "cost_usd", 0));
        cJSON_AddItemToObject(out, key, u);
    }
    cJSON_Delete(rows);
    return out;
}

/* Adds the expert's usage (zeros when it has none) to its JSON. */
static void add_usage(cJSON *expert, const cJSON *usage)
{
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(
        usage, cJSON_GetObjectItemCaseSensitive(expert, "id")->valuestring);
    if (u != NULL) {
        cJSON_AddItemToObject(expert, "usage", cJSON_Duplicate(u, true));
        return;
    }
    cJSON *z = cJSON_AddObjectToObject(expert, "usage");
    cJSON_AddNumberToObject(z, "calls", 0);
    cJSON_AddNumberToObject(z, "prompt_tokens", 0);
    cJSON_AddNumberToObject(z, "completion_tokens", 0);
    cJSON_AddNumberToObject(z, "cost_usd", 0);
}

void api_experts_list(http_request *req, void *app)
{
    api_deps *d = app;
    int limit;
    const char *cursor;
    if (!validate_page(req, 50, STORE_LIST_MAX, &limit, &cursor))
        return;
    store_expert *rows = NULL;
    size_t n = 0;
    char next[STORE_CURSOR_MAX];
    ap_err err = {0};
    if (store_expert_list(d->store, http_principal_of(req)->tenant_id, cursor, limit, &rows, &n,
                          next, &err) != AP_OK) {
        reply_store_err(req, &err);
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(body, "data");
    cJSON *usage = usage_by_expert(d, http_principal_of(req)->tenant_id);
    for (size_t i = 0; i < n; i++) {
        cJSON *e = api_expert_json(&rows[i]);
        add_usage(e, usage);
        cJSON_AddItemToArray(data, e);
    }
    cJSON_Delete(usage);
    if (next[0] != '\0')
        cJSON_AddStringToObject(body, "next_cursor", next);
    else
        cJSON_AddNullToObject(body, "next_cursor");
    store_experts_free(rows, n);
    http_reply_json(req, 200, body);
}

void api_experts_create(http_request *req, void *app)
{
    api_deps *d = app;
    cJSON *body = http_json_body(req);
    if (body == NULL)
        return;
    store_expert in = {0}, out = {0};
    char *expertise = NULL;
    ap_err err = {0};
    if (!read_expert(req, body, true, &in, &expertise))
        goto out;
    if (store_expert_create(d->store, http_principal_of(req)->tenant_id, &in, &out, &err) !=
        AP_OK) {
        reply_store_err(req, &err);
        goto out;
    }
    char location[128];
    snprintf(location, sizeof location, "/v1/experts/%s", out.id);
    http_add_header(req, "Location", location);
    http_reply_json(req, 201, api_expert_json(&out));
out:
    free(expertise);
    store_expert_free(&out);
}

void api_experts_get(http_request *req, void *app)
{
    api_deps *d = app;
    char id[IDS_UUID_LEN + 1];
    if (!validate_id_param(req, "id", id))
        return;
    store_expert e = {0};
    ap_err err = {0};
    if (store_expert_get(d->store, http_principal_of(req)->tenant_id, id, &e, &err) != AP_OK) {
        reply_store_err(req, &err);
        return;
    }
    cJSON *body = api_expert_json(&e);
    cJSON *usage = usage_by_expert(d, http_principal_of(req)->tenant_id);
    add_usage(body, usage);
    cJSON_Delete(usage);
    http_reply_json(req, 200, body);
    store_expert_free(&e);
}

void api_experts_update(http_request *req, void *app)
{
    api_deps *d = app;
    const char *tenant = http_principal_of(req)->tenant_id;
    char id[IDS_UUID_LEN + 1];
    if (!validate_id_param(req, "id", id))
        return;
    cJSON *body = http_json_body(req);
    if (body == NULL)
        return;
    store_expert cur = {0}, merged, out = {0};
    char *expertise = NULL;
    ap_err err = {0};
    if (store_expert_get(d->store, tenant, id, &cur, &err) != AP_OK) {
        reply_store_err(req, &err);
        goto out;
    }
    merged = cur;
    if (!read_expert(req, body, false, &merged, &expertise))
        goto out;
    if (store_expert_update(d->store, tenant, &merged, &out, &err) != AP_OK) {
        reply_store_err(req, &err);
        goto out;
    }
    http_reply_json(req, 200, api_expert_json(&out));
out:
    free(expertise);
    store_expert_free(&cur);
    store_expert_free(&out);
}

void api_experts_delete(http_request *req, void *app)
{
    api_deps *d = app;
    char id[IDS_UUID_LEN + 1];
    if (!validate_id_param(req, "id", id))
        return;
    ap_err err = {0};
    if (store_expert_delete(d->store, http_principal_of(req)->tenant_id, id, &err) != AP_OK) {
        reply_store_err(req, &err);
        return;
    }
    http_reply_bytes(req, 204, "application/json", "", 0);
}
