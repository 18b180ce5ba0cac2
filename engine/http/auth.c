/* auth.c - layer 1 of tenant isolation: who is calling, and may they call this route.
 *
 * Tenant routes take `Authorization: Bearer <key>`; the key resolves to a tenant and a role.
 * `X-Tenant-ID`, when sent, must name the key's tenant. The operator key is accepted only on
 * operator routes and never stands in for a tenant. A stream token (?token=) stands for the key
 * that asked for it, and only while that key is active. */
#include "core/ids.h"
#include "core/log.h"
#include "http/api.h"
#include "http/ratelimit.h"
#include "http/token.h"
#include "cache/cache.h"
#include "core/clock.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BEARER "Bearer "

static const char *bearer_token(const http_request *req)
{
    const char *h = http_header(req, "Authorization");
    if (h == NULL || strncasecmp(h, BEARER, strlen(BEARER)) != 0)
        return NULL;
    h += strlen(BEARER);
    while (*h == ' ')
        h++;
    return *h != '\0' ? h : NULL;
}

static bool is_operator_key(const api_deps *d, const char *token)
{
    const char *op = d->cfg->operator_key;
    if (op == NULL || op[0] == '\0')
        return false;
    return ids_equal_ct(op, strlen(op), token, strlen(token));
}

static void deny(http_request *req, unsigned status, const char *code, const char *msg)
{
    if (status == 401)
        http_add_header(req, "WWW-Authenticate", "Bearer realm=\"askpanel\"");
    http_reply_error(req, status, code, "%s", msg);
}

#define LIMITS_TTL_MS 30000

/* The tenant's requests_per_minute (0: unlimited), cached briefly so limits cost no query per
 * request. A store error counts as unlimited: the limiter must not take the API down. */
static int64_t tenant_rpm(api_deps *d, const char *tenant)
{
    char *cached = NULL;
    size_t len = 0;
    if (d->cache != NULL && cache_get(d->cache, tenant, "limits:rpm", &cached, &len) == AP_OK) {
        int64_t v = strtoll(cached, NULL, 10);
        free(cached);
        return v;
    }
    int64_t rpm = api_tenant_limit(d, tenant, "requests_per_minute");
    if (d->cache != NULL) {
        char text[32];
        int n = snprintf(text, sizeof text, "%lld", (long long)rpm);
        cache_set(d->cache, tenant, "limits:rpm", text, (size_t)n, LIMITS_TTL_MS);
    }
    return rpm;
}

/* Replies 429 with Retry-After when the tenant is over its request rate. */
static bool within_rate(api_deps *d, http_request *req, const char *tenant)
{
    int64_t retry_ms = 0;
    if (d->ratelimit == NULL ||
        ratelimit_take(d->ratelimit, tenant, tenant_rpm(d, tenant), clock_mono_ms(), &retry_ms))
        return true;
    char secs[24];
    snprintf(secs, sizeof secs, "%lld", (long long)(retry_ms + 999) / 1000);
    http_add_header(req, "Retry-After", secs);
    http_reply_error(req, 429, "rate_limited",
                     "this tenant's request rate limit is reached; retry in %s s", secs);
    return false;
}

ap_status api_key_active(api_deps *d, const char *tenant, const char *key_id, int64_t max_age_ms,
                         ap_err *err)
{
    char name[64];
    snprintf(name, sizeof name, "key-active:%s", key_id);
    char *cached = NULL;
    size_t len = 0;
    if (max_age_ms > 0 && d->cache != NULL &&
        cache_get(d->cache, tenant, name, &cached, &len) == AP_OK) {
        free(cached);
        return AP_OK;
    }
    store_key key;
    ap_status rc = store_key_get(d->store, tenant, key_id, &key, err);
    if (rc == AP_NOTFOUND || (rc == AP_OK && key.revoked_at != 0))
        return ap_err_set(err, AP_DENIED, "this API key has been revoked");
    if (rc == AP_OK && max_age_ms > 0 && d->cache != NULL)
        cache_set(d->cache, tenant, name, "1", 1, max_age_ms);
    return rc;
}

