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

#define START                                                                                      \
    "event: message_start\n"                                                                       \
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\","       \
    "\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,"           \
    "\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n"
#define BLOCK_START                                                                                \
    "event: content_block_start\n"                                                                 \
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","    \
    "\"text\":\"\"}}\n\n"
#define DELTA(t)                                                                                   \
    "event: content_block_delta\n"                                                                 \
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","      \
    "\"text\":\"" t "\"}}\n\n"
#define PING "event: ping\ndata: {\"type\": \"ping\"}\n\n"
#define END(reason, out)                                                                           \
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"           \
    "event: message_delta\n"                                                                       \
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"" reason "\","                 \
    "\"stop_sequence\":null},\"usage\":{\"output_tokens\":" out "}}\n\n"
#define STOP "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"

static void test_stream_every_split(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    check_all_splits(
        &stream_api_anthropic,
        START BLOCK_START PING DELTA("Hello") DELTA(
            ", w\\u00f6rld") "event: content_block_delta\n"
                             "data: "
                             "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                             "\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n"
                             "event: future_event\ndata: {\"type\":\"future_event\"}\n\n" END(
                                 "end_turn", "15") STOP,
        &lim,
        "{Hello}{, w\xC3\xB6rld} rc=ok text=Hello, w\xC3\xB6rld finish=stop id=msg_01 "
        "done=1 usage=30/15");
}

static void test_stop_reasons(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    check_all_splits(&stream_api_anthropic, START DELTA("ab") END("max_tokens", "2") STOP, &lim,
                     "{ab} rc=ok text=ab finish=length id=msg_01 done=1 usage=30/2");
    /* a stop reason without message_stop still counts as complete */
    check_all_splits(&stream_api_anthropic, START DELTA("ab") END("tool_use", "2"), &lim,
                     "{ab} rc=ok text=ab finish=tool_calls id=msg_01 done=0 usage=30/2");
    /* counts no model can have, or not whole, are not billed: the usage is left to estimate */
    check_all_splits(&stream_api_anthropic, START DELTA("ab") END("end_turn", "1000000000000") STOP,
                     &lim, "{ab} rc=ok text=ab finish=stop id=msg_01 done=1 usage=30/1");
    check_all_splits(&stream_api_anthropic, START DELTA("ab") END("end_turn", "2.5") STOP, &lim,
                     "{ab} rc=ok text=ab finish=stop id=msg_01 done=1 usage=30/1");
}

static void test_stream_errors(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    check_all_splits(&stream_api_anthropic,
                     START DELTA("par") "event: error\n"
                                        "data: {\"type\":\"error\",\"error\":{\"type\":"
                                        "\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
                     &lim,
                     "{par} rc=error text=par finish= id=msg_01 done=0 usage=30/1 "
                     "error=overloaded_error retry=1");
    check_all_splits(&stream_api_anthropic,
                     "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
                     "\"invalid_request_error\",\"message\":\"bad\"}}\n\n",
                     &lim,
                     " rc=error text= finish= id= done=0 error=invalid_request_error retry=0");
    /* truncated */
    check_all_splits(&stream_api_anthropic, START BLOCK_START DELTA("Hel"), &lim,
                     "{Hel} rc=io text=Hel finish= id=msg_01 done=0 usage=30/1");
    /* malformed */
    check_all_splits(&stream_api_anthropic,
                     START "event: content_block_delta\ndata: {\"type\":\"content_block_d\n\n",
                     &lim, " rc=invalid text= finish= id=msg_01 done=0 usage=30/1");
    /* invalid UTF-8 */
    check_all_splits(&stream_api_anthropic, DELTA("\xF0\x28\x8C\x28"), &lim,
                     " rc=invalid text= finish= id= done=0");
}

static void test_limits(void **state)
{
    (void)state;
    llm_wire_limits lim = {.max_line = 4096, .max_event = 4096, .max_text = 4};
    check_all_splits(&stream_api_anthropic, DELTA("abc") DELTA("de"), &lim,
                     "{abc} rc=limit text=abc finish= id= done=0");
    llm_wire_limits small = {.max_line = 4096, .max_event = 64, .max_text = 4096};
    check_all_splits(&stream_api_anthropic, START, &small, " rc=limit text= finish= id= done=0");
}

