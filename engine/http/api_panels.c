/* api_panels.c - /v1/panels: create, list, read, execute, cancel, human input, stream tokens.
 * The event stream itself is in api_events.c. */
#include "cache/cache.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/jsonx.h"
#include "http/api.h"
#include "http/token.h"
#include "http/validate.h"
#include "panel/engine.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define QUESTION_MAX 8000
#define TITLE_MAX 200
#define NAME_MAX_LEN 64
#define LIST_PAGE_BYTES (1024 * 1024) /* a panels page ends past this */
#define MAX_PANEL_EXPERTS 12
#define PARAMS_MAX_BYTES 16384
#define IDEMPOTENCY_KEY_MAX 128
#define INPUT_MAX_BYTES 32768
#define REQUEST_SEQ_MAX 9007199254740991LL /* 2^53 - 1: every seq up to it is exact in JSON */
#define STREAM_TOKEN_TTL_MS (5 * 60 * 1000)
#define FINISHED_PANEL_TTL_MS (5 * 60 * 1000)

static const char *const create_fields[] = {"question",  "strategy", "experts", "params",
                                            "consensus", "title",    NULL};
static const char *const inline_expert_fields[] = {"id",      "name",  "role",   "expertise",
                                                   "persona", "model", "weight", NULL};

static bool is_final(const char *status)
{
    return strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
           strcmp(status, "cancelled") == 0;
}

/* Adds a JSON-text column as parsed JSON (null when absent or unparsable). */
static void add_json(cJSON *o, const char *key, const char *text)
{
    cJSON *v = text != NULL ? cJSON_Parse(text) : NULL;
    cJSON_AddItemToObject(o, key, v != NULL ? v : cJSON_CreateNull());
}

static void add_str_or_null(cJSON *o, const char *key, const char *v)
{
    if (v != NULL)
        cJSON_AddStringToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

cJSON *api_panel_json(const store_panel *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", p->id);
    add_str_or_null(o, "title", p->title);
    cJSON_AddStringToObject(o, "question", p->question);
    cJSON_AddStringToObject(o, "strategy", p->strategy);
    add_str_or_null(o, "strategy_version", p->strategy_version);
    add_str_or_null(o, "consensus", p->consensus);
    add_json(o, "params", p->params);
    add_json(o, "experts", p->experts);
    cJSON_AddStringToObject(o, "status", p->status);
    add_json(o, "result", p->result);
    add_str_or_null(o, "error", p->error);
    cJSON_AddNumberToObject(o, "created_at", (double)p->created_at);
    cJSON_AddNumberToObject(o, "updated_at", (double)p->updated_at);
    return o;
}

/* Replies 403 when the tenant's flags disable this strategy ("strategy.<name>": false). */
bool api_strategy_allowed(http_request *req, const store_tenant *t, const char *strategy)
{
    bool allowed = api_tenant_strategy_enabled(t, strategy);
    if (!allowed)
        http_reply_error(req, 403, "strategy_disabled",
                         "the strategy \"%s\" is disabled for this tenant", strategy);
    return allowed;
}

/* One registered expert as the runtime sees it. */
static cJSON *runtime_expert(const store_expert *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", e->id);
    cJSON_AddStringToObject(o, "name", e->name);
    cJSON_AddStringToObject(o, "role", e->role);
    add_json(o, "expertise", e->expertise);
    cJSON_AddStringToObject(o, "persona", e->persona != NULL ? e->persona : "");
    if (e->model != NULL)
        cJSON_AddStringToObject(o, "model", e->model);
    cJSON_AddNumberToObject(o, "weight", e->weight);
    return o;
}

/* An inline persona from the request, checked like a registry expert. */
static cJSON *inline_expert(http_request *req, const cJSON *in, int index)
{
    const char *name, *role, *persona, *model;
    const cJSON *expertise;
    double weight = 1.0;
    if (!validate_known_fields(req, in, inline_expert_fields) ||
        !validate_string(req, in, "name", true, 200, &name) ||
        !validate_string(req, in, "role", true, 200, &role) ||
        !validate_string(req, in, "persona", false, 4000, &persona) ||
        !validate_string(req, in, "model", false, 200, &model) ||
        !validate_string_array(req, in, "expertise", false, 32, 120, &expertise) ||
        !validate_number(req, in, "weight", false, 0.001, 100.0, &weight))
        return NULL;
    cJSON *o = cJSON_CreateObject();
    char id[48];
    snprintf(id, sizeof id, "inline-%d", index + 1);
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "role", role);
    cJSON_AddItemToObject(o, "expertise",
                          expertise ? cJSON_Duplicate(expertise, true) : cJSON_CreateArray());
    cJSON_AddStringToObject(o, "persona", persona ? persona : "");
    if (model != NULL)
        cJSON_AddStringToObject(o, "model", model);
    cJSON_AddNumberToObject(o, "weight", weight);
    return o;
}

