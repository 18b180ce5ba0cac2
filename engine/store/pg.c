/* pg.c - the PostgreSQL store backend: libpq connection pool, forced row-level security.
 *
 * A fixed pool of connections is checked out under a mutex and condition variable; each
 * connection prepares statements lazily and remembers which it has. Every tenant-scoped call
 * runs in one transaction that first sets app.tenant_id locally, so the database's policies
 * apply even if a query here forgot its tenant filter. Operator-scope lookups go through the
 * SECURITY DEFINER functions of sql/postgres/001_init.sql. */
#include "store/backend.h"

#include "core/buf.h"
#include "core/log.h"

#include <errno.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PG_POOL_SIZE 4
#define PG_CHECKOUT_TIMEOUT_S 30
#define PG_EVENTS_SQL_MAX (64u * 1024u * 1024u)

#define KEY_COLS "id, tenant_id, prefix, hash, role, created_at, COALESCE(revoked_at, 0)"
#define EXPERT_COLS                                                                                \
    "id, tenant_id, name, role, expertise, persona, model, weight, created_at, updated_at"
#define PANEL_COLS                                                                                 \
    "id, tenant_id, title, question, strategy, strategy_version, consensus, params, experts, "     \
    "status, result, error, idempotency_key, request_hash, created_at, updated_at"
/* A panel as it is read: its columns and its lease, which only claims write. */
#define PANEL_READ_COLS PANEL_COLS ", lease_owner, lease_expires_at"
/* Leaving running gives the lease up ($1 is the new status). */
#define LEASE_ON_TRANSITION                                                                        \
    "lease_owner = CASE WHEN $1 = 'running' THEN lease_owner END, "                                \
    "lease_expires_at = CASE WHEN $1 = 'running' THEN lease_expires_at ELSE 0 END "
#define CHECKPOINT_COLS                                                                            \
    "tenant_id, panel_id, step, next_node, state, script_version, journal, last_seq, created_at"
#define SCRIPT_COLS "tenant_id, kind, name, version, source, origin, active, created_at"
#define USAGE_AGG                                                                                  \
    "count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) FROM usage_records "      \
    "WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3 "

static const char *const tenant_tables =
    "'tenants', 'api_keys', 'experts', 'panels', 'panel_events', 'checkpoints', 'scripts', "
    "'usage_records'";

enum {
    Q_SET_TENANT,
    Q_PING,
    Q_TENANT_INSERT,
    Q_TENANT_GET,
    Q_TENANT_BY_SLUG,
    Q_TENANT_SET_CONFIG,
    Q_KEY_INSERT,
    Q_KEY_LOOKUP,
    Q_KEY_GET,
    Q_KEY_REVOKE,
    Q_EXPERT_INSERT,
    Q_EXPERT_GET,
    Q_EXPERT_UPDATE,
    Q_EXPERT_DELETE,
    Q_EXPERT_LIST_FIRST,
    Q_EXPERT_LIST_AFTER,
    Q_PANEL_INSERT,
    Q_PANEL_GET,
    Q_PANEL_BY_IDEMPOTENCY,
    Q_PANEL_TRANSITION,
    Q_PANEL_EXISTS,
    Q_PANEL_LIST_FIRST,
    Q_PANEL_LIST_BEFORE,
    Q_PANELS_IN_STATUS,
    Q_PANELS_LEASE_FREE,
    Q_PANEL_CLAIM,
    Q_PANEL_CLAIM_LIMITED,
    Q_LEASES_RENEW,
    Q_LEASES_RELEASE,
    Q_EVENTS_INSERT,
    Q_EVENT_LIST,
    Q_EVENT_LAST,
    Q_CHECKPOINT_PUT,
    Q_CHECKPOINT_GET,
    Q_SCRIPT_INSERT,
    Q_SCRIPT_CLEAR_ACTIVE,
    Q_SCRIPT_SET_ACTIVE,
    Q_SCRIPT_GET_VERSION,
    Q_SCRIPT_GET_ACTIVE,
    Q_SCRIPT_LIST_NAME,
    Q_SCRIPT_LIST_ACTIVE,
    Q_USAGE_INSERT,
    Q_USAGE_BY_EXPERT,
    Q_USAGE_BY_MODEL,
    Q_USAGE_BY_DAY,
    Q_EVENT_INSERT_NEW,
    Q_TRANSITION_REPORT,
    Q__COUNT
};

static const char *const sql_text[Q__COUNT] = {
    [Q_SET_TENANT] = "SELECT set_config('app.tenant_id', $1, true)",
    [Q_PING] = "SELECT 1",
    [Q_TENANT_INSERT] = "INSERT INTO tenants (id, slug, name, config, created_at) "
                        "VALUES ($1, $2, $3, $4, $5)",
    [Q_TENANT_GET] = "SELECT id, slug, name, config, created_at FROM tenants WHERE id = $1",
    [Q_TENANT_BY_SLUG] =
        "SELECT id, slug, name, config, created_at FROM askpanel_tenant_by_slug($1)",
    [Q_TENANT_SET_CONFIG] = "UPDATE tenants SET config = $1 WHERE id = $2",
    [Q_KEY_INSERT] = "INSERT INTO api_keys (id, tenant_id, prefix, hash, role, created_at) "
                     "VALUES ($1, $2, $3, $4, $5, $6)",
    [Q_KEY_LOOKUP] = "SELECT " KEY_COLS " FROM askpanel_key_lookup($1)",
    /* Tenant scope: row-level security (app.tenant_id) shows only the tenant's keys. */
    [Q_KEY_GET] = "SELECT " KEY_COLS " FROM api_keys WHERE tenant_id = $1 AND id = $2",
    [Q_KEY_REVOKE] = "SELECT askpanel_key_revoke($1, $2)",
    [Q_EXPERT_INSERT] = "INSERT INTO experts (" EXPERT_COLS ") "
                        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING " EXPERT_COLS,
    [Q_EXPERT_GET] = "SELECT " EXPERT_COLS " FROM experts WHERE tenant_id = $1 AND id = $2",
    [Q_EXPERT_UPDATE] = "UPDATE experts SET name = $1, role = $2, expertise = $3, persona = $4, "
                        "model = $5, weight = $6, updated_at = $7 "
                        "WHERE tenant_id = $8 AND id = $9 RETURNING " EXPERT_COLS,
    [Q_EXPERT_DELETE] = "DELETE FROM experts WHERE tenant_id = $1 AND id = $2",
    [Q_EXPERT_LIST_FIRST] = "SELECT " EXPERT_COLS " FROM experts WHERE tenant_id = $1 "
                            "ORDER BY created_at, id LIMIT $2",
    [Q_EXPERT_LIST_AFTER] = "SELECT " EXPERT_COLS " FROM experts WHERE tenant_id = $1 "
                            "AND (created_at, id) > ($2::bigint, $3::uuid) "
                            "ORDER BY created_at, id LIMIT $4",
    [Q_PANEL_INSERT] =
        "INSERT INTO panels (" PANEL_COLS ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
        "$11, $12, $13, $14, $15, $16) ON CONFLICT (tenant_id, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING " PANEL_READ_COLS,
    [Q_PANEL_GET] = "SELECT " PANEL_READ_COLS " FROM panels WHERE tenant_id = $1 AND id = $2",
    [Q_PANEL_BY_IDEMPOTENCY] = "SELECT " PANEL_READ_COLS " FROM panels "
                               "WHERE tenant_id = $1 AND idempotency_key = $2",
    [Q_PANEL_TRANSITION] = "UPDATE panels SET status = $1, result = COALESCE($2::json, result), "
                           "error = COALESCE($3, error), updated_at = $4, " LEASE_ON_TRANSITION
                           "WHERE tenant_id = $5 AND id = $6 AND status = ANY($7::text[])",
    [Q_PANEL_EXISTS] = "SELECT 1 FROM panels WHERE tenant_id = $1 AND id = $2",
    [Q_PANEL_LIST_FIRST] = "SELECT " PANEL_READ_COLS " FROM panels WHERE tenant_id = $1 "
                           "AND ($2::text IS NULL OR status = $2) "
                           "ORDER BY created_at DESC, id DESC LIMIT $3",
    [Q_PANEL_LIST_BEFORE] = "SELECT " PANEL_READ_COLS " FROM panels WHERE tenant_id = $1 "
                            "AND ($2::text IS NULL OR status = $2) "
                            "AND (created_at, id) < ($4::bigint, $5::uuid) "
                            "ORDER BY created_at DESC, id DESC LIMIT $3",
    [Q_PANELS_IN_STATUS] = "SELECT tenant_id, id FROM askpanel_panels_in_status($1)",
    /* (005_lease_sweep_pages.sql) */
    [Q_PANELS_LEASE_FREE] = "SELECT tenant_id, id, lease_owner, lease_expires_at, created_at "
                            "FROM askpanel_panels_lease_free($1, $2, $3, $4, $5, $6)",
    /* The claim and, from the statement's snapshot, whether the panel exists: one round trip,
     * as the panel start that uses it is on the hot path. */
    [Q_PANEL_CLAIM] =
        "WITH u AS (UPDATE panels SET status = 'running', lease_owner = $1, "
        "lease_expires_at = $2, updated_at = $3 WHERE tenant_id = $4 AND id = $5 "
        "AND status = ANY($6::text[]) AND (lease_owner IS NULL OR lease_expires_at <= $3 "
        "OR lease_owner = $1 OR lease_owner = $7) RETURNING 1) "
        "SELECT (SELECT count(*) FROM u), "
        "EXISTS (SELECT 1 FROM panels WHERE tenant_id = $4 AND id = $5)",
    /* The same with the tenant's limit of live panels, under its lock (003_live_limit.sql). */
    [Q_PANEL_CLAIM_LIMITED] = "SELECT n_claimed, panel_exists, n_live FROM "
                              "askpanel_panel_claim_limited($1, $2, $3, $4, $5, $6, $7, $8)",
    [Q_LEASES_RENEW] = "SELECT tenant_id, id FROM askpanel_panel_leases_renew($1, $2, $3)",
    [Q_LEASES_RELEASE] = "SELECT askpanel_panel_leases_release($1)",
    [Q_EVENTS_INSERT] =
        "INSERT INTO panel_events (tenant_id, panel_id, seq, type, data, created_at) "
        "SELECT $1::uuid, u.p, u.s, u.t, u.d, u.c FROM unnest($2::uuid[], $3::bigint[], "
        "$4::text[], $5::json[], $6::bigint[]) AS u(p, s, t, d, c)",
    [Q_EVENT_LIST] = "SELECT tenant_id, panel_id, seq, type, data, created_at FROM panel_events "
                     "WHERE tenant_id = $1 AND panel_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
    [Q_EVENT_LAST] = "SELECT COALESCE(MAX(seq), 0) FROM panel_events "
                     "WHERE tenant_id = $1 AND panel_id = $2",
    /* $10: the writer must hold the panel's lease (NULL: anyone; see store_checkpoint) */
    [Q_CHECKPOINT_PUT] =
        "INSERT INTO checkpoints (" CHECKPOINT_COLS ") SELECT $1::uuid, $2::uuid, $3::bigint, "
        "$4::text, $5::json, $6::text, $7::json, $8::bigint, $9::bigint WHERE $10::text IS NULL "
        "OR EXISTS (SELECT 1 FROM panels WHERE id = $2::uuid AND tenant_id = $1::uuid "
        "AND lease_owner = $10::text FOR SHARE) "
        "ON CONFLICT (tenant_id, panel_id) DO UPDATE SET step = excluded.step, "
        "next_node = excluded.next_node, state = excluded.state, "
        "script_version = excluded.script_version, journal = excluded.journal, "
        "last_seq = excluded.last_seq, created_at = excluded.created_at",
    [Q_CHECKPOINT_GET] = "SELECT " CHECKPOINT_COLS " FROM checkpoints "
                         "WHERE tenant_id = $1 AND panel_id = $2",
    [Q_SCRIPT_INSERT] = "INSERT INTO scripts (" SCRIPT_COLS ") "
                        "VALUES ($1, $2, $3, $4, $5, $6, false, $7) ON CONFLICT DO NOTHING",
    [Q_SCRIPT_CLEAR_ACTIVE] = "UPDATE scripts SET active = false WHERE tenant_id = $1 "
                              "AND kind = $2 AND name = $3 AND active",
    [Q_SCRIPT_SET_ACTIVE] = "UPDATE scripts SET active = true WHERE tenant_id = $1 "
                            "AND kind = $2 AND name = $3 AND version = $4",
    [Q_SCRIPT_GET_VERSION] = "SELECT " SCRIPT_COLS " FROM scripts WHERE tenant_id = $1 "
                             "AND kind = $2 AND name = $3 AND version = $4",
    [Q_SCRIPT_GET_ACTIVE] = "SELECT " SCRIPT_COLS " FROM scripts WHERE tenant_id = $1 "
                            "AND kind = $2 AND name = $3 AND active",
    [Q_SCRIPT_LIST_NAME] = "SELECT " SCRIPT_COLS " FROM scripts WHERE tenant_id = $1 "
                           "AND kind = $2 AND name = $3 ORDER BY created_at DESC, version DESC",
    [Q_SCRIPT_LIST_ACTIVE] = "SELECT " SCRIPT_COLS " FROM scripts WHERE tenant_id = $1 "
                             "AND kind = $2 AND active ORDER BY created_at DESC, name",
    [Q_USAGE_INSERT] =
        "INSERT INTO usage_records (id, tenant_id, panel_id, expert_id, provider, model, "
        "prompt_tokens, completion_tokens, cost_usd, latency_ms, attempts, outcome, created_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    [Q_USAGE_BY_EXPERT] = "SELECT tenant_id, expert_id, " USAGE_AGG
                          "GROUP BY tenant_id, expert_id ORDER BY expert_id",
    [Q_USAGE_BY_MODEL] =
        "SELECT tenant_id, model, " USAGE_AGG "GROUP BY tenant_id, model ORDER BY model",
    [Q_USAGE_BY_DAY] = "SELECT tenant_id, (created_at / 86400000)::text, " USAGE_AGG
                       "GROUP BY tenant_id, created_at / 86400000 ORDER BY created_at / 86400000",
    /* $7: the writer must hold the panel's lease (NULL: anyone; see store_checkpoint) */
    [Q_EVENT_INSERT_NEW] =
        "WITH owned AS (SELECT $7::text IS NULL OR EXISTS (SELECT 1 FROM panels "
        "WHERE id = $2::uuid AND tenant_id = $1::uuid AND lease_owner = $7::text FOR SHARE) "
        "AS ok), "
        "ins AS (INSERT INTO panel_events (tenant_id, panel_id, seq, type, data, created_at) "
        "SELECT $1::uuid, $2::uuid, $3::bigint, $4::text, $5::json, $6::bigint "
        "FROM owned WHERE owned.ok ON CONFLICT (tenant_id, panel_id, seq) DO NOTHING RETURNING 1) "
        "SELECT (SELECT count(*) FROM ins), (SELECT ok FROM owned)",
    /* The transition and, from the statement's snapshot (before the update), whether the
     * panel exists at all: a batch needs no second round trip to tell the two failures apart. */
    [Q_TRANSITION_REPORT] =
        "WITH u AS (UPDATE panels SET status = $1, result = COALESCE($2::json, result), "
        "error = COALESCE($3, error), updated_at = $4, " LEASE_ON_TRANSITION
        "WHERE tenant_id = $5 AND id = $6 AND status = ANY($7::text[]) "
        "AND ($8::text IS NULL OR lease_owner = $8) RETURNING 1) "
        "SELECT (SELECT count(*) FROM u), "
        "EXISTS (SELECT 1 FROM panels WHERE tenant_id = $5 AND id = $6)",
};

