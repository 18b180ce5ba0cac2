/* core/: buffers, ids and hashes, JSON helpers, the log line format. */
#include "core/buf.h"
#include "core/clock.h"
#include "core/fileio.h"
#include "core/ids.h"
#include "core/jsonx.h"
#include "core/log.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* A meter that allows growth up to a budget and counts what it allowed. */
typedef struct meter_budget {
    size_t left, allowed;
} meter_budget;

static bool meter_take(void *ud, size_t grow)
{
    meter_budget *m = ud;
    if (grow > m->left)
        return false;
    m->left -= grow;
    m->allowed += grow;
    return true;
}

/* Every growth of a metered buffer is asked first; a refusal fails the append (AP_LIMIT) and
 * leaves the buffer as it was. A buffer never holds more memory than its maximum needs. */
static void test_buf_meter(void **state)
{
    (void)state;
    buf b;
    meter_budget m = {.left = 200};
    buf_init(&b, 1000);
    buf_meter(&b, meter_take, &m);
    assert_int_equal(buf_puts(&b, "hello"), AP_OK);
    assert_int_equal(m.allowed, b.cap);
    char big[300];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(buf_puts(&b, big), AP_LIMIT);
    assert_string_equal(b.data, "hello");
    assert_int_equal(m.allowed, b.cap);
    m.left = 10000;
    assert_int_equal(buf_puts(&b, big), AP_OK);
    assert_int_equal(m.allowed, b.cap);
    buf_free(&b);
    /* past the last doubling, the capacity stops at max + 1 */
    buf_init(&b, 100);
    assert_int_equal(buf_reserve(&b, 100), AP_OK);
    assert_int_equal(b.cap, 101);
    buf_free(&b);
}

static void test_buf_limit_leaves_buffer_unchanged(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 8);
    assert_int_equal(buf_puts(&b, "abcdef"), AP_OK);
    assert_int_equal(buf_puts(&b, "xyz"), AP_LIMIT);
    assert_string_equal(b.data, "abcdef");
    assert_int_equal(buf_printf(&b, "%d", 12), AP_OK);
    assert_string_equal(b.data, "abcdef12");
    assert_int_equal(buf_printf(&b, "%d", 3), AP_LIMIT);
    buf_consume(&b, 6);
    assert_string_equal(b.data, "12");
    char *s = buf_steal(&b);
    assert_string_equal(s, "12");
    free(s);
    assert_null(b.data);
    char *empty = buf_steal(&b);
    assert_string_equal(empty, "");
    free(empty);
    buf_free(&b);
    buf_free(NULL);
    /* buf_putc and buf_reserve keep the same limit */
    buf_init(&b, 3);
    assert_int_equal(buf_reserve(&b, 4), AP_LIMIT);
    assert_int_equal(buf_reserve(&b, 3), AP_OK);
    assert_int_equal(buf_putc(&b, 'a'), AP_OK);
    assert_int_equal(buf_puts(&b, "bc"), AP_OK);
    assert_int_equal(buf_putc(&b, 'd'), AP_LIMIT);
    assert_string_equal(b.data, "abc");
    buf_free(&b);
    buf_init(&b, 100);
    for (int i = 0; i < 100; i++)
        assert_int_equal(buf_putc(&b, (char)('a' + i % 26)), AP_OK);
    assert_int_equal(buf_putc(&b, 'x'), AP_LIMIT);
    assert_int_equal(b.len, 100);
    assert_int_equal(b.data[100], '\0');
    assert_int_equal(b.data[99], 'a' + 99 % 26);
    buf_free(&b);
}

