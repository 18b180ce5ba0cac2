/* seed.c - `askpanel seed-demo`: the example tenants, one JSON file each in config/tenants/, with
 * their branding, feature flags, limits and expert rosters, and an admin key printed once. */
#include "cli/cli.h"

#include "core/fileio.h"
#include "core/jsonx.h"
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TENANT_FILE_MAX (256 * 1024)

static cJSON *read_json(const char *path, ap_err *err)
{
    char *text = NULL;
    size_t n = 0;
    if (fileio_read(path, TENANT_FILE_MAX, &text, &n, err) != AP_OK)
        return NULL;
    ap_err perr;
    cJSON *root = jsonx_parse(text, n, 16, &perr);
    if (root == NULL)
        ap_err_set(err, AP_INVALID, "%s: %s", path, perr.msg);
    else if (!cJSON_IsObject(root)) {
        ap_err_set(err, AP_INVALID, "%s: a tenant file is a JSON object", path);
        cJSON_Delete(root);
        root = NULL;
    }
    free(text);
    return root;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The display config a frontend reads from GET /v1/tenant: everything but slug, name and
 * the expert roster. Caller frees. */
static char *tenant_config(const cJSON *file)
{
    cJSON *cfg = cJSON_CreateObject();
    const char *keep[] = {"branding", "flags", "limits", "default_strategy"};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(file, keep[i]);
        if (v != NULL)
            cJSON_AddItemToObject(cfg, keep[i], cJSON_Duplicate(v, true));
    }
    char *text = jsonx_print(cfg);
    cJSON_Delete(cfg);
    return text;
}

static ap_status seed_experts(store *st, const char *tenant_id, const cJSON *experts, ap_err *err)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, experts)
    {
        char *expertise = jsonx_print(cJSON_GetObjectItemCaseSensitive(e, "expertise"));
        store_expert in = {
            .name = (char *)jsonx_string(e, "name"),
            .role = (char *)jsonx_string(e, "role"),
            .persona = (char *)jsonx_string(e, "persona"),
            .model = (char *)jsonx_string(e, "model"),
            .expertise = expertise != NULL ? expertise : "[]",
            .weight = jsonx_number(e, "weight", 1.0),
        };
        ap_status rc = in.name != NULL && in.role != NULL
                           ? store_expert_create(st, tenant_id, &in, NULL, err)
                           : ap_err_set(err, AP_INVALID, "an expert needs a name and a role");
        cJSON_free(expertise);
        if (rc != AP_OK)
            return rc;
    }
    return AP_OK;
}

/* Creates one tenant from its file unless its slug exists; prints its key. */
static ap_status seed_one(store *st, const char *path, bool quiet, ap_err *err)
{
    ap_status rc = AP_OK;
    store_tenant t = {0};
    char *cfg = NULL;
    cJSON *file = read_json(path, err);
    if (file == NULL)
        return err->status;
    const char *slug = jsonx_string(file, "slug"), *name = jsonx_string(file, "name");
    if (slug == NULL || name == NULL) {
        rc = ap_err_set(err, AP_INVALID, "%s: \"slug\" and \"name\" are required", path);
        goto out;
    }
    if (store_tenant_by_slug(st, slug, &t, err) == AP_OK) {
        if (!quiet)
            printf("%-20s exists, skipped\n", slug);
        goto out;
    }
    cfg = tenant_config(file);
    char key[128];
    store_key k;
    if ((rc = store_tenant_create(st, slug, name, cfg, &t, err)) != AP_OK ||
        (rc = seed_experts(st, t.id, cJSON_GetObjectItemCaseSensitive(file, "experts"), err)) !=
            AP_OK ||
        (rc = store_key_create(st, t.id, STORE_ROLE_ADMIN, key, sizeof key, &k, err)) != AP_OK)
        goto out;
    printf("%-20s tenant %s  admin key %s\n", slug, t.id, key);
out:
    free(cfg);
    store_tenant_free(&t);
    cJSON_Delete(file);
    return rc;
}

int cli_seed_demo(int argc, char **argv)
{
    cli_common common = {0};
    bool if_empty = false;
    cli_opt opts[] = {{"--if-empty", NULL, &if_empty}};
    int rc = cli_parse(argc, argv, 1, &common, opts, 1, "seed-demo");
    if (rc != 0)
        return rc;
    config cfg;
    if (!cli_load_config(&common, &cfg))
        return 1;
    int status = 1;
    store *st = NULL;
    DIR *dir = NULL;
    char *names[64];
    size_t n = 0;
    ap_err err = {0};
    if (!cli_open_store(&cfg, &st))
        goto out;
    dir = opendir(cfg.tenants_dir);
    if (dir == NULL) {
        fprintf(stderr, "askpanel: %s: %s\n", cfg.tenants_dir, strerror(errno));
        goto out;
    }
    for (struct dirent *de; (de = readdir(dir)) != NULL && n < 64;) {
        size_t len = strlen(de->d_name);
        if (len > 5 && strcmp(de->d_name + len - 5, ".json") == 0 && de->d_name[0] != '.') {
            names[n] = strdup(de->d_name);
            if (names[n] != NULL)
                n++;
        }
    }
    qsort(names, n, sizeof names[0], by_name);
    status = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", cfg.tenants_dir, names[i]);
        if (seed_one(st, path, if_empty, &err) != AP_OK) {
            fprintf(stderr, "askpanel: %s\n", err.msg);
            status = 1;
            break;
        }
    }
    if (status == 0 && !if_empty)
        printf("(keys are shown once; `askpanel key create --tenant SLUG` makes more)\n");
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    if (dir != NULL)
        closedir(dir);
    store_close(st);
    config_free(&cfg);
    return status;
}
