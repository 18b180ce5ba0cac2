#!/bin/sh
# Installs every Debian package that Ask Panel's build, tests and benchmarks need.
# Idempotent and quiet; fails loudly. Run as root (or through sudo).
set -eu

PACKAGES="build-essential cmake pkg-config
  liblua5.4-dev lua5.4 libmicrohttpd-dev libcurl4-openssl-dev libpq-dev libhiredis-dev
  libcjson-dev libsqlite3-dev libssl-dev libcmocka-dev libnghttp2-dev
  lua-busted postgresql postgresql-common redis-server
  python3 curl wrk clang clang-format inotify-tools chromium"

# Node.js may come from elsewhere (e.g. NodeSource, which bundles npm): only install Debian's
# when there is no node/npm at all.
NODE_PACKAGES="nodejs npm"

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root: sudo $0" >&2
  exit 1
fi

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing="$missing $NODE_PACKAGES"
fi
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || { echo "install-deps: apt-get update failed" >&2; exit 1; }
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null \
  || { echo "install-deps: apt-get install failed for:$missing" >&2; exit 1; }
