/* store_bench.c - store throughput: batched event inserts (the event writer's group commit)
 * and panel reads by id; a sweep for orphaned panels. Driven by bench/store.sh.
 *
 *   bench_store_bench migrate URL
 *   bench_store_bench run URL [EVENTS [BATCH [READS [THREADS]]]]
 *   bench_store_bench sweep URL [PANELS]
 *
 * `run` creates a tenant with 64 panels, appends EVENTS events in transactions of BATCH rows
 * spread over the panels (THREADS writers, each on its own panels), then reads READS panels by
 * id from THREADS threads. Prints one line per phase with rows/s. `sweep` makes PANELS panels
 * run under another host's live lease, then times what a node's sweep costs: reading every
 * running panel one by one (as sweeps did) against the store's query for panels it may take. */
#include "core/clock.h"
#include "core/ids.h"
#include "store/store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PANELS 64
#define THREADS_MAX 16

static store *S;
static char tenant[STORE_ID_MAX];
static char panels[PANELS][STORE_ID_MAX];
static long events_per_thread, batch, reads_per_thread;
static int threads;

static long arg_long(int argc, char **argv, int i, long dflt)
{
    if (argc <= i)
        return dflt;
    char *end = NULL;
    long v = strtol(argv[i], &end, 10);
    return end != argv[i] && *end == '\0' && v > 0 ? v : dflt;
}

static void *writer(void *arg)
{
    long t = (long)arg;
    /* Each writer owns the panels p with p % threads == t, as one runner owns its panels. */
    int own[PANELS], n_own = 0;
    for (int p = 0; p < PANELS; p++)
        if (p % threads == t)
            own[n_own++] = p;
    int64_t seq[PANELS] = {0};
    store_event *ev = calloc((size_t)batch, sizeof *ev);
    char data[200];
    snprintf(data, sizeof data,
             "{\"expert\":\"Dr. Example\",\"round\":2,\"text\":\"A typical streamed chunk of "
             "an expert answer, about a hundred bytes long.\"}");
    long done = 0;
    void *ret = NULL;
    if (ev == NULL)
        return (void *)1;
    while (done < events_per_thread) {
        long n = events_per_thread - done < batch ? events_per_thread - done : batch;
        for (long i = 0; i < n; i++) {
            int p = own[(done + i) % n_own];
            memcpy(ev[i].panel_id, panels[p], STORE_ID_MAX);
            ev[i].seq = ++seq[p];
            ev[i].type = "message.delta";
            ev[i].data = data;
        }
        ap_err err = {0};
        if (store_events_append(S, tenant, ev, (size_t)n, &err) != AP_OK) {
            fprintf(stderr, "append: %s\n", err.msg);
            ret = (void *)1;
            break;
        }
        done += n;
    }
    free(ev);
    return ret;
}

static void *reader(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    for (long i = 0; i < reads_per_thread; i++) {
        seed = seed * 1103515245u + 12345u;
        store_panel p = {0};
        ap_err err = {0};
        if (store_panel_get(S, tenant, panels[(seed >> 16) % PANELS], &p, &err) != AP_OK) {
            fprintf(stderr, "read: %s\n", err.msg);
            return (void *)1;
        }
        store_panel_free(&p);
    }
    return NULL;
}

/* Runs fn on `threads` threads; returns elapsed microseconds, or -1 on failure. */
static int64_t timed(void *(*fn)(void *))
{
    pthread_t th[THREADS_MAX];
    int64_t t0 = clock_mono_us();
    int ok = 1;
    for (long i = 0; i < threads; i++)
        if (pthread_create(&th[i], NULL, fn, (void *)i) != 0)
            return -1;
    for (long i = 0; i < threads; i++) {
        void *ret = NULL;
        pthread_join(th[i], &ret);
        if (ret != NULL)
            ok = 0;
    }
    int64_t us = clock_mono_us() - t0;
    return ok ? (us > 0 ? us : 1) : -1;
}

/* Opens url and creates a tenant of its own (tenant). */
static ap_status open_with_tenant(const char *url, ap_err *err)
{
    char slug[32];
    unsigned char r[4];
    char hex[9];
    ap_status rc = ids_random(r, sizeof r);
    if (rc != AP_OK)
        return ap_err_set(err, rc, "no randomness");
    ids_hex(r, sizeof r, hex);
    snprintf(slug, sizeof slug, "bench-%s", hex);
    store_tenant t = {0};
    if ((rc = store_open(url, &S, err)) != AP_OK ||
        (rc = store_tenant_create(S, slug, "Bench", NULL, &t, err)) != AP_OK)
        return rc;
    memcpy(tenant, t.id, sizeof tenant);
    store_tenant_free(&t);
    return AP_OK;
}

