#include "llm/http_provider.h"

#include "core/buf.h"
#include "core/ids.h"
#include "core/jsonx.h"
#include "llm/cfg.h"
#include "core/log.h"
#include "llm/http_schema.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAX_MODELS 8
#define ERROR_BODY_MAX (64 * 1024)
#define SCHEMA_DEPTH 32

#define SHARD_TRANSFERS 128 /* transfers per curl multi handle, see shard */
#define MAX_SHARDS 64

typedef struct hp hp;
typedef struct xfer xfer;

/* curl looks for a reusable connection by scanning every connection to the host, so one
 * multi handle with thousands of HTTP/1.1 connections turns a burst into O(n^2) work. The
 * transfers are therefore spread over several multi handles of about SHARD_TRANSFERS each,
 * each with its own connection cache, all driven by the same loop. Over HTTP/2 a shard holds
 * as many transfers as one connection carries streams: past that, curl opens a connection
 * per waiting transfer instead of one more shared one. */
typedef struct shard {
    hp *p;
    CURLM *multi;
    llm_timer *timer;
    int64_t timer_due;
    int active;
    /* Finished easy handles kept for the next transfers (at most cap_idle): a handle carries
     * the provider's fixed options and curl's buffers, so a burst does not allocate, zero and
     * configure a fresh one per call. */
    CURL **idle;
    int n_idle, alloc_idle, cap_idle;
} shard;

struct hp {
    const llm_http_dialect *d;
    llm_loop *loop;
    const cJSON *cfg; /* borrowed from the client's config */
    shard *shards;
    int n_shards;
    char *base_url, *url, *api_key;
    const char *default_model;
    const char *ca_file; /* trusted certificates (PEM) instead of the system store; borrowed */
    /* the request headers, the same for every call: [0] for whole replies, [1] for streams */
    struct curl_slist *headers[2];
    int max_concurrency, active, max_attempts;
    int64_t backoff_base_ms, backoff_cap_ms, connect_ms, first_token_ms, idle_ms, total_ms;
    int64_t retry_after_max_ms; /* a longer Retry-After is not waited for */
    size_t max_body, max_stream;
    llm_wire_limits limits;
    bool native_schema;
    long http_version;        /* CURL_HTTP_VERSION_* */
    bool pipewait;            /* wait for a new connection to learn whether it multiplexes */
    int depth;                /* > 0 while curl is calling us back */
    xfer *queue, *queue_tail; /* waiting for a transfer slot */
    xfer *dead;               /* cancelled inside a curl callback: freed after it returns */
};

typedef enum xstate { X_IDLE, X_QUEUED, X_RUNNING, X_BACKOFF } xstate;

struct xfer {
    hp *p;
    llm_call *call; /* NULL once cancelled */
    xstate state;
    xfer *next; /* queue or dead list */
    const char *models[MAX_MODELS];
    cJSON *expert;
    int n_models, model_idx;
    char *system;
    cJSON *schema;
    char *repair_answer; /* the invalid answer shown back to the model, once */
    char repair_why[256];
    bool repaired;
    int attempts, model_attempts;
    int64_t started_ms;
    int64_t prompt_tokens, completion_tokens;
    /* the current attempt */
    shard *sh;
    CURL *easy;
    char *body;
    void *dec;
    buf resp; /* error body, or the whole body of a non-streaming reply */
    long status;
    int64_t retry_after_ms;
    bool retry_after_exact;
    bool mute;        /* an attempt failed after deltas went out: later ones stay quiet */
    size_t delivered; /* bytes of deltas passed to the caller */
    size_t bytes;
    bool got_token, timed_out;
    bool complete;   /* the stream said it is done: the rest of the connection is not waited for */
    ap_status local; /* a failure we found while receiving (limit, malformed, ...) */
    char local_msg[AP_ERR_MSG_MAX];
    llm_timer *timer; /* first-token timeout while running, backoff while waiting */
    char curl_err[CURL_ERROR_SIZE];
};

static void pump(hp *p);
static void end_attempt(xfer *x, CURLcode cc);

/* ---- small helpers ---------------------------------------------------------------------- */

/* The whole-number keys of a provider's config, with their defaults and bounds: one table
 * for reading them and for refusing a config that has them wrong. */
static const llm_cfg_int int_keys[] = {
    {"max_concurrency", 256, 1, 1000000},
    {"max_attempts", 4, 1, 20},
    {"backoff_base_ms", 250, 0, 600000},
    {"backoff_cap_ms", 8000, 0, 3600000},
    {"retry_after_max_ms", 60000, 0, 3600000},
    {"connect_timeout_ms", 10000, 1, 600000},
    {"first_token_timeout_ms", 60000, 1, 3600000},
    {"idle_timeout_ms", 30000, 1000, 3600000},
    {"total_timeout_ms", 300000, 1, 86400000},
    {"max_response_bytes", 4 << 20, 1024, 1 << 30},
    {"max_stream_bytes", 64 << 20, 1024, INT64_C(1) << 34},
    {"max_answer_bytes", 256 << 10, 16, 1 << 28},
    {"max_streams_per_connection", 100, 1, 1000},
};
#define N_INT_KEYS (sizeof int_keys / sizeof int_keys[0])

static const char *const string_keys[] = {"type",         "base_url",         "api_key",
                                          "model",        "max_tokens_field", "schema_mode",
                                          "http_version", "ca_file"};

#define PRICE_MAX 1e6 /* USD per million tokens: anything above is a typo */

/* String keys with a fixed set of values: a typo ("instrct") is refused with the engine's
 * start instead of quietly meaning the default. */