bool api_authenticate(http_request *req, unsigned flags, void *app)
{
    api_deps *d = app;
    http_principal *p = http_principal_of(req);
    const char *token = bearer_token(req);
    const char *stream_token = http_query(req, "token");
    if (token == NULL && stream_token != NULL && (flags & HTTP_STREAM_TOKEN)) {
        const char *given = http_param(req, "id");
        char panel[IDS_UUID_LEN + 1], tenant[IDS_UUID_LEN + 1], key_id[IDS_UUID_LEN + 1];
        /* The token names the id as the API wrote it; the path may spell it another way
         * the API accepts (upper case). */
        if (given == NULL || !ids_uuid_normalize(given, panel) ||
            !token_verify(stream_token, panel, tenant, key_id)) {
            deny(req, 401, "unauthenticated", "the stream token is invalid or has expired");
            return false;
        }
        /* Asked of the store each time, not cached: a token opens a long stream, so this is
         * one lookup per stream, and a revoked key's tokens stop at once. */
        ap_err err = {0};
        ap_status rc = api_key_active(d, tenant, key_id, 0, &err);
        if (rc == AP_DENIED) {
            deny(req, 401, "unauthenticated",
                 "the API key that issued this stream token has been revoked");
            return false;
        }
        if (rc != AP_OK) {
            http_reply_ap_err(req, &err);
            return false;
        }
        if (!within_rate(d, req, tenant))
            return false;
        p->authenticated = true;
        p->role = STORE_ROLE_MEMBER;
        memcpy(p->tenant_id, tenant, sizeof tenant);
        memcpy(p->key_id, key_id, sizeof key_id);
        return true;
    }
    if (token == NULL) {
        deny(req, 401, "unauthenticated", "an API key is required (Authorization: Bearer ...)");
        return false;
    }
    if (flags & HTTP_AUTH_OPERATOR) {
        if (!is_operator_key(d, token)) {
            deny(req, 403, "forbidden", "this route needs the operator key");
            return false;
        }
        p->authenticated = true;
        p->operator_key = true;
        return true;
    }
    if (is_operator_key(d, token)) {
        deny(req, 403, "forbidden", "the operator key is only accepted on /v1/admin routes");
        return false;
    }
    store_key key;
    ap_err err = {0};
    ap_status rc = store_key_resolve(d->store, token, &key, &err);
    if (rc == AP_NOTFOUND || rc == AP_DENIED || rc == AP_INVALID) {
        deny(req, 401, "unauthenticated",
             rc == AP_DENIED ? "this API key has been revoked" : "invalid API key");
        return false;
    }
    if (rc != AP_OK) {
        http_reply_ap_err(req, &err);
        return false;
    }
    const char *claimed = http_header(req, "X-Tenant-ID");
    if (claimed != NULL) {
        char norm[IDS_UUID_LEN + 1];
        if (!ids_uuid_normalize(claimed, norm) || strcmp(norm, key.tenant_id) != 0) {
            log_fields f = {.request_id = http_request_id(req),
                            .tenant_id = key.tenant_id,
                            .event = "security"};
            log_msg(LOG_LEVEL_WARN, &f, "X-Tenant-ID does not match the API key's tenant");
            deny(req, 403, "forbidden", "X-Tenant-ID does not match the API key's tenant");
            return false;
        }
    }
    if ((flags & HTTP_AUTH_ADMIN) && key.role != STORE_ROLE_ADMIN) {
        deny(req, 403, "forbidden", "this route needs an admin key");
        return false;
    }
    if (!within_rate(d, req, key.tenant_id))
        return false;
    p->authenticated = true;
    p->role = (int)key.role;
    memcpy(p->tenant_id, key.tenant_id, sizeof key.tenant_id);
    memcpy(p->key_id, key.id, sizeof key.id);
    return true;
}
