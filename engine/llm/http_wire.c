#include "llm/http_wire.h"

#include "core/jsonx.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RETRY_AFTER_CAP_MS (3600 * 1000LL)

llm_wire_limits llm_wire_default_limits(void)
{
    llm_wire_limits l = {.max_line = 64 * 1024, .max_event = 1024 * 1024, .max_text = 256 * 1024};
    return l;
}

void llm_wire_reply_init(llm_wire_reply *r, size_t max_text)
{
    memset(r, 0, sizeof *r);
    buf_init(&r->text, max_text);
}

void llm_wire_reply_free(llm_wire_reply *r)
{
    if (r == NULL)
        return;
    buf_free(&r->text);
}

ap_status llm_wire_reply_append(llm_wire_reply *r, const char *text, size_t len, ap_err *err)
{
    if (!jsonx_utf8_valid(text, len))
        return ap_err_set(err, AP_INVALID, "provider sent invalid UTF-8");
    ap_status rc = buf_append(&r->text, text, len);
    if (rc == AP_LIMIT)
        return ap_err_set(err, rc, "answer longer than %zu bytes", r->text.max);
    if (rc != AP_OK)
        return ap_err_set(err, rc, "out of memory");
    return AP_OK;
}

ap_status llm_wire_schema_instruction(const cJSON *schema, buf *out)
{
    char *text = jsonx_print(schema);
    if (text == NULL)
        return AP_NOMEM;
    ap_status rc = buf_printf(out,
                              "Answer with one JSON value only, no prose and no code fences, "
                              "that is valid for the following JSON Schema.\n%s\n%s",
                              LLM_WIRE_SCHEMA_MARKER, text);
    free(text);
    return rc;
}

ap_status llm_wire_request_begin(const llm_wire_request *r, bool with_schema, buf *out, ap_err *err)
{
    if (r->model == NULL || r->model[0] == '\0' || r->n_messages == 0)
        return ap_err_set(err, AP_INVALID, "a request needs a model and at least one message");
    for (size_t i = 0; i < r->n_messages; i++) {
        if (r->messages[i].role == NULL || r->messages[i].content == NULL)
            return ap_err_set(err, AP_INVALID, "message %zu has no role or content", i);
    }
    ap_status rc = AP_OK;
    if (r->system != NULL)
        rc = buf_puts(out, r->system);
    if (rc == AP_OK && with_schema && r->schema != NULL) {
        if (out->len > 0)
            rc = buf_puts(out, "\n\n");
        if (rc == AP_OK)
            rc = llm_wire_schema_instruction(r->schema, out);
    }
    return rc == AP_OK ? AP_OK : ap_err_set(err, rc, "system prompt too large");
}

void llm_wire_body_init(llm_wire_body *w)
{
    buf_init(&w->b, LLM_WIRE_MAX_REQUEST);
    w->rc = AP_OK;
}

void llm_wire_raw(llm_wire_body *w, const char *text)
{
    if (w->rc == AP_OK)
        w->rc = buf_puts(&w->b, text);
}

void llm_wire_str(llm_wire_body *w, const char *s)
{
    if (w->rc == AP_OK)
        w->rc = jsonx_append_string(&w->b, s, strlen(s));
}

void llm_wire_num(llm_wire_body *w, double d)
{
    if (w->rc == AP_OK)
        w->rc = jsonx_append_number(&w->b, d);
}

void llm_wire_tree(llm_wire_body *w, const cJSON *item)
{
    if (w->rc != AP_OK)
        return;
    char *text = jsonx_print(item);
    w->rc = text != NULL ? buf_puts(&w->b, text) : AP_NOMEM;
    free(text);
}

void llm_wire_messages(llm_wire_body *w, const char *system, const llm_wire_request *r)
{
    llm_wire_raw(w, "\"messages\":[");
    if (system != NULL) {
        llm_wire_raw(w, "{\"role\":\"system\",\"content\":");
        llm_wire_str(w, system);
        llm_wire_raw(w, "},");
    }
    for (size_t i = 0; i < r->n_messages; i++) {
        llm_wire_raw(w, i > 0 ? ",{\"role\":" : "{\"role\":");
        llm_wire_str(w, r->messages[i].role);
        llm_wire_raw(w, ",\"content\":");
        llm_wire_str(w, r->messages[i].content);
        llm_wire_raw(w, "}");
    }
    llm_wire_raw(w, "]");
}

char *llm_wire_body_finish(llm_wire_body *w, ap_err *err)
{
    char *out = w->rc == AP_OK ? buf_steal(&w->b) : NULL;
    if (w->rc == AP_LIMIT)
        ap_err_set(err, AP_LIMIT, "request larger than %u bytes", LLM_WIRE_MAX_REQUEST);
    else if (out == NULL)
        ap_err_set(err, AP_NOMEM, "out of memory building the request");
    buf_free(&w->b);
    return out;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    if (src == NULL) {
        dst[0] = '\0';
        return;
    }
    snprintf(dst, cap, "%s", src);
}

