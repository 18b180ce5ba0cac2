#include "llm/openai_stream.h"

#include "core/jsonx.h"
#include "llm/sse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct llm_openai_stream {
    llm_wire_stream w; /* first: the shared decoder core */
    llm_wire_limits limits;
    llm_wire_on_delta on_delta;
    void *ctx;
};

static cJSON *add_messages(cJSON *root, const llm_wire_request *r, ap_err *err)
{
    cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
    if (msgs == NULL)
        return NULL;
    buf sys;
    buf_init(&sys, 4 * 1024 * 1024);
    ap_status rc = AP_OK;
    if (r->system != NULL)
        rc = buf_puts(&sys, r->system);
    if (rc == AP_OK && r->schema != NULL && r->schema_mode == LLM_WIRE_SCHEMA_INSTRUCT) {
        if (sys.len > 0)
            rc = buf_puts(&sys, "\n\n");
        if (rc == AP_OK)
            rc = llm_wire_schema_instruction(r->schema, &sys);
    }
    if (rc != AP_OK) {
        buf_free(&sys);
        ap_err_set(err, rc, "system prompt too large");
        return NULL;
    }
    if (sys.len > 0) {
        cJSON *m = cJSON_CreateObject();
        if (m == NULL || !cJSON_AddItemToArray(msgs, m) ||
            cJSON_AddStringToObject(m, "role", "system") == NULL ||
            cJSON_AddStringToObject(m, "content", sys.data) == NULL) {
            buf_free(&sys);
            return NULL;
        }
    }
    buf_free(&sys);
    for (size_t i = 0; i < r->n_messages; i++) {
        const llm_wire_message *in = &r->messages[i];
        if (in->role == NULL || in->content == NULL) {
            ap_err_set(err, AP_INVALID, "message %zu has no role or content", i);
            return NULL;
        }
        cJSON *m = cJSON_CreateObject();
        if (m == NULL || !cJSON_AddItemToArray(msgs, m) ||
            cJSON_AddStringToObject(m, "role", in->role) == NULL ||
            cJSON_AddStringToObject(m, "content", in->content) == NULL)
            return NULL;
    }
    return msgs;
}

