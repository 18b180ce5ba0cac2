/* store.c - the public store API: validates input, then dispatches to a backend.
 *
 * Everything both backends would otherwise repeat lives here: tenant id normalisation, slug
 * and JSON validation, id and time generation, API key secrets and their constant-time
 * resolution, cursor encoding and the usage summary JSON. */
#include "store/store.h"

#include "core/clock.h"
#include "core/embed.h"
#include "core/jsonx.h"
#include "core/log.h"
#include "store/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct store {
    const store_ops *ops;
    void *impl;
};

/* The deepest JSON the engine writes: a ctx.state of 64 levels (as deep as scripts may nest)
 * inside a checkpoint's envelope, an answer's data inside expert.message. */
#define STORE_JSON_DEPTH 66
#define STORE_EVENTS_MAX 10000
#define STORE_KEY_LEN 76 /* "ap_" + 8 hex + "_" + 64 hex */
#define STORE_KEY_PREFIX_LEN 11

static const char *const panel_statuses[] = {
    "created", "queued", "running", "awaiting_input", "completed", "failed", "cancelled",
};

/* ---- helpers shared with the backends ---------------------------------------------------- */

bool store_row_tenant_ok(const char *expected, const char *got)
{
    if (got != NULL && strcmp(expected, got) == 0)
        return true;
    log_msg(LOG_LEVEL_ERROR, &(log_fields){.tenant_id = expected, .event = "security"},
            "store returned a row of tenant %s for tenant %s; refused",
            got != NULL ? got : "(none)", expected);
    return false;
}

ap_status store_row_denied(ap_err *err)
{
    return ap_err_set(err, AP_DENIED, "row failed tenant verification; refused");
}

const char *store_role_name(store_role r)
{
    return r == STORE_ROLE_ADMIN ? "admin" : "member";
}

bool store_role_parse(const char *name, store_role *out)
{
    if (name == NULL)
        return false;
    if (strcmp(name, "admin") == 0)
        *out = STORE_ROLE_ADMIN;
    else if (strcmp(name, "member") == 0)
        *out = STORE_ROLE_MEMBER;
    else
        return false;
    return true;
}

const char *store_kind_name(store_script_kind k)
{
    return k == STORE_SCRIPT_CONSENSUS ? "consensus" : "strategy";
}

bool store_kind_parse(const char *name, store_script_kind *out)
{
    if (name == NULL)
        return false;
    if (strcmp(name, "strategy") == 0)
        *out = STORE_SCRIPT_STRATEGY;
    else if (strcmp(name, "consensus") == 0)
        *out = STORE_SCRIPT_CONSENSUS;
    else
        return false;
    return true;
}

size_t store_migrations(const char *dir, store_migration *out, size_t cap)
{
    size_t n = 0;
    size_t dl = strlen(dir);
    for (size_t i = 0; n < cap; i++) {
        const char *path = embed_path_at(i);
        if (path == NULL)
            break;
        size_t pl = strlen(path);
        if (strncmp(path, dir, dl) != 0 || pl < dl + 5 || strcmp(path + pl - 4, ".sql") != 0)
            continue;
        size_t vl = pl - dl - 4;
        if (vl >= sizeof out[n].version || strchr(path + dl, '/') != NULL)
            continue;
        memcpy(out[n].version, path + dl, vl);
        out[n].version[vl] = '\0';
        out[n].sql = embed_get(path, NULL);
        n++;
    }
    return n;
}

char *store_dup(const char *s, bool *failed)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *failed = true;
    return d;
}

void store_usage_groups_free(store_usage_group *g, size_t n)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(g[i].key);
    free(g);
}

/* ---- validation ------------------------------------------------------------------------ */

static ap_status norm_uuid(const char *in, char out[STORE_ID_MAX], const char *what, ap_err *err)
{
    if (!ids_uuid_normalize(in, out))
        return ap_err_set(err, AP_INVALID, "%s is not a valid UUID", what);
    return AP_OK;
}

/* The last panel id a batch normalised. A batch holds runs of one panel's writes (~80 % of its
 * items repeat the previous panel id), and the same text normalises to the same id, so a
 * repeat is answered with one comparison instead of the check of all 36 characters. */
typedef struct id_memo {
    char in[STORE_ID_MAX];
    char out[STORE_ID_MAX]; /* "" until set */
} id_memo;

/* ids_uuid_normalize through m (NULL: none). */
static bool memo_normalize(id_memo *m, const char *in, char out[STORE_ID_MAX])
{
    if (m != NULL && in != NULL && m->out[0] != '\0' && strcmp(in, m->in) == 0) {
        memcpy(out, m->out, STORE_ID_MAX);
        return true;
    }
    if (!ids_uuid_normalize(in, out))
        return false;
    if (m != NULL) {
        /* Valid input is exactly IDS_UUID_LEN characters and its terminator. */
        memcpy(m->in, in, STORE_ID_MAX);
        memcpy(m->out, out, STORE_ID_MAX);
    }
    return true;
}

static ap_status check_text(const char *s, const char *what, bool required, size_t max, ap_err *err)
{
    if (s == NULL) {
        if (required)
            return ap_err_set(err, AP_INVALID, "%s is required", what);
        return AP_OK;
    }
    size_t len = strlen(s);
    if (required && len == 0)
        return ap_err_set(err, AP_INVALID, "%s must not be empty", what);
    if (len > max)
        return ap_err_set(err, AP_LIMIT, "%s is longer than %zu bytes", what, max);
    if (!jsonx_utf8_valid(s, len))
        return ap_err_set(err, AP_INVALID, "%s is not valid UTF-8", what);
    return AP_OK;
}

/* kind: 'o' object, 'a' array, 0 any JSON value. NULL passes (callers apply defaults). */
static ap_status check_json(const char *s, const char *what, char kind, ap_err *err)
{
    if (s == NULL)
        return AP_OK;
    size_t len = strlen(s);
    if (len > STORE_VALUE_MAX)
        return ap_err_set(err, AP_LIMIT, "%s is larger than %u bytes", what, STORE_VALUE_MAX);
    ap_err jerr = {0};
    cJSON *root = jsonx_parse(s, len, STORE_JSON_DEPTH, &jerr);
    if (root == NULL)
        return ap_err_set(err, AP_INVALID, "%s: %s", what, jerr.msg);
    bool ok = kind == 'o' ? cJSON_IsObject(root) : kind == 'a' ? cJSON_IsArray(root) : true;
    cJSON_Delete(root);
    if (!ok)
        return ap_err_set(err, AP_INVALID, "%s must be a JSON %s", what,
                          kind == 'o' ? "object" : "array");
    return AP_OK;
}

/* The trusted form of check_json, for JSON the engine encoded itself: size, UTF-8, the nesting
 * depth a reader's parse allows and the top-level kind are checked in one pass without
 * building a tree, which is most of what the writer spent per event and checkpoint. */
