#include "core/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
    b->meter = NULL;
    b->meter_ud = NULL;
}

void buf_meter(buf *b, bool (*meter)(void *ud, size_t grow), void *ud)
{
    b->meter = meter;
    b->meter_ud = ud;
}

static ap_status reserve(buf *b, size_t extra)
{
    if (extra > b->max - b->len)
        return AP_LIMIT;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return AP_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    if (cap > b->max + 1 && need <= b->max + 1)
        cap = b->max + 1; /* never more than the most it can hold */
    if (b->meter != NULL && !b->meter(b->meter_ud, cap - b->cap))
        return AP_LIMIT;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return AP_NOMEM;
    b->data = p;
    b->cap = cap;
    return AP_OK;
}

ap_status buf_append(buf *b, const void *data, size_t n)
{
    ap_status rc = reserve(b, n);
    if (rc != AP_OK)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return AP_OK;
}

ap_status buf_reserve(buf *b, size_t n)
{
    return reserve(b, n);
}

ap_status buf_puts(buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

ap_status buf_printf(buf *b, const char *fmt, ...)
{
    /* Most texts are short: format once into the stack, not once to measure and again. */
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return AP_INVALID;
    if ((size_t)n < sizeof small)
        return buf_append(b, small, (size_t)n);
    ap_status rc = reserve(b, (size_t)n);
    if (rc != AP_OK)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return AP_OK;
}

void buf_consume(buf *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void buf_reset(buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

char *buf_steal(buf *b)
{
    if (b->data == NULL) {
        if (reserve(b, 0) != AP_OK)
            return NULL;
        b->data[0] = '\0';
    }
    char *p = b->data;
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}

void buf_free(buf *b)
{
    if (b == NULL)
        return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}
