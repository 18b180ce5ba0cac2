#include "script/host.h"

#include "core/jsonx.h"
#include "core/jview.h"
#include "core/log.h"
#include "script/json.h"
#include "script/params.h"
#include "script/sandbox.h"

#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXPERTS 256 /* in a panel's roster, as many as one ask_all reaches */
#define MAX_EXPERT_ID 128
#define MAX_PROMPT (512 * 1024)
#define MAX_BATCH_TEXT (16 * 1024 * 1024)
#define MAX_EVENT_DATA (256 * 1024)
#define MAX_RESULT (4 * 1024 * 1024)
#define MAX_STATE (8 * 1024 * 1024 - 64 * 1024) /* a checkpoint keeps 8 MiB, envelope included */
#define MAX_TYPE_LEN 64
#define MAX_NAME_LEN 64
#define MAX_NODE_NAME_LEN 128
/* Per-node quotas: a loop that emits, logs or asks without end would otherwise grow the event
 * queue, the log or the LLM bill for as long as the instruction budget lasts. */
#define NODE_MAX_EVENTS 1000
#define NODE_MAX_EVENT_BYTES (8 * 1024 * 1024)
#define NODE_MAX_TURNS 1000
#define NODE_MAX_LOGS 1000

enum pending { PEND_NONE = 0, PEND_ASK, PEND_ASK_ALL, PEND_INPUT };

typedef struct expert_ref {
    char *id;
    char *json;
    char *name;  /* NULL when the expert has none */
    char *model; /* NULL when the expert has none */
} expert_ref;

/* The strings of a pending ask: the expert is borrowed from the panel (it lives as long as the
 * panel), the schema from the batch, which encodes it once for all its asks. */
typedef struct pending_ask {
    const expert_ref *expert;
    char *prompt, *system;
    int64_t round, max_tokens;
    double temperature;
    bool delivered;
    char *text, *data_json, *error;
    int64_t prompt_tokens, completion_tokens;
} pending_ask;

struct script_panel {
    script_vm *vm;
    lua_State *L;
    script_host host;
    char *name;
    char *start;
    char *consensus;
    int ctx_ref, nodes_ref, cache_ref, co_ref;
    lua_State *co;
    char *node;
    int pending;
    pending_ask *asks;
    size_t n_asks;
    char *batch_schema; /* the schema of the pending asks, NULL without one */
    script_ask *ask_view;
    char *input_request;
    char *input_json;
    bool input_delivered;
    char *result_json;
    bool done;        /* ctx:done was called: the panel ends with this node */
    int in_consensus; /* consensus scripts running (ctx is off limits to them) */
    char *next_node;
    expert_ref *experts;
    size_t n_experts;
    /* usage of the node in flight, against the NODE_MAX_* quotas */
    int node_events, node_turns, node_logs;
    size_t node_event_bytes;
};

/* Counts an event of n bytes against the node's quota; false (nothing counted) past it. */
static bool quota_allows_event(script_panel *sp, size_t n)
{
    if (sp->node_events >= NODE_MAX_EVENTS || sp->node_event_bytes + n > NODE_MAX_EVENT_BYTES)
        return false;
    sp->node_events++;
    sp->node_event_bytes += n;
    return true;
}

static int quota_error(lua_State *L)
{
    return luaL_error(L, "a node may emit at most %d events (%d MiB of data)", NODE_MAX_EVENTS,
                      NODE_MAX_EVENT_BYTES / (1024 * 1024));
}

/* Counts n LLM turns against the node's quota; raises past it. */
static void charge_turns(lua_State *L, script_panel *sp, lua_Integer n)
{
    if (sp->node_turns + n > NODE_MAX_TURNS)
        luaL_error(L, "a node may ask at most %d LLM turns", NODE_MAX_TURNS);
    sp->node_turns += (int)n;
}

static const char *const reserved_types[] = {
    "panel.status",   "panel.completed", "panel.failed",    "expert.delta",
    "expert.message", "consensus",       "input.requested", "input.received",
};

/* ---- small helpers -------------------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

static void free_asks(script_panel *sp)
{
    for (size_t i = 0; i < sp->n_asks; i++) {
        pending_ask *a = &sp->asks[i];
        free(a->prompt);
        free(a->system);
        free(a->text);
        free(a->data_json);
        free(a->error);
    }
    free(sp->asks);
    free(sp->ask_view);
    free(sp->batch_schema);
    sp->asks = NULL;
    sp->ask_view = NULL;
    sp->batch_schema = NULL;
    sp->n_asks = 0;
}

static void clear_pending(script_panel *sp)
{
    free_asks(sp);
    free(sp->input_request);
    free(sp->input_json);
    sp->input_request = NULL;
    sp->input_json = NULL;
    sp->input_delivered = false;
    sp->pending = PEND_NONE;
}

static script_panel *self(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* Methods are called as ctx:name(...); argument 1 must be ctx itself. */
static void check_self(lua_State *L, script_panel *sp, const char *method)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, sp->ctx_ref);
    bool ok = lua_rawequal(L, 1, -1);
    lua_pop(L, 1);
    if (!ok)
        luaL_error(L, "call it as ctx:%s(...) (with a colon)", method);
    /* A strategy can hand ctx to a consensus script in its ballots or opts. */
    if (sp->in_consensus > 0)
        luaL_error(L, "ctx:%s cannot be called from a consensus script", method);
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* ^[a-z][a-z0-9_]*(%.[a-z0-9_]+)*$ */
static bool valid_event_type(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_TYPE_LEN || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    bool after_dot = false;
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (after_dot || s[i - 1] == '.')
                return false;
            after_dot = true;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
        after_dot = false;
    }
    return s[n - 1] != '.';
}

/* Encodes the value at idx or raises a script error naming what. */
static char *encode_or_raise(lua_State *L, int idx, size_t max, const char *what)
{
    char *out = NULL;
    ap_err err = {0};
    if (script_json_encode(L, idx, max, &out, &err) != AP_OK) {
        script_vm_check(L);
        luaL_error(L, "%s: %s", what, err.msg);
    }
    return out;
}

/* A C string that must survive a possible Lua error: parked in a to-be-freed userdata would
 * be heavy, so callers copy into C memory only after all Lua checks passed. */
/* opts[key]: NULL when absent; a string of at most MAX_PROMPT bytes without NUL (it is
 * copied out as a C string), its length in *len. */
static const char *opt_string_field(lua_State *L, int t, const char *key, const char *what,
                                    size_t *len)
{
    lua_pushstring(L, key);
    int ty = lua_rawget(L, t);
    const char *s = NULL;
    *len = 0;
    if (ty == LUA_TSTRING)
        s = lua_tolstring(L, -1, len);
    else if (ty != LUA_TNIL)
        luaL_error(L, "%s: opts.%s must be a string", what, key);
    if (*len > MAX_PROMPT)
        luaL_error(L, "%s: opts.%s is longer than %d bytes", what, key, MAX_PROMPT);
    if (s != NULL && memchr(s, '\0', *len) != NULL)
        luaL_error(L, "%s: opts.%s contains a NUL byte", what, key);
    lua_pop(L, 1); /* the string stays alive: it is referenced by the opts table */
    return s;
}

/* ---- ctx:ask / ctx:ask_all ------------------------------------------------------------ */

static const expert_ref *resolve_expert(lua_State *L, script_panel *sp, int idx, const char *what)
{
    const char *id = NULL;
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        id = lua_tostring(L, idx);
    } else if (lua_type(L, idx) == LUA_TTABLE) {
        lua_pushliteral(L, "id");
        if (lua_rawget(L, idx) == LUA_TSTRING)
            id = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    if (id == NULL)
        luaL_error(L, "%s: the expert must be an expert from ctx.experts or its id", what);
    for (size_t i = 0; i < sp->n_experts; i++)
        if (strcmp(sp->experts[i].id, id) == 0)
            return &sp->experts[i];
    char shown[64];
    snprintf(shown, sizeof shown, "%s", id);
    luaL_error(L, "%s: unknown expert '%s'", what, shown);
    return NULL;
}

