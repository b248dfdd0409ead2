#!/usr/bin/env bash
# Creates .venv (once) and installs mechbench with its test extra into it.
# torch: on a machine without a GPU the pin torch==2.13.0 takes the CPU build (an unpinned torch would pull a
# multi-GB CUDA build). A GPU user sets MECHBENCH_TORCH to the pip requirement of their CUDA build, or
# installs it into .venv first: a torch already in .venv is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), f"mechbench needs Python >= 3.11, this is {sys.version}"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.mechbench-installed
want="$(cat pyproject.toml | sha256sum | cut -c1-16) ${MECHBENCH_TORCH:-torch==2.13.0}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  if ! .venv/bin/python -c 'import torch' 2>/dev/null || [ -n "${MECHBENCH_TORCH:-}" ]; then
    .venv/bin/python -m pip install -q ${MECHBENCH_TORCH:-torch==2.13.0}
  fi
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
