#include "http/router.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

static int h_list, h_get, h_events, h_post;

static int setup(void **state)
{
    router *r = router_new();
    assert_non_null(r);
    assert_int_equal(router_add(r, "GET", "/v1/panels", &h_list, 1), AP_OK);
    assert_int_equal(router_add(r, "POST", "/v1/panels", &h_post, 2), AP_OK);
    assert_int_equal(router_add(r, "GET", "/v1/panels/{id}", &h_get, 3), AP_OK);
    assert_int_equal(router_add(r, "GET", "/v1/panels/{id}/events", &h_events, 4), AP_OK);
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    router_free(*state);
    return 0;
}

static void test_literal_match(void **state)
{
    router_match m;
    assert_int_equal(router_match_path(*state, "GET", "/v1/panels", &m, NULL, 0), ROUTER_FOUND);
    assert_ptr_equal(m.handler, &h_list);
    assert_int_equal(m.flags, 1);
    assert_int_equal(m.nparams, 0);
    assert_int_equal(router_match_path(*state, "POST", "/v1/panels", &m, NULL, 0), ROUTER_FOUND);
    assert_ptr_equal(m.handler, &h_post);
}

static void test_params(void **state)
{
    router_match m;
    assert_int_equal(router_match_path(*state, "GET", "/v1/panels/abc-123/events", &m, NULL, 0),
                     ROUTER_FOUND);
    assert_ptr_equal(m.handler, &h_events);
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.names[0], "id");
    assert_string_equal(m.values[0], "abc-123");
    assert_int_equal(router_match_path(*state, "GET", "/v1/panels/xyz", &m, NULL, 0), ROUTER_FOUND);
    assert_ptr_equal(m.handler, &h_get);
    assert_string_equal(m.values[0], "xyz");
}

static void test_not_found(void **state)
{
    router_match m;
    const char *paths[] = {"/",
                           "/v1",
                           "/v1/panel",
                           "/v1/panels/",
                           "/v1/panels//events",
                           "/v1/panels/a/events/x",
                           "v1/panels",
                           "/v1/panels/a/b",
                           ""};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        assert_int_equal(router_match_path(*state, "GET", paths[i], &m, NULL, 0), ROUTER_NOT_FOUND);
}

static void test_method_not_allowed_lists_allow(void **state)
{
    router_match m;
    char allow[64];
    assert_int_equal(router_match_path(*state, "DELETE", "/v1/panels", &m, allow, sizeof allow),
                     ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "GET, POST");
    assert_int_equal(
        router_match_path(*state, "PUT", "/v1/panels/1/events", &m, allow, sizeof allow),
        ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "GET");
}

static void test_head_matches_get(void **state)
{
    router_match m;
    assert_int_equal(router_match_path(*state, "HEAD", "/v1/panels/7", &m, NULL, 0), ROUTER_FOUND);
    assert_ptr_equal(m.handler, &h_get);
}

static void test_overlong_param_does_not_match(void **state)
{
    char path[400] = "/v1/panels/";
    memset(path + strlen(path), 'a', 300);
    path[311] = '\0';
    router_match m;
    assert_int_equal(router_match_path(*state, "GET", path, &m, NULL, 0), ROUTER_NOT_FOUND);
}

static void test_bad_patterns_rejected(void **state)
{
    router *r = *state;
    assert_int_equal(router_add(r, "GET", "/v1/panels", &h_list, 0), AP_INVALID); /* duplicate */
    assert_int_equal(router_add(r, "GET", "no-slash", &h_list, 0), AP_INVALID);
    assert_int_equal(router_add(r, "GET", "/a//b", &h_list, 0), AP_INVALID);
    assert_int_equal(router_add(r, "GET", "/a/{}", &h_list, 0), AP_INVALID);
}

static void test_root_route(void **state)
{
    (void)state;
    router *r = router_new();
    assert_int_equal(router_add(r, "GET", "/", &h_list, 0), AP_OK);
    router_match m;
    assert_int_equal(router_match_path(r, "GET", "/", &m, NULL, 0), ROUTER_FOUND);
    assert_int_equal(router_match_path(r, "GET", "/x", &m, NULL, 0), ROUTER_NOT_FOUND);
    router_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_literal_match, setup, teardown),
        cmocka_unit_test_setup_teardown(test_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_not_allowed_lists_allow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_matches_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlong_param_does_not_match, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_patterns_rejected, setup, teardown),
        cmocka_unit_test(test_root_route),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
