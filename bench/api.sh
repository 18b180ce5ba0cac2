#!/bin/sh
# API benchmarks (issue 7):
#  (a) wrk on GET /v1/panels/{id}: req/s and p99;
#  (b) 5,000 SSE subscribers on one running panel: fan-out delay and server RSS;
#  (c) 1,000 panels created, executed and streamed through the API against mockllm
#      (200 ms latency): all complete; wall time vs the critical path.
# Usage: bench/api.sh [a|b|c]...   (default: all; run `make` first; needs wrk)
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PARTS=${*:-a b c}
ulimit -n 65536 2>/dev/null || ulimit -n 16384
tmp=$(mktemp -d)
PORT=18090
MOCK_PORT=18091
trap 'kill $SERVER_PID ${MOCK_PID:-} 2>/dev/null || true; rm -rf "$tmp"' EXIT

start_server() { # extra env...
  env "$@" "$BUILD/askpanel" serve --listen 127.0.0.1:$PORT --store "sqlite:$tmp/bench.db" \
    --log-level warn 2>"$tmp/server.log" &
  SERVER_PID=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return; sleep 0.05; done
  echo "server did not start" >&2; cat "$tmp/server.log" >&2; exit 1
}
stop_server() { kill $SERVER_PID; wait $SERVER_PID 2>/dev/null || true; }

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
KEY=$("$BUILD/askpanel" tenant create --slug bench --name Bench --json --store "sqlite:$tmp/bench.db" |
      json_field api_key)
api() { curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
new_panel() { api -X POST "http://127.0.0.1:$PORT/v1/panels" -d "{\"question\":\"$1\",\"strategy\":\"${2:-council}\"}" |
              json_field id; }

for part in $PARTS; do
  case $part in
  a)
    start_server
    ID=$(new_panel "Bench panel for reads")
    api -X POST "http://127.0.0.1:$PORT/v1/panels/$ID/execute" >/dev/null
    sleep 1
    echo "(a) GET /v1/panels/{id}, finished panel (cacheable):"
    wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/panels/$ID" |
      awk '/Requests\/sec/ {print "    req/s " $2} $1 == "99%" {print "    p99   " $2}'
    ID2=$(new_panel "Bench panel never executed")
    echo "(a) GET /v1/panels/{id}, created panel (read from the store each time):"
    wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/panels/$ID2" |
      awk '/Requests\/sec/ {print "    req/s " $2} $1 == "99%" {print "    p99   " $2}'
    stop_server
    ;;
  b)
    start_server ASKPANEL_SIM_LATENCY_MS=300
    ID=$(new_panel "Fan-out benchmark" delphi)
    echo "(b) 5,000 SSE subscribers on one running panel:"
    python3 bench/sse_fanout.py "http://127.0.0.1:$PORT" "$KEY" "$ID" $SERVER_PID ${SUBSCRIBERS:-5000} "$BUILD" | sed 's/^/    /'
    stop_server
    ;;
  c)
    "$BUILD/mockllm" --port $MOCK_PORT --latency-ms 200 --token-ms 0 --tokens 40 >"$tmp/mock.log" 2>&1 &
    MOCK_PID=$!
    sleep 0.5
    start_server OPENAI_BASE_URL=http://127.0.0.1:$MOCK_PORT/v1 OPENAI_API_KEY=bench \
      ASKPANEL_LLM='{"default_provider":"openai"}'
    echo "(c) 1,000 panels through the API against mockllm (200 ms per call):"
    python3 bench/api_panels.py "http://127.0.0.1:$PORT" "$KEY" 1000 | sed 's/^/    /'
    stop_server
    kill $MOCK_PID; MOCK_PID=
    ;;
  esac
done
