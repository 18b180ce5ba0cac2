#include "script/registry.h"

#include "core/fileio.h"
#include "core/log.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCRIPT_MAX_BYTES (1024 * 1024)
#define REGISTRY_MAX_ENTRIES 4096
/* Sources kept for versions validated by hash (uploads, pinned versions read back from the
 * store): only a cache, as the store keeps every source, so the oldest go past this. Without
 * it every version ever uploaded stayed in memory (4096 of up to 1 MiB each), and once the
 * table was full a file's good version could no longer be kept. */
#define REGISTRY_VERSION_BYTES (64 * 1024 * 1024)
#define REGISTRY_MAX_NAMES 1024

/* Newest content wins. Every read of a file takes a ticket (r->seq, under the lock) before it
 * opens the file, so a read with a later ticket saw the file no earlier than one with an
 * earlier ticket. What a read found is stored only if no entry with a later ticket is there
 * (a slow reload cannot put back what a faster, later one replaced) and no reload began after
 * the ticket: that reload looked only at the paths cached when it began, so it could not
 * re-read this one if the file changed after this read. Such a read is still returned to its
 * caller, and the next resolve reads the file again. */
typedef struct cached {
    char *key;     /* a file path, or "version:<hash>" for validated sources */
    uint64_t seq;  /* files: the ticket of the read that found this entry */
    uint64_t born; /* insertion order, to evict the oldest version first */
    script_entry entry;
} cached;

/* A file as stat sees it: replaced, rewritten, or turned into something else, it differs. */
typedef struct file_id {
    dev_t dev;
    ino_t ino;
    mode_t mode;
    off_t size;
    struct timespec mtime, ctime;
} file_id;

/* A file that could not be used, remembered so that it is logged and checked once per
 * version rather than on every request. */
typedef struct rejected {
    char *path;
    file_id id;
} rejected;

struct script_registry {
    script_limits lim;
    char *strategies_dir;
    char *tenants_dir;
    pthread_mutex_t mu;
    cached *items;
    size_t n, cap;
    uint64_t seq;         /* the last ticket given to a read */
    uint64_t births;      /* entries inserted so far */
    size_t version_bytes; /* of the "version:" entries' sources */
    uint64_t reload_seq;  /* the ticket the last reload began with */
    rejected *bad;
    size_t nbad, badcap;
    pthread_t watcher;
    bool watching;
    bool strategies_watched; /* when the watcher starts: the strategies folder was there */
    int inotify_fd;
    int stop_fd;
};

void script_entry_free(script_entry *e)
{
    if (e == NULL)
        return;
    free(e->name);
    free(e->source);
    free(e->origin);
    script_info_free(&e->info);
    memset(e, 0, sizeof *e);
}

void script_entries_free(script_entry *rows, size_t n)
{
    for (size_t i = 0; rows != NULL && i < n; i++)
        script_entry_free(&rows[i]);
    free(rows);
}

