/* pg.c - the PostgreSQL store backend (libpq, connection pool, forced row-level security). */
#include "store/backend.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>

ap_status store_pg_open(const char *conninfo, void **impl, ap_err *err)
{
    *impl = NULL;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        ap_status rc = ap_err_set(err, AP_INVALID, "bad PostgreSQL connection string: %s",
                                  perr != NULL ? perr : "out of memory");
        PQfreemem(perr);
        return rc;
    }
    PQconninfoFree(opts);
    PGconn *c = PQconnectdb(conninfo);
    ap_status rc;
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s", c != NULL ? PQerrorMessage(c) : "out of memory");
        msg[strcspn(msg, "\n")] = '\0';
        rc = ap_err_set(err, AP_IO, "database is unavailable: %s", msg);
    } else {
        rc = ap_err_set(err, AP_IO, "the PostgreSQL store is not implemented yet");
    }
    PQfinish(c);
    return rc;
}

const store_ops store_pg_ops = {.name = "postgres"};