typedef struct pgc {
    PGconn *conn;
    bool busy;
    bool prepared[Q__COUNT];
} pgc;

typedef struct pg {
    char *conninfo;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pgc pool[PG_POOL_SIZE];
} pg;

/* ---- connections -------------------------------------------------------------------------- */

/* The first line of libpq's error text, for messages. */
static void first_line(const char *in, char *out, size_t cap)
{
    snprintf(out, cap, "%s", in != NULL && in[0] != '\0' ? in : "unknown error");
    out[strcspn(out, "\n")] = '\0';
}

static ap_status unavailable(PGconn *c, ap_err *err)
{
    char msg[200];
    first_line(c != NULL ? PQerrorMessage(c) : "out of memory", msg, sizeof msg);
    return ap_err_set(err, AP_IO, "database is unavailable: %s", msg);
}

/* Server notices (e.g. "already exists, skipping") go to the debug log, not stderr. */
static void on_notice(void *arg, const char *message)
{
    (void)arg;
    char msg[200];
    first_line(message, msg, sizeof msg);
    log_debug("postgres: %s", msg);
}

static PGconn *pg_connect(const char *conninfo)
{
    /* conninfo is expanded from "dbname"; its own settings override the defaults before it.
     * The timeouts keep a stuck statement or an abandoned transaction from holding a pooled
     * connection (and its locks) forever. */
    const char *const keys[] = {"connect_timeout", "application_name", "options", "dbname", NULL};
    const char *const vals[] = {"10", "askpanel",
                                "-c statement_timeout=60000 "
                                "-c idle_in_transaction_session_timeout=60000",
                                conninfo, NULL};
    return PQconnectdbParams(keys, vals, 1);
}

/* Makes sure c->conn is connected, reconnecting a broken one. */
static ap_status ensure_connected(pg *p, pgc *c, ap_err *err)
{
    if (c->conn != NULL && PQstatus(c->conn) == CONNECTION_OK)
        return AP_OK;
    memset(c->prepared, 0, sizeof c->prepared);
    if (c->conn != NULL) {
        PQreset(c->conn);
    } else {
        c->conn = pg_connect(p->conninfo);
    }
    if (c->conn == NULL || PQstatus(c->conn) != CONNECTION_OK)
        return unavailable(c->conn, err);
    PQsetNoticeProcessor(c->conn, on_notice, NULL);
    return AP_OK;
}