static char *dup_opt(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

ap_status script_entry_copy(const script_entry *src, script_entry *dst)
{
    memset(dst, 0, sizeof *dst);
    dst->kind = src->kind;
    memcpy(dst->version, src->version, sizeof dst->version);
    dst->len = src->len;
    dst->name = strdup(src->name);
    dst->source = malloc(src->len + 1);
    dst->origin = strdup(src->origin);
    dst->info.kind = src->info.kind;
    dst->info.name = dup_opt(src->info.name);
    dst->info.description = dup_opt(src->info.description);
    dst->info.start = dup_opt(src->info.start);
    dst->info.consensus = dup_opt(src->info.consensus);
    dst->info.params_json = dup_opt(src->info.params_json);
    dst->info.nodes_json = dup_opt(src->info.nodes_json);
    if (dst->source != NULL) {
        memcpy(dst->source, src->source, src->len);
        dst->source[src->len] = '\0';
    }
    if (dst->name == NULL || dst->source == NULL || dst->origin == NULL) {
        script_entry_free(dst);
        return AP_NOMEM;
    }
    return AP_OK;
}

const script_limits *script_registry_limits(const script_registry *r)
{
    return &r->lim;
}

/* A registry whose strategies directory is missing still serves tenant scripts, but finds no
 * built-in name at all: say so once, with where a relative path was looked up, since the usual
 * cause is `askpanel run` or `check` started from another directory. */
static void warn_if_missing(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
        return;
    char cwd[4096] = "";
    if (dir[0] != '/' && getcwd(cwd, sizeof cwd) == NULL)
        cwd[0] = '\0';
    log_warn("script registry: the strategies directory '%s'%s%s%s is not a directory, so no "
             "built-in strategy or consensus algorithm can be found: run from the Ask Panel "
             "directory or set strategies_dir (ASKPANEL_STRATEGIES_DIR)",
             dir, cwd[0] != '\0' ? " (relative to " : "", cwd, cwd[0] != '\0' ? ")" : "");
}

ap_status script_registry_new(const script_limits *lim, const char *strategies_dir,
                              const char *tenants_dir, script_registry **out, ap_err *err)
{
    *out = NULL;
    script_registry *r = calloc(1, sizeof *r);
    if (r == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    r->lim = *lim;
    r->strategies_dir = strdup(strategies_dir != NULL ? strategies_dir : "strategies");
    r->tenants_dir = strdup(tenants_dir != NULL ? tenants_dir : "config/tenants");
    r->inotify_fd = r->stop_fd = -1;
    pthread_mutex_init(&r->mu, NULL);
    if (r->strategies_dir == NULL || r->tenants_dir == NULL) {
        script_registry_free(r);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    warn_if_missing(r->strategies_dir);
    *out = r;
    return AP_OK;
}

void script_registry_free(script_registry *r)
{
    if (r == NULL)
        return;
    if (r->watching) {
        uint64_t one = 1;
        ssize_t w = write(r->stop_fd, &one, sizeof one);
        (void)w;
        pthread_join(r->watcher, NULL);
    }
    if (r->inotify_fd >= 0)
        close(r->inotify_fd);
    if (r->stop_fd >= 0)
        close(r->stop_fd);
    for (size_t i = 0; i < r->n; i++) {
        free(r->items[i].key);
        script_entry_free(&r->items[i].entry);
    }
    free(r->items);
    for (size_t i = 0; i < r->nbad; i++)
        free(r->bad[i].path);
    free(r->bad);
    free(r->strategies_dir);
    free(r->tenants_dir);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Reads a whole script file; AP_NOTFOUND when it does not exist. */
static ap_status read_file(const char *path, char **out, size_t *len, ap_err *err)
{
    ap_err inner = {0};
    ap_status rc = fileio_read(path, SCRIPT_MAX_BYTES, out, len, &inner);
    return rc == AP_OK || rc == AP_NOTFOUND ? rc : ap_err_set(err, rc, "%s", inner.msg);
}

static ap_status make_entry(const script_registry *r, script_kind kind, const char *name,
                            char *source, size_t len, const char *origin, script_entry *out,
                            ap_err *err)
{
    memset(out, 0, sizeof *out);
    /* A script's top level only builds its tables: checking it (on an upload's request thread
     * too) gets a check's budgets, not a node's. */
    script_limits lim;
    script_limits_for_check(&r->lim, &lim);
    ap_status rc = script_inspect(&lim, kind, name, source, len, &out->info, err);
    if (rc != AP_OK) {
        free(source);
        return rc;
    }
    out->kind = kind;
    out->name = strdup(name);
    out->origin = strdup(origin);
    out->source = source;
    out->len = len;
    ids_sha256_hex(source, len, out->version);
    if (out->name == NULL || out->origin == NULL) {
        script_entry_free(out);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    return AP_OK;
}

static cached *find_locked(script_registry *r, const char *key)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->items[i].key, key) == 0)
            return &r->items[i];
    return NULL;
}

static bool is_version_key(const char *key)
{
    return strncmp(key, "version:", 8) == 0;
}

/* Drops the oldest "version:" entry; false when there is none. */
static bool evict_version_locked(script_registry *r)
{
    size_t at = r->n;
    for (size_t i = 0; i < r->n; i++)
        if (is_version_key(r->items[i].key) && (at == r->n || r->items[i].born < r->items[at].born))
            at = i;
    if (at == r->n)
        return false;
    r->version_bytes -= r->items[at].entry.len;
    free(r->items[at].key);
    script_entry_free(&r->items[at].entry);
    r->items[at] = r->items[--r->n];
    return true;
}

/* Takes ownership of e on success. Invalidates pointers into the table. */
static ap_status insert_locked(script_registry *r, const char *key, uint64_t seq, script_entry *e)
{
    bool version = is_version_key(key);
    while ((r->n >= REGISTRY_MAX_ENTRIES ||
            (version && r->version_bytes + e->len > REGISTRY_VERSION_BYTES)) &&
           evict_version_locked(r))
        ;
    if (r->n >= REGISTRY_MAX_ENTRIES)
        return AP_LIMIT;
    if (r->n == r->cap) {
        if (r->cap >= REGISTRY_MAX_ENTRIES)
            return AP_LIMIT;
        size_t cap = r->cap ? r->cap * 2 : 32;
        cached *items = realloc(r->items, cap * sizeof *items);
        if (items == NULL)
            return AP_NOMEM;
        r->items = items;
        r->cap = cap;
    }
    char *k = strdup(key);
    if (k == NULL)
        return AP_NOMEM;
    r->items[r->n].key = k;
    r->items[r->n].seq = seq;
    r->items[r->n].born = r->births++;
    r->items[r->n].entry = *e;
    r->n++;
    if (version)
        r->version_bytes += e->len;
    memset(e, 0, sizeof *e);
    return AP_OK;
}

static void path_of(const script_registry *r, const char *slug, script_kind kind, const char *name,
                    char *path, size_t cap)
{
    const char *sub = kind == SCRIPT_CONSENSUS ? "/consensus" : "";
    if (slug != NULL)
        snprintf(path, cap, "%s/%s/strategies%s/%s.lua", r->tenants_dir, slug, sub, name);
    else
        snprintf(path, cap, "%s%s/%s.lua", r->strategies_dir, sub, name);
}

static bool safe_component(const char *s)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 64)
        return false;
    for (const char *p = s; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
            return false;
    return true;
}

/* False when nothing is at path (a dangling symlink included). A symlink that loops is
 * described by lstat, so that it too is remembered as rejected. */
static bool file_id_of(const char *path, file_id *id)
{
    struct stat st;
    memset(id, 0, sizeof *id);
    if (stat(path, &st) != 0 && (errno == ENOENT || lstat(path, &st) != 0))
        return false;
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->mode = st.st_mode;
    id->size = st.st_size;
    id->mtime = st.st_mtim;
    id->ctime = st.st_ctim;
    return true;
}

static bool file_id_equal(const file_id *a, const file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->mode == b->mode && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

static rejected *find_rejected_locked(script_registry *r, const char *path)
{
    for (size_t i = 0; i < r->nbad; i++)
        if (strcmp(r->bad[i].path, path) == 0)
            return &r->bad[i];
    return NULL;
}

/* Remembers that path, as id describes it, cannot be used. False when that was known already,
 * so only the first of many requests logs it (a file that cannot be remembered is logged
 * each time rather than never). */
static bool reject_locked(script_registry *r, const char *path, const file_id *id)
{
    rejected *b = find_rejected_locked(r, path);
    if (b != NULL) {
        bool known = file_id_equal(&b->id, id);
        b->id = *id;
        return !known;
    }
    if (r->nbad == r->badcap) {
        size_t cap = r->badcap ? r->badcap * 2 : 8;
        rejected *bad = cap <= REGISTRY_MAX_ENTRIES ? realloc(r->bad, cap * sizeof *bad) : NULL;
        if (bad == NULL)
            return true;
        r->bad = bad;
        r->badcap = cap;
    }
    char *copy = strdup(path);
    if (copy == NULL)
        return true;
    r->bad[r->nbad++] = (rejected){.path = copy, .id = *id};
    return true;
}

/* Stores what the read with this ticket found, under the rule at the top of this file. */
static void store_read_locked(script_registry *r, const char *path, uint64_t seq, script_entry *e)
{
    cached *c = find_locked(r, path);
    if (r->reload_seq > seq || (c != NULL && c->seq > seq))
        return;
    if (c == NULL) {
        /* named before the insert, which takes the entry over and clears *e */
        char version[16];
        snprintf(version, sizeof version, "%.12s", e->version);
        if (insert_locked(r, path, seq, e) == AP_OK)
            log_info("script registry: loaded %s (version %s)", path, version);
        return;
    }
    script_entry old = c->entry;
    c->entry = *e;
    c->seq = seq;
    memset(e, 0, sizeof *e);
    script_entry_free(&old);
}

/* Resolves one path: from the cache, else loads and validates the file. A file that cannot be
 * used is logged with its path and why, once per version of the file. */
static ap_status resolve_path(script_registry *r, const char *path, script_kind kind,
                              const char *name, const char *origin, script_entry *out, ap_err *err)
{
    script_entry e = {0};
    ap_err inner = {0};
    file_id id;
    char *src = NULL;
    size_t len = 0;
    pthread_mutex_lock(&r->mu);
    cached *c = find_locked(r, path);
    ap_status rc = c != NULL ? script_entry_copy(&c->entry, out) : AP_NOTFOUND;
    uint64_t seq = ++r->seq;
    pthread_mutex_unlock(&r->mu);
    if (c != NULL) {
        if (rc != AP_OK)
            ap_err_set(err, rc, "out of memory");
        goto out;
    }
    if (!file_id_of(path, &id)) {
        rc = AP_NOTFOUND;
        goto out;
    }
    pthread_mutex_lock(&r->mu);
    rejected *b = find_rejected_locked(r, path);
    bool known_bad = b != NULL && file_id_equal(&b->id, &id);
    pthread_mutex_unlock(&r->mu);
    if (known_bad) {
        rc = ap_err_set(err, AP_INVALID, "rejected before");
        goto out;
    }
    rc = read_file(path, &src, &len, &inner);
    if (rc == AP_OK)
        rc = make_entry(r, kind, name, src, len, origin, &e, &inner);
    if (rc == AP_OK)
        rc = script_entry_copy(&e, out);
    if (rc == AP_NOMEM)
        ap_err_set(err, rc, "out of memory");
    if (rc == AP_NOMEM || rc == AP_NOTFOUND)
        goto out;
    pthread_mutex_lock(&r->mu);
    bool first = rc != AP_OK && reject_locked(r, path, &id);
    if (rc == AP_OK)
        store_read_locked(r, path, seq, &e);
    pthread_mutex_unlock(&r->mu);
    if (first)
        log_warn("script registry: skipping %s until it changes: %s", path, inner.msg);
    if (rc != AP_OK)
        ap_err_set(err, rc, "%s", inner.msg);
out:
    script_entry_free(&e);
    return rc;
}

ap_status script_registry_resolve(script_registry *r, const char *tenant_slug, script_kind kind,
                                  const char *name, script_entry *out, ap_err *err)
{
    char path[4096 + 256];
    const char *what = kind == SCRIPT_CONSENSUS ? "consensus algorithm" : "strategy";
    ap_status skipped = AP_NOTFOUND;
    ap_status rc;
    memset(out, 0, sizeof *out);
    if (!safe_component(name))
        return ap_err_set(err, AP_INVALID, "bad script name '%.70s'", name);
    /* A tenant file that cannot be used leaves the tenant what it had without it. */
    if (tenant_slug != NULL && safe_component(tenant_slug)) {
        path_of(r, tenant_slug, kind, name, path, sizeof path);
        rc = resolve_path(r, path, kind, name, "tenant-dir", out, err);
        if (rc == AP_OK || rc == AP_NOMEM)
            return rc;
        skipped = rc;
    }
    path_of(r, NULL, kind, name, path, sizeof path);
    rc = resolve_path(r, path, kind, name, "builtin", out, err);
    if (rc == AP_NOTFOUND)
        rc = skipped;
    if (rc == AP_NOTFOUND)
        return ap_err_set(err, AP_NOTFOUND, "no %s named '%s'", what, name);
    /* The message may reach a tenant: it names the script, not the server's file (the log
     * has that). */
    if (rc != AP_OK && rc != AP_NOMEM)
        return ap_err_set(err, rc == AP_IO ? AP_IO : AP_INVALID,
                          "%s '%s' cannot be loaded (the server log says why)", what, name);
    return rc;
}

ap_status script_registry_validate(script_registry *r, script_kind kind, const char *name,
                                   const char *source, size_t len, const char *origin,
                                   script_entry *out, ap_err *err)
{
    char key[IDS_SHA256_HEX_LEN + 96];
    char version[IDS_SHA256_HEX_LEN + 1];
    memset(out, 0, sizeof *out);
    if (!safe_component(name))
        return ap_err_set(err, AP_INVALID, "bad script name '%.70s'", name);
    ids_sha256_hex(source, len, version);
    snprintf(key, sizeof key, "version:%d:%s:%s", (int)kind, name, version);
    pthread_mutex_lock(&r->mu);
    cached *c = find_locked(r, key);
    ap_status rc = c != NULL ? script_entry_copy(&c->entry, out) : AP_NOTFOUND;
    pthread_mutex_unlock(&r->mu);
    if (c != NULL) {
        if (rc == AP_OK && origin != NULL) {
            free(out->origin);
            out->origin = strdup(origin);
            if (out->origin == NULL) {
                script_entry_free(out);
                rc = AP_NOMEM;
            }
        }
        return rc == AP_OK ? AP_OK : ap_err_set(err, rc, "out of memory");
    }
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    memcpy(copy, source, len);
    copy[len] = '\0';
    script_entry e;
    rc = make_entry(r, kind, name, copy, len, origin != NULL ? origin : "override", &e, err);
    if (rc != AP_OK)
        return rc;
    if ((rc = script_entry_copy(&e, out)) != AP_OK) {
        script_entry_free(&e);
        return ap_err_set(err, rc, "out of memory");
    }
    pthread_mutex_lock(&r->mu);
    if (find_locked(r, key) == NULL)
        insert_locked(r, key, 0, &e);
    pthread_mutex_unlock(&r->mu);
    script_entry_free(&e);
    return AP_OK;
}

ap_status script_registry_cached_version(script_registry *r, script_kind kind, const char *name,
                                         const char *version, script_entry *out)
{
    char key[IDS_SHA256_HEX_LEN + 96];
    memset(out, 0, sizeof *out);
    snprintf(key, sizeof key, "version:%d:%s:%s", (int)kind, name, version);
    ap_status rc = AP_NOTFOUND;
    pthread_mutex_lock(&r->mu);
    cached *c = find_locked(r, key);
    for (size_t i = 0; c == NULL && i < r->n; i++) {
        const script_entry *en = &r->items[i].entry;
        if (en->kind == kind && strcmp(en->name, name) == 0 && strcmp(en->version, version) == 0)
            c = &r->items[i];
    }
    if (c != NULL)
        rc = script_entry_copy(&c->entry, out);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* Whether path is a tenant's override (under tenants_dir) rather than a built-in. */
static bool is_override(const script_registry *r, const char *path)
{
    size_t n = strlen(r->tenants_dir);
    return strncmp(path, r->tenants_dir, n) == 0 && path[n] == '/';
}

/* Re-reads one cached file with the given ticket; counts a change in *count. */
static void reload_one(script_registry *r, const char *key, script_kind kind, const char *name,
                       const char *origin, uint64_t seq, size_t *count)
{
    char *src = NULL;
    size_t len = 0;
    ap_err inner = {0};
    script_entry e = {0};
    char version[IDS_SHA256_HEX_LEN + 1];
    ap_status rc = read_file(key, &src, &len, &inner);
    if (rc == AP_NOTFOUND && is_override(r, key)) {
        /* A deleted tenant override is taken out, so the tenant falls back to the built-in.
         * (A built-in that is gone, perhaps for a moment while a deploy swaps folders, keeps
         * its loaded version, as a broken one does.) Running panels keep their pinned
         * version in any case. */
        pthread_mutex_lock(&r->mu);
        cached *c = find_locked(r, key);
        if (c != NULL && c->seq < seq) {
            script_entry_free(&c->entry);
            free(c->key);
            *c = r->items[--r->n];
            (*count)++;
        }
        pthread_mutex_unlock(&r->mu);
        log_info("script reload: %s is gone; the tenant's panels fall back to the built-in", key);
        goto out;
    }
    if (rc != AP_OK) {
        log_warn("script reload: %s: %s; keeping the loaded version", key,
                 rc == AP_NOTFOUND ? "file is gone" : inner.msg);
        goto out;
    }
    ids_sha256_hex(src, len, version);
    pthread_mutex_lock(&r->mu);
    cached *c = find_locked(r, key);
    bool same = c != NULL && strcmp(c->entry.version, version) == 0;
    /* unchanged, but seen now: a slower reload's older read must not replace it */
    if (same && c->seq < seq)
        c->seq = seq;
    pthread_mutex_unlock(&r->mu);
    if (same)
        goto out;
    rc = make_entry(r, kind, name, src, len, origin, &e, &inner);
    src = NULL;
    if (rc != AP_OK) {
        log_warn("script reload: %s rejected, keeping the loaded version: %s", key, inner.msg);
        goto out;
    }
    pthread_mutex_lock(&r->mu);
    c = find_locked(r, key);
    bool newer = c != NULL && c->seq < seq;
    if (newer) {
        script_entry old = c->entry;
        c->entry = e;
        c->seq = seq;
        memset(&e, 0, sizeof e);
        script_entry_free(&old);
        (*count)++;
    }
    pthread_mutex_unlock(&r->mu);
    if (newer)
        log_info("script reload: %s now at version %.12s", key, version);
out:
    free(src);
    script_entry_free(&e);
}

ap_status script_registry_reload(script_registry *r, size_t *changed, ap_err *err)
{
    size_t count = 0;
    (void)err;
    /* Snapshot the file keys, then validate outside the lock (validation runs scripts). A
     * reload also forgets the rejected files, so each is tried (and logged) again. */
    pthread_mutex_lock(&r->mu);
    r->reload_seq = ++r->seq;
    for (size_t i = 0; i < r->nbad; i++)
        free(r->bad[i].path);
    r->nbad = 0;
    size_t n = r->n;
    char **keys = calloc(n > 0 ? n : 1, sizeof *keys);
    script_kind *kinds = calloc(n > 0 ? n : 1, sizeof *kinds);
    char **names = calloc(n > 0 ? n : 1, sizeof *names);
    char **origins = calloc(n > 0 ? n : 1, sizeof *origins);
    size_t k = 0;
    for (size_t i = 0; keys != NULL && kinds != NULL && names != NULL && origins != NULL && i < n;
         i++) {
        if (is_version_key(r->items[i].key))
            continue;
        keys[k] = strdup(r->items[i].key);
        names[k] = strdup(r->items[i].entry.name);
        origins[k] = strdup(r->items[i].entry.origin);
        kinds[k] = r->items[i].entry.kind;
        k++;
    }
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < k; i++) {
        if (keys[i] == NULL || names[i] == NULL || origins[i] == NULL)
            continue;
        pthread_mutex_lock(&r->mu);
        uint64_t seq = ++r->seq;
        pthread_mutex_unlock(&r->mu);
        reload_one(r, keys[i], kinds[i], names[i], origins[i], seq, &count);
    }
    for (size_t i = 0; i < k; i++) {
        free(keys[i]);
        free(names[i]);
        free(origins[i]);
    }
    free(keys);
    free(kinds);
    free(names);
    free(origins);
    if (changed != NULL)
        *changed = count;
    return AP_OK;
}

/* ---- inotify watcher -------------------------------------------------------------------- */

static bool add_watch(int fd, const char *dir)
{
    uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM |
                    IN_DELETE_SELF | IN_MOVE_SELF;
    return inotify_add_watch(fd, dir, mask) >= 0; /* a missing directory is not watched */
}

/* Watches every script folder there is now, and the tenants folder for new tenants. Adding a
 * watch twice is harmless, so this runs again after every change: a folder deleted and
 * created again (a checkout, a deploy that swaps directories) is watched anew. False while
 * the strategies folder itself is missing. */
static bool add_watches(script_registry *r)
{
    char path[4096 + 256];
    bool present = add_watch(r->inotify_fd, r->strategies_dir);
    snprintf(path, sizeof path, "%s/consensus", r->strategies_dir);
    add_watch(r->inotify_fd, path);
    add_watch(r->inotify_fd, r->tenants_dir);
    DIR *d = opendir(r->tenants_dir);
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL) {
        if (!safe_component(de->d_name))
            continue;
        snprintf(path, sizeof path, "%s/%s/strategies", r->tenants_dir, de->d_name);
        add_watch(r->inotify_fd, path);
        snprintf(path, sizeof path, "%s/%s/strategies/consensus", r->tenants_dir, de->d_name);
        add_watch(r->inotify_fd, path);
    }
    if (d != NULL)
        closedir(d);
    return present;
}

/* While the strategies folder is missing (between a deploy's delete and its copy), looks
 * for it again every second. */
#define WATCH_RETRY_MS 1000

static void *watch_main(void *arg)
{
    script_registry *r = arg;
    struct pollfd fds[2] = {{r->inotify_fd, POLLIN, 0}, {r->stop_fd, POLLIN, 0}};
    char buffer[16384];
    bool present = r->strategies_watched;
    for (;;) {
        int ready = poll(fds, 2, present ? -1 : WATCH_RETRY_MS);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[1].revents != 0)
            break;
        if (ready == 0) {
            if ((present = add_watches(r)))
                script_registry_reload(r, NULL, NULL);
            continue;
        }
        if (fds[0].revents != 0) {
            /* Editors write in several steps: let them settle, then reload once. */
            usleep(100 * 1000);
            while (read(r->inotify_fd, buffer, sizeof buffer) > 0) {
            }
            present = add_watches(r);
            script_registry_reload(r, NULL, NULL);
        }
    }
    return NULL;
}

