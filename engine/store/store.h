/* store.h - durable storage for tenants, keys, experts, panels, events, checkpoints, scripts
 * and usage.
 *
 * One interface, two backends: SQLite (embedded default, "sqlite:PATH") and PostgreSQL
 * ("postgres://..." or any libpq connection string) with forced row-level security.
 *
 * Isolation (DESIGN §5): every call that touches tenant data takes the tenant id (canonical
 * lower-case UUID) as a required argument; rows read back are verified against it, and a
 * mismatch is refused with AP_DENIED and a security log line. An object of another tenant is
 * AP_NOTFOUND, never AP_DENIED, so its existence is not revealed. A malformed tenant id is
 * AP_INVALID; a malformed object id is AP_NOTFOUND (it names nothing).
 *
 * Handles are thread-safe: HTTP threads and runner threads share one store.
 * Row structs own their strings; free them with the matching *_free function (NULL is fine).
 * JSON columns travel as compact JSON text. Times are epoch milliseconds. */
#ifndef AP_STORE_H
#define AP_STORE_H

#include "core/ids.h"
#include "core/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct store store;

#define STORE_ID_MAX (IDS_UUID_LEN + 1)
#define STORE_CURSOR_MAX 128
#define STORE_LIST_MAX 200 /* largest page a list call returns */
/* Largest text or JSON value the store accepts in one column: a question, an event's data, a
 * checkpoint's state or journal. */
#define STORE_VALUE_MAX (8u * 1024u * 1024u)

/* ---- lifecycle ---------------------------------------------------------------------- */

/* Opens a store from a URL ("sqlite:PATH", "postgres://...", "postgresql://...", or a libpq
 * key=value string). Does not migrate. Caller closes. */
ap_status store_open(const char *url, store **out, ap_err *err);

/* Closes the store and frees its handle; s may be NULL. */
void store_close(store *s);

/* "sqlite" or "postgres". Static storage. */
const char *store_backend(const store *s);

/* Applies pending migrations (each in its own transaction, recorded, idempotent); *applied
 * receives how many ran (may be NULL). On PostgreSQL this must run as the owner role. */
ap_status store_migrate(store *s, int *applied, ap_err *err);

/* Number of migrations not yet applied, in *pending. */
ap_status store_pending_migrations(store *s, int *pending, ap_err *err);

/* Start-up safety check: on PostgreSQL refuses (AP_DENIED) when the connected role owns the
 * tenant tables, is a superuser or can bypass RLS. Always AP_OK on SQLite. */
ap_status store_check_isolation(store *s, ap_err *err);

/* Cheap liveness probe for /ready. */
ap_status store_ping(store *s, ap_err *err);

/* ---- tenants (operator scope) ---------------------------------------------------------- */

typedef struct store_tenant {
    char id[STORE_ID_MAX];
    char *slug;
    char *name;
    char *config; /* JSON object: branding, flags, limits */
    int64_t created_at;
} store_tenant;

void store_tenant_free(store_tenant *t);

/* The tenant's limit `name` from its config ("limits": {name: n}): a count >= 1, or 0 (none)
 * when absent or not a sane positive count, as operators write these. t borrowed. */
int64_t store_tenant_limit(const store_tenant *t, const char *name);

/* Creates a tenant; AP_CONFLICT when the slug exists, AP_INVALID for a bad slug (must match
 * [a-z0-9][a-z0-9-]{1,62}). config may be NULL ("{}"). out may be NULL. */
ap_status store_tenant_create(store *s, const char *slug, const char *name, const char *config,
                              store_tenant *out, ap_err *err);

/* Looks a tenant up by id or by slug. */
ap_status store_tenant_get(store *s, const char *tenant_id, store_tenant *out, ap_err *err);
ap_status store_tenant_by_slug(store *s, const char *slug, store_tenant *out, ap_err *err);

/* Replaces a tenant's config JSON. */
ap_status store_tenant_set_config(store *s, const char *tenant_id, const char *config, ap_err *err);

/* ---- API keys ------------------------------------------------------------------------ */

typedef enum store_role { STORE_ROLE_MEMBER = 1, STORE_ROLE_ADMIN = 2 } store_role;

typedef struct store_key {
    char id[STORE_ID_MAX];
    char tenant_id[STORE_ID_MAX];
    char prefix[32]; /* the visible part of the key, e.g. "ap_1a2b3c4d" */
    char hash[IDS_SHA256_HEX_LEN + 1];
    store_role role;
    int64_t created_at;
    int64_t revoked_at; /* 0 while active */
} store_key;

