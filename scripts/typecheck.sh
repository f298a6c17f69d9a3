#!/usr/bin/env bash
# Type-check the core and every plugin with mypy ([tool.mypy] in pyproject.toml), as
# packages of the installed workspace. Run from inside the core's src/ so that `ogelkit`
# is the package, not the repository folder of the same name.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PKGS=(-p ogelkit)
for dir in ogelkit/plugins/*/src/* ogelkit/layers/*/src/* examples/plugins/*/src/*; do
  [ -f "$dir/__init__.py" ] && PKGS+=(-p "$(basename "$dir")")
done
cd ogelkit/core/src
exec "$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" \
  --cache-dir "$ROOT/.mypy_cache" "${PKGS[@]}" "$@"