static const struct {
    const char *key, *values[4], *says;
} enum_keys[] = {
    {"schema_mode", {"native", "instruct"}, "\"native\" or \"instruct\""},
    {"http_version", {"auto", "1.1", "2"}, "\"auto\", \"1.1\" or \"2\""},
};

/* AP_INVALID when m is an enumerated key holding none of its values. */
static ap_status check_enum(const cJSON *m, const char *name, ap_err *err)
{
    for (size_t i = 0; i < sizeof enum_keys / sizeof enum_keys[0]; i++) {
        if (strcmp(m->string, enum_keys[i].key) != 0)
            continue;
        for (size_t v = 0; v < 4 && enum_keys[i].values[v] != NULL; v++)
            if (strcmp(m->valuestring, enum_keys[i].values[v]) == 0)
                return AP_OK;
        return ap_err_set(err, AP_INVALID, "llm.providers.%.40s.%s must be %s", name,
                          enum_keys[i].key, enum_keys[i].says);
    }
    return AP_OK;
}

/* A key of int_keys; its default when absent (llm_http_check refused anything else). */
static int64_t cfg_int(const cJSON *cfg, const char *key)
{
    size_t i = 0;
    while (i < N_INT_KEYS && strcmp(int_keys[i].key, key) != 0)
        i++;
    assert(i < N_INT_KEYS);
    return llm_cfg_int_value(cfg, &int_keys[i]);
}

static bool strings_only(const cJSON *v, bool array)
{
    if (array ? !cJSON_IsArray(v) : !cJSON_IsObject(v))
        return false;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e))
            return false;
    }
    return true;
}

static bool prices_ok(const cJSON *prices)
{
    if (!cJSON_IsObject(prices))
        return false;
    const cJSON *m;
    cJSON_ArrayForEach(m, prices)
    {
        if (!cJSON_IsObject(m))
            return false;
        const cJSON *p;
        cJSON_ArrayForEach(p, m)
        {
            if ((strcmp(p->string, "prompt") != 0 && strcmp(p->string, "completion") != 0) ||
                !cJSON_IsNumber(p) || !(p->valuedouble >= 0 && p->valuedouble <= PRICE_MAX))
                return false;
        }
    }
    return true;
}

ap_status llm_http_check(const cJSON *cfg, const char *name, ap_err *err)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, cfg)
    {
        const char *k = m->string;
        ap_status rc = llm_cfg_member(m, name, int_keys, N_INT_KEYS, string_keys,
                                      sizeof string_keys / sizeof string_keys[0], err);
        if (rc == AP_OK && cJSON_IsString(m))
            rc = check_enum(m, name, err);
        if (rc != AP_NOTFOUND) {
            if (rc != AP_OK)
                return rc;
        } else if (strcmp(k, "headers") == 0 || strcmp(k, "fallback_models") == 0) {
            bool array = k[0] == 'f';
            if (!strings_only(m, array))
                return ap_err_set(err, AP_INVALID, "llm.providers.%.40s.%s must be %s of strings",
                                  name, k, array ? "an array" : "an object");
        } else if (strcmp(k, "prices") == 0) {
            if (!prices_ok(m))
                return ap_err_set(err, AP_INVALID,
                                  "llm.providers.%.40s.prices: { \"<model>\": { \"prompt\": "
                                  "USD, \"completion\": USD } } per million tokens, 0 to %g",
                                  name, PRICE_MAX);
        } else {
            return llm_cfg_unknown(m, name, err);
        }
    }
    return AP_OK;
}

static char *dup_or_null(const char *s)
{
    return s != NULL && s[0] != '\0' ? strdup(s) : NULL;
}

static uint32_t jitter(void)
{
    uint32_t r = 0;
    if (ids_random(&r, sizeof r) != AP_OK)
        r = (uint32_t)llm_loop_now_ms() * 2654435761u;
    return r;
}

static void xfer_free(xfer *x)
{
    if (x == NULL)
        return;
    cJSON_Delete(x->expert);
    cJSON_Delete(x->schema);
    free(x->system);
    free(x->repair_answer);
    buf_free(&x->resp);
    free(x);
}

/* Unhooks a finished handle from its transfer and keeps it for the next one, or frees it when
 * the shard already keeps enough. */
static void handle_put(shard *sh, CURL *e)
{
    if (sh->n_idle == sh->alloc_idle) {
        int want = sh->alloc_idle > 0 ? sh->alloc_idle * 2 : 16;
        if (want > sh->cap_idle)
            want = sh->cap_idle;
        CURL **grown =
            want > sh->alloc_idle ? realloc(sh->idle, (size_t)want * sizeof *grown) : NULL;
        if (grown == NULL) {
            curl_easy_cleanup(e);
            return;
        }
        sh->idle = grown;
        sh->alloc_idle = want;
    }
    /* nothing of the old transfer may stay reachable from a handle that outlives it */
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, NULL);
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
    sh->idle[sh->n_idle++] = e;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud);
static size_t on_header(char *line, size_t size, size_t nitems, void *ud);

/* A handle with the provider's fixed options set: a kept one, or a new one. NULL when out of
 * memory. */
static CURL *handle_get(shard *sh)
{
    if (sh->n_idle > 0)
        return sh->idle[--sh->n_idle];
    hp *p = sh->p;
    CURL *e = curl_easy_init();
    if (e == NULL)
        return NULL;
    curl_easy_setopt(e, CURLOPT_URL, p->url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, p->http_version);
    if (p->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, p->ca_file);
    if (p->pipewait)
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)p->total_ms);
    /* a stream that stops moving for idle_ms is as good as dead */
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)((p->idle_ms + 999) / 1000));
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* stream chunks are a few hundred bytes: curl's default 16 KiB receive buffer per transfer
     * only made thousands of concurrent streams touch more memory (peak RSS -30 % at 5,000) */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L);
    return e;
}