static ap_status checkout(pg *p, pgc **out, ap_err *err)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += PG_CHECKOUT_TIMEOUT_S;
    pgc *c = NULL;
    pthread_mutex_lock(&p->mu);
    while (c == NULL) {
        for (int i = 0; i < PG_POOL_SIZE && c == NULL; i++)
            if (!p->pool[i].busy)
                c = &p->pool[i];
        if (c == NULL && pthread_cond_timedwait(&p->cv, &p->mu, &deadline) == ETIMEDOUT)
            break;
    }
    if (c != NULL)
        c->busy = true;
    pthread_mutex_unlock(&p->mu);
    if (c == NULL)
        return ap_err_set(err, AP_TIMEOUT, "no database connection free for %d s",
                          PG_CHECKOUT_TIMEOUT_S);
    ap_status rc = ensure_connected(p, c, err);
    if (rc == AP_OK) {
        *out = c;
        return AP_OK;
    }
    pthread_mutex_lock(&p->mu);
    c->busy = false;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static void release(pg *p, pgc *c)
{
    /* A connection never goes back with an open transaction (and its tenant setting). */
    if (c->conn != NULL && PQstatus(c->conn) == CONNECTION_OK &&
        PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        PQclear(PQexec(c->conn, "ROLLBACK"));
    pthread_mutex_lock(&p->mu);
    c->busy = false;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ---- statements --------------------------------------------------------------------------- */

/* Maps a failed result (or NULL) to a status; SQLSTATE decides. */
static ap_status result_error(pgc *c, PGresult *r, ap_err *err)
{
    if (PQstatus(c->conn) != CONNECTION_OK)
        return unavailable(c->conn, err);
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    char msg[200];
    first_line(r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(c->conn), msg, sizeof msg);
    if (state == NULL)
        return ap_err_set(err, AP_IO, "database error: %s", msg);
    if (strcmp(state, "23505") == 0)
        return ap_err_set(err, AP_CONFLICT, "already exists (%s)", msg);
    if (strcmp(state, "23503") == 0)
        return ap_err_set(err, AP_NOTFOUND, "refers to an object that does not exist");
    if (strncmp(state, "22", 2) == 0 || strcmp(state, "23514") == 0 || strcmp(state, "23502") == 0)
        return ap_err_set(err, AP_INVALID, "value rejected by the database (%s)", msg);
    if (strcmp(state, "42501") == 0)
        return ap_err_set(err, AP_DENIED, "database refused access (%s)", msg);
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57", 2) == 0)
        return ap_err_set(err, AP_IO, "database is unavailable: %s", msg);
    if (strcmp(state, "42P01") == 0 || strcmp(state, "42883") == 0)
        return ap_err_set(err, AP_IO, "database schema is missing (run `askpanel migrate`): %s",
                          msg);
    return ap_err_set(err, AP_IO, "database error: %s", msg);
}

/* Runs a prepared statement with text parameters; *res receives the result on AP_OK. */
/* Prepares statement id on this connection once; name receives its name. */
static ap_status prepare(pgc *c, int id, char name[16], ap_err *err)
{
    snprintf(name, 16, "q%d", id);
    if (c->prepared[id])
        return AP_OK;
    PGresult *r = PQprepare(c->conn, name, sql_text[id], 0, NULL);
    ap_status rc =
        r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK ? AP_OK : result_error(c, r, err);
    PQclear(r);
    if (rc == AP_OK)
        c->prepared[id] = true;
    return rc;
}

/* Runs a prepared statement with text parameters; *res receives the result on AP_OK. */
static ap_status run(pgc *c, int id, int n, const char *const *vals, PGresult **res, ap_err *err)
{
    *res = NULL;
    char name[16];
    ap_status rc = prepare(c, id, name, err);
    if (rc != AP_OK)
        return rc;
    PGresult *r = PQexecPrepared(c->conn, name, n, vals, NULL, NULL, 0);
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        rc = result_error(c, r, err);
        PQclear(r);
        return rc;
    }
    *res = r;
    return AP_OK;
}

/* run() for statements whose result nobody reads; *affected (may be NULL) gets the row count. */
static ap_status run_cmd(pgc *c, int id, int n, const char *const *vals, long *affected,
                         ap_err *err)
{
    PGresult *r;
    ap_status rc = run(c, id, n, vals, &r, err);
    if (rc == AP_OK && affected != NULL)
        *affected = strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return rc;
}

static ap_status simple(pgc *c, const char *sql, ap_err *err)
{
    PGresult *r = PQexec(c->conn, sql);
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    ap_status rc =
        st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? AP_OK : result_error(c, r, err);
    PQclear(r);
    return rc;
}

/* Opens a transaction scoped to tenant_id (NULL: operator scope). The id is a validated
 * canonical UUID, so it can be part of the text; one round trip does both. */
static ap_status begin(pgc *c, const char *tenant_id, ap_err *err)
{
    if (tenant_id == NULL)
        return simple(c, "BEGIN", err);
    char sql[128];
    snprintf(sql, sizeof sql, "BEGIN; SELECT set_config('app.tenant_id', '%s', true)", tenant_id);
    return simple(c, sql, err);
}

/* Commits on AP_OK, rolls back otherwise; returns the final status. */
static ap_status end(pgc *c, ap_status rc, ap_err *err)
{
    if (rc == AP_OK)
        return simple(c, "COMMIT", err);
    if (PQstatus(c->conn) == CONNECTION_OK)
        PQclear(PQexec(c->conn, "ROLLBACK"));
    return rc;
}

/* Sends set_config (when tenant_id is set) and statement id as one pipeline: both run in the
 * implicit transaction that ends at the sync, so the tenant setting covers the statement and
 * is gone afterwards, and an error rolls everything back. One round trip instead of three. */
/* Takes row i of r (a query's rows as they arrive); false when it wants no more. */
typedef bool pg_row_fn(const PGresult *r, int i, void *ud);

/* Runs statement id in the tenant's transaction (tenant_id NULL: operator scope). Without
 * row_fn its result lands in *res (caller clears); with row_fn the rows are handed over one by
 * one as they arrive (single-row mode), so a large result is never held whole, and *res stays
 * NULL. */
static ap_status pipelined_rows(pgc *c, const char *tenant_id, int id, int n,
                                const char *const *vals, PGresult **res, pg_row_fn *row_fn,
                                void *ud, ap_err *err)
{
    char set_name[16], name[16];
    ap_status rc = AP_OK;
    bool wants_rows = row_fn != NULL, single = false, at_query = tenant_id == NULL;
    if (tenant_id != NULL)
        rc = prepare(c, Q_SET_TENANT, set_name, err);
    if (rc == AP_OK)
        rc = prepare(c, id, name, err);
    if (rc != AP_OK)
        return rc;
    if (PQenterPipelineMode(c->conn) != 1)
        return result_error(c, NULL, err);
    int sent = tenant_id == NULL ||
               PQsendQueryPrepared(c->conn, set_name, 1, &tenant_id, NULL, NULL, 0) == 1;
    sent = sent && PQsendQueryPrepared(c->conn, name, n, vals, NULL, NULL, 0) == 1;
    sent = sent && PQpipelineSync(c->conn) == 1;
    if (!sent) {
        rc = result_error(c, NULL, err);
        goto out;
    }
    /* Results arrive in order, each followed by NULL, then the sync marker. Single-row mode
     * is chosen for a query of the pipeline just before its results are read. */
    for (int stage = tenant_id != NULL ? 0 : 1;;) {
        if (row_fn != NULL && stage == 1 && at_query && !single) {
            single = true;
            (void)PQsetSingleRowMode(c->conn); /* refused: the rows come as one result */
        }
        PGresult *r = PQgetResult(c->conn);
        if (r == NULL) {
            if (PQstatus(c->conn) != CONNECTION_OK) {
                if (rc == AP_OK)
                    rc = unavailable(c->conn, err);
                break;
            }
            at_query = stage == 1; /* the end of the statement before it */
            continue;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            break;
        }
        if (st == PGRES_SINGLE_TUPLE || (st == PGRES_TUPLES_OK && stage == 1 && row_fn != NULL)) {
            for (int i = 0; i < PQntuples(r) && wants_rows && rc == AP_OK; i++)
                wants_rows = row_fn(r, i, ud);
            PQclear(r);
            if (st == PGRES_TUPLES_OK)
                stage++;
            continue;
        }
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
            if (stage == 1)
                *res = r;
            else
                PQclear(r);
            stage++;
            continue;
        }
        if (rc == AP_OK)
            rc = st == PGRES_PIPELINE_ABORTED ? ap_err_set(err, AP_IO, "database error")
                                              : result_error(c, r, err);
        PQclear(r);
    }
out:
    if (PQpipelineStatus(c->conn) != PQ_PIPELINE_OFF && PQexitPipelineMode(c->conn) != 1 &&
        rc == AP_OK)
        rc = result_error(c, NULL, err);
    if (rc == AP_OK && row_fn == NULL && *res == NULL)
        rc = ap_err_set(err, AP_IO, "database returned no result");
    return rc;
}

static ap_status pipelined(pgc *c, const char *tenant_id, int id, int n, const char *const *vals,
                           PGresult **res, ap_err *err)
{
    return pipelined_rows(c, tenant_id, id, n, vals, res, NULL, NULL, err);
}

/* The common shape: one statement in one tenant transaction; *res on AP_OK (caller clears). */
static ap_status query1(pg *p, const char *tenant_id, int id, int n, const char *const *vals,
                        PGresult **res, ap_err *err)
{
    pgc *c;
    *res = NULL;
    ap_status rc = checkout(p, &c, err);
    if (rc != AP_OK)
        return rc;
    rc = pipelined(c, tenant_id, id, n, vals, res, err);
    if (rc != AP_OK) {
        PQclear(*res);
        *res = NULL;
    }
    release(p, c);
    return rc;
}

/* query1 for a result read row by row (see pipelined_rows). */
static ap_status query_rows(pg *p, const char *tenant_id, int id, int n, const char *const *vals,
                            pg_row_fn *row_fn, void *ud, ap_err *err)
{
    pgc *c;
    PGresult *none = NULL;
    ap_status rc = checkout(p, &c, err);
    if (rc != AP_OK)
        return rc;
    rc = pipelined_rows(c, tenant_id, id, n, vals, &none, row_fn, ud, err);
    PQclear(none);
    release(p, c);
    return rc;
}

/* ---- values ------------------------------------------------------------------------------- */

typedef struct num {
    char s[32];
} num;

static num i64(int64_t v)
{
    num n;
    snprintf(n.s, sizeof n.s, "%lld", (long long)v);
    return n;
}

static num dbl(double v)
{
    num n;
    snprintf(n.s, sizeof n.s, "%.17g", v);
    return n;
}

#define STATUS_LIST_MAX 256

/* Statuses as a text array literal ("{a,b}"): they are validated names, so none needs quoting,
 * and at most seven of them fit. */
static void status_list(const char *const *from, size_t n, char out[STATUS_LIST_MAX])
{
    size_t len = 0;
    out[len++] = '{';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(out + len, STATUS_LIST_MAX - len, "%s%s", i ? "," : "", from[i]);
    snprintf(out + len, STATUS_LIST_MAX - len, "}");
}

