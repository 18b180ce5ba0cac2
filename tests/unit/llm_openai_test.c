#include "core/buf.h"
#include "core/jsonx.h"
#include "llm/http_wire.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* after cmocka.h: it asserts */
#include "../support/stream_splits.h"

#define CHUNK(delta, finish)                                                                       \
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\","           \
    "\"choices\":[{\"index\":0,\"delta\":" delta ",\"finish_reason\":" finish "}]}\n\n"

static const char *const STREAM = ": keep-alive\n\n" CHUNK(
    "{\"role\":\"assistant\",\"content\":\"\"}", "null") CHUNK("{\"content\":\"Hello\"}", "null")
    CHUNK("{\"content\":\" w\\u00f6rld \xE2\x9C\x93\"}", "null") CHUNK(
        "{}",
        "\"stop\"") "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,"
                    "\"completion_tokens\":3,\"total_tokens\":15}}\n\n"
                    "data: [DONE]\n\n";

static void test_stream_every_split(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    check_all_splits(
        &stream_api_openai, STREAM, &lim,
        "{Hello}{ w\xC3\xB6rld \xE2\x9C\x93} rc=ok text=Hello w\xC3\xB6rld \xE2\x9C\x93"
        " finish=stop id=chatcmpl-1 done=1 usage=12/3");
}

static void test_stream_crlf_and_no_usage(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    check_all_splits(&stream_api_openai,
                     "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n"
                     "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\r\n\r\n",
                     &lim, "{a} rc=ok text=a finish=length id= done=0");
}

static void test_stream_error_object(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    check_all_splits(&stream_api_openai,
                     CHUNK("{\"content\":\"par\"}",
                           "null") "data: {\"error\":{\"message\":\"The server had an error\","
                                   "\"type\":\"server_error\",\"code\":null}}\n\n",
                     &lim,
                     "{par} rc=error text=par finish= id=chatcmpl-1 done=0 error=server_error "
                     "retry=1");
    check_all_splits(&stream_api_openai,
                     "data: {\"error\":{\"message\":\"You exceeded your current quota\","
                     "\"type\":\"insufficient_quota\",\"code\":\"insufficient_quota\"}}\n\n",
                     &lim, " rc=error text= finish= id= done=0 error=insufficient_quota retry=0");
}

static void test_stream_faults(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    /* truncated: no finish reason, no [DONE] */
    check_all_splits(&stream_api_openai, CHUNK("{\"content\":\"Hel\"}", "null"), &lim,
                     "{Hel} rc=io text=Hel finish= id=chatcmpl-1 done=0");
    /* malformed chunk */
    check_all_splits(&stream_api_openai,
                     CHUNK("{\"content\":\"a\"}", "null") "data: {\"choices\":[{\"delta\":\n\n",
                     &lim, "{a} rc=invalid text=a finish= id=chatcmpl-1 done=0");
    /* invalid UTF-8 inside a JSON string */
    check_all_splits(&stream_api_openai,
                     "data: {\"choices\":[{\"delta\":{\"content\":\"\xC3\x28\"}}]}\n\n", &lim,
                     " rc=invalid text= finish= id= done=0");
    /* a lone surrogate escape is not text */
    check_all_splits(&stream_api_openai,
                     "data: {\"choices\":[{\"delta\":{\"content\":\"\\ud800\"}}]}\n\n", &lim,
                     " rc=invalid text= finish= id= done=0");
    /* a NUL escape would cut the answer where the engine reads it as C text */
    check_all_splits(
        &stream_api_openai,
        CHUNK("{\"content\":\"a\"}",
              "null") "data: {\"choices\":[{\"delta\":{\"content\":\"b\\u0000c\"}}]}\n\n",
        &lim, "{a} rc=invalid text=a finish= id=chatcmpl-1 done=0");
    /* anything after [DONE] is ignored */
    check_all_splits(&stream_api_openai, "data: [DONE]\n\ndata: {nonsense\n\n", &lim,
                     " rc=ok text= finish= id= done=1");
}

