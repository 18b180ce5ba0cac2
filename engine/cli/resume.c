/* askpanel resume: continue an interrupted panel: one of the local "cli" tenant, or a live
 * panel of any tenant (a panel of a `serve` that died, resumed by an operator). */
#include "cli/cli.h"

#include "core/ids.h"
#include "panel/session.h"

#include <stdlib.h>
#include <string.h>

/* The tenant of the live panel panel_id, looked up across tenants (operator scope); AP_NOTFOUND
 * when no tenant has it live. */
static ap_status live_panel_tenant(store *st, const char *panel_id, char tenant_id[STORE_ID_MAX],
                                   ap_err *err)
{
    static const char *const live[] = {"running", "awaiting_input", "queued", "created"};
    for (size_t k = 0; k < sizeof live / sizeof live[0]; k++) {
        store_panel_ref *refs = NULL;
        size_t n = 0;
        ap_status rc = store_panels_in_status(st, live[k], &refs, &n, err);
        if (rc != AP_OK)
            return rc;
        bool found = false;
        for (size_t i = 0; i < n && !found; i++) {
            found = strcmp(refs[i].panel_id, panel_id) == 0;
            if (found)
                memcpy(tenant_id, refs[i].tenant_id, STORE_ID_MAX);
        }
        free(refs);
        if (found)
            return AP_OK;
    }
    return ap_err_set(err, AP_NOTFOUND, "no such panel");
}

int cli_resume(int argc, char **argv)
{
    cli_common common = {0};
    config cfg = {0};
    panel_session s = {0};
    const char *id = NULL;
    bool json = false, session_open = false;
    int status = 2;
    for (int i = 1; i < argc; i++) {
        int c = cli_common_option(&common, argc, argv, &i);
        if (c < 0)
            return 2;
        if (c > 0)
            continue;
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (argv[i][0] != '-' && id == NULL)
            id = argv[i];
        else
            return cli_usage_error("resume: unexpected argument %s", argv[i]);
    }
    char panel_id[IDS_UUID_LEN + 1];
    if (id == NULL || !ids_uuid_normalize(id, panel_id))
        return cli_usage_error("resume: needs a panel id (a UUID)");
    if (!cli_load_config(&common, &cfg))
        return 2;
    ap_err err = {0};
    status = 1;
    if (panel_session_open(&s, &cfg, NULL, NULL, 0, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        goto out;
    }
    session_open = true;
    store_panel row = {0};
    ap_status rc = store_panel_get(s.st, s.tenant_id, panel_id, &row, &err);
    if (rc == AP_NOTFOUND && live_panel_tenant(s.st, panel_id, s.tenant_id, &err) == AP_OK)
        rc = store_panel_get(s.st, s.tenant_id, panel_id, &row, &err);
    if (rc != AP_OK) {
        fprintf(stderr, "askpanel: panel %s: %s\n", panel_id, err.msg);
        goto out;
    }
    bool running = strcmp(row.status, "running") == 0 || strcmp(row.status, "queued") == 0 ||
                   strcmp(row.status, "created") == 0;
    store_panel_free(&row);
    panel_sub *sub = NULL;
    if (panel_engine_subscribe(s.engine, s.tenant_id, panel_id, 65536, NULL, NULL, &sub, &err) !=
        AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        goto out;
    }
    /* A running panel continues from its checkpoint; a waiting one continues when the
     * follower submits the input read from stdin; a finished one is only printed. */
    if (running && panel_engine_resume(s.engine, s.tenant_id, panel_id, &err) != AP_OK) {
        fprintf(stderr, "askpanel: cannot resume %s: %s\n", panel_id, err.msg);
        panel_engine_unsubscribe(s.engine, sub);
        goto out;
    }
    status = panel_session_follow(&s, sub, panel_id, 0, json, stdin, stdout, stderr);
    panel_engine_unsubscribe(s.engine, sub);
out:
    if (session_open)
        panel_session_close(&s);
    config_free(&cfg);
    return status;
}