/* Creates a key for a tenant: a 256-bit random secret, stored only as its SHA-256. Writes the
 * full key (shown once) into plaintext (>= 96 bytes) and the row into out (may be NULL).
 * Format: "ap_" + 8 hex (the visible prefix, 11 chars with "ap_") + "_" + 64 hex: 76 chars. */
ap_status store_key_create(store *s, const char *tenant_id, store_role role, char *plaintext,
                           size_t plaintext_cap, store_key *out, ap_err *err);

/* Resolves a presented key: finds it by prefix, compares hashes in constant time. AP_NOTFOUND
 * for an unknown or wrong key, AP_DENIED for a revoked one. */
ap_status store_key_resolve(store *s, const char *plaintext, store_key *out, ap_err *err);

/* The tenant's key with id key_id, revoked or not (revoked_at says): what stream tokens and
 * open event streams check their key against. AP_NOTFOUND when the tenant has no such key
 * (another tenant's key included), AP_INVALID for a malformed tenant id. */
ap_status store_key_get(store *s, const char *tenant_id, const char *key_id, store_key *out,
                        ap_err *err);

/* Revokes a key by id (operator scope; revoking twice is fine); AP_NOTFOUND if there is none. */
ap_status store_key_revoke(store *s, const char *key_id, ap_err *err);

/* ---- experts ------------------------------------------------------------------------- */

typedef struct store_expert {
    char id[STORE_ID_MAX];
    char tenant_id[STORE_ID_MAX];
    char *name;
    char *role;
    char *expertise; /* JSON array of strings */
    char *persona;
    char *model; /* may be NULL: the default model */
    double weight;
    int64_t created_at;
    int64_t updated_at;
} store_expert;

void store_expert_free(store_expert *e);

/* Inserts an expert (in->id is generated when empty); the stored row goes to out. */
ap_status store_expert_create(store *s, const char *tenant_id, const store_expert *in,
                              store_expert *out, ap_err *err);
ap_status store_expert_get(store *s, const char *tenant_id, const char *id, store_expert *out,
                           ap_err *err);
/* Replaces the mutable fields of an existing expert; AP_NOTFOUND if not this tenant's. */
ap_status store_expert_update(store *s, const char *tenant_id, const store_expert *in,
                              store_expert *out, ap_err *err);
ap_status store_expert_delete(store *s, const char *tenant_id, const char *id, ap_err *err);

/* One page of experts, oldest first. cursor is "" for the first page; next_cursor receives
 * "" on the last page. *rows is an array of *n experts; free with store_experts_free.
 * limit must be >= 1 (AP_INVALID otherwise); above STORE_LIST_MAX it is clamped. A cursor
 * that was not produced by the store is AP_INVALID. */
ap_status store_expert_list(store *s, const char *tenant_id, const char *cursor, int limit,
                            store_expert **rows, size_t *n, char next_cursor[STORE_CURSOR_MAX],
                            ap_err *err);
void store_experts_free(store_expert *rows, size_t n);

/* ---- panels -------------------------------------------------------------------------- */

typedef struct store_panel {
    char id[STORE_ID_MAX];
    char tenant_id[STORE_ID_MAX];
    char *title; /* may be NULL */
    char *question;
    char *strategy;           /* name */
    char *strategy_version;   /* content hash of the pinned script */
    char *consensus;          /* consensus algorithm name, may be NULL */
    char *params;             /* JSON object */
    char *experts;            /* JSON array of expert objects (resolved personas) */
    char *status;             /* created|queued|running|awaiting_input|completed|failed|cancelled */
    char *result;             /* JSON, NULL until completed */
    char *error;              /* NULL unless failed */
    char *idempotency_key;    /* may be NULL */
    char *request_hash;       /* hash of the creating request body, with idempotency_key */
    char *lease_owner;        /* the engine instance running it (see leases), NULL when none */
    int64_t lease_expires_at; /* when that lease runs out; 0 when there is none */
    int64_t created_at;
    int64_t updated_at;
} store_panel;

void store_panel_free(store_panel *p);

/* Inserts a panel (in->id generated when empty; status NULL means "created", params NULL
 * "{}", experts NULL "[]"). With an idempotency key that exists for this tenant: AP_OK and the
 * existing panel when request_hash matches, AP_CONFLICT otherwise. out may be NULL. */
ap_status store_panel_create(store *s, const char *tenant_id, const store_panel *in,
                             store_panel *out, ap_err *err);
ap_status store_panel_get(store *s, const char *tenant_id, const char *id, store_panel *out,
                          ap_err *err);

