#include "script/json.h"

#include "core/buf.h"
#include "core/jsonx.h"
#include "core/jview.h"
#include "script/sandbox.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CJSON_BYTES_PER_BYTE 40 /* what a cJSON tree can hold per byte of its text, at most */

/* The registry key of the metatable that marks a table as a JSON array. */
static const char array_marker_key = 'a';

/* ---- encoding ------------------------------------------------------------------------- */

typedef struct enc {
    lua_State *L;
    buf out;
    size_t reserved; /* bytes of out counted against the script's memory limit */
    ap_err *err;
    char path[128]; /* the key being encoded in the innermost object, for messages */
    size_t index;   /* or the element (from 1) in the innermost array, when not 0 */
} enc;

static ap_status enc_number(enc *e, int idx)
{
    char tmp[64];
    if (lua_isinteger(e->L, idx)) {
        size_t n = jsonx_int_text(tmp, lua_tointeger(e->L, idx));
        return buf_append(&e->out, tmp, n);
    }
    double d = lua_tonumber(e->L, idx);
    if (!isfinite(d))
        return buf_puts(&e->out, "null");
    snprintf(tmp, sizeof tmp, "%.15g", d);
    if (strtod(tmp, NULL) != d)
        snprintf(tmp, sizeof tmp, "%.17g", d);
    /* A whole float would read back as an integer; keep it a JSON number either way. */
    return buf_puts(&e->out, tmp);
}

static ap_status enc_value(enc *e, int idx, int depth);

typedef struct key_ref {
    const char *s; /* text of a string key (alive as long as the table is); NULL for a number */
    size_t n;
    char num[24]; /* text of a numeric key (at most 21 bytes: "%.14g" or an int64): refs move as
                     they are sorted and grown, so never pointed to, only read through key_text */
    int slot;     /* stack slot of the value */
} key_ref;

static const char *key_text(const key_ref *k)
{
    return k->s != NULL ? k->s : k->num;
}

#define ENC_SMALL_KEYS 8
#define ENC_MAX_KEYS 900000
#define ENC_CHECK_EVERY 64 /* keys of a walk between two budget checks (see enc_check) */

static int key_cmp(const void *a, const void *b)
{
    const key_ref *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(key_text(x), key_text(y), n);
    if (c != 0)
        return c;
    return x->n < y->n ? -1 : x->n > y->n ? 1 : 0;
}

static bool is_marked_array(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return false;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_marker_key);
    bool marked = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return marked;
}

/* Sorts the keys of an object; small ones by insertion (stable, like glibc's merge sort). */
static void sort_keys(key_ref *keys, size_t k)
{
    if (k > ENC_SMALL_KEYS) {
        qsort(keys, k, sizeof *keys, key_cmp);
        return;
    }
    for (size_t i = 1; i < k; i++) {
        key_ref cur = keys[i];
        size_t j = i;
        for (; j > 0 && key_cmp(&keys[j - 1], &cur) > 0; j--)
            keys[j] = keys[j - 1];
        keys[j] = cur;
    }
}

/* Writes the sequence at idx (n elements) as an array. */
static ap_status enc_array(enc *e, int idx, size_t n, int depth)
{
    ap_status rc = buf_putc(&e->out, '[');
    for (size_t i = 1; rc == AP_OK && i <= n; i++) {
        if (i > 1)
            rc = buf_putc(&e->out, ',');
        lua_rawgeti(e->L, idx, (lua_Integer)i);
        e->index = i; /* set again after each element, which may have held arrays itself */
        if (rc == AP_OK)
            rc = enc_value(e, -1, depth + 1);
        lua_pop(e->L, 1);
    }
    return rc == AP_OK ? buf_putc(&e->out, ']') : rc;
}

/* AP_LIMIT, with the limit's message, once the panel's budget is spent. */
static ap_status enc_budget(enc *e)
{
    if (!script_vm_over_budget(e->L))
        return AP_OK;
    char msg[AP_ERR_MSG_MAX];
    script_vm_tripped(script_vm_of(e->L), msg, sizeof msg);
    return ap_err_set(e->err, AP_LIMIT, "json.encode: %s", msg);
}

