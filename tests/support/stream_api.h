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

/* The five adapters of one dialect d (openai, anthropic) and its stream_api_d. */
#define STREAM_API(d)                                                                              \
    static inline void *d##_create(const llm_wire_limits *lim, llm_wire_on_delta cb, void *ctx)    \
    {                                                                                              \
        return llm_##d##_stream_new(lim, cb, ctx);                                                 \
    }                                                                                              \
    static inline ap_status d##_feed(void *s, const char *data, size_t len)                        \
    {                                                                                              \
        return llm_##d##_stream_feed(s, data, len, NULL);                                          \
    }                                                                                              \
    static inline ap_status d##_finish(void *s)                                                    \
    {                                                                                              \
        return llm_##d##_stream_finish(s, NULL);                                                   \
    }                                                                                              \
    static inline llm_wire_reply *d##_reply(void *s)                                               \
    {                                                                                              \
        return llm_##d##_stream_reply(s);                                                          \
    }                                                                                              \
    static inline void d##_destroy(void *s)                                                        \
    {                                                                                              \
        llm_##d##_stream_free(s);                                                                  \
    }                                                                                              \
    static const stream_api stream_api_##d = {#d,         d##_create, d##_feed,                    \
                                              d##_finish, d##_reply,  d##_destroy}

STREAM_API(openai);
STREAM_API(anthropic);

#endif