/* Moves a panel to new_status only if its status is one of from[] (n_from entries, NULL-free);
 * AP_CONFLICT otherwise. result/error may be NULL (left unchanged). Leaving "running" gives
 * the panel's lease up; entering it this way takes none (that is store_panel_claim). */
ap_status store_panel_transition(store *s, const char *tenant_id, const char *id,
                                 const char *const *from, size_t n_from, const char *new_status,
                                 const char *result, const char *error, ap_err *err);

/* About the bytes of a panel as JSON: its long texts and 512 for the rest. */
size_t store_panel_bytes(const store_panel *p);

/* One page of panels, newest first; status may be NULL (any). Like store_expert_list, and the
 * page also ends with the first panel that takes it past max_bytes of store_panel_bytes (0: no
 * bound), next_cursor then following it: the rows after it are not even read, so a page of
 * large panels (a result can take megabytes) holds max_bytes and one panel at most. */
ap_status store_panel_list(store *s, const char *tenant_id, const char *status, const char *cursor,
                           int limit, size_t max_bytes, store_panel **rows, size_t *n,
                           char next_cursor[STORE_CURSOR_MAX], ap_err *err);
void store_panels_free(store_panel *rows, size_t n);

/* The cursor of a panels list that continues after row (a page cut short by its caller). */
void store_panel_cursor(const store_panel *row, char out[STORE_CURSOR_MAX]);

/* Panels in one of the given statuses across all tenants, for resume at start-up (operator
 * scope): fills ids as (tenant_id, panel_id) pairs; caller frees *pairs with free(). */
typedef struct store_panel_ref {
    char tenant_id[STORE_ID_MAX];
    char panel_id[STORE_ID_MAX];
} store_panel_ref;
ap_status store_panels_in_status(store *s, const char *status, store_panel_ref **pairs, size_t *n,
                                 ap_err *err);

/* ---- leases on running panels ---------------------------------------------------------
 *
 * A running panel is held by the engine instance that runs it: an owner id (at most
 * STORE_LEASE_OWNER_MAX - 1 bytes; the engine uses "<host>:<pid>:<boot id>") and an expiry the
 * owner keeps renewing. Only a claim sets a lease; every transition out of running clears it.
 * Expiries are compared with the wall clock of the node that asks. */

#define STORE_LEASE_OWNER_MAX 160

/* Moves a panel from one of from[] to "running" under owner's lease until now + lease_ms
 * (lease_ms >= 1), in one statement, provided the panel's lease is free: none, expired,
 * owner's own, or held by takeover (an owner the caller found gone; NULL for none).
 * AP_CONFLICT when the status or the lease does not allow it; the caller reads the panel to
 * tell which. With max_live > 0, also only while the tenant has fewer than max_live other
 * live panels (queued, running or awaiting input), else AP_LIMIT: the count and the claim
 * are one step for every process sharing the store, so racing starts cannot pass a limit
 * together. */
ap_status store_panel_claim(store *s, const char *tenant_id, const char *id,
                            const char *const *from, size_t n_from, const char *owner,
                            int64_t lease_ms, const char *takeover, int64_t max_live, ap_err *err);

/* Operator scope (all tenants): extends owner's leases on panels[0..n) to now + lease_ms, in
 * one statement. renewed[i] receives whether panels[i] was still running under owner's lease
 * (false: it left running, or another owner claimed it). At most STORE_WRITE_MAX panels. */
ap_status store_panel_leases_renew(store *s, const char *owner, const store_panel_ref *panels,
                                   size_t n, int64_t lease_ms, bool *renewed, ap_err *err);

/* Operator scope: gives up every lease owner holds on a running panel, so that another process
 * may resume those panels at once (an engine that stops without finishing them). */
ap_status store_panel_leases_release(store *s, const char *owner, ap_err *err);

/* A running panel and its lease (owner "" and expires_at 0: none). */
typedef struct store_lease_ref {
    char tenant_id[STORE_ID_MAX];
    char panel_id[STORE_ID_MAX];
    char owner[STORE_LEASE_OWNER_MAX];
    int64_t expires_at;
    int64_t created_at; /* the panel's: with panel_id, where the next page starts */
} store_lease_ref;

#define STORE_LEASE_PAGE_MAX 10000 /* most candidates in one store_panels_lease_free page */

