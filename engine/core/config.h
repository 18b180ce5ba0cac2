/* config.h - the engine's configuration: defaults <- JSON file <- ASKPANEL_* env <- CLI flags.
 *
 * Every key is declared once in a table in config.c with its type and bounds; the same table
 * drives the file parser, the environment names (ASKPANEL_ + upper-case path with '.' -> '_',
 * e.g. http.max_body_bytes -> ASKPANEL_HTTP_MAX_BODY_BYTES) and `config_set` for CLI flags.
 * Unknown keys, wrong types and impossible values are errors naming the key and the source. */
#ifndef AP_CONFIG_H
#define AP_CONFIG_H

#include "core/status.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct config {
    char *source; /* the file loaded, or NULL: defaults only */
    char *listen; /* host:port */
    char *store;  /* store URL */
    char *cache;  /* "memory" or redis://... */
    char *log_level;
    char *operator_key; /* "" disables operator routes */
    char *strategies_dir;
    char *tenants_dir;
    char *web_dir;
    int64_t http_threads; /* 0: one per core */
    int64_t http_max_body_bytes;
    int64_t http_max_connections;
    int64_t http_connection_timeout_s;
    int64_t http_shutdown_grace_ms;
    int64_t http_max_streams_per_tenant;
    char *http_stream_token_secret; /* "": drawn per process */
    int64_t cache_memory_entries;
    int64_t runtime_runners; /* 0: one per core */
    int64_t runtime_lua_memory_mb;
    int64_t runtime_node_instructions;
    int64_t runtime_node_timeout_ms;
    int64_t runtime_max_steps;
    int64_t runtime_lease_ms;         /* a running panel's lease; renewed every third of it */
    int64_t runtime_writer_gather_ms; /* the event writer commits at most once per this */
    cJSON *llm; /* providers, models and prices; validated by the llm module. Owned. */
} config;

/* Fills c with the built-in defaults (embedded: SQLite, in-process cache, simulated LLM). */
ap_status config_defaults(config *c);

/* Merges a JSON file over c. AP_NOTFOUND when the file cannot be read. */
ap_status config_load_file(config *c, const char *path, ap_err *err);

/* Applies ASKPANEL_* environment variables over c. */
ap_status config_apply_env(config *c, ap_err *err);

/* Sets one key from text (as from a CLI flag or the environment); origin names the source
 * in error messages (e.g. "--listen"). */
ap_status config_set(config *c, const char *key, const char *value, const char *origin,
                     ap_err *err);

/* defaults + file (path, or $ASKPANEL_CONFIG, or config/askpanel.json when it exists) + env. */
ap_status config_load(config *c, const char *path, ap_err *err);

/* Splits c->listen into host and port; AP_INVALID when malformed. */
ap_status config_listen_addr(const config *c, char *host, size_t host_cap, uint16_t *port,
                             ap_err *err);

/* Frees everything c owns; c may be NULL. */
void config_free(config *c);

#endif
