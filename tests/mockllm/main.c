/* mockllm - an OpenAI- and Anthropic-compatible LLM server double for tests and benchmarks.
 *
 *   mockllm --port N [--host ADDR] [--latency-ms N] [--token-ms N] [--tokens N]
 *           [--fault-rate R] [--faults LIST] [--retry-after V] [--api-key K] [--seed N]
 *           [--threads N]
 *
 * Prints "listening on PORT" once ready (--port 0 picks a free port). Endpoints:
 * POST /v1/chat/completions, POST /v1/messages (streaming or not), GET /stats, POST /reset.
 * Per-request overrides by header: X-Mock-Latency-Ms, X-Mock-Token-Ms, X-Mock-Tokens,
 * X-Mock-Fault (429|500|529|reset|stall|malformed|truncate|401|spend_limit|bad_json),
 * X-Mock-Retry-After. bad_json answers a schema request with prose unless it is a repair turn.
 * A model named "fault-<name>" always fails with that fault (for fallback tests).
 *
 * No thread per request and no sleeping: a streaming response is parked (MHD suspend) until
 * its next token is due, and one timer thread with a min-heap resumes it. Parked connections
 * are peeked every 100 ms so a client that goes away is noticed (and counted) promptly. */
#include "core/buf.h"
#include "core/jsonx.h"
#include "gen.h"
#include "llm/http_wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY (4 * 1024 * 1024)
#define MAX_TOKENS_PER_ANSWER 100000
#define CHECK_US 100000 /* how often a parked connection is checked for a gone client */
#define OUT_CHUNK 16384

enum endpoint { EP_OPENAI, EP_ANTHROPIC, EP_COUNT };
static const char *const EP_NAMES[EP_COUNT] = {"chat_completions", "messages"};

enum fault {
    F_NONE,
    F_429,
    F_500,
    F_529,
    F_RESET,
    F_STALL,
    F_MALFORMED,
    F_TRUNCATE,
    F_401,
    F_SPEND,
    F_BADJSON,
    F_COUNT
};
static const char *const FAULT_NAMES[F_COUNT] = {"none",  "429",         "500",       "529",
                                                 "reset", "stall",       "malformed", "truncate",
                                                 "401",   "spend_limit", "bad_json"};

typedef struct opts {
    const char *host;
    long port;
    long latency_ms, token_ms, tokens, threads;
    double fault_rate;
    int faults[F_COUNT];
    int n_faults;
    const char *retry_after;
    const char *api_key;
    uint64_t seed;
} opts;

typedef struct mock_req {
    int refs; /* the request itself, plus the streaming response while it exists */
    struct MHD_Connection *conn;
    int fd;
    buf body;
    bool too_large;
    enum endpoint ep;
    bool stream, include_usage, json;
    enum fault fault;
    const char *retry_after; /* borrowed from the options or the request's headers */
    char *content;
    size_t *ends;
    size_t n_tokens;
    char model[128];
    char id[64];
    int64_t prompt_tokens;
    bool length_cut;
    int64_t start_us, latency_us, token_us;
    size_t next; /* next frame: 0 head, 1..n tokens, n+1 tail, n+2 past the end */
    buf out;
    size_t out_off;
    bool suspended, gone, ended_by_us, truncate_now, stalled, counted;
    int heap_idx;
    int64_t wake_us, due_us;
} mock_req;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool running;
    opts o;
    uint64_t rng;
    mock_req **heap;
    size_t heap_len, heap_cap;
    /* counters */
    uint64_t requests, by_ep[EP_COUNT], other, by_fault[F_COUNT], disconnects, completed, in_flight,
        streams, frames, lag_us_sum, lag_us_max;
    int64_t first_arrival_us, last_arrival_us; /* of LLM requests since the last reset */
} M = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- the timer heap (M.lock held) ------------------------------------------------------ */

static void heap_swap(size_t a, size_t b)
{
    mock_req *t = M.heap[a];
    M.heap[a] = M.heap[b];
    M.heap[b] = t;
    M.heap[a]->heap_idx = (int)a;
    M.heap[b]->heap_idx = (int)b;
}

