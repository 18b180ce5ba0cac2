/* engine.h - runs panels: runner threads with event loops, the event writer, subscriptions.
 *
 * Each runner thread owns an llm_loop and the Lua states of its panels; a node runs as a
 * coroutine and yields on ctx:ask/ask_all/await_input, so thousands of panels share a thread.
 * Durable events, checkpoints, status changes and usage go through one writer thread that
 * commits them in groups (store_events_append of a whole batch) and only then publishes the
 * events to subscribers; ephemeral deltas ride the same queue so a subscriber sees one
 * ordered stream. A checkpoint is written after every node (next node, ctx.state, pinned
 * script version, the node's journal of LLM results and human input); resuming replays the
 * journal instead of calling the provider again.
 *
 * A running panel is leased to the engine instance that runs it (store_panel_claim), so no
 * two processes on one store run it at once; a panel waiting for input is held by no process.
 * The lease lasts runtime.lease_ms and a thread renews it every third of that.
 *
 * All functions are thread-safe unless noted. Statuses follow DESIGN §4:
 * created -> queued -> running <-> awaiting_input -> completed | failed | cancelled. */
#ifndef AP_PANEL_ENGINE_H
#define AP_PANEL_ENGINE_H

#include "core/config.h"
#include "core/status.h"
#include "script/registry.h"
#include "store/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct panel_engine panel_engine;

typedef struct panel_engine_opts {
    const config *cfg;         /* borrowed for the engine's life */
    store *store;              /* borrowed; NULL: nothing is persisted (dry runs) */
    script_registry *registry; /* borrowed */
    const char *provider;      /* overrides the default LLM provider; may be NULL */
    const char *model;         /* overrides every expert's model; may be NULL */
    uint64_t seed;             /* the simulated provider's seed for this process */
    int runners;               /* > 0 overrides runtime.runners */
    /* Takes over, every lease_ms, the running panels whose lease ran out (their process died
     * or hung): a node of a cluster (`serve`); a one-panel run leaves others' panels alone. */
    bool adopt;
} panel_engine_opts;

/* Starts the runner and writer threads. Caller stops with panel_engine_stop. */
ap_status panel_engine_start(const panel_engine_opts *o, panel_engine **out, ap_err *err);

/* Stops gracefully: running panels stop where they are (they stay "running" in the store and
 * resume from their checkpoint on the next start), queued writes are flushed, the engine's
 * leases are given up (another process may resume its panels at once), subscribers get no
 * more events. Frees the engine; NULL is fine. */
void panel_engine_stop(panel_engine *e);

/* What a new panel is made of (see panel_engine_create). */
typedef struct panel_create_req {
    const char *title; /* may be NULL */
    const char *question;
    const char *strategy;        /* name */
    const char *consensus;       /* may be NULL: the strategy's default */
    const char *params_json;     /* object, may be NULL */
    const char *experts_json;    /* array of expert objects (each with an id); NULL: default
                                    roster */
    const char *idempotency_key; /* may be NULL */
    const char *request_hash;    /* may be NULL */
} panel_create_req;

/* Validates the request against the strategy the tenant resolves (params errors name the
 * param), pins the script version (kept in the store) and creates the panel ("created").
 * out may be NULL. */
ap_status panel_engine_create(panel_engine *e, const char *tenant_id, const panel_create_req *req,
                              store_panel *out, ap_err *err);

/* Starts a created or queued panel, taking its lease in the same store update. AP_CONFLICT
 * when it is in another status. */
ap_status panel_engine_execute(panel_engine *e, const char *tenant_id, const char *panel_id,
                               ap_err *err);

/* Continues an interrupted panel (status running, not active in this process) from its
 * checkpoint, after taking its lease: free, expired, this engine's, or held by a process of
 * this host that no longer exists. AP_CONFLICT when it is not running, already active here,
 * or another live process holds it ("the panel is running in another process (host H, pid N);
 * retry after <time> if that process is gone"). A created or queued panel is executed. */
ap_status panel_engine_resume(panel_engine *e, const char *tenant_id, const char *panel_id,
                              ap_err *err);

/* Resumes every running panel of the store (at start-up) that no other live process holds
 * (those are logged and skipped); *n (may be NULL) gets the count. */
ap_status panel_engine_resume_all(panel_engine *e, size_t *n, ap_err *err);

/* Cancels a panel: in-flight LLM calls are aborted at once; status cancelled. */
ap_status panel_engine_cancel(panel_engine *e, const char *tenant_id, const char *panel_id,
                              ap_err *err);

/* Answers a panel waiting for human input with a JSON object (text is wrapped as {"text"}):
 * claims the panel for this engine and continues it from its checkpoint, whichever process
 * ran it before. Returns once the input is stored (its input.received and the checkpoint that
 * journals it), or the panel ended first; at most ~10 s. AP_CONFLICT when the panel is not
 * awaiting input. request_seq, when not 0, is the seq of the input.requested event the answer
 * is for: unless that is the request the panel waits for, AP_CONFLICT (the message names the
 * pending request, if any) and the panel keeps waiting, unchanged. 0 answers whatever request
 * is pending. */
