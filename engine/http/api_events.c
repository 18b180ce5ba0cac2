/* api_events.c - GET /v1/panels/{id}/events: the panel's event stream.
 *
 * SSE: stored events after Last-Event-ID (or ?after=) are replayed from the store page by
 * page, then live events follow from a subscription taken *before* the replay, skipping what
 * the replay already sent (by seq), so a client sees every durable event exactly once. A
 * subscriber that lags is switched back to replaying from the store. Durable frames carry
 * `id: <seq>`; token deltas do not. A heartbeat comment goes out after 15 s of silence. The
 * stream ends after the panel's final event. With Accept: application/json the stored events
 * are returned as a JSON page instead.
 *
 * Access ends with the key: every KEY_CHECK_MS the stream's API key (the Bearer key, or the key
 * that issued its stream token) is checked again, and once it is revoked the stream sends
 * `event: stream.revoked` (data {"code":"key_revoked","message"}, no id) and ends. A client
 * that reconnects is refused with 401, which stops EventSource. */
#include "core/buf.h"
#include "core/clock.h"
#include "core/jsonx.h"
#include "core/log.h"
#include "http/api.h"
#include "http/sse.h"
#include "http/validate.h"
#include "panel/engine.h"
#include "store/store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define REPLAY_PAGE 64
#define FILL_TARGET (256 * 1024)       /* stop filling a stream's buffer past this */
#define PENDING_MAX (16 * 1024 * 1024) /* hard cap on a stream's buffer */
#define SUB_QUEUE_MAX 4096
#define HEARTBEAT_MS 15000
#define TICK_MS 1000
/* A stream on a panel another process runs reads what that process stored this often: its
 * events are published only there. */
#define POLL_MS 1000
/* A finished stream closes this long after its last frame went out. When a panel ends, all its
 * subscribers finish together: closing each connection at once (a FIN, a close) would put that
 * work between the last frames of the streams after it; this way every subscriber gets the
 * result first and the connections go afterwards. */
#define END_DELAY_MS 200
#define END_BATCH_MS 50 /* the ticker ends the streams due within this window in one pass */
/* A panel's status row can say it ended a moment before the writer has stored its final event
 * (a cancel sets the status at once): a stream on an ended panel whose replay has no final
 * event yet waits this long for it live. */
#define FINAL_WAIT_MS 2000
/* How often an open stream checks that its key is still active, and how long an "active"
 * answer may be reused (by every stream of that key, so thousands of streams opened with one
 * key cost a lookup per KEY_CACHE_MS, not one each): a revoked key's streams end within
 * KEY_CHECK_MS + KEY_CACHE_MS + TICK_MS (6 s). */
#define KEY_CHECK_MS 3000
#define KEY_CACHE_MS 2000
#define JSON_PAGE_MAX 1000
#define JSON_PAGE_DEFAULT 500
#define JSON_PAGE_BYTES (8 * 1024 * 1024) /* a JSON page of events stops growing here */

/* One SSE connection. Only MHD's thread for the connection reads and fills it; the engine's
 * writer (notify) and the heartbeat ticker touch only the atomics, so a slow replay from the
 * store never holds up event delivery to other streams. */
typedef struct event_stream {
    api_deps *deps;
    char tenant[IDS_UUID_LEN + 1];
    char panel[IDS_UUID_LEN + 1];
    char key_id[sizeof((http_principal *)0)->key_id]; /* the API key the stream stands for */
    panel_sub *sub;
    buf pending; /* the retry line, heartbeats and replayed frames: sent before live frames */
    size_t sent;
    panel_event cur; /* the live event being sent; its frame is shared by every stream */
    const struct frame *cur_frame;
    size_t cur_off;
    int64_t last_seq;
    bool replaying;
    bool finished;
    bool final_panel;       /* the panel had ended when the stream opened: end after the replay */
    int64_t final_wait_ms;  /* final_panel without its final event stored: wait until then */
    bool ending;            /* everything went out: the next read ends the stream */
    atomic_llong end_at_ms; /* when the ticker wakes an ending stream; 0: not set, -1: woken */
    atomic_bool heartbeat_due;
    atomic_bool key_check_due;
    atomic_bool poll_due;    /* read the store for events another process wrote */
    int64_t key_check_at_ms; /* the ticker's, under the list lock: when to set key_check_due */
    int64_t poll_at_ms;      /* the ticker's, likewise: when to look whether to poll */
    atomic_llong last_write_ms;
    _Atomic(http_stream *) st;
    struct event_stream *prev, *next;
} event_stream;

