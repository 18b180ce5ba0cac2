#include "llm/llm.h"

#include "core/jsonx.h"
#include "llm/http_provider.h"
#include "llm/provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every provider this build knows. */
static const llm_provider_ops *const providers[] = {
    &llm_simulated_ops,
    &llm_openai_ops,
    &llm_anthropic_ops,
};
#define NPROVIDERS (sizeof providers / sizeof providers[0])

#define MAX_INSTANCES 32
#define NAME_MAX_LEN 32

/* A provider as the config names it: a built-in name, or any name of a built-in type
 * (llm.providers.<name>.type), e.g. a vLLM and an Ollama server side by side as "openai". */
typedef struct instance {
    char name[NAME_MAX_LEN];
    const llm_provider_ops *ops;
    const cJSON *cfg; /* llm.providers.<name> (or llm.<name>), may be NULL */
    void *self;       /* NULL until first use */
} instance;

struct llm_client {
    llm_loop *loop;
    const cJSON *cfg;
    instance inst[MAX_INSTANCES];
    size_t ninst;
    char default_provider[NAME_MAX_LEN];
};

struct llm_call {
    llm_client *client;
    instance *inst;
    llm_request req; /* its strings point into text */
    llm_callbacks cb;
    void *data;
    /* Copies of the request's strings: a call is one allocation (a panel makes thousands of
     * calls in a burst, and malloc was a tenth of a runner's time there). */
    char text[];
};

static const llm_provider_ops *ops_of_type(const char *type)
{
    for (size_t i = 0; type != NULL && i < NPROVIDERS; i++)
        if (strcmp(providers[i]->name, type) == 0)
            return providers[i];
    return NULL;
}

/* The provider's config object: llm.providers.<name>, else llm.<name>. */
static const cJSON *provider_cfg(const cJSON *cfg, const char *name)
{
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(cfg, "providers");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(ps, name);
    if (cJSON_IsObject(p))
        return p;
    p = cJSON_GetObjectItemCaseSensitive(cfg, name);
    return cJSON_IsObject(p) ? p : NULL;
}

bool llm_provider_known(const cJSON *cfg, const char *name)
{
    if (ops_of_type(name) != NULL)
        return true;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItem(cfg, "providers"), name);
    return ops_of_type(jsonx_string(p, "type")) != NULL;
}

static instance *find_instance(llm_client *c, const char *name)
{
    for (size_t i = 0; name != NULL && i < c->ninst; i++)
        if (strcmp(c->inst[i].name, name) == 0)
            return &c->inst[i];
    return NULL;
}

static ap_status add_instance(llm_client *c, const char *name, const llm_provider_ops *ops,
                              ap_err *err)
{
    if (strlen(name) >= NAME_MAX_LEN || c->ninst == MAX_INSTANCES)
        return ap_err_set(err, AP_INVALID,
                          "llm.providers.%.40s: name too long, or more than %d providers", name,
                          MAX_INSTANCES);
    instance *in = &c->inst[c->ninst++];
    snprintf(in->name, sizeof in->name, "%s", name);
    in->ops = ops;
    in->cfg = provider_cfg(c->cfg, name);
    return AP_OK;
}

/* Checks llm.models: each alias names a configured provider and a model. */
static ap_status check_models(llm_client *c, ap_err *err)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(c->cfg, "models"))
    {
        if (!cJSON_IsObject(m) || jsonx_string(m, "model") == NULL ||
            find_instance(c, jsonx_string(m, "provider")) == NULL)
            return ap_err_set(err, AP_INVALID,
                              "llm.models.%.40s: needs \"provider\" (a configured provider) and "
                              "\"model\"",
                              m->string);
    }
    return AP_OK;
}

/* Adds llm.providers.<name> entries of a built-in type under their own names. */
static ap_status add_named(llm_client *c, ap_err *err)
{
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(c->cfg, "providers"))
    {
        const char *type = jsonx_string(p, "type");
        if (!cJSON_IsObject(p))
            return ap_err_set(err, AP_INVALID, "llm.providers.%.40s must be an object", p->string);
        if (find_instance(c, p->string) != NULL) {
            if (type != NULL && strcmp(type, p->string) != 0)
                return ap_err_set(err, AP_INVALID,
                                  "llm.providers.%.40s: a built-in provider keeps its type",
                                  p->string);
            continue;
        }
        if (ops_of_type(type) == NULL)
            return ap_err_set(err, AP_INVALID,
                              "llm.providers.%.40s: \"type\" must be simulated, openai or "
                              "anthropic",
                              p->string);
        ap_status rc = add_instance(c, p->string, ops_of_type(type), err);
        if (rc != AP_OK)
            return rc;
    }
    return AP_OK;
}

/* The llm section itself: its own keys, and a built-in provider's object under its name. */
static ap_status check_top(const cJSON *cfg, ap_err *err)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, cfg)
    {
        const char *k = m->string;
        bool ok;
        if (strcmp(k, "default_provider") == 0)
            ok = cJSON_IsString(m);
        else if (strcmp(k, "providers") == 0 || strcmp(k, "models") == 0 || ops_of_type(k) != NULL)
            ok = cJSON_IsObject(m);
        else
            return ap_err_set(err, AP_INVALID,
                              "llm: unknown key '%.60s' (default_provider, providers, models)", k);
        if (!ok)
            return ap_err_set(err, AP_INVALID, "llm.%.40s has the wrong type", k);
    }
    return AP_OK;
}