typedef struct ask_opts {
    const char *system;
    size_t system_len;
    int schema_idx; /* 0: none */
    lua_Integer round, max_tokens;
    lua_Number temperature;
} ask_opts;

static void read_opts(lua_State *L, int idx, ask_opts *o, const char *what)
{
    memset(o, 0, sizeof *o);
    o->temperature = -1;
    if (lua_isnoneornil(L, idx))
        return;
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s: opts must be a table", what);
    idx = lua_absindex(L, idx);
    o->system = opt_string_field(L, idx, "system", what, &o->system_len);
    lua_pushliteral(L, "schema");
    int t = lua_rawget(L, idx);
    if (t == LUA_TTABLE) {
        o->schema_idx = lua_gettop(L); /* stays on the stack for encoding */
    } else {
        if (t != LUA_TNIL)
            luaL_error(L, "%s: opts.schema must be a table (a JSON Schema)", what);
        lua_pop(L, 1);
    }
    static const char *const ints[] = {"round", "max_tokens"};
    lua_Integer *dst[] = {&o->round, &o->max_tokens};
    for (int i = 0; i < 2; i++) {
        lua_pushstring(L, ints[i]);
        int ty = lua_rawget(L, idx);
        if (ty != LUA_TNIL) {
            int isint = 0;
            lua_Integer v = lua_tointegerx(L, -1, &isint);
            if (!isint || v < 0)
                luaL_error(L, "%s: opts.%s must be a whole number", what, ints[i]);
            *dst[i] = v;
        }
        lua_pop(L, 1);
    }
    lua_pushliteral(L, "temperature");
    if (lua_rawget(L, idx) != LUA_TNIL) {
        int isnum = 0;
        o->temperature = lua_tonumberx(L, -1, &isnum);
        if (!isnum || !(o->temperature >= 0 && o->temperature <= 2))
            luaL_error(L, "%s: opts.temperature must be a number from 0 to 2", what);
    }
    lua_pop(L, 1);
}

static void ensure_yieldable(lua_State *L, script_panel *sp, const char *what)
{
    if (L != sp->co || !lua_isyieldable(L))
        luaL_error(L,
                   "%s can only be called from a node itself (not from a consensus script, "
                   "a sort comparator, a gsub callback or a prompt function)",
                   what);
}

/* lua_pushstring looks a string up in the state's cache of C strings first, comparing it with
 * the cached ones whole: answers share long openings, and a new one is never in it. */
static void push_text(lua_State *L, const char *s)
{
    lua_pushlstring(L, s, strlen(s));
}

static void push_answer(lua_State *L, const pending_ask *a)
{
    lua_createtable(L, 0, 4);
    push_text(L, a->expert->id);
    lua_setfield(L, -2, "expert");
    if (a->error != NULL) {
        push_text(L, a->error);
        lua_setfield(L, -2, "error");
        return;
    }
    push_text(L, a->text != NULL ? a->text : "");
    lua_setfield(L, -2, "text");
    if (a->data_json != NULL) {
        ap_err err = {0};
        if (script_json_push(L, a->data_json, strlen(a->data_json), &err) == AP_OK)
            lua_setfield(L, -2, "data");
        script_vm_check(L);
    }
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, a->prompt_tokens);
    lua_setfield(L, -2, "prompt_tokens");
    lua_pushinteger(L, a->completion_tokens);
    lua_setfield(L, -2, "completion_tokens");
    lua_setfield(L, -2, "usage");
}

