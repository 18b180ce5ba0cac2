/* session.h - an in-process engine for the command line (askpanel run, resume, check):
 * config, store (migrated), the local "cli" tenant, the script registry and a panel engine,
 * plus a follower that prints a panel's events as they happen and feeds human input. */
#ifndef AP_PANEL_SESSION_H
#define AP_PANEL_SESSION_H

#include "core/config.h"
#include "panel/engine.h"

#include <stdbool.h>
#include <stdio.h>

typedef struct panel_session {
    const config *cfg; /* borrowed */
    store *st;
    script_registry *reg;
    panel_engine *engine;
    char tenant_id[STORE_ID_MAX];
    int64_t deadline_ms; /* monotonic; non-zero: follow cancels the panel once it passes */
} panel_session;

/* Opens cfg->store (creating the directory of a relative sqlite path), migrates it, finds or
 * creates the "cli" tenant and starts an engine with one runner. provider/model may be NULL.
 * On failure prints nothing and fills err. */
ap_status panel_session_open(panel_session *s, const config *cfg, const char *provider,
                             const char *model, uint64_t seed, ap_err *err);

/* Stops the engine and closes everything; safe on a partly opened session. */
void panel_session_close(panel_session *s);

/* Exit statuses of a followed panel. */
#define PANEL_EXIT_COMPLETED 0
#define PANEL_EXIT_FAILED 1
#define PANEL_EXIT_AWAITING_INPUT 3

/* Prints the panel's events (stored ones after after_seq first, then live ones) to out as
 * text or as JSON lines {"panel_id","seq","type","data"}; answers input requests with lines
 * read from in (a JSON object, or text sent as {"text": line}). sub must have been made
 * before the panel was started or resumed. Returns a PANEL_EXIT_* status; at EOF of in while
 * input is requested it returns PANEL_EXIT_AWAITING_INPUT. Past s->deadline_ms (when set) it
 * cancels the panel and returns PANEL_EXIT_FAILED. Failure reasons and notices go to diag
 * (may be NULL). */
int panel_session_follow(panel_session *s, panel_sub *sub, const char *panel_id, int64_t after_seq,
                         bool json, FILE *in, FILE *out, FILE *diag);

#endif
