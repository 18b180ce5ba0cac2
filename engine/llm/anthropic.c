/* anthropic.c - the `anthropic` provider: the Messages API over the shared HTTP engine.
 * JSON answers are always asked for by instruction and validated here. */
#include "llm/anthropic_stream.h"
#include "llm/http_provider.h"

#include <stdio.h>

static struct curl_slist *auth(struct curl_slist *h, const char *key)
{
    char line[1024];
    snprintf(line, sizeof line, "x-api-key: %s", key);
    h = curl_slist_append(h, line);
    return h != NULL ? curl_slist_append(h, "anthropic-version: " LLM_ANTHROPIC_VERSION) : NULL;
}

static void *dec_new(const llm_wire_limits *l, llm_wire_on_delta cb, void *ctx)
{
    return llm_anthropic_stream_new(l, cb, ctx);
}

static ap_status dec_feed(void *d, const char *data, size_t len, ap_err *err)
{
    return llm_anthropic_stream_feed(d, data, len, err);
}

static ap_status dec_finish(void *d, ap_err *err)
{
    return llm_anthropic_stream_finish(d, err);
}

static llm_wire_reply *dec_reply(void *d)
{
    return llm_anthropic_stream_reply(d);
}

static void dec_free(void *d)
{
    llm_anthropic_stream_free(d);
}

static const llm_http_dialect dialect = {
    .name = "anthropic",
    .key_env = "ANTHROPIC_API_KEY",
    .base_env = "ANTHROPIC_BASE_URL",
    .default_base = "https://api.anthropic.com",
    .path = "/v1/messages",
    .default_model = "claude-3-5-haiku-latest",
    .native_schema = false,
    .auth_headers = auth,
    .build = llm_anthropic_build_request,
    .dec_new = dec_new,
    .dec_feed = dec_feed,
    .dec_finish = dec_finish,
    .dec_reply = dec_reply,
    .dec_free = dec_free,
    .parse = llm_anthropic_parse_response,
};

static ap_status create(llm_loop *loop, const cJSON *cfg, void **self, ap_err *err)
{
    return llm_http_create(&dialect, loop, cfg, self, err);
}

const llm_provider_ops llm_anthropic_ops = {
    .name = "anthropic",
    .create = create,
    .check = llm_http_check,
    .destroy = llm_http_destroy,
    .start = llm_http_start,
    .cancel = llm_http_cancel,
};