/* The budget, checked every ENC_CHECK_EVERY keys of a walk: a step of lua_next costs the chain
 * of its key, and a table of keys crafted to share one chain costs its size at every step (a
 * walk of 2^17 such keys took 14.5 s between two checks). */
static ap_status enc_check(enc *e, size_t k)
{
    return k % ENC_CHECK_EVERY == 0 ? enc_budget(e) : AP_OK;
}

static ap_status enc_table(enc *e, int idx, int depth)
{
    lua_State *L = e->L;
    ap_status rc = AP_OK;
    key_ref small[ENC_SMALL_KEYS]; /* most objects are small: no allocation for them */
    key_ref *keys = small;
    size_t cap = ENC_SMALL_KEYS;
    /* at most as deep as the decoder reads back: depth counts from 0 */
    if (depth >= SCRIPT_JSON_MAX_DEPTH)
        return ap_err_set(e->err, AP_LIMIT, "json.encode: nested deeper than %d levels (a cycle?)",
                          SCRIPT_JSON_MAX_DEPTH);
    if (!lua_checkstack(L, 8))
        return ap_err_set(e->err, AP_NOMEM, "json.encode: out of stack");
    /* Walking a table costs its allocated size, not its entries (a table emptied of a million
     * keys), and a table shared a million times is walked a million times: the small output
     * bounds neither, the time budget does. */
    if ((rc = enc_budget(e)) != AP_OK)
        return rc;
    idx = lua_absindex(L, idx);
    size_t n = (size_t)lua_rawlen(L, idx);
    if (n > 0) {
        /* Likely a sequence: counted first, and written by index when it is one. */
        size_t count = 0;
        bool all_int = true;
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            if (!lua_isinteger(L, -2))
                all_int = false;
            count++;
            lua_pop(L, 1);
            if ((rc = enc_check(e, count)) != AP_OK) {
                lua_pop(L, 1);
                return rc;
            }
        }
        if (all_int && n == count)
            return enc_array(e, idx, n, depth);
    }
    /* Values are parked on the stack (below the iteration key) so they can be written in
     * key order without looking them up again; one pass collects them. */
    int base = lua_gettop(L);
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if ((rc = enc_check(e, k + 1)) != AP_OK)
            goto out;
        if (k == ENC_MAX_KEYS) {
            rc = ap_err_set(e->err, AP_LIMIT, "json.encode: table too large");
            goto out;
        }
        if (k == cap) {
            /* Outside the Lua heap, but within the panel's memory limit: 900,000 keys are
             * ~65 MB of refs, and every nested object holds its own array meanwhile. */
            size_t want = 2 * cap * sizeof *keys;
            if (!script_vm_reserve(L, want)) {
                rc = ap_err_set(e->err, AP_LIMIT, "json.encode: memory limit exceeded");
                goto out;
            }
            key_ref *grown = malloc(want);
            if (grown == NULL) {
                script_vm_release(L, want);
                rc = ap_err_set(e->err, AP_NOMEM, "json.encode: out of memory");
                goto out;
            }
            memcpy(grown, keys, k * sizeof *keys);
            if (keys != small) {
                free(keys);
                script_vm_release(L, cap * sizeof *keys);
            }
            keys = grown;
            cap *= 2;
        }
        if (!lua_checkstack(L, 8)) {
            rc = ap_err_set(e->err, AP_LIMIT, "json.encode: table too large");
            goto out;
        }
        lua_insert(L, -2);
        key_ref *kr = &keys[k++];
        kr->slot = lua_gettop(L) - 1;
        int kt = lua_type(L, -1);
        if (kt == LUA_TSTRING) {
            kr->s = lua_tolstring(L, -1, &kr->n);
        } else if (kt == LUA_TNUMBER) {
            if (lua_isinteger(L, -1)) {
                kr->n = jsonx_int_text(kr->num, lua_tointeger(L, -1));
            } else {
                snprintf(kr->num, sizeof kr->num, "%.14g", lua_tonumber(L, -1));
                kr->n = strlen(kr->num);
            }
            kr->s = NULL;
        } else {
            rc = ap_err_set(e->err, AP_INVALID, "json.encode: a table key of type %s",
                            lua_typename(L, kt));
            goto out;
        }
    }
    if (k == 0) {
        rc = buf_puts(&e->out, is_marked_array(L, idx) ? "[]" : "{}");
        goto out;
    }
    sort_keys(keys, k);
    /* Number keys are written as text: 1 and "1", or 0.3 and 0.30000000000000004, would be
     * one key twice, and reading it back keeps only one value. */
    for (size_t i = 1; i < k; i++) {
        if (key_cmp(&keys[i - 1], &keys[i]) == 0) {
            rc = ap_err_set(e->err, AP_INVALID,
                            "json.encode: two keys are both written \"%.60s\" (a number key and "
                            "a string key, or two numbers with the same text)",
                            key_text(&keys[i]));
            goto out;
        }
    }
    rc = buf_putc(&e->out, '{');
    for (size_t i = 0; rc == AP_OK && i < k; i++) {
        if (i > 0)
            rc = buf_putc(&e->out, ',');
        if (rc == AP_OK)
            rc = jsonx_append_string(&e->out, key_text(&keys[i]), keys[i].n);
        if (rc == AP_OK)
            rc = buf_putc(&e->out, ':');
        if (rc != AP_OK)
            break;
        /* Copied, not formatted: this runs for every key. */
        size_t pl = keys[i].n < 100 ? keys[i].n : 100;
        memcpy(e->path, key_text(&keys[i]), pl);
        e->path[pl] = '\0';
        e->index = 0;
        rc = enc_value(e, keys[i].slot, depth + 1);
    }
    if (rc == AP_OK)
        rc = buf_putc(&e->out, '}');
