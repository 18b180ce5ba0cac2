#include "panel/dryrun.h"

#include "core/clock.h"

#include "panel/roster.h"
#include "panel/session.h"
#include "script/params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DRY_ANSWERS 16

/* A dry run holds the thread that asked for it (an HTTP worker for an upload), so its nodes
 * get a check's budgets (script_limits_for_check), and all of them together DRY_TOTAL_MS:
 * past that the panel is cancelled (within the node running then). Every built-in strategy
 * finishes its dry run in under 10 nodes and 100 ms. */
#define DRY_MAX_STEPS 32
#define DRY_TOTAL_MS 3000

static int64_t at_most(int64_t v, int64_t cap)
{
    return v < cap ? v : cap;
}

static void remove_scratch(const char *dir, const char *db)
{
    char side[160];
    unlink(db);
    snprintf(side, sizeof side, "%s-wal", db);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", db);
    unlink(side);
    rmdir(dir);
}

ap_status panel_dry_run(const config *base, const script_entry *en, panel_dry_result *out,
                        ap_err *err)
{
    char dir[] = "/tmp/askpanel-dryrun-XXXXXX";
    char db[96], url[128];
    memset(out, 0, sizeof *out);
    if (mkdtemp(dir) == NULL)
        return ap_err_set(err, AP_IO, "dry run: cannot create a scratch directory");
    snprintf(db, sizeof db, "%s/dry.db", dir);
    snprintf(url, sizeof url, "sqlite:%s", db);
    config cfg = *base;
    cfg.store = url;
    cfg.runtime_max_steps = at_most(cfg.runtime_max_steps, DRY_MAX_STEPS);
    script_limits node = {.instructions = cfg.runtime_node_instructions,
                          .timeout_ms = cfg.runtime_node_timeout_ms};
    script_limits_for_check(&node, &node);
    cfg.runtime_node_instructions = node.instructions;
    cfg.runtime_node_timeout_ms = node.timeout_ms;
    panel_session s = {0};
    char *params = NULL;
    store_panel row = {0};
    panel_sub *sub = NULL;
    FILE *sink = fopen("/dev/null", "w");
    FILE *answers = tmpfile();
    ap_status rc = AP_IO;
    if (sink == NULL || answers == NULL) {
        ap_err_set(err, AP_IO, "dry run: cannot open scratch files");
        goto out;
    }
    for (int i = 0; i < DRY_ANSWERS; i++)
        fputs("{\"text\":\"I agree with the panel\",\"position\":\"proceed\","
              "\"confidence\":0.8}\n",
              answers);
    rewind(answers);
    if ((rc = panel_session_open(&s, &cfg, "simulated", NULL, 1, err)) != AP_OK)
        goto out;
    if ((rc = script_params_apply(en->info.params_json, NULL, &params, err)) != AP_OK)
        goto out;
    store_script sc = {.kind = STORE_SCRIPT_STRATEGY,
                       .name = en->name,
                       .version = (char *)en->version,
                       .source = en->source,
                       .origin = en->origin};
    memcpy(sc.tenant_id, s.tenant_id, sizeof sc.tenant_id);
    store_panel in = {.question = "Should we launch in Europe first or in the United States?",
                      .strategy = en->name,
                      .strategy_version = (char *)en->version,
                      .consensus = en->info.consensus,
                      .params = params,
                      .experts = (char *)panel_roster_default_json(),
                      .status = "created"};
    if ((rc = store_script_put(s.st, s.tenant_id, &sc, false, err)) != AP_OK ||
        (rc = store_panel_create(s.st, s.tenant_id, &in, &row, err)) != AP_OK ||
        (rc = panel_engine_subscribe(s.engine, s.tenant_id, row.id, 65536, NULL, NULL, &sub,
                                     err)) != AP_OK ||
        (rc = panel_engine_execute(s.engine, s.tenant_id, row.id, err)) != AP_OK)
        goto out;
    s.deadline_ms = clock_mono_ms() + DRY_TOTAL_MS;
    int status = panel_session_follow(&s, sub, row.id, 0, true, answers, sink, NULL);
    bool late = status == PANEL_EXIT_FAILED && clock_mono_ms() >= s.deadline_ms;
    store_checkpoint ck = {0};
    ap_err ignore = {0};
    if (store_checkpoint_get(s.st, s.tenant_id, row.id, &ck, &ignore) == AP_OK)
        out->nodes = (int)ck.step;
    store_checkpoint_free(&ck);
    if (status == PANEL_EXIT_COMPLETED) {
        out->completed = true;
        rc = AP_OK;
    } else if (status == PANEL_EXIT_AWAITING_INPUT) {
        out->stopped_at_input = true;
        rc = AP_OK;
    } else if (late) {
        rc = ap_err_set(err, AP_INVALID,
                        "the dry run took longer than %d ms in all (at most %d nodes of %lld ms)",
                        DRY_TOTAL_MS, DRY_MAX_STEPS, (long long)node.timeout_ms);
    } else {
        store_panel after = {0};
        if (store_panel_get(s.st, s.tenant_id, row.id, &after, &ignore) == AP_OK &&
            after.error != NULL)
            rc = ap_err_set(err, AP_INVALID, "%s", after.error);
        else
            rc = ap_err_set(err, AP_INVALID, "the dry run did not complete");
        store_panel_free(&after);
    }
out:
    panel_engine_unsubscribe(s.engine, sub);
    if (s.engine != NULL || s.st != NULL || s.reg != NULL)
        panel_session_close(&s);
    store_panel_free(&row);
    free(params);
    if (sink != NULL)
        fclose(sink);
    if (answers != NULL)
        fclose(answers);
    remove_scratch(dir, db);
    return rc;
}
