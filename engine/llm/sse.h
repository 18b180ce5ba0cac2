/* sse.h - an incremental Server-Sent Events parser (WHATWG event-stream rules) with hard limits.
 *
 * Pure: bytes go in through llm_sse_feed in chunks of any size, whole events come out through
 * a callback, so splitting the same stream at any byte boundary yields the same events. Lines
 * end in LF, CRLF or CR (a CR at the end of one chunk and an LF at the start of the next are
 * one line end). Comments (":...") are dropped, "data" lines are joined with "\n", "event" and
 * "id" are kept, unknown fields are ignored, a leading BOM is skipped. A line longer than
 * max_line or an event whose data exceeds max_event fails the parser with AP_LIMIT; after any
 * failure it stays failed. */
#ifndef AP_LLM_SSE_H
#define AP_LLM_SSE_H

#include "core/status.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct llm_sse_parser llm_sse_parser;

/* One dispatched event; every pointer is borrowed and valid only during the callback. The
 * strings are NUL-terminated; event is "message" when the stream named none. */
typedef struct llm_sse_event {
    const char *event;
    const char *data;
    size_t data_len;
    const char *id; /* the last id seen on the stream, "" when none */
} llm_sse_event;

/* Receives each event; a non-AP_OK return stops parsing and is returned by llm_sse_feed. */
typedef ap_status (*llm_sse_on_event)(void *ctx, const llm_sse_event *ev);

/* Creates a parser (caller frees with llm_sse_free); NULL when out of memory. */
llm_sse_parser *llm_sse_new(size_t max_line, size_t max_event, llm_sse_on_event cb, void *ctx);

/* Parses len bytes (borrowed), calling cb for every event completed by them. */
ap_status llm_sse_feed(llm_sse_parser *p, const char *data, size_t len, ap_err *err);

/* Ends the stream. An event that was never terminated by a blank line is discarded, as the
 * standard says; *partial (may be NULL) tells whether such unterminated input was pending. */
ap_status llm_sse_finish(llm_sse_parser *p, bool *partial, ap_err *err);

/* Bytes fed so far. */
size_t llm_sse_bytes(const llm_sse_parser *p);

/* Frees the parser; p may be NULL. */
void llm_sse_free(llm_sse_parser *p);

#endif
