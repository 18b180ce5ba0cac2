/* sqlite.c - the embedded store backend: one SQLite connection in WAL mode behind a mutex.
 *
 * One connection is enough for the embedded default: SQLite serialises writers anyway, and
 * holding the mutex for a whole call makes every call atomic with respect to the others.
 * Statements are prepared once per connection and reused. */
#include "store/backend.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_COLS "id, tenant_id, prefix, hash, role, created_at, COALESCE(revoked_at, 0)"
#define EXPERT_COLS                                                                                \
    "id, tenant_id, name, role, expertise, persona, model, weight, created_at, updated_at"
#define PANEL_COLS                                                                                 \
    "id, tenant_id, title, question, strategy, strategy_version, consensus, params, experts, "     \
    "status, result, error, idempotency_key, request_hash, created_at, updated_at"
/* A panel as it is read: its columns and its lease, which only claims write. */
#define PANEL_READ_COLS PANEL_COLS ", lease_owner, lease_expires_at"
#define TRANSITION_FROM_MAX 7 /* source statuses of a transition: the store allows each once */
#define EVENT_COLS "tenant_id, panel_id, seq, type, data, created_at"
#define CHECKPOINT_COLS                                                                            \
    "tenant_id, panel_id, step, next_node, state, script_version, journal, last_seq, created_at"
#define SCRIPT_COLS "tenant_id, kind, name, version, source, origin, active, created_at"
#define USAGE_AGG                                                                                  \
    "count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) FROM usage_records "      \
    "WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3 "

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_PING,
    ST_TENANT_INSERT,
    ST_TENANT_GET,
    ST_TENANT_BY_SLUG,
    ST_TENANT_SET_CONFIG,
    ST_KEY_INSERT,
    ST_KEY_BY_PREFIX,
    ST_KEY_GET,
    ST_KEY_REVOKE,
    ST_EXPERT_INSERT,
    ST_EXPERT_GET,
    ST_EXPERT_UPDATE,
    ST_EXPERT_DELETE,
    ST_EXPERT_LIST_FIRST,
    ST_EXPERT_LIST_AFTER,
    ST_PANEL_INSERT,
    ST_PANEL_GET,
    ST_PANEL_BY_IDEMPOTENCY,
    ST_PANEL_TRANSITION,
    ST_PANEL_CLAIM,
    ST_LEASES_RENEW,
    ST_LEASES_RELEASE,
    ST_PANEL_EXISTS,
    ST_PANEL_OWNED,
    ST_PANEL_LIST_FIRST,
    ST_PANEL_LIST_BEFORE,
    ST_PANELS_IN_STATUS,
    ST_PANELS_LEASE_FREE,
    ST_EVENT_INSERT,
    ST_EVENT_INSERT_NEW,
    ST_EVENT_LIST,
    ST_EVENT_LAST,
    ST_PANEL_LIVE_OTHERS,
    ST_CHECKPOINT_PUT,
    ST_CHECKPOINT_GET,
    ST_SCRIPT_INSERT,
    ST_SCRIPT_CLEAR_ACTIVE,
    ST_SCRIPT_SET_ACTIVE,
    ST_SCRIPT_GET_VERSION,
    ST_SCRIPT_GET_ACTIVE,
    ST_SCRIPT_LIST_NAME,
    ST_SCRIPT_LIST_ACTIVE,
    ST_USAGE_INSERT,
    ST_USAGE_BY_EXPERT,
    ST_USAGE_BY_MODEL,
    ST_USAGE_BY_DAY,
    ST_MIGRATION_APPLIED,
    ST_MIGRATION_RECORD,
    ST__COUNT
};

static const char *const sql_text[ST__COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_PING] = "SELECT 1",
    [ST_TENANT_INSERT] =
        "INSERT INTO tenants (id, slug, name, config, created_at) VALUES (?, ?, ?, ?, ?)",
    [ST_TENANT_GET] = "SELECT id, slug, name, config, created_at FROM tenants WHERE id = ?",
    [ST_TENANT_BY_SLUG] = "SELECT id, slug, name, config, created_at FROM tenants WHERE slug = ?",
    [ST_TENANT_SET_CONFIG] = "UPDATE tenants SET config = ? WHERE id = ?",
    [ST_KEY_INSERT] = "INSERT INTO api_keys (id, tenant_id, prefix, hash, role, created_at) "
                      "VALUES (?, ?, ?, ?, ?, ?)",
    [ST_KEY_BY_PREFIX] = "SELECT " KEY_COLS " FROM api_keys WHERE prefix = ?",
    [ST_KEY_GET] = "SELECT " KEY_COLS " FROM api_keys WHERE tenant_id = ? AND id = ?",
    [ST_KEY_REVOKE] = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
    [ST_EXPERT_INSERT] = "INSERT INTO experts (" EXPERT_COLS ") "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING " EXPERT_COLS,
    [ST_EXPERT_GET] = "SELECT " EXPERT_COLS " FROM experts WHERE tenant_id = ? AND id = ?",
    [ST_EXPERT_UPDATE] = "UPDATE experts SET name = ?, role = ?, expertise = ?, persona = ?, "
                         "model = ?, weight = ?, updated_at = ? WHERE tenant_id = ? AND id = ? "
                         "RETURNING " EXPERT_COLS,
    [ST_EXPERT_DELETE] = "DELETE FROM experts WHERE tenant_id = ? AND id = ?",
    [ST_EXPERT_LIST_FIRST] = "SELECT " EXPERT_COLS " FROM experts WHERE tenant_id = ? "
                             "ORDER BY created_at, id LIMIT ?",
    [ST_EXPERT_LIST_AFTER] = "SELECT " EXPERT_COLS " FROM experts WHERE tenant_id = ? "
                             "AND (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT ?",
    [ST_PANEL_INSERT] = "INSERT INTO panels (" PANEL_COLS ") "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [ST_PANEL_GET] = "SELECT " PANEL_READ_COLS " FROM panels WHERE tenant_id = ? AND id = ?",
    [ST_PANEL_BY_IDEMPOTENCY] = "SELECT " PANEL_READ_COLS " FROM panels "
                                "WHERE tenant_id = ? AND idempotency_key = ?",
    [ST_PANEL_TRANSITION] = "UPDATE panels SET status = ?1, result = COALESCE(?2, result), "
                            "error = COALESCE(?3, error), updated_at = ?4, "
                            "lease_owner = CASE WHEN ?1 = 'running' THEN lease_owner END, "
                            "lease_expires_at = CASE WHEN ?1 = 'running' THEN lease_expires_at "
                            "ELSE 0 END "
                            "WHERE tenant_id = ?5 AND id = ?6 "
                            "AND (status = ?7 OR status = ?8 OR status = ?9 OR status = ?10 "
                            "OR status = ?11 OR status = ?12 OR status = ?13)",
    [ST_PANEL_CLAIM] = "UPDATE panels SET status = 'running', lease_owner = ?1, "
                       "lease_expires_at = ?2, updated_at = ?3 WHERE tenant_id = ?4 AND id = ?5 "
                       "AND (status = ?6 OR status = ?7 OR status = ?8 OR status = ?9 "
                       "OR status = ?10 OR status = ?11 OR status = ?12) "
                       "AND (lease_owner IS NULL OR lease_expires_at <= ?3 OR lease_owner = ?1 "
                       "OR lease_owner = ?13)",
    [ST_LEASES_RENEW] = "UPDATE panels SET lease_expires_at = ?1 WHERE lease_owner = ?2 "
                        "AND status = 'running' AND id IN (SELECT value FROM json_each(?3)) "
                        "RETURNING tenant_id, id",
    [ST_LEASES_RELEASE] = "UPDATE panels SET lease_owner = NULL, lease_expires_at = 0 "
                          "WHERE lease_owner = ?1 AND status = 'running'",
    [ST_PANEL_EXISTS] = "SELECT 1 FROM panels WHERE tenant_id = ? AND id = ?",
    [ST_PANEL_OWNED] = "SELECT 1 FROM panels WHERE tenant_id = ? AND id = ? AND lease_owner = ?",
    [ST_PANEL_LIST_FIRST] = "SELECT " PANEL_READ_COLS " FROM panels WHERE tenant_id = ?1 "
                            "AND (?2 IS NULL OR status = ?2) "
                            "ORDER BY created_at DESC, id DESC LIMIT ?3",
    [ST_PANEL_LIST_BEFORE] = "SELECT " PANEL_READ_COLS " FROM panels WHERE tenant_id = ?1 "
                             "AND (?2 IS NULL OR status = ?2) AND (created_at, id) < (?4, ?5) "
                             "ORDER BY created_at DESC, id DESC LIMIT ?3",
    [ST_PANELS_IN_STATUS] =
        "SELECT tenant_id, id FROM panels WHERE status = ? ORDER BY created_at, id",
    [ST_PANELS_LEASE_FREE] =
        "SELECT tenant_id, id, lease_owner, lease_expires_at, created_at FROM panels "
        "WHERE status = 'running' AND (lease_owner IS NULL OR (lease_owner <> ?1 AND "
        "(lease_expires_at <= ?3 OR substr(lease_owner, 1, length(?2)) = ?2))) "
        "AND (?4 IS NULL OR (created_at, id) > (?4, ?5)) ORDER BY created_at, id LIMIT ?6",
    [ST_EVENT_INSERT] = "INSERT INTO panel_events (" EVENT_COLS ") VALUES (?, ?, ?, ?, ?, ?)",
    /* (the batch fences by lease: sq_write_batch) */
    [ST_EVENT_INSERT_NEW] = "INSERT INTO panel_events (" EVENT_COLS ") VALUES (?, ?, ?, ?, ?, ?) "
                            "ON CONFLICT DO NOTHING",
    [ST_EVENT_LIST] = "SELECT " EVENT_COLS " FROM panel_events WHERE tenant_id = ? "
                      "AND panel_id = ? AND seq > ? ORDER BY seq LIMIT ?",
    [ST_PANEL_LIVE_OTHERS] = "SELECT count(*) FROM panels WHERE tenant_id = ? AND id <> ? AND "
                             "status IN ('queued', 'running', 'awaiting_input')",
    [ST_EVENT_LAST] =
        "SELECT COALESCE(MAX(seq), 0) FROM panel_events WHERE tenant_id = ? AND panel_id = ?",
    /* (fenced by lease in sq_write_batch) */
    [ST_CHECKPOINT_PUT] =
        "INSERT INTO checkpoints (" CHECKPOINT_COLS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (tenant_id, panel_id) DO UPDATE SET step = excluded.step, "
        "next_node = excluded.next_node, state = excluded.state, "
        "script_version = excluded.script_version, journal = excluded.journal, "
        "last_seq = excluded.last_seq, created_at = excluded.created_at",
    [ST_CHECKPOINT_GET] = "SELECT " CHECKPOINT_COLS " FROM checkpoints "
                          "WHERE tenant_id = ? AND panel_id = ?",
    [ST_SCRIPT_INSERT] = "INSERT INTO scripts (" SCRIPT_COLS ") VALUES (?, ?, ?, ?, ?, ?, 0, ?) "
                         "ON CONFLICT DO NOTHING",
    [ST_SCRIPT_CLEAR_ACTIVE] = "UPDATE scripts SET active = 0 WHERE tenant_id = ? AND kind = ? "
                               "AND name = ? AND active = 1",
    [ST_SCRIPT_SET_ACTIVE] = "UPDATE scripts SET active = 1 WHERE tenant_id = ? AND kind = ? "
                             "AND name = ? AND version = ?",
    [ST_SCRIPT_GET_VERSION] = "SELECT " SCRIPT_COLS " FROM scripts WHERE tenant_id = ? "
                              "AND kind = ? AND name = ? AND version = ?",
    [ST_SCRIPT_GET_ACTIVE] = "SELECT " SCRIPT_COLS " FROM scripts WHERE tenant_id = ? "
                             "AND kind = ? AND name = ? AND active = 1",
    [ST_SCRIPT_LIST_NAME] = "SELECT " SCRIPT_COLS " FROM scripts WHERE tenant_id = ? "
                            "AND kind = ? AND name = ? ORDER BY created_at DESC, version DESC",
    [ST_SCRIPT_LIST_ACTIVE] = "SELECT " SCRIPT_COLS " FROM scripts WHERE tenant_id = ? "
                              "AND kind = ? AND active = 1 ORDER BY created_at DESC, name",
    [ST_USAGE_INSERT] =
        "INSERT INTO usage_records (id, tenant_id, panel_id, expert_id, provider, model, "
        "prompt_tokens, completion_tokens, cost_usd, latency_ms, attempts, outcome, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [ST_USAGE_BY_EXPERT] = "SELECT tenant_id, expert_id, " USAGE_AGG
                           "GROUP BY tenant_id, expert_id ORDER BY expert_id",
    [ST_USAGE_BY_MODEL] =
        "SELECT tenant_id, model, " USAGE_AGG "GROUP BY tenant_id, model ORDER BY model",
    [ST_USAGE_BY_DAY] = "SELECT tenant_id, CAST(created_at / 86400000 AS TEXT), " USAGE_AGG
                        "GROUP BY tenant_id, created_at / 86400000 "
                        "ORDER BY created_at / 86400000",
    [ST_MIGRATION_APPLIED] = "SELECT 1 FROM schema_migrations WHERE version = ?",
    [ST_MIGRATION_RECORD] = "INSERT INTO schema_migrations (version, applied_at) "
                            "VALUES (?, CAST(strftime('%s', 'now') AS INTEGER) * 1000)",
};

