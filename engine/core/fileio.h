/* fileio.h - whole files read from disk: scripts, configs, rosters, the web UI.
 *
 * Every such file is a regular file of bounded size. Opening a FIFO named like one would block
 * the reading thread (an HTTP worker, the script watcher, a reload) until someone writes to
 * it, and a device such as /dev/zero streams without end; both are refused. */
#ifndef AP_CORE_FILEIO_H
#define AP_CORE_FILEIO_H

#include "core/status.h"

#include <stddef.h>

/* Reads the regular file at path, at most max bytes, into *out, NUL-terminated (caller
 * frees); *len (may be NULL) gets its length. AP_NOTFOUND when it does not exist, AP_INVALID
 * when it is not a regular file, AP_LIMIT past max, AP_IO otherwise; err names the path. */
ap_status fileio_read(const char *path, size_t max, char **out, size_t *len, ap_err *err);

/* fileio_read of the file name (one path component) directly in dir, which must not be a
 * symbolic link: a link there may lead anywhere, so it reads as AP_NOTFOUND. */
ap_status fileio_read_in(const char *dir, const char *name, size_t max, char **out, size_t *len,
                         ap_err *err);

#endif
