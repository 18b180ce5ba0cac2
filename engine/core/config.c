#include "core/config.h"

#include "core/fileio.h"
#include "core/jsonx.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_FILE_MAX (1024 * 1024)
#define CONFIG_DEFAULT_PATH "config/askpanel.json"

typedef enum { CFG_STRING, CFG_INT, CFG_JSON } cfg_type;

typedef struct cfg_key {
    const char *path;
    cfg_type type;
    size_t offset;
    int64_t min, max; /* CFG_INT bounds; CFG_STRING: min length, max length */
    const char *dflt; /* textual default */
} cfg_key;

#define STR(path, field, minlen, maxlen, d)                                                        \
    {                                                                                              \
        path, CFG_STRING, offsetof(config, field), minlen, maxlen, d                               \
    }
#define INT(path, field, lo, hi, d)                                                                \
    {                                                                                              \
        path, CFG_INT, offsetof(config, field), lo, hi, d                                          \
    }

static const cfg_key keys[] = {
    STR("listen", listen, 3, 255, "127.0.0.1:8080"),
    STR("store", store, 1, 4096, "sqlite:data/askpanel.db"),
    STR("cache", cache, 1, 4096, "memory"),
    STR("log_level", log_level, 4, 5, "info"),
    STR("operator_key", operator_key, 0, 512, ""),
    STR("strategies_dir", strategies_dir, 1, 4096, "strategies"),
    STR("tenants_dir", tenants_dir, 1, 4096, "config/tenants"),
    STR("web_dir", web_dir, 1, 4096, "web"),
    INT("http.threads", http_threads, 0, 256, "0"),
    INT("http.max_body_bytes", http_max_body_bytes, 1024, 64 * 1024 * 1024, "1048576"),
    INT("http.max_connections", http_max_connections, 16, 1000000, "16384"),
    INT("http.connection_timeout_s", http_connection_timeout_s, 1, 86400, "60"),
    INT("http.shutdown_grace_ms", http_shutdown_grace_ms, 0, 600000, "4000"),
    INT("http.max_streams_per_tenant", http_max_streams_per_tenant, 1, 1000000, "10000"),
    STR("http.stream_token_secret", http_stream_token_secret, 0, 512, ""),
    INT("cache_entries", cache_memory_entries, 0, 100000000, "65536"),
    INT("runtime.runners", runtime_runners, 0, 256, "0"),
    INT("runtime.lua_memory_mb", runtime_lua_memory_mb, 1, 65536, "64"),
    INT("runtime.node_instructions", runtime_node_instructions, 1000, INT64_C(1) << 40,
        "200000000"),
    INT("runtime.node_timeout_ms", runtime_node_timeout_ms, 10, 86400000, "30000"),
    INT("runtime.max_steps", runtime_max_steps, 1, 1000000, "500"),
    INT("runtime.lease_ms", runtime_lease_ms, 1000, 3600000, "30000"),
    INT("runtime.writer_gather_ms", runtime_writer_gather_ms, 0, 1000, "2"),
    {"llm", CFG_JSON, offsetof(config, llm), 0, 0, NULL},
};
#define NKEYS (sizeof keys / sizeof keys[0])

/* Top-level objects of the file whose members are keys of the table. */
static const char *const groups[] = {"http", "runtime"};

static const cfg_key *find_key(const char *path)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].path, path) == 0)
            return &keys[i];
    return NULL;
}

static bool is_group(const char *name)
{
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++)
        if (strcmp(groups[i], name) == 0)
            return true;
    return false;
}

static char **str_field(config *c, const cfg_key *k)
{
    return (char **)(void *)((char *)c + k->offset);
}

static int64_t *int_field(config *c, const cfg_key *k)
{
    return (int64_t *)(void *)((char *)c + k->offset);
}

static cJSON **json_field(config *c, const cfg_key *k)
{
    return (cJSON **)(void *)((char *)c + k->offset);
}

