#!/usr/bin/env bash
# Set up everything RANet Serve needs on a fresh Debian machine: system packages, a virtualenv,
# the CPU build of torch, the project with its tools' extras and dev tools (every version pinned by
# requirements/constraints.txt), and the deployment checks' tools (nginx, npm with Grafana's schema).
# Safe to run repeatedly: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}
CONSTRAINTS=requirements/constraints.txt
# Fashion-MNIST (training and evaluation tests) and promtool (the alert and dashboard checks).
APT_PACKAGES=(dataset-fashion-mnist prometheus)
# Tools looked for by command, each with the Debian package that brings it, so a machine that has the
# tool from elsewhere keeps it (NodeSource's nodejs carries its own npm): nginx for `nginx -t` on the
# compose gateway's config, npm for Grafana's dashboard schema.
APT_TOOLS=(nginx:nginx-light npm:npm)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
for tool in "${APT_TOOLS[@]}"; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing Debian packages: ${missing[*]}"
  # Installing a daemon's package must not start it (nginx would listen on port 80): policy-rc.d
  # exit 101 tells Debian's maintainer scripts so, for this install only, unless the machine has one.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.ranet-setup-stamp"
want=$(cat pyproject.toml clients/python/pyproject.toml "$CONSTRAINTS" scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages"
  "$VENV/bin/pip" install -q --upgrade pip
  # The CPU build of torch first (the machine has it on disk); a range in pyproject admits CUDA builds.
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/pip" install -q -c "$CONSTRAINTS" "torch==2.13.0"
  # The serving core plus every extra the tests use: train (matplotlib, tqdm), export (onnx,
  # onnxscript) and dev (test and deployment-check tools; it names train and export too).
  "$VENV/bin/pip" install -q -c "$CONSTRAINTS" -e ".[cpu,train,export,dev]"
  "$VENV/bin/pip" install -q -c "$CONSTRAINTS" -e "clients/python[fast]"
  echo "$want" > "$stamp"
fi

# KServe's Python client, for the test that it works with our gRPC front-end unchanged. A venv of its
# own: kserve pins what our constraints pin differently (python-dateutil < 3) and pulls a model-server
# stack (pandas, kubernetes, cloudevents) that ranet-serve must not depend on. About 450 MB, 30 s.
KSERVE_CLIENT=.deploy-tools/kserve-client
if [ ! -x "$KSERVE_CLIENT/bin/python" ] || ! "$KSERVE_CLIENT/bin/python" -c "import kserve" 2>/dev/null; then
  echo "setup: installing KServe's Python client into $KSERVE_CLIENT"
  "$PYTHON" -m venv "$KSERVE_CLIENT"
  "$KSERVE_CLIENT/bin/pip" install -q "kserve==0.21.0"
fi

# Grafana's TypeScript types for the dashboard check, pinned in tests/deploy_helpers.py, into the
# project's .deploy-tools/ (gitignored) when missing.
"$VENV/bin/python" tests/deploy_helpers.py grafana-schema-setup