ap_status llm_client_new(llm_loop *loop, const cJSON *cfg, llm_client **out, ap_err *err)
{
    *out = NULL;
    ap_status rc = AP_OK;
    llm_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    c->loop = loop;
    c->cfg = cfg;
    rc = check_top(cfg, err);
    for (size_t i = 0; i < NPROVIDERS && rc == AP_OK; i++)
        rc = add_instance(c, providers[i]->name, providers[i], err);
    if (rc == AP_OK)
        rc = add_named(c, err);
    for (size_t i = 0; i < c->ninst && rc == AP_OK; i++)
        if (c->inst[i].cfg != NULL)
            rc = c->inst[i].ops->check(c->inst[i].cfg, c->inst[i].name, err);
    const char *def = jsonx_string(cfg, "default_provider");
    if (rc == AP_OK && def != NULL && find_instance(c, def) == NULL)
        rc = ap_err_set(err, AP_INVALID, "llm.default_provider: no provider named \"%.40s\"", def);
    if (rc == AP_OK)
        rc = check_models(c, err);
    if (rc != AP_OK) {
        free(c);
        return rc;
    }
    snprintf(c->default_provider, sizeof c->default_provider, "%s",
             def != NULL ? def : "simulated");
    *out = c;
    return AP_OK;
}

void llm_client_free(llm_client *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->ninst; i++)
        if (c->inst[i].self != NULL)
            c->inst[i].ops->destroy(c->inst[i].self);
    free(c);
}

const char *llm_client_default_provider(const llm_client *c)
{
    return c->default_provider;
}

/* The model alias (llm.models.<alias>) a request names through req->model or else the
 * expert's "model"; NULL when it names none. */
static const cJSON *model_alias(const llm_client *c, const llm_request *req)
{
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(c->cfg, "models");
    if (models == NULL)
        return NULL;
    if (req->model != NULL)
        return cJSON_GetObjectItemCaseSensitive(models, req->model);
    cJSON *expert = req->expert_json != NULL
                        ? jsonx_parse(req->expert_json, strlen(req->expert_json), 32, NULL)
                        : NULL;
    const char *name = jsonx_string(expert, "model");
    const cJSON *alias = name != NULL ? cJSON_GetObjectItemCaseSensitive(models, name) : NULL;
    cJSON_Delete(expert);
    return alias;
}

/* A call with copies of req's strings, model in place of req->model; NULL when out of
 * memory. */
static llm_call *new_call(const llm_request *req, const char *model)
{
    const char *const from[] = {req->tenant_id, req->panel_id, req->expert_id, req->expert_json,
                                model,          req->system,   req->prompt,    req->schema_json};
    size_t len[sizeof from / sizeof from[0]], total = 0;
    for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
        len[i] = from[i] != NULL ? strlen(from[i]) + 1 : 0;
        total += len[i];
    }
    llm_call *call = calloc(1, sizeof *call + total);
    if (call == NULL)
        return NULL;
    call->req = *req;
    const char **const to[] = {&call->req.tenant_id,   &call->req.panel_id,   &call->req.expert_id,
                               &call->req.expert_json, &call->req.model,      &call->req.system,
                               &call->req.prompt,      &call->req.schema_json};
    char *at = call->text;
    for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
        *to[i] = from[i] != NULL ? memcpy(at, from[i], len[i]) : NULL;
        at += len[i];
    }
    return call;
}

ap_status llm_submit(llm_client *c, const char *provider, const llm_request *req,
                     const llm_callbacks *cb, llm_call **out, ap_err *err)
{
    *out = NULL;
    const cJSON *alias = model_alias(c, req);
    if (provider == NULL)
        provider = alias != NULL ? jsonx_string(alias, "provider") : c->default_provider;
    instance *inst = find_instance(c, provider);
    if (inst == NULL)
        return ap_err_set(err, AP_NOTFOUND, "unknown LLM provider '%.40s'", provider);
    if (req->prompt == NULL || req->expert_id == NULL || cb->done == NULL)
        return ap_err_set(err, AP_INVALID,
                          "an LLM request needs an expert, a prompt and a "
                          "completion callback");
    if (inst->self == NULL) {
        ap_status rc = inst->ops->create(c->loop, inst->cfg, &inst->self, err);
        if (rc != AP_OK)
            return rc;
    }
    llm_call *call = new_call(req, alias != NULL ? jsonx_string(alias, "model") : req->model);
    if (call == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    call->client = c;
    call->inst = inst;
    call->cb = *cb;
    ap_status rc = inst->ops->start(inst->self, call, err);
    if (rc != AP_OK) {
        free(call);
        return rc;
    }
    *out = call;
    return AP_OK;
}

void llm_cancel(llm_call *call)
{
    if (call == NULL)
        return;
    call->inst->ops->cancel(call->inst->self, call);
    free(call);
}

const llm_request *llm_call_request(const llm_call *call)
{
    return &call->req;
}

llm_loop *llm_call_loop(const llm_call *call)
{
    return call->client->loop;
}

void llm_call_set_data(llm_call *call, void *data)
{
    call->data = data;
}

void *llm_call_data(const llm_call *call)
{
    return call->data;
}

void llm_call_delta(llm_call *call, const char *text, size_t len)
{
    if (call->cb.delta != NULL)
        call->cb.delta(call->cb.ud, text, len);
}

void llm_call_finish(llm_call *call, const llm_response *r)
{
    /* The configured name the call was made on ("azure" of type openai), which usage rows and
     * error messages report, not the provider's type. */
    llm_response named = *r;
    named.provider = call->inst->name;
    call->cb.done(call->cb.ud, &named);
    free(call);
}
