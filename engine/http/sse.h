/* sse.h - the Server-Sent Events wire format.
 *
 * Durable events carry `id: <seq>` so a client resumes exactly with Last-Event-ID; ephemeral
 * ones (token deltas) have no id. The connection side (replay, live events, heartbeats) is in
 * api_events.c. */
#ifndef AP_HTTP_SSE_H
#define AP_HTTP_SSE_H

#include "core/buf.h"
#include "core/status.h"

#include <stdint.h>

/* Appends one event frame to out: "id: <seq>\n" (seq > 0 only), "event: <type>\n", one
 * "data: " line per line of data, and a blank line. AP_LIMIT (out unchanged up to what was
 * appended) when out would pass its maximum. */
ap_status sse_format(buf *out, int64_t seq, const char *type, const char *data);

#endif