static ap_status check_string(const cfg_key *k, const char *v, const char *origin, ap_err *err)
{
    size_t n = strlen(v);
    if ((int64_t)n < k->min || (int64_t)n > k->max)
        return ap_err_set(err, AP_INVALID, "%s: \"%s\" must be %lld to %lld characters long",
                          origin, k->path, (long long)k->min, (long long)k->max);
    if (strcmp(k->path, "log_level") == 0 && strcmp(v, "debug") && strcmp(v, "info") &&
        strcmp(v, "warn") && strcmp(v, "error"))
        return ap_err_set(err, AP_INVALID, "%s: \"log_level\" must be debug, info, warn or error",
                          origin);
    return AP_OK;
}

static ap_status set_string(config *c, const cfg_key *k, const char *v, const char *origin,
                            ap_err *err)
{
    ap_status rc = check_string(k, v, origin, err);
    if (rc != AP_OK)
        return rc;
    char *copy = strdup(v);
    if (copy == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    char **f = str_field(c, k);
    free(*f);
    *f = copy;
    return AP_OK;
}

static ap_status set_int(config *c, const cfg_key *k, int64_t v, const char *origin, ap_err *err)
{
    if (v < k->min || v > k->max)
        return ap_err_set(err, AP_INVALID, "%s: \"%s\" must be between %lld and %lld, got %lld",
                          origin, k->path, (long long)k->min, (long long)k->max, (long long)v);
    *int_field(c, k) = v;
    return AP_OK;
}

static ap_status parse_int(const char *text, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0')
        return AP_INVALID;
    *out = v;
    return AP_OK;
}

ap_status config_set(config *c, const char *key, const char *value, const char *origin, ap_err *err)
{
    const cfg_key *k = find_key(key);
    if (k == NULL)
        return ap_err_set(err, AP_INVALID, "%s: unknown key \"%s\"", origin, key);
    switch (k->type) {
    case CFG_STRING:
        return set_string(c, k, value, origin, err);
    case CFG_INT: {
        int64_t v;
        if (parse_int(value, &v) != AP_OK)
            return ap_err_set(err, AP_INVALID, "%s: \"%s\" must be an integer, got \"%s\"", origin,
                              key, value);
        return set_int(c, k, v, origin, err);
    }
    case CFG_JSON: {
        ap_err perr;
        cJSON *j = jsonx_parse(value, strlen(value), 32, &perr);
        if (j == NULL)
            return ap_err_set(err, AP_INVALID, "%s: \"%s\": %s", origin, key, perr.msg);
        cJSON **f = json_field(c, k);
        cJSON_Delete(*f);
        *f = j;
        return AP_OK;
    }
    }
    return AP_ERROR;
}

ap_status config_defaults(config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].dflt == NULL)
            continue;
        ap_status rc = config_set(c, keys[i].path, keys[i].dflt, "defaults", NULL);
        if (rc != AP_OK)
            return rc;
    }
    return AP_OK;
}

static ap_status apply_member(config *c, const char *path, const cJSON *v, const char *file,
                              ap_err *err)
{
    const cfg_key *k = find_key(path);
    if (k == NULL)
        return ap_err_set(err, AP_INVALID, "%s: unknown key \"%s\"", file, path);
    switch (k->type) {
    case CFG_STRING:
        if (!cJSON_IsString(v))
            return ap_err_set(err, AP_INVALID, "%s: \"%s\" must be a string", file, path);
        return set_string(c, k, v->valuestring, file, err);
    case CFG_INT: {
        double d = cJSON_IsNumber(v) ? v->valuedouble : 0.5;
        if (!cJSON_IsNumber(v) || d != (double)(int64_t)d)
            return ap_err_set(err, AP_INVALID, "%s: \"%s\" must be an integer", file, path);
        return set_int(c, k, (int64_t)d, file, err);
    }
    case CFG_JSON: {
        if (!cJSON_IsObject(v))
            return ap_err_set(err, AP_INVALID, "%s: \"%s\" must be an object", file, path);
        cJSON *copy = cJSON_Duplicate(v, true);
        if (copy == NULL)
            return ap_err_set(err, AP_NOMEM, "out of memory");
        cJSON **f = json_field(c, k);
        cJSON_Delete(*f);
        *f = copy;
        return AP_OK;
    }
    }
    return AP_ERROR;
}