out:
    lua_settop(L, base);
    if (keys != small) {
        free(keys);
        script_vm_release(L, cap * sizeof *keys);
    }
    return rc;
}

static ap_status enc_value(enc *e, int idx, int depth)
{
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return buf_puts(&e->out, "null");
    case LUA_TBOOLEAN:
        return buf_puts(&e->out, lua_toboolean(L, idx) ? "true" : "false");
    case LUA_TNUMBER:
        return enc_number(e, idx);
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return jsonx_append_string(&e->out, s, n); /* invalid UTF-8 becomes U+FFFD */
    }
    case LUA_TTABLE:
        return enc_table(e, idx, depth);
    case LUA_TLIGHTUSERDATA:
        return buf_puts(&e->out, "null");
    default:
        if (e->index != 0)
            return ap_err_set(e->err, AP_INVALID,
                              "json.encode: cannot encode a %s (at array index %zu)",
                              luaL_typename(L, idx), e->index);
        if (e->path[0] != '\0')
            return ap_err_set(e->err, AP_INVALID, "json.encode: cannot encode a %s (at key '%s')",
                              luaL_typename(L, idx), e->path);
        return ap_err_set(e->err, AP_INVALID, "json.encode: cannot encode a %s",
                          luaL_typename(L, idx));
    }
}

/* The output grows inside the script's memory limit: the text is memory the script made. */
static bool enc_meter(void *ud, size_t grow)
{
    enc *e = ud;
    if (!script_vm_reserve(e->L, grow)) {
        ap_err_set(e->err, AP_LIMIT, "json.encode: memory limit exceeded");
        return false;
    }
    e->reserved += grow;
    return true;
}

