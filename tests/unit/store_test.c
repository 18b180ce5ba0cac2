/* store_test.c - the store contract: one suite, run against every backend.
 *
 * SQLite (a temp file) always; PostgreSQL when ASKPANEL_TEST_PG_URL (owner, runs migrations)
 * and ASKPANEL_TEST_PG_APP_URL (a role inheriting askpanel_app) are set, as
 * tests/integration/test_store_pg.sh does. Every test works on two fresh tenants A and B, so
 * reruns against the same database do not interfere. */
#include "core/ids.h"
#include "core/jsonx.h"
#include "core/log.h"
#include "store/backend.h"
#include "store/store.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static store *S;     /* the store under test (the app role on PostgreSQL) */
static store *OWNER; /* PostgreSQL only: the owner connection */
static char A[STORE_ID_MAX], B[STORE_ID_MAX];
static char SLUG_A[64], SLUG_B[64];
static char db_path[256];

#define OK(call)                                                                                   \
    do {                                                                                           \
        ap_err e_ = {0};                                                                           \
        ap_status rc_ = (call);                                                                    \
        if (rc_ != AP_OK)                                                                          \
            fail_msg("%s -> %s: %s", #call, ap_status_name(rc_), e_.msg);                          \
    } while (0)
#define IS(status, call)                                                                           \
    do {                                                                                           \
        ap_err e_ = {0};                                                                           \
        ap_status rc_ = (call);                                                                    \
        if (rc_ != (status))                                                                       \
            fail_msg("%s -> %s (want %s): %s", #call, ap_status_name(rc_), ap_status_name(status), \
                     e_.msg);                                                                      \
    } while (0)
/* e_ is the error of the enclosing OK/IS. */
#define E (&e_)

static void random_slug(const char *stem, char out[64])
{
    unsigned char r[4];
    char hex[9];
    assert_int_equal(ids_random(r, sizeof r), AP_OK);
    ids_hex(r, sizeof r, hex);
    snprintf(out, 64, "%s-%s", stem, hex);
}

/* Per test: two fresh tenants. */
static int tenants_setup(void **state)
{
    (void)state;
    store_tenant t = {0};
    ap_err err = {0};
    random_slug("ta", SLUG_A);
    random_slug("tb", SLUG_B);
    if (store_tenant_create(S, SLUG_A, "Tenant A", "{\"brand\":\"a\"}", &t, &err) != AP_OK) {
        print_error("tenant A: %s\n", err.msg);
        return -1;
    }
    memcpy(A, t.id, sizeof A);
    store_tenant_free(&t);
    if (store_tenant_create(S, SLUG_B, "Tenant B", NULL, &t, &err) != AP_OK) {
        print_error("tenant B: %s\n", err.msg);
        return -1;
    }
    memcpy(B, t.id, sizeof B);
    store_tenant_free(&t);
    return 0;
}

static int sqlite_group_setup(void **state)
{
    (void)state;
    snprintf(db_path, sizeof db_path, "/tmp/askpanel-store-test-%d.db", (int)getpid());
    unlink(db_path);
    char url[300];
    snprintf(url, sizeof url, "sqlite:%s", db_path);
    ap_err err = {0};
    if (store_open(url, &S, &err) != AP_OK) {
        print_error("open: %s\n", err.msg);
        return -1;
    }
    int applied = 0;
    if (store_migrate(S, &applied, &err) != AP_OK || applied < 1) {
        print_error("migrate: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int sqlite_group_teardown(void **state)
{
    (void)state;
    store_close(S);
    S = NULL;
    char p[300];
    unlink(db_path);
    snprintf(p, sizeof p, "%s-wal", db_path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", db_path);
    unlink(p);
    return 0;
}

static int pg_group_setup(void **state)
{
    (void)state;
    ap_err err = {0};
    if (store_open(getenv("ASKPANEL_TEST_PG_URL"), &OWNER, &err) != AP_OK) {
        print_error("open owner: %s\n", err.msg);
        return -1;
    }
    if (store_migrate(OWNER, NULL, &err) != AP_OK) {
        print_error("migrate: %s\n", err.msg);
        return -1;
    }
    if (store_open(getenv("ASKPANEL_TEST_PG_APP_URL"), &S, &err) != AP_OK) {
        print_error("open app: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int pg_group_teardown(void **state)
{
    (void)state;
    store_close(S);
    store_close(OWNER);
    S = OWNER = NULL;
    return 0;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void test_lifecycle(void **state)
{
    (void)state;
    int pending = -1, applied = -1;
    store *mig = OWNER != NULL ? OWNER : S;
    OK(store_migrate(mig, &applied, E));
    assert_int_equal(applied, 0); /* idempotent: everything already ran */
    OK(store_pending_migrations(S, &pending, E));
    assert_int_equal(pending, 0);
    OK(store_ping(S, E));
    OK(store_check_isolation(S, E));
    if (OWNER != NULL) {
        assert_string_equal(store_backend(S), "postgres");
        IS(AP_DENIED, store_check_isolation(OWNER, E));
    } else {
        assert_string_equal(store_backend(S), "sqlite");
    }
}

static void test_bad_urls(void **state)
{
    (void)state;
    store *s = NULL;
    IS(AP_INVALID, store_open("mysql://localhost/x", &s, E));
    assert_null(s);
    IS(AP_INVALID, store_open("", &s, E));
    IS(AP_IO, store_open("sqlite:/nonexistent-dir-askpanel/x/y.db", &s, E));
    IS(AP_INVALID, store_open("sqlite:", &s, E));
    IS(AP_INVALID, store_open("host=localhost nosuchoption=1", &s, E));
    {
        ap_err e_ = {0};
        ap_status rc =
            store_open("postgresql://askpanel@127.0.0.1:1/askpanel?connect_timeout=2", &s, &e_);
        assert_int_equal(rc, AP_IO);
        assert_non_null(strstr(e_.msg, "database is unavailable"));
    }
    assert_null(s);

    /* A fresh in-memory SQLite store migrates and works. */
    OK(store_open("sqlite::memory:", &s, E));
    int pending = 0;
    OK(store_pending_migrations(s, &pending, E));
    assert_true(pending >= 1);
    OK(store_migrate(s, NULL, E));
    OK(store_pending_migrations(s, &pending, E));
    assert_int_equal(pending, 0);
    OK(store_tenant_create(s, "mem-tenant", "Memory", NULL, NULL, E));
    store_close(s);
    store_close(NULL);
}

/* ---- tenants ------------------------------------------------------------------------------ */

static void test_tenants(void **state)
{
    (void)state;
    store_tenant t = {0};
    OK(store_tenant_get(S, A, &t, E));
    assert_string_equal(t.id, A);
    assert_string_equal(t.slug, SLUG_A);
    assert_string_equal(t.name, "Tenant A");
    assert_string_equal(t.config, "{\"brand\":\"a\"}");
    assert_true(t.created_at > 0);
    store_tenant_free(&t);

    OK(store_tenant_by_slug(S, SLUG_B, &t, E));
    assert_string_equal(t.id, B);
    assert_string_equal(t.config, "{}");
    store_tenant_free(&t);

    /* Upper-case ids are normalised at the edge. */
    char upper[STORE_ID_MAX];
    for (size_t i = 0; i < sizeof upper; i++)
        upper[i] = (char)(A[i] >= 'a' && A[i] <= 'f' ? A[i] - 32 : A[i]);
    OK(store_tenant_get(S, upper, &t, E));
    assert_string_equal(t.id, A);
    store_tenant_free(&t);

    {
        ap_err e_ = {0};
        assert_int_equal(store_tenant_create(S, SLUG_A, "Again", NULL, NULL, &e_), AP_CONFLICT);
        assert_non_null(strstr(e_.msg, "already exists"));
        assert_non_null(strstr(e_.msg, SLUG_A));
    }
    IS(AP_INVALID, store_tenant_create(S, "Bad Slug", "x", NULL, NULL, E));
    IS(AP_INVALID, store_tenant_create(S, "-leading", "x", NULL, NULL, E));
    IS(AP_INVALID, store_tenant_create(S, "ok-slug-x", "", NULL, NULL, E));
    IS(AP_INVALID, store_tenant_create(S, "ok-slug-y", "x", "[1]", NULL, E));
    IS(AP_INVALID, store_tenant_create(S, "ok-slug-z", "x", "{bad", NULL, E));
    IS(AP_NOTFOUND, store_tenant_by_slug(S, "no-such-tenant-slug", &t, E));
    IS(AP_NOTFOUND, store_tenant_by_slug(S, "NO SUCH", &t, E));
    IS(AP_INVALID, store_tenant_get(S, "not-a-uuid", &t, E));
    IS(AP_NOTFOUND, store_tenant_get(S, "00000000-0000-4000-8000-000000000000", &t, E));

    OK(store_tenant_set_config(S, B, "{\"flags\":{\"x\":true}}", E));
    OK(store_tenant_get(S, B, &t, E));
    assert_string_equal(t.config, "{\"flags\":{\"x\":true}}");
    store_tenant_free(&t);
    IS(AP_INVALID, store_tenant_set_config(S, B, "nope", E));
    IS(AP_INVALID, store_tenant_set_config(S, "xyz", "{}", E));
    IS(AP_NOTFOUND, store_tenant_set_config(S, "00000000-0000-4000-8000-000000000000", "{}", E));
    store_tenant_free(NULL);
}

/* ---- keys --------------------------------------------------------------------------------- */

static void test_keys(void **state)
{
    (void)state;
    char key[128];
    store_key k = {0}, r = {0};
    OK(store_key_create(S, A, STORE_ROLE_ADMIN, key, sizeof key, &k, E));
    assert_int_equal(strlen(key), 76);
    assert_memory_equal(key, "ap_", 3);
    assert_int_equal(key[11], '_');
    assert_memory_equal(key, k.prefix, 11);
    assert_int_equal(strlen(k.prefix), 11);
    char hash[IDS_SHA256_HEX_LEN + 1];
    ids_sha256_hex(key, strlen(key), hash);
    assert_string_equal(k.hash, hash); /* only the hash is kept */
    assert_string_equal(k.tenant_id, A);

    OK(store_key_resolve(S, key, &r, E));
    assert_string_equal(r.tenant_id, A);
    assert_string_equal(r.id, k.id);
    assert_int_equal(r.role, STORE_ROLE_ADMIN);
    assert_int_equal(r.revoked_at, 0);

    char member[128];
    OK(store_key_create(S, B, STORE_ROLE_MEMBER, member, sizeof member, NULL, E));
    OK(store_key_resolve(S, member, &r, E));
    assert_string_equal(r.tenant_id, B);
    assert_int_equal(r.role, STORE_ROLE_MEMBER);

    /* Right prefix, wrong secret; garbage; empty. */
    char wrong[128];
    memcpy(wrong, key, sizeof wrong);
    wrong[40] = wrong[40] == 'a' ? 'b' : 'a';
    IS(AP_NOTFOUND, store_key_resolve(S, wrong, &r, E));
    IS(AP_NOTFOUND, store_key_resolve(S, "ap_zzzz", &r, E));
    IS(AP_NOTFOUND, store_key_resolve(S, "", &r, E));
    IS(AP_NOTFOUND, store_key_resolve(S, NULL, &r, E));
    memcpy(wrong, key, sizeof wrong);
    wrong[5] = wrong[5] == '0' ? '1' : '0'; /* unknown prefix */
    IS(AP_NOTFOUND, store_key_resolve(S, wrong, &r, E));

    IS(AP_INVALID, store_key_create(S, "nope", STORE_ROLE_ADMIN, key, sizeof key, NULL, E));
    IS(AP_INVALID, store_key_create(S, A, (store_role)7, key, sizeof key, NULL, E));
    IS(AP_INVALID, store_key_create(S, A, STORE_ROLE_ADMIN, key, 10, NULL, E));
    IS(AP_NOTFOUND, store_key_create(S, "00000000-0000-4000-8000-000000000000", STORE_ROLE_ADMIN,
                                     wrong, sizeof wrong, NULL, E));

    /* By id, within its tenant only (on PostgreSQL through row-level security). */
    store_key g = {0};
    OK(store_key_get(S, A, k.id, &g, E));
    assert_string_equal(g.id, k.id);
    assert_string_equal(g.tenant_id, A);
    assert_string_equal(g.prefix, k.prefix);
    assert_int_equal(g.role, STORE_ROLE_ADMIN);
    assert_int_equal(g.revoked_at, 0);
    char upper[STORE_ID_MAX];
    for (size_t i = 0; i <= strlen(k.id); i++)
        upper[i] = (char)toupper((unsigned char)k.id[i]);
    OK(store_key_get(S, A, upper, &g, E));
    IS(AP_NOTFOUND, store_key_get(S, B, k.id, &g, E));
    IS(AP_NOTFOUND, store_key_get(S, A, "00000000-0000-4000-8000-000000000000", &g, E));
    IS(AP_NOTFOUND, store_key_get(S, A, "bad", &g, E));
    IS(AP_NOTFOUND, store_key_get(S, A, NULL, &g, E));
    IS(AP_INVALID, store_key_get(S, "nope", k.id, &g, E));

    OK(store_key_revoke(S, k.id, E));
    OK(store_key_revoke(S, k.id, E)); /* revoking twice is harmless */
    IS(AP_DENIED, store_key_resolve(S, key, &r, E));
    OK(store_key_resolve(S, member, &r, E));
    OK(store_key_get(S, A, k.id, &g, E)); /* still there, now revoked */
    assert_true(g.revoked_at > 0);
    IS(AP_NOTFOUND, store_key_get(S, B, k.id, &g, E));
    IS(AP_NOTFOUND, store_key_revoke(S, "00000000-0000-4000-8000-000000000000", E));
    IS(AP_INVALID, store_key_revoke(S, "bad", E));
}

/* ---- experts ------------------------------------------------------------------------------ */

static void make_expert(const char *tenant, const char *name, store_expert *out)
{
    store_expert in = {.name = (char *)name,
                       .role = "Regulatory lead",
                       .expertise = "[\"gmp\",\"fda\"]",
                       .persona = "Careful and precise.",
                       .weight = 1.5};
    OK(store_expert_create(S, tenant, &in, out, E));
}

static void test_experts_crud(void **state)
{
    (void)state;
    store_expert e = {0}, g = {0}, u = {0};
    make_expert(A, "Dr. A", &e);
    assert_string_equal(e.tenant_id, A);
    assert_int_equal(strlen(e.id), 36);
    assert_string_equal(e.name, "Dr. A");
    assert_string_equal(e.expertise, "[\"gmp\",\"fda\"]");
    assert_null(e.model);
    assert_true(e.weight == 1.5);

    OK(store_expert_get(S, A, e.id, &g, E));
    assert_string_equal(g.id, e.id);
    assert_string_equal(g.persona, "Careful and precise.");
    store_expert_free(&g);

    store_expert upd = {
        .name = "Dr. A2", .role = "Lead", .expertise = "[]", .model = "gpt-x", .weight = 2};
    memcpy(upd.id, e.id, sizeof upd.id);
    OK(store_expert_update(S, A, &upd, &u, E));
    assert_string_equal(u.name, "Dr. A2");
    assert_string_equal(u.model, "gpt-x");
    assert_string_equal(u.persona, "");
    assert_int_equal(u.created_at, e.created_at);
    assert_true(u.updated_at >= e.updated_at);
    store_expert_free(&u);

    /* Tenant B sees nothing of A's expert and cannot change it. */
    IS(AP_NOTFOUND, store_expert_get(S, B, e.id, &g, E));
    IS(AP_NOTFOUND, store_expert_update(S, B, &upd, &u, E));
    IS(AP_NOTFOUND, store_expert_delete(S, B, e.id, E));
    store_expert *rows = NULL;
    size_t n = 99;
    char next[STORE_CURSOR_MAX];
    OK(store_expert_list(S, B, "", 50, &rows, &n, next, E));
    assert_int_equal(n, 0);
    store_experts_free(rows, n);
    OK(store_expert_get(S, A, e.id, &g, E));
    assert_string_equal(g.name, "Dr. A2");
    store_expert_free(&g);

    /* Bad input. */
    store_expert bad = {.name = ""};
    IS(AP_INVALID, store_expert_create(S, A, &bad, NULL, E));
    bad.name = "x";
    bad.expertise = "{\"not\":\"array\"}";
    IS(AP_INVALID, store_expert_create(S, A, &bad, NULL, E));
    bad.expertise = NULL;
    bad.weight = -1;
    IS(AP_INVALID, store_expert_create(S, A, &bad, NULL, E));
    bad.weight = 1;
    IS(AP_INVALID, store_expert_create(S, "bad-tenant", &bad, NULL, E));
    IS(AP_NOTFOUND, store_expert_create(S, "00000000-0000-4000-8000-000000000000", &bad, NULL, E));
    memcpy(bad.id, "zz", 3);
    IS(AP_INVALID, store_expert_create(S, A, &bad, NULL, E));
    IS(AP_NOTFOUND, store_expert_get(S, A, "not-a-uuid", &g, E));
    IS(AP_INVALID, store_expert_get(S, "not-a-uuid", e.id, &g, E));
    /* A caller-chosen id that exists is a conflict, also across tenants. */
    store_expert dup = {.name = "dup"};
    memcpy(dup.id, e.id, sizeof dup.id);
    IS(AP_CONFLICT, store_expert_create(S, A, &dup, NULL, E));

    OK(store_expert_delete(S, A, e.id, E));
    IS(AP_NOTFOUND, store_expert_get(S, A, e.id, &g, E));
    IS(AP_NOTFOUND, store_expert_delete(S, A, e.id, E));
    store_expert_free(&e);
    store_expert_free(NULL);
}

static void test_experts_pagination(void **state)
{
    (void)state;
    char ids[5][STORE_ID_MAX];
    for (int i = 0; i < 5; i++) {
        store_expert e = {0};
        char name[16];
        snprintf(name, sizeof name, "E%d", i);
        make_expert(A, name, &e);
        memcpy(ids[i], e.id, STORE_ID_MAX);
        store_expert_free(&e);
    }
    make_expert(B, "other", NULL);
    /* Walk pages of 2: 2 + 2 + 1, each expert exactly once, oldest first with id tiebreak. */
    char cursor[STORE_CURSOR_MAX] = "", first[STORE_CURSOR_MAX] = "";
    int seen = 0, pages = 0;
    char prev_id[STORE_ID_MAX] = "";
    int64_t prev_at = 0;
    do {
        store_expert *rows = NULL;
        size_t n = 0;
        char next[STORE_CURSOR_MAX];
        OK(store_expert_list(S, A, cursor, 2, &rows, &n, next, E));
        pages++;
        assert_true(n <= 2);
        for (size_t i = 0; i < n; i++) {
            assert_string_equal(rows[i].tenant_id, A);
            assert_true(rows[i].created_at > prev_at ||
                        (rows[i].created_at == prev_at && strcmp(rows[i].id, prev_id) > 0));
            prev_at = rows[i].created_at;
            memcpy(prev_id, rows[i].id, STORE_ID_MAX);
            int found = 0;
            for (int j = 0; j < 5; j++)
                found += strcmp(ids[j], rows[i].id) == 0;
            assert_int_equal(found, 1);
            seen++;
        }
        store_experts_free(rows, n);
        memcpy(cursor, next, sizeof cursor);
        if (pages == 1)
            memcpy(first, next, sizeof first);
        assert_true(pages <= 3);
    } while (cursor[0] != '\0');
    assert_int_equal(seen, 5);
    assert_int_equal(pages, 3);

    store_expert *rows = NULL;
    size_t n = 0;
    char next[STORE_CURSOR_MAX];
    /* A cursor belongs to the list that issued it. */
    store_panel *prows = NULL;
    IS(AP_INVALID, store_panel_list(S, A, NULL, first, 2, 0, &prows, &n, next, E));
    OK(store_expert_list(S, A, first, 2, &rows, &n, next, E));
    assert_int_equal(n, 2);
    store_experts_free(rows, n);
    IS(AP_INVALID, store_expert_list(S, A, "zz", 2, &rows, &n, next, E));
    IS(AP_INVALID, store_expert_list(S, A, "3a", 2, &rows, &n, next, E));
    IS(AP_INVALID, store_expert_list(S, A, "", 0, &rows, &n, next, E));
    IS(AP_INVALID, store_expert_list(S, "x", "", 2, &rows, &n, next, E));
    OK(store_expert_list(S, A, "", 100000, &rows, &n, next, E)); /* clamped */
    assert_int_equal(n, 5);
    assert_string_equal(next, "");
    store_experts_free(rows, n);
}

/* ---- panels ------------------------------------------------------------------------------- */

static void make_panel(const char *tenant, const char *idem, const char *hash, store_panel *out)
{
    store_panel in = {.title = "T",
                      .question = "Should we file now?",
                      .strategy = "debate",
                      .strategy_version = "abc",
                      .params = "{\"rounds\":2}",
                      .experts = "[{\"name\":\"x\"}]",
                      .idempotency_key = (char *)idem,
                      .request_hash = (char *)hash};
    OK(store_panel_create(S, tenant, &in, out, E));
}

static void test_panels(void **state)
{
    (void)state;
    store_panel p = {0}, g = {0}, again = {0};
    make_panel(A, "idem-1", "h1", &p);
    assert_string_equal(p.tenant_id, A);
    assert_string_equal(p.status, "created");
    /* ids are time-ordered (v7): a later panel's id sorts after an earlier one's */
    assert_int_equal(p.id[14], '7');
    {
        store_panel later = {0};
        usleep(2000);
        make_panel(A, NULL, NULL, &later);
        assert_int_equal(later.id[14], '7');
        assert_true(strcmp(p.id, later.id) < 0);
        store_panel_free(&later);
    }
    assert_string_equal(p.params, "{\"rounds\":2}");
    assert_null(p.result);
    assert_null(p.consensus);

    /* Idempotency: same key and hash -> the same panel; other hash -> conflict. */
    make_panel(A, "idem-1", "h1", &again);
    assert_string_equal(again.id, p.id);
    store_panel_free(&again);
    store_panel in = {
        .question = "q", .strategy = "debate", .idempotency_key = "idem-1", .request_hash = "h2"};
    IS(AP_CONFLICT, store_panel_create(S, A, &in, &again, E));
    /* The same key in another tenant is independent. */
    make_panel(B, "idem-1", "h9", &again);
    assert_string_not_equal(again.id, p.id);
    store_panel_free(&again);

    OK(store_panel_get(S, A, p.id, &g, E));
    assert_string_equal(g.question, "Should we file now?");
    assert_string_equal(g.idempotency_key, "idem-1");
    store_panel_free(&g);
    IS(AP_NOTFOUND, store_panel_get(S, B, p.id, &g, E));
    IS(AP_NOTFOUND, store_panel_get(S, A, "nope", &g, E));

    /* Transitions. */
    const char *from_created[] = {"created"};
    const char *from_running[] = {"queued", "running"};
    OK(store_panel_transition(S, A, p.id, from_created, 1, "queued", NULL, NULL, E));
    IS(AP_CONFLICT, store_panel_transition(S, A, p.id, from_created, 1, "running", NULL, NULL, E));
    IS(AP_NOTFOUND,
       store_panel_transition(S, B, p.id, from_running, 2, "cancelled", NULL, NULL, E));
    IS(AP_INVALID, store_panel_transition(S, A, p.id, from_running, 2, "bogus", NULL, NULL, E));
    IS(AP_INVALID,
       store_panel_transition(S, A, p.id, from_running, 2, "completed", "{bad", NULL, E));
    IS(AP_INVALID, store_panel_transition(S, A, p.id, from_running, 0, "running", NULL, NULL, E));
    OK(store_panel_transition(S, A, p.id, from_running, 2, "running", NULL, NULL, E));
    OK(store_panel_transition(S, A, p.id, from_running, 2, "completed", "{\"answer\":42}", NULL,
                              E));
    OK(store_panel_get(S, A, p.id, &g, E));
    assert_string_equal(g.status, "completed");
    assert_string_equal(g.result, "{\"answer\":42}");
    assert_null(g.error);
    store_panel_free(&g);

    /* Bad input. */
    store_panel bad = {.question = "", .strategy = "x"};
    IS(AP_INVALID, store_panel_create(S, A, &bad, NULL, E));
    bad.question = "q";
    bad.params = "[]";
    IS(AP_INVALID, store_panel_create(S, A, &bad, NULL, E));
    bad.params = NULL;
    bad.status = "weird";
    IS(AP_INVALID, store_panel_create(S, A, &bad, NULL, E));
    bad.status = NULL;
    IS(AP_INVALID, store_panel_create(S, "A", &bad, NULL, E));
    store_panel_free(&p);
}

/* The panel's lease as the store has it: its owner ("" for none) and expiry. */
static void lease_of(const char *tenant, const char *id, char owner[STORE_LEASE_OWNER_MAX],
                     int64_t *expires_at)
{
    store_panel g = {0};
    OK(store_panel_get(S, tenant, id, &g, E));
    snprintf(owner, STORE_LEASE_OWNER_MAX, "%s", g.lease_owner != NULL ? g.lease_owner : "");
    *expires_at = g.lease_expires_at;
    store_panel_free(&g);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Leases: only a claim takes one, and only when it is free, expired, the claimer's own, or held
 * by the owner the claimer names as gone; renewals extend only the owner's running panels;
 * leaving running and releasing clear them. */
/* A claim with a limit of live panels counts the tenant's other live panels (queued, running,
 * awaiting input), not the claimed one's own row nor another tenant's. */
static void test_panel_live_limit(void **state)
{
    (void)state;
    static const char *const created[] = {"created"}, *const running[] = {"running"};
    static const char o1[] = "host-1:101:aaaa";
    store_panel p[3], b = {0};
    memset(p, 0, sizeof p);
    for (int i = 0; i < 3; i++)
        make_panel(A, NULL, NULL, &p[i]);
    make_panel(B, NULL, NULL, &b);
    OK(store_panel_claim(S, A, p[0].id, created, 1, o1, 60000, NULL, 2, E));
    OK(store_panel_claim(S, A, p[1].id, created, 1, o1, 60000, NULL, 2, E));
    IS(AP_LIMIT, store_panel_claim(S, A, p[2].id, created, 1, o1, 60000, NULL, 2, E));
    {
        store_panel g = {0};
        OK(store_panel_get(S, A, p[2].id, &g, E));
        assert_string_equal(g.status, "created"); /* refused: nothing changed */
        store_panel_free(&g);
    }
    /* another tenant's live panels are not this one's */
    OK(store_panel_claim(S, B, b.id, created, 1, o1, 60000, NULL, 1, E));
    /* a running panel re-claimed is not counted against itself */
    OK(store_panel_claim(S, A, p[0].id, running, 1, o1, 60000, NULL, 2, E));
    /* no such panel (or another tenant's) stays not found, limit or not */
    IS(AP_NOTFOUND, store_panel_claim(S, A, b.id, created, 1, o1, 60000, NULL, 1, E));
    IS(AP_INVALID, store_panel_claim(S, A, p[2].id, created, 1, o1, 60000, NULL, -1, E));
    /* awaiting input is live; a finished panel makes room */
    OK(store_panel_transition(S, A, p[1].id, running, 1, "awaiting_input", NULL, NULL, E));
    IS(AP_LIMIT, store_panel_claim(S, A, p[2].id, created, 1, o1, 60000, NULL, 2, E));
    OK(store_panel_transition(S, A, p[0].id, running, 1, "completed", "{}", NULL, E));
    OK(store_panel_claim(S, A, p[2].id, created, 1, o1, 60000, NULL, 2, E));
    for (int i = 0; i < 3; i++)
        store_panel_free(&p[i]);
    store_panel_free(&b);
}

static void test_panel_leases(void **state)
{
    (void)state;
    static const char *const created[] = {"created"}, *const running[] = {"running"},
                             *const awaiting[] = {"awaiting_input"};
    static const char o1[] = "host-1:101:aaaa", o2[] = "host-2:202:bbbb", o3[] = "host-3:303:cccc";
    store_panel p = {0}, q = {0};
    char owner[STORE_LEASE_OWNER_MAX];
    int64_t until = 0;
    make_panel(A, NULL, NULL, &p);
    make_panel(A, NULL, NULL, &q);
    assert_null(p.lease_owner);

    int64_t before = wall_ms();
    OK(store_panel_claim(S, A, p.id, created, 1, o1, 60000, NULL, 0, E));
    lease_of(A, p.id, owner, &until);
    assert_string_equal(owner, o1);
    assert_true(until >= before + 60000 && until <= wall_ms() + 60000);
    {
        store_panel g = {0};
        OK(store_panel_get(S, A, p.id, &g, E));
        assert_string_equal(g.status, "running");
        store_panel_free(&g);
    }
    /* a live lease of someone else */
    IS(AP_CONFLICT, store_panel_claim(S, A, p.id, running, 1, o2, 60000, NULL, 0, E));
    IS(AP_CONFLICT, store_panel_claim(S, A, p.id, running, 1, o2, 60000, o3, 0, E));
    /* the status must match too, even for the owner */
    IS(AP_CONFLICT, store_panel_claim(S, A, p.id, created, 1, o1, 60000, NULL, 0, E));
    /* another tenant's panel does not exist */
    IS(AP_NOTFOUND, store_panel_claim(S, B, p.id, running, 1, o2, 60000, NULL, 0, E));
    /* the owner renews its own claim; a claimer that found the owner gone takes it over */
    OK(store_panel_claim(S, A, p.id, running, 1, o1, 60000, NULL, 0, E));
    OK(store_panel_claim(S, A, p.id, running, 1, o2, 60000, o1, 0, E));
    lease_of(A, p.id, owner, &until);
    assert_string_equal(owner, o2);
    /* an expired lease is free */
    OK(store_panel_claim(S, A, p.id, running, 1, o2, 1, NULL, 0, E));
    usleep(20 * 1000);
    OK(store_panel_claim(S, A, p.id, running, 1, o3, 60000, NULL, 0, E));
    lease_of(A, p.id, owner, &until);
    assert_string_equal(owner, o3);

    /* Renewal: only the owner's running panels, each reported. */
    OK(store_panel_claim(S, A, q.id, created, 1, o1, 60000, NULL, 0, E));
    store_panel_ref refs[2];
    memcpy(refs[0].tenant_id, A, STORE_ID_MAX);
    memcpy(refs[0].panel_id, p.id, STORE_ID_MAX);
    memcpy(refs[1].tenant_id, A, STORE_ID_MAX);
    memcpy(refs[1].panel_id, q.id, STORE_ID_MAX);
    bool renewed[2] = {false, false};
    OK(store_panel_claim(S, A, p.id, running, 1, o3, 1000, NULL, 0, E));
    lease_of(A, p.id, owner, &until);
    int64_t short_until = until;
    OK(store_panel_leases_renew(S, o3, refs, 2, 120000, renewed, E));
    assert_true(renewed[0]);
    assert_false(renewed[1]);
    lease_of(A, p.id, owner, &until);
    assert_true(until >= short_until + 100000);
    int64_t q_until = 0;
    lease_of(A, q.id, owner, &q_until);
    assert_string_equal(owner, o1);
    OK(store_panel_leases_renew(S, o1, refs, 2, 120000, renewed, E));
    assert_false(renewed[0]);
    assert_true(renewed[1]);
    /* a row that comes back for another tenant than the caller named is not counted */
    memcpy(refs[1].tenant_id, B, STORE_ID_MAX);
    OK(store_panel_leases_renew(S, o1, refs, 2, 120000, renewed, E));
    assert_false(renewed[1]);
    memcpy(refs[1].tenant_id, A, STORE_ID_MAX);
    IS(AP_INVALID, store_panel_leases_renew(S, "", refs, 2, 120000, renewed, E));
    IS(AP_INVALID, store_panel_leases_renew(S, o1, refs, 2, 0, renewed, E));

    /* Leaving running clears the lease; a panel waiting for input is held by nobody. */
    OK(store_panel_transition(S, A, q.id, running, 1, "awaiting_input", NULL, NULL, E));
    lease_of(A, q.id, owner, &until);
    assert_string_equal(owner, "");
    assert_int_equal(until, 0);
    OK(store_panel_leases_renew(S, o1, refs, 2, 120000, renewed, E));
    assert_false(renewed[1]);
    OK(store_panel_claim(S, A, q.id, awaiting, 1, o2, 60000, NULL, 0, E));
    lease_of(A, q.id, owner, &until);
    assert_string_equal(owner, o2);
    OK(store_panel_transition(S, A, q.id, running, 1, "completed", "{}", NULL, E));
    lease_of(A, q.id, owner, &until);
    assert_string_equal(owner, "");
    IS(AP_CONFLICT, store_panel_claim(S, A, q.id, running, 1, o2, 60000, NULL, 0, E));

    /* Fencing: writes of a process that lost the panel (stalled past its lease) do not land,
     * neither its checkpoint nor its status change; the holder's do. */
    {
        store_write w[2];
        memset(w, 0, sizeof w);
        w[0].kind = STORE_WRITE_CHECKPOINT;
        memcpy(w[0].u.checkpoint.panel_id, p.id, STORE_ID_MAX);
        w[0].u.checkpoint.step = 9;
        w[0].u.checkpoint.next_node = "stale";
        w[0].u.checkpoint.state = "{}";
        w[0].u.checkpoint.journal = "[]";
        w[0].u.checkpoint.owner = o1;
        w[1].kind = STORE_WRITE_TRANSITION;
        memcpy(w[1].u.transition.panel_id, p.id, STORE_ID_MAX);
        w[1].u.transition.from = running;
        w[1].u.transition.n_from = 1;
        w[1].u.transition.to = "completed";
        w[1].u.transition.owner = o1;
        OK(store_write_batch_trusted(S, A, w, 2, E));
        assert_int_equal(w[0].result, AP_CONFLICT);
        assert_int_equal(w[1].result, AP_CONFLICT);
        store_checkpoint ck = {0};
        IS(AP_NOTFOUND, store_checkpoint_get(S, A, p.id, &ck, E));
        store_panel g = {0};
        OK(store_panel_get(S, A, p.id, &g, E));
        assert_string_equal(g.status, "running");
        store_panel_free(&g);
        w[0].result = w[1].result = AP_OK;
        w[0].u.checkpoint.owner = o3;
        w[0].u.checkpoint.next_node = "fresh";
        w[1].u.transition.to = "running"; /* keeps the lease for what follows */
        w[1].u.transition.owner = o3;
        OK(store_write_batch_trusted(S, A, w, 2, E));
        assert_int_equal(w[0].result, AP_OK);
        assert_int_equal(w[1].result, AP_OK);
        OK(store_checkpoint_get(S, A, p.id, &ck, E));
        assert_string_equal(ck.next_node, "fresh");
        store_checkpoint_free(&ck);
        /* events too: a stale process's is refused (AP_DENIED, not a replay), the holder's
         * lands, and a replay of it is AP_CONFLICT */
        store_write ev = {.kind = STORE_WRITE_EVENT};
        memcpy(ev.u.event.panel_id, p.id, STORE_ID_MAX);
        ev.u.event.seq = 1;
        ev.u.event.type = "panel.status";
        ev.u.event.data = "{\"status\":\"running\"}";
        ev.u.event.owner = o1;
        OK(store_write_batch_trusted(S, A, &ev, 1, E));
        assert_int_equal(ev.result, AP_DENIED);
        int64_t last = -1;
        OK(store_events_last_seq(S, A, p.id, &last, E));
        assert_int_equal(last, 0);
        ev.result = AP_OK;
        ev.u.event.owner = o3;
        OK(store_write_batch_trusted(S, A, &ev, 1, E));
        assert_int_equal(ev.result, AP_OK);
        OK(store_write_batch_trusted(S, A, &ev, 1, E));
        assert_int_equal(ev.result, AP_CONFLICT);
        OK(store_events_last_seq(S, A, p.id, &last, E));
        assert_int_equal(last, 1);
    }

    /* Release: every running panel of the owner becomes free at once, and stays running. */
    OK(store_panel_leases_release(S, o3, E));
    lease_of(A, p.id, owner, &until);
    assert_string_equal(owner, "");
    OK(store_panel_claim(S, A, p.id, running, 1, o2, 60000, NULL, 0, E));

    /* Bad input. */
    IS(AP_INVALID, store_panel_claim(S, A, p.id, running, 1, "", 60000, NULL, 0, E));
    IS(AP_INVALID, store_panel_claim(S, A, p.id, running, 1, o2, 0, NULL, 0, E));
    IS(AP_INVALID, store_panel_claim(S, A, p.id, running, 0, o2, 60000, NULL, 0, E));
    IS(AP_INVALID, store_panel_leases_release(S, NULL, E));
    store_panel_free(&p);
    store_panel_free(&q);
}

/* Strings equal, or both NULL. */
static void assert_same_text(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

/* What store_panel_create returns is the stored row, as store_panel_get reads it. */
static void test_panel_create_returns_stored_row(void **state)
{
    (void)state;
    store_panel full = {.title = "Title",
                        .question = "Q?",
                        .strategy = "debate",
                        .strategy_version = "v1",
                        .consensus = "majority",
                        .params = "{\"rounds\":3}",
                        .experts = "[{\"name\":\"y\"}]",
                        .status = "queued",
                        .result = "{\"answer\":1}",
                        .error = "none",
                        .idempotency_key = "idem-row",
                        .request_hash = "hash-row"};
    store_panel bare = {.question = "Q2", .strategy = "debate", .idempotency_key = ""};
    store_panel *ins[] = {&full, &bare};
    for (size_t i = 0; i < 2; i++) {
        store_panel c = {0}, g = {0};
        OK(store_panel_create(S, A, ins[i], &c, E));
        OK(store_panel_get(S, A, c.id, &g, E));
        assert_string_equal(c.id, g.id);
        assert_string_equal(c.tenant_id, g.tenant_id);
        const char *cs[] = {c.title,     c.question, c.strategy,        c.strategy_version,
                            c.consensus, c.params,   c.experts,         c.status,
                            c.result,    c.error,    c.idempotency_key, c.request_hash};
        const char *gs[] = {g.title,     g.question, g.strategy,        g.strategy_version,
                            g.consensus, g.params,   g.experts,         g.status,
                            g.result,    g.error,    g.idempotency_key, g.request_hash};
        for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++)
            assert_same_text(cs[k], gs[k]);
        assert_int_equal(c.created_at, g.created_at);
        assert_int_equal(c.updated_at, g.updated_at);
        store_panel_free(&c);
        store_panel_free(&g);
    }
}

static void test_panel_lists(void **state)
{
    (void)state;
    char ids[4][STORE_ID_MAX];
    for (int i = 0; i < 4; i++) {
        store_panel p = {0};
        make_panel(A, NULL, NULL, &p);
        memcpy(ids[i], p.id, STORE_ID_MAX);
        store_panel_free(&p);
    }
    store_panel pb = {0};
    make_panel(B, NULL, NULL, &pb);
    const char *from[] = {"created"};
    OK(store_panel_transition(S, A, ids[1], from, 1, "running", NULL, NULL, E));
    OK(store_panel_transition(S, A, ids[3], from, 1, "running", NULL, NULL, E));
    OK(store_panel_transition(S, B, pb.id, from, 1, "running", NULL, NULL, E));

    /* Newest first, pages of 3: 3 + 1. */
    store_panel *rows = NULL;
    size_t n = 0;
    char next[STORE_CURSOR_MAX], next2[STORE_CURSOR_MAX];
    OK(store_panel_list(S, A, NULL, "", 3, 0, &rows, &n, next, E));
    assert_int_equal(n, 3);
    assert_string_not_equal(next, "");
    for (size_t i = 1; i < n; i++)
        assert_true(rows[i - 1].created_at > rows[i].created_at ||
                    (rows[i - 1].created_at == rows[i].created_at &&
                     strcmp(rows[i - 1].id, rows[i].id) > 0));
    store_panels_free(rows, n);
    OK(store_panel_list(S, A, NULL, next, 3, 0, &rows, &n, next2, E));
    assert_int_equal(n, 1);
    assert_string_equal(next2, "");
    store_panels_free(rows, n);

    /* A byte bound ends a page with the first panel past it, and the cursor goes on from
     * there: with the first panel's size, pages of two; with one byte, pages of one. */
    OK(store_panel_list(S, A, NULL, "", 50, 0, &rows, &n, next, E));
    size_t first_bytes = store_panel_bytes(&rows[0]);
    store_panels_free(rows, n);
    OK(store_panel_list(S, A, NULL, "", 50, first_bytes, &rows, &n, next, E));
    assert_int_equal(n, 2);
    assert_string_not_equal(next, "");
    store_panels_free(rows, n);
    size_t seen = 0, pages = 0;
    next[0] = '\0';
    do {
        snprintf(next2, sizeof next2, "%s", next);
        OK(store_panel_list(S, A, NULL, next2, 50, 1, &rows, &n, next, E));
        assert_true(n <= 1);
        seen += n;
        pages++;
        store_panels_free(rows, n);
    } while (next[0] != '\0' && pages < 10);
    assert_int_equal(seen, 4);

    OK(store_panel_list(S, A, "running", "", 50, 0, &rows, &n, next, E));
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(rows[i].status, "running");
        assert_true(strcmp(rows[i].id, ids[1]) == 0 || strcmp(rows[i].id, ids[3]) == 0);
    }
    store_panels_free(rows, n);
    IS(AP_INVALID, store_panel_list(S, A, "nope", "", 50, 0, &rows, &n, next, E));

    OK(store_panel_list(S, B, NULL, "", 50, 0, &rows, &n, next, E));
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].id, pb.id);
    store_panels_free(rows, n);

    /* Operator scope: running panels of both tenants. */
    store_panel_ref *refs = NULL;
    OK(store_panels_in_status(S, "running", &refs, &n, E));
    int hits = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(refs[i].panel_id, ids[1]) == 0 || strcmp(refs[i].panel_id, ids[3]) == 0) {
            assert_string_equal(refs[i].tenant_id, A);
            hits++;
        }
        if (strcmp(refs[i].panel_id, pb.id) == 0) {
            assert_string_equal(refs[i].tenant_id, B);
            hits++;
        }
    }
    assert_int_equal(hits, 3);
    free(refs);
    IS(AP_INVALID, store_panels_in_status(S, "bogus", &refs, &n, E));
    store_panel_free(&pb);
}

/* ---- events ------------------------------------------------------------------------------- */

static void test_events(void **state)
{
    (void)state;
    store_panel p1 = {0}, p2 = {0};
    make_panel(A, NULL, NULL, &p1);
    make_panel(A, NULL, NULL, &p2);
    store_event ev[3] = {{.seq = 1, .type = "started", .data = "{\"a\":1}"},
                         {.seq = 2, .type = "message", .data = "{\"text\":\"hi\"}"},
                         {.seq = 1, .type = "started", .data = NULL}};
    memcpy(ev[0].panel_id, p1.id, STORE_ID_MAX);
    memcpy(ev[1].panel_id, p1.id, STORE_ID_MAX);
    memcpy(ev[2].panel_id, p2.id, STORE_ID_MAX);
    OK(store_events_append(S, A, ev, 3, E));
    OK(store_events_append(S, A, ev, 0, E));

    int64_t seq = -1;
    OK(store_events_last_seq(S, A, p1.id, &seq, E));
    assert_int_equal(seq, 2);
    OK(store_events_last_seq(S, A, p2.id, &seq, E));
    assert_int_equal(seq, 1);

    store_event *rows = NULL;
    size_t n = 0;
    OK(store_events_list(S, A, p1.id, 0, 100, &rows, &n, E));
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].seq, 1);
    assert_int_equal(rows[1].seq, 2);
    assert_string_equal(rows[1].type, "message");
    assert_string_equal(rows[1].data, "{\"text\":\"hi\"}");
    assert_string_equal(rows[0].panel_id, p1.id);
    assert_true(rows[0].created_at > 0);
    store_events_free(rows, n);
    OK(store_events_list(S, A, p1.id, 1, 100, &rows, &n, E));
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].seq, 2);
    store_events_free(rows, n);
    OK(store_events_list(S, A, p1.id, 0, 1, &rows, &n, E));
    assert_int_equal(n, 1);
    store_events_free(rows, n);

    /* A batch with one duplicate lands nothing. */
    store_event batch[2] = {{.seq = 3, .type = "message", .data = "{}"},
                            {.seq = 2, .type = "message", .data = "{}"}};
    memcpy(batch[0].panel_id, p1.id, STORE_ID_MAX);
    memcpy(batch[1].panel_id, p1.id, STORE_ID_MAX);
    IS(AP_CONFLICT, store_events_append(S, A, batch, 2, E));
    OK(store_events_last_seq(S, A, p1.id, &seq, E));
    assert_int_equal(seq, 2);

    /* Tenant B cannot append to, or read, A's panel; nothing lands. */
    batch[1].seq = 4;
    IS(AP_NOTFOUND, store_events_append(S, B, batch, 2, E));
    OK(store_events_last_seq(S, A, p1.id, &seq, E));
    assert_int_equal(seq, 2);
    OK(store_events_list(S, B, p1.id, 0, 100, &rows, &n, E));
    assert_int_equal(n, 0);
    store_events_free(rows, n);
    OK(store_events_last_seq(S, B, p1.id, &seq, E));
    assert_int_equal(seq, 0);

    /* Bad input. */
    batch[0].seq = 0;
    IS(AP_INVALID, store_events_append(S, A, batch, 2, E));
    batch[0].seq = 9;
    batch[0].data = "{oops";
    IS(AP_INVALID, store_events_append(S, A, batch, 2, E));
    batch[0].data = "{}";
    memcpy(batch[0].panel_id, "bad", 4);
    IS(AP_INVALID, store_events_append(S, A, batch, 2, E));
    IS(AP_INVALID, store_events_append(S, "bad", ev, 1, E));
    IS(AP_NOTFOUND, store_events_list(S, A, "bad", 0, 10, &rows, &n, E));
    OK(store_events_last_seq(S, A, p1.id, &seq, E));
    assert_int_equal(seq, 2);
    store_panel_free(&p1);
    store_panel_free(&p2);
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static void test_checkpoints(void **state)
{
    (void)state;
    store_panel p = {0};
    make_panel(A, NULL, NULL, &p);
    store_checkpoint c = {0}, g = {0};
    IS(AP_NOTFOUND, store_checkpoint_get(S, A, p.id, &g, E));
    memcpy(c.panel_id, p.id, STORE_ID_MAX);
    c.step = 3;
    c.next_node = "vote";
    c.state = "{\"round\":1}";
    c.script_version = "v1";
    c.journal = "[{\"ok\":true}]";
    c.last_seq = 7;
    OK(store_checkpoint_put(S, A, &c, E));
    OK(store_checkpoint_get(S, A, p.id, &g, E));
    assert_string_equal(g.panel_id, p.id);
    assert_int_equal(g.step, 3);
    assert_string_equal(g.next_node, "vote");
    assert_string_equal(g.state, "{\"round\":1}");
    assert_string_equal(g.script_version, "v1");
    assert_string_equal(g.journal, "[{\"ok\":true}]");
    assert_int_equal(g.last_seq, 7);
    assert_true(g.created_at > 0);
    store_checkpoint_free(&g);

    c.step = 4;
    c.next_node = NULL;
    c.journal = NULL;
    OK(store_checkpoint_put(S, A, &c, E));
    OK(store_checkpoint_get(S, A, p.id, &g, E));
    assert_int_equal(g.step, 4);
    assert_null(g.next_node);
    assert_string_equal(g.journal, "[]");
    store_checkpoint_free(&g);

    IS(AP_NOTFOUND, store_checkpoint_get(S, B, p.id, &g, E));
    IS(AP_NOTFOUND, store_checkpoint_put(S, B, &c, E));
    OK(store_checkpoint_get(S, A, p.id, &g, E));
    assert_int_equal(g.step, 4);
    store_checkpoint_free(&g);
    c.state = "not json";
    IS(AP_INVALID, store_checkpoint_put(S, A, &c, E));
    c.state = "{}";
    c.step = -1;
    IS(AP_INVALID, store_checkpoint_put(S, A, &c, E));
    store_checkpoint_free(NULL);
    store_panel_free(&p);
}

/* ---- scripts ------------------------------------------------------------------------------ */

static void test_scripts(void **state)
{
    (void)state;
    const char *src1 = "return { nodes = {} }";
    const char *src2 = "return { nodes = { a = 1 } }";
    char v1[IDS_SHA256_HEX_LEN + 1], v2[IDS_SHA256_HEX_LEN + 1];
    ids_sha256_hex(src1, strlen(src1), v1);
    ids_sha256_hex(src2, strlen(src2), v2);
    store_script sc = {.kind = STORE_SCRIPT_STRATEGY, .name = "debate", .source = (char *)src1};
    OK(store_script_put(S, A, &sc, true, E));
    OK(store_script_put(S, A, &sc, true, E)); /* idempotent */
    store_script g = {0};
    OK(store_script_get_active(S, A, STORE_SCRIPT_STRATEGY, "debate", &g, E));
    assert_string_equal(g.version, v1);
    assert_string_equal(g.source, src1);
    assert_string_equal(g.origin, "override");
    assert_string_equal(g.tenant_id, A);
    assert_true(g.active);
    assert_int_equal(g.kind, STORE_SCRIPT_STRATEGY);
    store_script_free(&g);

    /* A kept but not activated version leaves the active one alone. */
    store_script sc2 = {.kind = STORE_SCRIPT_STRATEGY,
                        .name = "debate",
                        .source = (char *)src2,
                        .version = v2,
                        .origin = "tenant-dir"};
    OK(store_script_put(S, A, &sc2, false, E));
    OK(store_script_get_active(S, A, STORE_SCRIPT_STRATEGY, "debate", &g, E));
    assert_string_equal(g.version, v1);
    store_script_free(&g);
    usleep(2000); /* distinct created_at for the newest-first check */
    OK(store_script_put(S, A, &sc2, true, E));
    OK(store_script_get_active(S, A, STORE_SCRIPT_STRATEGY, "debate", &g, E));
    assert_string_equal(g.version, v2);
    assert_string_equal(g.origin, "tenant-dir");
    store_script_free(&g);
    OK(store_script_get_version(S, A, STORE_SCRIPT_STRATEGY, "debate", v1, &g, E));
    assert_string_equal(g.source, src1);
    assert_false(g.active);
    store_script_free(&g);

    store_script *rows = NULL;
    size_t n = 0;
    OK(store_script_list(S, A, STORE_SCRIPT_STRATEGY, "debate", &rows, &n, E));
    assert_int_equal(n, 2);
    assert_string_equal(rows[0].version, v2);
    assert_string_equal(rows[1].version, v1);
    store_scripts_free(rows, n);

    store_script cons = {.kind = STORE_SCRIPT_CONSENSUS, .name = "majority", .source = "return 1"};
    OK(store_script_put(S, A, &cons, true, E));
    OK(store_script_list(S, A, STORE_SCRIPT_STRATEGY, NULL, &rows, &n, E));
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].name, "debate");
    assert_true(rows[0].active);
    store_scripts_free(rows, n);
    OK(store_script_list(S, A, STORE_SCRIPT_CONSENSUS, NULL, &rows, &n, E));
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].name, "majority");
    store_scripts_free(rows, n);

    /* Tenant B sees none of it. */
    IS(AP_NOTFOUND, store_script_get_active(S, B, STORE_SCRIPT_STRATEGY, "debate", &g, E));
    IS(AP_NOTFOUND, store_script_get_version(S, B, STORE_SCRIPT_STRATEGY, "debate", v1, &g, E));
    IS(AP_NOTFOUND, store_script_deactivate(S, B, STORE_SCRIPT_STRATEGY, "debate", E));
    OK(store_script_list(S, B, STORE_SCRIPT_STRATEGY, "debate", &rows, &n, E));
    assert_int_equal(n, 0);
    store_scripts_free(rows, n);

    OK(store_script_deactivate(S, A, STORE_SCRIPT_STRATEGY, "debate", E));
    IS(AP_NOTFOUND, store_script_get_active(S, A, STORE_SCRIPT_STRATEGY, "debate", &g, E));
    IS(AP_NOTFOUND, store_script_deactivate(S, A, STORE_SCRIPT_STRATEGY, "debate", E));
    OK(store_script_get_version(S, A, STORE_SCRIPT_STRATEGY, "debate", v2, &g, E));
    store_script_free(&g);

    /* Bad input. */
    store_script bad = {.kind = STORE_SCRIPT_STRATEGY, .name = "x", .source = "a", .version = v1};
    IS(AP_INVALID, store_script_put(S, A, &bad, false, E)); /* version is not the source hash */
    bad.version = NULL;
    bad.name = "bad name!";
    IS(AP_INVALID, store_script_put(S, A, &bad, false, E));
    bad.name = "x";
    bad.kind = (store_script_kind)9;
    IS(AP_INVALID, store_script_put(S, A, &bad, false, E));
    IS(AP_NOTFOUND, store_script_get_version(S, A, STORE_SCRIPT_STRATEGY, "debate", "abc", &g, E));
    store_script_free(NULL);
}