static int ask_cont(lua_State *L, int status, lua_KContext kctx)
{
    (void)status;
    (void)kctx;
    script_panel *sp = self(L);
    int kind = sp->pending;
    script_vm_check(L);
    if (kind == PEND_ASK) {
        push_answer(L, &sp->asks[0]);
    } else {
        lua_createtable(L, (int)sp->n_asks, 0);
        for (size_t i = 0; i < sp->n_asks; i++) {
            push_answer(L, &sp->asks[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
    }
    clear_pending(sp);
    return 1;
}

/* Fills one pending ask from Lua values that are already checked; no Lua error may happen
 * between the allocation of the batch and the yield, so nothing leaks. */
static bool fill_ask(pending_ask *a, const expert_ref *e, const char *prompt, const ask_opts *o)
{
    a->expert = e;
    a->prompt = strdup(prompt);
    a->system = dup_or_null(o->system);
    a->round = o->round;
    a->max_tokens = o->max_tokens;
    a->temperature = o->temperature;
    return a->prompt != NULL && (o->system == NULL || a->system != NULL);
}

static int finish_batch(lua_State *L, script_panel *sp, int kind)
{
    sp->ask_view = calloc(sp->n_asks, sizeof *sp->ask_view);
    if (sp->ask_view == NULL) {
        clear_pending(sp);
        return luaL_error(L, "out of memory");
    }
    for (size_t i = 0; i < sp->n_asks; i++) {
        const pending_ask *a = &sp->asks[i];
        sp->ask_view[i] = (script_ask){
            a->expert->id, a->expert->json,  a->expert->name, a->expert->model, a->prompt,
            a->system,     sp->batch_schema, a->round,        a->max_tokens,    a->temperature};
    }
    sp->pending = kind;
    return lua_yieldk(L, 0, 0, ask_cont);
}

static const char *check_prompt(lua_State *L, int idx, const char *what)
{
    size_t n;
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: the prompt must be a string", what);
    const char *p = lua_tolstring(L, idx, &n);
    if (n > MAX_PROMPT)
        luaL_error(L, "%s: the prompt is longer than %d bytes", what, MAX_PROMPT);
    if (memchr(p, '\0', n) != NULL)
        luaL_error(L, "%s: the prompt contains a NUL byte", what);
    return p;
}

/* The prompts and system texts of one call are copied out of the Lua heap (once per expert),
 * where the panel's memory limit does not count them: their sum is bounded instead. */
static void check_batch_text(lua_State *L, size_t total, const char *what)
{
    if (total > MAX_BATCH_TEXT)
        luaL_error(L, "%s: the prompts and system texts of one call add up to more than %d MiB",
                   what, MAX_BATCH_TEXT / (1024 * 1024));
}

static int ctx_ask(lua_State *L)
{
    script_panel *sp = self(L);
    check_self(L, sp, "ask");
    ensure_yieldable(L, sp, "ctx:ask");
    const expert_ref *e = resolve_expert(L, sp, 2, "ctx:ask");
    const char *prompt = check_prompt(L, 3, "ctx:ask");
    charge_turns(L, sp, 1);
    ask_opts o;
    read_opts(L, 4, &o, "ctx:ask");
    check_batch_text(L, strlen(prompt) + o.system_len, "ctx:ask");
    char *schema =
        o.schema_idx ? encode_or_raise(L, o.schema_idx, MAX_EVENT_DATA, "opts.schema") : NULL;
    clear_pending(sp);
    sp->asks = calloc(1, sizeof *sp->asks);
    if (sp->asks == NULL) {
        free(schema);
        return luaL_error(L, "out of memory");
    }
    sp->n_asks = 1;
    sp->batch_schema = schema;
    if (!fill_ask(&sp->asks[0], e, prompt, &o)) {
        clear_pending(sp);
        return luaL_error(L, "out of memory");
    }
    return finish_batch(L, sp, PEND_ASK);
}

static int ctx_ask_all(lua_State *L)
{
    script_panel *sp = self(L);
    check_self(L, sp, "ask_all");
    ensure_yieldable(L, sp, "ctx:ask_all");
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    if (n > SCRIPT_MAX_ASKS)
        return luaL_error(L, "ctx:ask_all: at most %d experts per call", SCRIPT_MAX_ASKS);
    charge_turns(L, sp, n);
    int pt = lua_type(L, 3);
    if (pt != LUA_TSTRING && pt != LUA_TFUNCTION)
        return luaL_error(L, "ctx:ask_all: the prompt must be a string or function(expert)");
    ask_opts o;
    read_opts(L, 4, &o, "ctx:ask_all");
    /* Resolve every expert and prompt first (prompt functions may raise), keeping the
     * prompts on the stack, then copy into C memory in one go. */
    luaL_checkstack(L, (int)n * 2 + 8, "ctx:ask_all");
    int base = lua_gettop(L);
    size_t total = 0;
    const expert_ref **refs = NULL;
    if (n > 0) {
        refs = lua_newuserdatauv(L, sizeof *refs * (size_t)n, 0);
        base = lua_gettop(L);
    }
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        refs[i - 1] = resolve_expert(L, sp, -1, "ctx:ask_all");
        if (pt == LUA_TFUNCTION) {
            lua_pushvalue(L, 3);
            lua_insert(L, -2);
            lua_call(L, 1, 1);
        } else {
            lua_pop(L, 1);
            lua_pushvalue(L, 3);
        }
        check_prompt(L, -1, "ctx:ask_all");
        total += lua_rawlen(L, -1) + o.system_len;
        check_batch_text(L, total, "ctx:ask_all");
    }
    char *schema =
        o.schema_idx ? encode_or_raise(L, o.schema_idx, MAX_EVENT_DATA, "opts.schema") : NULL;
    clear_pending(sp);
    sp->asks = calloc(n > 0 ? (size_t)n : 1, sizeof *sp->asks);
    if (sp->asks == NULL) {
        free(schema);
        return luaL_error(L, "out of memory");
    }
    sp->n_asks = (size_t)n;
    sp->batch_schema = schema;
    bool ok = true;
    for (lua_Integer i = 0; i < n && ok; i++)
        ok = fill_ask(&sp->asks[i], refs[i], lua_tostring(L, base + 1 + (int)i), &o);
    if (!ok) {
        clear_pending(sp);
        return luaL_error(L, "out of memory");
    }
    if (n == 0) {
        clear_pending(sp);
        lua_newtable(L);
        return 1;
    }
    return finish_batch(L, sp, PEND_ASK_ALL);
}

/* ---- ctx:emit / ctx:log / ctx:done ----------------------------------------------------- */

static int ctx_emit(lua_State *L)
{
    script_panel *sp = self(L);
    check_self(L, sp, "emit");
    size_t tl = 0;
    const char *type = luaL_checklstring(L, 2, &tl);
    if (strlen(type) != tl || !valid_event_type(type))
        return luaL_error(L, "ctx:emit: bad event type (use lower-case words separated by dots, "
                             "e.g. \"round.started\")");
    for (size_t i = 0; i < sizeof reserved_types / sizeof reserved_types[0]; i++)
        if (strcmp(type, reserved_types[i]) == 0)
            return luaL_error(L, "ctx:emit: '%s' is emitted by the host, not by scripts", type);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    char *data = lua_isnoneornil(L, 3) ? strdup("{}")
                                       : encode_or_raise(L, 3, MAX_EVENT_DATA, "ctx:emit data");
    if (data == NULL)
        return luaL_error(L, "out of memory");
    if (!quota_allows_event(sp, strlen(data))) {
        free(data);
        return quota_error(L);
    }
    int64_t seq = 0;
    ap_err err = {0};
    ap_status rc = sp->host.emit(sp->host.ud, type, data, &seq, &err);
    free(data);
    if (rc != AP_OK)
        return luaL_error(L, "ctx:emit: %s", err.msg);
    lua_pushinteger(L, seq);
    return 1;
}

static int ctx_log(lua_State *L)
{
    script_panel *sp = self(L);
    check_self(L, sp, "log");
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    int level = luaL_checkoption(L, 2, "info", levels);
    luaL_checkany(L, 3);
    if (++sp->node_logs > NODE_MAX_LOGS) {
        if (sp->node_logs == NODE_MAX_LOGS + 1)
            sp->host.log(sp->host.ud, 2, "log quota of the node reached: further lines dropped");
        return 0;
    }
    size_t n;
    script_vm_tostring(L, 3);
    const char *msg = lua_tolstring(L, -1, &n);
    char line[2048];
    snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line - 1 ? n : sizeof line - 1), msg);
    sp->host.log(sp->host.ud, level, line);
    return 0;
}

static int ctx_done(lua_State *L)
{
    script_panel *sp = self(L);
    check_self(L, sp, "done");
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    char *result =
        lua_isnoneornil(L, 2) ? NULL : encode_or_raise(L, 2, MAX_RESULT, "ctx:done result");
    free(sp->result_json);
    sp->result_json = result;
    sp->done = true;
    return 0;
}

/* ---- ctx:consensus --------------------------------------------------------------------- */

/* Pushes the consensus function `name`, loading it once per panel. */
static void push_consensus_fn(lua_State *L, script_panel *sp, const char *name)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, sp->cache_ref);
    if (lua_getfield(L, -1, name) == LUA_TFUNCTION) {
        lua_remove(L, -2);
        return;
    }
    lua_pop(L, 1);
    char *src = NULL;
    size_t len = 0;
    ap_err err = {0};
    if (sp->host.consensus_source(sp->host.ud, name, &src, &len, &err) != AP_OK) {
        free(src);
        luaL_error(L, "ctx:consensus: %s", err.msg);
    }
    char chunk[MAX_NAME_LEN + 32];
    snprintf(chunk, sizeof chunk, "=consensus/%s.lua", name);
    ap_status rc = script_vm_load(sp->vm, L, chunk, src, len, &err);
    free(src);
    if (rc != AP_OK)
        luaL_error(L, "ctx:consensus: %s", err.msg);
    lua_call(L, 0, 1);
    if (lua_type(L, -1) != LUA_TFUNCTION)
        luaL_error(L, "consensus script '%s' must return a function(ballots, opts)", name);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
    lua_remove(L, -2);
}

/* Checks a consensus result at idx: a table with a finite level in [0, 1]. */
static void check_consensus_result(lua_State *L, int idx, const char *name)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "consensus '%s' returned a %s, expected a result table", name,
                   luaL_typename(L, idx));
    lua_pushliteral(L, "level");
    lua_rawget(L, idx);
    int isnum = 0;
    /* a number, not a string Lua would convert ("0x0.8" was stored as given) */
    lua_Number level = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumberx(L, -1, &isnum) : 0;
    if (!isnum || !isfinite(level) || level < 0 || level > 1)
        luaL_error(L, "consensus '%s' returned a level that is not a number from 0 to 1", name);
    lua_pop(L, 1);
    lua_pushliteral(L, "algorithm");
    if (lua_rawget(L, idx) == LUA_TNIL) {
        lua_pushliteral(L, "algorithm");
        lua_pushstring(L, name);
        script_vm_rawset(L, idx); /* the script's table, which it may have filled */
    }
    lua_pop(L, 1);
}