ap_status script_json_encode(lua_State *L, int idx, size_t max, char **out, ap_err *err)
{
    enc e = {.L = L, .err = err};
    *out = NULL;
    buf_init(&e.out, max);
    buf_meter(&e.out, enc_meter, &e);
    /* Most texts encoded (event data, schemas, states) are a few hundred bytes. */
    ap_status rc = buf_reserve(&e.out, max < 512 ? max : 512);
    if (rc != AP_OK) {
        script_vm_release(L, e.reserved);
        return rc == AP_LIMIT ? AP_LIMIT : ap_err_set(err, AP_NOMEM, "json.encode: out of memory");
    }
    idx = lua_absindex(L, idx);
    int top = lua_gettop(L);
    rc = enc_value(&e, idx, 0);
    lua_settop(L, top);
    if (rc == AP_LIMIT && err != NULL && err->status != AP_LIMIT)
        ap_err_set(err, AP_LIMIT, "json.encode: output larger than %zu bytes", max);
    else if (rc == AP_NOMEM && err != NULL && err->status != AP_NOMEM)
        ap_err_set(err, AP_NOMEM, "json.encode: out of memory");
    if (rc == AP_OK)
        *out = buf_steal(&e.out);
    buf_free(&e.out);
    script_vm_release(L, e.reserved);
    return rc;
}

/* ---- decoding ------------------------------------------------------------------------- */

static void push_marked_array(lua_State *L, int narr)
{
    lua_createtable(L, narr, 0);
    if (narr == 0) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &array_marker_key);
        lua_setmetatable(L, -2);
    }
}

/* Raises the limit's error once the panel's budget is spent, checked at every decoded value:
 * interning a string is a lookup in the state's string table, whose chains a script can
 * lengthen with strings it found to collide (see guarded_str_unpack in sandbox.c); a megabyte
 * of short strings is ~260,000 of them. */
static void dec_check(lua_State *L)
{
    if (script_vm_over_budget(L))
        script_vm_check(L);
}

static void push_item(lua_State *L, const cJSON *it)
{
    luaL_checkstack(L, 4, "json.decode");
    dec_check(L);
    if (cJSON_IsObject(it)) {
        lua_createtable(L, 0, 4);
        for (const cJSON *c = it->child; c != NULL; c = c->next) {
            if (cJSON_IsNull(c) || c->string == NULL)
                continue;
            push_item(L, c);
            lua_setfield(L, -2, c->string);
        }
    } else if (cJSON_IsArray(it)) {
        int n = cJSON_GetArraySize(it);
        push_marked_array(L, n);
        lua_Integer i = 1;
        for (const cJSON *c = it->child; c != NULL; c = c->next, i++) {
            if (cJSON_IsNull(c))
                continue;
            push_item(L, c);
            lua_rawseti(L, -2, i);
        }
    } else if (cJSON_IsString(it)) {
        lua_pushstring(L, it->valuestring);
    } else if (cJSON_IsNumber(it)) {
        double d = it->valuedouble;
        if (d == floor(d) && fabs(d) < 9007199254740992.0)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
    } else if (cJSON_IsBool(it)) {
        lua_pushboolean(L, cJSON_IsTrue(it));
    } else {
        lua_pushnil(L);
    }
}

/* ---- the script-facing library -------------------------------------------------------- */

typedef struct encoded {
    const char *text;
    size_t len;
} encoded;

static int push_encoded(lua_State *L)
{
    const encoded *en = lua_touserdata(L, 1);
    script_vm_charge(L, (int64_t)(en->len / 16));
    lua_pushlstring(L, en->text, en->len);
    return 1;
}

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    char *out = NULL;
    ap_err err = {0};
    if (script_json_encode(L, 1, SCRIPT_JSON_ENCODE_MAX, &out, &err) != AP_OK) {
        script_vm_check(L);
        return luaL_error(L, "%s", err.msg);
    }
    /* The text stays counted until it is freed, beside its copy in the Lua heap. The charge
     * and the copy may raise (a limit): protected, so the text is always freed. */
    encoded en = {out, strlen(out)};
    if (!script_vm_reserve(L, en.len + 1)) {
        free(out);
        script_vm_check(L);
        return luaL_error(L, "json.encode: memory limit exceeded");
    }
    lua_pushcfunction(L, push_encoded);
    lua_pushlightuserdata(L, &en);
    int status = lua_pcall(L, 1, 1, 0);
    free(out);
    script_vm_release(L, en.len + 1);
    script_vm_note(L, status);
    if (status != LUA_OK)
        return lua_error(L);
    return 1;
}