#define MAX_STREAM_TENANTS 1024

struct api_streams {
    pthread_mutex_t lock; /* the list, the per-tenant counts, running */
    event_stream *head;
    struct {
        char tenant[IDS_UUID_LEN + 1];
        int64_t n;
    } per_tenant[MAX_STREAM_TENANTS];
    size_t ntenants;
    pthread_t ticker;
    bool running;
    int64_t next_end_ms; /* the earliest end_at_ms of a stream the ticker has yet to wake */
    pthread_cond_t tick; /* wakes the ticker early: shutdown, or an earlier stream end */
};

/* The last event of a panel's stream: its result, its failure, or its cancellation (which
 * has no event of its own beyond the status change). */
static bool is_final_event(const char *type, const char *data)
{
    if (strcmp(type, "panel.completed") == 0 || strcmp(type, "panel.failed") == 0)
        return true;
    if (strcmp(type, "panel.status") != 0)
        return false;
    cJSON *d = cJSON_Parse(data);
    const char *s = jsonx_string(d, "status");
    bool final = s != NULL && strcmp(s, "cancelled") == 0;
    cJSON_Delete(d);
    return final;
}

/* Appends one event if it is new; marks the stream finished on the final event. */
static void append_event(event_stream *es, int64_t seq, const char *type, const char *data)
{
    if (es->finished)
        return;
    if (seq > 0 && seq <= es->last_seq) {
        /* Not sent again, but the last event still ends the stream: a client that asked to
         * start past it (after=, Last-Event-ID) would otherwise wait for ever. */
        es->finished = is_final_event(type, data);
        return;
    }
    size_t before = es->pending.len;
    if (sse_format(&es->pending, seq, type, data) != AP_OK) {
        es->pending.len = before; /* over the hard cap: resume from the store later */
        es->replaying = true;
        return;
    }
    if (seq > 0)
        es->last_seq = seq;
    if (is_final_event(type, data))
        es->finished = true;
}

static void replay_page(event_stream *es)
{
    store_event *rows = NULL;
    size_t n = 0;
    ap_err err = {0};
    if (store_events_list(es->deps->store, es->tenant, es->panel, es->last_seq, REPLAY_PAGE, &rows,
                          &n, &err) != AP_OK) {
        log_fields f = {.tenant_id = es->tenant, .panel_id = es->panel};
        log_msg(LOG_LEVEL_WARN, &f, "event replay failed: %s", err.msg);
        es->finished = true; /* the client reconnects with Last-Event-ID */
        return;
    }
    for (size_t i = 0; i < n; i++)
        append_event(es, rows[i].seq, rows[i].type, rows[i].data);
    if (n < REPLAY_PAGE)
        es->replaying = false;
    store_events_free(rows, n);
}

/* Replays stored events into the buffer while the stream is behind the store, up to its fill
 * target. */
static void replay_some(event_stream *es)
{
    while (es->replaying && !es->finished && es->pending.len < FILL_TARGET)
        replay_page(es);
}

/* A live event's SSE frame, built once per event and shared by every stream that sends it:
 * thousands of streams on one panel then cost a copy each, not a format and a buffer each. */
typedef struct frame {
    bool final;
    size_t len;
    char bytes[];
} frame;

static void *make_frame(const panel_event *ev)
{
    frame *f = NULL;
    buf b;
    buf_init(&b, PENDING_MAX);
    if (sse_format(&b, ev->seq, ev->type, ev->data) != AP_OK)
        goto out;
    f = malloc(sizeof *f + b.len);
    if (f == NULL)
        goto out;
    f->final = is_final_event(ev->type, ev->data);
    f->len = b.len;
    memcpy(f->bytes, b.data, b.len);
out:
    buf_free(&b);
    return f;
}

/* Holds the next new live event in es->cur; false when there is none to send now. */
static bool take_live(event_stream *es)
{
    panel_event ev;
    while (!es->finished && !es->replaying) {
        int r = panel_sub_next(es->sub, &ev, 0);
        if (r == 0)
            return false;
        if (r < 0) {
            es->replaying = true;
            return false;
        }
        int64_t seq = ev.seq;
        if (seq > 0 && seq <= es->last_seq) {
            es->finished = is_final_event(ev.type, ev.data); /* as in append_event */
            panel_event_clear(&ev);
            continue;
        }
        if (seq > es->last_seq + 1) {
            /* events before it were written by another process (a cancel through it, a
             * takeover): they are read from the store, this one with them */
            panel_event_clear(&ev);
            es->replaying = true;
            return false;
        }
        const frame *f = panel_event_memo(&ev, make_frame);
        if (f == NULL) {
            panel_event_clear(&ev);
            es->replaying = true; /* over the hard cap: resume from the store */
            return false;
        }
        es->cur = ev;
        es->cur_frame = f;
        es->cur_off = 0;
        if (seq > 0)
            es->last_seq = seq;
        if (f->final)
            es->finished = true;
        return true;
    }
    return false;
}

