/* sse_fanout.c - the subscriber side of the SSE fan-out benchmark, in C so that the client
 * costs far less than the server it measures (bench/sse_fanout.py drives it).
 *
 * Opens N event streams on one panel, prints "ready" once every stream has its headers,
 * then records when each durable event (id: line) reaches each stream, until every stream
 * has seen panel.completed or panel.failed. Prints the fan-out delay of every delivery: its
 * arrival minus the first arrival of the same event.
 *
 * usage: bench_sse_fanout PORT PATH KEY N */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SEQ 8192
#define LINE_PREFIX 64

typedef struct conn {
    int fd;
    bool headers_done;
    bool done;
    char hdr_tail[4];
    char line[LINE_PREFIX]; /* the start of the current line */
    size_t line_len;
    long seq;
} conn;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double *arrivals[MAX_SEQ]; /* per seq: arrival time per connection (0: not yet) */
static double first[MAX_SEQ];
static int nconns;

static void record(int idx, long seq, double t)
{
    if (seq <= 0 || seq >= MAX_SEQ)
        return;
    if (arrivals[seq] == NULL)
        arrivals[seq] = calloc((size_t)nconns, sizeof(double));
    if (arrivals[seq] == NULL)
        return;
    arrivals[seq][idx] = t;
    if (first[seq] == 0 || t < first[seq])
        first[seq] = t;
}

/* Handles one complete line (only its prefix is kept). Returns true on the final event. */
static bool on_line(conn *c, int idx, double t)
{
    c->line[c->line_len < LINE_PREFIX ? c->line_len : LINE_PREFIX - 1] = '\0';
    if (strncmp(c->line, "id: ", 4) == 0) {
        c->seq = strtol(c->line + 4, NULL, 10);
    } else if (strncmp(c->line, "event: ", 7) == 0 && c->seq > 0) {
        record(idx, c->seq, t);
        c->seq = 0;
        return strcmp(c->line + 7, "panel.completed") == 0 ||
               strcmp(c->line + 7, "panel.failed") == 0;
    }
    return false;
}

static void feed(conn *c, int idx, const char *p, size_t n, double t)
{
    if (!c->headers_done) {
        /* Skip the response head, which ends with an empty line. */
        for (size_t i = 0; i < n; i++) {
            memmove(c->hdr_tail, c->hdr_tail + 1, 3);
            c->hdr_tail[3] = p[i];
            if (memcmp(c->hdr_tail, "\r\n\r\n", 4) == 0) {
                c->headers_done = true;
                p += i + 1;
                n -= i + 1;
                break;
            }
        }
        if (!c->headers_done)
            return;
    }
    while (n > 0 && !c->done) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl != NULL ? (size_t)(nl - p) : n;
        if (c->line_len < LINE_PREFIX) {
            size_t room = LINE_PREFIX - c->line_len;
            memcpy(c->line + c->line_len, p, take < room ? take : room);
        }
        c->line_len += take;
        if (nl == NULL)
            return;
        if (on_line(c, idx, t))
            c->done = true;
        c->line_len = 0;
        p = nl + 1;
        n -= take + 1;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s PORT PATH KEY N\n", argv[0]);
        return 2;
    }
    int port = (int)strtol(argv[1], NULL, 10);
    nconns = (int)strtol(argv[4], NULL, 10);
    conn *cs = calloc((size_t)nconns, sizeof *cs);
    char req[1024];
    int rl = snprintf(req, sizeof req,
                      "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                      "Accept: text/event-stream\r\n\r\n",
                      argv[2], argv[3]);
    int ep = epoll_create1(0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
            write(fd, req, (size_t)rl) != rl) {
            fprintf(stderr, "connection %d failed: %s\n", i, strerror(errno));
            return 1;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        cs[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    static char rbuf[1 << 16];
    int ready = 0, done = 0;
    bool announced = false;
    struct epoll_event evs[256];
    while (done < nconns) {
        int n = epoll_wait(ep, evs, 256, 60000);
        if (n <= 0) {
            fprintf(stderr, "timed out with %d of %d streams finished\n", done, nconns);
            return 1;
        }
        double t = now_s();
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            conn *c = &cs[i];
            ssize_t got;
            while ((got = read(c->fd, rbuf, sizeof rbuf)) > 0) {
                bool had_headers = c->headers_done;
                feed(c, i, rbuf, (size_t)got, t);
                if (!had_headers && c->headers_done)
                    ready++;
                if (c->done)
                    break;
            }
            /* Closed only after the measurement: a close here (a FIN through loopback) would
             * delay this one thread's reads of the streams still being delivered to, which
             * on separate client machines would not wait for each other. */
            if (c->done || got == 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->done = true;
                done++;
            }
        }
        if (!announced && ready == nconns) {
            printf("ready\n");
            fflush(stdout);
            announced = true;
        }
    }
    for (int i = 0; i < nconns; i++)
        close(cs[i].fd);
    size_t cap = (size_t)nconns * 64, nd = 0;
    double *delays = malloc(cap * sizeof *delays);
    int events = 0, seen_by_all = 0;
    for (int s = 1; s < MAX_SEQ; s++) {
        if (arrivals[s] == NULL)
            continue;
        events++;
        int seen = 0;
        for (int i = 0; i < nconns; i++) {
            if (arrivals[s][i] == 0)
                continue;
            seen++;
            if (nd == cap) {
                cap *= 2;
                delays = realloc(delays, cap * sizeof *delays);
            }
            delays[nd++] = arrivals[s][i] - first[s];
        }
        seen_by_all += seen == nconns;
        free(arrivals[s]);
    }
    qsort(delays, nd, sizeof *delays, cmp_double);
    printf("{\"subscribers\": %d, \"events\": %d, \"events_seen_by_all\": %d, \"deliveries\": %zu, "
           "\"fanout_delay_ms\": {\"p50\": %.2f, \"p99\": %.2f, \"max\": %.2f}}\n",
           nconns, events, seen_by_all, nd, nd ? delays[nd / 2] * 1000 : 0,
           nd ? delays[(size_t)(0.99 * (double)(nd - 1))] * 1000 : 0,
           nd ? delays[nd - 1] * 1000 : 0);
    free(delays);
    free(cs);
    return 0;
}