/* One connection and its statements, used by one thread at a time (mu). The store's handle is
 * the writer's connection, which every write takes; reads take one of its readers, which WAL
 * lets run beside the writer's open transaction, so that an API read does not wait behind a
 * batch of the event writer (an in-memory database has no readers: there the writer reads). */
typedef struct sq {
    sqlite3 *db;
    pthread_mutex_t mu;
    sqlite3_stmt *st[ST__COUNT];
    struct sq *readers; /* the writer's only: n_readers connections */
    unsigned n_readers;
    atomic_uint next_reader;
} sq;

#define SQ_READERS 4

/* ---- plumbing ----------------------------------------------------------------------------- */

/* A connection for one read, locked (the caller unlocks its mu): the writer's while it is
 * free, whose page cache is hot (a reader finds its cache stale after every commit and reads
 * the pages again), else a free reader, else the next reader in turn. */
static sq *sq_read_lock(sq *w)
{
    if (w->n_readers == 0) {
        pthread_mutex_lock(&w->mu);
        return w;
    }
    if (pthread_mutex_trylock(&w->mu) == 0)
        return w;
    unsigned first = atomic_fetch_add(&w->next_reader, 1);
    for (unsigned i = 0; i < w->n_readers; i++) {
        sq *r = &w->readers[(first + i) % w->n_readers];
        if (pthread_mutex_trylock(&r->mu) == 0)
            return r;
    }
    sq *r = &w->readers[first % w->n_readers];
    pthread_mutex_lock(&r->mu);
    return r;
}

static ap_status sq_error(sq *q, int rc, ap_err *err)
{
    int ext = sqlite3_extended_errcode(q->db);
    const char *msg = sqlite3_errmsg(q->db);
    switch (ext) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        return ap_err_set(err, AP_CONFLICT, "already exists (%s)", msg);
    case SQLITE_CONSTRAINT_FOREIGNKEY:
        return ap_err_set(err, AP_NOTFOUND, "refers to an object that does not exist");
    case SQLITE_CONSTRAINT_CHECK:
    case SQLITE_CONSTRAINT_NOTNULL:
        return ap_err_set(err, AP_INVALID, "value rejected by the database (%s)", msg);
    default:
        break;
    }
    if ((rc & 0xff) == SQLITE_NOMEM)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED)
        return ap_err_set(err, AP_IO, "database is busy: %s", msg);
    return ap_err_set(err, AP_IO, "database error: %s", msg);
}

/* The cached statement id, reset and unbound, ready to bind. */
static ap_status sq_stmt(sq *q, int id, sqlite3_stmt **out, ap_err *err)
{
    if (q->st[id] == NULL) {
        int rc = sqlite3_prepare_v3(q->db, sql_text[id], -1, SQLITE_PREPARE_PERSISTENT, &q->st[id],
                                    NULL);
        if (rc != SQLITE_OK)
            return sq_error(q, rc, err);
    } else {
        sqlite3_reset(q->st[id]);
        sqlite3_clear_bindings(q->st[id]);
    }
    *out = q->st[id];
    return AP_OK;
}

/* sq_stmt for the batch's per-row statements, whose callers bind every parameter: sq_done left
 * the statement reset, and clearing bindings that are all replaced is work per row. */
static ap_status sq_stmt_rebind(sq *q, int id, sqlite3_stmt **out, ap_err *err)
{
    if (q->st[id] == NULL)
        return sq_stmt(q, id, out, err);
    sqlite3_reset(q->st[id]);
    *out = q->st[id];
    return AP_OK;
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s == NULL)
        return sqlite3_bind_null(st, i);
    return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Binds texts to parameters 1..n, NULL binding SQL NULL. */
static ap_status bind_texts(sq *q, sqlite3_stmt *st, const char *const *v, int n, ap_err *err)
{
    for (int i = 0; i < n; i++) {
        int rc = bind_text(st, i + 1, v[i]);
        if (rc != SQLITE_OK)
            return sq_error(q, rc, err);
    }
    return AP_OK;
}

/* Steps a statement that returns no rows (or rows nobody reads). */
static ap_status sq_done(sq *q, sqlite3_stmt *st, ap_err *err)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    ap_status out = rc == SQLITE_DONE ? AP_OK : sq_error(q, rc, err);
    sqlite3_reset(st);
    return out;
}

static ap_status sq_simple(sq *q, int id, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    ap_status rc = sq_stmt(q, id, &st, err);
    if (rc == AP_OK)
        rc = sq_done(q, st, err);
    return rc;
}

static ap_status sq_begin(sq *q, ap_err *err)
{
    return sq_simple(q, ST_BEGIN, err);
}

/* Commits on AP_OK, rolls back otherwise; returns the final status. */
static ap_status sq_end(sq *q, ap_status rc, ap_err *err)
{
    if (rc == AP_OK)
        rc = sq_simple(q, ST_COMMIT, err);
    if (rc != AP_OK && sqlite3_get_autocommit(q->db) == 0)
        sq_simple(q, ST_ROLLBACK, NULL);
    return rc;
}

/* The rows array of a list grown for one more row: doubled, first rows at first; NULL when
 * out of memory (rows untouched, *cap unchanged). */
static void *grow_rows(void *rows, size_t *cap, size_t size, size_t first)
{
    size_t ncap = *cap > 0 ? *cap * 2 : first;
    void *grown = realloc(rows, ncap * size);
    if (grown != NULL)
        *cap = ncap;
    return grown;
}