/* ---- usage -------------------------------------------------------------------------------- */

static const cJSON *group_of(const cJSON *arr, const char *key)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, arr)
    {
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(item, "key");
        if ((key == NULL && cJSON_IsNull(k)) ||
            (key != NULL && cJSON_IsString(k) && strcmp(k->valuestring, key) == 0))
            return item;
    }
    return NULL;
}

static void test_usage(void **state)
{
    (void)state;
    const int64_t day = 86400000;
    const int64_t t0 = 20000 * day; /* 2024-10-04 */
    struct {
        const char *expert;
        const char *model;
        int64_t at;
        int64_t pt, ct;
        double cost;
    } rec[] = {
        {"e1", "m1", t0 + 1000, 100, 10, 0.5},
        {"e1", "m2", t0 + 2000, 200, 20, 0.25},
        {"e2", "m1", t0 + day + 5, 50, 5, 0.125},
        {NULL, "m1", t0 + day + 6, 1, 1, 0},
    };
    for (size_t i = 0; i < sizeof rec / sizeof rec[0]; i++) {
        store_usage u = {.expert_id = (char *)rec[i].expert,
                         .provider = "simulated",
                         .model = (char *)rec[i].model,
                         .prompt_tokens = rec[i].pt,
                         .completion_tokens = rec[i].ct,
                         .cost_usd = rec[i].cost,
                         .latency_ms = 12,
                         .attempts = 1,
                         .outcome = "ok",
                         .created_at = rec[i].at};
        OK(store_usage_record(S, A, &u, E));
    }
    store_usage outside = {.provider = "simulated",
                           .model = "m1",
                           .outcome = "ok",
                           .prompt_tokens = 999,
                           .created_at = t0 + 10 * day};
    OK(store_usage_record(S, A, &outside, E));
    OK(store_usage_record(S, B, &outside, E));

    char *json = NULL;
    OK(store_usage_summary(S, A, t0, t0 + 2 * day, "expert", &json, E));
    cJSON *arr = cJSON_Parse(json);
    assert_non_null(arr);
    assert_int_equal(cJSON_GetArraySize(arr), 3);
    const cJSON *e1 = group_of(arr, "e1");
    assert_non_null(e1);
    assert_int_equal((int)jsonx_number(e1, "calls", -1), 2);
    assert_int_equal((int)jsonx_number(e1, "prompt_tokens", -1), 300);
    assert_int_equal((int)jsonx_number(e1, "completion_tokens", -1), 30);
    assert_true(jsonx_number(e1, "cost_usd", -1) == 0.75);
    assert_non_null(group_of(arr, NULL));
    cJSON_Delete(arr);
    free(json);

    OK(store_usage_summary(S, A, t0, t0 + 2 * day, "model", &json, E));
    arr = cJSON_Parse(json);
    assert_int_equal(cJSON_GetArraySize(arr), 2);
    assert_int_equal((int)jsonx_number(group_of(arr, "m1"), "calls", -1), 3);
    assert_int_equal((int)jsonx_number(group_of(arr, "m2"), "prompt_tokens", -1), 200);
    cJSON_Delete(arr);
    free(json);

    OK(store_usage_summary(S, A, t0, t0 + 2 * day, "day", &json, E));
    arr = cJSON_Parse(json);
    assert_int_equal(cJSON_GetArraySize(arr), 2);
    assert_string_equal(cJSON_GetArrayItem(arr, 0)->child->valuestring, "2024-10-04");
    assert_int_equal((int)jsonx_number(group_of(arr, "2024-10-04"), "calls", -1), 2);
    assert_int_equal((int)jsonx_number(group_of(arr, "2024-10-05"), "calls", -1), 2);
    cJSON_Delete(arr);
    free(json);

    OK(store_usage_summary(S, B, t0, t0 + 2 * day, "model", &json, E));
    assert_string_equal(json, "[]");
    free(json);

    IS(AP_INVALID, store_usage_summary(S, A, t0, t0 + day, "week", &json, E));
    IS(AP_INVALID, store_usage_summary(S, A, t0 + day, t0, "day", &json, E));
    IS(AP_INVALID, store_usage_summary(S, "bad", t0, t0 + day, "day", &json, E));
    store_usage bad = {.provider = "p", .model = "m", .outcome = "ok", .prompt_tokens = -1};
    IS(AP_INVALID, store_usage_record(S, A, &bad, E));
    bad.prompt_tokens = 0;
    memcpy(bad.panel_id, "xx", 3);
    IS(AP_INVALID, store_usage_record(S, A, &bad, E));
    bad.panel_id[0] = '\0';
    bad.model = NULL;
    IS(AP_INVALID, store_usage_record(S, A, &bad, E));
    store_usage_free(NULL);
}

