/* panel_engine_test.c - the graph runner end to end on a SQLite store and the simulated
 * provider: concurrency of ask_all, params validation, hot reload with pinned versions,
 * cancel, human input, the node budget, checkpoints and resume without paying twice. */
#include "core/clock.h"
#include "core/config.h"
#include "core/fileio.h"
#include "core/jsonx.h"
#include "core/log.h"
#include "panel/engine.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sqlite3.h>

#include <fcntl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[64];
static char calls_path[128];
static config cfg;
static store *st;
static script_registry *reg;
static char tenant[STORE_ID_MAX];

static const char experts5[] =
    "[{\"id\":\"a\",\"name\":\"A\",\"role\":\"analyst\",\"persona\":\"careful\"},"
    "{\"id\":\"b\",\"name\":\"B\",\"role\":\"builder\",\"persona\":\"bold\"},"
    "{\"id\":\"c\",\"name\":\"C\",\"role\":\"critic\",\"persona\":\"skeptical\"},"
    "{\"id\":\"d\",\"name\":\"D\",\"role\":\"doctor\",\"persona\":\"empathetic\"},"
    "{\"id\":\"e\",\"name\":\"E\",\"role\":\"economist\",\"persona\":\"numbers first\"}]";

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/strategies/%s", dir, name);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(tmp, path), 0);
}

static int setup(void **state)
{
    (void)state;
    log_set_level(LOG_LEVEL_ERROR);
    snprintf(dir, sizeof dir, "/tmp/askpanel-engine-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/strategies", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/strategies/consensus", dir);
    mkdir(path, 0755);
    snprintf(calls_path, sizeof calls_path, "%s/calls.log", dir);
    setenv("ASKPANEL_SIM_CALL_LOG", calls_path, 1);
    write_file("consensus/count.lua",
               "return function(ballots, opts) return { level = #ballots > 0 and 1 or 0, "
               "position = 'ok', dissent = {}, details = { n = #ballots } } end\n");
    ap_err err = {0};
    assert_int_equal(config_defaults(&cfg), AP_OK);
    snprintf(path, sizeof path, "%s/strategies", dir);
    assert_int_equal(config_set(&cfg, "strategies_dir", path, "test", &err), AP_OK);
    snprintf(path, sizeof path, "%s/tenants", dir);
    assert_int_equal(config_set(&cfg, "tenants_dir", path, "test", &err), AP_OK);
    assert_int_equal(config_set(&cfg, "runtime.runners", "1", "test", &err), AP_OK);
    assert_int_equal(config_set(&cfg, "runtime.max_steps", "50", "test", &err), AP_OK);
    char url[128];
    snprintf(url, sizeof url, "sqlite:%s/test.db", dir);
    assert_int_equal(store_open(url, &st, &err), AP_OK);
    assert_int_equal(store_migrate(st, NULL, &err), AP_OK);
    store_tenant t = {0};
    assert_int_equal(store_tenant_create(st, "acme", "Acme", NULL, &t, &err), AP_OK);
    memcpy(tenant, t.id, sizeof tenant);
    store_tenant_free(&t);
    script_limits lim;
    script_limits_default(&lim);
    assert_int_equal(script_registry_new(&lim, cfg.strategies_dir, cfg.tenants_dir, &reg, &err),
                     AP_OK);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    script_registry_free(reg);
    store_close(st);
    config_free(&cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static panel_engine *start_engine(int latency_ms)
{
    char v[32];
    snprintf(v, sizeof v, "%d", latency_ms);
    setenv("ASKPANEL_SIM_LATENCY_MS", v, 1);
    panel_engine_opts o = {.cfg = &cfg, .store = st, .registry = reg, .seed = 7};
    panel_engine *e = NULL;
    ap_err err = {0};
    if (panel_engine_start(&o, &e, &err) != AP_OK)
        fail_msg("engine: %s", err.msg);
    return e;
}

static void create(panel_engine *e, const char *strategy, const char *params, char *id)
{
    panel_create_req req = {.question = "Should we expand to Japan?",
                            .strategy = strategy,
                            .params_json = params,
                            .experts_json = experts5};
    store_panel out = {0};
    ap_err err = {0};
    if (panel_engine_create(e, tenant, &req, &out, &err) != AP_OK)
        fail_msg("create %s: %s", strategy, err.msg);
    memcpy(id, out.id, STORE_ID_MAX);
    store_panel_free(&out);
}

/* Creates a panel of strategy (params may be NULL), subscribes to it and executes it; returns
 * the subscription (the caller unsubscribes). */
static panel_sub *start_panel(panel_engine *e, const char *strategy, const char *params, char *id)
{
    create(e, strategy, params, id);
    panel_sub *sub = NULL;
    ap_err err = {0};
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    if (panel_engine_execute(e, tenant, id, &err) != AP_OK)
        fail_msg("execute: %s", err.msg);
    return sub;
}

/* Waits up to timeout_ms for an event of `type`; returns its data (caller frees), NULL when
 * none came. A panel.failed meanwhile (unless that is the type) fails the test. */
static char *event_within(panel_sub *sub, const char *type, int timeout_ms)
{
    int64_t deadline = clock_mono_ms() + timeout_ms;
    while (clock_mono_ms() < deadline) {
        panel_event ev;
        int r = panel_sub_next(sub, &ev, 100);
        if (r == 1) {
            bool hit = strcmp(ev.type, type) == 0;
            char *data = strdup(ev.data);
            if (!hit && strcmp(ev.type, "panel.failed") == 0 && strcmp(type, "panel.failed") != 0)
                fail_msg("panel failed while waiting for %s: %s", type, data);
            panel_event_clear(&ev);
            if (hit)
                return data;
            free(data);
        }
    }
    return NULL;
}

/* Waits for an event of `type`; returns its data (caller frees) or fails the test. */
static char *wait_for(panel_sub *sub, const char *type, int timeout_ms)
{
    char *data = event_within(sub, type, timeout_ms);
    if (data == NULL)
        fail_msg("no %s event within %d ms", type, timeout_ms);
    return data;
}

/* Waits for an event of `type`; returns its seq or fails the test. */
static int64_t wait_seq(panel_sub *sub, const char *type, int timeout_ms)
{
    int64_t deadline = clock_mono_ms() + timeout_ms;
    while (clock_mono_ms() < deadline) {
        panel_event ev;
        if (panel_sub_next(sub, &ev, 100) != 1)
            continue;
        bool hit = strcmp(ev.type, type) == 0;
        int64_t seq = ev.seq;
        panel_event_clear(&ev);
        if (hit)
            return seq;
    }
    fail_msg("no %s event within %d ms", type, timeout_ms);
    return 0;
}

static char *run_to_end(panel_engine *e, const char *id, const char *type, int timeout_ms)
{
    panel_sub *sub = NULL;
    ap_err err = {0};
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    if (panel_engine_execute(e, tenant, id, &err) != AP_OK)
        fail_msg("execute: %s", err.msg);
    char *data = wait_for(sub, type, timeout_ms);
    panel_engine_unsubscribe(e, sub);
    return data;
}

/* As after a restart: a new engine resumes the one interrupted panel id; returns its
 * panel.completed data (caller frees). */
static char *restart_to_end(const char *id)
{
    panel_engine *e = start_engine(0);
    panel_sub *sub = NULL;
    ap_err err = {0};
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    size_t n = 0;
    assert_int_equal(panel_engine_resume_all(e, &n, &err), AP_OK);
    assert_int_equal(n, 1);
    char *got = wait_for(sub, "panel.completed", 5000);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    return got;
}

/* Waits for the panel.status event that says the panel is cancelled. */
static void wait_cancelled(panel_sub *sub, int timeout_ms)
{
    char *data = wait_for(sub, "panel.status", timeout_ms);
    assert_non_null(strstr(data, "cancelled"));
    free(data);
}

/* The panel's stored events of one type, after checking that their seqs are gapless. */
static int stored_of_type(const char *id, const char *type)
{
    store_event *rows = NULL;
    size_t n = 0;
    ap_err err = {0};
    assert_int_equal(store_events_list(st, tenant, id, 0, 200, &rows, &n, &err), AP_OK);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(rows[i].seq, (int64_t)i + 1);
        found += strcmp(rows[i].type, type) == 0;
    }
    store_events_free(rows, n);
    return found;
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    int n = 0, c;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static const char fanout_lua[] =
    "return { name = 'fanout', start = 'ask', consensus = 'count',\n"
    "  params = { rounds = { type = 'integer', default = 1, min = 1, max = 3 },\n"
    "             style = { type = 'string', default = 'plain', enum = { 'plain', 'formal' } },\n"
    "             floor = { type = 'number', default = 2 },\n"
    "             ceiling = { type = 'number', default = 10, above = 'floor' } },\n"
    "  nodes = {\n"
    "    ask = function(ctx)\n"
    "      local r = ctx:ask_all(ctx.experts, function(e) return 'Q for ' .. e.role end,\n"
    "        { schema = { type = 'object', required = { 'position' }, properties = {\n"
    "          position = { type = 'string', enum = { 'yes', 'no' } } } } })\n"
    "      ctx.state.n = (ctx.state.n or 0) + #r\n"
    "      ctx.state.r = (ctx.state.r or 0) + 1\n"
    "      if ctx.state.r < ctx.params.rounds then return 'ask' end\n"
    "      return 'finish'\n"
    "    end,\n"
    "    finish = function(ctx)\n"
    "      local c = ctx:consensus(nil, { { position = 'yes' } }, {})\n"
    "      return ctx:done({ answers = ctx.state.n, level = c.level })\n"
    "    end } }\n";

static void test_ask_all_is_concurrent(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(200);
    char id[STORE_ID_MAX];
    create(e, "fanout", NULL, id);
    int64_t t0 = clock_mono_ms();
    char *done = run_to_end(e, id, "panel.completed", 5000);
    int64_t ms = clock_mono_ms() - t0;
    assert_non_null(strstr(done, "\"answers\":5"));
    free(done);
    /* five calls of 200 ms each: one round of latency, not five */
    if (ms < 200 || ms > 600)
        fail_msg("ask_all of 5 experts at 200 ms took %lld ms", (long long)ms);
    panel_engine_stop(e);
}

/* A runner busy with a long node does not hold up the panels started meanwhile: new panels
 * go to the runner with the fewest starts waiting (dealt in turn, every second one would wait
 * for the busy node). At most one can land behind it: the first dealt to it while its queue of
 * starts is empty.
 * The busy node spins until its time budget (wall clock, so as long in every build) ends it. */
static void test_busy_runner_does_not_hold_starts(void **state)
{
    (void)state;
    ap_err err = {0};
    assert_int_equal(config_set(&cfg, "runtime.runners", "2", "test", &err), AP_OK);
    assert_int_equal(config_set(&cfg, "runtime.node_timeout_ms", "2000", "test", &err), AP_OK);
    assert_int_equal(config_set(&cfg, "runtime.node_instructions", "1000000000000", "test", &err),
                     AP_OK);
    write_file("busy.lua", "return { name = 'busy', start = 'spin', nodes = { spin = function()\n"
                           "  local n = 0 while true do n = n + 1 end end } }\n");
    write_file("quick.lua", "return { name = 'quick', start = 'a', nodes = { a = function(ctx)\n"
                            "  return ctx:done({ ok = true }) end } }\n");
    panel_engine *e = start_engine(0);
    char busy[STORE_ID_MAX];
    panel_sub *bsub = start_panel(e, "busy", NULL, busy);
    free(wait_for(bsub, "panel.status", 5000)); /* its node is spinning on one runner */
    int quick = 6, done = 0;
    for (int i = 0; i < quick; i++) {
        char id[STORE_ID_MAX];
        panel_sub *sub = start_panel(e, "quick", NULL, id);
        char *completed = event_within(sub, "panel.completed", 400);
        done += completed != NULL;
        free(completed);
        panel_engine_unsubscribe(e, sub);
    }
    panel_event ev;
    bool busy_ended = false;
    while (panel_sub_next(bsub, &ev, 0) == 1) {
        busy_ended |= strcmp(ev.type, "panel.failed") == 0;
        panel_event_clear(&ev);
    }
    if (busy_ended)
        fail_msg("the busy node ended before the quick panels had run: give it more time");
    if (done < quick - 1)
        fail_msg("only %d of %d panels started beside a busy runner ran at once", done, quick);
    char *failed = wait_for(bsub, "panel.failed", 10000);
    assert_non_null(strstr(failed, "time budget exceeded"));
    free(failed);
    panel_engine_unsubscribe(e, bsub);
    panel_engine_stop(e);
    assert_int_equal(config_set(&cfg, "runtime.runners", "1", "test", &err), AP_OK);
    assert_int_equal(config_set(&cfg, "runtime.node_timeout_ms", "30000", "test", &err), AP_OK);
    assert_int_equal(config_set(&cfg, "runtime.node_instructions", "200000000", "test", &err),
                     AP_OK);
}

static void test_params_validation(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(0);
    static const struct {
        const char *params, *needle;
    } cases[] = {
        {"{\"rounds\":9}", "param 'rounds' must be at most 3"},
        {"{\"rounds\":1.5}", "param 'rounds' must be a whole number"},
        {"{\"rounds\":\"two\"}", "param 'rounds' must be a whole number"},
        {"{\"style\":\"loud\"}", "param 'style' must be one of: plain, formal"},
        {"{\"colour\":\"red\"}", "unknown param 'colour'"},
        {"{\"ceiling\":1}", "param 'ceiling' (1) must be greater than param 'floor' (2)"},
        {"{\"floor\":20}", "param 'ceiling' (10) must be greater than param 'floor' (20)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        panel_create_req req = {.question = "q",
                                .strategy = "fanout",
                                .params_json = cases[i].params,
                                .experts_json = experts5};
        ap_err err = {0};
        assert_int_equal(panel_engine_create(e, tenant, &req, NULL, &err), AP_INVALID);
        if (strstr(err.msg, cases[i].needle) == NULL)
            fail_msg("params %s: expected \"%s\", got \"%s\"", cases[i].params, cases[i].needle,
                     err.msg);
    }
    char id[STORE_ID_MAX];
    create(e, "fanout", "{\"rounds\":2}", id);
    char *done = run_to_end(e, id, "panel.completed", 5000);
    assert_non_null(strstr(done, "\"answers\":10"));
    free(done);
    panel_engine_stop(e);
}

/* Two subscribers that read only after the panel ended: one with room gets every event in
 * order (its queue grew past its first allocation); one with room for three is told it lagged,
 * once, so it knows to read the store. */
static void test_subscriber_queue_order_and_lag(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "fanout", "{\"rounds\":3}", id);
    panel_sub *big = NULL, *small = NULL;
    ap_err err = {0};
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &big, &err), AP_OK);
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 3, NULL, NULL, &small, &err), AP_OK);
    assert_int_equal(panel_engine_execute(e, tenant, id, &err), AP_OK);
    int64_t deadline = clock_mono_ms() + 5000;
    bool ended = false;
    while (!ended && clock_mono_ms() < deadline) {
        store_panel row = {0};
        assert_int_equal(store_panel_get(st, tenant, id, &row, &err), AP_OK);
        ended = strcmp(row.status, "completed") == 0;
        store_panel_free(&row);
        usleep(10 * 1000);
    }
    assert_true(ended);
    int64_t want = 1;
    int durable = 0;
    bool completed = false;
    panel_event ev;
    while (!completed && panel_sub_next(big, &ev, 1000) == 1) {
        if (ev.seq > 0) {
            assert_int_equal(ev.seq, want);
            want++;
            durable++;
        }
        completed = strcmp(ev.type, "panel.completed") == 0;
        panel_event_clear(&ev);
    }
    assert_true(completed);
    assert_true(durable > 16);
    assert_int_equal(panel_sub_next(small, &ev, 0), -1);
    assert_int_equal(panel_sub_next(small, &ev, 0), 0);
    panel_engine_unsubscribe(e, big);
    panel_engine_unsubscribe(e, small);
    panel_engine_stop(e);
}

