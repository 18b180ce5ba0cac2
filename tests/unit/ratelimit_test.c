#include "http/ratelimit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

static const char *A = "aaaaaaaa-0000-4000-8000-000000000001";
static const char *B = "bbbbbbbb-0000-4000-8000-000000000002";

static void test_burst_then_rate(void **state)
{
    (void)state;
    ratelimit *rl = ratelimit_new(8);
    int64_t retry = 0;
    for (int i = 0; i < 60; i++)
        assert_true(ratelimit_take(rl, A, 60, 1000, &retry));
    assert_false(ratelimit_take(rl, A, 60, 1000, &retry));
    assert_true(retry > 900 && retry <= 1001);
    /* Another tenant has its own bucket. */
    assert_true(ratelimit_take(rl, B, 60, 1000, &retry));
    /* One token per second comes back. */
    assert_false(ratelimit_take(rl, A, 60, 1500, &retry));
    assert_true(ratelimit_take(rl, A, 60, 2001, &retry));
    assert_false(ratelimit_take(rl, A, 60, 2001, &retry));
    ratelimit_free(rl);
}

static void test_unlimited_and_eviction(void **state)
{
    (void)state;
    ratelimit *rl = ratelimit_new(1);
    for (int i = 0; i < 1000; i++)
        assert_true(ratelimit_take(rl, A, 0, 1, NULL));
    assert_true(ratelimit_take(rl, A, 1, 10, NULL));
    assert_false(ratelimit_take(rl, A, 1, 10, NULL));
    /* B evicts A (capacity 1): A starts again with a full bucket. */
    assert_true(ratelimit_take(rl, B, 1, 20, NULL));
    assert_true(ratelimit_take(rl, A, 1, 30, NULL));
    ratelimit_free(rl);
    ratelimit_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_rate),
        cmocka_unit_test(test_unlimited_and_eviction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
