/* The openai and anthropic providers against build/mockllm: streaming, schemas, the retry
 * policy (counted on the server), fallback models, timeouts, cancel and the concurrency cap.
 *
 * The providers are driven through their llm_provider_ops with a small stand-in for the
 * llm_call half of provider.h, so this test does not depend on which providers llm.c lists. */
#include "core/buf.h"
#include "core/clock.h"
#include "core/jsonx.h"
#include "llm/http_provider.h"
#include "llm/http_schema.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "../support/mockllm_spawn.h"

/* ---- the llm_call half of provider.h ---------------------------------------------------- */

struct llm_call {
    llm_request req;
    llm_loop *loop;
    void *data;
    buf deltas;
    int done;
    llm_response resp;
    char text[8192], data_json[8192], error[512], model[64];
};

const llm_request *llm_call_request(const llm_call *call)
{
    return &call->req;
}

llm_loop *llm_call_loop(const llm_call *call)
{
    return call->loop;
}

void llm_call_set_data(llm_call *call, void *data)
{
    call->data = data;
}

void *llm_call_data(const llm_call *call)
{
    return call->data;
}

void llm_call_delta(llm_call *call, const char *text, size_t len)
{
    assert_int_equal(buf_append(&call->deltas, text, len), AP_OK);
}

void llm_call_finish(llm_call *call, const llm_response *r)
{
    call->done++;
    call->resp = *r;
    snprintf(call->text, sizeof call->text, "%s", r->text ? r->text : "");
    snprintf(call->data_json, sizeof call->data_json, "%s", r->data_json ? r->data_json : "");
    snprintf(call->error, sizeof call->error, "%s", r->error ? r->error : "");
    snprintf(call->model, sizeof call->model, "%s", r->model ? r->model : "");
    call->resp.text = call->resp.data_json = call->resp.error = call->resp.model = NULL;
}

/* ---- mockllm ---------------------------------------------------------------------------- */

typedef struct mock {
    pid_t pid;
    int port;
} mock;

/* Servers still running; a failed assertion skips mock_stop, so teardown ends them. */
static pid_t live[8];

static mock mock_start(const char *const *args)
{
    const char *bin = getenv("MOCKLLM_BIN");
    assert_non_null(bin);
    int port = 0;
    pid_t pid = mockllm_spawn(bin, args, &port);
    assert_true(pid > 0);
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        if (live[i] == 0) {
            live[i] = pid;
            break;
        }
    }
    return (mock){pid, port};
}

static void mock_stop(mock m)
{
    kill(m.pid, SIGTERM);
    waitpid(m.pid, NULL, 0);
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
        if (live[i] == m.pid)
            live[i] = 0;
}

static int stop_leftovers(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
        if (live[i] != 0)
            mock_stop((mock){live[i], 0});
    return 0;
}

/* GET /stats through a blocking socket (the test's own side channel). */
static cJSON *mock_stats(mock m)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)m.port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    const char *rq = "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_true(write(fd, rq, strlen(rq)) == (ssize_t)strlen(rq));
    char resp[8192];
    size_t used = 0;
    ssize_t r;
    while (used < sizeof resp - 1 && (r = read(fd, resp + used, sizeof resp - 1 - used)) > 0)
        used += (size_t)r;
    resp[used] = '\0';
    close(fd);
    const char *body = strstr(resp, "\r\n\r\n");
    assert_non_null(body);
    cJSON *j = cJSON_Parse(body + 4);
    assert_non_null(j);
    return j;
}

static double stat_num(mock m, const char *group, const char *key)
{
    cJSON *j = mock_stats(m);
    const cJSON *g = group != NULL ? cJSON_GetObjectItem(j, group) : j;
    double v = jsonx_number(g, key, -1);
    cJSON_Delete(j);
    return v;
}

/* ---- driving a provider ----------------------------------------------------------------- */

typedef struct rig {
    llm_loop *loop;
    const llm_provider_ops *ops;
    void *self;
    cJSON *cfg;
} rig;

