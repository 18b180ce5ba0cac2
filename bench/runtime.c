/* bench/runtime.c - the graph runner under load (issue 4).
 *
 * (a) throughput: N panels (default 10,000) of a 3-node strategy (two ask_all rounds of 5
 *     experts and a consensus) with zero-latency simulated experts: panels/s, us per node.
 * (b) concurrency: M panels (default 2,000) at once, 5 experts each, 200 ms simulated
 *     latency, 3 rounds: wall time against the 3 x 200 ms critical path (until the runners
 *     are done, and until the last panel.completed is durable and published), and peak RSS
 *     per active panel.
 * Everything runs in-process on a SQLite store in a temp directory (events, checkpoints and
 * usage are all written), or with "memory" on an in-memory SQLite database, which shows the
 * runtime without the file I/O of the store. Usage: bench_runtime [panels_a] [panels_b]
 * [file|memory] */
#include "core/clock.h"
#include "core/config.h"
#include "core/log.h"
#include "core/memtune.h"
#include "panel/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static const char strategy[] =
    "return { name = 'bench', start = 'first', consensus = 'majority',\n"
    "  nodes = {\n"
    "    first = function(ctx)\n"
    "      ctx:emit('round.started', { round = 1 })\n"
    "      local r = ctx:ask_all(ctx.experts, ctx.question, { schema = ctx.state.schema or {\n"
    "        type = 'object', required = { 'position', 'confidence' }, properties = {\n"
    "        position = { type = 'string', enum = { 'yes', 'no', 'depends' } },\n"
    "        confidence = { type = 'number', minimum = 0, maximum = 1 } } }, round = 1 })\n"
    "      ctx.state.first = {}\n"
    "      for i, a in ipairs(r) do ctx.state.first[i] = a.data and a.data.position end\n"
    "      return 'second'\n"
    "    end,\n"
    "    second = function(ctx)\n"
    "      ctx:emit('round.started', { round = 2 })\n"
    "      local r = ctx:ask_all(ctx.experts, function(e) return ctx.question .. '\\nAs ' ..\n"
    "        (e.role or 'expert') .. ', reconsider.' end, { schema = {\n"
    "        type = 'object', required = { 'position', 'confidence' }, properties = {\n"
    "        position = { type = 'string', enum = { 'yes', 'no', 'depends' } },\n"
    "        confidence = { type = 'number', minimum = 0, maximum = 1 } } }, round = 2 })\n"
    "      local ballots = {}\n"
    "      for i, a in ipairs(r) do if a.data then ballots[#ballots + 1] = { expert =\n"
    "        ctx.experts[i].id, position = a.data.position, confidence = a.data.confidence }\n"
    "      end end\n"
    "      ctx.state.ballots = ballots\n"
    "      return 'finish'\n"
    "    end,\n"
    "    finish = function(ctx)\n"
    "      ctx:emit('round.started', { round = 3 })\n"
    "      local r = ctx:ask_all(ctx.experts, ctx.question .. '\\nFinal vote.', { schema = {\n"
    "        type = 'object', required = { 'position' }, properties = {\n"
    "        position = { type = 'string', enum = { 'yes', 'no', 'depends' } } } }, round = 3 })\n"
    "      for i, a in ipairs(r) do if a.data then ctx.state.ballots[i] = { expert =\n"
    "        ctx.experts[i].id, position = a.data.position } end end\n"
    "      local c = ctx:consensus(nil, ctx.state.ballots, {})\n"
    "      return ctx:done({ summary = 'done', recommendation = tostring(c.position),\n"
    "        consensus = c, rounds = 3 })\n"
    "    end } }\n";

static const char consensus[] =
    "return function(ballots, opts)\n"
    "  local counts, best, n = {}, nil, 0\n"
    "  for _, b in ipairs(ballots) do if b.position then\n"
    "    counts[b.position] = (counts[b.position] or 0) + 1 n = n + 1\n"
    "    if not best or counts[b.position] > counts[best] then best = b.position end end end\n"
    "  return { algorithm = 'majority', level = n > 0 and counts[best] / n or 0,\n"
    "    position = best, dissent = {}, details = { n = n } }\n"
    "end\n";