/* Streamed answers reach a subscriber whole and in order: per expert, the delta texts joined
 * are the text of its expert.message, and no delta is durable. A second connection holds the
 * store's write lock while the answers stream, so the writer waits on a durable item while the
 * deltas pile up behind it and then merges pieces of each answer (usually: how many depends on
 * the timing, so the test does not count them). */
static void test_deltas_join_to_the_answer(void **state)
{
    (void)state;
    write_file("prose.lua",
               "return { name = 'prose', start = 'ask', nodes = {\n"
               "  ask = function(ctx)\n"
               "    ctx:ask_all(ctx.experts, function(e) return 'Q for ' .. e.role end)\n"
               "    return ctx:done({}) end } }\n");
    setenv("ASKPANEL_SIM_TOKEN_MS", "5", 1);
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "prose", NULL, id);
    panel_sub *sub = NULL;
    ap_err err = {0};
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 65536, NULL, NULL, &sub, &err), AP_OK);
    char path[128];
    snprintf(path, sizeof path, "%s/test.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000); /* the writer may be committing the panel's creation */
    assert_int_equal(panel_engine_execute(e, tenant, id, &err), AP_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    usleep(300 * 1000);
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    char joined[5][4096] = {{0}}, message[5][4096] = {{0}};
    size_t deltas = 0;
    bool completed = false;
    int64_t deadline = clock_mono_ms() + 10000;
    while (!completed && clock_mono_ms() < deadline) {
        panel_event ev;
        if (panel_sub_next(sub, &ev, 100) != 1)
            continue;
        bool delta = strcmp(ev.type, "expert.delta") == 0;
        bool msg = strcmp(ev.type, "expert.message") == 0;
        completed = strcmp(ev.type, "panel.completed") == 0;
        if (delta || msg) {
            cJSON *j = jsonx_parse(ev.data, strlen(ev.data), 8, &err);
            assert_non_null(j);
            const char *expert = jsonx_string(j, "expert");
            const char *text = jsonx_string(j, delta ? "delta" : "text");
            assert_non_null(expert);
            assert_non_null(text);
            int k = expert[0] - 'a';
            assert_true(k >= 0 && k < 5 && expert[1] == '\0');
            char *to = delta ? joined[k] : message[k];
            assert_true(strlen(to) + strlen(text) < sizeof joined[k]);
            memcpy(to + strlen(to), text, strlen(text) + 1);
            if (delta) {
                assert_int_equal(ev.seq, 0);
                deltas++;
            }
            cJSON_Delete(j);
        }
        panel_event_clear(&ev);
    }
    unsetenv("ASKPANEL_SIM_TOKEN_MS");
    assert_true(completed);
    for (int k = 0; k < 5; k++) {
        assert_true(message[k][0] != '\0');
        assert_string_equal(joined[k], message[k]);
    }
    assert_true(deltas >= 5);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
}

static const char hot_v1[] =
    "return { name = 'hot', start = 'a', nodes = {\n"
    "  a = function(ctx) ctx:ask(ctx.experts[1], 'one') ctx:ask(ctx.experts[1], 'two')\n"
    "    return ctx:done({ version = 1 }) end } }\n";
static const char hot_v2[] = "return { name = 'hot', start = 'a', nodes = {\n"
                             "  a = function(ctx) return ctx:done({ version = 2 }) end } }\n";

static void test_hot_reload(void **state)
{
    (void)state;
    write_file("hot.lua", hot_v1);
    panel_engine *e = start_engine(150);
    char a[STORE_ID_MAX], b[STORE_ID_MAX], c[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "hot", NULL, a);
    ap_err err = {0};
    free(wait_for(sub, "expert.message", 3000)); /* v1 is running */
    write_file("hot.lua", hot_v2);
    size_t changed = 0;
    assert_int_equal(script_registry_reload(reg, &changed, &err), AP_OK);
    assert_int_equal(changed, 1);
    create(e, "hot", NULL, b);
    char *rb = run_to_end(e, b, "panel.completed", 3000);
    assert_non_null(strstr(rb, "\"version\":2"));
    free(rb);
    char *ra = wait_for(sub, "panel.completed", 3000);
    assert_non_null(strstr(ra, "\"version\":1"));
    free(ra);
    panel_engine_unsubscribe(e, sub);
    /* A broken edit is rejected; version 2 stays active. */
    write_file("hot.lua", "return { name = 'hot', start = \n");
    assert_int_equal(script_registry_reload(reg, &changed, &err), AP_OK);
    assert_int_equal(changed, 0);
    create(e, "hot", NULL, c);
    char *rc = run_to_end(e, c, "panel.completed", 3000);
    assert_non_null(strstr(rc, "\"version\":2"));
    free(rc);
    panel_engine_stop(e);
}

/* Polls "watched" every 50 ms, at most tries times, until its source holds needle (when not
 * NULL) or its version is no longer old_version (when not NULL). */
static bool watched_becomes(const char *needle, const char *old_version, int tries)
{
    for (int i = 0; i < tries; i++) {
        usleep(50 * 1000);
        script_entry en = {0};
        ap_err err = {0};
        assert_int_equal(script_registry_resolve(reg, NULL, SCRIPT_STRATEGY, "watched", &en, &err),
                         AP_OK);
        bool done = (needle == NULL || strstr(en.source, needle) != NULL) &&
                    (old_version == NULL || strcmp(en.version, old_version) != 0);
        script_entry_free(&en);
        if (done)
            return true;
    }
    return false;
}

/* The file watcher reloads without a SIGHUP: a new version is picked up, a broken one is not. */
static void test_inotify_reload(void **state)
{
    (void)state;
    write_file("watched.lua", "return { name = 'watched', start = 'a', nodes = { a = "
                              "function(ctx) return ctx:done({ v = 1 }) end } }\n");
    ap_err err = {0};
    script_entry en = {0};
    assert_int_equal(script_registry_resolve(reg, NULL, SCRIPT_STRATEGY, "watched", &en, &err),
                     AP_OK);
    char v1[65];
    memcpy(v1, en.version, sizeof v1);
    script_entry_free(&en);
    assert_int_equal(script_registry_watch(reg, &err), AP_OK);
    usleep(50 * 1000);
    write_file("watched.lua", "return { name = 'watched', start = 'a', nodes = { a = "
                              "function(ctx) return ctx:done({ v = 2 }) end } }\n");
    assert_true(watched_becomes(NULL, v1, 40));
    write_file("watched.lua", "return { name = 'watched', start = \n");
    usleep(400 * 1000);
    assert_int_equal(script_registry_resolve(reg, NULL, SCRIPT_STRATEGY, "watched", &en, &err),
                     AP_OK);
    assert_non_null(strstr(en.source, "v = 2"));
    script_entry_free(&en);
    /* The folder swapped for a new one (a deploy, a checkout) is still watched. */
    char path[256], aside[256];
    snprintf(path, sizeof path, "%s/strategies", dir);
    snprintf(aside, sizeof aside, "%s/strategies.old", dir);
    assert_int_equal(rename(path, aside), 0);
    usleep(300 * 1000);
    assert_int_equal(mkdir(path, 0700), 0);
    write_file("watched.lua", "return { name = 'watched', start = 'a', nodes = { a = "
                              "function(ctx) return ctx:done({ v = 3 }) end } }\n");
    usleep(300 * 1000);
    write_file("watched.lua", "return { name = 'watched', start = 'a', nodes = { a = "
                              "function(ctx) return ctx:done({ v = 4 }) end } }\n");
    assert_true(watched_becomes("v = 4", NULL, 60));
    /* The other tests' files are in the old folder: put it back. */
    char fresh[256];
    snprintf(fresh, sizeof fresh, "%s/strategies.new", dir);
    assert_int_equal(rename(path, fresh), 0);
    assert_int_equal(rename(aside, path), 0);
}

/* A tenant override that is deleted falls back to the built-in at the next reload. */
static void test_deleted_override_falls_back(void **state)
{
    (void)state;
    write_file("layered.lua", "return { name = 'layered', start = 'a', nodes = { a = "
                              "function(ctx) return ctx:done({ v = 'builtin' }) end } }\n");
    char tdir[256], over[300];
    snprintf(tdir, sizeof tdir, "%s/tenants/acme/strategies", dir);
    snprintf(over, sizeof over, "%s/layered.lua", tdir);
    char mk[300];
    snprintf(mk, sizeof mk, "%s/tenants", dir);
    mkdir(mk, 0700);
    snprintf(mk, sizeof mk, "%s/tenants/acme", dir);
    mkdir(mk, 0700);
    mkdir(tdir, 0700);
    FILE *f = fopen(over, "w");
    assert_non_null(f);
    fputs("return { name = 'layered', start = 'a', nodes = { a = "
          "function(ctx) return ctx:done({ v = 'override' }) end } }\n",
          f);
    fclose(f);
    ap_err err = {0};
    script_entry en = {0};
    assert_int_equal(script_registry_resolve(reg, "acme", SCRIPT_STRATEGY, "layered", &en, &err),
                     AP_OK);
    assert_non_null(strstr(en.source, "override"));
    script_entry_free(&en);
    assert_int_equal(unlink(over), 0);
    size_t changed = 0;
    assert_int_equal(script_registry_reload(reg, &changed, &err), AP_OK);
    assert_int_equal(script_registry_resolve(reg, "acme", SCRIPT_STRATEGY, "layered", &en, &err),
                     AP_OK);
    assert_non_null(strstr(en.source, "builtin"));
    script_entry_free(&en);
}

/* The state a node starts from comes back from its checkpoint on a resume: its numbers must
 * read back as the same doubles (0.1 + 0.2 printed in 15 digits reads back as 0.3). */
static const char human_lua[] = "return { name = 'human', start = 'pre', nodes = {\n"
                                "  pre = function(ctx) ctx.state.x = 0.1 + 0.2 return 'a' end,\n"
                                "  a = function(ctx) local r = ctx:ask(ctx.experts[1], 'first')\n"
                                "    local input = ctx:await_input({ prompt = 'Approve?' })\n"
                                "    return ctx:done({ said = input.text, pos = input.position,\n"
                                "      exact = ctx.state.x == 0.1 + 0.2 }) end } }\n";

/* The tenant's limit of live panels (limits.concurrent_panels) is kept by execute itself, for
 * every caller: past it AP_LIMIT says so and the panel stays created; a panel already started
 * is still a conflict, not a limit; an ended panel makes room. */
static void test_live_limit(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    ap_err err = {0};
    assert_int_equal(
        store_tenant_set_config(st, tenant, "{\"limits\":{\"concurrent_panels\":1}}", &err), AP_OK);
    panel_engine *e = start_engine(60000);
    char first[STORE_ID_MAX], second[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "fanout", NULL, first);
    free(wait_for(sub, "panel.status", 1000)); /* running */
    create(e, "fanout", NULL, second);
    assert_int_equal(panel_engine_execute(e, tenant, second, &err), AP_LIMIT);
    assert_non_null(strstr(err.msg, "already runs 1 panels, its limit"));
    assert_int_equal(panel_engine_execute(e, tenant, first, &err), AP_CONFLICT);
    assert_non_null(strstr(err.msg, "already started"));
    store_panel row = {0};
    assert_int_equal(store_panel_get(st, tenant, second, &row, &err), AP_OK);
    assert_string_equal(row.status, "created");
    store_panel_free(&row);
    assert_int_equal(panel_engine_cancel(e, tenant, first, &err), AP_OK);
    wait_cancelled(sub, 1000);
    panel_engine_unsubscribe(e, sub);
    assert_int_equal(panel_engine_execute(e, tenant, second, &err), AP_OK);
    assert_int_equal(panel_engine_cancel(e, tenant, second, &err), AP_OK);
    panel_engine_stop(e);
    assert_int_equal(store_tenant_set_config(st, tenant, "{}", &err), AP_OK);
}

static const char note_lua[] = "return { name = 'note', start = 'a', nodes = { a = function(ctx)\n"
                               "  ctx:emit('note', { n = 1 }) end } }\n";

/* The engine's stats once no panel runs and the writer has written everything (waits up to
 * timeout_ms). */
static panel_engine_stats settled_stats(panel_engine *e, int timeout_ms)
{
    panel_engine_stats s;
    int64_t deadline = clock_mono_ms() + timeout_ms;
    panel_engine_stats_get(e, &s);
    while ((s.active > 0 || s.queued > 0) && clock_mono_ms() < deadline) {
        usleep(10 * 1000);
        panel_engine_stats_get(e, &s);
    }
    assert_int_equal(s.active, 0);
    assert_int_equal(s.queued, 0);
    return s;
}

/* What /metrics shows of the engine: panels running, writes waiting, the writer's commits. */
static void test_stats(void **state)
{
    (void)state;
    write_file("note.lua", note_lua);
    panel_engine *e = start_engine(0);
    panel_engine_stats before, after;
    panel_engine_stats_get(e, &before);
    char id[STORE_ID_MAX];
    create(e, "note", NULL, id);
    free(run_to_end(e, id, "panel.completed", 5000));
    after = settled_stats(e, 5000);
    assert_true(after.batches > before.batches);
    /* running, note, completed, the checkpoint and the status change at least */
    assert_true(after.written >= before.written + 5);
    assert_true(after.written - before.written >= after.batches - before.batches);
    panel_engine_stop(e);
}

/* Under a stream of writes the writer commits at most once per runtime.writer_gather_ms (a
 * group commit); a write after a quiet spell is committed at once. */
static void test_writer_group_commit(void **state)
{
    (void)state;
    write_file("note.lua", note_lua);
    ap_err err = {0};
    assert_int_equal(config_set(&cfg, "runtime.writer_gather_ms", "1000", "test", &err), AP_OK);
    panel_engine *e = start_engine(0);
    enum { PANELS = 20 };
    char ids[PANELS][STORE_ID_MAX];
    for (int i = 0; i < PANELS; i++)
        create(e, "note", NULL, ids[i]);
    panel_engine_stats before, after;
    panel_engine_stats_get(e, &before);
    int64_t t0 = clock_mono_ms();
    /* starts 20 ms apart: without the gathering each is a commit of its own */
    for (int i = 0; i < PANELS; i++) {
        if (panel_engine_execute(e, tenant, ids[i], &err) != AP_OK)
            fail_msg("execute: %s", err.msg);
        usleep(20 * 1000);
    }
    after = settled_stats(e, 30000);
    int64_t took = clock_mono_ms() - t0;
    uint64_t batches = after.batches - before.batches;
    if (batches > (uint64_t)(took / 1000) + 2)
        fail_msg("%llu commits in %lld ms", (unsigned long long)batches, (long long)took);
    for (int i = 0; i < PANELS; i++)
        assert_int_equal(stored_of_type(ids[i], "panel.completed"), 1);
    /* quiet for longer than the window: the next write is not held */
    usleep(1100 * 1000);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "note", NULL, id);
    char *running = event_within(sub, "panel.status", 700);
    assert_non_null(running);
    free(running);
    free(wait_for(sub, "panel.completed", 5000));
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    assert_int_equal(config_set(&cfg, "runtime.writer_gather_ms", "2", "test", &err), AP_OK);
}

