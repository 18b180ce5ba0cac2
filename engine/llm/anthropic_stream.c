#include "llm/anthropic_stream.h"

#include "core/jsonx.h"
#include "llm/sse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_TOKENS 1024

struct llm_anthropic_stream {
    llm_wire_stream w; /* first: the shared decoder core */
    llm_wire_on_delta on_delta;
    void *ctx;
};

char *llm_anthropic_build_request(const llm_wire_request *r, ap_err *err)
{
    char *out = NULL;
    buf sys;
    buf_init(&sys, 4 * 1024 * 1024);
    ap_err_clear(err);
    cJSON *root = NULL;
    if (r->model == NULL || r->model[0] == '\0' || r->n_messages == 0) {
        ap_err_set(err, AP_INVALID, "a request needs a model and at least one message");
        goto out;
    }
    root = cJSON_CreateObject();
    if (root == NULL || cJSON_AddStringToObject(root, "model", r->model) == NULL ||
        cJSON_AddNumberToObject(root, "max_tokens",
                                r->max_tokens > 0 ? r->max_tokens : DEFAULT_MAX_TOKENS) == NULL)
        goto out;
    ap_status rc = AP_OK;
    if (r->system != NULL)
        rc = buf_puts(&sys, r->system);
    if (rc == AP_OK && r->schema != NULL) {
        if (sys.len > 0)
            rc = buf_puts(&sys, "\n\n");
        if (rc == AP_OK)
            rc = llm_wire_schema_instruction(r->schema, &sys);
    }
    if (rc != AP_OK) {
        ap_err_set(err, rc, "system prompt too large");
        goto out;
    }
    if (sys.len > 0 && cJSON_AddStringToObject(root, "system", sys.data) == NULL)
        goto out;
    cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
    if (msgs == NULL)
        goto out;
    for (size_t i = 0; i < r->n_messages; i++) {
        const llm_wire_message *in = &r->messages[i];
        if (in->role == NULL || in->content == NULL) {
            ap_err_set(err, AP_INVALID, "message %zu has no role or content", i);
            goto out;
        }
        cJSON *m = cJSON_CreateObject();
        if (m == NULL || !cJSON_AddItemToArray(msgs, m) ||
            cJSON_AddStringToObject(m, "role", in->role) == NULL ||
            cJSON_AddStringToObject(m, "content", in->content) == NULL)
            goto out;
    }
    if (r->temperature >= 0 && isfinite(r->temperature) &&
        cJSON_AddNumberToObject(root, "temperature", r->temperature) == NULL)
        goto out;
    if (cJSON_AddBoolToObject(root, "stream", r->stream) == NULL)
        goto out;
    out = jsonx_print(root);
out:
    if (out == NULL && (err == NULL || err->status == AP_OK))
        ap_err_set(err, AP_NOMEM, "out of memory building the request");
    buf_free(&sys);
    cJSON_Delete(root);
    return out;
}

static bool read_count(const cJSON *obj, const char *key, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0 ||
        v->valuedouble > 1e12)
        return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

/* Prompt tokens include the cached ones: they are part of what the model read. */
static void read_usage(const cJSON *usage, llm_wire_reply *r)
{
    int64_t v = 0;
    bool any = false;
    if (!cJSON_IsObject(usage))
        return;
    if (read_count(usage, "input_tokens", &v)) {
        int64_t total = v, extra = 0;
        if (read_count(usage, "cache_creation_input_tokens", &extra))
            total += extra;
        if (read_count(usage, "cache_read_input_tokens", &extra))
            total += extra;
        r->usage.prompt_tokens = total;
        any = true;
    }
    /* output_tokens is cumulative in message_delta, so the last value wins. */
    if (read_count(usage, "output_tokens", &v)) {
        r->usage.completion_tokens = v;
        any = true;
    }
    if (any)
        r->usage.present = true;
}

static void read_stop(const char *reason, llm_wire_reply *r)
{
    static const struct {
        const char *anthropic, *norm;
    } map[] = {{"end_turn", "stop"},       {"stop_sequence", "stop"},     {"max_tokens", "length"},
               {"tool_use", "tool_calls"}, {"refusal", "content_filter"}, {"pause_turn", "pause"}};
    if (reason == NULL || reason[0] == '\0')
        return;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(reason, map[i].anthropic) == 0) {
            snprintf(r->finish_reason, sizeof r->finish_reason, "%s", map[i].norm);
            return;
        }
    }
    snprintf(r->finish_reason, sizeof r->finish_reason, "%s", reason);
}

static void read_id(const cJSON *msg, llm_wire_reply *r)
{
    const char *id = jsonx_string(msg, "id");
    if (id != NULL && r->id[0] == '\0')
        snprintf(r->id, sizeof r->id, "%s", id);
}

static ap_status provider_error(const cJSON *root, llm_wire_reply *r, ap_err *err)
{
    const cJSON *eobj = cJSON_GetObjectItemCaseSensitive(root, "error");
    llm_wire_classify_stream_error(jsonx_string(eobj, "type"), jsonx_string(eobj, "message"),
                                   &r->error);
    r->failed = true;
    return ap_err_set(err, AP_ERROR, "provider error %s: %s",
                      r->error.type[0] ? r->error.type : "unknown", r->error.message);
}

