/* stream_api.h - the OpenAI and Anthropic stream decoders behind one type-erased API, so a
 * test or fuzz target states a property once for both. Header-only: test support code. */
#ifndef AP_TEST_STREAM_API_H
#define AP_TEST_STREAM_API_H

#include "llm/anthropic_stream.h"
#include "llm/http_wire.h"
#include "llm/openai_stream.h"

typedef struct stream_api {
    const char *name;
    void *(*create)(const llm_wire_limits *lim, llm_wire_on_delta on_delta, void *ctx);
    ap_status (*feed)(void *s, const char *data, size_t len);
    ap_status (*finish)(void *s);
    llm_wire_reply *(*reply)(void *s);
    void (*destroy)(void *s);
} stream_api;

static inline void *openai_create(const llm_wire_limits *lim, llm_wire_on_delta cb, void *ctx)
{
    return llm_openai_stream_new(lim, cb, ctx);
}

static inline ap_status openai_feed(void *s, const char *data, size_t len)
{
    return llm_openai_stream_feed(s, data, len, NULL);
}

static inline ap_status openai_finish(void *s)
{
    return llm_openai_stream_finish(s, NULL);
}

static inline llm_wire_reply *openai_reply(void *s)
{
    return llm_openai_stream_reply(s);
}

static inline void openai_destroy(void *s)
{
    llm_openai_stream_free(s);
}

static inline void *anthropic_create(const llm_wire_limits *lim, llm_wire_on_delta cb, void *ctx)
{
    return llm_anthropic_stream_new(lim, cb, ctx);
}

static inline ap_status anthropic_feed(void *s, const char *data, size_t len)
{
    return llm_anthropic_stream_feed(s, data, len, NULL);
}

static inline ap_status anthropic_finish(void *s)
{
    return llm_anthropic_stream_finish(s, NULL);
}

static inline llm_wire_reply *anthropic_reply(void *s)
{
    return llm_anthropic_stream_reply(s);
}

static inline void anthropic_destroy(void *s)
{
    llm_anthropic_stream_free(s);
}

static const stream_api stream_api_openai = {"openai",      openai_create, openai_feed,
                                             openai_finish, openai_reply,  openai_destroy};
static const stream_api stream_api_anthropic = {"anthropic",     anthropic_create,
                                                anthropic_feed,  anthropic_finish,
                                                anthropic_reply, anthropic_destroy};

#endif
