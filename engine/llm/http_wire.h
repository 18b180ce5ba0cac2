/* http_wire.h - what the OpenAI and Anthropic wire formats share: the request a provider
 * sends, the reply a stream decoder produces, limits on untrusted output, error
 * classification (retry or not) and Retry-After parsing.
 *
 * Everything here is pure: no I/O, no clocks except where a caller passes the time in. */
#ifndef AP_LLM_HTTP_WIRE_H
#define AP_LLM_HTTP_WIRE_H

#include "core/buf.h"
#include "core/jview.h"
#include "core/status.h"
#include "llm/sse.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Text that precedes the JSON Schema when a schema is asked for by instruction rather than by
 * the provider's native structured output; mockllm looks for it too. */
#define LLM_WIRE_SCHEMA_MARKER "JSON Schema:"

/* Largest request body the engine writes: prompts, schemas and a repair round together. */
#define LLM_WIRE_MAX_REQUEST (16u << 20)

/* Deepest nesting accepted in a provider's JSON (events and bodies). */
#define LLM_WIRE_JSON_DEPTH 64

/* Hard limits on one reply. */
typedef struct llm_wire_limits {
    size_t max_line;  /* one SSE line */
    size_t max_event; /* one SSE event's data, or a whole non-streaming body */
    size_t max_text;  /* the answer text, all deltas together */
} llm_wire_limits;

/* 64 KiB lines, 1 MiB events, 256 KiB of answer text. */
llm_wire_limits llm_wire_default_limits(void);

/* One chat message; strings borrowed. role is "user" or "assistant". */
typedef struct llm_wire_message {
    const char *role;
    const char *content;
} llm_wire_message;

/* How a JSON answer is asked for. */
typedef enum llm_wire_schema_mode {
    LLM_WIRE_SCHEMA_NATIVE = 0,   /* the provider's structured output (OpenAI response_format) */
    LLM_WIRE_SCHEMA_INSTRUCT = 1, /* an instruction with the schema appended to the system */
} llm_wire_schema_mode;

/* One request; everything borrowed. */
typedef struct llm_wire_request {
    const char *model;
    const char *system; /* may be NULL */
    const llm_wire_message *messages;
    size_t n_messages;
    int max_tokens;             /* <= 0: provider default (Anthropic requires one: 1024 is sent) */
    const char *max_tokens_key; /* OpenAI: NULL for "max_tokens"; reasoning models want
                                 * "max_completion_tokens" */
    double temperature;         /* < 0: not sent */
    bool stream;
    const cJSON *schema; /* may be NULL: plain text answer */
    llm_wire_schema_mode schema_mode;
} llm_wire_request;

/* Token usage as reported by the provider. */
typedef struct llm_wire_usage {
    bool present;
    int64_t prompt_tokens;
    int64_t completion_tokens;
} llm_wire_usage;

/* Why a call failed, as far as the wire tells. */
typedef struct llm_wire_error {
    int http_status; /* 0 when the failure came inside a 200 stream */
    bool retryable;
    char type[64];     /* provider error type or code, "" when unknown */
    char message[256]; /* provider message, "" when none */
} llm_wire_error;

/* Receives each text delta (borrowed, valid UTF-8, len > 0); a non-AP_OK return stops the
 * decoder and is returned by its feed function. May be NULL. */
typedef ap_status (*llm_wire_on_delta)(void *ctx, const char *text, size_t len);

/* What a decoder has gathered; owned by the decoder, read after (or during) decoding. */
typedef struct llm_wire_reply {
    buf text; /* the whole answer so far, bounded by max_text; data NULL while empty */
    llm_wire_usage usage;
    char finish_reason[32]; /* normalised: "stop", "length", "content_filter", "tool_calls"... */
    char id[96];            /* provider message id, "" when none */
    bool done;              /* the provider said the stream is complete */
    bool failed;            /* the provider reported an error: see error */
    llm_wire_error error;
} llm_wire_reply;

/* Initialises a reply with an empty text bounded by max_text. */
void llm_wire_reply_init(llm_wire_reply *r, size_t max_text);

/* Frees the reply's text; r may be NULL. */
void llm_wire_reply_free(llm_wire_reply *r);

/* Appends a text delta after checking it is valid UTF-8 and fits; AP_INVALID / AP_LIMIT. */
ap_status llm_wire_reply_append(llm_wire_reply *r, const char *text, size_t len, ap_err *err);

/* Writes the instruction that asks for a JSON answer valid for schema (ends with the marker
 * and the compact schema) into out. */
ap_status llm_wire_schema_instruction(const cJSON *schema, buf *out);

/* Checks that r has a model and messages with roles and contents, then writes its system
 * prompt into out: r->system, then when with_schema and r has a schema the instruction that
 * asks for it. AP_INVALID or AP_LIMIT with err set. */
ap_status llm_wire_request_begin(const llm_wire_request *r, bool with_schema, buf *out,
                                 ap_err *err);

/* A request body being written. Appends stop at the first failure, which
 * llm_wire_body_finish reports, so a builder can write its whole document without checking
 * each step. */
typedef struct llm_wire_body {
    buf b;
    ap_status rc;
} llm_wire_body;

