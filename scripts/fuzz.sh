#!/bin/sh
# Builds the libFuzzer targets in tests/fuzz with clang (libFuzzer + ASan + UBSan) and runs each
# for SECONDS (default 60) on a scratch copy of its seed corpus. Crash inputs land in
# build-fuzz/<target>/ (add them to tests/fuzz/corpus/<target>/ once fixed, so ctest replays
# them). Needs clang and its runtime: apt-get install clang-14 libclang-rt-14-dev
#   usage: scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 60 fuzz_openai_stream
set -eu
cd "$(dirname "$0")/.."
secs=${1:-60}
[ $# -gt 0 ] && shift
CC=${CC:-$(command -v clang || command -v clang-14 || true)}
if [ -z "$CC" ]; then
  echo "fuzz.sh: clang not found (apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 2
fi
targets=${*:-$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//')}
# The parsers under test and what they use; nothing else of the engine is linked.
srcs="engine/core/buf.c engine/core/jsonx.c engine/core/status.c engine/llm/sse.c
      engine/llm/http_wire.c engine/llm/openai_stream.c engine/llm/anthropic_stream.c"
flags="-g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=all -Iengine $(pkg-config --cflags libcjson)"
status=0
for t in $targets; do
  out=build-fuzz/$t
  mkdir -p "$out/corpus"
  cp tests/fuzz/corpus/"$t"/* "$out/corpus/" 2>/dev/null || true
  # shellcheck disable=SC2086
  "$CC" $flags tests/fuzz/"$t".c $srcs -o "$out/$t" $(pkg-config --libs libcjson) -lm
  echo "== $t: ${secs}s"
  if ! "$out/$t" -max_total_time="$secs" -max_len=65536 -artifact_prefix="$out/" \
      "$out/corpus" > "$out/log.txt" 2>&1; then
    echo "$t: FAILED, see $out/log.txt and the crash-* file beside it" >&2
    status=1
  fi
  tail -n 2 "$out/log.txt"
done
exit $status
