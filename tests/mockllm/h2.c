/* h2.c - mockllm's listener and HTTP/2 transport (see h2.h).
 *
 * Everything here runs on one thread: accepting, sniffing, every HTTP/2 session and the
 * schedule of its streams. A stream whose next frame is not due yet is deferred in nghttp2
 * and parked in a min-heap; the loop wakes for the earliest, resumes every stream that is due
 * and then writes each touched connection once. */
#include "h2.h"

#include "http1.h"
#include "mock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define MAX_HEADER_BYTES 65536
#define MAX_OUT (8 * 1024 * 1024) /* bytes queued for one connection before we stop producing */
#define MAX_STREAMS 1000
#define PREFACE "PRI * HTTP/2.0"

enum kind { K_LISTEN, K_STOP, K_SNIFF, K_TLS, K_H2 };

typedef struct conn conn;

typedef struct stream {
    conn *c;
    int32_t id;
    mock_req *r;
    buf hdrs; /* "name\0value\0" pairs, names lower case as HTTP/2 sends them */
    char method[16];
    char path[256];
    bool streaming; /* holds the response's reference on r */
    mock_reply rep; /* a whole reply being sent */
    size_t rep_off;
    struct stream *prev, *next;
} stream;

struct conn {
    enum kind kind;
    int fd;
    struct sockaddr_storage sa;
    socklen_t salen;
    SSL *ssl; /* NULL in clear text */
    nghttp2_session *s;
    buf out;
    size_t out_off;
    bool dirty, closing;
    uint32_t events; /* what the epoll set watches for this connection */
    conn *next_dirty;
    conn *prev_all, *next_all; /* every accepted connection, for shutdown */
    stream *streams;
};

static struct {
    int lfd, ep, stop_fd;
    pthread_t thread;
    bool started;
    conn listen, stop;
    mock_heap heap; /* deferred streams, by the time their next frame is due */
    conn *dirty;
    conn *all;
    nghttp2_session_callbacks *cbs;
    SSL_CTX *tls; /* NULL unless --tls-cert-out */
} S = {.lfd = -1, .ep = -1, .stop_fd = -1};

/* ---- streams --------------------------------------------------------------------------- */

static const char *get_header(void *ctx, const char *name)
{
    const stream *st = ctx;
    size_t off = 0;
    while (off < st->hdrs.len) {
        const char *n = st->hdrs.data + off;
        const char *v = n + strlen(n) + 1;
        if (strcasecmp(n, name) == 0)
            return v;
        off = (size_t)(v + strlen(v) + 1 - st->hdrs.data);
    }
    return NULL;
}

static void mark_dirty(conn *c)
{
    if (c->dirty)
        return;
    c->dirty = true;
    c->next_dirty = S.dirty;
    S.dirty = c;
}

static void stream_free(stream *st, bool client_closed)
{
    conn *c = st->c;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    pthread_mutex_lock(&mock_lock);
    if (client_closed)
        mock_note_disconnect(st->r);
    mock_heap_remove(st->r);
    mock_req_done();
    if (st->streaming)
        mock_stream_done(st->r);
    mock_req_unref(st->r);
    pthread_mutex_unlock(&mock_lock);
    buf_free(&st->hdrs);
    buf_free(&st->rep.body);
    free(st);
}