static void test_cancel_aborts_at_once(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(2000);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "fanout", NULL, id);
    ap_err err = {0};
    free(wait_for(sub, "panel.status", 1000));
    usleep(50 * 1000);
    int64_t t0 = clock_mono_ms();
    assert_int_equal(panel_engine_cancel(e, tenant, id, &err), AP_OK);
    wait_cancelled(sub, 1000);
    assert_true(clock_mono_ms() - t0 < 500);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    store_panel row = {0};
    assert_int_equal(store_panel_get(st, tenant, id, &row, &err), AP_OK);
    assert_string_equal(row.status, "cancelled");
    store_panel_free(&row);
    assert_int_equal(panel_engine_active(e = start_engine(0)), 0);
    panel_engine_stop(e);
    /* A panel waiting for input is held by no runner: its cancel is stored directly, and its
     * subscribers (open streams) get the event all the same, so they end. */
    write_file("human.lua", human_lua);
    e = start_engine(0);
    create(e, "human", NULL, id);
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    assert_int_equal(panel_engine_execute(e, tenant, id, &err), AP_OK);
    free(wait_for(sub, "input.requested", 3000));
    assert_int_equal(panel_engine_cancel(e, tenant, id, &err), AP_OK);
    wait_cancelled(sub, 1000);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
}

