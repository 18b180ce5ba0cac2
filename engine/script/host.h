/* host.h - runs one panel's strategy in its own sandboxed Lua state.
 *
 * The panel runner (panel/) drives a script_panel without touching Lua: it starts a node, runs
 * it until the node yields (it asked LLM turns or a human), finishes (next node or done) or
 * fails, delivers the answers and runs it again. A node runs as a coroutine, so an `ask` costs
 * no thread. Everything a script can reach is the ctx API of docs/scripting.md.
 *
 * Not thread-safe: a script_panel belongs to one runner thread. */
#ifndef AP_SCRIPT_HOST_H
#define AP_SCRIPT_HOST_H

#include "core/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Per-panel limits (runtime.lua_memory_mb, runtime.node_instructions, runtime.node_timeout_ms). */
typedef struct script_limits {
    size_t memory_bytes;  /* ceiling of the Lua heap of the panel */
    int64_t instructions; /* VM instructions (and function calls) per node */
    int64_t timeout_ms;   /* time a node may spend running Lua (LLM waits excluded) */
} script_limits;

/* Fills l with the defaults (64 MiB, 200M instructions, 30 s). */
void script_limits_default(script_limits *l);

/* The limits of base while a script is checked rather than run (its top level at load, a
 * consensus script on sample ballots, a dry run's nodes): at most 20 M instructions and 1 s,
 * as the check may hold the thread of an upload. */
void script_limits_for_check(const script_limits *base, script_limits *out);

typedef struct script_panel script_panel;

typedef enum script_kind { SCRIPT_STRATEGY = 1, SCRIPT_CONSENSUS = 2 } script_kind;

/* What a validated script declares. Strings owned; free with script_info_free. */
typedef struct script_info {
    script_kind kind;
    char *name;
    char *description; /* "" when absent */
    char *start;       /* strategies only */
    char *consensus;   /* the strategy's default consensus, NULL when absent */
    char *params_json; /* the params declaration, "{}" when absent */
    char *nodes_json;  /* array of node names, sorted */
} script_info;

void script_info_free(script_info *info);

/* Compiles and runs a script in a scratch sandbox and checks the contract: a strategy returns
 * a table whose name equals `name`, with nodes (functions), start naming one of them and a
 * valid params declaration; a consensus script returns a function. Errors are written for a
 * tenant admin ("<name>.lua:3: ..." for syntax errors, plain words for contract errors). */
ap_status script_inspect(const script_limits *lim, script_kind kind, const char *name,
                         const char *source, size_t len, script_info *out, ap_err *err);

/* Runs a consensus script on ballots (JSON array) and opts (JSON object, may be NULL) in a
 * scratch sandbox and checks the result's shape; *result_json caller frees. */
ap_status script_consensus_dry_run(const script_limits *lim, const char *name, const char *source,
                                   size_t len, const char *ballots_json, const char *opts_json,
                                   char **result_json, ap_err *err);

/* What the host provides to the script; every callback runs on the runner thread, inside a
 * script call, and must not call back into the script_panel. */
typedef struct script_host {
    void *ud;
    /* A durable event from ctx:emit / ctx:consensus; writes its seq. data_json is borrowed. */
    ap_status (*emit)(void *ud, const char *type, const char *data_json, int64_t *seq, ap_err *err);
    /* ctx:log and print. level: 0 debug .. 3 error. */
    void (*log)(void *ud, int level, const char *msg);
    /* Source of a consensus script by name; *source (caller frees) and *version (caller frees,
     * may stay NULL). AP_NOTFOUND when there is none. */
    ap_status (*consensus_source)(void *ud, const char *name, char **source, size_t *len,
                                  ap_err *err);
} script_host;

/* The read-only inputs of ctx; all borrowed for the call, JSON as text. */
typedef struct script_inputs {
    const char *panel_id;
    const char *question;
    const char *params_json;  /* validated, defaults applied */
    const char *experts_json; /* array of expert objects */
    const char *tenant_json;  /* {slug, flags} */
    const char *consensus;    /* the panel's consensus algorithm, may be NULL */
    const char *state_json;   /* ctx.state to restore, NULL for a fresh panel */
} script_inputs;