static void test_uuid(void **state)
{
    (void)state;
    char id[IDS_UUID_LEN + 1], norm[IDS_UUID_LEN + 1];
    assert_int_equal(ids_uuid_v4(id), AP_OK);
    assert_int_equal(strlen(id), 36);
    assert_int_equal(id[14], '4');
    assert_true(ids_uuid_normalize(id, norm));
    assert_string_equal(norm, id);
    assert_true(ids_uuid_normalize("AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE", norm));
    assert_string_equal(norm, "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee");
    assert_true(ids_uuid_normalize("0189aF09-bBbB-4cCc-8DdD-eEeEeEeE9f0A", norm));
    assert_string_equal(norm, "0189af09-bbbb-4ccc-8ddd-eeeeeeee9f0a");
    const char *bad[] = {"",
                         "x",
                         "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeee",
                         "aaaaaaaaabbbb-4ccc-8ddd-eeeeeeeeeeee",
                         "gaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
                         "Gaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
                         "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeee@",
                         "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee0",
                         "' OR 1=1 --                         "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(ids_uuid_normalize(bad[i], norm));
    assert_false(ids_uuid_normalize(NULL, norm));
    /* v7: the time in the first 48 bits, so ids of later milliseconds sort after. */
    char a[IDS_UUID_LEN + 1], b[IDS_UUID_LEN + 1];
    assert_int_equal(ids_uuid_v7(0x0123456789abLL, a), AP_OK);
    assert_int_equal(ids_uuid_v7(0x0123456789acLL, b), AP_OK);
    assert_memory_equal(a, "01234567-89ab-7", 15);
    assert_true(strchr("89ab", a[19]) != NULL);
    assert_true(ids_uuid_normalize(a, norm));
    assert_true(strcmp(a, b) < 0);
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Ids draw their random bits from a per-thread block: across many refills no two are equal,
 * and a forked child does not hand out the ids its parent will. */
static void test_uuid_random_bits(void **state)
{
    (void)state;
    enum { N = 2000 };
    static char ids[N][IDS_UUID_LEN + 1];
    for (int i = 0; i < N; i++)
        assert_int_equal(i % 2 ? ids_uuid_v4(ids[i]) : ids_uuid_v7(42, ids[i]), AP_OK);
    qsort(ids, N, sizeof ids[0], cmp_id);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    char child[IDS_UUID_LEN + 1] = "", parent[IDS_UUID_LEN + 1];
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char id[IDS_UUID_LEN + 1];
        ssize_t w = ids_uuid_v4(id) == AP_OK ? write(fds[1], id, sizeof id) : -1;
        _exit(w == (ssize_t)sizeof id ? 0 : 1);
    }
    assert_int_equal(read(fds[0], child, sizeof child), (ssize_t)sizeof child);
    assert_int_equal(ids_uuid_v4(parent), AP_OK);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_string_not_equal(child, parent);
    close(fds[0]);
    close(fds[1]);
}

static void test_hashes_match_known_vectors(void **state)
{
    (void)state;
    char hex[IDS_SHA256_HEX_LEN + 1];
    ids_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* The same text in pieces (an empty one included) hashes the same. */
    const ids_part parts[] = {{"a", 1}, {"", 0}, {"bc", 2}};
    memset(hex, 0, sizeof hex);
    assert_true(ids_sha256_hex_parts(parts, 3, hex));
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* RFC 4231 test case 2. */
    ids_hmac_sha256_hex("Jefe", 4, "what do ya want for nothing?", 28, hex);
    assert_string_equal(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    assert_true(ids_equal_ct("abc", 3, "abc", 3));
    assert_false(ids_equal_ct("abc", 3, "abd", 3));
    assert_false(ids_equal_ct("abc", 3, "abcd", 4));
}

static void test_jsonx_limits(void **state)
{
    (void)state;
    ap_err err = {0};
    cJSON *j = jsonx_parse("{\"a\":[1,{\"b\":2}]}", 17, 3, &err);
    assert_non_null(j);
    assert_int_equal(jsonx_depth(j), 3);
    cJSON_Delete(j);
    assert_null(jsonx_parse("{\"a\":[1,{\"b\":2}]}", 17, 2, &err));
    assert_int_equal(err.status, AP_INVALID);
    assert_null(jsonx_parse("{} {}", 5, 8, &err));
    assert_non_null(strstr(err.msg, "trailing"));
    j = jsonx_parse("{\"s\":\"x\"}  \n", 12, 8, &err);
    assert_non_null(j);
    assert_string_equal(jsonx_string(j, "s"), "x");
    assert_null(jsonx_string(j, "t"));
    assert_true(jsonx_number(j, "s", 7.5) == 7.5);
    cJSON_Delete(j);
}

/* What jsonx writes reads back as what went in: cJSON is the judge. */
/* jsonx_plain_end finds the first byte a JSON string must escape or check, at every offset
 * and for every byte value placed anywhere in and around an eight-byte step. */
static void test_jsonx_escapes_nul(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        bool nul;
    } cases[] = {
        {"{\"a\":\"x\\u0000y\"}", true},
        {"[\"\\\"\\u0000\"]", true},
        {"{\"a\":\"x\\\\u0000\"}", false},
        {"{\"a\":\"\\u00001\"}", true},
        {"{\"a\":\"\\u0001\\u00a0\"}", false},
        {"[1,2,{\"u0000\":true}]", false},
        {"\"\\u000", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (jsonx_escapes_nul(cases[i].json, strlen(cases[i].json)) != cases[i].nul)
            fail_msg("case %zu: %s", i, cases[i].json);
}

static void test_jsonx_plain_end(void **state)
{
    (void)state;
    char s[40];
    for (int v = 0; v < 256; v++) {
        for (size_t at = 0; at < 24; at++) {
            memset(s, 'a', sizeof s);
            s[at] = (char)v;
            bool plain = v >= 0x20 && v < 0x80 && v != '"' && v != '\\';
            for (size_t from = 0; from <= at; from++) {
                size_t end = jsonx_plain_end(s, from, sizeof s);
                assert_int_equal(end, plain ? sizeof s : at);
                assert_int_equal(jsonx_plain_end(s, from, at), at);
            }
        }
    }
    /* the run stops at the first of several specials, even with others after it in its step */
    memcpy(s,
           "abc\"\x01\\de\xc3\xa9"
           "fghijklmnopqrstuvwxyz0123456789",
           sizeof s);
    assert_int_equal(jsonx_plain_end(s, 0, sizeof s), 3);
    assert_int_equal(jsonx_plain_end(s, 4, sizeof s), 4);
    assert_int_equal(jsonx_plain_end(s, 6, sizeof s), 8);
}

static void test_jsonx_writes_strings_and_numbers(void **state)
{
    (void)state;
    static const char in[] = "q\" b\\ nl\n tab\t \x01 caf\xc3\xa9 \xe2\x82\xac";
    buf b;
    buf_init(&b, 1024);
    assert_int_equal(jsonx_append_string(&b, in, sizeof in - 1), AP_OK);
    cJSON *j = cJSON_Parse(b.data);
    assert_true(cJSON_IsString(j));
    assert_string_equal(j->valuestring, in);
    assert_non_null(strstr(b.data, "\\n"));
    assert_non_null(strstr(b.data, "\\u0001"));
    cJSON_Delete(j);
    /* bytes that are not UTF-8 become U+FFFD: the text stays valid JSON */
    buf_reset(&b);
    assert_int_equal(jsonx_append_string(&b, "a\xff\xc3", 3), AP_OK);
    j = cJSON_Parse(b.data);
    assert_true(cJSON_IsString(j));
    assert_string_equal(j->valuestring, "a\xef\xbf\xbd\xef\xbf\xbd");
    cJSON_Delete(j);
    const double nums[] = {0, 3, -42, 0.7, 1e-10, -2.5e300, 9007199254740993.0, 123456.789};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        buf_reset(&b);
        assert_int_equal(jsonx_append_number(&b, nums[i]), AP_OK);
        j = cJSON_Parse(b.data);
        assert_true(cJSON_IsNumber(j));
        assert_true(j->valuedouble == nums[i]);
        cJSON_Delete(j);
    }
    char t[JSONX_INT_MAX];
    assert_int_equal(jsonx_int_text(t, 0), 1);
    assert_string_equal(t, "0");
    assert_int_equal(jsonx_int_text(t, -7), 2);
    assert_string_equal(t, "-7");
    assert_int_equal(jsonx_int_text(t, INT64_MIN), 20);
    assert_string_equal(t, "-9223372036854775808");
    assert_int_equal(jsonx_int_text(t, INT64_MAX), 19);
    assert_string_equal(t, "9223372036854775807");
    assert_int_equal(jsonx_uint_text(t, UINT64_MAX), 20);
    assert_string_equal(t, "18446744073709551615");
    buf_reset(&b);
    assert_int_equal(jsonx_append_number(&b, 3), AP_OK);
    assert_string_equal(b.data, "3");
    assert_int_equal(jsonx_append_number(&b, NAN), AP_INVALID);
    assert_int_equal(jsonx_append_number(&b, INFINITY), AP_INVALID);
    buf_free(&b);
    /* a full buffer refuses and keeps what it had */
    buf_init(&b, 4);
    assert_int_equal(jsonx_append_string(&b, "long text", 9), AP_LIMIT);
    assert_true(b.len <= 4);
    buf_free(&b);
}

/* jsonx_print writes a tree as cJSON would, except that every number reads back as the same
 * double: cJSON's own printer rounds 0.1 + 0.2 to 0.3. */
static void test_jsonx_print_round_trips(void **state)
{
    (void)state;
    const char *text = "{\"a\":[0.30000000000000004,1,-0.5,1e+300,true,false,null],"
                       "\"s\":\"q\\\"\\n\\u0001\",\"o\":{},\"e\":[]}";
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    char *out = jsonx_print(j);
    assert_non_null(out);
    assert_string_equal(out, text);
    cJSON *back = cJSON_Parse(out);
    assert_true(cJSON_GetArrayItem(cJSON_GetObjectItem(back, "a"), 0)->valuedouble == 0.1 + 0.2);
    cJSON_Delete(back);
    free(out);
    cJSON_Delete(j);
    /* what JSON cannot hold becomes null, as with cJSON */
    j = cJSON_CreateArray();
    cJSON_AddItemToArray(j, cJSON_CreateNumber(NAN));
    out = jsonx_print(j);
    assert_string_equal(out, "[null]");
    free(out);
    cJSON_Delete(j);
    assert_null(jsonx_print(NULL));
}

static void test_utf8(void **state)
{
    (void)state;
    const char *ok = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
    assert_true(jsonx_utf8_valid(ok, strlen(ok)));
    assert_false(jsonx_utf8_valid(ok, strlen(ok) - 1));    /* cut inside the last character */
    assert_false(jsonx_utf8_valid("\xc3", 1));             /* truncated */
    assert_false(jsonx_utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(jsonx_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(jsonx_utf8_valid("\xf4\x90\x80\x80", 4)); /* past U+10FFFF */
    assert_false(jsonx_utf8_valid("\xff", 1));
}

static void test_log_lines_are_json(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    log_set_fd(fds[1]);
    log_set_level(LOG_LEVEL_INFO);
    log_debug("hidden");
    log_fields f = {.request_id = "r1", .tenant_id = "t1", .panel_id = "p1", .event = "security"};
    log_msg(LOG_LEVEL_WARN, &f, "quote \" backslash \\ newline \n ctl \x01 done");
    log_set_fd(2);
    close(fds[1]);
    char out[2048] = {0};
    ssize_t n = read(fds[0], out, sizeof out - 1);
    close(fds[0]);
    assert_true(n > 0);
    assert_non_null(strchr(out, '\n'));
    assert_null(strchr(strchr(out, '\n') + 1, '\n')); /* exactly one line: debug was hidden */
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_string_equal(jsonx_string(j, "level"), "warn");
    assert_string_equal(jsonx_string(j, "msg"), "quote \" backslash \\ newline \n ctl \x01 done");
    assert_string_equal(jsonx_string(j, "request_id"), "r1");
    assert_string_equal(jsonx_string(j, "tenant_id"), "t1");
    assert_string_equal(jsonx_string(j, "panel_id"), "p1");
    assert_string_equal(jsonx_string(j, "event"), "security");
    assert_non_null(jsonx_string(j, "time"));
    cJSON_Delete(j);
}

static void test_clock_deadline(void **state)
{
    (void)state;
    for (int64_t ms = 0; ms <= 2500; ms += 250) {
        struct timespec d = clock_deadline_ms(ms);
        int64_t at = (int64_t)d.tv_sec * 1000 + d.tv_nsec / 1000000, now = clock_wall_ms();
        assert_true(d.tv_nsec >= 0 && d.tv_nsec < 1000000000L);
        assert_true(at - now >= ms - 5 && at - now <= ms + 5);
    }
}

/* A monotonic instant in microseconds as the timespec a CLOCK_MONOTONIC wait takes. */
static void test_clock_mono_at(void **state)
{
    (void)state;
    struct timespec t = clock_mono_at(INT64_C(1234567890));
    assert_int_equal(t.tv_sec, 1234);
    assert_int_equal(t.tv_nsec, 567890000L);
    int64_t now = clock_mono_us();
    struct timespec m;
    clock_gettime(CLOCK_MONOTONIC, &m);
    t = clock_mono_at(now);
    int64_t diff = ((int64_t)m.tv_sec - t.tv_sec) * 1000000 + (m.tv_nsec - t.tv_nsec) / 1000;
    assert_true(diff >= 0 && diff < 100000);
}

/* Whole files: regular ones within their bound; a FIFO (which would block the reader) and a
 * device (which streams without end) are refused at once. */
static void test_fileio_read(void **state)
{
    (void)state;
    char dir[] = "/tmp/ap-fileio-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], fifo[128];
    snprintf(path, sizeof path, "%s/f.json", dir);
    snprintf(fifo, sizeof fifo, "%s/trap.lua", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("{\"a\":1}", f);
    fclose(f);
    char *out = NULL;
    size_t len = 0;
    ap_err err = {0};
    assert_int_equal(fileio_read(path, 64, &out, &len, &err), AP_OK);
    assert_int_equal(len, 7);
    assert_string_equal(out, "{\"a\":1}");
    free(out);
    assert_int_equal(fileio_read(path, 6, &out, &len, &err), AP_LIMIT);
    assert_null(out);
    assert_non_null(strstr(err.msg, "larger than 6 bytes"));
    assert_int_equal(mkfifo(fifo, 0600), 0);
    int64_t t0 = clock_mono_ms();
    assert_int_equal(fileio_read(fifo, 64, &out, &len, &err), AP_INVALID);
    assert_non_null(strstr(err.msg, "not a regular file"));
    assert_int_equal(fileio_read("/dev/zero", 64, &out, &len, &err), AP_INVALID);
    assert_int_equal(fileio_read(dir, 64, &out, &len, &err), AP_INVALID);
    assert_true(clock_mono_ms() - t0 < 1000);
    /* in a directory: the name's own file only, never through a link, which may lead out */
    char link[128];
    snprintf(link, sizeof link, "%s/pw.css", dir);
    assert_int_equal(symlink("/etc/passwd", link), 0);
    assert_int_equal(fileio_read_in(dir, "f.json", 64, &out, &len, &err), AP_OK);
    assert_string_equal(out, "{\"a\":1}");
    free(out);
    assert_int_equal(fileio_read_in(dir, "pw.css", 64, &out, &len, &err), AP_NOTFOUND);
    assert_null(out);
    assert_int_equal(fileio_read_in("/etc", "../etc/passwd", 64, &out, &len, &err), AP_NOTFOUND);
    assert_int_equal(fileio_read_in(dir, "trap.lua", 64, &out, &len, &err), AP_INVALID);
    assert_int_equal(fileio_read_in(dir, "f.json", 6, &out, &len, &err), AP_LIMIT);
    unlink(link);
    unlink(fifo);
    unlink(path);
    assert_int_equal(fileio_read(path, 64, &out, &len, &err), AP_NOTFOUND);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_limit_leaves_buffer_unchanged),
        cmocka_unit_test(test_buf_meter),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_uuid_random_bits),
        cmocka_unit_test(test_hashes_match_known_vectors),
        cmocka_unit_test(test_jsonx_limits),
        cmocka_unit_test(test_jsonx_escapes_nul),
        cmocka_unit_test(test_jsonx_plain_end),
        cmocka_unit_test(test_jsonx_writes_strings_and_numbers),
        cmocka_unit_test(test_jsonx_print_round_trips),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_log_lines_are_json),
        cmocka_unit_test(test_clock_deadline),
        cmocka_unit_test(test_clock_mono_at),
        cmocka_unit_test(test_fileio_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
