#include "llm/loop.h"

#include "core/asan.h"
#include "core/clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_TIMERS (1 << 22)
/* Freed timers a loop keeps for reuse; none under AddressSanitizer, which then still sees a
 * timer handle used after its timer ran or was cancelled. */
#define SPARE_TIMERS (AP_ASAN ? 0 : 4096)
#define IN_LIST SIZE_MAX /* heap_idx of a timer in the in-order list */

struct llm_timer {
    int64_t due_us;
    uint64_t order; /* FIFO among equal deadlines */
    size_t heap_idx;
    struct llm_timer *prev, *next; /* in the in-order list, or next spare */
    llm_loop_timer_cb cb;
    void *ud;
};

typedef struct watch {
    int fd;
    unsigned events;
    llm_loop_fd_cb cb;
    void *ud;
} watch;

typedef struct post {
    llm_loop_post_cb cb;
    void *ud;
    struct post *next;
} post;

struct llm_loop {
    int epfd;
    int wakefd;
    bool stop;
    /* Timers mostly come in deadline order (every call to a provider waits its latency): one
     * due no sooner than the last of the in-order list joins it at the end, the heap holds
     * the others. With thousands of calls in flight the heap's sifts were ~3 % of a runner's
     * time, most of it cache misses. */
    llm_timer **heap;
    size_t nheap, capheap;
    llm_timer *list_head, *list_tail;
    size_t nlist;
    llm_timer *spare; /* freed timers, linked through next */
    size_t nspare;
    uint64_t next_order;
    watch **watches; /* indexed by fd */
    size_t capwatches;
    pthread_mutex_t mu;
    post *posts, *posts_tail;
    struct {
        llm_loop_idle_cb cb;
        void *ud;
        bool more;
    } idle[LLM_LOOP_IDLE_MAX];
    int idle_next;
    int idle_pending; /* sources with more */
    int64_t busy_us;  /* when a callback other than idle work last ran */
};

int64_t llm_loop_now_ms(void)
{
    return clock_mono_ms();
}

ap_status llm_loop_new(llm_loop **out, ap_err *err)
{
    *out = NULL;
    llm_loop *l = calloc(1, sizeof *l);
    if (l == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&l->mu, NULL);
    if (l->epfd < 0 || l->wakefd < 0) {
        llm_loop_free(l);
        return ap_err_set(err, AP_IO, "cannot create the event loop: %s", strerror(errno));
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = -1};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) != 0) {
        llm_loop_free(l);
        return ap_err_set(err, AP_IO, "cannot create the event loop: %s", strerror(errno));
    }
    *out = l;
    return AP_OK;
}

/* Frees a chain of timers linked through next. */
static void free_timers(llm_timer *t)
{
    while (t != NULL) {
        llm_timer *next = t->next;
        free(t);
        t = next;
    }
}

void llm_loop_free(llm_loop *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->nheap; i++)
        free(l->heap[i]);
    free(l->heap);
    free_timers(l->list_head);
    free_timers(l->spare);
    for (size_t i = 0; i < l->capwatches; i++)
        free(l->watches[i]);
    free(l->watches);
    for (post *p = l->posts; p != NULL;) {
        post *n = p->next;
        free(p);
        p = n;
    }
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->wakefd >= 0)
        close(l->wakefd);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* ---- fds ------------------------------------------------------------------------------ */

static uint32_t to_epoll(unsigned events)
{
    return ((events & LLM_LOOP_READ) ? EPOLLIN : 0u) | ((events & LLM_LOOP_WRITE) ? EPOLLOUT : 0u);
}

ap_status llm_loop_watch(llm_loop *l, int fd, unsigned events, llm_loop_fd_cb cb, void *ud)
{
    if (fd < 0)
        return AP_INVALID;
    if (events == 0) {
        llm_loop_unwatch(l, fd);
        return AP_OK;
    }
    if ((size_t)fd >= l->capwatches) {
        size_t cap = l->capwatches ? l->capwatches : 64;
        while (cap <= (size_t)fd)
            cap *= 2;
        watch **w = realloc(l->watches, cap * sizeof *w);
        if (w == NULL)
            return AP_NOMEM;
        memset(w + l->capwatches, 0, (cap - l->capwatches) * sizeof *w);
        l->watches = w;
        l->capwatches = cap;
    }
    watch *w = l->watches[fd];
    bool add = w == NULL;
    if (add) {
        w = calloc(1, sizeof *w);
        if (w == NULL)
            return AP_NOMEM;
    }
    struct epoll_event ev = {.events = to_epoll(events), .data.fd = fd};
    if (epoll_ctl(l->epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) != 0) {
        if (add)
            free(w);
        return AP_IO;
    }
    *w = (watch){fd, events, cb, ud};
    l->watches[fd] = w;
    return AP_OK;
}

