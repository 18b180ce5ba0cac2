#include "panel/session.h"

#include "core/clock.h"

#include "core/jsonx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INPUT_LINE_MAX (256 * 1024) /* as much as panel_engine_input takes */

static void make_parent_dir(const char *url)
{
    if (strncmp(url, "sqlite:", 7) != 0)
        return;
    const char *path = url + 7;
    const char *slash = strrchr(path, '/');
    if (slash == NULL || slash == path)
        return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return; /* store_open reports the real problem */
}

ap_status panel_session_open(panel_session *s, const config *cfg, const char *provider,
                             const char *model, uint64_t seed, ap_err *err)
{
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    make_parent_dir(cfg->store);
    ap_status rc = store_open(cfg->store, &s->st, err);
    if (rc == AP_OK)
        rc = store_migrate(s->st, NULL, err);
    if (rc != AP_OK)
        return rc;
    store_tenant t = {0};
    rc = store_tenant_by_slug(s->st, "cli", &t, err);
    if (rc == AP_NOTFOUND)
        rc = store_tenant_create(s->st, "cli", "Command line", NULL, &t, err);
    if (rc == AP_CONFLICT) /* created concurrently by another askpanel */
        rc = store_tenant_by_slug(s->st, "cli", &t, err);
    if (rc == AP_OK)
        memcpy(s->tenant_id, t.id, sizeof s->tenant_id);
    store_tenant_free(&t);
    if (rc != AP_OK)
        return rc;
    script_limits lim;
    script_limits_default(&lim);
    lim.memory_bytes = (size_t)cfg->runtime_lua_memory_mb * 1024 * 1024;
    lim.instructions = cfg->runtime_node_instructions;
    lim.timeout_ms = cfg->runtime_node_timeout_ms;
    rc = script_registry_new(&lim, cfg->strategies_dir, cfg->tenants_dir, &s->reg, err);
    if (rc != AP_OK)
        return rc;
    panel_engine_opts o = {
        .cfg = cfg,
        .store = s->st,
        .registry = s->reg,
        .provider = provider,
        .model = model,
        .seed = seed,
        .runners = 1,
    };
    return panel_engine_start(&o, &s->engine, err);
}

void panel_session_close(panel_session *s)
{
    panel_engine_stop(s->engine);
    script_registry_free(s->reg);
    store_close(s->st);
    memset(s, 0, sizeof *s);
}

/* ---- printing ------------------------------------------------------------------------- */

