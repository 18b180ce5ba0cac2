/* llm_sim_test.c - the simulated provider: deterministic, persona-biased, schema-valid,
 * feedback-aware; and its asynchronous delivery on the loop (latency, streamed deltas,
 * cancel). */
#include "core/clock.h"
#include "core/jsonx.h"
#include "llm/llm.h"
#include "llm/simulated.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const personas[][3] = {
    {"a", "regulatory strategist", "cautious and evidence-first"},
    {"b", "market access lead", "commercial and bold"},
    {"c", "safety physician", "skeptical"},
    {"d", "patient advocate", "empathetic"},
    {"e", "economist", "numbers first"},
};

static char *expert_json(int i)
{
    char buf[256];
    snprintf(buf, sizeof buf, "{\"id\":\"%s\",\"name\":\"N%d\",\"role\":\"%s\",\"persona\":\"%s\"}",
             personas[i][0], i, personas[i][1], personas[i][2]);
    return strdup(buf);
}

static cJSON *simulate(int i, const char *prompt, const char *schema, char **text)
{
    char *ex = expert_json(i);
    llm_request req = {.expert_id = personas[i][0],
                       .expert_json = ex,
                       .prompt = prompt,
                       .schema_json = schema,
                       .seed = 3};
    char *data = NULL;
    ap_err err = {0};
    assert_int_equal(llm_simulate(&req, 0, text, &data, &err), AP_OK);
    free(ex);
    cJSON *v = data != NULL ? jsonx_parse(data, strlen(data), 64, NULL) : NULL;
    free(data);
    return v;
}

static void test_deterministic_and_persona_voiced(void **state)
{
    (void)state;
    char *t1 = NULL, *t2 = NULL, *t3 = NULL;
    simulate(0, "Should we file in the EU first?", NULL, &t1);
    simulate(0, "Should we file in the EU first?", NULL, &t2);
    simulate(1, "Should we file in the EU first?", NULL, &t3);
    assert_string_equal(t1, t2);
    assert_string_not_equal(t1, t3);
    assert_non_null(strstr(t1, "regulatory strategist"));
    assert_non_null(strstr(t3, "market access lead"));
    free(t1);
    free(t2);
    free(t3);
}

static const char ballot_schema[] =
    "{\"type\":\"object\",\"required\":[\"position\",\"confidence\",\"ranking\",\"estimate\","
    "\"ok\",\"nested\"],\"properties\":{"
    "\"position\":{\"type\":\"string\",\"enum\":[\"yes\",\"no\",\"depends\"]},"
    "\"confidence\":{\"type\":\"number\",\"minimum\":0,\"maximum\":1},"
    "\"ranking\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"enum\":[\"x\",\"y\",\"z\"]}},"
    "\"estimate\":{\"type\":\"number\",\"minimum\":0,\"maximum\":1000},"
    "\"count\":{\"type\":\"integer\",\"minimum\":2,\"maximum\":4},"
    "\"ok\":{\"type\":\"boolean\"},"
    "\"tags\":{\"type\":\"array\",\"minItems\":2,\"maxItems\":3,\"items\":{\"type\":\"string\"}},"
    "\"nested\":{\"type\":\"object\",\"required\":[\"why\"],\"properties\":{\"why\":{\"type\":"
    "\"string\",\"maxLength\":20}}}}}";

static void test_schema_valid_answers(void **state)
{
    (void)state;
    int positions[3] = {0};
    for (int i = 0; i < 5; i++) {
        char *text = NULL;
        cJSON *v = simulate(i, "Decide on the launch.", ballot_schema, &text);
        assert_non_null(v);
        const char *pos = jsonx_string(v, "position");
        assert_non_null(pos);
        positions[strcmp(pos, "yes") == 0 ? 0 : strcmp(pos, "no") == 0 ? 1 : 2]++;
        double conf = jsonx_number(v, "confidence", -1);
        assert_true(conf >= 0 && conf <= 1);
        double est = jsonx_number(v, "estimate", -1);
        assert_true(est >= 0 && est <= 1000);
        const cJSON *count = cJSON_GetObjectItemCaseSensitive(v, "count");
        if (count != NULL)
            assert_true(count->valuedouble >= 2 && count->valuedouble <= 4 &&
                        count->valuedouble == floor(count->valuedouble));
        assert_true(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(v, "ok")));
        const cJSON *ranking = cJSON_GetObjectItemCaseSensitive(v, "ranking");
        assert_int_equal(cJSON_GetArraySize(ranking), 3); /* a permutation of x, y, z */
        int seen = 0;
        const cJSON *r;
        cJSON_ArrayForEach(r, ranking) seen |= 1 << (r->valuestring[0] - 'x');
        assert_int_equal(seen, 7);
        const cJSON *tags = cJSON_GetObjectItemCaseSensitive(v, "tags");
        if (tags != NULL)
            assert_true(cJSON_GetArraySize(tags) >= 2 && cJSON_GetArraySize(tags) <= 3);
        const char *why = jsonx_string(cJSON_GetObjectItemCaseSensitive(v, "nested"), "why");
        assert_non_null(why);
        assert_true(strlen(why) <= 20);
        cJSON_Delete(v);
        free(text);
    }
    /* experts disagree, but not randomly: no position is everyone's */
    assert_true(positions[0] < 5 && positions[1] < 5 && positions[2] < 5);
}