static char *col_dup(sqlite3_stmt *st, int i, bool *failed)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return NULL;
    const char *t = (const char *)sqlite3_column_text(st, i);
    if (t == NULL) {
        *failed = true;
        return NULL;
    }
    return store_dup(t, failed);
}

static void col_id(sqlite3_stmt *st, int i, char out[STORE_ID_MAX])
{
    const char *t = (const char *)sqlite3_column_text(st, i);
    snprintf(out, STORE_ID_MAX, "%s", t != NULL ? t : "");
}

/* ---- row readers: each fills out from the current row; false on allocation failure -------- */

static bool read_tenant(sqlite3_stmt *st, store_tenant *t)
{
    bool failed = false;
    memset(t, 0, sizeof *t);
    col_id(st, 0, t->id);
    t->slug = col_dup(st, 1, &failed);
    t->name = col_dup(st, 2, &failed);
    t->config = col_dup(st, 3, &failed);
    t->created_at = sqlite3_column_int64(st, 4);
    if (failed)
        store_tenant_free(t);
    return !failed;
}

static bool read_expert(sqlite3_stmt *st, store_expert *e)
{
    bool failed = false;
    memset(e, 0, sizeof *e);
    col_id(st, 0, e->id);
    col_id(st, 1, e->tenant_id);
    e->name = col_dup(st, 2, &failed);
    e->role = col_dup(st, 3, &failed);
    e->expertise = col_dup(st, 4, &failed);
    e->persona = col_dup(st, 5, &failed);
    e->model = col_dup(st, 6, &failed);
    e->weight = sqlite3_column_double(st, 7);
    e->created_at = sqlite3_column_int64(st, 8);
    e->updated_at = sqlite3_column_int64(st, 9);
    if (failed)
        store_expert_free(e);
    return !failed;
}

static bool read_panel(sqlite3_stmt *st, store_panel *p)
{
    bool failed = false;
    memset(p, 0, sizeof *p);
    col_id(st, 0, p->id);
    col_id(st, 1, p->tenant_id);
    p->title = col_dup(st, 2, &failed);
    p->question = col_dup(st, 3, &failed);
    p->strategy = col_dup(st, 4, &failed);
    p->strategy_version = col_dup(st, 5, &failed);
    p->consensus = col_dup(st, 6, &failed);
    p->params = col_dup(st, 7, &failed);
    p->experts = col_dup(st, 8, &failed);
    p->status = col_dup(st, 9, &failed);
    p->result = col_dup(st, 10, &failed);
    p->error = col_dup(st, 11, &failed);
    p->idempotency_key = col_dup(st, 12, &failed);
    p->request_hash = col_dup(st, 13, &failed);
    p->created_at = sqlite3_column_int64(st, 14);
    p->updated_at = sqlite3_column_int64(st, 15);
    p->lease_owner = col_dup(st, 16, &failed);
    p->lease_expires_at = sqlite3_column_int64(st, 17);
    if (failed)
        store_panel_free(p);
    return !failed;
}

static bool read_event(sqlite3_stmt *st, store_event *e)
{
    bool failed = false;
    memset(e, 0, sizeof *e);
    col_id(st, 1, e->panel_id);
    e->seq = sqlite3_column_int64(st, 2);
    e->type = col_dup(st, 3, &failed);
    e->data = col_dup(st, 4, &failed);
    e->created_at = sqlite3_column_int64(st, 5);
    if (failed)
        store_event_free(e);
    return !failed;
}

static bool read_checkpoint(sqlite3_stmt *st, store_checkpoint *c)
{
    bool failed = false;
    memset(c, 0, sizeof *c);
    col_id(st, 1, c->panel_id);
    c->step = sqlite3_column_int64(st, 2);
    c->next_node = col_dup(st, 3, &failed);
    c->state = col_dup(st, 4, &failed);
    c->script_version = col_dup(st, 5, &failed);
    c->journal = col_dup(st, 6, &failed);
    c->last_seq = sqlite3_column_int64(st, 7);
    c->created_at = sqlite3_column_int64(st, 8);
    if (failed)
        store_checkpoint_free(c);
    return !failed;
}

static bool read_script(sqlite3_stmt *st, store_script *sc)
{
    bool failed = false;
    memset(sc, 0, sizeof *sc);
    col_id(st, 0, sc->tenant_id);
    if (!store_kind_parse((const char *)sqlite3_column_text(st, 1), &sc->kind))
        sc->kind = STORE_SCRIPT_STRATEGY;
    sc->name = col_dup(st, 2, &failed);
    sc->version = col_dup(st, 3, &failed);
    sc->source = col_dup(st, 4, &failed);
    sc->origin = col_dup(st, 5, &failed);
    sc->active = sqlite3_column_int(st, 6) != 0;
    sc->created_at = sqlite3_column_int64(st, 7);
    if (failed)
        store_script_free(sc);
    return !failed;
}

/* Layer 4 for a row whose tenant id is in column col. */
static bool row_tenant_ok(sqlite3_stmt *st, int col, const char *tenant_id)
{
    return store_row_tenant_ok(tenant_id, (const char *)sqlite3_column_text(st, col));
}

/* Steps a statement expected to yield at most one row: AP_OK with the row current, or
 * AP_NOTFOUND (message what) when there is none. */
static ap_status sq_one(sq *q, sqlite3_stmt *st, const char *what, ap_err *err)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return AP_OK;
    if (rc == SQLITE_DONE)
        return ap_err_set(err, AP_NOTFOUND, "%s", what);
    return sq_error(q, rc, err);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void sq_conn_close(sq *c)
{
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(c->st[i]);
    sqlite3_close(c->db);
    pthread_mutex_destroy(&c->mu);
}

static void sq_close(void *impl)
{
    sq *q = impl;
    if (q == NULL)
        return;
    for (unsigned i = 0; i < q->n_readers; i++)
        sq_conn_close(&q->readers[i]);
    free(q->readers);
    sq_conn_close(q);
    free(q);
}

/* Process-wide settings, before SQLite initialises: without memory statistics (nothing reads
 * them) every SQLite allocation skips a global mutex, ~3 % of the engine's instructions under
 * load. Refused harmlessly when SQLite was already initialised. */
static pthread_once_t sq_config_once = PTHREAD_ONCE_INIT;

static void sq_config(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

/* Opens connection c (zeroed, its mutex initialised) on path with pragmas. */
static ap_status sq_conn_open(sq *c, const char *path, const char *pragmas, ap_err *err)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &c->db, flags, NULL) != SQLITE_OK)
        return ap_err_set(err, AP_IO, "cannot open SQLite database '%s': %s", path,
                          c->db != NULL ? sqlite3_errmsg(c->db) : "out of memory");
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, 5000);
    char *msg = NULL;
    if (sqlite3_exec(c->db, pragmas, NULL, NULL, &msg) != SQLITE_OK) {
        ap_status rc = ap_err_set(err, AP_IO, "cannot open SQLite database '%s': %s", path,
                                  msg != NULL ? msg : "unknown error");
        sqlite3_free(msg);
        return rc;
    }
    return AP_OK;
}