char *llm_openai_build_request(const llm_wire_request *r, ap_err *err)
{
    char *out = NULL;
    ap_err_clear(err);
    if (r->model == NULL || r->model[0] == '\0' || r->n_messages == 0) {
        ap_err_set(err, AP_INVALID, "a request needs a model and at least one message");
        return NULL;
    }
    cJSON *root = cJSON_CreateObject();
    if (root == NULL || cJSON_AddStringToObject(root, "model", r->model) == NULL)
        goto out;
    if (add_messages(root, r, err) == NULL)
        goto out;
    const char *mt = r->max_tokens_key != NULL ? r->max_tokens_key : "max_tokens";
    if (r->max_tokens > 0 && cJSON_AddNumberToObject(root, mt, r->max_tokens) == NULL)
        goto out;
    if (r->temperature >= 0 && isfinite(r->temperature) &&
        cJSON_AddNumberToObject(root, "temperature", r->temperature) == NULL)
        goto out;
    if (cJSON_AddBoolToObject(root, "stream", r->stream) == NULL)
        goto out;
    if (r->stream) {
        cJSON *so = cJSON_AddObjectToObject(root, "stream_options");
        if (so == NULL || cJSON_AddTrueToObject(so, "include_usage") == NULL)
            goto out;
    }
    if (r->schema != NULL && r->schema_mode == LLM_WIRE_SCHEMA_NATIVE) {
        cJSON *rf = cJSON_AddObjectToObject(root, "response_format");
        if (rf == NULL || cJSON_AddStringToObject(rf, "type", "json_schema") == NULL)
            goto out;
        cJSON *js = cJSON_AddObjectToObject(rf, "json_schema");
        if (js == NULL || cJSON_AddStringToObject(js, "name", "answer") == NULL)
            goto out;
        cJSON *copy = cJSON_Duplicate(r->schema, true);
        if (copy == NULL || !cJSON_AddItemToObject(js, "schema", copy)) {
            cJSON_Delete(copy);
            goto out;
        }
        /* strict mode rejects schemas with optional properties, which strategies use. */
        if (cJSON_AddFalseToObject(js, "strict") == NULL)
            goto out;
    }
    out = jsonx_print(root);
out:
    if (out == NULL && (err == NULL || err->status == AP_OK))
        ap_err_set(err, AP_NOMEM, "out of memory building the request");
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

static void read_usage(const cJSON *usage, llm_wire_reply *r)
{
    if (!cJSON_IsObject(usage))
        return;
    int64_t p = 0, c = 0;
    bool hp = read_count(usage, "prompt_tokens", &p);
    bool hc = read_count(usage, "completion_tokens", &c);
    if (!hp && !hc)
        return;
    r->usage.present = true;
    r->usage.prompt_tokens = p;
    r->usage.completion_tokens = c;
}

static void read_finish(const cJSON *choice, llm_wire_reply *r)
{
    const char *fr = jsonx_string(choice, "finish_reason");
    if (fr != NULL && fr[0] != '\0')
        snprintf(r->finish_reason, sizeof r->finish_reason, "%s", fr);
}

static void read_id(const cJSON *root, llm_wire_reply *r)
{
    const char *id = jsonx_string(root, "id");
    if (id != NULL && r->id[0] == '\0')
        snprintf(r->id, sizeof r->id, "%s", id);
}

static ap_status provider_error(const cJSON *eobj, llm_wire_reply *r, ap_err *err)
{
    const char *type = NULL, *msg = NULL;
    if (cJSON_IsObject(eobj)) {
        type = jsonx_string(eobj, "code");
        if (type == NULL)
            type = jsonx_string(eobj, "type");
        msg = jsonx_string(eobj, "message");
    } else if (cJSON_IsString(eobj)) {
        msg = eobj->valuestring;
    }
    llm_wire_classify_stream_error(type, msg, &r->error);
    r->failed = true;
    return ap_err_set(err, AP_ERROR, "provider error%s%s: %s", type ? " " : "", type ? type : "",
                      r->error.message);
}

/* The choice with index 0, or the first one when indexes are missing. */
static const cJSON *first_choice(const cJSON *root)
{
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    const cJSON *c = NULL;
    if (!cJSON_IsArray(choices))
        return NULL;
    cJSON_ArrayForEach(c, choices)
    {
        if (!cJSON_IsObject(c))
            continue;
        const cJSON *idx = cJSON_GetObjectItemCaseSensitive(c, "index");
        if (!cJSON_IsNumber(idx) || idx->valuedouble == 0)
            return c;
    }
    return NULL;
}

static ap_status on_event(void *ctx, const llm_sse_event *ev)
{
    llm_openai_stream *s = ctx;
    ap_err *err = s->w.err;
    ap_status rc = AP_OK;
    cJSON *root = NULL;
    if (s->w.reply.done || ev->data_len == 0)
        return AP_OK;
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
        s->w.reply.done = true;
        return AP_OK;
    }
    if (!jsonx_utf8_valid(ev->data, ev->data_len))
        return ap_err_set(err, AP_INVALID, "provider sent invalid UTF-8");
    root = jsonx_parse(ev->data, ev->data_len, LLM_WIRE_JSON_DEPTH, NULL);
    if (!cJSON_IsObject(root)) {
        rc = ap_err_set(err, AP_INVALID, "malformed stream chunk");
        goto out;
    }
    const cJSON *eobj = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (eobj != NULL && !cJSON_IsNull(eobj)) {
        rc = provider_error(eobj, &s->w.reply, err);
        goto out;
    }
    read_id(root, &s->w.reply);
    const cJSON *choice = first_choice(root);
    if (choice != NULL) {
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(choice, "delta");
        const char *text = jsonx_string(delta, "content");
        size_t n = text != NULL ? strlen(text) : 0;
        if (n > 0) {
            if ((rc = llm_wire_reply_append(&s->w.reply, text, n, err)) != AP_OK)
                goto out;
            if (s->on_delta != NULL && (rc = s->on_delta(s->ctx, text, n)) != AP_OK) {
                if (err != NULL && err->status == AP_OK)
                    ap_err_set(err, rc, "delta handler stopped the stream");
                goto out;
            }
        }
        read_finish(choice, &s->w.reply);
    }
    read_usage(cJSON_GetObjectItemCaseSensitive(root, "usage"), &s->w.reply);
out:
    cJSON_Delete(root);
    return rc;
}

llm_openai_stream *llm_openai_stream_new(const llm_wire_limits *limits, llm_wire_on_delta on_delta,
                                         void *ctx)
{
    llm_openai_stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->limits = *limits;
    s->on_delta = on_delta;
    s->ctx = ctx;
    llm_wire_reply_init(&s->w.reply, limits->max_text);
    s->w.sse = llm_sse_new(limits->max_line, limits->max_event, on_event, s);
    if (s->w.sse == NULL) {
        llm_openai_stream_free(s);
        return NULL;
    }
    return s;
}

void llm_openai_stream_free(llm_openai_stream *s)
{
    if (s == NULL)
        return;
    llm_sse_free(s->w.sse);
    llm_wire_reply_free(&s->w.reply);
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
    ap_status rc = AP_OK;
    cJSON *root = NULL;
    rc = llm_wire_body_json(body, len, limits, &root, err);
    if (rc != AP_OK)
        return rc;
    const cJSON *eobj = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (eobj != NULL && !cJSON_IsNull(eobj)) {
        rc = provider_error(eobj, out, err);
        goto out;
    }
    read_id(root, out);
    const cJSON *choice = first_choice(root);
    if (choice == NULL) {
        rc = ap_err_set(err, AP_INVALID, "response has no choices");
        goto out;
    }
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(choice, "message");
    const char *text = jsonx_string(msg, "content");
    if (text != NULL && (rc = llm_wire_reply_append(out, text, strlen(text), err)) != AP_OK)
        goto out;
    read_finish(choice, out);
    read_usage(cJSON_GetObjectItemCaseSensitive(root, "usage"), out);
    out->done = true;
out:
    cJSON_Delete(root);
    return rc;
}
