/* llm_fanout - one runner loop, N concurrent streaming LLM calls to mockllm.
 *
 *   bench_llm_fanout [--calls 5000] [--latency-ms 200] [--token-ms 10] [--tokens 50]
 *                    [--provider openai|anthropic] [--rounds 2] [--mockllm PATH]
 *                    [--http-version auto|1.1|2] [--tls 0|1] [--rate N]
 *
 * Starts mockllm, submits every call at once through the public llm.h API on one llm_loop
 * (this thread), and runs the loop until all are done. With --rate N the calls arrive at N per
 * second instead, submitted from the loop, as a gateway sees traffic (and as gateways publish
 * their overhead): the added latency is then the engine's own, not queueing behind a burst.
 * Every round over clear text first runs the same calls without the engine (plain sockets on
 * the same loop, the bytes scanned only for the stream's end, paced the same way) and reports
 * the engine's wall and latency over that baseline: the floor that mockllm and the loopback
 * set on this machine, which no client can go below. Per
 * round it reports wall time, the engine's CPU seconds per 1,000 calls (this process only;
 * mockllm's CPU is reported apart), peak RSS, and the latency the engine adds to each call:
 * observed time minus the time the server schedule takes (latency + (tokens - 1) x token time), at
 * the median and p99. Round 1 pays for the TCP connects; later rounds reuse the kept-alive
 * connections. */
#include "core/jsonx.h"
#include "llm/llm.h"
#include "../tests/support/mockllm_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct call_stat {
    int64_t submit_us, first_us, done_us;
    int deltas;
    ap_status status;
} call_stat;

typedef struct opts {
    long calls, latency_ms, token_ms, tokens, rounds;
    long rate; /* calls per second; 0 submits them all at once */
    const char *provider, *mockllm, *http_version;
    long tls;      /* HTTPS to mockllm: HTTP/2 through ALPN, as with the real providers */
    char cert[64]; /* mockllm writes its self-signed certificate here */
} opts;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long done_count;

static void on_delta(void *ud, const char *text, size_t len)
{
    (void)text, (void)len;
    call_stat *s = ud;
    if (s->deltas++ == 0)
        s->first_us = now_us();
}