static const char *val(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static char *dup_col(const PGresult *r, int row, int col, bool *failed)
{
    return store_dup(val(r, row, col), failed);
}

static int64_t int_col(const PGresult *r, int row, int col)
{
    const char *v = val(r, row, col);
    return v != NULL ? strtoll(v, NULL, 10) : 0;
}

static double dbl_col(const PGresult *r, int row, int col)
{
    const char *v = val(r, row, col);
    return v != NULL ? strtod(v, NULL) : 0;
}

static void id_col(const PGresult *r, int row, int col, char out[STORE_ID_MAX])
{
    const char *v = val(r, row, col);
    snprintf(out, STORE_ID_MAX, "%s", v != NULL ? v : "");
}

static bool row_tenant_ok(const PGresult *r, int row, int col, const char *tenant_id)
{
    return store_row_tenant_ok(tenant_id, val(r, row, col));
}

static bool read_tenant(const PGresult *r, int i, store_tenant *t)
{
    bool failed = false;
    memset(t, 0, sizeof *t);
    id_col(r, i, 0, t->id);
    t->slug = dup_col(r, i, 1, &failed);
    t->name = dup_col(r, i, 2, &failed);
    t->config = dup_col(r, i, 3, &failed);
    t->created_at = int_col(r, i, 4);
    if (failed)
        store_tenant_free(t);
    return !failed;
}

static bool read_expert(const PGresult *r, int i, store_expert *e)
{
    bool failed = false;
    memset(e, 0, sizeof *e);
    id_col(r, i, 0, e->id);
    id_col(r, i, 1, e->tenant_id);
    e->name = dup_col(r, i, 2, &failed);
    e->role = dup_col(r, i, 3, &failed);
    e->expertise = dup_col(r, i, 4, &failed);
    e->persona = dup_col(r, i, 5, &failed);
    e->model = dup_col(r, i, 6, &failed);
    e->weight = dbl_col(r, i, 7);
    e->created_at = int_col(r, i, 8);
    e->updated_at = int_col(r, i, 9);
    if (failed)
        store_expert_free(e);
    return !failed;
}

static bool read_panel(const PGresult *r, int i, store_panel *p)
{
    bool failed = false;
    memset(p, 0, sizeof *p);
    id_col(r, i, 0, p->id);
    id_col(r, i, 1, p->tenant_id);
    p->title = dup_col(r, i, 2, &failed);
    p->question = dup_col(r, i, 3, &failed);
    p->strategy = dup_col(r, i, 4, &failed);
    p->strategy_version = dup_col(r, i, 5, &failed);
    p->consensus = dup_col(r, i, 6, &failed);
    p->params = dup_col(r, i, 7, &failed);
    p->experts = dup_col(r, i, 8, &failed);
    p->status = dup_col(r, i, 9, &failed);
    p->result = dup_col(r, i, 10, &failed);
    p->error = dup_col(r, i, 11, &failed);
    p->idempotency_key = dup_col(r, i, 12, &failed);
    p->request_hash = dup_col(r, i, 13, &failed);
    p->created_at = int_col(r, i, 14);
    p->updated_at = int_col(r, i, 15);
    p->lease_owner = dup_col(r, i, 16, &failed);
    p->lease_expires_at = int_col(r, i, 17);
    if (failed)
        store_panel_free(p);
    return !failed;
}

static bool read_event(const PGresult *r, int i, store_event *e)
{
    bool failed = false;
    memset(e, 0, sizeof *e);
    id_col(r, i, 1, e->panel_id);
    e->seq = int_col(r, i, 2);
    e->type = dup_col(r, i, 3, &failed);
    e->data = dup_col(r, i, 4, &failed);
    e->created_at = int_col(r, i, 5);
    if (failed)
        store_event_free(e);
    return !failed;
}

static bool read_checkpoint(const PGresult *r, int i, store_checkpoint *c)
{
    bool failed = false;
    memset(c, 0, sizeof *c);
    id_col(r, i, 1, c->panel_id);
    c->step = int_col(r, i, 2);
    c->next_node = dup_col(r, i, 3, &failed);
    c->state = dup_col(r, i, 4, &failed);
    c->script_version = dup_col(r, i, 5, &failed);
    c->journal = dup_col(r, i, 6, &failed);
    c->last_seq = int_col(r, i, 7);
    c->created_at = int_col(r, i, 8);
    if (failed)
        store_checkpoint_free(c);
    return !failed;
}

static bool read_script(const PGresult *r, int i, store_script *sc)
{
    bool failed = false;
    memset(sc, 0, sizeof *sc);
    id_col(r, i, 0, sc->tenant_id);
    if (!store_kind_parse(val(r, i, 1), &sc->kind))
        sc->kind = STORE_SCRIPT_STRATEGY;
    sc->name = dup_col(r, i, 2, &failed);
    sc->version = dup_col(r, i, 3, &failed);
    sc->source = dup_col(r, i, 4, &failed);
    sc->origin = dup_col(r, i, 5, &failed);
    const char *active = val(r, i, 6);
    sc->active = active != NULL && active[0] == 't';
    sc->created_at = int_col(r, i, 7);
    if (failed)
        store_script_free(sc);
    return !failed;
}

static bool read_event_row(const PGresult *r, int i, void *row)
{
    return read_event(r, i, row);
}

static bool read_expert_row(const PGresult *r, int i, void *row)
{
    return read_expert(r, i, row);
}

static bool read_script_row(const PGresult *r, int i, void *row)
{
    return read_script(r, i, row);
}

/* Reads every row of r (elem bytes each) into out after checking its tenant (column
 * tenant_col); *got counts the rows read, also on failure, so the caller can free them. */
static ap_status pg_collect(const PGresult *r, int tenant_col, const char *tenant_id, void *out,
                            size_t elem, bool (*read)(const PGresult *r, int i, void *row),
                            size_t *got, ap_err *err)
{
    int nt = PQntuples(r);
    for (int i = 0; i < nt; i++) {
        if (!row_tenant_ok(r, i, tenant_col, tenant_id))
            return store_row_denied(err);
        if (!read(r, i, (char *)out + *got * elem))
            return ap_err_set(err, AP_NOMEM, "out of memory");
        (*got)++;
    }
    return AP_OK;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void pg_close(void *impl)
{
    pg *p = impl;
    if (p == NULL)
        return;
    for (int i = 0; i < PG_POOL_SIZE; i++)
        PQfinish(p->pool[i].conn);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->conninfo);
    free(p);
}

ap_status store_pg_open(const char *conninfo, void **impl, ap_err *err)
{
    *impl = NULL;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        char msg[200];
        first_line(perr != NULL ? perr : "out of memory", msg, sizeof msg);
        PQfreemem(perr);
        return ap_err_set(err, AP_INVALID, "bad PostgreSQL connection string: %s", msg);
    }
    PQconninfoFree(opts);
    pg *p = calloc(1, sizeof *p);
    if (p == NULL || (p->conninfo = strdup(conninfo)) == NULL) {
        free(p);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    /* One connection now, so a wrong address or password fails at start; the rest lazily. */
    ap_status rc = ensure_connected(p, &p->pool[0], err);
    if (rc != AP_OK) {
        pg_close(p);
        return rc;
    }
    *impl = p;
    return AP_OK;
}

static ap_status pg_bootstrap(pgc *c, ap_err *err)
{
    return simple(c,
                  "CREATE TABLE IF NOT EXISTS public.schema_migrations (version text PRIMARY KEY, "
                  "applied_at timestamptz NOT NULL DEFAULT now())",
                  err);
}

/* One boolean query; *value receives its result. */
static ap_status query_bool(pgc *c, const char *sql, const char *param, bool *value, ap_err *err)
{
    const char *vals[] = {param};
    PGresult *r = PQexecParams(c->conn, sql, param != NULL ? 1 : 0, NULL, vals, NULL, NULL, 0);
    ap_status rc = AP_OK;
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        rc = result_error(c, r, err);
    else
        *value = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return rc;
}

static ap_status is_applied(pgc *c, const char *version, bool *applied, ap_err *err)
{
    return query_bool(c,
                      "SELECT EXISTS (SELECT 1 FROM public.schema_migrations WHERE version = $1)",
                      version, applied, err);
}

static ap_status pg_migrate(void *impl, int *applied, ap_err *err)
{
    pg *p = impl;
    store_migration m[STORE_MIGRATIONS_MAX];
    size_t n = store_migrations("sql/postgres/", m, STORE_MIGRATIONS_MAX);
    *applied = 0;
    pgc *c;
    ap_status rc = checkout(p, &c, err);
    if (rc != AP_OK)
        return rc;
    rc = pg_bootstrap(c, err);
    for (size_t i = 0; i < n && rc == AP_OK; i++) {
        /* The advisory lock serialises concurrent migrators (two engines starting at once). */
        rc = simple(c,
                    "BEGIN; SET LOCAL statement_timeout = 0; "
                    "SELECT pg_advisory_xact_lock(7283004101)",
                    err);
        bool done = false;
        if (rc == AP_OK)
            rc = is_applied(c, m[i].version, &done, err);
        if (rc == AP_OK && !done) {
            rc = simple(c, m[i].sql, err);
            if (rc != AP_OK && err != NULL) {
                char msg[AP_ERR_MSG_MAX];
                snprintf(msg, sizeof msg, "%s", err->msg);
                ap_err_set(err, rc, "migration %s failed: %s", m[i].version, msg);
            }
            if (rc == AP_OK) {
                const char *vals[] = {m[i].version};
                PGresult *r = PQexecParams(
                    c->conn, "INSERT INTO public.schema_migrations (version) VALUES ($1)", 1, NULL,
                    vals, NULL, NULL, 0);
                if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK)
                    rc = result_error(c, r, err);
                PQclear(r);
            }
            if (rc == AP_OK)
                (*applied)++;
        }
        rc = end(c, rc, err);
    }
    release(p, c);
    return rc;
}

static ap_status pg_pending(void *impl, int *pending, ap_err *err)
{
    pg *p = impl;
    store_migration m[STORE_MIGRATIONS_MAX];
    size_t n = store_migrations("sql/postgres/", m, STORE_MIGRATIONS_MAX);
    *pending = 0;
    pgc *c;
    ap_status rc = checkout(p, &c, err);
    if (rc != AP_OK)
        return rc;
    /* Before the first migration there is no table to ask: everything is pending. */
    bool exists = false;
    rc = query_bool(c, "SELECT to_regclass('public.schema_migrations') IS NOT NULL", NULL, &exists,
                    err);
    for (size_t i = 0; i < n && rc == AP_OK; i++) {
        bool done = false;
        if (exists)
            rc = is_applied(c, m[i].version, &done, err);
        if (rc == AP_OK && !done)
            (*pending)++;
    }
    release(p, c);
    return rc;
}

static ap_status pg_check_isolation(void *impl, ap_err *err)
{
    pg *p = impl;
    pgc *c;
    ap_status rc = checkout(p, &c, err);
    if (rc != AP_OK)
        return rc;
    /* Membership counts: a role that can SET ROLE to a privileged one is privileged. */
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SELECT current_user, "
             "(SELECT coalesce(bool_or(r.rolsuper), false) FROM pg_roles r "
             " WHERE pg_has_role(current_user, r.oid, 'MEMBER')), "
             "(SELECT coalesce(bool_or(r.rolbypassrls), false) FROM pg_roles r "
             " WHERE pg_has_role(current_user, r.oid, 'MEMBER')), "
             "(SELECT count(*) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace "
             " WHERE n.nspname = 'public' AND k.relname IN (%s) "
             " AND pg_has_role(current_user, k.relowner, 'MEMBER'))",
             tenant_tables);
    PGresult *r = PQexec(c->conn, sql);
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
        rc = result_error(c, r, err);
    } else {
        const char *user = PQgetvalue(r, 0, 0);
        if (PQgetvalue(r, 0, 1)[0] == 't')
            rc = ap_err_set(err, AP_DENIED,
                            "refusing to serve as role '%s': it is a superuser, which bypasses "
                            "row-level security; connect as a role in askpanel_app",
                            user);
        else if (PQgetvalue(r, 0, 2)[0] == 't')
            rc = ap_err_set(err, AP_DENIED,
                            "refusing to serve as role '%s': it can bypass row-level security; "
                            "connect as a role in askpanel_app",
                            user);
        else if (strtol(PQgetvalue(r, 0, 3), NULL, 10) > 0)
            rc = ap_err_set(err, AP_DENIED,
                            "refusing to serve as role '%s': it owns the store's tables; "
                            "connect as a role in askpanel_app",
                            user);
    }
    PQclear(r);
    release(p, c);
    return rc;
}

static ap_status pg_ping(void *impl, ap_err *err)
{
    pg *p = impl;
    PGresult *r;
    ap_status rc = query1(p, NULL, Q_PING, 0, NULL, &r, err);
    PQclear(r);
    return rc;
}

/* ---- tenants ------------------------------------------------------------------------------ */

static ap_status pg_tenant_insert(void *impl, const store_tenant *t, ap_err *err)
{
    num at = i64(t->created_at);
    PGresult *r;
    /* The new tenant's own scope: the policy admits exactly this row. */
    ap_status rc = query1(impl, t->id, Q_TENANT_INSERT, 5,
                          (const char *const[]){t->id, t->slug, t->name, t->config, at.s}, &r, err);
    PQclear(r);
    if (rc == AP_CONFLICT)
        ap_err_set(err, AP_CONFLICT, "slug '%s' already exists", t->slug);
    return rc;
}

