/* askpanel resume: continue an interrupted panel of the local "cli" tenant. */
#include "cli/cli.h"

#include "core/ids.h"
#include "panel/session.h"

#include <string.h>

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
    if (store_panel_get(s.st, s.tenant_id, panel_id, &row, &err) != AP_OK) {
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
