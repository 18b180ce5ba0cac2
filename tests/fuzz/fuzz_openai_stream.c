/* Fuzz target: the OpenAI stream decoder, for the property in stream_fuzz.h. */
#include "llm/openai_stream.h"
#include "stream_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void *create(const llm_wire_limits *lim, llm_wire_on_delta on_delta, void *ctx)
{
    return llm_openai_stream_new(lim, on_delta, ctx);
}

static ap_status feed(void *s, const char *data, size_t len)
{
    return llm_openai_stream_feed(s, data, len, NULL);
}

static ap_status finish(void *s)
{
    return llm_openai_stream_finish(s, NULL);
}

static llm_wire_reply *reply(void *s)
{
    return llm_openai_stream_reply(s);
}

static void destroy(void *s)
{
    llm_openai_stream_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const stream_api api = {create, feed, finish, reply, destroy};
    return stream_fuzz_one(&api, data, size);
}