static double iqr(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[(3 * (n - 1)) / 4] - v[(n - 1) / 4];
}

static void test_feedback_converges(void **state)
{
    (void)state;
    const char *schema = "{\"type\":\"object\",\"required\":[\"estimate\",\"confidence\"],"
                         "\"properties\":{\"estimate\":{\"type\":\"number\",\"minimum\":0,"
                         "\"maximum\":100},\"confidence\":{\"type\":\"number\",\"minimum\":0,"
                         "\"maximum\":1}}}";
    double first[5], second[5], c1 = 0, c2 = 0;
    for (int i = 0; i < 5; i++) {
        char *text = NULL;
        cJSON *v = simulate(i, "Estimate the share.", schema, &text);
        first[i] = jsonx_number(v, "estimate", -1);
        c1 += jsonx_number(v, "confidence", 0);
        cJSON_Delete(v);
        free(text);
    }
    double sorted[5];
    memcpy(sorted, first, sizeof sorted);
    double spread1 = iqr(sorted, 5);
    char prompt[128];
    snprintf(prompt, sizeof prompt, "Estimate the share.\nGroup median: %.3f", sorted[2]);
    for (int i = 0; i < 5; i++) {
        char *text = NULL;
        cJSON *v = simulate(i, prompt, schema, &text);
        second[i] = jsonx_number(v, "estimate", -1);
        c2 += jsonx_number(v, "confidence", 0);
        assert_true(fabs(second[i] - sorted[2]) <= fabs(first[i] - sorted[2]) + 1e-9);
        cJSON_Delete(v);
        free(text);
    }
    assert_true(iqr(second, 5) < spread1 || spread1 == 0);
    assert_true(c2 > c1);
}

static void test_options_line(void **state)
{
    (void)state;
    const char *schema = "{\"type\":\"object\",\"required\":[\"position\"],\"properties\":{"
                         "\"position\":{\"type\":\"string\"}}}";
    for (int i = 0; i < 5; i++) {
        char *text = NULL;
        cJSON *v = simulate(i, "Pick one.\nOptions: go now | wait a year | never", schema, &text);
        const char *pos = jsonx_string(v, "position");
        assert_non_null(pos);
        assert_true(strcmp(pos, "go now") == 0 || strcmp(pos, "wait a year") == 0 ||
                    strcmp(pos, "never") == 0);
        cJSON_Delete(v);
        free(text);
    }
}

/* Exact answers, captured from the generator when it still built a cJSON tree and printed it:
 * the bytes are part of what strategies and recorded panels see, so they must not drift. */
