#include "http/server.h"
#include "core/clock.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef struct reply {
    long status;
    char body[8192];
    size_t len;
    char headers[4096];
    size_t hlen;
} reply;

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    reply *r = ud;
    size_t take = sz * n;
    if (take > sizeof r->body - 1 - r->len)
        take = sizeof r->body - 1 - r->len;
    memcpy(r->body + r->len, p, take);
    r->len += take;
    r->body[r->len] = '\0';
    return sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    reply *r = ud;
    size_t take = sz * n;
    if (take > sizeof r->headers - 1 - r->hlen)
        take = sizeof r->headers - 1 - r->hlen;
    memcpy(r->headers + r->hlen, p, take);
    r->hlen += take;
    r->headers[r->hlen] = '\0';
    return sz * n;
}

static uint16_t port;

static void request(const char *method, const char *path, const char *body, long body_len,
                    struct curl_slist *hdrs, reply *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", (unsigned)port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, body_len);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_cleanup(c);
}

/* Sends raw bytes on a new connection and reads what comes back until the server closes it
 * or 2 s pass without a byte; for requests curl will not write. */
/* Sends len bytes (NULs included) on a fresh connection; out gets everything answered until
 * the server closes it or 2 s pass. */
static void raw_exchange_n(const char *bytes, size_t len, char *out, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(send(fd, bytes, len, 0), (ssize_t)len);
    size_t got = 0;
    for (ssize_t n; got + 1 < cap && (n = recv(fd, out + got, cap - 1 - got, 0)) > 0;)
        got += (size_t)n;
    out[got] = '\0';
    close(fd);
}

static void raw_exchange(const char *bytes, char *out, size_t cap)
{
    raw_exchange_n(bytes, strlen(bytes), out, cap);
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static bool has_header(const reply *r, const char *line)
{
    return strcasestr(r->headers, line) != NULL;
}

static void assert_envelope(const reply *r, const char *code)
{
    cJSON *j = cJSON_Parse(r->body);
    assert_non_null(j);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    assert_true(cJSON_IsObject(e));
    assert_string_equal(cJSON_GetObjectItem(e, "code")->valuestring, code);
    assert_true(cJSON_IsString(cJSON_GetObjectItem(e, "message")));
    cJSON_Delete(j);
    assert_true(has_header(r, "Content-Type: application/json"));
}

/* ---- handlers ---- */

static void h_hello(http_request *req, void *app)
{
    (void)app;
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "id", http_param(req, "id") ? http_param(req, "id") : "");
    const char *q = http_query(req, "q");
    cJSON_AddStringToObject(b, "q", q ? q : "");
    http_reply_json(req, 200, b);
}

static void h_echo_json(http_request *req, void *app)
{
    (void)app;
    cJSON *j = http_json_body(req);
    if (j == NULL)
        return;
    http_reply_json(req, 200, cJSON_Duplicate(j, true));
}

static void h_forgets(http_request *req, void *app)
{
    (void)req;
    (void)app;
}

static atomic_int slow_started;

static void h_slow(http_request *req, void *app)
{
    (void)app;
    atomic_store(&slow_started, 1);
    struct timespec ts = {0, 400 * 1000 * 1000};
    nanosleep(&ts, NULL);
    http_reply_bytes(req, 200, "text/plain", "done", 4);
}

static bool deny_all(http_request *req, unsigned flags, void *app)
{
    (void)flags;
    (void)app;
    http_reply_error(req, 401, "unauthenticated", "no");
    return false;
}

/* A stream of three chunks, each released by a wake from another thread. */
typedef struct chunks {
    atomic_int released;
    int sent;
    atomic_int done;
    _Atomic(http_stream *) st;
} chunks;

static chunks stream_state;

static ssize_t chunk_read(void *ctx, char *buf, size_t max)
{
    chunks *c = ctx;
    if (c->sent == 3)
        return -1;
    if (c->sent >= atomic_load(&c->released))
        return 0;
    c->sent++;
    return snprintf(buf, max, "data: %d\n\n", c->sent);
}

static void chunk_done(void *ctx)
{
    chunks *c = ctx;
    atomic_store(&c->done, 1);
}

