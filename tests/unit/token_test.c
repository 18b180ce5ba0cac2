#include "http/token.h"

#include "core/clock.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

static const char *T = "aaaaaaaa-0000-4000-8000-000000000001";
static const char *P = "bbbbbbbb-0000-4000-8000-000000000002";
static const char *Q = "cccccccc-0000-4000-8000-000000000003";
static const char *K = "dddddddd-0000-4000-8000-000000000004";

static void test_roundtrip(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1], key[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, K, 60000, tok, &exp), AP_OK);
    assert_true(token_verify(tok, P, tenant, key));
    assert_string_equal(tenant, T);
    assert_string_equal(key, K); /* the key that asked for it, for auth.c to check */
}

static void test_other_panel_refused(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1], key[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, K, 60000, tok, &exp), AP_OK);
    assert_false(token_verify(tok, Q, tenant, key));
}

static void test_tampering_refused(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1], key[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, K, 60000, tok, &exp), AP_OK);
    char forged[TOKEN_MAX];
    memcpy(forged, tok, sizeof forged);
    forged[0] = forged[0] == '9' ? '8' : '9'; /* another expiry */
    assert_false(token_verify(forged, P, tenant, key));
    memcpy(forged, tok, sizeof forged);
    forged[strlen(forged) - 1] ^= 1;
    assert_false(token_verify(forged, P, tenant, key));
    /* another key in the token: a leaked token cannot be moved to a key still active */
    memcpy(forged, tok, sizeof forged);
    char *k = strstr(forged, K);
    assert_non_null(k);
    k[0] = 'e';
    assert_false(token_verify(forged, P, tenant, key));
    assert_false(token_verify("", P, tenant, key));
    assert_false(token_verify("1.2.3.4", P, tenant, key));
    assert_false(token_verify(NULL, P, tenant, key));
}

static void test_expired_refused(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1], key[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, K, -1000, tok, &exp), AP_OK);
    assert_false(token_verify(tok, P, tenant, key));
}

/* A token names its key in full: none is issued without a key id as the store writes it. */
static void test_key_required(void **state)
{
    (void)state;
    char tok[TOKEN_MAX];
    int64_t exp;
    assert_int_equal(token_issue(T, P, "", 60000, tok, &exp), AP_INVALID);
    assert_int_equal(token_issue(T, P, NULL, 60000, tok, &exp), AP_INVALID);
    assert_int_equal(token_issue(T, P, "DDDDDDDD-0000-4000-8000-000000000004", 60000, tok, &exp),
                     AP_INVALID);
    assert_int_equal(token_issue(T, "p", K, 60000, tok, &exp), AP_INVALID);
}

/* The longest expiry still fits TOKEN_MAX. */
static void test_bounded(void **state)
{
    (void)state;
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1], key[IDS_UUID_LEN + 1];
    int64_t exp;
    assert_int_equal(token_issue(T, P, K, INT64_MAX - clock_wall_ms(), tok, &exp), AP_OK);
    assert_true(strlen(tok) < TOKEN_MAX);
    assert_true(token_verify(tok, P, tenant, key));
    assert_string_equal(key, K);
}

/* A configured secret is the key: a token from one node (or an earlier process) with the same
 * secret verifies, one signed with another secret does not. Runs last: it replaces the key. */
static void test_configured_secret(void **state)
{
    (void)state;
    const char *a = "a-secret-shared-by-every-engine-node-0001";
    const char *b = "another-secret-of-another-deployment-0002";
    char tok[TOKEN_MAX], tenant[IDS_UUID_LEN + 1], key[IDS_UUID_LEN + 1];
    int64_t exp;
    ap_err err;
    assert_int_equal(token_init(a, &err), AP_OK);
    assert_int_equal(token_issue(T, P, K, 60000, tok, &exp), AP_OK);
    assert_int_equal(token_init(b, &err), AP_OK);
    assert_false(token_verify(tok, P, tenant, key));
    assert_int_equal(token_init(a, &err), AP_OK); /* "the other node" */
    assert_true(token_verify(tok, P, tenant, key));
    assert_string_equal(tenant, T);
    /* too short a secret is refused and the key stays */
    assert_int_equal(token_init("short", &err), AP_INVALID);
    assert_non_null(strstr(err.msg, "stream_token_secret"));
    assert_true(token_verify(tok, P, tenant, key));
    /* "" keeps the key in use */
    assert_int_equal(token_init("", &err), AP_OK);
    assert_true(token_verify(tok, P, tenant, key));
}

/* A genuine token of the format without a key ("<expiry>.<tenant>.<panel>.<hmac>") stands for
 * no key that could be checked: refused. Runs after test_configured_secret (its secret). */
static void test_keyless_format_refused(void **state)
{
    (void)state;
    const char *a = "a-secret-shared-by-every-engine-node-0001";
    ap_err err;
    assert_int_equal(token_init(a, &err), AP_OK);
    char old[TOKEN_MAX], tenant[IDS_UUID_LEN + 1], key[IDS_UUID_LEN + 1];
    int n = snprintf(old, sizeof old, "%lld.%s.%s", (long long)(clock_wall_ms() + 60000), T, P);
    assert_true(n > 0 && (size_t)n + IDS_SHA256_HEX_LEN + 2 <= sizeof old);
    char mac[IDS_SHA256_HEX_LEN + 1];
    ids_hmac_sha256_hex(a, strlen(a), old, (size_t)n, mac);
    snprintf(old + n, sizeof old - (size_t)n, ".%s", mac);
    assert_false(token_verify(old, P, tenant, key));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),         cmocka_unit_test(test_other_panel_refused),
        cmocka_unit_test(test_tampering_refused), cmocka_unit_test(test_expired_refused),
        cmocka_unit_test(test_key_required),      cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_configured_secret), cmocka_unit_test(test_keyless_format_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
