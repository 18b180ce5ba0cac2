/* openai.c - the `openai` provider: Chat Completions over the shared HTTP engine. Works with
 * OpenAI and the OpenAI-compatible servers (vLLM, Ollama, llama.cpp server, OpenRouter) by
 * pointing base_url / OPENAI_BASE_URL at them; servers without json_schema support take
 * schema_mode "instruct". */
#include "llm/http_provider.h"
#include "llm/openai_stream.h"

#include <stdio.h>

static struct curl_slist *auth(struct curl_slist *h, const char *key)
{
    if (key[0] == '\0')
        return h; /* local servers (Ollama, llama.cpp) need none */
    char line[1024];
    snprintf(line, sizeof line, "Authorization: Bearer %s", key);
    return curl_slist_append(h, line);
}

static void *dec_new(const llm_wire_limits *l, llm_wire_on_delta cb, void *ctx)
{
    return llm_openai_stream_new(l, cb, ctx);
}

static ap_status dec_feed(void *d, const char *data, size_t len, ap_err *err)
{
    return llm_openai_stream_feed(d, data, len, err);
}

static ap_status dec_finish(void *d, ap_err *err)
{
    return llm_openai_stream_finish(d, err);
}

static llm_wire_reply *dec_reply(void *d)
{
    return llm_openai_stream_reply(d);
}

static void dec_free(void *d)
{
    llm_openai_stream_free(d);
}

static const llm_http_dialect dialect = {
    .name = "openai",
    .key_env = "OPENAI_API_KEY",
    .base_env = "OPENAI_BASE_URL",
    .default_base = "https://api.openai.com/v1",
    .path = "/chat/completions",
    .default_model = "gpt-4o-mini",
    .native_schema = true,
    .auth_headers = auth,
    .build = llm_openai_build_request,
    .dec_new = dec_new,
    .dec_feed = dec_feed,
    .dec_finish = dec_finish,
    .dec_reply = dec_reply,
    .dec_free = dec_free,
    .parse = llm_openai_parse_response,
};

static ap_status create(llm_loop *loop, const cJSON *cfg, void **self, ap_err *err)
{
    return llm_http_create(&dialect, loop, cfg, self, err);
}

const llm_provider_ops llm_openai_ops = {
    .name = "openai",
    .create = create,
    .check = llm_http_check,
    .destroy = llm_http_destroy,
    .start = llm_http_start,
    .cancel = llm_http_cancel,
};