static ap_status check_json_trusted(const char *s, const char *what, char kind, ap_err *err)
{
    if (s == NULL)
        return AP_OK;
    size_t len = strlen(s);
    if (len > STORE_VALUE_MAX)
        return ap_err_set(err, AP_LIMIT, "%s is larger than %u bytes", what, STORE_VALUE_MAX);
    if (!jsonx_utf8_valid(s, len))
        return ap_err_set(err, AP_INVALID, "%s is not valid UTF-8", what);
    size_t i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    if (i == len || (kind == 'o' && s[i] != '{') || (kind == 'a' && s[i] != '['))
        return ap_err_set(err, AP_INVALID, "%s must be a JSON %s", what,
                          kind == 'o'   ? "object"
                          : kind == 'a' ? "array"
                                        : "value");
    int depth = 0;
    bool in_str = false;
    for (; i < len; i++) {
        char c = s[i];
        if (in_str) {
            /* Skip to the next quote or escape: strings are most of the text. */
            i += strcspn(s + i, "\"\\");
            if (i >= len)
                break;
            if (s[i] == '\\')
                i++;
            else
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > STORE_JSON_DEPTH)
                return ap_err_set(err, AP_INVALID, "%s is nested deeper than %d", what,
                                  STORE_JSON_DEPTH);
        } else if (c == '}' || c == ']') {
            if (--depth < 0)
                break;
        }
    }
    if (in_str || depth != 0)
        return ap_err_set(err, AP_INVALID, "%s: unbalanced JSON", what);
    return AP_OK;
}

static bool slug_valid(const char *s)
{
    if (s == NULL)
        return false;
    size_t len = strlen(s);
    if (len < 2 || len > 63)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && i > 0);
        if (!ok)
            return false;
    }
    return true;
}

static bool status_valid(const char *s)
{
    if (s == NULL)
        return false;
    for (size_t i = 0; i < sizeof panel_statuses / sizeof panel_statuses[0]; i++)
        if (strcmp(s, panel_statuses[i]) == 0)
            return true;
    return false;
}

