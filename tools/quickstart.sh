#!/usr/bin/env bash
# The main job on the embedded default data, from a fresh clone: set up .venv, generate the toy
# scenes, train ProtoSeg (slim ResNet-18-D8 + FCN), evaluate it (mIoU and per-class IoU) and draw
# its predictions on validation images.
#   bash tools/quickstart.sh [extra train_net.py config overrides, e.g. SOLVER.MAX_ITER 100]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
PY="$ROOT/.venv/bin/python"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$ROOT/datasets}"
CONFIG=configs/toy/protoseg_r18-d8_fcn_toy.yaml
OUT=output/toy/protoseg_r18-d8_fcn

"$PY" datasets/prepare_toy_scenes.py --if-missing
"$PY" train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT" "$@"
"$PY" demo/demo.py --config-file "$CONFIG" \
    --input "$DETECTRON2_DATASETS/toy_scenes/images/validation/toy_val_0000[0-3].jpg" \
    --output "$OUT/visualization" --opts MODEL.WEIGHTS "$OUT/model_final.pth" OUTPUT_DIR "$OUT"
echo "[quickstart] metrics: $OUT/metrics.json, per-class IoU: $OUT/inference/toy_scenes_sem_seg_val/per_class_iou.csv," \
     "pictures: $OUT/visualization/"