static rig rig_scheme(const llm_provider_ops *ops, mock m, const char *scheme,
                      const char *extra_cfg)
{
    rig r = {.ops = ops};
    char cfgtext[2048];
    snprintf(cfgtext, sizeof cfgtext,
             "{\"base_url\":\"%s://127.0.0.1:%d%s\",\"api_key\":\"sk-test\","
             "\"backoff_base_ms\":10,\"backoff_cap_ms\":50%s%s}",
             scheme, m.port, ops == &llm_openai_ops ? "/v1" : "", extra_cfg[0] ? "," : "",
             extra_cfg);
    r.cfg = cJSON_Parse(cfgtext);
    assert_non_null(r.cfg);
    ap_err err;
    assert_int_equal(llm_loop_new(&r.loop, &err), AP_OK);
    assert_int_equal(ops->create(r.loop, r.cfg, &r.self, &err), AP_OK);
    return r;
}

static rig rig_new(const llm_provider_ops *ops, mock m, const char *extra_cfg)
{
    return rig_scheme(ops, m, "http", extra_cfg);
}

static void rig_free(rig *r)
{
    r->ops->destroy(r->self);
    llm_loop_free(r->loop);
    cJSON_Delete(r->cfg);
}

static llm_call *call_new(rig *r, const char *prompt, const char *schema, bool stream)
{
    llm_call *c = calloc(1, sizeof *c);
    assert_non_null(c);
    buf_init(&c->deltas, 1 << 20);
    c->loop = r->loop;
    c->req = (llm_request){
        .expert_id = "e1",
        .expert_json = "{\"id\":\"e1\",\"name\":\"Dr. Ada Park\",\"role\":\"regulatory lead\","
                       "\"persona\":\"Careful and precise.\",\"expertise\":[\"FDA\",\"EMA\"]}",
        .prompt = prompt,
        .schema_json = schema,
        .stream = stream,
        .temperature = -1,
    };
    return c;
}

static void call_free(llm_call *c)
{
    buf_free(&c->deltas);
    free(c);
}

static void run_until(rig *r, llm_call **calls, int n, int64_t max_ms)
{
    int64_t end = llm_loop_now_ms() + max_ms;
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += calls[i]->done;
        if (done == n || llm_loop_now_ms() > end)
            break;
        llm_loop_run_once(r->loop, 20);
    }
}

static llm_call *ask(rig *r, const char *prompt, const char *schema, bool stream)
{
    llm_call *c = call_new(r, prompt, schema, stream);
    ap_err err;
    assert_int_equal(r->ops->start(r->self, c, &err), AP_OK);
    run_until(r, &c, 1, 20000);
    assert_int_equal(c->done, 1);
    return c;
}

/* Starts c and runs the loop until its first delta: the stream is then mid-way. */
static void start_mid_stream(rig *r, llm_call *c)
{
    ap_err err;
    assert_int_equal(r->ops->start(r->self, c, &err), AP_OK);
    int64_t end = llm_loop_now_ms() + 5000;
    while (c->deltas.len == 0 && llm_loop_now_ms() < end)
        llm_loop_run_once(r->loop, 20);
    assert_true(c->deltas.len > 0);
}

static const char *const FAST[] = {"--latency-ms", "5", "--token-ms", "1", "--tokens", "12", NULL};

static void test_streaming_both(void **state)
{
    (void)state;
    mock m = mock_start(FAST);
    const llm_provider_ops *ops[2] = {&llm_openai_ops, &llm_anthropic_ops};
    for (int i = 0; i < 2; i++) {
        rig r = rig_new(ops[i], m, "\"model\":\"mock-1\"");
        llm_call *c = ask(&r, "Should we file now?", NULL, true);
        assert_int_equal(c->resp.status, AP_OK);
        assert_string_equal(c->deltas.data, c->text);
        assert_non_null(strstr(c->text, "Dr. Ada Park"));
        assert_int_equal(c->resp.completion_tokens, 12);
        assert_true(c->resp.prompt_tokens > 0);
        assert_int_equal(c->resp.attempts, 1);
        assert_string_equal(c->model, "mock-1");
        assert_string_equal(c->resp.provider, ops[i]->name);
        call_free(c);
        /* non-streaming gives the same text and no deltas */
        c = ask(&r, "Should we file now?", NULL, false);
        assert_int_equal(c->resp.status, AP_OK);
        assert_int_equal(c->deltas.len, 0);
        assert_non_null(strstr(c->text, "Dr. Ada Park"));
        call_free(c);
        rig_free(&r);
    }
    assert_int_equal((int)stat_num(m, NULL, "requests_total"), 4);
    mock_stop(m);
}

