#!/usr/bin/env bash
# Runs every claim of the paper (suites/) on the embedded toy zoo, or on the models given with --model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest suites/ "$@"
