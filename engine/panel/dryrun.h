/* dryrun.h - runs a strategy once against the simulated provider in a scratch store, to
 * accept or refuse a script before it is used (askpanel check, PUT /v1/strategies/{name}). */
#ifndef AP_PANEL_DRYRUN_H
#define AP_PANEL_DRYRUN_H

#include "core/config.h"
#include "script/registry.h"

#include <stdbool.h>

typedef struct panel_dry_result {
    bool completed;        /* the panel completed */
    bool stopped_at_input; /* a hybrid panel reached a human input request it could not answer */
    int nodes;             /* nodes run */
} panel_dry_result;

/* Runs `strategy` (already validated) on a fixed question with the default roster and
 * default params; human input requests get canned answers. Consensus scripts resolve through
 * cfg's directories. The run gets at most 32 nodes, 20 M instructions and 1 s per node (or
 * cfg's limits when smaller). AP_OK when the panel completed (or stopped at input); AP_INVALID with
 * the failure ("<name>.lua:12: ...") in err otherwise. */
ap_status panel_dry_run(const config *cfg, const script_entry *strategy, panel_dry_result *out,
                        ap_err *err);

#endif
