/* script_sandbox_test.c - hostile scripts through the real host.
 *
 * Every case runs a one-node strategy whose node body is the attack, asserts how its panel
 * ends (failed with a given message, or completed having found nothing to reach), and then
 * runs a benign panel to show the process is still healthy. The list covers the acceptance
 * floor of issue 4 plus known Lua sandbox escapes and denial-of-service tricks: bytecode
 * loading, string metatable and _ENV reach-through, C loops driven by metamethods, pattern
 * backtracking, finalizers and to-be-closed variables running after a limit, limit errors
 * swallowed by pcall/xpcall/load, and C-stack exhaustion. */
#include "core/clock.h"
#include "core/embed.h"
#include "core/ids.h"
#include "core/log.h"
#include "script/host.h"
#include "script/sandbox.h"

#include <cjson/cJSON.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char consensus_src[] =
    "return function(ballots, opts)\n"
    "  local up = ('agree'):upper()\n"
    "  return { level = 1, position = up, dissent = {}, details = { n = #ballots } }\n"
    "end\n";

static ap_status t_emit(void *ud, const char *type, const char *data, int64_t *seq, ap_err *err)
{
    (void)ud;
    (void)type;
    (void)data;
    (void)err;
    *seq = 1;
    return AP_OK;
}

static char last_log[16384]; /* the last line a script logged */

static void t_log(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    snprintf(last_log, sizeof last_log, "%s", msg);
}

/* A second chunk of the same state: sees the panel library whole whatever the strategy did. */
static const char lib_consensus_src[] =
    "return function(ballots, opts)\n"
    "  assert(rawget(panel, 'finite') == nil and next(panel) == nil)\n"
    "  assert(panel.finite(1) and not panel.finite(0/0) and panel.contains({ 'a' }, 'a'))\n"
    "  assert(panel.position_line('a', { position = 'p', confidence = 0.5, reason = 'r' })\n"
    "         == '- a: p (confidence 0.50) \\u{2014} r')\n"
    "  return { level = 1, position = 'INTACT', dissent = {}, details = {} }\n"
    "end\n";

/* Calls ballots[1]:<opts.method>(...), the ctx its strategy handed it. */
static const char ctx_consensus_src[] =
    "return function(ballots, opts)\n"
    "  local ctx = ballots[1]\n"
    "  if opts.method == 'emit' then ctx:emit('x.y', {}) end\n"
    "  if opts.method == 'done' then ctx:done({ hijacked = true }) end\n"
    "  if opts.method == 'consensus' then ctx:consensus('test', {}, {}) end\n"
    "  return { level = 1, position = 'p', dissent = {}, details = {} }\n"
    "end\n";

/* Draws from math.random, to show which generator a consensus chunk has. */
static const char rand_consensus_src[] =
    "return function(ballots, opts)\n"
    "  return { level = 1, position = tostring(math.random(1000000000)), dissent = {}, "
    "details = {} }\n"
    "end\n";

static ap_status t_consensus(void *ud, const char *name, char **source, size_t *len, ap_err *err)
{
    (void)ud;
    const char *src = strcmp(name, "test") == 0      ? consensus_src
                      : strcmp(name, "lib") == 0     ? lib_consensus_src
                      : strcmp(name, "ctxuser") == 0 ? ctx_consensus_src
                      : strcmp(name, "rand") == 0    ? rand_consensus_src
                                                     : NULL;
    if (src == NULL)
        return ap_err_set(err, AP_NOTFOUND, "no consensus named %s", name);
    *source = strdup(src);
    *len = strlen(src);
    return AP_OK;
}

typedef struct outcome {
    script_outcome kind;
    char error[1024];
    int64_t ms;
} outcome;

static void limits(script_limits *l)
{
    script_limits_default(l);
    l->memory_bytes = (size_t)16 * 1024 * 1024;
    l->instructions = 5 * 1000 * 1000;
    /* The product's default: cases about the other limits must not race the clock on a slow
     * (sanitized, loaded) machine, where every call reads it. */
    l->timeout_ms = 30000;
}

/* A panel of one expert running the strategy in src (named "sandbox"). */
static ap_status new_panel(const script_limits *lim, const char *src, script_panel **sp,
                           ap_err *err)
{
    script_host host = {NULL, t_emit, t_log, t_consensus};
    script_inputs in = {.panel_id = "p1",
                        .question = "q",
                        .params_json = "{}",
                        .experts_json = "[{\"id\":\"e1\",\"name\":\"E\"}]",
                        .tenant_json = "{\"slug\":\"t\",\"flags\":{}}"};
    return script_panel_new(lim, &host, "sandbox", src, strlen(src), &in, sp, err);
}

/* Runs node `main` of the strategy in src and reports how it ended. */
static void run_source(const script_limits *lim, const char *src, outcome *o)
{
    script_panel *sp = NULL;
    ap_err err = {0};
    memset(o, 0, sizeof *o);
    ap_status rc = new_panel(lim, src, &sp, &err);
    if (rc != AP_OK) {
        o->kind = SCRIPT_FAILED;
        snprintf(o->error, sizeof o->error, "%s", err.msg);
        return;
    }
    script_step step;
    int64_t t0 = clock_mono_ms();
    assert_int_equal(script_panel_run_node(sp, "main", 42, &step), AP_OK);
    /* answer every ask at once, as a zero-latency provider would */
    for (int round = 0; step.outcome == SCRIPT_ASK && round < 10000; round++) {
        for (size_t i = 0; i < step.n_asks; i++) {
            script_answer a = {.text = "ok", .prompt_tokens = 1, .completion_tokens = 1};
            assert_int_equal(script_panel_deliver(sp, i, &a, &err), AP_OK);
        }
        assert_int_equal(script_panel_resume(sp, &step), AP_OK);
    }
    o->ms = clock_mono_ms() - t0;
    o->kind = step.outcome;
    snprintf(o->error, sizeof o->error, "%s", step.error);
    script_panel_free(sp);
}

/* Runs `body` as the node of a strategy and reports how the node ended. */
static void run_body_lim(const script_limits *lim, const char *body, outcome *o)
{
    char src[16384];
    snprintf(src, sizeof src,
             "return { name = 'sandbox', start = 'main', consensus = 'test', nodes = { main = "
             "function(ctx) do\n%s\nend\nreturn ctx:done({ ok = true })\nend } }\n",
             body);
    run_source(lim, src, o);
}

static void run_body(const char *body, outcome *o)
{
    script_limits lim;
    limits(&lim);
    run_body_lim(&lim, body, o);
}

static void healthy(void)
{
    outcome o;
    run_body("local t = {} for i = 1, 100 do t[i] = i * 2 end\n"
             "assert(#t == 100 and string.format('%d', 7) == '7')\n"
             "local r = ctx:consensus(nil, {}, {})\n"
             "assert(r.position == 'AGREE')",
             &o);
    assert_int_equal(o.kind, SCRIPT_DONE);
}

/* needle may hold alternatives separated by '|'. */
static bool matches(const char *text, const char *needle)
{
    char alt[256];
    snprintf(alt, sizeof alt, "%s", needle);
    for (char *save = NULL, *tok = strtok_r(alt, "|", &save); tok != NULL;
         tok = strtok_r(NULL, "|", &save))
        if (strstr(text, tok) != NULL)
            return true;
    return false;
}

static void expect_fail(const char *body, const char *needle)
{
    outcome o;
    run_body(body, &o);
    if (o.kind != SCRIPT_FAILED || !matches(o.error, needle))
        fail_msg("body:\n%s\nexpected failure with \"%s\", got outcome %d: %s", body, needle,
                 (int)o.kind, o.error);
    healthy();
}

static void expect_done(const char *body)
{
    outcome o;
    run_body(body, &o);
    if (o.kind != SCRIPT_DONE)
        fail_msg("body:\n%s\nexpected the node to complete, got %d: %s", body, (int)o.kind,
                 o.error);
    healthy();
}

/* ---- no host access ----------------------------------------------------------------------- */

static void test_no_os_io_debug_require(void **state)
{
    (void)state;
    expect_fail("os.execute('touch /tmp/pwned')", "global 'os'");
    expect_fail("io.open('/etc/passwd')", "global 'io'");
    expect_fail("debug.getregistry()", "global 'debug'");
    expect_fail("require('os')", "global 'require'");
    expect_fail("dofile('/etc/passwd')", "global 'dofile'");
    expect_fail("loadfile('/etc/passwd')", "global 'loadfile'");
    expect_fail("package.loadlib('libc.so.6', 'system')", "global 'package'");
    expect_fail("coroutine.wrap(function() end)", "global 'coroutine'");
    expect_done("assert(rawget(_G, 'os') == nil and _G.io == nil and _ENV.debug == nil)\n"
                "assert(load('return os')() == nil)\n"
                "assert(load('return io', 'x', 't', {})() == nil)");
}

static void test_no_bytecode(void **state)
{
    (void)state;
    expect_fail("string.dump(function() end)", "field 'dump'");
    expect_fail("local d = ('').dump; d(print)", "local 'd'");
    expect_fail("local f, e = load('\\27LuaT\\0\\25\\147\\r\\n\\26\\n'); assert(f == nil); "
                "error(e)",
                "binary chunk");
    expect_fail("local f, e = load('\\27Lua', 'x', 'b'); error(e)", "binary chunk");
    expect_fail("load(function() return '\\27Lua' end)", "string expected");
}

static void test_metatable_and_env_tricks(void **state)
{
    (void)state;
    expect_done("assert(getmetatable('') == nil)\n"
                "assert(getmetatable(1) == nil and getmetatable(print) == nil)");
    expect_fail("local mt = getmetatable(''); local i = mt.__index", "index a nil value");
    expect_fail("rawget(getmetatable(''), '__index')", "bad argument #1 to 'rawget'");
    expect_fail("('').x = 1", "attempt to index a string value");
    expect_fail("setmetatable('', {})", "table expected");
    /* Changing this chunk's libraries does not reach the host or other chunks: the consensus
     * script loaded afterwards still sees a working string library. */
    expect_done("string.upper = nil; setmetatable(string, { __index = function() error('x') "
                "end })\n"
                "local r = ctx:consensus('test', {}, {}); assert(r.position == 'AGREE')");
    expect_done("_ENV = setmetatable({}, { __index = _G }); assert(os == nil)");
    expect_done("local g = _G; _G = nil; assert(g.load('return 1')() == 1)");
    expect_fail("collectgarbage('collect')", "only \"count\"");
    expect_done("assert(type(collectgarbage('count')) == 'number')");
    expect_done("local a = json.array(); assert(getmetatable(a) == 'json.array')");
}

/* Runs node `main` of src in a new panel with seed; returns its result (caller frees). */
static char *run_seeded(const char *src, uint64_t seed)
{
    script_limits lim;
    limits(&lim);
    script_panel *sp = NULL;
    ap_err err = {0};
    if (new_panel(&lim, src, &sp, &err) != AP_OK)
        fail_msg("%s", err.msg);
    script_step step;
    assert_int_equal(script_panel_run_node(sp, "main", seed, &step), AP_OK);
    if (step.outcome != SCRIPT_DONE)
        fail_msg("node ended with %d: %s", (int)step.outcome, step.error);
    char *result = strdup(step.result_json);
    script_panel_free(sp);
    return result;
}