static void on_done(void *ud, const llm_response *r)
{
    call_stat *s = ud;
    s->done_us = now_us();
    s->status = r->status;
    if (r->status != AP_OK && done_count < 3)
        fprintf(stderr, "call failed: %s\n", r->error ? r->error : "?");
    done_count++;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* One blocking request to mockllm's control endpoints; the JSON body, or NULL. */
static cJSON *mock_get(int port, const char *method, const char *path)
{
    char req[256], resp[8192];
    size_t used = 0;
    ssize_t r;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     method, path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    while (used < sizeof resp - 1 && (r = read(fd, resp + used, sizeof resp - 1 - used)) > 0)
        used += (size_t)r;
    close(fd);
    resp[used] = '\0';
    const char *body = strstr(resp, "\r\n\r\n");
    return body != NULL ? cJSON_Parse(body + 4) : NULL;
}

static pid_t start_mock(const opts *o, int *port)
{
    char lat[32], tok[32], n[32];
    snprintf(lat, sizeof lat, "%ld", o->latency_ms);
    snprintf(tok, sizeof tok, "%ld", o->token_ms);
    snprintf(n, sizeof n, "%ld", o->tokens);
    const char *args[] = {
        "--latency-ms", lat, "--token-ms", tok, "--tokens", n, o->tls ? "--tls-cert-out" : NULL,
        o->cert,        NULL};
    return mockllm_spawn(o->mockllm, args, port);
}

static bool parse(int argc, char **argv, opts *o)
{
    const char *env = getenv("MOCKLLM_BIN");
    *o = (opts){.calls = 5000,
                .latency_ms = 200,
                .token_ms = 10,
                .tokens = 50,
                .rounds = 2,
                .provider = "openai",
                .mockllm = env != NULL ? env : "build/mockllm",
                .http_version = "auto"};
    for (int i = 1; i + 1 < argc; i += 2) {
        char *end = NULL;
        long v = strtol(argv[i + 1], &end, 10);
        bool num = end != argv[i + 1] && *end == '\0' && v >= 0 && v <= 1000000;
        if (strcmp(argv[i], "--provider") == 0)
            o->provider = argv[i + 1];
        else if (strcmp(argv[i], "--mockllm") == 0)
            o->mockllm = argv[i + 1];
        else if (strcmp(argv[i], "--http-version") == 0)
            o->http_version = argv[i + 1];
        else if (num && strcmp(argv[i], "--calls") == 0)
            o->calls = v > 0 ? v : 1;
        else if (num && strcmp(argv[i], "--latency-ms") == 0)
            o->latency_ms = v;
        else if (num && strcmp(argv[i], "--token-ms") == 0)
            o->token_ms = v;
        else if (num && strcmp(argv[i], "--tokens") == 0)
            o->tokens = v > 0 ? v : 1;
        else if (num && strcmp(argv[i], "--rounds") == 0)
            o->rounds = v > 0 ? v : 1;
        else if (num && strcmp(argv[i], "--tls") == 0)
            o->tls = v != 0;
        else if (num && strcmp(argv[i], "--rate") == 0)
            o->rate = v;
        else
            return false;
    }
    return argc % 2 == 1;
}

/* ---- the baseline: the same calls over plain sockets, without the engine -------------- */

typedef struct direct {
    llm_loop *loop;
    int port;
    char req[512];
    size_t req_len;
    int *idle; /* kept-alive connections, room for one per call */
    size_t n_idle, cap_idle;
} direct;

typedef struct dcall {
    direct *d;
    call_stat *st;
    int fd;
    bool saw_done; /* the [DONE] event went by: only the chunked body's end is left */
    char tail[8];  /* the last bytes of the previous read, for markers split across reads */
    size_t tail_len;
} dcall;

static bool direct_init(direct *d, llm_loop *loop, int port, long calls)
{
    static const char body[] = "{\"model\":\"m\",\"stream\":true,\"stream_options\":"
                               "{\"include_usage\":true},\"messages\":[{\"role\":\"user\","
                               "\"content\":\"Give me your view.\"}]}";
    d->loop = loop;
    d->port = port;
    d->n_idle = 0;
    d->cap_idle = (size_t)calls;
    d->idle = calloc(d->cap_idle, sizeof *d->idle);
    int n = snprintf(d->req, sizeof d->req,
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     "application/json\r\nAccept: text/event-stream\r\nAuthorization: Bearer "
                     "b\r\nContent-Length: %zu\r\n\r\n%s",
                     sizeof body - 1, body);
    d->req_len = (size_t)n;
    return d->idle != NULL;
}

static void direct_free(direct *d)
{
    for (size_t i = 0; i < d->n_idle; i++)
        close(d->idle[i]);
    d->n_idle = 0;
    free(d->idle);
    d->idle = NULL;
}

static void direct_end(dcall *c, ap_status status)
{
    c->st->done_us = now_us();
    c->st->status = status;
    c->st->deltas = status == AP_OK;
    llm_loop_unwatch(c->d->loop, c->fd);
    if (status == AP_OK && c->d->n_idle < c->d->cap_idle)
        c->d->idle[c->d->n_idle++] = c->fd;
    else
        close(c->fd);
    done_count++;
    free(c);
}

/* Reads what arrived; the call ends at the chunked body's end after its [DONE] event. */
static void direct_readable(llm_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop, (void)fd, (void)events;
    dcall *c = ud;
    char buf[4096 + sizeof c->tail];
    for (;;) {
        memcpy(buf, c->tail, c->tail_len);
        ssize_t r = recv(c->fd, buf + c->tail_len, 4096, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) {
            direct_end(c, AP_IO);
            return;
        }
        size_t n = c->tail_len + (size_t)r;
        const char *at = buf;
        if (!c->saw_done) {
            const char *done = memmem(buf, n, "[DONE]", 6);
            if (done != NULL) {
                c->saw_done = true;
                at = done + 6;
            }
        }
        if (c->saw_done && memmem(at, n - (size_t)(at - buf), "\r\n0\r\n\r\n", 7) != NULL) {
            direct_end(c, AP_OK);
            return;
        }
        c->tail_len = n < sizeof c->tail ? n : sizeof c->tail;
        memcpy(c->tail, buf + n - c->tail_len, c->tail_len);
    }
}

static bool direct_start(direct *d, call_stat *st)
{
    int fd = d->n_idle > 0 ? d->idle[--d->n_idle] : -1;
    if (fd < 0) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->port)};
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            if (fd >= 0)
                close(fd);
            return false;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    dcall *c = calloc(1, sizeof *c);
    if (c == NULL || send(fd, d->req, d->req_len, MSG_NOSIGNAL) != (ssize_t)d->req_len ||
        llm_loop_watch(d->loop, fd, LLM_LOOP_READ, direct_readable, c) != AP_OK) {
        free(c);
        close(fd);
        return false;
    }
    *c = (dcall){.d = d, .st = st, .fd = fd};
    st->submit_us = now_us();
    return true;
}

