/* backend.h - the internal contract between store.c and its backends (sqlite.c, pg.c).
 *
 * store.c validates and normalises every input (UUIDs, slugs, JSON, statuses), generates ids,
 * timestamps and key secrets, and encodes cursors; a backend only runs SQL. Backends verify
 * every row they read against the requested tenant with store_row_tenant_ok (layer 4).
 * Row structs written by a backend follow the ownership rules of store.h. */
#ifndef AP_STORE_BACKEND_H
#define AP_STORE_BACKEND_H

#include "store/store.h"

/* A decoded list cursor: the sort key of the last row of the previous page. */
typedef struct store_pos {
    bool set; /* false: first page */
    int64_t created_at;
    char id[STORE_ID_MAX];
} store_pos;

typedef enum store_group { STORE_GROUP_EXPERT, STORE_GROUP_MODEL, STORE_GROUP_DAY } store_group;

/* One row of a usage summary; key is NULL for calls without an expert. For STORE_GROUP_DAY the
 * key is the decimal day number since the epoch (store.c formats it). */
typedef struct store_usage_group {
    char *key;
    int64_t calls;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    double cost_usd;
} store_usage_group;

/* One embedded migration: version is the file name without ".sql"; sql is static. */
typedef struct store_migration {
    char version[64];
    const char *sql;
} store_migration;

#define STORE_MIGRATIONS_MAX 64