static const char *SCHEMA =
    "{\"type\":\"object\",\"required\":[\"position\",\"confidence\",\"ranking\"],"
    "\"additionalProperties\":false,\"properties\":{\"position\":{\"type\":\"string\","
    "\"enum\":[\"approve\",\"reject\"]},\"confidence\":{\"type\":\"number\",\"minimum\":0,"
    "\"maximum\":1},\"ranking\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"enum\":"
    "[\"a\",\"b\",\"c\"]}}}}";

static void test_schema_answers(void **state)
{
    (void)state;
    mock m = mock_start(FAST);
    cJSON *schema = cJSON_Parse(SCHEMA);
    const llm_provider_ops *ops[2] = {&llm_openai_ops, &llm_anthropic_ops};
    for (int i = 0; i < 2; i++) {
        rig r = rig_new(ops[i], m,
                        "\"prices\":{\"gpt-4o-mini\":{\"prompt\":1000,"
                        "\"completion\":2000}}");
        llm_call *c = ask(&r, "Decide.", SCHEMA, true);
        assert_int_equal(c->resp.status, AP_OK);
        cJSON *data = cJSON_Parse(c->data_json);
        char why[200];
        assert_true(llm_schema_check(schema, data, why, sizeof why));
        cJSON_Delete(data);
        if (i == 0) /* priced per million tokens */
            assert_true(c->resp.cost_usd > 0);
        call_free(c);
        rig_free(&r);
    }
    cJSON_Delete(schema);
    mock_stop(m);
}

static void test_retry_policy(void **state)
{
    (void)state;
    static const struct {
        const char *fault;
        int attempts;
        ap_status status;
        const char *says;
    } cases[] = {
        {"500", 3, AP_IO, "HTTP 500"},     {"529", 3, AP_IO, "HTTP 529"},
        {"429", 3, AP_IO, "HTTP 429"},     {"reset", 3, AP_IO, "openai"},
        {"truncate", 3, AP_IO, "openai"},  {"malformed", 3, AP_INVALID, "bad response"},
        {"401", 1, AP_DENIED, "HTTP 401"}, {"spend_limit", 1, AP_LIMIT, "insufficient_quota"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[] = {"--latency-ms",  "1", "--token-ms", "0",
                              "--fault-rate",  "1", "--faults",   cases[i].fault,
                              "--retry-after", "0", NULL};
        mock m = mock_start(args);
        rig r = rig_new(&llm_openai_ops, m, "\"max_attempts\":3");
        llm_call *c = ask(&r, "x", NULL, true);
        if (c->resp.status != cases[i].status || c->resp.attempts != cases[i].attempts ||
            strstr(c->error, cases[i].says) == NULL || strncmp(c->error, "openai: ", 8) != 0)
            fail_msg("fault %s: status %d attempts %d error %s", cases[i].fault, c->resp.status,
                     c->resp.attempts, c->error);
        /* the server saw exactly the attempts the policy allows */
        assert_int_equal((int)stat_num(m, NULL, "requests_total"), cases[i].attempts);
        call_free(c);
        rig_free(&r);
        mock_stop(m);
    }
}

/* A provider that asks to wait an hour is not waited for: one attempt, then the call fails
 * (or moves to a fallback model) at once, saying why. */
static void test_long_retry_after_is_not_waited_for(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms",  "1",    "--token-ms", "0",
                          "--fault-rate",  "1",    "--faults",   "429",
                          "--retry-after", "3600", NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_openai_ops, m, "\"max_attempts\":3");
    int64_t t0 = clock_mono_ms();
    llm_call *c = ask(&r, "x", NULL, true);
    if (c->resp.status == AP_OK || c->resp.attempts != 1 ||
        strstr(c->error, "asked to retry after 3600 s") == NULL || clock_mono_ms() - t0 > 3000)
        fail_msg("status %d attempts %d after %lld ms: %s", c->resp.status, c->resp.attempts,
                 (long long)(clock_mono_ms() - t0), c->error);
    assert_int_equal((int)stat_num(m, NULL, "requests_total"), 1);
    call_free(c);
    rig_free(&r);
    mock_stop(m);
}