/* What the same calls cost without the engine: the floor the engine is measured against. */
typedef struct baseline {
    int64_t wall_us, p50_us, p99_us;
    double mock_cpu_s, lag_avg_ms, lag_max_ms;
} baseline;

/* Calls issued i / rate seconds in from t0 (rate 0: all at once) are due now. */
static void wait_turn(llm_loop *loop, const opts *o, int64_t t0, long i)
{
    if (o->rate <= 0)
        return;
    int64_t due = t0 + i * 1000000 / o->rate, wait;
    while ((wait = due - now_us()) > 0)
        llm_loop_run_once(loop, (int)((wait + 999) / 1000));
}

/* Runs the round's calls without the engine, paced as the round is. */
static int run_direct(llm_loop *loop, const opts *o, direct *d, pid_t mock, int port, baseline *b)
{
    int rc = 1;
    call_stat *st = calloc((size_t)o->calls, sizeof *st);
    int64_t *added = calloc((size_t)o->calls, sizeof *added);
    if (st == NULL || added == NULL)
        goto out;
    done_count = 0;
    cJSON_Delete(mock_get(port, "POST", "/reset"));
    double mcpu0 = proc_cpu_s(mock);
    int64_t t0 = now_us();
    for (long i = 0; i < o->calls; i++) {
        wait_turn(loop, o, t0, i);
        if (!direct_start(d, &st[i])) {
            fprintf(stderr, "direct call %ld could not start\n", i);
            goto out;
        }
    }
    while (done_count < o->calls)
        llm_loop_run_once(loop, 100);
    b->wall_us = now_us() - t0;
    b->mock_cpu_s = proc_cpu_s(mock) - mcpu0;
    int64_t server_us = (o->latency_ms + (o->tokens - 1) * o->token_ms) * 1000;
    long ok = 0;
    for (long i = 0; i < o->calls; i++) {
        ok += st[i].status == AP_OK;
        added[i] = st[i].done_us - st[i].submit_us - server_us;
    }
    qsort(added, (size_t)o->calls, sizeof *added, cmp_i64);
    b->p50_us = added[(size_t)o->calls / 2];
    b->p99_us = added[(size_t)((double)(o->calls - 1) * 0.99)];
    cJSON *ms = mock_get(port, "GET", "/stats");
    b->lag_avg_ms = jsonx_number(ms, "frame_lag_ms_avg", -1);
    b->lag_max_ms = jsonx_number(ms, "frame_lag_ms_max", -1);
    cJSON_Delete(ms);
    rc = ok == o->calls ? 0 : 1;
out:
    free(st);
    free(added);
    return rc;
}

