/* embed.h - files compiled into the binary (sql/ and docs/api/), generated at build time. */
#ifndef AP_EMBED_H
#define AP_EMBED_H

#include <stddef.h>

/* Contents of an embedded file by its repository path (e.g. "sql/sqlite/001_init.sql"),
 * NUL-terminated, static storage; NULL when absent. *len may be NULL. */
const char *embed_get(const char *path, size_t *len);

/* The path of the index-th embedded file in sorted order, NULL past the end. */
const char *embed_path_at(size_t index);

#endif