/* Releases everything of the current attempt; the transfer slot too. */
static void detach(xfer *x)
{
    hp *p = x->p;
    llm_loop_timer_cancel(p->loop, x->timer);
    x->timer = NULL;
    if (x->easy != NULL) {
        curl_multi_remove_handle(x->sh->multi, x->easy);
        handle_put(x->sh, x->easy);
        x->easy = NULL;
        x->sh->active--;
        p->active--;
    }
    free(x->body);
    x->body = NULL;
    if (x->dec != NULL)
        p->d->dec_free(x->dec);
    x->dec = NULL;
}

/* ---- curl <-> loop glue ----------------------------------------------------------------- */

static void reap(shard *sh)
{
    hp *p = sh->p;
    CURLMsg *msg;
    int left = 0;
    while ((msg = curl_multi_info_read(sh->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        xfer *x = (xfer *)priv;
        if (x == NULL || x->call == NULL)
            continue; /* cancelled: freed from the dead list below */
        end_attempt(x, msg->data.result);
    }
    while (p->dead != NULL) {
        xfer *x = p->dead;
        p->dead = x->next;
        detach(x);
        xfer_free(x);
    }
    pump(p);
}

static void on_fd(llm_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    shard *sh = ud;
    int flags = 0, running = 0;
    if (events & LLM_LOOP_READ)
        flags |= CURL_CSELECT_IN;
    if (events & LLM_LOOP_WRITE)
        flags |= CURL_CSELECT_OUT;
    sh->p->depth++;
    curl_multi_socket_action(sh->multi, fd, flags, &running);
    sh->p->depth--;
    reap(sh);
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy, (void)socketp;
    shard *sh = userp;
    hp *p = sh->p;
    if (what == CURL_POLL_REMOVE) {
        llm_loop_unwatch(p->loop, s);
        return 0;
    }
    unsigned ev = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        ev |= LLM_LOOP_READ;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        ev |= LLM_LOOP_WRITE;
    return llm_loop_watch(p->loop, s, ev, on_fd, sh) == AP_OK ? 0 : -1;
}

static void on_curl_timer(llm_loop *loop, void *ud)
{
    (void)loop;
    shard *sh = ud;
    int running = 0;
    sh->timer = NULL;
    sh->p->depth++;
    curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    sh->p->depth--;
    reap(sh);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    shard *sh = userp;
    hp *p = sh->p;
    /* curl re-arms its timer after nearly every socket event. A timer that fires early is
     * harmless (curl finds nothing due and re-arms), so an earlier pending one is kept and
     * only a later one is replaced: this saves a heap update per received chunk. */
    if (timeout_ms < 0)
        return 0;
    int64_t due = llm_loop_now_ms() + timeout_ms;
    if (sh->timer != NULL && sh->timer_due <= due)
        return 0;
    llm_loop_timer_cancel(p->loop, sh->timer);
    sh->timer = llm_loop_timer_add(p->loop, timeout_ms, on_curl_timer, sh);
    sh->timer_due = due;
    return sh->timer != NULL ? 0 : -1;
}

/* ---- receiving -------------------------------------------------------------------------- */

static void set_local(xfer *x, ap_status st, const char *msg)
{
    if (x->local != AP_OK)
        return;
    x->local = st;
    snprintf(x->local_msg, sizeof x->local_msg, "%s", msg);
}

static ap_status on_delta(void *ctx, const char *text, size_t len)
{
    xfer *x = ctx;
    if (!x->got_token) {
        x->got_token = true;
        llm_loop_timer_cancel(x->p->loop, x->timer);
        x->timer = NULL;
    }
    if (x->call != NULL && llm_call_request(x->call)->stream && !x->mute) {
        x->delivered += len;
        llm_call_delta(x->call, text, len);
    }
    /* the caller may have cancelled this very call from its delta callback */
    return x->call != NULL ? AP_OK : AP_ERROR;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    if (x->call == NULL)
        return 0;
    x->bytes += n;
    if (x->bytes > x->p->max_stream) {
        set_local(x, AP_LIMIT, "response larger than max_stream_bytes");
        return 0;
    }
    if (x->status == 0)
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
    if (x->status != 200) {
        /* error bodies are only read for their message: keep the start */
        size_t room = x->resp.len < ERROR_BODY_MAX ? ERROR_BODY_MAX - x->resp.len : 0;
        if (buf_append(&x->resp, ptr, n < room ? n : room) != AP_OK)
            return 0;
        return n;
    }
    if (x->dec != NULL) {
        ap_err err;
        ap_err_clear(&err);
        ap_status rc = x->p->d->dec_feed(x->dec, ptr, n, &err);
        if (x->call == NULL)
            return 0;
        if (rc == AP_ERROR && x->p->d->dec_reply(x->dec)->failed)
            return 0; /* a provider error inside the stream: end_attempt reads it */
        if (rc != AP_OK) {
            set_local(x, rc, err.msg);
            return 0;
        }
        /* The answer is whole once the stream says so ([DONE], message_stop): a server that
         * keeps the connection open after it would otherwise hold the call until the idle
         * timeout, and the attempt would count as lost. Stopping the transfer here ends it. */
        if (x->p->d->dec_reply(x->dec)->done) {
            x->complete = true;
            return 0;
        }
        return n;
    }
    if (!x->got_token) {
        x->got_token = true;
        llm_loop_timer_cancel(x->p->loop, x->timer);
        x->timer = NULL;
    }
    if (buf_append(&x->resp, ptr, n) != AP_OK) {
        set_local(x, AP_LIMIT, "response body too large");
        return 0;
    }
    return n;
}

static size_t on_header(char *line, size_t size, size_t nitems, void *ud)
{
    xfer *x = ud;
    size_t n = size * nitems;
    char v[64];
    if (n > 5 && strncmp(line, "HTTP/", 5) == 0) {
        x->retry_after_ms = -1; /* a new response (after 100-continue or a redirect) */
        x->retry_after_exact = false;
        return n;
    }
    bool ms = n > 15 && strncasecmp(line, "retry-after-ms:", 15) == 0;
    bool secs = !ms && n > 12 && strncasecmp(line, "retry-after:", 12) == 0;
    if (!ms && !secs)
        return n;
    size_t k = ms ? 15 : 12;
    size_t len = n - k < sizeof v - 1 ? n - k : sizeof v - 1;
    memcpy(v, line + k, len);
    v[len] = '\0';
    v[strcspn(v, "\r\n")] = '\0';
    int64_t wait = ms ? llm_wire_retry_after_ms_of_ms(v)
                      : llm_wire_retry_after_ms(v, (int64_t)time(NULL) * 1000);
    if (wait < 0)
        return n;
    /* retry-after-ms (OpenAI) is finer than Retry-After: it wins when both are sent */
    if (ms) {
        x->retry_after_ms = wait;
        x->retry_after_exact = true;
    } else if (!x->retry_after_exact) {
        x->retry_after_ms = wait;
    }
    return n;
}

static void on_first_token_timeout(llm_loop *loop, void *ud)
{
    (void)loop;
    xfer *x = ud;
    x->timer = NULL;
    hp *p = x->p; /* x may be gone after end_attempt */
    x->timed_out = true;
    end_attempt(x, CURLE_OPERATION_TIMEDOUT);
    pump(p);
}

/* ---- starting an attempt ---------------------------------------------------------------- */

static char *compose_system(const cJSON *expert, const char *extra)
{
    buf b;
    buf_init(&b, 1024 * 1024);
    ap_status rc = AP_OK;
    const char *name = jsonx_string(expert, "name");
    const char *role = jsonx_string(expert, "role");
    const char *persona = jsonx_string(expert, "persona");
    if (name != NULL) {
        rc = buf_printf(&b, "You are %s%s%s.\n", name, role != NULL ? ", " : "",
                        role != NULL ? role : "");
        if (rc == AP_OK && persona != NULL && persona[0] != '\0')
            rc = buf_printf(&b, "%s\n", persona);
        const cJSON *ex = cJSON_GetObjectItemCaseSensitive(expert, "expertise");
        const cJSON *e = NULL;
        int i = 0;
        cJSON_ArrayForEach(e, ex)
        {
            if (rc == AP_OK && cJSON_IsString(e))
                rc = buf_printf(&b, "%s%s", i++ ? ", " : "Expertise: ", e->valuestring);
        }
        if (rc == AP_OK && i > 0)
            rc = buf_puts(&b, ".\n");
    }
    if (rc == AP_OK && extra != NULL && extra[0] != '\0')
        rc = buf_printf(&b, "%s%s", b.len > 0 ? "\n" : "", extra);
    if (rc != AP_OK) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

static ap_status begin_attempt(xfer *x, ap_err *err)
{
    hp *p = x->p;
    const llm_request *req = llm_call_request(x->call);
    ap_status rc = AP_OK;
    x->attempts++;
    x->model_attempts++;
    x->status = 0;
    x->retry_after_ms = -1;
    x->retry_after_exact = false;
    x->bytes = 0;
    x->got_token = x->timed_out = x->complete = false;
    x->local = AP_OK;
    x->local_msg[0] = '\0';
    x->curl_err[0] = '\0';
    buf_free(&x->resp);
    buf_init(&x->resp, p->max_body);

    llm_wire_message msgs[3] = {{"user", req->prompt}};
    size_t n_msgs = 1;
    char repair[512];
    if (x->repair_answer != NULL) {
        snprintf(repair, sizeof repair,
                 "Your answer is not valid for the required JSON Schema (%s). Reply again with "
                 "only the corrected JSON.",
                 x->repair_why);
        msgs[1] = (llm_wire_message){"assistant", x->repair_answer};
        msgs[2] = (llm_wire_message){"user", repair};
        n_msgs = 3;
    }
    llm_wire_request wr = {
        .model = x->models[x->model_idx],
        .system = x->system,
        .messages = msgs,
        .n_messages = n_msgs,
        .max_tokens = req->max_tokens > 0 && req->max_tokens < 1000000 ? (int)req->max_tokens : 0,
        .temperature = req->temperature,
        .stream = req->stream,
        .schema = x->schema,
        .schema_mode = p->native_schema ? LLM_WIRE_SCHEMA_NATIVE : LLM_WIRE_SCHEMA_INSTRUCT,
        .max_tokens_key = jsonx_string(p->cfg, "max_tokens_field"),
    };
    x->body = p->d->build(&wr, err);
    if (x->body == NULL)
        return err != NULL ? err->status : AP_ERROR;
    if (req->stream) {
        x->dec = p->d->dec_new(&p->limits, on_delta, x);
        if (x->dec == NULL) {
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
            goto fail;
        }
    }
    x->sh = &p->shards[0];
    for (int i = 1; i < p->n_shards; i++)
        if (p->shards[i].active < x->sh->active)
            x->sh = &p->shards[i];
    x->easy = handle_get(x->sh);
    if (x->easy == NULL) {
        rc = ap_err_set(err, AP_NOMEM, "cannot create a transfer");
        goto fail;
    }
    x->sh->active++;
    p->active++;
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(x->body));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, p->headers[req->stream ? 1 : 0]);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->curl_err);
    x->timer = llm_loop_timer_add(p->loop, p->first_token_ms, on_first_token_timeout, x);
    if (x->timer == NULL || curl_multi_add_handle(x->sh->multi, e) != CURLM_OK) {
        rc = ap_err_set(err, AP_NOMEM, "cannot start a transfer");
        goto fail;
    }
    x->state = X_RUNNING;
    return AP_OK;
fail:
    detach(x);
    return rc;
}

