#!/usr/bin/env bash
# Runs the library's unit and property tests (tests/), in two pytest-xdist workers (each with its share of the
# cores for torch; the tests are independent). Arguments go to pytest; -n 0 runs them in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest tests/ -n 2 "$@"