/* The panel's roster: ids of the tenant's experts and/or inline personas; without "experts",
 * the tenant's whole registry (up to the maximum), or NULL for the built-in roster.
 * Returns false after replying. *out (caller frees) may be NULL on success. */
static bool resolve_experts(http_request *req, api_deps *d, const char *tenant, const cJSON *given,
                            char **out)
{
    *out = NULL;
    cJSON *roster = cJSON_CreateArray();
    bool ok = true;
    if (given != NULL) {
        if (!cJSON_IsArray(given) || cJSON_GetArraySize(given) == 0 ||
            cJSON_GetArraySize(given) > MAX_PANEL_EXPERTS) {
            http_reply_error(req, 400, "invalid_field",
                             "\"experts\" must be an array of 1 to %d expert ids or personas",
                             MAX_PANEL_EXPERTS);
            ok = false;
        }
        int i = 0;
        const cJSON *e;
        /* a registry expert listed twice would answer twice under one id */
        char seen[MAX_PANEL_EXPERTS][IDS_UUID_LEN + 1];
        int nseen = 0;
        cJSON_ArrayForEach(e, given)
        {
            if (!ok)
                break;
            if (cJSON_IsObject(e)) {
                cJSON *x = inline_expert(req, e, i);
                ok = x != NULL;
                if (ok)
                    cJSON_AddItemToArray(roster, x);
            } else if (cJSON_IsString(e)) {
                char id[IDS_UUID_LEN + 1];
                store_expert ex = {0};
                ap_err err = {0};
                bool valid = ids_uuid_normalize(e->valuestring, id);
                for (int k = 0; valid && k < nseen; k++) {
                    if (strcmp(seen[k], id) == 0) {
                        http_reply_error(req, 400, "invalid_field",
                                         "expert \"%s\" is listed twice in \"experts\"", id);
                        ok = false;
                        break;
                    }
                }
                if (!ok)
                    break;
                if (valid && nseen < MAX_PANEL_EXPERTS)
                    memcpy(seen[nseen++], id, sizeof seen[0]);
                ap_status rc =
                    valid ? store_expert_get(d->store, tenant, id, &ex, &err) : AP_NOTFOUND;
                if (rc == AP_NOTFOUND) {
                    http_reply_error(req, 422, "unknown_expert",
                                     "expert \"%.64s\" is not in this tenant's registry",
                                     e->valuestring);
                    ok = false;
                } else if (rc != AP_OK) {
                    http_reply_ap_err(req, &err);
                    ok = false;
                } else {
                    cJSON_AddItemToArray(roster, runtime_expert(&ex));
                }
                store_expert_free(&ex);
            } else {
                http_reply_error(req, 400, "invalid_field",
                                 "each of \"experts\" is an expert id or a persona object");
                ok = false;
            }
            i++;
        }
    } else {
        store_expert *rows = NULL;
        size_t n = 0;
        char next[STORE_CURSOR_MAX];
        ap_err err = {0};
        if (store_expert_list(d->store, tenant, "", MAX_PANEL_EXPERTS, &rows, &n, next, &err) !=
            AP_OK) {
            http_reply_ap_err(req, &err);
            ok = false;
        }
        for (size_t i = 0; ok && i < n; i++)
            cJSON_AddItemToArray(roster, runtime_expert(&rows[i]));
        store_experts_free(rows, n);
    }
    if (ok && cJSON_GetArraySize(roster) > 0) {
        *out = jsonx_print(roster);
        if (*out == NULL) {
            http_reply_error(req, 500, "internal", "out of memory");
            ok = false;
        }
    }
    cJSON_Delete(roster);
    return ok;
}

/* Maps an engine error on create: params and scripts are the request's fault (422). */
/* 1 to IDEMPOTENCY_KEY_MAX printable ASCII characters, as a structured-field string. */
static bool idempotency_key_ok(const char *k)
{
    size_t n = 0;
    for (; k[n] != '\0'; n++)
        if (n == IDEMPOTENCY_KEY_MAX || k[n] < 0x20 || k[n] > 0x7e)
            return false;
    return n > 0;
}