static void test_parse_response(void **state)
{
    (void)state;
    llm_wire_limits lim = llm_wire_default_limits();
    const char *body =
        "{\"id\":\"msg_9\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":"
        "\"text\",\"text\":\"Hi \"},{\"type\":\"tool_use\",\"id\":\"t\"},{\"type\":\"text\","
        "\"text\":\"there\"}],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":4,"
        "\"output_tokens\":2}}";
    llm_wire_reply r;
    llm_wire_reply_init(&r, lim.max_text);
    assert_int_equal(llm_anthropic_parse_response(body, strlen(body), &lim, &r, NULL), AP_OK);
    assert_string_equal(r.text.data, "Hi there");
    assert_string_equal(r.finish_reason, "stop");
    assert_string_equal(r.id, "msg_9");
    assert_int_equal(r.usage.prompt_tokens, 4);
    assert_int_equal(r.usage.completion_tokens, 2);
    llm_wire_reply_free(&r);

    llm_wire_reply_init(&r, lim.max_text);
    const char *eb = "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
                     "\"message\":\"invalid x-api-key\"}}";
    assert_int_equal(llm_anthropic_parse_response(eb, strlen(eb), &lim, &r, NULL), AP_ERROR);
    assert_true(r.failed);
    assert_false(r.error.retryable);
    assert_string_equal(r.error.type, "authentication_error");
    assert_int_equal(llm_anthropic_parse_response("[1]", 3, &lim, &r, NULL), AP_INVALID);
    assert_int_equal(llm_anthropic_parse_response("{\"x\":1}", 7, &lim, &r, NULL), AP_INVALID);
    llm_wire_reply_free(&r);
}

static void test_build_request(void **state)
{
    (void)state;
    llm_wire_message msgs[] = {{"user", "Assess the trial design."}};
    cJSON *schema = cJSON_Parse("{\"type\":\"object\",\"properties\":{\"estimate\":{\"type\":"
                                "\"number\"}}}");
    llm_wire_request r = {.model = "claude-sonnet",
                          .system = "You are Dr. Lee, a biostatistician.",
                          .messages = msgs,
                          .n_messages = 1,
                          .max_tokens = 0,
                          .temperature = 0.2,
                          .stream = true,
                          .schema = schema,
                          .schema_mode = LLM_WIRE_SCHEMA_NATIVE};
    ap_err err;
    char *body = llm_anthropic_build_request(&r, &err);
    assert_non_null(body);
    cJSON *root = cJSON_Parse(body);
    assert_string_equal(jsonx_string(root, "model"), "claude-sonnet");
    assert_int_equal((int)jsonx_number(root, "max_tokens", 0), 1024);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(root, "stream")));
    const char *sys = jsonx_string(root, "system");
    assert_non_null(sys);
    assert_true(strncmp(sys, "You are Dr. Lee, a biostatistician.\n\n", 37) == 0);
    const char *marker = strstr(sys, LLM_WIRE_SCHEMA_MARKER);
    assert_non_null(marker);
    cJSON *again = cJSON_Parse(marker + strlen(LLM_WIRE_SCHEMA_MARKER));
    assert_true(cJSON_Compare(again, schema, true));
    cJSON *m = cJSON_GetObjectItem(root, "messages");
    assert_int_equal(cJSON_GetArraySize(m), 1);
    assert_string_equal(jsonx_string(cJSON_GetArrayItem(m, 0), "role"), "user");
    assert_null(cJSON_GetObjectItem(root, "response_format"));
    cJSON_Delete(again);
    cJSON_Delete(root);
    free(body);

    r.schema = NULL;
    r.system = NULL;
    r.max_tokens = 50;
    body = llm_anthropic_build_request(&r, &err);
    root = cJSON_Parse(body);
    assert_null(cJSON_GetObjectItem(root, "system"));
    assert_int_equal((int)jsonx_number(root, "max_tokens", 0), 50);
    cJSON_Delete(root);
    free(body);

    r.model = "";
    assert_null(llm_anthropic_build_request(&r, &err));
    assert_int_equal(err.status, AP_INVALID);
    cJSON_Delete(schema);
}

static void test_stream_error_classes(void **state)
{
    (void)state;
    llm_wire_error e;
    llm_wire_classify_stream_error("overloaded_error", "Overloaded", &e);
    assert_true(e.retryable);
    llm_wire_classify_stream_error("api_error", "Internal", &e);
    assert_true(e.retryable);
    llm_wire_classify_stream_error("rate_limit_error", "slow down", &e);
    assert_true(e.retryable);
    llm_wire_classify_stream_error("rate_limit_error", "You have reached your usage limit", &e);
    assert_false(e.retryable);
    llm_wire_classify_stream_error("permission_error", "no", &e);
    assert_false(e.retryable);
    llm_wire_classify_stream_error(NULL, NULL, &e);
    assert_false(e.retryable);
    assert_string_equal(e.message, "provider error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_every_split),   cmocka_unit_test(test_stop_reasons),
        cmocka_unit_test(test_stream_errors),        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_parse_response),       cmocka_unit_test(test_build_request),
        cmocka_unit_test(test_stream_error_classes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
