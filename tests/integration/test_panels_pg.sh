#!/bin/sh
# The panel API suite again on PostgreSQL (throwaway cluster from pg_virtualenv) with a
# throwaway Redis as the cache.
set -eu
cd "$(dirname "$0")"
dir=$(mktemp -d)
# Redis writes its log as it exits: the directory goes once it has (rm raced it).
stop_redis() {
  pid=$(cat "$dir/redis.pid" 2>/dev/null) || pid=
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    i=0
    while [ "$i" -lt 100 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.05; i=$((i + 1)); done
  fi
}
trap 'stop_redis; rm -rf "$dir"' EXIT
# A free port can be taken again between the probe and redis' bind: try a few.
for attempt in 1 2 3 4 5; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  i=0
  while [ "$i" -lt 50 ] && ! redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; i=$((i + 1)); done
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  stop_redis
  [ "$attempt" -lt 5 ] || { echo "test_panels_pg: redis-server did not start" >&2; exit 1; }
done
export ASKPANEL_TEST_REDIS_URL="redis://127.0.0.1:$port"
pg_virtualenv -t -o "max_connections=200" python3 test_panels.py