static void test_human_input(void **state)
{
    (void)state;
    write_file("human.lua", human_lua);
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "human", NULL, id);
    ap_err err = {0};
    char *req = wait_for(sub, "input.requested", 3000);
    assert_non_null(strstr(req, "Approve?"));
    free(req);
    store_panel row = {0};
    assert_int_equal(store_panel_get(st, tenant, id, &row, &err), AP_OK);
    assert_string_equal(row.status, "awaiting_input");
    store_panel_free(&row);
    assert_int_equal(
        panel_engine_input(e, tenant, id, "{\"text\":\"yes\",\"position\":\"go\"}", 0, &err),
        AP_OK);
    assert_int_equal(panel_engine_input(e, tenant, id, "again", 0, &err), AP_CONFLICT);
    char *done = wait_for(sub, "panel.completed", 3000);
    assert_non_null(strstr(done, "\"said\":\"yes\""));
    free(done);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
}

/* An input is stored when panel_engine_input returns (its event and the checkpoint that
 * journals it): the 202 the API answers with means a crash can no longer lose it. */
static void test_input_is_stored_on_return(void **state)
{
    (void)state;
    write_file("later.lua", "return { name = 'later', start = 'a', nodes = {\n"
                            "  a = function(ctx)\n"
                            "    local input = ctx:await_input({ prompt = 'Go?' })\n"
                            "    local r = ctx:ask(ctx.experts[1], 'after ' .. input.text)\n"
                            "    return ctx:done({ said = input.text }) end } }\n");
    panel_engine *e = start_engine(300);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "later", NULL, id);
    ap_err err = {0};
    free(wait_for(sub, "input.requested", 3000));
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"durable\"}", 0, &err), AP_OK);
    store_event *rows = NULL;
    size_t n = 0;
    assert_int_equal(store_events_list(st, tenant, id, 0, 200, &rows, &n, &err), AP_OK);
    bool received = false;
    for (size_t i = 0; i < n; i++)
        received |= strcmp(rows[i].type, "input.received") == 0;
    store_events_free(rows, n);
    assert_true(received);
    store_checkpoint ck = {0};
    assert_int_equal(store_checkpoint_get(st, tenant, id, &ck, &err), AP_OK);
    assert_non_null(strstr(ck.journal, "durable"));
    store_checkpoint_free(&ck);
    free(wait_for(sub, "panel.completed", 3000));
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
}

/* A panel waiting for input survives a restart; the input given to the new process resumes it
 * from its checkpoint, the journaled turn is not paid again, and the event stream has each
 * event exactly once. */
static void test_input_after_restart(void **state)
{
    (void)state;
    write_file("human.lua", human_lua);
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "human", NULL, id);
    panel_sub *sub = NULL;
    ap_err err = {0};
    free(run_to_end(e, id, "input.requested", 3000));
    panel_engine_stop(e);
    unlink(calls_path);
    e = start_engine(0);
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"later\"}", 0, &err), AP_OK);
    char *done = wait_for(sub, "panel.completed", 3000);
    assert_non_null(strstr(done, "\"said\":\"later\""));
    assert_non_null(strstr(done, "\"exact\":true"));
    free(done);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    assert_int_equal(count_lines(calls_path), 0);
    store_event *rows = NULL;
    size_t n = 0;
    assert_int_equal(store_events_list(st, tenant, id, 0, 200, &rows, &n, &err), AP_OK);
    int requested = 0, received = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(rows[i].seq, (int64_t)i + 1);
        requested += strcmp(rows[i].type, "input.requested") == 0;
        received += strcmp(rows[i].type, "input.received") == 0;
    }
    assert_int_equal(requested, 1);
    assert_int_equal(received, 1);
    assert_string_equal(rows[n - 1].type, "panel.completed");
    store_events_free(rows, n);
}

static void test_node_budget(void **state)
{
    (void)state;
    write_file("loop.lua", "return { name = 'loop', start = 'a', nodes = {\n"
                           "  a = function(ctx) return 'b' end, b = function(ctx) return 'a' end "
                           "} }\n");
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "loop", NULL, id);
    char *failed = run_to_end(e, id, "panel.failed", 3000);
    assert_non_null(strstr(failed, "node budget exceeded"));
    free(failed);
    panel_engine_stop(e);
}

/* The next node sees ctx.state as a resume from the checkpoint would give it, not the live
 * table: number keys read back as strings, NaN is gone and shared tables are copies. */
static void test_state_between_nodes_is_the_checkpoint(void **state)
{
    (void)state;
    write_file("stateful.lua",
               "return { name = 'stateful', start = 'a', nodes = {\n"
               "  a = function(ctx)\n"
               "    local shared = {}\n"
               "    ctx.state.x = { [2] = 'two' } ctx.state.n = 0/0\n"
               "    ctx.state.p = shared ctx.state.q = shared\n"
               "    return 'b'\n"
               "  end,\n"
               "  b = function(ctx)\n"
               "    ctx.state.p.v = 1\n"
               "    return ctx:done({ x2 = ctx.state.x[2] or 'missing', xs = ctx.state.x['2'],\n"
               "      nan = ctx.state.n == nil, qv = ctx.state.q.v or 'none' })\n"
               "  end } }\n");
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "stateful", NULL, id);
    char *done = run_to_end(e, id, "panel.completed", 3000);
    assert_non_null(strstr(done, "\"x2\":\"missing\""));
    assert_non_null(strstr(done, "\"xs\":\"two\""));
    assert_non_null(strstr(done, "\"nan\":true"));
    assert_non_null(strstr(done, "\"qv\":\"none\""));
    free(done);
    /* as large and as deep as ctx.state may be saved, it is read back */
    write_file("bigstate.lua", "return { name = 'bigstate', start = 'a', nodes = {\n"
                               "  a = function(ctx)\n"
                               "    ctx.state.big = ('x'):rep(3 * 1024 * 1024)\n"
                               "    local t = ctx.state for i = 1, 63 do t.d = {} t = t.d end\n"
                               "    return 'b'\n"
                               "  end,\n"
                               "  b = function(ctx)\n"
                               "    local n, t = 0, ctx.state while t.d do t = t.d n = n + 1 end\n"
                               "    return ctx:done({ size = #ctx.state.big, depth = n })\n"
                               "  end } }\n");
    create(e, "bigstate", NULL, id);
    done = run_to_end(e, id, "panel.completed", 10000);
    assert_non_null(strstr(done, "\"size\":3145728"));
    assert_non_null(strstr(done, "\"depth\":63"));
    free(done);
    store_checkpoint ck = {0};
    ap_err err = {0};
    assert_int_equal(store_checkpoint_get(st, tenant, id, &ck, &err), AP_OK);
    assert_int_equal(ck.step, 2); /* the last checkpoint landed: the store took the state */
    assert_null(ck.next_node);
    store_checkpoint_free(&ck);
    panel_engine_stop(e);
}

/* What a checkpoint keeps is bounded by the store (8 MiB a column). A node whose answers add
 * up to more fails the panel saying so: the answers past it could not be journaled, and a
 * resume, asking for them again, would get them in another order than the events stored for
 * them (red team: one expert's message twice, another's never, turns paid twice). A
 * ctx.state that cannot fit beside the checkpoint's own fields fails the panel too, instead
 * of running on with no durable checkpoint. */
static void test_checkpoints_fit_the_store(void **state)
{
    (void)state;
    write_file(
        "bigjournal.lua",
        "local big = ('x'):rep(20000)\n"
        "local schema = { type = 'object', required = { 'v' },\n"
        "  properties = { v = { type = 'string', enum = { big } } } }\n"
        "return { name = 'bigjournal', start = 'a', nodes = {\n"
        "  a = function(ctx)\n"
        "    for r = 1, 100 do ctx:ask_all(ctx.experts, 'round ' .. r, { schema = schema }) end\n"
        "    return 'b'\n"
        "  end,\n"
        "  b = function(ctx) return ctx:done({}) end } }\n");
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "bigjournal", NULL, id);
    char *failed = run_to_end(e, id, "panel.failed", 60000);
    assert_non_null(strstr(failed, "the answers of node 'a' passed the 8388608 bytes"));
    free(failed);
    panel_engine_stop(e);
    ap_err err = {0};
    store_checkpoint ck = {0};
    assert_int_equal(store_checkpoint_get(st, tenant, id, &ck, &err), AP_OK);
    assert_true(strlen(ck.journal) <= 8388608); /* every checkpoint landed */
    store_checkpoint_free(&ck);
    /* a state that fits the host's limit but not the checkpoint beside its envelope */
    write_file("fullstate.lua", "return { name = 'fullstate', start = 'a', nodes = {\n"
                                "  a = function(ctx)\n"
                                "    ctx.state.big = ('x'):rep(8 * 1024 * 1024 - 40 * 1024)\n"
                                "    return 'b'\n"
                                "  end,\n"
                                "  b = function(ctx) return ctx:done({}) end } }\n");
    e = start_engine(0);
    create(e, "fullstate", NULL, id);
    failed = run_to_end(e, id, "panel.failed", 10000);
    assert_non_null(strstr(failed, "ctx.state cannot be saved"));
    free(failed);
    panel_engine_stop(e);
}

/* Past 64 KiB of journal, the messages of answers that come within 0.1 s of the last
 * checkpoint wait for the next one and are stored in its group: every message of a batch of
 * 12 long answers arriving together is stored, once and in order. (In a Debug build such a
 * group overflowed its bound of 8 items, an assertion: review.) */
