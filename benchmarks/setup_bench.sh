#!/usr/bin/env bash
# What `make bench` needs beyond `make setup`: the peers' software. Idempotent: it installs only what is
# missing, so a second run changes nothing and touches no network.
# - TorchServe needs a Java 17 runtime (Debian's openjdk-17-jre-headless).
# - `hey` (Debian's package) is the second, independent HTTP client every server is driven by.
# - The project's `bench` extra: torchserve, torch-model-archiver (plus numpy and pyyaml, which
#   TorchServe uses without declaring them), litserve and python-multipart (LitServe's form uploads).
#   None of them depends on torch, so the CPU torch the setup installed stays; this script checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
APT_UPDATED=0
apt_install() {
  # One `apt-get update` per run, and only when something has to be installed.
  if [ "$APT_UPDATED" = 0 ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1
}
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  echo "setup_bench: installing openjdk-17-jre-headless (TorchServe's frontend)"
  apt_install openjdk-17-jre-headless
fi

if ! command -v hey >/dev/null 2>&1; then
  echo "setup_bench: installing hey (the second HTTP load client)"
  apt_install hey
fi

if ! "$VENV/bin/python" -c "import ts, model_archiver, yaml, numpy, litserve, multipart" 2>/dev/null \
  || [ ! -x "$VENV/bin/torchserve" ] || [ ! -x "$VENV/bin/torch-model-archiver" ]; then
  before=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
  echo "setup_bench: installing the bench extra (TorchServe, LitServe) into $VENV"
  "$VENV/bin/pip" install -q -e ".[bench]"
  after=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
  if [ "$before" != "$after" ]; then
    echo "setup_bench: installing the bench extra changed torch ($before -> $after); reinstall torch $before" >&2
    exit 1
  fi
fi