/* A stream that said it is done is done, even when the server keeps the connection open:
 * the answer arrives at once, on its first attempt. */
static void test_done_stream_on_open_connection(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms", "1",      "--token-ms", "0", "--fault-rate", "1",
                          "--faults",     "linger", NULL};
    mock m = mock_start(args);
    const llm_provider_ops *both[] = {&llm_openai_ops, &llm_anthropic_ops};
    for (size_t i = 0; i < 2; i++) {
        rig r = rig_new(both[i], m, "\"max_attempts\":2,\"idle_timeout_ms\":20000");
        int64_t t0 = clock_mono_ms();
        llm_call *c = ask(&r, "x", NULL, true);
        if (c->resp.status != AP_OK || c->resp.attempts != 1 || clock_mono_ms() - t0 > 5000)
            fail_msg("%s: status %d attempts %d after %lld ms: %s", i ? "anthropic" : "openai",
                     c->resp.status, c->resp.attempts, (long long)(clock_mono_ms() - t0), c->error);
        assert_true(c->resp.completion_tokens > 0);
        call_free(c);
        rig_free(&r);
    }
    mock_stop(m);
}

/* A stream that breaks midway was charged its prompt all the same: the failed call reports
 * the tokens the provider counted (message_start), not zero. */
static void test_failed_stream_bills_reported_usage(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms", "1",        "--token-ms", "0", "--fault-rate", "1",
                          "--faults",     "truncate", NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_anthropic_ops, m, "\"max_attempts\":1");
    llm_call *c = ask(&r, "a question of some length", NULL, true);
    if (c->resp.status == AP_OK || c->resp.prompt_tokens <= 0)
        fail_msg("status %d prompt_tokens %lld: %s", c->resp.status,
                 (long long)c->resp.prompt_tokens, c->error);
    call_free(c);
    rig_free(&r);
    mock_stop(m);
}

static void test_transient_faults_recover(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms",  "1",   "--token-ms", "0",
                          "--fault-rate",  "0.3", "--seed",     "11",
                          "--retry-after", "0",   NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_anthropic_ops, m, "\"max_attempts\":8");
    llm_call *calls[40];
    ap_err err;
    char prompts[40][32];
    for (int i = 0; i < 40; i++) {
        snprintf(prompts[i], sizeof prompts[i], "question %d", i);
        calls[i] = call_new(&r, prompts[i], NULL, true);
        assert_int_equal(r.ops->start(r.self, calls[i], &err), AP_OK);
    }
    run_until(&r, calls, 40, 30000);
    int attempts = 0;
    for (int i = 0; i < 40; i++) {
        assert_int_equal(calls[i]->done, 1);
        if (calls[i]->resp.status != AP_OK)
            fail_msg("call %d: %s", i, calls[i]->error);
        attempts += calls[i]->resp.attempts;
        call_free(calls[i]);
    }
    assert_true(attempts > 40);
    assert_int_equal((int)stat_num(m, NULL, "requests_total"), attempts);
    rig_free(&r);
    mock_stop(m);
}

static void test_fallback_model(void **state)
{
    (void)state;
    mock m = mock_start(FAST);
    rig r = rig_new(&llm_openai_ops, m,
                    "\"max_attempts\":2,\"model\":\"fault-500\",\"fallback_models\":[\"good-1\"]");
    llm_call *c = ask(&r, "x", NULL, true);
    assert_int_equal(c->resp.status, AP_OK);
    assert_string_equal(c->model, "good-1");
    assert_int_equal(c->resp.attempts, 3);
    call_free(c);
    rig_free(&r);
    mock_stop(m);
}

