/* api_usage.c - GET /v1/usage: the tenant's tokens and cost, grouped. */
#include "core/clock.h"
#include "core/jsonx.h"
#include "http/api.h"
#include "http/validate.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DAY_MS (24LL * 3600 * 1000)

static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* A calendar date "YYYY-MM-DD" as UTC midnight; false for anything else, a day the month
 * does not have (2026-02-30) included, which timegm would roll over into the next month. */
static bool parse_date(const char *s, int64_t *out)
{
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return false;
    int y = digits(s, 4), m = digits(s + 5, 2), d = digits(s + 8, 2);
    if (y < 1970 || m < 1 || m > 12 || d < 1 || d > 31)
        return false;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    time_t t = timegm(&tm);
    struct tm back;
    if (t == (time_t)-1 || gmtime_r(&t, &back) == NULL || back.tm_mday != d || back.tm_mon != m - 1)
        return false;
    *out = (int64_t)t * 1000;
    return true;
}

/* Accepts epoch milliseconds (digits only) or a date "YYYY-MM-DD" (UTC midnight). */
static bool parse_time(const char *s, int64_t *out)
{
    if (strchr(s, '-') != NULL)
        return parse_date(s, out);
    return validate_decimal(s, INT64_MAX / 10, out);
}

void api_usage_get(http_request *req, void *app)
{
    api_deps *d = app;
    int64_t to = clock_wall_ms() + 1, from = to - 30 * DAY_MS;
    const char *qf = http_query(req, "from"), *qt = http_query(req, "to");
    const char *group = http_query(req, "group_by");
    if ((qf != NULL && !parse_time(qf, &from)) || (qt != NULL && !parse_time(qt, &to))) {
        http_reply_error(req, 400, "invalid_parameter",
                         "from and to are epoch milliseconds or YYYY-MM-DD dates");
        return;
    }
    if (from >= to) {
        http_reply_error(req, 400, "invalid_parameter", "from must be before to");
        return;
    }
    if (group == NULL)
        group = "day";
    if (strcmp(group, "expert") != 0 && strcmp(group, "model") != 0 && strcmp(group, "day") != 0) {
        http_reply_error(req, 400, "invalid_parameter", "group_by must be expert, model or day");
        return;
    }
    char *json = NULL;
    ap_err err = {0};
    if (store_usage_summary(d->store, http_principal_of(req)->tenant_id, from, to, group, &json,
                            &err) != AP_OK) {
        http_reply_ap_err(req, &err);
        return;
    }
    cJSON *rows = cJSON_Parse(json);
    free(json);
    cJSON *body = cJSON_CreateObject();
    cJSON_AddNumberToObject(body, "from", (double)from);
    cJSON_AddNumberToObject(body, "to", (double)to);
    cJSON_AddStringToObject(body, "group_by", group);
    cJSON *totals = cJSON_AddObjectToObject(body, "totals");
    double calls = 0, pt = 0, ct = 0, cost = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, rows)
    {
        calls += jsonx_number(r, "calls", 0);
        pt += jsonx_number(r, "prompt_tokens", 0);
        ct += jsonx_number(r, "completion_tokens", 0);
        cost += jsonx_number(r, "cost_usd", 0);
    }
    cJSON_AddNumberToObject(totals, "calls", calls);
    cJSON_AddNumberToObject(totals, "prompt_tokens", pt);
    cJSON_AddNumberToObject(totals, "completion_tokens", ct);
    cJSON_AddNumberToObject(totals, "cost_usd", cost);
    cJSON_AddItemToObject(body, "data", rows != NULL ? rows : cJSON_CreateArray());
    http_reply_json(req, 200, body);
}