/* math.random is seeded before every node (a replayed node draws the same numbers), and a
 * consensus script draws from the same generator as the strategy that calls it, whichever
 * chunk's `math` it reaches it through. */
static void test_random_is_seeded_per_node(void **state)
{
    (void)state;
    static const char src[] =
        "return { name = 'sandbox', start = 'main', nodes = { main = function(ctx)\n"
        "  local a = math.random(1000000000)\n"
        "  local c = ctx:consensus('rand', {}, {})\n"
        "  math.random = nil\n"
        "  local d = ctx:consensus('rand', {}, {})\n"
        "  return ctx:done({ a = a, c = c.position, d = d.position }) end } }\n";
    char *r1 = run_seeded(src, 42), *r2 = run_seeded(src, 42), *r3 = run_seeded(src, 43);
    assert_string_equal(r1, r2);
    assert_string_not_equal(r1, r3);
    free(r1);
    free(r2);
    free(r3);
}

/* ---- the panel library ------------------------------------------------------------------ */

/* The SHA-256 of strategies/lib/panel.lua. Pinned panels do not pin the library, so a released
 * function must never change behaviour (docs/scripting.md, "The panel library"): when this
 * fails, check the edit only adds functions, bump panel.version, then update the hash. */
#define PANEL_LIB_SHA256 "fda8cc1ccdb26f1aa82a5ba9a497abe543d721ec99fac00e029e39817a9c25fe"

/* Values named by their address show a keyed mix of it, never the address itself. */
static void test_no_heap_addresses(void **state)
{
    (void)state;
    expect_done(
        "local t, u = {}, {}\n"
        "local hex16 = '^table: 0x' .. ('%x'):rep(16) .. '$'\n"
        "assert(tostring(t):match(hex16) and tostring(t) == tostring(t))\n"
        "assert(tostring(t) ~= tostring(u))\n"
        "assert(string.format('%s|%s', t, 7) == tostring(t) .. '|7')\n"
        "assert(tostring(print):match('^function: 0x' .. ('%x'):rep(16) .. '$'))\n"
        "local named = setmetatable({}, { __name = 'Thing' })\n"
        "assert(tostring(named):match('^Thing: 0x'))\n"
        "local shown = setmetatable({}, { __tostring = function() return 'mine' end })\n"
        "assert(tostring(shown) == 'mine' and ('%s'):format(shown) == 'mine')\n"
        "assert(tostring(nil) == 'nil' and tostring(1.5) == '1.5' and tostring('x') == 'x')\n"
        "assert(('%5.1f%%'):format(2.25) == '  2.2%' or ('%5.1f%%'):format(2.25) == '  2.3%')");
    /* nor in what a script logs */
    expect_done("print({})");
    assert_true(strncmp(last_log, "table: 0x", 9) == 0 && strlen(last_log) == 9 + 16);
    expect_done("print(('x'):rep(5000), ('y'):rep(3000), 7)"); /* the buffer grows */
    assert_int_equal(strlen(last_log), 4096 + 1 + 3000 + 2);
    assert_true(last_log[4095] == 'x' && last_log[4096] == '\t' && last_log[4097] == 'y');
    assert_string_equal(last_log + 4096 + 1 + 3000, "\t7");
    expect_done("ctx:log('info', print)");
    assert_true(strncmp(last_log, "function: 0x", 12) == 0 && strlen(last_log) == 12 + 16);
    expect_fail("string.format('%p', {})", "'%p' is not available");
    expect_fail("string.format('%-20p', print)", "'%p' is not available");
}

static void test_panel_library(void **state)
{
    (void)state;
    expect_done("assert(type(panel) == 'table' and panel.version >= 1)\n"
                "assert(panel.moderator(ctx.experts, '').id == 'e1')\n"
                "local b = panel.ballot_of({ data = { position = 'x', confidence = 1 } }, "
                "ctx.experts[1], { 'x', 'y' })\n"
                "assert(b.expert == 'e1' and b.distribution.x == 1 and b.ranking[1] == 'x')");
    /* Writes fail, the metatable is protected, and the library table is out of reach. */
    expect_fail("panel.finite = nil", "panel is read-only (cannot set 'finite')");
    expect_fail("panel[1] = true", "panel is read-only");
    expect_fail("setmetatable(panel, nil)", "protected metatable");
    expect_done("assert(getmetatable(panel) == 'panel' and next(panel) == nil)\n"
                "for _ in pairs(panel) do error('the library is listed') end");
    /* rawset shadows a name in this chunk only; a script's own string library is not the
     * library's; the consensus chunk loaded afterwards sees the library whole. */
    expect_done("rawset(panel, 'finite', function() return 'mine' end)\n"
                "assert(panel.finite(0/0) == 'mine')\n"
                "string.format = nil; string.gsub = nil; string.lower = nil\n"
                "assert(panel.position_line('a', { position = 'p', confidence = 0.5, reason = 'r' "
                "}) == '- a: p (confidence 0.50) \\u{2014} r')\n"
                "assert(panel.similarity('Red apples', 'red APPLES', {}) == 1)\n"
                "assert(ctx:consensus('lib', {}, {}).position == 'INTACT')");
    /* Its functions reach nothing the script could not, and run under the script's limits. */
    expect_done("local f = panel.finite\n"
                "assert(_ENV.os == nil and panel.os == nil and panel.load == nil)\n"
                "assert(panel.debug == nil and panel.io == nil and panel._ENV == nil)");
    expect_fail("for i = 1, 1e8 do panel.finite(i) end", "instruction budget exceeded");
    expect_fail("panel.dissent({ 1 }, 'k', function() while true do end end)",
                "instruction budget exceeded");
    /* Loading happens on the first read, inside the reading script's memory limit: a state
     * with room for the script but not for the library fails that script and nothing else. */
    script_limits lim;
    limits(&lim);
    lim.memory_bytes = 44 * 1024;
    outcome o;
    run_body_lim(&lim, "local x = 1", &o);
    assert_int_equal(o.kind, SCRIPT_DONE);
    run_body_lim(&lim, "local ok = pcall(function() return panel.finite end)", &o);
    assert_int_equal(o.kind, SCRIPT_FAILED);
    assert_non_null(strstr(o.error, "memory limit exceeded"));
    healthy();
    /* The embedded copy is the reviewed one. */
    size_t len = 0;
    const char *src = embed_get("strategies/lib/panel.lua", &len);
    assert_non_null(src);
    char hex[IDS_SHA256_HEX_LEN + 1];
    ids_sha256_hex(src, len, hex);
    if (strcmp(hex, PANEL_LIB_SHA256) != 0)
        fail_msg("strategies/lib/panel.lua changed (sha256 %s); released functions must not "
                 "change behaviour: see the comment above PANEL_LIB_SHA256",
                 hex);
}

/* Weak keys (ephemerons) make a collection's uninterruptible atomic step quadratic in them
 * (review: 120,000 chained weak keys held a runner for six minutes on a 1 s budget), and Lua
 * reads __mode at every collection: scripts get no weak keys, whenever __mode is written. */
static void test_no_weak_keys(void **state)
{
    (void)state;
    expect_fail("setmetatable({}, { __mode = 'k' })", "weak keys (__mode 'k') are not available");
    expect_fail("setmetatable({}, { __mode = 'kv' })", "weak keys");
    /* written after setmetatable, through the script's table or getmetatable: no effect, the
     * keys stay strong through collections (the 8 MiB of garbage below runs several) */
    static const char later[] =
        "local mt = {} local e = setmetatable({}, mt) %s\n"
        "for i = 1, 200 do e[{}] = i end\n"
        "for i = 1, 512 do local g = string.rep('x', 16384) .. i end\n"
        "local n = 0 for _ in pairs(e) do n = n + 1 end assert(n == 200, n)";
    static const char *const writes[] = {"mt.__mode = 'k'", "getmetatable(e).__mode = 'k'",
                                         "rawset(mt, '__mode', 'k')"};
    char body[1024];
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        snprintf(body, sizeof body, later, writes[i]);
        expect_done(body);
    }
    /* setmetatable copies a metatable's metamethods in C: charged a unit a key (review: a
     * call over 400,000 keys took 0.45 s for one unit) */
    expect_fail("local mt = {} for i = 1, 60000 do mt['__k' .. i] = i end\n"
                "for i = 1, 60 do setmetatable({}, mt) end",
                "instruction budget exceeded");
    /* weak values are harmless (no convergence) and still work */
    expect_done("local c = setmetatable({}, { __mode = 'v' }) c[1] = {}\n"
                "for i = 1, 512 do local g = string.rep('x', 16384) .. i end\n"
                "assert(c[1] == nil)");
    /* the rest of metatables as in Lua: identity, methods added later through __index,
     * protection; metamethods are those of the metatable when setmetatable was called */
    expect_done("local C = {} C.__index = C\n"
                "local o = setmetatable({}, C) function C:hi() return 'hi' end\n"
                "assert(getmetatable(o) == C and o:hi() == 'hi')\n"
                "local D = setmetatable({}, { __index = C }) D.__index = D\n"
                "local d = setmetatable({}, D) assert(d:hi() == 'hi' and getmetatable(d) == D)\n"
                "local p = setmetatable({}, { __metatable = 'locked' })\n"
                "assert(getmetatable(p) == 'locked' and not pcall(setmetatable, p, {}))\n"
                "local mt = {} local t = setmetatable({}, mt)\n"
                "mt.__index = function() return 1 end assert(t.x == nil)\n"
                "setmetatable(t, mt) assert(t.x == 1)\n"
                "local a, b = setmetatable({}, C), setmetatable({}, C)\n"
                "assert(getmetatable(a) == getmetatable(b) and setmetatable(a, nil) == a and "
                "getmetatable(a) == nil)");
}

static void test_finalizers_and_close(void **state)
{
    (void)state;
    expect_fail("setmetatable({}, { __gc = function() while true do end end })",
                "__gc metamethods are not allowed");
    /* __gc added after setmetatable is ignored (Lua itself ignores it too). */
    expect_done("local mt = {}; local t = setmetatable({}, mt); mt.__gc = function() while true "
                "do end end; t = nil");
    outcome o;
    run_body("local x <close> = setmetatable({}, { __close = function() while true do end end "
             "})\nwhile true do end",
             &o);
    assert_int_equal(o.kind, SCRIPT_FAILED);
    assert_non_null(strstr(o.error, "instruction budget exceeded"));
    assert_true(o.ms < 3000);
    healthy();
    expect_fail("error(setmetatable({}, { __tostring = function() while true do end end }))",
                "error object is a table value");
}

/* ---- CPU limits --------------------------------------------------------------------------- */

static void test_endless_loops(void **state)
{
    (void)state;
    expect_fail("while true do end", "instruction budget exceeded");
    expect_fail("::again:: goto again", "instruction budget exceeded");
    expect_fail("local function f() return f() end return f()", "instruction budget exceeded");
    expect_fail("table.sort({3, 2, 1, 5, 4}, function(a, b) while true do end end)",
                "instruction budget exceeded");
    expect_fail("('aaaa'):gsub('.', function() while true do end end)",
                "instruction budget exceeded");
    /* A C loop whose only Lua-visible work is metamethod calls to C functions. */
    expect_fail("local t = setmetatable({}, { __len = function() return 1 << 30 end, __index = "
                "rawlen })\ntable.sort(t)",
                "instruction budget exceeded");
    expect_fail("table.move({}, 1, 1e15, 2)", "range of more than");
}

