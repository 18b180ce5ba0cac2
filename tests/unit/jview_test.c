/* core/jview: validation agrees with cJSON, lookups, string decoding, limits. */
#include "core/jsonx.h"
#include "core/jview.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool accepts(const char *text, size_t len)
{
    jview v;
    ap_status rc = jview_parse(&v, text, len, 64, NULL);
    jview_free(&v);
    return rc == AP_OK;
}

static void test_lookups(void **state)
{
    (void)state;
    const char *doc =
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \\\"you\\\"\"},"
        "\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":12,\"n\":-1.5e2},"
        "\"id\":\"second\",\"e\\u0073c\":true}";
    jview v;
    assert_int_equal(jview_parse(&v, doc, strlen(doc), 64, NULL), AP_OK);
    assert_int_equal(jview_type_of(&v, 0), JVIEW_OBJECT);
    assert_int_equal(jview_count(&v, 0), 5);
    assert_true(jview_string_is(&v, jview_get(&v, 0, "id"), "c1")); /* the first one wins */
    int choice = jview_index(&v, jview_get(&v, 0, "choices"), 0);
    assert_int_equal(jview_type_of(&v, choice), JVIEW_OBJECT);
    assert_int_equal(jview_index(&v, jview_get(&v, 0, "choices"), 1), -1);
    char out[64];
    int content = jview_get(&v, jview_get(&v, choice, "delta"), "content");
    assert_int_equal(jview_string(&v, content, out, sizeof out), 8);
    assert_string_equal(out, "Hi \"you\"");
    assert_int_equal(jview_type_of(&v, jview_get(&v, choice, "finish_reason")), JVIEW_NULL);
    int usage = jview_get(&v, 0, "usage");
    assert_true(jview_number(&v, jview_get(&v, usage, "prompt_tokens"), -1) == 12);
    assert_true(jview_number(&v, jview_get(&v, usage, "n"), 0) == -150);
    assert_true(jview_number(&v, jview_get(&v, usage, "missing"), 7) == 7);
    assert_int_equal(jview_type_of(&v, jview_get(&v, 0, "esc")), JVIEW_TRUE); /* escaped key */
    /* absent values chain to absent */
    assert_int_equal(jview_get(&v, jview_get(&v, 0, "nope"), "x"), -1);
    assert_int_equal(jview_type_of(&v, -1), JVIEW_NONE);
    assert_int_equal(jview_string(&v, -1, out, sizeof out), 0);
    assert_string_equal(out, "");
    jview_free(&v);
}

static void test_string_decoding(void **state)
{
    (void)state;
    const char *doc = "[\"a\\u00e9\\u20ac\\ud83d\\ude00\\n\\/\",\"x\\u0000y\",\"caf\xc3\xa9\"]";
    jview v;
    assert_int_equal(jview_parse(&v, doc, strlen(doc), 64, NULL), AP_OK);
    char out[32];
    assert_int_equal(jview_string(&v, jview_index(&v, 0, 0), out, sizeof out), 12);
    assert_string_equal(out, "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\n/");
    /* \u0000 ends the string, as cJSON does */
    assert_int_equal(jview_string(&v, jview_index(&v, 0, 1), out, sizeof out), 1);
    assert_string_equal(out, "x");
    assert_true(jview_string_is(&v, jview_index(&v, 0, 2), "caf\xc3\xa9"));
    /* a small buffer truncates but reports the whole length */
    char tiny[4];
    assert_int_equal(jview_string(&v, jview_index(&v, 0, 0), tiny, sizeof tiny), 12);
    assert_string_equal(tiny, "a\xc3\xa9");
    jview_free(&v);
}

static void test_rejects(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "   ",
        "{",
        "}",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{a:1}",
        "01",
        "1.",
        "-",
        ".5",
        "1e",
        "+1",
        "tru",
        "nul",
        "\"abc",
        "\"a\\x\"",
        "\"\\u12\"",
        "\"\\ud800\"",
        "\"\\udc00x\"",
        "\"a\tb\"",
        "[1] x",
        "[1]]",
        "\"\xff\"",
        "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"",
        "\xef\xbb\xbf{}",
        "{\"a\":}",
        "[,1]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ap_err err;
        jview v;
        ap_status rc = jview_parse(&v, bad[i], strlen(bad[i]), 64, &err);
        jview_free(&v);
        if (rc != AP_INVALID)
            fail_msg("accepted %s", bad[i]);
    }
    /* depth is counted in containers, like jsonx_parse */
    assert_true(accepts("[[[1]]]", 7));
    jview v;
    ap_err err;
    assert_int_equal(jview_parse(&v, "[[[1]]]", 7, 2, &err), AP_INVALID);
    assert_non_null(strstr(err.msg, "deeper"));
    jview_free(&v);
    /* the length bounds the text, not a NUL */
    assert_true(accepts("[1]garbage", 3));
    assert_false(accepts("[1]\0", 4));
}

