#include "llm/anthropic_stream.h"

#include "core/jsonx.h"
#include "llm/sse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_TOKENS 1024

struct llm_anthropic_stream {
    llm_wire_stream w; /* the shared decoder core; the dialect adds nothing */
};

char *llm_anthropic_build_request(const llm_wire_request *r, ap_err *err)
{
    char *out = NULL;
    buf sys;
    buf_init(&sys, 4 * 1024 * 1024);
    llm_wire_body w;
    llm_wire_body_init(&w);
    ap_err_clear(err);
    if (llm_wire_request_begin(r, true, &sys, err) != AP_OK)
        goto out;
    llm_wire_raw(&w, "{\"model\":");
    llm_wire_str(&w, r->model);
    llm_wire_raw(&w, ",\"max_tokens\":");
    llm_wire_num(&w, r->max_tokens > 0 ? r->max_tokens : DEFAULT_MAX_TOKENS);
    if (sys.len > 0) {
        llm_wire_raw(&w, ",\"system\":");
        llm_wire_str(&w, sys.data);
    }
    llm_wire_raw(&w, ",");
    llm_wire_messages(&w, NULL, r);
    if (r->temperature >= 0 && isfinite(r->temperature)) {
        llm_wire_raw(&w, ",\"temperature\":");
        llm_wire_num(&w, r->temperature);
    }
    llm_wire_raw(&w, r->stream ? ",\"stream\":true}" : ",\"stream\":false}");
    out = llm_wire_body_finish(&w, err);
out:
    buf_free(&sys);
    return out;
}

/* Prompt tokens include the cached ones: they are part of what the model read. */
static void read_usage(const jview *v, int usage, llm_wire_reply *r)
{
    int64_t n = 0;
    bool any = false;
    if (jview_type_of(v, usage) != JVIEW_OBJECT)
        return;
    if (llm_wire_count(v, usage, "input_tokens", &n)) {
        int64_t total = n, extra = 0;
        if (llm_wire_count(v, usage, "cache_creation_input_tokens", &extra))
            total += extra;
        if (llm_wire_count(v, usage, "cache_read_input_tokens", &extra))
            total += extra;
        r->usage.prompt_tokens = total;
        any = true;
    }
    /* output_tokens is cumulative in message_delta, so the last value wins. */
    if (llm_wire_count(v, usage, "output_tokens", &n)) {
        r->usage.completion_tokens = n;
        any = true;
    }
    if (any)
        r->usage.present = true;
}

static void read_stop(const jview *v, int reason, llm_wire_reply *r)
{
    static const struct {
        const char *anthropic, *norm;
    } map[] = {{"end_turn", "stop"},       {"stop_sequence", "stop"},     {"max_tokens", "length"},
               {"tool_use", "tool_calls"}, {"refusal", "content_filter"}, {"pause_turn", "pause"}};
    char text[sizeof r->finish_reason];
    if (jview_string(v, reason, text, sizeof text) == 0)
        return;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(text, map[i].anthropic) == 0) {
            snprintf(r->finish_reason, sizeof r->finish_reason, "%s", map[i].norm);
            return;
        }
    }
    memcpy(r->finish_reason, text, sizeof text);
}

static void read_id(const jview *v, int msg, llm_wire_reply *r)
{
    if (r->id[0] == '\0')
        jview_string(v, jview_get(v, msg, "id"), r->id, sizeof r->id);
}

static ap_status provider_error(const jview *v, llm_wire_reply *r, ap_err *err)
{
    char type[128], msg[512];
    int eobj = jview_get(v, 0, "error");
    jview_string(v, jview_get(v, eobj, "type"), type, sizeof type);
    jview_string(v, jview_get(v, eobj, "message"), msg, sizeof msg);
    llm_wire_classify_stream_error(type[0] ? type : NULL, msg[0] ? msg : NULL, &r->error);
    r->failed = true;
    return ap_err_set(err, AP_ERROR, "provider error %s: %s",
                      r->error.type[0] ? r->error.type : "unknown", r->error.message);
}

/* Appends string member key of obj when member "type" of obj is want. */
static ap_status typed_text(llm_anthropic_stream *s, const jview *v, int obj, const char *want,
                            const char *key, ap_err *err)
{
    if (!jview_string_is(v, jview_get(v, obj, "type"), want))
        return AP_OK;
    return llm_wire_append_string(&s->w.reply, v, jview_get(v, obj, key), s->w.on_delta, s->w.ctx,
                                  err);
}