static void h_stream(http_request *req, void *app)
{
    (void)app;
    atomic_store(&stream_state.st, http_reply_stream(req, 200, "text/event-stream", chunk_read,
                                                     chunk_done, &stream_state));
}

static void *releaser(void *arg)
{
    chunks *c = arg;
    while (atomic_load(&c->st) == NULL) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < 3; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        atomic_fetch_add(&c->released, 1);
        http_stream_wake(atomic_load(&c->st));
    }
    return NULL;
}

static http_server *srv;
static router *routes;

static int setup(void **state)
{
    (void)state;
    routes = router_new();
    router_add(routes, "GET", "/hello/{id}", (void *)h_hello, HTTP_PUBLIC);
    router_add(routes, "POST", "/hello/{id}", (void *)h_hello, HTTP_PUBLIC);
    router_add(routes, "POST", "/echo", (void *)h_echo_json, HTTP_PUBLIC);
    router_add(routes, "GET", "/forgets", (void *)h_forgets, HTTP_PUBLIC);
    router_add(routes, "GET", "/slow", (void *)h_slow, HTTP_PUBLIC);
    router_add(routes, "GET", "/private", (void *)h_hello, HTTP_AUTH_MEMBER);
    router_add(routes, "GET", "/stream", (void *)h_stream, HTTP_PUBLIC);
    http_server_opts o = {.host = "127.0.0.1",
                          .port = 0,
                          .threads = 2,
                          .max_body = 1024,
                          .max_connections = 64,
                          .connection_timeout_s = 10};
    ap_err err = {0};
    assert_int_equal(http_server_start(&o, routes, deny_all, NULL, &srv, &err), AP_OK);
    port = http_server_port(srv);
    assert_true(port > 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    http_server_stop(srv, 1000);
    router_free(routes);
    return 0;
}

static void test_route_with_params_and_query(void **state)
{
    (void)state;
    reply r;
    request("GET", "/hello/42?q=x%20y", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"id\":\"42\",\"q\":\"x y\"}");
}

static void test_unknown_path_is_404_envelope(void **state)
{
    (void)state;
    reply r;
    request("GET", "/nope", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 404);
    assert_envelope(&r, "not_found");
}

static void test_wrong_method_is_405_with_allow(void **state)
{
    (void)state;
    reply r;
    request("DELETE", "/hello/1", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 405);
    assert_envelope(&r, "method_not_allowed");
    assert_true(has_header(&r, "Allow: GET, POST"));
}

/* A query parameter that decodes to a NUL would be cut where a handler reads it. */
static void test_query_nul_is_400(void **state)
{
    (void)state;
    reply r;
    request("GET", "/hello/1?from=1%002", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 400);
    assert_envelope(&r, "invalid_parameter");
    request("GET", "/hello/1?fr%00om=1", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 400);
    request("GET", "/hello/1?from=1%202&x", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 200);
}

static void test_body_limit_is_413(void **state)
{
    (void)state;
    char big[4096];
    memset(big, 'x', sizeof big);
    reply r;
    request("POST", "/echo", big, sizeof big, NULL, &r);
    assert_int_equal(r.status, 413);
    assert_envelope(&r, "payload_too_large");
    /* Without a Content-Length the limit is enforced while reading. */
    struct curl_slist *h = curl_slist_append(NULL, "Transfer-Encoding: chunked");
    request("POST", "/echo", big, sizeof big, h, &r);
    curl_slist_free_all(h);
    assert_int_equal(r.status, 413);
    assert_envelope(&r, "payload_too_large");
}

static void test_json_bodies(void **state)
{
    (void)state;
    reply r;
    struct curl_slist *json = curl_slist_append(NULL, "Content-Type: application/json");
    request("POST", "/echo", "{\"a\":[1,2]}", -1, json, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"a\":[1,2]}");
    request("POST", "/echo", "{\"a\":", -1, json, &r);
    assert_int_equal(r.status, 400);
    assert_envelope(&r, "invalid_json");
    request("POST", "/echo", "[1]", -1, json, &r);
    assert_int_equal(r.status, 400);
    request("POST", "/echo", "", 0, json, &r);
    assert_int_equal(r.status, 400);
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    request("POST", "/echo", deep, sizeof deep, json, &r);
    assert_int_equal(r.status, 400);
    curl_slist_free_all(json);
    /* The media type decides, not the bytes: curl -d sends a form type unless told. */
    request("POST", "/echo", "{\"a\":1}", -1, NULL, &r);
    assert_int_equal(r.status, 415);
    assert_envelope(&r, "unsupported_media_type");
    static const char *const accepted[] = {"Content-Type: application/json; charset=utf-8",
                                           "Content-Type: APPLICATION/JSON",
                                           "Content-Type: application/merge-patch+json"};
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
        struct curl_slist *h = curl_slist_append(NULL, accepted[i]);
        request("POST", "/echo", "{\"a\":1}", -1, h, &r);
        curl_slist_free_all(h);
        assert_int_equal(r.status, 200);
    }
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: text/plain");
    request("POST", "/echo", "{\"a\":1}", -1, h, &r);
    curl_slist_free_all(h);
    assert_int_equal(r.status, 415);
}