static void print_text(FILE *out, const char *type, const cJSON *d, const char *raw)
{
    if (strcmp(type, "expert.delta") == 0)
        return;
    if (strcmp(type, "panel.status") == 0) {
        fprintf(out, "· status: %s\n", jsonx_string(d, "status") ? jsonx_string(d, "status") : "?");
    } else if (strcmp(type, "round.started") == 0) {
        fprintf(out, "\n── round %g ──\n", jsonx_number(d, "round", 0));
    } else if (strcmp(type, "expert.message") == 0) {
        const char *name = jsonx_string(d, "name");
        fprintf(out, "\n%s", name != NULL ? name : "expert");
        if (cJSON_GetObjectItemCaseSensitive(d, "round") != NULL)
            fprintf(out, " (round %g)", jsonx_number(d, "round", 0));
        const char *error = jsonx_string(d, "error");
        const char *text = jsonx_string(d, "text");
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(d, "data");
        if (error != NULL) {
            fprintf(out, ": (no answer: %s)\n", error);
        } else if (cJSON_IsObject(data)) {
            /* a structured answer: short fields on one line, long texts below */
            fprintf(out, ":");
            const cJSON *f;
            cJSON_ArrayForEach(f, data)
            {
                if (cJSON_IsString(f) && strlen(f->valuestring) <= 40)
                    fprintf(out, " %s=%s", f->string, f->valuestring);
                else if (cJSON_IsNumber(f))
                    fprintf(out, " %s=%g", f->string, f->valuedouble);
                else if (cJSON_IsBool(f))
                    fprintf(out, " %s=%s", f->string, cJSON_IsTrue(f) ? "true" : "false");
            }
            fprintf(out, "\n");
            cJSON_ArrayForEach(f, data)
            {
                if (cJSON_IsString(f) && strlen(f->valuestring) > 40)
                    fprintf(out, "  %s\n", f->valuestring);
                else if (cJSON_IsArray(f) || cJSON_IsObject(f)) {
                    char *compact = jsonx_print(f);
                    fprintf(out, "  %s: %s\n", f->string, compact != NULL ? compact : "");
                    free(compact);
                }
            }
        } else {
            fprintf(out, ":\n  %s\n", text != NULL ? text : "");
        }
    } else if (strcmp(type, "consensus") == 0) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(d, "result");
        const cJSON *pos = cJSON_GetObjectItemCaseSensitive(r, "position");
        char *p = pos != NULL && !cJSON_IsString(pos) ? jsonx_print(pos) : NULL;
        fprintf(out, "\nconsensus (%s): level %.2f",
                jsonx_string(d, "algorithm") ? jsonx_string(d, "algorithm") : "?",
                jsonx_number(r, "level", 0));
        if (cJSON_IsString(pos))
            fprintf(out, ", position: %s", pos->valuestring);
        else if (p != NULL)
            fprintf(out, ", position: %s", p);
        fprintf(out, "\n");
        free(p);
    } else if (strcmp(type, "input.requested") == 0) {
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(d, "request");
        const char *prompt = jsonx_string(req, "prompt");
        fprintf(out, "\n? input requested: %s\n", prompt != NULL ? prompt : "(no prompt)");
    } else if (strcmp(type, "input.received") == 0) {
        fprintf(out, "  (input received)\n");
    } else if (strcmp(type, "panel.completed") == 0) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(d, "result");
        const char *summary = jsonx_string(r, "summary");
        if (summary != NULL)
            fprintf(out, "\n== summary ==\n%s\n", summary);
        char *pretty = r != NULL ? cJSON_Print(r) : NULL;
        fprintf(out, "\n== result ==\n%s\n", pretty != NULL ? pretty : "null");
        free(pretty);
    } else if (strcmp(type, "panel.failed") == 0) {
        fprintf(out, "\npanel failed: %s\n",
                jsonx_string(d, "error") ? jsonx_string(d, "error") : "?");
    } else {
        fprintf(out, "[%s] %s\n", type, raw);
    }
}

static void print_event(FILE *out, bool json, const char *panel_id, int64_t seq, const char *type,
                        const char *data)
{
    if (json) {
        fprintf(out, "{\"panel_id\":\"%s\",\"seq\":%lld,\"type\":\"%s\",\"data\":%s}\n", panel_id,
                (long long)seq, type, data);
    } else {
        cJSON *d = jsonx_parse(data, strlen(data), 128, NULL);
        print_text(out, type, d, data);
        cJSON_Delete(d);
    }
    fflush(out);
}

/* ---- following -------------------------------------------------------------------------- */

enum { FOLLOW_GO_ON = -1 };

/* What an event means for the follower: an exit status, or FOLLOW_GO_ON. A failure's reason
 * also goes to stderr. */
static int event_outcome(const char *type, const char *data, FILE *diag)
{
    if (strcmp(type, "panel.completed") == 0)
        return PANEL_EXIT_COMPLETED;
    if (strcmp(type, "panel.failed") == 0) {
        cJSON *d = jsonx_parse(data, strlen(data), 16, NULL);
        const char *why = jsonx_string(d, "error");
        if (diag != NULL)
            fprintf(diag, "askpanel: panel failed: %s\n", why != NULL ? why : data);
        cJSON_Delete(d);
        return PANEL_EXIT_FAILED;
    }
    if (strcmp(type, "panel.status") == 0 && strstr(data, "\"cancelled\"") != NULL) {
        if (diag != NULL)
            fprintf(diag, "askpanel: panel cancelled\n");
        return PANEL_EXIT_FAILED;
    }
    return FOLLOW_GO_ON;
}

/* Reads one answer from in and submits it. Returns FOLLOW_GO_ON, or an exit status. */
/* One line of in without its line end, at most INPUT_LINE_MAX bytes (the rest of a longer
 * line is read and dropped, and *too_long set); NULL at the end of in. Caller frees. */