/* ---- batch writes ------------------------------------------------------------------------- */

/* Calls of a tenant in the usage summary (all time), model "bm". */
static int64_t batch_usage_calls(const char *tenant)
{
    char *json = NULL;
    OK(store_usage_summary(S, tenant, 0, INT64_MAX, "model", &json, E));
    cJSON *arr = cJSON_Parse(json);
    assert_non_null(arr);
    const cJSON *g = group_of(arr, "bm");
    int64_t calls =
        g != NULL ? (int64_t)cJSON_GetObjectItemCaseSensitive(g, "calls")->valuedouble : 0;
    cJSON_Delete(arr);
    free(json);
    return calls;
}

static store_write w_event(const char *panel, int64_t seq)
{
    store_write w = {.kind = STORE_WRITE_EVENT};
    memcpy(w.u.event.panel_id, panel, STORE_ID_MAX);
    w.u.event.seq = seq;
    w.u.event.type = "message";
    w.u.event.data = "{\"n\":1}";
    return w;
}

static store_write w_ckpt(const char *panel, int64_t step)
{
    store_write w = {.kind = STORE_WRITE_CHECKPOINT};
    memcpy(w.u.checkpoint.panel_id, panel, STORE_ID_MAX);
    w.u.checkpoint.step = step;
    w.u.checkpoint.next_node = "n";
    w.u.checkpoint.state = "{}";
    w.u.checkpoint.last_seq = step;
    return w;
}

