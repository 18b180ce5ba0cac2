#include "http/ratelimit.h"

#include "core/ids.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    char tenant[IDS_UUID_LEN + 1];
    double tokens;
    int64_t last_ms;
    int64_t used_ms; /* for eviction */
} bucket;

struct ratelimit {
    pthread_mutex_t lock;
    bucket *buckets;
    size_t n, max;
};

ratelimit *ratelimit_new(size_t max_tenants)
{
    ratelimit *rl = calloc(1, sizeof *rl);
    if (rl == NULL)
        return NULL;
    rl->buckets = calloc(max_tenants, sizeof *rl->buckets);
    if (rl->buckets == NULL) {
        free(rl);
        return NULL;
    }
    rl->max = max_tenants;
    pthread_mutex_init(&rl->lock, NULL);
    return rl;
}

void ratelimit_free(ratelimit *rl)
{
    if (rl == NULL)
        return;
    pthread_mutex_destroy(&rl->lock);
    free(rl->buckets);
    free(rl);
}

/* The tenant's bucket, created full (evicting the least recently used when at capacity). */
static bucket *find(ratelimit *rl, const char *tenant, double capacity, int64_t now)
{
    size_t oldest = 0;
    for (size_t i = 0; i < rl->n; i++) {
        if (strcmp(rl->buckets[i].tenant, tenant) == 0)
            return &rl->buckets[i];
        if (rl->buckets[i].used_ms < rl->buckets[oldest].used_ms)
            oldest = i;
    }
    size_t slot = rl->n < rl->max ? rl->n++ : oldest;
    bucket *b = &rl->buckets[slot];
    snprintf(b->tenant, sizeof b->tenant, "%s", tenant);
    b->tokens = capacity;
    b->last_ms = now;
    return b;
}

bool ratelimit_take(ratelimit *rl, const char *tenant_id, int64_t per_minute, int64_t now_ms,
                    int64_t *retry_after_ms)
{
    if (per_minute <= 0 || rl->max == 0)
        return true;
    double capacity = (double)per_minute;
    double rate = capacity / 60000.0; /* tokens per ms */
    pthread_mutex_lock(&rl->lock);
    bucket *b = find(rl, tenant_id, capacity, now_ms);
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * rate;
        if (b->tokens > capacity)
            b->tokens = capacity;
        b->last_ms = now_ms;
    }
    b->used_ms = now_ms;
    bool ok = b->tokens >= 1.0;
    if (ok)
        b->tokens -= 1.0;
    else if (retry_after_ms != NULL)
        *retry_after_ms = (int64_t)((1.0 - b->tokens) / rate) + 1;
    pthread_mutex_unlock(&rl->lock);
    return ok;
}