/* Limits where only the clock stops a script. */
static void clock_limits(script_limits *lim, int64_t timeout_ms)
{
    limits(lim);
    lim->instructions = (int64_t)1 << 40;
    lim->timeout_ms = timeout_ms;
}

/* Runs body under a 200 ms clock: it must fail on the time budget within about one long C
 * call, not hundreds. */
/* Runs body on a time budget of budget_ms and expects the budget to stop it within most_ms. */
static void expect_time_trip_within(int budget_ms, int most_ms, const char *body)
{
    script_limits lim;
    clock_limits(&lim, budget_ms);
    outcome o;
    run_body_lim(&lim, body, &o);
    if (o.kind != SCRIPT_FAILED || strstr(o.error, "time budget exceeded") == NULL ||
        o.ms > most_ms)
        fail_msg("body:\n%s\nexpected the time budget to stop it, got %d after %lld ms: %s", body,
                 (int)o.kind, (long long)o.ms, o.error);
    healthy();
}

static void expect_time_trip(const char *body)
{
    expect_time_trip_within(200, 1500, body);
}

static void test_time_budget(void **state)
{
    (void)state;
    expect_time_trip("while true do end");
    expect_time_trip("while true do local s = string.rep('x', 100000) end");
    /* Few calls, each long in C. */
    expect_time_trip("local t = {} for i = 1, 200000 do t[i] = (i * 7919) % 100003 end\n"
                     "while true do table.sort(t, nil) table.sort(t, nil) end");
}

static void test_limit_not_catchable(void **state)
{
    (void)state;
    expect_fail("while true do pcall(function() while true do end end) end",
                "instruction budget exceeded");
    expect_fail("local ok = pcall(function() while true do end end); return 'main'",
                "instruction budget exceeded");
    expect_fail("xpcall(function() while true do end end, function() while true do end end)",
                "instruction budget exceeded");
    expect_fail("for i = 1, 10 do pcall(string.rep, 'x', 1 << 28) end", "memory limit exceeded");
    expect_fail("local ok = pcall(function() local t = {} for i = 1, 1e9 do t[i] = i end end)\n"
                "local t2 = {} for i = 1, 10 do t2[i] = i end",
                "memory limit exceeded");
    expect_fail("local f = load('while true do end'); pcall(f)", "instruction budget exceeded");
    /* A memory error inside a host call (json.decode building 300,000 tables) trips the limit
     * too: the script's pcall does not catch it. */
    expect_fail("local ok = pcall(json.decode, '[' .. string.rep('[],', 300000) .. '0]')\n"
                "local t = {} for i = 1, 10 do t[i] = i end",
                "memory limit exceeded");
}

/* ---- memory ------------------------------------------------------------------------------- */

static void test_memory_bombs(void **state)
{
    (void)state;
    expect_fail("local s = string.rep('x', 1 << 30)", "memory limit exceeded");
    expect_fail("local t = {} for i = 1, 1e9 do t[i] = i end", "memory limit exceeded");
    expect_fail("local s = 'x' while true do s = s .. s end", "memory limit exceeded");
    expect_fail("local t = {} while true do t[#t + 1] = tostring(#t) .. 'padding' end",
                "memory limit exceeded");
    expect_fail("local s = ('x'):rep(1000) for i = 1, 20 do s = s:gsub('.', '%0%0') end",
                "memory limit exceeded");
    expect_fail("local s = string.rep('ab', 1 << 20, ',')  local t = {} for i = 1, 64 do t[i] = "
                "s .. i end",
                "memory limit exceeded");
}

/* Keys that are multiples of 2^K-1 share one chain in a hash part of 2^K nodes, and growing
 * the table to that size reinserts them along it: 2^18 of them held the thread ~60 s in one
 * instruction. The node array of that resize is refused before the reinsertion starts,
 * whichever way the keys come in (the keys below do not collide until then). */
#define COLLIDING(store) "local m, t = (1 << 17) - 1, {} for j = 1, (1 << 16) + 1 do " store " end"

static void test_hash_collisions(void **state)
{
    (void)state;
    expect_fail(COLLIDING("t[j * m] = true"),
                "table too large: a table may hold at most 65536 keys");
    expect_fail(COLLIDING("rawset(t, j * m, 1)"), "table too large");
    expect_fail(COLLIDING("table.move({ 1 }, 1, 1, j * m, t)"), "table too large");
    /* table.move's own loop (a table with a metatable), a metamethod between its stores */
    expect_fail(COLLIDING("table.move(setmetatable({ 1 }, { __index = function() end }), 1, 1, "
                          "j * m, t)"),
                "table too large");
    /* sort swaps t[1] and t[#t], which __len chooses (then a read raises so that it stops) */
    expect_fail("local m, t, n, reads = (1 << 17) - 1, {}, 0, 0\n"
                "setmetatable(t, { __len = function() return n end, __index = function(_, i)\n"
                "  if i ~= 1 then reads = reads + 1 end if reads > 1 then error('stop') end\n"
                "  return -i end })\n"
                "for j = 1, 1 << 16 do rawset(t, 5 + j * m, true) end\n"
                "n = 1000000 pcall(table.sort, t)",
                "table too large");
    expect_fail("local m, t = (1 << 17) - 1, setmetatable({}, { __newindex = rawset })\n"
                "for j = 1, (1 << 16) + 1 do t[j * m] = 1 end",
                "table too large");
    expect_fail("local t = {} for i = 1, 100000 do t['k' .. i] = i end", "table too large");
    /* the compiler's table of a chunk's constants (the product's memory limit: compiling them
     * takes more than the tests' 16 MiB) */
    script_limits lim;
    script_limits_default(&lim);
    outcome o;
    run_body_lim(&lim,
                 "local m, k = (1 << 17) - 1, {} for j = 1, (1 << 16) + 1 do k[j] = j * m end\n"
                 "load('return {' .. table.concat(k, ',') .. '}')",
                 &o);
    assert_int_equal(o.kind, SCRIPT_FAILED);
    assert_non_null(strstr(o.error, "table too large"));
    /* C functions' buffers of a node array's size are no tables, in or out of a table
     * function, nor after one raised */
    expect_done("local s = string.rep('x', 6 << 20) assert(#s == 6 << 20)");
    expect_done("local src = setmetatable({}, { __index = function() return #string.rep('x', 3 "
                "<< 20) end })\n"
                "assert(table.move(src, 1, 1, 1, {})[1] == 3 << 20)");
    expect_done("local ok = xpcall(function() rawset({}, 0 / 0, 1) end,\n"
                "  function(m) return #string.rep('a', 3 << 20) end)\n"
                "assert(not ok)\n"
                "local ok2 = pcall(table.insert, {}, 5, 1, 2) assert(not ok2)\n"
                "assert(#string.rep('b', 3 << 20) == 3 << 20)");
    /* up to the limit, and arrays (keys 1..n) past it */
    expect_done("local t = {} for i = 1, 65536 do t['k' .. i] = i end");
    expect_done("local a = {} for i = 1, 300000 do a[i] = i end assert(#a == 300000)");
}

/* Floats 1 + k*2^-52 share one hash chain at any table size, so a lookup that misses walks
 * it: C loops that look up many keys of a plain table in one call (unpack, gsub with a table)
 * ran tens of seconds between two checks of the budget (review: 55 s). */
#define ONE_CHAIN "local T = {} for k = 1, 8192 do T[1 + k * 2^-52] = true end\n"

static void test_lookups_in_one_chain(void **state)
{
    (void)state;
    expect_time_trip(ONE_CHAIN "while true do local n = select('#', table.unpack(T, 1, 400000)) "
                               "end");
    expect_time_trip(ONE_CHAIN "while true do string.gsub(string.rep('x', 2000000), '()', T) end");
    /* a table without a metatable still unpacks and replaces as Lua's own do */
    expect_done("local a, b, c = table.unpack({ 1, 2, 3 }) assert(a + b + c == 6)\n"
                "assert(select('#', table.unpack({}, 1, 3)) == 3)\n"
                "assert(('abc'):gsub('%w', { a = 'x', b = false }) == 'xbc')");
    /* string.unpack makes its values in one C call: at most 4096 a call */
    expect_fail("string.unpack(('c1'):rep(5000), ('a'):rep(5000))", "more than 4096 values");
    expect_done("local t = { string.unpack(('c1'):rep(4096) .. 'Xi4 x', ('a'):rep(4097)) }\n"
                "assert(#t == 4097 and t[4097] == 4098)");
    /* json.decode builds its tables within the limit too */
    expect_fail("local p = {} for i = 1, 70000 do p[i] = '\"' .. i .. '\":1' end\n"
                "json.decode('{' .. table.concat(p, ',') .. '}')",
                "table too large");
}

/* A full table of floats that share one chain: each key removed and another added makes a
 * rehash at the same size (2^14 keys: ~0.2 s; 2^15: ~1 s), five instructions apart, where the
 * count hook looks only every 1,000 (review: ~200 of them at the limit between two looks,
 * minutes). The budget is checked at every such rehash, and from 2^15 nodes on at every
 * instruction. */
static void test_rehashes_are_budgeted(void **state)
{
    (void)state;
    for (int bits = 14; bits <= 15; bits++) {
        char body[256];
        snprintf(body, sizeof body,
                 "local T, e = {}, 2^-52 for k = 1, 1 << %d do T[1 + k * e] = true end\n"
                 "for i = 1, 150 do T[1 + i * e] = nil T[2 + 2 * i * e] = true end",
                 bits);
        expect_time_trip_within(1500, 6000, body);
    }
}

/* The host adds keys to tables a script can fill: ctx ("state", at every node's end, outside
 * any budget) and a consensus result ("algorithm"). Filled to the limit with the host's key
 * removed, ctx grew past it from C (review: 57 s in one step, and the panel completed). */
static void test_host_writes_keep_the_limit(void **state)
{
    (void)state;
    const char *src = "return { name = 'sandbox', start = 'main', nodes = { main = function(ctx)\n"
                      "  ctx.state = nil\n"
                      "  local n = 0 for _ in pairs(ctx) do n = n + 1 end\n"
                      "  for k = 1, 65536 - n do ctx[k + 0.5] = true end\n"
                      "  return 'main' end } }\n";
    script_limits lim;
    limits(&lim);
    script_panel *sp = NULL;
    ap_err err = {0};
    assert_int_equal(new_panel(&lim, src, &sp, &err), AP_OK);
    script_step step;
    assert_int_equal(script_panel_run_node(sp, "main", 42, &step), AP_OK);
    assert_int_equal(step.outcome, SCRIPT_NEXT);
    char *json = NULL;
    ap_status rc = script_panel_state_save(sp, &json, &err);
    free(json);
    assert_int_not_equal(rc, AP_OK);
    if (strstr(err.msg, "table too large") == NULL)
        fail_msg("state save: %s", err.msg);
    script_panel_free(sp);
    healthy();
}

/* ---- recursion and the C stack ------------------------------------------------------------ */

