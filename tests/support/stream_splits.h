/* stream_splits.h - decodes a stream fed in two pieces at every byte boundary and checks that
 * everything observable (deltas, text, finish reason, id, usage, error) is the same each time.
 * For the cmocka tests of both stream decoders. */
#ifndef AP_TEST_STREAM_SPLITS_H
#define AP_TEST_STREAM_SPLITS_H

#include "core/buf.h"
#include "stream_api.h"

#include <inttypes.h>
#include <string.h>

static ap_status record_delta(void *ctx, const char *text, size_t len)
{
    buf *t = ctx;
    ap_status rc = buf_puts(t, "{");
    if (rc == AP_OK)
        rc = buf_append(t, text, len);
    return rc == AP_OK ? buf_puts(t, "}") : rc;
}

/* Decodes in (fed as in[0..split) then the rest) and writes everything observable into t. */
static void decode_split(const stream_api *api, const char *in, size_t len, size_t split,
                         const llm_wire_limits *lim, buf *t)
{
    void *s = api->create(lim, record_delta, t);
    assert_non_null(s);
    ap_status rc = api->feed(s, in, split);
    if (rc == AP_OK)
        rc = api->feed(s, in + split, len - split);
    if (rc == AP_OK)
        rc = api->finish(s);
    llm_wire_reply *r = api->reply(s);
    buf_printf(t, " rc=%s text=%s finish=%s id=%s done=%d", ap_status_name(rc),
               r->text.data ? r->text.data : "", r->finish_reason, r->id, r->done);
    if (r->usage.present)
        buf_printf(t, " usage=%" PRId64 "/%" PRId64, r->usage.prompt_tokens,
                   r->usage.completion_tokens);
    if (r->failed)
        buf_printf(t, " error=%s retry=%d", r->error.type, r->error.retryable);
    api->destroy(s);
}

static void check_all_splits(const stream_api *api, const char *in, const llm_wire_limits *lim,
                             const char *want)
{
    size_t len = strlen(in);
    for (size_t k = 0; k <= len; k++) {
        buf t;
        buf_init(&t, 1 << 20);
        decode_split(api, in, len, k, lim, &t);
        if (strcmp(t.data, want) != 0)
            fail_msg("%s, split at %zu:\n got  %s\n want %s", api->name, k, t.data, want);
        buf_free(&t);
    }
}

#endif
