#include "llm/sse.h"

#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

struct llm_sse_parser {
    llm_sse_on_event cb;
    void *ctx;
    buf line; /* the current, unterminated line */
    buf data; /* data of the event being built, lines joined with "\n" */
    buf type; /* event type of the event being built */
    buf id;   /* last event id */
    bool has_data;
    bool pending_cr; /* the previous byte was a CR: an LF right after it ends nothing */
    bool first_line; /* a BOM is only skipped on the first line */
    ap_status failed;
    size_t bytes;
};

llm_sse_parser *llm_sse_new(size_t max_line, size_t max_event, llm_sse_on_event cb, void *ctx)
{
    llm_sse_parser *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->cb = cb;
    p->ctx = ctx;
    buf_init(&p->line, max_line);
    buf_init(&p->data, max_event);
    buf_init(&p->type, max_line);
    buf_init(&p->id, max_line);
    p->first_line = true;
    return p;
}

void llm_sse_free(llm_sse_parser *p)
{
    if (p == NULL)
        return;
    buf_free(&p->line);
    buf_free(&p->data);
    buf_free(&p->type);
    buf_free(&p->id);
    free(p);
}

size_t llm_sse_bytes(const llm_sse_parser *p)
{
    return p->bytes;
}

static ap_status set_text(buf *b, const char *s, size_t n)
{
    buf_reset(b);
    /* buf_append(…, 0) still allocates, so "" is readable as a C string afterwards. */
    return buf_append(b, s, n);
}

static ap_status dispatch(llm_sse_parser *p, ap_err *err)
{
    ap_status rc = AP_OK;
    if (!p->has_data) {
        buf_reset(&p->type);
        return AP_OK;
    }
    if (p->data.data == NULL && (rc = buf_append(&p->data, "", 0)) != AP_OK)
        return ap_err_set(err, rc, "SSE event: out of memory");
    if (p->id.data == NULL && (rc = buf_append(&p->id, "", 0)) != AP_OK)
        return ap_err_set(err, rc, "SSE event: out of memory");
    llm_sse_event ev = {
        .event = p->type.len > 0 ? p->type.data : "message",
        .data = p->data.data,
        .data_len = p->data.len,
        .id = p->id.data,
    };
    rc = p->cb(p->ctx, &ev);
    if (rc != AP_OK && err != NULL && err->status != rc)
        ap_err_set(err, rc, "SSE event handler failed: %s", ap_status_name(rc));
    buf_reset(&p->data);
    buf_reset(&p->type);
    p->has_data = false;
    return rc;
}

static ap_status field(llm_sse_parser *p, const char *name, size_t nlen, const char *val,
                       size_t vlen, ap_err *err)
{
    ap_status rc = AP_OK;
    if (nlen == 4 && memcmp(name, "data", 4) == 0) {
        if (p->has_data)
            rc = buf_append(&p->data, "\n", 1);
        if (rc == AP_OK)
            rc = buf_append(&p->data, val, vlen);
        p->has_data = true;
        if (rc != AP_OK)
            return ap_err_set(err, rc, "SSE event data longer than %zu bytes", p->data.max);
    } else if (nlen == 5 && memcmp(name, "event", 5) == 0) {
        if ((rc = set_text(&p->type, val, vlen)) != AP_OK)
            return ap_err_set(err, rc, "SSE event type too long");
    } else if (nlen == 2 && memcmp(name, "id", 2) == 0) {
        if (memchr(val, '\0', vlen) == NULL && (rc = set_text(&p->id, val, vlen)) != AP_OK)
            return ap_err_set(err, rc, "SSE event id too long");
    }
    /* "retry" and unknown fields carry nothing a provider client needs. */
    return AP_OK;
}

static ap_status line_done(llm_sse_parser *p, const char *s, size_t n, ap_err *err)
{
    if (p->first_line) {
        p->first_line = false;
        if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
            s += 3, n -= 3;
    }
    if (n == 0)
        return dispatch(p, err);
    if (s[0] == ':')
        return AP_OK;
    const char *colon = memchr(s, ':', n);
    if (colon == NULL)
        return field(p, s, n, "", 0, err);
    size_t nlen = (size_t)(colon - s);
    const char *val = colon + 1;
    size_t vlen = n - nlen - 1;
    if (vlen > 0 && val[0] == ' ')
        val++, vlen--;
    return field(p, s, nlen, val, vlen, err);
}

ap_status llm_sse_feed(llm_sse_parser *p, const char *data, size_t len, ap_err *err)
{
    if (p->failed != AP_OK)
        return ap_err_set(err, p->failed, "SSE parser already failed");
    ap_status rc = AP_OK;
    size_t i = 0;
    p->bytes += len;
    while (i < len) {
        if (p->pending_cr) {
            p->pending_cr = false;
            if (data[i] == '\n') {
                i++;
                continue;
            }
        }
        /* memchr scans a chunk's bytes many at a time; a bare CR ends a line too */
        const char *nl = memchr(data + i, '\n', len - i);
        size_t j = nl != NULL ? (size_t)(nl - data) : len;
        const char *cr = memchr(data + i, '\r', j - i);
        if (cr != NULL)
            j = (size_t)(cr - data);
        if (j == len) {
            if ((rc = buf_append(&p->line, data + i, len - i)) != AP_OK) {
                ap_err_set(err, rc, "SSE line longer than %zu bytes", p->line.max);
                goto out;
            }
            break;
        }
        if (p->line.len == 0) {
            if (j - i > p->line.max) {
                rc = ap_err_set(err, AP_LIMIT, "SSE line longer than %zu bytes", p->line.max);
                goto out;
            }
            rc = line_done(p, data + i, j - i, err);
        } else {
            if ((rc = buf_append(&p->line, data + i, j - i)) != AP_OK) {
                ap_err_set(err, rc, "SSE line longer than %zu bytes", p->line.max);
                goto out;
            }
            rc = line_done(p, p->line.data, p->line.len, err);
            buf_reset(&p->line);
        }
        if (rc != AP_OK)
            goto out;
        p->pending_cr = data[j] == '\r';
        i = j + 1;
    }
out:
    if (rc != AP_OK)
        p->failed = rc;
    return rc;
}

ap_status llm_sse_finish(llm_sse_parser *p, bool *partial, ap_err *err)
{
    if (partial != NULL)
        *partial = p->line.len > 0 || p->has_data || p->type.len > 0;
    if (p->failed != AP_OK)
        return ap_err_set(err, p->failed, "SSE parser already failed");
    buf_reset(&p->line);
    buf_reset(&p->data);
    buf_reset(&p->type);
    p->has_data = false;
    return AP_OK;
}