static char *read_line(FILE *in, size_t *len, bool *too_long)
{
    char *line = malloc(INPUT_LINE_MAX + 1);
    if (line == NULL)
        return NULL;
    size_t n = 0;
    int c;
    *too_long = false;
    while ((c = getc(in)) != EOF && c != '\n') {
        if (n < INPUT_LINE_MAX)
            line[n++] = (char)c;
        else
            *too_long = true;
    }
    if (c == EOF && n == 0 && !*too_long) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\r')
        n--;
    line[n] = '\0';
    *len = n;
    return line;
}

static int answer_input(panel_session *s, const char *panel_id, FILE *in, FILE *out, bool json,
                        FILE *diag)
{
    if (!json) {
        fprintf(out, "> ");
        fflush(out);
    }
    size_t n = 0;
    bool too_long = false;
    char *line = read_line(in, &n, &too_long);
    if (line == NULL) {
        if (diag != NULL)
            fprintf(diag,
                    "askpanel: panel %s is awaiting input and stdin ended; answer later with "
                    "`askpanel resume %s` (input on stdin)\n",
                    panel_id, panel_id);
        return PANEL_EXIT_AWAITING_INPUT;
    }
    ap_err err = {0};
    ap_status rc;
    if (too_long)
        rc =
            ap_err_set(&err, AP_LIMIT, "a line of input may have at most %d bytes", INPUT_LINE_MAX);
    else if (memchr(line, '\0', n) != NULL)
        rc = ap_err_set(&err, AP_INVALID, "the line of input contains a NUL byte");
    else
        /* 0: the line answers whatever the panel waits for, which this session just read from
         * the store (the request event itself may be missing from an older store) */
        rc = panel_engine_input(s->engine, s->tenant_id, panel_id, line, 0, &err);
    free(line);
    if (rc != AP_OK) {
        if (diag != NULL)
            fprintf(diag,
                    "askpanel: input refused: %s; the panel still waits (`askpanel resume %s`)\n",
                    err.msg, panel_id);
        return PANEL_EXIT_FAILED;
    }
    return FOLLOW_GO_ON;
}

/* Prints stored events after *last; returns an exit status when one of them ends the panel,
 * else FOLLOW_GO_ON. */
static int print_stored(panel_session *s, const char *panel_id, int64_t *last, bool json, FILE *out,
                        FILE *diag)
{
    for (;;) {
        store_event *rows = NULL;
        size_t n = 0;
        ap_err err = {0};
        if (store_events_list(s->st, s->tenant_id, panel_id, *last, 200, &rows, &n, &err) !=
            AP_OK) {
            if (diag != NULL)
                fprintf(diag, "askpanel: %s\n", err.msg);
            return PANEL_EXIT_FAILED;
        }
        int outcome = FOLLOW_GO_ON;
        for (size_t i = 0; i < n; i++) {
            print_event(out, json, panel_id, rows[i].seq, rows[i].type, rows[i].data);
            *last = rows[i].seq;
            int o = event_outcome(rows[i].type, rows[i].data, diag);
            if (o != FOLLOW_GO_ON)
                outcome = o;
        }
        store_events_free(rows, n);
        if (outcome != FOLLOW_GO_ON || n < 200)
            return outcome;
    }
}

/* Answers the panel from in when it waits for input. Decided by its status, not by the
 * input.requested events: a store written before the two were committed together may lack
 * the event, and a node re-run with its input already given emits the request again. The
 * events stored up to the wait are printed first: the status can be read a moment after they
 * were committed and before they reach the subscription. */
static int answer_if_waiting(panel_session *s, const char *panel_id, int64_t *last, FILE *in,
                             FILE *out, bool json, FILE *diag)
{
    store_panel row = {0};
    ap_err err = {0};
    bool waiting = store_panel_get(s->st, s->tenant_id, panel_id, &row, &err) == AP_OK &&
                   strcmp(row.status, "awaiting_input") == 0;
    store_panel_free(&row);
    if (!waiting)
        return FOLLOW_GO_ON;
    int outcome = print_stored(s, panel_id, last, json, out, diag);
    return outcome != FOLLOW_GO_ON ? outcome : answer_input(s, panel_id, in, out, json, diag);
}

