#include "http/sse.h"

#include <string.h>

ap_status sse_format(buf *out, int64_t seq, const char *type, const char *data)
{
    ap_status rc = AP_OK;
    if (seq > 0)
        rc = buf_printf(out, "id: %lld\n", (long long)seq);
    if (rc == AP_OK)
        rc = buf_printf(out, "event: %s\n", type);
    const char *p = data;
    while (rc == AP_OK) {
        size_t n = strcspn(p, "\r\n");
        rc = buf_puts(out, "data: ");
        if (rc == AP_OK)
            rc = buf_append(out, p, n);
        if (rc == AP_OK)
            rc = buf_puts(out, "\n");
        if (p[n] == '\0')
            break;
        p += n + (p[n] == '\r' && p[n + 1] == '\n' ? 2 : 1);
    }
    if (rc == AP_OK)
        rc = buf_puts(out, "\n");
    return rc;
}
