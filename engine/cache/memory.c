/* memory.c - the in-process cache: a hash table threaded on an LRU list, with expiry. */
#include "cache/backend.h"
#include "core/clock.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    char *key;
    char *value;
    size_t len;
    int64_t expires_ms;
    uint64_t hash;
    struct entry *chain;         /* next in the bucket */
    struct entry *newer, *older; /* LRU list */
} entry;

typedef struct memcache {
    cache base;
    pthread_mutex_t lock;
    entry **buckets;
    size_t nbuckets;
    size_t count, max;
    entry *newest, *oldest;
} memcache;

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static void lru_unlink(memcache *m, entry *e)
{
    if (e->newer != NULL)
        e->newer->older = e->older;
    else
        m->newest = e->older;
    if (e->older != NULL)
        e->older->newer = e->newer;
    else
        m->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void lru_push(memcache *m, entry *e)
{
    e->older = m->newest;
    e->newer = NULL;
    if (m->newest != NULL)
        m->newest->newer = e;
    m->newest = e;
    if (m->oldest == NULL)
        m->oldest = e;
}

static entry **find_slot(memcache *m, const char *key, uint64_t h)
{
    entry **slot = &m->buckets[h % m->nbuckets];
    while (*slot != NULL && ((*slot)->hash != h || strcmp((*slot)->key, key) != 0))
        slot = &(*slot)->chain;
    return slot;
}

static void remove_entry(memcache *m, entry **slot)
{
    entry *e = *slot;
    *slot = e->chain;
    lru_unlink(m, e);
    m->count--;
    free(e->key);
    free(e->value);
    free(e);
}

static ap_status mem_get(cache *c, const char *key, char **value, size_t *len)
{
    memcache *m = (memcache *)c;
    ap_status rc = AP_NOTFOUND;
    uint64_t h = fnv1a(key);
    pthread_mutex_lock(&m->lock);
    entry **slot = find_slot(m, key, h);
    entry *e = *slot;
    if (e == NULL)
        goto out;
    if (e->expires_ms <= clock_mono_ms()) {
        remove_entry(m, slot);
        goto out;
    }
    char *copy = malloc(e->len + 1);
    if (copy == NULL) {
        rc = AP_NOMEM;
        goto out;
    }
    memcpy(copy, e->value, e->len);
    copy[e->len] = '\0';
    *value = copy;
    *len = e->len;
    lru_unlink(m, e);
    lru_push(m, e);
    rc = AP_OK;
out:
    pthread_mutex_unlock(&m->lock);
    return rc;
}

static void mem_set(cache *c, const char *key, const char *value, size_t len, int64_t ttl_ms)
{
    memcache *m = (memcache *)c;
    if (m->max == 0)
        return;
    entry *e = calloc(1, sizeof *e);
    char *k = strdup(key);
    char *v = malloc(len + 1);
    if (e == NULL || k == NULL || v == NULL) {
        free(e);
        free(k);
        free(v);
        return;
    }
    memcpy(v, value, len);
    v[len] = '\0';
    *e = (entry){.key = k,
                 .value = v,
                 .len = len,
                 .expires_ms = clock_mono_ms() + ttl_ms,
                 .hash = fnv1a(key)};
    pthread_mutex_lock(&m->lock);
    entry **slot = find_slot(m, key, e->hash);
    if (*slot != NULL)
        remove_entry(m, slot);
    while (m->count >= m->max && m->oldest != NULL)
        remove_entry(m, find_slot(m, m->oldest->key, m->oldest->hash));
    slot = &m->buckets[e->hash % m->nbuckets];
    e->chain = *slot;
    *slot = e;
    lru_push(m, e);
    m->count++;
    pthread_mutex_unlock(&m->lock);
}

static void mem_del(cache *c, const char *key)
{
    memcache *m = (memcache *)c;
    pthread_mutex_lock(&m->lock);
    entry **slot = find_slot(m, key, fnv1a(key));
    if (*slot != NULL)
        remove_entry(m, slot);
    pthread_mutex_unlock(&m->lock);
}

static ap_status mem_ping(cache *c)
{
    (void)c;
    return AP_OK;
}

static void mem_close(cache *c)
{
    memcache *m = (memcache *)c;
    while (m->oldest != NULL)
        remove_entry(m, find_slot(m, m->oldest->key, m->oldest->hash));
    free(m->buckets);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static const cache_ops memory_ops = {"memory", mem_get, mem_set, mem_del, mem_ping, mem_close};

ap_status cache_memory_open(size_t max_entries, cache **out, ap_err *err)
{
    memcache *m = calloc(1, sizeof *m);
    if (m == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    m->base.ops = &memory_ops;
    m->max = max_entries;
    m->nbuckets = 64;
    while (m->nbuckets < max_entries && m->nbuckets < (1u << 22))
        m->nbuckets *= 2;
    m->buckets = calloc(m->nbuckets, sizeof *m->buckets);
    if (m->buckets == NULL) {
        free(m);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    pthread_mutex_init(&m->lock, NULL);
    *out = &m->base;
    return AP_OK;
}
