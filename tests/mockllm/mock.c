/* mock.c - mockllm's transport-neutral core (see mock.h). */
#include "mock.h"

#include "core/jsonx.h"
#include "gen.h"
#include "llm/http_wire.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum endpoint { EP_OPENAI, EP_ANTHROPIC, EP_COUNT };
static const char *const EP_NAMES[EP_COUNT] = {"chat_completions", "messages"};
static const char *const FAULT_NAMES[F_COUNT] = {"none",  "429",         "500",       "529",
                                                 "reset", "stall",       "malformed", "truncate",
                                                 "401",   "spend_limit", "bad_json",  "linger"};

pthread_mutex_t mock_lock = PTHREAD_MUTEX_INITIALIZER;
mock_opts mock_o;

static struct {
    uint64_t rng;
    uint64_t requests, by_ep[EP_COUNT], other, by_fault[F_COUNT], disconnects, completed, in_flight,
        streams, frames, lag_us_sum, lag_us_max, http2, connections;
    int64_t first_arrival_us, last_arrival_us; /* of LLM requests since the last reset */
} M;

int64_t mock_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- timer heaps ----------------------------------------------------------------------- */

static void heap_swap(mock_heap *h, size_t a, size_t b)
{
    mock_req *t = h->v[a];
    h->v[a] = h->v[b];
    h->v[b] = t;
    h->v[a]->heap_idx = (int)a;
    h->v[b]->heap_idx = (int)b;
}

static void heap_up(mock_heap *h, size_t i)
{
    while (i > 0 && h->v[(i - 1) / 2]->wake_us > h->v[i]->wake_us) {
        heap_swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(mock_heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && h->v[l]->wake_us < h->v[m]->wake_us)
            m = l;
        if (r < h->len && h->v[r]->wake_us < h->v[m]->wake_us)
            m = r;
        if (m == i)
            return;
        heap_swap(h, i, m);
        i = m;
    }
}

void mock_heap_remove(mock_req *r)
{
    mock_heap *h = r->heap;
    if (h == NULL)
        return;
    size_t i = (size_t)r->heap_idx;
    h->len--;
    if (i != h->len) {
        h->v[i] = h->v[h->len];
        h->v[i]->heap_idx = (int)i;
        heap_down(h, i);
        heap_up(h, i);
    }
    r->heap = NULL;
    r->heap_idx = -1;
}

bool mock_heap_push(mock_heap *h, mock_req *r, int64_t wake, bool *top)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 1024;
        mock_req **v = realloc(h->v, cap * sizeof *v);
        if (v == NULL)
            return false;
        h->v = v;
        h->cap = cap;
    }
    r->wake_us = wake;
    r->heap = h;
    r->heap_idx = (int)h->len;
    h->v[h->len++] = r;
    heap_up(h, (size_t)r->heap_idx);
    *top = r->heap_idx == 0;
    return true;
}

void mock_heap_free(mock_heap *h)
{
    free(h->v);
    *h = (mock_heap){0};
}

/* ---- request lifetime ------------------------------------------------------------------ */

mock_req *mock_req_new(void *conn, int fd)
{
    mock_req *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->refs = 1;
    r->conn = conn;
    r->fd = fd;
    r->heap_idx = -1;
    r->start_us = mock_now_us();
    buf_init(&r->body, MOCK_MAX_BODY);
    buf_init(&r->out, MOCK_MAX_BODY * 2);
    buf_init(&r->head, 1024);
    pthread_mutex_lock(&mock_lock);
    M.in_flight++;
    pthread_mutex_unlock(&mock_lock);
    return r;
}

void mock_req_unref(mock_req *r)
{
    if (r == NULL || --r->refs > 0)
        return;
    mock_heap_remove(r);
    buf_free(&r->body);
    buf_free(&r->out);
    buf_free(&r->head);
    free(r->content);
    free(r->ends);
    free(r);
}