/* Has the ticker wake the stream at mono time at. */
static void wake_at(event_stream *es, int64_t at)
{
    struct api_streams *all = es->deps->streams;
    pthread_mutex_lock(&all->lock);
    atomic_store(&es->end_at_ms, at);
    if (all->next_end_ms == 0 || at < all->next_end_ms) {
        all->next_end_ms = at;
        pthread_cond_signal(&all->tick);
    }
    pthread_mutex_unlock(&all->lock);
}

/* Whether the stream's key has been revoked. A store error keeps the stream until the next
 * check: a store that is briefly unreachable must not cut every open stream. */
static bool key_revoked(event_stream *es)
{
    ap_err err = {0};
    ap_status rc = api_key_active(es->deps, es->tenant, es->key_id, KEY_CACHE_MS, &err);
    if (rc != AP_OK && rc != AP_DENIED) {
        log_fields f = {.tenant_id = es->tenant, .panel_id = es->panel};
        log_msg(LOG_LEVEL_WARN, &f, "cannot check the stream's API key: %s", err.msg);
    }
    return rc == AP_DENIED;
}

/* Queues what comes next once everything before it went out: the notice that the key was
 * revoked, a due heartbeat, replayed frames, or the next live event. false when there is
 * nothing to send now. */
static bool refill(event_stream *es)
{
    buf_reset(&es->pending);
    es->sent = 0;
    if (atomic_exchange(&es->key_check_due, false) && key_revoked(es)) {
        es->finished = true;
        if (sse_format(&es->pending, 0, "stream.revoked",
                       "{\"code\":\"key_revoked\",\"message\":\"the API key of this stream "
                       "has been revoked\"}") != AP_OK)
            buf_reset(&es->pending); /* no room for the notice: the stream just ends */
        return es->pending.len > 0;
    }
    if (atomic_exchange(&es->heartbeat_due, false))
        buf_puts(&es->pending, ": heartbeat\n\n");
    if (atomic_exchange(&es->poll_due, false))
        es->replaying = true;
    replay_some(es);
    if (!es->replaying && es->final_panel && !es->finished) {
        int64_t now = clock_mono_ms();
        if (es->final_wait_ms == 0) {
            es->final_wait_ms = now + FINAL_WAIT_MS;
            wake_at(es, es->final_wait_ms);
        } else if (now >= es->final_wait_ms) {
            es->finished = true; /* it did not come: end with what is stored */
        }
    }
    if (es->pending.len > 0 || take_live(es))
        return true;
    replay_some(es); /* a gap take_live found, or a lagging subscription */
    return es->pending.len > 0 || take_live(es);
}

/* Parks a stream that sent everything until the ticker wakes it END_DELAY_MS later; -1 (end
 * now) on that wake. */
static ssize_t end_later(event_stream *es)
{
    if (es->ending)
        return -1;
    es->ending = true;
    wake_at(es, clock_mono_ms() + END_DELAY_MS);
    return 0;
}

static size_t copy_out(char *out, size_t room, const char *from, size_t avail)
{
    size_t n = avail < room ? avail : room;
    memcpy(out, from, n);
    return n;
}

static ssize_t stream_read(void *ctx, char *out, size_t max)
{
    event_stream *es = ctx;
    size_t n = 0;
    while (n < max) {
        if (es->sent < es->pending.len) {
            size_t k =
                copy_out(out + n, max - n, es->pending.data + es->sent, es->pending.len - es->sent);
            es->sent += k;
            n += k;
        } else if (es->cur_frame != NULL) {
            size_t k = copy_out(out + n, max - n, es->cur_frame->bytes + es->cur_off,
                                es->cur_frame->len - es->cur_off);
            es->cur_off += k;
            n += k;
            if (es->cur_off == es->cur_frame->len) {
                panel_event_clear(&es->cur);
                es->cur_frame = NULL;
            }
        } else if (!refill(es)) {
            break;
        }
    }
    if (n == 0 && es->finished)
        return end_later(es);
    if (n > 0)
        atomic_store(&es->last_write_ms, clock_mono_ms());
    return (ssize_t)n;
}