static const char experts[] =
    "[{\"id\":\"a\",\"name\":\"A\",\"role\":\"regulator\",\"persona\":\"careful\"},"
    "{\"id\":\"b\",\"name\":\"B\",\"role\":\"marketer\",\"persona\":\"bold\"},"
    "{\"id\":\"c\",\"name\":\"C\",\"role\":\"clinician\",\"persona\":\"methodical\"},"
    "{\"id\":\"d\",\"name\":\"D\",\"role\":\"safety\",\"persona\":\"skeptical\"},"
    "{\"id\":\"e\",\"name\":\"E\",\"role\":\"patient\",\"persona\":\"empathetic\"}]";

static char dir[64];
static config cfg;
static store *st;
static script_registry *reg;
static char tenant[STORE_ID_MAX];

static void die(const char *what, const ap_err *err)
{
    fprintf(stderr, "bench_runtime: %s: %s\n", what, err != NULL ? err->msg : "");
    exit(1);
}

static void write_file(const char *rel, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        die("cannot write the strategy", NULL);
    fputs(text, f);
    fclose(f);
}

static long peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmHWM:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    if (f != NULL)
        fclose(f);
    return kib;
}

/* CPU seconds used so far by the threads whose name starts with prefix ("ap-runner",
 * "ap-writer"), from /proc/self/task. */
static double thread_cpu(const char *prefix)
{
    double total = 0;
    long hz = sysconf(_SC_CLK_TCK);
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL) {
        char path[300], comm[64] = "", stat[1024];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", de->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        if (fgets(comm, sizeof comm, f) == NULL)
            comm[0] = '\0';
        fclose(f);
        if (strncmp(comm, prefix, strlen(prefix)) != 0)
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/stat", de->d_name);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t n = fread(stat, 1, sizeof stat - 1, f);
        fclose(f);
        stat[n] = '\0';
        /* fields after the ")" of comm: state is 3rd; utime and stime are the 14th and 15th */
        char *p = strrchr(stat, ')');
        int field = 3;
        long long ut = 0, st_ = 0;
        for (char *tok = p != NULL ? p + 2 : stat; tok != NULL && *tok != '\0'; field++) {
            char *end = NULL;
            long long v = strtoll(tok, &end, 10);
            if (field == 14)
                ut = v;
            if (field == 15)
                st_ = v;
            tok = strchr(tok, ' ');
            if (tok != NULL)
                tok++;
        }
        total += (double)(ut + st_) / (double)hz;
    }
    if (d != NULL)
        closedir(d);
    return total;
}

/* CPU seconds (user + system) of the whole process: less sensitive to a busy machine. */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void reset_peak(void)
{
    /* Linux: writing 5 to clear_refs resets VmHWM to the current RSS. */
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f != NULL) {
        fputs("5", f);
        fclose(f);
    }
}

static panel_engine *start(int latency_ms)
{
    char v[32];
    snprintf(v, sizeof v, "%d", latency_ms);
    setenv("ASKPANEL_SIM_LATENCY_MS", v, 1);
    panel_engine_opts o = {.cfg = &cfg, .store = st, .registry = reg, .seed = 1};
    panel_engine *e = NULL;
    ap_err err = {0};
    if (panel_engine_start(&o, &e, &err) != AP_OK)
        die("engine", &err);
    return e;
}

static char (*create_panels(panel_engine *e, int n))[STORE_ID_MAX]
{
    char(*ids)[STORE_ID_MAX] = calloc((size_t)n, STORE_ID_MAX);
    if (ids == NULL)
        die("out of memory", NULL);
    for (int i = 0; i < n; i++) {
        char q[96];
        snprintf(q, sizeof q, "Should product %d launch in Europe first?", i);
        panel_create_req req = {.question = q, .strategy = "bench", .experts_json = experts};
        store_panel out = {0};
        ap_err err = {0};
        if (panel_engine_create(e, tenant, &req, &out, &err) != AP_OK)
            die("create", &err);
        memcpy(ids[i], out.id, STORE_ID_MAX);
        store_panel_free(&out);
    }
    return ids;
}

static int count_status(const char *status)
{
    store_panel_ref *refs = NULL;
    size_t k = 0;
    ap_err err = {0};
    if (store_panels_in_status(st, status, &refs, &k, &err) != AP_OK)
        die("count", &err);
    free(refs);
    return (int)k;
}

static void wait_idle(panel_engine *e)
{
    while (panel_engine_active(e) > 0)
        usleep(500);
}

static int arg_int(const char *s, int dflt)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return end != s && *end == '\0' && v > 0 && v < 10000000 ? (int)v : dflt;
}

static bool in_memory;

