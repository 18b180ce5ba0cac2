/* cache.h - a tenant-scoped cache: in-process LRU by default, Redis in production.
 *
 * Keys are always scoped by tenant: in Redis every key is "t:{<tenant-id>}:<key>" (the hash
 * tag keeps a tenant on one cluster slot). The cache is an optimisation only: when Redis is
 * unreachable every call degrades (a get misses, a set is dropped) with a rate-limited
 * warning, so callers fall back to the store and never fail a request because of the cache.
 * Thread-safe. */
#ifndef AP_CACHE_H
#define AP_CACHE_H

#include "core/status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct cache cache;

#define CACHE_VALUE_MAX (1024 * 1024) /* larger values are not cached */

/* Opens "memory" (LRU of max_entries) or "redis://[:password@]host:port[/db]". A Redis that
 * is down at start is not an error: the cache starts degraded and reconnects later.
 * AP_INVALID for a malformed URL. Caller closes. */
ap_status cache_open(const char *url, size_t max_entries, cache **out, ap_err *err);

/* Closes and frees; c may be NULL. */
void cache_close(cache *c);

/* "memory" or "redis". Static storage. */
const char *cache_backend(const cache *c);

/* Looks a key up: AP_OK with *value (caller frees, NUL-terminated) and *len, or AP_NOTFOUND
 * on a miss (also when degraded). */
ap_status cache_get(cache *c, const char *tenant_id, const char *key, char **value, size_t *len);

/* Stores a copy of value for ttl_ms (> 0). Drops values over CACHE_VALUE_MAX. */
void cache_set(cache *c, const char *tenant_id, const char *key, const char *value, size_t len,
               int64_t ttl_ms);

/* Removes a key. */
void cache_del(cache *c, const char *tenant_id, const char *key);

/* Writes the backend key for (tenant, key) into out, e.g. "t:{<tenant>}:panel:<id>". */
void cache_key(const char *tenant_id, const char *key, char *out, size_t cap);

/* AP_OK when the backend answers now (memory: always). */
ap_status cache_ping(cache *c);

#endif
