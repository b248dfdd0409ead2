#!/usr/bin/env bash
# Runs the library's unit and property tests (tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest tests/ "$@"