static ap_status on_event(void *ctx, const llm_sse_event *ev)
{
    llm_anthropic_stream *s = ctx;
    ap_err *err = s->w.err;
    ap_status rc = AP_OK;
    jview v;
    if (s->w.reply.done || ev->data_len == 0)
        return AP_OK;
    if ((rc = llm_wire_json(ev->data, ev->data_len, &s->w.limits, "stream event", &v, err)) !=
        AP_OK)
        goto out;
    char type[32];
    int t = jview_get(&v, 0, "type");
    if (jview_type_of(&v, t) == JVIEW_STRING)
        jview_string(&v, t, type, sizeof type);
    else
        snprintf(type, sizeof type, "%s", ev->event);
    if (strcmp(type, "error") == 0) {
        rc = provider_error(&v, &s->w.reply, err);
    } else if (strcmp(type, "message_start") == 0) {
        int msg = jview_get(&v, 0, "message");
        read_id(&v, msg, &s->w.reply);
        read_usage(&v, jview_get(&v, msg, "usage"), &s->w.reply);
    } else if (strcmp(type, "content_block_start") == 0) {
        rc = typed_text(s, &v, jview_get(&v, 0, "content_block"), "text", "text", err);
    } else if (strcmp(type, "content_block_delta") == 0) {
        /* thinking, signature and tool-input deltas are not part of the answer text */
        rc = typed_text(s, &v, jview_get(&v, 0, "delta"), "text_delta", "text", err);
    } else if (strcmp(type, "message_delta") == 0) {
        read_stop(&v, jview_get(&v, jview_get(&v, 0, "delta"), "stop_reason"), &s->w.reply);
        read_usage(&v, jview_get(&v, 0, "usage"), &s->w.reply);
    } else if (strcmp(type, "message_stop") == 0) {
        s->w.reply.done = true;
    }
out:
    jview_free(&v);
    return rc;
}

llm_anthropic_stream *llm_anthropic_stream_new(const llm_wire_limits *limits,
                                               llm_wire_on_delta on_delta, void *ctx)
{
    llm_anthropic_stream *s = calloc(1, sizeof *s);
    if (s == NULL || llm_wire_stream_init(&s->w, limits, on_delta, ctx, on_event, s) != AP_OK) {
        llm_anthropic_stream_free(s);
        return NULL;
    }
    return s;
}

void llm_anthropic_stream_free(llm_anthropic_stream *s)
{
    if (s == NULL)
        return;
    llm_wire_stream_cleanup(&s->w);
    free(s);
}

llm_wire_reply *llm_anthropic_stream_reply(llm_anthropic_stream *s)
{
    return &s->w.reply;
}

ap_status llm_anthropic_stream_feed(llm_anthropic_stream *s, const char *data, size_t len,
                                    ap_err *err)
{
    return llm_wire_stream_feed(&s->w, data, len, err);
}

ap_status llm_anthropic_stream_finish(llm_anthropic_stream *s, ap_err *err)
{
    return llm_wire_stream_finish(&s->w, err);
}

ap_status llm_anthropic_parse_response(const char *body, size_t len, const llm_wire_limits *limits,
                                       llm_wire_reply *out, ap_err *err)
{
    jview v;
    ap_status rc = llm_wire_json(body, len, limits, "response body", &v, err);
    if (rc != AP_OK)
        goto out;
    if (jview_string_is(&v, jview_get(&v, 0, "type"), "error")) {
        rc = provider_error(&v, out, err);
        goto out;
    }
    int content = jview_get(&v, 0, "content");
    if (jview_type_of(&v, content) != JVIEW_ARRAY) {
        rc = ap_err_set(err, AP_INVALID, "response has no content");
        goto out;
    }
    read_id(&v, 0, out);
    for (uint32_t k = 0; k < jview_count(&v, content); k++) {
        int block = jview_index(&v, content, k);
        if (!jview_string_is(&v, jview_get(&v, block, "type"), "text"))
            continue;
        if ((rc = llm_wire_append_string(out, &v, jview_get(&v, block, "text"), NULL, NULL, err)) !=
            AP_OK)
            goto out;
    }
    read_stop(&v, jview_get(&v, 0, "stop_reason"), out);
    read_usage(&v, jview_get(&v, 0, "usage"), out);
    out->done = true;
out:
    jview_free(&v);
    return rc;
}