/* Starts an empty body (bounded by LLM_WIRE_MAX_REQUEST). */
void llm_wire_body_init(llm_wire_body *w);

/* Appends JSON syntax as it is (borrowed, trusted text of the builder's own). */
void llm_wire_raw(llm_wire_body *w, const char *text);

/* Appends s (borrowed) as a JSON string literal. */
void llm_wire_str(llm_wire_body *w, const char *s);

/* Appends a finite number. */
void llm_wire_num(llm_wire_body *w, double d);

/* Appends the compact text of a tree (borrowed). */
void llm_wire_tree(llm_wire_body *w, const cJSON *item);

/* Appends "messages":[...] with r's messages as role/content objects, after a system message
 * when system (borrowed) is not NULL. */
void llm_wire_messages(llm_wire_body *w, const char *system, const llm_wire_request *r);

/* The finished body (caller frees), or NULL with err set. Frees what was written on failure. */
char *llm_wire_body_finish(llm_wire_body *w, ap_err *err);

/* Classifies an HTTP error reply: fills e (type and message from an OpenAI or Anthropic error
 * body when it parses) and decides retryable: 408, 409, 429, 5xx and 529 retry; other 4xx
 * do not, nor does a 429 whose body says a spend, quota or billing limit was reached. */
void llm_wire_classify_http(int status, const char *body, size_t len, llm_wire_error *e);

/* Classifies an error object that arrived inside a 200 stream (OpenAI {"error":{...}},
 * Anthropic event "error"): overloaded, rate-limit, server and timeout errors retry. */
void llm_wire_classify_stream_error(const char *type, const char *message, llm_wire_error *e);

/* Fills e for a failure before any HTTP status (connection refused/reset, DNS, timeout):
 * always retryable. */
void llm_wire_transport_error(const char *message, llm_wire_error *e);

/* Parses a Retry-After value (delta-seconds, possibly fractional, or an HTTP-date) into
 * milliseconds from now_ms (epoch milliseconds); -1 when absent or unparsable. Capped at one
 * hour so a hostile server cannot park a call forever. */
int64_t llm_wire_retry_after_ms(const char *value, int64_t now_ms);

/* The same for a retry-after-ms value (milliseconds, no dates), with the same cap. */
int64_t llm_wire_retry_after_ms_of_ms(const char *value);

/* Backoff before retry number attempt (1 = first retry): exponential from base_ms, capped at
 * cap_ms, with "equal jitter" (a wait in [ceiling/2, ceiling] drawn from rnd, any 32-bit
 * value); at least retry_after_ms when that is >= 0. */
int64_t llm_wire_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms, uint32_t rnd,
                            int64_t retry_after_ms);

/* What every provider's stream decoder shares, embedded in each: the SSE parser, the reply
 * being built, the first failure (which sticks), the limits and the delta callback. */
typedef struct llm_wire_stream {
    llm_sse_parser *sse;
    llm_wire_reply reply;
    ap_status failed;
    ap_err *err; /* the caller's err during a feed, so event handlers can explain themselves */
    llm_wire_limits limits;
    llm_wire_on_delta on_delta; /* may be NULL */
    void *ctx;                  /* on_delta's */
} llm_wire_stream;

/* Sets up the shared core of a decoder; on_event gets every SSE event with self (the
 * decoder) as its context. AP_NOMEM; llm_wire_stream_cleanup frees a half-made core too. */
ap_status llm_wire_stream_init(llm_wire_stream *s, const llm_wire_limits *limits,
                               llm_wire_on_delta on_delta, void *ctx, llm_sse_on_event on_event,
                               void *self);

/* Frees what llm_wire_stream_init allocated. Accepts NULL. */
void llm_wire_stream_cleanup(llm_wire_stream *s);

/* Feeds bytes to the stream's SSE parser; after a failure every call fails the same way. */
ap_status llm_wire_stream_feed(llm_wire_stream *s, const char *data, size_t len, ap_err *err);

/* Ends the stream: AP_IO when it stopped before the answer was complete. */
ap_status llm_wire_stream_finish(llm_wire_stream *s, ap_err *err);

/* Checks a provider's JSON object (a response body or one stream event: size against
 * limits->max_event, grammar, UTF-8, depth) and opens a view of it in *out, which the caller
 * releases with jview_free whatever the result; AP_LIMIT, AP_INVALID (what names the
 * document in the message) or AP_NOMEM otherwise. */
ap_status llm_wire_json(const char *text, size_t len, const llm_wire_limits *limits,
                        const char *what, jview *out, ap_err *err);

/* Decodes string value i of v, appends it to r's text and hands it to on_delta (NULL: none).
 * A missing or empty string does nothing. */
ap_status llm_wire_append_string(llm_wire_reply *r, const jview *v, int i,
                                 llm_wire_on_delta on_delta, void *ctx, ap_err *err);

/* No model reads or writes more tokens in one call (its context is millions at most): a
 * larger count is a provider's bug or a hostile server's, and is treated as absent (then the
 * usage is estimated) rather than billed. */
#define LLM_WIRE_TOKENS_MAX 1e8

/* A token count (a whole number from 0 to LLM_WIRE_TOKENS_MAX) at key of object obj. */
bool llm_wire_count(const jview *v, int obj, const char *key, int64_t *out);

#endif