static int run_round(llm_loop *loop, llm_client *client, const opts *o, pid_t mock, int port,
                     int round, direct *d)
{
    int rc = 1;
    call_stat *st = calloc((size_t)o->calls, sizeof *st);
    llm_call **calls = calloc((size_t)o->calls, sizeof *calls);
    int64_t *added = calloc((size_t)o->calls, sizeof *added);
    int64_t *first = calloc((size_t)o->calls, sizeof *first);
    if (st == NULL || calls == NULL || added == NULL || first == NULL)
        goto out;
    baseline base = {0};
    if (!o->tls && run_direct(loop, o, d, mock, port, &base) != 0) {
        fprintf(stderr, "the baseline round failed\n");
        goto out;
    }
    done_count = 0;
    cJSON_Delete(mock_get(port, "POST", "/reset"));
    double cpu0 = cpu_s(), mcpu0 = proc_cpu_s(mock);
    int64_t t0 = now_us();
    for (long i = 0; i < o->calls; i++) {
        wait_turn(loop, o, t0, i);
        llm_request req = {.expert_id = "bench",
                           .expert_json = "{\"name\":\"Bench Expert\",\"role\":\"tester\"}",
                           .prompt = "Give me your view.",
                           .stream = true,
                           .temperature = -1};
        llm_callbacks cb = {.delta = on_delta, .done = on_done, .ud = &st[i]};
        ap_err err;
        st[i].submit_us = now_us();
        if (llm_submit(client, o->provider, &req, &cb, &calls[i], &err) != AP_OK) {
            fprintf(stderr, "submit: %s\n", err.msg);
            goto out;
        }
    }
    int64_t submitted = now_us() - t0;
    while (done_count < o->calls)
        llm_loop_run_once(loop, 100);
    int64_t wall = now_us() - t0;
    double cpu = cpu_s() - cpu0, mcpu = proc_cpu_s(mock) - mcpu0;
    int64_t server_us = (o->latency_ms + (o->tokens - 1) * o->token_ms) * 1000;
    long ok = 0;
    for (long i = 0; i < o->calls; i++) {
        ok += st[i].status == AP_OK && st[i].deltas > 0;
        added[i] = st[i].done_us - st[i].submit_us - server_us;
        first[i] = st[i].first_us - st[i].submit_us - o->latency_ms * 1000;
    }
    qsort(added, (size_t)o->calls, sizeof *added, cmp_i64);
    qsort(first, (size_t)o->calls, sizeof *first, cmp_i64);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    size_t p50 = (size_t)o->calls / 2, p99 = (size_t)((double)o->calls * 0.99);
    if (p99 >= (size_t)o->calls)
        p99 = (size_t)o->calls - 1;
    printf("round %d (%s): %ld/%ld ok, wall %.0f ms (server schedule %.0f ms, target <= %.0f ms), "
           "engine CPU %.3f s per 1000 calls, mockllm CPU %.2f s, peak RSS %ld MiB, added latency "
           "p50 %.2f ms p99 %.2f ms, first-token added p50 %.2f ms p99 %.2f ms\n",
           round, round == 1 ? "cold connections" : "kept-alive", ok, o->calls, (double)wall / 1e3,
           (double)server_us / 1e3,
           1.5 * (double)o->latency_ms + (double)((o->tokens - 1) * o->token_ms),
           cpu * 1000.0 / (double)o->calls, mcpu, ru.ru_maxrss / 1024, (double)added[p50] / 1e3,
           (double)added[p99] / 1e3, (double)first[p50] / 1e3, (double)first[p99] / 1e3);
    cJSON *ms = mock_get(port, "GET", "/stats");
    if (o->rate > 0)
        printf("  calls arrived at %ld/s over %.1f ms (the wall target is for a burst)\n", o->rate,
               (double)submitted / 1e3);
    else
        printf("  submitting all calls took %.1f ms on the loop thread\n", (double)submitted / 1e3);
    if (!o->tls)
        printf("  without the engine (plain sockets, same calls, same pacing, just before): wall "
               "%.0f ms, added p50 %.2f ms p99 %.2f ms, mockllm CPU %.2f s, frames late by %.2f "
               "ms on average, %.2f ms at most\n"
               "  the engine over that: wall %+.0f ms, p50 %+.2f ms, p99 %+.2f ms\n",
               (double)base.wall_us / 1e3, (double)base.p50_us / 1e3, (double)base.p99_us / 1e3,
               base.mock_cpu_s, base.lag_avg_ms, base.lag_max_ms,
               (double)(wall - base.wall_us) / 1e3, (double)(added[p50] - base.p50_us) / 1e3,
               (double)(added[p99] - base.p99_us) / 1e3);
    printf("  mockllm: %.0f requests (%.0f over HTTP/2) arriving over %.1f ms on %.0f new "
           "connections (this query's included), frames sent late by %.2f ms on average, "
           "%.2f ms at most\n",
           jsonx_number(ms, "requests_total", -1), jsonx_number(ms, "http2_requests", -1),
           jsonx_number(ms, "arrival_spread_ms", -1), jsonx_number(ms, "connections_total", -1),
           jsonx_number(ms, "frame_lag_ms_avg", -1), jsonx_number(ms, "frame_lag_ms_max", -1));
    cJSON_Delete(ms);
    fflush(stdout);
    rc = ok == o->calls ? 0 : 1;
out:
    free(st);
    free(calls);
    free(added);
    free(first);
    return rc;
}