static const char *const FROM_CREATED[] = {"created"};
static const char *const FROM_RUNNING[] = {"running"};

static store_write w_trans(const char *panel, const char *const *from, const char *to)
{
    store_write w = {.kind = STORE_WRITE_TRANSITION};
    memcpy(w.u.transition.panel_id, panel, STORE_ID_MAX);
    w.u.transition.from = from;
    w.u.transition.n_from = 1;
    w.u.transition.to = to;
    return w;
}

static store_write w_usage(const char *panel)
{
    store_write w = {.kind = STORE_WRITE_USAGE};
    memcpy(w.u.usage.panel_id, panel, STORE_ID_MAX);
    w.u.usage.provider = "simulated";
    w.u.usage.model = "bm";
    w.u.usage.outcome = "ok";
    w.u.usage.prompt_tokens = 3;
    return w;
}

static void assert_status(const char *tenant, const char *panel, const char *status)
{
    store_panel p = {0};
    OK(store_panel_get(S, tenant, panel, &p, E));
    assert_string_equal(p.status, status);
    store_panel_free(&p);
}

static void assert_last_seq(const char *panel, int64_t want)
{
    int64_t seq = -1;
    OK(store_events_last_seq(S, A, panel, &seq, E));
    assert_int_equal(seq, want);
}

