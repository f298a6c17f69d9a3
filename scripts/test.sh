#!/usr/bin/env bash
# The test suite, from a fresh machine: install the workspace, install and start the real
# servers (PostgreSQL 15, Redis 7, FerretDB, PgBouncer, twemproxy) on loopback, lint, test.
# Extra arguments go to pytest (e.g. scripts/test.sh ogelkit/plugins/redis -x) and replace both
# passes; with none, the whole suite runs, then the Redis and Postgres suites again with the
# pure-Python framing (OGELKIT_NATIVE=0).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
scripts/services.sh up
# shellcheck disable=SC1091
source .services/env.sh

.venv/bin/ruff check .
scripts/typecheck.sh
# The native framing core was built by bootstrap: it must import (a broken build is a
# failure, not a silent fallback to the pure-Python path; test_native.py checks it too).
.venv/bin/python -c "import ogelkit_native"
# Its Rust unit tests (the framing rules; the differential tests against Python are in
# ogelkit/plugins/redis/tests/test_native.py).
(PATH="$HOME/.cargo/bin:$PATH" && cd ogelkit/native && cargo test --release --quiet)
# pytest's exit code 5 ("no tests collected") is a failure here too.
if [ "$#" -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
.venv/bin/python -m pytest ogelkit examples tests
# Second pass, pure-Python framing (OGELKIT_NATIVE=0), over the suites that exercise the code
# ogelkit_native replaces (docs/dev/native.md).
start=$(date +%s)
OGELKIT_NATIVE=0 .venv/bin/python -m pytest ogelkit/plugins/redis ogelkit/plugins/postgres
echo "pure-Python pass (OGELKIT_NATIVE=0): $(( $(date +%s) - start ))s"
