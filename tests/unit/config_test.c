#include "core/config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

static const char *write_config(const char *text)
{
    snprintf(path, sizeof path, "/tmp/askpanel-config-test-%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void expect_error(const char *text, const char *needle)
{
    config c;
    ap_err err = {0};
    assert_int_equal(config_defaults(&c), AP_OK);
    assert_int_not_equal(config_load_file(&c, write_config(text), &err), AP_OK);
    if (strstr(err.msg, needle) == NULL || strstr(err.msg, path) == NULL)
        fail_msg("error \"%s\" should name \"%s\" and the file", err.msg, needle);
    config_free(&c);
    unlink(path);
}

static void test_defaults_are_embedded(void **state)
{
    (void)state;
    config c;
    assert_int_equal(config_defaults(&c), AP_OK);
    assert_string_equal(c.listen, "127.0.0.1:8080");
    assert_string_equal(c.store, "sqlite:data/askpanel.db");
    assert_string_equal(c.cache, "memory");
    assert_int_equal(c.http_max_body_bytes, 1048576);
    assert_int_equal(c.runtime_lua_memory_mb, 64);
    assert_int_equal(c.runtime_lease_ms, 30000);
    config_free(&c);
}

static void test_file_overrides_defaults(void **state)
{
    (void)state;
    config c;
    ap_err err = {0};
    assert_int_equal(config_defaults(&c), AP_OK);
    const char *p = write_config("{\"$comment\":\"doc\",\"listen\":\"0.0.0.0:9000\","
                                 "\"http\":{\"max_body_bytes\":2048,\"threads\":3},"
                                 "\"runtime\":{\"lease_ms\":5000},"
                                 "\"llm\":{\"default_provider\":\"simulated\"}}");
    assert_int_equal(config_load_file(&c, p, &err), AP_OK);
    assert_string_equal(c.listen, "0.0.0.0:9000");
    assert_int_equal(c.http_max_body_bytes, 2048);
    assert_int_equal(c.http_threads, 3);
    assert_int_equal(c.runtime_lease_ms, 5000);
    assert_non_null(c.llm);
    assert_string_equal(c.source, p);
    config_free(&c);
    unlink(p);
}

static void test_unknown_key(void **state)
{
    (void)state;
    expect_error("{\"listne\":\"x:1\"}", "listne");
    expect_error("{\"http\":{\"max_bodyy\":1}}", "http.max_bodyy");
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_error("{\"listen\":8080}", "listen");
    expect_error("{\"http\":{\"threads\":\"two\"}}", "http.threads");
    expect_error("{\"http\":{\"threads\":1.5}}", "http.threads");
    expect_error("{\"http\":7}", "http");
    expect_error("{\"llm\":[]}", "llm");
    expect_error("[1,2]", "object");
}

static void test_impossible_values(void **state)
{
    (void)state;
    expect_error("{\"http\":{\"max_body_bytes\":1}}", "http.max_body_bytes");
    expect_error("{\"runtime\":{\"runners\":-1}}", "runtime.runners");
    /* a lease shorter than a second would lapse between two renewals on a loaded store */
    expect_error("{\"runtime\":{\"lease_ms\":999}}", "runtime.lease_ms");
    expect_error("{\"runtime\":{\"lease_ms\":3600001}}", "runtime.lease_ms");
    expect_error("{\"log_level\":\"loud\"}", "log_level");
    expect_error("{\"store\":\"\"}", "store");
}

static void test_malformed_json(void **state)
{
    (void)state;
    expect_error("{\"listen\":", "malformed JSON");
    expect_error("{} trailing", "trailing");
}

static void test_missing_file(void **state)
{
    (void)state;
    config c;
    ap_err err = {0};
    assert_int_equal(config_defaults(&c), AP_OK);
    assert_int_equal(config_load_file(&c, "/no/such/file.json", &err), AP_NOTFOUND);
    assert_non_null(strstr(err.msg, "/no/such/file.json"));
    config_free(&c);
}

static void test_env_overrides(void **state)
{
    (void)state;
    config c;
    ap_err err = {0};
    assert_int_equal(config_defaults(&c), AP_OK);
    setenv("ASKPANEL_HTTP_MAX_BODY_BYTES", "4096", 1);
    setenv("ASKPANEL_LISTEN", "127.0.0.1:9999", 1);
    assert_int_equal(config_apply_env(&c, &err), AP_OK);
    assert_int_equal(c.http_max_body_bytes, 4096);
    assert_string_equal(c.listen, "127.0.0.1:9999");
    setenv("ASKPANEL_HTTP_MAX_BODY_BYTES", "lots", 1);
    assert_int_equal(config_apply_env(&c, &err), AP_INVALID);
    assert_non_null(strstr(err.msg, "ASKPANEL_HTTP_MAX_BODY_BYTES"));
    unsetenv("ASKPANEL_HTTP_MAX_BODY_BYTES");
    unsetenv("ASKPANEL_LISTEN");
    config_free(&c);
}

static void test_set_from_flag(void **state)
{
    (void)state;
    config c;
    ap_err err = {0};
    assert_int_equal(config_defaults(&c), AP_OK);
    assert_int_equal(config_set(&c, "store", "sqlite::memory:", "--store", &err), AP_OK);
    assert_string_equal(c.store, "sqlite::memory:");
    assert_int_equal(config_set(&c, "nope", "1", "--nope", &err), AP_INVALID);
    assert_non_null(strstr(err.msg, "nope"));
    config_free(&c);
}

static void test_listen_addr(void **state)
{
    (void)state;
    config c;
    ap_err err = {0};
    char host[64];
    uint16_t port;
    assert_int_equal(config_defaults(&c), AP_OK);
    assert_int_equal(config_listen_addr(&c, host, sizeof host, &port, &err), AP_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8080);
    assert_int_equal(config_set(&c, "listen", "[::1]:81", "t", &err), AP_OK);
    assert_int_equal(config_listen_addr(&c, host, sizeof host, &port, &err), AP_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 81);
    const char *bad[] = {"nocolon", ":80", "host:99999", "host:x"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(config_set(&c, "listen", bad[i], "t", &err), AP_OK);
        assert_int_equal(config_listen_addr(&c, host, sizeof host, &port, &err), AP_INVALID);
    }
    config_free(&c);
}

static void test_shipped_default_file_is_valid(void **state)
{
    (void)state;
    config c;
    ap_err err = {0};
    assert_int_equal(config_defaults(&c), AP_OK);
    assert_int_equal(config_load_file(&c, "config/askpanel.json", &err), AP_OK);
    assert_string_equal(c.listen, "127.0.0.1:8080");
    config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_embedded),
        cmocka_unit_test(test_file_overrides_defaults),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_impossible_values),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_env_overrides),
        cmocka_unit_test(test_set_from_flag),
        cmocka_unit_test(test_listen_addr),
        cmocka_unit_test(test_shipped_default_file_is_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
