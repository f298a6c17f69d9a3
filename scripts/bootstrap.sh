#!/usr/bin/env bash
# Install the whole workspace (core + every plugin, editable) into .venv with the locked
# versions from uv.lock. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
# uv.lock pins every third-party version; uv keeps those pins and only resolves what the
# lock does not know yet (a plugin added since the lock was written).
uv sync --all-packages --quiet
echo "workspace installed in $(pwd)/.venv (activate: source .venv/bin/activate)"