static ssize_t read_reply(nghttp2_session *s, int32_t id, uint8_t *out, size_t max, uint32_t *flags,
                          nghttp2_data_source *src, void *ud)
{
    (void)s, (void)id, (void)ud;
    stream *st = src->ptr;
    size_t n = st->rep.body.len - st->rep_off;
    if (n > max)
        n = max;
    if (n > 0)
        memcpy(out, st->rep.body.data + st->rep_off, n);
    st->rep_off += n;
    if (st->rep_off == st->rep.body.len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static ssize_t read_answer(nghttp2_session *s, int32_t id, uint8_t *out, size_t max,
                           uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)s, (void)id, (void)ud;
    stream *st = src->ptr;
    ssize_t ret = NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = 0;
    pthread_mutex_lock(&mock_lock);
    int64_t now = mock_now_us();
    bool top = false;
    switch (mock_pull(st->r, now, (char *)out, max, &n)) {
    case PULL_DATA:
        ret = (ssize_t)n;
        break;
    case PULL_END:
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        ret = 0;
        break;
    case PULL_ERROR: /* resets the stream, as a truncated upstream answer would */
        break;
    case PULL_WAIT:
        /* a stalled answer is never resumed: the client's own timeout ends it */
        if (st->r->due_us == INT64_MAX || mock_heap_push(&S.heap, st->r, st->r->due_us, &top))
            ret = NGHTTP2_ERR_DEFERRED;
        break;
    }
    pthread_mutex_unlock(&mock_lock);
    return ret;
}

static int submit(stream *st, unsigned status, const char *type, const mock_reply *rep,
                  nghttp2_data_source_read_callback read)
{
    char code[8];
    snprintf(code, sizeof code, "%u", status);
    nghttp2_nv nv[6];
    size_t n = 0;
#define NV(k, v) nv[n++] = (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), 0}
    NV(":status", code);
    NV("content-type", type);
    if (rep != NULL && rep->retry_after[0] != '\0')
        NV("retry-after", rep->retry_after);
    if (rep != NULL && rep->retry_after_ms[0] != '\0')
        NV("retry-after-ms", rep->retry_after_ms);
    if (rep == NULL && st->r->stream)
        NV("cache-control", "no-cache");
    if (rep == NULL)
        NV("x-request-id", st->r->id);
#undef NV
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read};
    return nghttp2_submit_response(st->c->s, st->id, nv, n, &prd);
}

static void handle(stream *st)
{
    mock_hdrs h = {get_header, st};
    int rv = 0;
    switch (mock_handle(st->r, st->method, st->path, &h, &st->rep)) {
    case MOCK_REPLY:
        rv = submit(st, st->rep.status, st->rep.type, &st->rep, read_reply);
        break;
    case MOCK_STREAM:
        st->streaming = true;
        rv = submit(st, 200, mock_content_type(st->r), NULL, read_answer);
        break;
    case MOCK_RESET:
    case MOCK_FAIL:
        rv = -1;
        break;
    }
    if (rv != 0)
        nghttp2_submit_rst_stream(st->c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* ---- nghttp2 callbacks ----------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    stream *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->r = mock_req_new(st, c->fd);
    if (st->r == NULL) {
        free(st);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    st->r->h2 = true;
    st->c = c;
    st->id = f->hd.stream_id;
    buf_init(&st->hdrs, MAX_HEADER_BYTES);
    buf_init(&st->rep.body, 1 << 20);
    st->next = c->streams;
    if (c->streams != NULL)
        c->streams->prev = st;
    c->streams = st;
    nghttp2_session_set_stream_user_data(s, st->id, st);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags, (void)ud;
    stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st == NULL)
        return 0;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0)
        snprintf(st->method, sizeof st->method, "%.*s", (int)valuelen, (const char *)value);
    else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
        snprintf(st->path, sizeof st->path, "%.*s", (int)valuelen, (const char *)value);
    else if (buf_append(&st->hdrs, name, namelen) != AP_OK ||
             buf_append(&st->hdrs, "", 1) != AP_OK ||
             buf_append(&st->hdrs, value, valuelen) != AP_OK ||
             buf_append(&st->hdrs, "", 1) != AP_OK)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* too many header bytes: reset it */
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    (void)flags, (void)ud;
    stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st != NULL)
        mock_req_body(st->r, (const char *)data, len);
    return 0;
}

static int on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st != NULL)
        handle(st);
    return 0;
}

/* A stream that closes with an error code before its answer ended is a client that went away
 * (a reset of our own, for a fault, marks the answer ended first). */