/* Case-insensitive substring test; s may be NULL. */
static bool contains(const char *s, const char *needle)
{
    return s != NULL && strcasestr(s, needle) != NULL;
}

static bool says_spend_limit(const llm_wire_error *e, const char *body, size_t len)
{
    static const char *const words[] = {"insufficient_quota", "quota",       "spend limit",
                                        "spending limit",     "usage limit", "billing",
                                        "credit balance"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (contains(e->type, words[i]) || contains(e->message, words[i]))
            return true;
    }
    /* A body that is not JSON may still say it; search a bounded copy as text. */
    if (e->type[0] == '\0' && e->message[0] == '\0' && body != NULL && len > 0) {
        char tmp[1024];
        size_t n = len < sizeof tmp - 1 ? len : sizeof tmp - 1;
        memcpy(tmp, body, n);
        tmp[n] = '\0';
        for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
            if (contains(tmp, words[i]))
                return true;
        }
    }
    return false;
}

static void read_error_body(const char *body, size_t len, llm_wire_error *e)
{
    if (body == NULL || len == 0 || len > 1024 * 1024)
        return;
    cJSON *root = jsonx_parse(body, len, 16, NULL);
    if (root == NULL)
        return;
    /* OpenAI: {"error":{"message","type","code"}}; Anthropic: {"type":"error","error":{"type",
     * "message"}}; some OpenAI-compatible servers: {"error":"text"}. */
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (cJSON_IsObject(obj)) {
        const char *code = jsonx_string(obj, "code");
        const char *type = jsonx_string(obj, "type");
        copy_str(e->type, sizeof e->type, code != NULL ? code : type);
        copy_str(e->message, sizeof e->message, jsonx_string(obj, "message"));
    } else if (cJSON_IsString(obj)) {
        copy_str(e->message, sizeof e->message, obj->valuestring);
    } else {
        copy_str(e->message, sizeof e->message, jsonx_string(root, "message"));
    }
    cJSON_Delete(root);
}

void llm_wire_classify_http(int status, const char *body, size_t len, llm_wire_error *e)
{
    memset(e, 0, sizeof *e);
    e->http_status = status;
    read_error_body(body, len, e);
    if (status == 429)
        e->retryable = !says_spend_limit(e, body, len);
    else
        e->retryable = status == 408 || status == 409 || status >= 500;
    if (e->message[0] == '\0')
        snprintf(e->message, sizeof e->message, "HTTP status %d", status);
}

void llm_wire_classify_stream_error(const char *type, const char *message, llm_wire_error *e)
{
    static const char *const transient[] = {"overloaded", "rate_limit", "server_error",
                                            "api_error",  "timeout",    "unavailable"};
    memset(e, 0, sizeof *e);
    copy_str(e->type, sizeof e->type, type);
    copy_str(e->message, sizeof e->message, message != NULL ? message : "provider error");
    for (size_t i = 0; i < sizeof transient / sizeof transient[0]; i++) {
        if (contains(type, transient[i]))
            e->retryable = true;
    }
    if (says_spend_limit(e, NULL, 0))
        e->retryable = false;
}

void llm_wire_transport_error(const char *message, llm_wire_error *e)
{
    memset(e, 0, sizeof *e);
    copy_str(e->type, sizeof e->type, "transport");
    copy_str(e->message, sizeof e->message, message);
    e->retryable = true;
}

/* A non-negative decimal amount (digits first, spaces around); false for anything else. */
static bool amount(const char *value, double *out)
{
    if (!isdigit((unsigned char)*value))
        return false;
    char *end = NULL;
    errno = 0;
    *out = strtod(value, &end);
    while (end != NULL && (*end == ' ' || *end == '\t'))
        end++;
    return errno == 0 && end != NULL && *end == '\0' && isfinite(*out) && *out >= 0;
}

static int64_t capped_ms(double ms)
{
    return ms >= (double)RETRY_AFTER_CAP_MS ? RETRY_AFTER_CAP_MS : (int64_t)(ms + 0.5);
}