static void test_exact_answers(void **state)
{
    (void)state;
    char *ex = expert_json(0);
    llm_request req = {.expert_id = "a",
                       .expert_json = ex,
                       .prompt = "Decide on the launch.\nOptions: go | wait",
                       .schema_json = ballot_schema,
                       .seed = 3};
    char *text = NULL, *data = NULL;
    ap_err err = {0};
    assert_int_equal(llm_simulate(&req, 0, &text, &data, &err), AP_OK);
    const char *want =
        "{\"position\":\"yes\",\"confidence\":0.65,\"ranking\":[\"x\",\"y\",\"z\"],\"estimate\":"
        "595.738,\"count\":3,\"ok\":false,\"tags\":[\"Speaking as regulatory strategist: I would "
        "move carefully here. The key question is how launch interacts with decide. I would want "
        "a clear checkpoint before the next commitment.\",\"Speaking as regulatory strategist: My "
        "reading is that the evidence is thinner than it looks. Experience with decide suggests "
        "that launch will decide the outcome. On balance I recommend proceeding, with explicit "
        "exit criteria.\",\"Speaking as regulatory strategist: My reading is that the evidence is "
        "thinner than it looks. A staged plan around launch keeps options open on decide. I would "
        "ask for one more piece of evidence before deciding.\"],\"nested\":{\"why\":\"Speaking as "
        "regulato\"}}";
    assert_string_equal(data, want);
    assert_string_equal(text, want);
    free(text);
    free(data);
    free(ex);

    ex = expert_json(1);
    req = (llm_request){.expert_id = "b",
                        .expert_json = ex,
                        .prompt = "Decide on the launch.\nOptions: go | wait",
                        .seed = 3};
    assert_int_equal(llm_simulate(&req, 0, &text, &data, &err), AP_OK);
    assert_null(data);
    assert_string_equal(text, "Speaking as market access lead: I would move carefully here. "
                              "Experience with decide suggests that launch will decide the "
                              "outcome. I would want a clear checkpoint before the next "
                              "commitment.");
    free(text);
    free(ex);
}

/* Numbers as cJSON prints them (null past the range of a double, -0, %1.15g and whole numbers
 * beyond int), and strings with their bytes kept: escapes for quotes and control characters
 * only, invalid UTF-8 left as it is, a maxLength cut inside a character. */
static void test_exact_numbers_and_strings(void **state)
{
    (void)state;
    const char *numbers =
        "{\"type\":\"object\",\"required\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\"],"
        "\"properties\":{\"a\":{\"type\":\"number\",\"minimum\":1e300,\"maximum\":1e308},"
        "\"b\":{\"type\":\"integer\",\"minimum\":-1e12,\"maximum\":1e12},\"c\":{\"type\":"
        "\"number\",\"minimum\":-1e-7,\"maximum\":1e-7},\"d\":{\"type\":\"number\",\"minimum\":"
        "-0.5,\"maximum\":0.5},\"e\":{\"type\":\"integer\",\"minimum\":3e9,\"maximum\":5e9},"
        "\"f\":{\"type\":\"number\",\"minimum\":-5e6,\"maximum\":-1},\"g\":{\"type\":\"number\","
        "\"minimum\":1e13,\"maximum\":1e16}}}";
    const char *strings =
        "{\"type\":\"object\",\"required\":[\"name\",\"why\",\"position\",\"k\"],\"properties\":"
        "{\"name\":{\"type\":\"string\"},\"why\":{\"type\":\"string\",\"maxLength\":16},"
        "\"position\":{\"type\":\"string\"},\"k\":{\"const\":[1.5,\"t\\u0001\",{\"x\":null}]}}}";
    const char *ex = "{\"id\":\"z\",\"name\":\"Zo\\u00e9 \\\"Q\\\"\\n\\u001f\",\"role\":\"caf"
                     "\\u00e9 owner\",\"persona\":\"bold\"}";
    const char *want[] = {
        "{\"a\":null,\"b\":-71685884582,\"c\":-0,\"d\":0.064,\"e\":4228334870,\"f\":-1824067.721,"
        "\"g\":6510508587013315}",
        "{\"name\":\"Zo\xc3\xa9 \\\"Q\\\"\\n\\u001f\",\"why\":\"Speaking as caf\xc3\",\"position\":"
        "\"\xff later\",\"k\":[1.5,\"t\\u0001\",{\"x\":null}]}",
    };
    const char *schemas[] = {numbers, strings};
    for (int i = 0; i < 2; i++) {
        llm_request req = {.expert_id = "z",
                           .expert_json = ex,
                           .prompt = "Pick one.\nOptions: caf\xc3\xa9 now | \xff later",
                           .schema_json = schemas[i],
                           .seed = 11};
        char *text = NULL, *data = NULL;
        ap_err err = {0};
        assert_int_equal(llm_simulate(&req, 5, &text, &data, &err), AP_OK);
        assert_string_equal(data, want[i]);
        free(text);
        free(data);
    }
}

/* ---- hostile schemas ---------------------------------------------------------------------- */

/* The schema comes from the script, so no schema may make an answer large or slow: each of
 * these hung the generator or failed it after 64 MiB. Sizes are asserted, not times. */

/* pre, then inner three times separated by commas, then post (caller frees). */
static char *thrice(const char *pre, const char *inner, const char *post)
{
    size_t n = strlen(pre) + 3 * strlen(inner) + 2 + strlen(post) + 1;
    char *out = malloc(n);
    assert_non_null(out);
    snprintf(out, n, "%s%s,%s,%s%s", pre, inner, inner, inner, post);
    return out;
}

