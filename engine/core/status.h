/* status.h - the one result type of the engine.
 *
 * Every fallible function returns an ap_status; AP_OK is zero so `if (rc)` reads naturally.
 * When a caller needs to know why, the function also takes an `ap_err *` (may be NULL) that
 * receives a short human message; the status in it always equals the returned one. */
#ifndef AP_STATUS_H
#define AP_STATUS_H

#include <stddef.h>

typedef enum ap_status {
    AP_OK = 0,
    AP_ERROR = -1,    /* generic failure; the message says what */
    AP_AGAIN = -2,    /* not ready yet, try later (would block, retryable) */
    AP_NOMEM = -3,    /* allocation failed */
    AP_TIMEOUT = -4,  /* a deadline passed */
    AP_NOTFOUND = -5, /* no such object (for this tenant) */
    AP_INVALID = -6,  /* bad input: the caller's fault */
    AP_CONFLICT = -7, /* state conflict: duplicate, wrong status */
    AP_DENIED = -8,   /* not allowed: auth, role, isolation */
    AP_LIMIT = -9,    /* a hard limit was reached (size, budget, quota) */
    AP_IO = -10,      /* a backend (database, network, file) failed */
} ap_status;

#define AP_ERR_MSG_MAX 256

typedef struct ap_err {
    ap_status status;
    char msg[AP_ERR_MSG_MAX];
} ap_err;

/* Short stable name of a status ("ok", "not_found", ...); static storage. */
const char *ap_status_name(ap_status s);

/* Records status and a printf-style message in err (which may be NULL); returns status. */
ap_status ap_err_set(ap_err *err, ap_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err (may be NULL) to AP_OK with an empty message. */
void ap_err_clear(ap_err *err);

#endif
