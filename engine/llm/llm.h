/* llm.h - asynchronous, provider-neutral LLM calls on a runner's event loop.
 *
 * A runner owns one llm_client bound to its llm_loop. llm_submit starts a call and returns at
 * once; the provider streams deltas and finishes through the callbacks, always later on the
 * loop thread (never inside llm_submit). llm_cancel aborts a call at once and guarantees no
 * callback runs afterwards. Providers: "simulated" (built in, deterministic, offline) and the
 * HTTP providers registered in llm.c's table (see llm/provider.h). */
#ifndef AP_LLM_H
#define AP_LLM_H

#include "core/status.h"
#include "llm/loop.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct llm_request {
    const char *tenant_id; /* for usage accounting; may be NULL */
    const char *panel_id;  /* may be NULL */
    const char *expert_id;
    const char *expert_json; /* the expert object: name, role, persona, expertise, model */
    const char *model;       /* NULL: the expert's model, else the provider's default */
    const char *system;      /* may be NULL */
    const char *prompt;
    const char *schema_json; /* JSON Schema of the answer, NULL for prose */
    bool stream;             /* deliver deltas */
    int64_t max_tokens;      /* 0: provider default */
    double temperature;      /* < 0: provider default */
    uint64_t seed;           /* the panel's seed (simulated: part of the determinism key) */
} llm_request;

typedef struct llm_response {
    ap_status status;      /* AP_OK, or why the call failed after retries */
    const char *text;      /* the answer (JSON text when a schema was given) */
    const char *data_json; /* the validated JSON answer when a schema was given */
    int64_t prompt_tokens;
    int64_t completion_tokens;
    const char *provider; /* the configured name the call ran on (its type for a built-in) */
    const char *model;
    int attempts;
    int64_t latency_ms;
    double cost_usd;
    const char *error; /* message when status != AP_OK */
} llm_response;

typedef struct llm_callbacks {
    void (*delta)(void *ud, const char *text, size_t len); /* may be NULL */
    void (*done)(void *ud, const llm_response *r);         /* exactly once unless cancelled */
    void *ud;
} llm_callbacks;

typedef struct llm_client llm_client;
typedef struct llm_call llm_call;

/* Creates the client of one loop; cfg is the config's "llm" object (may be NULL), borrowed
 * for the client's life. Providers are instantiated on first use. Caller frees. */
ap_status llm_client_new(llm_loop *loop, const cJSON *cfg, llm_client **out, ap_err *err);

/* Frees the client; every call must have finished or been cancelled. NULL is fine. */
void llm_client_free(llm_client *c);

/* The provider used when a request names none: cfg "default_provider", else "simulated". */
const char *llm_client_default_provider(const llm_client *c);

/* Starts a call on provider (NULL: the default). The request is copied. *out is the cancel
 * handle, valid until the done callback returns or llm_cancel. AP_NOTFOUND for an unknown
 * provider. */
ap_status llm_submit(llm_client *c, const char *provider, const llm_request *req,
                     const llm_callbacks *cb, llm_call **out, ap_err *err);

/* Aborts a call at once; no callback runs afterwards. NULL is fine. */
void llm_cancel(llm_call *call);

/* True when name is a built-in provider or one that cfg (the "llm" object, may be NULL)
 * declares under providers.<name> with a built-in "type". */
bool llm_provider_known(const cJSON *cfg, const char *name);

#endif