static void test_held_messages_fit_a_group(void **state)
{
    (void)state;
    write_file("heldmany.lua",
               "local big = ('x'):rep(20000)\n"
               "local schema = { type = 'object', required = { 'v' },\n"
               "  properties = { v = { type = 'string', enum = { big } } } }\n"
               "return { name = 'heldmany', start = 'a', nodes = {\n"
               "  a = function(ctx)\n"
               "    local ex = {}\n"
               "    for i = 1, 12 do ex[i] = ctx.experts[(i - 1) % #ctx.experts + 1] end\n"
               "    local k = 0\n"
               "    local r = ctx:ask_all(ex, function() k = k + 1 return 'part ' .. k end,\n"
               "                          { schema = schema })\n"
               "    return ctx:done({ n = #r })\n"
               "  end } }\n");
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "heldmany", NULL, id);
    free(run_to_end(e, id, "panel.completed", 10000));
    panel_engine_stop(e);
    assert_int_equal(stored_of_type(id, "expert.message"), 12);
}

/* A consensus algorithm a node names is pinned in the store before the events it leads to: a
 * resume after its consensus event runs the same version. The pin waited for the node's end,
 * so a crash between them and a newer file ran the new version under the old event (red
 * team). */
static void test_consensus_pin_is_stored_first(void **state)
{
    (void)state;
    write_file("pinlate.lua", "return { name = 'pinlate', start = 'a', nodes = {\n"
                              "  a = function(ctx)\n"
                              "    ctx:consensus('count', { { position = 'yes' } }, {})\n"
                              "    ctx:ask(ctx.experts[1], 'after the consensus')\n"
                              "    return ctx:done({})\n"
                              "  end } }\n");
    panel_engine *e = start_engine(1500);
    char id[STORE_ID_MAX];
    create(e, "pinlate", NULL, id);
    panel_sub *sub = NULL;
    ap_err err = {0};
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 1024, NULL, NULL, &sub, &err), AP_OK);
    assert_int_equal(panel_engine_execute(e, tenant, id, &err), AP_OK);
    free(wait_for(sub, "consensus", 3000));
    store_checkpoint ck = {0};
    assert_int_equal(store_checkpoint_get(st, tenant, id, &ck, &err), AP_OK);
    assert_non_null(strstr(ck.state, "\"count\":"));
    store_checkpoint_free(&ck);
    free(wait_for(sub, "panel.completed", 5000));
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
}

/* Stopping the engine mid-panel leaves it "running" with its checkpoint, like a crash; a new
 * engine resumes it, replays the journaled turns and reaches the same result. */
static void test_resume_replays_journal(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    /* the reference run */
    panel_engine *e = start_engine(0);
    char ref[STORE_ID_MAX];
    create(e, "fanout", "{\"rounds\":3}", ref);
    char *want = run_to_end(e, ref, "panel.completed", 5000);
    panel_engine_stop(e);
    unlink(calls_path);
    /* the interrupted run: stop during round 2 (rounds take 300 ms) */
    e = start_engine(300);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "fanout", "{\"rounds\":3}", id);
    ap_err err = {0};
    for (int i = 0; i < 5; i++)
        free(wait_for(sub, "expert.message", 3000));
    usleep(100 * 1000);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    int before = count_lines(calls_path);
    assert_int_equal(before, 5);
    store_panel row = {0};
    assert_int_equal(store_panel_get(st, tenant, id, &row, &err), AP_OK);
    assert_string_equal(row.status, "running");
    store_panel_free(&row);
    char *got = restart_to_end(id);
    assert_string_equal(got, want);
    size_t n = 0;
    /* 15 turns in all; the 5 of round 1 were paid once */
    assert_int_equal(count_lines(calls_path), 15);
    /* the stored events are gapless */
    store_event *rows = NULL;
    assert_int_equal(store_events_list(st, tenant, id, 0, 200, &rows, &n, &err), AP_OK);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(rows[i].seq, (int64_t)i + 1);
    assert_string_equal(rows[n - 1].type, "panel.completed");
    store_events_free(rows, n);
    free(want);
    free(got);
}

/* A replay that ends sooner than the run it replays still stores its end: here the node's
 * three events were stored before the stop, and the restarted engine's lower instruction
 * budget fails the node before it emits them again. Numbered at the replay's cursor, the end
 * took the seqs of the stored events and was dropped as one of them (review: the panel was
 * failed in its row, its events ended at step.three, and `askpanel resume` waited forever). */
static void test_replay_that_fails_sooner_stores_its_end(void **state)
{
    (void)state;
    write_file("failre.lua", "return { name = 'failre', start = 'a', nodes = { a = function(ctx)\n"
                             "  local x = 0\n"
                             "  for i = 1, 200000 do x = x + i end\n"
                             "  ctx:emit('step.one', { x = x }); ctx:emit('step.two', {})\n"
                             "  ctx:emit('step.three', {})\n"
                             "  ctx:ask(ctx.experts[1], 'a slow question')\n"
                             "  return ctx:done({ ok = true })\n"
                             "end } }\n");
    panel_engine *e = start_engine(5000);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "failre", NULL, id);
    free(wait_for(sub, "step.three", 3000));
    panel_engine_unsubscribe(e, sub);
    usleep(200 * 1000); /* the writer stores the three events */
    panel_engine_stop(e);
    int stored = stored_of_type(id, "step.three");
    assert_int_equal(stored, 1);
    ap_err err = {0};
    assert_int_equal(config_set(&cfg, "runtime.node_instructions", "100000", "test", &err), AP_OK);
    e = start_engine(0);
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    size_t n = 0;
    assert_int_equal(panel_engine_resume_all(e, &n, &err), AP_OK);
    assert_int_equal(n, 1);
    char *why = wait_for(sub, "panel.failed", 5000);
    assert_non_null(strstr(why, "instruction"));
    free(why);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    assert_int_equal(config_set(&cfg, "runtime.node_instructions", "200000000", "test", &err),
                     AP_OK);
    /* gapless, the node's events once, and the end after them */
    store_event *rows = NULL;
    assert_int_equal(store_events_list(st, tenant, id, 0, 200, &rows, &n, &err), AP_OK);
    assert_true(n >= 6);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(rows[i].seq, (int64_t)i + 1);
    assert_string_equal(rows[n - 3].type, "step.three");
    assert_string_equal(rows[n - 2].type, "panel.status");
    assert_non_null(strstr(rows[n - 2].data, "failed"));
    assert_string_equal(rows[n - 1].type, "panel.failed");
    store_events_free(rows, n);
    store_panel row = {0};
    assert_int_equal(store_panel_get(st, tenant, id, &row, &err), AP_OK);
    assert_string_equal(row.status, "failed");
    store_panel_free(&row);
}

/* A panel claimed by a process that stopped before its start committed (its first event and
 * checkpoint go together) has neither: resumed, it starts, running status first. */
static void test_resume_before_the_first_checkpoint(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "fanout", NULL, id);
    panel_engine_stop(e);
    ap_err err = {0};
    assert_int_equal(store_panel_claim(st, tenant, id, (const char *const[]){"created"}, 1,
                                       "gone:1:dead", 1, NULL, 0, &err),
                     AP_OK);
    usleep(20 * 1000); /* its lease runs out */
    free(restart_to_end(id));
    store_event *rows = NULL;
    size_t n = 0;
    assert_int_equal(store_events_list(st, tenant, id, 0, 200, &rows, &n, &err), AP_OK);
    assert_true(n > 2);
    assert_string_equal(rows[0].type, "panel.status");
    assert_non_null(strstr(rows[0].data, "running"));
    assert_int_equal(stored_of_type(id, "panel.status"), 2); /* running, completed */
    store_events_free(rows, n);
}

/* The tenant's usage rows of all time, of one model or (NULL) of all. Tests count them
 * before and after: a row carries the millisecond of the writer's batch, which the last row of
 * the test before can share with a "since" taken just after it (CI counted 21 rows for 20). */
static int64_t usage_calls(const char *model)
{
    char *usage = NULL;
    ap_err err = {0};
    assert_int_equal(store_usage_summary(st, tenant, 0, INT64_MAX, "model", &usage, &err), AP_OK);
    cJSON *groups = cJSON_Parse(usage);
    free(usage);
    int64_t calls = 0;
    const cJSON *grp;
    cJSON_ArrayForEach(grp, groups)
    {
        const char *key = jsonx_string(grp, "key");
        if (model == NULL || (key != NULL && strcmp(key, model) == 0))
            calls += (int64_t)jsonx_number(grp, "calls", 0);
    }
    cJSON_Delete(groups);
    return calls;
}

/* Answers are journaled as they arrive: stopped (as by a crash) after some answers of a batch
 * came in, the resumed panel asks only for the others, reaches the same result and bills each
 * turn once. The simulated experts stream their answers, so they arrive at different times. */
static void test_resume_mid_batch(void **state)
{
    (void)state;
    write_file(
        "spread.lua",
        "return { name = 'spread', start = 'ask', nodes = {\n"
        "  ask = function(ctx)\n"
        "    ctx.state.r = (ctx.state.r or 0) + 1\n"
        "    local r = ctx:ask_all(ctx.experts, 'Round ' .. ctx.state.r .. ': go or wait?')\n"
        "    for _, a in ipairs(r) do ctx.state.t = (ctx.state.t or '') .. a.text .. '|' end\n"
        "    if ctx.state.r < 2 then return 'ask' end\n"
        "    return ctx:done({ t = ctx.state.t })\n"
        "  end } }\n");
    int64_t before = usage_calls(NULL);
    panel_engine *e = start_engine(0);
    char ref[STORE_ID_MAX];
    create(e, "spread", NULL, ref);
    char *want = run_to_end(e, ref, "panel.completed", 5000);
    panel_engine_stop(e);
    unlink(calls_path);
    setenv("ASKPANEL_SIM_TOKEN_MS", "15", 1);
    e = start_engine(50);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "spread", NULL, id);
    free(wait_for(sub, "expert.message", 5000));
    free(wait_for(sub, "expert.message", 5000));
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    unsetenv("ASKPANEL_SIM_TOKEN_MS");
    int answered = count_lines(calls_path);
    assert_true(answered >= 2 && answered < 5);
    char *got = restart_to_end(id);
    assert_string_equal(got, want);
    free(want);
    free(got);
    /* 10 turns, each paid and billed once */
    assert_int_equal(count_lines(calls_path), 10);
    assert_int_equal(usage_calls(NULL) - before, 20); /* the reference run's 10 and this panel's */
}

/* ---- leases ------------------------------------------------------------------------------ */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *host_name(void)
{
    static char host[64];
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    return host;
}

/* The stored row of a panel (caller frees). */
static store_panel row_of(const char *id)
{
    store_panel row = {0};
    ap_err err = {0};
    if (store_panel_get(st, tenant, id, &row, &err) != AP_OK)
        fail_msg("get %s: %s", id, err.msg);
    return row;
}

/* Cancels a running panel in the store, as another process would (or so that no later test's
 * resume finds it running). */
