/* tenant.c - `askpanel migrate`, `tenant create`, `key create`, `key revoke`: operator tasks
 * that work on the store directly, without a running server. */
#include "cli/cli.h"

#include "core/ids.h"
#include "core/jsonx.h"
#include "store/store.h"

#include <stdio.h>
#include <string.h>

bool cli_open_store(const config *cfg, struct store **out)
{
    ap_err err = {0};
    if (store_open(cfg->store, out, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        return false;
    }
    if (strcmp(store_backend(*out), "sqlite") == 0 && store_migrate(*out, NULL, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        store_close(*out);
        *out = NULL;
        return false;
    }
    return true;
}

static bool parse_role(const char *s, store_role *out)
{
    if (strcmp(s, "member") == 0)
        *out = STORE_ROLE_MEMBER;
    else if (strcmp(s, "admin") == 0)
        *out = STORE_ROLE_ADMIN;
    else
        return false;
    return true;
}

int cli_migrate(int argc, char **argv)
{
    cli_common common = {0};
    int rc = cli_parse(argc, argv, 1, &common, NULL, 0, "migrate");
    if (rc != 0)
        return rc;
    config cfg;
    if (!cli_load_config(&common, &cfg))
        return 1;
    int status = 1;
    store *st = NULL;
    ap_err err = {0};
    int applied = 0;
    if (store_open(cfg.store, &st, &err) != AP_OK || store_migrate(st, &applied, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        goto out;
    }
    printf("%d migration(s) applied; the %s store is up to date\n", applied, store_backend(st));
    status = 0;
out:
    store_close(st);
    config_free(&cfg);
    return status;
}

/* Prints a new key as text or as {"tenant_id","slug","api_key"}. */
static void print_key(const store_tenant *t, const char *key, const store_key *k, bool json)
{
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "tenant_id", t->id);
        cJSON_AddStringToObject(o, "slug", t->slug);
        cJSON_AddStringToObject(o, "api_key", key);
        cJSON_AddStringToObject(o, "key_id", k->id);
        cJSON_AddStringToObject(o, "role", k->role == STORE_ROLE_ADMIN ? "admin" : "member");
        char *text = jsonx_print(o);
        if (text != NULL)
            puts(text);
        cJSON_free(text);
        cJSON_Delete(o);
        return;
    }
    printf("tenant:  %s (%s)\nkey id:  %s\nrole:    %s\napi key: %s\n"
           "(the key is shown once; store it now)\n",
           t->slug, t->id, k->id, k->role == STORE_ROLE_ADMIN ? "admin" : "member", key);
}

int cli_tenant(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "create") != 0)
        return cli_usage_error("tenant: usage: askpanel tenant create --slug SLUG --name NAME "
                               "[--json]");
    cli_common common = {0};
    const char *slug = NULL, *name = NULL;
    bool json = false;
    cli_opt opts[] = {{"--slug", &slug, NULL}, {"--name", &name, NULL}, {"--json", NULL, &json}};
    int rc = cli_parse(argc, argv, 2, &common, opts, 3, "tenant create");
    if (rc != 0)
        return rc;
    if (slug == NULL || name == NULL)
        return cli_usage_error("tenant create: --slug and --name are required");
    config cfg;
    if (!cli_load_config(&common, &cfg))
        return 1;
    int status = 1;
    store *st = NULL;
    store_tenant t = {0};
    store_key k = {0};
    char key[128];
    ap_err err = {0};
    if (!cli_open_store(&cfg, &st))
        goto out;
    if (store_tenant_create(st, slug, name, NULL, &t, &err) != AP_OK ||
        store_key_create(st, t.id, STORE_ROLE_ADMIN, key, sizeof key, &k, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        goto out;
    }
    print_key(&t, key, &k, json);
    status = 0;
out:
    store_tenant_free(&t);
    store_close(st);
    config_free(&cfg);
    return status;
}

static int key_create(int argc, char **argv)
{
    cli_common common = {0};
    const char *tenant = NULL, *role_name = "member";
    bool json = false;
    cli_opt opts[] = {
        {"--tenant", &tenant, NULL}, {"--role", &role_name, NULL}, {"--json", NULL, &json}};
    int rc = cli_parse(argc, argv, 2, &common, opts, 3, "key create");
    if (rc != 0)
        return rc;
    store_role role;
    if (tenant == NULL)
        return cli_usage_error("key create: --tenant SLUG is required");
    if (!parse_role(role_name, &role))
        return cli_usage_error("key create: --role must be member or admin");
    config cfg;
    if (!cli_load_config(&common, &cfg))
        return 1;
    int status = 1;
    store *st = NULL;
    store_tenant t = {0};
    store_key k = {0};
    char key[128];
    ap_err err = {0};
    if (!cli_open_store(&cfg, &st))
        goto out;
    char norm[IDS_UUID_LEN + 1];
    ap_status found = ids_uuid_normalize(tenant, norm) ? store_tenant_get(st, norm, &t, &err)
                                                       : store_tenant_by_slug(st, tenant, &t, &err);
    if (found != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", found == AP_NOTFOUND ? "no such tenant" : err.msg);
        goto out;
    }
    if (store_key_create(st, t.id, role, key, sizeof key, &k, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg);
        goto out;
    }
    print_key(&t, key, &k, json);
    status = 0;
out:
    store_tenant_free(&t);
    store_close(st);
    config_free(&cfg);
    return status;
}

static int key_revoke(int argc, char **argv)
{
    if (argc < 3 || argv[2][0] == '-')
        return cli_usage_error("key revoke: usage: askpanel key revoke KEY_ID");
    cli_common common = {0};
    int rc = cli_parse(argc, argv, 3, &common, NULL, 0, "key revoke");
    if (rc != 0)
        return rc;
    char id[IDS_UUID_LEN + 1];
    if (!ids_uuid_normalize(argv[2], id))
        return cli_usage_error("key revoke: \"%s\" is not a key id (a UUID)", argv[2]);
    config cfg;
    if (!cli_load_config(&common, &cfg))
        return 1;
    int status = 1;
    store *st = NULL;
    ap_err err = {0};
    if (!cli_open_store(&cfg, &st))
        goto out;
    if (store_key_revoke(st, id, &err) != AP_OK) {
        fprintf(stderr, "askpanel: %s\n", err.msg[0] ? err.msg : "no such key");
        goto out;
    }
    printf("key %s revoked\n", id);
    status = 0;
out:
    store_close(st);
    config_free(&cfg);
    return status;
}

int cli_key(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "create") == 0)
        return key_create(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "revoke") == 0)
        return key_revoke(argc, argv);
    return cli_usage_error("key: usage: askpanel key create --tenant SLUG --role member|admin "
                           "[--json] | askpanel key revoke KEY_ID");
}
