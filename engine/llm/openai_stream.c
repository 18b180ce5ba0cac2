#include "llm/openai_stream.h"

#include "core/jsonx.h"
#include "llm/sse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct llm_openai_stream {
    llm_wire_stream w; /* the shared decoder core; the dialect adds nothing */
};

char *llm_openai_build_request(const llm_wire_request *r, ap_err *err)
{
    char *out = NULL;
    buf sys;
    buf_init(&sys, 4 * 1024 * 1024);
    llm_wire_body w;
    llm_wire_body_init(&w);
    ap_err_clear(err);
    if (llm_wire_request_begin(r, r->schema_mode == LLM_WIRE_SCHEMA_INSTRUCT, &sys, err) != AP_OK)
        goto out;
    llm_wire_raw(&w, "{\"model\":");
    llm_wire_str(&w, r->model);
    llm_wire_raw(&w, ",");
    llm_wire_messages(&w, sys.len > 0 ? sys.data : NULL, r);
    if (r->max_tokens > 0) {
        llm_wire_raw(&w, ",");
        llm_wire_str(&w, r->max_tokens_key != NULL ? r->max_tokens_key : "max_tokens");
        llm_wire_raw(&w, ":");
        llm_wire_num(&w, r->max_tokens);
    }
    if (r->temperature >= 0 && isfinite(r->temperature)) {
        llm_wire_raw(&w, ",\"temperature\":");
        llm_wire_num(&w, r->temperature);
    }
    llm_wire_raw(&w, r->stream ? ",\"stream\":true,\"stream_options\":{\"include_usage\":true}"
                               : ",\"stream\":false");
    if (r->schema != NULL && r->schema_mode == LLM_WIRE_SCHEMA_NATIVE) {
        /* strict mode rejects schemas with optional properties, which strategies use. */
        llm_wire_raw(&w, ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{"
                         "\"name\":\"answer\",\"strict\":false,\"schema\":");
        llm_wire_tree(&w, r->schema);
        llm_wire_raw(&w, "}}");
    }
    llm_wire_raw(&w, "}");
    out = llm_wire_body_finish(&w, err);
out:
    buf_free(&sys);
    return out;
}

static void read_usage(const jview *v, int usage, llm_wire_reply *r)
{
    int64_t p = 0, c = 0;
    bool hp = llm_wire_count(v, usage, "prompt_tokens", &p);
    bool hc = llm_wire_count(v, usage, "completion_tokens", &c);
    if (!hp && !hc)
        return;
    r->usage.present = true;
    r->usage.prompt_tokens = p;
    r->usage.completion_tokens = c;
}

static void read_finish(const jview *v, int choice, llm_wire_reply *r)
{
    char fr[sizeof r->finish_reason];
    if (jview_string(v, jview_get(v, choice, "finish_reason"), fr, sizeof fr) > 0)
        memcpy(r->finish_reason, fr, sizeof fr);
}

static void read_id(const jview *v, llm_wire_reply *r)
{
    if (r->id[0] == '\0')
        jview_string(v, jview_get(v, 0, "id"), r->id, sizeof r->id);
}

static ap_status provider_error(const jview *v, int eobj, llm_wire_reply *r, ap_err *err)
{
    char type[128] = "", msg[512] = "";
    if (jview_type_of(v, eobj) == JVIEW_OBJECT) {
        int code = jview_get(v, eobj, "code");
        jview_string(v, jview_type_of(v, code) == JVIEW_STRING ? code : jview_get(v, eobj, "type"),
                     type, sizeof type);
        jview_string(v, jview_get(v, eobj, "message"), msg, sizeof msg);
    } else {
        jview_string(v, eobj, msg, sizeof msg);
    }
    llm_wire_classify_stream_error(type[0] ? type : NULL, msg[0] ? msg : NULL, &r->error);
    r->failed = true;
    return ap_err_set(err, AP_ERROR, "provider error%s%s: %s", type[0] ? " " : "", type,
                      r->error.message);
}

/* The choice with index 0, or the first one when indexes are missing. */
static int first_choice(const jview *v)
{
    int choices = jview_get(v, 0, "choices");
    uint32_t n = jview_count(v, choices);
    for (uint32_t k = 0; k < n && jview_type_of(v, choices) == JVIEW_ARRAY; k++) {
        int c = jview_index(v, choices, k);
        if (jview_type_of(v, c) != JVIEW_OBJECT)
            continue;
        int idx = jview_get(v, c, "index");
        if (jview_type_of(v, idx) != JVIEW_NUMBER || jview_number(v, idx, 1) == 0)
            return c;
    }
    return -1;
}

/* The error member, when there is one that is not null. */
static int error_of(const jview *v)
{
    int e = jview_get(v, 0, "error");
    return jview_type_of(v, e) == JVIEW_NONE || jview_type_of(v, e) == JVIEW_NULL ? -1 : e;
}

static ap_status on_event(void *ctx, const llm_sse_event *ev)
{
    llm_openai_stream *s = ctx;
    ap_err *err = s->w.err;
    ap_status rc = AP_OK;
    jview v;
    if (s->w.reply.done || ev->data_len == 0)
        return AP_OK;
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
        s->w.reply.done = true;
        return AP_OK;
    }
    if ((rc = llm_wire_json(ev->data, ev->data_len, &s->w.limits, "stream chunk", &v, err)) !=
        AP_OK)
        goto out;
    int eobj = error_of(&v);
    if (eobj >= 0) {
        rc = provider_error(&v, eobj, &s->w.reply, err);
        goto out;
    }
    read_id(&v, &s->w.reply);
    int choice = first_choice(&v);
    if (choice >= 0) {
        int text = jview_get(&v, jview_get(&v, choice, "delta"), "content");
        rc = llm_wire_append_string(&s->w.reply, &v, text, s->w.on_delta, s->w.ctx, err);
        if (rc != AP_OK)
            goto out;
        read_finish(&v, choice, &s->w.reply);
    }
    read_usage(&v, jview_get(&v, 0, "usage"), &s->w.reply);
out:
    jview_free(&v);
    return rc;
}

