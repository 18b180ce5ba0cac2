/* mockllm - an OpenAI- and Anthropic-compatible LLM server double for tests and benchmarks.
 *
 *   mockllm --port N [--host ADDR] [--latency-ms N] [--token-ms N] [--tokens N]
 *           [--fault-rate R] [--faults LIST] [--retry-after V] [--api-key K] [--seed N]
 *           [--threads N]
 *
 * Prints "listening on PORT" once ready (--port 0 picks a free port). Speaks HTTP/1.1 and
 * HTTP/2 with prior knowledge (h2c) on the same port. Endpoints: POST /v1/chat/completions,
 * POST /v1/messages (streaming or not), GET /stats, POST /reset. Per-request overrides by
 * header: X-Mock-Latency-Ms, X-Mock-Token-Ms, X-Mock-Tokens, X-Mock-Fault
 * (429|500|529|reset|stall|malformed|truncate|401|spend_limit|bad_json), X-Mock-Retry-After.
 * bad_json answers a schema request with prose unless it is a repair turn. A model named
 * "fault-<name>" always fails with that fault (for fallback tests). */
#include "h2.h"
#include "http1.h"
#include "mock.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void usage(void)
{
    fprintf(stderr,
            "usage: mockllm --port N [--host ADDR] [--latency-ms N] [--token-ms N] [--tokens N]\n"
            "               [--fault-rate R] [--faults 429,500,...] [--retry-after SECS]\n"
            "               [--api-key KEY] [--seed N] [--threads N] [--tls-cert-out PEM]\n");
}

static bool parse_args(int argc, char **argv, mock_opts *o)
{
    *o = (mock_opts){.host = "127.0.0.1",
                     .port = -1,
                     .latency_ms = 20,
                     .token_ms = 2,
                     .tokens = 40,
                     .threads = 1,
                     .retry_after = "1",
                     .seed = 1};
    if (!mock_parse_faults("429,500,529,reset,malformed,truncate", o))
        return false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x = 0;
        if (v == NULL)
            return false;
        i++;
        if (strcmp(a, "--port") == 0 && mock_parse_long(v, 0, 65535, &x))
            o->port = x;
        else if (strcmp(a, "--host") == 0)
            o->host = v;
        else if (strcmp(a, "--latency-ms") == 0 && mock_parse_long(v, 0, 3600000, &x))
            o->latency_ms = x;
        else if (strcmp(a, "--token-ms") == 0 && mock_parse_long(v, 0, 60000, &x))
            o->token_ms = x;
        else if (strcmp(a, "--tokens") == 0 && mock_parse_long(v, 1, MAX_TOKENS_PER_ANSWER, &x))
            o->tokens = x;
        else if (strcmp(a, "--threads") == 0 && mock_parse_long(v, 1, 64, &x))
            o->threads = x;
        else if (strcmp(a, "--seed") == 0 && mock_parse_long(v, 0, 0x7fffffff, &x))
            o->seed = (uint64_t)x;
        else if (strcmp(a, "--faults") == 0 && mock_parse_faults(v, o))
            continue;
        else if (strcmp(a, "--retry-after") == 0)
            o->retry_after = v;
        else if (strcmp(a, "--api-key") == 0)
            o->api_key = v;
        else if (strcmp(a, "--tls-cert-out") == 0)
            o->tls_cert_out = v;
        else if (strcmp(a, "--fault-rate") == 0) {
            char *end = NULL;
            double r = strtod(v, &end);
            if (end == v || *end != '\0' || !(r >= 0 && r <= 1))
                return false;
            o->fault_rate = r;
        } else
            return false;
    }
    return o->port >= 0;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    int rc = 1;
    mock_opts o;
    if (!parse_args(argc, argv, &o)) {
        usage();
        return 2;
    }
    raise_fd_limit();
    mock_init(&o);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    unsigned port = 0;
    if (!http1_start()) {
        fprintf(stderr, "mockllm: cannot start the HTTP/1.1 server\n");
        goto out;
    }
    if (!h2_start(&port))
        goto out;
    printf("listening on %u\n", port);
    fflush(stdout);

    sigdelset(&set, SIGPIPE);
    int sig = 0;
    sigwait(&set, &sig);
    rc = 0;
out:
    h2_stop();
    http1_stop();
    return rc;
}