/* The red team's schema: a Lua sequence as "properties" arrives as an array, here 3^7 copies
 * of an array with minItems 12e6. */
static char *sequence_bomb(void)
{
    char *s = strdup("{\"type\":\"array\",\"minItems\":12000000}");
    for (int d = 0; d < 7; d++) {
        char *t = thrice("{\"type\":\"object\",\"properties\":[", s, "]}");
        free(s);
        s = t;
    }
    return s;
}

/* The answer to schema by expert 0, which must be AP_OK, as text (caller frees). */
static char *answer(const char *schema)
{
    char *ex = expert_json(0);
    llm_request req = {.expert_id = "a",
                       .expert_json = ex,
                       .prompt = "Decide on the launch.",
                       .schema_json = schema,
                       .seed = 3};
    char *text = NULL, *data = NULL;
    ap_err err = {0};
    assert_int_equal(llm_simulate(&req, 0, &text, &data, &err), AP_OK);
    assert_non_null(data);
    assert_string_equal(text, data);
    free(data);
    free(ex);
    return text;
}

/* A "properties" that is not an object names no property: none of its members is generated. */
static void test_array_properties_name_nothing(void **state)
{
    (void)state;
    char *bomb = sequence_bomb();
    char *text = answer(bomb);
    assert_string_equal(text, "{}");
    free(text);
    free(bomb);
    text =
        answer("{\"type\":\"object\",\"required\":[\"a\"],\"properties\":[{\"type\":\"string\"}]}");
    assert_string_equal(text, "{}");
    free(text);
    /* other values already named nothing */
    text = answer("{\"type\":\"object\",\"properties\":\"a\"}");
    assert_string_equal(text, "{}");
    free(text);
}

/* minItems up to 64 is honoured (past the cap of 8 on maxItems, as before); above, 64 items. A
 * count beyond int is not cast (UB), and neither is a maxLength beyond size_t. */
static void test_min_items_clamped(void **state)
{
    (void)state;
    char *text = answer("{\"type\":\"array\",\"minItems\":20,\"items\":{\"type\":\"integer\"}}");
    cJSON *v = jsonx_parse(text, strlen(text), 64, NULL);
    assert_int_equal(cJSON_GetArraySize(v), 20);
    cJSON_Delete(v);
    free(text);
    const char *huge[] = {"{\"type\":\"array\",\"minItems\":1e9}",
                          "{\"type\":\"array\",\"minItems\":1e300,\"maxItems\":-1e300}",
                          "{\"type\":\"array\",\"minItems\":1e300,\"items\":{\"type\":\"string\","
                          "\"maxLength\":1e300}}"};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        text = answer(huge[i]);
        assert_true(strlen(text) < 64 * 1024);
        v = jsonx_parse(text, strlen(text), 64, NULL);
        assert_true(cJSON_IsArray(v));
        assert_int_equal(cJSON_GetArraySize(v), 64);
        cJSON_Delete(v);
        free(text);
    }
    text = answer("{\"type\":\"array\",\"minItems\":-1e300}");
    assert_string_equal(text, "[]");
    free(text);
}

/* Schemas whose answers multiply (arrays in arrays, objects of many members in arrays, the red
 * team's schema with "properties" objects) stay bounded: a deterministic, parseable answer of
 * about a MiB at most, cut where the budget ran out. */