static void test_schema_repair(void **state)
{
    (void)state;
    mock m = mock_start(FAST);
    rig r = rig_new(&llm_openai_ops, m, "\"model\":\"fault-bad_json\"");
    llm_call *c = ask(&r, "Decide.", SCHEMA, true);
    assert_int_equal(c->resp.status, AP_OK);
    assert_int_equal(c->resp.attempts, 2); /* the prose answer, then the repaired one */
    assert_non_null(strstr(c->data_json, "\"position\""));
    /* the deltas of the rejected answer are not followed by the repaired one's */
    assert_non_null(strstr(c->deltas.data, "probably yes"));
    assert_null(strstr(c->deltas.data, "position"));
    assert_int_equal((int)stat_num(m, NULL, "requests_total"), 2);
    call_free(c);
    rig_free(&r);
    mock_stop(m);
}

static void test_size_cap(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms", "1", "--token-ms", "0", "--tokens", "400", NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_anthropic_ops, m, "\"max_answer_bytes\":256,\"max_attempts\":2");
    llm_call *c = ask(&r, "x", NULL, true);
    assert_int_equal(c->resp.status, AP_LIMIT);
    assert_int_equal(c->resp.attempts, 2);
    assert_non_null(strstr(c->error, "longer than 256 bytes"));
    assert_true(c->deltas.len <= 256);
    call_free(c);
    c = ask(&r, "x", NULL, false);
    assert_int_equal(c->resp.status, AP_LIMIT);
    call_free(c);
    rig_free(&r);
    mock_stop(m);
}

static void test_no_repeated_deltas(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms", "1",        "--token-ms", "1", "--fault-rate", "1",
                          "--faults",     "truncate", NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_openai_ops, m, "\"max_attempts\":3");
    llm_call *c = ask(&r, "x", NULL, true);
    assert_int_equal(c->resp.status, AP_IO);
    assert_int_equal(c->resp.attempts, 3);
    const char *first = strstr(c->deltas.data, "Dr. Ada Park");
    assert_non_null(first);
    assert_null(strstr(first + 1, "Dr. Ada Park"));
    call_free(c);
    rig_free(&r);
    mock_stop(m);
}

static void test_stall_times_out(void **state)
{
    (void)state;
    const char *args[] = {"--fault-rate", "1", "--faults", "stall", NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_openai_ops, m, "\"max_attempts\":2,\"first_token_timeout_ms\":200");
    int64_t t0 = llm_loop_now_ms();
    llm_call *c = ask(&r, "x", NULL, true);
    int64_t took = llm_loop_now_ms() - t0;
    assert_int_equal(c->resp.status, AP_TIMEOUT);
    assert_int_equal(c->resp.attempts, 2);
    assert_non_null(strstr(c->error, "first-token timeout"));
    assert_true(took >= 400 && took < 3000);
    call_free(c);
    rig_free(&r);
    mock_stop(m);
}

static void test_cancel_disconnects(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms", "10", "--token-ms", "50", "--tokens", "100", NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_anthropic_ops, m, "");
    llm_call *c = call_new(&r, "x", NULL, true);
    start_mid_stream(&r, c);
    r.ops->cancel(r.self, c);
    for (int i = 0; i < 5; i++)
        llm_loop_run_once(r.loop, 20);
    assert_int_equal(c->done, 0);
    double gone = 0;
    for (int i = 0; i < 100 && gone < 1; i++) {
        usleep(20000);
        gone = stat_num(m, NULL, "disconnects");
    }
    assert_int_equal((int)gone, 1);
    call_free(c);
    rig_free(&r);
    mock_stop(m);
}

/* Finished and cancelled transfers hand their curl handle to the next call: the next call
 * must get a clean transfer and the cancelled one must never hear of it again. */