/* The writer's variant: the engine's own JSON is checked (size, UTF-8, depth, kind), not
 * parsed; tenancy and everything else are enforced exactly as in store_write_batch. */
static void test_write_batch_trusted(void **state)
{
    (void)state;
    store_panel p = {0};
    make_panel(A, NULL, NULL, &p);
    store_write w[] = {w_event(p.id, 1), w_ckpt(p.id, 1), w_usage(p.id),
                       w_trans(p.id, FROM_CREATED, "running")};
    OK(store_write_batch_trusted(S, A, w, 4, E));
    assert_last_seq(p.id, 1);
    assert_status(A, p.id, "running");
    store_write bad_utf8[] = {w_event(p.id, 2)};
    bad_utf8[0].u.event.data = "{\"s\":\"\xff\"}";
    IS(AP_INVALID, store_write_batch_trusted(S, A, bad_utf8, 1, E));
    char deep[301];
    memset(deep, '[', 150);
    memset(deep + 150, ']', 150);
    deep[300] = '\0';
    store_write too_deep[] = {w_event(p.id, 2)};
    too_deep[0].u.event.data = deep;
    IS(AP_INVALID, store_write_batch_trusted(S, A, too_deep, 1, E));
    assert_last_seq(p.id, 1);
    store_write bad_result[] = {w_trans(p.id, FROM_RUNNING, "completed")};
    bad_result[0].u.transition.result = "{\"r\":\"\xff\"}";
    IS(AP_INVALID, store_write_batch_trusted(S, A, bad_result, 1, E));
    assert_status(A, p.id, "running");
    /* Another tenant's panel is refused as with the validating call. */
    store_write cross[] = {w_event(p.id, 2)};
    IS(AP_NOTFOUND, store_write_batch_trusted(S, B, cross, 1, E));
    assert_last_seq(p.id, 1);
    store_panel_free(&p);
}