static void cancel_in_store(const char *id)
{
    static const char *const running[] = {"running"};
    ap_err err = {0};
    if (store_panel_transition(st, tenant, id, running, 1, "cancelled", NULL, NULL, &err) != AP_OK)
        fail_msg("cancel %s: %s", id, err.msg);
}

/* Sets a running panel's lease as another process would have left it. */
static void lease_as(const char *id, const char *from, const char *owner, int64_t lease_ms,
                     const char *takeover)
{
    ap_err err = {0};
    if (store_panel_claim(st, tenant, id, &from, 1, owner, lease_ms, takeover, 0, &err) != AP_OK)
        fail_msg("claim %s as %s: %s", id, owner, err.msg);
}

/* Another process (elsewhere.invalid) claims the running panel id over its owner here, as
 * after this one's lease ran out. */
static void take_over(const char *id)
{
    store_panel row = row_of(id);
    char *ours = strdup(row.lease_owner);
    store_panel_free(&row);
    lease_as(id, "running", "elsewhere.invalid:1:cafe", 60000, ours);
    free(ours);
}

/* Resumes a panel in e and waits for it to complete. */
static void resume_to_end(panel_engine *e, const char *id)
{
    panel_sub *sub = NULL;
    ap_err err = {0};
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    if (panel_engine_resume(e, tenant, id, &err) != AP_OK)
        fail_msg("resume: %s", err.msg);
    free(wait_for(sub, "panel.completed", 5000));
    panel_engine_unsubscribe(e, sub);
}

/* A panel another live engine runs is not run a second time: resume and resume_all refuse it
 * and say who holds it; once that engine stops (and gives its leases up) it resumes. */
static void test_lease_keeps_a_second_engine_out(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    /* slow enough that e1 still runs it while e2 starts and asks, on a loaded sanitized build */
    panel_engine *e1 = start_engine(1000);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e1, "fanout", "{\"rounds\":3}", id);
    ap_err err = {0};
    free(wait_for(sub, "expert.message", 5000));
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s:%d:", host_name(), (int)getpid());
    store_panel row = row_of(id);
    assert_non_null(row.lease_owner);
    assert_int_equal(strncmp(row.lease_owner, prefix, strlen(prefix)), 0);
    assert_true(row.lease_expires_at > wall_ms() + 20000);
    store_panel_free(&row);

    panel_engine *e2 = start_engine(0);
    assert_int_equal(panel_engine_resume(e2, tenant, id, &err), AP_CONFLICT);
    char want[160];
    snprintf(want, sizeof want,
             "the panel is running in another process (host %s, pid %d); retry after ", host_name(),
             (int)getpid());
    if (strstr(err.msg, want) == NULL || strstr(err.msg, "if that process is gone") == NULL)
        fail_msg("unexpected refusal: %s", err.msg);
    size_t n = 9;
    assert_int_equal(panel_engine_resume_all(e2, &n, &err), AP_OK);
    assert_int_equal(n, 0);
    assert_int_equal(panel_engine_active(e2), 0);
    assert_int_equal(panel_engine_active(e1), 1);

    panel_engine_unsubscribe(e1, sub);
    panel_engine_stop(e1);
    row = row_of(id);
    assert_string_equal(row.status, "running");
    assert_null(row.lease_owner);
    store_panel_free(&row);
    resume_to_end(e2, id);
    panel_engine_stop(e2);
    row = row_of(id);
    assert_string_equal(row.status, "completed");
    assert_null(row.lease_owner);
    assert_int_equal(row.lease_expires_at, 0);
    store_panel_free(&row);
}

/* A lease held by a live process elsewhere or on this host keeps the panel; an expired one, or
 * one of a process of this host that is gone, does not. */
static void test_lease_takeover(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX], id2[STORE_ID_MAX];
    create(e, "fanout", NULL, id);
    create(e, "fanout", NULL, id2);
    ap_err err = {0};
    lease_as(id, "created", "elsewhere.invalid:1:feedfeed", 60000, NULL);
    assert_int_equal(panel_engine_resume(e, tenant, id, &err), AP_CONFLICT);
    assert_non_null(strstr(err.msg, "(host elsewhere.invalid, pid 1)"));
    /* our parent is alive: its lease holds even on this host */
    char live[128];
    snprintf(live, sizeof live, "%s:%d:0001", host_name(), (int)getppid());
    lease_as(id, "running", live, 60000, "elsewhere.invalid:1:feedfeed");
    assert_int_equal(panel_engine_resume(e, tenant, id, &err), AP_CONFLICT);
    char want[96];
    snprintf(want, sizeof want, "pid %d)", (int)getppid());
    assert_non_null(strstr(err.msg, want));
    /* expired */
    lease_as(id, "running", live, 1, NULL);
    usleep(20 * 1000);
    resume_to_end(e, id);

    /* a process of this host that is gone */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    assert_int_equal(waitpid(child, NULL, 0), child);
    char dead[128];
    snprintf(dead, sizeof dead, "%s:%d:0002", host_name(), (int)child);
    lease_as(id2, "created", dead, 60000, NULL);
    resume_to_end(e, id2);

    /* ... or only a zombie, not yet reaped: it runs nothing */
    char id3[STORE_ID_MAX];
    create(e, "fanout", NULL, id3);
    child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    siginfo_t info;
    /* WNOWAIT: waits for the exit and leaves the child unreaped */
    assert_int_equal(waitid(P_PID, (id_t)child, &info, WEXITED | WNOWAIT), 0);
    assert_int_equal(kill(child, 0), 0);
    char zombie[128];
    snprintf(zombie, sizeof zombie, "%s:%d:0003", host_name(), (int)child);
    lease_as(id3, "created", zombie, 60000, NULL);
    resume_to_end(e, id3);
    assert_int_equal(waitpid(child, NULL, 0), child);
    panel_engine_stop(e);
}

/* The engine renews the leases of its panels while it runs them, and stops a panel whose lease
 * another process took over (after it had run out, say) instead of running it twice. */
static void test_lease_renewal_and_loss(void **state)
{
    (void)state;
    ap_err err = {0};
    assert_int_equal(config_set(&cfg, "runtime.lease_ms", "1000", "test", &err), AP_OK);
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(1500);
    char id[STORE_ID_MAX];
    create(e, "fanout", "{\"rounds\":3}", id);
    panel_sub *sub = NULL;
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    int64_t t0 = wall_ms();
    assert_int_equal(panel_engine_execute(e, tenant, id, &err), AP_OK);
    usleep(1200 * 1000);
    store_panel row = row_of(id);
    assert_string_equal(row.status, "running");
    assert_true(row.lease_expires_at > t0 + 1000); /* renewed since the claim */
    char *ours = strdup(row.lease_owner);
    store_panel_free(&row);
    /* another process claims it as if our lease had run out */
    lease_as(id, "running", "elsewhere.invalid:1:cafe", 60000, ours);
    int64_t deadline = clock_mono_ms() + 3000;
    while (panel_engine_active(e) > 0 && clock_mono_ms() < deadline)
        usleep(20 * 1000);
    assert_int_equal(panel_engine_active(e), 0);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    /* the new owner keeps it: the engine gave up only its own leases */
    row = row_of(id);
    assert_string_equal(row.status, "running");
    assert_string_equal(row.lease_owner, "elsewhere.invalid:1:cafe");
    store_panel_free(&row);
    free(ours);
    cancel_in_store(id); /* ended, as in test_fenced_run_stops */
    assert_int_equal(config_set(&cfg, "runtime.lease_ms", "30000", "test", &err), AP_OK);
}

/* A cancel handed to this process's runner is answered once it is stored, and only if it
 * came before the panel ended: it was answered at once, while the panel was still running in
 * the store, and a runner that had just finished the panel dropped it unsaid. */
static void test_cancel_answers_when_stored(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(100);
    int cancelled = 0, finished = 0;
    for (int i = 0; i < 16; i++) {
        char id[STORE_ID_MAX];
        panel_sub *sub = start_panel(e, "fanout", NULL, id);
        free(wait_for(sub, "panel.status", 3000));
        usleep((useconds_t)(i * 9000)); /* from mid-run to about its end */
        ap_err err = {0};
        ap_status rc = panel_engine_cancel(e, tenant, id, &err);
        store_panel row = row_of(id);
        if (rc == AP_OK) {
            assert_string_equal(row.status, "cancelled");
            cancelled++;
        } else {
            assert_int_equal(rc, AP_CONFLICT);
            assert_true(strcmp(row.status, "completed") == 0);
            finished++;
        }
        store_panel_free(&row);
        panel_engine_unsubscribe(e, sub);
    }
    assert_true(cancelled > 0);
    assert_int_equal(cancelled + finished, 16);
    panel_engine_stop(e);
}

/* A run whose writes the store fences off (another process took the panel over) stops at its
 * first refused write, not at its next lease renewal (10 s away here): of three rounds it
 * pays for the one in flight, at most one more, where it went on to finish the panel. */
static void test_fenced_run_stops(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    unlink(calls_path);
    panel_engine *e = start_engine(300);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "fanout", "{\"rounds\":3}", id);
    free(wait_for(sub, "panel.status", 3000));
    take_over(id);
    int64_t deadline = clock_mono_ms() + 3000;
    while (panel_engine_active(e) > 0 && clock_mono_ms() < deadline)
        usleep(10 * 1000);
    assert_int_equal(panel_engine_active(e), 0);
    usleep(700 * 1000); /* what a run going on would have paid by now */
    assert_in_range(count_lines(calls_path), 5, 10);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    store_panel row = row_of(id);
    assert_string_equal(row.status, "running");
    assert_string_equal(row.lease_owner, "elsewhere.invalid:1:cafe");
    store_panel_free(&row);
    /* ended, so that no later test's resume finds it once that lease has run out */
    cancel_in_store(id);
}

/* A cancel sent to a process that does not run the panel leaves the writing to the one that
 * does (it finds the status changed when it renews its lease): one cancel event, at the end
 * of a gapless log, where the canceller's own event took a seq of the runner's and the runner
 * went on to finish the panel under a "cancelled" row. */