static void test_multiplying_schemas_are_cut(void **state)
{
    (void)state;
    char *schemas[3];
    /* 64^8 strings */
    char *s = strdup("{\"type\":\"string\"}");
    for (int d = 0; d < 8; d++) {
        size_t n = strlen(s) + 64;
        char *t = malloc(n);
        assert_non_null(t);
        snprintf(t, n, "{\"type\":\"array\",\"minItems\":64,\"items\":%s}", s);
        free(s);
        s = t;
    }
    schemas[0] = s;
    /* 3^6 arrays of minItems 12e6, under objects with all properties required */
    s = strdup("{\"type\":\"array\",\"minItems\":12000000}");
    for (int d = 0; d < 6; d++) {
        char *t = malloc(3 * strlen(s) + 128);
        assert_non_null(t);
        snprintf(t, 3 * strlen(s) + 128,
                 "{\"type\":\"object\",\"required\":[\"a\",\"b\",\"c\"],\"properties\":{\"a\":%s,"
                 "\"b\":%s,\"c\":%s}}",
                 s, s, s);
        free(s);
        s = t;
    }
    schemas[1] = s;
    /* 64 * 64 objects of 4000 members */
    size_t cap = 4000 * 16 + 256, len = 0;
    s = malloc(cap);
    assert_non_null(s);
    len += (size_t)snprintf(s + len, cap - len,
                            "{\"type\":\"array\",\"minItems\":64,\"items\":{\"type\":\"array\","
                            "\"minItems\":64,\"items\":{\"type\":\"object\",\"properties\":{");
    for (int i = 0; i < 4000; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s\"p%d\":0", i > 0 ? "," : "", i);
    snprintf(s + len, cap - len, "}}}}");
    schemas[2] = s;
    for (int i = 0; i < 3; i++) {
        char *text = answer(schemas[i]);
        size_t n = strlen(text);
        assert_true(n <= 2u << 20);
        cJSON *v = jsonx_parse(text, n, 64, NULL);
        assert_non_null(v);
        assert_true(cJSON_IsArray(v) || cJSON_IsObject(v));
        if (i == 0) /* cut inside its first item */
            assert_int_equal(cJSON_GetArraySize(v), 1);
        cJSON_Delete(v);
        char *again = answer(schemas[i]);
        assert_string_equal(text, again);
        free(again);
        free(text);
        free(schemas[i]);
    }
}

/* ---- on the loop ----------------------------------------------------------------------- */

typedef struct sink {
    int deltas;
    size_t delta_bytes;
    int done;
    int64_t done_at;
    char text[4096];
    char data[4096]; /* "(null)" without data */
    char provider[64];
} sink;

static void on_delta(void *ud, const char *text, size_t len)
{
    sink *s = ud;
    s->deltas++;
    s->delta_bytes += len;
    (void)text;
}

static void on_done(void *ud, const llm_response *r)
{
    sink *s = ud;
    s->done++;
    s->done_at = clock_mono_ms();
    assert_int_equal(r->status, AP_OK);
    snprintf(s->text, sizeof s->text, "%s", r->text);
    snprintf(s->data, sizeof s->data, "%s", r->data_json != NULL ? r->data_json : "(null)");
    snprintf(s->provider, sizeof s->provider, "%s", r->provider);
}

/* A call reports the configured provider it ran on, not its type: usage rows and errors name
 * "mysim", the instance the panel chose. */
static void test_response_names_the_configured_provider(void **state)
{
    (void)state;
    llm_loop *loop = NULL;
    llm_client *c = NULL;
    ap_err err = {0};
    cJSON *cfg = cJSON_Parse("{\"providers\":{\"mysim\":{\"type\":\"simulated\"}}}");
    assert_int_equal(llm_loop_new(&loop, &err), AP_OK);
    assert_int_equal(llm_client_new(loop, cfg, &c, &err), AP_OK);
    sink got = {0};
    llm_request req = {.expert_id = "e1", .prompt = "Go?", .seed = 1};
    llm_callbacks cb = {on_delta, on_done, &got};
    llm_call *call = NULL;
    assert_int_equal(llm_submit(c, "mysim", &req, &cb, &call, &err), AP_OK);
    while (got.done == 0)
        llm_loop_run_once(loop, 100);
    assert_string_equal(got.provider, "mysim");
    llm_client_free(c);
    llm_loop_free(loop);
    cJSON_Delete(cfg);
}

/* A loop and a client of the default simulated provider on it; the test frees both. */
static void client_on_loop(llm_loop **loop, llm_client **c)
{
    ap_err err = {0};
    assert_int_equal(llm_loop_new(loop, &err), AP_OK);
    assert_int_equal(llm_client_new(*loop, NULL, c, &err), AP_OK);
}

/* The call that filled s answered req once, as llm_simulate answers it. */
static void expect_simulated(const sink *s, const llm_request *req)
{
    char *text = NULL, *data = NULL;
    ap_err err = {0};
    assert_int_equal(s->done, 1);
    assert_int_equal(llm_simulate(req, 0, &text, &data, &err), AP_OK);
    assert_string_equal(s->text, text);
    assert_string_equal(s->data, data != NULL ? data : "(null)");
    free(text);
    free(data);
}

/* The provider on the loop answers what llm_simulate answers, also when calls share a prompt
 * (the provider remembers the last prompt it read) and when they do not. */