ap_status script_registry_watch(script_registry *r, ap_err *err)
{
    if (r->watching)
        return AP_OK;
    r->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    r->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (r->inotify_fd < 0 || r->stop_fd < 0)
        return ap_err_set(err, AP_IO, "inotify: %s", strerror(errno));
    /* before returning: a change right after start is seen */
    r->strategies_watched = add_watches(r);
    if (pthread_create(&r->watcher, NULL, watch_main, r) != 0)
        return ap_err_set(err, AP_ERROR, "cannot start the script watcher");
    r->watching = true;
    return AP_OK;
}

/* ---- listing ----------------------------------------------------------------------------- */

static void collect_names(const char *dir, char **names, size_t *n)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL && *n < REGISTRY_MAX_NAMES) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 4, ".lua") != 0)
            continue;
        char *name = strndup(de->d_name, len - 4);
        if (name == NULL || !safe_component(name)) {
            free(name);
            continue;
        }
        bool dup = false;
        for (size_t i = 0; i < *n && !dup; i++)
            dup = strcmp(names[i], name) == 0;
        if (dup)
            free(name);
        else
            names[(*n)++] = name;
    }
    if (d != NULL)
        closedir(d);
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const script_entry *)a)->name, ((const script_entry *)b)->name);
}

ap_status script_registry_list(script_registry *r, const char *tenant_slug, script_kind kind,
                               script_entry **rows, size_t *n, ap_err *err)
{
    char dir[4096 + 128];
    char **names = calloc(REGISTRY_MAX_NAMES, sizeof *names);
    size_t nn = 0;
    *rows = NULL;
    *n = 0;
    if (names == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    const char *sub = kind == SCRIPT_CONSENSUS ? "/consensus" : "";
    if (tenant_slug != NULL && safe_component(tenant_slug)) {
        snprintf(dir, sizeof dir, "%s/%s/strategies%s", r->tenants_dir, tenant_slug, sub);
        collect_names(dir, names, &nn);
    }
    snprintf(dir, sizeof dir, "%s%s", r->strategies_dir, sub);
    collect_names(dir, names, &nn);
    script_entry *out = calloc(nn > 0 ? nn : 1, sizeof *out);
    ap_status rc = out != NULL ? AP_OK : ap_err_set(err, AP_NOMEM, "out of memory");
    size_t k = 0;
    /* The same resolution as a request's, so a name is listed exactly when it can be used;
     * a file that cannot be was logged by the resolution, once per version. */
    for (size_t i = 0; rc == AP_OK && i < nn; i++) {
        ap_err inner = {0};
        ap_status one = script_registry_resolve(r, tenant_slug, kind, names[i], &out[k], &inner);
        if (one == AP_OK)
            k++;
        else if (one == AP_NOMEM)
            rc = ap_err_set(err, one, "out of memory");
    }
    for (size_t i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    if (rc != AP_OK) {
        script_entries_free(out, k);
        return rc;
    }
    qsort(out, k, sizeof *out, cmp_entry);
    *rows = out;
    *n = k;
    return AP_OK;
}