static ap_status text_delta(llm_anthropic_stream *s, const char *text, ap_err *err)
{
    size_t n = text != NULL ? strlen(text) : 0;
    ap_status rc = AP_OK;
    if (n == 0)
        return AP_OK;
    if ((rc = llm_wire_reply_append(&s->w.reply, text, n, err)) != AP_OK)
        return rc;
    if (s->on_delta != NULL && (rc = s->on_delta(s->ctx, text, n)) != AP_OK) {
        if (err != NULL && err->status == AP_OK)
            ap_err_set(err, rc, "delta handler stopped the stream");
    }
    return rc;
}

static ap_status on_event(void *ctx, const llm_sse_event *ev)
{
    llm_anthropic_stream *s = ctx;
    ap_err *err = s->w.err;
    ap_status rc = AP_OK;
    cJSON *root = NULL;
    if (s->w.reply.done || ev->data_len == 0)
        return AP_OK;
    if (!jsonx_utf8_valid(ev->data, ev->data_len))
        return ap_err_set(err, AP_INVALID, "provider sent invalid UTF-8");
    root = jsonx_parse(ev->data, ev->data_len, LLM_WIRE_JSON_DEPTH, NULL);
    if (!cJSON_IsObject(root)) {
        rc = ap_err_set(err, AP_INVALID, "malformed stream event");
        goto out;
    }
    const char *type = jsonx_string(root, "type");
    if (type == NULL)
        type = ev->event;
    if (strcmp(type, "error") == 0) {
        rc = provider_error(root, &s->w.reply, err);
    } else if (strcmp(type, "message_start") == 0) {
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(root, "message");
        read_id(msg, &s->w.reply);
        read_usage(cJSON_GetObjectItemCaseSensitive(msg, "usage"), &s->w.reply);
    } else if (strcmp(type, "content_block_start") == 0) {
        const cJSON *block = cJSON_GetObjectItemCaseSensitive(root, "content_block");
        const char *bt = jsonx_string(block, "type");
        if (bt != NULL && strcmp(bt, "text") == 0)
            rc = text_delta(s, jsonx_string(block, "text"), err);
    } else if (strcmp(type, "content_block_delta") == 0) {
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(root, "delta");
        const char *dt = jsonx_string(delta, "type");
        /* thinking, signature and tool-input deltas are not part of the answer text */
        if (dt != NULL && strcmp(dt, "text_delta") == 0)
            rc = text_delta(s, jsonx_string(delta, "text"), err);
    } else if (strcmp(type, "message_delta") == 0) {
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(root, "delta");
        read_stop(jsonx_string(delta, "stop_reason"), &s->w.reply);
        read_usage(cJSON_GetObjectItemCaseSensitive(root, "usage"), &s->w.reply);
    } else if (strcmp(type, "message_stop") == 0) {
        s->w.reply.done = true;
    }
out:
    cJSON_Delete(root);
    return rc;
}

llm_anthropic_stream *llm_anthropic_stream_new(const llm_wire_limits *limits,
                                               llm_wire_on_delta on_delta, void *ctx)
{
    llm_anthropic_stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->on_delta = on_delta;
    s->ctx = ctx;
    llm_wire_reply_init(&s->w.reply, limits->max_text);
    s->w.sse = llm_sse_new(limits->max_line, limits->max_event, on_event, s);
    if (s->w.sse == NULL) {
        llm_anthropic_stream_free(s);
        return NULL;
    }
    return s;
}

void llm_anthropic_stream_free(llm_anthropic_stream *s)
{
    if (s == NULL)
        return;
    llm_sse_free(s->w.sse);
    llm_wire_reply_free(&s->w.reply);
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
    ap_status rc = AP_OK;
    cJSON *root = NULL;
    rc = llm_wire_body_json(body, len, limits, &root, err);
    if (rc != AP_OK)
        return rc;
    const char *type = jsonx_string(root, "type");
    if (type != NULL && strcmp(type, "error") == 0) {
        rc = provider_error(root, out, err);
        goto out;
    }
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(root, "content");
    if (!cJSON_IsArray(content)) {
        rc = ap_err_set(err, AP_INVALID, "response has no content");
        goto out;
    }
    read_id(root, out);
    const cJSON *block = NULL;
    cJSON_ArrayForEach(block, content)
    {
        const char *bt = jsonx_string(block, "type");
        const char *text = jsonx_string(block, "text");
        if (bt == NULL || strcmp(bt, "text") != 0 || text == NULL)
            continue;
        if ((rc = llm_wire_reply_append(out, text, strlen(text), err)) != AP_OK)
            goto out;
    }
    read_stop(jsonx_string(root, "stop_reason"), out);
    read_usage(cJSON_GetObjectItemCaseSensitive(root, "usage"), out);
    out->done = true;
out:
    cJSON_Delete(root);
    return rc;
}
