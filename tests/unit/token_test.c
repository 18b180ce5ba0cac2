#include "http/token.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

static const char *T = "aaaaaaaa-0000-4000-8000-000000000001";
static const char *P = "bbbbbbbb-0000-4000-8000-000000000002";
static const char *Q = "cccccccc-0000-4000-8000-000000000003";

static void test_roundtrip(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, 60000, tok, &exp), AP_OK);
    assert_true(token_verify(tok, P, tenant));
    assert_string_equal(tenant, T);
}

static void test_other_panel_refused(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, 60000, tok, &exp), AP_OK);
    assert_false(token_verify(tok, Q, tenant));
}

static void test_tampering_refused(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, 60000, tok, &exp), AP_OK);
    char forged[TOKEN_MAX];
    memcpy(forged, tok, sizeof forged);
    forged[0] = forged[0] == '9' ? '8' : '9'; /* another expiry */
    assert_false(token_verify(forged, P, tenant));
    memcpy(forged, tok, sizeof forged);
    forged[strlen(forged) - 1] ^= 1;
    assert_false(token_verify(forged, P, tenant));
    assert_false(token_verify("", P, tenant));
    assert_false(token_verify("1.2.3.4", P, tenant));
    assert_false(token_verify(NULL, P, tenant));
}

static void test_expired_refused(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, -1000, tok, &exp), AP_OK);
    assert_false(token_verify(tok, P, tenant));
}

/* A configured secret is the key: a token from one node (or an earlier process) with the same
 * secret verifies, one signed with another secret does not. Runs last: it replaces the key. */
static void test_configured_secret(void **state)
{
    (void)state;
    const char *a = "a-secret-shared-by-every-engine-node-0001";
    const char *b = "another-secret-of-another-deployment-0002";
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1];
    int64_t exp;
    ap_err err;
    assert_int_equal(token_init(a, &err), AP_OK);
    assert_int_equal(token_issue(T, P, 60000, tok, &exp), AP_OK);
    assert_int_equal(token_init(b, &err), AP_OK);
    assert_false(token_verify(tok, P, tenant));
    assert_int_equal(token_init(a, &err), AP_OK); /* "the other node" */
    assert_true(token_verify(tok, P, tenant));
    assert_string_equal(tenant, T);
    /* too short a secret is refused and the key stays */
    assert_int_equal(token_init("short", &err), AP_INVALID);
    assert_non_null(strstr(err.msg, "stream_token_secret"));
    assert_true(token_verify(tok, P, tenant));
    /* "" keeps the key in use */
    assert_int_equal(token_init("", &err), AP_OK);
    assert_true(token_verify(tok, P, tenant));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),         cmocka_unit_test(test_other_panel_refused),
        cmocka_unit_test(test_tampering_refused), cmocka_unit_test(test_expired_refused),
        cmocka_unit_test(test_configured_secret),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