static void test_recursion(void **state)
{
    (void)state;
    /* The Lua stack grows until the stack limit or the memory ceiling, whichever is first. */
    expect_fail("local function f() return 1 + f() end f()", "stack overflow|memory limit");
    expect_fail("local function f(s) return (s:gsub('.', f)) end f('aaaa')", "stack overflow");
    expect_fail("local t = setmetatable({}, { __index = function(t, k) return t[k] end }) "
                "local x = t.x",
                "stack overflow");
    /* pcall nested until the C stack is exhausted: caught at each level, no crash. */
    expect_done("local function f() return pcall(f) end f()");
    expect_fail("local s = string.rep('(', 300) .. string.rep(')', 300) local f, e = load('return "
                "' .. s) error(e)",
                "C stack overflow|too many");
    /* Errors while handling errors (CVE-2022-33099 territory) and handlers that recurse. */
    expect_done("local ok, e = xpcall(error, function() error('again') end) assert(not ok)");
    expect_done("local function h(e) return select(2, xpcall(error, h, e)) end\n"
                "local ok = xpcall(error, h, 'x') assert(not ok)");
    /* _ENV declared <const> once crashed the parser (CVE-2022-28805). */
    expect_fail("local f, e = load('local _ENV <const> = {}; x = 1') if f then f() end "
                "error(e or 'attempt')",
                "attempt");
    expect_done("local t = {} t.t = t local ok, e = pcall(json.encode, t) assert(not ok and "
                "e:find('nested deeper'))");
    expect_done("local ok, e = pcall(json.decode, string.rep('[', 100000) .. "
                "string.rep(']', 100000))\nassert(not ok)");
}

/* ---- patterns and json --------------------------------------------------------------------- */

/* Library calls that loop in C, where no hook runs, for as long as their arguments say. */
static void test_long_c_loops(void **state)
{
    (void)state;
    expect_done("assert(string.rep('', math.maxinteger) == '' and ('x'):rep(0) == '')\n"
                "assert(('ab'):rep(3, ',') == 'ab,ab,ab' and (''):rep(3, '-') == '--')");
    expect_fail("table.remove(setmetatable({}, { __len = function() return math.maxinteger "
                "end }), 1)",
                "instruction budget exceeded");
    expect_fail("table.insert(setmetatable({}, { __len = function() return math.maxinteger - 1 "
                "end }), 1, 'x')",
                "instruction budget exceeded");
    expect_done("local t = { 1, 2, 3 }\n"
                "table.insert(t, 4) table.insert(t, 1, 0)\n"
                "assert(table.concat(t, ',') == '0,1,2,3,4')\n"
                "assert(table.remove(t) == 4 and table.remove(t, 1) == 0)\n"
                "assert(table.concat(t, ',') == '1,2,3' and table.remove({}) == nil)\n"
                "assert(table.remove(t, 4) == nil and #t == 3)\n"
                "assert(not pcall(table.insert, t, 9, 'x') and not pcall(table.insert, t))\n"
                "local store = {}\n"
                "local p = setmetatable({}, { __index = store, __newindex = store,\n"
                "  __len = function() return #store end })\n"
                "table.insert(p, 'a') table.insert(p, 1, 'b')\n"
                "assert(store[1] == 'b' and store[2] == 'a' and table.remove(p, 1) == 'b')\n"
                "assert(select(2, pcall(table.insert, 1, 2)):find('table expected'))\n"
                "local neg = setmetatable({}, { __len = function() return -5 end })\n"
                "table.insert(neg, 1, 'x') assert(rawget(neg, 1) == 'x')");
    /* A table reached through a chain of __index or __newindex tables costs every access the
     * whole chain, in C where no hook runs (review: table.move over a 1,990-table chain ran
     * for 8 minutes on a 1 s budget): the table functions charge the chain. */
    static const char chain[] = "local proxy = {} local cur = proxy\n"
                                "for i = 1, 1990 do local nxt = {} setmetatable(cur, "
                                "{ __index = nxt, __newindex = nxt }) cur = nxt end\n";
    char body[1024];
    static const char *const walks[] = {
        "table.move(proxy, 1, 16777215, 1, {})",
        "table.move({}, 1, 16777215, 1, proxy)",
        "local n = select('#', table.unpack(proxy, 1, 999000))",
        "for i = 1, 200000 do rawset(cur, i, 'x') end local s = table.concat(proxy, '', 1, 200000)",
        "local p = setmetatable({}, { __index = proxy, __newindex = proxy,\n"
        "  __len = function() return 100000 end }) table.insert(p, 1, 'x')",
        "local p = setmetatable({}, { __index = proxy, __newindex = proxy,\n"
        "  __len = function() return 100000 end }) table.remove(p, 1)",
        /* a replacement table looked up through the chain at every match */
        "local r = setmetatable({}, { __index = proxy }) local s = ('a'):rep(4000000):gsub('.', r)",
        /* a chain grown mid-loop by a metamethod the loop calls (review) */
        "local p = {} setmetatable(p, { __index = function(t, k)\n"
        "  setmetatable(p, { __index = proxy }) return nil end })\n"
        "local n = select('#', table.unpack(p, 1, 999000))",
        "local A = {} local src = setmetatable({}, { __index = A }) local dst = {}\n"
        "setmetatable(dst, { __newindex = function(d, k, v)\n"
        "  setmetatable(A, { __index = proxy }) setmetatable(d, nil) rawset(d, k, v) end })\n"
        "table.move(src, 1, 16777215, 1, dst)",
        "local p = {} setmetatable(p, { __len = function() return 100000 end,\n"
        "  __newindex = function() end, __index = function()\n"
        "    setmetatable(p, { __index = proxy, __newindex = proxy }) return nil end })\n"
        "table.remove(p, 1)",
    };
    for (size_t i = 0; i < sizeof walks / sizeof walks[0]; i++) {
        snprintf(body, sizeof body, "%s%s", chain, walks[i]);
        expect_fail(body, "instruction budget exceeded");
    }
    /* Comparing strings calls strcoll once per NUL byte they share: one instruction of
     * 4 MiB of NULs takes tens of ms, and a two-instruction loop of them ran minutes between
     * count hooks (review). Once a string past 64 KiB exists, every instruction is checked,
     * so the time budget holds within about one comparison. */
    script_limits lim;
    limits(&lim);
    lim.timeout_ms = 1000;
    lim.instructions = INT64_C(1) << 40;
    outcome o;
    run_body_lim(&lim,
                 "local a = ('\\0'):rep(4 * 1024 * 1024) local b = ('\\0'):rep(4 * 1024 * 1024)\n"
                 "repeat until a < b",
                 &o);
    assert_int_equal(o.kind, SCRIPT_FAILED);
    if (strstr(o.error, "time budget exceeded") == NULL || o.ms > 5000)
        fail_msg("NUL comparisons: %s after %lld ms", o.error, (long long)o.ms);
    /* ... also where the strings were made before the node (review: made at the top level or
     * in an earlier node, they were compared under the cheap count for minutes) */
    run_source(&lim,
               "local a = ('\\0'):rep(4 * 1024 * 1024) local b = ('\\0'):rep(4 * 1024 * 1024)\n"
               "return { name = 'sandbox', start = 'main', consensus = 'test', nodes = {\n"
               "  main = function(ctx) repeat until a < b end } }\n",
               &o);
    assert_int_equal(o.kind, SCRIPT_FAILED);
    if (strstr(o.error, "time budget exceeded") == NULL || o.ms > 5000)
        fail_msg("NUL comparisons of strings made before the node: %s after %lld ms", o.error,
                 (long long)o.ms);
    script_panel *sp = NULL;
    ap_err err = {0};
    assert_int_equal(new_panel(&lim,
                               "local S = {}\n"
                               "return { name = 'sandbox', start = 'make', nodes = {\n"
                               "  make = function(ctx) S.a = ('\\0'):rep(4 * 1024 * 1024)\n"
                               "    S.b = ('\\0'):rep(4 * 1024 * 1024) return 'cmp' end,\n"
                               "  cmp = function(ctx) local a, b = S.a, S.b\n"
                               "    repeat until a < b end } }\n",
                               &sp, &err),
                     AP_OK);
    script_step step;
    assert_int_equal(script_panel_run_node(sp, "make", 42, &step), AP_OK);
    assert_int_equal(step.outcome, SCRIPT_NEXT);
    int64_t t0 = clock_mono_ms();
    assert_int_equal(script_panel_run_node(sp, "cmp", 42, &step), AP_OK);
    int64_t ms = clock_mono_ms() - t0;
    if (step.outcome != SCRIPT_FAILED || strstr(step.error, "time budget exceeded") == NULL ||
        ms > 5000)
        fail_msg("NUL comparisons of strings made in an earlier node: %s after %lld ms", step.error,
                 (long long)ms);
    script_panel_free(sp);
    healthy();
    /* gsub walks its replacement at every match: capture references to empty captures add
     * nothing, so the memory limit never stops them (review: 24 s on a 1 s budget) */
    expect_fail("local r = ('a'):rep(2000):gsub('x*', ('%0'):rep(1000000))",
                "gsub: a replacement with this many capture references");
    expect_done("local s, n = (('key=value '):rep(50000)):gsub('(%w+)=(%w+)', '%2=%1')\n"
                "assert(n == 50000 and s:sub(1, 10) == 'value=key ')\n"
                "assert((('ab'):rep(100000)):gsub('b', ('<br/>'):rep(4)) ~= nil)\n"
                "local d = setmetatable({}, { __index = function(t, k) return k:upper() end })\n"
                "assert(('abc'):gsub('%w', d) == 'ABC')");
    /* short chains on small tables cost what they did */
    expect_done("local base = { 1, 2, 3 } local p = setmetatable({}, { __index = base })\n"
                "assert(select('#', table.unpack(p, 1, 3)) == 3 and table.concat(p, ',', 1, 3) "
                "== '1,2,3')\n"
                "local t = table.move(p, 1, 3, 1, {}) assert(t[3] == 3)\n"
                "assert(table.concat({ 'a', 'b' }) == 'ab' and select('#', table.unpack({ 1, 2 })) "
                "== 2)");
    /* Plain searches are linear, whatever the needle repeats. */
    expect_done("local s = ('a'):rep(3000000)\n"
                "assert(s:find(('a'):rep(1000000) .. 'b', 1, true) == nil)\n"
                "assert(s:find(('a'):rep(1000000) .. 'b') == nil)\n"
                "assert(select(2, s:find(('a'):rep(10), 5, true)) == 14)\n"
                "assert(('hello world'):find('o w') == 5 and ('x.y'):find('.', 1, true) == 2)\n"
                "assert(('abc'):find('', 4) == 4 and ('abc'):find('', 5) == nil)\n"
                "assert(('abcabc'):find('c', -2) == 6 and ('abc'):find('a', -10) == 1)\n"
                "assert(('abc'):find('a', math.mininteger) == 1)\n"
                "assert(('abc'):find('c', math.maxinteger) == nil)\n"
                "assert(('a\\0b'):find('\\0b', 1, true) == 2)");
    /* Patterns: a long literal is compared again at every start, a [set] is read whole at
     * every test, and the guard itself scans the text once per repeated item. */
    expect_fail("string.find(('a'):rep(1500000), ('a'):rep(700000) .. '.b')",
                "pattern too complex");
    expect_fail("string.find(('a'):rep(200000), '[' .. ('b'):rep(100000) .. ']')",
                "pattern too complex");
    expect_fail("string.find(('b'):rep(1000000), ('a*'):rep(5000))", "pattern too complex");
    /* The guard's own estimate is bounded before it is made (review: 32 repeated sets of
     * 1,000 bytes that match nothing, over 1 MiB, made the estimate run for 52 s), also for
     * the run an anchored first item reads. */
    expect_fail("string.find(('a'):rep(1 << 20), ('[' .. ('b'):rep(1000) .. ']*'):rep(32))",
                "pattern too complex");
    expect_fail("string.find(('a'):rep(1 << 20), '^[' .. ('b'):rep(999) .. 'a]*c')",
                "pattern too complex");
    expect_done("assert(#(('a'):rep(1 << 20)):match('^[abc]*') == 1 << 20)");
    /* and ordinary patterns on ordinary text of a few hundred KiB are not refused */
    expect_done("local text = (('x'):rep(100) .. '\\n'):rep(2500)\n"
                "local n = 0 for l in text:gmatch('[^\\n]+') do n = n + 1 end assert(n == 2500)\n"
                "local code = ('        ' .. ('y'):rep(100) .. '\\n'):rep(2400)\n"
                "assert(#code:match('^%s*(.-)%s*$') == #code - 9)\n"
                "local line = ('field,'):rep(20)\n"
                "assert(select(20, line:match(('([^,]*),'):rep(20))) == 'field')");
    expect_done("local s = ('a'):rep(9000) assert(s:find('a*b') == nil)");
    /* The compiler links and/or chains in quadratic time. */
    expect_fail("local f, e = load('return ' .. ('a or '):rep(100000) .. 'a') error(e)",
                "more than 20000 'and', 'or'");
    /* however Lua's lexer would see the text (a comment ended by \r, a \z escape) */
    expect_fail("local f, e = load('--x\\rreturn ' .. ('a or '):rep(30000) .. 'a') error(e)",
                "more than 20000 'and', 'or'");
    expect_fail("local f, e = load('local s = \"\\\\z\\n\" return ' .. ('a or '):rep(30000) .. "
                "'a') error(e)",
                "more than 20000 'and', 'or'");
    expect_done("local f = load('return ' .. ('a or '):rep(1000) .. 'true -- or or\\n'\n"
                "  .. '--[[ and and ]] or \"or\" or [==[ or ]==] or nor or orr')\n"
                "assert(f() == true)");
}