/* Past the inline tokens the array grows, and lookups still work. */
static void test_many_tokens(void **state)
{
    (void)state;
    char doc[20000];
    size_t n = 0;
    n += (size_t)snprintf(doc + n, sizeof doc - n, "{");
    for (int i = 0; i < 1000; i++)
        n += (size_t)snprintf(doc + n, sizeof doc - n, "%s\"k%d\":[%d,\"v\"]", i ? "," : "", i, i);
    n += (size_t)snprintf(doc + n, sizeof doc - n, "}");
    jview v;
    assert_int_equal(jview_parse(&v, doc, n, 64, NULL), AP_OK);
    assert_true(v.n > JVIEW_INLINE);
    assert_true(jview_number(&v, jview_index(&v, jview_get(&v, 0, "k999"), 0), -1) == 999);
    jview_free(&v);
    jview_free(NULL);
}

/* Random documents and random damage: jview accepts exactly what cJSON (plus the strict UTF-8
 * check the engine applies before it) accepts, except numbers that RFC 8259 forbids and
 * cJSON's strtod takes (012, 1., 1e): with every number replaced by 0 they must agree; and
 * \u escapes with bad hex digits, which cJSON reads as U+0000, and raw control characters in
 * strings. */
static bool cjson_lenient(const char *doc)
{
    for (const char *p = doc; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20)
            return true;
    for (const char *p = strstr(doc, "\\u"); p != NULL; p = strstr(p + 1, "\\u"))
        for (int k = 2; k < 6; k++)
            if (p[k] == '\0' || strchr("0123456789abcdefABCDEF", p[k]) == NULL)
                return true;
    return false;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void gen(char *out, size_t cap, size_t *n, int depth)
{
    static const char *atoms[] = {"0",     "-12.5e3",        "true",         "false", "null",
                                  "\"x\"", "\"\\u00e9\\n\"", "\"\xc3\xa9\"", "1E+2",  "\"\\\"\""};
    int kind = depth > 3 ? 0 : (int)(next() % 3);
    if (*n + 64 >= cap)
        kind = 0;
    if (kind == 0) {
        *n += (size_t)snprintf(out + *n, cap - *n, "%s", atoms[next() % 10]);
        return;
    }
    int items = (int)(next() % 4);
    *n += (size_t)snprintf(out + *n, cap - *n, "%s", kind == 1 ? "[" : "{");
    for (int i = 0; i < items && *n + 64 < cap; i++) {
        if (i > 0)
            *n += (size_t)snprintf(out + *n, cap - *n, ",");
        if (kind == 2)
            *n += (size_t)snprintf(out + *n, cap - *n, "\"k%d\":", (int)(next() % 5));
        gen(out, cap, n, depth + 1);
    }
    *n += (size_t)snprintf(out + *n, cap - *n, "%s", kind == 1 ? "]" : "}");
}

static size_t zero_numbers(const char *in, size_t n, char *out)
{
    size_t o = 0;
    bool str = false;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (str) {
            out[o++] = c;
            if (c == '\\' && i + 1 < n)
                out[o++] = in[++i];
            else if (c == '"')
                str = false;
        } else if (c == '"') {
            str = true;
            out[o++] = c;
        } else if (strchr("-0123456789", c) != NULL && c != '\0') {
            while (i + 1 < n && in[i + 1] != '\0' && strchr("+-.eE0123456789", in[i + 1]) != NULL)
                i++;
            out[o++] = '0';
        } else {
            out[o++] = c;
        }
    }
    out[o] = '\0';
    return o;
}

static void test_agrees_with_cjson(void **state)
{
    (void)state;
    static const char damage[] = "{}[],:\"\\ -+.eE0123456789tfnu\x01\x80\xc3\xff";
    for (int round = 0; round < 20000; round++) {
        char doc[2048];
        size_t n = 0;
        gen(doc, sizeof doc, &n, 0);
        int cuts = (int)(next() % 3);
        for (int c = 0; c < cuts && n > 0; c++) {
            size_t at = next() % n;
            if (next() % 2)
                doc[at] = damage[next() % (sizeof damage - 1)];
            else
                n = at; /* truncate */
        }
        doc[n] = '\0';
        cJSON *j = jsonx_parse(doc, n, 64, NULL);
        bool ref = j != NULL && jsonx_utf8_valid(doc, n) && strlen(doc) == n;
        cJSON_Delete(j);
        bool got = accepts(doc, n);
        if (ref && !got && cjson_lenient(doc))
            continue;
        if (ref && !got) {
            char z[2048];
            size_t zn = zero_numbers(doc, n, z);
            got = accepts(z, zn);
        }
        if (got != ref)
            fail_msg("jview %s, cJSON %s: [%s]", ref ? "rejects" : "accepts",
                     ref ? "accepts" : "rejects", doc);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookups),           cmocka_unit_test(test_string_decoding),
        cmocka_unit_test(test_rejects),           cmocka_unit_test(test_many_tokens),
        cmocka_unit_test(test_agrees_with_cjson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
