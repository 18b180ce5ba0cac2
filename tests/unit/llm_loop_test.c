/* Unit tests for llm/loop.c: the idle work a runner does between its other callbacks. */
#include "core/clock.h"
#include "llm/loop.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

typedef struct idle_log {
    int calls;
    int pieces;         /* calls that return true before the last */
    int64_t first_us;   /* when the first call came */
    int64_t last_timer; /* when a timer callback last ran */
    int timers_left;    /* re-arming timers still to run */
    int64_t gap_min_us; /* shortest time from a timer callback to an idle call */
} idle_log;

static bool idle_piece(llm_loop *loop, void *ud)
{
    (void)loop;
    idle_log *l = ud;
    int64_t now = clock_mono_us();
    if (l->calls++ == 0)
        l->first_us = now;
    if (l->last_timer != 0 && (l->gap_min_us == 0 || now - l->last_timer < l->gap_min_us))
        l->gap_min_us = now - l->last_timer;
    return l->calls <= l->pieces;
}

static void busy_timer(llm_loop *loop, void *ud)
{
    idle_log *l = ud;
    l->last_timer = clock_mono_us();
    if (--l->timers_left > 0)
        assert_non_null(llm_loop_timer_add(loop, 0, busy_timer, l));
}

static void run_for(llm_loop *loop, int64_t ms)
{
    int64_t end = clock_mono_ms() + ms;
    while (clock_mono_ms() < end)
        llm_loop_run_once(loop, 5);
}

static llm_loop *new_loop(void)
{
    llm_loop *loop = NULL;
    ap_err err = {0};
    assert_int_equal(llm_loop_new(&loop, &err), AP_OK);
    return loop;
}

/* A new loop whose first idle source is idle_piece on l (id 0). */
static llm_loop *loop_with_source(idle_log *l, int *id)
{
    llm_loop *loop = new_loop();
    *id = llm_loop_idle_add(loop, idle_piece, l);
    assert_int_equal(*id, 0);
    return loop;
}

/* Nothing to do: the loop calls its idle work once it has been quiet, piece after piece until
 * the work says it is done, and not again until there is more. */
static void test_idle_pieces_until_done(void **state)
{
    (void)state;
    idle_log l = {.pieces = 3};
    int id;
    llm_loop *loop = loop_with_source(&l, &id);
    run_for(loop, 20);
    assert_int_equal(l.calls, 0); /* none was asked for */
    int64_t asked = clock_mono_us();
    llm_loop_idle_more(loop, id);
    run_for(loop, 30);
    assert_int_equal(l.calls, 4);             /* three pieces that leave more, then the last */
    assert_true(l.first_us - asked < 500000); /* at once, but a loaded machine may be slow */
    llm_loop_idle_more(loop, id);
    l.pieces = 0;
    l.calls = 0;
    run_for(loop, 30);
    assert_int_equal(l.calls, 1);
    llm_loop_free(loop);
}

/* While timers keep the loop busy the idle work waits; it starts only after a quiet spell of
 * LLM_LOOP_QUIET_US since the last of them. */
static void test_idle_waits_for_quiet(void **state)
{
    (void)state;
    idle_log l = {.pieces = 0, .timers_left = 2000};
    int id;
    llm_loop *loop = loop_with_source(&l, &id);
    llm_loop_idle_more(loop, id);
    assert_non_null(llm_loop_timer_add(loop, 0, busy_timer, &l));
    int64_t end = clock_mono_ms() + 5000;
    while (l.timers_left > 0 && clock_mono_ms() < end)
        llm_loop_run_once(loop, 5);
    assert_int_equal(l.timers_left, 0);
    assert_int_equal(l.calls, 0); /* not one piece inside the burst */
    run_for(loop, 30);
    assert_int_equal(l.calls, 1);
    assert_true(l.gap_min_us >= LLM_LOOP_QUIET_US);
    llm_loop_free(loop);
}

/* A loop that waits without limit still wakes for its idle work. */
static void test_idle_wakes_a_blocking_wait(void **state)
{
    (void)state;
    idle_log l = {.pieces = 0};
    int id;
    llm_loop *loop = loop_with_source(&l, &id);
    llm_loop_idle_more(loop, id);
    int64_t t0 = clock_mono_ms();
    for (int i = 0; i < 3 && l.calls == 0; i++)
        llm_loop_run_once(loop, -1);
    assert_int_equal(l.calls, 1);
    assert_true(clock_mono_ms() - t0 < 1000);
    llm_loop_free(loop);
}

/* A removed source is not called again, even with work pending, and its slot serves the next
 * one; a loop has LLM_LOOP_IDLE_MAX sources at most. */