/* The panel's end as the store has it, for an end that does not reach this session's
 * subscription: the panel was cancelled or finished by another process (whose events are not
 * published here), or ended in a store whose end events are missing. Prints the stored events
 * after *last; returns an exit status once the panel has ended, else FOLLOW_GO_ON. */
static int stored_end(panel_session *s, const char *panel_id, int64_t *last, bool json, FILE *out,
                      FILE *diag)
{
    store_panel row = {0};
    ap_err err = {0};
    int outcome = FOLLOW_GO_ON;
    if (store_panel_get(s->st, s->tenant_id, panel_id, &row, &err) != AP_OK)
        goto out;
    bool completed = strcmp(row.status, "completed") == 0;
    bool failed = strcmp(row.status, "failed") == 0;
    if (!completed && !failed && strcmp(row.status, "cancelled") != 0)
        goto out;
    /* its end events, if any, were committed with the status */
    outcome = print_stored(s, panel_id, last, json, out, diag);
    if (outcome != FOLLOW_GO_ON || completed) {
        outcome = outcome != FOLLOW_GO_ON ? outcome : PANEL_EXIT_COMPLETED;
        goto out;
    }
    if (diag != NULL && failed)
        fprintf(diag, "askpanel: panel failed: %s\n",
                row.error != NULL ? row.error : "(no reason stored)");
    else if (diag != NULL)
        fprintf(diag, "askpanel: panel cancelled\n");
    outcome = PANEL_EXIT_FAILED;
out:
    store_panel_free(&row);
    return outcome;
}

int panel_session_follow(panel_session *s, panel_sub *sub, const char *panel_id, int64_t after_seq,
                         bool json, FILE *in, FILE *out, FILE *diag)
{
    int64_t last = after_seq;
    int outcome = print_stored(s, panel_id, &last, json, out, diag);
    if (outcome == FOLLOW_GO_ON)
        outcome = stored_end(s, panel_id, &last, json, out, diag);
    if (outcome == FOLLOW_GO_ON)
        outcome = answer_if_waiting(s, panel_id, &last, in, out, json, diag);
    if (outcome != FOLLOW_GO_ON)
        return outcome;
    for (;;) {
        panel_event ev;
        int wait_ms = 1000;
        if (s->deadline_ms != 0) {
            int64_t left = s->deadline_ms - clock_mono_ms();
            if (left <= 0) {
                ap_err err = {0};
                panel_engine_cancel(s->engine, s->tenant_id, panel_id, &err);
                if (diag != NULL)
                    fprintf(diag, "the panel ran out of time and was cancelled\n");
                return PANEL_EXIT_FAILED;
            }
            if (left < wait_ms)
                wait_ms = (int)left;
        }
        int r = panel_sub_next(sub, &ev, wait_ms);
        if (r < 0) {
            /* lagged: what was missed is in the store, a request among it too */
            outcome = print_stored(s, panel_id, &last, json, out, diag);
            if (outcome == FOLLOW_GO_ON)
                outcome = answer_if_waiting(s, panel_id, &last, in, out, json, diag);
            if (outcome != FOLLOW_GO_ON)
                return outcome;
            continue;
        }
        if (r == 0) {
            /* a quiet second: the panel may have ended where this session cannot hear it */
            if ((outcome = stored_end(s, panel_id, &last, json, out, diag)) != FOLLOW_GO_ON)
                return outcome;
            continue;
        }
        if (ev.seq > 0 && ev.seq <= last) {
            panel_event_clear(&ev);
            continue;
        }
        if (ev.seq > 0)
            last = ev.seq;
        if (json || strcmp(ev.type, "expert.delta") != 0)
            print_event(out, json, panel_id, ev.seq, ev.type, ev.data);
        outcome = event_outcome(ev.type, ev.data, diag);
        bool ask = strcmp(ev.type, "input.requested") == 0;
        panel_event_clear(&ev);
        if (outcome != FOLLOW_GO_ON)
            return outcome;
        if (ask &&
            (outcome = answer_if_waiting(s, panel_id, &last, in, out, json, diag)) != FOLLOW_GO_ON)
            return outcome;
    }
}
