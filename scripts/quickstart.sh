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
exec .venv/bin/ogelkit run examples/local.toml