/* Two lengths let a second request hide in the first's body for whoever reads the other one:
 * refused, and nothing behind it runs. */
static void test_repeated_headers_are_400(void **state)
{
    (void)state;
    static const char smuggle[] = "POST /echo HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Type: application/json\r\n"
                                  "Content-Length: 2\r\nContent-Length: 41\r\n\r\n"
                                  "{}GET /hello/2 HTTP/1.1\r\nHost: x\r\n\r\n";
    char out[8192];
    raw_exchange(smuggle, out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 400"));
    assert_non_null(strstr(out, "invalid_header"));
    assert_int_equal(count_of(out, "HTTP/1.1 "), 1);
    static const char *const twice[] = {"Authorization: Bearer a", "X-Tenant-ID: a"};
    for (size_t i = 0; i < 2; i++) {
        struct curl_slist *h = curl_slist_append(NULL, twice[i]);
        h = curl_slist_append(h, i == 0 ? "Authorization: Bearer b" : "X-Tenant-ID: b");
        reply r;
        request("GET", "/hello/1", NULL, 0, h, &r);
        curl_slist_free_all(h);
        assert_int_equal(r.status, 400);
        assert_envelope(&r, "invalid_header");
    }
}

/* %00 decodes to a NUL that would cut the path the router sees ("/hello/1" of
 * "/hello/1%00.css"). */
static void test_path_nul_is_400(void **state)
{
    (void)state;
    reply r;
    request("GET", "/hello/1%00.css", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 400);
    assert_envelope(&r, "invalid_path");
    request("GET", "/hello/1%20x?q=%00", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 400);
    assert_envelope(&r, "invalid_parameter");
}

/* What a proxy in front may read otherwise than the engine is refused, and the connection
 * closed: a raw NUL in the request target (which C strings cut), an encoded
 * slash in the path (which routing would take for a separator), a length beside a transfer
 * coding (a second request could hide in the first's body), a coding MHD cannot frame (it
 * waited a minute for the body, then closed without a word), a parameter given twice. */
static void test_ambiguous_requests_are_refused(void **state)
{
    (void)state;
    char out[8192];
    static const char nul_path[] = "GET /hello/1\0.css HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_exchange_n(nul_path, sizeof nul_path - 1, out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 400"));
    assert_non_null(strstr(out, "invalid_path"));
    raw_exchange("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                 "GET /hello/2 HTTP/1.1\r\nHost: x\r\n\r\n",
                 out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 400"));
    assert_int_equal(count_of(out, "HTTP/1.1 "), 1);
    int64_t t0 = clock_mono_ms();
    raw_exchange("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                 out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 501"));
    assert_non_null(strstr(out, "unsupported_transfer_encoding"));
    assert_true(clock_mono_ms() - t0 < 1500);
    reply r;
    request("GET", "/hello/1%2Fx", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 400);
    assert_envelope(&r, "invalid_path");
    request("GET", "/hello/1?limit=1&limit=1000000", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 400);
    assert_envelope(&r, "invalid_parameter");
    struct curl_slist *h = curl_slist_append(NULL, "Idempotency-Key: a");
    h = curl_slist_append(h, "Idempotency-Key: b");
    request("GET", "/hello/1", NULL, 0, h, &r);
    curl_slist_free_all(h);
    assert_int_equal(r.status, 400);
    /* what stays fine: chunked alone, escapes, a query with distinct names */
    h = curl_slist_append(NULL, "Transfer-Encoding: chunked");
    h = curl_slist_append(h, "Content-Type: application/json");
    request("POST", "/echo", "{\"a\":1}", -1, h, &r);
    curl_slist_free_all(h);
    assert_int_equal(r.status, 200);
    request("GET", "/hello/a%20b?x=1&y=%2F", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 200);
}