static void test_stream_limits(void **state)
{
    (void)state;
    llm_wire_limits lim = {.max_line = 4096, .max_event = 4096, .max_text = 5};
    check_all_splits(&stream_api_openai,
                     CHUNK("{\"content\":\"abc\"}", "null") CHUNK("{\"content\":\"def\"}", "null"),
                     &lim, "{abc} rc=limit text=abc finish= id=chatcmpl-1 done=0");
    llm_wire_limits tiny = {.max_line = 40, .max_event = 4096, .max_text = 4096};
    check_all_splits(&stream_api_openai, CHUNK("{\"content\":\"abc\"}", "null"), &tiny,
                     " rc=limit text= finish= id= done=0");
}

static ap_status refuse(void *ctx, const char *text, size_t len)
{
    (void)ctx, (void)text, (void)len;
    return AP_DENIED;
}

static void test_delta_handler_stops(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    llm_openai_stream *s = llm_openai_stream_new(&lim, refuse, NULL);
    ap_err err;
    assert_int_equal(llm_openai_stream_feed(s, STREAM, strlen(STREAM), &err), AP_DENIED);
    assert_int_equal(llm_openai_stream_finish(s, NULL), AP_DENIED);
    llm_openai_stream_free(s);
    llm_openai_stream_free(NULL);
}

static void test_parse_response(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    const char *body = "{\"id\":\"chatcmpl-9\",\"object\":\"chat.completion\",\"choices\":[{"
                       "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi "
                       "there\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,"
                       "\"completion_tokens\":2,\"total_tokens\":7}}";
    llm_wire_reply r;
    llm_wire_reply_init(&r, lim.max_text);
    assert_int_equal(llm_openai_parse_response(body, strlen(body), &lim, &r, NULL), AP_OK);
    assert_string_equal(r.text.data, "Hi there");
    assert_string_equal(r.finish_reason, "stop");
    assert_string_equal(r.id, "chatcmpl-9");
    assert_true(r.usage.present);
    assert_int_equal(r.usage.prompt_tokens, 5);
    assert_int_equal(r.usage.completion_tokens, 2);
    llm_wire_reply_free(&r);

    llm_wire_reply_init(&r, lim.max_text);
    const char *eb = "{\"error\":{\"message\":\"Invalid API key\",\"type\":"
                     "\"invalid_request_error\",\"code\":\"invalid_api_key\"}}";
    assert_int_equal(llm_openai_parse_response(eb, strlen(eb), &lim, &r, NULL), AP_ERROR);
    assert_true(r.failed);
    assert_string_equal(r.error.type, "invalid_api_key");
    llm_wire_reply_free(&r);

    llm_wire_reply_init(&r, lim.max_text);
    assert_int_equal(llm_openai_parse_response("{\"choices\":", 11, &lim, &r, NULL), AP_INVALID);
    assert_int_equal(llm_openai_parse_response("{}", 2, &lim, &r, NULL), AP_INVALID);
    llm_wire_limits small = {.max_line = 10, .max_event = 10, .max_text = 10};
    assert_int_equal(llm_openai_parse_response(body, strlen(body), &small, &r, NULL), AP_LIMIT);
    llm_wire_reply_free(&r);
}