/* ---- finishing -------------------------------------------------------------------------- */

static double price(const hp *p, const char *model, const char *kind)
{
    const cJSON *prices = cJSON_GetObjectItemCaseSensitive(p->cfg, "prices");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(prices, model);
    double v = jsonx_number(m, kind, 0);
    return isfinite(v) && v > 0 ? v : 0;
}

static void finish(xfer *x, ap_status st, const char *text, const char *data, const char *error)
{
    hp *p = x->p;
    const char *model = x->models[x->model_idx];
    llm_response r = {
        .status = st,
        .text = text,
        .data_json = data,
        .prompt_tokens = x->prompt_tokens,
        .completion_tokens = x->completion_tokens,
        .provider = p->d->name,
        .model = model,
        .attempts = x->attempts,
        .latency_ms = llm_loop_now_ms() - x->started_ms,
        .cost_usd = ((double)x->prompt_tokens * price(p, model, "prompt") +
                     (double)x->completion_tokens * price(p, model, "completion")) /
                    1e6,
        .error = error,
    };
    llm_call *call = x->call;
    x->call = NULL;
    /* r borrows from x (the model name): free x only after the callback */
    llm_call_finish(call, &r);
    xfer_free(x);
}

static void admit(xfer *x);

static void on_backoff(llm_loop *loop, void *ud)
{
    (void)loop;
    xfer *x = ud;
    x->timer = NULL;
    x->state = X_IDLE;
    admit(x);
}

