#include "core/clock.h"
#include "http/api.h"
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
        http_reply_error(req, 503, "not_ready", "the store does not answer: %s",
                         err.msg[0] ? err.msg : "not open");
        return;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "status", "ready");
    cJSON_AddStringToObject(body, "store", store_backend(d->store));
    http_reply_json(req, 200, body);
}