llm_openai_stream *llm_openai_stream_new(const llm_wire_limits *limits, llm_wire_on_delta on_delta,
                                         void *ctx)
{
    llm_openai_stream *s = calloc(1, sizeof *s);
    if (s == NULL || llm_wire_stream_init(&s->w, limits, on_delta, ctx, on_event, s) != AP_OK) {
        llm_openai_stream_free(s);
        return NULL;
    }
    return s;
}

void llm_openai_stream_free(llm_openai_stream *s)
{
    if (s == NULL)
        return;
    llm_wire_stream_cleanup(&s->w);
    free(s);
}

llm_wire_reply *llm_openai_stream_reply(llm_openai_stream *s)
{
    return &s->w.reply;
}

ap_status llm_openai_stream_feed(llm_openai_stream *s, const char *data, size_t len, ap_err *err)
{
    return llm_wire_stream_feed(&s->w, data, len, err);
}

ap_status llm_openai_stream_finish(llm_openai_stream *s, ap_err *err)
{
    return llm_wire_stream_finish(&s->w, err);
}

ap_status llm_openai_parse_response(const char *body, size_t len, const llm_wire_limits *limits,
                                    llm_wire_reply *out, ap_err *err)
{
    jview v;
    ap_status rc = llm_wire_json(body, len, limits, "response body", &v, err);
    if (rc != AP_OK)
        goto out;
    int eobj = error_of(&v);
    if (eobj >= 0) {
        rc = provider_error(&v, eobj, out, err);
        goto out;
    }
    read_id(&v, out);
    int choice = first_choice(&v);
    if (choice < 0) {
        rc = ap_err_set(err, AP_INVALID, "response has no choices");
        goto out;
    }
    int text = jview_get(&v, jview_get(&v, choice, "message"), "content");
    if ((rc = llm_wire_append_string(out, &v, text, NULL, NULL, err)) != AP_OK)
        goto out;
    read_finish(&v, choice, out);
    read_usage(&v, jview_get(&v, 0, "usage"), out);
    out->done = true;
out:
    jview_free(&v);
    return rc;
}
