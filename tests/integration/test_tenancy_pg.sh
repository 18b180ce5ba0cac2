#!/bin/sh
# The tenancy suite again, on a throwaway PostgreSQL cluster (pg_virtualenv creates it,
# exports PG* variables and removes it afterwards).
set -eu
cd "$(dirname "$0")"
exec pg_virtualenv -t -o "max_connections=200" python3 test_tenancy.py
