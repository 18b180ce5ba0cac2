#!/bin/sh
# test_store_pg.sh - the store contract and the row-level-security proof on a throwaway
# PostgreSQL started with pg_virtualenv (-t: a private cluster directory even as root, on a
# random free port, so parallel runs and the machine's own server are never touched).
#
# Steps: migrate as the owner (through store_migrate), create the engine's LOGIN role in
# askpanel_app, run the contract suite (tests/unit/store_test.c) against both roles, then prove
# in SQL that the database itself isolates tenants.
set -eu

if [ "${ASKPANEL_IN_PGVENV:-}" != 1 ]; then
    if ! command -v pg_virtualenv >/dev/null 2>&1; then
        echo "test_store_pg: SKIP: pg_virtualenv not installed (postgresql-common)"
        exit 0
    fi
    PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export PGPORT ASKPANEL_IN_PGVENV=1
    exec pg_virtualenv -t "$0" "$@"
fi

BUILD=${ASKPANEL_BUILD_DIR:-build}
BIN=$BUILD/tests/unit_store_test
[ -x "$BIN" ] || { echo "test_store_pg: $BIN is not built" >&2; exit 1; }

DB=askpanel_store_test
APP_PW=app-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
psql -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" postgres
OWNER_URL="postgresql://$PGUSER:$PGPASSWORD@127.0.0.1:$PGPORT/$DB"
APP_URL="postgresql://askpanel_engine:$APP_PW@127.0.0.1:$PGPORT/$DB"
TOWNER_URL="postgresql://askpanel_towner:$APP_PW@127.0.0.1:$PGPORT/$DB"
BYPASS_URL="postgresql://askpanel_bypass:$APP_PW@127.0.0.1:$PGPORT/$DB"

fail() {
    echo "test_store_pg: FAIL: $*" >&2
    exit 1
}

# 1. Migrations, as the owner, through store_migrate; a second run applies nothing.
"$BIN" --migrate "$OWNER_URL" | grep -q "applied [1-9]" || fail "first migrate applied nothing"
"$BIN" --migrate "$OWNER_URL" | grep -q "applied 0" || fail "second migrate was not idempotent"

q() { # q URL SQL: one value, no decoration
    psql -qAtX -v ON_ERROR_STOP=1 -d "$1" -c "$2"
}

# 2. The engine's login role (inherits askpanel_app), plus two roles the start-up check must
#    refuse: a member of the table owner and a BYPASSRLS role.
q "$OWNER_URL" "CREATE ROLE askpanel_engine LOGIN PASSWORD '$APP_PW' IN ROLE askpanel_app;
                CREATE ROLE askpanel_towner LOGIN PASSWORD '$APP_PW' IN ROLE askpanel_owner;
                CREATE ROLE askpanel_bypass LOGIN BYPASSRLS PASSWORD '$APP_PW' IN ROLE askpanel_app;"

# 3. The contract suite on both backends.
export ASKPANEL_TEST_PG_URL="$OWNER_URL" ASKPANEL_TEST_PG_APP_URL="$APP_URL"
export ASKPANEL_TEST_PG_DENIED_URLS="$OWNER_URL $TOWNER_URL $BYPASS_URL"
"$BIN" || fail "store contract suite"
# The sanitized build of the same suite, when it exists (ASKPANEL_SANITIZE=ON).
if [ -x "$BUILD/tests/san_store_test" ]; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$BUILD/tests/san_store_test" || fail "store contract suite under ASan/UBSan"
fi

# 4. RLS proof. Two tenants with a row in every tenant table, written as the superuser
#    (which bypasses RLS), so the counts below come from the policies alone.
TA=aaaaaaaa-0000-4000-8000-00000000000a
TB=bbbbbbbb-0000-4000-8000-00000000000b
PA=aaaaaaaa-0000-4000-8000-0000000000a1
PB=bbbbbbbb-0000-4000-8000-0000000000b1
q "$OWNER_URL" "
INSERT INTO tenants VALUES ('$TA', 'rls-a', 'A', '{}', 1), ('$TB', 'rls-b', 'B', '{}', 1);
INSERT INTO api_keys VALUES (gen_random_uuid(), '$TA', 'ap_rlsa0001', 'h', 'admin', 1, NULL),
                            (gen_random_uuid(), '$TB', 'ap_rlsb0001', 'h', 'admin', 1, NULL);
INSERT INTO experts (id, tenant_id, name, created_at, updated_at)
    VALUES (gen_random_uuid(), '$TA', 'ea', 1, 1), (gen_random_uuid(), '$TB', 'eb', 1, 1);
INSERT INTO panels (id, tenant_id, question, strategy, status, created_at, updated_at)
    VALUES ('$PA', '$TA', 'q', 's', 'running', 1, 1), ('$PB', '$TB', 'q', 's', 'running', 1, 1);
