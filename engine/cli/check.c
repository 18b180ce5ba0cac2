/* askpanel check FILE.lua: compile, check the contract, dry-run on the simulated provider. */
#include "cli/cli.h"

#include "core/jsonx.h"
#include "panel/roster.h"
#include "panel/session.h"
#include "script/params.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK_FILE_MAX (1024 * 1024)

static const char sample_ballots[] =
    "[{\"expert\":\"a\",\"name\":\"A\",\"position\":\"yes\",\"confidence\":0.8,\"weight\":1,"
    "\"ranking\":[\"x\",\"y\",\"z\"],\"approvals\":[\"x\"],\"estimate\":10,"
    "\"distribution\":{\"x\":0.6,\"y\":0.4},\"reason\":\"r\"},"
    "{\"expert\":\"b\",\"name\":\"B\",\"position\":\"no\",\"confidence\":0.6,\"weight\":1,"
    "\"ranking\":[\"y\",\"x\",\"z\"],\"approvals\":[\"y\",\"x\"],\"estimate\":14,"
    "\"distribution\":{\"x\":0.3,\"y\":0.7},\"reason\":\"r\"},"
    "{\"expert\":\"c\",\"name\":\"C\",\"position\":\"yes\",\"confidence\":0.7,\"weight\":2,"
    "\"ranking\":[\"x\",\"z\",\"y\"],\"approvals\":[\"x\",\"z\"],\"estimate\":12,"
    "\"distribution\":{\"x\":0.5,\"y\":0.5},\"reason\":\"r\"}]";

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *data = malloc(CHECK_FILE_MAX + 1);
    size_t n = data != NULL ? fread(data, 1, CHECK_FILE_MAX + 1, f) : 0;
    fclose(f);
    if (data == NULL || n > CHECK_FILE_MAX) {
        free(data);
        return NULL;
    }
    data[n] = '\0';
    *len = n;
    return data;
}

/* Messages name the chunk "<name>.lua:<line>:"; show the path the admin gave instead. */
static void print_error(const char *path, const char *name, const char *msg)
{
    char chunk[160];
    snprintf(chunk, sizeof chunk, "%s.lua:", name);
    const char *m = msg;
    const char *hit = strstr(msg, chunk);
    if (hit != NULL) {
        fprintf(stderr, "%.*s%s:%s\n", (int)(hit - msg), msg, path, hit + strlen(chunk));
        return;
    }
    snprintf(chunk, sizeof chunk, "consensus/%s.lua:", name);
    hit = strstr(msg, chunk);
    if (hit != NULL) {
        fprintf(stderr, "%.*s%s:%s\n", (int)(hit - msg), msg, path, hit + strlen(chunk));
        return;
    }
    fprintf(stderr, "%s: %s\n", path, m);
}

/* Runs the strategy once against the simulated provider in a throwaway store. */
static int dry_run(const config *base, const char *path, const char *name, const script_entry *en)
{
    char dir[] = "/tmp/askpanel-check-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "%s: cannot create a scratch directory for the dry run\n", path);
        return 1;
    }
    char url[128], dbpath[96];
    snprintf(dbpath, sizeof dbpath, "%s/check.db", dir);
    snprintf(url, sizeof url, "sqlite:%s", dbpath);
    config cfg = *base;
    cfg.store = url;
    panel_session s = {0};
    ap_err err = {0};
    int status = 1;
    char *params = NULL;
    store_panel out = {0};
    panel_sub *sub = NULL;
    FILE *devnull = fopen("/dev/null", "w");
    FILE *empty = tmpfile();
    if (devnull == NULL || empty == NULL)
        goto out;
    /* Canned human answers for hybrid strategies. */
    for (int i = 0; i < 16; i++)
        fputs("{\"text\":\"I agree with the panel\",\"position\":\"proceed\","
              "\"confidence\":0.8}\n",
              empty);
    rewind(empty);
    if (panel_session_open(&s, &cfg, "simulated", NULL, 1, &err) != AP_OK) {
        fprintf(stderr, "%s: dry run: %s\n", path, err.msg);
        goto out;
    }
    if (script_params_apply(en->info.params_json, NULL, &params, &err) != AP_OK) {
        fprintf(stderr, "%s: dry run: %s\n", path, err.msg);
        goto out;
    }
    store_script sc = {.kind = STORE_SCRIPT_STRATEGY,
                       .name = en->name,
                       .version = (char *)en->version,
                       .source = en->source,
                       .origin = "file"};
    memcpy(sc.tenant_id, s.tenant_id, sizeof sc.tenant_id);
    store_panel in = {.question = "Should we launch in Europe first or in the United States?",
                      .strategy = en->name,
                      .strategy_version = (char *)en->version,
                      .consensus = en->info.consensus,
                      .params = params,
                      .experts = (char *)panel_roster_default_json(),
                      .status = "created"};
    if (store_script_put(s.st, s.tenant_id, &sc, false, &err) != AP_OK ||
        store_panel_create(s.st, s.tenant_id, &in, &out, &err) != AP_OK ||
        panel_engine_subscribe(s.engine, s.tenant_id, out.id, 65536, NULL, NULL, &sub, &err) !=
            AP_OK ||
        panel_engine_execute(s.engine, s.tenant_id, out.id, &err) != AP_OK) {
        fprintf(stderr, "%s: dry run: %s\n", path, err.msg);
        goto out;
    }
    /* Human input requests get canned answers; the events go nowhere. */
    status = panel_session_follow(&s, sub, out.id, 0, true, empty, devnull);
    if (status == PANEL_EXIT_AWAITING_INPUT) {
        status = 0;
        printf("  dry run stopped at a human input request (as expected for hybrid panels)\n");
    } else if (status != 0) {
        store_panel row = {0};
        if (store_panel_get(s.st, s.tenant_id, out.id, &row, &err) == AP_OK && row.error != NULL)
            print_error(path, name, row.error);
        else
            fprintf(stderr, "%s: dry run failed\n", path);
        store_panel_free(&row);
    } else {
        printf("  dry run on the simulated provider: completed\n");
    }