static void test_build_request(void **state)
{
    (void)state;
    llm_wire_message msgs[] = {
        {"user", "What is the risk?"}, {"assistant", "Low."}, {"user", "Why \"low\"?"}};
    cJSON *schema = cJSON_Parse("{\"type\":\"object\",\"properties\":{\"position\":{\"type\":"
                                "\"string\"}},\"required\":[\"position\"]}");
    llm_wire_request r = {.model = "gpt-4o-mini",
                          .system = "You are Dr. Ada, a regulatory expert.",
                          .messages = msgs,
                          .n_messages = 3,
                          .max_tokens = 300,
                          .temperature = 0.5,
                          .stream = true,
                          .schema = schema,
                          .schema_mode = LLM_WIRE_SCHEMA_NATIVE};
    ap_err err;
    char *body = llm_openai_build_request(&r, &err);
    assert_non_null(body);
    cJSON *root = cJSON_Parse(body);
    assert_non_null(root);
    assert_string_equal(jsonx_string(root, "model"), "gpt-4o-mini");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(root, "stream")));
    assert_true(cJSON_IsTrue(
        cJSON_GetObjectItem(cJSON_GetObjectItem(root, "stream_options"), "include_usage")));
    assert_int_equal((int)jsonx_number(root, "max_tokens", 0), 300);
    assert_true(jsonx_number(root, "temperature", -1) == 0.5);
    cJSON *m = cJSON_GetObjectItem(root, "messages");
    assert_int_equal(cJSON_GetArraySize(m), 4);
    assert_string_equal(jsonx_string(cJSON_GetArrayItem(m, 0), "role"), "system");
    assert_string_equal(jsonx_string(cJSON_GetArrayItem(m, 0), "content"),
                        "You are Dr. Ada, a regulatory expert.");
    assert_string_equal(jsonx_string(cJSON_GetArrayItem(m, 3), "content"), "Why \"low\"?");
    cJSON *rf = cJSON_GetObjectItem(root, "response_format");
    assert_string_equal(jsonx_string(rf, "type"), "json_schema");
    cJSON *js = cJSON_GetObjectItem(rf, "json_schema");
    assert_true(cJSON_Compare(cJSON_GetObjectItem(js, "schema"), schema, true));
    cJSON_Delete(root);
    free(body);

    /* instruction mode: no response_format, the schema follows the marker in the system */
    r.schema_mode = LLM_WIRE_SCHEMA_INSTRUCT;
    r.stream = false;
    r.temperature = -1;
    body = llm_openai_build_request(&r, &err);
    root = cJSON_Parse(body);
    assert_null(cJSON_GetObjectItem(root, "response_format"));
    assert_null(cJSON_GetObjectItem(root, "stream_options"));
    assert_null(cJSON_GetObjectItem(root, "temperature"));
    const char *sys =
        jsonx_string(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "messages"), 0), "content");
    const char *marker = strstr(sys, LLM_WIRE_SCHEMA_MARKER);
    assert_non_null(marker);
    cJSON *again = cJSON_Parse(marker + strlen(LLM_WIRE_SCHEMA_MARKER));
    assert_true(cJSON_Compare(again, schema, true));
    cJSON_Delete(again);
    cJSON_Delete(root);
    free(body);

    r.max_tokens_key = "max_completion_tokens";
    body = llm_openai_build_request(&r, &err);
    root = cJSON_Parse(body);
    assert_null(cJSON_GetObjectItem(root, "max_tokens"));
    assert_int_equal((int)jsonx_number(root, "max_completion_tokens", 0), 300);
    cJSON_Delete(root);
    free(body);

    r.n_messages = 0;
    assert_null(llm_openai_build_request(&r, &err));
    assert_int_equal(err.status, AP_INVALID);
    llm_wire_message bad[] = {{"user", NULL}};
    r.messages = bad;
    r.n_messages = 1;
    assert_null(llm_openai_build_request(&r, &err));
    assert_int_equal(err.status, AP_INVALID);
    cJSON_Delete(schema);
}