void mock_req_done(void)
{
    M.in_flight--;
}

void mock_note_connection(void)
{
    pthread_mutex_lock(&mock_lock);
    M.connections++;
    pthread_mutex_unlock(&mock_lock);
}

void mock_req_body(mock_req *r, const char *data, size_t len)
{
    if (!r->too_large && buf_append(&r->body, data, len) != AP_OK)
        r->too_large = true;
}

void mock_note_disconnect(mock_req *r)
{
    if (r->counted || r->ended_by_us)
        return;
    r->counted = true;
    M.disconnects++;
}

static size_t tok_start(const mock_req *r, size_t k)
{
    return k == 0 ? 0 : r->ends[k - 1];
}

static int64_t frame_due(const mock_req *r, size_t k)
{
    size_t n = r->n_tokens;
    if (k == 0)
        return r->start_us + r->latency_us;
    if (k > n)
        k = n > 0 ? n : 1;
    return r->start_us + r->latency_us + (int64_t)(k - 1) * r->token_us;
}

static const char *finish_name(const mock_req *r)
{
    if (r->ep == EP_OPENAI)
        return r->length_cut ? "length" : "stop";
    return r->length_cut ? "max_tokens" : "end_turn";
}

static int64_t completion_tokens(const mock_req *r)
{
    return (int64_t)r->n_tokens;
}