INSERT INTO panel_events VALUES ('$TA', '$PA', 1, 't', '{}', 1), ('$TB', '$PB', 1, 't', '{}', 1);
INSERT INTO checkpoints (tenant_id, panel_id, step, state, last_seq, created_at)
    VALUES ('$TA', '$PA', 1, '{}', 1, 1), ('$TB', '$PB', 1, '{}', 1, 1);
INSERT INTO scripts VALUES ('$TA', 'strategy', 'x', 'v', 'src', 'override', true, 1),
                           ('$TB', 'strategy', 'x', 'v', 'src', 'override', true, 1);
INSERT INTO usage_records (id, tenant_id, provider, model, prompt_tokens, completion_tokens,
                           cost_usd, latency_ms, attempts, outcome, created_at)
    VALUES (gen_random_uuid(), '$TA', 'p', 'm', 1, 1, 0, 1, 1, 'ok', 1),
           (gen_random_uuid(), '$TB', 'p', 'm', 1, 1, 0, 1, 1, 'ok', 1);"

TABLES=$(q "$OWNER_URL" "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
    WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace")
[ "$(echo "$TABLES" | wc -w)" -ge 7 ] || fail "expected >= 7 tenant tables, got: $TABLES"
echo "test_store_pg: tenant tables: $TABLES"

# Every table with tenant_id (and tenants itself) has RLS enabled and forced.
NOFORCE=$(q "$OWNER_URL" "SELECT coalesce(string_agg(relname, ' '), '') FROM pg_class
    WHERE relnamespace = 'public'::regnamespace AND relname = ANY(string_to_array('$TABLES tenants', ' '))
    AND NOT (relrowsecurity AND relforcerowsecurity)")
[ -z "$NOFORCE" ] || fail "RLS not enabled and forced on: $NOFORCE"

for t in $TABLES tenants; do
    # No tenant set: nothing, for the engine role and for a member of the table owner.
    n=$(q "$APP_URL" "SELECT count(*) FROM $t")
    [ "$n" = 0 ] || fail "$t: engine without tenant sees $n rows"
    n=$(q "$TOWNER_URL" "SELECT count(*) FROM $t")
    [ "$n" = 0 ] || fail "$t: table owner without tenant sees $n rows (RLS not forced?)"
    # Tenant B set: exactly B's rows, even with no tenant filter in the query.
    col=tenant_id
    [ "$t" = tenants ] && col=id
    out=$(q "$APP_URL" "BEGIN; SELECT set_config('app.tenant_id', '$TB', true);
        SELECT count(*) || ':' || coalesce(string_agg(DISTINCT $col::text, ','), '') FROM $t; COMMIT;" | sed -n 2p)
    total=$(q "$OWNER_URL" "SELECT count(*) FROM $t WHERE $col = '$TB'")
    [ "$out" = "$total:$TB" ] || fail "$t: with tenant B the engine sees '$out', want '$total:$TB'"
done

# Writes across the boundary change nothing or fail.
n=$(q "$APP_URL" "BEGIN; SELECT set_config('app.tenant_id', '$TB', true);
    UPDATE experts SET name = 'pwned' WHERE tenant_id = '$TA' RETURNING 1; COMMIT;" | sed -n 2p)
[ -z "$n" ] || fail "tenant B updated A's expert"
n=$(q "$APP_URL" "BEGIN; SELECT set_config('app.tenant_id', '$TB', true);
    DELETE FROM panel_events RETURNING 1; COMMIT;" | sed -n '2,$p' | grep -c 1 || true)
[ "$n" = 1 ] || fail "an unfiltered DELETE as tenant B removed $n rows, want 1 (B's only)"
if q "$APP_URL" "BEGIN; SELECT set_config('app.tenant_id', '$TB', true);
    INSERT INTO experts (id, tenant_id, name, created_at, updated_at)
    VALUES (gen_random_uuid(), '$TA', 'smuggled', 1, 1); COMMIT;" >/dev/null 2>&1; then
    fail "tenant B inserted a row for tenant A"
fi
[ "$(q "$OWNER_URL" "SELECT count(*) FROM experts WHERE name IN ('pwned', 'smuggled')")" = 0 ] ||
    fail "cross-tenant write landed"
[ "$(q "$OWNER_URL" "SELECT count(*) FROM panel_events WHERE tenant_id = '$TA'")" = 1 ] ||
    fail "tenant A's event was deleted"

# The engine role cannot switch off RLS or reach the operator path directly.
if q "$APP_URL" "ALTER TABLE panels NO FORCE ROW LEVEL SECURITY" >/dev/null 2>&1; then
    fail "the engine role could alter a table"
fi
n=$(q "$APP_URL" "SET app.operator = 'on'; SELECT count(*) FROM panels" | tail -1)
[ "$n" = 0 ] || fail "app.operator let the engine role see $n panels"

echo "test_store_pg: PASS (contract on PostgreSQL, RLS proof on: $TABLES tenants)"