/* Creates the panel's Lua state, loads and validates the strategy (name is used in error
 * messages: "<name>.lua:12: ...") and builds ctx. host is copied. Caller frees *out. */
ap_status script_panel_new(const script_limits *lim, const script_host *host, const char *name,
                           const char *source, size_t len, const script_inputs *in,
                           script_panel **out, ap_err *err);

#define SCRIPT_MODEL_NAME_MAX 200 /* the store's bound on a usage row's model name */

/* Checks a roster (a JSON array of experts) as a panel's start would: every expert has an
 * id, ids are unique and short, model names fit the store, at most the maximum of experts.
 * Borrowed. */
ap_status script_roster_check(const char *experts_json, ap_err *err);

/* Frees the state; sp may be NULL. */
void script_panel_free(script_panel *sp);

/* The strategy's start node (borrowed, valid while sp lives). */
const char *script_panel_start_node(const script_panel *sp);

#define SCRIPT_MAX_ASKS 256 /* the asks of one step (one ctx:ask_all) */

/* One LLM turn requested by ctx:ask / ctx:ask_all; strings borrowed until the next run, except
 * the expert's (expert_*), which live as long as the panel. */
typedef struct script_ask {
    const char *expert_id;
    const char *expert_json;  /* the whole expert object */
    const char *expert_name;  /* its "name", NULL when it has none */
    const char *expert_model; /* its "model", NULL when it has none */
    const char *prompt;
    const char *system;      /* may be NULL */
    const char *schema_json; /* may be NULL */
    int64_t round;           /* 0 when not given */
    int64_t max_tokens;      /* 0 when not given */
    double temperature;      /* < 0 when not given */
} script_ask;

typedef enum script_outcome {
    SCRIPT_NEXT = 1, /* the node returned the next node: step.next_node */
    SCRIPT_DONE,     /* the graph finished: step.result_json (may be NULL) */
    SCRIPT_ASK,      /* the node waits for step.n_asks answers */
    SCRIPT_INPUT,    /* the node waits for a human: step.input_request_json */
    SCRIPT_FAILED,   /* the node failed: step.error */
} script_outcome;

typedef struct script_step {
    script_outcome outcome;
    const char *next_node;
    const char *result_json;
    const script_ask *asks;
    size_t n_asks;
    const char *input_request_json;
    char error[1024];
} script_step;

/* Starts node (a coroutine) and runs it until it yields, returns or fails; seed makes
 * math.random deterministic per node so a replayed node behaves the same. The step's
 * pointers stay valid until the next call on sp. */
ap_status script_panel_run_node(script_panel *sp, const char *node, uint64_t seed,
                                script_step *step);

/* An answer to ask i of the pending batch (each delivered exactly once). */
typedef struct script_answer {
    const char *text;      /* NULL on failure */
    const char *data_json; /* decoded answer when a schema was given, may be NULL */
    int64_t prompt_tokens;
    int64_t completion_tokens;
    const char *error; /* non-NULL: the turn failed with this message */
} script_answer;

ap_status script_panel_deliver(script_panel *sp, size_t i, const script_answer *a, ap_err *err);

/* Answers the pending await_input with a JSON object. */
ap_status script_panel_deliver_input(script_panel *sp, const char *input_json, ap_err *err);

/* Resumes the node after all answers (or the input) were delivered. */
ap_status script_panel_resume(script_panel *sp, script_step *step);

/* ctx.state as compact JSON with sorted keys; caller frees. */
ap_status script_panel_state_json(script_panel *sp, char **out, ap_err *err);

/* script_panel_state_json for a checkpoint between nodes, and ctx.state replaced by what that
 * JSON reads back as: the next node sees exactly the state a resume from the checkpoint would
 * give it (number keys as strings, no NaN, no metatables, no shared tables), so a panel's
 * result does not depend on whether it was interrupted. Caller frees *out. */
ap_status script_panel_state_save(script_panel *sp, char **out, ap_err *err);

/* Bytes of Lua heap in use. */
size_t script_panel_memory(const script_panel *sp);

/* Bytes the panel's state holds from the system allocator (see script_vm_held). */
size_t script_panel_held(const script_panel *sp);

#endif