out:
    panel_engine_unsubscribe(s.engine, sub);
    if (s.engine != NULL || s.st != NULL)
        panel_session_close(&s);
    store_panel_free(&out);
    free(params);
    if (devnull != NULL)
        fclose(devnull);
    if (empty != NULL)
        fclose(empty);
    unlink(dbpath);
    char side[128];
    snprintf(side, sizeof side, "%s-wal", dbpath);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", dbpath);
    unlink(side);
    rmdir(dir);
    return status;
}

int cli_check(int argc, char **argv)
{
    cli_common common = {0};
    config cfg = {0};
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        int c = cli_common_option(&common, argc, argv, &i);
        if (c < 0)
            return 2;
        if (c > 0)
            continue;
        if (path != NULL || argv[i][0] == '-')
            return cli_usage_error("check: unexpected argument %s", argv[i]);
        path = argv[i];
    }
    if (path == NULL)
        return cli_usage_error("check: needs a script file");
    if (!cli_load_config(&common, &cfg))
        return 2;
    int status = 1;
    script_registry *reg = NULL;
    script_entry en = {0};
    char *src = NULL;
    size_t len = 0;
    char name[128];
    const char *b = strrchr(path, '/');
    b = b != NULL ? b + 1 : path;
    size_t bl = strlen(b);
    if (bl > 4 && strcmp(b + bl - 4, ".lua") == 0)
        bl -= 4;
    snprintf(name, sizeof name, "%.*s", (int)bl, b);
    src = read_file(path, &len);
    if (src == NULL) {
        fprintf(stderr, "%s: cannot read the file (missing, unreadable or over 1 MiB)\n", path);
        goto out;
    }
    script_limits lim;
    script_limits_default(&lim);
    ap_err err = {0};
    if (script_registry_new(&lim, cfg.strategies_dir, cfg.tenants_dir, &reg, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        goto out;
    }
    bool consensus = strstr(path, "consensus/") != NULL;
    ap_status rc = script_registry_validate(reg, consensus ? SCRIPT_CONSENSUS : SCRIPT_STRATEGY,
                                            name, src, len, "file", &en, &err);
    if (rc != AP_OK && !consensus && strstr(err.msg, "returns a function") != NULL) {
        consensus = true;
        rc = script_registry_validate(reg, SCRIPT_CONSENSUS, name, src, len, "file", &en, &err);
    }
    if (rc != AP_OK) {
        print_error(path, name, err.msg);
        goto out;
    }
    if (consensus) {
        char *result = NULL;
        rc = script_consensus_dry_run(&lim, name, src, len, sample_ballots, NULL, &result, &err);
        if (rc != AP_OK) {
            print_error(path, name, err.msg);
            goto out;
        }
        printf("%s: consensus algorithm '%s' (version %.12s) is valid\n", path, name, en.version);
        printf("  dry run on 3 sample ballots: %s\n", result);
        free(result);
        status = 0;
        goto out;
    }
    printf("%s: strategy '%s' (version %.12s) is valid\n", path, name, en.version);
    printf("  start: %s; nodes: %s\n  params: %s\n", en.info.start, en.info.nodes_json,
           en.info.params_json);
    fflush(stdout);
    status = dry_run(&cfg, path, name, &en);
out:
    script_entry_free(&en);
    script_registry_free(reg);
    free(src);
    config_free(&cfg);
    return status;
}
