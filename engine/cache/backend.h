/* backend.h - internal: what a cache backend implements. Not part of the public API. */
#ifndef AP_CACHE_BACKEND_H
#define AP_CACHE_BACKEND_H

#include "cache/cache.h"

#define CACHE_KEY_MAX 512

typedef struct cache_ops {
    const char *name;
    ap_status (*get)(cache *c, const char *key, char **value, size_t *len);
    void (*set)(cache *c, const char *key, const char *value, size_t len, int64_t ttl_ms);
    void (*del)(cache *c, const char *key);
    ap_status (*ping)(cache *c);
    void (*close)(cache *c);
} cache_ops;

/* Every backend's handle starts with this. */
struct cache {
    const cache_ops *ops;
};

ap_status cache_memory_open(size_t max_entries, cache **out, ap_err *err);
ap_status cache_redis_open(const char *url, cache **out, ap_err *err);

#endif
