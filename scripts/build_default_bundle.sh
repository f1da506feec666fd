#!/usr/bin/env bash
# Rebuild the bundled default model, model_store/ranet-fmnist/1, from scratch:
# train (about an hour on a 2-core CPU), export the stages, verify them, calibrate the operating
# points on the held-out validation split, and write the model card.
# Set SKIP_TRAIN=1 to reuse an existing run in $RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
RANET=${RANET:-.venv/bin/ranet}
RUN=${RUN:-runs/fmnist-default}
OUT=${OUT:-model_store/ranet-fmnist/1}

train_cmd="ranet train --preset fmnist-default --out $RUN"
export_cmd="ranet export $RUN/best.pt --out $OUT --overwrite"
verify_cmd="ranet verify $OUT"
calibrate_cmd="ranet calibrate $OUT --train-checkpoint $RUN/best.pt"

if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  OMP_WAIT_POLICY=passive $RANET ${train_cmd#ranet } --resume
fi
$RANET ${export_cmd#ranet }
$RANET ${verify_cmd#ranet }
$RANET ${calibrate_cmd#ranet }
$RANET model-card "$OUT" --train-checkpoint "$RUN/best.pt" \
  --command "$train_cmd" --command "$export_cmd" --command "$verify_cmd" --command "$calibrate_cmd" \
  --command "ranet model-card $OUT --train-checkpoint $RUN/best.pt"
$RANET inspect "$OUT"
