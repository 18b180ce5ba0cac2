/* provider.h - what an LLM provider implements (for llm.c and the provider files only).
 *
 * A provider instance belongs to one llm_client (one loop, one thread). start() begins the
 * call and returns; later, on the loop thread, the provider calls llm_call_delta() for stream
 * pieces and llm_call_finish() exactly once. cancel() aborts the transfer and must not finish
 * the call. To add a provider, add its ops to the table in llm.c. */
#ifndef AP_LLM_PROVIDER_H
#define AP_LLM_PROVIDER_H

#include "llm/llm.h"

typedef struct llm_provider_ops {
    const char *name;
    /* cfg: the provider's object of the llm config (may be NULL). */
    ap_status (*create)(llm_loop *loop, const cJSON *cfg, void **self, ap_err *err);
    /* Refuses unknown keys, wrong types and values out of range in cfg (the provider's config
     * object, named name in messages), so a typo stops the engine instead of meaning a
     * default. */
    ap_status (*check)(const cJSON *cfg, const char *name, ap_err *err);
    void (*destroy)(void *self);
    ap_status (*start)(void *self, llm_call *call, ap_err *err);
    void (*cancel)(void *self, llm_call *call);
} llm_provider_ops;

/* The request of a call (borrowed, valid until the call ends). */
const llm_request *llm_call_request(const llm_call *call);

/* The loop the call runs on. */
llm_loop *llm_call_loop(const llm_call *call);

/* Provider-private state of a call. */
void llm_call_set_data(llm_call *call, void *data);
void *llm_call_data(const llm_call *call);

/* Passes a piece of streamed text to the caller. */
void llm_call_delta(llm_call *call, const char *text, size_t len);

/* Ends the call: runs the done callback, then frees the call. */
void llm_call_finish(llm_call *call, const llm_response *r);

extern const llm_provider_ops llm_simulated_ops;

#endif