/* Runs on the panel engine's writer thread: just wake the connection. The stream stays valid
 * while the subscription exists (stream_done unsubscribes before MHD frees it). */
static void on_notify(void *ud)
{
    event_stream *es = ud;
    http_stream *st = atomic_load(&es->st);
    if (st != NULL)
        http_stream_wake(st);
}

/* Counts a tenant's open streams; false when it is at max. Called with all->lock held. */
static bool tenant_stream_take(struct api_streams *all, const char *tenant, int64_t max)
{
    size_t i = 0;
    while (i < all->ntenants && strcmp(all->per_tenant[i].tenant, tenant) != 0)
        i++;
    if (i == all->ntenants) {
        if (all->ntenants == MAX_STREAM_TENANTS)
            return false;
        memcpy(all->per_tenant[i].tenant, tenant, sizeof all->per_tenant[i].tenant);
        all->per_tenant[i].n = 0;
        all->ntenants++;
    }
    if (all->per_tenant[i].n >= max)
        return false;
    all->per_tenant[i].n++;
    return true;
}

/* At the cap, streams whose clients left may still hold slots: a parked connection is not
 * watched, and MHD notices a closed client only when a write to it fails. A heartbeat now to
 * each of the tenant's streams frees those within a write or two, so a retry a second later
 * finds the room, instead of at their next heartbeat, up to HEARTBEAT_MS away. Called with
 * all->lock held. */
static void probe_tenant_streams(struct api_streams *all, const char *tenant)
{
    for (event_stream *es = all->head; es != NULL; es = es->next) {
        http_stream *st = atomic_load(&es->st);
        if (st == NULL || atomic_load(&es->end_at_ms) != 0 || strcmp(es->tenant, tenant) != 0)
            continue;
        atomic_store(&es->heartbeat_due, true);
        http_stream_wake(st);
    }
}

static void tenant_stream_release(struct api_streams *all, const char *tenant)
{
    for (size_t i = 0; i < all->ntenants; i++) {
        if (strcmp(all->per_tenant[i].tenant, tenant) != 0)
            continue;
        if (--all->per_tenant[i].n == 0)
            all->per_tenant[i] = all->per_tenant[--all->ntenants];
        return;
    }
}

static void stream_done(void *ctx)
{
    event_stream *es = ctx;
    struct api_streams *all = es->deps->streams;
    panel_engine_unsubscribe(es->deps->engine, es->sub);
    panel_event_clear(&es->cur);
    pthread_mutex_lock(&all->lock);
    if (es->prev != NULL)
        es->prev->next = es->next;
    else
        all->head = es->next;
    if (es->next != NULL)
        es->next->prev = es->prev;
    tenant_stream_release(all, es->tenant);
    pthread_mutex_unlock(&all->lock);
    buf_free(&es->pending);
    free(es);
}

/* Heartbeats for silent streams and key checks (both looked at every TICK_MS), and the delayed
 * end of finished ones. The key check itself runs on the stream's own thread (refill), so a
 * slow store never holds up the ticker. */
static void *ticker(void *arg)
{
    struct api_streams *all = arg;
    pthread_mutex_lock(&all->lock);
    while (all->running) {
        int64_t wait_ms = TICK_MS;
        if (all->next_end_ms != 0) {
            int64_t to_end = all->next_end_ms + END_BATCH_MS - clock_mono_ms();
            wait_ms = to_end < 0 ? 0 : to_end < TICK_MS ? to_end : TICK_MS;
        }
        struct timespec until = clock_deadline_ms(wait_ms);
        pthread_cond_timedwait(&all->tick, &all->lock, &until);
        int64_t now = clock_mono_ms(), next_end = 0;
        /* A listed stream is alive: stream_done unlinks it under this lock first. */
        for (event_stream *es = all->head; es != NULL; es = es->next) {
            http_stream *st = atomic_load(&es->st);
            if (st == NULL)
                continue;
            int64_t end = atomic_load(&es->end_at_ms);
            if (end > 0 && now >= end) {
                atomic_store(&es->end_at_ms, -1);
                http_stream_wake(st);
            } else if (end > 0 && (next_end == 0 || end < next_end)) {
                next_end = end;
            } else if (end == 0) {
                bool wake = false;
                if (now - atomic_load(&es->last_write_ms) >= HEARTBEAT_MS) {
                    atomic_store(&es->heartbeat_due, true);
                    atomic_store(&es->last_write_ms, now);
                    wake = true;
                }
                if (now >= es->key_check_at_ms) {
                    atomic_store(&es->key_check_due, true);
                    es->key_check_at_ms = now + KEY_CHECK_MS;
                    wake = true;
                }
                if (now >= es->poll_at_ms) {
                    es->poll_at_ms = now + POLL_MS;
                    if (!panel_engine_runs(es->deps->engine, es->panel)) {
                        atomic_store(&es->poll_due, true);
                        wake = true;
                    }
                }
                if (wake)
                    http_stream_wake(st);
            }
        }
        all->next_end_ms = next_end;
    }
    pthread_mutex_unlock(&all->lock);
    return NULL;
}

