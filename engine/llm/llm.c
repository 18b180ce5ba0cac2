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

typedef struct instance {
    const llm_provider_ops *ops;
    void *self; /* NULL until first use */
} instance;

struct llm_client {
    llm_loop *loop;
    const cJSON *cfg;
    instance inst[NPROVIDERS];
    char default_provider[32];
};

struct llm_call {
    llm_client *client;
    instance *inst;
    llm_request req; /* strings below are owned copies */
    llm_callbacks cb;
    void *data;
};

bool llm_provider_known(const char *name)
{
    for (size_t i = 0; i < NPROVIDERS; i++)
        if (strcmp(providers[i]->name, name) == 0)
            return true;
    return false;
}

ap_status llm_client_new(llm_loop *loop, const cJSON *cfg, llm_client **out, ap_err *err)
{
    *out = NULL;
    llm_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    c->loop = loop;
    c->cfg = cfg;
    for (size_t i = 0; i < NPROVIDERS; i++)
        c->inst[i].ops = providers[i];
    const char *def = jsonx_string(cfg, "default_provider");
    snprintf(c->default_provider, sizeof c->default_provider, "%s",
             def != NULL ? def : "simulated");
    *out = c;
    return AP_OK;
}

void llm_client_free(llm_client *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < NPROVIDERS; i++)
        if (c->inst[i].self != NULL)
            c->inst[i].ops->destroy(c->inst[i].self);
    free(c);
}

const char *llm_client_default_provider(const llm_client *c)
{
    return c->default_provider;
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

static void free_call(llm_call *call)
{
    free((char *)call->req.tenant_id);
    free((char *)call->req.panel_id);
    free((char *)call->req.expert_id);
    free((char *)call->req.expert_json);
    free((char *)call->req.model);
    free((char *)call->req.system);
    free((char *)call->req.prompt);
    free((char *)call->req.schema_json);
    free(call);
}

static bool copy_str(const char *in, const char **out)
{
    *out = NULL;
    if (in == NULL)
        return true;
    *out = strdup(in);
    return *out != NULL;
}

ap_status llm_submit(llm_client *c, const char *provider, const llm_request *req,
                     const llm_callbacks *cb, llm_call **out, ap_err *err)
{
    *out = NULL;
    if (provider == NULL)
        provider = c->default_provider;
    instance *inst = NULL;
    for (size_t i = 0; i < NPROVIDERS; i++)
        if (strcmp(c->inst[i].ops->name, provider) == 0)
            inst = &c->inst[i];
    if (inst == NULL)
        return ap_err_set(err, AP_NOTFOUND, "unknown LLM provider '%.40s'", provider);
    if (req->prompt == NULL || req->expert_id == NULL || cb->done == NULL)
        return ap_err_set(err, AP_INVALID,
                          "an LLM request needs an expert, a prompt and a "
                          "completion callback");
    if (inst->self == NULL) {
        ap_status rc = inst->ops->create(c->loop, provider_cfg(c->cfg, provider), &inst->self, err);
        if (rc != AP_OK)
            return rc;
    }
    llm_call *call = calloc(1, sizeof *call);
    if (call == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    call->client = c;
    call->inst = inst;
    call->cb = *cb;
    call->req = *req;
    bool ok = copy_str(req->tenant_id, &call->req.tenant_id) &&
              copy_str(req->panel_id, &call->req.panel_id) &&
              copy_str(req->expert_id, &call->req.expert_id) &&
              copy_str(req->expert_json, &call->req.expert_json) &&
              copy_str(req->model, &call->req.model) && copy_str(req->system, &call->req.system) &&
              copy_str(req->prompt, &call->req.prompt) &&
              copy_str(req->schema_json, &call->req.schema_json);
    if (!ok) {
        free_call(call);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    ap_status rc = inst->ops->start(inst->self, call, err);
    if (rc != AP_OK) {
        free_call(call);
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
    free_call(call);
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
    call->cb.done(call->cb.ud, r);
    free_call(call);
}