/* Operator scope (all tenants): the running panels that owner might take over, oldest first:
 * those whose lease is free or has run out, and those held by an owner that begins with
 * host_prefix (another process of owner's host, which may be gone: the caller checks), never
 * owner's own. One page of at most limit (1..STORE_LEASE_PAGE_MAX), after the candidate
 * `after` (borrowed; NULL: from the oldest): a sweep for orphaned panels reads these, a page
 * at a time, not every running panel of the cluster. Caller frees *refs with free(). */
ap_status store_panels_lease_free(store *s, const char *owner, const char *host_prefix,
                                  const store_lease_ref *after, size_t limit,
                                  store_lease_ref **refs, size_t *n, ap_err *err);

/* ---- events -------------------------------------------------------------------------- */

typedef struct store_event {
    char panel_id[STORE_ID_MAX];
    int64_t seq; /* 1, 2, 3 ... per panel, assigned by the panel's runner */
    char *type;
    char *data; /* JSON */
    int64_t created_at;
    const char *owner; /* batch writes only: fenced by the lease, as store_checkpoint's */
} store_event;

void store_event_free(store_event *e);
void store_events_free(store_event *rows, size_t n);

/* Appends n events (possibly of several panels of this tenant) in one transaction: the group
 * commit of the event writer. AP_CONFLICT if a (panel, seq) already exists, AP_NOTFOUND if a
 * panel is not this tenant's; either way nothing lands. At most 10000 events per call
 * (AP_LIMIT). data NULL means "{}", created_at 0 means now. */
ap_status store_events_append(store *s, const char *tenant_id, const store_event *events, size_t n,
                              ap_err *err);

/* Events of a panel with seq > after_seq, ascending, at most limit (clamped to
 * STORE_LIST_MAX). Another tenant's panel yields an empty list. */
ap_status store_events_list(store *s, const char *tenant_id, const char *panel_id,
                            int64_t after_seq, int limit, store_event **rows, size_t *n,
                            ap_err *err);

/* Highest seq of a panel (0 when none). */
ap_status store_events_last_seq(store *s, const char *tenant_id, const char *panel_id, int64_t *seq,
                                ap_err *err);

/* ---- checkpoints --------------------------------------------------------------------- */

typedef struct store_checkpoint {
    char panel_id[STORE_ID_MAX];
    int64_t step;         /* nodes completed so far */
    char *next_node;      /* NULL when the graph finished */
    char *state;          /* JSON of ctx.state */
    char *script_version; /* content hash */
    char *journal;        /* JSON array of LLM results of the node in flight */
    int64_t last_seq;     /* events emitted up to this checkpoint */
    int64_t created_at;
    /* Writes only: the lease holder writing it (borrowed). The store takes the checkpoint only
     * while owner holds the panel's lease, so a process that lost a panel it had stalled on
     * cannot set the new holder's checkpoint back; NULL writes unfenced. */
    const char *owner;
} store_checkpoint;

void store_checkpoint_free(store_checkpoint *c);

/* Writes the panel's checkpoint (replacing the previous one). */
ap_status store_checkpoint_put(store *s, const char *tenant_id, const store_checkpoint *c,
                               ap_err *err);
/* Reads the latest checkpoint; AP_NOTFOUND when there is none. */
ap_status store_checkpoint_get(store *s, const char *tenant_id, const char *panel_id,
                               store_checkpoint *out, ap_err *err);

/* ---- scripts ------------------------------------------------------------------------- */

typedef enum store_script_kind {
    STORE_SCRIPT_STRATEGY = 1,
    STORE_SCRIPT_CONSENSUS = 2
} store_script_kind;

typedef struct store_script {
    char tenant_id[STORE_ID_MAX];
    store_script_kind kind;
    char *name;
    char *version; /* SHA-256 hex of source */
    char *source;
    char *origin; /* "override", "tenant-dir", "builtin": where the source came from */
    bool active;  /* the tenant's active override of this name */
    int64_t created_at;
} store_script;

void store_script_free(store_script *sc);
void store_scripts_free(store_script *rows, size_t n);

/* Keeps a version's source (idempotent on (tenant, kind, name, version)); with activate set it
 * also becomes the tenant's active override of that name, atomically. sc->version may be NULL
 * or "" (computed); otherwise it must equal the SHA-256 hex of the source (AP_INVALID).
 * origin NULL means "override". Names match [A-Za-z0-9_.-]{1,64}. */
ap_status store_script_put(store *s, const char *tenant_id, const store_script *sc, bool activate,
                           ap_err *err);
/* A stored version by hash (pinned panels load their source from here). */
ap_status store_script_get_version(store *s, const char *tenant_id, store_script_kind kind,
                                   const char *name, const char *version, store_script *out,
                                   ap_err *err);
