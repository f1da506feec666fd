#!/usr/bin/env bash
# RANet Serve with nothing but curl: health, models, classify (three body forms, budget knobs),
# KServe v2 inference and metrics. Usage: clients/examples/curl.sh [BASE_URL]
# Needs a running server (`make serve`); sends only to BASE_URL (default http://127.0.0.1:8080).
set -euo pipefail

URL="${1:-${RANET_URL:-http://127.0.0.1:8080}}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SAMPLES="$HERE/../python/ranet_client/samples"
IMG="$SAMPLES/fmnist_test_00000.png"    # an ankle boot (see samples/labels.json)
IMG2="$SAMPLES/fmnist_test_00001.png"   # a pullover
C=(curl --silent --show-error --max-time 30)

echo "== liveness and readiness"
"${C[@]}" "$URL/healthz"; echo
"${C[@]}" "$URL/readyz"; echo

echo "== models: versions, exits (cumulative FLOPs), operating points"
"${C[@]}" "$URL/v1/models"; echo

echo "== multipart: two images, a hard cap of 20 MFLOPs per image, top-3 classes"
"${C[@]}" -F "files=@$IMG" -F "files=@$IMG2" -F max_flops=20M -F top_k=3 "$URL/v1/classify"; echo

echo "== raw body: one image, knobs in the query string (average budget: pick an operating point)"
"${C[@]}" -H "Content-Type: image/png" --data-binary "@$IMG" "$URL/v1/classify?target_flops=15M"; echo

echo "== JSON with base64 images: one confidence threshold for every exit"
B64="$(base64 -w0 "$IMG")"
"${C[@]}" -H "Content-Type: application/json" \
  -d "{\"images\": [\"$B64\"], \"confidence\": 0.9}" "$URL/v1/classify"; echo

echo "== a budget below the cheapest exit is refused with 422 invalid_budget (and says the cost)"
"${C[@]}" -F "files=@$IMG" -F max_flops=1 "$URL/v1/classify"; echo

echo "== KServe v2 / Open Inference Protocol (BYTES input, knobs in parameters)"
MODEL="$("${C[@]}" "$URL/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["default_model"])')"
"${C[@]}" -H "Content-Type: application/json" -d "@$HERE/kserve_v2_request.json" \
  "$URL/v2/models/$MODEL/infer"; echo

echo "== Prometheus metrics: requests and the exit distribution"
"${C[@]}" "$URL/metrics" | grep -E '^ranet_(requests|exit)_total' || true