static void test_pattern_backtracking(void **state)
{
    (void)state;
    expect_fail("string.find(string.rep('a', 5000), '.-.-.-.-.-b')", "pattern too complex");
    expect_fail("('a'):rep(30):find(('a*'):rep(30) .. 'b')", "pattern too complex");
    expect_fail("for w in string.rep('a', 20000):gmatch('(.-)(.-)(.-)x') do end",
                "pattern too complex");
    expect_fail("string.rep('a', 20000):gsub('(a*)*b', '')", "pattern too complex");
    expect_fail("string.match(string.rep('(', 10000), '%b()%b()%b()x')", "pattern too complex");
    /* A malformed item the matcher would reach only after all the backtracking before it
     * (red team: an hour on a 1 s budget) is refused up front, with Lua's own message. */
    expect_fail("string.rep('a', 5000):find('a*a*x%')", "malformed pattern (ends with '%')");
    expect_fail("string.rep('a', 5000):gsub('a*a*x[', '')", "malformed pattern (missing ']')");
    expect_fail("string.rep('a', 5000):match('a*a*x%f')", "missing '[' after '%f' in pattern");
    expect_fail("for w in string.rep('a', 5000):gmatch('a*a*x%b') do end",
                "malformed pattern (missing arguments to '%b')");
    /* An anchored pattern is costed where init starts it, not at the subject's first byte
     * (red team: 54 s on a 1 s budget). */
    expect_fail("local s = 'b' .. string.rep('a', 100000) s:find('^a*a*c', 2)",
                "pattern too complex");
    expect_fail("local s = 'b' .. string.rep('a', 100000) s:match('^a*a*c', -20000)",
                "pattern too complex");
    /* Every step may test each item of a long pattern again (red team: 12 s in one call). */
    expect_fail("string.rep('a', 9999):find('a*' .. string.rep('a', 30) .. 'b')",
                "pattern too complex");
    /* Ordinary patterns on ordinary text still work, init included. */
    expect_done(
        "assert(('xxabc'):find('^abc', 3) == 3 and ('xxabc'):match('^(%a+)', -3) == 'abc')\n"
        "assert(('abc'):find('b', 10) == nil and ('abc'):match('.', 0) == 'a')\n"
        "assert(select(2, ('k=v; k2=v2'):gsub('(%w+)=(%w+)', '%2=%1')) == 2)");
    expect_done("local s = ('  hello world  '):rep(200)\n"
                "assert(s:match('^%s*(.-)%s*$'):sub(1, 5) == 'hello')\n"
                "local n = 0 for w in s:gmatch('%a+') do n = n + 1 end assert(n == 400)\n"
                "assert(('a,b,c'):gsub(',', ';') == 'a;b;c')\n"
                "assert(string.find('x.y', '.', 1, true) == 2)");
}

static void test_json_limits(void **state)
{
    (void)state;
    expect_fail("json.decode(string.rep('[', 70) .. string.rep(']', 70))", "nested deeper");
    expect_fail("json.decode(string.rep(' ', 2 * 1024 * 1024))", "larger than");
    expect_fail("local s = string.rep('x', 1000000) local t = {} for i = 1, 10 do t[i] = s end "
                "json.encode(t)",
                "larger than");
    expect_fail("json.encode({ f = print })", "cannot encode a function");
    /* The text json.encode builds is memory of the script's, counted while it is built and
     * until its copy is in the Lua heap: 6 MiB of text from a 6 MiB string is 18 MiB at the
     * peak, over the 16 MiB limit (the Lua heap alone held 12 MiB). */
    expect_fail("local t = { s = string.rep('x', 6 * 1024 * 1024) } local j = json.encode(t)",
                "memory limit exceeded");
    expect_done("local t = { s = string.rep('x', 3 * 1024 * 1024) } local j = json.encode(t)\n"
                "assert(#j == 3 * 1024 * 1024 + 8)");
    /* json.decode's tokens (20 bytes for each of "0,") are counted while the values are built
     * from them: 10 MiB of them and 8 MiB of array pass the 16 MiB limit (review: uncounted,
     * 1 MiB of text held 10-20 MB outside every limit) */
    expect_fail("local t = json.decode('[' .. ('0,'):rep(524000) .. '0]')",
                "memory limit exceeded");
    expect_done("local t = json.decode('[' .. ('0,'):rep(99999) .. '0]') assert(#t == 100000)");
    expect_done("local v = json.decode('{\"a\":[1,2,{\"b\":null}],\"c\":\"\\\\u00e9\"}')\n"
                "assert(v.a[2] == 2 and v.c == '\\u{e9}')\n"
                "assert(json.encode({ b = 1, a = { 1, 2 } }) == '{\"a\":[1,2],\"b\":1}')\n"
                "assert(json.encode(json.array({})) == '[]' and json.encode({}) == '{}')\n"
                "assert(json.encode({ x = 0/0 }) == '{\"x\":null}')\n"
                "assert(json.encode('\\255') == '\"\\u{fffd}\"')");
}

/* Sequences become arrays, everything else objects with sorted keys. */
static void test_json_encode_shapes(void **state)
{
    (void)state;
    expect_done(
        "assert(json.encode({ [2] = 'x' }) == '{\"2\":\"x\"}')\n"
        "assert(json.encode({ 1, 2, 3 }) == '[1,2,3]' and json.encode({ 1, a = 2 }) == "
        "'{\"1\":1,\"a\":2}')\n"
        "assert(json.encode({ [1] = 1, [2] = 2, [4] = 4 }) == '{\"1\":1,\"2\":2,\"4\":4}')\n"
        "assert(json.encode({}) == '{}' and json.encode(json.array({})) == '[]')\n"
        "assert(json.encode({ [1.5] = true }) == '{\"1.5\":true}')\n"
        "local t = {} for i = 1, 20 do t['k' .. (21 - i)] = i end\n"
        "local s = json.encode(t)\n"
        "assert(s:sub(1, 24) == '{\"k1\":20,\"k10\":11,\"k11\":' and s:sub(-8) == '\"k9\":12}')\n"
        "assert(json.encode({ b = { 3, { z = 1, y = { } } }, a = 0.25 }) == "
        "'{\"a\":0.25,\"b\":[3,{\"y\":{},\"z\":1}]}')\n"
        "assert(not pcall(json.encode, { [true] = 1 }))\n");
    /* Number keys sorted and grown past the small array: each key keeps its own value. */
    expect_done("assert(json.encode({ [3] = 'three', [2] = 'two' }) == "
                "'{\"2\":\"two\",\"3\":\"three\"}')\n"
                "local t = {} for i = 1, 5000 do t[i * 2] = i end\n"
                "local n = 0 for k, v in pairs(json.decode(json.encode(t))) do\n"
                "  assert(tonumber(k) == v * 2) n = n + 1 end\n"
                "assert(n == 5000)");
}

/* Strict JSON is read through a token view, anything else through cJSON: both give the same
 * values, and what cJSON refuses stays refused. */
static void test_json_decode_paths(void **state)
{
    (void)state;
    expect_done(
        "local v = "
        "json.decode('{\"k\":\"a\\\\\"b\\\\\\\\c\\\\n\\\\u00e9\\\\ud83d\\\\ude00\",\"n\":[1,null,3]"
        ",\"e\":[],' ..\n"
        "  "
        "'\"o\":{},\"z\":-0,\"big\":9007199254740993,\"f\":0.5,\"x\":1e2,\"t\":true,\"u\":false,"
        "\"nul\":null,' ..\n"
        "  '\"d\":1,\"d\":2,\"\\\\u0041\":1}')\n"
        "assert(v.k == 'a\"b\\\\c\\n\\u{e9}\\u{1f600}' and v.A == 1)\n"
        "assert(v.n[1] == 1 and v.n[2] == nil and v.n[3] == 3)\n"
        "assert(getmetatable(v.e) == 'json.array' and next(v.o) == nil and getmetatable(v.o) == "
        "nil)\n"
        "assert(math.type(v.z) == 'integer' and v.z == 0 and math.type(v.big) == 'float')\n"
        "assert(math.type(v.x) == 'integer' and v.x == 100 and v.f == 0.5)\n"
        "assert(v.t == true and v.u == false and v.nul == nil and v.d == 2)\n"
        "assert(json.decode('\"a\\\\u0000b\"') == 'a' and json.decode('null') == nil)\n"
        "assert(json.decode('[01]')[1] == 1 and json.decode('\\f[2]')[1] == 2)\n"
        "assert(json.decode('[' .. string.rep('1', 70) .. ']')[1] == tonumber(string.rep('1', "
        "70)))\n"
        "assert(not pcall(json.decode, '\"\\\\ud800\"') and not pcall(json.decode, '[1,]'))\n");
}