static void test_cancel_through_another_engine(void **state)
{
    (void)state;
    ap_err err = {0};
    assert_int_equal(config_set(&cfg, "runtime.lease_ms", "1000", "test", &err), AP_OK);
    write_file("fanout.lua", fanout_lua);
    panel_engine *runs = start_engine(700);
    panel_engine *other = start_engine(700);
    char id[STORE_ID_MAX];
    create(runs, "fanout", "{\"rounds\":3}", id);
    panel_sub *sub = NULL;
    assert_int_equal(panel_engine_subscribe(runs, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    assert_int_equal(panel_engine_execute(runs, tenant, id, &err), AP_OK);
    for (int i = 0; i < 5; i++)
        free(wait_for(sub, "expert.message", 3000));
    assert_int_equal(panel_engine_cancel(other, tenant, id, &err), AP_OK);
    wait_cancelled(sub, 3000);
    panel_engine_unsubscribe(runs, sub);
    panel_engine_stop(other);
    panel_engine_stop(runs);
    store_event *rows = NULL;
    size_t n = 0;
    assert_int_equal(store_events_list(st, tenant, id, 0, 200, &rows, &n, &err), AP_OK);
    int cancels = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(rows[i].seq, (int64_t)i + 1);
        cancels += strstr(rows[i].data, "cancelled") != NULL;
    }
    assert_int_equal(cancels, 1);
    assert_non_null(strstr(rows[n - 1].data, "cancelled"));
    store_events_free(rows, n);
    store_panel row = row_of(id);
    assert_string_equal(row.status, "cancelled");
    store_panel_free(&row);
    assert_int_equal(config_set(&cfg, "runtime.lease_ms", "30000", "test", &err), AP_OK);
}

/* A panel cancelled in the store by another process while its runner here waits on answers:
 * the runner's next writes are refused (the lease went with the status) and it stops, and its
 * subscribers here get the stored end then, not at a renewal that no longer comes. */
static void test_fenced_run_publishes_the_stored_end(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(300);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "fanout", "{\"rounds\":3}", id);
    for (int i = 0; i < 5; i++)
        free(wait_for(sub, "expert.message", 3000));
    usleep(50 * 1000); /* the round's writes are stored */
    cancel_in_store(id);
    ap_err err = {0};
    int64_t last = 0;
    assert_int_equal(store_events_last_seq(st, tenant, id, &last, &err), AP_OK);
    store_event end = {
        .seq = last + 1, .type = "panel.status", .data = "{\"status\":\"cancelled\"}"};
    memcpy(end.panel_id, id, STORE_ID_MAX);
    assert_int_equal(store_events_append(st, tenant, &end, 1, &err), AP_OK);
    wait_cancelled(sub, 3000);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    store_panel row = row_of(id);
    assert_string_equal(row.status, "cancelled");
    store_panel_free(&row);
}

/* A cancel sent to a process whose runner has lost the panel's lease (another process took it
 * over; this one has not renewed yet) is stored, not handed to that runner, whose writes the
 * store would refuse. */
static void test_cancel_after_lease_lost(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(1500);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "fanout", "{\"rounds\":3}", id);
    ap_err err = {0};
    free(wait_for(sub, "panel.status", 3000));
    take_over(id);
    assert_int_equal(panel_engine_cancel(e, tenant, id, &err), AP_OK);
    store_panel row = row_of(id);
    assert_string_equal(row.status, "cancelled");
    store_panel_free(&row);
    wait_cancelled(sub, 1000);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
}

/* A panel waiting for input is held by no process: the answer may reach another live engine,
 * which resumes it from its checkpoint without paying its turn again. */
static void test_input_reaches_another_engine(void **state)
{
    (void)state;
    write_file("human.lua", human_lua);
    unlink(calls_path);
    panel_engine *e1 = start_engine(0);
    panel_engine *e2 = start_engine(0);
    char id[STORE_ID_MAX];
    create(e1, "human", NULL, id);
    panel_sub *sub = NULL;
    ap_err err = {0};
    free(run_to_end(e1, id, "input.requested", 3000));
    store_panel row = row_of(id);
    assert_string_equal(row.status, "awaiting_input");
    assert_null(row.lease_owner);
    store_panel_free(&row);
    assert_int_equal(panel_engine_active(e1), 0);
    assert_int_equal(count_lines(calls_path), 1);
    assert_int_equal(panel_engine_subscribe(e2, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    assert_int_equal(panel_engine_input(e2, tenant, id, "{\"text\":\"from afar\"}", 0, &err),
                     AP_OK);
    assert_int_equal(panel_engine_input(e1, tenant, id, "{\"text\":\"twice\"}", 0, &err),
                     AP_CONFLICT);
    char *done = wait_for(sub, "panel.completed", 3000);
    assert_non_null(strstr(done, "\"said\":\"from afar\""));
    free(done);
    panel_engine_unsubscribe(e2, sub);
    panel_engine_stop(e1);
    panel_engine_stop(e2);
    assert_int_equal(count_lines(calls_path), 1);
}

static const char three_asks_lua[] =
    "return { name = 'asks', start = 'a', nodes = {\n"
    "  a = function(ctx) ctx.state.a = ctx:await_input({ prompt = 'One?' }).text return 'b' end,\n"
    "  b = function(ctx) ctx.state.b = ctx:await_input({ prompt = 'Two?' }).text return 'c' end,\n"
    "  c = function(ctx) local c = ctx:await_input({ prompt = 'Three?' }).text\n"
    "    return ctx:done({ said = ctx.state.a .. ctx.state.b .. c }) end } }\n";

/* A refused answer must leave the panel exactly as waiting as before: its status, its free
 * lease and its events; and answerable still. */
static void assert_still_waiting(const char *id, int64_t pending)
{
    store_panel row = row_of(id);
    assert_string_equal(row.status, "awaiting_input");
    assert_null(row.lease_owner);
    store_panel_free(&row);
    int64_t last = 0;
    ap_err err = {0};
    assert_int_equal(store_events_last_seq(st, tenant, id, &last, &err), AP_OK);
    assert_int_equal(last, pending);
}

/* An answer that names its request (request_seq: the seq of its input.requested) is taken only
 * while that request is the one pending: an answer to an earlier request, late or racing
 * another, is refused instead of answering a question its client never saw. 0 names none. */
static void test_input_names_its_request(void **state)
{
    (void)state;
    write_file("asks.lua", three_asks_lua);
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "asks", NULL, id);
    ap_err err = {0};
    int64_t one = wait_seq(sub, "input.requested", 3000);
    assert_true(one > 0);
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"x\"}", one + 7, &err),
                     AP_CONFLICT);
    char want[64];
    snprintf(want, sizeof want, "latest request is %lld", (long long)one);
    assert_non_null(strstr(err.msg, want));
    assert_still_waiting(id, one);
    assert_int_equal(panel_engine_input(e, tenant, id, "-1", -1, &err), AP_INVALID);
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"A\"}", one, &err), AP_OK);

    int64_t two = wait_seq(sub, "input.requested", 3000);
    assert_true(two > one);
    /* the first request's second answer, arriving once the panel waits again */
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"late\"}", one, &err),
                     AP_CONFLICT);
    snprintf(want, sizeof want, "latest request is %lld", (long long)two);
    assert_non_null(strstr(err.msg, want));
    assert_still_waiting(id, two);
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"B\"}", two, &err), AP_OK);

    int64_t three = wait_seq(sub, "input.requested", 3000);
    assert_true(three > two);
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"C\"}", 0, &err), AP_OK);
    char *done = wait_for(sub, "panel.completed", 3000);
    assert_non_null(strstr(done, "\"said\":\"ABC\""));
    free(done);
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"x\"}", three, &err),
                     AP_CONFLICT);
    assert_non_null(strstr(err.msg, "not waiting for input"));
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"x\"}", 0, &err), AP_CONFLICT);
    store_panel row = row_of(id);
    assert_string_equal(row.status, "completed");
    store_panel_free(&row);
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
}

/* The request is checked again under the claim, and an answer refused there gives the panel
 * back as it was. Shown on a waiting panel whose last event is not its request (a store
 * written before the two were stored together): it passes the look before the claim, which
 * finds no request to hold against it, and only the check under the claim refuses it. */
static void test_input_request_checked_under_the_claim(void **state)
{
    (void)state;
    write_file("human.lua", human_lua);
    panel_engine *e = start_engine(0);
    char id[STORE_ID_MAX];
    create(e, "human", NULL, id);
    ap_err err = {0};
    free(run_to_end(e, id, "input.requested", 3000));
    int64_t asked = 0;
    assert_int_equal(store_events_last_seq(st, tenant, id, &asked, &err), AP_OK);
    store_event extra = {.seq = asked + 1, .type = "note", .data = "{}"};
    memcpy(extra.panel_id, id, STORE_ID_MAX);
    assert_int_equal(store_events_append(st, tenant, &extra, 1, &err), AP_OK);
    assert_int_equal(panel_engine_input(e, tenant, id, "{\"text\":\"x\"}", asked, &err),
                     AP_CONFLICT);
    assert_non_null(strstr(err.msg, "not on record"));
    assert_still_waiting(id, asked + 1);
    assert_int_equal(panel_engine_active(e), 0);
    assert_int_equal(panel_engine_cancel(e, tenant, id, &err), AP_OK);
    panel_engine_stop(e);
}

/* A panel started on an explicit provider and model (`askpanel run --provider --model`)
 * resumes on them, whatever the resuming process was started with. */
static void test_resume_keeps_provider_and_model(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    int64_t special = usage_calls("sim-special"), plain = usage_calls("simulated-1");
    setenv("ASKPANEL_SIM_LATENCY_MS", "300", 1);
    panel_engine_opts o = {.cfg = &cfg,
                           .store = st,
                           .registry = reg,
                           .seed = 7,
                           .provider = "simulated",
                           .model = "sim-special"};
    panel_engine *e = NULL;
    ap_err err = {0};
    assert_int_equal(panel_engine_start(&o, &e, &err), AP_OK);
    char id[STORE_ID_MAX];
    create(e, "fanout", "{\"rounds\":3}", id);
    panel_sub *sub = NULL;
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    assert_int_equal(panel_engine_execute(e, tenant, id, &err), AP_OK);
    for (int i = 0; i < 5; i++)
        free(wait_for(sub, "expert.message", 3000));
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    free(restart_to_end(id));
    assert_int_equal(usage_calls("sim-special") - special, 15);
    assert_int_equal(usage_calls("simulated-1"), plain);
    /* A process without the panel's provider does not take it: every later turn would fail. */
    config mine = cfg;
    mine.llm = cJSON_Parse("{\"providers\":{\"mysim\":{\"type\":\"simulated\"}}}");
    o.cfg = &mine;
    o.provider = "mysim";
    o.model = NULL;
    setenv("ASKPANEL_SIM_LATENCY_MS", "300", 1);
    assert_int_equal(panel_engine_start(&o, &e, &err), AP_OK);
    create(e, "fanout", "{\"rounds\":3}", id);
    assert_int_equal(panel_engine_subscribe(e, tenant, id, 4096, NULL, NULL, &sub, &err), AP_OK);
    assert_int_equal(panel_engine_execute(e, tenant, id, &err), AP_OK);
    for (int i = 0; i < 5; i++)
        free(wait_for(sub, "expert.message", 3000));
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    cJSON_Delete(mine.llm);
    e = start_engine(0);
    assert_int_equal(panel_engine_resume(e, tenant, id, &err), AP_INVALID);
    assert_non_null(strstr(err.msg, "provider 'mysim', which this process does not have"));
    /* ... and gives the lease it claimed back at once, for a process that can run it */
    store_panel row = row_of(id);
    assert_true(row.lease_expires_at <= wall_ms() + 1000);
    store_panel_free(&row);
    panel_engine_stop(e);
    cancel_in_store(id);
}

