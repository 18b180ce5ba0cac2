/* sse.h - one Server-Sent Events connection: a bounded queue of frames that producers on any
 * thread push into and the HTTP stream drains.
 *
 * Durable events carry `id: <seq>` so a client resumes exactly with Last-Event-ID; ephemeral
 * ones (token deltas) have no id. A consumer that falls behind by more than the queue's
 * maximum is cut off rather than buffered without bound: it reconnects and replays from the
 * store. */
#ifndef AP_HTTP_SSE_H
#define AP_HTTP_SSE_H

#include "core/buf.h"
#include "core/status.h"
#include "http/server.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct sse_conn sse_conn;

/* Appends one event frame to out: "id: <seq>\n" (seq > 0 only), "event: <type>\n", one
 * "data: " line per line of data, and a blank line. */
ap_status sse_format(buf *out, int64_t seq, const char *type, const char *data);

/* A connection whose queue holds at most max_pending bytes. Caller ends it with
 * sse_conn_release (the HTTP side holds its own reference until the stream closes). */
sse_conn *sse_conn_new(size_t max_pending);

/* Starts streaming conn on req (200, text/event-stream, no-cache headers, a retry hint).
 * Returns false after replying 500. */
bool sse_conn_attach(sse_conn *conn, http_request *req);

/* Queues an event unless seq <= the last durable seq queued (a replay overlapping live
 * events). Thread-safe. AP_LIMIT when the queue overflowed: the stream is then closed. */
ap_status sse_conn_push(sse_conn *conn, int64_t seq, const char *type, const char *data);

/* Queues a comment line (heartbeats). */
void sse_conn_comment(sse_conn *conn, const char *text);

/* Ends the stream once the queue is drained. */
void sse_conn_finish(sse_conn *conn);

/* The highest durable seq queued so far. */
int64_t sse_conn_last_seq(sse_conn *conn);

/* True once the client went away or the stream ended. */
bool sse_conn_closed(sse_conn *conn);

/* Drops the producer's reference; the connection is freed once both sides let go. */
void sse_conn_release(sse_conn *conn);

#endif
