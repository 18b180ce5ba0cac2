/* serve.c - `askpanel serve`: the long-running API server.
 *
 * Start-up order matters: configuration, store (migrated or checked), HTTP. Signals are
 * blocked in every thread and taken synchronously here, so handlers never run in signal
 * context: SIGINT/SIGTERM stop gracefully, SIGHUP reloads scripts. */
#include "cli/cli.h"

#include "cache/cache.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/memtune.h"
#include "http/token.h"
#include "http/api.h"
#include "http/ratelimit.h"
#include "http/server.h"
#include "panel/engine.h"
#include "script/registry.h"
#include "store/store.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#define RATELIMIT_TENANTS 4096 /* tenants whose request rate is tracked at once */

static ap_status open_store(const config *cfg, store **out, ap_err *err)
{
    ap_status rc = store_open(cfg->store, out, err);
    if (rc != AP_OK)
        return rc;
    if (strcmp(store_backend(*out), "sqlite") == 0) {
        int applied = 0;
        rc = store_migrate(*out, &applied, err);
        if (rc == AP_OK && applied > 0)
            log_info("applied %d migration(s) to %s", applied, cfg->store);
    } else {
        int pending = 0;
        rc = store_pending_migrations(*out, &pending, err);
        if (rc == AP_OK && pending > 0)
            rc = ap_err_set(err, AP_CONFLICT,
                            "the database has %d pending migration(s); run `askpanel migrate "
                            "--store <owner connection>` first",
                            pending);
    }
    if (rc == AP_OK)
        rc = store_check_isolation(*out, err);
    if (rc != AP_OK) {
        store_close(*out);
        *out = NULL;
    }
    return rc;
}

static unsigned auto_threads(int64_t configured)
{
    if (configured > 0)
        return (unsigned)configured;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

static int wait_for_stop(script_registry *registry)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            size_t changed = 0;
            ap_err err = {0};
            if (script_registry_reload(registry, &changed, &err) == AP_OK)
                log_info("SIGHUP: scripts reloaded, %zu version(s) changed", changed);
            else
                log_warn("SIGHUP: reload failed: %s", err.msg);
            continue;
        }
        return sig;
    }
}

int cli_serve(int argc, char **argv)
{
    cli_common common = {0};
    for (int i = 1; i < argc; i++) {
        int r = cli_common_option(&common, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r == 0)
            return cli_usage_error("serve: unknown option \"%s\"", argv[i]);
    }
    config cfg;
    if (!cli_load_config(&common, &cfg))
        return 1;

    int status = 1;
    ap_err err = {0};
    store *st = NULL;
    cache *ch = NULL;
    script_registry *registry = NULL;
    panel_engine *engine = NULL;
    router *routes = NULL;
    http_server *srv = NULL;
    api_deps deps = {.cfg = &cfg, .started_ms = clock_wall_ms()};

    memtune_server();
    /* Block the signals before any thread starts so every thread inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char host[256];
    uint16_t port;
    if (config_listen_addr(&cfg, host, sizeof host, &port, &err) != AP_OK)
        goto out;
    if (token_init(cfg.http_stream_token_secret, &err) != AP_OK)
        goto out;
    if (open_store(&cfg, &st, &err) != AP_OK)
        goto out;
    deps.store = st;
    if (cache_open(cfg.cache, (size_t)cfg.cache_memory_entries, &ch, &err) != AP_OK)
        goto out;
    deps.cache = ch;
    script_limits lim = {.memory_bytes = (size_t)cfg.runtime_lua_memory_mb * 1024 * 1024,
                         .instructions = cfg.runtime_node_instructions,
                         .timeout_ms = cfg.runtime_node_timeout_ms};
    if (script_registry_new(&lim, cfg.strategies_dir, cfg.tenants_dir, &registry, &err) != AP_OK)
        goto out;
    if (script_registry_watch(registry, &err) != AP_OK)
        log_warn("scripts will reload on SIGHUP only: %s", err.msg);
    deps.registry = registry;
    panel_engine_opts eo = {.cfg = &cfg, .store = st, .registry = registry, .adopt = true};
    if (panel_engine_start(&eo, &engine, &err) != AP_OK)
        goto out;
    deps.engine = engine;
    size_t resumed = 0;
    if (panel_engine_resume_all(engine, &resumed, &err) != AP_OK)
        log_warn("resuming interrupted panels failed: %s", err.msg);
    else if (resumed > 0)
        log_info("resumed %zu interrupted panel(s)", resumed);
    if (api_streams_start(&deps, &err) != AP_OK)
        goto out;
    deps.ratelimit = ratelimit_new(RATELIMIT_TENANTS);
    if (deps.ratelimit == NULL) {
        ap_err_set(&err, AP_NOMEM, "out of memory");
        goto out;
    }
    routes = router_new();
    if (routes == NULL) {
        ap_err_set(&err, AP_NOMEM, "out of memory");
        goto out;
    }
    if (api_register(routes, &err) != AP_OK)
        goto out;
    http_server_opts opts = {
        .host = host,
        .port = port,
        .threads = auto_threads(cfg.http_threads),
        .max_body = (size_t)cfg.http_max_body_bytes,
        .max_connections = (unsigned)cfg.http_max_connections,
        .connection_timeout_s = (unsigned)cfg.http_connection_timeout_s,
    };
    if (http_server_start(&opts, routes, api_authenticate, &deps, &srv, &err) != AP_OK)
        goto out;
    deps.server = srv;
    log_info("askpanel %s listening on http://%s:%u (store %s, cache %s, %u threads)", AP_VERSION,
             host, (unsigned)http_server_port(srv), store_backend(st), cache_backend(ch),
             opts.threads);

    int sig = wait_for_stop(registry);
    log_info("%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    http_server_stop(srv, cfg.http_shutdown_grace_ms);
    srv = NULL;
    status = 0;
out:
    if (status != 0)
        fprintf(stderr, "askpanel: %s\n", err.msg);
    http_server_stop(srv, 0);
    api_streams_stop(&deps);
    panel_engine_stop(engine);
    script_registry_free(registry);
    router_free(routes);
    ratelimit_free(deps.ratelimit);
    cache_close(ch);
    store_close(st);
    config_free(&cfg);
    if (status == 0)
        log_info("stopped");
    return status;
}
