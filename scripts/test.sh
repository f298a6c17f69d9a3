#!/usr/bin/env bash
# The test suite, from a fresh machine: install the workspace, install and start the real
# servers (PostgreSQL 15, Redis 7, FerretDB, PgBouncer, twemproxy) on loopback, lint, test.
# Extra arguments go to pytest (e.g. scripts/test.sh ogelkit/plugins/redis -x).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
scripts/services.sh up
# shellcheck disable=SC1091
source .services/env.sh

.venv/bin/ruff check .
scripts/typecheck.sh
# pytest's exit code 5 ("no tests collected") is a failure here too.
if [ "$#" -eq 0 ]; then set -- ogelkit examples tests; fi
exec .venv/bin/python -m pytest "$@"