static ap_status one_tenant(PGresult *r, store_tenant *out, const char *what, ap_err *err)
{
    if (PQntuples(r) == 0)
        return ap_err_set(err, AP_NOTFOUND, "%s", what);
    if (!read_tenant(r, 0, out))
        return ap_err_set(err, AP_NOMEM, "out of memory");
    return AP_OK;
}

static ap_status pg_tenant_get(void *impl, const char *id, store_tenant *out, ap_err *err)
{
    PGresult *r;
    ap_status rc = query1(impl, id, Q_TENANT_GET, 1, (const char *const[]){id}, &r, err);
    if (rc == AP_OK)
        rc = one_tenant(r, out, "no such tenant", err);
    PQclear(r);
    return rc;
}

static ap_status pg_tenant_by_slug(void *impl, const char *slug, store_tenant *out, ap_err *err)
{
    PGresult *r;
    char what[128];
    snprintf(what, sizeof what, "no tenant with slug '%s'", slug);
    ap_status rc = query1(impl, NULL, Q_TENANT_BY_SLUG, 1, (const char *const[]){slug}, &r, err);
    if (rc == AP_OK)
        rc = one_tenant(r, out, what, err);
    PQclear(r);
    return rc;
}

static ap_status pg_tenant_set_config(void *impl, const char *id, const char *config, ap_err *err)
{
    PGresult *r;
    ap_status rc =
        query1(impl, id, Q_TENANT_SET_CONFIG, 2, (const char *const[]){config, id}, &r, err);
    if (rc == AP_OK && strtol(PQcmdTuples(r), NULL, 10) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "no such tenant");
    PQclear(r);
    return rc;
}

/* ---- keys --------------------------------------------------------------------------------- */

static ap_status pg_key_insert(void *impl, const store_key *k, ap_err *err)
{
    num at = i64(k->created_at);
    PGresult *r;
    ap_status rc = query1(impl, k->tenant_id, Q_KEY_INSERT, 6,
                          (const char *const[]){k->id, k->tenant_id, k->prefix, k->hash,
                                                store_role_name(k->role), at.s},
                          &r, err);
    PQclear(r);
    if (rc == AP_NOTFOUND)
        ap_err_set(err, AP_NOTFOUND, "no such tenant");
    return rc;
}

/* Reads the one KEY_COLS row of r into out; tenant_id, when not NULL, is the tenant the row
 * must belong to (layer 4). */
static ap_status one_key(PGresult *r, const char *tenant_id, store_key *out, ap_err *err)
{
    if (PQntuples(r) == 0)
        return ap_err_set(err, AP_NOTFOUND,
                          tenant_id != NULL ? "no such API key" : "unknown API key");
    if (tenant_id != NULL && !row_tenant_ok(r, 0, 1, tenant_id))
        return store_row_denied(err);
    memset(out, 0, sizeof *out);
    id_col(r, 0, 0, out->id);
    id_col(r, 0, 1, out->tenant_id);
    snprintf(out->prefix, sizeof out->prefix, "%s", PQgetvalue(r, 0, 2));
    snprintf(out->hash, sizeof out->hash, "%s", PQgetvalue(r, 0, 3));
    if (!store_role_parse(val(r, 0, 4), &out->role))
        return ap_err_set(err, AP_IO, "API key has an unknown role");
    out->created_at = int_col(r, 0, 5);
    out->revoked_at = int_col(r, 0, 6);
    return AP_OK;
}

static ap_status pg_key_by_prefix(void *impl, const char *prefix, store_key *out, ap_err *err)
{
    PGresult *r;
    ap_status rc = query1(impl, NULL, Q_KEY_LOOKUP, 1, (const char *const[]){prefix}, &r, err);
    if (rc == AP_OK)
        rc = one_key(r, NULL, out, err);
    PQclear(r);
    return rc;
}

static ap_status pg_key_get(void *impl, const char *tenant_id, const char *key_id, store_key *out,
                            ap_err *err)
{
    PGresult *r;
    ap_status rc =
        query1(impl, tenant_id, Q_KEY_GET, 2, (const char *const[]){tenant_id, key_id}, &r, err);
    if (rc == AP_OK)
        rc = one_key(r, tenant_id, out, err);
    PQclear(r);
    return rc;
}

static ap_status pg_key_revoke(void *impl, const char *key_id, int64_t now, ap_err *err)
{
    num at = i64(now);
    PGresult *r;
    ap_status rc =
        query1(impl, NULL, Q_KEY_REVOKE, 2, (const char *const[]){key_id, at.s}, &r, err);
    if (rc == AP_OK && PQgetvalue(r, 0, 0)[0] != 't')
        rc = ap_err_set(err, AP_NOTFOUND, "no API key with id %s", key_id);
    PQclear(r);
    return rc;
}

/* ---- experts ------------------------------------------------------------------------------ */

static ap_status one_expert(PGresult *r, const char *tenant_id, store_expert *out, ap_err *err)
{
    if (PQntuples(r) == 0)
        return ap_err_set(err, AP_NOTFOUND, "no such expert");
    if (!row_tenant_ok(r, 0, 1, tenant_id))
        return store_row_denied(err);
    if (!read_expert(r, 0, out))
        return ap_err_set(err, AP_NOMEM, "out of memory");
    return AP_OK;
}

static ap_status pg_expert_insert(void *impl, const store_expert *e, store_expert *out, ap_err *err)
{
    num w = dbl(e->weight), c = i64(e->created_at), u = i64(e->updated_at);
    PGresult *r;
    ap_status rc = query1(impl, e->tenant_id, Q_EXPERT_INSERT, 10,
                          (const char *const[]){e->id, e->tenant_id, e->name, e->role, e->expertise,
                                                e->persona, e->model, w.s, c.s, u.s},
                          &r, err);
    if (rc == AP_OK)
        rc = one_expert(r, e->tenant_id, out, err);
    else if (rc == AP_CONFLICT)
        ap_err_set(err, AP_CONFLICT, "an expert with id %s already exists", e->id);
    else if (rc == AP_NOTFOUND)
        ap_err_set(err, AP_NOTFOUND, "no such tenant");
    PQclear(r);
    return rc;
}

static ap_status pg_expert_get(void *impl, const char *tenant_id, const char *id, store_expert *out,
                               ap_err *err)
{
    PGresult *r;
    ap_status rc =
        query1(impl, tenant_id, Q_EXPERT_GET, 2, (const char *const[]){tenant_id, id}, &r, err);
    if (rc == AP_OK)
        rc = one_expert(r, tenant_id, out, err);
    PQclear(r);
    return rc;
}

static ap_status pg_expert_update(void *impl, const store_expert *e, store_expert *out, ap_err *err)
{
    num w = dbl(e->weight), u = i64(e->updated_at);
    PGresult *r;
    ap_status rc = query1(impl, e->tenant_id, Q_EXPERT_UPDATE, 9,
                          (const char *const[]){e->name, e->role, e->expertise, e->persona,
                                                e->model, w.s, u.s, e->tenant_id, e->id},
                          &r, err);
    if (rc == AP_OK)
        rc = one_expert(r, e->tenant_id, out, err);
    PQclear(r);
    return rc;
}

static ap_status pg_expert_delete(void *impl, const char *tenant_id, const char *id, ap_err *err)
{
    PGresult *r;
    ap_status rc =
        query1(impl, tenant_id, Q_EXPERT_DELETE, 2, (const char *const[]){tenant_id, id}, &r, err);
    if (rc == AP_OK && strtol(PQcmdTuples(r), NULL, 10) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "no such expert");
    PQclear(r);
    return rc;
}

static ap_status pg_expert_list(void *impl, const char *tenant_id, const store_pos *after,
                                int limit, store_expert **rows, size_t *n, ap_err *err)
{
    num lim = i64(limit), at = i64(after->created_at);
    PGresult *r;
    ap_status rc = after->set
                       ? query1(impl, tenant_id, Q_EXPERT_LIST_AFTER, 4,
                                (const char *const[]){tenant_id, at.s, after->id, lim.s}, &r, err)
                       : query1(impl, tenant_id, Q_EXPERT_LIST_FIRST, 2,
                                (const char *const[]){tenant_id, lim.s}, &r, err);
    if (rc != AP_OK)
        return rc;
    int nt = PQntuples(r);
    store_expert *out = calloc(nt > 0 ? (size_t)nt : 1, sizeof *out);
    size_t got = 0;
    if (out == NULL)
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    if (rc == AP_OK)
        rc = pg_collect(r, 1, tenant_id, out, sizeof *out, read_expert_row, &got, err);
    PQclear(r);
    if (rc != AP_OK) {
        store_experts_free(out, got);
        return rc;
    }
    *rows = out;
    *n = got;
    return AP_OK;
}

/* ---- panels ------------------------------------------------------------------------------- */

static ap_status one_panel(PGresult *r, const char *tenant_id, store_panel *out, ap_err *err)
{
    if (PQntuples(r) == 0)
        return ap_err_set(err, AP_NOTFOUND, "no such panel");
    if (!row_tenant_ok(r, 0, 1, tenant_id))
        return store_row_denied(err);
    if (!read_panel(r, 0, out))
        return ap_err_set(err, AP_NOMEM, "out of memory");
    return AP_OK;
}

static ap_status pg_panel_insert(void *impl, const store_panel *p, store_panel *out, bool *existed,
                                 ap_err *err)
{
    pg *db = impl;
    num c = i64(p->created_at), u = i64(p->updated_at);
    pgc *conn;
    PGresult *r = NULL;
    *existed = false;
    ap_status rc = checkout(db, &conn, err);
    if (rc != AP_OK)
        return rc;
    rc = begin(conn, p->tenant_id, err);
    if (rc == AP_OK)
        rc = run(conn, Q_PANEL_INSERT, 16,
                 (const char *const[]){p->id, p->tenant_id, p->title, p->question, p->strategy,
                                       p->strategy_version, p->consensus, p->params, p->experts,
                                       p->status, p->result, p->error, p->idempotency_key,
                                       p->request_hash, c.s, u.s},
                 &r, err);
    if (rc == AP_CONFLICT)
        ap_err_set(err, AP_CONFLICT, "a panel with id %s already exists", p->id);
    else if (rc == AP_NOTFOUND)
        ap_err_set(err, AP_NOTFOUND, "no such tenant");
    if (rc == AP_OK && PQntuples(r) == 0) {
        /* The idempotency key exists: hand back that panel. */
        PQclear(r);
        r = NULL;
        *existed = true;
        rc = run(conn, Q_PANEL_BY_IDEMPOTENCY, 2,
                 (const char *const[]){p->tenant_id, p->idempotency_key}, &r, err);
    }
    if (rc == AP_OK)
        rc = one_panel(r, p->tenant_id, out, err);
    PQclear(r);
    rc = end(conn, rc, err);
    if (rc != AP_OK)
        store_panel_free(out);
    release(db, conn);
    return rc;
}