typedef struct store_ops {
    const char *name;
    void (*close)(void *impl);
    ap_status (*migrate)(void *impl, int *applied, ap_err *err);
    ap_status (*pending)(void *impl, int *pending, ap_err *err);
    ap_status (*check_isolation)(void *impl, ap_err *err);
    ap_status (*ping)(void *impl, ap_err *err);

    /* The row is complete (id, created_at set); AP_CONFLICT on a duplicate slug. */
    ap_status (*tenant_insert)(void *impl, const store_tenant *t, ap_err *err);
    ap_status (*tenant_get)(void *impl, const char *id, store_tenant *out, ap_err *err);
    ap_status (*tenant_by_slug)(void *impl, const char *slug, store_tenant *out, ap_err *err);
    ap_status (*tenant_set_config)(void *impl, const char *id, const char *config, ap_err *err);

    /* AP_CONFLICT when the prefix exists (store.c retries with a new one). */
    ap_status (*key_insert)(void *impl, const store_key *k, ap_err *err);
    /* Operator scope: the key row of a prefix, any tenant. */
    ap_status (*key_by_prefix)(void *impl, const char *prefix, store_key *out, ap_err *err);
    ap_status (*key_get)(void *impl, const char *tenant_id, const char *key_id, store_key *out,
                         ap_err *err);
    ap_status (*key_revoke)(void *impl, const char *key_id, int64_t now, ap_err *err);

    ap_status (*expert_insert)(void *impl, const store_expert *e, store_expert *out, ap_err *err);
    ap_status (*expert_get)(void *impl, const char *tenant_id, const char *id, store_expert *out,
                            ap_err *err);
    /* e->updated_at is the new time; created_at is ignored. */
    ap_status (*expert_update)(void *impl, const store_expert *e, store_expert *out, ap_err *err);
    ap_status (*expert_delete)(void *impl, const char *tenant_id, const char *id, ap_err *err);
    /* Up to limit rows after pos, oldest first. */
    ap_status (*expert_list)(void *impl, const char *tenant_id, const store_pos *after, int limit,
                             store_expert **rows, size_t *n, ap_err *err);

    /* Inserts p, or when p->idempotency_key already exists for the tenant, returns that panel
     * with *existed set. */
    ap_status (*panel_insert)(void *impl, const store_panel *p, store_panel *out, bool *existed,
                              ap_err *err);
    ap_status (*panel_get)(void *impl, const char *tenant_id, const char *id, store_panel *out,
                           ap_err *err);
    /* AP_NOTFOUND when the panel is not the tenant's, AP_CONFLICT when its status is not in
     * from[]. */
    ap_status (*panel_transition)(void *impl, const char *tenant_id, const char *id,
                                  const char *const *from, size_t n_from, const char *new_status,
                                  const char *result, const char *error, int64_t now, ap_err *err);
    /* Up to limit rows before pos, newest first; status NULL for any. */
    /* At most limit rows, and none after the first that takes the page past max_bytes
     * (store_panel_bytes; 0: no bound), which is read no further. */
    ap_status (*panel_list)(void *impl, const char *tenant_id, const char *status,
                            const store_pos *before, int limit, size_t max_bytes,
                            store_panel **rows, size_t *n, ap_err *err);
    ap_status (*panels_in_status)(void *impl, const char *status, store_panel_ref **pairs,
                                  size_t *n, ap_err *err);
    /* Sets status "running", owner and expires_at where the status is in from[] and the lease
     * is free at now (see store_panel_claim; takeover may be NULL). AP_NOTFOUND when the panel
     * is not the tenant's, AP_LIMIT when max_live > 0 and the tenant has as many other live
     * panels (counted under a lock that serialises the tenant's limited claims), AP_CONFLICT
     * otherwise. */
    ap_status (*panel_claim)(void *impl, const char *tenant_id, const char *id,
                             const char *const *from, size_t n_from, const char *owner,
                             const char *takeover, int64_t now, int64_t expires_at,
                             int64_t max_live, ap_err *err);
    /* Sets expires_at on those of ids[0..n) (panel ids) still running under owner; *renewed
     * receives the (tenant, panel) of each row changed, *n_renewed their count (caller frees). */
    ap_status (*leases_renew)(void *impl, const char *owner, const char (*ids)[STORE_ID_MAX],
                              size_t n, int64_t expires_at, store_panel_ref **renewed,
                              size_t *n_renewed, ap_err *err);
    ap_status (*leases_release)(void *impl, const char *owner, ap_err *err);
    /* The running panels whose lease is free or expired at now, or held by an owner beginning
     * with host_prefix, other than owner's: up to limit after `after` (NULL: from the oldest),
     * oldest first (see store_panels_lease_free; caller frees). */
    ap_status (*panels_lease_free)(void *impl, const char *owner, const char *host_prefix,
                                   int64_t now, const store_lease_ref *after, size_t limit,
                                   store_lease_ref **refs, size_t *n, ap_err *err);

    ap_status (*events_append)(void *impl, const char *tenant_id, const store_event *events,
                               size_t n, ap_err *err);
    ap_status (*events_list)(void *impl, const char *tenant_id, const char *panel_id,
                             int64_t after_seq, int limit, store_event **rows, size_t *n,
                             ap_err *err);
    ap_status (*events_last_seq)(void *impl, const char *tenant_id, const char *panel_id,
                                 int64_t *seq, ap_err *err);

    ap_status (*checkpoint_put)(void *impl, const char *tenant_id, const store_checkpoint *c,
                                ap_err *err);
    ap_status (*checkpoint_get)(void *impl, const char *tenant_id, const char *panel_id,
                                store_checkpoint *out, ap_err *err);

    ap_status (*script_put)(void *impl, const store_script *sc, bool activate, ap_err *err);
    ap_status (*script_get_version)(void *impl, const char *tenant_id, store_script_kind kind,
                                    const char *name, const char *version, store_script *out,
                                    ap_err *err);
    ap_status (*script_get_active)(void *impl, const char *tenant_id, store_script_kind kind,
                                   const char *name, store_script *out, ap_err *err);
    ap_status (*script_deactivate)(void *impl, const char *tenant_id, store_script_kind kind,
                                   const char *name, ap_err *err);
    ap_status (*script_list)(void *impl, const char *tenant_id, store_script_kind kind,
                             const char *name, store_script **rows, size_t *n, ap_err *err);

    ap_status (*usage_record)(void *impl, const char *tenant_id, const store_usage *u, ap_err *err);
    /* Items are validated and complete (ids, times set; superseded checkpoints removed); runs
     * them in one transaction and sets each item's result as store_write_batch documents.
     * now is the transitions' updated_at. */
    ap_status (*write_batch)(void *impl, const char *tenant_id, store_write *items, size_t n,
                             int64_t now, ap_err *err);
    /* Groups ordered by key. */
    ap_status (*usage_summary)(void *impl, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                               store_group group, store_usage_group **groups, size_t *n,
                               ap_err *err);
} store_ops;

extern const store_ops store_sqlite_ops;
extern const store_ops store_pg_ops;

/* Backend constructors; path/conninfo borrowed. */
ap_status store_sqlite_open(const char *path, void **impl, ap_err *err);
ap_status store_pg_open(const char *conninfo, void **impl, ap_err *err);

/* Layer 4: true when a row's tenant equals the requested one; otherwise logs a security event
 * and returns false (the caller then returns AP_DENIED via store_row_denied). */
bool store_row_tenant_ok(const char *expected, const char *got);
ap_status store_row_denied(ap_err *err);

/* Names of enumerations as stored in the databases (static storage), and their parsers. */
const char *store_role_name(store_role r);
bool store_role_parse(const char *name, store_role *out);
const char *store_kind_name(store_script_kind k);
bool store_kind_parse(const char *name, store_script_kind *out);

/* The embedded migrations of a backend directory ("sql/sqlite/"), sorted; returns the count
 * (at most cap). */
size_t store_migrations(const char *dir, store_migration *out, size_t cap);

/* strdup that accepts NULL (returns NULL) and sets *failed on allocation failure. */
char *store_dup(const char *s, bool *failed);

/* Frees the strings of usage groups and the array. */
void store_usage_groups_free(store_usage_group *g, size_t n);

#endif