static void heap_up(size_t i)
{
    while (i > 0 && M.heap[(i - 1) / 2]->wake_us > M.heap[i]->wake_us) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < M.heap_len && M.heap[l]->wake_us < M.heap[m]->wake_us)
            m = l;
        if (r < M.heap_len && M.heap[r]->wake_us < M.heap[m]->wake_us)
            m = r;
        if (m == i)
            return;
        heap_swap(i, m);
        i = m;
    }
}

static void heap_remove(mock_req *r)
{
    if (r->heap_idx < 0)
        return;
    size_t i = (size_t)r->heap_idx;
    M.heap_len--;
    if (i != M.heap_len) {
        M.heap[i] = M.heap[M.heap_len];
        M.heap[i]->heap_idx = (int)i;
        heap_down(i);
        heap_up(i);
    }
    r->heap_idx = -1;
}

static bool heap_push(mock_req *r, int64_t wake)
{
    if (M.heap_len == M.heap_cap) {
        size_t cap = M.heap_cap ? M.heap_cap * 2 : 1024;
        mock_req **h = realloc(M.heap, cap * sizeof *h);
        if (h == NULL)
            return false;
        M.heap = h;
        M.heap_cap = cap;
    }
    r->wake_us = wake;
    r->heap_idx = (int)M.heap_len;
    M.heap[M.heap_len++] = r;
    heap_up((size_t)r->heap_idx);
    if (r->heap_idx == 0)
        pthread_cond_signal(&M.cond);
    return true;
}

/* ---- request lifetime ------------------------------------------------------------------ */

static void req_unref(mock_req *r)
{
    if (--r->refs > 0)
        return;
    heap_remove(r);
    buf_free(&r->body);
    buf_free(&r->out);
    free(r->content);
    free(r->ends);
    free(r);
}

static bool client_gone(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return true;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

static void note_disconnect(mock_req *r)
{
    if (r->counted || r->ended_by_us)
        return;
    r->counted = true;
    M.disconnects++;
}

static void *timer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&M.lock);
    while (M.running) {
        int64_t now = now_us();
        while (M.heap_len > 0 && M.heap[0]->wake_us <= now) {
            mock_req *r = M.heap[0];
            heap_remove(r);
            if (!r->suspended)
                continue;
            if (now < r->due_us && client_gone(r->fd)) {
                r->gone = true;
                note_disconnect(r);
            }
            if (r->gone || now >= r->due_us) {
                r->suspended = false;
                MHD_resume_connection(r->conn);
            } else {
                int64_t wake = r->due_us < now + CHECK_US ? r->due_us : now + CHECK_US;
                if (!heap_push(r, wake)) {
                    r->suspended = false;
                    MHD_resume_connection(r->conn);
                }
            }
        }
        if (M.heap_len == 0) {
            pthread_cond_wait(&M.cond, &M.lock);
        } else {
            int64_t wake = M.heap[0]->wake_us;
            struct timespec ts = {.tv_sec = wake / 1000000, .tv_nsec = (wake % 1000000) * 1000};
            pthread_cond_timedwait(&M.cond, &M.lock, &ts);
        }
    }
    pthread_mutex_unlock(&M.lock);
    return NULL;
}

/* ---- wire frames ----------------------------------------------------------------------- */