/* The tenant's active override of a name; AP_NOTFOUND when none. */
ap_status store_script_get_active(store *s, const char *tenant_id, store_script_kind kind,
                                  const char *name, store_script *out, ap_err *err);
/* Deactivates the override (versions are kept); AP_NOTFOUND when none was active. */
ap_status store_script_deactivate(store *s, const char *tenant_id, store_script_kind kind,
                                  const char *name, ap_err *err);
/* All stored versions of a name (name NULL: all active overrides), newest first. */
ap_status store_script_list(store *s, const char *tenant_id, store_script_kind kind,
                            const char *name, store_script **rows, size_t *n, ap_err *err);

/* ---- usage --------------------------------------------------------------------------- */

typedef struct store_usage {
    char id[STORE_ID_MAX];
    char panel_id[STORE_ID_MAX]; /* may be "" */
    char *expert_id;             /* may be NULL */
    char *provider;
    char *model;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    double cost_usd;
    int64_t latency_ms;
    int attempts;
    char *outcome; /* "ok", "error", "cancelled", ... */
    int64_t created_at;
} store_usage;

void store_usage_free(store_usage *u);

ap_status store_usage_record(store *s, const char *tenant_id, const store_usage *u, ap_err *err);

/* ---- batch writes -------------------------------------------------------------------- */

#define STORE_WRITE_MAX 10000 /* most items in one store_write_batch call */

typedef enum store_write_kind {
    STORE_WRITE_EVENT = 1,  /* append u.event */
    STORE_WRITE_CHECKPOINT, /* put u.checkpoint */
    STORE_WRITE_TRANSITION, /* u.transition, like store_panel_transition */
    STORE_WRITE_USAGE       /* record u.usage */
} store_write_kind;

typedef struct store_transition {
    char panel_id[STORE_ID_MAX];
    const char *const *from; /* n_from statuses the panel must be in */
    size_t n_from;
    const char *to;
    const char *result; /* may be NULL (left unchanged) */
    const char *error;  /* may be NULL (left unchanged) */
    const char *owner;  /* only while this owner holds the lease (as store_checkpoint's) */
} store_transition;

typedef struct store_write {
    store_write_kind kind;
    union {
        store_event event;
        store_checkpoint checkpoint;
        store_transition transition;
        store_usage usage;
    } u;
    ap_status result; /* out: what happened to this item */
} store_write;

/* Applies n writes of one tenant in ONE transaction, in order; the items and their strings are
 * borrowed. Each item is validated like its single call. Per item, result receives:
 *   AP_OK        written (a checkpoint superseded by a later one of the same panel in the
 *                batch is not written, only the last counts, and is AP_OK too);
 *   AP_CONFLICT  skipped, the rest lands: a transition whose panel is not in one of from[]
 *                or whose owner does not hold its lease, a checkpoint of such an owner, or
 *                an event whose (panel, seq) is already stored (a replay);
 *   AP_DENIED    skipped, the rest lands: an event of an owner that does not hold the
 *                panel's lease (fenced off);
 *   other        this item failed the whole batch (e.g. AP_INVALID for a malformed item,
 *                AP_NOTFOUND for a panel that is not this tenant's, AP_CONFLICT for a duplicate
 *                usage id); the call then returns that status with nothing written, and items
 *                not reached keep AP_OK.
 * Returns AP_OK when the transaction committed. As with store_usage_record, a usage row's
 * panel_id is not checked against the tenant's panels. At most STORE_WRITE_MAX items
 * (AP_LIMIT). */
ap_status store_write_batch(store *s, const char *tenant_id, store_write *items, size_t n,
                            ap_err *err);

/* store_write_batch for JSON the engine encoded itself (event data, checkpoint state and
 * journal, a transition's result): checked for size, UTF-8, nesting depth and top-level kind,
 * not parsed again. Never for outside input; everything else is validated as in
 * store_write_batch. Items borrowed. */
ap_status store_write_batch_trusted(store *s, const char *tenant_id, store_write *items, size_t n,
                                    ap_err *err);

/* Aggregated usage in [from_ms, to_ms) grouped by "expert", "model" or "day".
 * Returns a JSON array text of {key, calls, prompt_tokens, completion_tokens, cost_usd} ordered
 * by key; key is null for calls without an expert, "YYYY-MM-DD" (UTC) by day.
 * caller frees *json. */
ap_status store_usage_summary(store *s, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                              const char *group_by, char **json, ap_err *err);

#endif
