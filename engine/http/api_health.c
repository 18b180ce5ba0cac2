#include "core/buf.h"
#include "core/clock.h"
#include "core/embed.h"
#include "core/log.h"
#include "http/api.h"
#include "panel/engine.h"
#include "store/store.h"

void api_health(http_request *req, void *app)
{
    const api_deps *d = app;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "status", "ok");
    cJSON_AddStringToObject(body, "version", AP_VERSION);
    cJSON_AddNumberToObject(body, "uptime_s", (double)(clock_wall_ms() - d->started_ms) / 1000.0);
    http_reply_json(req, 200, body);
}

void api_ready(http_request *req, void *app)
{
    const api_deps *d = app;
    ap_err err = {0};
    if (d->store == NULL || store_ping(d->store, &err) != AP_OK) {
        /* The reason goes to the log, not to an unauthenticated caller. */
        log_warn("not ready: the store does not answer: %s", err.msg[0] ? err.msg : "not open");
        http_reply_error(req, 503, "not_ready", "the store does not answer");
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "status", "ready");
    cJSON_AddStringToObject(body, "store", store_backend(d->store));
    http_reply_json(req, 200, body);
}

void api_openapi(http_request *req, void *app)
{
    (void)app;
    size_t len = 0;
    const char *doc = embed_get("docs/api/openapi.json", &len);
    if (doc == NULL) {
        http_reply_error(req, 500, "internal", "the OpenAPI document was not built in");
        return;
    }
    http_reply_bytes(req, 200, "application/json", doc, len);
}

void api_metrics(http_request *req, void *app)
{
    const api_deps *d = app;
    buf out;
    buf_init(&out, 64 * 1024);
    uint64_t counts[6] = {0};
    if (d->server != NULL)
        http_server_counts(d->server, counts);
    buf_printf(&out, "# HELP askpanel_http_requests_total Requests answered, by status class.\n"
                     "# TYPE askpanel_http_requests_total counter\n");
    for (int c = 1; c <= 5; c++)
        buf_printf(&out, "askpanel_http_requests_total{code=\"%dxx\"} %llu\n", c,
                   (unsigned long long)counts[c]);
    buf_printf(&out,
               "# HELP askpanel_http_in_flight Requests being handled now.\n"
               "# TYPE askpanel_http_in_flight gauge\naskpanel_http_in_flight %d\n"
               "# HELP askpanel_uptime_seconds Seconds since start.\n"
               "# TYPE askpanel_uptime_seconds gauge\naskpanel_uptime_seconds %.3f\n",
               d->server != NULL ? http_server_in_flight(d->server) : 0,
               (double)(clock_wall_ms() - d->started_ms) / 1000.0);
    if (d->engine != NULL) {
        panel_engine_stats es;
        panel_engine_stats_get(d->engine, &es);
        buf_printf(&out,
                   "# HELP askpanel_panels_active Panels running in this process.\n"
                   "# TYPE askpanel_panels_active gauge\naskpanel_panels_active %zu\n"
                   "# HELP askpanel_writer_queue Writes waiting for the event writer or being "
                   "written.\n"
                   "# TYPE askpanel_writer_queue gauge\naskpanel_writer_queue %zu\n"
                   "# HELP askpanel_writer_batches_total Group commits of the event writer.\n"
                   "# TYPE askpanel_writer_batches_total counter\n"
                   "askpanel_writer_batches_total %llu\n"
                   "# HELP askpanel_writer_items_total What the writer handled: events, deltas, "
                   "checkpoints, status changes, usage rows.\n"
                   "# TYPE askpanel_writer_items_total counter\naskpanel_writer_items_total %llu\n",
                   es.active, es.queued, (unsigned long long)es.batches,
                   (unsigned long long)es.written);
    }
    if (out.data == NULL)
        http_reply_error(req, 500, "internal", "out of memory");
    else
        http_reply_bytes(req, 200, "text/plain; version=0.0.4", out.data, out.len);
    buf_free(&out);
}
