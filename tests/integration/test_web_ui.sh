#!/bin/sh
# End-to-end test of the web UI: a throwaway server (SQLite, simulated LLM with latency so the
# live path is exercised), the Northwind demo tenant, and headless Chromium driven by
# playwright-core (tests/e2e/ui.test.mjs). Screenshots go to a temp dir (kept on failure)
# (kept when ASKPANEL_E2E_KEEP=1) and the council result to /tmp/askpanel-ui.png.
set -eu
SRC=${ASKPANEL_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${ASKPANEL_BIN:-$SRC/build/askpanel}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
cd "$SRC"

fail() { echo "test_web_ui: $*" >&2; echo "0 passed, 1 failed"; exit 1; }
[ -x "$BIN" ] || fail "askpanel binary not found at $BIN"
[ -x "$CHROMIUM" ] || fail "Chromium not found at $CHROMIUM (apt-get install chromium)"
command -v node >/dev/null 2>&1 || fail "node not found (apt-get install nodejs npm)"

if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/e2e --no-audit --no-fund >/dev/null ||
    fail "npm ci failed"
fi

TMP=$(mktemp -d /tmp/askpanel-webui.XXXXXX)
cleanup() {
  rc=$?
  if [ -s "$TMP/server.pid" ]; then
    pid=$(cat "$TMP/server.pid")
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 80 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [ "$rc" -eq 0 ] && [ -z "${ASKPANEL_E2E_KEEP:-}" ]; then
    rm -rf "$TMP"
  else
    echo "test_web_ui: logs and screenshots kept in $TMP" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

STORE="sqlite:$TMP/db"
"$BIN" seed-demo --store "$STORE" >"$TMP/seed.txt" 2>"$TMP/seed.err" || fail "seed-demo failed: $(cat "$TMP/seed.err")"
KEY=$(awk '$1 == "northwind-pharma" { for (i = 1; i <= NF; i++) if ($i ~ /^ap_/) { print $i; exit } }' "$TMP/seed.txt")
[ -n "$KEY" ] || fail "no northwind admin key in the seed-demo output"

# The simulated LLM answers after 150 ms and streams a piece every 15 ms, so text visibly
# streams. The test restarts the server once (to check that the UI resumes its stream), so
# the pid lives in a file both sides update.
export ASKPANEL_SIM_LATENCY_MS=150 ASKPANEL_SIM_TOKEN_MS=15 ASKPANEL_WEB_DIR="$SRC/web"
PIDFILE="$TMP/server.pid"
# A free port can be taken between the probe and the server's bind: then try another.
for attempt in 1 2 3 4 5; do
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN" serve --listen "127.0.0.1:$PORT" --store "$STORE" >>"$TMP/server.log" 2>&1 &
  echo $! >"$PIDFILE"
  i=0
  up=0
  while [ "$i" -lt 100 ]; do
    if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    i=$((i + 1))
    sleep 0.1
  done
  [ "$up" -eq 1 ] && break
  grep -q "cannot listen" "$TMP/server.log" && [ "$attempt" -lt 5 ] && continue
  fail "server did not start: $(tail -5 "$TMP/server.log")"
done

ASKPANEL_URL="http://127.0.0.1:$PORT" ASKPANEL_KEY="$KEY" ASKPANEL_E2E_OUT="$TMP" CHROMIUM="$CHROMIUM" \
  ASKPANEL_BIN="$BIN" ASKPANEL_STORE="$STORE" ASKPANEL_SERVER_PIDFILE="$PIDFILE" \
  node tests/e2e/ui.test.mjs
