/* redis.c - the Redis cache backend on hiredis.
 *
 * One connection guarded by a mutex, with short timeouts: the cache must never be what makes
 * a request slow. When Redis fails, the connection is dropped, calls degrade (miss / no-op)
 * and a reconnect is tried at most once a second. */
#include "cache/backend.h"
#include "core/clock.h"
#include "core/log.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define REDIS_TIMEOUT_MS 250
#define RECONNECT_EVERY_MS 1000
#define WARN_EVERY_MS 10000

typedef struct rcache {
    cache base;
    pthread_mutex_t lock;
    redisContext *ctx;
    char host[256];
    int port;
    char password[256];
    int db;
    int64_t next_attempt_ms;
    int64_t last_warning_ms;
} rcache;

static void warn_degraded(rcache *r, const char *what)
{
    int64_t now = clock_mono_ms();
    if (now - r->last_warning_ms < WARN_EVERY_MS && r->last_warning_ms != 0)
        return;
    r->last_warning_ms = now;
    log_warn("cache: redis %s:%d unavailable (%s); serving from the store", r->host, r->port, what);
}

static void drop(rcache *r, const char *why)
{
    warn_degraded(r, why);
    redisFree(r->ctx);
    r->ctx = NULL;
    r->next_attempt_ms = clock_mono_ms() + RECONNECT_EVERY_MS;
}

/* Runs a command whose reply is only checked for errors (AUTH, SELECT). */
static bool simple_command(rcache *r, const char *fmt, const char *arg, int n)
{
    redisReply *rep = arg != NULL ? redisCommand(r->ctx, fmt, arg) : redisCommand(r->ctx, fmt, n);
    bool ok = rep != NULL && rep->type != REDIS_REPLY_ERROR;
    freeReplyObject(rep);
    return ok;
}

/* Makes sure there is a live connection; called with the lock held. */
static bool connected(rcache *r)
{
    if (r->ctx != NULL)
        return true;
    if (clock_mono_ms() < r->next_attempt_ms)
        return false;
    struct timeval tv = {0, REDIS_TIMEOUT_MS * 1000};
    r->ctx = redisConnectWithTimeout(r->host, r->port, tv);
    if (r->ctx == NULL || r->ctx->err) {
        drop(r, r->ctx ? r->ctx->errstr : "cannot allocate");
        return false;
    }
    redisSetTimeout(r->ctx, tv);
    if ((r->password[0] && !simple_command(r, "AUTH %s", r->password, 0)) ||
        (r->db != 0 && !simple_command(r, "SELECT %d", NULL, r->db))) {
        drop(r, "AUTH/SELECT refused");
        return false;
    }
    if (r->last_warning_ms != 0)
        log_info("cache: redis %s:%d is back", r->host, r->port);
    r->last_warning_ms = 0;
    return true;
}

static ap_status rd_get(cache *c, const char *key, char **value, size_t *len)
{
    rcache *r = (rcache *)c;
    ap_status rc = AP_NOTFOUND;
    pthread_mutex_lock(&r->lock);
    if (!connected(r))
        goto out;
    redisReply *rep = redisCommand(r->ctx, "GET %s", key);
    if (rep == NULL) {
        drop(r, r->ctx->errstr);
        goto out;
    }
    if (rep->type == REDIS_REPLY_STRING && rep->len <= CACHE_VALUE_MAX) {
        char *copy = malloc(rep->len + 1);
        if (copy != NULL) {
            memcpy(copy, rep->str, rep->len);
            copy[rep->len] = '\0';
            *value = copy;
            *len = rep->len;
            rc = AP_OK;
        }
    }
    freeReplyObject(rep);
out:
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static void rd_set(cache *c, const char *key, const char *value, size_t len, int64_t ttl_ms)
{
    rcache *r = (rcache *)c;
    pthread_mutex_lock(&r->lock);
    if (connected(r)) {
        redisReply *rep =
            redisCommand(r->ctx, "SET %s %b PX %lld", key, value, len, (long long)ttl_ms);
        if (rep == NULL)
            drop(r, r->ctx->errstr);
        freeReplyObject(rep);
    }
    pthread_mutex_unlock(&r->lock);
}

static void rd_del(cache *c, const char *key)
{
    rcache *r = (rcache *)c;
    pthread_mutex_lock(&r->lock);
    if (connected(r)) {
        redisReply *rep = redisCommand(r->ctx, "DEL %s", key);
        if (rep == NULL)
            drop(r, r->ctx->errstr);
        freeReplyObject(rep);
    }
    pthread_mutex_unlock(&r->lock);
}

static ap_status rd_ping(cache *c)
{
    rcache *r = (rcache *)c;
    ap_status rc = AP_IO;
    pthread_mutex_lock(&r->lock);
    if (connected(r)) {
        redisReply *rep = redisCommand(r->ctx, "PING");
        if (rep == NULL)
            drop(r, r->ctx->errstr);
        else if (rep->type == REDIS_REPLY_STATUS)
            rc = AP_OK;
        freeReplyObject(rep);
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static void rd_close(cache *c)
{
    rcache *r = (rcache *)c;
    redisFree(r->ctx);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static const cache_ops redis_ops = {"redis", rd_get, rd_set, rd_del, rd_ping, rd_close};

/* Parses redis://[:password@]host[:port][/db]. */
static ap_status parse_url(rcache *r, const char *url, ap_err *err)
{
    const char *p = url + strlen("redis://");
    const char *at = strchr(p, '@');
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon != NULL ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= sizeof r->password)
            return ap_err_set(err, AP_INVALID, "cache: the redis password is too long");
        memcpy(r->password, pw, n);
        r->password[n] = '\0';
        p = at + 1;
    }
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof r->host)
        return ap_err_set(err, AP_INVALID, "cache: the redis URL has no host");
    memcpy(r->host, p, hl);
    r->host[hl] = '\0';
    p += hl;
    r->port = 6379;
    if (*p == ':') {
        char *end = NULL;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port <= 0 || port > 65535 || (*end != '\0' && *end != '/'))
            return ap_err_set(err, AP_INVALID, "cache: the redis URL has a bad port");
        r->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1] != '\0') {
        char *end = NULL;
        long db = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end != '\0' || db < 0 || db > 1024)
            return ap_err_set(err, AP_INVALID, "cache: the redis URL has a bad database number");
        r->db = (int)db;
    }
    return AP_OK;
}

ap_status cache_redis_open(const char *url, cache **out, ap_err *err)
{
    rcache *r = calloc(1, sizeof *r);
    if (r == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    r->base.ops = &redis_ops;
    ap_status rc = parse_url(r, url, err);
    if (rc != AP_OK) {
        free(r);
        return rc;
    }
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_lock(&r->lock);
    connected(r);
    pthread_mutex_unlock(&r->lock);
    *out = &r->base;
    return AP_OK;
}
