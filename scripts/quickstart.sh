#!/usr/bin/env bash
# Quickstart: install the workspace, start the local servers, and run the gateway on
# examples/local.toml (Ctrl-C drains and stops it). The control plane is a SQLite file in
# .ogelkit/ and the encryption key for upstream credentials is generated once into
# .ogelkit/secret.key.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
scripts/services.sh up
# shellcheck disable=SC1091
source .services/env.sh

mkdir -p .ogelkit
if [ ! -s .ogelkit/secret.key ]; then
  (umask 077; .venv/bin/ogelkit secret-key > .ogelkit/secret.key)
fi
export OGELKIT_SECRET_KEY="${OGELKIT_SECRET_KEY:-$(cat .ogelkit/secret.key)}"
.venv/bin/ogelkit check examples/local.toml
# The demo tenant's Convex database fronts the tests' STAND-IN deployment (not Convex)
# unless OGELKIT_CONVEX_URL names a real one.
if [ -z "${OGELKIT_CONVEX_URL:-}" ]; then
  .venv/bin/python ogelkit/plugins/convex/tests/standin.py --port 53210 --name demo \
    --admin-key standin-admin-key > .ogelkit/convex-standin.log 2>&1 &
  standin=$!
  trap 'kill "$standin" 2>/dev/null || true' EXIT
fi
echo "Convex: ConvexClient(\"http://127.0.0.1:${OGELKIT_HTTP_PORT:-18080}\") with set_auth(\$(.venv/bin/ogelkit --config examples/local.toml convex token demo functions))"
.venv/bin/ogelkit run examples/local.toml