static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    (void)ud;
    stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st != NULL)
        stream_free(st, code != NGHTTP2_NO_ERROR);
    return 0;
}

/* ---- connections ----------------------------------------------------------------------- */

/* recv and send, through TLS when the connection has it; EAGAIN when it would block. */
static ssize_t tls_result(conn *c, int r)
{
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        ERR_clear_error();
        errno = EIO;
        return -1;
    }
}

static ssize_t io_recv(conn *c, void *data, size_t len)
{
    if (c->ssl == NULL)
        return recv(c->fd, data, len, 0);
    int r = SSL_read(c->ssl, data, (int)len);
    return r > 0 ? r : tls_result(c, r);
}

static ssize_t io_send(conn *c, const void *data, size_t len)
{
    if (c->ssl == NULL)
        return send(c->fd, data, len, MSG_NOSIGNAL);
    int r = SSL_write(c->ssl, data, len > INT32_MAX ? INT32_MAX : (int)len);
    return r > 0 ? r : tls_result(c, r);
}

static void conn_unlink(conn *c)
{
    if (c->prev_all != NULL)
        c->prev_all->next_all = c->next_all;
    else
        S.all = c->next_all;
    if (c->next_all != NULL)
        c->next_all->prev_all = c->prev_all;
}

static void conn_close(conn *c)
{
    conn_unlink(c);
    epoll_ctl(S.ep, EPOLL_CTL_DEL, c->fd, NULL);
    while (c->streams != NULL)
        stream_free(c->streams, true);
    nghttp2_session_del(c->s);
    SSL_free(c->ssl);
    close(c->fd);
    buf_free(&c->out);
    free(c);
}

/* Has the epoll set watch c for events, with a syscall only when they change (a flush runs
 * for every connection that had frames due). */
static void watch(conn *c, uint32_t events)
{
    if (c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(S.ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = events;
}

/* Produces what nghttp2 has to send and writes as much as the socket takes. */
static bool conn_flush(conn *c)
{
    for (;;) {
        while (c->out.len - c->out_off < MAX_OUT) {
            const uint8_t *data = NULL;
            ssize_t n = nghttp2_session_mem_send(c->s, &data);
            if (n < 0)
                return false;
            if (n == 0)
                break;
            if (buf_append(&c->out, data, (size_t)n) != AP_OK)
                return false;
        }
        if (c->out_off == c->out.len)
            break;
        ssize_t w = io_send(c, c->out.data + c->out_off, c->out.len - c->out_off);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w < 0)
            return false;
        c->out_off += (size_t)w;
        if (c->out_off == c->out.len) {
            buf_reset(&c->out);
            c->out_off = 0;
        }
    }
    bool pending = c->out_off < c->out.len;
    watch(c, EPOLLIN | (pending ? EPOLLOUT : 0u));
    return pending || nghttp2_session_want_read(c->s) || nghttp2_session_want_write(c->s);
}

static bool conn_read(conn *c)
{
    uint8_t in[65536];
    for (;;) {
        ssize_t n = io_recv(c, in, sizeof in);
        if (n == 0)
            return false;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        if (nghttp2_session_mem_recv(c->s, in, (size_t)n) < 0)
            return false;
    }
}

static bool become_h2(conn *c)
{
    if (nghttp2_session_server_new(&c->s, S.cbs, c) != 0)
        return false;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS}};
    if (nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 1) != 0)
        return false;
    c->kind = K_H2;
    buf_init(&c->out, MAX_OUT * 2);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    mark_dirty(c);
    return true;
}

/* Runs the TLS handshake as far as the socket allows; once done, HTTP/2 if ALPN chose it. */
static void handshake(conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            watch(c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
            return;
        }
        ERR_clear_error();
        conn_close(c);
        return;
    }
    const unsigned char *proto = NULL;
    unsigned len = 0;
    SSL_get0_alpn_selected(c->ssl, &proto, &len);
    if (len != 2 || memcmp(proto, "h2", 2) != 0 || !become_h2(c))
        conn_close(c);
    else if (!conn_read(c))
        c->closing = true;
}