static void test_handles_reused_after_cancel(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms", "10", "--token-ms", "5", "--tokens", "40", NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_openai_ops, m, "\"max_concurrency\":1");
    llm_call *a = call_new(&r, "first", NULL, true);
    start_mid_stream(&r, a);
    r.ops->cancel(r.self, a);
    size_t a_len = a->deltas.len;
    for (int i = 0; i < 3; i++) {
        llm_call *b = ask(&r, i == 1 ? "second" : "third", i == 2 ? SCHEMA : NULL, true);
        assert_int_equal(b->resp.status, AP_OK);
        assert_true(b->deltas.len > 0);
        assert_int_equal(b->resp.attempts, 1);
        call_free(b);
    }
    assert_int_equal(a->done, 0);
    assert_int_equal(a->deltas.len, a_len);
    assert_int_equal((int)stat_num(m, NULL, "requests_total"), 4);
    call_free(a);
    rig_free(&r);
    mock_stop(m);
}

static void test_concurrency_cap(void **state)
{
    (void)state;
    const char *args[] = {"--latency-ms", "100", "--token-ms", "0", NULL};
    mock m = mock_start(args);
    rig r = rig_new(&llm_openai_ops, m, "\"max_concurrency\":2");
    llm_call *calls[6];
    ap_err err;
    int64_t t0 = llm_loop_now_ms();
    for (int i = 0; i < 6; i++) {
        calls[i] = call_new(&r, "x", NULL, true);
        assert_int_equal(r.ops->start(r.self, calls[i], &err), AP_OK);
    }
    /* two at a time: in flight on the server never exceeds the cap */
    for (int k = 0; k < 10; k++) {
        llm_loop_run_once(r.loop, 20);
        assert_true(stat_num(m, NULL, "in_flight") <= 2);
    }
    /* cancelling a queued call takes it out of the queue */
    r.ops->cancel(r.self, calls[5]);
    run_until(&r, calls, 5, 10000);
    int64_t took = llm_loop_now_ms() - t0;
    for (int i = 0; i < 5; i++)
        assert_int_equal(calls[i]->resp.status, AP_OK);
    assert_int_equal(calls[5]->done, 0);
    assert_true(took >= 300); /* three waves of 100 ms */
    assert_int_equal((int)stat_num(m, NULL, "requests_total"), 5);
    for (int i = 0; i < 6; i++)
        call_free(calls[i]);
    rig_free(&r);
    mock_stop(m);
}

/* HTTPS as the real providers serve it: HTTP/2 through ALPN, many streams per connection,
 * connections reused by the next burst, and stream-level faults retried like connection
 * faults. */