static int ctx_consensus(lua_State *L)
{
    script_panel *sp = self(L);
    check_self(L, sp, "consensus");
    const char *name = lua_isnoneornil(L, 2) ? sp->consensus : luaL_checkstring(L, 2);
    if (name == NULL)
        return luaL_error(L, "ctx:consensus: no algorithm given and the panel has none");
    if (!valid_name(name))
        return luaL_error(L, "ctx:consensus: bad algorithm name (use a-z, 0-9, '_', '-')");
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 4);
    if (lua_isnil(L, 4)) {
        lua_newtable(L);
        lua_replace(L, 4);
    }
    luaL_checktype(L, 4, LUA_TTABLE);
    push_consensus_fn(L, sp, name);
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 4);
    sp->in_consensus++;
    int st = lua_pcall(L, 2, 1, 0);
    sp->in_consensus--;
    script_vm_note(L, st);
    if (st != LUA_OK)
        return lua_error(L);
    int res = lua_gettop(L);
    check_consensus_result(L, res, name);
    char *json = encode_or_raise(L, res, MAX_EVENT_DATA, "consensus result");
    size_t cap = strlen(json) + strlen(name) + 40;
    char *data = malloc(cap);
    if (data == NULL) {
        free(json);
        return luaL_error(L, "out of memory");
    }
    snprintf(data, cap, "{\"algorithm\":\"%s\",\"result\":%s}", name, json);
    free(json);
    if (!quota_allows_event(sp, strlen(data))) {
        free(data);
        return quota_error(L);
    }
    int64_t seq = 0;
    ap_err err = {0};
    ap_status rc = sp->host.emit(sp->host.ud, "consensus", data, &seq, &err);
    free(data);
    if (rc != AP_OK)
        return luaL_error(L, "ctx:consensus: %s", err.msg);
    lua_settop(L, res);
    return 1;
}

/* ---- ctx:await_input ------------------------------------------------------------------- */

static int input_cont(lua_State *L, int status, lua_KContext kctx)
{
    (void)status;
    (void)kctx;
    script_panel *sp = self(L);
    script_vm_check(L);
    ap_err err = {0};
    const char *in = sp->input_json != NULL ? sp->input_json : "{}";
    if (script_json_push(L, in, strlen(in), &err) != AP_OK) {
        clear_pending(sp);
        return luaL_error(L, "ctx:await_input: %s", err.msg);
    }
    clear_pending(sp);
    return 1;
}

static int ctx_await_input(lua_State *L)
{
    script_panel *sp = self(L);
    check_self(L, sp, "await_input");
    ensure_yieldable(L, sp, "ctx:await_input");
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_createtable(L, 0, 1);
        lua_pushvalue(L, 2);
        lua_setfield(L, -2, "prompt");
        lua_replace(L, 2);
    }
    luaL_checktype(L, 2, LUA_TTABLE);
    char *req = encode_or_raise(L, 2, MAX_EVENT_DATA, "ctx:await_input request");
    clear_pending(sp);
    sp->input_request = req;
    sp->pending = PEND_INPUT;
    return lua_yieldk(L, 0, 0, input_cont);
}

/* ---- building a panel ------------------------------------------------------------------ */

typedef struct build_job {
    script_panel *sp;
    const script_inputs *in;
    ap_err *err;
} build_job;

/* max: the most bytes json may have (the bound it was encoded with). */
static void push_json_or_empty(lua_State *L, const char *json, size_t max, ap_err *err,
                               const char *what)
{
    if (json == NULL || json[0] == '\0') {
        lua_newtable(L);
        return;
    }
    if (script_json_push_max(L, json, strlen(json), max, err) != AP_OK)
        luaL_error(L, "%s: %s", what, err->msg);
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
}

static int build_ctx(lua_State *L)
{
    build_job *job = lua_touserdata(L, 1);
    script_panel *sp = job->sp;
    const script_inputs *in = job->in;
    lua_createtable(L, 0, 16);
    int ctx = lua_gettop(L);
    lua_pushstring(L, in->question != NULL ? in->question : "");
    lua_setfield(L, ctx, "question");
    lua_pushstring(L, in->panel_id != NULL ? in->panel_id : "");
    lua_setfield(L, ctx, "panel_id");
    push_json_or_empty(L, in->params_json, SCRIPT_JSON_DECODE_MAX, job->err, "params");
    lua_setfield(L, ctx, "params");
    push_json_or_empty(L, in->experts_json, SCRIPT_JSON_DECODE_MAX, job->err, "experts");
    lua_setfield(L, ctx, "experts");
    push_json_or_empty(L, in->tenant_json, SCRIPT_JSON_DECODE_MAX, job->err, "tenant");
    lua_setfield(L, ctx, "tenant");
    push_json_or_empty(L, in->state_json, MAX_STATE, job->err, "state");
    lua_setfield(L, ctx, "state");
    if (sp->consensus != NULL) {
        lua_pushstring(L, sp->consensus);
        lua_setfield(L, ctx, "consensus_algorithm");
    }
    static const luaL_Reg methods[] = {
        {"ask", ctx_ask},
        {"ask_all", ctx_ask_all},
        {"emit", ctx_emit},
        {"log", ctx_log},
        {"done", ctx_done},
        {"consensus", ctx_consensus},
        {"await_input", ctx_await_input},
        {NULL, NULL},
    };
    lua_pushlightuserdata(L, sp);
    luaL_setfuncs(L, methods, 1);
    lua_pushvalue(L, ctx);
    sp->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    sp->cache_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static ap_status experts_of_tree(script_panel *sp, const char *json, ap_err *err)
{
    ap_err inner = {0};
    cJSON *arr = jsonx_parse(json, strlen(json), 32, &inner);
    ap_status rc = AP_OK;
    if (arr == NULL || !cJSON_IsArray(arr)) {
        rc = ap_err_set(err, AP_INVALID, "experts must be a JSON array");
        goto out;
    }
    size_t n = (size_t)cJSON_GetArraySize(arr);
    sp->experts = calloc(n > 0 ? n : 1, sizeof *sp->experts);
    if (sp->experts == NULL) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        const char *id = jsonx_string(e, "id");
        if (id == NULL || id[0] == '\0') {
            rc = ap_err_set(err, AP_INVALID, "every expert needs an id");
            goto out;
        }
        expert_ref *r = &sp->experts[sp->n_experts];
        const char *name = jsonx_string(e, "name"), *model = jsonx_string(e, "model");
        r->id = strdup(id);
        r->json = jsonx_print(e);
        r->name = dup_or_null(name);
        r->model = dup_or_null(model);
        sp->n_experts++;
        if (r->id == NULL || r->json == NULL || (name != NULL && r->name == NULL) ||
            (model != NULL && r->model == NULL)) {
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
            goto out;
        }
    }
out:
    cJSON_Delete(arr);
    return rc;
}

/* A copy of string token i, decoded (never longer than its text); NULL on no memory. */
static char *view_strdup(const jview *v, int i)
{
    size_t cap = v->tok[i].end - v->tok[i].start;
    char *out = malloc(cap);
    if (out != NULL)
        jview_string(v, i, out, cap);
    return out;
}

