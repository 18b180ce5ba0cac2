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

/* A string field of expert e within 1..max bytes when present; false with why in err. */
static bool roster_string(const cJSON *e, const char *id, const char *key, size_t max, ap_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, key);
    if (v == NULL)
        return true;
    if (cJSON_IsString(v) && v->valuestring[0] != '\0' && strlen(v->valuestring) <= max)
        return true;
    ap_err_set(err, AP_INVALID, "expert '%.64s': \"%s\" must be a string of 1 to %zu bytes", id,
               key, max);
    return false;
}

/* The fields the engine reads, bounded as the API bounds an inline expert's: a weight counts
 * in every consensus, and a negative one would turn an expert's vote around. */
static bool roster_fields_ok(const cJSON *arr, ap_err *err)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        const char *id = jsonx_string(e, "id");
        if (!cJSON_IsObject(e) || id == NULL || id[0] == '\0') {
            ap_err_set(err, AP_INVALID,
                       cJSON_IsObject(e) ? "every expert needs an id"
                                         : "every expert must be a JSON object");
            return false;
        }
        if (!roster_string(e, id, "name", 200, err) || !roster_string(e, id, "role", 200, err) ||
            !roster_string(e, id, "persona", 4000, err) ||
            !roster_string(e, id, "model", SCRIPT_MODEL_NAME_MAX, err))
            return false;
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(e, "weight");
        if (w != NULL &&
            (!cJSON_IsNumber(w) || !(w->valuedouble >= 0.001) || !(w->valuedouble <= 100.0))) {
            ap_err_set(err, AP_INVALID,
                       "expert '%.64s': \"weight\" must be a number from 0.001 to 100", id);
            return false;
        }
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(e, "expertise");
        bool ok = x == NULL || (cJSON_IsArray(x) && cJSON_GetArraySize(x) <= 32);
        for (const cJSON *t = ok && x != NULL ? x->child : NULL; t != NULL; t = t->next)
            ok = ok && cJSON_IsString(t) && strlen(t->valuestring) <= 120;
        if (!ok) {
            ap_err_set(
                err, AP_INVALID,
                "expert '%.64s': \"expertise\" must be at most 32 strings of up to 120 bytes", id);
            return false;
        }
    }
    return true;
}

/* Reads the roster file at path into *out (caller frees), as the compact JSON the store keeps:
 * a non-empty array of experts the panel's start would take. A UTF-8 byte order mark, which
 * some editors write, is skipped. */
static ap_status read_roster(const char *path, char **out, ap_err *err)
{
    char *text = NULL;
    size_t len = 0;
    cJSON *arr = NULL;
    *out = NULL;
    ap_status rc = fileio_read(path, FILE_MAX, &text, &len, err);
    if (rc != AP_OK)
        goto out;
    size_t skip = len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
    arr = jsonx_parse(text + skip, len - skip, 32, NULL);
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) == 0) {
        rc = ap_err_set(err, AP_INVALID, "it must hold a non-empty JSON array of experts");
        goto out;
    }
    if (!roster_fields_ok(arr, err)) {
        rc = AP_INVALID;
        goto out;
    }
    if ((*out = jsonx_print(arr)) == NULL) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    /* a roster the panel would refuse at its start is refused before any panel exists */
    rc = script_roster_check(*out, err);
out:
    if (rc != AP_OK) {
        free(*out);
        *out = NULL;
    }
    cJSON_Delete(arr);
    free(text);
    return rc;
}

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
        ap_status rc = read_roster(a.experts, &experts, &rerr);
        if (rc != AP_OK) {
            fprintf(stderr, "askpanel: %s: %s\n", a.experts, rerr.msg);
            status = rc == AP_NOMEM ? 1 : 2;
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