static ap_status put_json_str(buf *b, const char *s, size_t n)
{
    ap_status rc = buf_append(b, "\"", 1);
    for (size_t i = 0; i < n && rc == AP_OK; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            rc = buf_append(b, esc, 2);
        } else if (c < 0x20) {
            rc = buf_printf(b, "\\u%04x", c);
        } else {
            rc = buf_append(b, s + i, 1);
        }
    }
    return rc == AP_OK ? buf_append(b, "\"", 1) : rc;
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
            rc = put_json_str(b, r->model, strlen(r->model));
        if (rc == AP_OK)
            rc = buf_puts(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                             "\"content\":");
        if (rc == AP_OK)
            rc = put_json_str(b, r->content, len);
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
        rc = put_json_str(b, r->model, strlen(r->model));
    if (rc == AP_OK)
        rc = buf_puts(b, ",\"content\":[{\"type\":\"text\",\"text\":");
    if (rc == AP_OK)
        rc = put_json_str(b, r->content, len);
    if (rc == AP_OK)
        rc = buf_printf(b,
                        "}],\"stop_reason\":\"%s\",\"stop_sequence\":null,\"usage\":{"
                        "\"input_tokens\":%lld,\"output_tokens\":%lld}}",
                        finish_name(r), (long long)r->prompt_tokens,
                        (long long)completion_tokens(r));
    return rc;
}