/* The experts read through a token view: no tree, and each expert's JSON is its own text. */
static ap_status experts_of_view(script_panel *sp, const jview *v, ap_err *err)
{
    if (jview_type_of(v, 0) != JVIEW_ARRAY)
        return ap_err_set(err, AP_INVALID, "experts must be a JSON array");
    uint32_t n = jview_count(v, 0);
    sp->experts = calloc(n > 0 ? n : 1, sizeof *sp->experts);
    if (sp->experts == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    uint32_t e = 1;
    for (uint32_t k = 0; k < n; k++, e = v->tok[e].next) {
        int id = jview_get(v, (int)e, "id");
        int name = jview_get(v, (int)e, "name"), model = jview_get(v, (int)e, "model");
        if (jview_type_of(v, id) != JVIEW_STRING || v->tok[id].end - v->tok[id].start <= 2)
            return ap_err_set(err, AP_INVALID, "every expert needs an id");
        expert_ref *r = &sp->experts[sp->n_experts++];
        r->id = view_strdup(v, id);
        r->json = strndup(v->src + v->tok[e].start, v->tok[e].end - v->tok[e].start);
        r->name = jview_type_of(v, name) == JVIEW_STRING ? view_strdup(v, name) : NULL;
        r->model = jview_type_of(v, model) == JVIEW_STRING ? view_strdup(v, model) : NULL;
        if (r->id == NULL || r->json == NULL ||
            (jview_type_of(v, name) == JVIEW_STRING && r->name == NULL) ||
            (jview_type_of(v, model) == JVIEW_STRING && r->model == NULL))
            return ap_err_set(err, AP_NOMEM, "out of memory");
        if (r->id[0] == '\0')
            return ap_err_set(err, AP_INVALID, "every expert needs an id");
    }
    return AP_OK;
}

/* Answers, ballots and events name their expert by id: two experts must never share one
 * (an id cut at a NUL byte could equal another). */
static ap_status check_roster(const script_panel *sp, ap_err *err)
{
    if (sp->n_experts > MAX_EXPERTS)
        return ap_err_set(err, AP_INVALID, "a panel has at most %d experts, not %zu", MAX_EXPERTS,
                          sp->n_experts);
    for (size_t i = 0; i < sp->n_experts; i++) {
        const char *id = sp->experts[i].id, *model = sp->experts[i].model;
        if (strlen(id) > MAX_EXPERT_ID)
            return ap_err_set(err, AP_INVALID, "expert id '%.40s...' is longer than %d bytes", id,
                              MAX_EXPERT_ID);
        /* The store records usage per model name: a longer one would be run and never
         * accounted. */
        if (model != NULL && model[0] == '\0')
            return ap_err_set(err, AP_INVALID,
                              "expert '%s': empty model name (leave it out for "
                              "the panel's model)",
                              id);
        if (model != NULL && strlen(model) > SCRIPT_MODEL_NAME_MAX)
            return ap_err_set(err, AP_INVALID, "expert '%s': model name longer than %d bytes", id,
                              SCRIPT_MODEL_NAME_MAX);
        for (size_t j = 0; j < i; j++)
            if (strcmp(sp->experts[j].id, id) == 0)
                return ap_err_set(err, AP_INVALID, "expert id '%s' appears twice in the roster",
                                  id);
    }
    return AP_OK;
}

/* Strict JSON (what the engine stores) is read through a view; anything else through cJSON,
 * which reads more. */
static ap_status load_experts(script_panel *sp, const char *json, ap_err *err)
{
    if (json == NULL || json[0] == '\0')
        return AP_OK;
    jview v;
    ap_status rc = jview_parse(&v, json, strlen(json), 32, NULL) == AP_OK
                       ? experts_of_view(sp, &v, err)
                       : experts_of_tree(sp, json, err);
    jview_free(&v);
    return rc == AP_OK ? check_roster(sp, err) : rc;
}

/* ---- loading and checking a strategy --------------------------------------------------- */

typedef struct check_job {
    script_kind kind;
    const char *name;
    script_info *info;
    int nodes_ref;
    ap_err *err;
} check_job;

static char *lua_strdup_field(lua_State *L, int t, const char *key, bool *bad)
{
    lua_pushstring(L, key);
    int ty = lua_rawget(L, t);
    char *s = NULL;
    if (ty == LUA_TSTRING)
        s = strdup(lua_tostring(L, -1));
    else if (ty != LUA_TNIL)
        *bad = true;
    lua_pop(L, 1);
    return s;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Runs with the chunk's return value at index 2; contract problems are reported through
 * job->err and an AP_INVALID-style return of 1. */
static int check_failed(lua_State *L)
{
    lua_pushboolean(L, 0);
    return 1;
}

static int check_strategy(lua_State *L)
{
    check_job *job = lua_touserdata(L, 1);
    script_info *info = job->info;
    ap_err *err = job->err;
    const char *name = job->name;
    if (job->kind == SCRIPT_CONSENSUS) {
        if (lua_type(L, 2) != LUA_TFUNCTION) {
            ap_err_set(err, AP_INVALID,
                       "%s.lua must return a function(ballots, opts), but it returns a %s", name,
                       luaL_typename(L, 2));
            return check_failed(L);
        }
        info->name = strdup(name);
        info->description = strdup("");
        info->params_json = strdup("{}");
        info->nodes_json = strdup("[]");
        lua_pushboolean(L, 1);
        return 1;
    }
    if (lua_type(L, 2) != LUA_TTABLE) {
        ap_err_set(err, AP_INVALID,
                   "%s.lua must return the strategy table (return { name = ..., start = ..., "
                   "nodes = { ... } }), but it returns a %s",
                   name, luaL_typename(L, 2));
        return check_failed(L);
    }
    bool bad = false;
    info->name = lua_strdup_field(L, 2, "name", &bad);
    if (bad || info->name == NULL) {
        ap_err_set(err, AP_INVALID, "the strategy has no name: add name = \"%s\"", name);
        return check_failed(L);
    }
    if (strcmp(info->name, name) != 0) {
        ap_err_set(err, AP_INVALID,
                   "the strategy is named '%.60s' but its file is %s.lua; the two must match",
                   info->name, name);
        return check_failed(L);
    }
    info->description = lua_strdup_field(L, 2, "description", &bad);
    if (bad) {
        ap_err_set(err, AP_INVALID, "description must be a string");
        return check_failed(L);
    }
    if (info->description == NULL)
        info->description = strdup("");
    info->consensus = lua_strdup_field(L, 2, "consensus", &bad);
    if (bad || (info->consensus != NULL && !valid_name(info->consensus))) {
        ap_err_set(err, AP_INVALID,
                   "consensus must name a consensus algorithm, such as \"majority\"");
        return check_failed(L);
    }
    lua_pushliteral(L, "nodes");
    if (lua_rawget(L, 2) != LUA_TTABLE) {
        ap_err_set(err, AP_INVALID,
                   "the strategy has no nodes: add nodes = { <name> = function(ctx) ... end }");
        return check_failed(L);
    }
    int nodes = lua_gettop(L);
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, nodes) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            ap_err_set(err, AP_INVALID,
                       "every node must have a name (nodes = { name = function(ctx) ... end })");
            return check_failed(L);
        }
        size_t nl = 0;
        const char *node = lua_tolstring(L, -2, &nl);
        if (nl == 0 || nl > MAX_NODE_NAME_LEN || memchr(node, '\0', nl) != NULL) {
            ap_err_set(err, AP_INVALID, "node names must be 1 to %d characters ('%.60s')",
                       MAX_NODE_NAME_LEN, node);
            return check_failed(L);
        }
        if (lua_type(L, -1) != LUA_TFUNCTION) {
            ap_err_set(err, AP_INVALID, "node '%.60s' must be a function(ctx), not a %s", node,
                       luaL_typename(L, -1));
            return check_failed(L);
        }
        count++;
        lua_pop(L, 1);
    }
    if (count == 0 || count > 1000) {
        ap_err_set(err, AP_INVALID, "the strategy must have between 1 and 1000 nodes");
        return check_failed(L);
    }
    info->start = lua_strdup_field(L, 2, "start", &bad);
    if (bad || info->start == NULL) {
        ap_err_set(err, AP_INVALID,
                   "the strategy has no start node: add start = \"<name of the first node>\"");
        return check_failed(L);
    }
    lua_pushstring(L, info->start);
    if (lua_rawget(L, nodes) != LUA_TFUNCTION) {
        ap_err_set(err, AP_INVALID, "start names node '%.60s', which is not in nodes", info->start);
        return check_failed(L);
    }
    lua_pop(L, 1);
    /* node names, sorted, as JSON */
    const char **names = lua_newuserdatauv(L, count * sizeof *names, 0);
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, nodes) != 0 && k < count) {
        names[k++] = lua_tostring(L, -2);
        lua_pop(L, 1);
    }
    qsort(names, k, sizeof *names, compare_strings);
    lua_createtable(L, (int)k, 0);
    for (size_t i = 0; i < k; i++) {
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    ap_err inner = {0};
    if (script_json_encode(L, -1, MAX_EVENT_DATA, &info->nodes_json, &inner) != AP_OK) {
        ap_err_set(err, AP_INVALID, "%s", inner.msg);
        return check_failed(L);
    }
    lua_pop(L, 2);
    lua_pushliteral(L, "params");
    int pt = lua_rawget(L, 2);
    if (pt == LUA_TNIL) {
        info->params_json = strdup("{}");
    } else if (pt != LUA_TTABLE) {
        ap_err_set(err, AP_INVALID, "params must be a table of param declarations");
        return check_failed(L);
    } else if (script_json_encode(L, -1, MAX_EVENT_DATA, &info->params_json, &inner) != AP_OK) {
        ap_err_set(err, AP_INVALID, "params must be plain data (%s)", inner.msg);
        return check_failed(L);
    } else if (strcmp(info->params_json, "[]") == 0) {
        free(info->params_json);
        info->params_json = strdup("{}");
    }
    lua_pop(L, 1);
    if (info->params_json != NULL && info->params_json[0] != '{') {
        ap_err_set(err, AP_INVALID, "params must map param names to declarations");
        return check_failed(L);
    }
    if (info->params_json != NULL && script_params_check_decl(info->params_json, err) != AP_OK)
        return check_failed(L);
    if (info->name == NULL || info->description == NULL || info->params_json == NULL ||
        info->nodes_json == NULL) {
        ap_err_set(err, AP_NOMEM, "out of memory");
        return check_failed(L);
    }
    lua_pushvalue(L, nodes);
    job->nodes_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushboolean(L, 1);
    return 1;
}

