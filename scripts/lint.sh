#!/usr/bin/env bash
# ruff, the lint and the formatter of the whole repository (settings in pyproject.toml): `bash scripts/lint.sh`
# checks, `bash scripts/lint.sh --fix` rewrites what they can fix (imports, formatting).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
if [ "${1:-}" = "--fix" ]; then
  .venv/bin/ruff check . --fix
  exec .venv/bin/ruff format .
fi
.venv/bin/ruff check .
exec .venv/bin/ruff format --check .
