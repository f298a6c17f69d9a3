#!/usr/bin/env bash
# Install the whole workspace (core + every plugin, editable) into .venv with the locked
# versions from uv.lock. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
# ogelkit-native (Rust, built by maturin during the sync) needs cargo: rustup's default place.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found; install the Rust toolchain (https://rustup.rs) to build ogelkit/native" >&2
  exit 1
fi
# --locked: install exactly uv.lock's versions, and fail (rather than silently re-resolve)
# when a pyproject.toml changed without `uv lock`. --inexact: keep packages installed beside
# the workspace (a third-party plugin under development, `uv pip install -e ...`).
uv sync --all-packages --locked --inexact --quiet
echo "workspace installed in $(pwd)/.venv (activate: source .venv/bin/activate)"
