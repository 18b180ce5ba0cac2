/* registry.h - the file-based scripts: built-in strategies/ and per-tenant
 * config/tenants/<slug>/strategies/, validated, versioned and hot-reloaded.
 *
 * A name resolves to tenants_dir/<slug>/strategies[/consensus]/<name>.lua, else
 * strategies_dir[/consensus]/<name>.lua (tenant overrides stored through the API are resolved
 * by the panel layer, which asks the store first). A file is compiled and checked in a scratch
 * sandbox before it is accepted; versions are SHA-256 of the source. Accepted files are
 * cached: a reload (SIGHUP via script_registry_reload, or inotify) re-reads them and swaps in
 * a new version only if it passes, so a broken edit leaves the old version active and logs
 * why. Thread-safe. */
#ifndef AP_SCRIPT_REGISTRY_H
#define AP_SCRIPT_REGISTRY_H

#include "core/ids.h"
#include "core/status.h"
#include "script/host.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct script_registry script_registry;

/* One accepted version of a script. Owned strings; free with script_entry_free. */
typedef struct script_entry {
    script_kind kind;
    char *name;
    char version[IDS_SHA256_HEX_LEN + 1];
    char *source;
    size_t len;
    char *origin; /* "builtin", "tenant-dir" or "override" */
    script_info info;
} script_entry;

void script_entry_free(script_entry *e);

/* Copies src into dst (deep). */
ap_status script_entry_copy(const script_entry *src, script_entry *dst);

/* dirs are copied; lim is used for every validation. Caller frees. */
ap_status script_registry_new(const script_limits *lim, const char *strategies_dir,
                              const char *tenants_dir, script_registry **out, ap_err *err);

/* Stops the watcher and frees everything; NULL is fine. */
void script_registry_free(script_registry *r);

/* Resolves a file-based script for a tenant (slug may be NULL: built-ins only). A tenant file
 * that cannot be used (it does not pass, is not a regular file, cannot be read) and has no
 * accepted version cached is skipped, logged once per version of the file with its path and
 * why, and the built-in resolves instead. AP_NOTFOUND when no file exists; when only unusable
 * ones do, AP_INVALID (AP_IO for a read error) with a message that names the script, not the
 * file: it may reach a tenant. */
ap_status script_registry_resolve(script_registry *r, const char *tenant_slug, script_kind kind,
                                  const char *name, script_entry *out, ap_err *err);

/* Validates a source (e.g. an uploaded override): fills out with its version and info. */
ap_status script_registry_validate(script_registry *r, script_kind kind, const char *name,
                                   const char *source, size_t len, const char *origin,
                                   script_entry *out, ap_err *err);

/* A version validated before (by script_registry_validate or a file load) from the cache;
 * AP_NOTFOUND when this process has not seen it. Saves a store read for pinned panels. */
ap_status script_registry_cached_version(script_registry *r, script_kind kind, const char *name,
                                         const char *version, script_entry *out);

/* Re-reads every cached file; swaps in versions that pass, keeps the old ones (logging why)
 * for those that do not; forgets which files were rejected, so they are tried again.
 * Concurrent reloads and first loads leave the newest content cached. *changed (may be NULL)
 * receives how many versions changed. */
ap_status script_registry_reload(script_registry *r, size_t *changed, ap_err *err);

/* Starts a thread that reloads on inotify changes of the strategy directories. */
ap_status script_registry_watch(script_registry *r, ap_err *err);

/* The strategies (or consensus scripts) visible to a tenant from files, tenant dir first;
 * *rows (n entries) caller frees with script_entries_free. Broken files are skipped. */
ap_status script_registry_list(script_registry *r, const char *tenant_slug, script_kind kind,
                               script_entry **rows, size_t *n, ap_err *err);
void script_entries_free(script_entry *rows, size_t n);

/* The limits used for validation (borrowed). */
const script_limits *script_registry_limits(const script_registry *r);

#endif
