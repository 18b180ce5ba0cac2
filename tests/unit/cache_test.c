#include "cache/cache.h"

#include <hiredis/hiredis.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdbool.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *A = "aaaaaaaa-0000-4000-8000-000000000001";
static const char *B = "bbbbbbbb-0000-4000-8000-000000000002";

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void check_value(cache *c, const char *tenant, const char *key, const char *want)
{
    char *v = NULL;
    size_t n = 0;
    ap_status rc = cache_get(c, tenant, key, &v, &n);
    if (want == NULL) {
        assert_int_equal(rc, AP_NOTFOUND);
        return;
    }
    assert_int_equal(rc, AP_OK);
    assert_int_equal(n, strlen(want));
    assert_string_equal(v, want);
    free(v);
}

static void test_memory_tenant_scoping(void **state)
{
    (void)state;
    cache *c;
    assert_int_equal(cache_open("memory", 16, &c, NULL), AP_OK);
    assert_string_equal(cache_backend(c), "memory");
    cache_set(c, A, "panel:1", "alpha", 5, 60000);
    check_value(c, A, "panel:1", "alpha");
    check_value(c, B, "panel:1", NULL);
    cache_del(c, B, "panel:1"); /* another tenant cannot delete it either */
    check_value(c, A, "panel:1", "alpha");
    cache_del(c, A, "panel:1");
    check_value(c, A, "panel:1", NULL);
    cache_close(c);
}

static void test_memory_lru_and_ttl(void **state)
{
    (void)state;
    cache *c;
    assert_int_equal(cache_open("memory", 3, &c, NULL), AP_OK);
    cache_set(c, A, "1", "one", 3, 60000);
    cache_set(c, A, "2", "two", 3, 60000);
    cache_set(c, A, "3", "three", 5, 60000);
    check_value(c, A, "1", "one"); /* 1 is now the most recent; 2 the oldest */
    cache_set(c, A, "4", "four", 4, 60000);
    check_value(c, A, "2", NULL);
    check_value(c, A, "1", "one");
    check_value(c, A, "4", "four");
    cache_set(c, A, "4", "FOUR", 4, 60000); /* replace */
    check_value(c, A, "4", "FOUR");
    cache_set(c, A, "short", "x", 1, 30);
    check_value(c, A, "short", "x");
    sleep_ms(60);
    check_value(c, A, "short", NULL);
    cache_close(c);
}

static void test_bad_urls(void **state)
{
    (void)state;
    cache *c = NULL;
    const char *bad[] = {"memcached://x",      "redis://",          "redis://host:0",
                         "redis://host:70000", "redis://host:12/x", "redis://host:x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ap_err err = {0};
        assert_int_equal(cache_open(bad[i], 4, &c, &err), AP_INVALID);
        assert_true(err.msg[0] != '\0');
    }
}

/* ---- Redis, on a throwaway server of our own ---- */

static pid_t redis_pid;
static int redis_port;

/* Starts redis-server on redis_port; false when it exited (the port was taken) or never
 * answered. */
static bool try_redis(void)
{
    char port[16];
    snprintf(port, sizeof port, "%d", redis_port);
    char *argv[] = {"redis-server", "--port", port,         "--bind",  "127.0.0.1", "--save", "",
                    "--appendonly", "no",     "--loglevel", "warning", NULL};
    assert_int_equal(posix_spawnp(&redis_pid, "redis-server", NULL, NULL, argv, environ), 0);
    for (int i = 0; i < 200; i++) {
        redisContext *probe = redisConnect("127.0.0.1", redis_port);
        bool up = probe != NULL && probe->err == 0;
        redisFree(probe);
        if (up)
            return true;
        if (waitpid(redis_pid, NULL, WNOHANG) == redis_pid)
            return false;
        sleep_ms(20);
    }
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    return false;
}

/* A throwaway server on a port below the ephemeral range (where the tests' own outgoing
 * connections live), moving on when another process holds it; with pinned, only redis_port
 * (a restart the cache must find again). */
static void start_redis(bool pinned)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        if (!pinned)
            redis_port = 20000 + (int)((getpid() * 7919L + attempt * 997L) % 12000);
        if (try_redis())
            return;
    }
    fail_msg("redis-server did not start (last port %d)", redis_port);
}

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

static void test_redis_prefix_and_degrade(void **state)
{
    (void)state;
    start_redis(false);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", redis_port);
    cache *c;
    assert_int_equal(cache_open(url, 0, &c, NULL), AP_OK);
    assert_string_equal(cache_backend(c), "redis");
    assert_int_equal(cache_ping(c), AP_OK);
    cache_set(c, A, "panel:9", "{\"x\":1}", 7, 60000);
    check_value(c, A, "panel:9", "{\"x\":1}");
    check_value(c, B, "panel:9", NULL);

    /* The key carries the tenant's hash tag, and nothing else was written. */
    redisContext *raw = redisConnect("127.0.0.1", redis_port);
    redisReply *keys = redisCommand(raw, "KEYS *");
    assert_int_equal(keys->elements, 1);
    char want[128];
    snprintf(want, sizeof want, "t:{%s}:panel:9", A);
    assert_string_equal(keys->element[0]->str, want);
    freeReplyObject(keys);
    redisReply *ttl = redisCommand(raw, "PTTL %s", want);
    assert_true(ttl->integer > 0 && ttl->integer <= 60000);
    freeReplyObject(ttl);
    redisFree(raw);

    /* Redis goes away: reads miss, writes are dropped, nothing fails. */
    stop_redis();
    check_value(c, A, "panel:9", NULL);
    cache_set(c, A, "panel:10", "v", 1, 60000);
    cache_del(c, A, "panel:9");
    assert_int_equal(cache_ping(c), AP_IO);

    /* It comes back: the cache reconnects by itself. */
    start_redis(true);
    sleep_ms(1100);
    cache_set(c, A, "panel:11", "back", 4, 60000);
    check_value(c, A, "panel:11", "back");
    cache_close(c);
    stop_redis();
}

static void test_redis_down_at_start_is_not_fatal(void **state)
{
    (void)state;
    cache *c;
    assert_int_equal(cache_open("redis://127.0.0.1:1", 0, &c, NULL), AP_OK);
    check_value(c, A, "k", NULL);
    cache_set(c, A, "k", "v", 1, 1000);
    cache_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_tenant_scoping),
        cmocka_unit_test(test_memory_lru_and_ttl),
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_redis_prefix_and_degrade),
        cmocka_unit_test(test_redis_down_at_start_is_not_fatal),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    stop_redis();
    return rc;
}
