/* askpanel check FILE.lua: compile, check the contract, dry-run on the simulated provider. */
#include "cli/cli.h"

#include "core/fileio.h"
#include "core/jsonx.h"
#include "panel/dryrun.h"

#include <stdlib.h>
#include <string.h>

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

/* Messages name the chunk "<name>.lua:<line>:"; show the path the admin gave instead. */
static void print_error(const char *path, const char *name, const char *msg)
{
    char chunk[160];
    const char *m = msg;
    /* the longer chunk name first: "bad.lua:" is inside "consensus/bad.lua:" */
    static const char *const dirs[] = {"consensus/", ""};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        snprintf(chunk, sizeof chunk, "%s%s.lua:", dirs[i], name);
        const char *hit = strstr(msg, chunk);
        if (hit != NULL) {
            fprintf(stderr, "%.*s%s:%s\n", (int)(hit - msg), msg, path, hit + strlen(chunk));
            return;
        }
    }
    fprintf(stderr, "%s: %s\n", path, m);
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
    ap_err rerr = {0};
    if (fileio_read(path, CHECK_FILE_MAX, &src, &len, &rerr) != AP_OK) {
        fprintf(stderr, "%s\n", rerr.msg);
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
        script_limits dry;
        script_limits_for_check(&lim, &dry);
        rc = script_consensus_dry_run(&dry, name, src, len, sample_ballots, NULL, &result, &err);
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
    /* "valid" only once the dry run passed too: a script that compiles but fails its first
     * run is not, and two verdicts would contradict each other */
    printf("%s: strategy '%s' (version %.12s) compiles and follows the contract\n", path, name,
           en.version);
    printf("  start: %s; nodes: %s\n  params: %s\n", en.info.start, en.info.nodes_json,
           en.info.params_json);
    fflush(stdout);
    panel_dry_result dry;
    if (panel_dry_run(&cfg, &en, &dry, &err) != AP_OK) {
        fprintf(stderr, "%s: the dry run on the simulated provider failed:\n", path);
        print_error(path, name, err.msg);
        goto out;
    }
    printf("  dry run on the simulated provider: %s after %d nodes\n",
           dry.completed ? "completed" : "stopped at a human input request", dry.nodes);
    printf("%s: strategy '%s' is valid\n", path, name);
    status = 0;
out:
    script_entry_free(&en);
    script_registry_free(reg);
    free(src);
    config_free(&cfg);
    return status;
}
