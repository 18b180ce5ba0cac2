#include "cache/cache.h"

#include "cache/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ap_status cache_open(const char *url, size_t max_entries, cache **out, ap_err *err)
{
    if (url == NULL || strcmp(url, "memory") == 0)
        return cache_memory_open(max_entries, out, err);
    if (strncmp(url, "redis://", 8) == 0)
        return cache_redis_open(url, out, err);
    return ap_err_set(err, AP_INVALID, "cache: \"%s\" is neither \"memory\" nor redis://...", url);
}

void cache_close(cache *c)
{
    if (c != NULL)
        c->ops->close(c);
}

const char *cache_backend(const cache *c)
{
    return c->ops->name;
}

ap_status cache_get(cache *c, const char *tenant_id, const char *key, char **value, size_t *len)
{
    char k[CACHE_KEY_MAX];
    cache_key(tenant_id, key, k, sizeof k);
    return c->ops->get(c, k, value, len);
}

void cache_set(cache *c, const char *tenant_id, const char *key, const char *value, size_t len,
               int64_t ttl_ms)
{
    if (len > CACHE_VALUE_MAX || ttl_ms <= 0)
        return;
    char k[CACHE_KEY_MAX];
    cache_key(tenant_id, key, k, sizeof k);
    c->ops->set(c, k, value, len, ttl_ms);
}

void cache_del(cache *c, const char *tenant_id, const char *key)
{
    char k[CACHE_KEY_MAX];
    cache_key(tenant_id, key, k, sizeof k);
    c->ops->del(c, k);
}

void cache_key(const char *tenant_id, const char *key, char *out, size_t cap)
{
    snprintf(out, cap, "t:{%s}:%s", tenant_id, key);
}

ap_status cache_ping(cache *c)
{
    return c->ops->ping(c);
}