static void test_http2_over_tls(void **state)
{
    (void)state;
    char pem[64];
    snprintf(pem, sizeof pem, "/tmp/llm_http_test_%ld.pem", (long)getpid());
    const char *args[] = {"--latency-ms",   "5", "--token-ms", "1", "--tokens", "12",
                          "--tls-cert-out", pem, NULL};
    mock m = mock_start(args);
    char extra[160];
    snprintf(extra, sizeof extra, "\"ca_file\":\"%s\",\"model\":\"mock-1\"", pem);
    const llm_provider_ops *ops[2] = {&llm_openai_ops, &llm_anthropic_ops};
    enum { N = 24 };
    for (int i = 0; i < 2; i++) {
        rig r = rig_scheme(ops[i], m, "https", extra);
        for (int burst = 0; burst < 2; burst++) {
            llm_call *calls[N];
            ap_err err;
            for (int k = 0; k < N; k++) {
                calls[k] = call_new(&r, k % 2 ? "Should we file now?" : "Wait a year?", NULL, true);
                assert_int_equal(r.ops->start(r.self, calls[k], &err), AP_OK);
            }
            run_until(&r, calls, N, 20000);
            for (int k = 0; k < N; k++) {
                assert_int_equal(calls[k]->done, 1);
                assert_int_equal(calls[k]->resp.status, AP_OK);
                assert_string_equal(calls[k]->deltas.data, calls[k]->text);
                assert_int_equal(calls[k]->resp.completion_tokens, 12);
                call_free(calls[k]);
            }
        }
        rig_free(&r);
    }
    assert_int_equal((int)stat_num(m, NULL, "http2_requests"), 4 * N);
    /* a reset stream and a truncated answer are retried like a dropped connection */
    const char *faults[] = {"reset", "truncate"};
    for (int f = 0; f < 2; f++) {
        char cfg[320];
        snprintf(cfg, sizeof cfg, "%s,\"max_attempts\":2,\"headers\":{\"X-Mock-Fault\":\"%s\"}",
                 extra, faults[f]);
        rig r = rig_scheme(&llm_openai_ops, m, "https", cfg);
        llm_call *c = ask(&r, "Should we file now?", NULL, true);
        assert_int_not_equal(c->resp.status, AP_OK);
        assert_int_equal(c->resp.attempts, 2);
        call_free(c);
        rig_free(&r);
    }
    /* an error reply is no disconnect */
    char cfg[320];
    snprintf(cfg, sizeof cfg, "%s,\"max_attempts\":1,\"headers\":{\"X-Mock-Fault\":\"500\"}",
             extra);
    rig r = rig_scheme(&llm_openai_ops, m, "https", cfg);
    llm_call *c = ask(&r, "Should we file now?", NULL, true);
    assert_int_not_equal(c->resp.status, AP_OK);
    call_free(c);
    rig_free(&r);
    assert_int_equal((int)stat_num(m, NULL, "disconnects"), 0);
    /* a cancelled stream is reset, not its connection (other calls share it): libcurl 7.88
     * sends the RST_STREAM when it next services the connection, here with the next call */
    snprintf(cfg, sizeof cfg,
             "%s,\"headers\":{\"X-Mock-Token-Ms\":\"50\",\"X-Mock-Tokens\":\"100\"}", extra);
    r = rig_scheme(&llm_openai_ops, m, "https", cfg);
    c = call_new(&r, "x", NULL, true);
    start_mid_stream(&r, c);
    r.ops->cancel(r.self, c);
    assert_int_equal(c->done, 0);
    call_free(c);
    cJSON_ReplaceItemInObject(r.cfg, "headers", cJSON_CreateObject());
    c = ask(&r, "y", NULL, true);
    assert_int_equal(c->resp.status, AP_OK);
    call_free(c);
    double gone = 0;
    for (int i = 0; i < 100 && gone < 1; i++) {
        llm_loop_run_once(r.loop, 20);
        gone = stat_num(m, NULL, "disconnects");
    }
    assert_int_equal((int)gone, 1);
    rig_free(&r);
    mock_stop(m);
    unlink(pem);
}

static void test_http_version_option(void **state)
{
    (void)state;
    llm_loop *loop = NULL;
    ap_err err;
    void *self = NULL;
    assert_int_equal(llm_loop_new(&loop, &err), AP_OK);
    cJSON *cfg = cJSON_Parse("{\"base_url\":\"http://127.0.0.1:1\",\"http_version\":\"3\"}");
    assert_int_equal(llm_openai_ops.check(cfg, "openai", &err), AP_INVALID);
    assert_non_null(strstr(err.msg, "http_version"));
    cJSON_Delete(cfg);
    cfg = cJSON_Parse("{\"base_url\":\"https://127.0.0.1:1\",\"http_version\":\"1.1\"}");
    assert_int_equal(llm_openai_ops.create(loop, cfg, &self, &err), AP_OK);
    llm_openai_ops.destroy(self);
    cJSON_Delete(cfg);
    /* clear-text HTTP/2 is refused where libcurl cannot reuse such connections */
    cfg = cJSON_Parse("{\"base_url\":\"http://127.0.0.1:1\",\"http_version\":\"2\"}");
    unsigned v = curl_version_info(CURLVERSION_NOW)->version_num;
    ap_status want = v >= 0x075800 && v < 0x075900 ? AP_INVALID : AP_OK;
    self = NULL;
    assert_int_equal(llm_openai_ops.create(loop, cfg, &self, &err), want);
    llm_openai_ops.destroy(self);
    cJSON_Delete(cfg);
    llm_loop_free(loop);
}

