#!/usr/bin/env bash
# Run the Dockerfile's build and runtime steps without a container engine (none runs on
# these machines): copy what the Dockerfile COPYs into a clean directory, run its exact
# `uv sync` line there, then start the installed `ogelkit` as an unprivileged user the way
# the image's ENTRYPOINT does (check the config, list the plugins).
# Usage: scripts/container-check.sh [WORKDIR]   (prints the directory it used)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${1:-$(mktemp -d /tmp/ogelkit-image.XXXXXX)}
mkdir -p "$WORK/app"

# COPY pyproject.toml uv.lock README.md ./ ; COPY ogelkit ./ogelkit ; COPY examples ./examples
git ls-files -z pyproject.toml uv.lock README.md ogelkit examples \
  | (cd "$ROOT" && xargs -0 cp --parents -t "$WORK/app")

# The image's interpreter is a system Python (python:3.11-slim's); here Debian's, which an
# unprivileged user can run (a pyenv Python under /root cannot be).
PYTHON=${UV_PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}

# The Dockerfile's own install line, verbatim.
SYNC=$(grep -E '^RUN uv sync ' Dockerfile | sed 's/^RUN //')
[ -n "$SYNC" ] || { echo "no 'RUN uv sync' line in the Dockerfile" >&2; exit 1; }
(cd "$WORK/app" && env -u VIRTUAL_ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 \
   UV_PYTHON_DOWNLOADS=never UV_PYTHON="$PYTHON" $SYNC --quiet)

# The runtime stage: no dev tools in the environment, the workspace not editable.
"$WORK/app/.venv/bin/python" - <<'PY'
import importlib.util, sys
for dev in ("pytest", "ruff", "mypy"):
    assert importlib.util.find_spec(dev) is None, f"{dev} must not be in the image"
import ogelkit
assert "/site-packages/" in ogelkit.__file__, f"ogelkit is not installed as a package: {ogelkit.__file__}"
import ogelkit_native  # the Rust framing was built into the image, not left to the Python path
PY

# USER ogelkit: the installed CLI must run unprivileged.
RUNAS=()
if [ "$(id -u)" = 0 ]; then
  id ogelkit-image >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin ogelkit-image
  chmod a+rx "$WORK"; chmod -R a+rX "$WORK"
  RUNAS=(runuser -u ogelkit-image --)
fi
cd "$WORK/app"
"${RUNAS[@]}" env PATH="$WORK/app/.venv/bin:$PATH" HOME=/tmp \
  OGELKIT_SECRET_KEY="${OGELKIT_SECRET_KEY:-dGVzdC1rZXktZm9yLW9nZWxraXQtdGVzdHMtb25seSE=}" \
  OGELKIT_ADMIN_TOKEN=check DATABASE_URL=postgresql://u:p@db:5432/railway \
  REDIS_URL=redis://r:6379 MONGO_URL=mongodb://m:27017 \
  ogelkit check examples/railway.toml
"${RUNAS[@]}" env PATH="$WORK/app/.venv/bin:$PATH" HOME=/tmp ogelkit plugins
echo "image steps ran in $WORK"