/* The panel reads its experts once: each ask carries the expert's id, name, model and JSON,
 * whether the roster is strict JSON (read through a view) or only cJSON reads it. */
static void check_experts(const char *experts_json)
{
    static const char src[] = "return { name = 'sandbox', start = 'main', nodes = { main = "
                              "function(ctx) ctx:ask_all(ctx.experts, 'q') end } }\n";
    script_limits lim;
    limits(&lim);
    script_host host = {NULL, t_emit, t_log, t_consensus};
    script_inputs in = {.panel_id = "p1", .question = "q", .experts_json = experts_json};
    script_panel *sp = NULL;
    ap_err err = {0};
    assert_int_equal(script_panel_new(&lim, &host, "sandbox", src, strlen(src), &in, &sp, &err),
                     AP_OK);
    script_step step;
    assert_int_equal(script_panel_run_node(sp, "main", 1, &step), AP_OK);
    assert_int_equal(step.outcome, SCRIPT_ASK);
    assert_int_equal(step.n_asks, 2);
    assert_string_equal(step.asks[0].expert_id, "e\xc3\xa9");
    assert_string_equal(step.asks[0].expert_name, "Dr \"A\"");
    assert_null(step.asks[0].expert_model);
    assert_string_equal(step.asks[1].expert_id, "e2");
    assert_null(step.asks[1].expert_name);
    assert_string_equal(step.asks[1].expert_model, "m");
    for (size_t i = 0; i < 2; i++) {
        cJSON *e = cJSON_Parse(step.asks[i].expert_json);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        assert_true(cJSON_IsString(id));
        assert_string_equal(id->valuestring, step.asks[i].expert_id);
        cJSON_Delete(e);
    }
    script_panel_free(sp);
}

static void test_experts_read_once(void **state)
{
    (void)state;
    check_experts("[ {\"id\": \"e\\u00e9\", \"name\": \"Dr \\\"A\\\"\", \"role\": \"r\"},\n"
                  "  {\"id\": \"e2\", \"model\": \"m\", \"name\": 7} ]");
    /* a form feed between tokens: cJSON reads it, the view does not */
    check_experts(
        "\f[{\"id\":\"e\\u00e9\",\"name\":\"Dr \\\"A\\\"\"},{\"id\":\"e2\",\"model\":\"m\"}]");
    static const char *const bad[][2] = {
        {"{}", "experts must be a JSON array"},
        {"[{\"id\":\"\"}]", "every expert needs an id"},
        {"[{\"id\":\"\\u0000x\"}]", "every expert needs an id"},
        {"[{\"name\":\"n\"}]", "every expert needs an id"},
        {"[7]", "every expert needs an id"},
        {"\f[{\"id\":\"\"}]", "every expert needs an id"},
    };
    static const char src[] = "return { name = 'sandbox', start = 'main', nodes = { main = "
                              "function(ctx) end } }\n";
    script_limits lim;
    limits(&lim);
    script_host host = {NULL, t_emit, t_log, t_consensus};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        script_inputs in = {.panel_id = "p1", .question = "q", .experts_json = bad[i][0]};
        script_panel *sp = NULL;
        ap_err err = {0};
        assert_int_not_equal(
            script_panel_new(&lim, &host, "sandbox", src, strlen(src), &in, &sp, &err), AP_OK);
        assert_null(sp);
        assert_non_null(strstr(err.msg, bad[i][1]));
    }
}

/* ---- the ctx surface ------------------------------------------------------------------------ */

static void test_ctx_misuse(void **state)
{
    (void)state;
    expect_fail("ctx:emit('panel.completed', {})", "emitted by the host");
    expect_fail("ctx:emit('Bad Type', {})", "bad event type");
    expect_fail("ctx.ask(ctx.experts[1], 'x')", "with a colon");
    expect_fail("table.sort({1, 2, 3}, function(a, b) ctx:ask(ctx.experts[1], 'q') return a < "
                "b end)",
                "can only be called from a node");
    expect_fail("ctx:ask('nobody', 'q')", "unknown expert 'nobody'");
    expect_fail("ctx:consensus('missing', {}, {})", "no consensus named missing");
    /* ctx handed to a consensus script in the ballots or opts stays out of its reach */
    expect_fail("ctx:consensus('ctxuser', { ctx }, { method = 'emit' })",
                "ctx:emit cannot be called from a consensus script");
    expect_fail("ctx:consensus('ctxuser', { ctx }, { method = 'done' })",
                "ctx:done cannot be called from a consensus script");
    expect_fail("ctx:consensus('ctxuser', { ctx }, { method = 'consensus' })",
                "ctx:consensus cannot be called from a consensus script");
    expect_done("local ok = pcall(ctx.consensus, ctx, 'ctxuser', { ctx }, { method = 'emit' })\n"
                "assert(not ok) ctx:emit('after.consensus', {})");
    expect_fail("ctx:done({ f = print })", "cannot encode a function");
    /* quotas per node: a loop cannot flood the event stream, the log or the LLM bill */
    expect_fail("while true do ctx:emit('spam', { x = 1 }) end", "at most 1000 events");
    expect_fail("local big = string.rep('x', 200000)\n"
                "for i = 1, 100 do ctx:emit('spam', { big = big }) end",
                "at most 1000 events (8 MiB");
    expect_done("for i = 1, 5000 do ctx:log('info', 'line') print('x') end");
    expect_fail("local all = {} for i = 1, 250 do all[i] = ctx.experts[1] end\n"
                "for i = 1, 5 do ctx:ask_all(all, 'q') end",
                "at most 1000 LLM turns");
    expect_done("local r = ctx:ask(ctx.experts[1], 'q') assert(r.text == 'ok' and r.usage)");
    /* Texts copied out of the Lua heap are bounded (the memory limit does not see them) and
     * are never cut at a NUL. */
    expect_fail("local all = {} for i = 1, 256 do all[i] = ctx.experts[1] end\n"
                "ctx:ask_all(all, 'q', { system = string.rep('y', 4 * 1024 * 1024) })",
                "opts.system is longer than");
    expect_fail("local all = {} for i = 1, 256 do all[i] = ctx.experts[1] end\n"
                "ctx:ask_all(all, string.rep('p', 100000), { system = string.rep('y', 100000) })",
                "add up to more than 16 MiB");
    expect_fail("ctx:ask(ctx.experts[1], 'q\\0hidden')", "the prompt contains a NUL byte");
    expect_fail("ctx:ask(ctx.experts[1], 'q', { system = 's\\0' })", "contains a NUL byte");
    expect_fail("ctx:emit('ok\\0panel.failed', {})", "bad event type");
    expect_done("local all = {} for i = 1, 20 do all[i] = ctx.experts[1] end\n"
                "ctx:ask_all(all, string.rep('p', 100000), { system = string.rep('y', 100000) })");
    outcome o;
    script_limits lim;
    limits(&lim);
    static const char *const done_then_next[] = {
        "return { name = 'sandbox', start = 'main', nodes = {\n"
        "  main = function(ctx) ctx:done({ a = 1 }) return 'main' end } }\n",
        "return { name = 'sandbox', start = 'main', nodes = {\n"
        "  main = function(ctx) ctx:done() return 'main' end } }\n",
    };
    for (size_t i = 0; i < sizeof done_then_next / sizeof done_then_next[0]; i++) {
        run_source(&lim, done_then_next[i], &o);
        assert_int_equal(o.kind, SCRIPT_FAILED);
        assert_non_null(strstr(o.error, "called ctx:done and then named a next node"));
    }
    run_body("local x = 1\nerror('boom')", &o);
    assert_int_equal(o.kind, SCRIPT_FAILED);
    assert_non_null(strstr(o.error, "node 'main': sandbox.lua:3: boom"));
}

/* The nodes table is the script's own: its metatable must never run while the host looks a
 * node up (outside any protected call), and odd names are refused, not cut. */
static void test_hostile_nodes_table(void **state)
{
    (void)state;
    static const struct {
        const char *src, *needle;
    } cases[] = {
        {"local nodes = { main = function(ctx) return 'nope' end }\n"
         "setmetatable(nodes, { __index = function(t, k) error('boom') end })\n"
         "return { name = 'sandbox', start = 'main', nodes = nodes }\n",
         "returned unknown node 'nope'"},
        {"local nodes = { main = function(ctx) return 'nope' end }\n"
         "setmetatable(nodes, { __index = function() while true do end end })\n"
         "return { name = 'sandbox', start = 'main', nodes = nodes }\n",
         "returned unknown node 'nope'"},
        {"return { name = 'sandbox', start = 'main', nodes = {\n"
         "  main = function(ctx) return 'next\\0hidden' end,\n"
         "  next = function(ctx) return ctx:done({}) end } }\n",
         "returned unknown node 'next'"},
        {"local long = ('n'):rep(200)\n"
         "return { name = 'sandbox', start = 'main', nodes = {\n"
         "  main = function(ctx) return long .. 'x' end,\n"
         "  [long] = function(ctx) return ctx:done({}) end } }\n",
         "node names must be 1 to 128 characters"},
    };
    script_limits lim;
    limits(&lim);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        outcome o;
        run_source(&lim, cases[i].src, &o);
        if (o.kind != SCRIPT_FAILED || strstr(o.error, cases[i].needle) == NULL)
            fail_msg("case %zu: expected failure with \"%s\", got %d: %s", i, cases[i].needle,
                     (int)o.kind, o.error);
        healthy();
    }
}