/* cJSON allocations are outside the Lua heap, so a parse must never be interrupted by a Lua
 * error: parse first, then build the Lua value inside a protected call. */
typedef struct decode_job {
    const cJSON *root;
} decode_job;

static int decode_build(lua_State *L)
{
    const decode_job *job = lua_touserdata(L, 1);
    push_item(L, job->root);
    return 1;
}

/* ---- decoding without a tree ---------------------------------------------------------------
 * Most texts pushed are the engine's own or already checked (answers, ctx inputs, states), so
 * they are read through a token view instead of a cJSON tree: no allocation per value. The
 * view accepts strict RFC 8259 JSON only, a subset of what cJSON reads, and yields the same
 * Lua values as push_item; anything it refuses (or a number too long for it) takes the cJSON
 * path, so results and errors stay those of cJSON. */

/* jview_number reads numbers of up to 63 characters; longer ones take the cJSON path. */
#define VIEW_NUMBER_MAX 63

static void push_tok_string(lua_State *L, const jview *v, uint32_t i)
{
    const jview_tok *t = &v->tok[i];
    dec_check(L);
    size_t raw = t->end - t->start - 2;
    if (!t->escaped) {
        lua_pushlstring(L, v->src + t->start + 1, raw);
        return;
    }
    /* Decoding never makes a string longer; a \u0000 ends it, as in cJSON. */
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, raw + 1);
    size_t n = jview_string(v, (int)i, out, raw + 1);
    luaL_pushresultsize(&b, n);
}

static void push_tok(lua_State *L, const jview *v, uint32_t i)
{
    const jview_tok *t = &v->tok[i];
    luaL_checkstack(L, 4, "json.decode");
    switch ((jview_type)t->type) {
    case JVIEW_OBJECT: {
        lua_createtable(L, 0, (int)t->count);
        uint32_t k = i + 1;
        for (uint32_t m = 0; m < t->count; m++) {
            uint32_t val = k + 1, after = v->tok[val].next;
            if (v->tok[val].type != JVIEW_NULL) {
                push_tok_string(L, v, k);
                push_tok(L, v, val);
                lua_rawset(L, -3);
            }
            k = after;
        }
        break;
    }
    case JVIEW_ARRAY: {
        push_marked_array(L, (int)t->count);
        uint32_t k = i + 1;
        for (uint32_t m = 0; m < t->count; m++) {
            if (v->tok[k].type != JVIEW_NULL) {
                push_tok(L, v, k);
                lua_rawseti(L, -2, (lua_Integer)m + 1);
            }
            k = v->tok[k].next;
        }
        break;
    }
    case JVIEW_STRING:
        push_tok_string(L, v, i);
        break;
    case JVIEW_NUMBER: {
        double d = jview_number(v, (int)i, 0);
        if (d == floor(d) && fabs(d) < 9007199254740992.0)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
        break;
    }
    case JVIEW_TRUE:
    case JVIEW_FALSE:
        lua_pushboolean(L, t->type == JVIEW_TRUE);
        break;
    default:
        lua_pushnil(L);
        break;
    }
}

static int view_build(lua_State *L)
{
    const jview *v = lua_touserdata(L, 1);
    push_tok(L, v, 0);
    return 1;
}

