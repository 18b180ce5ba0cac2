#include "core/recycle.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define CLASSES 4 /* 512 B, 1, 2 and 4 KiB */
#define MIN_SHIFT 9
/* Bytes of blocks a pool may make per class: what the runners of bench/runtime (b) hold at once
 * with 2,000 panels in flight (up to ~4 MB of 512 B items on one runner). A pool keeps what it
 * made until its thread ends, as glibc keeps freed memory below its trim threshold. */
#define KEEP_DEFAULT (4 * 1024 * 1024)

typedef struct recycle_pool pool;

/* What precedes every block: its pool (NULL for a plain malloc'd block) and class. */
typedef struct header {
    pool *owner;
    size_t cls;
} header;
#define HEADER 16 /* keeps blocks 16-aligned */
_Static_assert(sizeof(header) <= HEADER, "recycle header too large");
_Static_assert(RECYCLE_MAX == (size_t)1 << (MIN_SHIFT + CLASSES - 1),
               "RECYCLE_MAX is the top class");

struct recycle_pool {
    /* Blocks freed on other threads: pushed one by one, taken whole by the maker, so no pop
     * ever races a push (no ABA). */
    _Atomic(header *) back[CLASSES];
    header *local[CLASSES]; /* the maker's own free blocks */
    size_t made[CLASSES];   /* blocks of each class that exist */
    size_t keep[CLASSES];   /* at most this many made */
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

/* A free block's link to the next, in its payload. */
static header **next_of(header *h)
{
    return (header **)(void *)((char *)h + HEADER);
}

static void unref(pool *p, size_t n)
{
    if (n != 0 && atomic_fetch_sub_explicit(&p->refs, n, memory_order_acq_rel) == n)
        free(p);
}

/* Frees what the pool's return lists hold. */
static void drain(pool *p)
{
    size_t n = 0;
    for (size_t c = 0; c < CLASSES; c++) {
        header *h = atomic_exchange(&p->back[c], NULL);
        while (h != NULL) {
            header *next = *next_of(h);
            free(h);
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
    for (size_t c = 0; c < CLASSES; c++) {
        atomic_init(&p->back[c], NULL);
        p->keep[c] = (keep != 0 ? keep : KEEP_DEFAULT) / class_size(c);
    }
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
            p->local[c] = *next_of(h);
            free(h);
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
        p->local[c] = *next_of(h);
        return h;
    }
    if (p->made[c] == p->keep[c] || (h = malloc(HEADER + class_size(c))) == NULL)
        return NULL;
    h->owner = p;
    h->cls = c;
    p->made[c]++;
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
    return (char *)h + HEADER;
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
    if (p == bound) {
        *next_of(h) = p->local[h->cls];
        p->local[h->cls] = h;
        return;
    }
    /* the block's own reference may go with a drain as soon as it is pushed */
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    _Atomic(header *) *top = &p->back[h->cls];
    header *old = atomic_load_explicit(top, memory_order_relaxed);
    do
        *next_of(h) = old;
    while (!atomic_compare_exchange_weak(top, &old, h));
    /* pushed after the pool's thread ended and drained it: nobody else will */
    if (atomic_load(&p->ended))
        drain(p);
    unref(p, 1);
}
