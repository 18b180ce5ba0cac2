#!/bin/sh
# Makes sure the build's packages are present: installs them when run as root, otherwise
# prints the one command that does. Used by `make`, `make run` and `make test`.
set -eu
here=$(dirname "$0")
need="cmake pkg-config gcc lua5.4 busted redis-server pg_virtualenv python3 node npm chromium"
ok=1
for c in $need; do command -v "$c" >/dev/null 2>&1 || ok=0; done
for m in lua5.4 libmicrohttpd libcurl libpq hiredis libcjson sqlite3 libcrypto libssl libnghttp2 cmocka; do
  pkg-config --exists "$m" 2>/dev/null || ok=0
done
[ "$ok" -eq 1 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  exec "$here/install-deps.sh"
fi
echo "Some packages are missing. Install them with:" >&2
echo "  sudo $here/install-deps.sh" >&2
exit 1
