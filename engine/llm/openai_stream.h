/* openai_stream.h - the OpenAI Chat Completions wire format (also vLLM, Ollama, llama.cpp
 * server, OpenRouter): request bodies, the streaming decoder and non-streaming replies.
 *
 * The decoder is pure: feed it the 200 response body in chunks of any size; it reports each
 * content delta through a callback and gathers text, finish reason, the final usage chunk
 * (stream_options.include_usage), "[DONE]" and in-stream error objects in a llm_wire_reply. */
#ifndef AP_LLM_OPENAI_STREAM_H
#define AP_LLM_OPENAI_STREAM_H

#include "core/status.h"
#include "llm/http_wire.h"

typedef struct llm_openai_stream llm_openai_stream;

/* Builds the JSON body of POST /v1/chat/completions; caller frees. Streaming requests ask for
 * the final usage chunk. A schema becomes response_format json_schema (NATIVE) or a system
 * instruction (INSTRUCT). NULL with err set on bad input or no memory. */
char *llm_openai_build_request(const llm_wire_request *r, ap_err *err);

/* Creates a decoder (caller frees); limits copied, on_delta (may be NULL) and ctx borrowed. */
llm_openai_stream *llm_openai_stream_new(const llm_wire_limits *limits, llm_wire_on_delta on_delta,
                                         void *ctx);

/* Decodes len more bytes (borrowed). Returns AP_OK while the stream is good; AP_ERROR when the
 * provider sent an error object (reply->failed and reply->error tell which), AP_INVALID for a
 * malformed chunk or invalid UTF-8, AP_LIMIT past a limit. After a failure it stays failed. */
ap_status llm_openai_stream_feed(llm_openai_stream *s, const char *data, size_t len, ap_err *err);

/* Ends the body: AP_OK when the stream completed ([DONE] or a finish reason was seen), AP_IO
 * when it was cut short, or the earlier failure. */
ap_status llm_openai_stream_finish(llm_openai_stream *s, ap_err *err);

/* The reply gathered so far; borrowed, lives as long as s (the caller may steal its text). */
llm_wire_reply *llm_openai_stream_reply(llm_openai_stream *s);

/* Frees the decoder; s may be NULL. */
void llm_openai_stream_free(llm_openai_stream *s);

/* Decodes a whole non-streaming 200 body into out (initialised by the caller with
 * llm_wire_reply_init). AP_ERROR when the body is an error object, AP_INVALID when malformed. */
ap_status llm_openai_parse_response(const char *body, size_t len, const llm_wire_limits *limits,
                                    llm_wire_reply *out, ap_err *err);

#endif