static void test_write_batch(void **state)
{
    (void)state;
    store_panel p1 = {0}, p2 = {0};
    make_panel(A, NULL, NULL, &p1);
    make_panel(A, NULL, NULL, &p2);

    /* All kinds land together; a transition from the wrong status is skipped, not an error. */
    store_write w[] = {
        w_event(p1.id, 1), w_ckpt(p1.id, 1),
        w_event(p1.id, 2), w_trans(p1.id, FROM_CREATED, "running"),
        w_usage(p1.id),    w_ckpt(p1.id, 2),
        w_event(p2.id, 1), w_trans(p2.id, FROM_RUNNING, "completed"),
        w_ckpt(p2.id, 5),  w_usage(p2.id),
    };
    size_t n = sizeof w / sizeof w[0];
    OK(store_write_batch(S, A, w, n, E));
    for (size_t i = 0; i < n; i++)
        assert_int_equal(w[i].result, i == 7 ? AP_CONFLICT : AP_OK);
    assert_last_seq(p1.id, 2);
    assert_last_seq(p2.id, 1);
    assert_status(A, p1.id, "running");
    assert_status(A, p2.id, "created");
    store_checkpoint g = {0};
    OK(store_checkpoint_get(S, A, p1.id, &g, E));
    assert_int_equal(g.step, 2); /* the last of the batch */
    store_checkpoint_free(&g);
    OK(store_checkpoint_get(S, A, p2.id, &g, E));
    assert_int_equal(g.step, 5);
    store_checkpoint_free(&g);
    assert_int_equal(batch_usage_calls(A), 2);

    /* A replayed event is skipped (AP_CONFLICT on the item); the rest lands. */
    store_write replay[] = {w_event(p1.id, 2), w_event(p1.id, 3),
                            w_trans(p1.id, FROM_RUNNING, "completed")};
    OK(store_write_batch(S, A, replay, 3, E));
    assert_int_equal(replay[0].result, AP_CONFLICT);
    assert_int_equal(replay[1].result, AP_OK);
    assert_int_equal(replay[2].result, AP_OK);
    assert_last_seq(p1.id, 3);
    assert_status(A, p1.id, "completed");

    /* Tenant B naming A's panel: AP_NOTFOUND, and nothing of the batch lands. */
    store_write cross_ev[] = {w_usage(p2.id), w_event(p2.id, 2)};
    IS(AP_NOTFOUND, store_write_batch(S, B, cross_ev, 2, E));
    assert_int_equal(cross_ev[1].result, AP_NOTFOUND);
    store_write cross_ck[] = {w_usage(p2.id), w_ckpt(p2.id, 9)};
    IS(AP_NOTFOUND, store_write_batch(S, B, cross_ck, 2, E));
    assert_int_equal(cross_ck[1].result, AP_NOTFOUND);
    store_write cross_tr[] = {w_usage(p2.id), w_trans(p2.id, FROM_CREATED, "cancelled")};
    IS(AP_NOTFOUND, store_write_batch(S, B, cross_tr, 2, E));
    assert_int_equal(cross_tr[1].result, AP_NOTFOUND);
    assert_int_equal(batch_usage_calls(B), 0);
    assert_last_seq(p2.id, 1);
    assert_status(A, p2.id, "created");
    OK(store_checkpoint_get(S, A, p2.id, &g, E));
    assert_int_equal(g.step, 5);
    store_checkpoint_free(&g);

    /* A failing item rolls back the items before it. */
    char ghost[STORE_ID_MAX];
    assert_int_equal(ids_uuid_v4(ghost), AP_OK);
    store_write rollback[] = {w_event(p2.id, 2), w_ckpt(p2.id, 6), w_usage(p2.id),
                              w_trans(ghost, FROM_CREATED, "running")};
    IS(AP_NOTFOUND, store_write_batch(S, A, rollback, 4, E));
    assert_int_equal(rollback[3].result, AP_NOTFOUND);
    assert_last_seq(p2.id, 1);
    assert_int_equal(batch_usage_calls(A), 2);

    /* A duplicate usage id is a real conflict: the whole batch fails. */
    store_write dup[] = {w_event(p2.id, 2), w_usage(p2.id), w_usage(p2.id)};
    assert_int_equal(ids_uuid_v4(dup[1].u.usage.id), AP_OK);
    memcpy(dup[2].u.usage.id, dup[1].u.usage.id, STORE_ID_MAX);
    IS(AP_CONFLICT, store_write_batch(S, A, dup, 3, E));
    assert_int_equal(dup[2].result, AP_CONFLICT);
    assert_last_seq(p2.id, 1);
    assert_int_equal(batch_usage_calls(A), 2);

    /* The first failing item in batch order is the one reported, whichever kind it is (a
     * backend that reordered writes, e.g. to insert usage rows together, must keep this). */
    store_write first[] = {w_usage(p2.id), w_event(ghost, 1)};
    memcpy(first[0].u.usage.id, dup[1].u.usage.id, STORE_ID_MAX);
    OK(store_write_batch(S, A, first, 1, E));
    IS(AP_CONFLICT, store_write_batch(S, A, first, 2, E));
    assert_int_equal(first[0].result, AP_CONFLICT);
    assert_int_equal(first[1].result, AP_OK);
    store_write later[] = {w_event(ghost, 1), first[0]};
    IS(AP_NOTFOUND, store_write_batch(S, A, later, 2, E));
    assert_int_equal(later[0].result, AP_NOTFOUND);
    assert_int_equal(later[1].result, AP_OK);
    assert_int_equal(batch_usage_calls(A), 3);

    /* Many usage rows between events: all land, or none when two of them share an id. */
    enum { NU = 40 };
    store_write mixed[2 * NU];
    for (int i = 0; i < NU; i++) {
        mixed[2 * i] = w_usage(i % 2 ? p1.id : p2.id);
        mixed[2 * i].u.usage.prompt_tokens = i;
        mixed[2 * i + 1] = w_event(p1.id, 100 + i);
    }
    assert_int_equal(ids_uuid_v4(mixed[2].u.usage.id), AP_OK);
    memcpy(mixed[2 * 35].u.usage.id, mixed[2].u.usage.id, STORE_ID_MAX);
    IS(AP_CONFLICT, store_write_batch(S, A, mixed, 2 * NU, E));
    assert_int_equal(mixed[2 * 35].result, AP_CONFLICT);
    assert_int_equal(batch_usage_calls(A), 3);
    assert_last_seq(p1.id, 3);
    mixed[2 * 35].u.usage.id[0] = '\0';
    OK(store_write_batch(S, A, mixed, 2 * NU, E));
    for (int i = 0; i < 2 * NU; i++)
        assert_int_equal(mixed[i].result, AP_OK);
    assert_int_equal(batch_usage_calls(A), 3 + NU);
    assert_last_seq(p1.id, 100 + NU - 1);

    /* Invalid items are refused before anything runs, with the same rules as the single calls. */
    store_write bad[] = {w_event(p2.id, 2), w_event(p2.id, 3)};
    bad[1].u.event.data = "{oops";
    IS(AP_INVALID, store_write_batch(S, A, bad, 2, E));
    assert_int_equal(bad[0].result, AP_OK);
    assert_int_equal(bad[1].result, AP_INVALID);
    bad[1] = w_ckpt(p2.id, -1);
    IS(AP_INVALID, store_write_batch(S, A, bad, 2, E));
    bad[1] = w_trans(p2.id, FROM_CREATED, "bogus");
    IS(AP_INVALID, store_write_batch(S, A, bad, 2, E));
    bad[1] = w_usage(p2.id);
    bad[1].u.usage.provider = NULL;
    IS(AP_INVALID, store_write_batch(S, A, bad, 2, E));
    bad[1].kind = (store_write_kind)99;
    IS(AP_INVALID, store_write_batch(S, A, bad, 2, E));
    IS(AP_INVALID, store_write_batch(S, "bad", bad, 1, E));
    assert_last_seq(p2.id, 1);

    OK(store_write_batch(S, A, bad, 0, E));
    store_write *many = calloc(STORE_WRITE_MAX + 1, sizeof *many);
    assert_non_null(many);
    IS(AP_LIMIT, store_write_batch(S, A, many, STORE_WRITE_MAX + 1, E));
    free(many);

    /* A panel id repeated in another spelling normalises alike, and a malformed id right after
     * a valid one is still refused: the batch reuses the normalisation of a repeated id. */
    char upper[STORE_ID_MAX];
    for (size_t i = 0; i < STORE_ID_MAX; i++)
        upper[i] = (p2.id[i] >= 'a' && p2.id[i] <= 'f') ? (char)(p2.id[i] - 'a' + 'A') : p2.id[i];
    store_write again[] = {w_event(p2.id, 2), w_usage(upper), w_event(upper, 3), w_ckpt(upper, 7),
                           w_trans(upper, FROM_CREATED, "running")};
    OK(store_write_batch(S, A, again, 5, E));
    assert_last_seq(p2.id, 3);
    assert_status(A, p2.id, "running");
    OK(store_checkpoint_get(S, A, p2.id, &g, E));
    assert_int_equal(g.step, 7);
    store_checkpoint_free(&g);
    store_write broken[] = {w_event(p2.id, 4), w_event(p2.id, 5)};
    broken[1].u.event.panel_id[STORE_ID_MAX - 2] = 'g';
    IS(AP_INVALID, store_write_batch(S, A, broken, 2, E));
    assert_int_equal(broken[1].result, AP_INVALID);
    broken[1] = w_usage(p2.id);
    broken[1].u.usage.panel_id[STORE_ID_MAX - 2] = '\0';
    IS(AP_INVALID, store_write_batch(S, A, broken, 2, E));
    assert_last_seq(p2.id, 3);
    store_panel_free(&p1);
    store_panel_free(&p2);
}

/* ---- concurrency: the handle is shared by HTTP and runner threads -------------------------- */

#include <pthread.h>

static void *hammer(void *arg)
{
    const char *panel = arg;
    for (int i = 0; i < 50; i++) {
        store_panel g = {0};
        if (store_panel_get(S, A, panel, &g, NULL) != AP_OK)
            return (void *)1;
        store_panel_free(&g);
        int64_t seq;
        if (store_events_last_seq(S, A, panel, &seq, NULL) != AP_OK)
            return (void *)1;
    }
    return NULL;
}

/* A tenant's limit of live panels is counted and claimed in one step: of racing claims on one
 * tenant with room for one more, exactly one wins, round after round (PostgreSQL: across the
 * pool's connections, as across nodes). */
typedef struct limit_racer {
    pthread_barrier_t *gate;
    char panel[STORE_ID_MAX];
    ap_status rc;
} limit_racer;

static void *claim_limited(void *arg)
{
    limit_racer *r = arg;
    static const char *const created[] = {"created"};
    pthread_barrier_wait(r->gate);
    r->rc = store_panel_claim(S, A, r->panel, created, 1, "host:1:race", 60000, NULL, 1, NULL);
    return NULL;
}

static void test_live_limit_races(void **state)
{
    (void)state;
    enum { RACERS = 8, ROUNDS = 12 };
    static const char *const running[] = {"running"};
    pthread_barrier_t gate;
    pthread_barrier_init(&gate, NULL, RACERS);
    for (int round = 0; round < ROUNDS; round++) {
        limit_racer r[RACERS];
        pthread_t th[RACERS];
        for (int i = 0; i < RACERS; i++) {
            store_panel p = {0};
            make_panel(A, NULL, NULL, &p);
            r[i] = (limit_racer){.gate = &gate, .rc = AP_ERROR};
            memcpy(r[i].panel, p.id, STORE_ID_MAX);
            store_panel_free(&p);
        }
        for (int i = 0; i < RACERS; i++)
            assert_int_equal(pthread_create(&th[i], NULL, claim_limited, &r[i]), 0);
        int won = -1, limited = 0;
        for (int i = 0; i < RACERS; i++) {
            pthread_join(th[i], NULL);
            if (r[i].rc == AP_OK) {
                assert_int_equal(won, -1);
                won = i;
            } else {
                assert_int_equal(r[i].rc, AP_LIMIT);
                limited++;
            }
        }
        assert_int_not_equal(won, -1);
        assert_int_equal(limited, RACERS - 1);
        /* the winner ends, which makes room for the next round */
        OK(store_panel_transition(S, A, r[won].panel, running, 1, "completed", "{}", NULL, E));
    }
    pthread_barrier_destroy(&gate);
}

static void test_threads(void **state)
{
    (void)state;
    store_panel p = {0};
    make_panel(A, NULL, NULL, &p);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, p.id), 0);
    for (int i = 0; i < 4; i++) {
        void *ret = NULL;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    store_panel_free(&p);
}

/* ---- SQLite only ------------------------------------------------------------------------- */