static ap_status pg_panel_get(void *impl, const char *tenant_id, const char *id, store_panel *out,
                              ap_err *err)
{
    PGresult *r;
    ap_status rc =
        query1(impl, tenant_id, Q_PANEL_GET, 2, (const char *const[]){tenant_id, id}, &r, err);
    if (rc == AP_OK)
        rc = one_panel(r, tenant_id, out, err);
    PQclear(r);
    return rc;
}

static ap_status pg_panel_transition(void *impl, const char *tenant_id, const char *id,
                                     const char *const *from, size_t n_from, const char *new_status,
                                     const char *result, const char *error, int64_t now,
                                     ap_err *err)
{
    pg *db = impl;
    char list[STATUS_LIST_MAX];
    status_list(from, n_from, list);
    num at = i64(now);
    pgc *c;
    ap_status rc = checkout(db, &c, err);
    if (rc != AP_OK)
        return rc;
    long changed = 0;
    rc = begin(c, tenant_id, err);
    if (rc == AP_OK)
        rc = run_cmd(c, Q_PANEL_TRANSITION, 7,
                     (const char *const[]){new_status, result, error, at.s, tenant_id, id, list},
                     &changed, err);
    if (rc == AP_OK && changed == 0) {
        PGresult *r;
        rc = run(c, Q_PANEL_EXISTS, 2, (const char *const[]){tenant_id, id}, &r, err);
        if (rc == AP_OK)
            rc = PQntuples(r) == 0
                     ? ap_err_set(err, AP_NOTFOUND, "no such panel")
                     : ap_err_set(err, AP_CONFLICT, "panel is not in a status that allows '%s'",
                                  new_status);
        PQclear(r);
    }
    rc = end(c, rc, err);
    release(db, c);
    return rc;
}

/* A page of panels being read: rows are taken until the limit, or until one takes the page
 * past max_bytes. */
typedef struct panel_page {
    const char *tenant_id;
    store_panel *out;
    size_t got, limit, bytes, max_bytes;
    ap_status rc;
    ap_err *err;
} panel_page;

static bool take_panel(const PGresult *r, int i, void *ud)
{
    panel_page *page = ud;
    if (page->got == page->limit)
        return false;
    if (!row_tenant_ok(r, i, 1, page->tenant_id)) {
        page->rc = store_row_denied(page->err);
        return false;
    }
    if (!read_panel(r, i, &page->out[page->got])) {
        page->rc = ap_err_set(page->err, AP_NOMEM, "out of memory");
        return false;
    }
    page->bytes += store_panel_bytes(&page->out[page->got++]);
    return page->max_bytes == 0 || page->bytes <= page->max_bytes;
}

