#!/usr/bin/env bash
# `make gpu-check` (scripts/gpu_check.py): the project's virtualenv where there is one (a machine set up
# by scripts/setup.sh), else the machine's python3 (the GPU machine's, which holds torch). $PYTHON
# overrides both. Without a CUDA device it prints one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
