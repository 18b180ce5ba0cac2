/* ratelimit.h - per-tenant request rate limits (token buckets), in process.
 *
 * Each tenant's bucket holds up to its requests_per_minute and refills continuously, so a
 * tenant may burst to a minute's allowance and then proceeds at its rate. Limits come from
 * the tenant's config ("limits": {"requests_per_minute": N}); 0 or absent means unlimited.
 * With several engine nodes each enforces the limit on its own share of the traffic.
 * Thread-safe. */
#ifndef AP_HTTP_RATELIMIT_H
#define AP_HTTP_RATELIMIT_H

#include "core/status.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct ratelimit ratelimit;

/* A limiter tracking at most max_tenants buckets (the least recently used go first). */
ratelimit *ratelimit_new(size_t max_tenants);

/* Frees the limiter; NULL is fine. */
void ratelimit_free(ratelimit *rl);

/* Takes one request from the tenant's bucket at per_minute (<= 0: unlimited) at time now_ms.
 * False when the bucket is empty; *retry_after_ms then says when one token is back. */
bool ratelimit_take(ratelimit *rl, const char *tenant_id, int64_t per_minute, int64_t now_ms,
                    int64_t *retry_after_ms);

#endif