static bool script_name_valid(const char *s)
{
    if (s == NULL)
        return false;
    size_t len = strlen(s);
    if (len == 0 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

static bool hex_valid(const char *s, size_t len)
{
    if (strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static ap_status check_limit(int limit, int *out, ap_err *err)
{
    if (limit < 1)
        return ap_err_set(err, AP_INVALID, "limit must be at least 1");
    *out = limit > STORE_LIST_MAX ? STORE_LIST_MAX : limit;
    return AP_OK;
}

/* ---- cursors: hex of "<list>:<created_at>:<id>", opaque to clients -------------------------
 * The list letter binds a cursor to the list that issued it: a panels cursor handed to the
 * experts list is refused rather than read as a position in another table. */

#define CURSOR_EXPERTS 'e'
#define CURSOR_PANELS 'p'

static void cursor_encode(char list, int64_t created_at, const char *id, char out[STORE_CURSOR_MAX])
{
    char plain[64];
    int len = snprintf(plain, sizeof plain, "%c:%lld:%s", list, (long long)created_at, id);
    ids_hex(plain, (size_t)len, out);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static ap_status cursor_decode(const char *cursor, char list, store_pos *pos, ap_err *err)
{
    memset(pos, 0, sizeof *pos);
    if (cursor == NULL || cursor[0] == '\0')
        return AP_OK;
    size_t len = strlen(cursor);
    char plain[64];
    if (len % 2 != 0 || len / 2 >= sizeof plain)
        goto bad;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hexval(cursor[2 * i]);
        int lo = hexval(cursor[2 * i + 1]);
        if (hi < 0 || lo < 0)
            goto bad;
        plain[i] = (char)(hi * 16 + lo);
    }
    plain[len / 2] = '\0';
    if (len < 4 || plain[0] != list || plain[1] != ':')
        goto bad;
    char *at_text = plain + 2;
    char *colon = strchr(at_text, ':');
    if (colon == NULL || at_text[0] < '0' || at_text[0] > '9')
        goto bad;
    *colon = '\0';
    char *end = NULL;
    long long at = strtoll(at_text, &end, 10);
    if (end == at_text || *end != '\0' || at < 0)
        goto bad;
    if (!ids_uuid_normalize(colon + 1, pos->id))
        goto bad;
    pos->created_at = at;
    pos->set = true;
    return AP_OK;
bad:
    return ap_err_set(err, AP_INVALID, "malformed cursor");
}

/* ---- lifecycle -------------------------------------------------------------------------- */

ap_status store_open(const char *url, store **out, ap_err *err)
{
    *out = NULL;
    if (url == NULL || url[0] == '\0')
        return ap_err_set(err, AP_INVALID, "store URL is empty");
    store *s = calloc(1, sizeof *s);
    if (s == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    ap_status rc;
    if (strncmp(url, "sqlite:", 7) == 0) {
        s->ops = &store_sqlite_ops;
        rc = store_sqlite_open(url + 7, &s->impl, err);
    } else if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0 ||
               strchr(url, '=') != NULL) {
        s->ops = &store_pg_ops;
        rc = store_pg_open(url, &s->impl, err);
    } else {
        rc = ap_err_set(err, AP_INVALID,
                        "unknown store URL (expected sqlite:PATH or postgres://...)");
    }
    if (rc != AP_OK) {
        free(s);
        return rc;
    }
    *out = s;
    return AP_OK;
}

void store_close(store *s)
{
    if (s == NULL)
        return;
    s->ops->close(s->impl);
    free(s);
}

const char *store_backend(const store *s)
{
    return s->ops->name;
}

ap_status store_migrate(store *s, int *applied, ap_err *err)
{
    int dummy = 0;
    return s->ops->migrate(s->impl, applied != NULL ? applied : &dummy, err);
}

ap_status store_pending_migrations(store *s, int *pending, ap_err *err)
{
    return s->ops->pending(s->impl, pending, err);
}

ap_status store_check_isolation(store *s, ap_err *err)
{
    return s->ops->check_isolation(s->impl, err);
}

ap_status store_ping(store *s, ap_err *err)
{
    return s->ops->ping(s->impl, err);
}

/* ---- tenants ---------------------------------------------------------------------------- */

void store_tenant_free(store_tenant *t)
{
    if (t == NULL)
        return;
    free(t->slug);
    free(t->name);
    free(t->config);
    memset(t, 0, sizeof *t);
}

int64_t store_tenant_limit(const store_tenant *t, const char *name)
{
    double v = 0;
    if (t->config != NULL) {
        cJSON *cfg = cJSON_Parse(t->config);
        v = jsonx_number(cJSON_GetObjectItemCaseSensitive(cfg, "limits"), name, 0);
        cJSON_Delete(cfg);
    }
    return isfinite(v) && v >= 1 && v < 1e15 ? (int64_t)v : 0;
}

ap_status store_tenant_create(store *s, const char *slug, const char *name, const char *config,
                              store_tenant *out, ap_err *err)
{
    if (!slug_valid(slug))
        return ap_err_set(err, AP_INVALID, "slug '%.64s' is invalid (want [a-z0-9][a-z0-9-]{1,62})",
                          slug != NULL ? slug : "");
    ap_status rc = check_text(name, "tenant name", true, 200, err);
    if (rc == AP_OK)
        rc = check_json(config, "tenant config", 'o', err);
    if (rc != AP_OK)
        return rc;
    store_tenant t = {.slug = (char *)slug,
                      .name = (char *)name,
                      .config = (char *)(config != NULL ? config : "{}"),
                      .created_at = clock_wall_ms()};
    if (ids_uuid_v4(t.id) != AP_OK)
        return ap_err_set(err, AP_IO, "no randomness for a tenant id");
    rc = s->ops->tenant_insert(s->impl, &t, err);
    if (rc == AP_OK && out != NULL)
        rc = store_tenant_get(s, t.id, out, err);
    return rc;
}

ap_status store_tenant_get(store *s, const char *tenant_id, store_tenant *out, ap_err *err)
{
    char tid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    rc = s->ops->tenant_get(s->impl, tid, out, err);
    if (rc == AP_OK && !store_row_tenant_ok(tid, out->id)) {
        store_tenant_free(out);
        rc = store_row_denied(err);
    }
    return rc;
}

ap_status store_tenant_by_slug(store *s, const char *slug, store_tenant *out, ap_err *err)
{
    if (!slug_valid(slug))
        return ap_err_set(err, AP_NOTFOUND, "no tenant with slug '%.64s'",
                          slug != NULL ? slug : "");
    return s->ops->tenant_by_slug(s->impl, slug, out, err);
}

ap_status store_tenant_set_config(store *s, const char *tenant_id, const char *config, ap_err *err)
{
    char tid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = check_json(config != NULL ? config : "{}", "tenant config", 'o', err);
    if (rc != AP_OK)
        return rc;
    return s->ops->tenant_set_config(s->impl, tid, config != NULL ? config : "{}", err);
}

/* ---- API keys --------------------------------------------------------------------------- */

ap_status store_key_create(store *s, const char *tenant_id, store_role role, char *plaintext,
                           size_t plaintext_cap, store_key *out, ap_err *err)
{
    store_key k = {0};
    ap_status rc = norm_uuid(tenant_id, k.tenant_id, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (role != STORE_ROLE_MEMBER && role != STORE_ROLE_ADMIN)
        return ap_err_set(err, AP_INVALID, "key role must be member or admin");
    if (plaintext == NULL || plaintext_cap < STORE_KEY_LEN + 1)
        return ap_err_set(err, AP_INVALID, "key buffer too small");
    k.role = role;
    k.created_at = clock_wall_ms();
    char key[STORE_KEY_LEN + 1];
    /* The visible prefix has 32 random bits, so a collision is possible but rare: retry. */
    for (int attempt = 0; attempt < 4; attempt++) {
        unsigned char pre[4], secret[32];
        if (ids_random(pre, sizeof pre) != AP_OK || ids_random(secret, sizeof secret) != AP_OK ||
            ids_uuid_v4(k.id) != AP_OK)
            return ap_err_set(err, AP_IO, "no randomness for an API key");
        char pre_hex[9], secret_hex[65];
        ids_hex(pre, sizeof pre, pre_hex);
        ids_hex(secret, sizeof secret, secret_hex);
        snprintf(key, sizeof key, "ap_%s_%s", pre_hex, secret_hex);
        snprintf(k.prefix, sizeof k.prefix, "ap_%s", pre_hex);
        ids_sha256_hex(key, STORE_KEY_LEN, k.hash);
        rc = s->ops->key_insert(s->impl, &k, err);
        if (rc != AP_CONFLICT)
            break;
    }
    if (rc != AP_OK)
        return rc;
    memcpy(plaintext, key, sizeof key);
    if (out != NULL)
        *out = k;
    return AP_OK;
}

static bool key_format_valid(const char *key)
{
    if (strlen(key) != STORE_KEY_LEN || strncmp(key, "ap_", 3) != 0 ||
        key[STORE_KEY_PREFIX_LEN] != '_')
        return false;
    for (size_t i = 3; i < STORE_KEY_LEN; i++) {
        if (i == STORE_KEY_PREFIX_LEN)
            continue;
        if (hexval(key[i]) < 0)
            return false;
    }
    return true;
}

ap_status store_key_resolve(store *s, const char *plaintext, store_key *out, ap_err *err)
{
    if (plaintext == NULL || !key_format_valid(plaintext))
        return ap_err_set(err, AP_NOTFOUND, "unknown API key");
    char prefix[STORE_KEY_PREFIX_LEN + 1];
    memcpy(prefix, plaintext, STORE_KEY_PREFIX_LEN);
    prefix[STORE_KEY_PREFIX_LEN] = '\0';
    char hash[IDS_SHA256_HEX_LEN + 1];
    ids_sha256_hex(plaintext, STORE_KEY_LEN, hash);
    store_key k = {0};
    ap_status rc = s->ops->key_by_prefix(s->impl, prefix, &k, err);
    if (rc == AP_NOTFOUND) {
        /* Same work as a hit, so timing does not tell unknown prefixes from wrong secrets. */
        memset(k.hash, '0', IDS_SHA256_HEX_LEN);
    } else if (rc != AP_OK) {
        return rc;
    }
    bool match = ids_equal_ct(hash, IDS_SHA256_HEX_LEN, k.hash, IDS_SHA256_HEX_LEN);
    if (rc == AP_NOTFOUND || !match)
        return ap_err_set(err, AP_NOTFOUND, "unknown API key");
    if (k.revoked_at != 0)
        return ap_err_set(err, AP_DENIED, "API key %s was revoked", k.prefix);
    if (out != NULL)
        *out = k;
    return AP_OK;
}

ap_status store_key_get(store *s, const char *tenant_id, const char *key_id, store_key *out,
                        ap_err *err)
{
    char tid[STORE_ID_MAX], kid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (key_id == NULL || !ids_uuid_normalize(key_id, kid))
        return ap_err_set(err, AP_NOTFOUND, "no such API key");
    return s->ops->key_get(s->impl, tid, kid, out, err);
}

ap_status store_key_revoke(store *s, const char *key_id, ap_err *err)
{
    char kid[STORE_ID_MAX];
    ap_status rc = norm_uuid(key_id, kid, "key id", err);
    if (rc != AP_OK)
        return rc;
    return s->ops->key_revoke(s->impl, kid, clock_wall_ms(), err);
}

/* ---- experts ---------------------------------------------------------------------------- */

void store_expert_free(store_expert *e)
{
    if (e == NULL)
        return;
    free(e->name);
    free(e->role);
    free(e->expertise);
    free(e->persona);
    free(e->model);
    memset(e, 0, sizeof *e);
}

void store_experts_free(store_expert *rows, size_t n)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        store_expert_free(&rows[i]);
    free(rows);
}

/* Validates in and fills e (borrowing in's strings) with defaults applied. */
static ap_status expert_prepare(const char *tenant_id, const store_expert *in, bool need_id,
                                store_expert *e, ap_err *err)
{
    *e = *in;
    ap_status rc = norm_uuid(tenant_id, e->tenant_id, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (in->id[0] != '\0' || need_id) {
        rc = norm_uuid(in->id, e->id, "expert id", err);
        if (rc != AP_OK)
            return rc;
    } else if (ids_uuid_v4(e->id) != AP_OK) {
        return ap_err_set(err, AP_IO, "no randomness for an expert id");
    }
    if ((rc = check_text(in->name, "expert name", true, 200, err)) != AP_OK ||
        (rc = check_text(in->role, "expert role", false, 200, err)) != AP_OK ||
        (rc = check_text(in->persona, "expert persona", false, 64 * 1024, err)) != AP_OK ||
        (rc = check_text(in->model, "expert model", false, 200, err)) != AP_OK ||
        (rc = check_json(in->expertise, "expert expertise", 'a', err)) != AP_OK)
        return rc;
    if (!isfinite(in->weight) || in->weight < 0 || in->weight > 1000)
        return ap_err_set(err, AP_INVALID, "expert weight must be between 0 and 1000");
    if (e->role == NULL)
        e->role = "";
    if (e->persona == NULL)
        e->persona = "";
    if (e->expertise == NULL)
        e->expertise = "[]";
    int64_t now = clock_wall_ms();
    e->created_at = now;
    e->updated_at = now;
    return AP_OK;
}

ap_status store_expert_create(store *s, const char *tenant_id, const store_expert *in,
                              store_expert *out, ap_err *err)
{
    store_expert e, tmp = {0};
    ap_status rc = expert_prepare(tenant_id, in, false, &e, err);
    if (rc != AP_OK)
        return rc;
    rc = s->ops->expert_insert(s->impl, &e, out != NULL ? out : &tmp, err);
    store_expert_free(&tmp);
    return rc;
}

ap_status store_expert_get(store *s, const char *tenant_id, const char *id, store_expert *out,
                           ap_err *err)
{
    char tid[STORE_ID_MAX], eid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (!ids_uuid_normalize(id, eid))
        return ap_err_set(err, AP_NOTFOUND, "no such expert");
    return s->ops->expert_get(s->impl, tid, eid, out, err);
}

ap_status store_expert_update(store *s, const char *tenant_id, const store_expert *in,
                              store_expert *out, ap_err *err)
{
    store_expert e, tmp = {0};
    ap_status rc = expert_prepare(tenant_id, in, true, &e, err);
    if (rc != AP_OK)
        return rc;
    rc = s->ops->expert_update(s->impl, &e, out != NULL ? out : &tmp, err);
    store_expert_free(&tmp);
    return rc;
}

ap_status store_expert_delete(store *s, const char *tenant_id, const char *id, ap_err *err)
{
    char tid[STORE_ID_MAX], eid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (!ids_uuid_normalize(id, eid))
        return ap_err_set(err, AP_NOTFOUND, "no such expert");
    return s->ops->expert_delete(s->impl, tid, eid, err);
}

ap_status store_expert_list(store *s, const char *tenant_id, const char *cursor, int limit,
                            store_expert **rows, size_t *n, char next_cursor[STORE_CURSOR_MAX],
                            ap_err *err)
{
    *rows = NULL;
    *n = 0;
    next_cursor[0] = '\0';
    char tid[STORE_ID_MAX];
    store_pos pos;
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = check_limit(limit, &limit, err);
    if (rc == AP_OK)
        rc = cursor_decode(cursor, CURSOR_EXPERTS, &pos, err);
    if (rc != AP_OK)
        return rc;
    /* One extra row tells whether another page follows. */
    size_t got = 0;
    rc = s->ops->expert_list(s->impl, tid, &pos, limit + 1, rows, &got, err);
    if (rc != AP_OK)
        return rc;
    if (got > (size_t)limit) {
        store_expert_free(&(*rows)[limit]);
        got = (size_t)limit;
        cursor_encode(CURSOR_EXPERTS, (*rows)[got - 1].created_at, (*rows)[got - 1].id,
                      next_cursor);
    }
    *n = got;
    return AP_OK;
}

/* ---- panels ----------------------------------------------------------------------------- */

void store_panel_free(store_panel *p)
{
    if (p == NULL)
        return;
    free(p->title);
    free(p->question);
    free(p->strategy);
    free(p->strategy_version);
    free(p->consensus);
    free(p->params);
    free(p->experts);
    free(p->status);
    free(p->result);
    free(p->error);
    free(p->idempotency_key);
    free(p->request_hash);
    free(p->lease_owner);
    memset(p, 0, sizeof *p);
}

void store_panels_free(store_panel *rows, size_t n)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        store_panel_free(&rows[i]);
    free(rows);
}

static bool same_or_both_null(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

ap_status store_panel_create(store *s, const char *tenant_id, const store_panel *in,
                             store_panel *out, ap_err *err)
{
    store_panel p = *in;
    ap_status rc = norm_uuid(tenant_id, p.tenant_id, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    /* Time-ordered: a panel's id leads the keys of its events and checkpoints, so the panels
     * running now write into the newest end of those b-trees, which stays in the page cache
     * and dirties few pages per commit, instead of into random pages of all history (the
     * event writer spent ~25 % less CPU per panel). */
    if (in->id[0] != '\0')
        rc = norm_uuid(in->id, p.id, "panel id", err);
    else if (ids_uuid_v7(clock_wall_ms(), p.id) != AP_OK)
        rc = ap_err_set(err, AP_IO, "no randomness for a panel id");
    if (rc != AP_OK)
        return rc;
    if ((rc = check_text(in->title, "panel title", false, 1000, err)) != AP_OK ||
        (rc = check_text(in->question, "panel question", true, STORE_VALUE_MAX, err)) != AP_OK ||
        (rc = check_text(in->strategy, "panel strategy", true, 64, err)) != AP_OK ||
        (rc = check_text(in->strategy_version, "strategy version", false, 128, err)) != AP_OK ||
        (rc = check_text(in->consensus, "panel consensus", false, 64, err)) != AP_OK ||
        (rc = check_text(in->error, "panel error", false, STORE_VALUE_MAX, err)) != AP_OK ||
        (rc = check_text(in->idempotency_key, "idempotency key", false, 255, err)) != AP_OK ||
        (rc = check_text(in->request_hash, "request hash", false, 128, err)) != AP_OK ||
        (rc = check_json(in->params, "panel params", 'o', err)) != AP_OK ||
        (rc = check_json(in->experts, "panel experts", 'a', err)) != AP_OK ||
        (rc = check_json(in->result, "panel result", 0, err)) != AP_OK)
        return rc;
    if (in->status != NULL && !status_valid(in->status))
        return ap_err_set(err, AP_INVALID, "unknown panel status '%.32s'", in->status);
    if (p.status == NULL)
        p.status = "created";
    if (p.params == NULL)
        p.params = "{}";
    if (p.experts == NULL)
        p.experts = "[]";
    if (p.idempotency_key != NULL && p.idempotency_key[0] == '\0')
        p.idempotency_key = NULL;
    p.created_at = clock_wall_ms();
    p.updated_at = p.created_at;
    store_panel got = {0};
    bool existed = false;
    rc = s->ops->panel_insert(s->impl, &p, &got, &existed, err);
    if (rc != AP_OK)
        return rc;
    if (existed && !same_or_both_null(got.request_hash, p.request_hash)) {
        store_panel_free(&got);
        return ap_err_set(err, AP_CONFLICT,
                          "idempotency key '%.64s' was already used for a different request",
                          p.idempotency_key);
    }
    if (out != NULL)
        *out = got;
    else
        store_panel_free(&got);
    return AP_OK;
}

ap_status store_panel_get(store *s, const char *tenant_id, const char *id, store_panel *out,
                          ap_err *err)
{
    char tid[STORE_ID_MAX], pid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (!ids_uuid_normalize(id, pid))
        return ap_err_set(err, AP_NOTFOUND, "no such panel");
    return s->ops->panel_get(s->impl, tid, pid, out, err);
}

/* Validates a transition's statuses and texts (the panel id is checked by the caller); trusted
 * as for check_json_trusted. */
static ap_status transition_check(const char *const *from, size_t n_from, const char *new_status,
                                  const char *result, const char *error, bool trusted, ap_err *err)
{
    if (n_from == 0 || n_from > sizeof panel_statuses / sizeof panel_statuses[0])
        return ap_err_set(err, AP_INVALID, "transition needs 1 to 7 source statuses");
    for (size_t i = 0; i < n_from; i++)
        if (!status_valid(from[i]))
            return ap_err_set(err, AP_INVALID, "unknown panel status '%.32s'",
                              from[i] != NULL ? from[i] : "");
    if (!status_valid(new_status))
        return ap_err_set(err, AP_INVALID, "unknown panel status '%.32s'",
                          new_status != NULL ? new_status : "");
    ap_status rc = (trusted ? check_json_trusted : check_json)(result, "panel result", 0, err);
    if (rc == AP_OK)
        rc = check_text(error, "panel error", false, STORE_VALUE_MAX, err);
    return rc;
}

ap_status store_panel_transition(store *s, const char *tenant_id, const char *id,
                                 const char *const *from, size_t n_from, const char *new_status,
                                 const char *result, const char *error, ap_err *err)
{
    char tid[STORE_ID_MAX], pid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (!ids_uuid_normalize(id, pid))
        return ap_err_set(err, AP_NOTFOUND, "no such panel");
    if ((rc = transition_check(from, n_from, new_status, result, error, false, err)) != AP_OK)
        return rc;
    return s->ops->panel_transition(s->impl, tid, pid, from, n_from, new_status, result, error,
                                    clock_wall_ms(), err);
}

static size_t len_or_0(const char *s)
{
    return s != NULL ? strlen(s) : 0;
}

size_t store_panel_bytes(const store_panel *p)
{
    return 512 + len_or_0(p->title) + len_or_0(p->question) + len_or_0(p->params) +
           len_or_0(p->experts) + len_or_0(p->result) + len_or_0(p->error);
}

ap_status store_panel_list(store *s, const char *tenant_id, const char *status, const char *cursor,
                           int limit, size_t max_bytes, store_panel **rows, size_t *n,
                           char next_cursor[STORE_CURSOR_MAX], ap_err *err)
{
    *rows = NULL;
    *n = 0;
    next_cursor[0] = '\0';
    char tid[STORE_ID_MAX];
    store_pos pos;
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = check_limit(limit, &limit, err);
    if (rc == AP_OK)
        rc = cursor_decode(cursor, CURSOR_PANELS, &pos, err);
    if (rc != AP_OK)
        return rc;
    if (status != NULL && !status_valid(status))
        return ap_err_set(err, AP_INVALID, "unknown panel status '%.32s'", status);
    size_t got = 0;
    rc = s->ops->panel_list(s->impl, tid, status, &pos, limit + 1, max_bytes, rows, &got, err);
    if (rc != AP_OK)
        return rc;
    size_t bytes = 0;
    for (size_t i = 0; i < got && i < (size_t)limit; i++)
        bytes += store_panel_bytes(&(*rows)[i]);
    if (got > (size_t)limit) {
        store_panel_free(&(*rows)[limit]);
        got = (size_t)limit;
        store_panel_cursor(&(*rows)[got - 1], next_cursor);
    } else if (max_bytes > 0 && bytes > max_bytes) {
        store_panel_cursor(&(*rows)[got - 1], next_cursor);
    }
    *n = got;
    return AP_OK;
}

ap_status store_panels_in_status(store *s, const char *status, store_panel_ref **pairs, size_t *n,
                                 ap_err *err)
{
    *pairs = NULL;
    *n = 0;
    if (!status_valid(status))
        return ap_err_set(err, AP_INVALID, "unknown panel status '%.32s'",
                          status != NULL ? status : "");
    return s->ops->panels_in_status(s->impl, status, pairs, n, err);
}

/* ---- leases ----------------------------------------------------------------------------- */

static ap_status check_owner(const char *owner, const char *what, bool required, ap_err *err)
{
    return check_text(owner, what, required, STORE_LEASE_OWNER_MAX - 1, err);
}

ap_status store_panel_claim(store *s, const char *tenant_id, const char *id,
                            const char *const *from, size_t n_from, const char *owner,
                            int64_t lease_ms, const char *takeover, int64_t max_live, ap_err *err)
{
    char tid[STORE_ID_MAX], pid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (!ids_uuid_normalize(id, pid))
        return ap_err_set(err, AP_NOTFOUND, "no such panel");
    if ((rc = transition_check(from, n_from, "running", NULL, NULL, false, err)) != AP_OK ||
        (rc = check_owner(owner, "lease owner", true, err)) != AP_OK ||
        (rc = check_owner(takeover, "lease takeover", false, err)) != AP_OK)
        return rc;
    if (lease_ms < 1 || lease_ms > INT64_C(1) << 40)
        return ap_err_set(err, AP_INVALID, "a lease lasts 1 ms to 2^40 ms");
    if (max_live < 0)
        return ap_err_set(err, AP_INVALID, "a limit of live panels is 0 (none) or more");
    int64_t now = clock_wall_ms();
    return s->ops->panel_claim(s->impl, tid, pid, from, n_from, owner, takeover, now,
                               now + lease_ms, max_live, err);
}

/* A panel id of a renewal and where it stands in the caller's array. */
typedef struct lease_slot {
    char id[STORE_ID_MAX];
    size_t idx;
} lease_slot;

static int lease_slot_cmp(const void *a, const void *b)
{
    return strcmp(((const lease_slot *)a)->id, ((const lease_slot *)b)->id);
}

ap_status store_panel_leases_renew(store *s, const char *owner, const store_panel_ref *panels,
                                   size_t n, int64_t lease_ms, bool *renewed, ap_err *err)
{
    lease_slot *slots = NULL;
    char(*ids)[STORE_ID_MAX] = NULL;
    store_panel_ref *got = NULL;
    size_t ngot = 0;
    for (size_t i = 0; i < n; i++)
        renewed[i] = false;
    ap_status rc = check_owner(owner, "lease owner", true, err);
    if (rc != AP_OK || n == 0)
        return rc;
    if (n > STORE_WRITE_MAX)
        return ap_err_set(err, AP_LIMIT, "at most %d leases are renewed at once", STORE_WRITE_MAX);
    if (lease_ms < 1 || lease_ms > INT64_C(1) << 40)
        return ap_err_set(err, AP_INVALID, "a lease lasts 1 ms to 2^40 ms");
    slots = malloc(n * sizeof *slots);
    ids = malloc(n * sizeof *ids);
    if (slots == NULL || ids == NULL) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (!ids_uuid_normalize(panels[i].panel_id, slots[i].id)) {
            rc = ap_err_set(err, AP_INVALID, "panel id is not a valid UUID");
            goto out;
        }
        slots[i].idx = i;
        memcpy(ids[i], slots[i].id, STORE_ID_MAX);
    }
    rc = s->ops->leases_renew(s->impl, owner, (const char(*)[STORE_ID_MAX])ids, n,
                              clock_wall_ms() + lease_ms, &got, &ngot, err);
    if (rc != AP_OK)
        goto out;
    /* The rows come back in no particular order: match them by id. */
    qsort(slots, n, sizeof *slots, lease_slot_cmp);
    for (size_t i = 0; i < ngot; i++) {
        lease_slot key;
        memcpy(key.id, got[i].panel_id, STORE_ID_MAX);
        const lease_slot *hit = bsearch(&key, slots, n, sizeof *slots, lease_slot_cmp);
        if (hit != NULL && store_row_tenant_ok(panels[hit->idx].tenant_id, got[i].tenant_id))
            renewed[hit->idx] = true;
    }
out:
    free(got);
    free(ids);
    free(slots);
    return rc;
}

ap_status store_panel_leases_release(store *s, const char *owner, ap_err *err)
{
    ap_status rc = check_owner(owner, "lease owner", true, err);
    return rc == AP_OK ? s->ops->leases_release(s->impl, owner, err) : rc;
}

ap_status store_panels_lease_free(store *s, const char *owner, const char *host_prefix,
                                  const store_lease_ref *after, size_t limit,
                                  store_lease_ref **refs, size_t *n, ap_err *err)
{
    *refs = NULL;
    *n = 0;
    ap_status rc = check_owner(owner, "lease owner", true, err);
    if (rc == AP_OK)
        rc = check_owner(host_prefix, "lease host prefix", true, err);
    if (rc == AP_OK && (limit == 0 || limit > STORE_LEASE_PAGE_MAX))
        rc = ap_err_set(err, AP_INVALID, "a page of lease candidates holds 1 to %d panels",
                        STORE_LEASE_PAGE_MAX);
    store_lease_ref last = {0};
    if (rc == AP_OK && after != NULL) {
        rc = norm_uuid(after->panel_id, last.panel_id, "the page's last panel id", err);
        last.created_at = after->created_at;
    }
    return rc == AP_OK
               ? s->ops->panels_lease_free(s->impl, owner, host_prefix, clock_wall_ms(),
                                           after != NULL ? &last : NULL, limit, refs, n, err)
               : rc;
}

/* ---- events ----------------------------------------------------------------------------- */

void store_event_free(store_event *e)
{
    if (e == NULL)
        return;
    free(e->type);
    free(e->data);
    memset(e, 0, sizeof *e);
}

void store_events_free(store_event *rows, size_t n)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        store_event_free(&rows[i]);
    free(rows);
}

/* The stored form of event i of a batch in *out (strings borrowed from in). */
static ap_status event_prepare(const store_event *in, size_t i, int64_t now, bool trusted,
                               id_memo *memo, store_event *out, ap_err *err)
{
    ap_status rc = AP_OK;
    *out = *in;
    if (!memo_normalize(memo, in->panel_id, out->panel_id))
        rc = ap_err_set(err, AP_INVALID, "event %zu: panel id is not a valid UUID", i);
    else if (in->seq < 1)
        rc = ap_err_set(err, AP_INVALID, "event %zu: seq must be at least 1", i);
    else if ((rc = check_text(in->type, "event type", true, 64, err)) == AP_OK)
        rc = (trusted ? check_json_trusted : check_json)(in->data, "event data", 0, err);
    if (out->data == NULL)
        out->data = "{}";
    if (out->created_at <= 0)
        out->created_at = now;
    return rc;
}

ap_status store_events_append(store *s, const char *tenant_id, const store_event *events, size_t n,
                              ap_err *err)
{
    char tid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (n == 0)
        return AP_OK;
    if (n > STORE_EVENTS_MAX)
        return ap_err_set(err, AP_LIMIT, "more than %d events in one batch", STORE_EVENTS_MAX);
    store_event *ev = malloc(n * sizeof *ev);
    if (ev == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    int64_t now = clock_wall_ms();
    for (size_t i = 0; i < n && rc == AP_OK; i++)
        rc = event_prepare(&events[i], i, now, false, NULL, &ev[i], err);
    if (rc == AP_OK)
        rc = s->ops->events_append(s->impl, tid, ev, n, err);
    free(ev);
    return rc;
}

ap_status store_events_list(store *s, const char *tenant_id, const char *panel_id,
                            int64_t after_seq, int limit, store_event **rows, size_t *n,
                            ap_err *err)
{
    *rows = NULL;
    *n = 0;
    char tid[STORE_ID_MAX], pid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = check_limit(limit, &limit, err);
    if (rc != AP_OK)
        return rc;
    if (!ids_uuid_normalize(panel_id, pid))
        return ap_err_set(err, AP_NOTFOUND, "no such panel");
    return s->ops->events_list(s->impl, tid, pid, after_seq < 0 ? 0 : after_seq, limit, rows, n,
                               err);
}

void store_panel_cursor(const store_panel *row, char out[STORE_CURSOR_MAX])
{
    cursor_encode(CURSOR_PANELS, row->created_at, row->id, out);
}

ap_status store_events_last_seq(store *s, const char *tenant_id, const char *panel_id, int64_t *seq,
                                ap_err *err)
{
    *seq = 0;
    char tid[STORE_ID_MAX], pid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (!ids_uuid_normalize(panel_id, pid))
        return ap_err_set(err, AP_NOTFOUND, "no such panel");
    return s->ops->events_last_seq(s->impl, tid, pid, seq, err);
}

/* ---- checkpoints ------------------------------------------------------------------------ */

void store_checkpoint_free(store_checkpoint *c)
{
    if (c == NULL)
        return;
    free(c->next_node);
    free(c->state);
    free(c->script_version);
    free(c->journal);
    memset(c, 0, sizeof *c);
}

/* The stored form of a checkpoint in *out (strings borrowed from c). */
static ap_status checkpoint_prepare(const store_checkpoint *c, int64_t now, bool trusted,
                                    id_memo *memo, store_checkpoint *out, ap_err *err)
{
    ap_status (*json_ok)(const char *, const char *, char, ap_err *) =
        trusted ? check_json_trusted : check_json;
    *out = *c;
    if (!memo_normalize(memo, c->panel_id, out->panel_id))
        return ap_err_set(err, AP_INVALID, "panel id is not a valid UUID");
    ap_status rc;
    if (c->step < 0 || c->last_seq < 0)
        return ap_err_set(err, AP_INVALID, "checkpoint step and last_seq must not be negative");
    if ((rc = check_text(c->next_node, "checkpoint next node", false, 200, err)) != AP_OK ||
        (rc = check_text(c->script_version, "script version", false, 128, err)) != AP_OK ||
        (rc = json_ok(c->state, "checkpoint state", 0, err)) != AP_OK ||
        (rc = json_ok(c->journal, "checkpoint journal", 'a', err)) != AP_OK)
        return rc;
    if (out->state == NULL)
        out->state = "{}";
    if (out->journal == NULL)
        out->journal = "[]";
    out->created_at = now;
    return AP_OK;
}

ap_status store_checkpoint_put(store *s, const char *tenant_id, const store_checkpoint *c,
                               ap_err *err)
{
    char tid[STORE_ID_MAX];
    store_checkpoint cp;
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = checkpoint_prepare(c, clock_wall_ms(), false, NULL, &cp, err);
    if (rc != AP_OK)
        return rc;
    return s->ops->checkpoint_put(s->impl, tid, &cp, err);
}

ap_status store_checkpoint_get(store *s, const char *tenant_id, const char *panel_id,
                               store_checkpoint *out, ap_err *err)
{
    char tid[STORE_ID_MAX], pid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    if (!ids_uuid_normalize(panel_id, pid))
        return ap_err_set(err, AP_NOTFOUND, "no checkpoint for this panel");
    return s->ops->checkpoint_get(s->impl, tid, pid, out, err);
}

/* ---- scripts ---------------------------------------------------------------------------- */

void store_script_free(store_script *sc)
{
    if (sc == NULL)
        return;
    free(sc->name);
    free(sc->version);
    free(sc->source);
    free(sc->origin);
    memset(sc, 0, sizeof *sc);
}

void store_scripts_free(store_script *rows, size_t n)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        store_script_free(&rows[i]);
    free(rows);
}

static ap_status check_kind_name(store_script_kind kind, const char *name, ap_err *err)
{
    if (kind != STORE_SCRIPT_STRATEGY && kind != STORE_SCRIPT_CONSENSUS)
        return ap_err_set(err, AP_INVALID, "script kind must be strategy or consensus");
    if (!script_name_valid(name))
        return ap_err_set(err, AP_INVALID,
                          "script name '%.64s' is invalid (want [A-Za-z0-9_.-]{1,64})",
                          name != NULL ? name : "");
    return AP_OK;
}

ap_status store_script_put(store *s, const char *tenant_id, const store_script *sc, bool activate,
                           ap_err *err)
{
    store_script v = *sc;
    ap_status rc = norm_uuid(tenant_id, v.tenant_id, "tenant id", err);
    if (rc == AP_OK)
        rc = check_kind_name(sc->kind, sc->name, err);
    if (rc == AP_OK)
        rc = check_text(sc->source, "script source", true, STORE_VALUE_MAX, err);
    if (rc == AP_OK)
        rc = check_text(sc->origin, "script origin", false, 32, err);
    if (rc != AP_OK)
        return rc;
    /* The version is the content address pinned panels reload by, so it must be the source's
     * hash; anything else would let two different sources share a version. */
    char hash[IDS_SHA256_HEX_LEN + 1];
    ids_sha256_hex(sc->source, strlen(sc->source), hash);
    if (sc->version != NULL && sc->version[0] != '\0' && strcmp(sc->version, hash) != 0)
        return ap_err_set(err, AP_INVALID, "script version must be the SHA-256 hex of its source");
    v.version = hash;
    if (v.origin == NULL)
        v.origin = "override";
    v.active = false;
    v.created_at = clock_wall_ms();
    return s->ops->script_put(s->impl, &v, activate, err);
}

ap_status store_script_get_version(store *s, const char *tenant_id, store_script_kind kind,
                                   const char *name, const char *version, store_script *out,
                                   ap_err *err)
{
    char tid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = check_kind_name(kind, name, err);
    if (rc != AP_OK)
        return rc;
    if (version == NULL || !hex_valid(version, IDS_SHA256_HEX_LEN))
        return ap_err_set(err, AP_NOTFOUND, "no such script version");
    return s->ops->script_get_version(s->impl, tid, kind, name, version, out, err);
}

ap_status store_script_get_active(store *s, const char *tenant_id, store_script_kind kind,
                                  const char *name, store_script *out, ap_err *err)
{
    char tid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = check_kind_name(kind, name, err);
    if (rc != AP_OK)
        return rc;
    return s->ops->script_get_active(s->impl, tid, kind, name, out, err);
}

ap_status store_script_deactivate(store *s, const char *tenant_id, store_script_kind kind,
                                  const char *name, ap_err *err)
{
    char tid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = check_kind_name(kind, name, err);
    if (rc != AP_OK)
        return rc;
    return s->ops->script_deactivate(s->impl, tid, kind, name, err);
}

ap_status store_script_list(store *s, const char *tenant_id, store_script_kind kind,
                            const char *name, store_script **rows, size_t *n, ap_err *err)
{
    *rows = NULL;
    *n = 0;
    char tid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = check_kind_name(kind, name != NULL ? name : "any", err);
    if (rc != AP_OK)
        return rc;
    return s->ops->script_list(s->impl, tid, kind, name, rows, n, err);
}

/* ---- usage ------------------------------------------------------------------------------ */

void store_usage_free(store_usage *u)
{
    if (u == NULL)
        return;
    free(u->expert_id);
    free(u->provider);
    free(u->model);
    free(u->outcome);
    memset(u, 0, sizeof *u);
}

/* The stored form of a usage record in *out (id generated when empty; strings borrowed). */
static ap_status usage_prepare(const store_usage *u, int64_t now, id_memo *memo, store_usage *out,
                               ap_err *err)
{
    ap_status rc = AP_OK;
    *out = *u;
    if (u->id[0] != '\0')
        rc = norm_uuid(u->id, out->id, "usage id", err);
    else if (ids_uuid_v7(now, out->id) != AP_OK) /* appended: usage is written in time order */
        rc = ap_err_set(err, AP_IO, "no randomness for a usage id");
    if (rc == AP_OK && u->panel_id[0] != '\0' && !memo_normalize(memo, u->panel_id, out->panel_id))
        rc = ap_err_set(err, AP_INVALID, "usage panel id is not a valid UUID");
    if (rc != AP_OK)
        return rc;
    if ((rc = check_text(u->expert_id, "usage expert id", false, 64, err)) != AP_OK ||
        (rc = check_text(u->provider, "usage provider", true, 64, err)) != AP_OK ||
        (rc = check_text(u->model, "usage model", true, 200, err)) != AP_OK ||
        (rc = check_text(u->outcome, "usage outcome", true, 32, err)) != AP_OK)
        return rc;
    if (u->prompt_tokens < 0 || u->completion_tokens < 0 || u->latency_ms < 0 || u->attempts < 0 ||
        !isfinite(u->cost_usd) || u->cost_usd < 0)
        return ap_err_set(err, AP_INVALID, "usage counters must not be negative");
    if (out->created_at <= 0)
        out->created_at = now;
    return AP_OK;
}

ap_status store_usage_record(store *s, const char *tenant_id, const store_usage *u, ap_err *err)
{
    char tid[STORE_ID_MAX];
    store_usage v;
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc == AP_OK)
        rc = usage_prepare(u, clock_wall_ms(), NULL, &v, err);
    if (rc != AP_OK)
        return rc;
    return s->ops->usage_record(s->impl, tid, &v, err);
}

/* ---- batch writes ------------------------------------------------------------------------ */

static uint32_t id_hash(const char *id)
{
    uint32_t h = 2166136261u;
    for (; *id != '\0'; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h;
}

/* Clears keep[i] for every checkpoint that a later checkpoint of the same panel supersedes,
 * with an open addressing table of the latest index per panel (ids already normalised). */
static ap_status latest_checkpoints(const store_write *w, size_t n, bool *keep, ap_err *err)
{
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    size_t *slot = malloc(cap * sizeof *slot);
    if (slot == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    for (size_t h = 0; h < cap; h++)
        slot[h] = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        if (w[i].kind != STORE_WRITE_CHECKPOINT)
            continue;
        const char *pid = w[i].u.checkpoint.panel_id;
        size_t h = id_hash(pid) & (cap - 1);
        while (slot[h] != SIZE_MAX && strcmp(w[slot[h]].u.checkpoint.panel_id, pid) != 0)
            h = (h + 1) & (cap - 1);
        if (slot[h] != SIZE_MAX)
            keep[slot[h]] = false;
        slot[h] = i;
    }
    free(slot);
    return AP_OK;
}

/* The stored form of item i in *out. */
static ap_status write_prepare(const store_write *in, size_t i, int64_t now, bool trusted,
                               id_memo *memo, store_write *out, ap_err *err)
{
    *out = *in;
    out->result = AP_OK;
    switch (in->kind) {
    case STORE_WRITE_EVENT:
        return event_prepare(&in->u.event, i, now, trusted, memo, &out->u.event, err);
    case STORE_WRITE_CHECKPOINT:
        return checkpoint_prepare(&in->u.checkpoint, now, trusted, memo, &out->u.checkpoint, err);
    case STORE_WRITE_TRANSITION: {
        const store_transition *t = &in->u.transition;
        if (!memo_normalize(memo, t->panel_id, out->u.transition.panel_id))
            return ap_err_set(err, AP_NOTFOUND, "no such panel");
        return transition_check(t->from, t->n_from, t->to, t->result, t->error, trusted, err);
    }
    case STORE_WRITE_USAGE:
        return usage_prepare(&in->u.usage, now, memo, &out->u.usage, err);
    }
    return ap_err_set(err, AP_INVALID, "write %zu: unknown kind %d", i, (int)in->kind);
}

static ap_status write_batch(store *s, const char *tenant_id, store_write *items, size_t n,
                             bool trusted, ap_err *err)
{
    char tid[STORE_ID_MAX];
    store_write *w = NULL;
    size_t *from = NULL;
    bool *keep = NULL;
    size_t m = 0;
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK || n == 0)
        goto out;
    if (n > STORE_WRITE_MAX) {
        rc = ap_err_set(err, AP_LIMIT, "more than %d writes in one batch", STORE_WRITE_MAX);
        goto out;
    }
    w = malloc(n * sizeof *w);
    from = malloc(n * sizeof *from);
    keep = malloc(n * sizeof *keep);
    if (w == NULL || from == NULL || keep == NULL) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    int64_t now = clock_wall_ms();
    for (size_t i = 0; i < n; i++) {
        items[i].result = AP_OK;
        keep[i] = true;
    }
    id_memo memo = {.out = ""};
    for (size_t i = 0; i < n && rc == AP_OK; i++)
        if ((rc = write_prepare(&items[i], i, now, trusted, &memo, &w[i], err)) != AP_OK)
            items[i].result = rc;
    if (rc == AP_OK)
        rc = latest_checkpoints(w, n, keep, err);
    if (rc != AP_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (!keep[i])
            continue;
        w[m] = w[i];
        from[m++] = i;
    }
    rc = s->ops->write_batch(s->impl, tid, w, m, now, err);
    for (size_t j = 0; j < m; j++)
        items[from[j]].result = w[j].result;
out:
    free(w);
    free(from);
    free(keep);
    return rc;
}

ap_status store_write_batch(store *s, const char *tenant_id, store_write *items, size_t n,
                            ap_err *err)
{
    return write_batch(s, tenant_id, items, n, false, err);
}

ap_status store_write_batch_trusted(store *s, const char *tenant_id, store_write *items, size_t n,
                                    ap_err *err)
{
    return write_batch(s, tenant_id, items, n, true, err);
}

static ap_status summary_json(const store_usage_group *g, size_t n, store_group group, char **json,
                              ap_err *err)
{
    cJSON *arr = cJSON_CreateArray();
    if (arr == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        if (o == NULL || !cJSON_AddItemToArray(arr, o))
            goto nomem;
        cJSON *key;
        if (g[i].key == NULL) {
            key = cJSON_CreateNull();
        } else if (group == STORE_GROUP_DAY) {
            time_t t = (time_t)(strtoll(g[i].key, NULL, 10) * 86400);
            struct tm tm;
            char day[32];
            gmtime_r(&t, &tm);
            strftime(day, sizeof day, "%Y-%m-%d", &tm);
            key = cJSON_CreateString(day);
        } else {
            key = cJSON_CreateString(g[i].key);
        }
        if (key == NULL || !cJSON_AddItemToObject(o, "key", key) ||
            cJSON_AddNumberToObject(o, "calls", (double)g[i].calls) == NULL ||
            cJSON_AddNumberToObject(o, "prompt_tokens", (double)g[i].prompt_tokens) == NULL ||
            cJSON_AddNumberToObject(o, "completion_tokens", (double)g[i].completion_tokens) ==
                NULL ||
            cJSON_AddNumberToObject(o, "cost_usd", g[i].cost_usd) == NULL)
            goto nomem;
    }
    *json = jsonx_print(arr);
    cJSON_Delete(arr);
    if (*json == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    return AP_OK;
nomem:
    cJSON_Delete(arr);
    return ap_err_set(err, AP_NOMEM, "out of memory");
}

ap_status store_usage_summary(store *s, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                              const char *group_by, char **json, ap_err *err)
{
    *json = NULL;
    char tid[STORE_ID_MAX];
    ap_status rc = norm_uuid(tenant_id, tid, "tenant id", err);
    if (rc != AP_OK)
        return rc;
    store_group group;
    if (group_by != NULL && strcmp(group_by, "expert") == 0)
        group = STORE_GROUP_EXPERT;
    else if (group_by != NULL && strcmp(group_by, "model") == 0)
        group = STORE_GROUP_MODEL;
    else if (group_by != NULL && strcmp(group_by, "day") == 0)
        group = STORE_GROUP_DAY;
    else
        return ap_err_set(err, AP_INVALID, "group_by must be expert, model or day");
    if (from_ms > to_ms)
        return ap_err_set(err, AP_INVALID, "usage range ends before it starts");
    store_usage_group *groups = NULL;
    size_t n = 0;
    rc = s->ops->usage_summary(s->impl, tid, from_ms, to_ms, group, &groups, &n, err);
    if (rc == AP_OK)
        rc = summary_json(groups, n, group, json, err);
    store_usage_groups_free(groups, n);
    return rc;
}