/* Retries, moves to a fallback model, or fails; status and message describe the failure. */
static void failed(xfer *x, bool retryable, bool next_model, ap_status st, const char *msg)
{
    hp *p = x->p;
    char error[400];
    snprintf(error, sizeof error, "%s: %s (model %s, %d attempt%s)", p->d->name, msg,
             x->models[x->model_idx], x->attempts, x->attempts == 1 ? "" : "s");
    /* Deltas already shown cannot be taken back; a retry would repeat them, so the rest of
     * the call streams nothing and the final message carries the whole answer. */
    if (x->delivered > 0)
        x->mute = true;
    /* A provider that asks for a long wait (rate limited for the hour) is not waited for: the
     * panel would sit in running meanwhile. The call moves on to a fallback model, or fails. */
    if (retryable && x->retry_after_ms > p->retry_after_max_ms) {
        retryable = false;
        next_model = true;
        size_t used = strlen(error);
        snprintf(error + used, sizeof error - used,
                 "; it asked to retry after %lld s, longer than retry_after_max_ms",
                 (long long)(x->retry_after_ms / 1000));
    }
    if (retryable && x->model_attempts < p->max_attempts) {
        log_info("llm call attempt failed, retrying: %s", error);
        int64_t wait = llm_wire_backoff_ms(x->model_attempts, p->backoff_base_ms, p->backoff_cap_ms,
                                           jitter(), x->retry_after_ms);
        x->state = X_BACKOFF;
        x->timer = llm_loop_timer_add(p->loop, wait, on_backoff, x);
        if (x->timer != NULL)
            return;
    }
    if ((retryable || next_model) && x->model_idx + 1 < x->n_models) {
        x->model_idx++;
        x->model_attempts = 0;
        free(x->repair_answer);
        x->repair_answer = NULL;
        x->repaired = false;
        log_info("llm call moves to fallback model %s: %s", x->models[x->model_idx], error);
        admit(x);
        return;
    }
    log_warn("llm call failed: %s", error);
    finish(x, st, NULL, NULL, error);
}

static ap_status status_of_http(int http)
{
    if (http == 401 || http == 403)
        return AP_DENIED;
    if (http == 404)
        return AP_NOTFOUND;
    if (http == 429)
        return AP_LIMIT;
    if (http >= 400 && http < 500)
        return AP_INVALID;
    return AP_IO;
}

static void succeeded(xfer *x, llm_wire_reply *reply)
{
    if (reply->usage.present) {
        x->prompt_tokens += reply->usage.prompt_tokens;
        x->completion_tokens += reply->usage.completion_tokens;
    } else {
        /* Some OpenAI-compatible servers report no usage; ~4 bytes a token keeps budgets and
         * costs from reading zero. */
        const llm_request *req = llm_call_request(x->call);
        x->prompt_tokens += (int64_t)((strlen(x->system) + strlen(req->prompt)) / 4 + 1);
        x->completion_tokens += (int64_t)(reply->text.len / 4 + 1);
    }
    const char *text = reply->text.data != NULL ? reply->text.data : "";
    if (x->schema == NULL) {
        finish(x, AP_OK, text, NULL, NULL);
        return;
    }
    char why[200] = "no JSON value in the answer";
    cJSON *v = llm_schema_extract(text, reply->text.len);
    if (v != NULL && llm_schema_check(x->schema, v, why, sizeof why)) {
        char *data = jsonx_print(v);
        cJSON_Delete(v);
        if (data == NULL) {
            finish(x, AP_NOMEM, NULL, NULL, "out of memory");
            return;
        }
        finish(x, AP_OK, text, data, NULL);
        free(data);
        return;
    }
    cJSON_Delete(v);
    if (!x->repaired) {
        /* one repair round: the model sees its answer and what is wrong with it */
        x->repaired = true;
        x->repair_answer = strdup(text);
        snprintf(x->repair_why, sizeof x->repair_why, "%s", why);
        if (x->repair_answer != NULL) {
            x->mute = x->delivered > 0;
            x->model_attempts--; /* a repair is not a transient-failure retry */
            admit(x);
            return;
        }
    }
    char msg[300];
    snprintf(msg, sizeof msg, "answer does not match the schema: %s", why);
    failed(x, false, false, AP_INVALID, msg);
}

