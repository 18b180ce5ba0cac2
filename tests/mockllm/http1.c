/* http1.c - mockllm's HTTP/1.1 transport on libmicrohttpd.
 *
 * No thread per request and no sleeping: a streaming response is parked (MHD suspend) until
 * its next frame is due, and one timer thread with a min-heap resumes it. Parked connections
 * are peeked every 100 ms so a client that goes away is noticed (and counted) promptly. */
#include "http1.h"

#include "mock.h"

#include <errno.h>
#include <microhttpd.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHECK_US 100000 /* how often a parked connection is checked for a gone client */

static struct {
    struct MHD_Daemon *d;
    pthread_t timer;
    bool timer_started, running;
    pthread_cond_t cond;
    mock_heap heap; /* parked streams, mock_lock held */
} H;

static void park(mock_req *r, int64_t wake)
{
    bool top = false;
    if (!mock_heap_push(&H.heap, r, wake, &top)) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
        return;
    }
    if (top)
        pthread_cond_signal(&H.cond);
}

static bool client_gone(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return true;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

static void *timer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mock_lock);
    while (H.running) {
        int64_t now = mock_now_us();
        while (H.heap.len > 0 && H.heap.v[0]->wake_us <= now) {
            mock_req *r = H.heap.v[0];
            mock_heap_remove(r);
            if (!r->suspended)
                continue;
            if (now < r->due_us && client_gone(r->fd)) {
                r->gone = true;
                mock_note_disconnect(r);
            }
            if (r->gone || now >= r->due_us) {
                r->suspended = false;
                MHD_resume_connection(r->conn);
            } else {
                park(r, r->due_us < now + CHECK_US ? r->due_us : now + CHECK_US);
            }
        }
        if (H.heap.len == 0) {
            pthread_cond_wait(&H.cond, &mock_lock);
        } else {
            int64_t wake = H.heap.v[0]->wake_us;
            struct timespec ts = {.tv_sec = wake / 1000000, .tv_nsec = (wake % 1000000) * 1000};
            pthread_cond_timedwait(&H.cond, &mock_lock, &ts);
        }
    }
    pthread_mutex_unlock(&mock_lock);
    return NULL;
}

static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    mock_req *r = cls;
    ssize_t ret = 0;
    size_t n = 0;
    pthread_mutex_lock(&mock_lock);
    int64_t now = mock_now_us();
    switch (mock_pull(r, now, out, max, &n)) {
    case PULL_DATA:
        ret = (ssize_t)n;
        break;
    case PULL_END:
        ret = MHD_CONTENT_READER_END_OF_STREAM;
        break;
    case PULL_ERROR:
        ret = MHD_CONTENT_READER_END_WITH_ERROR;
        break;
    case PULL_WAIT:
        r->suspended = true;
        MHD_suspend_connection(r->conn);
        park(r, r->due_us < now + CHECK_US ? r->due_us : now + CHECK_US);
        break;
    }
    pthread_mutex_unlock(&mock_lock);
    return ret;
}

static void reader_free(void *cls)
{
    pthread_mutex_lock(&mock_lock);
    mock_stream_done(cls);
    pthread_mutex_unlock(&mock_lock);
}

static const char *get_header(void *ctx, const char *name)
{
    return MHD_lookup_connection_value(ctx, MHD_HEADER_KIND, name);
}

static enum MHD_Result send_reply(struct MHD_Connection *conn, const mock_reply *rep)
{
    const char *body = rep->body.data != NULL ? rep->body.data : "";
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(rep->body.len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", rep->type);
    if (rep->retry_after[0] != '\0')
        MHD_add_response_header(resp, "Retry-After", rep->retry_after);
    if (rep->retry_after_ms[0] != '\0')
        MHD_add_response_header(resp, "retry-after-ms", rep->retry_after_ms);
    enum MHD_Result rc = MHD_queue_response(conn, rep->status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result send_stream(struct MHD_Connection *conn, mock_req *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, MOCK_OUT_CHUNK, reader, r, reader_free);
    if (resp == NULL) {
        reader_free(r);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", mock_content_type(r));
    if (r->stream)
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "x-request-id", r->id);
    enum MHD_Result rc = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)cls, (void)version;
    mock_req *r = *con_cls;
    if (r == NULL) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        r = mock_req_new(conn, ci != NULL ? ci->connect_fd : -1);
        if (r == NULL)
            return MHD_NO;
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        mock_req_body(r, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    mock_reply rep;
    mock_hdrs h = {get_header, conn};
    enum MHD_Result ret = MHD_NO;
    switch (mock_handle(r, method, url, &h, &rep)) {
    case MOCK_REPLY:
        ret = send_reply(conn, &rep);
        break;
    case MOCK_STREAM:
        ret = send_stream(conn, r);
        break;
    case MOCK_RESET: {
        /* SO_LINGER 0 turns the close into an RST, as a crashed upstream or proxy would. */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(r->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        break;
    }
    case MOCK_FAIL:
        break;
    }
    buf_free(&rep.body);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn;
    mock_req *r = *con_cls;
    if (r == NULL)
        return;
    pthread_mutex_lock(&mock_lock);
    mock_req_done();
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN)
        mock_note_disconnect(r);
    mock_req_unref(r);
    pthread_mutex_unlock(&mock_lock);
    *con_cls = NULL;
}

bool http1_start(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&H.cond, &ca);
    pthread_condattr_destroy(&ca);
    H.running = true;
    if (pthread_create(&H.timer, NULL, timer_main, NULL) != 0)
        return false;
    H.timer_started = true;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    H.d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_THREAD_POOL_SIZE,
                           (unsigned)mock_o.threads, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
                           NULL, MHD_OPTION_CONNECTION_LIMIT, 100000u,
                           MHD_OPTION_CONNECTION_TIMEOUT, 0u, MHD_OPTION_END);
    return H.d != NULL;
}

bool http1_add(int fd, const struct sockaddr *sa, unsigned salen)
{
    if (MHD_add_connection(H.d, fd, sa, (socklen_t)salen) == MHD_YES)
        return true;
    close(fd);
    return false;
}

void http1_stop(void)
{
    if (H.d != NULL) {
        /* MHD refuses to stop with parked connections: release them all first. */
        pthread_mutex_lock(&mock_lock);
        while (H.heap.len > 0) {
            mock_req *r = H.heap.v[0];
            mock_heap_remove(r);
            r->gone = true;
            r->ended_by_us = true;
            if (r->suspended) {
                r->suspended = false;
                MHD_resume_connection(r->conn);
            }
        }
        pthread_mutex_unlock(&mock_lock);
        MHD_stop_daemon(H.d);
        H.d = NULL;
    }
    if (H.timer_started) {
        pthread_mutex_lock(&mock_lock);
        H.running = false;
        pthread_cond_signal(&H.cond);
        pthread_mutex_unlock(&mock_lock);
        pthread_join(H.timer, NULL);
        H.timer_started = false;
    }
    mock_heap_free(&H.heap);
}