/* A client that asks before sending (Expect: 100-continue) a body over the limit is told at
 * once, not invited to send it. */
static void test_expect_continue_over_limit_is_413(void **state)
{
    (void)state;
    char out[4096];
    raw_exchange("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 2000\r\nExpect: 100-continue\r\n\r\n",
                 out, sizeof out);
    assert_null(strstr(out, "100 Continue"));
    assert_non_null(strstr(out, "HTTP/1.1 413"));
}

static void test_json_body_edges(void **state)
{
    (void)state;
    struct curl_slist *json = curl_slist_append(NULL, "Content-Type: application/json");
    reply r;
    static const char trailing[] = "{\"a\":1}\0garbage{{{";
    request("POST", "/echo", trailing, sizeof trailing - 1, json, &r);
    assert_int_equal(r.status, 400);
    assert_envelope(&r, "invalid_json");
    request("POST", "/echo", "{\"a\":1,\"b\":{\"c\":1,\"c\":2}}", -1, json, &r);
    assert_int_equal(r.status, 400);
    assert_true(strstr(r.body, "\\\"c\\\" appears twice") != NULL);
    /* An object of many keys is checked sorted, not pairwise. */
    char big[1000];
    size_t used = 0;
    big[used++] = '{';
    for (int i = 0; i < 60; i++)
        used += (size_t)snprintf(big + used, sizeof big - used, "%s\"k%d\":%d", i ? "," : "",
                                 i == 59 ? 7 : i, i);
    big[used++] = '}';
    big[used] = '\0';
    request("POST", "/echo", big, -1, json, &r);
    assert_int_equal(r.status, 400);
    request("POST", "/echo", "{\"a\":{\"x\":1},\"b\":{\"x\":1}}", -1, json, &r);
    assert_int_equal(r.status, 200);
    /* RFC 8259, which cJSON alone is lax about: no raw control characters in strings (a raw
     * NUL cut the value short), no numbers like 01 or 1., valid UTF-8 in every string */
    static const char raw_nul[] = "{\"a\":\"x\0y\"}";
    static const char *const lax[] = {"{\"a\":\"x\x01y\"}", "{\"a\":01}", "{\"a\":1.}",
                                      "{\"a\":{\"b\":[\"\xff\xfe\"]}}", "{\"\xc3\":1}"};
    request("POST", "/echo", raw_nul, sizeof raw_nul - 1, json, &r);
    assert_int_equal(r.status, 400);
    assert_envelope(&r, "invalid_json");
    for (size_t i = 0; i < sizeof lax / sizeof lax[0]; i++) {
        request("POST", "/echo", lax[i], -1, json, &r);
        assert_int_equal(r.status, 400);
        assert_envelope(&r, "invalid_json");
    }
    request("POST", "/echo", "{\"a\":\"\xc3\xa9\\t\",\"b\":-0.5e3}", -1, json, &r);
    assert_int_equal(r.status, 200);
    curl_slist_free_all(json);
}

