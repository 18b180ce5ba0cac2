/* mock.h - mockllm's transport-neutral core: options, counters, requests, answers, frames.
 *
 * The HTTP/1.1 transport (http1.c, libmicrohttpd) and the HTTP/2 transport (h2.c, nghttp2)
 * both hand a finished request to mock_handle and then pull the answer's bytes with
 * mock_pull as its frames come due. Everything that touches the counters or the rng takes
 * mock_lock; the functions below say when the caller must hold it. */
#ifndef MOCKLLM_MOCK_H
#define MOCKLLM_MOCK_H

#include "core/buf.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOCK_MAX_BODY (4 * 1024 * 1024)
#define MOCK_OUT_CHUNK 16384
#define MAX_TOKENS_PER_ANSWER 100000

enum mock_fault {
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
    F_LINGER, /* a stream's last frame goes out, then the connection stays open */
    F_COUNT
};

typedef struct mock_opts {
    const char *host;
    long port;
    long latency_ms, token_ms, tokens, threads;
    double fault_rate;
    int faults[F_COUNT];
    int n_faults;
    const char *retry_after;
    const char *api_key;
    const char *tls_cert_out; /* also serve HTTP/2 over TLS, with a certificate written here */
    uint64_t seed;
} mock_opts;

/* Request headers, looked up by name (case-insensitive); values borrowed from the transport. */
typedef struct mock_hdrs {
    const char *(*get)(void *ctx, const char *name);
    void *ctx;
} mock_hdrs;

/* A complete, non-streamed reply for the transport to send. */
typedef struct mock_reply {
    unsigned status;
    const char *type;
    char retry_after[64];    /* "" when none */
    char retry_after_ms[32]; /* "" when none */
    buf body;
} mock_reply;

/* What became of a request (mock_handle). */
enum mock_outcome {
    MOCK_REPLY,  /* send the mock_reply */
    MOCK_STREAM, /* send 200 with mock_req's type and id, then the bytes of mock_pull */
    MOCK_RESET,  /* drop the connection (or stream) abruptly */
    MOCK_FAIL    /* out of memory: drop it */
};

/* What mock_pull produced. */
enum mock_pull_result { PULL_DATA, PULL_WAIT, PULL_END, PULL_ERROR };

struct mock_heap;

typedef struct mock_req {
    int refs; /* the request itself, plus the streaming response while it exists */
    void *conn;
    int fd;
    bool h2; /* arrived over HTTP/2 */
    buf body;
    bool too_large;
    int ep;
    bool stream, include_usage, json;
    enum mock_fault fault;
    char retry_after[64];
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
    buf head; /* the start of each OpenAI chunk, made once */
    bool suspended, gone, ended_by_us, truncate_now, stalled, counted;
    struct mock_heap *heap;
    int heap_idx;
    int64_t wake_us, due_us;
} mock_req;

/* A min-heap of requests by wake time; a request is in at most one heap. */
typedef struct mock_heap {
    mock_req **v;
    size_t len, cap;
} mock_heap;

extern pthread_mutex_t mock_lock;
extern mock_opts mock_o;

/* Monotonic microseconds. */
int64_t mock_now_us(void);

/* Sets the options (borrowed for the process's life) and the fault sequence. */
void mock_init(const mock_opts *o);

/* A decimal integer in [lo, hi], the whole of s. */
bool mock_parse_long(const char *s, long lo, long hi, long *out);

/* Parses a --faults list into o; false when a name is unknown. */
bool mock_parse_faults(const char *list, mock_opts *o);

/* A new request that arrived now; NULL when out of memory. Counts it in flight (locks). */
mock_req *mock_req_new(void *conn, int fd);

/* Drops one reference (mock_lock held); frees the request with the last one. */
void mock_req_unref(mock_req *r);

/* Counts a client that went away before its answer ended, once (mock_lock held). */
void mock_note_disconnect(mock_req *r);

/* The request is over: not in flight any more (mock_lock held). */
void mock_req_done(void);

/* Counts an accepted connection (locks). */
void mock_note_connection(void);

/* Appends upload bytes to the request body (bounded). */
void mock_req_body(mock_req *r, const char *data, size_t len);

/* Routes a complete request and prepares its answer; rep is initialised here and the caller
 * frees rep->body with buf_free. Takes a stream reference on MOCK_STREAM (locks). */
enum mock_outcome mock_handle(mock_req *r, const char *method, const char *url, const mock_hdrs *h,
                              mock_reply *rep);

/* The streaming response is gone: drops its reference (mock_lock held). */
void mock_stream_done(mock_req *r);

/* The response's Content-Type for a MOCK_STREAM request. */
const char *mock_content_type(const mock_req *r);

/* Copies up to max due bytes of the answer into out (mock_lock held): PULL_DATA sets *n;
 * PULL_WAIT means nothing is due before r->due_us; PULL_END the answer is complete;
 * PULL_ERROR the response must end abruptly (truncate fault, client gone, no memory). */
enum mock_pull_result mock_pull(mock_req *r, int64_t now, char *out, size_t max, size_t *n);

/* Heap operations (the heap's own lock held). mock_heap_push returns false when out of
 * memory; *top is set when r became the earliest. */
bool mock_heap_push(mock_heap *h, mock_req *r, int64_t wake, bool *top);
void mock_heap_remove(mock_req *r);
void mock_heap_free(mock_heap *h);

#endif