/* An engine that sweeps for orphaned panels once a second (lease_ms 1000), its simulated
 * answers taking 5 s so that the panels it runs stay running. */
static panel_engine *start_sweeping(void)
{
    write_file("fanout.lua", fanout_lua);
    ap_err err = {0};
    assert_int_equal(config_set(&cfg, "runtime.lease_ms", "1000", "test", &err), AP_OK);
    setenv("ASKPANEL_SIM_LATENCY_MS", "5000", 1);
    panel_engine_opts o = {.cfg = &cfg, .store = st, .registry = reg, .seed = 7, .adopt = true};
    panel_engine *e = NULL;
    assert_int_equal(panel_engine_start(&o, &e, &err), AP_OK);
    return e;
}

/* Stops e and cancels the running panels ids[0..n) it left, restoring the default lease. */
static void stop_sweeping(panel_engine *e, const char *const *ids, int n)
{
    ap_err err = {0};
    panel_engine_stop(e);
    for (int i = 0; i < n; i++)
        cancel_in_store(ids[i]);
    assert_int_equal(config_set(&cfg, "runtime.lease_ms", "30000", "test", &err), AP_OK);
}

/* A sweep (a serve's search for panels whose lease ran out) leaves this engine's own leases
 * alone, expired or not: a panel that ended here is still running in the store until the
 * writer stores its end, and taking it again ran its node again and paid twice (review). Shown
 * with a panel claimed under the engine's owner but not run by it, its lease already out. */
static void test_sweep_leaves_its_own_leases(void **state)
{
    (void)state;
    ap_err err = {0};
    panel_engine *e = start_sweeping();
    char runs[STORE_ID_MAX], ended[STORE_ID_MAX];
    create(e, "fanout", NULL, runs);
    assert_int_equal(panel_engine_execute(e, tenant, runs, &err), AP_OK);
    store_panel row = row_of(runs);
    assert_non_null(row.lease_owner);
    create(e, "fanout", NULL, ended);
    lease_as(ended, "created", row.lease_owner, 1, NULL);
    store_panel_free(&row);
    usleep(3500 * 1000); /* two sweeps at least */
    row = row_of(ended);
    /* still out: taken, it would run here with its lease renewed */
    assert_string_equal(row.status, "running");
    assert_true(row.lease_expires_at < wall_ms());
    assert_false(panel_engine_runs(e, ended));
    store_panel_free(&row);
    stop_sweeping(e, (const char *[]){runs, ended}, 2);
}

/* A sweep takes over a running panel whose holder on this host is gone, even before its lease
 * runs out, and leaves alone the live leases of this host's other processes (here: another
 * engine of this process) and of other hosts. */
static void test_sweep_takes_only_orphans(void **state)
{
    (void)state;
    ap_err err = {0};
    panel_engine *e = start_sweeping();
    char mine[STORE_ID_MAX], neighbour[STORE_ID_MAX], orphan[STORE_ID_MAX], remote[STORE_ID_MAX];
    create(e, "fanout", NULL, mine);
    assert_int_equal(panel_engine_execute(e, tenant, mine, &err), AP_OK);
    store_panel row = row_of(mine);
    char *ours = strdup(row.lease_owner);
    store_panel_free(&row);
    char host[128];
    snprintf(host, sizeof host, "%.*s", (int)(strchr(ours, ':') - ours), ours);
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    assert_true(dead > 0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    char live_owner[160], dead_owner[160];
    snprintf(live_owner, sizeof live_owner, "%s:%ld:0ther", host, (long)getpid());
    snprintf(dead_owner, sizeof dead_owner, "%s:%ld:d3ad", host, (long)dead);
    create(e, "fanout", NULL, neighbour);
    lease_as(neighbour, "created", live_owner, 60000, NULL);
    create(e, "fanout", NULL, orphan);
    lease_as(orphan, "created", dead_owner, 60000, NULL);
    create(e, "fanout", NULL, remote);
    lease_as(remote, "created", "elsewhere.invalid:1:cafe", 60000, NULL);
    usleep(2500 * 1000); /* two sweeps at least */
    row = row_of(orphan);
    assert_string_equal(row.lease_owner, ours);
    store_panel_free(&row);
    assert_true(panel_engine_runs(e, orphan));
    row = row_of(neighbour);
    assert_string_equal(row.lease_owner, live_owner);
    store_panel_free(&row);
    row = row_of(remote);
    assert_string_equal(row.lease_owner, "elsewhere.invalid:1:cafe");
    store_panel_free(&row);
    stop_sweeping(e, (const char *[]){mine, neighbour, orphan, remote}, 4);
    free(ours);
}

/* A store that is unavailable for a while (here: locked by another connection for longer than
 * the engine's busy timeout, twice over) delays a panel's writes; none is dropped. */
static void test_store_outage_loses_nothing(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    unlink(calls_path);
    int64_t before = usage_calls(NULL);
    panel_engine *e = start_engine(200);
    char id[STORE_ID_MAX];
    panel_sub *sub = start_panel(e, "fanout", "{\"rounds\":3}", id);
    char path[300];
    snprintf(path, sizeof path, "%s/test.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    usleep(10500 * 1000);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    free(wait_for(sub, "panel.completed", 20000));
    panel_engine_unsubscribe(e, sub);
    panel_engine_stop(e);
    assert_int_equal(stored_of_type(id, "expert.message"), 15);
    assert_int_equal(count_lines(calls_path), 15);
    assert_int_equal(usage_calls(NULL) - before, 15);
}

static void test_overrides(void **state)
{
    (void)state;
    write_file("fanout.lua", fanout_lua);
    panel_engine *e = start_engine(0);
    ap_err err = {0};
    int line = -1;
    const char *broken = "return {\n  name = 'fanout',\n  start = 'ask'\n  nodes = {}\n}\n";
    assert_int_equal(panel_engine_put_script(e, tenant, SCRIPT_STRATEGY, "fanout", broken,
                                             strlen(broken), NULL, &line, &err),
                     AP_INVALID);
    assert_int_equal(line, 4);
    assert_non_null(strstr(err.msg, "fanout.lua:4:"));
    const char *failing = "return { name = 'fanout', start = 'a', nodes = {\n"
                          "  a = function(ctx) return 'nowhere' end } }\n";
    assert_int_equal(panel_engine_put_script(e, tenant, SCRIPT_STRATEGY, "fanout", failing,
                                             strlen(failing), NULL, &line, &err),
                     AP_INVALID);
    assert_non_null(strstr(err.msg, "returned unknown node 'nowhere'"));
    const char *good = "return { name = 'fanout', description = 'mine', start = 'a', nodes = {\n"
                       "  a = function(ctx) return ctx:done({ mine = true }) end } }\n";
    char version[65];
    assert_int_equal(panel_engine_put_script(e, tenant, SCRIPT_STRATEGY, "fanout", good,
                                             strlen(good), version, &line, &err),
                     AP_OK);
    char *list = NULL;
    assert_int_equal(panel_engine_list_scripts(e, tenant, SCRIPT_STRATEGY, &list, &err), AP_OK);
    assert_non_null(strstr(list, "\"origin\":\"override\""));
    assert_non_null(strstr(list, version));
    assert_non_null(strstr(list, "\"name\":\"hot\""));
    free(list);
    char id[STORE_ID_MAX];
    create(e, "fanout", NULL, id);
    char *done = run_to_end(e, id, "panel.completed", 3000);
    assert_non_null(strstr(done, "\"mine\":true"));
    free(done);
    assert_int_equal(store_script_deactivate(st, tenant, STORE_SCRIPT_STRATEGY, "fanout", &err),
                     AP_OK);
    panel_engine_stop(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ask_all_is_concurrent),
        cmocka_unit_test(test_busy_runner_does_not_hold_starts),
        cmocka_unit_test(test_params_validation),
        cmocka_unit_test(test_live_limit),
        cmocka_unit_test(test_fenced_run_stops),
        cmocka_unit_test(test_cancel_answers_when_stored),
        cmocka_unit_test(test_subscriber_queue_order_and_lag),
        cmocka_unit_test(test_deltas_join_to_the_answer),
        cmocka_unit_test(test_hot_reload),
        cmocka_unit_test(test_inotify_reload),
        cmocka_unit_test(test_deleted_override_falls_back),
        cmocka_unit_test(test_cancel_aborts_at_once),
        cmocka_unit_test(test_human_input),
        cmocka_unit_test(test_input_is_stored_on_return),
        cmocka_unit_test(test_input_after_restart),
        cmocka_unit_test(test_node_budget),
        cmocka_unit_test(test_state_between_nodes_is_the_checkpoint),
        cmocka_unit_test(test_resume_replays_journal),
        cmocka_unit_test(test_replay_that_fails_sooner_stores_its_end),
        cmocka_unit_test(test_resume_before_the_first_checkpoint),
        cmocka_unit_test(test_checkpoints_fit_the_store),
        cmocka_unit_test(test_consensus_pin_is_stored_first),
        cmocka_unit_test(test_held_messages_fit_a_group),
        cmocka_unit_test(test_resume_mid_batch),
        cmocka_unit_test(test_resume_keeps_provider_and_model),
        cmocka_unit_test(test_sweep_leaves_its_own_leases),
        cmocka_unit_test(test_sweep_takes_only_orphans),
        cmocka_unit_test(test_store_outage_loses_nothing),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_lease_keeps_a_second_engine_out),
        cmocka_unit_test(test_lease_takeover),
        cmocka_unit_test(test_lease_renewal_and_loss),
        cmocka_unit_test(test_cancel_through_another_engine),
        cmocka_unit_test(test_fenced_run_publishes_the_stored_end),
        cmocka_unit_test(test_cancel_after_lease_lost),
        cmocka_unit_test(test_input_reaches_another_engine),
        cmocka_unit_test(test_input_names_its_request),
        cmocka_unit_test(test_input_request_checked_under_the_claim),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_writer_group_commit),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
