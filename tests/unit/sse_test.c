#include "http/sse.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

static void test_durable_frame_has_id(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 1024);
    assert_int_equal(sse_format(&b, 7, "expert.message", "{\"a\":1}"), AP_OK);
    assert_string_equal(b.data, "id: 7\nevent: expert.message\ndata: {\"a\":1}\n\n");
    buf_free(&b);
}

static void test_ephemeral_frame_has_no_id(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 1024);
    assert_int_equal(sse_format(&b, 0, "expert.delta", "{}"), AP_OK);
    assert_string_equal(b.data, "event: expert.delta\ndata: {}\n\n");
    buf_free(&b);
}

static void test_multiline_data_is_split(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 1024);
    /* A newline inside data must not end the event or inject fields. */
    assert_int_equal(sse_format(&b, 1, "x", "a\nid: 99\r\nb\rc"), AP_OK);
    assert_string_equal(b.data, "id: 1\nevent: x\ndata: a\ndata: id: 99\ndata: b\ndata: c\n\n");
    buf_free(&b);
}

static void test_limit_is_reported(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 16);
    assert_int_equal(sse_format(&b, 1, "expert.message", "{\"long\":true}"), AP_LIMIT);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durable_frame_has_id),
        cmocka_unit_test(test_ephemeral_frame_has_no_id),
        cmocka_unit_test(test_multiline_data_is_split),
        cmocka_unit_test(test_limit_is_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