void llm_loop_unwatch(llm_loop *l, int fd)
{
    if (fd < 0 || (size_t)fd >= l->capwatches || l->watches[fd] == NULL)
        return;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    free(l->watches[fd]);
    l->watches[fd] = NULL;
}

/* ---- timers: a binary min-heap on (due, order) ------------------------------------------ */

static bool before(const llm_timer *a, const llm_timer *b)
{
    return a->due_us < b->due_us || (a->due_us == b->due_us && a->order < b->order);
}

static void heap_set(llm_loop *l, size_t i, llm_timer *t)
{
    l->heap[i] = t;
    t->heap_idx = i;
}

static void sift_up(llm_loop *l, size_t i)
{
    llm_timer *t = l->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(t, l->heap[parent]))
            break;
        heap_set(l, i, l->heap[parent]);
        i = parent;
    }
    heap_set(l, i, t);
}

static void sift_down(llm_loop *l, size_t i)
{
    llm_timer *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->nheap)
            break;
        if (c + 1 < l->nheap && before(l->heap[c + 1], l->heap[c]))
            c++;
        if (!before(l->heap[c], t))
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

static void heap_remove(llm_loop *l, size_t i)
{
    l->nheap--;
    if (i == l->nheap)
        return;
    heap_set(l, i, l->heap[l->nheap]);
    sift_down(l, i);
    sift_up(l, l->heap[i]->heap_idx);
}

static llm_timer *timer_new(llm_loop *l)
{
    llm_timer *t = l->spare;
    if (t == NULL)
        return malloc(sizeof *t);
    l->spare = t->next;
    l->nspare--;
    return t;
}

static void timer_release(llm_loop *l, llm_timer *t)
{
    if (l->nspare == SPARE_TIMERS) {
        free(t);
        return;
    }
    t->next = l->spare;
    l->spare = t;
    l->nspare++;
}

llm_timer *llm_loop_timer_add(llm_loop *l, int64_t delay_ms, llm_loop_timer_cb cb, void *ud)
{
    if (l->nheap + l->nlist >= MAX_TIMERS)
        return NULL;
    int64_t due = clock_mono_us() + (delay_ms > 0 ? delay_ms * 1000 : 0);
    bool in_order = l->list_tail == NULL || l->list_tail->due_us <= due;
    if (!in_order && l->nheap == l->capheap) {
        size_t cap = l->capheap ? l->capheap * 2 : 64;
        llm_timer **h = realloc(l->heap, cap * sizeof *h);
        if (h == NULL)
            return NULL;
        l->heap = h;
        l->capheap = cap;
    }
    llm_timer *t = timer_new(l);
    if (t == NULL)
        return NULL;
    *t = (llm_timer){.due_us = due, .order = l->next_order++, .cb = cb, .ud = ud};
    if (in_order) {
        t->heap_idx = IN_LIST;
        t->prev = l->list_tail;
        if (l->list_tail != NULL)
            l->list_tail->next = t;
        else
            l->list_head = t;
        l->list_tail = t;
        l->nlist++;
    } else {
        l->heap[l->nheap++] = t;
        t->heap_idx = l->nheap - 1;
        sift_up(l, l->nheap - 1);
    }
    return t;
}

static void timer_unlink(llm_loop *l, llm_timer *t)
{
    if (t->heap_idx != IN_LIST) {
        heap_remove(l, t->heap_idx);
        return;
    }
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        l->list_head = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    else
        l->list_tail = t->prev;
    l->nlist--;
}

/* The timer due first, NULL when there is none. */
static llm_timer *first_timer(const llm_loop *l)
{
    llm_timer *h = l->nheap > 0 ? l->heap[0] : NULL, *in = l->list_head;
    if (h == NULL || in == NULL)
        return h != NULL ? h : in;
    return before(h, in) ? h : in;
}

void llm_loop_timer_cancel(llm_loop *l, llm_timer *t)
{
    if (t == NULL)
        return;
    timer_unlink(l, t);
    timer_release(l, t);
}

/* ---- posts ------------------------------------------------------------------------------ */

ap_status llm_loop_post(llm_loop *l, llm_loop_post_cb cb, void *ud)
{
    post *p = malloc(sizeof *p);
    if (p == NULL)
        return AP_NOMEM;
    *p = (post){cb, ud, NULL};
    pthread_mutex_lock(&l->mu);
    if (l->posts_tail != NULL)
        l->posts_tail->next = p;
    else
        l->posts = p;
    l->posts_tail = p;
    pthread_mutex_unlock(&l->mu);
    uint64_t one = 1;
    ssize_t w = write(l->wakefd, &one, sizeof one);
    (void)w; /* EAGAIN means the counter is already non-zero: the loop wakes anyway */
    return AP_OK;
}

static void run_posts(llm_loop *l)
{
    uint64_t n;
    ssize_t r = read(l->wakefd, &n, sizeof n);
    (void)r;
    pthread_mutex_lock(&l->mu);
    post *p = l->posts;
    l->posts = l->posts_tail = NULL;
    pthread_mutex_unlock(&l->mu);
    while (p != NULL) {
        post *next = p->next;
        p->cb(l, p->ud);
        free(p);
        p = next;
    }
}