/* Pushes text through a view; false (nothing pushed) when the cJSON path must take it. */
static bool push_viewed(lua_State *L, const char *text, size_t len, ap_status *rc)
{
    jview v;
    bool taken = false;
    if (jview_parse(&v, text, len, SCRIPT_JSON_MAX_DEPTH, NULL) != AP_OK || v.n == 0)
        goto out;
    for (uint32_t i = 0; i < v.n; i++)
        if (v.tok[i].type == JVIEW_NUMBER && v.tok[i].end - v.tok[i].start > VIEW_NUMBER_MAX)
            goto out;
    taken = true;
    /* The tokens are C heap outside the state's allocator (20 bytes each, ~10 per byte of
     * "0,0,"): charged to the state while the values are built from them (review). */
    size_t held = v.tok != v.inline_tok ? (size_t)v.cap * sizeof *v.tok : 0;
    if (!script_vm_reserve(L, held)) {
        *rc = AP_NOMEM;
        goto out;
    }
    lua_pushcfunction(L, view_build);
    lua_pushlightuserdata(L, &v);
    *rc = AP_OK;
    int status = script_vm_pcall_keyed(L, 1, 1);
    script_vm_note(L, status); /* a memory error here trips the limit like any other */
    script_vm_release(L, held);
    if (status != LUA_OK) {
        lua_pop(L, 1);
        *rc = AP_NOMEM;
    }
out:
    jview_free(&v);
    return taken;
}

ap_status script_json_push(lua_State *L, const char *text, size_t len, ap_err *err)
{
    return script_json_push_max(L, text, len, SCRIPT_JSON_DECODE_MAX, err);
}

ap_status script_json_push_max(lua_State *L, const char *text, size_t len, size_t max, ap_err *err)
{
    if (len > max)
        return ap_err_set(err, AP_LIMIT, "json.decode: input larger than %zu bytes", max);
    if (!jsonx_utf8_valid(text, len))
        return ap_err_set(err, AP_INVALID, "json.decode: input is not valid UTF-8");
    ap_status vrc = AP_OK;
    if (push_viewed(L, text, len, &vrc))
        return vrc == AP_OK ? AP_OK : ap_err_set(err, AP_NOMEM, "json.decode: out of memory");
    /* The tree is C heap outside the state's allocator: it is charged to the state while it
     * lives, at what cJSON can take for the text (a node of ~64 bytes per 2 bytes of "0,"). */
    size_t tree = len * CJSON_BYTES_PER_BYTE;
    if (!script_vm_reserve(L, tree))
        return ap_err_set(err, AP_NOMEM, "json.decode: out of memory");
    cJSON *root = jsonx_parse(text, len, SCRIPT_JSON_MAX_DEPTH, err);
    if (root == NULL) {
        script_vm_release(L, tree);
        return AP_INVALID;
    }
    decode_job job = {root};
    lua_pushcfunction(L, decode_build);
    lua_pushlightuserdata(L, &job);
    int status = script_vm_pcall_keyed(L, 1, 1);
    script_vm_note(L, status);
    cJSON_Delete(root);
    script_vm_release(L, tree);
    if (status != LUA_OK) {
        lua_pop(L, 1);
        return ap_err_set(err, AP_NOMEM, "json.decode: out of memory");
    }
    return AP_OK;
}

static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    ap_err err = {0};
    script_vm_charge(L, (int64_t)(len / 8));
    if (script_json_push(L, s, len, &err) != AP_OK) {
        script_vm_check(L);
        if (err.msg[0] == 'j')
            return luaL_error(L, "%s", err.msg);
        return luaL_error(L, "json.decode: %s", err.msg);
    }
    return 1;
}

static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    if (lua_getmetatable(L, 1))
        return luaL_error(L, "json.array: the table already has a metatable");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_marker_key);
    lua_setmetatable(L, 1);
    return 1;
}

void script_json_push_lib(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &array_marker_key) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 2);
        lua_pushliteral(L, "json.array");
        lua_setfield(L, -2, "__metatable");
        lua_pushliteral(L, "json.array");
        lua_setfield(L, -2, "__name");
        lua_rawsetp(L, LUA_REGISTRYINDEX, &array_marker_key);
    } else {
        lua_pop(L, 1);
    }
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, l_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, l_decode);
    lua_setfield(L, -2, "decode");
    lua_pushcfunction(L, l_array);
    lua_setfield(L, -2, "array");
}
