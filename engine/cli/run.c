/* askpanel run: one panel in-process, printed as it happens. */
#include "cli/cli.h"

#include "core/fileio.h"
#include "core/jsonx.h"
#include "panel/roster.h"
#include "panel/session.h"
#include "script/host.h"
#include "script/params.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARAMS 64
#define FILE_MAX (4 * 1024 * 1024)

static bool is_file_arg(const char *s)
{
    size_t n = strlen(s);
    return strchr(s, '/') != NULL || (n > 4 && strcmp(s + n - 4, ".lua") == 0);
}

/* "dir/name.lua" -> "name" into out. */
static void base_name(const char *path, char *out, size_t cap)
{
    const char *b = strrchr(path, '/');
    b = b != NULL ? b + 1 : path;
    size_t n = strlen(b);
    if (n > 4 && strcmp(b + n - 4, ".lua") == 0)
        n -= 4;
    snprintf(out, cap, "%.*s", (int)n, b);
}

typedef struct run_args {
    const char *strategy, *question, *experts, *consensus, *provider, *model;
    const char *pnames[MAX_PARAMS], *pvalues[MAX_PARAMS];
    char *pbuf[MAX_PARAMS];
    size_t nparams;
    uint64_t seed;
    bool json;
} run_args;

static int parse(int argc, char **argv, run_args *a, cli_common *common)
{
    for (int i = 1; i < argc; i++) {
        int c = cli_common_option(common, argc, argv, &i);
        if (c < 0)
            return 2;
        if (c > 0)
            continue;
        const char *arg = argv[i];
        const char **dst = NULL;
        if (strcmp(arg, "--json") == 0) {
            a->json = true;
            continue;
        }
        if (strcmp(arg, "--strategy") == 0)
            dst = &a->strategy;
        else if (strcmp(arg, "--question") == 0)
            dst = &a->question;
        else if (strcmp(arg, "--experts") == 0)
            dst = &a->experts;
        else if (strcmp(arg, "--consensus") == 0)
            dst = &a->consensus;
        else if (strcmp(arg, "--provider") == 0)
            dst = &a->provider;
        else if (strcmp(arg, "--model") == 0)
            dst = &a->model;
        else if (strcmp(arg, "--seed") != 0 && strcmp(arg, "--param") != 0)
            return cli_usage_error("run: unknown option %s", arg);
        if (i + 1 >= argc)
            return cli_usage_error("run: %s needs a value", arg);
        const char *value = argv[++i];
        if (dst != NULL) {
            *dst = value;
        } else if (strcmp(arg, "--seed") == 0) {
            /* strtoull takes "-1" (as 2^64 - 1) and clamps what overflows: digits only */
            char *end = NULL;
            errno = 0;
            a->seed = strtoull(value, &end, 10);
            if (value[0] < '0' || value[0] > '9' || end == value || *end != '\0' || errno != 0)
                return cli_usage_error("run: --seed needs a whole number from 0 to 2^64 - 1");
        } else {
            const char *eq = strchr(value, '=');
            if (eq == NULL || eq == value)
                return cli_usage_error("run: --param needs name=value (got \"%s\")", value);
            if (a->nparams >= MAX_PARAMS)
                return cli_usage_error("run: at most %d --param", MAX_PARAMS);
            char *name = strndup(value, (size_t)(eq - value));
            if (name == NULL)
                return 1;
            a->pbuf[a->nparams] = name;
            a->pnames[a->nparams] = name;
            a->pvalues[a->nparams] = eq + 1;
            a->nparams++;
        }
    }
    if (a->strategy == NULL || a->question == NULL)
        return cli_usage_error("run: --strategy and --question are required");
    /* the store accounts usage per model name: one it would refuse is run and never billed */
    if (a->model != NULL && (a->model[0] == '\0' || strlen(a->model) > SCRIPT_MODEL_NAME_MAX))
        return cli_usage_error("run: --model needs a model name of 1 to %d bytes",
                               SCRIPT_MODEL_NAME_MAX);
    return 0;
}

/* Creates the panel row: by name through the engine (tenant override -> tenant dir ->
 * built-in), or from a file pinned by its content hash. */