/* Decides the protocol from the first bytes, leaving them in the socket: a TLS ClientHello,
 * the HTTP/2 preface, or else HTTP/1.1. */
static void sniff(conn *c)
{
    char head[sizeof PREFACE - 1];
    ssize_t n = recv(c->fd, head, sizeof head, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        conn_close(c);
        return;
    }
    if (S.tls != NULL && head[0] == 0x16) {
        c->ssl = SSL_new(S.tls);
        if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
            conn_close(c);
            return;
        }
        SSL_set_accept_state(c->ssl);
        c->kind = K_TLS;
        handshake(c);
        return;
    }
    size_t cmp = (size_t)n < sizeof head ? (size_t)n : sizeof head;
    if (memcmp(head, PREFACE, cmp) != 0) {
        epoll_ctl(S.ep, EPOLL_CTL_DEL, c->fd, NULL);
        conn_unlink(c);
        http1_add(c->fd, (struct sockaddr *)&c->sa, (unsigned)c->salen);
        free(c);
        return;
    }
    if (cmp < sizeof head)
        return; /* a prefix of the preface so far: wait for the rest */
    if (!become_h2(c))
        conn_close(c);
    else if (!conn_read(c))
        c->closing = true;
}

static void accept_all(void)
{
    for (;;) {
        conn *c = calloc(1, sizeof *c);
        if (c == NULL)
            return;
        c->salen = sizeof c->sa;
        c->fd = accept4(S.lfd, (struct sockaddr *)&c->sa, &c->salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c->fd < 0) {
            free(c);
            return;
        }
        c->kind = K_SNIFF;
        c->events = EPOLLIN;
        mock_note_connection();
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(S.ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
            close(c->fd);
            free(c);
        } else {
            c->next_all = S.all;
            if (S.all != NULL)
                S.all->prev_all = c;
            S.all = c;
        }
    }
}

/* ---- the loop -------------------------------------------------------------------------- */

static void resume_due(void)
{
    int64_t now = mock_now_us();
    pthread_mutex_lock(&mock_lock);
    while (S.heap.len > 0 && S.heap.v[0]->wake_us <= now) {
        mock_req *r = S.heap.v[0];
        mock_heap_remove(r);
        stream *st = r->conn;
        nghttp2_session_resume_data(st->c->s, st->id);
        mark_dirty(st->c);
    }
    pthread_mutex_unlock(&mock_lock);
}

static int next_timeout_ms(void)
{
    if (S.heap.len == 0)
        return -1;
    int64_t wait = S.heap.v[0]->wake_us - mock_now_us();
    return wait <= 0 ? 0 : (int)((wait + 999) / 1000);
}

static void *loop_main(void *arg)
{
    (void)arg;
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(S.ep, evs, 256, next_timeout_ms());
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            switch (c->kind) {
            case K_STOP:
                return NULL;
            case K_LISTEN:
                accept_all();
                break;
            case K_SNIFF: /* may free c */
                sniff(c);
                break;
            case K_TLS: /* may free c */
                handshake(c);
                break;
            case K_H2:
                if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !conn_read(c))
                    c->closing = true;
                mark_dirty(c);
                break;
            }
        }
        resume_due();
        while (S.dirty != NULL) {
            conn *c = S.dirty;
            S.dirty = c->next_dirty;
            c->dirty = false;
            if (c->closing || !conn_flush(c))
                conn_close(c);
        }
    }
}

static int select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                     const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl, (void)arg;
    static const unsigned char h2[] = "\x02h2";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, h2, sizeof h2 - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static bool add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    bool ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

/* A fresh self-signed certificate for 127.0.0.1 and localhost, written to path as PEM so a
 * client can trust it, and a server context that offers only HTTP/2 through ALPN. */
