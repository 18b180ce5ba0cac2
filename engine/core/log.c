#include "core/log.h"

#include "core/clock.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define LOG_MSG_MAX 2048
#define LOG_LINE_MAX 8192

static atomic_int min_level = LOG_LEVEL_INFO;
static atomic_int out_fd = 2;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(log_level level)
{
    atomic_store(&min_level, (int)level);
}

bool log_parse_level(const char *name, log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (name != NULL && strcmp(name, level_names[i]) == 0) {
            *out = (log_level)i;
            return true;
        }
    }
    return false;
}

bool log_enabled(log_level level)
{
    return (int)level >= atomic_load(&min_level);
}

void log_set_fd(int fd)
{
    atomic_store(&out_fd, fd);
}

/* Appends s as a JSON string body (without quotes); stops safely at the buffer's end. */
static size_t put_escaped(char *dst, size_t pos, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        char esc[8] = {0};
        switch (*p) {
        case '"':
            esc[0] = '\\', esc[1] = '"';
            break;
        case '\\':
            esc[0] = '\\', esc[1] = '\\';
            break;
        case '\n':
            esc[0] = '\\', esc[1] = 'n';
            break;
        case '\r':
            esc[0] = '\\', esc[1] = 'r';
            break;
        case '\t':
            esc[0] = '\\', esc[1] = 't';
            break;
        default:
            if (*p < 0x20) {
                esc[0] = '\\', esc[1] = 'u', esc[2] = '0', esc[3] = '0';
                esc[4] = hex[*p >> 4];
                esc[5] = hex[*p & 15];
            } else {
                esc[0] = (char)*p;
            }
        }
        size_t n = strlen(esc);
        if (pos + n >= cap)
            break;
        for (size_t k = 0; k < n; k++)
            dst[pos++] = esc[k];
    }
    return pos;
}

static size_t put_raw(char *dst, size_t pos, size_t cap, const char *s)
{
    if (pos + 1 >= cap)
        return pos;
    size_t n = strlen(s);
    if (n > cap - pos - 1)
        n = cap - pos - 1;
    memcpy(dst + pos, s, n);
    return pos + n;
}

static size_t put_field(char *dst, size_t pos, size_t cap, const char *key, const char *val)
{
    if (val == NULL || val[0] == '\0')
        return pos;
    pos = put_raw(dst, pos, cap, ",\"");
    pos = put_raw(dst, pos, cap, key);
    pos = put_raw(dst, pos, cap, "\":\"");
    pos = put_escaped(dst, pos, cap, val);
    return put_raw(dst, pos, cap, "\"");
}

void log_msg(log_level level, const log_fields *fields, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char msg[LOG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    char ts[40];
    clock_format_rfc3339(clock_wall_ms(), ts, sizeof ts);

    char line[LOG_LINE_MAX];
    size_t cap = sizeof line - 1; /* room for the newline */
    size_t pos = put_raw(line, 0, cap, "{\"time\":\"");
    pos = put_raw(line, pos, cap, ts);
    pos = put_raw(line, pos, cap, "\",\"level\":\"");
    pos = put_raw(line, pos, cap, level_names[level]);
    pos = put_raw(line, pos, cap, "\",\"msg\":\"");
    pos = put_escaped(line, pos, cap - 100, msg);
    pos = put_raw(line, pos, cap, "\"");
    if (fields != NULL) {
        pos = put_field(line, pos, cap, "request_id", fields->request_id);
        pos = put_field(line, pos, cap, "tenant_id", fields->tenant_id);
        pos = put_field(line, pos, cap, "panel_id", fields->panel_id);
        pos = put_field(line, pos, cap, "event", fields->event);
    }
    pos = put_raw(line, pos, cap, "}");
    line[pos++] = '\n';
    ssize_t ignored = write(atomic_load(&out_fd), line, pos);
    (void)ignored;
}