ap_status api_streams_start(api_deps *d, ap_err *err)
{
    struct api_streams *all = calloc(1, sizeof *all);
    if (all == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    pthread_mutex_init(&all->lock, NULL);
    pthread_cond_init(&all->tick, NULL);
    all->running = true;
    if (pthread_create(&all->ticker, NULL, ticker, all) != 0) {
        pthread_cond_destroy(&all->tick);
        pthread_mutex_destroy(&all->lock);
        free(all);
        return ap_err_set(err, AP_ERROR, "cannot start the heartbeat thread");
    }
    d->streams = all;
    return AP_OK;
}

void api_streams_stop(api_deps *d)
{
    struct api_streams *all = d->streams;
    if (all == NULL)
        return;
    pthread_mutex_lock(&all->lock);
    all->running = false;
    pthread_cond_signal(&all->tick);
    pthread_mutex_unlock(&all->lock);
    pthread_join(all->ticker, NULL);
    pthread_cond_destroy(&all->tick);
    pthread_mutex_destroy(&all->lock);
    free(all);
    d->streams = NULL;
}

/* Where to start: Last-Event-ID wins over ?after=; both are sequence numbers >= 0. */
static bool start_after(http_request *req, int64_t *after)
{
    const char *v = http_header(req, "Last-Event-ID");
    if (v == NULL)
        v = http_query(req, "after");
    *after = 0;
    if (v == NULL)
        return true;
    int64_t n = 0;
    if (!validate_decimal(v, INT64_MAX / 10, &n)) {
        http_reply_error(req, 400, "invalid_parameter",
                         "Last-Event-ID / after must be an event sequence number");
        return false;
    }
    *after = n;
    return true;
}

static bool wants_json(http_request *req)
{
    const char *accept = http_header(req, "Accept");
    return accept != NULL && strstr(accept, "application/json") != NULL &&
           strstr(accept, "text/event-stream") == NULL;
}

/* Stored events after `after` as one JSON page, read from the store in small pages so a page
 * of large events stays within JSON_PAGE_BYTES (has_more then says there is more). */
static void reply_json_page(http_request *req, api_deps *d, const char *tenant, const char *panel,
                            int64_t after)
{
    int limit;
    const char *cursor;
    if (!validate_page(req, JSON_PAGE_DEFAULT, JSON_PAGE_MAX, &limit, &cursor))
        return;
    cJSON *body = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(body, "data");
    int64_t last = after;
    size_t bytes = 0, count = 0;
    bool more = true;
    while (more && count < (size_t)limit && bytes < JSON_PAGE_BYTES) {
        store_event *rows = NULL;
        size_t n = 0;
        ap_err err = {0};
        int want = limit - (int)count < REPLAY_PAGE ? limit - (int)count : REPLAY_PAGE;
        if (store_events_list(d->store, tenant, panel, last, want, &rows, &n, &err) != AP_OK) {
            cJSON_Delete(body);
            http_reply_ap_err(req, &err);
            return;
        }
        size_t i = 0;
        for (; i < n && bytes < JSON_PAGE_BYTES; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "seq", (double)rows[i].seq);
            cJSON_AddStringToObject(e, "type", rows[i].type);
            cJSON *v = cJSON_Parse(rows[i].data);
            cJSON_AddItemToObject(e, "data", v != NULL ? v : cJSON_CreateNull());
            cJSON_AddNumberToObject(e, "created_at", (double)rows[i].created_at);
            cJSON_AddItemToArray(data, e);
            bytes += strlen(rows[i].data) + 64;
            last = rows[i].seq;
            count++;
        }
        more = i < n || n == (size_t)want;
        store_events_free(rows, n);
    }
    cJSON_AddNumberToObject(body, "last_seq", (double)last);
    cJSON_AddBoolToObject(body, "has_more", more);
    http_reply_json(req, 200, body);
}