static const char *skip_blanks(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

int64_t llm_wire_retry_after_ms(const char *value, int64_t now_ms)
{
    if (value == NULL)
        return -1;
    value = skip_blanks(value);
    double secs;
    if (isdigit((unsigned char)*value))
        return amount(value, &secs) ? capped_ms(secs * 1000.0) : -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(value, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0')
        return -1;
    time_t at = timegm(&tm);
    if (at == (time_t)-1)
        return -1;
    int64_t delta = (int64_t)at * 1000 - now_ms;
    if (delta < 0)
        return 0;
    return delta > RETRY_AFTER_CAP_MS ? RETRY_AFTER_CAP_MS : delta;
}

int64_t llm_wire_retry_after_ms_of_ms(const char *value)
{
    double ms;
    return value != NULL && amount(skip_blanks(value), &ms) ? capped_ms(ms) : -1;
}

int64_t llm_wire_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms, uint32_t rnd,
                            int64_t retry_after_ms)
{
    if (attempt < 1)
        attempt = 1;
    int64_t ceiling = base_ms;
    for (int i = 1; i < attempt && ceiling < cap_ms; i++)
        ceiling *= 2;
    if (ceiling > cap_ms)
        ceiling = cap_ms;
    /* Jitter spreads a herd of callers that failed together; keeping the lower half of the
     * window stops a retry from landing at once on a provider that just refused us. */
    int64_t half = ceiling / 2;
    int64_t wait = half + (half > 0 ? (int64_t)(rnd % (uint64_t)(half + 1)) : 0);
    if (retry_after_ms >= 0 && wait < retry_after_ms)
        wait = retry_after_ms;
    return wait;
}

ap_status llm_wire_stream_init(llm_wire_stream *s, const llm_wire_limits *limits,
                               llm_wire_on_delta on_delta, void *ctx, llm_sse_on_event on_event,
                               void *self)
{
    s->limits = *limits;
    s->on_delta = on_delta;
    s->ctx = ctx;
    llm_wire_reply_init(&s->reply, limits->max_text);
    s->sse = llm_sse_new(limits->max_line, limits->max_event, on_event, self);
    return s->sse != NULL ? AP_OK : AP_NOMEM;
}

void llm_wire_stream_cleanup(llm_wire_stream *s)
{
    if (s == NULL)
        return;
    llm_sse_free(s->sse);
    s->sse = NULL;
    llm_wire_reply_free(&s->reply);
}

ap_status llm_wire_stream_feed(llm_wire_stream *s, const char *data, size_t len, ap_err *err)
{
    ap_err local;
    if (s->failed != AP_OK)
        return ap_err_set(err, s->failed, "stream already failed");
    ap_err_clear(&local);
    s->err = &local;
    ap_status rc = llm_sse_feed(s->sse, data, len, &local);
    s->err = NULL;
    if (rc != AP_OK) {
        s->failed = rc;
        ap_err_set(err, rc, "%s", local.msg);
    }
    return rc;
}

ap_status llm_wire_stream_finish(llm_wire_stream *s, ap_err *err)
{
    if (s->failed != AP_OK)
        return ap_err_set(err, s->failed, "stream failed");
    ap_status rc = llm_sse_finish(s->sse, NULL, err);
    if (rc != AP_OK)
        return rc;
    if (!s->reply.done && s->reply.finish_reason[0] == '\0')
        return ap_err_set(err, AP_IO, "stream ended before the answer was complete");
    return AP_OK;
}

ap_status llm_wire_json(const char *text, size_t len, const llm_wire_limits *limits,
                        const char *what, jview *out, ap_err *err)
{
    jview_init(out);
    if (len > limits->max_event)
        return ap_err_set(err, AP_LIMIT, "%s longer than %zu bytes", what, limits->max_event);
    ap_status rc = jview_parse(out, text, len, LLM_WIRE_JSON_DEPTH, NULL);
    if (rc == AP_NOMEM)
        return ap_err_set(err, rc, "out of memory");
    if (rc != AP_OK || jview_type_of(out, 0) != JVIEW_OBJECT)
        return ap_err_set(err, AP_INVALID, "malformed %s", what);
    /* A \u0000 would end the answer where the engine reads it as C text: refused (the
     * attempt is retried) rather than cut without a word. */
    if (jsonx_escapes_nul(text, len))
        return ap_err_set(err, AP_INVALID, "%s holds a NUL character (\\u0000)", what);
    return AP_OK;
}

ap_status llm_wire_append_string(llm_wire_reply *r, const jview *v, int i,
                                 llm_wire_on_delta on_delta, void *ctx, ap_err *err)
{
    char small[1024];
    char *text = small;
    size_t n = jview_string(v, i, small, sizeof small);
    ap_status rc = AP_OK;
    if (n == 0)
        return AP_OK;
    if (n >= sizeof small) {
        if (n > r->text.max)
            return ap_err_set(err, AP_LIMIT, "answer longer than %zu bytes", r->text.max);
        if ((text = malloc(n + 1)) == NULL)
            return ap_err_set(err, AP_NOMEM, "out of memory");
        jview_string(v, i, text, n + 1);
    }
    if ((rc = llm_wire_reply_append(r, text, n, err)) != AP_OK)
        goto out;
    if (on_delta != NULL && (rc = on_delta(ctx, text, n)) != AP_OK) {
        if (err != NULL && err->status == AP_OK)
            ap_err_set(err, rc, "delta handler stopped the stream");
    }
out:
    if (text != small)
        free(text);
    return rc;
}

bool llm_wire_count(const jview *v, int obj, const char *key, int64_t *out)
{
    double d = jview_number(v, jview_get(v, obj, key), -1);
    if (!isfinite(d) || d < 0 || d > LLM_WIRE_TOKENS_MAX)
        return false;
    *out = (int64_t)d;
    return d == floor(d);
}