static ap_status whole_body(mock_req *r, buf *b)
{
    size_t len = r->n_tokens > 0 ? r->ends[r->n_tokens - 1] : 0;
    ap_status rc;
    if (r->ep == EP_OPENAI) {
        rc = buf_printf(b,
                        "{\"id\":\"%s\",\"object\":\"chat.completion\",\"created\":%lld,"
                        "\"model\":",
                        r->id, (long long)time(NULL));
        if (rc == AP_OK)
            rc = jsonx_append_string(b, r->model, strlen(r->model));
        if (rc == AP_OK)
            rc = buf_puts(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                             "\"content\":");
        if (rc == AP_OK)
            rc = jsonx_append_string(b, r->content, len);
        if (rc == AP_OK)
            rc = buf_printf(b,
                            "},\"finish_reason\":\"%s\"}],\"usage\":{\"prompt_tokens\":%lld,"
                            "\"completion_tokens\":%lld,\"total_tokens\":%lld}}",
                            finish_name(r), (long long)r->prompt_tokens,
                            (long long)completion_tokens(r),
                            (long long)(r->prompt_tokens + completion_tokens(r)));
        return rc;
    }
    rc = buf_printf(b,
                    "{\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":", r->id);
    if (rc == AP_OK)
        rc = jsonx_append_string(b, r->model, strlen(r->model));
    if (rc == AP_OK)
        rc = buf_puts(b, ",\"content\":[{\"type\":\"text\",\"text\":");
    if (rc == AP_OK)
        rc = jsonx_append_string(b, r->content, len);
    if (rc == AP_OK)
        rc = buf_printf(b,
                        "}],\"stop_reason\":\"%s\",\"stop_sequence\":null,\"usage\":{"
                        "\"input_tokens\":%lld,\"output_tokens\":%lld}}",
                        finish_name(r), (long long)r->prompt_tokens,
                        (long long)completion_tokens(r));
    return rc;
}

/* The start of every OpenAI chunk of r, made once per answer: frames are the hot path. */
static ap_status openai_chunk_head(mock_req *r, buf *b)
{
    if (r->head.len == 0) {
        ap_status rc = buf_printf(&r->head,
                                  "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\","
                                  "\"created\":%lld,\"model\":",
                                  r->id, (long long)time(NULL));
        if (rc == AP_OK)
            rc = jsonx_append_string(&r->head, r->model, strlen(r->model));
        if (rc != AP_OK)
            return rc;
    }
    return buf_append(b, r->head.data, r->head.len);
}

static ap_status frame(mock_req *r, size_t k, buf *b)
{
    size_t n = r->n_tokens;
    ap_status rc = AP_OK;
    if (!r->stream)
        return k == n + 1 ? whole_body(r, b) : AP_OK;
    if (r->ep == EP_OPENAI) {
        if (k > n + 1)
            return AP_OK;
        if ((rc = openai_chunk_head(r, b)) != AP_OK)
            return rc;
        if (k == 0)
            return buf_puts(b, ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                               "\"content\":\"\"},\"finish_reason\":null}]}\n\n");
        if (k <= n) {
            rc = buf_puts(b, ",\"choices\":[{\"index\":0,\"delta\":{\"content\":");
            if (rc == AP_OK)
                rc = jsonx_append_string(b, r->content + tok_start(r, k - 1),
                                         r->ends[k - 1] - tok_start(r, k - 1));
            return rc == AP_OK ? buf_puts(b, "},\"finish_reason\":null}]}\n\n") : rc;
        }
        rc =
            buf_printf(b, ",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"%s\"}]}\n\n",
                       finish_name(r));
        if (rc == AP_OK && r->include_usage) {
            rc = openai_chunk_head(r, b);
            if (rc == AP_OK)
                rc = buf_printf(b,
                                ",\"choices\":[],\"usage\":{\"prompt_tokens\":%lld,"
                                "\"completion_tokens\":%lld,\"total_tokens\":%lld}}\n\n",
                                (long long)r->prompt_tokens, (long long)completion_tokens(r),
                                (long long)(r->prompt_tokens + completion_tokens(r)));
        }
        return rc == AP_OK ? buf_puts(b, "data: [DONE]\n\n") : rc;
    }
    if (k == 0) {
        rc = buf_printf(b,
                        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{"
                        "\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],"
                        "\"model\":",
                        r->id);
        if (rc == AP_OK)
            rc = jsonx_append_string(b, r->model, strlen(r->model));
        if (rc == AP_OK)
            rc = buf_printf(b,
                            ",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{"
                            "\"input_tokens\":%lld,\"output_tokens\":1}}}\n\n"
                            "event: content_block_start\ndata: {\"type\":\"content_block_start\","
                            "\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
                            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
                            (long long)r->prompt_tokens);
        return rc;
    }
    if (k <= n) {
        rc = buf_puts(b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                         "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":");
        if (rc == AP_OK)
            rc = jsonx_append_string(b, r->content + tok_start(r, k - 1),
                                     r->ends[k - 1] - tok_start(r, k - 1));
        return rc == AP_OK ? buf_puts(b, "}}\n\n") : rc;
    }
    if (k > n + 1)
        return AP_OK;
    return buf_printf(b,
                      "event: content_block_stop\ndata: {\"type\":\"content_block_stop\","
                      "\"index\":0}\n\n"
                      "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{"
                      "\"stop_reason\":\"%s\",\"stop_sequence\":null},\"usage\":{"
                      "\"output_tokens\":%lld}}\n\n"
                      "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                      finish_name(r), (long long)completion_tokens(r));
}

/* Appends every frame that is due by now (bounded, so one slow reader cannot hog memory). */
static ap_status emit_due(mock_req *r, int64_t now)
{
    size_t n = r->n_tokens;
    size_t half = n / 2 + 1;
    ap_status rc = AP_OK;
    while (r->next <= n + 1 && r->out.len < MOCK_OUT_CHUNK && frame_due(r, r->next) <= now) {
        if (r->fault == F_TRUNCATE && r->next >= half) {
            if (!r->stream && r->out.len == 0) {
                /* non-streaming: half a body, then the connection drops */
                buf whole;
                buf_init(&whole, MOCK_MAX_BODY * 2);
                rc = whole_body(r, &whole);
                if (rc == AP_OK)
                    rc = buf_append(&r->out, whole.data, whole.len / 2);
                buf_free(&whole);
            }
            r->truncate_now = true;
            r->next = n + 2;
            break;
        }
        if (r->fault == F_MALFORMED && r->next == (r->stream ? half : n + 1)) {
            rc = r->stream ? buf_puts(&r->out, r->ep == EP_OPENAI
                                                   ? "data: {\"choices\":[{\"delta\":{\"content\n\n"
                                                   : "event: content_block_delta\ndata: {\"type\":"
                                                     "\"content_block_delta\",\"delta\":{\n\n")
                           : buf_puts(&r->out, "{\"id\":\"broken\",\"choices\":[{");
            r->next++;
            if (!r->stream)
                break;
            continue;
        }
        /* how late the frame goes out: shows whether mockllm keeps its own schedule */
        int64_t lag = now - frame_due(r, r->next);
        M.frames++;
        M.lag_us_sum += (uint64_t)lag;
        if ((uint64_t)lag > M.lag_us_max)
            M.lag_us_max = (uint64_t)lag;
        rc = frame(r, r->next, &r->out);
        r->next++;
        if (rc != AP_OK)
            break;
    }
    return rc;
}
enum mock_pull_result mock_pull(mock_req *r, int64_t now, char *out, size_t max, size_t *n)
{
    *n = 0;
    if (r->gone)
        return PULL_ERROR;
    if (r->out_off >= r->out.len) {
        buf_reset(&r->out);
        r->out_off = 0;
        if (emit_due(r, now) != AP_OK) {
            r->ended_by_us = true;
            return PULL_ERROR;
        }
    }
    if (r->out_off < r->out.len) {
        size_t k = r->out.len - r->out_off;
        if (k > max)
            k = max;
        memcpy(out, r->out.data + r->out_off, k);
        r->out_off += k;
        *n = k;
        return PULL_DATA;
    }
    if (r->truncate_now) {
        r->ended_by_us = true;
        return PULL_ERROR;
    }
    if (r->next > r->n_tokens + 1 && r->fault == F_LINGER && r->stream) {
        r->due_us = INT64_MAX; /* everything said, nothing closed */
        return PULL_WAIT;
    }
    if (r->next > r->n_tokens + 1 && !r->stalled) {
        M.completed++;
        r->ended_by_us = true;
        return PULL_END;
    }
    r->due_us = r->stalled ? INT64_MAX : frame_due(r, r->next);
    return PULL_WAIT;
}

/* ---- replies --------------------------------------------------------------------------- */

static void set_reply(mock_reply *rep, unsigned status, const char *type, const char *body,
                      const char *retry_after)
{
    rep->status = status;
    rep->type = type;
    buf_reset(&rep->body);
    if (buf_puts(&rep->body, body) != AP_OK)
        rep->status = 500;
    rep->retry_after[0] = rep->retry_after_ms[0] = '\0';
    if (retry_after == NULL)
        return;
    snprintf(rep->retry_after, sizeof rep->retry_after, "%s", retry_after);
    char *end = NULL;
    double secs = strtod(retry_after, &end);
    if (end != retry_after && *end == '\0' && isfinite(secs) && secs >= 0 && secs < 1e6)
        snprintf(rep->retry_after_ms, sizeof rep->retry_after_ms, "%lld",
                 (long long)(secs * 1000.0));
}

static void reply_error(mock_reply *rep, int ep, unsigned status, const char *type,
                        const char *message, const char *retry_after)
{
    char body[512];
    if (ep == EP_ANTHROPIC)
        snprintf(body, sizeof body,
                 "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"%s\"}}", type,
                 message);
    else
        snprintf(body, sizeof body,
                 "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}",
                 message, type, type);
    set_reply(rep, status, "application/json", body, retry_after);
}

static void reply_fault(mock_reply *rep, mock_req *r, const char *ra)
{
    bool a = r->ep == EP_ANTHROPIC;
    switch (r->fault) {
    case F_429:
        reply_error(rep, r->ep, 429, a ? "rate_limit_error" : "rate_limit_exceeded",
                    "Rate limit reached for requests (mockllm)", ra);
        break;
    case F_SPEND:
        reply_error(rep, r->ep, 429, a ? "rate_limit_error" : "insufficient_quota",
                    a ? "You have reached your specified API usage limits (mockllm)"
                      : "You exceeded your current quota, please check your plan and "
                        "billing details (mockllm)",
                    NULL);
        break;
    case F_500:
        reply_error(rep, r->ep, 500, a ? "api_error" : "server_error",
                    "The server had an error while processing your request (mockllm)", NULL);
        break;
    case F_529:
        reply_error(rep, r->ep, 529, "overloaded_error", "Overloaded (mockllm)", ra);
        break;
    case F_401:
        reply_error(rep, r->ep, 401, a ? "authentication_error" : "invalid_api_key",
                    "Incorrect API key provided (mockllm)", NULL);
        break;
    default:
        reply_error(rep, r->ep, 500, "server_error", "unknown fault", NULL);
        break;
    }
}

/* ---- request handling ------------------------------------------------------------------ */

bool mock_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static long header_long(const mock_hdrs *h, const char *name, long dflt, long lo, long hi)
{
    const char *v = h->get(h->ctx, name);
    long x = dflt;
    return v != NULL && mock_parse_long(v, lo, hi, &x) ? x : dflt;
}

static enum mock_fault parse_fault(const char *s)
{
    for (int f = 1; f < F_COUNT; f++) {
        if (strcmp(s, FAULT_NAMES[f]) == 0)
            return (enum mock_fault)f;
    }
    return F_NONE;
}

static uint64_t rng_next(void)
{
    uint64_t x = M.rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    M.rng = x;
    return x;
}

static enum mock_fault choose_fault(const mock_hdrs *h)
{
    const char *v = h->get(h->ctx, "X-Mock-Fault");
    if (v != NULL)
        return parse_fault(v);
    if (mock_o.fault_rate <= 0 || mock_o.n_faults == 0)
        return F_NONE;
    double u = (double)(rng_next() >> 11) / 9007199254740992.0;
    if (u >= mock_o.fault_rate)
        return F_NONE;
    return (enum mock_fault)mock_o.faults[rng_next() % (uint64_t)mock_o.n_faults];
}

static bool key_ok(const mock_hdrs *h, int ep)
{
    if (mock_o.api_key == NULL)
        return true;
    const char *auth = h->get(h->ctx, "Authorization");
    const char *xkey = h->get(h->ctx, "x-api-key");
    if (ep == EP_ANTHROPIC && xkey != NULL)
        return strcmp(xkey, mock_o.api_key) == 0;
    return auth != NULL && strncmp(auth, "Bearer ", 7) == 0 &&
           strcmp(auth + 7, mock_o.api_key) == 0;
}

/* Gathers system text, the message transcript, the last user message and the schema. */
static bool read_prompt(mock_req *r, const cJSON *root, buf *system, buf *transcript,
                        const char **last_user, const cJSON **schema, cJSON **owned_schema)
{
    const cJSON *sys = cJSON_GetObjectItemCaseSensitive(root, "system");
    if (cJSON_IsString(sys)) {
        buf_puts(system, sys->valuestring);
    } else if (cJSON_IsArray(sys)) {
        const cJSON *blk = NULL;
        cJSON_ArrayForEach(blk, sys)
        {
            const char *t = jsonx_string(blk, "text");
            if (t != NULL)
                buf_puts(system, t);
        }
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return false;
    const cJSON *m = NULL;
    cJSON_ArrayForEach(m, msgs)
    {
        const char *role = jsonx_string(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (role == NULL)
            return false;
        const char *text = cJSON_IsString(content) ? content->valuestring : "";
        if (cJSON_IsArray(content)) {
            const cJSON *blk = cJSON_GetArrayItem(content, 0);
            const char *t = jsonx_string(blk, "text");
            text = t != NULL ? t : "";
        }
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            buf_puts(system, text);
            continue;
        }
        buf_printf(transcript, "%s: %s\n", role, text);
        if (strcmp(role, "user") == 0)
            *last_user = text;
    }
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
    const cJSON *sch = cJSON_GetObjectItemCaseSensitive(js, "schema");
    if (cJSON_IsObject(sch)) {
        *schema = sch;
        return true;
    }
    /* instruction mode: the schema follows the marker in the system or the last user text */
    const char *hay[2] = {system->data, *last_user};
    for (int i = 0; i < 2; i++) {
        const char *at = hay[i] != NULL ? strstr(hay[i], LLM_WIRE_SCHEMA_MARKER) : NULL;
        if (at == NULL)
            continue;
        const char *end = NULL;
        cJSON *parsed = cJSON_ParseWithOpts(at + strlen(LLM_WIRE_SCHEMA_MARKER), &end, false);
        if (cJSON_IsObject(parsed)) {
            *owned_schema = parsed;
            *schema = parsed;
            break;
        }
        cJSON_Delete(parsed);
    }
    (void)r;
    return true;
}

static enum mock_outcome start_answer(mock_req *r, const mock_hdrs *h, mock_reply *rep)
{
    enum mock_outcome ret = MOCK_FAIL;
    buf system, transcript;
    buf_init(&system, MOCK_MAX_BODY);
    buf_init(&transcript, MOCK_MAX_BODY);
    cJSON *owned_schema = NULL;
    const cJSON *schema = NULL;
    const char *last_user = "";
    cJSON *root = jsonx_parse(r->body.data ? r->body.data : "", r->body.len, 64, NULL);
    if (!cJSON_IsObject(root)) {
        reply_error(rep, r->ep, 400, "invalid_request_error", "body is not a JSON object", NULL);
        ret = MOCK_REPLY;
        goto out;
    }
    const char *model = jsonx_string(root, "model");
    if (model == NULL || model[0] == '\0' ||
        !read_prompt(r, root, &system, &transcript, &last_user, &schema, &owned_schema)) {
        reply_error(rep, r->ep, 400, "invalid_request_error",
                    "model and a non-empty messages array are required", NULL);
        ret = MOCK_REPLY;
        goto out;
    }
    snprintf(r->model, sizeof r->model, "%s", model);
    /* a model named "fault-<name>" always fails that way: lets a client's fallback be tested */
    if (strncmp(model, "fault-", 6) == 0 && r->fault == F_NONE) {
        r->fault = parse_fault(model + 6);
        pthread_mutex_lock(&mock_lock);
        M.by_fault[F_NONE]--;
        M.by_fault[r->fault]++;
        pthread_mutex_unlock(&mock_lock);
    }
    r->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream"));
    r->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "stream_options"), "include_usage"));
    double max_tokens = jsonx_number(root, "max_tokens", -1);
    if (max_tokens < 0)
        max_tokens = jsonx_number(root, "max_completion_tokens", -1);

    if (r->fault != F_NONE && r->fault != F_STALL && r->fault != F_MALFORMED &&
        r->fault != F_TRUNCATE && r->fault != F_BADJSON && r->fault != F_LINGER) {
        reply_fault(rep, r, r->retry_after[0] ? r->retry_after : NULL);
        ret = MOCK_REPLY;
        goto out;
    }

    long words = header_long(h, "X-Mock-Tokens", mock_o.tokens, 1, MAX_TOKENS_PER_ANSWER);
    mock_prompt p = {.seed = mock_o.seed,
                     .model = model,
                     .system = system.data ? system.data : "",
                     .messages = transcript.data ? transcript.data : "",
                     .last_user = last_user,
                     .schema = schema};
    r->json = schema != NULL;
    /* bad_json: a first answer that ignores the schema; a repair turn (the transcript then
     * holds the earlier answer) gets a valid one */
    bool repair = transcript.data != NULL && strstr(transcript.data, "assistant: ") != NULL;
    if (r->fault == F_BADJSON && schema != NULL && !repair)
        r->content = strdup("I would say the answer is probably yes, with some caveats.");
    else
        r->content = mock_generate(&p, (int)words);
    size_t cap = strlen(r->content ? r->content : "") + 1;
    r->ends = malloc(cap * sizeof *r->ends);
    if (r->content == NULL || r->ends == NULL)
        goto out;
    r->n_tokens = mock_tokenize(r->content, r->json, r->ends, cap);
    if (max_tokens >= 1 && (double)r->n_tokens > max_tokens) {
        r->n_tokens = (size_t)max_tokens;
        r->length_cut = true;
    }
    r->prompt_tokens = (int64_t)((system.len + transcript.len + 3) / 4);
    uint64_t hash = mock_hash(0, r->content);
    snprintf(r->id, sizeof r->id, "%s%016llx%llu",
             r->ep == EP_OPENAI ? "chatcmpl-mock" : "msg_mock", (unsigned long long)hash,
             (unsigned long long)M.requests);
    r->latency_us = header_long(h, "X-Mock-Latency-Ms", mock_o.latency_ms, 0, 3600000) * 1000;
    r->token_us = header_long(h, "X-Mock-Token-Ms", mock_o.token_ms, 0, 60000) * 1000;
    r->next = r->stream ? 0 : r->n_tokens + 1;
    if (r->fault == F_STALL) {
        r->stalled = true;
        r->next = r->n_tokens + 2;
        /* a comment puts the headers on the wire, then nothing ever follows */
        if (r->stream && buf_puts(&r->out, ": mockllm\n\n") != AP_OK)
            goto out;
    }
    pthread_mutex_lock(&mock_lock);
    r->refs++;
    M.streams++;
    pthread_mutex_unlock(&mock_lock);
    ret = MOCK_STREAM;
out:
    cJSON_Delete(owned_schema);
    cJSON_Delete(root);
    buf_free(&system);
    buf_free(&transcript);
    return ret;
}

static void stats(mock_reply *rep)
{
    buf b;
    buf_init(&b, 1 << 16);
    pthread_mutex_lock(&mock_lock);
    buf_printf(&b, "{\"requests_total\":%llu,\"by_endpoint\":{", (unsigned long long)M.requests);
    for (int i = 0; i < EP_COUNT; i++)
        buf_printf(&b, "\"%s\":%llu,", EP_NAMES[i], (unsigned long long)M.by_ep[i]);
    buf_printf(&b, "\"other\":%llu},\"by_fault\":{", (unsigned long long)M.other);
    for (int f = 0; f < F_COUNT; f++)
        buf_printf(&b, "%s\"%s\":%llu", f ? "," : "", FAULT_NAMES[f],
                   (unsigned long long)M.by_fault[f]);
    buf_printf(&b,
               "},\"disconnects\":%llu,\"completed\":%llu,\"in_flight\":%llu,"
               "\"streams_open\":%llu,\"frames\":%llu,\"frame_lag_ms_avg\":%.3f,"
               "\"frame_lag_ms_max\":%.3f,\"arrival_spread_ms\":%.3f,\"http2_requests\":%llu,"
               "\"connections_total\":%llu}",
               (unsigned long long)M.disconnects, (unsigned long long)M.completed,
               (unsigned long long)(M.in_flight - 1) /* not this request */,
               (unsigned long long)M.streams, (unsigned long long)M.frames,
               M.frames ? (double)M.lag_us_sum / (double)M.frames / 1000.0 : 0.0,
               (double)M.lag_us_max / 1000.0,
               (double)(M.last_arrival_us - M.first_arrival_us) / 1000.0,
               (unsigned long long)M.http2, (unsigned long long)M.connections);
    pthread_mutex_unlock(&mock_lock);
    set_reply(rep, 200, "application/json", b.data ? b.data : "{}", NULL);
    buf_free(&b);
}

static void reset_counters(void)
{
    pthread_mutex_lock(&mock_lock);
    M.requests = M.other = M.disconnects = M.completed = M.http2 = M.connections = 0;
    M.frames = M.lag_us_sum = M.lag_us_max = 0;
    M.first_arrival_us = M.last_arrival_us = 0;
    memset(M.by_ep, 0, sizeof M.by_ep);
    memset(M.by_fault, 0, sizeof M.by_fault);
    M.rng = mock_o.seed * 2654435761u + 88172645463325252ULL;
    pthread_mutex_unlock(&mock_lock);
}

enum mock_outcome mock_handle(mock_req *r, const char *method, const char *url, const mock_hdrs *h,
                              mock_reply *rep)
{
    *rep = (mock_reply){0};
    buf_init(&rep->body, 1 << 20);
    if (strcmp(method, "GET") == 0 && strcmp(url, "/stats") == 0) {
        stats(rep);
        return MOCK_REPLY;
    }
    if (strcmp(method, "POST") == 0 && strcmp(url, "/reset") == 0) {
        reset_counters();
        set_reply(rep, 200, "application/json", "{\"ok\":true}", NULL);
        return MOCK_REPLY;
    }
    bool post = strcmp(method, "POST") == 0;
    if (post && (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0))
        r->ep = EP_OPENAI;
    else if (post && (strcmp(url, "/v1/messages") == 0 || strcmp(url, "/messages") == 0))
        r->ep = EP_ANTHROPIC;
    else {
        pthread_mutex_lock(&mock_lock);
        M.requests++;
        M.other++;
        pthread_mutex_unlock(&mock_lock);
        set_reply(rep, 404, "application/json",
                  "{\"error\":{\"message\":\"no such endpoint\",\"type\":\"not_found\"}}", NULL);
        return MOCK_REPLY;
    }
    pthread_mutex_lock(&mock_lock);
    if (M.requests == 0 || r->start_us < M.first_arrival_us)
        M.first_arrival_us = r->start_us;
    if (r->start_us > M.last_arrival_us)
        M.last_arrival_us = r->start_us;
    M.requests++;
    M.by_ep[r->ep]++;
    M.http2 += r->h2;
    r->fault = choose_fault(h);
    if (r->fault == F_NONE && !key_ok(h, r->ep))
        r->fault = F_401;
    M.by_fault[r->fault]++;
    pthread_mutex_unlock(&mock_lock);
    const char *ra = h->get(h->ctx, "X-Mock-Retry-After");
    snprintf(r->retry_after, sizeof r->retry_after, "%s",
             ra != NULL                   ? ra
             : mock_o.retry_after != NULL ? mock_o.retry_after
                                          : "");
    if (r->too_large) {
        reply_error(rep, r->ep, 413, "request_too_large", "body too large", NULL);
        return MOCK_REPLY;
    }
    if (r->fault == F_RESET) {
        pthread_mutex_lock(&mock_lock);
        r->ended_by_us = true;
        pthread_mutex_unlock(&mock_lock);
        return MOCK_RESET;
    }
    return start_answer(r, h, rep);
}

const char *mock_content_type(const mock_req *r)
{
    return r->stream ? "text/event-stream" : "application/json";
}

void mock_stream_done(mock_req *r)
{
    M.streams--;
    mock_req_unref(r);
}

bool mock_parse_faults(const char *list, mock_opts *o)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", list);
    o->n_faults = 0;
    char *save = NULL;
    for (char *t = strtok_r(tmp, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        enum mock_fault f = parse_fault(t);
        if (f == F_NONE || o->n_faults >= F_COUNT)
            return false;
        o->faults[o->n_faults++] = (int)f;
    }
    return o->n_faults > 0;
}

void mock_init(const mock_opts *o)
{
    mock_o = *o;
    M.rng = mock_o.seed * 2654435761u + 88172645463325252ULL;
}
