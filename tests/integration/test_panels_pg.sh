#!/bin/sh
# The panel API suite again on PostgreSQL (throwaway cluster from pg_virtualenv) with a
# throwaway Redis as the cache.
set -eu
cd "$(dirname "$0")"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null; rm -rf "$dir"' EXIT
export ASKPANEL_TEST_REDIS_URL="redis://127.0.0.1:$port"
pg_virtualenv -t -o "max_connections=200" python3 test_panels.py