/* Ends a failed attempt: frees its decoder, bills what the provider reported before it
 * failed (a stream that broke midway was charged its prompt all the same), then retries,
 * moves on or fails. A successful attempt is billed in succeeded. */
static void attempt_failed(xfer *x, void *dec, bool retryable, bool next_model, ap_status st,
                           const char *msg)
{
    if (dec != NULL) {
        const llm_wire_reply *r = x->p->d->dec_reply(dec);
        if (r->usage.present) {
            x->prompt_tokens += r->usage.prompt_tokens;
            x->completion_tokens += r->usage.completion_tokens;
        }
        x->p->d->dec_free(dec);
    }
    failed(x, retryable, next_model, st, msg);
}

static void end_attempt(xfer *x, CURLcode cc)
{
    hp *p = x->p;
    char msg[300];
    llm_wire_reply body_reply;
    bool have_body_reply = false;
    long status = x->status;
    if (status == 0 && x->easy != NULL)
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    void *dec = x->dec;
    x->dec = NULL; /* kept past detach: the reply lives in it */
    detach(x);
    x->state = X_IDLE;

    if (x->timed_out) {
        attempt_failed(x, dec, true, false, AP_TIMEOUT, "no answer before the first-token timeout");
        return;
    }
    if (x->local != AP_OK) {
        snprintf(msg, sizeof msg, "bad response: %s", x->local_msg);
        attempt_failed(x, dec, true, false, x->local, msg);
        return;
    }
    llm_wire_reply *reply = dec != NULL ? p->d->dec_reply(dec) : NULL;
    if (reply != NULL && reply->failed) {
        snprintf(msg, sizeof msg, "provider error %.60s: %.200s", reply->error.type,
                 reply->error.message);
        bool retry = reply->error.retryable;
        attempt_failed(x, dec, retry, false, retry ? AP_IO : AP_ERROR, msg);
        return;
    }
    if (cc != CURLE_OK && !(x->complete && cc == CURLE_WRITE_ERROR) &&
        (status == 0 || status == 200)) {
        snprintf(msg, sizeof msg, "%s", x->curl_err[0] ? x->curl_err : curl_easy_strerror(cc));
        attempt_failed(x, dec, true, false, cc == CURLE_OPERATION_TIMEDOUT ? AP_TIMEOUT : AP_IO,
                       msg);
        return;
    }
    if (status != 200) {
        llm_wire_error e;
        llm_wire_classify_http((int)status, x->resp.data, x->resp.len, &e);
        snprintf(msg, sizeof msg, "HTTP %ld%s%.60s: %.200s", status, e.type[0] ? " " : "", e.type,
                 e.message);
        attempt_failed(x, dec, e.retryable, status == 404,
                       e.retryable ? AP_IO : status_of_http((int)status), msg);
        return;
    }
    ap_err err;
    ap_err_clear(&err);
    if (dec != NULL) {
        if (p->d->dec_finish(dec, &err) != AP_OK) {
            snprintf(msg, sizeof msg, "stream: %s", err.msg);
            attempt_failed(x, dec, true, false, AP_IO, msg);
            return;
        }
        succeeded(x, reply);
        p->d->dec_free(dec);
        return;
    }
    llm_wire_reply_init(&body_reply, p->limits.max_text);
    have_body_reply = true;
    ap_status rc = p->d->parse(x->resp.data != NULL ? x->resp.data : "", x->resp.len, &p->limits,
                               &body_reply, &err);
    if (rc != AP_OK) {
        bool retry = !body_reply.failed || body_reply.error.retryable;
        ap_status st = !body_reply.failed ? rc : retry ? AP_IO : AP_ERROR;
        snprintf(msg, sizeof msg, "%s", err.msg);
        failed(x, retry, false, st, msg);
    } else {
        succeeded(x, &body_reply);
    }
    if (have_body_reply)
        llm_wire_reply_free(&body_reply);
}

/* ---- admission and the queue ------------------------------------------------------------ */

static void admit(xfer *x)
{
    hp *p = x->p;
    if (p->active >= p->max_concurrency) {
        x->state = X_QUEUED;
        x->next = NULL;
        if (p->queue_tail != NULL)
            p->queue_tail->next = x;
        else
            p->queue = x;
        p->queue_tail = x;
        return;
    }
    ap_err err;
    ap_err_clear(&err);
    if (begin_attempt(x, &err) != AP_OK) {
        char msg[300];
        snprintf(msg, sizeof msg, "%s", err.msg[0] ? err.msg : "cannot start the request");
        finish(x, err.status != AP_OK ? err.status : AP_ERROR, NULL, NULL, msg);
    }
}

static void pump(hp *p)
{
    while (p->queue != NULL && p->active < p->max_concurrency) {
        xfer *x = p->queue;
        p->queue = x->next;
        if (p->queue == NULL)
            p->queue_tail = NULL;
        x->next = NULL;
        x->state = X_IDLE;
        admit(x);
    }
}