static void test_idle_remove(void **state)
{
    (void)state;
    llm_loop *loop = new_loop();
    idle_log a = {.pieces = 100}, b = {.pieces = 0};
    int ia = llm_loop_idle_add(loop, idle_piece, &a);
    llm_loop_idle_more(loop, ia);
    llm_loop_idle_remove(loop, ia);
    run_for(loop, 20);
    assert_int_equal(a.calls, 0);
    int ib = llm_loop_idle_add(loop, idle_piece, &b);
    assert_int_equal(ib, ia);
    llm_loop_idle_more(loop, ib);
    run_for(loop, 20);
    assert_int_equal(b.calls, 1);
    for (int i = 1; i < LLM_LOOP_IDLE_MAX; i++)
        assert_true(llm_loop_idle_add(loop, idle_piece, &a) >= 0);
    assert_int_equal(llm_loop_idle_add(loop, idle_piece, &a), -1);
    llm_loop_idle_remove(loop, -1);
    llm_loop_free(loop);
}

/* Timers: fired in the order of their deadlines, FIFO among equal ones, whether they were
 * added in that order (the in-order list) or not (the heap). */
typedef struct fired {
    int order[64];
    int n;
} fired;

typedef struct tag {
    fired *f;
    int id;
} tag;

static void note_fire(llm_loop *loop, void *ud)
{
    (void)loop;
    tag *t = ud;
    t->f->order[t->f->n++] = t->id;
}

static void test_timers_fire_in_deadline_order(void **state)
{
    (void)state;
    llm_loop *loop = new_loop();
    fired f = {.n = 0};
    /* delays in ms; ids say the order they must fire in (equal delays: the order added) */
    static const struct {
        int delay, id;
    } plan[] = {{40, 5}, {60, 8}, {20, 2}, {60, 9}, {0, 0},   {30, 3},
                {50, 6}, {50, 7}, {10, 1}, {35, 4}, {80, 11}, {70, 10}};
    enum { N = sizeof plan / sizeof plan[0] };
    tag tags[N];
    for (int i = 0; i < N; i++) {
        tags[i] = (tag){&f, plan[i].id};
        assert_non_null(llm_loop_timer_add(loop, plan[i].delay, note_fire, &tags[i]));
    }
    int64_t end = clock_mono_ms() + 2000;
    while (f.n < N && clock_mono_ms() < end)
        llm_loop_run_once(loop, 5);
    assert_int_equal(f.n, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(f.order[i], i);
    llm_loop_free(loop);
}

static void test_timer_cancel_from_list_and_heap(void **state)
{
    (void)state;
    llm_loop *loop = new_loop();
    fired f = {.n = 0};
    tag tags[6];
    llm_timer *t[6];
    /* 0, 1, 2 in order (the list); 3, 4, 5 out of order (the heap) */
    static const int delays[6] = {10, 20, 30, 5, 15, 25};
    for (int i = 0; i < 6; i++) {
        tags[i] = (tag){&f, i};
        assert_non_null(t[i] = llm_loop_timer_add(loop, delays[i], note_fire, &tags[i]));
    }
    llm_loop_timer_cancel(loop, t[1]); /* the middle of the list */
    llm_loop_timer_cancel(loop, t[2]); /* its tail */
    llm_loop_timer_cancel(loop, t[4]); /* one in the heap */
    llm_loop_timer_cancel(loop, NULL);
    /* a new timer after the list's tail went: it joins the list behind 0 */
    tag late = {&f, 6};
    assert_non_null(llm_loop_timer_add(loop, 40, note_fire, &late));
    int64_t end = clock_mono_ms() + 2000;
    while (f.n < 4 && clock_mono_ms() < end)
        llm_loop_run_once(loop, 5);
    run_for(loop, 20);
    assert_int_equal(f.n, 4);
    static const int want[4] = {3, 0, 5, 6};
    for (int i = 0; i < 4; i++)
        assert_int_equal(f.order[i], want[i]);
    /* timers left pending are freed with the loop (ASan: no leak) */
    assert_non_null(llm_loop_timer_add(loop, 60000, note_fire, &late));
    assert_non_null(llm_loop_timer_add(loop, 1, note_fire, &late));
    llm_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_pieces_until_done),
        cmocka_unit_test(test_idle_waits_for_quiet),
        cmocka_unit_test(test_idle_wakes_a_blocking_wait),
        cmocka_unit_test(test_idle_remove),
        cmocka_unit_test(test_timers_fire_in_deadline_order),
        cmocka_unit_test(test_timer_cancel_from_list_and_heap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
