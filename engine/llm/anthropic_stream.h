/* anthropic_stream.h - the Anthropic Messages API wire format: request bodies, the streaming
 * event decoder and non-streaming replies.
 *
 * The decoder is pure: feed it the 200 response body in chunks of any size. It follows the
 * events message_start (id, input usage), content_block_start/delta (text), message_delta
 * (stop reason, output usage), message_stop, ping and error; unknown event types are ignored
 * as Anthropic's versioning policy asks. Stop reasons are normalised to the OpenAI names
 * (end_turn/stop_sequence -> "stop", max_tokens -> "length", tool_use -> "tool_calls",
 * refusal -> "content_filter"). */
#ifndef AP_LLM_ANTHROPIC_STREAM_H
#define AP_LLM_ANTHROPIC_STREAM_H

#include "core/status.h"
#include "llm/http_wire.h"

typedef struct llm_anthropic_stream llm_anthropic_stream;

/* The anthropic-version header value the request bodies are written for. */
#define LLM_ANTHROPIC_VERSION "2023-06-01"

/* Builds the JSON body of POST /v1/messages; caller frees. max_tokens <= 0 sends 1024 (the API
 * requires it). A schema always becomes a system instruction. NULL with err set on failure. */
char *llm_anthropic_build_request(const llm_wire_request *r, ap_err *err);

/* Creates a decoder (caller frees); limits copied, on_delta (may be NULL) and ctx borrowed. */
llm_anthropic_stream *llm_anthropic_stream_new(const llm_wire_limits *limits,
                                               llm_wire_on_delta on_delta, void *ctx);

/* Decodes len more bytes (borrowed); same results as llm_openai_stream_feed. */
ap_status llm_anthropic_stream_feed(llm_anthropic_stream *s, const char *data, size_t len,
                                    ap_err *err);

/* Ends the body: AP_OK when message_stop (or a stop reason) was seen, AP_IO when cut short,
 * or the earlier failure. */
ap_status llm_anthropic_stream_finish(llm_anthropic_stream *s, ap_err *err);

/* The reply gathered so far; borrowed, lives as long as s (the caller may steal its text). */
llm_wire_reply *llm_anthropic_stream_reply(llm_anthropic_stream *s);

/* Frees the decoder; s may be NULL. */
void llm_anthropic_stream_free(llm_anthropic_stream *s);

/* Decodes a whole non-streaming 200 body into out (initialised by the caller).
 * AP_ERROR when the body is an error object, AP_INVALID when malformed. */
ap_status llm_anthropic_parse_response(const char *body, size_t len, const llm_wire_limits *limits,
                                       llm_wire_reply *out, ap_err *err);

#endif