/* Loads, runs and checks a script on vm; on success for a strategy, *nodes_ref holds the
 * nodes table. */
static ap_status load_and_check(script_vm *vm, script_kind kind, const char *name,
                                const char *source, size_t len, script_info *info, int *nodes_ref,
                                ap_err *err)
{
    lua_State *L = script_vm_state(vm);
    char chunk[MAX_NAME_LEN + 32];
    memset(info, 0, sizeof *info);
    info->kind = kind;
    if (!valid_name(name))
        return ap_err_set(err, AP_INVALID,
                          "bad script name '%.70s' (use a-z, 0-9, '_' and '-', at most %d)", name,
                          MAX_NAME_LEN);
    snprintf(chunk, sizeof chunk, kind == SCRIPT_CONSENSUS ? "=consensus/%s.lua" : "=%s.lua", name);
    if (script_vm_load(vm, L, chunk, source, len, err) != AP_OK)
        return err != NULL ? err->status : AP_INVALID;
    script_vm_budget_reset(vm);
    script_vm_slice_begin(vm, L);
    int status = lua_pcall(L, 0, 1, 0);
    script_vm_note(L, status);
    script_vm_slice_end(vm);
    char msg[AP_ERR_MSG_MAX];
    if (script_vm_tripped(vm, msg, sizeof msg)) {
        lua_pop(L, 1);
        return ap_err_set(err, AP_LIMIT, "%s.lua: %s", name, msg);
    }
    if (status != LUA_OK) {
        script_vm_error_text(L, -1, msg, sizeof msg);
        lua_pop(L, 1);
        return ap_err_set(err, AP_INVALID, "%s", msg);
    }
    check_job job = {kind, name, info, LUA_NOREF, err};
    ap_err_clear(err);
    lua_pushcfunction(L, check_strategy);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, &job);
    lua_insert(L, -2);
    /* The check encodes what the script returned (params, nodes): walking a table shared many
     * times takes time its small output does not bound, so it runs on the same budget. */
    script_vm_slice_begin(vm, L);
    status = lua_pcall(L, 2, 1, 0);
    script_vm_note(L, status);
    script_vm_slice_end(vm);
    bool ok = status == LUA_OK && lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!ok) {
        if (script_vm_tripped(vm, msg, sizeof msg))
            ap_err_set(err, AP_LIMIT, "%s.lua: %s", name, msg);
        else if (err == NULL || err->status == AP_OK)
            ap_err_set(err, AP_NOMEM, "out of memory while checking %s.lua", name);
        return err != NULL ? err->status : AP_INVALID;
    }
    if (nodes_ref != NULL)
        *nodes_ref = job.nodes_ref;
    return AP_OK;
}

void script_info_free(script_info *info)
{
    if (info == NULL)
        return;
    free(info->name);
    free(info->description);
    free(info->start);
    free(info->consensus);
    free(info->params_json);
    free(info->nodes_json);
    memset(info, 0, sizeof *info);
}

ap_status script_inspect(const script_limits *lim, script_kind kind, const char *name,
                         const char *source, size_t len, script_info *out, ap_err *err)
{
    script_vm *vm = NULL;
    memset(out, 0, sizeof *out);
    ap_status rc = script_vm_new(lim, NULL, NULL, &vm, err);
    if (rc == AP_OK)
        rc = load_and_check(vm, kind, name, source, len, out, NULL, err);
    if (rc != AP_OK)
        script_info_free(out);
    script_vm_free(vm);
    return rc;
}

/* ---- consensus dry run ----------------------------------------------------------------- */

typedef struct dry_job {
    const char *name, *ballots, *opts;
    char *result;
    ap_err *err;
} dry_job;

static int dry_run_protected(lua_State *L)
{
    dry_job *job = lua_touserdata(L, 1);
    /* The function is at index 2. */
    if (script_json_push(L, job->ballots, strlen(job->ballots), job->err) != AP_OK)
        return luaL_error(L, "ballots: %s", job->err->msg);
    if (job->opts != NULL) {
        if (script_json_push(L, job->opts, strlen(job->opts), job->err) != AP_OK)
            return luaL_error(L, "opts: %s", job->err->msg);
    } else {
        lua_newtable(L);
    }
    lua_call(L, 2, 1);
    check_consensus_result(L, -1, job->name);
    job->result = encode_or_raise(L, -1, MAX_EVENT_DATA, "consensus result");
    return 0;
}

ap_status script_consensus_dry_run(const script_limits *lim, const char *name, const char *source,
                                   size_t len, const char *ballots_json, const char *opts_json,
                                   char **result_json, ap_err *err)
{
    script_vm *vm = NULL;
    script_info info;
    dry_job job = {name, ballots_json, opts_json, NULL, err};
    *result_json = NULL;
    ap_status rc = script_vm_new(lim, NULL, NULL, &vm, err);
    if (rc != AP_OK)
        return rc;
    lua_State *L = script_vm_state(vm);
    char chunk[MAX_NAME_LEN + 32];
    snprintf(chunk, sizeof chunk, "=consensus/%s.lua", name);
    rc = load_and_check(vm, SCRIPT_CONSENSUS, name, source, len, &info, NULL, err);
    script_info_free(&info);
    if (rc != AP_OK)
        goto out;
    /* Load again to get the function itself (load_and_check only looked at it). */
    if ((rc = script_vm_load(vm, L, chunk, source, len, err)) != AP_OK)
        goto out;
    script_vm_budget_reset(vm);
    script_vm_slice_begin(vm, L);
    int status = lua_pcall(L, 0, 1, 0); /* the chunk returns the function */
    if (status == LUA_OK) {
        lua_pushcfunction(L, dry_run_protected);
        lua_insert(L, -2);
        lua_pushlightuserdata(L, &job);
        lua_insert(L, -2);
        status = lua_pcall(L, 2, 0, 0);
    }
    script_vm_note(L, status);
    script_vm_slice_end(vm);
    char msg[AP_ERR_MSG_MAX];
    if (script_vm_tripped(vm, msg, sizeof msg)) {
        rc = ap_err_set(err, AP_LIMIT, "consensus/%s.lua: %s", name, msg);
    } else if (status != LUA_OK) {
        script_vm_error_text(L, -1, msg, sizeof msg);
        rc = ap_err_set(err, AP_INVALID, "%s", msg);
    } else {
        *result_json = job.result;
        job.result = NULL;
    }
    free(job.result);
out:
    script_vm_free(vm);
    return rc;
}