static ap_status openai_chunk_head(mock_req *r, buf *b)
{
    ap_status rc = buf_printf(b,
                              "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\","
                              "\"created\":%lld,\"model\":",
                              r->id, (long long)time(NULL));
    if (rc == AP_OK)
        rc = put_json_str(b, r->model, strlen(r->model));
    return rc;
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
                rc = put_json_str(b, r->content + tok_start(r, k - 1),
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
            rc = put_json_str(b, r->model, strlen(r->model));
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
            rc = put_json_str(b, r->content + tok_start(r, k - 1),
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
    while (r->next <= n + 1 && r->out.len < OUT_CHUNK && frame_due(r, r->next) <= now) {
        if (r->fault == F_TRUNCATE && r->next >= half) {
            if (!r->stream && r->out.len == 0) {
                /* non-streaming: half a body, then the connection drops */
                buf whole;
                buf_init(&whole, MAX_BODY * 2);
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

static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    mock_req *r = cls;
    ssize_t ret = 0;
    pthread_mutex_lock(&M.lock);
    if (r->gone) {
        ret = MHD_CONTENT_READER_END_WITH_ERROR;
        goto out;
    }
    int64_t now = now_us();
    if (r->out_off >= r->out.len) {
        buf_reset(&r->out);
        r->out_off = 0;
        if (emit_due(r, now) != AP_OK) {
            r->ended_by_us = true;
            ret = MHD_CONTENT_READER_END_WITH_ERROR;
            goto out;
        }
    }
    if (r->out_off < r->out.len) {
        size_t n = r->out.len - r->out_off;
        if (n > max)
            n = max;
        memcpy(out, r->out.data + r->out_off, n);
        r->out_off += n;
        ret = (ssize_t)n;
        goto out;
    }
    if (r->truncate_now) {
        r->ended_by_us = true;
        ret = MHD_CONTENT_READER_END_WITH_ERROR;
        goto out;
    }
    if (r->next > r->n_tokens + 1 && !r->stalled) {
        M.completed++;
        r->ended_by_us = true;
        ret = MHD_CONTENT_READER_END_OF_STREAM;
        goto out;
    }
    r->due_us = r->stalled ? INT64_MAX : frame_due(r, r->next);
    int64_t wake = r->due_us < now + CHECK_US ? r->due_us : now + CHECK_US;
    if (!heap_push(r, wake)) {
        r->ended_by_us = true;
        ret = MHD_CONTENT_READER_END_WITH_ERROR;
        goto out;
    }
    r->suspended = true;
    MHD_suspend_connection(r->conn);
out:
    pthread_mutex_unlock(&M.lock);
    return ret;
}

static void reader_free(void *cls)
{
    pthread_mutex_lock(&M.lock);
    M.streams--;
    req_unref(cls);
    pthread_mutex_unlock(&M.lock);
}

/* ---- replies --------------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             const char *body, const char *retry_after)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", type);
    if (retry_after != NULL) {
        MHD_add_response_header(resp, "Retry-After", retry_after);
        char ms[32];
        char *end = NULL;
        double secs = strtod(retry_after, &end);
        if (end != retry_after && *end == '\0' && isfinite(secs) && secs >= 0 && secs < 1e6) {
            snprintf(ms, sizeof ms, "%lld", (long long)(secs * 1000.0));
            MHD_add_response_header(resp, "retry-after-ms", ms);
        }
    }
    enum MHD_Result rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result reply_error(struct MHD_Connection *conn, enum endpoint ep, unsigned status,
                                   const char *type, const char *message, const char *retry_after)
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
    return reply(conn, status, "application/json", body, retry_after);
}

static enum MHD_Result reply_fault(struct MHD_Connection *conn, mock_req *r, const char *ra)
{
    bool a = r->ep == EP_ANTHROPIC;
    switch (r->fault) {
    case F_429:
        return reply_error(conn, r->ep, 429, a ? "rate_limit_error" : "rate_limit_exceeded",
                           "Rate limit reached for requests (mockllm)", ra);
    case F_SPEND:
        return reply_error(conn, r->ep, 429, a ? "rate_limit_error" : "insufficient_quota",
                           a ? "You have reached your specified API usage limits (mockllm)"
                             : "You exceeded your current quota, please check your plan and "
                               "billing details (mockllm)",
                           NULL);
    case F_500:
        return reply_error(conn, r->ep, 500, a ? "api_error" : "server_error",
                           "The server had an error while processing your request (mockllm)", NULL);
    case F_529:
        return reply_error(conn, r->ep, 529, "overloaded_error", "Overloaded (mockllm)", ra);
    case F_401:
        return reply_error(conn, r->ep, 401, a ? "authentication_error" : "invalid_api_key",
                           "Incorrect API key provided (mockllm)", NULL);
    default:
        return reply_error(conn, r->ep, 500, "server_error", "unknown fault", NULL);
    }
}

static void reset_connection(mock_req *r)
{
    /* SO_LINGER 0 turns the close into an RST, as a crashed upstream or proxy would send. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(r->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

/* ---- request handling ------------------------------------------------------------------ */

static long header_long(struct MHD_Connection *conn, const char *name, long dflt, long lo, long hi)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
    if (v == NULL)
        return dflt;
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || x < lo || x > hi)
        return dflt;
    return x;
}

static enum fault parse_fault(const char *s)
{
    for (int f = 1; f < F_COUNT; f++) {
        if (strcmp(s, FAULT_NAMES[f]) == 0)
            return (enum fault)f;
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

static enum fault choose_fault(struct MHD_Connection *conn)
{
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Mock-Fault");
    if (h != NULL)
        return parse_fault(h);
    if (M.o.fault_rate <= 0 || M.o.n_faults == 0)
        return F_NONE;
    double u = (double)(rng_next() >> 11) / 9007199254740992.0;
    if (u >= M.o.fault_rate)
        return F_NONE;
    return (enum fault)M.o.faults[rng_next() % (uint64_t)M.o.n_faults];
}

static bool key_ok(struct MHD_Connection *conn, enum endpoint ep)
{
    if (M.o.api_key == NULL)
        return true;
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    const char *xkey = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "x-api-key");
    if (ep == EP_ANTHROPIC && xkey != NULL)
        return strcmp(xkey, M.o.api_key) == 0;
    return auth != NULL && strncmp(auth, "Bearer ", 7) == 0 && strcmp(auth + 7, M.o.api_key) == 0;
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

static enum MHD_Result start_answer(struct MHD_Connection *conn, mock_req *r)
{
    enum MHD_Result ret = MHD_NO;
    buf system, transcript;
    buf_init(&system, MAX_BODY);
    buf_init(&transcript, MAX_BODY);
    cJSON *owned_schema = NULL;
    const cJSON *schema = NULL;
    const char *last_user = "";
    cJSON *root = jsonx_parse(r->body.data ? r->body.data : "", r->body.len, 64, NULL);
    if (!cJSON_IsObject(root)) {
        ret = reply_error(conn, r->ep, 400, "invalid_request_error", "body is not a JSON object",
                          NULL);
        goto out;
    }
    const char *model = jsonx_string(root, "model");
    if (model == NULL || model[0] == '\0' ||
        !read_prompt(r, root, &system, &transcript, &last_user, &schema, &owned_schema)) {
        ret = reply_error(conn, r->ep, 400, "invalid_request_error",
                          "model and a non-empty messages array are required", NULL);
        goto out;
    }
    snprintf(r->model, sizeof r->model, "%s", model);
    /* a model named "fault-<name>" always fails that way: lets a client's fallback be tested */
    if (strncmp(model, "fault-", 6) == 0 && r->fault == F_NONE) {
        r->fault = parse_fault(model + 6);
        pthread_mutex_lock(&M.lock);
        M.by_fault[F_NONE]--;
        M.by_fault[r->fault]++;
        pthread_mutex_unlock(&M.lock);
    }
    r->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream"));
    r->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "stream_options"), "include_usage"));
    double max_tokens = jsonx_number(root, "max_tokens", -1);
    if (max_tokens < 0)
        max_tokens = jsonx_number(root, "max_completion_tokens", -1);

    if (r->fault != F_NONE && r->fault != F_STALL && r->fault != F_MALFORMED &&
        r->fault != F_TRUNCATE && r->fault != F_BADJSON) {
        ret = reply_fault(conn, r, r->retry_after);
        goto out;
    }

    long words = header_long(conn, "X-Mock-Tokens", M.o.tokens, 1, MAX_TOKENS_PER_ANSWER);
    mock_prompt p = {.seed = M.o.seed,
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
    uint64_t h = mock_hash(0, r->content);
    snprintf(r->id, sizeof r->id, "%s%016llx%llu",
             r->ep == EP_OPENAI ? "chatcmpl-mock" : "msg_mock", (unsigned long long)h,
             (unsigned long long)M.requests);
    r->latency_us = header_long(conn, "X-Mock-Latency-Ms", M.o.latency_ms, 0, 3600000) * 1000;
    r->token_us = header_long(conn, "X-Mock-Token-Ms", M.o.token_ms, 0, 60000) * 1000;
    r->next = r->stream ? 0 : r->n_tokens + 1;
    if (r->fault == F_STALL) {
        r->stalled = true;
        r->next = r->n_tokens + 2;
        /* a comment puts the headers on the wire, then nothing ever follows */
        if (r->stream && buf_puts(&r->out, ": mockllm\n\n") != AP_OK)
            goto out;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, OUT_CHUNK, reader, r, reader_free);
    if (resp == NULL)
        goto out;
    pthread_mutex_lock(&M.lock);
    r->refs++;
    M.streams++;
    pthread_mutex_unlock(&M.lock);
    MHD_add_response_header(resp, "Content-Type",
                            r->stream ? "text/event-stream" : "application/json");
    if (r->stream)
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "x-request-id", r->id);
    ret = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
out:
    cJSON_Delete(owned_schema);
    cJSON_Delete(root);
    buf_free(&system);
    buf_free(&transcript);
    return ret;
}

static enum MHD_Result stats(struct MHD_Connection *conn)
{
    buf b;
    buf_init(&b, 1 << 16);
    pthread_mutex_lock(&M.lock);
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
               "\"frame_lag_ms_max\":%.3f,\"arrival_spread_ms\":%.3f}",
               (unsigned long long)M.disconnects, (unsigned long long)M.completed,
               (unsigned long long)(M.in_flight - 1) /* not this request */,
               (unsigned long long)M.streams, (unsigned long long)M.frames,
               M.frames ? (double)M.lag_us_sum / (double)M.frames / 1000.0 : 0.0,
               (double)M.lag_us_max / 1000.0,
               (double)(M.last_arrival_us - M.first_arrival_us) / 1000.0);
    pthread_mutex_unlock(&M.lock);
    enum MHD_Result rc = reply(conn, 200, "application/json", b.data ? b.data : "{}", NULL);
    buf_free(&b);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)cls, (void)version;
    mock_req *r = *con_cls;
    if (r == NULL) {
        r = calloc(1, sizeof *r);
        if (r == NULL)
            return MHD_NO;
        r->refs = 1;
        r->conn = conn;
        r->heap_idx = -1;
        r->start_us = now_us();
        buf_init(&r->body, MAX_BODY);
        buf_init(&r->out, MAX_BODY * 2);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        r->fd = ci != NULL ? ci->connect_fd : -1;
        pthread_mutex_lock(&M.lock);
        M.in_flight++;
        pthread_mutex_unlock(&M.lock);
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (!r->too_large && buf_append(&r->body, upload, *upload_size) != AP_OK)
            r->too_large = true;
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") == 0 && strcmp(url, "/stats") == 0)
        return stats(conn);
    if (strcmp(method, "POST") == 0 && strcmp(url, "/reset") == 0) {
        pthread_mutex_lock(&M.lock);
        M.requests = M.other = M.disconnects = M.completed = 0;
        M.frames = M.lag_us_sum = M.lag_us_max = 0;
        M.first_arrival_us = M.last_arrival_us = 0;
        memset(M.by_ep, 0, sizeof M.by_ep);
        memset(M.by_fault, 0, sizeof M.by_fault);
        M.rng = M.o.seed * 2654435761u + 88172645463325252ULL;
        pthread_mutex_unlock(&M.lock);
        return reply(conn, 200, "application/json", "{\"ok\":true}", NULL);
    }
    bool post = strcmp(method, "POST") == 0;
    if (post && (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0))
        r->ep = EP_OPENAI;
    else if (post && (strcmp(url, "/v1/messages") == 0 || strcmp(url, "/messages") == 0))
        r->ep = EP_ANTHROPIC;
    else {
        pthread_mutex_lock(&M.lock);
        M.requests++;
        M.other++;
        pthread_mutex_unlock(&M.lock);
        return reply(conn, 404, "application/json",
                     "{\"error\":{\"message\":\"no such endpoint\",\"type\":\"not_found\"}}", NULL);
    }
    pthread_mutex_lock(&M.lock);
    if (M.requests == 0 || r->start_us < M.first_arrival_us)
        M.first_arrival_us = r->start_us;
    if (r->start_us > M.last_arrival_us)
        M.last_arrival_us = r->start_us;
    M.requests++;
    M.by_ep[r->ep]++;
    r->fault = choose_fault(conn);
    if (r->fault == F_NONE && !key_ok(conn, r->ep))
        r->fault = F_401;
    M.by_fault[r->fault]++;
    pthread_mutex_unlock(&M.lock);
    const char *ra = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Mock-Retry-After");
    r->retry_after = ra != NULL ? ra : M.o.retry_after;
    if (r->too_large)
        return reply_error(conn, r->ep, 413, "request_too_large", "body too large", NULL);
    if (r->fault == F_RESET) {
        pthread_mutex_lock(&M.lock);
        r->ended_by_us = true;
        pthread_mutex_unlock(&M.lock);
        reset_connection(r);
        return MHD_NO;
    }
    return start_answer(conn, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn;
    mock_req *r = *con_cls;
    if (r == NULL)
        return;
    pthread_mutex_lock(&M.lock);
    M.in_flight--;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN)
        note_disconnect(r);
    req_unref(r);
    pthread_mutex_unlock(&M.lock);
    *con_cls = NULL;
}

/* ---- main ------------------------------------------------------------------------------ */

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_faults(const char *list, opts *o)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", list);
    o->n_faults = 0;
    char *save = NULL;
    for (char *t = strtok_r(tmp, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        enum fault f = parse_fault(t);
        if (f == F_NONE || o->n_faults >= F_COUNT)
            return false;
        o->faults[o->n_faults++] = (int)f;
    }
    return o->n_faults > 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: mockllm --port N [--host ADDR] [--latency-ms N] [--token-ms N] [--tokens N]\n"
            "               [--fault-rate R] [--faults 429,500,...] [--retry-after SECS]\n"
            "               [--api-key KEY] [--seed N] [--threads N]\n");
}