static void test_provider_matches_llm_simulate(void **state)
{
    (void)state;
    llm_loop *loop;
    llm_client *c;
    ap_err err = {0};
    client_on_loop(&loop, &c);
    const char *prompts[] = {"Decide on the launch.", "Decide on the launch.",
                             "Decide on the launch.\nGroup median: 400", "Decide on the launch.",
                             "Other question entirely"};
    sink s[5] = {0};
    char *ex[5];
    llm_request req[5];
    for (int i = 0; i < 5; i++) {
        ex[i] = expert_json(i);
        req[i] = (llm_request){.expert_id = personas[i][0],
                               .expert_json = ex[i],
                               .prompt = prompts[i],
                               .schema_json = i == 4 ? NULL : ballot_schema,
                               .seed = 3};
        llm_callbacks cb = {on_delta, on_done, &s[i]};
        llm_call *call = NULL;
        assert_int_equal(llm_submit(c, NULL, &req[i], &cb, &call, &err), AP_OK);
    }
    int64_t t0 = clock_mono_ms();
    while (s[0].done + s[1].done + s[2].done + s[3].done + s[4].done < 5 &&
           clock_mono_ms() - t0 < 2000)
        llm_loop_run_once(loop, 50);
    for (int i = 0; i < 5; i++) {
        expect_simulated(&s[i], &req[i]);
        free(ex[i]);
    }
    llm_client_free(c);
    llm_loop_free(loop);
}

/* On the loop too (the path a script's ctx:ask takes): the red team's schema is answered at
 * once, with "{}". */
static void test_provider_answers_sequence_bomb(void **state)
{
    (void)state;
    llm_loop *loop;
    llm_client *c;
    ap_err err = {0};
    client_on_loop(&loop, &c);
    char *bomb = sequence_bomb();
    char *ex = expert_json(0);
    llm_request req = {
        .expert_id = "a", .expert_json = ex, .prompt = "q", .schema_json = bomb, .seed = 3};
    sink s = {0};
    llm_callbacks cb = {on_delta, on_done, &s};
    llm_call *call = NULL;
    assert_int_equal(llm_submit(c, NULL, &req, &cb, &call, &err), AP_OK);
    int64_t t0 = clock_mono_ms();
    while (!s.done && clock_mono_ms() - t0 < 30000)
        llm_loop_run_once(loop, 50);
    assert_int_equal(s.done, 1);
    assert_string_equal(s.data, "{}");
    free(ex);
    free(bomb);
    llm_client_free(c);
    llm_loop_free(loop);
}

static void test_async_latency_stream_cancel(void **state)
{
    (void)state;
    setenv("ASKPANEL_SIM_LATENCY_MS", "100", 1);
    llm_loop *loop;
    llm_client *c;
    ap_err err = {0};
    client_on_loop(&loop, &c);
    sink s[5] = {0};
    llm_call *calls[5];
    char *ex[5];
    int64_t t0 = clock_mono_ms();
    for (int i = 0; i < 5; i++) {
        ex[i] = expert_json(i);
        llm_request req = {.expert_id = personas[i][0],
                           .expert_json = ex[i],
                           .prompt = "Go?",
                           .stream = i % 2 == 0};
        llm_callbacks cb = {on_delta, on_done, &s[i]};
        assert_int_equal(llm_submit(c, NULL, &req, &cb, &calls[i], &err), AP_OK);
        assert_int_equal(s[i].done, 0); /* never inside submit */
    }
    llm_cancel(calls[4]);
    while (s[0].done + s[1].done + s[2].done + s[3].done < 4 && clock_mono_ms() - t0 < 2000)
        llm_loop_run_once(loop, 50);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(s[i].done, 1);
        assert_true(s[i].done_at - t0 >= 95 && s[i].done_at - t0 < 400);
        if (i % 2 == 0) {
            /* no token delay: the answer is there at once and goes out whole */
            assert_int_equal(s[i].deltas, 1);
            assert_int_equal(s[i].delta_bytes, strlen(s[i].text));
        } else {
            assert_int_equal(s[i].deltas, 0);
        }
    }
    llm_loop_run_once(loop, 150);
    assert_int_equal(s[4].done, 0);
    for (int i = 0; i < 5; i++)
        free(ex[i]);
    llm_request bad = {.expert_id = "a", .prompt = "x"};
    llm_callbacks cb = {NULL, on_done, &s[0]};
    llm_call *call = NULL;
    assert_int_equal(llm_submit(c, "nope", &bad, &cb, &call, &err), AP_NOTFOUND);
    llm_client_free(c);
    llm_loop_free(loop);
    unsetenv("ASKPANEL_SIM_LATENCY_MS");
}

