/* The OpenAPI document and the router must agree: every route is documented and every
 * documented operation is routed. (Response bodies are checked against the document by the
 * integration harness on every request it makes.) */
#include "core/embed.h"
#include "http/api.h"

#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

static cJSON *doc;

static void lower(const char *in, char *out, size_t cap)
{
    size_t i = 0;
    for (; in[i] != '\0' && i + 1 < cap; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[i] = '\0';
}

static int missing;

static void check_documented(const char *method, const char *pattern, void *ud)
{
    (void)ud;
    char m[16];
    lower(method, m, sizeof m);
    cJSON *path = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItem(doc, "paths"), pattern);
    if (path == NULL || cJSON_GetObjectItemCaseSensitive(path, m) == NULL) {
        print_error("route %s %s is not in docs/api/openapi.json\n", method, pattern);
        missing++;
    }
}

static void test_every_route_is_documented(void **state)
{
    (void)state;
    router *r = router_new();
    assert_int_equal(api_register(r, NULL), AP_OK);
    missing = 0;
    router_each(r, check_documented, NULL);
    assert_int_equal(missing, 0);
    router_free(r);
}

static void test_every_documented_operation_is_routed(void **state)
{
    (void)state;
    router *r = router_new();
    assert_int_equal(api_register(r, NULL), AP_OK);
    const char *methods[] = {"get", "post", "put", "patch", "delete"};
    int unrouted = 0;
    cJSON *path;
    cJSON_ArrayForEach(path, cJSON_GetObjectItem(doc, "paths"))
    {
        for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
            if (cJSON_GetObjectItemCaseSensitive(path, methods[i]) == NULL)
                continue;
            char upper[16];
            size_t k = 0;
            for (; methods[i][k] != '\0'; k++)
                upper[k] = (char)toupper((unsigned char)methods[i][k]);
            upper[k] = '\0';
            /* Match the pattern literally by substituting a sample value for each {param}. */
            char concrete[256];
            size_t o = 0;
            for (const char *p = path->string; *p != '\0' && o + 40 < sizeof concrete; p++) {
                if (*p == '{') {
                    memcpy(concrete + o, "00000000-0000-4000-8000-000000000000", 36);
                    o += 36;
                    p = strchr(p, '}');
                } else {
                    concrete[o++] = *p;
                }
            }
            concrete[o] = '\0';
            router_match m;
            if (router_match_path(r, upper, concrete, &m, NULL, 0) != ROUTER_FOUND) {
                print_error("documented %s %s has no route\n", upper, path->string);
                unrouted++;
            }
        }
    }
    assert_int_equal(unrouted, 0);
    router_free(r);
}

static void test_every_operation_documents_its_errors(void **state)
{
    (void)state;
    int bad = 0;
    cJSON *path;
    cJSON_ArrayForEach(path, cJSON_GetObjectItem(doc, "paths"))
    {
        cJSON *op;
        cJSON_ArrayForEach(op, path)
        {
            if (strcmp(op->string, "parameters") == 0)
                continue;
            cJSON *responses = cJSON_GetObjectItem(op, "responses");
            cJSON *sec = cJSON_GetObjectItem(op, "security");
            bool is_public = cJSON_IsArray(sec) && cJSON_GetArraySize(sec) == 0;
            if (responses == NULL ||
                (!is_public && cJSON_GetObjectItem(responses, "401") == NULL)) {
                print_error("%s %s must document 401\n", op->string, path->string);
                bad++;
            }
        }
    }
    assert_int_equal(bad, 0);
}

int main(void)
{
    size_t len;
    const char *text = embed_get("docs/api/openapi.json", &len);
    assert_non_null(text);
    doc = cJSON_ParseWithLength(text, len);
    assert_non_null(doc);
    assert_string_equal(cJSON_GetObjectItem(doc, "openapi")->valuestring, "3.1.0");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_route_is_documented),
        cmocka_unit_test(test_every_documented_operation_is_routed),
        cmocka_unit_test(test_every_operation_documents_its_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    cJSON_Delete(doc);
    return rc;
}
