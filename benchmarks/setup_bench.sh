#!/usr/bin/env bash
# What `make bench` needs beyond `make setup`: the peers' software. Idempotent: it installs only what is
# missing. TorchServe needs a Java 17 runtime (Debian's openjdk-17-jre-headless) and its pip packages
# (the project's `bench` extra: torchserve, torch-model-archiver, plus numpy and pyyaml, which
# TorchServe uses without declaring them). Neither package depends on torch, so the CPU torch the setup
# installed stays; this script checks that it did.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1
}
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup_bench: installing openjdk-17-jre-headless (TorchServe's frontend)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
fi

if ! "$VENV/bin/python" -c "import ts, model_archiver, yaml, numpy" 2>/dev/null \
  || [ ! -x "$VENV/bin/torchserve" ] || [ ! -x "$VENV/bin/torch-model-archiver" ]; then
  before=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
  echo "setup_bench: installing the bench extra (TorchServe) into $VENV"
  "$VENV/bin/pip" install -q -e ".[bench]"
  after=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
  if [ "$before" != "$after" ]; then
    echo "setup_bench: installing the bench extra changed torch ($before -> $after); reinstall torch $before" >&2
    exit 1
  fi
fi
