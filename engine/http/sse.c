#include "http/sse.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct sse_conn {
    pthread_mutex_t lock;
    buf pending;
    size_t sent; /* bytes of pending already handed to the socket */
    int64_t last_seq;
    bool finishing;
    bool closed;
    int refs;
    http_stream *stream;
};

ap_status sse_format(buf *out, int64_t seq, const char *type, const char *data)
{
    ap_status rc = AP_OK;
    if (seq > 0)
        rc = buf_printf(out, "id: %lld\n", (long long)seq);
    if (rc == AP_OK)
        rc = buf_printf(out, "event: %s\n", type);
    const char *p = data;
    while (rc == AP_OK) {
        size_t n = strcspn(p, "\r\n");
        rc = buf_puts(out, "data: ");
        if (rc == AP_OK)
            rc = buf_append(out, p, n);
        if (rc == AP_OK)
            rc = buf_puts(out, "\n");
        if (p[n] == '\0')
            break;
        p += n + (p[n] == '\r' && p[n + 1] == '\n' ? 2 : 1);
    }
    if (rc == AP_OK)
        rc = buf_puts(out, "\n");
    return rc;
}

sse_conn *sse_conn_new(size_t max_pending)
{
    sse_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    buf_init(&c->pending, max_pending);
    c->refs = 1;
    return c;
}

static void unref(sse_conn *c)
{
    pthread_mutex_lock(&c->lock);
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&c->lock);
    if (!last)
        return;
    buf_free(&c->pending);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static ssize_t stream_read(void *ctx, char *out, size_t max)
{
    sse_conn *c = ctx;
    ssize_t n = 0;
    pthread_mutex_lock(&c->lock);
    size_t avail = c->pending.len - c->sent;
    if (avail > 0) {
        n = (ssize_t)(avail < max ? avail : max);
        memcpy(out, c->pending.data + c->sent, (size_t)n);
        c->sent += (size_t)n;
        if (c->sent == c->pending.len) {
            buf_reset(&c->pending);
            c->sent = 0;
        }
    } else if (c->finishing || c->closed) {
        n = -1;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}

static void stream_done(void *ctx)
{
    sse_conn *c = ctx;
    pthread_mutex_lock(&c->lock);
    c->closed = true;
    c->stream = NULL;
    pthread_mutex_unlock(&c->lock);
    unref(c);
}

bool sse_conn_attach(sse_conn *c, http_request *req)
{
    http_add_header(req, "Cache-Control", "no-cache");
    http_add_header(req, "X-Accel-Buffering", "no");
    pthread_mutex_lock(&c->lock);
    c->refs++;
    /* The retry hint goes first so a client that reconnects waits a moment. */
    if (buf_puts(&c->pending, "retry: 2000\n\n") != AP_OK)
        c->closed = true;
    pthread_mutex_unlock(&c->lock);
    http_stream *st = http_reply_stream(req, 200, "text/event-stream; charset=utf-8", stream_read,
                                        stream_done, c);
    pthread_mutex_lock(&c->lock);
    if (st == NULL) {
        c->refs--;
        c->closed = true;
    } else if (!c->closed) {
        c->stream = st;
    }
    pthread_mutex_unlock(&c->lock);
    return st != NULL;
}

/* Wakes the stream; called with the lock held (http_stream_wake takes only its own lock). */
static void wake(sse_conn *c)
{
    if (c->stream != NULL)
        http_stream_wake(c->stream);
}

ap_status sse_conn_push(sse_conn *c, int64_t seq, const char *type, const char *data)
{
    ap_status rc = AP_OK;
    pthread_mutex_lock(&c->lock);
    if (c->closed || c->finishing || (seq > 0 && seq <= c->last_seq))
        goto out;
    size_t before = c->pending.len;
    rc = sse_format(&c->pending, seq, type, data);
    if (rc != AP_OK) {
        /* Too slow a reader: drop what it has not read and close, it will resume by id. */
        c->pending.len = before;
        c->closed = true;
        goto out;
    }
    if (seq > 0)
        c->last_seq = seq;
out:
    wake(c);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void sse_conn_comment(sse_conn *c, const char *text)
{
    pthread_mutex_lock(&c->lock);
    if (!c->closed && !c->finishing && buf_printf(&c->pending, ": %s\n\n", text) == AP_OK)
        wake(c);
    pthread_mutex_unlock(&c->lock);
}

void sse_conn_finish(sse_conn *c)
{
    pthread_mutex_lock(&c->lock);
    c->finishing = true;
    wake(c);
    pthread_mutex_unlock(&c->lock);
}

int64_t sse_conn_last_seq(sse_conn *c)
{
    pthread_mutex_lock(&c->lock);
    int64_t s = c->last_seq;
    pthread_mutex_unlock(&c->lock);
    return s;
}

bool sse_conn_closed(sse_conn *c)
{
    pthread_mutex_lock(&c->lock);
    bool closed = c->closed;
    pthread_mutex_unlock(&c->lock);
    return closed;
}

void sse_conn_release(sse_conn *c)
{
    if (c != NULL)
        unref(c);
}