ap_status store_sqlite_open(const char *path, void **impl, ap_err *err)
{
    *impl = NULL;
    if (path == NULL || path[0] == '\0')
        return ap_err_set(err, AP_INVALID, "sqlite store needs a path (sqlite:PATH)");
    bool memory = strcmp(path, ":memory:") == 0;
    sq *q = calloc(1, sizeof *q);
    sq *readers = memory ? NULL : calloc(SQ_READERS, sizeof *readers);
    if (q == NULL || (!memory && readers == NULL)) {
        free(q);
        free(readers);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    pthread_mutex_init(&q->mu, NULL);
    q->readers = readers;
    for (unsigned i = 0; readers != NULL && i < SQ_READERS; i++)
        pthread_mutex_init(&readers[i].mu, NULL);
    q->n_readers = readers != NULL ? SQ_READERS : 0;
    pthread_once(&sq_config_once, sq_config);
    /* WAL lets readers (other processes, backups) run beside the writer; NORMAL sync in WAL
     * keeps the database consistent across crashes and fsyncs only at checkpoints. Events are
     * keyed by panel id, so the thousands of panels running at once append to as many leaf
     * pages: a 64 MiB page cache (default 2 MiB) keeps them from being read back from the file
     * on every batch (8 MiB measured the same on bench_runtime, within its noise).
     * Checkpointing every 8000 pages (~32 MiB of WAL, default 1000) copies a hot page back to
     * the database once per many commits instead of once per few. */
    const char *pragmas = memory ? "PRAGMA foreign_keys = ON;"
                                 : "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; "
                                   "PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536; "
                                   "PRAGMA wal_autocheckpoint = 8000;";
    ap_status rc = sq_conn_open(q, path, pragmas, err);
    /* Readers after the writer, which made the database WAL; query_only keeps them readers,
     * and each caches 8 MiB at most (reads touch few pages; the writer's are hot anyway). */
    for (unsigned i = 0; rc == AP_OK && i < q->n_readers; i++)
        rc = sq_conn_open(&readers[i], path, "PRAGMA query_only = ON; PRAGMA cache_size = -8192;",
                          err);
    if (rc != AP_OK) {
        sq_close(q);
        return rc;
    }
    *impl = q;
    return AP_OK;
}

static ap_status sq_exec(sq *q, const char *sql, ap_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(q->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        ap_status rc = ap_err_set(err, AP_IO, "database error: %s", msg != NULL ? msg : "?");
        sqlite3_free(msg);
        return rc;
    }
    return AP_OK;
}

static ap_status sq_bootstrap(sq *q, ap_err *err)
{
    return sq_exec(q,
                   "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, "
                   "applied_at INTEGER NOT NULL)",
                   err);
}

static ap_status sq_is_applied(sq *q, const char *version, bool *applied, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    ap_status rc = sq_stmt(q, ST_MIGRATION_APPLIED, &st, err);
    if (rc != AP_OK)
        return rc;
    bind_text(st, 1, version);
    int s = sqlite3_step(st);
    if (s != SQLITE_ROW && s != SQLITE_DONE)
        rc = sq_error(q, s, err);
    *applied = s == SQLITE_ROW;
    sqlite3_reset(st);
    return rc;
}

/* AP_OK when no row of the database lacks the parent its foreign key names. */
static ap_status sq_foreign_keys_hold(sq *q, const char *version, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    ap_status rc = AP_OK;
    int s = sqlite3_prepare_v2(q->db, "PRAGMA foreign_key_check", -1, &st, NULL);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    if (s == SQLITE_ROW)
        rc = ap_err_set(err, AP_IO, "migration %s failed: a row of %s lacks its parent", version,
                        (const char *)sqlite3_column_text(st, 0));
    else if (s != SQLITE_DONE)
        rc = sq_error(q, s, err);
    sqlite3_finalize(st);
    return rc;
}

/* Migrations run with foreign keys off, as SQLite's procedure for rebuilding a table requires:
 * dropping a rebuilt parent table must not cascade into its children, which then refer to the
 * new table by name. Each migration checks every key before it commits instead. The pragma
 * has no effect inside a transaction, so it is set around them. */
static ap_status sq_migrate(void *impl, int *applied, ap_err *err)
{
    sq *q = impl;
    store_migration m[STORE_MIGRATIONS_MAX];
    size_t n = store_migrations("sql/sqlite/", m, STORE_MIGRATIONS_MAX);
    *applied = 0;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_bootstrap(q, err);
    if (rc == AP_OK)
        rc = sq_exec(q, "PRAGMA foreign_keys = OFF", err);
    for (size_t i = 0; i < n && rc == AP_OK; i++) {
        rc = sq_begin(q, err);
        if (rc != AP_OK)
            break;
        bool done = false;
        rc = sq_is_applied(q, m[i].version, &done, err);
        if (rc == AP_OK && !done) {
            rc = sq_exec(q, m[i].sql, err);
            if (rc != AP_OK && err != NULL) {
                char msg[AP_ERR_MSG_MAX];
                snprintf(msg, sizeof msg, "%s", err->msg);
                ap_err_set(err, rc, "migration %s failed: %s", m[i].version, msg);
            }
            if (rc == AP_OK)
                rc = sq_foreign_keys_hold(q, m[i].version, err);
            sqlite3_stmt *st = NULL;
            if (rc == AP_OK)
                rc = sq_stmt(q, ST_MIGRATION_RECORD, &st, err);
            if (rc == AP_OK) {
                bind_text(st, 1, m[i].version);
                rc = sq_done(q, st, err);
            }
            if (rc == AP_OK)
                (*applied)++;
        }
        rc = sq_end(q, rc, err);
    }
    ap_status on = sq_exec(q, "PRAGMA foreign_keys = ON", rc == AP_OK ? err : NULL);
    if (rc == AP_OK)
        rc = on;
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_pending(void *impl, int *pending, ap_err *err)
{
    sq *q = impl;
    store_migration m[STORE_MIGRATIONS_MAX];
    size_t n = store_migrations("sql/sqlite/", m, STORE_MIGRATIONS_MAX);
    *pending = 0;
    pthread_mutex_lock(&q->mu);
    /* A read: before the first migration there is no table to ask, and none is created. */
    sqlite3_stmt *st = NULL;
    bool exists = false;
    ap_status rc = AP_OK;
    int s = sqlite3_prepare_v2(q->db,
                               "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                               "AND name = 'schema_migrations'",
                               -1, &st, NULL);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    if (s == SQLITE_ROW)
        exists = true;
    else if (s != SQLITE_DONE)
        rc = sq_error(q, s, err);
    sqlite3_finalize(st);
    for (size_t i = 0; i < n && rc == AP_OK; i++) {
        bool done = false;
        if (exists)
            rc = sq_is_applied(q, m[i].version, &done, err);
        if (rc == AP_OK && !done)
            (*pending)++;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_check_isolation(void *impl, ap_err *err)
{
    (void)impl;
    ap_err_clear(err);
    return AP_OK;
}

static ap_status sq_ping(void *impl, ap_err *err)
{
    sq *q = impl;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_simple(q, ST_PING, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* ---- tenants ------------------------------------------------------------------------------ */

static ap_status sq_tenant_insert(void *impl, const store_tenant *t, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_TENANT_INSERT, &st, err);
    if (rc == AP_OK)
        rc = bind_texts(q, st, (const char *const[]){t->id, t->slug, t->name, t->config}, 4, err);
    if (rc == AP_OK) {
        sqlite3_bind_int64(st, 5, t->created_at);
        rc = sq_done(q, st, err);
    }
    if (rc == AP_CONFLICT)
        ap_err_set(err, AP_CONFLICT, "slug '%s' already exists", t->slug);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_tenant_lookup(sq *q, int id, const char *value, store_tenant *out,
                                  const char *what, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, id, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, value);
        rc = sq_one(q, st, what, err);
    }
    if (rc == AP_OK && !read_tenant(st, out))
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    if (st != NULL)
        sqlite3_reset(st);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_tenant_get(void *impl, const char *id, store_tenant *out, ap_err *err)
{
    return sq_tenant_lookup(impl, ST_TENANT_GET, id, out, "no such tenant", err);
}

static ap_status sq_tenant_by_slug(void *impl, const char *slug, store_tenant *out, ap_err *err)
{
    char what[128];
    snprintf(what, sizeof what, "no tenant with slug '%s'", slug);
    return sq_tenant_lookup(impl, ST_TENANT_BY_SLUG, slug, out, what, err);
}

static ap_status sq_tenant_set_config(void *impl, const char *id, const char *config, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_TENANT_SET_CONFIG, &st, err);
    if (rc == AP_OK)
        rc = bind_texts(q, st, (const char *const[]){config, id}, 2, err);
    if (rc == AP_OK)
        rc = sq_done(q, st, err);
    if (rc == AP_OK && sqlite3_changes(q->db) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "no such tenant");
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* ---- keys --------------------------------------------------------------------------------- */

static ap_status sq_key_insert(void *impl, const store_key *k, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_KEY_INSERT, &st, err);
    if (rc == AP_OK)
        rc = bind_texts(q, st,
                        (const char *const[]){k->id, k->tenant_id, k->prefix, k->hash,
                                              store_role_name(k->role)},
                        5, err);
    if (rc == AP_OK) {
        sqlite3_bind_int64(st, 6, k->created_at);
        rc = sq_done(q, st, err);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* Steps a statement returning one KEY_COLS row into out; tenant_id, when not NULL, is the
 * tenant the row must belong to (layer 4). */
static ap_status key_row(sq *q, sqlite3_stmt *st, const char *tenant_id, store_key *out,
                         ap_err *err)
{
    ap_status rc = sq_one(q, st, tenant_id != NULL ? "no such API key" : "unknown API key", err);
    if (rc == AP_OK && tenant_id != NULL && !row_tenant_ok(st, 1, tenant_id))
        rc = store_row_denied(err);
    if (rc == AP_OK) {
        memset(out, 0, sizeof *out);
        col_id(st, 0, out->id);
        col_id(st, 1, out->tenant_id);
        const char *p = (const char *)sqlite3_column_text(st, 2);
        const char *h = (const char *)sqlite3_column_text(st, 3);
        snprintf(out->prefix, sizeof out->prefix, "%s", p != NULL ? p : "");
        snprintf(out->hash, sizeof out->hash, "%s", h != NULL ? h : "");
        if (!store_role_parse((const char *)sqlite3_column_text(st, 4), &out->role))
            rc = ap_err_set(err, AP_IO, "API key has an unknown role");
        out->created_at = sqlite3_column_int64(st, 5);
        out->revoked_at = sqlite3_column_int64(st, 6);
    }
    sqlite3_reset(st);
    return rc;
}

static ap_status sq_key_by_prefix(void *impl, const char *prefix, store_key *out, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, ST_KEY_BY_PREFIX, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, prefix);
        rc = key_row(q, st, NULL, out, err);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_key_get(void *impl, const char *tenant_id, const char *key_id, store_key *out,
                            ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, ST_KEY_GET, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, key_id);
        rc = key_row(q, st, tenant_id, out, err);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_key_revoke(void *impl, const char *key_id, int64_t now, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_KEY_REVOKE, &st, err);
    if (rc == AP_OK) {
        sqlite3_bind_int64(st, 1, now);
        bind_text(st, 2, key_id);
        rc = sq_done(q, st, err);
    }
    if (rc == AP_OK && sqlite3_changes(q->db) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "no API key with id %s", key_id);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* ---- experts ------------------------------------------------------------------------------ */

/* Steps a statement returning one expert row into out, verifying the tenant. */
static ap_status expert_row(sq *q, sqlite3_stmt *st, const char *tenant_id, store_expert *out,
                            ap_err *err)
{
    ap_status rc = sq_one(q, st, "no such expert", err);
    if (rc == AP_OK && !row_tenant_ok(st, 1, tenant_id))
        rc = store_row_denied(err);
    if (rc == AP_OK && !read_expert(st, out))
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    sqlite3_reset(st);
    return rc;
}

static ap_status sq_expert_insert(void *impl, const store_expert *e, store_expert *out, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_EXPERT_INSERT, &st, err);
    if (rc == AP_OK)
        rc = bind_texts(q, st,
                        (const char *const[]){e->id, e->tenant_id, e->name, e->role, e->expertise,
                                              e->persona, e->model},
                        7, err);
    if (rc == AP_OK) {
        sqlite3_bind_double(st, 8, e->weight);
        sqlite3_bind_int64(st, 9, e->created_at);
        sqlite3_bind_int64(st, 10, e->updated_at);
        rc = expert_row(q, st, e->tenant_id, out, err);
    }
    if (rc == AP_CONFLICT)
        ap_err_set(err, AP_CONFLICT, "an expert with id %s already exists", e->id);
    else if (rc == AP_NOTFOUND)
        ap_err_set(err, AP_NOTFOUND, "no such tenant");
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_expert_get(void *impl, const char *tenant_id, const char *id, store_expert *out,
                               ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, ST_EXPERT_GET, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, id);
        rc = expert_row(q, st, tenant_id, out, err);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_expert_update(void *impl, const store_expert *e, store_expert *out, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_EXPERT_UPDATE, &st, err);
    if (rc == AP_OK)
        rc = bind_texts(q, st,
                        (const char *const[]){e->name, e->role, e->expertise, e->persona, e->model},
                        5, err);
    if (rc == AP_OK) {
        sqlite3_bind_double(st, 6, e->weight);
        sqlite3_bind_int64(st, 7, e->updated_at);
        bind_text(st, 8, e->tenant_id);
        bind_text(st, 9, e->id);
        rc = expert_row(q, st, e->tenant_id, out, err);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_expert_delete(void *impl, const char *tenant_id, const char *id, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_EXPERT_DELETE, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, id);
        rc = sq_done(q, st, err);
    }
    if (rc == AP_OK && sqlite3_changes(q->db) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "no such expert");
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* Readers of one row type for sq_collect (a void * row, so one loop serves them all). */
static bool read_expert_row(sqlite3_stmt *st, void *row)
{
    return read_expert(st, row);
}

static bool read_panel_row(sqlite3_stmt *st, void *row)
{
    return read_panel(st, row);
}

static bool read_event_row(sqlite3_stmt *st, void *row)
{
    return read_event(st, row);
}

/* Steps a bound list statement, reading up to limit rows of elem bytes each into *rows, which
 * holds *cap of them and grows (grow_rows, from first) when full; each row's tenant (column
 * tenant_col, or none when negative: operator scope) is checked first. *got counts the rows
 * read, also on failure, so the caller can free them. Resets the statement. */
static ap_status sq_collect(sq *q, sqlite3_stmt *st, int tenant_col, const char *tenant_id,
                            size_t limit, void **rows, size_t *cap, size_t first, size_t elem,
                            bool (*read)(sqlite3_stmt *st, void *row), size_t *got, ap_err *err)
{
    ap_status rc = AP_OK;
    int s = SQLITE_DONE;
    while (rc == AP_OK && *got < limit && (s = sqlite3_step(st)) == SQLITE_ROW) {
        if (*got == *cap) {
            void *grown = grow_rows(*rows, cap, elem, first);
            if (grown == NULL) {
                rc = ap_err_set(err, AP_NOMEM, "out of memory");
                break;
            }
            *rows = grown;
        }
        void *row = (char *)*rows + *got * elem;
        if (tenant_col >= 0 && !row_tenant_ok(st, tenant_col, tenant_id))
            rc = store_row_denied(err);
        else if (!read(st, row))
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
        else
            (*got)++;
    }
    if (rc == AP_OK && *got < limit && s != SQLITE_DONE)
        rc = sq_error(q, s, err);
    sqlite3_reset(st);
    return rc;
}

static ap_status sq_expert_list(void *impl, const char *tenant_id, const store_pos *after,
                                int limit, store_expert **rows, size_t *n, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    store_expert *out = calloc((size_t)limit, sizeof *out);
    size_t got = 0;
    if (out == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, after->set ? ST_EXPERT_LIST_AFTER : ST_EXPERT_LIST_FIRST, &st, err);
    if (rc == AP_OK) {
        int i = 1;
        bind_text(st, i++, tenant_id);
        if (after->set) {
            sqlite3_bind_int64(st, i++, after->created_at);
            bind_text(st, i++, after->id);
        }
        sqlite3_bind_int(st, i, limit);
        void *rows_in = out;
        size_t cap = (size_t)limit; /* allocated whole: never grows */
        rc = sq_collect(q, st, 1, tenant_id, cap, &rows_in, &cap, 0, sizeof *out, read_expert_row,
                        &got, err);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc != AP_OK) {
        store_experts_free(out, got);
        return rc;
    }
    *rows = out;
    *n = got;
    return AP_OK;
}

/* ---- panels ------------------------------------------------------------------------------- */

static ap_status panel_row(sq *q, sqlite3_stmt *st, const char *tenant_id, store_panel *out,
                           ap_err *err)
{
    ap_status rc = sq_one(q, st, "no such panel", err);
    if (rc == AP_OK && !row_tenant_ok(st, 1, tenant_id))
        rc = store_row_denied(err);
    if (rc == AP_OK && !read_panel(st, out))
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    sqlite3_reset(st);
    return rc;
}

static ap_status panel_fetch(sq *q, int id, const char *tenant_id, const char *value,
                             store_panel *out, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    ap_status rc = sq_stmt(q, id, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, value);
        rc = panel_row(q, st, tenant_id, out, err);
    }
    return rc;
}

static bool panel_dup(const store_panel *p, store_panel *out)
{
    bool failed = false;
    memset(out, 0, sizeof *out);
    memcpy(out->id, p->id, sizeof out->id);
    memcpy(out->tenant_id, p->tenant_id, sizeof out->tenant_id);
    out->title = store_dup(p->title, &failed);
    out->question = store_dup(p->question, &failed);
    out->strategy = store_dup(p->strategy, &failed);
    out->strategy_version = store_dup(p->strategy_version, &failed);
    out->consensus = store_dup(p->consensus, &failed);
    out->params = store_dup(p->params, &failed);
    out->experts = store_dup(p->experts, &failed);
    out->status = store_dup(p->status, &failed);
    out->result = store_dup(p->result, &failed);
    out->error = store_dup(p->error, &failed);
    out->idempotency_key = store_dup(p->idempotency_key, &failed);
    out->request_hash = store_dup(p->request_hash, &failed);
    out->created_at = p->created_at;
    out->updated_at = p->updated_at;
    if (failed)
        store_panel_free(out);
    return !failed;
}

static ap_status sq_panel_insert(void *impl, const store_panel *p, store_panel *out, bool *existed,
                                 ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    *existed = false;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_begin(q, err);
    if (rc == AP_OK && p->idempotency_key != NULL) {
        rc = panel_fetch(q, ST_PANEL_BY_IDEMPOTENCY, p->tenant_id, p->idempotency_key, out, err);
        if (rc == AP_OK)
            *existed = true;
        else if (rc == AP_NOTFOUND)
            rc = AP_OK;
    }
    if (rc == AP_OK && !*existed) {
        rc = sq_stmt(q, ST_PANEL_INSERT, &st, err);
        if (rc == AP_OK)
            rc = bind_texts(q, st,
                            (const char *const[]){p->id, p->tenant_id, p->title, p->question,
                                                  p->strategy, p->strategy_version, p->consensus,
                                                  p->params, p->experts, p->status, p->result,
                                                  p->error, p->idempotency_key, p->request_hash},
                            14, err);
        if (rc == AP_OK) {
            sqlite3_bind_int64(st, 15, p->created_at);
            sqlite3_bind_int64(st, 16, p->updated_at);
            rc = sq_done(q, st, err);
        }
        if (rc == AP_CONFLICT)
            ap_err_set(err, AP_CONFLICT, "a panel with id %s already exists", p->id);
        else if (rc == AP_NOTFOUND)
            ap_err_set(err, AP_NOTFOUND, "no such tenant");
        /* Every column was bound, so the stored row is p itself: copied rather than read
         * back, which cost a lookup as dear as the insert. */
        if (rc == AP_OK && !panel_dup(p, out))
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
    }
    rc = sq_end(q, rc, err);
    if (rc != AP_OK)
        store_panel_free(out);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_panel_get(void *impl, const char *tenant_id, const char *id, store_panel *out,
                              ap_err *err)
{
    sq *q = impl;
    q = sq_read_lock(q);
    ap_status rc = panel_fetch(q, ST_PANEL_GET, tenant_id, id, out, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* Runs one transition inside the caller's transaction: AP_NOTFOUND when the panel is not the
 * tenant's, AP_CONFLICT when its status is not in from[]. */
/* AP_OK when the tenant has the panel, AP_NOTFOUND otherwise: tells a conditional update that
 * changed nothing apart from one that found no panel. */
static ap_status sq_panel_exists(sq *q, const char *tenant_id, const char *id, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    ap_status rc = sq_stmt(q, ST_PANEL_EXISTS, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, id);
        rc = sq_one(q, st, "no such panel", err);
        sqlite3_reset(st);
    }
    return rc;
}

static ap_status sq_transition_one(sq *q, const char *tenant_id, const char *id,
                                   const char *const *from, size_t n_from, const char *new_status,
                                   const char *result, const char *error, int64_t now, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    ap_status rc = sq_stmt(q, ST_PANEL_TRANSITION, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, new_status);
        bind_text(st, 2, result);
        bind_text(st, 3, error);
        sqlite3_bind_int64(st, 4, now);
        bind_text(st, 5, tenant_id);
        bind_text(st, 6, id);
        /* One parameter per source status (the store allows up to TRANSITION_FROM_MAX); unused
         * ones stay NULL, which no comparison matches. Compared one by one: a json_each list
         * cost a virtual table per call, an IN list a temporary b-tree of its values. */
        for (size_t i = 0; i < n_from && i < TRANSITION_FROM_MAX; i++)
            bind_text(st, 7 + (int)i, from[i]);
        rc = sq_done(q, st, err);
    }
    if (rc == AP_OK && sqlite3_changes(q->db) == 0 &&
        (rc = sq_panel_exists(q, tenant_id, id, err)) == AP_OK)
        rc = ap_err_set(err, AP_CONFLICT, "panel is not in a status that allows '%s'", new_status);
    return rc;
}

static ap_status sq_panel_transition(void *impl, const char *tenant_id, const char *id,
                                     const char *const *from, size_t n_from, const char *new_status,
                                     const char *result, const char *error, int64_t now,
                                     ap_err *err)
{
    sq *q = impl;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_begin(q, err);
    if (rc == AP_OK)
        rc = sq_transition_one(q, tenant_id, id, from, n_from, new_status, result, error, now, err);
    rc = sq_end(q, rc, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* AP_OK when the tenant has fewer than max live panels besides id; AP_LIMIT when it has as
 * many (AP_NOTFOUND rather, when id is not the tenant's panel). */
static ap_status sq_live_below(sq *q, const char *tenant_id, const char *id, int64_t max,
                               ap_err *err)
{
    sqlite3_stmt *st = NULL;
    int64_t live = 0;
    ap_status rc = sq_stmt(q, ST_PANEL_LIVE_OTHERS, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, id);
        rc = sq_one(q, st, "no such tenant", err);
        if (rc == AP_OK)
            live = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    if (rc == AP_OK && live >= max && (rc = sq_panel_exists(q, tenant_id, id, err)) == AP_OK)
        rc = ap_err_set(err, AP_LIMIT, "the tenant already has %lld live panels, its limit",
                        (long long)live);
    return rc;
}

static bool read_lease_ref(sqlite3_stmt *st, void *row)
{
    store_lease_ref *r = row;
    col_id(st, 0, r->tenant_id);
    col_id(st, 1, r->panel_id);
    const char *o = (const char *)sqlite3_column_text(st, 2);
    snprintf(r->owner, sizeof r->owner, "%s", o != NULL ? o : "");
    r->expires_at = o != NULL ? sqlite3_column_int64(st, 3) : 0;
    r->created_at = sqlite3_column_int64(st, 4);
    return true;
}

static ap_status sq_panels_lease_free(void *impl, const char *owner, const char *host_prefix,
                                      int64_t now, const store_lease_ref *after, size_t limit,
                                      store_lease_ref **refs, size_t *n, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    void *out = NULL;
    size_t got = 0;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, ST_PANELS_LEASE_FREE, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, owner);
        bind_text(st, 2, host_prefix);
        sqlite3_bind_int64(st, 3, now);
        if (after != NULL) {
            sqlite3_bind_int64(st, 4, after->created_at);
            bind_text(st, 5, after->panel_id);
        } else {
            sqlite3_bind_null(st, 4);
            sqlite3_bind_null(st, 5);
        }
        sqlite3_bind_int64(st, 6, (sqlite3_int64)limit);
        size_t cap = 0;
        rc = sq_collect(q, st, -1, NULL, SIZE_MAX, &out, &cap, 16, sizeof(store_lease_ref),
                        read_lease_ref, &got, err);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc != AP_OK) {
        free(out);
        return rc;
    }
    *refs = out;
    *n = got;
    return AP_OK;
}

static ap_status sq_panel_claim(void *impl, const char *tenant_id, const char *id,
                                const char *const *from, size_t n_from, const char *owner,
                                const char *takeover, int64_t now, int64_t expires_at,
                                int64_t max_live, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    /* BEGIN IMMEDIATE holds the database's one write lock from here: no other process can
     * start a panel between the count and the claim. */
    ap_status rc = sq_begin(q, err);
    if (rc == AP_OK && max_live > 0)
        rc = sq_live_below(q, tenant_id, id, max_live, err);
    if (rc == AP_OK)
        rc = sq_stmt(q, ST_PANEL_CLAIM, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, owner);
        sqlite3_bind_int64(st, 2, expires_at);
        sqlite3_bind_int64(st, 3, now);
        bind_text(st, 4, tenant_id);
        bind_text(st, 5, id);
        /* as in sq_transition_one: unused source statuses stay NULL and match nothing */
        for (size_t i = 0; i < n_from && i < TRANSITION_FROM_MAX; i++)
            bind_text(st, 6 + (int)i, from[i]);
        bind_text(st, 13, takeover);
        rc = sq_done(q, st, err);
    }
    if (rc == AP_OK && sqlite3_changes(q->db) == 0 &&
        (rc = sq_panel_exists(q, tenant_id, id, err)) == AP_OK)
        rc = ap_err_set(err, AP_CONFLICT,
                        "the panel's status or another process's lease does not allow it to "
                        "start here");
    rc = sq_end(q, rc, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_leases_renew(void *impl, const char *owner, const char (*ids)[STORE_ID_MAX],
                                 size_t n, int64_t expires_at, store_panel_ref **renewed,
                                 size_t *n_renewed, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    *renewed = NULL;
    *n_renewed = 0;
    /* the ids as a JSON array for json_each: canonical UUIDs need no escaping */
    size_t cap = n * (STORE_ID_MAX + 2) + 2;
    char *list = malloc(cap);
    store_panel_ref *out = calloc(n, sizeof *out);
    size_t got = 0;
    if (list == NULL || out == NULL) {
        free(list);
        free(out);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    char *at = list;
    *at++ = '[';
    for (size_t i = 0; i < n; i++)
        at += snprintf(at, cap - (size_t)(at - list), "%s\"%s\"", i ? "," : "", ids[i]);
    snprintf(at, cap - (size_t)(at - list), "]");
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_begin(q, err);
    if (rc == AP_OK)
        rc = sq_stmt(q, ST_LEASES_RENEW, &st, err);
    if (rc == AP_OK) {
        sqlite3_bind_int64(st, 1, expires_at);
        bind_text(st, 2, owner);
        bind_text(st, 3, list);
        int s;
        while ((s = sqlite3_step(st)) == SQLITE_ROW && got < n) {
            col_id(st, 0, out[got].tenant_id);
            col_id(st, 1, out[got].panel_id);
            got++;
        }
        if (s != SQLITE_ROW && s != SQLITE_DONE)
            rc = sq_error(q, s, err);
        sqlite3_reset(st);
    }
    rc = sq_end(q, rc, err);
    pthread_mutex_unlock(&q->mu);
    free(list);
    if (rc != AP_OK) {
        free(out);
        return rc;
    }
    *renewed = out;
    *n_renewed = got;
    return AP_OK;
}

static ap_status sq_leases_release(void *impl, const char *owner, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_LEASES_RELEASE, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, owner);
        rc = sq_done(q, st, err);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_panel_list(void *impl, const char *tenant_id, const char *status,
                               const store_pos *before, int limit, size_t max_bytes,
                               store_panel **rows, size_t *n, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    store_panel *out = calloc((size_t)limit, sizeof *out);
    size_t got = 0, bytes = 0;
    if (out == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, before->set ? ST_PANEL_LIST_BEFORE : ST_PANEL_LIST_FIRST, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, status);
        sqlite3_bind_int(st, 3, limit);
        if (before->set) {
            sqlite3_bind_int64(st, 4, before->created_at);
            bind_text(st, 5, before->id);
        }
        /* Row by row, so a page of large panels stops being read once it is full. */
        int s = SQLITE_DONE;
        while (rc == AP_OK && got < (size_t)limit && (max_bytes == 0 || bytes <= max_bytes) &&
               (s = sqlite3_step(st)) == SQLITE_ROW) {
            if (!row_tenant_ok(st, 1, tenant_id))
                rc = store_row_denied(err);
            else if (!read_panel_row(st, &out[got]))
                rc = ap_err_set(err, AP_NOMEM, "out of memory");
            else
                bytes += store_panel_bytes(&out[got++]);
        }
        if (rc == AP_OK && s != SQLITE_DONE && s != SQLITE_ROW)
            rc = sq_error(q, s, err);
        sqlite3_reset(st);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc != AP_OK) {
        store_panels_free(out, got);
        return rc;
    }
    *rows = out;
    *n = got;
    return AP_OK;
}

static bool read_panel_ref(sqlite3_stmt *st, void *row)
{
    store_panel_ref *r = row;
    col_id(st, 0, r->tenant_id);
    col_id(st, 1, r->panel_id);
    return true;
}

static ap_status sq_panels_in_status(void *impl, const char *status, store_panel_ref **pairs,
                                     size_t *n, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    void *out = NULL;
    size_t got = 0;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, ST_PANELS_IN_STATUS, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, status);
        size_t cap = 0;
        rc = sq_collect(q, st, -1, NULL, SIZE_MAX, &out, &cap, 16, sizeof(store_panel_ref),
                        read_panel_ref, &got, err);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc != AP_OK) {
        free(out);
        return rc;
    }
    *pairs = out;
    *n = got;
    return AP_OK;
}

/* ---- events ------------------------------------------------------------------------------- */

static ap_status sq_events_append(void *impl, const char *tenant_id, const store_event *events,
                                  size_t n, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_begin(q, err);
    for (size_t i = 0; i < n && rc == AP_OK; i++) {
        rc = sq_stmt(q, ST_EVENT_INSERT, &st, err);
        if (rc != AP_OK)
            break;
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, events[i].panel_id);
        sqlite3_bind_int64(st, 3, events[i].seq);
        bind_text(st, 4, events[i].type);
        bind_text(st, 5, events[i].data);
        sqlite3_bind_int64(st, 6, events[i].created_at);
        rc = sq_done(q, st, err);
        if (rc == AP_CONFLICT)
            ap_err_set(err, AP_CONFLICT, "event %lld of panel %s already exists",
                       (long long)events[i].seq, events[i].panel_id);
        else if (rc == AP_NOTFOUND)
            ap_err_set(err, AP_NOTFOUND, "no such panel: %s", events[i].panel_id);
    }
    rc = sq_end(q, rc, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_events_list(void *impl, const char *tenant_id, const char *panel_id,
                                int64_t after_seq, int limit, store_event **rows, size_t *n,
                                ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    store_event *out = calloc((size_t)limit, sizeof *out);
    size_t got = 0;
    if (out == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, ST_EVENT_LIST, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, panel_id);
        sqlite3_bind_int64(st, 3, after_seq);
        sqlite3_bind_int(st, 4, limit);
        void *rows_in = out;
        size_t cap = (size_t)limit; /* allocated whole: never grows */
        rc = sq_collect(q, st, 0, tenant_id, cap, &rows_in, &cap, 0, sizeof *out, read_event_row,
                        &got, err);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc != AP_OK) {
        store_events_free(out, got);
        return rc;
    }
    *rows = out;
    *n = got;
    return AP_OK;
}

static ap_status sq_events_last_seq(void *impl, const char *tenant_id, const char *panel_id,
                                    int64_t *seq, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, ST_EVENT_LAST, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, panel_id);
        rc = sq_one(q, st, "no such panel", err);
        if (rc == AP_OK)
            *seq = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static ap_status sq_checkpoint_one(sq *q, const char *tenant_id, const store_checkpoint *c,
                                   ap_err *err)
{
    sqlite3_stmt *st = NULL;
    ap_status rc = sq_stmt_rebind(q, ST_CHECKPOINT_PUT, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, c->panel_id);
        sqlite3_bind_int64(st, 3, c->step);
        bind_text(st, 4, c->next_node);
        bind_text(st, 5, c->state);
        bind_text(st, 6, c->script_version);
        bind_text(st, 7, c->journal);
        sqlite3_bind_int64(st, 8, c->last_seq);
        sqlite3_bind_int64(st, 9, c->created_at);
        rc = sq_done(q, st, err);
        if (rc == AP_NOTFOUND)
            ap_err_set(err, AP_NOTFOUND, "no such panel");
    }
    return rc;
}

static ap_status sq_write_batch(void *impl, const char *tenant_id, store_write *items, size_t n,
                                int64_t now, ap_err *err);

/* As one write of a batch, which fences an owner's checkpoint by its lease. */
static ap_status sq_checkpoint_put(void *impl, const char *tenant_id, const store_checkpoint *c,
                                   ap_err *err)
{
    store_write w = {.kind = STORE_WRITE_CHECKPOINT, .u.checkpoint = *c};
    ap_status rc = sq_write_batch(impl, tenant_id, &w, 1, 0, err);
    if (rc == AP_OK && w.result == AP_CONFLICT)
        rc = ap_err_set(err, AP_CONFLICT, "the panel's lease is not this writer's");
    return rc;
}

static ap_status sq_checkpoint_get(void *impl, const char *tenant_id, const char *panel_id,
                                   store_checkpoint *out, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, ST_CHECKPOINT_GET, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, panel_id);
        rc = sq_one(q, st, "no checkpoint for this panel", err);
        if (rc == AP_OK && !row_tenant_ok(st, 0, tenant_id))
            rc = store_row_denied(err);
        if (rc == AP_OK && !read_checkpoint(st, out))
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
        sqlite3_reset(st);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* ---- scripts ------------------------------------------------------------------------------ */

/* Binds (tenant, kind, name) to parameters 1..3. */
static void bind_script_key(sqlite3_stmt *st, const char *tenant_id, store_script_kind kind,
                            const char *name)
{
    bind_text(st, 1, tenant_id);
    bind_text(st, 2, store_kind_name(kind));
    bind_text(st, 3, name);
}

static ap_status sq_script_put(void *impl, const store_script *sc, bool activate, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_begin(q, err);
    if (rc == AP_OK)
        rc = sq_stmt(q, ST_SCRIPT_INSERT, &st, err);
    if (rc == AP_OK) {
        bind_script_key(st, sc->tenant_id, sc->kind, sc->name);
        bind_text(st, 4, sc->version);
        bind_text(st, 5, sc->source);
        bind_text(st, 6, sc->origin);
        sqlite3_bind_int64(st, 7, sc->created_at);
        rc = sq_done(q, st, err);
        if (rc == AP_NOTFOUND)
            ap_err_set(err, AP_NOTFOUND, "no such tenant");
    }
    if (rc == AP_OK && activate) {
        rc = sq_stmt(q, ST_SCRIPT_CLEAR_ACTIVE, &st, err);
        if (rc == AP_OK) {
            bind_script_key(st, sc->tenant_id, sc->kind, sc->name);
            rc = sq_done(q, st, err);
        }
        if (rc == AP_OK)
            rc = sq_stmt(q, ST_SCRIPT_SET_ACTIVE, &st, err);
        if (rc == AP_OK) {
            bind_script_key(st, sc->tenant_id, sc->kind, sc->name);
            bind_text(st, 4, sc->version);
            rc = sq_done(q, st, err);
        }
    }
    rc = sq_end(q, rc, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status script_one(sq *q, int id, const char *tenant_id, store_script_kind kind,
                            const char *name, const char *version, store_script *out,
                            const char *what, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, id, &st, err);
    if (rc == AP_OK) {
        bind_script_key(st, tenant_id, kind, name);
        if (version != NULL)
            bind_text(st, 4, version);
        rc = sq_one(q, st, what, err);
        if (rc == AP_OK && !row_tenant_ok(st, 0, tenant_id))
            rc = store_row_denied(err);
        if (rc == AP_OK && !read_script(st, out))
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
        sqlite3_reset(st);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static ap_status sq_script_get_version(void *impl, const char *tenant_id, store_script_kind kind,
                                       const char *name, const char *version, store_script *out,
                                       ap_err *err)
{
    return script_one(impl, ST_SCRIPT_GET_VERSION, tenant_id, kind, name, version, out,
                      "no such script version", err);
}

static ap_status sq_script_get_active(void *impl, const char *tenant_id, store_script_kind kind,
                                      const char *name, store_script *out, ap_err *err)
{
    return script_one(impl, ST_SCRIPT_GET_ACTIVE, tenant_id, kind, name, NULL, out,
                      "no active override of this script", err);
}

static ap_status sq_script_deactivate(void *impl, const char *tenant_id, store_script_kind kind,
                                      const char *name, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_stmt(q, ST_SCRIPT_CLEAR_ACTIVE, &st, err);
    if (rc == AP_OK) {
        bind_script_key(st, tenant_id, kind, name);
        rc = sq_done(q, st, err);
    }
    if (rc == AP_OK && sqlite3_changes(q->db) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "no active override of this script");
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static bool read_script_row(sqlite3_stmt *st, void *row)
{
    return read_script(st, row);
}

static ap_status sq_script_list(void *impl, const char *tenant_id, store_script_kind kind,
                                const char *name, store_script **rows, size_t *n, ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    void *out = NULL;
    size_t got = 0;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, name != NULL ? ST_SCRIPT_LIST_NAME : ST_SCRIPT_LIST_ACTIVE, &st, err);
    if (rc == AP_OK) {
        bind_script_key(st, tenant_id, kind, name);
        size_t cap = 0;
        rc = sq_collect(q, st, 0, tenant_id, SIZE_MAX, &out, &cap, 8, sizeof(store_script),
                        read_script_row, &got, err);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc != AP_OK) {
        store_scripts_free(out, got);
        return rc;
    }
    *rows = out;
    *n = got;
    return AP_OK;
}

/* ---- usage -------------------------------------------------------------------------------- */

static ap_status sq_usage_one(sq *q, const char *tenant_id, const store_usage *u, ap_err *err)
{
    sqlite3_stmt *st = NULL;
    ap_status rc = sq_stmt_rebind(q, ST_USAGE_INSERT, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, u->id);
        bind_text(st, 2, tenant_id);
        bind_text(st, 3, u->panel_id[0] != '\0' ? u->panel_id : NULL);
        bind_text(st, 4, u->expert_id);
        bind_text(st, 5, u->provider);
        bind_text(st, 6, u->model);
        sqlite3_bind_int64(st, 7, u->prompt_tokens);
        sqlite3_bind_int64(st, 8, u->completion_tokens);
        sqlite3_bind_double(st, 9, u->cost_usd);
        sqlite3_bind_int64(st, 10, u->latency_ms);
        sqlite3_bind_int(st, 11, u->attempts);
        bind_text(st, 12, u->outcome);
        sqlite3_bind_int64(st, 13, u->created_at);
        rc = sq_done(q, st, err);
        if (rc == AP_CONFLICT)
            ap_err_set(err, AP_CONFLICT, "usage record %s already exists", u->id);
        else if (rc == AP_NOTFOUND)
            ap_err_set(err, AP_NOTFOUND, "no such tenant");
    }
    return rc;
}

static ap_status sq_usage_record(void *impl, const char *tenant_id, const store_usage *u,
                                 ap_err *err)
{
    sq *q = impl;
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_usage_one(q, tenant_id, u, err);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static bool read_usage_group(sqlite3_stmt *st, void *row)
{
    store_usage_group *g = row;
    bool failed = false;
    g->key = col_dup(st, 1, &failed);
    g->calls = sqlite3_column_int64(st, 2);
    g->prompt_tokens = sqlite3_column_int64(st, 3);
    g->completion_tokens = sqlite3_column_int64(st, 4);
    g->cost_usd = sqlite3_column_double(st, 5);
    return !failed;
}

static ap_status sq_usage_summary(void *impl, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                                  store_group group, store_usage_group **groups, size_t *n,
                                  ap_err *err)
{
    sq *q = impl;
    sqlite3_stmt *st = NULL;
    void *out = NULL;
    size_t got = 0;
    int id = group == STORE_GROUP_EXPERT  ? ST_USAGE_BY_EXPERT
             : group == STORE_GROUP_MODEL ? ST_USAGE_BY_MODEL
                                          : ST_USAGE_BY_DAY;
    q = sq_read_lock(q);
    ap_status rc = sq_stmt(q, id, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        sqlite3_bind_int64(st, 2, from_ms);
        sqlite3_bind_int64(st, 3, to_ms);
        size_t cap = 0;
        rc = sq_collect(q, st, 0, tenant_id, SIZE_MAX, &out, &cap, 8, sizeof(store_usage_group),
                        read_usage_group, &got, err);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc != AP_OK) {
        store_usage_groups_free(out, got);
        return rc;
    }
    *groups = out;
    *n = got;
    return AP_OK;
}

/* ---- batch writes ------------------------------------------------------------------------- */

/* An event already stored is skipped (AP_CONFLICT on the item) rather than failing the batch:
 * the upsert ignores only the primary key, so a foreign panel still fails it. */
static ap_status sq_event_new(sq *q, const char *tenant_id, store_write *w, ap_err *err)
{
    const store_event *ev = &w->u.event;
    sqlite3_stmt *st = NULL;
    ap_status rc = sq_stmt_rebind(q, ST_EVENT_INSERT_NEW, &st, err);
    if (rc == AP_OK) {
        bind_text(st, 1, tenant_id);
        bind_text(st, 2, ev->panel_id);
        sqlite3_bind_int64(st, 3, ev->seq);
        bind_text(st, 4, ev->type);
        bind_text(st, 5, ev->data);
        sqlite3_bind_int64(st, 6, ev->created_at);
        rc = sq_done(q, st, err);
        if (rc == AP_NOTFOUND)
            ap_err_set(err, AP_NOTFOUND, "no such panel: %s", ev->panel_id);
    }
    if (rc == AP_OK && sqlite3_changes(q->db) == 0)
        w->result = AP_CONFLICT; /* stored already: a replay */
    return rc;
}

/* Whether owner holds the leases of the batch's panels, asked once per panel: the fence of
 * each item's statement (an EXISTS per event) cost ~7 K instructions an event. The batch is
 * one transaction, so what was asked holds for all of it. */
typedef struct owned_cache {
    const char **panel; /* borrowed from the items */
    signed char *owned; /* 1, 0; 0 with panel NULL: a free slot */
    size_t cap;
} owned_cache;

/* 1 when owner holds panel's lease, 0 when not, -1 on a store error (*rc set). */
static int sq_owned(sq *q, owned_cache *c, const char *tenant_id, const char *panel,
                    const char *owner, ap_status *rc, ap_err *err)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *x = panel; *x != '\0'; x++)
        h = (h ^ (unsigned char)*x) * 1099511628211ULL;
    size_t at = (size_t)h & (c->cap - 1);
    while (c->panel[at] != NULL && strcmp(c->panel[at], panel) != 0)
        at = (at + 1) & (c->cap - 1);
    if (c->panel[at] != NULL)
        return c->owned[at];
    sqlite3_stmt *st = NULL;
    if ((*rc = sq_stmt(q, ST_PANEL_OWNED, &st, err)) != AP_OK)
        return -1;
    bind_text(st, 1, tenant_id);
    bind_text(st, 2, panel);
    bind_text(st, 3, owner);
    int s = sqlite3_step(st);
    if (s != SQLITE_ROW && s != SQLITE_DONE)
        *rc = sq_error(q, s, err);
    sqlite3_reset(st);
    if (*rc != AP_OK)
        return -1;
    c->panel[at] = panel;
    c->owned[at] = s == SQLITE_ROW;
    return c->owned[at];
}

/* The owner an item is fenced by (NULL: none), and its panel. */
static const char **item_owner(store_write *w, const char **panel)
{
    switch (w->kind) {
    case STORE_WRITE_EVENT:
        *panel = w->u.event.panel_id;
        return &w->u.event.owner;
    case STORE_WRITE_CHECKPOINT:
        *panel = w->u.checkpoint.panel_id;
        return &w->u.checkpoint.owner;
    case STORE_WRITE_TRANSITION:
        *panel = w->u.transition.panel_id;
        return &w->u.transition.owner;
    case STORE_WRITE_USAGE:
        break;
    }
    return NULL;
}

static ap_status sq_write_batch(void *impl, const char *tenant_id, store_write *items, size_t n,
                                int64_t now, ap_err *err)
{
    sq *q = impl;
    owned_cache cache = {.cap = 16};
    while (cache.cap < 2 * n)
        cache.cap *= 2;
    cache.panel = calloc(cache.cap, sizeof *cache.panel);
    cache.owned = calloc(cache.cap, sizeof *cache.owned);
    if (cache.panel == NULL || cache.owned == NULL) {
        free(cache.panel);
        free(cache.owned);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    pthread_mutex_lock(&q->mu);
    ap_status rc = sq_begin(q, err);
    for (size_t i = 0; i < n && rc == AP_OK; i++) {
        store_write *w = &items[i];
        const store_transition *t = &w->u.transition;
        const char *panel = NULL, **owner = item_owner(w, &panel);
        const char *fence = owner != NULL ? *owner : NULL;
        if (fence != NULL) {
            int owned = sq_owned(q, &cache, tenant_id, panel, fence, &rc, err);
            if (owned < 0)
                break;
            if (owned == 0) { /* fenced off: another process holds the panel now */
                w->result = w->kind == STORE_WRITE_EVENT ? AP_DENIED : AP_CONFLICT;
                continue;
            }
            *owner = NULL; /* asked already: the statement need not ask again */
        }
        switch (w->kind) {
        case STORE_WRITE_EVENT:
            rc = sq_event_new(q, tenant_id, w, err);
            break;
        case STORE_WRITE_CHECKPOINT:
            rc = sq_checkpoint_one(q, tenant_id, &w->u.checkpoint, err);
            break;
        case STORE_WRITE_TRANSITION:
            rc = sq_transition_one(q, tenant_id, t->panel_id, t->from, t->n_from, t->to, t->result,
                                   t->error, now, err);
            if (rc == AP_CONFLICT) {
                w->result = AP_CONFLICT;
                rc = AP_OK;
            }
            break;
        case STORE_WRITE_USAGE:
            rc = sq_usage_one(q, tenant_id, &w->u.usage, err);
            break;
        }
        if (owner != NULL)
            *owner = fence;
        if (rc != AP_OK)
            w->result = rc;
    }
    rc = sq_end(q, rc, err);
    pthread_mutex_unlock(&q->mu);
    free(cache.panel);
    free(cache.owned);
    return rc;
}

const store_ops store_sqlite_ops = {
    .name = "sqlite",
    .close = sq_close,
    .migrate = sq_migrate,
    .pending = sq_pending,
    .check_isolation = sq_check_isolation,
    .ping = sq_ping,
    .tenant_insert = sq_tenant_insert,
    .tenant_get = sq_tenant_get,
    .tenant_by_slug = sq_tenant_by_slug,
    .tenant_set_config = sq_tenant_set_config,
    .key_insert = sq_key_insert,
    .key_by_prefix = sq_key_by_prefix,
    .key_get = sq_key_get,
    .key_revoke = sq_key_revoke,
    .expert_insert = sq_expert_insert,
    .expert_get = sq_expert_get,
    .expert_update = sq_expert_update,
    .expert_delete = sq_expert_delete,
    .expert_list = sq_expert_list,
    .panel_insert = sq_panel_insert,
    .panel_get = sq_panel_get,
    .panel_transition = sq_panel_transition,
    .panel_list = sq_panel_list,
    .panels_in_status = sq_panels_in_status,
    .panels_lease_free = sq_panels_lease_free,
    .panel_claim = sq_panel_claim,
    .leases_renew = sq_leases_renew,
    .leases_release = sq_leases_release,
    .events_append = sq_events_append,
    .events_list = sq_events_list,
    .events_last_seq = sq_events_last_seq,
    .checkpoint_put = sq_checkpoint_put,
    .checkpoint_get = sq_checkpoint_get,
    .script_put = sq_script_put,
    .script_get_version = sq_script_get_version,
    .script_get_active = sq_script_get_active,
    .script_deactivate = sq_script_deactivate,
    .script_list = sq_script_list,
    .usage_record = sq_usage_record,
    .usage_summary = sq_usage_summary,
    .write_batch = sq_write_batch,
};
