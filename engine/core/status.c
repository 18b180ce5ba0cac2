#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>

const char *ap_status_name(ap_status s)
{
    switch (s) {
    case AP_OK:
        return "ok";
    case AP_ERROR:
        return "error";
    case AP_AGAIN:
        return "again";
    case AP_NOMEM:
        return "no_memory";
    case AP_TIMEOUT:
        return "timeout";
    case AP_NOTFOUND:
        return "not_found";
    case AP_INVALID:
        return "invalid";
    case AP_CONFLICT:
        return "conflict";
    case AP_DENIED:
        return "denied";
    case AP_LIMIT:
        return "limit";
    case AP_IO:
        return "io";
    }
    return "unknown";
}

ap_status ap_err_set(ap_err *err, ap_status status, const char *fmt, ...)
{
    if (err == NULL)
        return status;
    err->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return status;
}

void ap_err_clear(ap_err *err)
{
    if (err == NULL)
        return;
    err->status = AP_OK;
    err->msg[0] = '\0';
}
