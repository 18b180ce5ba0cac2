/* http_provider.h - the HTTP engine behind the `openai` and `anthropic` providers (for
 * openai.c and anthropic.c only; the rest of the engine sees llm.h).
 *
 * One instance per llm_client (one runner loop): curl multi handles driven by
 * curl_multi_socket_action from the loop's epoll watches and timers, so thousands of
 * transfers share one thread. It owns every retry (curl itself never retries): exponential
 * backoff with jitter honouring Retry-After / retry-after-ms, on connection errors, timeouts,
 * 408/409/429/5xx/529 and in-stream overload errors; never on 400/401/403/404 or a 429 that
 * says a spend or quota limit was reached. After the retries of a model it moves to the
 * expert's fallback models. JSON answers are validated against the schema with one repair
 * attempt that shows the model its error. At most max_concurrency transfers run at once per
 * instance; the rest wait in a FIFO queue. Cancelling a call removes its transfer: over HTTP/1.1
 * that closes its connection at once; over HTTP/2 it resets only its stream, which libcurl 7.88
 * sends when it next services that shared connection (at once while other calls use it). Deltas are
 * passed on as they arrive; once an attempt that already streamed some fails (or is repaired),
 * later attempts stream nothing, so the caller never sees text twice: the final response carries
 * the whole answer.
 *
 * Provider config (llm.providers.<name>, every key optional):
 *   base_url, api_key (else the SDK environment variables), model (default model),
 *   fallback_models [..], max_concurrency (256), max_attempts per model (4),
 *   backoff_base_ms (250), backoff_cap_ms (8000), retry_after_max_ms (60000: a
 *   longer Retry-After fails the attempt's model instead of waiting), connect_timeout_ms (10000),
 *   first_token_timeout_ms (60000), idle_timeout_ms (30000), total_timeout_ms (300000),
 *   max_response_bytes (4 MiB, non-streaming), max_stream_bytes (64 MiB), max_answer_bytes
 *   (256 KiB), headers { "Name": "value" } (sent with every request), max_tokens_field
 *   ("max_tokens"; "max_completion_tokens" for OpenAI reasoning models), schema_mode
 *   ("native"|"instruct"; openai default native, anthropic always instruct),
 *   http_version ("auto": HTTP/2 where TLS negotiates it, else HTTP/1.1; "2": HTTP/2 also in
 *   clear text, with prior knowledge; "1.1"), max_streams_per_connection (100, HTTP/2),
 *   ca_file (PEM file of the certificates to trust instead of the system store),
 *   prices { "<model>": { "prompt": USD per million tokens, "completion": USD per million } }.
 * An expert object may carry "model" and "fallback_models". Token usage comes from the
 * provider; a server that reports none is estimated at about 4 bytes a token. */
#ifndef AP_LLM_HTTP_PROVIDER_H
#define AP_LLM_HTTP_PROVIDER_H

#include "llm/http_wire.h"
#include "llm/provider.h"

#include <curl/curl.h>

/* What differs between the OpenAI and Anthropic wire protocols. */
typedef struct llm_http_dialect {
    const char *name;         /* provider name, also used in error messages */
    const char *key_env;      /* OPENAI_API_KEY / ANTHROPIC_API_KEY */
    const char *base_env;     /* OPENAI_BASE_URL / ANTHROPIC_BASE_URL */
    const char *default_base; /* used when neither config nor environment names one */
    const char *path;         /* appended to the base URL */
    const char *default_model;
    bool native_schema; /* whether response_format json_schema may be used */
    /* Appends the authentication (and version) headers; NULL on allocation failure. */
    struct curl_slist *(*auth_headers)(struct curl_slist *h, const char *key);
    char *(*build)(const llm_wire_request *r, ap_err *err);
    void *(*dec_new)(const llm_wire_limits *limits, llm_wire_on_delta on_delta, void *ctx);
    ap_status (*dec_feed)(void *dec, const char *data, size_t len, ap_err *err);
    ap_status (*dec_finish)(void *dec, ap_err *err);
    llm_wire_reply *(*dec_reply)(void *dec);
    void (*dec_free)(void *dec);
    ap_status (*parse)(const char *body, size_t len, const llm_wire_limits *limits,
                       llm_wire_reply *out, ap_err *err);
} llm_http_dialect;

/* The provider operations, parameterised by a dialect (borrowed, static storage). */
/* The provider ops' check for both dialects: the keys above, their types and bounds. */
ap_status llm_http_check(const cJSON *cfg, const char *name, ap_err *err);

ap_status llm_http_create(const llm_http_dialect *d, llm_loop *loop, const cJSON *cfg, void **self,
                          ap_err *err);
void llm_http_destroy(void *self);
ap_status llm_http_start(void *self, llm_call *call, ap_err *err);
void llm_http_cancel(void *self, llm_call *call);

/* The providers themselves (openai.c, anthropic.c); to be listed in llm.c's table. */
extern const llm_provider_ops llm_openai_ops;
extern const llm_provider_ops llm_anthropic_ops;

#endif