static void reply_create_error(http_request *req, const ap_err *err)
{
    /* the registry says "no consensus algorithm named '...'" or "no strategy named '...'":
     * read by its head, as the name itself may say anything */
    if (err->status == AP_NOTFOUND)
        http_reply_error(req, 422,
                         strncmp(err->msg, "no consensus ", 13) == 0 ? "unknown_consensus"
                                                                     : "unknown_strategy",
                         "%s", err->msg);
    else if (err->status == AP_INVALID)
        http_reply_error(req, 422, "invalid_params", "%s", err->msg);
    else
        http_reply_ap_err(req, err);
}

void api_panels_create(http_request *req, void *app)
{
    api_deps *d = app;
    const char *tenant = http_principal_of(req)->tenant_id;
    cJSON *body = http_json_body(req);
    if (body == NULL)
        return;
    const char *question, *strategy, *consensus, *title;
    if (!validate_known_fields(req, body, create_fields) ||
        !validate_string(req, body, "question", true, QUESTION_MAX, &question) ||
        !validate_string(req, body, "strategy", true, NAME_MAX_LEN, &strategy) ||
        !validate_string(req, body, "consensus", false, NAME_MAX_LEN, &consensus) ||
        !validate_string(req, body, "title", false, TITLE_MAX, &title))
        return;
    if (!validate_script_name(strategy) ||
        (consensus != NULL && !validate_script_name(consensus))) {
        http_reply_error(req, 400, "invalid_field",
                         "strategy and consensus names use a-z, 0-9, '_' and '-'");
        return;
    }
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(body, "params");
    if (params != NULL && !cJSON_IsObject(params)) {
        http_reply_error(req, 400, "invalid_field", "\"params\" must be an object");
        return;
    }
    const char *idem = http_header(req, "Idempotency-Key");
    if (idem != NULL && !idempotency_key_ok(idem)) {
        http_reply_error(req, 400, "invalid_header",
                         "Idempotency-Key must be 1 to %d printable ASCII characters",
                         IDEMPOTENCY_KEY_MAX);
        return;
    }
    if (d->engine == NULL) {
        http_reply_error(req, 503, "unavailable", "panels cannot run on this server");
        return;
    }
    store_tenant t = {0};
    store_panel out = {0};
    char *experts = NULL, *params_text = NULL;
    ap_err err = {0};
    if (store_tenant_get(d->store, tenant, &t, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        goto out;
    }
    if (!api_strategy_allowed(req, &t, strategy) ||
        !resolve_experts(req, d, tenant, cJSON_GetObjectItemCaseSensitive(body, "experts"),
                         &experts))
        goto out;
    params_text = params != NULL ? jsonx_print(params) : NULL;
    if (params_text != NULL && strlen(params_text) > PARAMS_MAX_BYTES) {
        http_reply_error(req, 400, "invalid_field", "\"params\" exceeds %d bytes",
                         PARAMS_MAX_BYTES);
        goto out;
    }
    size_t body_len;
    const char *raw = http_body(req, &body_len);
    char hash[IDS_SHA256_HEX_LEN + 1];
    ids_sha256_hex(raw, body_len, hash);
    panel_create_req pc = {.title = title,
                           .question = question,
                           .strategy = strategy,
                           .consensus = consensus,
                           .params_json = params_text,
                           .experts_json = experts,
                           .idempotency_key = idem,
                           .request_hash = idem != NULL ? hash : NULL};
    if (panel_engine_create(d->engine, tenant, &pc, &out, &err) != AP_OK) {
        if (err.status == AP_CONFLICT && idem != NULL)
            http_reply_error(req, 409, "idempotency_conflict",
                             "this Idempotency-Key was used with a different request");
        else
            reply_create_error(req, &err);
        goto out;
    }
    char location[128];
    snprintf(location, sizeof location, "/v1/panels/%s", out.id);
    http_add_header(req, "Location", location);
    http_reply_json(req, 201, api_panel_json(&out));
out:
    cJSON_free(params_text);
    free(experts);
    store_panel_free(&out);
    store_tenant_free(&t);
}

void api_panels_list(http_request *req, void *app)
{
    api_deps *d = app;
    int limit;
    const char *cursor;
    if (!validate_page(req, 50, STORE_LIST_MAX, &limit, &cursor))
        return;
    const char *status = http_query(req, "status");
    static const char *const statuses[] = {"created",   "queued", "running",  "awaiting_input",
                                           "completed", "failed", "cancelled"};
    if (status != NULL) {
        size_t i = 0;
        while (i < 7 && strcmp(statuses[i], status) != 0)
            i++;
        if (i == 7) {
            http_reply_error(req, 400, "invalid_parameter",
                             "status must be one of created, "
                             "queued, running, awaiting_input, completed, failed, cancelled");
            return;
        }
    }
    store_panel *rows = NULL;
    size_t n = 0;
    char next[STORE_CURSOR_MAX];
    ap_err err = {0};
    /* A panel can carry megabytes (its result, a roster of long personas): a page ends past
     * LIST_PAGE_BYTES, so one request never reads (and one slow reader never holds) hundreds
     * of them. */
    if (store_panel_list(d->store, http_principal_of(req)->tenant_id, status, cursor, limit,
                         LIST_PAGE_BYTES, &rows, &n, next, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(body, "data");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(data, api_panel_json(&rows[i]));
    add_str_or_null(body, "next_cursor", next[0] ? next : NULL);
    store_panels_free(rows, n);
    http_reply_json(req, 200, body);
}

void api_panels_get(http_request *req, void *app)
{
    api_deps *d = app;
    const char *tenant = http_principal_of(req)->tenant_id;
    char id[IDS_UUID_LEN + 1], key[64];
    if (!validate_id_param(req, "id", id))
        return;
    /* Finished panels never change again, so they are safe to cache. */
    snprintf(key, sizeof key, "panel:%s", id);
    char *cached = NULL;
    size_t len = 0;
    if (d->cache != NULL && cache_get(d->cache, tenant, key, &cached, &len) == AP_OK) {
        http_reply_bytes(req, 200, "application/json", cached, len);
        free(cached);
        return;
    }
    store_panel p = {0};
    ap_err err = {0};
    if (store_panel_get(d->store, tenant, id, &p, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    cJSON *body = api_panel_json(&p);
    if (d->cache != NULL && is_final(p.status)) {
        char *text = jsonx_print(body);
        if (text != NULL)
            cache_set(d->cache, tenant, key, text, strlen(text), FINISHED_PANEL_TTL_MS);
        cJSON_free(text);
    }
    store_panel_free(&p);
    http_reply_json(req, 200, body);
}

/* Replies with the panel as stored now (after an action), with the given status code. */
static void reply_panel(http_request *req, api_deps *d, const char *id, unsigned status)
{
    store_panel p = {0};
    ap_err err = {0};
    if (store_panel_get(d->store, http_principal_of(req)->tenant_id, id, &p, &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    http_reply_json(req, status, api_panel_json(&p));
    store_panel_free(&p);
}

/* Shared shape of execute and cancel: check the id exists for this tenant, act, answer. */
static void panel_action(http_request *req, void *app,
                         ap_status (*act)(panel_engine *, const char *, const char *, ap_err *),
                         unsigned ok_status)
{
    api_deps *d = app;
    const char *tenant = http_principal_of(req)->tenant_id;
    char id[IDS_UUID_LEN + 1];
    if (!validate_id_param(req, "id", id))
        return;
    if (d->engine == NULL) {
        http_reply_error(req, 503, "unavailable", "panels cannot run on this server");
        return;
    }
    ap_err err = {0};
    if (act(d->engine, tenant, id, &err) == AP_OK) {
        reply_panel(req, d, id, ok_status);
    } else if (err.status == AP_LIMIT) { /* the tenant's limit of live panels */
        http_add_header(req, "Retry-After", "5");
        http_reply_error(req, 429, "too_many_panels", "%s", err.msg);
    } else {
        http_reply_ap_err(req, &err);
    }
}

/* Epoch ms of the first day of the current month (UTC). */
static int64_t month_start_ms(void)
{
    time_t now = (time_t)(clock_wall_ms() / 1000);
    struct tm tm;
    gmtime_r(&now, &tm);
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    return (int64_t)timegm(&tm) * 1000;
}

/* False (after replying 429) when the tenant has spent its monthly token budget. Checked when
 * a panel starts; a panel already running may finish past the budget. */
static bool within_budget(http_request *req, api_deps *d, const char *tenant)
{
    int64_t budget = api_tenant_limit(d, tenant, "monthly_token_budget");
    if (budget <= 0)
        return true;
    char *json = NULL;
    double used = 0;
    if (store_usage_summary(d->store, tenant, month_start_ms(), clock_wall_ms() + 1, "model", &json,
                            NULL) == AP_OK) {
        cJSON *rows = cJSON_Parse(json);
        const cJSON *r;
        cJSON_ArrayForEach(r, rows)
        {
            used += jsonx_number(r, "prompt_tokens", 0) + jsonx_number(r, "completion_tokens", 0);
        }
        cJSON_Delete(rows);
    }
    free(json);
    if (used < (double)budget)
        return true;
    http_reply_error(req, 429, "token_budget_exhausted",
                     "this tenant has used its monthly budget of %lld tokens", (long long)budget);
    return false;
}

void api_panels_execute(http_request *req, void *app)
{
    api_deps *d = app;
    const char *tenant = http_principal_of(req)->tenant_id;
    char id[IDS_UUID_LEN + 1];
    /* The tenant's limit of live panels is the engine's to keep: it counts and claims in one
     * step of the store, which holds across every process that shares it. */
    if (validate_id_param(req, "id", id) && api_panel_visible(req, d, id, NULL) &&
        within_budget(req, d, tenant))
        panel_action(req, app, panel_engine_execute, 202);
}

void api_panels_cancel(http_request *req, void *app)
{
    panel_action(req, app, panel_engine_cancel, 200);
}

void api_panels_input(http_request *req, void *app)
{
    api_deps *d = app;
    const char *tenant = http_principal_of(req)->tenant_id;
    char id[IDS_UUID_LEN + 1];
    if (!validate_id_param(req, "id", id))
        return;
    cJSON *body = http_json_body(req);
    if (body == NULL)
        return;
    static const char *const fields[] = {"input", "text", "request_seq", NULL};
    const char *text;
    int64_t request_seq = 0;
    if (!validate_known_fields(req, body, fields) ||
        !validate_string(req, body, "text", false, INPUT_MAX_BYTES, &text) ||
        !validate_integer(req, body, "request_seq", false, 1, REQUEST_SEQ_MAX, &request_seq))
        return;
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(body, "input");
    if ((input == NULL) == (text == NULL) || (input != NULL && !cJSON_IsObject(input))) {
        http_reply_error(req, 400, "invalid_field",
                         "send either \"input\" (an object) or \"text\" (a string)");
        return;
    }
    cJSON *wrapped = NULL;
    if (text != NULL) {
        wrapped = cJSON_CreateObject();
        cJSON_AddStringToObject(wrapped, "text", text);
    }
    char *json = jsonx_print(input != NULL ? input : wrapped);
    cJSON_Delete(wrapped);
    if (json == NULL || strlen(json) > INPUT_MAX_BYTES) {
        cJSON_free(json);
        http_reply_error(req, 413, "too_large", "the input exceeds %d bytes", INPUT_MAX_BYTES);
        return;
    }
    ap_err err = {0};
    ap_status rc = d->engine != NULL
                       ? panel_engine_input(d->engine, tenant, id, json, request_seq, &err)
                       : ap_err_set(&err, AP_IO, "panels cannot run here");
    cJSON_free(json);
    /* A client that named its request learns that this one is answered or superseded, which
     * is what it must act on whether another is pending or none. */
    if (rc == AP_CONFLICT) {
        http_reply_error(req, 409, request_seq > 0 ? "stale_input_request" : "no_input_pending",
                         "%s", err.msg);
        return;
    }
    if (rc != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    reply_panel(req, d, id, 202);
}

bool api_panel_visible(http_request *req, api_deps *d, const char *id, bool *final)
{
    store_panel p = {0};
    ap_err err = {0};
    ap_status rc = store_panel_get(d->store, http_principal_of(req)->tenant_id, id, &p, &err);
    if (rc == AP_OK && final != NULL)
        *final = is_final(p.status);
    store_panel_free(&p);
    if (rc != AP_OK)
        http_reply_ap_err(req, &err);
    return rc == AP_OK;
}

void api_panels_stream_token(http_request *req, void *app)
{
    api_deps *d = app;
    const http_principal *who = http_principal_of(req);
    char id[IDS_UUID_LEN + 1];
    if (!validate_id_param(req, "id", id) || !api_panel_visible(req, d, id, NULL))
        return;
    char tok[TOKEN_MAX];
    int64_t exp;
    /* The token carries the key that asked for it: revoking the key ends the token. */
    if (token_issue(who->tenant_id, id, who->key_id, STREAM_TOKEN_TTL_MS, tok, &exp) != AP_OK) {
        http_reply_error(req, 500, "internal", "cannot issue a token");
        return;
    }
    char url[TOKEN_MAX + 96];
    snprintf(url, sizeof url, "/v1/panels/%s/events?token=%s", id, tok);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "token", tok);
    cJSON_AddNumberToObject(body, "expires_at", (double)exp);
    cJSON_AddStringToObject(body, "url", url);
    http_reply_json(req, 201, body);
}
