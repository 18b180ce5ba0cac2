#!/bin/sh
# HTTP overhead benchmark: wrk against the engine's /health and against a bare libmicrohttpd
# server with the same threading (bench/reference/mhd_ref.c), in the same run.
# Usage: bench/http.sh [DURATION_S]    (needs wrk; run `make` first)
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
THREADS=$(nproc)
BUILD=${BUILD:-build}
ENGINE_PORT=18080
REF_PORT=18081
tmp=$(mktemp -d)
trap 'kill $ENGINE_PID $REF_PID 2>/dev/null || true; rm -rf "$tmp"' EXIT

"$BUILD/askpanel" serve --listen 127.0.0.1:$ENGINE_PORT --store "sqlite:$tmp/bench.db" \
  --log-level warn 2>"$tmp/engine.log" &
ENGINE_PID=$!
"$BUILD/bench/bench_mhd_ref" $REF_PORT "$THREADS" &
REF_PID=$!
for port in $ENGINE_PORT $REF_PORT; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done
done

run() { # name port
  wrk -t2 -c64 -d"${DUR}s" --latency "http://127.0.0.1:$2/health" >"$tmp/$1.txt"
  rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/$1.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$tmp/$1.txt")
  echo "$1 $rps $p99"
}
# Alternate to even out noise: reference, engine, reference, engine.
r1=$(run reference $REF_PORT); e1=$(run engine $ENGINE_PORT)
r2=$(run reference $REF_PORT); e2=$(run engine $ENGINE_PORT)
echo "$r1"; echo "$e1"; echo "$r2"; echo "$e2"
ref=$(printf '%s\n%s\n' "$r1" "$r2" | awk '{s+=$2} END {printf "%.0f", s/NR}')
eng=$(printf '%s\n%s\n' "$e1" "$e2" | awk '{s+=$2} END {printf "%.0f", s/NR}')
echo "reference_rps=$ref engine_rps=$eng ratio=$(awk "BEGIN {printf \"%.3f\", $eng/$ref}")"