int main(int argc, char **argv)
{
    opts o;
    int rc = 1, port = 0;
    llm_loop *loop = NULL;
    llm_client *client = NULL;
    cJSON *cfg = NULL;
    direct d = {.n_idle = 0};
    ap_err err;
    if (!parse(argc, argv, &o)) {
        fprintf(stderr, "usage: bench_llm_fanout [--calls N] [--latency-ms N] [--token-ms N] "
                        "[--tokens N] [--provider openai|anthropic] [--rounds N] [--mockllm P] "
                        "[--http-version auto|1.1|2] [--tls 0|1] [--rate N]\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    snprintf(o.cert, sizeof o.cert, "/tmp/bench_llm_fanout_%ld.pem", (long)getpid());
    signal(SIGPIPE, SIG_IGN);
    pid_t mock = start_mock(&o, &port);
    if (mock < 0) {
        fprintf(stderr, "cannot start %s\n", o.mockllm);
        return 1;
    }
    char text[1024];
    snprintf(text, sizeof text,
             "{\"providers\":{\"%s\":{\"base_url\":\"%s://127.0.0.1:%d%s\",\"api_key\":\"b\","
             "\"max_concurrency\":%ld,\"http_version\":\"%s\"%s%s%s}}}",
             o.provider, o.tls ? "https" : "http", port,
             strcmp(o.provider, "openai") == 0 ? "/v1" : "", o.calls, o.http_version,
             o.tls ? ",\"ca_file\":\"" : "", o.tls ? o.cert : "", o.tls ? "\"" : "");
    cfg = cJSON_Parse(text);
    if (cfg == NULL || llm_loop_new(&loop, &err) != AP_OK ||
        llm_client_new(loop, cfg, &client, &err) != AP_OK) {
        fprintf(stderr, "setup failed\n");
        goto out;
    }
    if (!llm_provider_known(cfg, o.provider)) {
        fprintf(stderr, "unknown provider %s\n", o.provider);
        goto out;
    }
    printf("%ld %s streaming calls, %ld ms latency, %ld tokens x %ld ms, provider %s, "
           "HTTP version %s, one loop thread\n",
           o.calls, o.rate > 0 ? "paced" : "concurrent", o.latency_ms, o.tokens, o.token_ms,
           o.provider, o.http_version);
    rc = 0;
    if (!direct_init(&d, loop, port, o.calls)) {
        fprintf(stderr, "out of memory\n");
        rc = 1;
        goto out;
    }
    for (int r = 1; r <= o.rounds; r++)
        rc |= run_round(loop, client, &o, mock, port, r, &d);
out:
    direct_free(&d);
    llm_client_free(client);
    llm_loop_free(loop);
    cJSON_Delete(cfg);
    kill(mock, SIGTERM);
    waitpid(mock, NULL, 0);
    if (o.tls)
        unlink(o.cert);
    return rc;
}