void llm_loop_stop(llm_loop *l)
{
    __atomic_store_n(&l->stop, true, __ATOMIC_RELEASE);
    uint64_t one = 1;
    ssize_t w = write(l->wakefd, &one, sizeof one);
    (void)w;
}

/* Runs the timers due now; whether it ran any. */
static bool run_timers(llm_loop *l)
{
    int64_t now = clock_mono_us();
    bool ran = false;
    /* Only timers due now; ones added by callbacks wait for the next iteration. */
    uint64_t limit = l->next_order;
    llm_timer *t;
    while ((t = first_timer(l)) != NULL && t->due_us <= now && t->order < limit) {
        timer_unlink(l, t);
        llm_loop_timer_cb cb = t->cb;
        void *ud = t->ud;
        timer_release(l, t);
        cb(l, ud);
        ran = true;
    }
    return ran;
}

int llm_loop_idle_add(llm_loop *l, llm_loop_idle_cb cb, void *ud)
{
    for (int id = 0; id < LLM_LOOP_IDLE_MAX; id++) {
        if (l->idle[id].cb != NULL)
            continue;
        l->idle[id].cb = cb;
        l->idle[id].ud = ud;
        l->idle[id].more = false;
        return id;
    }
    return -1;
}

void llm_loop_idle_more(llm_loop *l, int id)
{
    if (id < 0 || id >= LLM_LOOP_IDLE_MAX || l->idle[id].cb == NULL || l->idle[id].more)
        return;
    l->idle[id].more = true;
    l->idle_pending++;
}

void llm_loop_idle_remove(llm_loop *l, int id)
{
    if (id < 0 || id >= LLM_LOOP_IDLE_MAX || l->idle[id].cb == NULL)
        return;
    if (l->idle[id].more)
        l->idle_pending--;
    l->idle[id].cb = NULL;
    l->idle[id].ud = NULL;
    l->idle[id].more = false;
}

/* One piece of the next source's idle work, in turn. */
static void run_idle_piece(llm_loop *l)
{
    for (int k = 0; k < LLM_LOOP_IDLE_MAX; k++) {
        int id = (l->idle_next + k) % LLM_LOOP_IDLE_MAX;
        if (!l->idle[id].more)
            continue;
        l->idle_next = (id + 1) % LLM_LOOP_IDLE_MAX;
        if (!l->idle[id].cb(l, l->idle[id].ud) && l->idle[id].more) {
            l->idle[id].more = false;
            l->idle_pending--;
        }
        return;
    }
}

/* Pieces of idle work for up to IDLE_SLICE_US: a piece can be a few microseconds, about what a
 * turn of the loop costs, so one per turn would spend as much on the turns. */
#define IDLE_SLICE_US 100

static void run_idle(llm_loop *l)
{
    int64_t end = clock_mono_us() + IDLE_SLICE_US;
    do
        run_idle_piece(l);
    while (l->idle_pending > 0 && clock_mono_us() < end);
}

/* Milliseconds to wait for (rounded up), capped by max_wait_ms (-1: none). */
static int wait_ms(int64_t wait_us, int max_wait_ms)
{
    int t = wait_us <= 0 ? 0 : (int)((wait_us + 999) / 1000);
    return max_wait_ms < 0 || t < max_wait_ms ? t : max_wait_ms;
}

void llm_loop_run_once(llm_loop *l, int max_wait_ms)
{
    int timeout = max_wait_ms;
    int64_t now = clock_mono_us();
    const llm_timer *first = first_timer(l);
    if (first != NULL)
        timeout = wait_ms(first->due_us - now, timeout);
    /* Idle work waits for a quiet spell: a burst of answers has gaps of a few microseconds
     * between its timers, in which the other threads are busy. */
    if (l->idle_pending > 0)
        timeout = wait_ms(l->busy_us + LLM_LOOP_QUIET_US - now, timeout);
    struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(l->epfd, evs, MAX_EVENTS, timeout);
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == -1) {
            run_posts(l);
            continue;
        }
        if ((size_t)fd >= l->capwatches || l->watches[fd] == NULL)
            continue; /* unwatched by an earlier callback of this batch */
        watch *w = l->watches[fd];
        unsigned events = 0;
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
            events |= LLM_LOOP_READ;
        if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            events |= LLM_LOOP_WRITE;
        w->cb(l, fd, events, w->ud);
    }
    if (run_timers(l) || n > 0)
        l->busy_us = clock_mono_us();
    else if (l->idle_pending > 0 && clock_mono_us() - l->busy_us >= LLM_LOOP_QUIET_US)
        run_idle(l);
}

void llm_loop_run(llm_loop *l)
{
    while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE))
        llm_loop_run_once(l, -1);
}