/* Runs sql on the database at path; fails the test on an error. */
static void sql_on(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

static void sql_on_file(const char *sql)
{
    sql_on(db_path, sql);
}

typedef struct stuck_batch {
    const char *panel;
    ap_status rc;
} stuck_batch;

static void *write_one(void *arg)
{
    stuck_batch *b = arg;
    store_write w = w_event(b->panel, 1);
    b->rc = store_write_batch(S, A, &w, 1, NULL);
    return NULL;
}

/* Reads do not wait behind the writer: with a write stuck on a lock another process holds
 * (the writer's connection busy, up to its 5 s busy timeout), a read of the same database
 * still answers at once, from a reader connection. */
static void test_sqlite_reads_beside_a_stuck_write(void **state)
{
    (void)state;
    store_panel p = {0};
    make_panel(A, NULL, NULL, &p);
    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(db_path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    stuck_batch b = {p.id, AP_ERROR};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, write_one, &b), 0);
    usleep(200 * 1000); /* the batch holds the writer's connection, waiting for the lock */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    store_panel g = {0};
    OK(store_panel_get(S, A, p.id, &g, E));
    int64_t last = -1;
    OK(store_events_last_seq(S, A, p.id, &last, E));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_int_equal(last, 0);
    int64_t ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms < 1000);
    assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    pthread_join(th, NULL);
    assert_int_equal(b.rc, AP_OK); /* and the write went through once the lock was free */
    OK(store_events_last_seq(S, A, p.id, &last, E));
    assert_int_equal(last, 1);
    store_panel_free(&g);
    store_panel_free(&p);
}

/* Layer 4: a query that matches rows it should not (simulated by a view whose tenant_id
 * compares case-insensitively but reads back upper-case) is refused and logged, and no data
 * comes back. */
static void test_sqlite_row_verification(void **state)
{
    (void)state;
    store_expert e = {0}, g = {0};
    make_expert(A, "verified", &e);
    sql_on_file("ALTER TABLE experts RENAME TO experts_real;"
                "CREATE VIEW experts AS SELECT id, upper(tenant_id) COLLATE NOCASE AS tenant_id, "
                "name, role, expertise, persona, model, weight, created_at, updated_at "
                "FROM experts_real;");
    char logpath[] = "/tmp/askpanel-store-log-XXXXXX";
    int fd = mkstemp(logpath);
    assert_true(fd >= 0);
    log_set_fd(fd);
    ap_err err = {0};
    ap_status rc = store_expert_get(S, A, e.id, &g, &err);
    store_expert *rows = NULL;
    size_t n = 0;
    char next[STORE_CURSOR_MAX];
    ap_status rc_list = store_expert_list(S, A, "", 10, &rows, &n, next, NULL);
    log_set_fd(2);
    sql_on_file("DROP VIEW experts; ALTER TABLE experts_real RENAME TO experts;");
    assert_int_equal(rc, AP_DENIED);
    assert_null(g.name);
    assert_int_equal(rc_list, AP_DENIED);
    assert_null(rows);
    assert_int_equal(n, 0);
    char logbuf[4096] = {0};
    assert_true(pread(fd, logbuf, sizeof logbuf - 1, 0) > 0);
    close(fd);
    unlink(logpath);
    assert_non_null(strstr(logbuf, "\"security\""));
    assert_non_null(strstr(logbuf, A));
    OK(store_expert_get(S, A, e.id, &g, E));
    store_expert_free(&g);
    store_expert_free(&e);
}

static int64_t count_on(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

#define MT "0b5e8d4a-6d3c-4e0f-9a51-3f2b7c9d1e01"
#define MP1 "0b5e8d4a-6d3c-4e0f-9a51-3f2b7c9d1e11"
#define MP2 "0b5e8d4a-6d3c-4e0f-9a51-3f2b7c9d1e12"

/* A database of the first schema, with rows in every table a later migration rebuilds, keeps
 * its rows, keys and cascades through the later migrations. */
static void test_sqlite_migration_keeps_rows(void **state)
{
    (void)state;
    char path[300], url[320], p[320];
    snprintf(path, sizeof path, "/tmp/askpanel-store-mig-%d.db", (int)getpid());
    snprintf(url, sizeof url, "sqlite:%s", path);
    unlink(path);
    store_migration m[STORE_MIGRATIONS_MAX];
    size_t nm = store_migrations("sql/sqlite/", m, STORE_MIGRATIONS_MAX);
    assert_true(nm >= 2);
    assert_string_equal(m[0].version, "001_init");
    sql_on(path, "CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, "
                 "applied_at INTEGER NOT NULL);"
                 "INSERT INTO schema_migrations VALUES ('001_init', 0);");
    sql_on(path, m[0].sql);
    sql_on(path,
           "PRAGMA foreign_keys = ON;"
           "INSERT INTO tenants (id, slug, name, created_at) VALUES ('" MT "', 'mig', 'M', 1);"
           "INSERT INTO panels (id, tenant_id, question, strategy, params, status, idempotency_key,"
           " created_at, updated_at) VALUES ('" MP1 "', '" MT "', 'q1', 'echo', '{\"n\":1}',"
           " 'running', 'k1', 1, 1), ('" MP2 "', '" MT "', 'q2', 'echo', '{}', 'created', NULL,"
           " 2, 2);"
           "INSERT INTO panel_events VALUES ('" MT "', '" MP1 "', 1, 'panel.status', "
           "'{\"status\":\"running\"}', 1), ('" MT "', '" MP1 "', 2, 'round.started', '{}', 2);"
           "INSERT INTO checkpoints (tenant_id, panel_id, step, next_node, state, journal, "
           "last_seq, created_at) VALUES ('" MT "', '" MP1 "', 1, 'b', '{\"x\":1}', '[]', 2, 3);"
           "INSERT INTO usage_records VALUES ('0190e6a4-1111-7aaa-8bbb-000000000001', '" MT
           "', '" MP1 "', 'ada', 'simulated', 'sim-1', 10, 20, 0.5, 7, 1, 'ok', 86400000),"
           " ('0190e6a4-1111-7aaa-8bbb-000000000002', '" MT "', '" MP1 "', 'ada', 'simulated',"
           " 'sim-2', 1, 2, 0.25, 7, 1, 'ok', 86400001),"
           " ('0190e6a4-1111-7aaa-8bbb-000000000003', '" MT "', NULL, NULL, 'simulated', 'sim-1',"
           " 100, 200, 0.125, 9, 2, 'error', 172800005),"
           " ('0190e6a4-1111-7aaa-8bbb-000000000004', '" MT "', '" MP2 "', 'bob', 'simulated',"
           " 'sim-1', 1000, 2000, 1, 7, 1, 'ok', 259200000);");

    store *s = NULL;
    int applied = 0;
    OK(store_open(url, &s, E));
    /* The summaries of the first schema's rows, before the usage table is rebuilt: the same
     * after, and the expected ones (the fourth row lies outside [0, 3 days)). */
    static const char *const groups[] = {"expert", "model", "day"};
    static const char *const want[] = {
        "[{\"key\":null,\"calls\":1,\"prompt_tokens\":100,\"completion_tokens\":200,"
        "\"cost_usd\":0.125},{\"key\":\"ada\",\"calls\":2,\"prompt_tokens\":11,"
        "\"completion_tokens\":22,\"cost_usd\":0.75}]",
        "[{\"key\":\"sim-1\",\"calls\":2,\"prompt_tokens\":110,\"completion_tokens\":220,"
        "\"cost_usd\":0.625},{\"key\":\"sim-2\",\"calls\":1,\"prompt_tokens\":1,"
        "\"completion_tokens\":2,\"cost_usd\":0.25}]",
        "[{\"key\":\"1970-01-02\",\"calls\":2,\"prompt_tokens\":11,\"completion_tokens\":22,"
        "\"cost_usd\":0.75},{\"key\":\"1970-01-03\",\"calls\":1,\"prompt_tokens\":100,"
        "\"completion_tokens\":200,\"cost_usd\":0.125}]",
    };
    char *before[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++)
        OK(store_usage_summary(s, MT, 0, 3 * 86400000LL, groups[i], &before[i], E));
    OK(store_migrate(s, &applied, E));
    assert_int_equal(applied, (int)nm - 1);
    for (int i = 0; i < 3; i++) {
        char *after = NULL;
        OK(store_usage_summary(s, MT, 0, 3 * 86400000LL, groups[i], &after, E));
        assert_string_equal(after, before[i]);
        assert_string_equal(after, want[i]);
        free(after);
        free(before[i]);
    }
    assert_int_equal(count_on(path, "SELECT count(*) FROM usage_records"), 4);
    store_panel pn = {0};
    OK(store_panel_get(s, MT, MP1, &pn, E));
    assert_string_equal(pn.status, "running");
    assert_string_equal(pn.idempotency_key, "k1");
    assert_string_equal(pn.params, "{\"n\":1}");
    /* a panel that was running before leases existed has none: any process may resume it */
    assert_null(pn.lease_owner);
    assert_int_equal(pn.lease_expires_at, 0);
    store_panel_free(&pn);
    store_event *ev = NULL;
    size_t ne = 0;
    OK(store_events_list(s, MT, MP1, 0, 10, &ev, &ne, E));
    assert_int_equal(ne, 2);
    assert_string_equal(ev[1].type, "round.started");
    store_events_free(ev, ne);
    store_checkpoint ck = {0};
    OK(store_checkpoint_get(s, MT, MP1, &ck, E));
    assert_string_equal(ck.state, "{\"x\":1}");
    assert_int_equal(ck.last_seq, 2);
    store_checkpoint_free(&ck);
    char *sum = NULL;
    OK(store_usage_summary(s, MT, 0, INT64_MAX, "model", &sum, E));
    assert_non_null(strstr(sum, "{\"key\":\"sim-1\",\"calls\":3,\"prompt_tokens\":1110,"));
    free(sum);
    /* The rules hold on the rebuilt tables: keys, statuses, the tenant's own panels. */
    store_event orphan = {.seq = 1, .type = "x", .data = "{}"};
    memcpy(orphan.panel_id, "0b5e8d4a-6d3c-4e0f-9a51-3f2b7c9d1e99", STORE_ID_MAX);
    IS(AP_NOTFOUND, store_events_append(s, MT, &orphan, 1, E));
    const char *running[] = {"running"};
    OK(store_panel_claim(s, MT, MP1, running, 1, "host:1:boot", 60000, NULL, 0, E));
    OK(store_panel_transition(s, MT, MP1, running, 1, "completed", "{\"ok\":true}", NULL, E));
    IS(AP_CONFLICT, store_panel_transition(s, MT, MP1, running, 1, "failed", NULL, "x", E));
    store_usage again = {.id = "0190e6a4-1111-7aaa-8bbb-000000000001",
                         .provider = "simulated",
                         .model = "sim-1",
                         .outcome = "ok",
                         .created_at = 2};
    IS(AP_CONFLICT, store_usage_record(s, MT, &again, E));
    /* A new row lands among the migrated ones and is summed with them. */
    again.id[0] = '\0';
    again.model = "sim-2";
    again.prompt_tokens = 5;
    again.created_at = 86400002;
    OK(store_usage_record(s, MT, &again, E));
    OK(store_usage_summary(s, MT, 86400000, 86400003, "model", &sum, E));
    assert_non_null(strstr(sum, "{\"key\":\"sim-2\",\"calls\":2,\"prompt_tokens\":6,"));
    free(sum);
    store_close(s);
    assert_int_equal(count_on(path, "SELECT count(*) FROM panels WHERE status = 'bogus'"), 0);
    sql_on(path, "PRAGMA foreign_keys = ON; DELETE FROM panels WHERE id = '" MP1 "';");
    assert_int_equal(count_on(path, "SELECT count(*) FROM panel_events"), 0);
    assert_int_equal(count_on(path, "SELECT count(*) FROM checkpoints"), 0);
    assert_int_equal(count_on(path, "SELECT count(*) FROM usage_records"), 5);
    {
        sqlite3 *db = NULL;
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_not_equal(sqlite3_exec(db,
                                          "UPDATE panels SET status = 'bogus' WHERE id = '" MP2 "'",
                                          NULL, NULL, NULL),
                             SQLITE_OK);
        sqlite3_close(db);
    }
    sql_on(path, "PRAGMA foreign_keys = ON; DELETE FROM tenants WHERE id = '" MT "';");
    assert_int_equal(count_on(path, "SELECT count(*) FROM usage_records"), 0);
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

/* ---- PostgreSQL only ---------------------------------------------------------------------- */

/* Every URL in ASKPANEL_TEST_PG_DENIED_URLS (space-separated: the table owner, a BYPASSRLS
 * role) must be refused by the start-up check. */
static void test_pg_refuses_privileged_roles(void **state)
{
    (void)state;
    IS(AP_DENIED, store_check_isolation(OWNER, E));
    const char *list = getenv("ASKPANEL_TEST_PG_DENIED_URLS");
    if (list == NULL)
        skip();
    char urls[2048];
    snprintf(urls, sizeof urls, "%s", list);
    int checked = 0;
    for (char *save = NULL, *u = strtok_r(urls, " ", &save); u != NULL;
         u = strtok_r(NULL, " ", &save)) {
        store *s = NULL;
        OK(store_open(u, &s, E));
        ap_err e_ = {0};
        assert_int_equal(store_check_isolation(s, &e_), AP_DENIED);
        assert_non_null(strstr(e_.msg, "refusing"));
        store_close(s);
        checked++;
    }
    assert_true(checked >= 1);
}

/* The database drops every engine connection mid-run: calls fail cleanly with AP_IO or
 * recover by reconnecting, and the store works again afterwards. */
static void test_pg_connection_loss(void **state)
{
    (void)state;
    store_panel p = {0}, g = {0};
    make_panel(A, NULL, NULL, &p);
    PGconn *admin = PQconnectdb(getenv("ASKPANEL_TEST_PG_URL"));
    assert_int_equal(PQstatus(admin), CONNECTION_OK);
    PGresult *r = PQexec(admin, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                                "WHERE application_name = 'askpanel' AND pid <> "
                                "pg_backend_pid() AND usename <> current_user");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_true(PQntuples(r) >= 1);
    PQclear(r);
    PQfinish(admin);
    int io = 0;
    for (int i = 0; i < 8; i++) { /* every pooled connection notices once */
        ap_err e_ = {0};
        ap_status rc = store_panel_get(S, A, p.id, &g, &e_);
        if (rc == AP_IO) {
            assert_non_null(strstr(e_.msg, "database"));
            io++;
        } else {
            assert_int_equal(rc, AP_OK);
            store_panel_free(&g);
        }
    }
    assert_true(io >= 1);
    OK(store_panel_get(S, A, p.id, &g, E));
    assert_string_equal(g.id, p.id);
    store_panel_free(&g);
    store_panel_free(&p);
}

typedef struct fenced_write {
    const char *panel, *owner;
    ap_status rc, result;
} fenced_write;

static void *write_owned_event(void *arg)
{
    fenced_write *f = arg;
    store_write w = w_event(f->panel, 1);
    w.u.event.owner = f->owner;
    f->rc = store_write_batch(S, A, &w, 1, NULL);
    f->result = w.result;
    return NULL;
}

/* PostgreSQL: the fence of a panel's writes waits for a status change in flight (another
 * node's cancel, which clears the lease) and sees its outcome. It read the lease as it was
 * before, and let the old holder's completion in after the cancel: two terminal events. */
static void test_pg_fence_waits_for_a_cancel(void **state)
{
    (void)state;
    static const char *const created[] = {"created"};
    static const char owner[] = "host:1:owner";
    store_panel p = {0};
    make_panel(A, NULL, NULL, &p);
    OK(store_panel_claim(S, A, p.id, created, 1, owner, 60000, NULL, 0, E));
    PGconn *other = PQconnectdb(getenv("ASKPANEL_TEST_PG_APP_URL"));
    assert_int_equal(PQstatus(other), CONNECTION_OK);
    char sql[512];
    snprintf(sql, sizeof sql,
             "BEGIN; SELECT set_config('app.tenant_id', '%s', true); UPDATE panels SET status = "
             "'cancelled', lease_owner = NULL WHERE id = '%s'",
             A, p.id);
    PGresult *r = PQexec(other, sql);
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    assert_string_equal(PQcmdTuples(r), "1");
    PQclear(r);
    fenced_write f = {p.id, owner, AP_ERROR, AP_ERROR};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, write_owned_event, &f), 0);
    usleep(300 * 1000); /* the batch is at the fence, behind the cancel's row lock */
    PQclear(PQexec(other, "COMMIT"));
    pthread_join(th, NULL);
    PQfinish(other);
    assert_int_equal(f.rc, AP_OK);
    assert_int_equal(f.result, AP_DENIED);
    int64_t last = -1;
    OK(store_events_last_seq(S, A, p.id, &last, E));
    assert_int_equal(last, 0);
    store_panel_free(&p);
}