/* With a latency the provider makes each answer later than the call (in the loop's idle time,
 * or when it is due; the test cannot tell which): the answers are still llm_simulate's, none
 * comes before its latency, with more schemas in flight than the provider keeps parsed (they
 * are parsed again) and a call cancelled before its answer was made. */
static void test_answers_made_while_waiting(void **state)
{
    (void)state;
    setenv("ASKPANEL_SIM_LATENCY_MS", "40", 1);
    llm_loop *loop;
    llm_client *c;
    ap_err err = {0};
    client_on_loop(&loop, &c);
    enum { N = 12 };
    sink s[N] = {0};
    char *ex[N], schema[N][128];
    llm_request req[N];
    llm_call *calls[N];
    int64_t t0 = clock_mono_ms(); /* before the first call: none may answer before 40 ms */
    for (int i = 0; i < N; i++) {
        ex[i] = expert_json(i % 5);
        snprintf(schema[i], sizeof schema[i],
                 "{\"type\":\"object\",\"title\":\"s%d\",\"required\":[\"n\"],"
                 "\"properties\":{\"n\":{\"type\":\"integer\"}}}",
                 i);
        req[i] = (llm_request){.expert_id = personas[i % 5][0],
                               .expert_json = ex[i],
                               .prompt = i % 3 ? "Decide on the launch." : "Other question",
                               .schema_json = i == N - 1 ? NULL : schema[i],
                               .stream = i % 2 == 0,
                               .seed = 5};
        llm_callbacks cb = {on_delta, on_done, &s[i]};
        assert_int_equal(llm_submit(c, NULL, &req[i], &cb, &calls[i], &err), AP_OK);
    }
    llm_cancel(calls[3]);
    int done = 0;
    while (done < N - 1 && clock_mono_ms() - t0 < 2000) {
        llm_loop_run_once(loop, 50);
        done = 0;
        for (int i = 0; i < N; i++)
            done += s[i].done;
    }
    for (int i = 0; i < N; i++) {
        if (i == 3) {
            free(ex[i]);
            assert_int_equal(s[i].done, 0);
            continue;
        }
        assert_true(s[i].done_at - t0 >= 39);
        expect_simulated(&s[i], &req[i]);
        free(ex[i]);
    }
    llm_client_free(c);
    llm_loop_free(loop);
    unsetenv("ASKPANEL_SIM_LATENCY_MS");
}

/* A client freed after its last call was cancelled, before that call's answer was made, leaves
 * nothing on the loop: the loop runs on (an engine frees it after the client) without calling
 * into the freed provider (its idle work was still asked for). */
static void test_client_freed_before_answers(void **state)
{
    (void)state;
    setenv("ASKPANEL_SIM_LATENCY_MS", "20", 1);
    llm_loop *loop;
    llm_client *c;
    ap_err err = {0};
    client_on_loop(&loop, &c);
    char *ex = expert_json(0);
    llm_request req = {.expert_id = personas[0][0], .expert_json = ex, .prompt = "q"};
    sink s = {0};
    llm_callbacks cb = {on_delta, on_done, &s};
    llm_call *call = NULL;
    assert_int_equal(llm_submit(c, NULL, &req, &cb, &call, &err), AP_OK);
    llm_cancel(call);
    llm_client_free(c);
    int64_t t0 = clock_mono_ms();
    while (clock_mono_ms() - t0 < 60)
        llm_loop_run_once(loop, 10);
    assert_int_equal(s.done, 0);
    free(ex);
    llm_loop_free(loop);
    unsetenv("ASKPANEL_SIM_LATENCY_MS");
}

/* With a token delay an answer streams in pieces, one per tick, that add up to the answer. */
static void test_token_delay_streams_pieces(void **state)
{
    (void)state;
    setenv("ASKPANEL_SIM_TOKEN_MS", "2", 1);
    llm_loop *loop;
    llm_client *c;
    ap_err err = {0};
    client_on_loop(&loop, &c);
    sink s = {0};
    char *ex = expert_json(0);
    llm_request req = {.expert_id = personas[0][0],
                       .expert_json = ex,
                       .prompt = "Should the product launch in Europe first?",
                       .stream = true};
    llm_callbacks cb = {on_delta, on_done, &s};
    llm_call *call = NULL;
    assert_int_equal(llm_submit(c, NULL, &req, &cb, &call, &err), AP_OK);
    int64_t t0 = clock_mono_ms();
    while (!s.done && clock_mono_ms() - t0 < 5000)
        llm_loop_run_once(loop, 50);
    assert_int_equal(s.done, 1);
    size_t len = strlen(s.text);
    assert_true(len > 48);
    assert_int_equal(s.delta_bytes, len);
    /* pieces of 24 bytes, a few more where a UTF-8 sequence would be split */
    assert_true(s.deltas > 1);
    assert_true(s.deltas >= (int)((len + 26) / 27));
    unsetenv("ASKPANEL_SIM_TOKEN_MS");
    free(ex);
    llm_client_free(c);
    llm_loop_free(loop);
}