static void test_classify_http(void **state)
{
    (void)state;
    static const struct {
        int status;
        const char *body;
        bool retry;
    } cases[] = {
        {408, "", true},
        {409, "", true},
        {429,
         "{\"error\":{\"message\":\"Rate limit reached for requests\",\"type\":\"requests\","
         "\"code\":\"rate_limit_exceeded\"}}",
         true},
        {429,
         "{\"error\":{\"message\":\"You exceeded your current quota, please check your plan "
         "and billing details.\",\"type\":\"insufficient_quota\",\"code\":"
         "\"insufficient_quota\"}}",
         false},
        {429, "monthly spend limit reached", false},
        {429,
         "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":"
         "\"Number of requests has exceeded your rate limit\"}}",
         true},
        {500, "oops", true},
        {502, "", true},
        {503, "", true},
        {529,
         "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":"
         "\"Overloaded\"}}",
         true},
        {400, "{\"error\":{\"message\":\"bad\"}}", false},
        {401,
         "{\"error\":{\"message\":\"Incorrect API key provided\",\"code\":"
         "\"invalid_api_key\"}}",
         false},
        {403, "", false},
        {404, "{\"error\":\"model not found\"}", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        llm_wire_error e;
        llm_wire_classify_http(cases[i].status, cases[i].body, strlen(cases[i].body), &e);
        if (e.retryable != cases[i].retry)
            fail_msg("status %d body %s: retryable=%d", cases[i].status, cases[i].body,
                     e.retryable);
        assert_int_equal(e.http_status, cases[i].status);
        assert_true(e.message[0] != '\0');
    }
    llm_wire_error e;
    llm_wire_classify_http(401, cases[11].body, strlen(cases[11].body), &e);
    assert_string_equal(e.type, "invalid_api_key");
    assert_string_equal(e.message, "Incorrect API key provided");
    llm_wire_classify_http(404, cases[13].body, strlen(cases[13].body), &e);
    assert_string_equal(e.message, "model not found");
    llm_wire_transport_error("connection reset", &e);
    assert_true(e.retryable);
    assert_int_equal(e.http_status, 0);
}

static void test_retry_after(void **state)
{
    (void)state;
    int64_t now = 1764331200000LL; /* 2025-11-28T12:00:00Z */
    assert_int_equal(llm_wire_retry_after_ms("2", now), 2000);
    assert_int_equal(llm_wire_retry_after_ms(" 0.25 ", now), 250);
    assert_int_equal(llm_wire_retry_after_ms("0", now), 0);
    assert_int_equal(llm_wire_retry_after_ms("Fri, 28 Nov 2025 12:00:30 GMT", now), 30000);
    assert_int_equal(llm_wire_retry_after_ms("Fri, 28 Nov 2025 11:00:00 GMT", now), 0);
    assert_int_equal(llm_wire_retry_after_ms("99999999", now), 3600 * 1000);
    assert_int_equal(llm_wire_retry_after_ms(NULL, now), -1);
    assert_int_equal(llm_wire_retry_after_ms("", now), -1);
    assert_int_equal(llm_wire_retry_after_ms("-1", now), -1);
    assert_int_equal(llm_wire_retry_after_ms("3s", now), -1);
    assert_int_equal(llm_wire_retry_after_ms("nan", now), -1);
    assert_int_equal(llm_wire_retry_after_ms("tomorrow", now), -1);
    /* retry-after-ms: milliseconds, capped like seconds (60000 ms was read as 3.6 s) */
    assert_int_equal(llm_wire_retry_after_ms_of_ms("60000"), 60000);
    assert_int_equal(llm_wire_retry_after_ms_of_ms(" 250.4 "), 250);
    assert_int_equal(llm_wire_retry_after_ms_of_ms("99999999999"), 3600 * 1000);
    assert_int_equal(llm_wire_retry_after_ms_of_ms("-5"), -1);
    assert_int_equal(llm_wire_retry_after_ms_of_ms("Fri, 28 Nov 2025 12:00:30 GMT"), -1);
}

static void test_backoff(void **state)
{
    (void)state;
    for (uint32_t rnd = 0; rnd < 5000; rnd += 7) {
        int64_t w1 = llm_wire_backoff_ms(1, 200, 10000, rnd, -1);
        assert_true(w1 >= 100 && w1 <= 200);
        int64_t w3 = llm_wire_backoff_ms(3, 200, 10000, rnd, -1);
        assert_true(w3 >= 400 && w3 <= 800);
        int64_t w30 = llm_wire_backoff_ms(30, 200, 10000, rnd, -1);
        assert_true(w30 >= 5000 && w30 <= 10000);
    }
    assert_int_equal(llm_wire_backoff_ms(1, 200, 10000, 0, 3000), 3000);
    assert_true(llm_wire_backoff_ms(2, 200, 10000, 12345, 10) >= 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_every_split),
        cmocka_unit_test(test_stream_crlf_and_no_usage),
        cmocka_unit_test(test_stream_error_object),
        cmocka_unit_test(test_stream_faults),
        cmocka_unit_test(test_stream_limits),
        cmocka_unit_test(test_delta_handler_stops),
        cmocka_unit_test(test_parse_response),
        cmocka_unit_test(test_build_request),
        cmocka_unit_test(test_classify_http),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
