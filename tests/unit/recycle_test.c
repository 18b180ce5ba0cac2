/* Unit tests for core/recycle.c: blocks that go back to the thread that made them. */
#include "core/asan.h"
#include "core/recycle.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#define N 64

static void test_alloc_is_aligned_and_usable(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 100, 511, 512, 513, 4096, 4097, 100000};
    for (int bound = 0; bound < 2; bound++) {
        if (bound)
            assert_int_equal(recycle_thread_begin(0), AP_OK);
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            unsigned char *p = recycle_alloc(sizes[i]);
            assert_non_null(p);
            assert_int_equal((uintptr_t)p % 16, 0);
            memset(p, 0xab, sizes[i]);
            recycle_free(p);
        }
        recycle_thread_end();
    }
    recycle_free(NULL);
}

static void test_one_pool_per_thread(void **state)
{
    (void)state;
    assert_int_equal(recycle_thread_begin(0), AP_OK);
    assert_int_equal(recycle_thread_begin(0), AP_ERROR);
    recycle_thread_end();
    recycle_thread_end(); /* none bound: nothing */
    assert_int_equal(recycle_thread_begin(0), AP_OK);
    recycle_thread_end();
}

static void test_reused_on_its_thread(void **state)
{
    (void)state;
    assert_int_equal(recycle_thread_begin(0), AP_OK);
    void *a = recycle_alloc(300);
    recycle_free(a);
    assert_ptr_equal(recycle_alloc(200), a); /* the same class: the block just freed */
    recycle_free(a);
    recycle_thread_end();
}

typedef struct handoff {
    void *blocks[N];
    int n;
} handoff;

static void *free_all(void *arg)
{
    handoff *h = arg;
    for (int i = 0; i < h->n; i++)
        recycle_free(h->blocks[i]);
    return NULL;
}

static bool made_here(const handoff *h, const void *p)
{
    for (int i = 0; i < h->n; i++)
        if (h->blocks[i] == p)
            return true;
    return false;
}

/* Blocks freed on another thread come back to their maker, not to that thread's malloc. */
static void test_freed_elsewhere_come_back(void **state)
{
    (void)state;
    assert_int_equal(recycle_thread_begin(0), AP_OK);
    handoff h = {.n = N};
    for (int i = 0; i < N; i++)
        assert_non_null(h.blocks[i] = recycle_alloc(1000));
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, free_all, &h), 0);
    pthread_join(th, NULL);
    void *again[N];
    for (int i = 0; i < N; i++) {
        again[i] = recycle_alloc(1000);
        assert_true(made_here(&h, again[i]));
    }
    for (int i = 0; i < N; i++)
        recycle_free(again[i]);
    recycle_thread_end();
}

static void *make_and_leave(void *arg)
{
    handoff *h = arg;
    if (recycle_thread_begin(0) != AP_OK)
        return NULL;
    for (int i = 0; i < h->n; i++)
        h->blocks[i] = recycle_alloc((size_t)(64 + 97 * i));
    recycle_thread_end();
    return NULL;
}

/* A pool whose thread ended lives until its last block comes back (ASan: no leak, no use
 * after free). */
static void test_pool_outlives_its_thread(void **state)
{
    (void)state;
    handoff h = {.n = N};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, make_and_leave, &h), 0);
    pthread_join(th, NULL);
    for (int i = 0; i < N; i++) {
        assert_non_null(h.blocks[i]);
        memset(h.blocks[i], i, (size_t)(64 + 97 * i));
    }
    free_all(&h);
}

/* Makers that end while other threads free their blocks (TSan: no race). */
typedef struct ring {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    void *slot[256];
    unsigned head, tail;
    int makers_left;
} ring;

static void ring_put(ring *r, void *p)
{
    pthread_mutex_lock(&r->mu);
    while (r->tail - r->head == 256)
        pthread_cond_wait(&r->cond, &r->mu);
    r->slot[r->tail++ % 256] = p;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
}

static void *maker(void *arg)
{
    ring *r = arg;
    if (recycle_thread_begin(8192) == AP_OK) {
        for (int i = 0; i < 5000; i++) {
            size_t n = (size_t)(1 + (i * 37) % 5000);
            unsigned char *p = recycle_alloc(n);
            if (p == NULL)
                continue;
            memset(p, (unsigned char)n, n);
            ring_put(r, p);
        }
        recycle_thread_end();
    }
    pthread_mutex_lock(&r->mu);
    r->makers_left--;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void *consumer(void *arg)
{
    ring *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (r->head == r->tail && r->makers_left > 0)
            pthread_cond_wait(&r->cond, &r->mu);
        if (r->head == r->tail) {
            pthread_mutex_unlock(&r->mu);
            return NULL;
        }
        void *p = r->slot[r->head++ % 256];
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->mu);
        recycle_free(p);
    }
}

static void test_makers_and_freers_race(void **state)
{
    (void)state;
    ring r = {.makers_left = 3};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cond, NULL);
    pthread_t m[3], c[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&c[i], NULL, consumer, &r), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&m[i], NULL, maker, &r), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(m[i], NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(c[i], NULL);
    assert_int_equal(r.head, r.tail);
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cond);
}

/* ASan builds: a pooled block is poisoned from its free until it is handed out again, so a
 * use after free is caught as with malloc. */
static void test_freed_blocks_are_poisoned(void **state)
{
    (void)state;
#if AP_ASAN
    assert_int_equal(recycle_thread_begin(0), AP_OK);
    char *a = recycle_alloc(700);
    assert_false(__asan_address_is_poisoned(a + 699));
    recycle_free(a);
    assert_true(__asan_address_is_poisoned(a));
    assert_true(__asan_address_is_poisoned(a + 699));
    char *b = recycle_alloc(700);
    assert_ptr_equal(b, a);
    assert_false(__asan_address_is_poisoned(b + 699));
    recycle_free(b);
    recycle_thread_end();
#else
    skip();
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_is_aligned_and_usable),
        cmocka_unit_test(test_one_pool_per_thread),
        cmocka_unit_test(test_reused_on_its_thread),
        cmocka_unit_test(test_freed_elsewhere_come_back),
        cmocka_unit_test(test_pool_outlives_its_thread),
        cmocka_unit_test(test_makers_and_freers_race),
        cmocka_unit_test(test_freed_blocks_are_poisoned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