static void test_schema_extract_and_check(void **state)
{
    (void)state;
    cJSON *schema = cJSON_Parse(SCHEMA);
    const char *good = "Sure! ```json\n{\"position\":\"approve\",\"confidence\":0.5,"
                       "\"ranking\":[\"b\",\"a\"]}\n```";
    cJSON *v = llm_schema_extract(good, strlen(good));
    char why[200];
    assert_non_null(v);
    assert_true(llm_schema_check(schema, v, why, sizeof why));
    cJSON_Delete(v);
    const char *prose = "My answer: {\"position\":\"maybe\",\"confidence\":2,\"ranking\":[]} ok";
    v = llm_schema_extract(prose, strlen(prose));
    assert_non_null(v);
    assert_false(llm_schema_check(schema, v, why, sizeof why));
    assert_string_equal(why, "$.position: not one of the enum values");
    cJSON_Delete(v);
    static const struct {
        const char *json, *why;
    } bad[] = {
        {"{\"position\":\"approve\",\"confidence\":1.5,\"ranking\":[]}",
         "$.confidence: above the maximum"},
        {"{\"position\":\"approve\",\"ranking\":[]}",
         "$: missing required property \"confidence\""},
        {"{\"position\":\"approve\",\"confidence\":1,\"ranking\":[\"z\"]}",
         "$.ranking[0]: not one of the enum values"},
        {"{\"position\":\"approve\",\"confidence\":1,\"ranking\":[],\"x\":1}",
         "$: unexpected property \"x\""},
        {"[1]", "$: expected object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = cJSON_Parse(bad[i].json);
        assert_false(llm_schema_check(schema, v, why, sizeof why));
        assert_string_equal(why, bad[i].why);
        cJSON_Delete(v);
    }
    assert_null(llm_schema_extract("no json here", 12));
    assert_null(llm_schema_extract("{\"a\": [1, 2", 11));
    cJSON *s2 = cJSON_Parse("{\"type\":[\"integer\",\"null\"],\"anyOf\":[{\"minimum\":3},"
                            "{\"type\":\"null\"}]}");
    cJSON *i5 = cJSON_CreateNumber(5), *f = cJSON_CreateNumber(2.5), *nul = cJSON_CreateNull();
    assert_true(llm_schema_check(s2, i5, why, sizeof why));
    assert_true(llm_schema_check(s2, nul, why, sizeof why));
    assert_false(llm_schema_check(s2, f, why, sizeof why));
    cJSON_Delete(s2);
    cJSON_Delete(i5);
    cJSON_Delete(f);
    cJSON_Delete(nul);
    cJSON_Delete(schema);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_schema_extract_and_check, stop_leftovers),
        cmocka_unit_test_teardown(test_streaming_both, stop_leftovers),
        cmocka_unit_test_teardown(test_schema_answers, stop_leftovers),
        cmocka_unit_test_teardown(test_retry_policy, stop_leftovers),
        cmocka_unit_test_teardown(test_long_retry_after_is_not_waited_for, stop_leftovers),
        cmocka_unit_test_teardown(test_done_stream_on_open_connection, stop_leftovers),
        cmocka_unit_test_teardown(test_failed_stream_bills_reported_usage, stop_leftovers),
        cmocka_unit_test_teardown(test_transient_faults_recover, stop_leftovers),
        cmocka_unit_test_teardown(test_fallback_model, stop_leftovers),
        cmocka_unit_test_teardown(test_schema_repair, stop_leftovers),
        cmocka_unit_test_teardown(test_size_cap, stop_leftovers),
        cmocka_unit_test_teardown(test_no_repeated_deltas, stop_leftovers),
        cmocka_unit_test_teardown(test_stall_times_out, stop_leftovers),
        cmocka_unit_test_teardown(test_cancel_disconnects, stop_leftovers),
        cmocka_unit_test_teardown(test_handles_reused_after_cancel, stop_leftovers),
        cmocka_unit_test_teardown(test_concurrency_cap, stop_leftovers),
        cmocka_unit_test_teardown(test_http2_over_tls, stop_leftovers),
        cmocka_unit_test(test_http_version_option),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
