/* buf.h - a growable byte buffer with a hard maximum.
 *
 * Every buffer that grows from outside input (bodies, LLM responses, queues) is a buf with a
 * max; an append past it fails with AP_LIMIT and leaves the buffer unchanged. The data is
 * always NUL-terminated so text can be read in place. */
#ifndef AP_BUF_H
#define AP_BUF_H

#include "core/status.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct buf {
    char *data; /* owned; NULL until the first append */
    size_t len;
    size_t cap;
    size_t max;                           /* hard maximum of len */
    bool (*meter)(void *ud, size_t grow); /* see buf_meter; NULL: none */
    void *meter_ud;
} buf;

/* Initialises an empty buffer that may grow to max bytes. */
void buf_init(buf *b, size_t max);

/* Asks meter(ud, bytes) before every growth of b's memory by bytes; when it answers false the
 * append fails with AP_LIMIT and b is unchanged. For memory counted against a budget (a
 * script's limit): the meter adds up what it allowed, the owner gives it back. */
void buf_meter(buf *b, bool (*meter)(void *ud, size_t grow), void *ud);

/* Appends n bytes; AP_LIMIT past max, AP_NOMEM on allocation failure. */
ap_status buf_append(buf *b, const void *data, size_t n);

/* Makes room for n more bytes at once (AP_LIMIT past max), for a text whose size is roughly
 * known, instead of growing step by step. */
ap_status buf_reserve(buf *b, size_t n);

/* Appends one byte; inline because encoders append punctuation byte by byte. */
static inline ap_status buf_putc(buf *b, char c)
{
    if (b->len + 2 <= b->cap && b->len < b->max) {
        b->data[b->len++] = c;
        b->data[b->len] = '\0';
        return AP_OK;
    }
    return buf_append(b, &c, 1);
}

/* Appends a NUL-terminated string. */
ap_status buf_puts(buf *b, const char *s);

/* Appends printf-style formatted text. */
ap_status buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Drops the first n bytes (n <= len). */
void buf_consume(buf *b, size_t n);

/* Empties the buffer, keeping its memory. */
void buf_reset(buf *b);

/* Hands the data to the caller (caller frees) and empties the buffer; never NULL on AP_OK. */
char *buf_steal(buf *b);

/* Frees the memory; b may be NULL. */
void buf_free(buf *b);

#endif