static void test_request_ids(void **state)
{
    (void)state;
    reply r;
    struct curl_slist *h = curl_slist_append(NULL, "X-Request-ID: trace-abc.1");
    request("GET", "/hello/1", NULL, 0, h, &r);
    curl_slist_free_all(h);
    assert_true(has_header(&r, "X-Request-ID: trace-abc.1"));
    h = curl_slist_append(NULL, "X-Request-ID: bad id with spaces");
    request("GET", "/nope", NULL, 0, h, &r);
    curl_slist_free_all(h);
    assert_false(has_header(&r, "bad id"));
    const char *got = strcasestr(r.headers, "X-Request-ID: ");
    assert_non_null(got);
    got += strlen("X-Request-ID: ");
    size_t n = strcspn(got, "\r\n");
    assert_int_equal(n, 32);
    /* The id also appears in the error envelope so a client can quote it. */
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"request_id\":\"%.*s\"", (int)n, got);
    assert_non_null(strstr(r.body, quoted));
}

static void test_missing_reply_is_500(void **state)
{
    (void)state;
    reply r;
    request("GET", "/forgets", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 500);
    assert_envelope(&r, "internal");
}

static void test_auth_hook_guards_private_routes(void **state)
{
    (void)state;
    reply r;
    request("GET", "/private", NULL, 0, NULL, &r);
    assert_int_equal(r.status, 401);
    assert_envelope(&r, "unauthenticated");
}

static void test_stream_resumes_on_wake(void **state)
{
    (void)state;
    atomic_store(&stream_state.released, 0);
    atomic_store(&stream_state.done, 0);
    atomic_store(&stream_state.st, NULL);
    stream_state.sent = 0;
    pthread_t t;
    pthread_create(&t, NULL, releaser, &stream_state);
    reply r;
    request("GET", "/stream", NULL, 0, NULL, &r);
    pthread_join(t, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert_true(has_header(&r, "Content-Type: text/event-stream"));
    /* The body ends with the connection, not with a zero-length chunk. */
    assert_false(has_header(&r, "Transfer-Encoding: chunked"));
    assert_true(has_header(&r, "Connection: close"));
    for (int i = 0; i < 100 && !atomic_load(&stream_state.done); i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(atomic_load(&stream_state.done), 1);
}

static void *slow_client(void *arg)
{
    request("GET", "/slow", NULL, 0, NULL, arg);
    return NULL;
}

/* Stopping waits for the request in flight, which completes normally; a new connection after
 * the stop began is refused. */
static void test_graceful_shutdown_finishes_in_flight(void **state)
{
    (void)state;
    http_server *s2;
    http_server_opts o = {.host = "127.0.0.1",
                          .port = 0,
                          .threads = 2,
                          .max_body = 1024,
                          .max_connections = 64,
                          .connection_timeout_s = 10};
    ap_err err = {0};
    assert_int_equal(http_server_start(&o, routes, deny_all, NULL, &s2, &err), AP_OK);
    uint16_t main_port = port;
    port = http_server_port(s2);
    atomic_store(&slow_started, 0);
    reply r;
    pthread_t t;
    pthread_create(&t, NULL, slow_client, &r);
    while (!atomic_load(&slow_started)) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    http_server_stop(s2, 3000);
    pthread_join(t, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "done");
    reply late;
    request("GET", "/hello/1", NULL, 0, NULL, &late);
    assert_int_equal(late.status, 0); /* connection refused */
    port = main_port;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_with_params_and_query),
        cmocka_unit_test(test_unknown_path_is_404_envelope),
        cmocka_unit_test(test_wrong_method_is_405_with_allow),
        cmocka_unit_test(test_query_nul_is_400),
        cmocka_unit_test(test_body_limit_is_413),
        cmocka_unit_test(test_json_bodies),
        cmocka_unit_test(test_repeated_headers_are_400),
        cmocka_unit_test(test_path_nul_is_400),
        cmocka_unit_test(test_ambiguous_requests_are_refused),
        cmocka_unit_test(test_expect_continue_over_limit_is_413),
        cmocka_unit_test(test_json_body_edges),
        cmocka_unit_test(test_request_ids),
        cmocka_unit_test(test_missing_reply_is_500),
        cmocka_unit_test(test_auth_hook_guards_private_routes),
        cmocka_unit_test(test_stream_resumes_on_wake),
        cmocka_unit_test(test_graceful_shutdown_finishes_in_flight),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    return rc;
}