/* The llm section is checked when the client is made: a typo or a wrong type stops the engine
 * instead of meaning a default (a misspelt default_provider ran the simulated provider). */
static void test_llm_config_is_checked(void **state)
{
    (void)state;
    static const struct {
        const char *json, *says;
    } cases[] = {
        {"{\"defualt_provider\":\"openai\"}", "unknown key 'defualt_provider'"},
        {"{\"providers\":{\"openai\":{\"max_attempts\":\"1\"}}}",
         "openai.max_attempts must be a whole number from 1 to 20"},
        {"{\"providers\":{\"openai\":{\"idle_timeout_ms\":500}}}", "idle_timeout_ms"},
        {"{\"providers\":{\"openai\":{\"max_atempts\":2}}}", "unknown key 'max_atempts'"},
        {"{\"providers\":{\"anthropic\":{\"prices\":{\"m\":{\"prompt\":1e300}}}}}", "prices"},
        {"{\"providers\":{\"x\":{\"type\":\"openai\",\"fallback_models\":[1]}}}",
         "x.fallback_models must be an array of strings"},
        {"{\"providers\":{\"simulated\":{\"latency_ms\":-1}}}", "simulated.latency_ms"},
        {"{\"default_provider\":7}", "llm.default_provider has the wrong type"},
        {"{\"providers\":{\"openai\":{\"schema_mode\":\"instrct\"}}}",
         "openai.schema_mode must be \"native\" or \"instruct\""},
        {"{\"providers\":{\"x\":{\"type\":\"anthropic\",\"http_version\":\"3\"}}}",
         "x.http_version must be \"auto\", \"1.1\" or \"2\""},
    };
    llm_loop *loop = NULL;
    ap_err err = {0};
    assert_int_equal(llm_loop_new(&loop, &err), AP_OK);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *cfg = cJSON_Parse(cases[i].json);
        assert_non_null(cfg);
        llm_client *c = NULL;
        ap_err e = {0};
        if (llm_client_new(loop, cfg, &c, &e) != AP_INVALID || strstr(e.msg, cases[i].says) == NULL)
            fail_msg("%s: expected \"%s\", got \"%s\"", cases[i].json, cases[i].says, e.msg);
        cJSON_Delete(cfg);
    }
    cJSON *good = cJSON_Parse("{\"default_provider\":\"simulated\",\"providers\":{\"openai\":{"
                              "\"max_attempts\":2,\"prices\":{\"m\":{\"prompt\":0.15,"
                              "\"completion\":0.6}},\"headers\":{\"X-A\":\"b\"}}}}");
    llm_client *c = NULL;
    assert_int_equal(llm_client_new(loop, good, &c, &err), AP_OK);
    llm_client_free(c);
    cJSON_Delete(good);
    llm_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deterministic_and_persona_voiced),
        cmocka_unit_test(test_schema_valid_answers),
        cmocka_unit_test(test_feedback_converges),
        cmocka_unit_test(test_options_line),
        cmocka_unit_test(test_exact_answers),
        cmocka_unit_test(test_exact_numbers_and_strings),
        cmocka_unit_test(test_array_properties_name_nothing),
        cmocka_unit_test(test_min_items_clamped),
        cmocka_unit_test(test_multiplying_schemas_are_cut),
        cmocka_unit_test(test_provider_matches_llm_simulate),
        cmocka_unit_test(test_provider_answers_sequence_bomb),
        cmocka_unit_test(test_async_latency_stream_cancel),
        cmocka_unit_test(test_answers_made_while_waiting),
        cmocka_unit_test(test_client_freed_before_answers),
        cmocka_unit_test(test_token_delay_streams_pieces),
        cmocka_unit_test(test_llm_config_is_checked),
        cmocka_unit_test(test_response_names_the_configured_provider),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