static void setup(void)
{
    ap_err err = {0};
    snprintf(dir, sizeof dir, "%s/askpanel-bench-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (mkdtemp(dir) == NULL)
        die("mkdtemp", NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/strategies", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/strategies/consensus", dir);
    mkdir(path, 0755);
    write_file("strategies/bench.lua", strategy);
    write_file("strategies/consensus/majority.lua", consensus);
    /* ASKPANEL_* variables apply as to `askpanel serve` (runtime.runners, say) */
    if (config_defaults(&cfg) != AP_OK || config_apply_env(&cfg, &err) != AP_OK)
        die("config", &err);
    snprintf(path, sizeof path, "%s/strategies", dir);
    if (config_set(&cfg, "strategies_dir", path, "bench", &err) != AP_OK)
        die("config", &err);
    char url[128];
    if (in_memory)
        snprintf(url, sizeof url, "sqlite::memory:");
    else
        snprintf(url, sizeof url, "sqlite:%s/bench.db", dir);
    if (store_open(url, &st, &err) != AP_OK || store_migrate(st, NULL, &err) != AP_OK)
        die("store", &err);
    store_tenant t = {0};
    if (store_tenant_create(st, "bench", "Bench", NULL, &t, &err) != AP_OK)
        die("tenant", &err);
    memcpy(tenant, t.id, sizeof tenant);
    store_tenant_free(&t);
    script_limits lim;
    script_limits_default(&lim);
    if (script_registry_new(&lim, cfg.strategies_dir, cfg.tenants_dir, &reg, &err) != AP_OK)
        die("registry", &err);
}

/* Per-panel timing of (b): from execute to the published (durable) panel.completed. */
typedef struct watch {
    panel_sub *sub;
    int64_t started_us, completed_us;
} watch;

static void on_events(void *ud)
{
    watch *w = ud;
    panel_event ev;
    while (panel_sub_next(w->sub, &ev, 0) == 1) {
        if (strcmp(ev.type, "panel.completed") == 0)
            __atomic_store_n(&w->completed_us, clock_mono_us(), __ATOMIC_RELEASE);
        panel_event_clear(&ev);
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Subscribes a watch to each panel, as a client streaming it would before starting it; not
 * timed: a client's subscription is its own request, not the engine's work of a start. */
static void watch_all(panel_engine *e, char (*ids)[STORE_ID_MAX], int n, watch *w)
{
    for (int i = 0; i < n; i++) {
        ap_err err = {0};
        if (panel_engine_subscribe(e, tenant, ids[i], 1024, on_events, &w[i], &w[i].sub, &err) !=
            AP_OK)
            die("subscribe", &err);
    }
}

static void execute_all(panel_engine *e, char (*ids)[STORE_ID_MAX], int n, watch *w)
{
    for (int i = 0; i < n; i++) {
        ap_err err = {0};
        if (w != NULL)
            w[i].started_us = clock_mono_us();
        if (panel_engine_execute(e, tenant, ids[i], &err) != AP_OK)
            die("execute", &err);
    }
}

int main(int argc, char **argv)
{
    int na = argc > 1 ? arg_int(argv[1], 10000) : 10000;
    int nb = argc > 2 ? arg_int(argv[2], 2000) : 2000;
    in_memory = argc > 3 && strcmp(argv[3], "memory") == 0;
    log_set_level(LOG_LEVEL_ERROR);
    memtune_server(); /* the allocator settings of `askpanel serve` */
    setup();
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    printf("bench_runtime: %ld cores, %ld runner threads, SQLite store %s\n", cores, cores,
           in_memory ? "in memory" : dir);

    /* (a) throughput */
    panel_engine *e = start(0);
    char(*ids)[STORE_ID_MAX] = create_panels(e, na);
    double c0 = cpu_seconds();
    int64_t t0 = clock_mono_us();
    execute_all(e, ids, na, NULL);
    wait_idle(e);
    int64_t t1 = clock_mono_us();
    double runners_busy = thread_cpu("ap-runner");
    while (panel_engine_active(e) > 0)
        usleep(1000);
    panel_engine_stop(e);
    int64_t t2 = clock_mono_us();
    double cpu_a = cpu_seconds() - c0;
    int done_a = count_status("completed");
    double secs = (double)(t1 - t0) / 1e6;
    printf("(a) %d panels x 3 nodes x 5 experts, zero latency: %.2f s, %.0f panels/s, %.1f us "
           "per node (writer drained %.0f ms later); completed %d/%d\n",
           na, secs, na / secs, (double)(t1 - t0) / (na * 3.0), (double)(t2 - t1) / 1000.0, done_a,
           na);
    printf("    CPU %.2f s for all threads incl. the store writer = %.0f us per panel, %.0f us per "
           "node; durable throughput %.0f panels/s\n",
           cpu_a, cpu_a * 1e6 / na, cpu_a * 1e6 / (na * 3.0), na / ((double)(t2 - t0) / 1e6));
    printf(
        "    of which the runner threads (Lua, ctx, simulated LLM, event building): %.2f s = %.0f "
        "us per panel, %.0f us per node\n",
        runners_busy, runners_busy * 1e6 / na, runners_busy * 1e6 / (na * 3.0));
    free(ids);

    /* (b) concurrency and memory */
    e = start(200);
    ids = create_panels(e, nb);
    watch *w = calloc((size_t)nb, sizeof *w);
    int64_t *lat = calloc((size_t)nb, sizeof *lat);
    if (w == NULL || lat == NULL)
        die("out of memory", NULL);
    watch_all(e, ids, nb, w);
    long base = peak_rss_kib();
    reset_peak();
    base = peak_rss_kib();
    double c1 = cpu_seconds();
    t0 = clock_mono_us();
    execute_all(e, ids, nb, w);
    int64_t submitted = clock_mono_us();
    wait_idle(e);
    t1 = clock_mono_us();
    long peak = peak_rss_kib();
    int64_t give_up = clock_mono_us() + 60 * 1000000LL, last_durable = t0;
    for (int i = 0; i < nb; i++) {
        int64_t done;
        while ((done = __atomic_load_n(&w[i].completed_us, __ATOMIC_ACQUIRE)) == 0 &&
               clock_mono_us() < give_up)
            usleep(1000);
        lat[i] = done > 0 ? done - w[i].started_us : INT64_MAX / 2;
        if (done > last_durable)
            last_durable = done;
        panel_engine_unsubscribe(e, w[i].sub);
    }
    double runners_b = thread_cpu("ap-runner"), writer_b = thread_cpu("ap-writer");
    panel_engine_stop(e);
    double cpu_b = cpu_seconds() - c1;
    qsort(lat, (size_t)nb, sizeof *lat, cmp_i64);
    int done_b = count_status("completed") - done_a;
    double wall_ms = (double)(t1 - t0) / 1000.0;
    printf("(b) %d concurrent panels x 5 experts x 3 rounds at 200 ms: wall %.0f ms = %.2f x "
           "the 600 ms critical path (all started within %.0f ms); peak RSS +%ld KiB = %.1f KiB "
           "per active panel; completed %d/%d\n",
           nb, wall_ms, wall_ms / 600.0, (double)(submitted - t0) / 1000.0, peak - base,
           (double)(peak - base) / nb, done_b, nb);
    printf("    per panel, execute -> durable panel.completed: p50 %.0f ms (%.2f x 600 ms), p99 "
           "%.0f ms, max %.0f ms; the last one durable %.0f ms after the first execute (%.2f x)\n",
           lat[nb / 2] / 1000.0, lat[nb / 2] / 600000.0, lat[(nb * 99) / 100] / 1000.0,
           lat[nb - 1] / 1000.0, (double)(last_durable - t0) / 1000.0,
           (double)(last_durable - t0) / 600000.0);
    printf("    CPU %.2f s = %.0f us per panel: runner threads %.0f us, writer %.0f us, the rest "
           "(execute) %.0f us\n",
           cpu_b, cpu_b * 1e6 / nb, runners_b * 1e6 / nb, writer_b * 1e6 / nb,
           (cpu_b - runners_b - writer_b) * 1e6 / nb);
    /* No schedule gets the last completion durable sooner than every core busy from the first
     * execute on: where this floor is near 1.2 x, (b) measures the CPU, not the waiting. */
    printf(
        "    that CPU on %ld cores takes at least %.0f ms = %.2f x the critical path (a floor for "
        "the last durable completion)\n",
        cores, cpu_b * 1e3 / (double)cores, cpu_b * 1e3 / (double)cores / 600.0);
    free(w);
    free(lat);
    free(ids);
    script_registry_free(reg);
    store_close(st);
    config_free(&cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 && done_a == na && done_b == nb ? 0 : 1;
}
