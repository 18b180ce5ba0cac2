#!/bin/sh
# Refuses the C functions that have no bound or no error reporting.
set -eu
cd "$(dirname "$0")/.."
pattern='\b(strcpy|sprintf|vsprintf|strcat|atoi|atol|atoll|strtok|gets)[[:space:]]*\('
if grep -rnE "$pattern" --include='*.c' --include='*.h' engine tests bench; then
  echo "check-banned: use the bounded alternatives (snprintf, memcpy, strtol, ...)" >&2
  exit 1
fi
echo "check-banned: no banned functions"