ap_status config_load_file(config *c, const char *path, ap_err *err)
{
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    ap_status rc = fileio_read(path, CONFIG_FILE_MAX, &text, &len, err);
    if (rc != AP_OK)
        goto out;
    ap_err perr;
    root = jsonx_parse(text, len, 32, &perr);
    if (root == NULL) {
        rc = ap_err_set(err, AP_INVALID, "%s: %s", path, perr.msg);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        rc = ap_err_set(err, AP_INVALID, "%s: the config must be a JSON object", path);
        goto out;
    }
    for (const cJSON *m = root->child; m != NULL && rc == AP_OK; m = m->next) {
        if (m->string[0] == '$') /* "$comment" and friends document the file */
            continue;
        if (is_group(m->string)) {
            if (!cJSON_IsObject(m)) {
                rc = ap_err_set(err, AP_INVALID, "%s: \"%s\" must be an object", path, m->string);
                break;
            }
            for (const cJSON *g = m->child; g != NULL && rc == AP_OK; g = g->next) {
                char full[128];
                snprintf(full, sizeof full, "%s.%s", m->string, g->string);
                rc = apply_member(c, full, g, path, err);
            }
        } else {
            rc = apply_member(c, m->string, m, path, err);
        }
    }
    if (rc == AP_OK) {
        char *src = strdup(path);
        if (src == NULL) {
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
            goto out;
        }
        free(c->source);
        c->source = src;
    }
out:
    cJSON_Delete(root);
    free(text);
    return rc;
}

ap_status config_apply_env(config *c, ap_err *err)
{
    for (size_t i = 0; i < NKEYS; i++) {
        char name[128] = "ASKPANEL_";
        size_t o = strlen(name);
        for (const char *p = keys[i].path; *p != '\0' && o < sizeof name - 1; p++)
            name[o++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
        name[o] = '\0';
        const char *v = getenv(name);
        if (v == NULL)
            continue;
        ap_status rc = config_set(c, keys[i].path, v, name, err);
        if (rc != AP_OK)
            return rc;
    }
    return AP_OK;
}

ap_status config_load(config *c, const char *path, ap_err *err)
{
    ap_status rc = config_defaults(c);
    if (rc != AP_OK)
        return ap_err_set(err, rc, "cannot set defaults");
    if (path == NULL)
        path = getenv("ASKPANEL_CONFIG");
    if (path != NULL) {
        rc = config_load_file(c, path, err);
    } else {
        FILE *probe = fopen(CONFIG_DEFAULT_PATH, "rb");
        if (probe != NULL) {
            fclose(probe);
            rc = config_load_file(c, CONFIG_DEFAULT_PATH, err);
        }
    }
    if (rc != AP_OK)
        return rc;
    return config_apply_env(c, err);
}

ap_status config_listen_addr(const config *c, char *host, size_t host_cap, uint16_t *port,
                             ap_err *err)
{
    const char *colon = strrchr(c->listen, ':');
    if (colon == NULL || colon == c->listen || (size_t)(colon - c->listen) >= host_cap)
        return ap_err_set(err, AP_INVALID, "listen: \"%s\" is not host:port", c->listen);
    int64_t p;
    if (parse_int(colon + 1, &p) != AP_OK || p < 0 || p > 65535)
        return ap_err_set(err, AP_INVALID, "listen: \"%s\" has no valid port", c->listen);
    size_t hl = (size_t)(colon - c->listen);
    const char *h = c->listen;
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (uint16_t)p;
    return AP_OK;
}

void config_free(config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type == CFG_STRING) {
            char **f = str_field(c, &keys[i]);
            free(*f);
            *f = NULL;
        } else if (keys[i].type == CFG_JSON) {
            cJSON **f = json_field(c, &keys[i]);
            cJSON_Delete(*f);
            *f = NULL;
        }
    }
    free(c->source);
    c->source = NULL;
}