/* ---- the panel ------------------------------------------------------------------------- */

static void panel_log(void *ud, int level, const char *msg)
{
    script_panel *sp = ud;
    if (++sp->node_logs > NODE_MAX_LOGS) {
        if (sp->node_logs == NODE_MAX_LOGS + 1)
            sp->host.log(sp->host.ud, 2, "log quota of the node reached: further lines dropped");
        return;
    }
    sp->host.log(sp->host.ud, level, msg);
}

ap_status script_panel_new(const script_limits *lim, const script_host *host, const char *name,
                           const char *source, size_t len, const script_inputs *in,
                           script_panel **out, ap_err *err)
{
    script_info info = {0};
    *out = NULL;
    script_panel *sp = calloc(1, sizeof *sp);
    if (sp == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    sp->host = *host;
    sp->ctx_ref = sp->nodes_ref = sp->cache_ref = sp->co_ref = LUA_NOREF;
    ap_status rc = script_vm_new(lim, panel_log, sp, &sp->vm, err);
    if (rc != AP_OK)
        goto fail;
    sp->L = script_vm_state(sp->vm);
    if ((rc = load_and_check(sp->vm, SCRIPT_STRATEGY, name, source, len, &info, &sp->nodes_ref,
                             err)) != AP_OK)
        goto fail;
    sp->name = strdup(name);
    sp->start = info.start;
    info.start = NULL;
    const char *consensus =
        in->consensus != NULL && in->consensus[0] != '\0' ? in->consensus : info.consensus;
    sp->consensus = dup_or_null(consensus);
    if (sp->name == NULL || (consensus != NULL && sp->consensus == NULL)) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = load_experts(sp, in->experts_json, err)) != AP_OK)
        goto fail;
    build_job job = {sp, in, err};
    ap_err_clear(err);
    lua_pushcfunction(sp->L, build_ctx);
    lua_pushlightuserdata(sp->L, &job);
    if (lua_pcall(sp->L, 1, 0, 0) != LUA_OK) {
        lua_pop(sp->L, 1);
        if (err == NULL || err->status == AP_OK)
            ap_err_set(err, AP_NOMEM, "out of memory while building ctx");
        rc = err != NULL ? err->status : AP_NOMEM;
        goto fail;
    }
    script_info_free(&info);
    *out = sp;
    return AP_OK;
fail:
    script_info_free(&info);
    script_panel_free(sp);
    return rc;
}

static void free_experts(script_panel *sp)
{
    for (size_t i = 0; i < sp->n_experts; i++) {
        free(sp->experts[i].id);
        free(sp->experts[i].json);
        free(sp->experts[i].name);
        free(sp->experts[i].model);
    }
    free(sp->experts);
}

ap_status script_roster_check(const char *experts_json, ap_err *err)
{
    script_panel sp = {0};
    ap_status rc = load_experts(&sp, experts_json, err);
    free_experts(&sp);
    return rc;
}

void script_panel_free(script_panel *sp)
{
    if (sp == NULL)
        return;
    clear_pending(sp);
    script_vm_free(sp->vm);
    free_experts(sp);
    free(sp->name);
    free(sp->start);
    free(sp->consensus);
    free(sp->node);
    free(sp->result_json);
    free(sp->next_node);
    free(sp);
}

const char *script_panel_start_node(const script_panel *sp)
{
    return sp->start;
}

size_t script_panel_memory(const script_panel *sp)
{
    return script_vm_memory(sp->vm);
}

size_t script_panel_held(const script_panel *sp)
{
    return script_vm_held(sp->vm);
}

static void release_coroutine(script_panel *sp)
{
    if (sp->co_ref != LUA_NOREF) {
        luaL_unref(sp->L, LUA_REGISTRYINDEX, sp->co_ref);
        sp->co_ref = LUA_NOREF;
    }
    sp->co = NULL;
}

__attribute__((format(printf, 3, 4))) static ap_status
fail_step(script_panel *sp, script_step *step, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    step->outcome = SCRIPT_FAILED;
    vsnprintf(step->error, sizeof step->error, fmt, ap);
    va_end(ap);
    clear_pending(sp);
    return AP_OK;
}

static ap_status run_slice(script_panel *sp, int nargs, script_step *step)
{
    lua_State *co = sp->co;
    int nres = 0;
    char msg[768];
    script_vm_slice_begin(sp->vm, co);
    int status = lua_resume(co, sp->L, nargs, &nres);
    script_vm_note(co, status);
    bool failed = status != LUA_OK && status != LUA_YIELD;
    if (failed) {
        script_vm_error_text(co, -1, msg, sizeof msg);
        /* Pending __close handlers run now, inside the slice: after it no clock stops them.
         * A limit raised from the hook leaves the coroutine with hooks off, where nothing
         * would stop them at all: then they do not run. */
        if (!script_vm_tripped(sp->vm, NULL, 0))
            lua_resetthread(co);
    }
    script_vm_slice_end(sp->vm);
    if (script_vm_tripped(sp->vm, msg, sizeof msg)) {
        release_coroutine(sp);
        return fail_step(sp, step, "node '%s': %s", sp->node, msg);
    }
    if (status == LUA_YIELD) {
        lua_pop(co, nres);
        if (sp->pending == PEND_ASK || sp->pending == PEND_ASK_ALL) {
            step->outcome = SCRIPT_ASK;
            step->asks = sp->ask_view;
            step->n_asks = sp->n_asks;
            return AP_OK;
        }
        if (sp->pending == PEND_INPUT) {
            step->outcome = SCRIPT_INPUT;
            step->input_request_json = sp->input_request;
            return AP_OK;
        }
        release_coroutine(sp);
        return fail_step(sp, step, "node '%s' yielded unexpectedly", sp->node);
    }
    if (failed) {
        release_coroutine(sp);
        return fail_step(sp, step, "node '%s': %s", sp->node, msg);
    }
    int t = nres > 0 ? lua_type(co, -nres) : LUA_TNIL;
    if (t == LUA_TNIL) {
        lua_pop(co, nres);
        release_coroutine(sp);
        step->outcome = SCRIPT_DONE;
        step->result_json = sp->result_json;
        return AP_OK;
    }
    if (t != LUA_TSTRING || sp->done) {
        const char *tn = lua_typename(co, t);
        lua_pop(co, nres);
        release_coroutine(sp);
        if (t == LUA_TSTRING)
            return fail_step(sp, step,
                             "node '%s' called ctx:done and then named a next node; after "
                             "ctx:done a node returns nothing (return ctx:done(result))",
                             sp->node);
        return fail_step(sp, step,
                         "node '%s' returned a %s; a node returns the name of the next node "
                         "or nothing (after ctx:done)",
                         sp->node, tn);
    }
    /* Looked up raw and by the returned string itself, as the check listed the nodes: this
     * runs outside any protected call, where a metamethod of the nodes table (script code)
     * or an allocation failing at the memory limit would abort the process. */
    size_t nl = 0;
    const char *next = lua_tolstring(co, -nres, &nl);
    lua_rawgeti(sp->L, LUA_REGISTRYINDEX, sp->nodes_ref);
    lua_pushvalue(co, -nres);
    lua_xmove(co, sp->L, 1);
    bool known = lua_rawget(sp->L, -2) == LUA_TFUNCTION && nl <= MAX_NODE_NAME_LEN &&
                 memchr(next, '\0', nl) == NULL;
    lua_pop(sp->L, 2);
    char *copy = known ? strndup(next, nl) : NULL;
    char shown[MAX_NODE_NAME_LEN + 1];
    snprintf(shown, sizeof shown, "%.*s", (int)(nl < MAX_NODE_NAME_LEN ? nl : MAX_NODE_NAME_LEN),
             next);
    lua_pop(co, nres);
    release_coroutine(sp);
    if (!known)
        return fail_step(sp, step, "node '%s' returned unknown node '%s'", sp->node, shown);
    if (copy == NULL)
        return AP_NOMEM;
    free(sp->next_node);
    sp->next_node = copy;
    step->outcome = SCRIPT_NEXT;
    step->next_node = sp->next_node;
    return AP_OK;
}