static ap_status pg_panel_list(void *impl, const char *tenant_id, const char *status,
                               const store_pos *before, int limit, size_t max_bytes,
                               store_panel **rows, size_t *n, ap_err *err)
{
    num lim = i64(limit), at = i64(before->created_at);
    panel_page page = {.tenant_id = tenant_id,
                       .out = calloc((size_t)limit, sizeof(store_panel)),
                       .limit = (size_t)limit,
                       .max_bytes = max_bytes,
                       .err = err};
    if (page.out == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    ap_status rc =
        before->set
            ? query_rows(impl, tenant_id, Q_PANEL_LIST_BEFORE, 5,
                         (const char *const[]){tenant_id, status, lim.s, at.s, before->id},
                         take_panel, &page, err)
            : query_rows(impl, tenant_id, Q_PANEL_LIST_FIRST, 3,
                         (const char *const[]){tenant_id, status, lim.s}, take_panel, &page, err);
    if (rc == AP_OK)
        rc = page.rc;
    if (rc != AP_OK) {
        store_panels_free(page.out, page.got);
        return rc;
    }
    *rows = page.out;
    *n = page.got;
    return AP_OK;
}

/* An array (caller frees) of one element of size bytes per row of r, zeroed, *nt the rows;
 * NULL (r cleared, err set) when out of memory. */
static void *rows_for(PGresult *r, size_t size, int *nt, ap_err *err)
{
    *nt = PQntuples(r);
    void *out = calloc(*nt > 0 ? (size_t)*nt : 1, size);
    if (out == NULL) {
        PQclear(r);
        ap_err_set(err, AP_NOMEM, "out of memory");
    }
    return out;
}

/* The (tenant_id, panel_id) rows of r as refs (caller frees); takes r. */
static ap_status refs_of(PGresult *r, store_panel_ref **refs, size_t *n, ap_err *err)
{
    int nt;
    store_panel_ref *out = rows_for(r, sizeof *out, &nt, err);
    if (out == NULL)
        return AP_NOMEM;
    for (int i = 0; i < nt; i++) {
        id_col(r, i, 0, out[i].tenant_id);
        id_col(r, i, 1, out[i].panel_id);
    }
    PQclear(r);
    *refs = out;
    *n = (size_t)nt;
    return AP_OK;
}

static ap_status pg_panels_in_status(void *impl, const char *status, store_panel_ref **pairs,
                                     size_t *n, ap_err *err)
{
    PGresult *r;
    ap_status rc =
        query1(impl, NULL, Q_PANELS_IN_STATUS, 1, (const char *const[]){status}, &r, err);
    return rc == AP_OK ? refs_of(r, pairs, n, err) : rc;
}

static ap_status pg_panels_lease_free(void *impl, const char *owner, const char *host_prefix,
                                      int64_t now, const store_lease_ref *after, size_t limit,
                                      store_lease_ref **refs, size_t *n, ap_err *err)
{
    num at = i64(now), max = i64((int64_t)limit);
    num last = i64(after != NULL ? after->created_at : 0);
    PGresult *r;
    ap_status rc =
        query1(impl, NULL, Q_PANELS_LEASE_FREE, 6,
               (const char *const[]){owner, host_prefix, at.s, after != NULL ? last.s : NULL,
                                     after != NULL ? after->panel_id : NULL, max.s},
               &r, err);
    if (rc != AP_OK)
        return rc;
    int nt;
    store_lease_ref *out = rows_for(r, sizeof *out, &nt, err);
    if (out == NULL)
        return AP_NOMEM;
    for (int i = 0; i < nt; i++) {
        id_col(r, i, 0, out[i].tenant_id);
        id_col(r, i, 1, out[i].panel_id);
        const char *o = val(r, i, 2);
        snprintf(out[i].owner, sizeof out[i].owner, "%s", o != NULL ? o : "");
        out[i].expires_at = o != NULL ? int_col(r, i, 3) : 0;
        out[i].created_at = int_col(r, i, 4);
    }
    PQclear(r);
    *refs = out;
    *n = (size_t)nt;
    return AP_OK;
}

static ap_status pg_panel_claim(void *impl, const char *tenant_id, const char *id,
                                const char *const *from, size_t n_from, const char *owner,
                                const char *takeover, int64_t now, int64_t expires_at,
                                int64_t max_live, ap_err *err)
{
    char list[STATUS_LIST_MAX];
    status_list(from, n_from, list);
    num at = i64(now), until = i64(expires_at), max = i64(max_live);
    PGresult *r;
    ap_status rc = query1(
        impl, tenant_id, max_live > 0 ? Q_PANEL_CLAIM_LIMITED : Q_PANEL_CLAIM, max_live > 0 ? 8 : 7,
        (const char *const[]){owner, until.s, at.s, tenant_id, id, list, takeover, max.s}, &r, err);
    if (rc != AP_OK)
        return rc;
    if (int_col(r, 0, 0) == 0) {
        if (val(r, 0, 1) == NULL || val(r, 0, 1)[0] != 't')
            rc = ap_err_set(err, AP_NOTFOUND, "no such panel");
        else if (max_live > 0 && int_col(r, 0, 2) >= max_live)
            rc = ap_err_set(err, AP_LIMIT, "the tenant already has %lld live panels, its limit",
                            (long long)int_col(r, 0, 2));
        else
            rc = ap_err_set(err, AP_CONFLICT,
                            "the panel's status or another process's lease does not allow it "
                            "to start here");
    }
    PQclear(r);
    return rc;
}

static ap_status pg_leases_renew(void *impl, const char *owner, const char (*ids)[STORE_ID_MAX],
                                 size_t n, int64_t expires_at, store_panel_ref **renewed,
                                 size_t *n_renewed, ap_err *err)
{
    *renewed = NULL;
    *n_renewed = 0;
    /* the ids as a uuid[] literal: canonical UUIDs need no quoting */
    size_t cap = n * STORE_ID_MAX + 2;
    char *list = malloc(cap), *at = list;
    if (list == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    *at++ = '{';
    for (size_t i = 0; i < n; i++)
        at += snprintf(at, cap - (size_t)(at - list), "%s%s", i ? "," : "", ids[i]);
    snprintf(at, cap - (size_t)(at - list), "}");
    num until = i64(expires_at);
    PGresult *r;
    ap_status rc =
        query1(impl, NULL, Q_LEASES_RENEW, 3, (const char *const[]){owner, list, until.s}, &r, err);
    free(list);
    return rc == AP_OK ? refs_of(r, renewed, n_renewed, err) : rc;
}

static ap_status pg_leases_release(void *impl, const char *owner, ap_err *err)
{
    PGresult *r;
    ap_status rc = query1(impl, NULL, Q_LEASES_RELEASE, 1, (const char *const[]){owner}, &r, err);
    PQclear(r);
    return rc;
}

/* ---- events ------------------------------------------------------------------------------- */

/* Appends s to an array literal as a double-quoted element. */
static ap_status array_quoted(buf *b, const char *s)
{
    ap_status rc = buf_append(b, "\"", 1);
    while (rc == AP_OK && *s != '\0') {
        size_t run_len = strcspn(s, "\"\\");
        rc = buf_append(b, s, run_len);
        s += run_len;
        if (rc == AP_OK && *s != '\0') {
            char esc[2] = {'\\', *s};
            rc = buf_append(b, esc, 2);
            s++;
        }
    }
    if (rc == AP_OK)
        rc = buf_append(b, "\"", 1);
    return rc;
}

/* The whole batch goes in one INSERT ... SELECT FROM unnest(arrays): one round trip for the
 * group commit instead of one per event. */
static ap_status pg_events_append(void *impl, const char *tenant_id, const store_event *events,
                                  size_t n, ap_err *err)
{
    pg *db = impl;
    buf arr[5];
    for (int k = 0; k < 5; k++)
        buf_init(&arr[k], PG_EVENTS_SQL_MAX);
    ap_status rc = AP_OK;
    for (int k = 0; k < 5 && rc == AP_OK; k++)
        rc = buf_append(&arr[k], "{", 1);
    for (size_t i = 0; i < n && rc == AP_OK; i++) {
        const char *sep = i ? "," : "";
        if ((rc = buf_printf(&arr[0], "%s%s", sep, events[i].panel_id)) == AP_OK &&
            (rc = buf_printf(&arr[1], "%s%lld", sep, (long long)events[i].seq)) == AP_OK &&
            (rc = buf_puts(&arr[2], sep)) == AP_OK &&
            (rc = array_quoted(&arr[2], events[i].type)) == AP_OK &&
            (rc = buf_puts(&arr[3], sep)) == AP_OK &&
            (rc = array_quoted(&arr[3], events[i].data)) == AP_OK)
            rc = buf_printf(&arr[4], "%s%lld", sep, (long long)events[i].created_at);
    }
    for (int k = 0; k < 5 && rc == AP_OK; k++)
        rc = buf_append(&arr[k], "}", 1);
    if (rc != AP_OK) {
        rc = ap_err_set(err, rc, "event batch too large");
        goto out;
    }
    PGresult *r;
    rc = query1(db, tenant_id, Q_EVENTS_INSERT, 6,
                (const char *const[]){tenant_id, arr[0].data, arr[1].data, arr[2].data, arr[3].data,
                                      arr[4].data},
                &r, err);
    PQclear(r);
    if (rc == AP_CONFLICT)
        ap_err_set(err, AP_CONFLICT, "an event with the same panel and seq already exists");
    else if (rc == AP_NOTFOUND)
        ap_err_set(err, AP_NOTFOUND, "no such panel");
out:
    for (int k = 0; k < 5; k++)
        buf_free(&arr[k]);
    return rc;
}

static ap_status pg_events_list(void *impl, const char *tenant_id, const char *panel_id,
                                int64_t after_seq, int limit, store_event **rows, size_t *n,
                                ap_err *err)
{
    num after = i64(after_seq), lim = i64(limit);
    PGresult *r;
    ap_status rc = query1(impl, tenant_id, Q_EVENT_LIST, 4,
                          (const char *const[]){tenant_id, panel_id, after.s, lim.s}, &r, err);
    if (rc != AP_OK)
        return rc;
    int nt = PQntuples(r);
    store_event *out = calloc(nt > 0 ? (size_t)nt : 1, sizeof *out);
    size_t got = 0;
    if (out == NULL)
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    if (rc == AP_OK)
        rc = pg_collect(r, 0, tenant_id, out, sizeof *out, read_event_row, &got, err);
    PQclear(r);
    if (rc != AP_OK) {
        store_events_free(out, got);
        return rc;
    }
    *rows = out;
    *n = got;
    return AP_OK;
}

static ap_status pg_events_last_seq(void *impl, const char *tenant_id, const char *panel_id,
                                    int64_t *seq, ap_err *err)
{
    PGresult *r;
    ap_status rc = query1(impl, tenant_id, Q_EVENT_LAST, 2,
                          (const char *const[]){tenant_id, panel_id}, &r, err);
    if (rc == AP_OK)
        *seq = int_col(r, 0, 0);
    PQclear(r);
    return rc;
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static ap_status pg_checkpoint_put(void *impl, const char *tenant_id, const store_checkpoint *c,
                                   ap_err *err)
{
    num step = i64(c->step), last = i64(c->last_seq), at = i64(c->created_at);
    PGresult *r;
    ap_status rc =
        query1(impl, tenant_id, Q_CHECKPOINT_PUT, 10,
               (const char *const[]){tenant_id, c->panel_id, step.s, c->next_node, c->state,
                                     c->script_version, c->journal, last.s, at.s, c->owner},
               &r, err);
    if (rc == AP_OK && strtol(PQcmdTuples(r), NULL, 10) == 0)
        rc = ap_err_set(err, AP_CONFLICT, "the panel's lease is not this writer's");
    PQclear(r);
    if (rc == AP_NOTFOUND)
        ap_err_set(err, AP_NOTFOUND, "no such panel");
    return rc;
}

static ap_status pg_checkpoint_get(void *impl, const char *tenant_id, const char *panel_id,
                                   store_checkpoint *out, ap_err *err)
{
    PGresult *r;
    ap_status rc = query1(impl, tenant_id, Q_CHECKPOINT_GET, 2,
                          (const char *const[]){tenant_id, panel_id}, &r, err);
    if (rc == AP_OK && PQntuples(r) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "no checkpoint for this panel");
    if (rc == AP_OK && !row_tenant_ok(r, 0, 0, tenant_id))
        rc = store_row_denied(err);
    if (rc == AP_OK && !read_checkpoint(r, 0, out))
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    PQclear(r);
    return rc;
}

/* ---- scripts ------------------------------------------------------------------------------ */

static ap_status pg_script_put(void *impl, const store_script *sc, bool activate, ap_err *err)
{
    pg *db = impl;
    const char *kind = store_kind_name(sc->kind);
    num at = i64(sc->created_at);
    pgc *c;
    ap_status rc = checkout(db, &c, err);
    if (rc != AP_OK)
        return rc;
    rc = begin(c, sc->tenant_id, err);
    if (rc == AP_OK)
        rc = run_cmd(c, Q_SCRIPT_INSERT, 7,
                     (const char *const[]){sc->tenant_id, kind, sc->name, sc->version, sc->source,
                                           sc->origin, at.s},
                     NULL, err);
    if (rc == AP_NOTFOUND)
        ap_err_set(err, AP_NOTFOUND, "no such tenant");
    if (rc == AP_OK && activate)
        rc = run_cmd(c, Q_SCRIPT_CLEAR_ACTIVE, 3,
                     (const char *const[]){sc->tenant_id, kind, sc->name}, NULL, err);
    if (rc == AP_OK && activate)
        rc = run_cmd(c, Q_SCRIPT_SET_ACTIVE, 4,
                     (const char *const[]){sc->tenant_id, kind, sc->name, sc->version}, NULL, err);
    rc = end(c, rc, err);
    release(db, c);
    return rc;
}

static ap_status script_rows(PGresult *r, const char *tenant_id, store_script **rows, size_t *n,
                             ap_err *err)
{
    int nt = PQntuples(r);
    store_script *out = calloc(nt > 0 ? (size_t)nt : 1, sizeof *out);
    size_t got = 0;
    ap_status rc = AP_OK;
    if (out == NULL)
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    if (rc == AP_OK)
        rc = pg_collect(r, 0, tenant_id, out, sizeof *out, read_script_row, &got, err);
    if (rc != AP_OK) {
        store_scripts_free(out, got);
        return rc;
    }
    *rows = out;
    *n = got;
    return AP_OK;
}

static ap_status script_one(pg *db, int id, const char *tenant_id, store_script_kind kind,
                            const char *name, const char *version, store_script *out,
                            const char *what, ap_err *err)
{
    PGresult *r;
    ap_status rc =
        query1(db, tenant_id, id, version != NULL ? 4 : 3,
               (const char *const[]){tenant_id, store_kind_name(kind), name, version}, &r, err);
    if (rc == AP_OK && PQntuples(r) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "%s", what);
    if (rc == AP_OK && !row_tenant_ok(r, 0, 0, tenant_id))
        rc = store_row_denied(err);
    if (rc == AP_OK && !read_script(r, 0, out))
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    PQclear(r);
    return rc;
}

static ap_status pg_script_get_version(void *impl, const char *tenant_id, store_script_kind kind,
                                       const char *name, const char *version, store_script *out,
                                       ap_err *err)
{
    return script_one(impl, Q_SCRIPT_GET_VERSION, tenant_id, kind, name, version, out,
                      "no such script version", err);
}

static ap_status pg_script_get_active(void *impl, const char *tenant_id, store_script_kind kind,
                                      const char *name, store_script *out, ap_err *err)
{
    return script_one(impl, Q_SCRIPT_GET_ACTIVE, tenant_id, kind, name, NULL, out,
                      "no active override of this script", err);
}

static ap_status pg_script_deactivate(void *impl, const char *tenant_id, store_script_kind kind,
                                      const char *name, ap_err *err)
{
    PGresult *r;
    ap_status rc = query1(impl, tenant_id, Q_SCRIPT_CLEAR_ACTIVE, 3,
                          (const char *const[]){tenant_id, store_kind_name(kind), name}, &r, err);
    if (rc == AP_OK && strtol(PQcmdTuples(r), NULL, 10) == 0)
        rc = ap_err_set(err, AP_NOTFOUND, "no active override of this script");
    PQclear(r);
    return rc;
}

static ap_status pg_script_list(void *impl, const char *tenant_id, store_script_kind kind,
                                const char *name, store_script **rows, size_t *n, ap_err *err)
{
    PGresult *r;
    ap_status rc =
        name != NULL
            ? query1(impl, tenant_id, Q_SCRIPT_LIST_NAME, 3,
                     (const char *const[]){tenant_id, store_kind_name(kind), name}, &r, err)
            : query1(impl, tenant_id, Q_SCRIPT_LIST_ACTIVE, 2,
                     (const char *const[]){tenant_id, store_kind_name(kind)}, &r, err);
    if (rc == AP_OK)
        rc = script_rows(r, tenant_id, rows, n, err);
    PQclear(r);
    return rc;
}

/* ---- usage -------------------------------------------------------------------------------- */

static ap_status pg_usage_record(void *impl, const char *tenant_id, const store_usage *u,
                                 ap_err *err)
{
    num pt = i64(u->prompt_tokens), ct = i64(u->completion_tokens), cost = dbl(u->cost_usd),
        lat = i64(u->latency_ms), att = i64(u->attempts), at = i64(u->created_at);
    PGresult *r;
    ap_status rc =
        query1(impl, tenant_id, Q_USAGE_INSERT, 13,
               (const char *const[]){u->id, tenant_id, u->panel_id[0] != '\0' ? u->panel_id : NULL,
                                     u->expert_id, u->provider, u->model, pt.s, ct.s, cost.s, lat.s,
                                     att.s, u->outcome, at.s},
               &r, err);
    PQclear(r);
    if (rc == AP_CONFLICT)
        ap_err_set(err, AP_CONFLICT, "usage record %s already exists", u->id);
    else if (rc == AP_NOTFOUND)
        ap_err_set(err, AP_NOTFOUND, "no such tenant");
    return rc;
}

static ap_status pg_usage_summary(void *impl, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                                  store_group group, store_usage_group **groups, size_t *n,
                                  ap_err *err)
{
    int id = group == STORE_GROUP_EXPERT  ? Q_USAGE_BY_EXPERT
             : group == STORE_GROUP_MODEL ? Q_USAGE_BY_MODEL
                                          : Q_USAGE_BY_DAY;
    num from = i64(from_ms), to = i64(to_ms);
    PGresult *r;
    ap_status rc =
        query1(impl, tenant_id, id, 3, (const char *const[]){tenant_id, from.s, to.s}, &r, err);
    if (rc != AP_OK)
        return rc;
    int nt = PQntuples(r);
    store_usage_group *out = calloc(nt > 0 ? (size_t)nt : 1, sizeof *out);
    size_t got = 0;
    if (out == NULL)
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    for (int i = 0; i < nt && rc == AP_OK; i++) {
        if (!row_tenant_ok(r, i, 0, tenant_id)) {
            rc = store_row_denied(err);
            break;
        }
        bool failed = false;
        out[got].key = dup_col(r, i, 1, &failed);
        out[got].calls = int_col(r, i, 2);
        out[got].prompt_tokens = int_col(r, i, 3);
        out[got].completion_tokens = int_col(r, i, 4);
        out[got].cost_usd = dbl_col(r, i, 5);
        got++;
        if (failed)
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
    }
    PQclear(r);
    if (rc != AP_OK) {
        store_usage_groups_free(out, got);
        return rc;
    }
    *groups = out;
    *n = got;
    return AP_OK;
}

/* ---- batch writes ------------------------------------------------------------------------- */

#define PG_BATCH_CHUNK 256 /* statements sent before reading their results back */

static const int batch_queries[] = {Q_EVENT_INSERT_NEW, Q_CHECKPOINT_PUT, Q_TRANSITION_REPORT,
                                    Q_USAGE_INSERT};

/* Queues item w's statement on the pipeline (statements are prepared already). */
static bool batch_send(pgc *c, const char *tenant_id, const store_write *w, int64_t now)
{
    char name[16];
    switch (w->kind) {
    case STORE_WRITE_EVENT: {
        const store_event *ev = &w->u.event;
        num seq = i64(ev->seq), at = i64(ev->created_at);
        snprintf(name, sizeof name, "q%d", Q_EVENT_INSERT_NEW);
        return PQsendQueryPrepared(c->conn, name, 7,
                                   (const char *const[]){tenant_id, ev->panel_id, seq.s, ev->type,
                                                         ev->data, at.s, ev->owner},
                                   NULL, NULL, 0) == 1;
    }
    case STORE_WRITE_CHECKPOINT: {
        const store_checkpoint *ck = &w->u.checkpoint;
        num step = i64(ck->step), last = i64(ck->last_seq), at = i64(ck->created_at);
        snprintf(name, sizeof name, "q%d", Q_CHECKPOINT_PUT);
        return PQsendQueryPrepared(
                   c->conn, name, 10,
                   (const char *const[]){tenant_id, ck->panel_id, step.s, ck->next_node, ck->state,
                                         ck->script_version, ck->journal, last.s, at.s, ck->owner},
                   NULL, NULL, 0) == 1;
    }
    case STORE_WRITE_TRANSITION: {
        const store_transition *t = &w->u.transition;
        char list[STATUS_LIST_MAX];
        status_list(t->from, t->n_from, list);
        num at = i64(now);
        snprintf(name, sizeof name, "q%d", Q_TRANSITION_REPORT);
        return PQsendQueryPrepared(c->conn, name, 8,
                                   (const char *const[]){t->to, t->result, t->error, at.s,
                                                         tenant_id, t->panel_id, list, t->owner},
                                   NULL, NULL, 0) == 1;
    }
    case STORE_WRITE_USAGE: {
        const store_usage *u = &w->u.usage;
        num pt = i64(u->prompt_tokens), ct = i64(u->completion_tokens), cost = dbl(u->cost_usd),
            lat = i64(u->latency_ms), att = i64(u->attempts), at = i64(u->created_at);
        snprintf(name, sizeof name, "q%d", Q_USAGE_INSERT);
        return PQsendQueryPrepared(
                   c->conn, name, 13,
                   (const char *const[]){
                       u->id, tenant_id, u->panel_id[0] != '\0' ? u->panel_id : NULL, u->expert_id,
                       u->provider, u->model, pt.s, ct.s, cost.s, lat.s, att.s, u->outcome, at.s},
                   NULL, NULL, 0) == 1;
    }
    }
    return false;
}

/* Interprets the result of item w's statement; sets w->result. */
static ap_status batch_result(pgc *c, PGresult *r, store_write *w, ap_err *err)
{
    ExecStatusType st = PQresultStatus(r);
    ap_status rc = AP_OK;
    if (st == PGRES_PIPELINE_ABORTED)
        return AP_OK; /* an earlier statement failed; its status is the batch's */
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        rc = result_error(c, r, err);
        if (rc == AP_NOTFOUND)
            ap_err_set(err, AP_NOTFOUND, "no such panel");
        else if (rc == AP_CONFLICT && w->kind == STORE_WRITE_USAGE)
            ap_err_set(err, AP_CONFLICT, "usage record %s already exists", w->u.usage.id);
    } else if (w->kind == STORE_WRITE_EVENT) {
        /* none inserted: a replayed event, or one fenced off by another process's lease */
        if (PQntuples(r) != 1)
            rc = ap_err_set(err, AP_IO, "database returned no result");
        else if (int_col(r, 0, 0) == 0)
            w->result = strcmp(val(r, 0, 1), "t") == 0 ? AP_CONFLICT : AP_DENIED;
    } else if (w->kind == STORE_WRITE_CHECKPOINT) {
        /* a checkpoint fenced off by another process's lease */
        if (strtol(PQcmdTuples(r), NULL, 10) == 0)
            w->result = AP_CONFLICT;
    } else if (w->kind == STORE_WRITE_TRANSITION) {
        if (PQntuples(r) != 1)
            rc = ap_err_set(err, AP_IO, "database returned no result");
        else if (int_col(r, 0, 0) == 0 && strcmp(val(r, 0, 1), "t") == 0)
            w->result = AP_CONFLICT;
        else if (int_col(r, 0, 0) == 0)
            rc = ap_err_set(err, AP_NOTFOUND, "no such panel");
    }
    if (rc != AP_OK)
        w->result = rc;
    return rc;
}

/* Sends items in chunks on one pipeline inside the tenant's transaction, reading each chunk's
 * results at its sync point, so neither side's buffers fill while the other waits. */
static ap_status batch_run(pgc *c, const char *tenant_id, store_write *items, size_t n, int64_t now,
                           ap_err *err)
{
    if (PQenterPipelineMode(c->conn) != 1)
        return result_error(c, NULL, err);
    ap_status rc = AP_OK;
    for (size_t start = 0; start < n && rc == AP_OK; start += PG_BATCH_CHUNK) {
        size_t end_i = n - start > PG_BATCH_CHUNK ? start + PG_BATCH_CHUNK : n;
        bool sent = true;
        for (size_t i = start; i < end_i && sent; i++)
            sent = batch_send(c, tenant_id, &items[i], now);
        /* A failed send still ends in a sync, so the pipeline drains and can be left. */
        if (!sent)
            rc = result_error(c, NULL, err);
        if (PQpipelineSync(c->conn) != 1) {
            if (rc == AP_OK)
                rc = result_error(c, NULL, err);
            break;
        }
        /* Results arrive in order, each followed by NULL, then the sync marker. */
        for (size_t i = start;;) {
            PGresult *r = PQgetResult(c->conn);
            if (r == NULL) {
                if (PQstatus(c->conn) != CONNECTION_OK) {
                    if (rc == AP_OK)
                        rc = unavailable(c->conn, err);
                    break;
                }
                continue;
            }
            if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
                PQclear(r);
                break;
            }
            if (i < end_i) {
                ap_status one = batch_result(c, r, &items[i], err);
                if (rc == AP_OK)
                    rc = one;
                i++;
            }
            PQclear(r);
        }
    }
    if (PQpipelineStatus(c->conn) != PQ_PIPELINE_OFF && PQexitPipelineMode(c->conn) != 1 &&
        rc == AP_OK)
        rc = result_error(c, NULL, err);
    return rc;
}

static ap_status pg_write_batch(void *impl, const char *tenant_id, store_write *items, size_t n,
                                int64_t now, ap_err *err)
{
    pg *db = impl;
    pgc *c;
    ap_status rc = checkout(db, &c, err);
    if (rc != AP_OK)
        return rc;
    char name[16];
    for (size_t k = 0; k < sizeof batch_queries / sizeof batch_queries[0] && rc == AP_OK; k++)
        rc = prepare(c, batch_queries[k], name, err);
    if (rc == AP_OK)
        rc = begin(c, tenant_id, err);
    if (rc == AP_OK)
        rc = batch_run(c, tenant_id, items, n, now, err);
    rc = end(c, rc, err);
    release(db, c);
    return rc;
}

const store_ops store_pg_ops = {
    .name = "postgres",
    .close = pg_close,
    .migrate = pg_migrate,
    .pending = pg_pending,
    .check_isolation = pg_check_isolation,
    .ping = pg_ping,
    .tenant_insert = pg_tenant_insert,
    .tenant_get = pg_tenant_get,
    .tenant_by_slug = pg_tenant_by_slug,
    .tenant_set_config = pg_tenant_set_config,
    .key_insert = pg_key_insert,
    .key_by_prefix = pg_key_by_prefix,
    .key_get = pg_key_get,
    .key_revoke = pg_key_revoke,
    .expert_insert = pg_expert_insert,
    .expert_get = pg_expert_get,
    .expert_update = pg_expert_update,
    .expert_delete = pg_expert_delete,
    .expert_list = pg_expert_list,
    .panel_insert = pg_panel_insert,
    .panel_get = pg_panel_get,
    .panel_transition = pg_panel_transition,
    .panel_list = pg_panel_list,
    .panels_in_status = pg_panels_in_status,
    .panels_lease_free = pg_panels_lease_free,
    .panel_claim = pg_panel_claim,
    .leases_renew = pg_leases_renew,
    .leases_release = pg_leases_release,
    .events_append = pg_events_append,
    .events_list = pg_events_list,
    .events_last_seq = pg_events_last_seq,
    .checkpoint_put = pg_checkpoint_put,
    .checkpoint_get = pg_checkpoint_get,
    .script_put = pg_script_put,
    .script_get_version = pg_script_get_version,
    .script_get_active = pg_script_get_active,
    .script_deactivate = pg_script_deactivate,
    .script_list = pg_script_list,
    .usage_record = pg_usage_record,
    .usage_summary = pg_usage_summary,
    .write_batch = pg_write_batch,
};