static bool parse_args(int argc, char **argv, opts *o)
{
    *o = (opts){.host = "127.0.0.1",
                .port = -1,
                .latency_ms = 20,
                .token_ms = 2,
                .tokens = 40,
                .threads = 1,
                .retry_after = "1",
                .seed = 1};
    if (!parse_faults("429,500,529,reset,malformed,truncate", o))
        return false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x = 0;
        if (v == NULL)
            return false;
        i++;
        if (strcmp(a, "--port") == 0 && parse_long(v, 0, 65535, &x))
            o->port = x;
        else if (strcmp(a, "--host") == 0)
            o->host = v;
        else if (strcmp(a, "--latency-ms") == 0 && parse_long(v, 0, 3600000, &x))
            o->latency_ms = x;
        else if (strcmp(a, "--token-ms") == 0 && parse_long(v, 0, 60000, &x))
            o->token_ms = x;
        else if (strcmp(a, "--tokens") == 0 && parse_long(v, 1, MAX_TOKENS_PER_ANSWER, &x))
            o->tokens = x;
        else if (strcmp(a, "--threads") == 0 && parse_long(v, 1, 64, &x))
            o->threads = x;
        else if (strcmp(a, "--seed") == 0 && parse_long(v, 0, 0x7fffffff, &x))
            o->seed = (uint64_t)x;
        else if (strcmp(a, "--faults") == 0 && parse_faults(v, o))
            continue;
        else if (strcmp(a, "--retry-after") == 0)
            o->retry_after = v;
        else if (strcmp(a, "--api-key") == 0)
            o->api_key = v;
        else if (strcmp(a, "--fault-rate") == 0) {
            char *end = NULL;
            double r = strtod(v, &end);
            if (end == v || *end != '\0' || !(r >= 0 && r <= 1))
                return false;
            o->fault_rate = r;
        } else
            return false;
    }
    return o->port >= 0;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    int rc = 1;
    struct MHD_Daemon *d = NULL;
    pthread_t timer;
    bool timer_started = false;
    if (!parse_args(argc, argv, &M.o)) {
        usage();
        return 2;
    }
    raise_fd_limit();
    M.rng = M.o.seed * 2654435761u + 88172645463325252ULL;
    M.running = true;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&M.cond, &ca);
    pthread_condattr_destroy(&ca);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    if (pthread_create(&timer, NULL, timer_main, NULL) != 0)
        goto out;
    timer_started = true;

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)M.o.port);
    if (inet_pton(AF_INET, M.o.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "mockllm: --host must be an IPv4 address\n");
        goto out;
    }
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    d = MHD_start_daemon(flags, (uint16_t)M.o.port, NULL, NULL, on_request, NULL,
                         MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE,
                         (unsigned)M.o.threads, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                         MHD_OPTION_CONNECTION_LIMIT, 100000u, MHD_OPTION_CONNECTION_TIMEOUT, 0u,
                         MHD_OPTION_LISTEN_BACKLOG_SIZE, 8192u, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "mockllm: cannot listen on %s:%ld\n", M.o.host, M.o.port);
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("listening on %u\n", info != NULL ? (unsigned)info->port : (unsigned)M.o.port);
    fflush(stdout);

    sigdelset(&set, SIGPIPE);
    int sig = 0;
    sigwait(&set, &sig);
    rc = 0;
out:
    if (d != NULL) {
        /* MHD refuses to stop with parked connections: release them all first. */
        pthread_mutex_lock(&M.lock);
        while (M.heap_len > 0) {
            mock_req *r = M.heap[0];
            heap_remove(r);
            r->gone = true;
            r->ended_by_us = true;
            if (r->suspended) {
                r->suspended = false;
                MHD_resume_connection(r->conn);
            }
        }
        pthread_mutex_unlock(&M.lock);
        MHD_stop_daemon(d);
    }
    if (timer_started) {
        pthread_mutex_lock(&M.lock);
        M.running = false;
        pthread_cond_signal(&M.cond);
        pthread_mutex_unlock(&M.lock);
        pthread_join(timer, NULL);
    }
    free(M.heap);
    return rc;
}
