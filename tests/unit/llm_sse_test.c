#include "core/buf.h"
#include "llm/sse.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

/* Each event is written to a transcript "[event|id|data]" so runs can be compared whole. */
static ap_status record(void *ctx, const llm_sse_event *ev)
{
    buf *t = ctx;
    assert_int_equal(strlen(ev->data), ev->data_len);
    return buf_printf(t, "[%s|%s|%s]", ev->event, ev->id, ev->data);
}

static ap_status run(const char *in, size_t len, size_t split, size_t max_line, size_t max_event,
                     buf *t)
{
    llm_sse_parser *p = llm_sse_new(max_line, max_event, record, t);
    assert_non_null(p);
    ap_err err;
    ap_status rc = llm_sse_feed(p, in, split, &err);
    if (rc == AP_OK)
        rc = llm_sse_feed(p, in + split, len - split, &err);
    bool partial = false;
    if (rc == AP_OK)
        rc = llm_sse_finish(p, &partial, &err);
    if (rc == AP_OK && partial)
        buf_puts(t, "<partial>");
    if (rc != AP_OK)
        buf_printf(t, "<%s>", ap_status_name(rc));
    llm_sse_free(p);
    return rc;
}

/* Parses in whole, split at every byte boundary, and byte by byte; all must agree with want. */
static void check_all_splits(const char *in, size_t max_line, size_t max_event, const char *want)
{
    size_t len = strlen(in);
    for (size_t k = 0; k <= len; k++) {
        buf t;
        buf_init(&t, 1 << 20);
        run(in, len, k, max_line, max_event, &t);
        if (strcmp(t.data ? t.data : "", want) != 0)
            fail_msg("split at %zu: got %s want %s", k, t.data ? t.data : "", want);
        buf_free(&t);
    }
    buf t;
    buf_init(&t, 1 << 20);
    llm_sse_parser *p = llm_sse_new(max_line, max_event, record, &t);
    ap_status rc = AP_OK;
    for (size_t i = 0; i < len && rc == AP_OK; i++)
        rc = llm_sse_feed(p, in + i, 1, NULL);
    bool partial = false;
    if (rc == AP_OK)
        rc = llm_sse_finish(p, &partial, NULL);
    if (rc == AP_OK && partial)
        buf_puts(&t, "<partial>");
    if (rc != AP_OK)
        buf_printf(&t, "<%s>", ap_status_name(rc));
    assert_string_equal(t.data ? t.data : "", want);
    llm_sse_free(p);
    buf_free(&t);
}

static void test_basic_events(void **state)
{
    (void)state;
    check_all_splits("data: hello\n\ndata: world\n\n", 1024, 1024,
                     "[message||hello][message||world]");
}

static void test_line_endings(void **state)
{
    (void)state;
    check_all_splits("data: a\r\n\r\ndata: b\r\rdata: c\n\n", 1024, 1024,
                     "[message||a][message||b][message||c]");
    /* CR then LF across the boundary is one line end, not an empty line. */
    check_all_splits("data: x\r\ndata: y\r\n\r\n", 1024, 1024, "[message||x\ny]");
}

static void test_fields(void **state)
{
    (void)state;
    check_all_splits(": comment\nevent: ping\nid: 7\nretry: 100\nfoo: bar\ndata:{\"a\":1}\n\n"
                     "data\n\nevent: x\n\ndata: after\n\n",
                     1024, 1024, "[ping|7|{\"a\":1}][message|7|][message|7|after]");
    /* only one leading space is stripped */
    check_all_splits("data:  two\n\n", 1024, 1024, "[message|| two]");
}

static void test_multiline_data(void **state)
{
    (void)state;
    check_all_splits("data: 1\ndata: 2\ndata:\ndata: 3\n\n", 1024, 1024, "[message||1\n2\n\n3]");
}

static void test_bom_and_partial(void **state)
{
    (void)state;
    check_all_splits("\xEF\xBB\xBF"
                     "data: a\n\ndata: cut",
                     1024, 1024, "[message||a]<partial>");
    check_all_splits("data: a\n\ndata: b\n", 1024, 1024, "[message||a]<partial>");
}

static void test_limits(void **state)
{
    (void)state;
    check_all_splits("data: 0123456789\n\n", 8, 1024, "<limit>");
    check_all_splits("data: 0123\ndata: 4567\n\n", 1024, 8, "<limit>");
    check_all_splits("data: ok\n\ndata: 0123456789abc\n\n", 12, 1024, "[message||ok]<limit>");
}

static ap_status stop_second(void *ctx, const llm_sse_event *ev)
{
    int *n = ctx;
    (void)ev;
    return ++*n == 2 ? AP_DENIED : AP_OK;
}

static void test_handler_stops(void **state)
{
    (void)state;
    int n = 0;
    llm_sse_parser *p = llm_sse_new(64, 64, stop_second, &n);
    const char *in = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    assert_int_equal(llm_sse_feed(p, in, strlen(in), NULL), AP_DENIED);
    assert_int_equal(n, 2);
    /* a failed parser stays failed */
    assert_int_equal(llm_sse_feed(p, "data: 4\n\n", 9, NULL), AP_DENIED);
    assert_int_equal(n, 2);
    assert_int_equal(llm_sse_bytes(p), strlen(in));
    llm_sse_free(p);
    llm_sse_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_events),    cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_fields),          cmocka_unit_test(test_multiline_data),
        cmocka_unit_test(test_bom_and_partial), cmocka_unit_test(test_limits),
        cmocka_unit_test(test_handler_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