/* Whether the event at seq `last` of the panel is its final one (its status row can say it
 * ended a moment before the writer stores that event). */
static bool final_event_stored(api_deps *d, const char *tenant, const char *panel, int64_t last)
{
    store_event *rows = NULL;
    size_t n = 0;
    bool final = false;
    if (last > 0 &&
        store_events_list(d->store, tenant, panel, last - 1, 1, &rows, &n, NULL) == AP_OK && n == 1)
        final = is_final_event(rows[0].type, rows[0].data);
    store_events_free(rows, n);
    return final;
}

void api_panels_events(http_request *req, void *app)
{
    api_deps *d = app;
    const char *tenant = http_principal_of(req)->tenant_id;
    char id[IDS_UUID_LEN + 1];
    int64_t after, last = 0;
    bool final = false;
    ap_err err = {0};
    if (!validate_id_param(req, "id", id) || !start_after(req, &after) ||
        !api_panel_visible(req, d, id, &final))
        return;
    if (wants_json(req)) {
        reply_json_page(req, d, tenant, id, after);
        return;
    }
    if (d->engine == NULL || d->streams == NULL) {
        http_reply_error(req, 503, "unavailable", "live streams are not available here");
        return;
    }
    /* An ended panel with nothing after the client's position, its final event included: 204
     * tells EventSource to stop reconnecting (it would otherwise come back every retry
     * interval forever). */
    if (final && store_events_last_seq(d->store, tenant, id, &last, &err) == AP_OK &&
        last <= after && final_event_stored(d, tenant, id, last)) {
        http_reply_bytes(req, 204, "text/event-stream", "", 0);
        return;
    }
    struct api_streams *all = d->streams;
    pthread_mutex_lock(&all->lock);
    bool room = tenant_stream_take(all, tenant, d->cfg->http_max_streams_per_tenant);
    if (!room)
        probe_tenant_streams(all, tenant);
    pthread_mutex_unlock(&all->lock);
    if (!room) {
        http_add_header(req, "Retry-After", "1");
        http_reply_error(req, 429, "too_many_streams",
                         "this tenant has %lld open event streams, its limit",
                         (long long)d->cfg->http_max_streams_per_tenant);
        return;
    }
    event_stream *es = calloc(1, sizeof *es);
    if (es == NULL) {
        pthread_mutex_lock(&all->lock);
        tenant_stream_release(all, tenant);
        pthread_mutex_unlock(&all->lock);
        http_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    es->deps = d;
    memcpy(es->tenant, tenant, sizeof es->tenant);
    memcpy(es->panel, id, sizeof es->panel);
    /* Every stream principal has a key: the operator key is refused on this route. */
    memcpy(es->key_id, http_principal_of(req)->key_id, sizeof es->key_id);
    es->key_check_at_ms = clock_mono_ms() + KEY_CHECK_MS;
    buf_init(&es->pending, PENDING_MAX);
    es->last_seq = after;
    es->replaying = true;
    es->final_panel = final;
    atomic_init(&es->end_at_ms, 0);
    atomic_init(&es->heartbeat_due, false);
    atomic_init(&es->key_check_due, false);
    atomic_init(&es->poll_due, false);
    atomic_init(&es->last_write_ms, clock_mono_ms());
    atomic_init(&es->st, NULL);
    if (buf_puts(&es->pending, "retry: 2000\n\n") != AP_OK ||
        panel_engine_subscribe(d->engine, tenant, id, SUB_QUEUE_MAX, on_notify, es, &es->sub,
                               &err) != AP_OK) {
        buf_free(&es->pending);
        free(es);
        pthread_mutex_lock(&all->lock);
        tenant_stream_release(all, tenant);
        pthread_mutex_unlock(&all->lock);
        http_reply_ap_err(req, &err);
        return;
    }
    pthread_mutex_lock(&all->lock);
    es->next = all->head;
    if (all->head != NULL)
        all->head->prev = es;
    all->head = es;
    pthread_mutex_unlock(&all->lock);
    http_add_header(req, "Cache-Control", "no-cache");
    http_add_header(req, "X-Accel-Buffering", "no");
    http_stream *st = http_reply_stream(req, 200, "text/event-stream; charset=utf-8", stream_read,
                                        stream_done, es);
    if (st == NULL)
        stream_done(es); /* never started: undo the subscription and the counts */
    else
        atomic_store(&es->st, st);
}