static ap_status create_panel(panel_session *s, const run_args *a, const char *experts,
                              char *panel_id, ap_err *err)
{
    script_entry en = {0};
    char *params = NULL, *applied = NULL, *src = NULL;
    store_panel out = {0};
    char name[128];
    ap_status rc;
    bool file = is_file_arg(a->strategy);
    if (file) {
        size_t len = 0;
        base_name(a->strategy, name, sizeof name);
        /* an unreadable file given on the command line is the caller's to fix: exit 2 */
        if ((rc = fileio_read(a->strategy, FILE_MAX, &src, &len, err)) != AP_OK) {
            rc = rc == AP_NOMEM ? rc : AP_INVALID;
            goto out;
        }
        rc = script_registry_validate(s->reg, SCRIPT_STRATEGY, name, src, len, "file", &en, err);
    } else {
        snprintf(name, sizeof name, "%s", a->strategy);
        rc = panel_engine_resolve_script(s->st, s->reg, s->tenant_id, "cli", SCRIPT_STRATEGY, name,
                                         &en, err);
    }
    if (rc != AP_OK)
        goto out;
    rc = script_params_from_text(en.info.params_json, a->pnames, a->pvalues, a->nparams, &params,
                                 err);
    if (rc == AP_OK)
        rc = script_params_apply(en.info.params_json, params, &applied, err);
    if (rc == AP_OK && a->consensus != NULL) {
        /* as the API does: an algorithm that does not exist is refused before any panel
         * exists, not when the strategy first asks for it, after a paid round */
        script_entry c = {0};
        rc = panel_engine_resolve_script(s->st, s->reg, s->tenant_id, "cli", SCRIPT_CONSENSUS,
                                         a->consensus, &c, err);
        script_entry_free(&c);
    }
    if (rc != AP_OK)
        goto out;
    store_script sc = {.kind = STORE_SCRIPT_STRATEGY,
                       .name = en.name,
                       .version = en.version,
                       .source = en.source,
                       .origin = en.origin};
    memcpy(sc.tenant_id, s->tenant_id, sizeof sc.tenant_id);
    if ((rc = store_script_put(s->st, s->tenant_id, &sc, false, err)) != AP_OK)
        goto out;
    store_panel in = {
        .question = (char *)a->question,
        .strategy = en.name,
        .strategy_version = en.version,
        .consensus = (char *)(a->consensus != NULL ? a->consensus : en.info.consensus),
        .params = params,
        .experts = (char *)experts,
        .status = "created",
    };
    if ((rc = store_panel_create(s->st, s->tenant_id, &in, &out, err)) == AP_OK)
        snprintf(panel_id, STORE_ID_MAX, "%s", out.id);
out:
    store_panel_free(&out);
    script_entry_free(&en);
    free(params);
    free(applied);
    free(src);
    return rc;
}

int cli_run(int argc, char **argv)
{
    run_args a = {0};
    cli_common common = {0};
    config cfg = {0};
    panel_session s = {0};
    char *experts = NULL;
    bool session_open = false;
    int status = parse(argc, argv, &a, &common);
    if (status != 0)
        goto out;
    status = 2;
    if (!cli_load_config(&common, &cfg))
        goto out;
    status = 1;
    if (a.experts != NULL) {
        ap_err rerr = {0};
        size_t experts_len = 0;
        if (fileio_read(a.experts, FILE_MAX, &experts, &experts_len, &rerr) != AP_OK) {
            fprintf(stderr, "askpanel: %s\n", rerr.msg);
            status = 2;
            goto out;
        }
        cJSON *arr = jsonx_parse(experts, experts_len, 32, NULL);
        bool ok = cJSON_IsArray(arr) && cJSON_GetArraySize(arr) > 0;
        cJSON_Delete(arr);
        if (!ok) {
            fprintf(stderr, "askpanel: %s must hold a non-empty JSON array of experts\n",
                    a.experts);
            status = 2;
            goto out;
        }
        /* A roster the panel would refuse at its start is a usage error, caught before any
         * panel exists. */
        if (script_roster_check(experts, &rerr) != AP_OK) {
            fprintf(stderr, "askpanel: %s: %s\n", a.experts, rerr.msg);
            status = 2;
            goto out;
        }
    } else {
        experts = strdup(panel_roster_default_json());
    }
    ap_err err = {0};
    if (panel_session_open(&s, &cfg, a.provider, a.model, a.seed, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        goto out;
    }
    session_open = true;
    char panel_id[STORE_ID_MAX];
    ap_status rc = create_panel(&s, &a, experts, panel_id, &err);
    if (rc != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        status = rc == AP_INVALID || rc == AP_NOTFOUND ? 2 : 1;
        goto out;
    }
    if (!a.json)
        printf("panel %s: %s\n", panel_id, a.question);
    panel_sub *sub = NULL;
    if (panel_engine_subscribe(s.engine, s.tenant_id, panel_id, 65536, NULL, NULL, &sub, &err) !=
            AP_OK ||
        panel_engine_execute(s.engine, s.tenant_id, panel_id, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        panel_engine_unsubscribe(s.engine, sub);
        goto out;
    }
    status = panel_session_follow(&s, sub, panel_id, 0, a.json, stdin, stdout, stderr);
    panel_engine_unsubscribe(s.engine, sub);
out:
    if (session_open)
        panel_session_close(&s);
    for (size_t i = 0; i < a.nparams; i++)
        free(a.pbuf[i]);
    free(experts);
    config_free(&cfg);
    return status;
}