/* Whether refs[0..n) lists panel id, and if so its lease. */
static const store_lease_ref *lease_ref_of(const store_lease_ref *refs, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(refs[i].panel_id, id) == 0)
            return &refs[i];
    return NULL;
}

/* What a sweep of "me" on host "here" may take over: the running panels of any tenant whose
 * lease is free or has run out, or is held by another process of "here"; never its own, never
 * a live lease of another host, never a panel that is not running. */
static void test_panels_lease_free(void **state)
{
    (void)state;
    static const char *const created[] = {"created"}, *const running[] = {"running"};
    static const char me[] = "here:10:aaaa", neighbour[] = "here:11:bbbb",
                      remote[] = "there:12:cccc";
    store_panel live = {0}, expired = {0}, mine = {0}, near = {0}, released = {0}, idle = {0},
                other = {0};
    make_panel(A, NULL, NULL, &live);
    make_panel(A, NULL, NULL, &expired);
    make_panel(A, NULL, NULL, &mine);
    make_panel(A, NULL, NULL, &near);
    make_panel(A, NULL, NULL, &released);
    make_panel(A, NULL, NULL, &idle);
    make_panel(B, NULL, NULL, &other);
    OK(store_panel_claim(S, A, live.id, created, 1, remote, 60000, NULL, 0, E));
    OK(store_panel_claim(S, A, expired.id, created, 1, remote, 1, NULL, 0, E));
    OK(store_panel_claim(S, A, mine.id, created, 1, me, 1, NULL, 0, E));
    OK(store_panel_claim(S, A, near.id, created, 1, neighbour, 60000, NULL, 0, E));
    OK(store_panel_claim(S, A, released.id, created, 1, "gone:13:dddd", 60000, NULL, 0, E));
    OK(store_panel_leases_release(S, "gone:13:dddd", E));
    OK(store_panel_claim(S, B, other.id, created, 1, remote, 1, NULL, 0, E));
    usleep(20 * 1000);

    store_lease_ref *refs = NULL;
    size_t n = 0;
    OK(store_panels_lease_free(S, me, "here:", NULL, STORE_LEASE_PAGE_MAX, &refs, &n, E));
    assert_null(lease_ref_of(refs, n, live.id)); /* another host's live lease */
    assert_null(lease_ref_of(refs, n, mine.id)); /* its own, even run out */
    assert_null(lease_ref_of(refs, n, idle.id)); /* not running */
    const store_lease_ref *r = lease_ref_of(refs, n, expired.id);
    assert_non_null(r);
    assert_string_equal(r->owner, remote);
    assert_true(r->expires_at > 0 && r->expires_at <= wall_ms());
    assert_string_equal(r->tenant_id, A);
    r = lease_ref_of(refs, n, near.id); /* this host's other process: the caller checks it */
    assert_non_null(r);
    assert_string_equal(r->owner, neighbour);
    assert_true(r->expires_at > wall_ms());
    r = lease_ref_of(refs, n, released.id);
    assert_non_null(r);
    assert_string_equal(r->owner, "");
    assert_int_equal(r->expires_at, 0);
    r = lease_ref_of(refs, n, other.id); /* every tenant's */
    assert_non_null(r);
    assert_string_equal(r->tenant_id, B);
    free(refs);

    /* From the other host's side: its own are out, this host's expired one is in. */
    OK(store_panels_lease_free(S, remote, "there:", NULL, STORE_LEASE_PAGE_MAX, &refs, &n, E));
    assert_null(lease_ref_of(refs, n, live.id));
    assert_null(lease_ref_of(refs, n, expired.id));
    assert_null(lease_ref_of(refs, n, near.id));
    assert_non_null(lease_ref_of(refs, n, mine.id));
    free(refs);

    /* Page by page: the same candidates in the same order, each once. */
    OK(store_panels_lease_free(S, me, "here:", NULL, STORE_LEASE_PAGE_MAX, &refs, &n, E));
    assert_true(n >= 4);
    size_t seen = 0;
    store_lease_ref last = {0};
    for (bool more = true; more;) {
        store_lease_ref *page = NULL;
        size_t got = 0;
        OK(store_panels_lease_free(S, me, "here:", seen > 0 ? &last : NULL, 2, &page, &got, E));
        assert_true(got <= 2 && seen + got <= n);
        for (size_t i = 0; i < got; i++) {
            assert_string_equal(page[i].panel_id, refs[seen + i].panel_id);
            assert_int_equal(page[i].created_at, refs[seen + i].created_at);
        }
        seen += got;
        if (got > 0)
            last = page[got - 1];
        more = got == 2;
        free(page);
    }
    assert_int_equal(seen, n);
    for (size_t i = 1; i < n; i++)
        assert_true(refs[i - 1].created_at <= refs[i].created_at);
    free(refs);

    IS(AP_INVALID, store_panels_lease_free(S, "", "here:", NULL, 10, &refs, &n, E));
    assert_null(refs);
    IS(AP_INVALID, store_panels_lease_free(S, me, NULL, NULL, 10, &refs, &n, E));
    IS(AP_INVALID, store_panels_lease_free(S, me, "here:", NULL, 0, &refs, &n, E));
    IS(AP_INVALID,
       store_panels_lease_free(S, me, "here:", NULL, STORE_LEASE_PAGE_MAX + 1, &refs, &n, E));
    snprintf(last.panel_id, sizeof last.panel_id, "%s", "not-a-panel-id");
    IS(AP_INVALID, store_panels_lease_free(S, me, "here:", &last, 10, &refs, &n, E));
    assert_null(refs);
    OK(store_panel_transition(S, A, live.id, running, 1, "cancelled", NULL, NULL, E));
    store_panel_free(&live);
    store_panel_free(&expired);
    store_panel_free(&mine);
    store_panel_free(&near);
    store_panel_free(&released);
    store_panel_free(&idle);
    store_panel_free(&other);
}

#define CONTRACT(f) cmocka_unit_test_setup(f, tenants_setup)

/* `unit_store_test --migrate URL` applies migrations through store_migrate and exits; the
 * PostgreSQL integration test uses it before it creates the engine's login role. */
static int migrate_only(const char *url)
{
    store *s = NULL;
    ap_err err = {0};
    int applied = 0;
    if (store_open(url, &s, &err) != AP_OK || store_migrate(s, &applied, &err) != AP_OK) {
        fprintf(stderr, "store_test: migrate: %s\n", err.msg);
        store_close(s);
        return 1;
    }
    printf("applied %d migration(s)\n", applied);
    store_close(s);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--migrate") == 0)
        return migrate_only(argv[2]);
    const struct CMUnitTest tests[] = {
        CONTRACT(test_lifecycle),
        CONTRACT(test_bad_urls),
        CONTRACT(test_tenants),
        CONTRACT(test_keys),
        CONTRACT(test_experts_crud),
        CONTRACT(test_experts_pagination),
        CONTRACT(test_panels),
        CONTRACT(test_panel_create_returns_stored_row),
        CONTRACT(test_panel_lists),
        CONTRACT(test_events),
        CONTRACT(test_checkpoints),
        CONTRACT(test_scripts),
        CONTRACT(test_usage),
        CONTRACT(test_threads),
        CONTRACT(test_live_limit_races),
        CONTRACT(test_write_batch),
        CONTRACT(test_write_batch_trusted),
        CONTRACT(test_panel_leases),
        CONTRACT(test_panels_lease_free),
        CONTRACT(test_panel_live_limit),
    };
    const struct CMUnitTest sqlite_tests[] = {
        CONTRACT(test_sqlite_row_verification),
        CONTRACT(test_sqlite_migration_keeps_rows),
        CONTRACT(test_sqlite_reads_beside_a_stuck_write),
    };
    int failed = cmocka_run_group_tests_name("store/sqlite", tests, sqlite_group_setup,
                                             sqlite_group_teardown);
    failed += cmocka_run_group_tests_name("store/sqlite-only", sqlite_tests, sqlite_group_setup,
                                          sqlite_group_teardown);
    const struct CMUnitTest pg_tests[] = {
        CONTRACT(test_pg_refuses_privileged_roles),
        CONTRACT(test_pg_connection_loss),
        CONTRACT(test_pg_fence_waits_for_a_cancel),
    };
    if (getenv("ASKPANEL_TEST_PG_URL") != NULL && getenv("ASKPANEL_TEST_PG_APP_URL") != NULL) {
        failed +=
            cmocka_run_group_tests_name("store/postgres", tests, pg_group_setup, pg_group_teardown);
        failed += cmocka_run_group_tests_name("store/postgres-only", pg_tests, pg_group_setup,
                                              pg_group_teardown);
    } else
        fprintf(stderr, "store_test: PostgreSQL contract skipped (set ASKPANEL_TEST_PG_URL and "
                        "ASKPANEL_TEST_PG_APP_URL, or run tests/integration/test_store_pg.sh)\n");
    return failed;
}
