/* stream_fuzz.h - the property both provider stream decoders are fuzzed for: they never
 * crash, leak or exceed their limits, and decode the same input identically whether it
 * arrives whole or in pieces. The first input byte chooses the split points and limits, the
 * rest is the body. Included by one fuzz target per decoder. */
#ifndef AP_FUZZ_STREAM_FUZZ_H
#define AP_FUZZ_STREAM_FUZZ_H

#include "../support/stream_api.h"
#include "core/buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static ap_status count(void *ctx, const char *text, size_t len)
{
    buf *t = ctx;
    return buf_append(t, text, len);
}

static ap_status decode(const stream_api *api, const char *in, size_t len, size_t step,
                        const llm_wire_limits *lim, buf *deltas, llm_wire_reply *out)
{
    void *s = api->create(lim, count, deltas);
    if (s == NULL)
        abort();
    ap_status rc = AP_OK;
    for (size_t i = 0; i < len && rc == AP_OK; i += step) {
        size_t n = len - i < step ? len - i : step;
        rc = api->feed(s, in + i, n);
    }
    if (rc == AP_OK)
        rc = api->finish(s);
    llm_wire_reply *r = api->reply(s);
    if (r->text.len > lim->max_text)
        abort();
    *out = *r;
    /* a private copy: the decoder's buffer dies with it */
    buf_init(&out->text, lim->max_text);
    if (buf_append(&out->text, r->text.data != NULL ? r->text.data : "", r->text.len) != AP_OK)
        abort();
    api->destroy(s);
    return rc;
}

static int stream_fuzz_one(const stream_api *api, const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t knob = data[0];
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    llm_wire_limits lim = llm_wire_default_limits();
    if (knob & 0x80) {
        lim.max_line = 64 + (knob & 0x0f) * 16;
        lim.max_text = 8 + (knob & 0x30);
    }
    buf d1, d2;
    buf_init(&d1, 1 << 24);
    buf_init(&d2, 1 << 24);
    llm_wire_reply r1, r2;
    ap_status a = decode(api, in, len, len > 0 ? len : 1, &lim, &d1, &r1);
    ap_status b = decode(api, in, len, 1 + (knob & 0x07), &lim, &d2, &r2);
    if (a != b || d1.len != d2.len || (d1.len > 0 && memcmp(d1.data, d2.data, d1.len) != 0) ||
        strcmp(r1.text.data, r2.text.data) != 0 || strcmp(r1.finish_reason, r2.finish_reason) ||
        r1.usage.completion_tokens != r2.usage.completion_tokens || r1.done != r2.done)
        abort();
    buf_free(&d1);
    buf_free(&d2);
    buf_free(&r1.text);
    buf_free(&r2.text);
    return 0;
}

#endif