static SSL_CTX *tls_setup(const char *path)
{
    SSL_CTX *ctx = NULL;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    FILE *f = NULL;
    if (key == NULL || x == NULL)
        goto out;
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(mock_now_us() & 0x7fffffff));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"mockllm", -1, -1,
                               0);
    if (X509_set_version(x, 2) != 1 || X509_set_issuer_name(x, name) != 1 ||
        X509_set_pubkey(x, key) != 1 ||
        !add_ext(x, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost") ||
        !add_ext(x, NID_basic_constraints, "critical,CA:TRUE") ||
        X509_sign(x, key, EVP_sha256()) == 0)
        goto out;
    f = fopen(path, "w");
    if (f == NULL || PEM_write_X509(f, x) != 1 || fclose(f) != 0) {
        f = NULL;
        goto out;
    }
    f = NULL;
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || SSL_CTX_use_certificate(ctx, x) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, key) != 1) {
        SSL_CTX_free(ctx);
        ctx = NULL;
        goto out;
    }
    SSL_CTX_set_alpn_select_cb(ctx, select_h2, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
out:
    if (f != NULL)
        fclose(f);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

bool h2_start(unsigned *port)
{
    if (mock_o.tls_cert_out != NULL && (S.tls = tls_setup(mock_o.tls_cert_out)) == NULL) {
        fprintf(stderr, "mockllm: cannot set up TLS (writing %s)\n", mock_o.tls_cert_out);
        return false;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)mock_o.port)};
    if (inet_pton(AF_INET, mock_o.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "mockllm: --host must be an IPv4 address\n");
        return false;
    }
    int one = 1;
    S.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    S.ep = epoll_create1(EPOLL_CLOEXEC);
    S.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (S.lfd < 0 || S.ep < 0 || S.stop_fd < 0 ||
        setsockopt(S.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(S.lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(S.lfd, 8192) != 0) {
        fprintf(stderr, "mockllm: cannot listen on %s:%ld\n", mock_o.host, mock_o.port);
        return false;
    }
    socklen_t len = sizeof sa;
    getsockname(S.lfd, (struct sockaddr *)&sa, &len);
    *port = ntohs(sa.sin_port);
    S.listen = (conn){.kind = K_LISTEN, .fd = S.lfd};
    S.stop = (conn){.kind = K_STOP, .fd = S.stop_fd};
    struct epoll_event el = {.events = EPOLLIN, .data.ptr = &S.listen};
    struct epoll_event es = {.events = EPOLLIN, .data.ptr = &S.stop};
    if (epoll_ctl(S.ep, EPOLL_CTL_ADD, S.lfd, &el) != 0 ||
        epoll_ctl(S.ep, EPOLL_CTL_ADD, S.stop_fd, &es) != 0 ||
        nghttp2_session_callbacks_new(&S.cbs) != 0)
        return false;
    nghttp2_session_callbacks_set_on_begin_headers_callback(S.cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(S.cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(S.cbs, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(S.cbs, on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(S.cbs, on_close);
    if (pthread_create(&S.thread, NULL, loop_main, NULL) != 0)
        return false;
    S.started = true;
    return true;
}

void h2_stop(void)
{
    if (S.started) {
        uint64_t one = 1;
        if (write(S.stop_fd, &one, sizeof one) != (ssize_t)sizeof one)
            perror("mockllm: stop");
        pthread_join(S.thread, NULL);
        S.started = false;
    }
    while (S.all != NULL)
        conn_close(S.all);
    nghttp2_session_callbacks_del(S.cbs);
    SSL_CTX_free(S.tls);
    mock_heap_free(&S.heap);
    if (S.lfd >= 0)
        close(S.lfd);
    if (S.ep >= 0)
        close(S.ep);
    if (S.stop_fd >= 0)
        close(S.stop_fd);
}
