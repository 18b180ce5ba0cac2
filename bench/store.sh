#!/bin/sh
# store.sh - store benchmark: batched event inserts (group commit) and panel reads by id, on
# SQLite (a temp file) and on a throwaway PostgreSQL (pg_virtualenv, fsync on, connected as a
# role in askpanel_app so RLS and the per-transaction tenant are part of the cost).
#
#   bench/store.sh            # uses build/bench/bench_store_bench
#   EVENTS=200000 BATCH=256 READS=20000 THREADS=1 SWEEP=5000 bench/store.sh
set -eu

if [ "${ASKPANEL_IN_PGVENV:-}" = 1 ]; then
    # Inside pg_virtualenv: migrate as the owner, serve as the engine role.
    DB=askpanel_bench
    PW=bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
    psql -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" postgres
    OWNER="postgresql://$PGUSER:$PGPASSWORD@127.0.0.1:$PGPORT/$DB"
    "$DRIVER" migrate "$OWNER"
    psql -qX -v ON_ERROR_STOP=1 -d "$OWNER" \
        -c "CREATE ROLE askpanel_bench LOGIN PASSWORD '$PW' IN ROLE askpanel_app"
    echo "postgres: fsync=$(psql -qAtX -c 'SHOW fsync') synchronous_commit=$(psql -qAtX -c 'SHOW synchronous_commit')"
    APP="postgresql://askpanel_bench:$PW@127.0.0.1:$PGPORT/$DB"
    "$DRIVER" run "$APP" "$EVENTS" "$BATCH" "$READS" "$THREADS"
    [ "$THREADS" = 1 ] && "$DRIVER" run "$APP" "$EVENTS" "$BATCH" "$READS" 4
    "$DRIVER" sweep "$APP" "$SWEEP"
    exit 0
fi

cd "$(dirname "$0")/.."
BUILD=${ASKPANEL_BUILD_DIR:-build}
DRIVER=$(realpath "$BUILD/bench/bench_store_bench")
[ -x "$DRIVER" ] || { echo "store.sh: build bench_store_bench first (cmake --build $BUILD --target bench_store_bench)" >&2; exit 1; }
export DRIVER EVENTS=${EVENTS:-200000} BATCH=${BATCH:-256} READS=${READS:-20000} THREADS=${THREADS:-1}
export SWEEP=${SWEEP:-5000}

echo "== store benchmark: $EVENTS events in batches of $BATCH, $READS panel reads"
echo "machine: $(nproc) cores, $(uname -sr)"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$DRIVER" migrate "sqlite:$TMP/bench.db"
"$DRIVER" run "sqlite:$TMP/bench.db" "$EVENTS" "$BATCH" "$READS" "$THREADS"
"$DRIVER" sweep "sqlite:$TMP/bench.db" "$SWEEP"

if command -v pg_virtualenv >/dev/null 2>&1; then
    PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export PGPORT ASKPANEL_IN_PGVENV=1
    # pg_virtualenv turns fsync off; a benchmark of durable commits needs it on.
    pg_virtualenv -t -o fsync=on "$(realpath "$0")" 2>&1 | grep -v -e '^Creating new' -e '^Dropping cluster'
else
    echo "postgres: skipped (pg_virtualenv not installed)"
fi