ap_status panel_engine_input(panel_engine *e, const char *tenant_id, const char *panel_id,
                             const char *input_json, int64_t request_seq, ap_err *err);

/* Number of panels running in this process (panels waiting for input are held by none). */
size_t panel_engine_active(panel_engine *e);

typedef struct panel_engine_stats {
    size_t active;    /* panel_engine_active */
    size_t queued;    /* writes waiting for the writer or being written */
    uint64_t batches; /* the writer's group commits so far */
    uint64_t written; /* the items they held */
} panel_engine_stats;

/* Fills *out (for /metrics and tests). */
void panel_engine_stats_get(panel_engine *e, panel_engine_stats *out);

/* Whether this process runs panel_id now (borrowed): its events then reach this process's
 * subscribers as they are stored; another process's do not. */
bool panel_engine_runs(panel_engine *e, const char *panel_id);

/* ---- scripts (GET/PUT /v1/strategies) ------------------------------------------------------ */

/* Resolves a script for a tenant as panels do: its active override in st first (when st is
 * not NULL), then reg's files (config/tenants/<slug>/strategies/, then the built-ins). slug
 * may be NULL (built-ins only). All borrowed; out is the caller's to free. Also for callers
 * without an engine (the HTTP API of a server that cannot run panels). */
ap_status panel_engine_resolve_script(store *st, script_registry *reg, const char *tenant_id,
                                      const char *slug, script_kind kind, const char *name,
                                      script_entry *out, ap_err *err);

/* The scripts a tenant can use as a JSON array, sorted by name: for strategies
 * {name, description, version, origin, consensus, params, nodes}, for consensus scripts
 * {name, version, origin}. The tenant's active overrides win over its directory, which wins
 * over the built-ins; broken files are left out (and logged). Caller frees *json. */
ap_status panel_engine_list_scripts(panel_engine *e, const char *tenant_id, script_kind kind,
                                    char **json, ap_err *err);

/* Checks an uploaded source and, if it passes, stores it as the tenant's active override of
 * `name` (new panels use it; running ones keep their pinned version). A strategy must pass
 * the contract and a dry run on the simulated provider; a consensus script must return a
 * valid result for sample ballots. On failure (AP_INVALID) err holds the message for the
 * admin ("<name>.lua:12: ...") and *line (may be NULL) the line it names or 0. version
 * (may be NULL, 65 bytes) receives the content hash. */
ap_status panel_engine_put_script(panel_engine *e, const char *tenant_id, script_kind kind,
                                  const char *name, const char *source, size_t len, char *version,
                                  int *line, ap_err *err);

/* ---- subscriptions (the SSE layer and the CLI) -------------------------------------------- */

typedef struct panel_event {
    char panel_id[STORE_ID_MAX];
    int64_t seq;      /* 0 for ephemeral events (expert.delta) */
    const char *type; /* valid until panel_event_clear */
    const char *data; /* JSON, valid until panel_event_clear */
    void *shared;     /* the one copy all subscribers of the event read (internal) */
} panel_event;

/* Releases ev's reference to its strings (not ev itself). */
void panel_event_clear(panel_event *ev);

/* Something derived from the event once for all its subscribers (the SSE layer's wire frame:
 * thousands of streams on one panel then format each event once). The first call builds it
 * with make, which returns one malloc'd block (freed with the event) or NULL on failure; later
 * calls from any subscription return that block. Every caller must pass the same make. NULL
 * when make failed. Valid until panel_event_clear. */
const void *panel_event_memo(const panel_event *ev, void *(*make)(const panel_event *ev));

typedef struct panel_sub panel_sub;

/* Subscribes to a panel's live events. At most max_queued events wait in the queue; past
 * that, ephemeral events are dropped and a durable one marks the subscription lagged (the
 * consumer then re-reads from the store after its last seq; see panel_sub_next). notify (may
 * be NULL) runs on the writer thread after events were queued; it must not block. To read
 * without gaps: subscribe first, then read stored events, then take live ones skipping
 * seq <= the last stored one. Caller frees with panel_engine_unsubscribe. */
ap_status panel_engine_subscribe(panel_engine *e, const char *tenant_id, const char *panel_id,
                                 size_t max_queued, void (*notify)(void *ud), void *ud,
                                 panel_sub **out, ap_err *err);

void panel_engine_unsubscribe(panel_engine *e, panel_sub *s);

/* Takes the next event into *ev (caller clears), waiting at most timeout_ms (0: do not wait,
 * -1: forever). Returns 1 with an event, 0 on timeout, -1 when the subscription lagged (the
 * queue is emptied and the flag reset). */
int panel_sub_next(panel_sub *s, panel_event *ev, int timeout_ms);

#endif
