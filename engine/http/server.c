#include "http/server.h"

#include "core/buf.h"
#include "core/ids.h"
#include "core/jsonx.h"
#include "core/jview.h"
#include "core/log.h"

#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_ID_MAX 64
#define JSON_MAX_DEPTH 32
#define MAX_RESPONSE_HEADERS 16
#define DRAIN_FACTOR 8ULL /* bodies up to 8x the limit are drained before the 413 */

struct http_stream {
    pthread_mutex_t lock;
    struct MHD_Connection *conn;
    http_server *srv;
    http_stream_read read;
    http_stream_done done;
    void *ctx;
    bool suspended;
    bool wake_pending;
    bool closing; /* server shutting down: end at the next read */
    bool queued;  /* MHD took the response: done() runs when it ends */
    http_stream *prev, *next;
};

struct http_server {
    struct MHD_Daemon *daemon;
    const router *routes;
    http_auth_hook auth;
    void *app;
    size_t max_body;
    uint16_t port;
    atomic_int in_flight;      /* requests between first byte and completion, streams excluded */
    atomic_ullong answered[6]; /* [0] all, [1..5] by status class */
    pthread_mutex_t streams_lock;
    http_stream *streams;
    bool stopping; /* under streams_lock: new streams start closed */
};

typedef struct header {
    char *name;
    char *value;
} header;

struct http_request {
    http_server *srv;
    struct MHD_Connection *conn;
    const char *method;
    const char *url;
    char request_id[REQUEST_ID_MAX + 1];
    buf body;
    unsigned long long received;
    bool too_large;
    bool replied;
    bool counted;
    const char *bad_path; /* why the raw path is refused (see on_uri), or NULL */
    const char *uri_end;  /* where the raw request target ends, as a C string */
    router_match match;
    http_principal principal;
    cJSON *json;
    header headers[MAX_RESPONSE_HEADERS];
    int nheaders;
};

/* ---- request ids -------------------------------------------------------------------- */

/* Request ids need to be unique, not secret: a per-thread splitmix64 seeded once from the
 * kernel keeps the hot path free of system calls. */
static _Thread_local uint64_t rid_state;

