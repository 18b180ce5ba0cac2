/* log.h - structured logging: one JSON object per line on stderr.
 *
 * Lines carry time, level and message, plus request/tenant/panel ids when the caller knows
 * them. Thread-safe; each line is written with a single write(2) so lines never interleave. */
#ifndef AP_LOG_H
#define AP_LOG_H

#include <stdbool.h>

typedef enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO = 1,
    LOG_LEVEL_WARN = 2,
    LOG_LEVEL_ERROR = 3,
} log_level;

/* Optional context of a line; every member may be NULL. Borrowed for the call. */
typedef struct log_fields {
    const char *request_id;
    const char *tenant_id;
    const char *panel_id;
    const char *event; /* a machine-readable tag, e.g. "security" */
} log_fields;

/* Sets the minimum level that is written (default info). */
void log_set_level(log_level level);

/* Parses "debug", "info", "warn" or "error"; false when name is none of them. */
bool log_parse_level(const char *name, log_level *out);

/* True when a line at this level would be written. */
bool log_enabled(log_level level);

/* Redirects output to fd (default 2); for tests. */
void log_set_fd(int fd);

/* Writes one line; fields may be NULL. The message is truncated at 2 KiB. */
void log_msg(log_level level, const log_fields *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, NULL, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, NULL, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, NULL, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, NULL, __VA_ARGS__)

#endif