static void test_contract_errors(void **state)
{
    (void)state;
    script_limits lim;
    limits(&lim);
    script_info info;
    ap_err err = {0};
    static const struct {
        const char *src, *needle;
    } cases[] = {
        {"return {", "sandbox.lua:1:"},
        {"return 42", "must return the strategy table"},
        {"return { name = 'other', start = 'a', nodes = { a = function() end } }",
         "named 'other' but its file is sandbox.lua"},
        {"return { name = 'sandbox', nodes = { a = function() end } }", "no start node"},
        {"return { name = 'sandbox', start = 'b', nodes = { a = function() end } }",
         "start names node 'b', which is not in nodes"},
        {"return { name = 'sandbox', start = 'a', nodes = { a = 1 } }",
         "node 'a' must be a function"},
        {"return { name = 'sandbox', start = 'a', nodes = { a = function() end }, params = { n "
         "= { type = 'int' } } }",
         "param 'n' has an unknown type"},
        {"return { name = 'sandbox', start = 'a', nodes = { a = function() end }, params = { n "
         "= { type = 'integer', min = 5, max = 1 } } }",
         "param 'n': min (5) is greater than max (1)"},
        {"while true do end", "instruction budget exceeded"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ap_status rc = script_inspect(&lim, SCRIPT_STRATEGY, "sandbox", cases[i].src,
                                      strlen(cases[i].src), &info, &err);
        if (rc == AP_OK || strstr(err.msg, cases[i].needle) == NULL)
            fail_msg("case %zu: expected \"%s\", got \"%s\"", i, cases[i].needle, err.msg);
    }
    assert_int_equal(script_inspect(&lim, SCRIPT_CONSENSUS, "c", consensus_src,
                                    strlen(consensus_src), &info, &err),
                     AP_OK);
    script_info_free(&info);
}

/* ---- sixth red-team round ----------------------------------------------------------------- */

/* A table emptied of 2^16 keys keeps its slots (walking it costs them) yet encodes as "{}";
 * shared a million times, one encode would walk it a million times. */
#define DAG_BODY                                                                                   \
    "local x = {} for i = 1, 1 << 16 do x[i * 2] = true end\n"                                     \
    "for i = 1, 1 << 16 do x[i * 2] = nil end\n"                                                   \
    "local p = {} for i = 1, 1000 do p[i] = x end\n"                                               \
    "local dag = {} for i = 1, 1000 do dag[i] = p end\n"

static void test_json_encode_work_is_budgeted(void **state)
{
    (void)state;
    expect_time_trip(DAG_BODY "local s = json.encode(dag)");
    script_limits lim;
    clock_limits(&lim, 200);
    /* The same table in ctx.state: saving it after the node runs on the node's budget. */
    static const char src[] =
        "return { name = 'sandbox', start = 'main', nodes = { main = function(ctx)\n" DAG_BODY
        "ctx.state.dag = dag return 'main' end } }\n";
    /* ... and in what a strategy declares, encoded when it is checked. */
    static const char declared[] =
        "local function dag() " DAG_BODY " return dag end\n"
        "return { name = 'sandbox', start = 'main', params = { n = { type = 'integer', "
        "default = 1, enum = dag() } }, nodes = { main = function(ctx) end } }\n";
    script_panel *sp = NULL;
    ap_err err = {0};
    int64_t t0 = clock_mono_ms();
    assert_int_not_equal(new_panel(&lim, declared, &sp, &err), AP_OK);
    if (strstr(err.msg, "time budget exceeded") == NULL || clock_mono_ms() - t0 > 1500)
        fail_msg("a shared table in params: %s after %lld ms", err.msg,
                 (long long)(clock_mono_ms() - t0));
    assert_int_equal(new_panel(&lim, src, &sp, &err), AP_OK);
    script_step step;
    assert_int_equal(script_panel_run_node(sp, "main", 1, &step), AP_OK);
    assert_int_equal(step.outcome, SCRIPT_NEXT);
    char *saved = NULL;
    t0 = clock_mono_ms();
    assert_int_not_equal(script_panel_state_save(sp, &saved, &err), AP_OK);
    assert_null(saved);
    assert_non_null(strstr(err.msg, "time budget exceeded"));
    assert_true(clock_mono_ms() - t0 < 1500);
    script_panel_free(sp);
    healthy();
}

static void test_json_encode_edges(void **state)
{
    (void)state;
    /* The text is freed when copying it into Lua fails at the memory limit (the sanitized
     * copy of this test reports the leak otherwise). */
    expect_fail("local s = string.rep('a', 1 << 20) local t = { s, s, s }\n"
                "local fill = {} while collectgarbage('count') < 13 * 1024 do\n"
                "  fill[#fill + 1] = string.rep(tostring(#fill), 1 << 16) end\n"
                "local out = json.encode(t)",
                "memory limit exceeded");
    /* The encoder's key lists count against the panel's memory limit (the table is as large
     * as one may be, the heap filled up to where its key list no longer fits). */
    expect_fail("local t = {} for i = 1, 65536 do t[i * 2] = true end\n"
                "local fill = {} while collectgarbage('count') < 13 * 1024 do\n"
                "  fill[#fill + 1] = string.rep(tostring(#fill), 1 << 16) end\n"
                "local s = json.encode(t)",
                "memory limit exceeded");
    /* Two keys with one text would be one key twice in JSON. */
    expect_fail("json.encode({ [1] = 'int', ['1'] = 'str' })", "two keys are both written \"1\"");
    expect_fail("json.encode({ x = { [0.1 + 0.2] = 'f', ['0.3'] = 's' } })",
                "two keys are both written \"0.3\"");
    expect_done("assert(json.encode({ [1] = 'a', ['2'] = 'b', [3.5] = 'c' }) == "
                "'{\"1\":\"a\",\"2\":\"b\",\"3.5\":\"c\"}')");
}

static void test_compile_time_labels(void **state)
{
    (void)state;
    expect_fail("local f, e = load(string.rep('do ::a:: end ', 10001)) error(e, 0)",
                "more than 20000 'and', 'or', 'elseif', 'goto', 'break' and '::'");
    expect_done("assert(load(string.rep('do ::a:: end ', 9000)))");
}

static void test_close_after_error_is_timed(void **state)
{
    (void)state;
    expect_time_trip("local big = string.rep('a', 1 << 20)\n"
                     "local guard <close> = setmetatable({}, { __close = function()\n"
                     "  while true do local u = big:upper() end end })\n"
                     "error('boom')");
}

/* Garbage that outgrows the collector's pause is collected at the limit, not mistaken for
 * live memory: 4 MiB live and 1 MiB of garbage at a time fit 16 MiB. */
static void test_garbage_at_the_limit(void **state)
{
    (void)state;
    expect_done("local keep = string.rep('k', 4 << 20)\n"
                "for i = 1, 200 do local g = string.rep('g', 1 << 20) .. i end\n"
                "assert(#keep == 4 << 20)");
    expect_fail("local keep = {} for i = 1, 200 do keep[i] = string.rep('g', 1 << 20) .. i end",
                "memory limit exceeded");
}

/* The auxiliary library's buffers (string.rep, format, gsub, table.concat) took memory past
 * garbage without the collection by which Lua answers a refusal elsewhere: with 4 MiB live
 * and the collector's pause letting garbage grow to three times that, making 2 MiB more
 * failed on a 16 MiB limit. A request that does not fit even after a collection still trips
 * the limit, caught or not. */
static void test_library_buffers_collect_garbage(void **state)
{
    (void)state;
    static const char *const calls[] = {
        "string.rep('b', 2 << 20)",
        "string.format('%s%s', half, half)",
        "half:gsub('h', 'hh')",
        "table.concat({ half, half })",
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        char body[1024];
        snprintf(body, sizeof body,
                 "local keep, half = string.rep('k', 3 << 20), string.rep('h', 1 << 20)\n"
                 "while collectgarbage('count') < 14.5 * 1024 do\n"
                 "  local g = string.rep('g', 1 << 18)\n"
                 "end\n"
                 "local big = %s\n"
                 "assert(#big == 2 << 20 and #keep + #half == 4 << 20)",
                 calls[i]);
        outcome o;
        run_body(body, &o);
        if (o.kind != SCRIPT_DONE)
            fail_msg("%s beside garbage: outcome %d: %s", calls[i], (int)o.kind, o.error);
    }
    expect_fail("local keep = string.rep('k', 6 << 20)\n"
                "local ok, err = pcall(string.rep, 'b', 12 << 20)\n"
                "return ctx:done({ swallowed = err })",
                "memory limit exceeded");
    healthy();
}

/* table.sort without a comparator compared in C, where no hook runs: 100,000 copies of a
 * 1 MiB string kept a runner for minutes on a 1 s budget. Every comparison is now a call the
 * hook sees; sorting itself is as before. */
static void test_sort_is_budgeted(void **state)
{
    (void)state;
    script_limits lim;
    limits(&lim);
    lim.timeout_ms = 300;
    outcome o;
    run_body_lim(&lim,
                 "local s = string.rep('a', 1 << 20)\n"
                 "local t = {} for i = 1, 100000 do t[i] = s end\n"
                 "table.sort(t)",
                 &o);
    if (o.kind != SCRIPT_FAILED || strstr(o.error, "time budget exceeded") == NULL)
        fail_msg("sort of long strings: outcome %d: %s", (int)o.kind, o.error);
    assert_true(o.ms < 5000);
    healthy();
    expect_done("local t = { 3, 1, 2 } table.sort(t) assert(t[1] == 1 and t[3] == 3)\n"
                "local w = { 'pear', 'apple', 'fig' } table.sort(w) assert(w[1] == 'apple')\n"
                "table.sort(w, function(a, b) return a > b end) assert(w[1] == 'pear')\n"
                "local mt = { __lt = function(a, b) return a.v < b.v end }\n"
                "local o = { setmetatable({ v = 2 }, mt), setmetatable({ v = 1 }, mt) }\n"
                "table.sort(o) assert(o[1].v == 1)");
    expect_fail("table.sort({ 1, 'x', 2 })", "sandbox.lua:2: attempt to compare");
}

/* Time spent in one C call no hook sees (a pattern search within the guard's bound), right
 * before an ask_all prompt function returns and the node yields, still counts: the next slice
 * started past the deadline by less than a tick of the coarse clock, and the node finished. */
static void test_overrun_before_a_yield_counts(void **state)
{
    (void)state;
    script_limits lim;
    limits(&lim);
    lim.timeout_ms = 20;
    outcome o;
    run_body_lim(&lim,
                 "ctx:ask_all({ ctx.experts[1] }, function()\n"
                 "  local r = ('a'):rep(450):find(('a-'):rep(2) .. 'b') return 'p' end)",
                 &o);
    if (o.kind != SCRIPT_FAILED || strstr(o.error, "time budget exceeded") == NULL)
        fail_msg("an overrun before a yield: outcome %d after %lld ms: %s", (int)o.kind,
                 (long long)o.ms, o.error);
    healthy();
}

/* Compiling runs on a clock: 180 nested functions of 190 locals each, then 400,000 global
 * references (each walks every enclosing function's locals), took 29 s to load() on a 1 s
 * node budget and 22 s as an uploaded file. A load() stops at the node's budget, a file at
 * the compile budget (2 s). */
static void test_compiling_is_timed(void **state)
{
    (void)state;
    script_limits lim;
    limits(&lim);
    lim.timeout_ms = 500;
    outcome o;
    run_body_lim(&lim,
                 "local l = {} for i = 1, 190 do l[i] = 'v' .. i end\n"
                 "local decl = 'local ' .. table.concat(l, ',') .. '\\n'\n"
                 "local src = string.rep('local function f()\\n' .. decl, 180) ..\n"
                 "  'local x = {' .. string.rep('z,', 400000) .. '}\\n' .. string.rep('end\\n', "
                 "180)\n"
                 "local f, e = load(src) error(e or 'compiled')",
                 &o);
    if (o.kind != SCRIPT_FAILED || strstr(o.error, "time budget exceeded") == NULL)
        fail_msg("a slow load(): outcome %d after %lld ms: %s", (int)o.kind, (long long)o.ms,
                 o.error);
    assert_true(o.ms < 5000);
    healthy();
    /* the same text as the strategy file itself */
    size_t cap = 1200 * 1024, n = 0;
    char *src = malloc(cap);
    assert_non_null(src);
    for (int f = 0; f < 180; f++) {
        n += (size_t)snprintf(src + n, cap - n, "local function f%d()\nlocal ", f);
        for (int v = 1; v <= 190; v++)
            n += (size_t)snprintf(src + n, cap - n, "%sv%d", v > 1 ? "," : "", v);
        n += (size_t)snprintf(src + n, cap - n, "\n");
    }
    n += (size_t)snprintf(src + n, cap - n, "local x = {");
    for (int i = 0; i < 400000 && n + 16 < cap; i++)
        n += (size_t)snprintf(src + n, cap - n, "z,");
    n += (size_t)snprintf(src + n, cap - n, "}\n");
    for (int f = 0; f < 180 && n + 16 < cap; f++)
        n += (size_t)snprintf(src + n, cap - n, "end\n");
    snprintf(src + n, cap - n, "return {}\n");
    limits(&lim);
    script_panel *sp = NULL;
    ap_err err = {0};
    int64_t t0 = clock_mono_ms();
    assert_int_not_equal(new_panel(&lim, src, &sp, &err), AP_OK);
    int64_t ms = clock_mono_ms() - t0;
    free(src);
    if (strstr(err.msg, "compiling it took longer") == NULL || ms > 6000)
        fail_msg("a slow file: %s after %lld ms", err.msg, (long long)ms);
    healthy();
}

/* A wrapped library function (format, find, gsub, match, rep, table.move, sort) called the
 * original from C, whose errors then named neither the script's line nor the function
 * ("bad argument #2 to '?'"). An error of the script's own callback keeps its one position. */
static void test_library_errors_name_the_line(void **state)
{
    (void)state;
    expect_fail("local score = 0.5\nlocal line = string.format('score %d', score)",
                "sandbox.lua:3: bad argument #2 to 'format' (number has no integer");
    expect_fail("local s = ('x'):gsub('x', '%2')", "sandbox.lua:2: invalid capture index %2");
    expect_fail("local a = ('x'):find('[a')", "sandbox.lua:2: malformed pattern");
    expect_fail("local a = ('x'):rep({})", "sandbox.lua:2: bad argument #1 to 'rep'");
    outcome o;
    run_body("local s = ('x'):gsub('x', function() error('boom') end)", &o);
    assert_int_equal(o.kind, SCRIPT_FAILED);
    assert_non_null(strstr(o.error, "sandbox.lua:2: boom"));
    assert_null(strstr(o.error, "sandbox.lua:2: sandbox.lua"));
    /* a callback's own error values go through as they are: a number, a level-0 string */
    expect_done("local ok, e = pcall(string.gsub, 'abc', '%w', function() error(42) end)\n"
                "assert(not ok and e == 42 and math.type(e) == 'integer')\n"
                "ok, e = pcall(function() return ('abc'):gsub('%w', function() error('STOP', 0) "
                "end) end)\n"
                "assert(not ok and e == 'STOP')\n"
                "ok, e = pcall(table.sort, { 3, 1, 2 }, function() error({ tag = 1 }) end)\n"
                "assert(not ok and type(e) == 'table' and e.tag == 1)");
    /* a range of table.move past math.maxinteger is refused, without overflowing first */
    expect_fail("table.move({ 1, 2, 3 }, -5, math.maxinteger, 1)", "range of more than");
    expect_fail("ctx:log('info')", "bad argument #2 to 'log' (value expected)");
    expect_fail("local ok, e = pcall(json.encode, { { x = 1 }, print }) error(e)",
                "cannot encode a function (at array index 2)");
    expect_fail("local ok, e = pcall(json.encode, { a = { 1, { b = print } } }) error(e)",
                "cannot encode a function (at key 'b')");
}

/* The memory limit bounds what a state holds: its pool of small blocks (kept for reuse once
 * freed) and its large blocks together. A script filled the pool, freed it, and filled as
 * much again in large strings: twice the limit. Within the limit both kinds still fit. */
static void test_memory_limit_counts_the_pool(void **state)
{
    (void)state;
    script_limits lim;
    limits(&lim);
    lim.memory_bytes = (size_t)8 * 1024 * 1024;
    static const char twice[] =
        "local keep = {}\n"
        "for i = 1, 1e7 do keep[i] = { i } if collectgarbage('count') > %d * 1024 then break end "
        "end\n"
        "keep = nil collectgarbage()\n"
        "local big = {} for i = 1, %d do big[i] = string.rep(string.char(65 + i), 1 << 20) end";
    char body[512];
    snprintf(body, sizeof body, twice, 6, 6);
    outcome o;
    run_body_lim(&lim, body, &o);
    if (o.kind != SCRIPT_FAILED || strstr(o.error, "memory limit exceeded") == NULL)
        fail_msg("pool, then large blocks: outcome %d: %s", (int)o.kind, o.error);
    healthy();
    snprintf(body, sizeof body, twice, 2, 3);
    run_body_lim(&lim, body, &o);
    assert_int_equal(o.kind, SCRIPT_DONE);
    /* json.decode's lenient path builds a C tree outside the state: it is charged too */
    run_body_lim(&lim, "local t = json.decode('\\f[' .. ('0,'):rep(150000) .. '0]')", &o);
    if (o.kind != SCRIPT_FAILED || strstr(o.error, "memory limit exceeded") == NULL)
        fail_msg("lenient json.decode: outcome %d: %s", (int)o.kind, o.error);
    healthy();
}

/* Runs node `main` of src on an 8 MiB limit; fails the test unless it ends done or at the
 * memory limit with the state holding at most the limit and one pool chunk. */
static void holds_within_the_limit(const char *src)
{
    script_limits lim;
    limits(&lim);
    lim.memory_bytes = (size_t)8 * 1024 * 1024;
    script_panel *sp = NULL;
    ap_err err = {0};
    assert_int_equal(new_panel(&lim, src, &sp, &err), AP_OK);
    script_step step;
    assert_int_equal(script_panel_run_node(sp, "main", 1, &step), AP_OK);
    if (step.outcome != SCRIPT_DONE && strstr(step.error, "memory limit exceeded") == NULL)
        fail_msg("node ended with %d: %s", (int)step.outcome, step.error);
    size_t held = script_panel_held(sp);
    if (held > lim.memory_bytes + 16 * 1024)
        fail_msg("the state holds %zu bytes on a limit of %zu", held, lim.memory_bytes);
    script_panel_free(sp);
    healthy();
}

/* Shrinks cannot grow the pool past the limit. A live set walked down the block classes by
 * shrinking took a new chunk for every class it reached, and the chunks stay the pool's: table
 * arrays of 128, 64, 32... entries made a state filled to 6 of its 8 MiB hold ~12 MiB, and
 * arrays of 129 entries (large blocks) cut to 128 (small ones) held 11 % past the limit. */
static void test_shrinks_stay_within_the_limit(void **state)
{
    (void)state;
    holds_within_the_limit(
        "return { name = 'sandbox', start = 'main', nodes = { main = function(ctx)\n"
        "  local ts, n = {}, 0\n"
        "  for i = 1, 1e6 do\n"
        "    local t = {} for j = 1, 128 do t[j] = j end ts[i] = t n = i\n"
        "    if collectgarbage('count') > 6 * 1024 then break end\n"
        "  end\n"
        "  for _, keep in ipairs({ 64, 32, 16, 8, 4, 2 }) do\n"
        "    for i = 1, n do local t = ts[i]\n"
        "      for j = keep + 1, 2 * keep do t[j] = nil end t['k' .. keep] = 1 end\n"
        "  end\n"
        "  return ctx:done({ n = n }) end } }\n");
    /* 129 entries: a constructor sizes the array exactly, 2,064 bytes, a large block */
    holds_within_the_limit(
        "return { name = 'sandbox', start = 'main', nodes = { main = function(ctx)\n"
        "  local function make() return "
        "{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,"
        "30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,"
        "56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,"
        "82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,"
        "106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,"
        "126,127,128,129}"
        " end\n"
        "  do local pre = {} for i = 1, 20000 do pre[i] = ('%07d'):format(i) end end\n"
        "  local ts, n = {}, 0\n"
        "  for i = 1, 1e6 do\n"
        "    ts[i] = make() n = i\n"
        "    if collectgarbage('count') > 7500 then break end\n"
        "  end\n"
        "  for i = 1, n do local t = ts[i] t[129] = nil t.k = 1 end\n"
        "  return ctx:done({ n = n }) end } }\n");
}

/* Chunks are cached as soon as they compile, uploads that are then refused included: the
 * cache stays within its byte budget however many large ones come. */
static void test_code_cache_is_bounded(void **state)
{
    (void)state;
    script_limits lim;
    limits(&lim);
    lim.memory_bytes = (size_t)64 * 1024 * 1024;
    script_vm *vm = NULL;
    ap_err err = {0};
    assert_int_equal(script_vm_new(&lim, NULL, NULL, &vm, &err), AP_OK);
    lua_State *L = script_vm_state(vm);
    size_t len = 512 * 1024;
    char *src = malloc(len + 1);
    assert_non_null(src);
    for (int i = 0; i < 100; i++) {
        int head = snprintf(src, len, "return %d --", i);
        memset(src + head, 'x', len - (size_t)head);
        src[len] = '\0';
        char name[32];
        snprintf(name, sizeof name, "=big%d", i);
        assert_int_equal(script_vm_load(vm, L, name, src, len, &err), AP_OK);
        lua_pop(L, 1);
    }
    free(src);
    script_vm_free(vm);
    size_t held = script_vm_code_cache_bytes();
    if (held > (size_t)32 * 1024 * 1024)
        fail_msg("the code cache holds %zu bytes after 100 chunks of 512 KiB", held);
    assert_true(held > 0);
}

int main(void)
{
    log_set_level(LOG_LEVEL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_os_io_debug_require),
        cmocka_unit_test(test_no_bytecode),
        cmocka_unit_test(test_metatable_and_env_tricks),
        cmocka_unit_test(test_random_is_seeded_per_node),
        cmocka_unit_test(test_no_heap_addresses),
        cmocka_unit_test(test_panel_library),
        cmocka_unit_test(test_finalizers_and_close),
        cmocka_unit_test(test_no_weak_keys),
        cmocka_unit_test(test_endless_loops),
        cmocka_unit_test(test_time_budget),
        cmocka_unit_test(test_limit_not_catchable),
        cmocka_unit_test(test_memory_bombs),
        cmocka_unit_test(test_hash_collisions),
        cmocka_unit_test(test_host_writes_keep_the_limit),
        cmocka_unit_test(test_lookups_in_one_chain),
        cmocka_unit_test(test_rehashes_are_budgeted),
        cmocka_unit_test(test_recursion),
        cmocka_unit_test(test_long_c_loops),
        cmocka_unit_test(test_sort_is_budgeted),
        cmocka_unit_test(test_compiling_is_timed),
        cmocka_unit_test(test_overrun_before_a_yield_counts),
        cmocka_unit_test(test_library_errors_name_the_line),
        cmocka_unit_test(test_memory_limit_counts_the_pool),
        cmocka_unit_test(test_shrinks_stay_within_the_limit),
        cmocka_unit_test(test_pattern_backtracking),
        cmocka_unit_test(test_json_limits),
        cmocka_unit_test(test_json_decode_paths),
        cmocka_unit_test(test_json_encode_shapes),
        cmocka_unit_test(test_experts_read_once),
        cmocka_unit_test(test_ctx_misuse),
        cmocka_unit_test(test_hostile_nodes_table),
        cmocka_unit_test(test_contract_errors),
        cmocka_unit_test(test_json_encode_work_is_budgeted),
        cmocka_unit_test(test_json_encode_edges),
        cmocka_unit_test(test_compile_time_labels),
        cmocka_unit_test(test_close_after_error_is_timed),
        cmocka_unit_test(test_garbage_at_the_limit),
        cmocka_unit_test(test_library_buffers_collect_garbage),
        cmocka_unit_test(test_code_cache_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