static uint64_t rid_next(void)
{
    if (rid_state == 0 && ids_random(&rid_state, sizeof rid_state) != AP_OK)
        rid_state = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&rid_state;
    uint64_t z = (rid_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static bool request_id_ok(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        char c = s[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.' || c == ':';
        if (!ok || n >= REQUEST_ID_MAX)
            return false;
    }
    return n > 0;
}

static void assign_request_id(http_request *req)
{
    const char *given = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Request-ID");
    if (given != NULL && request_id_ok(given)) {
        size_t n = strlen(given);
        memcpy(req->request_id, given, n + 1);
        return;
    }
    uint64_t a = rid_next(), b = rid_next();
    unsigned char raw[16];
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    ids_hex(raw, sizeof raw, req->request_id);
}

/* ---- accessors ------------------------------------------------------------------------ */

const char *http_method(const http_request *req)
{
    return req->method;
}

const char *http_path(const http_request *req)
{
    return req->url;
}

const char *http_request_id(const http_request *req)
{
    return req->request_id;
}

const char *http_param(const http_request *req, const char *name)
{
    for (int i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.names[i], name) == 0)
            return req->match.values[i];
    return NULL;
}

const char *http_query(const http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_header(const http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *http_body(const http_request *req, size_t *len)
{
    if (len != NULL)
        *len = req->body.len;
    return req->body.data != NULL ? req->body.data : "";
}

bool http_is_json_type(const char *ctype)
{
    if (ctype == NULL)
        return false;
    size_t n = strcspn(ctype, ";");
    while (n > 0 && (ctype[n - 1] == ' ' || ctype[n - 1] == '\t'))
        n--;
    return (n == 16 && strncasecmp(ctype, "application/json", 16) == 0) ||
           (n > 17 && strncasecmp(ctype, "application/", 12) == 0 &&
            strncasecmp(ctype + n - 5, "+json", 5) == 0);
}

cJSON *http_json_body(http_request *req)
{
    if (req->json != NULL)
        return req->json;
    /* no header at all is taken as JSON, for hand-written requests */
    const char *ctype = http_header(req, "Content-Type");
    if (ctype != NULL && !http_is_json_type(ctype)) {
        http_reply_error(req, 415, "unsupported_media_type",
                         "the body must be JSON (Content-Type: application/json)");
        return NULL;
    }
    if (req->body.len == 0) {
        http_reply_error(req, 400, "invalid_json", "a JSON object body is required");
        return NULL;
    }
    /* RFC 8259 first, which cJSON is not strict about: it takes raw control characters in
     * strings (a raw NUL cutting the value short), numbers such as 01 or 1., and invalid
     * UTF-8 anywhere, which jsonx_print would then rewrite. */
    ap_err err;
    jview v;
    ap_status vrc = jview_parse(&v, req->body.data, req->body.len, JSON_MAX_DEPTH, &err);
    jview_free(&v);
    if (vrc != AP_OK) {
        if (vrc == AP_NOMEM)
            http_reply_ap_err(req, &err);
        else
            http_reply_error(req, 400, "invalid_json", "%s", err.msg);
        return NULL;
    }
    cJSON *j = jsonx_parse(req->body.data, req->body.len, JSON_MAX_DEPTH, &err);
    if (j == NULL) {
        http_reply_error(req, 400, "invalid_json", "%s", err.msg);
        return NULL;
    }
    if (jsonx_escapes_nul(req->body.data, req->body.len)) {
        cJSON_Delete(j);
        http_reply_error(req, 400, "invalid_json", "strings may not contain NUL (\\u0000)");
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        http_reply_error(req, 400, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    /* cJSON keeps both and every lookup finds the first: {"question":{...},"question":"ok"}
     * would pass a check of one value and mean another to whoever reads the last. */
    const char *dup = jsonx_duplicate_key(j);
    if (dup != NULL) {
        http_reply_error(req, 400, "invalid_json", "the key \"%.64s\" appears twice in one object",
                         dup);
        cJSON_Delete(j);
        return NULL;
    }
    req->json = j;
    return j;
}

http_principal *http_principal_of(http_request *req)
{
    return &req->principal;
}

/* ---- replies -------------------------------------------------------------------------- */

void http_add_header(http_request *req, const char *name, const char *value)
{
    if (req->nheaders == MAX_RESPONSE_HEADERS)
        return;
    char *n = strdup(name), *v = strdup(value);
    if (n == NULL || v == NULL) {
        free(n);
        free(v);
        return;
    }
    req->headers[req->nheaders++] = (header){n, v};
}

/* Queues resp (which it always releases); false when MHD would not take it. */
static bool queue(http_request *req, unsigned status, struct MHD_Response *resp,
                  const char *content_type)
{
    if (resp == NULL) {
        log_error("cannot allocate a response");
        return false;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "X-Request-ID", req->request_id);
    for (int i = 0; i < req->nheaders; i++)
        MHD_add_response_header(resp, req->headers[i].name, req->headers[i].value);
    bool ok = MHD_queue_response(req->conn, status, resp) == MHD_YES;
    if (!ok)
        log_warn("cannot queue a %u response", status);
    atomic_fetch_add_explicit(&req->srv->answered[0], 1, memory_order_relaxed);
    if (status >= 100 && status < 600)
        atomic_fetch_add_explicit(&req->srv->answered[status / 100], 1, memory_order_relaxed);
    MHD_destroy_response(resp);
    req->replied = true;
    return ok;
}

void http_reply_bytes(http_request *req, unsigned status, const char *content_type,
                      const void *data, size_t len)
{
    if (req->replied)
        return;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    queue(req, status, resp, content_type);
}

void http_reply_json(http_request *req, unsigned status, cJSON *body)
{
    char *text = body != NULL ? jsonx_print(body) : NULL;
    cJSON_Delete(body);
    if (text == NULL) {
        http_reply_error(req, 500, "internal", "cannot encode the response");
        return;
    }
    if (!req->replied) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        if (resp == NULL)
            free(text);
        queue(req, status, resp, "application/json");
    } else {
        free(text);
    }
}

void http_reply_error(http_request *req, unsigned status, const char *code, const char *fmt, ...)
{
    if (req->replied)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "request_id", req->request_id);
    if (status >= 500) {
        log_fields f = {.request_id = req->request_id, .tenant_id = req->principal.tenant_id};
        log_msg(LOG_LEVEL_ERROR, &f, "%s %s -> %u %s: %s", req->method, req->url, status, code,
                msg);
    }
    http_reply_json(req, status, root);
}

void http_reply_ap_err(http_request *req, const ap_err *err)
{
    unsigned status;
    const char *code;
    switch (err->status) {
    case AP_INVALID:
        status = 400, code = "invalid_request";
        break;
    case AP_NOTFOUND:
        status = 404, code = "not_found";
        break;
    case AP_CONFLICT:
        status = 409, code = "conflict";
        break;
    case AP_DENIED:
        status = 403, code = "forbidden";
        break;
    case AP_LIMIT:
        status = 413, code = "too_large";
        break;
    case AP_IO:
    case AP_TIMEOUT:
    case AP_AGAIN:
        status = 503, code = "unavailable";
        break;
    default:
        status = 500, code = "internal";
    }
    http_reply_error(req, status, code, "%s", err->msg[0] ? err->msg : ap_status_name(err->status));
}

/* ---- streams -------------------------------------------------------------------------- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    http_stream *st = cls;
    /* The producer's read runs without our lock, so a producer may wake us while holding its
     * own lock; a wake that lands between the read and the suspend is kept as wake_pending. */
    pthread_mutex_lock(&st->lock);
    bool closing = st->closing;
    pthread_mutex_unlock(&st->lock);
    ssize_t n = closing ? -1 : st->read(st->ctx, out, max);
    if (n == 0) {
        pthread_mutex_lock(&st->lock);
        if (st->closing) {
            n = -1; /* shutdown began during the read: never park a connection now */
        } else if (st->wake_pending) {
            st->wake_pending = false;
        } else {
            st->suspended = true;
            MHD_suspend_connection(st->conn);
        }
        pthread_mutex_unlock(&st->lock);
    }
    return n < 0 ? MHD_CONTENT_READER_END_OF_STREAM : n;
}

static void stream_free(void *cls)
{
    http_stream *st = cls;
    http_server *srv = st->srv;
    pthread_mutex_lock(&srv->streams_lock);
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        srv->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    pthread_mutex_unlock(&srv->streams_lock);
    /* A stream MHD refused never started: its owner cleans up, not us. */
    if (st->done != NULL && st->queued)
        st->done(st->ctx);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

http_stream *http_reply_stream(http_request *req, unsigned status, const char *content_type,
                               http_stream_read read, http_stream_done done, void *ctx)
{
    http_stream *st = calloc(1, sizeof *st);
    if (st == NULL) {
        http_reply_error(req, 500, "internal", "out of memory");
        return NULL;
    }
    pthread_mutex_init(&st->lock, NULL);
    st->conn = req->conn;
    st->srv = req->srv;
    st->read = read;
    st->done = done;
    st->ctx = ctx;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                                  stream_reader, st, stream_free);
    if (resp == NULL) {
        pthread_mutex_destroy(&st->lock);
        free(st);
        http_reply_error(req, 500, "internal", "out of memory");
        return NULL;
    }
    /* The body ends with the connection instead of a zero-length chunk: no chunk framing, no
     * extra send for the last chunk, and MHD does not wipe the connection's memory for a next
     * request, which with thousands of streams ending together (one panel's subscribers) is
     * what their last frames would wait behind. Still a valid HTTP/1.1 response. */
    MHD_set_response_options(resp, MHD_RF_HTTP_1_0_COMPATIBLE_STRICT, MHD_RO_END);
    http_server *srv = req->srv;
    pthread_mutex_lock(&srv->streams_lock);
    st->closing = srv->stopping; /* a stream opened during shutdown ends at once */
    st->next = srv->streams;
    if (srv->streams != NULL)
        srv->streams->prev = st;
    srv->streams = st;
    pthread_mutex_unlock(&srv->streams_lock);
    /* MHD calls the reader and stream_free only on this thread after the handler returns, so
     * setting queued after a successful queue cannot race them. */
    if (!queue(req, status, resp, content_type))
        return NULL;
    st->queued = true;
    /* A stream may live for hours: it must not hold up a graceful shutdown. */
    if (req->counted) {
        atomic_fetch_sub(&srv->in_flight, 1);
        req->counted = false;
    }
    return st;
}

void http_stream_wake(http_stream *st)
{
    pthread_mutex_lock(&st->lock);
    if (st->suspended) {
        st->suspended = false;
        MHD_resume_connection(st->conn);
    } else {
        st->wake_pending = true;
    }
    pthread_mutex_unlock(&st->lock);
}

/* ---- dispatch ------------------------------------------------------------------------- */

#define QUERY_PARAMS_MAX 32

typedef struct query_check {
    const char *nul, *twice;
    const char *seen[QUERY_PARAMS_MAX];
    int n;
    bool too_many;
} query_check;

/* Stops at a query parameter whose decoded name or value holds a NUL (%00), which handlers
 * reading C strings would cut ("?from=1%002" read as 1), or which is given twice (handlers
 * read the first, whoever is in front may read the last). */
static enum MHD_Result query_param(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    query_check *q = cls;
    if (strlen(key) != key_size || (value != NULL && strlen(value) != value_size)) {
        q->nul = key;
        return MHD_NO;
    }
    for (int i = 0; i < q->n; i++)
        if (strcmp(q->seen[i], key) == 0) {
            q->twice = key;
            return MHD_NO;
        }
    if (q->n == QUERY_PARAMS_MAX) {
        q->too_many = true;
        return MHD_NO;
    }
    q->seen[q->n++] = key;
    return MHD_YES;
}

static void dispatch(http_request *req)
{
    char allow[128];
    router_result rr = router_match_path(req->srv->routes, req->method, req->url, &req->match,
                                         allow, sizeof allow);
    if (rr == ROUTER_NOT_FOUND) {
        http_reply_error(req, 404, "not_found", "no route for %s", req->url);
        return;
    }
    if (rr == ROUTER_METHOD_NOT_ALLOWED) {
        http_add_header(req, "Allow", allow);
        http_reply_error(req, 405, "method_not_allowed", "%s is not allowed here; use %s",
                         req->method, allow);
        return;
    }
    if (req->match.flags != HTTP_PUBLIC && req->srv->auth != NULL &&
        !req->srv->auth(req, req->match.flags, req->srv->app))
        return;
    query_check q = {0};
    MHD_get_connection_values_n(req->conn, MHD_GET_ARGUMENT_KIND, query_param, &q);
    if (q.nul != NULL || q.twice != NULL || q.too_many) {
        if (q.nul != NULL)
            http_reply_error(req, 400, "invalid_parameter",
                             "query parameter \"%.64s\" may not contain NUL (%%00)", q.nul);
        else if (q.twice != NULL)
            http_reply_error(req, 400, "invalid_parameter",
                             "query parameter \"%.64s\" may appear only once", q.twice);
        else
            http_reply_error(req, 400, "invalid_parameter", "at most %d query parameters",
                             QUERY_PARAMS_MAX);
        return;
    }
    ((http_handler)req->match.handler)(req, req->srv->app);
    if (!req->replied)
        http_reply_error(req, 500, "internal", "the handler produced no response");
}

static void reply_too_large(http_request *req)
{
    http_add_header(req, "Connection", "close");
    http_reply_error(req, 413, "payload_too_large", "the request body exceeds %zu bytes",
                     req->srv->max_body);
}

static void request_free(http_request *req)
{
    if (req == NULL)
        return;
    buf_free(&req->body);
    cJSON_Delete(req->json);
    for (int i = 0; i < req->nheaders; i++) {
        free(req->headers[i].name);
        free(req->headers[i].value);
    }
    free(req);
}

/* The raw request target, before MHD decodes it. The router sees the decoded path, which must
 * be the one a proxy in front judged: a %00 decodes to a NUL that cuts it ("/v1/tenant" of
 * "/v1/tenant%00.css"), and a %2F to a separator ("/v1/panels/ID%2Fexecute" routed as the
 * execute of ID). The request's state starts here (MHD hands it to on_request). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)cls;
    (void)conn;
    http_request *req = calloc(1, sizeof *req);
    if (req == NULL)
        return NULL;
    size_t path = strcspn(uri, "?");
    if (memmem(uri, path, "%00", 3) != NULL)
        req->bad_path = "the path may not contain NUL (%00)";
    else if (memmem(uri, path, "%2F", 3) != NULL || memmem(uri, path, "%2f", 3) != NULL)
        req->bad_path = "the path may not contain an encoded slash (%2F)";
    req->uri_end = uri + strlen(uri);
    return req;
}

typedef struct header_count {
    int content_length, authorization, tenant, idempotency, transfer_encoding;
    const char *content_length_value, *transfer_encoding_value;
    bool content_lengths_differ;
} header_count;

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    header_count *c = cls;
    if (value == NULL)
        return MHD_YES;
    if (strcasecmp(key, "Content-Length") == 0) {
        if (c->content_length++ > 0 && strcmp(c->content_length_value, value) != 0)
            c->content_lengths_differ = true;
        c->content_length_value = value;
    } else if (strcasecmp(key, "Authorization") == 0) {
        c->authorization++;
    } else if (strcasecmp(key, "X-Tenant-ID") == 0) {
        c->tenant++;
    } else if (strcasecmp(key, "Idempotency-Key") == 0) {
        c->idempotency++;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        c->transfer_encoding++;
        c->transfer_encoding_value = value;
    }
    return MHD_YES;
}

/* Whether a Transfer-Encoding value is plain "chunked", the one coding MHD decodes. */
static bool chunked_only(const char *v)
{
    while (*v == ' ' || *v == '\t')
        v++;
    size_t n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return n == 7 && strncasecmp(v, "chunked", 7) == 0;
}

/* Refuses (400, or 501 for a coding MHD cannot decode, and closes the connection) a request
 * that a proxy in front may have read otherwise than the engine does: a path refused by
 * on_uri; two lengths, or a length beside a transfer coding,
 * which let a second request hide in the first's body for whoever reads the other framing
 * (RFC 9112 6.3); a second key, tenant or idempotency key, a value nobody checked. A coding
 * other than chunked would leave MHD waiting for a body it cannot frame. False when it
 * replied. */
static bool headers_sane(http_request *req)
{
    header_count c = {0};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_header, &c);
    const char *repeated = c.content_lengths_differ  ? "Content-Length"
                           : c.authorization > 1     ? "Authorization"
                           : c.tenant > 1            ? "X-Tenant-ID"
                           : c.idempotency > 1       ? "Idempotency-Key"
                           : c.transfer_encoding > 1 ? "Transfer-Encoding"
                                                     : NULL;
    if (repeated == NULL && req->bad_path == NULL &&
        (c.transfer_encoding == 0 ||
         (c.content_length == 0 && chunked_only(c.transfer_encoding_value))))
        return true;
    http_add_header(req, "Connection", "close");
    if (repeated != NULL)
        http_reply_error(req, 400, "invalid_header", "the %s header may appear only once",
                         repeated);
    else if (req->bad_path != NULL)
        http_reply_error(req, 400, "invalid_path", "%s", req->bad_path);
    else if (c.content_length > 0)
        http_reply_error(req, 400, "invalid_header",
                         "Content-Length and Transfer-Encoding may not both be sent");
    else
        http_reply_error(req, 501, "unsupported_transfer_encoding",
                         "the only transfer coding accepted is chunked");
    return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    http_server *srv = cls;
    http_request *req = *con_cls;
    if (req == NULL || req->srv == NULL) {
        if (req == NULL)
            req = calloc(1, sizeof *req);
        if (req == NULL)
            return MHD_NO;
        req->srv = srv;
        req->conn = conn;
        req->method = method;
        req->url = url;
        req->counted = true;
        atomic_fetch_add(&srv->in_flight, 1);
        buf_init(&req->body, srv->max_body);
        assign_request_id(req);
        *con_cls = req;
        /* The request target runs up to the space before the version in one buffer; a raw
         * NUL inside it ends the C string early, cutting the path MHD hands on. */
        if (req->uri_end != NULL && version != req->uri_end + 1 && req->bad_path == NULL)
            req->bad_path = "the request target may not contain a raw NUL";
        if (!headers_sane(req))
            return MHD_YES;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Expect");
        if (cl != NULL) {
            char *end = NULL;
            unsigned long long n = strtoull(cl, &end, 10);
            if (end != cl && *end == '\0' && n > srv->max_body) {
                req->too_large = true;
                /* A body we would only drain for long is refused at once; the client may
                 * then see a reset instead of the 413, which is the price of not reading it.
                 * A client that asked to be told before sending (Expect: 100-continue) is. */
                if (n > DRAIN_FACTOR * (unsigned long long)srv->max_body ||
                    (expect != NULL && strcasecmp(expect, "100-continue") == 0))
                    reply_too_large(req);
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        /* Past the limit the body is read and dropped (up to a bound) so that ordinary
         * clients, which send the whole body before reading, still get a clean 413. */
        req->received += *upload_data_size;
        if (!req->too_large && !req->replied &&
            buf_append(&req->body, upload_data, *upload_data_size) != AP_OK)
            req->too_large = true;
        if (req->too_large && !req->replied &&
            req->received > DRAIN_FACTOR * (unsigned long long)srv->max_body)
            reply_too_large(req);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (req->replied)
        return MHD_YES;
    if (req->too_large) {
        reply_too_large(req);
        return MHD_YES;
    }
    dispatch(req);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    (void)toe;
    http_server *srv = cls;
    http_request *req = *con_cls;
    if (req == NULL)
        return;
    if (req->counted)
        atomic_fetch_sub(&srv->in_flight, 1);
    request_free(req);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_debug("microhttpd: %s", msg);
}

/* ---- lifecycle ------------------------------------------------------------------------ */

ap_status http_server_start(const http_server_opts *opts, const router *r, http_auth_hook auth,
                            void *app, http_server **out, ap_err *err)
{
    ap_status rc = AP_OK;
    struct addrinfo *ai = NULL;
    http_server *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    pthread_mutex_init(&srv->streams_lock, NULL);
    srv->routes = r;
    srv->auth = auth;
    srv->app = app;
    srv->max_body = opts->max_body;

    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)opts->port);
    int gai = getaddrinfo(opts->host, port, &hints, &ai);
    if (gai != 0) {
        rc = ap_err_set(err, AP_INVALID, "listen: cannot resolve \"%s\": %s", opts->host,
                        gai_strerror(gai));
        goto out;
    }
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    unsigned threads = opts->threads > 0 ? opts->threads : 1;
    srv->daemon = MHD_start_daemon(
        flags, opts->port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL, MHD_OPTION_CONNECTION_LIMIT,
        opts->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, opts->connection_timeout_s,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_END);
    if (srv->daemon == NULL) {
        rc = ap_err_set(err, AP_IO, "listen: cannot listen on %s:%u (address in use?)", opts->host,
                        (unsigned)opts->port);
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info != NULL ? info->port : opts->port;
out:
    if (ai != NULL)
        freeaddrinfo(ai);
    if (rc != AP_OK) {
        pthread_mutex_destroy(&srv->streams_lock);
        free(srv);
        return rc;
    }
    *out = srv;
    return AP_OK;
}

void http_server_counts(const http_server *s, uint64_t out[6])
{
    for (int i = 0; i < 6; i++)
        out[i] = atomic_load_explicit(&s->answered[i], memory_order_relaxed);
}

int http_server_in_flight(const http_server *s)
{
    return atomic_load(&s->in_flight);
}

uint16_t http_server_port(const http_server *s)
{
    return s->port;
}

void http_server_stop(http_server *s, int64_t grace_ms)
{
    if (s == NULL)
        return;
    MHD_socket lfd = MHD_quiesce_daemon(s->daemon);
    if (lfd != MHD_INVALID_SOCKET)
        close(lfd);
    /* Streams end at their next read; wake the parked ones so they get there. */
    pthread_mutex_lock(&s->streams_lock);
    s->stopping = true;
    for (http_stream *st = s->streams; st != NULL; st = st->next) {
        pthread_mutex_lock(&st->lock);
        st->closing = true;
        if (st->suspended) {
            st->suspended = false;
            MHD_resume_connection(st->conn);
        }
        pthread_mutex_unlock(&st->lock);
    }
    pthread_mutex_unlock(&s->streams_lock);
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int64_t waited = 0; atomic_load(&s->in_flight) > 0 && waited < grace_ms; waited += 10)
        nanosleep(&tick, NULL);
    MHD_stop_daemon(s->daemon);
    pthread_mutex_destroy(&s->streams_lock);
    free(s);
}
