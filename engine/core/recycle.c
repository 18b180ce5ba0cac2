#include "core/recycle.h"

#include "core/asan.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define CLASSES 4 /* 512 B, 1, 2 and 4 KiB */
#define MIN_SHIFT 9
/* Bytes of blocks a pool may make: what a runner of bench/runtime (b) holds at once with
 * 2,000 panels in flight (~4 MB of 512 B items and ~4 MB of 2 KiB ones at the most). A pool
 * keeps what it made until its thread ends, as glibc keeps freed memory below its trim
 * threshold. */
#define KEEP_DEFAULT (8 * 1024 * 1024)

typedef struct recycle_pool pool;

/* What precedes every block: its pool (NULL for a plain malloc'd block), its class, and the
 * link of the free list it waits on (kept out of the block, which ASan builds poison then). */
typedef struct header {
    pool *owner;
    size_t cls;
    struct header *next;
} header;
#define HEADER 32 /* keeps blocks 16-aligned */
_Static_assert(sizeof(header) <= HEADER, "recycle header too large");
_Static_assert(RECYCLE_MAX == (size_t)1 << (MIN_SHIFT + CLASSES - 1),
               "RECYCLE_MAX is the top class");

struct recycle_pool {
    /* Blocks freed on other threads: pushed one by one, taken whole by the maker, so no pop
     * ever races a push (no ABA). */
    _Atomic(header *) back[CLASSES];
    header *local[CLASSES]; /* the maker's own free blocks */
    size_t made;            /* bytes of the blocks that exist */
    size_t keep;            /* at most this many */
    /* One for the bound thread, one per block made and one per recycle_free running on
     * another thread: the last to go frees the pool. */
    atomic_size_t refs;
    atomic_bool ended;
};

static _Thread_local pool *bound;

static size_t class_size(size_t c)
{
    return (size_t)1 << (MIN_SHIFT + c);
}

static size_t class_of(size_t n)
{
    size_t c = 0;
    while (class_size(c) < n)
        c++;
    return c;
}

static void *payload(header *h)
{
    return (char *)h + HEADER;
}

static void unref(pool *p, size_t n)
{
    if (n != 0 && atomic_fetch_sub_explicit(&p->refs, n, memory_order_acq_rel) == n)
        free(p);
}

/* Frees a pooled block that waits on a free list. */
static void free_block(header *h)
{
    asan_unpoison(payload(h), class_size(h->cls));
    free(h);
}

/* Frees what the pool's return lists hold. */
static void drain(pool *p)
{
    size_t n = 0;
    for (size_t c = 0; c < CLASSES; c++) {
        header *h = atomic_exchange(&p->back[c], NULL);
        while (h != NULL) {
            header *next = h->next;
            free_block(h);
            h = next;
            n++;
        }
    }
    unref(p, n);
}

ap_status recycle_thread_begin(size_t keep)
{
    if (bound != NULL)
        return AP_ERROR;
    pool *p = calloc(1, sizeof *p);
    if (p == NULL)
        return AP_NOMEM;
    for (size_t c = 0; c < CLASSES; c++)
        atomic_init(&p->back[c], NULL);
    p->keep = keep != 0 ? keep : KEEP_DEFAULT;
    atomic_init(&p->refs, 1);
    atomic_init(&p->ended, false);
    bound = p;
    return AP_OK;
}

void recycle_thread_end(void)
{
    pool *p = bound;
    if (p == NULL)
        return;
    bound = NULL;
    atomic_store(&p->ended, true);
    size_t n = 0;
    for (size_t c = 0; c < CLASSES; c++) {
        while (p->local[c] != NULL) {
            header *h = p->local[c];
            p->local[c] = h->next;
            free_block(h);
            n++;
        }
    }
    unref(p, n);
    drain(p);
    unref(p, 1);
}

/* A block of class c from the bound pool p, or NULL when it has none and may make no more. */
static header *take(pool *p, size_t c)
{
    header *h = p->local[c];
    if (h == NULL)
        h = atomic_exchange_explicit(&p->back[c], NULL, memory_order_acquire);
    if (h != NULL) {
        p->local[c] = h->next;
        asan_unpoison(payload(h), class_size(c));
        return h;
    }
    if (p->made + class_size(c) > p->keep || (h = malloc(HEADER + class_size(c))) == NULL)
        return NULL;
    h->owner = p;
    h->cls = c;
    p->made += class_size(c);
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return h;
}

void *recycle_alloc(size_t n)
{
    header *h = bound != NULL && n <= RECYCLE_MAX ? take(bound, class_of(n)) : NULL;
    if (h == NULL) {
        h = malloc(HEADER + n);
        if (h == NULL)
            return NULL;
        h->owner = NULL;
    }
    return payload(h);
}

void recycle_free(void *ptr)
{
    if (ptr == NULL)
        return;
    header *h = (header *)(void *)((char *)ptr - HEADER);
    pool *p = h->owner;
    if (p == NULL) {
        free(h);
        return;
    }
    /* ASan: a second free of the block touches it poisoned, and is reported here */
    if (AP_ASAN)
        *(volatile char *)ptr = 0;
    asan_poison(ptr, class_size(h->cls));
    if (p == bound) {
        h->next = p->local[h->cls];
        p->local[h->cls] = h;
        return;
    }
    /* the block's own reference may go with a drain as soon as it is pushed */
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    _Atomic(header *) *top = &p->back[h->cls];
    header *old = atomic_load_explicit(top, memory_order_relaxed);
    do
        h->next = old;
    while (!atomic_compare_exchange_weak(top, &old, h));
    /* pushed after the pool's thread ended and drained it: nobody else will */
    if (atomic_load(&p->ended))
        drain(p);
    unref(p, 1);
}
