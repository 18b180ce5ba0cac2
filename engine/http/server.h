/* server.h - the HTTP server: libmicrohttpd (epoll, thread pool), request parsing, the JSON
 * error envelope, request ids, body limits and graceful shutdown.
 *
 * Handlers run on MHD's pool threads and must be short. A handler answers exactly once with
 * one of the http_reply_* functions; a handler that forgets gets a 500. */
#ifndef AP_HTTP_SERVER_H
#define AP_HTTP_SERVER_H

#include "core/status.h"
#include "http/router.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct http_server http_server;
typedef struct http_request http_request;

/* A route handler; app is the pointer given to http_server_start. */
typedef void (*http_handler)(http_request *req, void *app);

/* Route flags: who may call a route. The auth hook enforces them. */
enum {
    HTTP_PUBLIC = 0,         /* no credentials */
    HTTP_AUTH_MEMBER = 1u,   /* a tenant key with role member or admin */
    HTTP_AUTH_ADMIN = 2u,    /* a tenant key with role admin */
    HTTP_AUTH_OPERATOR = 4u, /* the operator key */
    HTTP_STREAM_TOKEN = 8u,  /* also accepts a panel stream token in ?token= */
};

/* Who is calling, once authenticated. */
typedef struct http_principal {
    bool authenticated;
    bool operator_key;
    char tenant_id[40];
    int role; /* store_role value; 0 for the operator */
    char key_id[40];
} http_principal;

/* Called before every handler of a non-public route; returns true to proceed, or replies
 * (401/403) itself and returns false. */
typedef bool (*http_auth_hook)(http_request *req, unsigned flags, void *app);

typedef struct http_server_opts {
    const char *host;
    uint16_t port; /* 0: any free port (see http_server_port) */
    unsigned threads;
    size_t max_body;
    unsigned max_connections;
    unsigned connection_timeout_s;
} http_server_opts;

/* Starts serving on a thread pool. r and app are borrowed and must outlive the server. */
ap_status http_server_start(const http_server_opts *opts, const router *r, http_auth_hook auth,
                            void *app, http_server **out, ap_err *err);

/* Requests answered so far by status class: out[1] = 1xx ... out[5] = 5xx; out[0] = all. */
void http_server_counts(const http_server *s, uint64_t out[6]);

/* Requests in flight now (streams excluded). */
int http_server_in_flight(const http_server *s);

/* The port actually bound. */
uint16_t http_server_port(const http_server *s);

/* Stops accepting, waits up to grace_ms for in-flight requests, then stops; frees s. */
void http_server_stop(http_server *s, int64_t grace_ms);

/* ---- request accessors (all borrowed, valid during the handler) ---- */
const char *http_method(const http_request *req);
const char *http_path(const http_request *req);
const char *http_request_id(const http_request *req);
/* A path parameter by name, NULL if the route has none of that name. */
const char *http_param(const http_request *req, const char *name);
/* A query-string argument, NULL when absent. */
const char *http_query(const http_request *req, const char *name);
/* A request header (case-insensitive), NULL when absent. */
const char *http_header(const http_request *req, const char *name);
/* The raw body (NUL-terminated) and its length; "" when there is none. */
const char *http_body(const http_request *req, size_t *len);
/* The body parsed as a JSON object; on failure replies itself (415 for a Content-Type that
 * is not JSON, 400 for a body that is not a JSON object) and returns NULL. Borrowed: freed
 * with the request. */
cJSON *http_json_body(http_request *req);
/* True for application/json or an application/...+json type, in any case, parameters
 * (charset) aside; false for NULL. */
bool http_is_json_type(const char *ctype);
/* The authenticated principal (writable by the auth hook). */
http_principal *http_principal_of(http_request *req);

/* ---- replies ---- */
/* Adds a response header (copied); call before replying. */
void http_add_header(http_request *req, const char *name, const char *value);
/* Replies with a JSON body; takes ownership of body. */
void http_reply_json(http_request *req, unsigned status, cJSON *body);
/* Replies with the error envelope {"error":{"code","message"}}. */
void http_reply_error(http_request *req, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Replies with the error envelope for an ap_err (status mapped: invalid->400, notfound->404,
 * conflict->409, denied->403, limit->413, io/timeout->503, other->500). */
void http_reply_ap_err(http_request *req, const ap_err *err);
/* Replies with bytes (copied) of the given content type. */
void http_reply_bytes(http_request *req, unsigned status, const char *content_type,
                      const void *data, size_t len);

/* ---- streaming (SSE) ----
 * A stream pulls bytes from `read`; when it has none, it returns 0 and the connection is
 * parked (costing no thread) until http_stream_wake is called. Return -1 to end the stream.
 * `done` is called once when the connection goes away; ctx belongs to the caller. The body is
 * not chunked: the connection closes when the stream ends. */
typedef struct http_stream http_stream;
typedef ssize_t (*http_stream_read)(void *ctx, char *buf, size_t max);
typedef void (*http_stream_done)(void *ctx);

/* Replies with a streaming body; returns the stream handle used to wake it (valid until
 * `done` has been called), or NULL on failure, in which case `done` is never called and ctx
 * stays the caller's to free. */
http_stream *http_reply_stream(http_request *req, unsigned status, const char *content_type,
                               http_stream_read read, http_stream_done done, void *ctx);

/* Resumes a parked stream so `read` is called again; safe from any thread, idempotent. */
void http_stream_wake(http_stream *st);

#endif
