#!/usr/bin/env bash
# Set up everything RANet Serve needs on a fresh Debian machine: system packages, a virtualenv,
# the CPU build of torch, and the project with its dev tools. Safe to run repeatedly: it skips
# what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}
APT_PACKAGES=(dataset-fashion-mnist prometheus)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.ranet-setup-stamp"
want=$(cat pyproject.toml clients/python/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages"
  "$VENV/bin/pip" install -q --upgrade pip
  # The CPU build of torch first (the machine has it on disk); a range in pyproject admits CUDA builds.
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e ".[cpu,dev]"
  "$VENV/bin/pip" install -q -e clients/python
  echo "$want" > "$stamp"
fi