static void unqueue(hp *p, xfer *x)
{
    xfer **pp = &p->queue;
    xfer *prev = NULL;
    while (*pp != NULL && *pp != x) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp == NULL)
        return;
    *pp = x->next;
    if (p->queue_tail == x)
        p->queue_tail = prev;
    x->next = NULL;
}

/* ---- the provider operations ------------------------------------------------------------ */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* The request headers of every call: JSON in, the dialect's authentication, the configured
 * extra headers, and for streams the event-stream Accept. NULL when out of memory. */
static struct curl_slist *build_headers(const hp *p, bool stream)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (h != NULL)
        h = curl_slist_append(h, "Expect:");
    if (h != NULL && stream)
        h = curl_slist_append(h, "Accept: text/event-stream");
    if (h != NULL)
        h = p->d->auth_headers(h, p->api_key != NULL ? p->api_key : "");
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(p->cfg, "headers");
    const cJSON *e = NULL;
    cJSON_ArrayForEach(e, extra)
    {
        char line[1024];
        if (h == NULL || !cJSON_IsString(e) || e->string == NULL)
            continue;
        snprintf(line, sizeof line, "%.200s: %.800s", e->string, e->valuestring);
        h = curl_slist_append(h, line);
    }
    return h;
}

ap_status llm_http_create(const llm_http_dialect *d, llm_loop *loop, const cJSON *cfg, void **self,
                          ap_err *err)
{
    *self = NULL;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return ap_err_set(err, AP_IO, "%s: cannot initialise libcurl", d->name);
    hp *p = calloc(1, sizeof *p);
    if (p == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    p->d = d;
    p->loop = loop;
    p->cfg = cfg;
    const char *base = jsonx_string(cfg, "base_url");
    if (base == NULL || base[0] == '\0')
        base = getenv(d->base_env);
    if (base == NULL || base[0] == '\0')
        base = d->default_base;
    const char *key = jsonx_string(cfg, "api_key");
    if (key == NULL || key[0] == '\0')
        key = getenv(d->key_env);
    p->base_url = strdup(base);
    p->api_key = dup_or_null(key);
    size_t blen = p->base_url != NULL ? strlen(p->base_url) : 0;
    while (blen > 0 && p->base_url[blen - 1] == '/')
        p->base_url[--blen] = '\0';
    size_t ulen = blen + strlen(d->path) + 1;
    p->url = malloc(ulen);
    if (p->base_url == NULL || p->url == NULL || (key != NULL && key[0] && p->api_key == NULL)) {
        llm_http_destroy(p);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    snprintf(p->url, ulen, "%s%s", p->base_url, d->path);
    if (strncmp(p->url, "http://", 7) != 0 && strncmp(p->url, "https://", 8) != 0) {
        llm_http_destroy(p);
        return ap_err_set(err, AP_INVALID, "%s: base URL must start with http:// or https://",
                          d->name);
    }
    const char *model = jsonx_string(cfg, "model");
    p->default_model = model != NULL && model[0] != '\0' ? model : d->default_model;
    p->max_concurrency = (int)cfg_int(cfg, "max_concurrency");
    p->max_attempts = (int)cfg_int(cfg, "max_attempts");
    p->backoff_base_ms = cfg_int(cfg, "backoff_base_ms");
    p->backoff_cap_ms = cfg_int(cfg, "backoff_cap_ms");
    p->retry_after_max_ms = cfg_int(cfg, "retry_after_max_ms");
    p->connect_ms = cfg_int(cfg, "connect_timeout_ms");
    p->first_token_ms = cfg_int(cfg, "first_token_timeout_ms");
    p->idle_ms = cfg_int(cfg, "idle_timeout_ms");
    p->total_ms = cfg_int(cfg, "total_timeout_ms");
    p->max_body = (size_t)cfg_int(cfg, "max_response_bytes");
    p->max_stream = (size_t)cfg_int(cfg, "max_stream_bytes");
    p->limits = llm_wire_default_limits();
    p->limits.max_text = (size_t)cfg_int(cfg, "max_answer_bytes");
    if (p->limits.max_event > p->max_body)
        p->limits.max_event = p->max_body;
    /* auto: HTTP/2 where TLS negotiates it, else HTTP/1.1; "2" also speaks HTTP/2 in clear
     * text (prior knowledge), as servers behind an h2c proxy do. Where HTTP/2 is possible a
     * new transfer waits for the connection being set up instead of opening its own, so a
     * burst multiplexes over few connections; over HTTP/1.1 waiting would serialise it. */
    const char *version = jsonx_string(cfg, "http_version");
    bool https = strncmp(p->url, "https://", 8) == 0;
    if (version == NULL || strcmp(version, "auto") == 0) {
        p->http_version = CURL_HTTP_VERSION_2TLS;
        p->pipewait = https;
    } else if (strcmp(version, "2") == 0) {
        /* libcurl 7.88 breaks a clear-text HTTP/2 connection when it reuses it (curl issue
         * 10634, fixed in 7.89): refuse rather than fail every call after the first */
        unsigned v = curl_version_info(CURLVERSION_NOW)->version_num;
        if (!https && v >= 0x075800 && v < 0x075900) {
            llm_http_destroy(p);
            return ap_err_set(err, AP_INVALID,
                              "%s: http_version \"2\" over http:// needs libcurl 7.89 or newer "
                              "(this is %s); use https:// or \"1.1\"",
                              d->name, curl_version_info(CURLVERSION_NOW)->version);
        }
        p->http_version = https ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
        p->pipewait = true;
    } else { /* "1.1", the one value left that llm_http_check allows */
        p->http_version = CURL_HTTP_VERSION_1_1;
    }
    long streams = (long)cfg_int(cfg, "max_streams_per_connection");
    p->ca_file = jsonx_string(cfg, "ca_file");
    p->headers[0] = build_headers(p, false);
    p->headers[1] = build_headers(p, true);
    if (p->headers[0] == NULL || p->headers[1] == NULL) {
        llm_http_destroy(p);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    const char *mode = jsonx_string(cfg, "schema_mode");
    p->native_schema = d->native_schema && (mode == NULL || strcmp(mode, "instruct") != 0);
    int shard_size = p->pipewait && streams < SHARD_TRANSFERS ? (int)streams : SHARD_TRANSFERS;
    p->n_shards = (p->max_concurrency + shard_size - 1) / shard_size;
    if (p->n_shards > MAX_SHARDS)
        p->n_shards = MAX_SHARDS;
    p->shards = calloc((size_t)p->n_shards, sizeof *p->shards);
    if (p->shards == NULL) {
        llm_http_destroy(p);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    long per_shard = (long)(p->max_concurrency / p->n_shards + 1);
    for (int i = 0; i < p->n_shards; i++) {
        shard *sh = &p->shards[i];
        sh->p = p;
        sh->multi = curl_multi_init();
        sh->cap_idle = (int)per_shard;
        if (sh->multi == NULL) {
            llm_http_destroy(p);
            return ap_err_set(err, AP_NOMEM, "%s: cannot create a curl multi handle", d->name);
        }
        curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
        curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
        curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
        curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
        curl_multi_setopt(sh->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
        curl_multi_setopt(sh->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, streams);
        /* keep as many idle connections as transfers may run, so bursts reuse them */
        curl_multi_setopt(sh->multi, CURLMOPT_MAXCONNECTS, per_shard);
    }
    *self = p;
    return AP_OK;
}

void llm_http_destroy(void *self)
{
    hp *p = self;
    if (p == NULL)
        return;
    while (p->dead != NULL) {
        xfer *x = p->dead;
        p->dead = x->next;
        detach(x);
        xfer_free(x);
    }
    for (int i = 0; p->shards != NULL && i < p->n_shards; i++) {
        shard *sh = &p->shards[i];
        llm_loop_timer_cancel(p->loop, sh->timer);
        for (int k = 0; k < sh->n_idle; k++)
            curl_easy_cleanup(sh->idle[k]);
        free(sh->idle);
        if (sh->multi != NULL)
            curl_multi_cleanup(sh->multi);
    }
    free(p->shards);
    curl_slist_free_all(p->headers[0]);
    curl_slist_free_all(p->headers[1]);
    free(p->base_url);
    free(p->url);
    free(p->api_key);
    free(p);
}

static void add_models(xfer *x, const cJSON *list)
{
    const cJSON *m = NULL;
    cJSON_ArrayForEach(m, list)
    {
        if (cJSON_IsString(m) && m->valuestring[0] != '\0' && x->n_models < MAX_MODELS)
            x->models[x->n_models++] = m->valuestring;
    }
}

ap_status llm_http_start(void *self, llm_call *call, ap_err *err)
{
    hp *p = self;
    const llm_request *req = llm_call_request(call);
    xfer *x = calloc(1, sizeof *x);
    if (x == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    x->p = p;
    x->call = call;
    x->started_ms = llm_loop_now_ms();
    buf_init(&x->resp, p->max_body);
    if (req->expert_json != NULL)
        x->expert = jsonx_parse(req->expert_json, strlen(req->expert_json), SCHEMA_DEPTH, NULL);
    const char *model = req->model;
    if (model == NULL || model[0] == '\0')
        model = jsonx_string(x->expert, "model");
    if (model == NULL || model[0] == '\0')
        model = p->default_model;
    x->models[x->n_models++] = model;
    add_models(x, cJSON_GetObjectItemCaseSensitive(x->expert, "fallback_models"));
    add_models(x, cJSON_GetObjectItemCaseSensitive(p->cfg, "fallback_models"));
    x->system = compose_system(x->expert, req->system);
    if (x->system == NULL) {
        xfer_free(x);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    if (req->schema_json != NULL) {
        ap_err inner;
        x->schema = jsonx_parse(req->schema_json, strlen(req->schema_json), SCHEMA_DEPTH, &inner);
        if (!cJSON_IsObject(x->schema)) {
            xfer_free(x);
            return ap_err_set(err, AP_INVALID, "%s: the answer schema is not a JSON object",
                              p->d->name);
        }
    }
    llm_call_set_data(call, x);
    if (p->active >= p->max_concurrency) {
        admit(x); /* queues */
        return AP_OK;
    }
    ap_status rc = begin_attempt(x, err);
    if (rc != AP_OK) {
        llm_call_set_data(call, NULL);
        xfer_free(x);
        return rc;
    }
    return AP_OK;
}

void llm_http_cancel(void *self, llm_call *call)
{
    hp *p = self;
    xfer *x = llm_call_data(call);
    if (x == NULL)
        return;
    llm_call_set_data(call, NULL);
    x->call = NULL;
    switch (x->state) {
    case X_QUEUED:
        unqueue(p, x);
        xfer_free(x);
        return;
    case X_BACKOFF:
    case X_IDLE:
        detach(x);
        xfer_free(x);
        return;
    case X_RUNNING:
        if (p->depth > 0) {
            /* inside a curl callback: removing the handle now would pull the rug from curl */
            x->next = p->dead;
            p->dead = x;
            return;
        }
        detach(x); /* removing the transfer closes its connection at once */
        xfer_free(x);
        pump(p);
        return;
    }
}