typedef struct start_job {
    script_panel *sp;
    const char *node;
    bool found;
} start_job;

static int start_protected(lua_State *L)
{
    start_job *job = lua_touserdata(L, 1);
    script_panel *sp = job->sp;
    lua_State *co = lua_newthread(L);
    sp->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sp->co = co;
    lua_rawgeti(L, LUA_REGISTRYINDEX, sp->nodes_ref);
    lua_pushstring(L, job->node);
    job->found = lua_rawget(L, -2) == LUA_TFUNCTION;
    if (!job->found)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, sp->ctx_ref);
    lua_xmove(L, co, 2);
    return 0;
}

ap_status script_panel_run_node(script_panel *sp, const char *node, uint64_t seed,
                                script_step *step)
{
    memset(step, 0, sizeof *step);
    clear_pending(sp);
    release_coroutine(sp);
    free(sp->node);
    sp->node = strdup(node);
    if (sp->node == NULL)
        return AP_NOMEM;
    char msg[512];
    if (script_vm_tripped(sp->vm, msg, sizeof msg))
        return fail_step(sp, step, "%s", msg);
    script_vm_budget_reset(sp->vm);
    sp->node_events = sp->node_turns = sp->node_logs = 0;
    sp->node_event_bytes = 0;
    if (script_vm_seed(sp->vm, seed) != AP_OK)
        return fail_step(sp, step, "out of memory");
    start_job job = {sp, node, false};
    lua_pushcfunction(sp->L, start_protected);
    lua_pushlightuserdata(sp->L, &job);
    if (lua_pcall(sp->L, 1, 0, 0) != LUA_OK) {
        lua_pop(sp->L, 1);
        release_coroutine(sp);
        return fail_step(sp, step, "out of memory starting a node");
    }
    if (!job.found) {
        release_coroutine(sp);
        return fail_step(sp, step, "unknown node '%s'", node);
    }
    return run_slice(sp, 1, step);
}

ap_status script_panel_deliver(script_panel *sp, size_t i, const script_answer *a, ap_err *err)
{
    if ((sp->pending != PEND_ASK && sp->pending != PEND_ASK_ALL) || i >= sp->n_asks)
        return ap_err_set(err, AP_CONFLICT, "no such pending ask");
    pending_ask *p = &sp->asks[i];
    if (p->delivered)
        return ap_err_set(err, AP_CONFLICT, "ask %zu was already answered", i);
    if (a->error != NULL) {
        p->error = strdup(a->error);
        if (p->error == NULL)
            return ap_err_set(err, AP_NOMEM, "out of memory");
    } else {
        p->text = strdup(a->text != NULL ? a->text : "");
        p->data_json = dup_or_null(a->data_json);
        if (p->text == NULL || (a->data_json != NULL && p->data_json == NULL))
            return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    p->prompt_tokens = a->prompt_tokens;
    p->completion_tokens = a->completion_tokens;
    p->delivered = true;
    return AP_OK;
}

ap_status script_panel_deliver_input(script_panel *sp, const char *input_json, ap_err *err)
{
    if (sp->pending != PEND_INPUT)
        return ap_err_set(err, AP_CONFLICT, "the panel is not waiting for input");
    free(sp->input_json);
    sp->input_json = strdup(input_json != NULL ? input_json : "{}");
    if (sp->input_json == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    sp->input_delivered = true;
    return AP_OK;
}

ap_status script_panel_resume(script_panel *sp, script_step *step)
{
    memset(step, 0, sizeof *step);
    if (sp->co == NULL || sp->pending == PEND_NONE)
        return AP_CONFLICT;
    if (sp->pending == PEND_INPUT && !sp->input_delivered)
        return AP_AGAIN;
    for (size_t i = 0; sp->pending != PEND_INPUT && i < sp->n_asks; i++)
        if (!sp->asks[i].delivered)
            return AP_AGAIN;
    return run_slice(sp, 0, step);
}

static int state_get(lua_State *L)
{
    script_panel *sp = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, sp->ctx_ref);
    lua_pushliteral(L, "state");
    lua_rawget(L, -2);
    return 1;
}

typedef struct state_job {
    script_panel *sp;
    const char *json;
    ap_err *err;
} state_job;

static int state_set(lua_State *L)
{
    state_job *job = lua_touserdata(L, 1);
    push_json_or_empty(L, job->json, MAX_STATE, job->err, "ctx.state");
    lua_rawgeti(L, LUA_REGISTRYINDEX, job->sp->ctx_ref);
    lua_pushliteral(L, "state");
    lua_pushvalue(L, -3);
    script_vm_rawset(L, -3); /* ctx, which the script may have filled with keys */
    return 0;
}

ap_status script_panel_state_save(script_panel *sp, char **out, ap_err *err)
{
    ap_status rc = script_panel_state_json(sp, out, err);
    if (rc != AP_OK)
        return rc;
    ap_err inner = {0};
    state_job job = {sp, *out, &inner};
    lua_pushcfunction(sp->L, state_set);
    lua_pushlightuserdata(sp->L, &job);
    int status = lua_pcall(sp->L, 1, 0, 0);
    if (status != LUA_OK) {
        char msg[AP_ERR_MSG_MAX];
        script_vm_note(sp->L, status);
        /* a limit says what tripped it (ctx grown past a table's limit, say) */
        if (!script_vm_tripped(sp->vm, msg, sizeof msg))
            script_vm_error_text(sp->L, -1, msg, sizeof msg);
        lua_pop(sp->L, 1);
        free(*out);
        *out = NULL;
        return ap_err_set(err, AP_LIMIT, "ctx.state cannot be restored: %s", msg);
    }
    return AP_OK;
}

ap_status script_panel_state_json(script_panel *sp, char **out, ap_err *err)
{
    *out = NULL;
    lua_pushcfunction(sp->L, state_get);
    lua_pushlightuserdata(sp->L, sp);
    if (lua_pcall(sp->L, 1, 1, 0) != LUA_OK) {
        lua_pop(sp->L, 1);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    ap_status rc;
    if (lua_isnil(sp->L, -1)) {
        *out = strdup("{}");
        rc = *out != NULL ? AP_OK : ap_err_set(err, AP_NOMEM, "out of memory");
    } else {
        /* Saving the state is part of its node: encoding a table shared many times takes
         * time the output size does not bound, so it runs on what is left of the node's. */
        ap_err inner = {0};
        script_vm_slice_begin(sp->vm, sp->L);
        rc = script_json_encode(sp->L, -1, MAX_STATE, out, &inner);
        script_vm_slice_end(sp->vm);
        if (rc != AP_OK)
            ap_err_set(err, rc, "ctx.state cannot be saved: %s", inner.msg);
    }
    lua_pop(sp->L, 1);
    return rc;
}