static ap_status make_panel(char id[STORE_ID_MAX], ap_err *err)
{
    store_panel in = {.question = "How should we price the new device?",
                      .strategy = "debate",
                      .params = "{\"rounds\":3}",
                      .experts = "[{\"name\":\"Dr. Example\",\"role\":\"cardiologist\"}]"},
                out = {0};
    ap_status rc = store_panel_create(S, tenant, &in, &out, err);
    if (rc == AP_OK)
        memcpy(id, out.id, STORE_ID_MAX);
    store_panel_free(&out);
    return rc;
}

static int run(const char *url)
{
    ap_err err = {0};
    int rc = 1;
    if (open_with_tenant(url, &err) != AP_OK)
        goto fail;
    for (int i = 0; i < PANELS; i++)
        if (make_panel(panels[i], &err) != AP_OK)
            goto fail;
    int64_t us = timed(writer);
    if (us < 0)
        goto out;
    long total = events_per_thread * threads;
    printf("%s events: %ld rows in %.3f s, batch %ld, %d writer(s): %.0f rows/s\n",
           store_backend(S), total, (double)us / 1e6, batch, threads,
           (double)total * 1e6 / (double)us);
    us = timed(reader);
    if (us < 0)
        goto out;
    total = reads_per_thread * threads;
    printf("%s panel reads: %ld in %.3f s, %d reader(s): %.0f reads/s\n", store_backend(S), total,
           (double)us / 1e6, threads, (double)total * 1e6 / (double)us);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_store_bench: %s\n", err.msg);
out:
    store_close(S);
    return rc;
}

static int sweep(const char *url, long n)
{
    static const char *const created[] = {"created"};
    ap_err err = {0};
    store_panel_ref *refs = NULL;
    store_lease_ref *free_refs = NULL;
    size_t count = 0, nfree = 0, held = 0;
    int rc = 1;
    if (open_with_tenant(url, &err) != AP_OK)
        goto fail;
    for (long i = 0; i < n; i++) {
        char id[STORE_ID_MAX];
        if (make_panel(id, &err) != AP_OK ||
            store_panel_claim(S, tenant, id, created, 1, "elsewhere:1:beef", 600000, NULL, 0,
                              &err) != AP_OK)
            goto fail;
    }
    int64_t t0 = clock_mono_us();
    if (store_panels_in_status(S, "running", &refs, &count, &err) != AP_OK)
        goto fail;
    for (size_t i = 0; i < count; i++) {
        store_panel row = {0};
        if (store_panel_get(S, refs[i].tenant_id, refs[i].panel_id, &row, &err) != AP_OK)
            goto fail;
        held += row.lease_owner != NULL && row.lease_expires_at > clock_wall_ms();
        store_panel_free(&row);
    }
    int64_t t1 = clock_mono_us();
    if (store_panels_lease_free(S, "here:2:f00d", "here:", NULL, STORE_LEASE_PAGE_MAX, &free_refs,
                                &nfree, &err) != AP_OK)
        goto fail;
    int64_t t2 = clock_mono_us();
    printf("%s sweep of %zu running panels (%zu under a live lease elsewhere): every panel read "
           "%.1f ms, the lease query %.1f ms (%zu to take)\n",
           store_backend(S), count, held, (double)(t1 - t0) / 1e3, (double)(t2 - t1) / 1e3, nfree);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_store_bench: %s\n", err.msg);
out:
    free(refs);
    free(free_refs);
    store_close(S);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "migrate") == 0) {
        ap_err err = {0};
        int applied = 0;
        if (store_open(argv[2], &S, &err) != AP_OK || store_migrate(S, &applied, &err) != AP_OK) {
            fprintf(stderr, "bench_store_bench: %s\n", err.msg);
            store_close(S);
            return 1;
        }
        store_close(S);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "run") == 0) {
        long events = arg_long(argc, argv, 3, 200000);
        batch = arg_long(argc, argv, 4, 256);
        long reads = arg_long(argc, argv, 5, 20000);
        threads = (int)arg_long(argc, argv, 6, 1);
        if (threads > THREADS_MAX)
            threads = THREADS_MAX;
        if (batch > 10000)
            batch = 10000;
        events_per_thread = events / threads;
        reads_per_thread = reads / threads;
        return run(argv[2]);
    }
    if (argc >= 3 && strcmp(argv[1], "sweep") == 0)
        return sweep(argv[2], arg_long(argc, argv, 3, 5000));
    fprintf(stderr, "usage: bench_store_bench migrate URL\n"
                    "       bench_store_bench run URL [EVENTS [BATCH [READS [THREADS]]]]\n"
                    "       bench_store_bench sweep URL [PANELS]\n");
    return 2;
}
