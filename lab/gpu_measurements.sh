#!/usr/bin/env bash
# Every GPU measurement of the prototype head's speed in one run, under 8 minutes on one
# H100/H200, its output in OUT (default output/gpu_measurements): lab/benchmark.py --device cuda
# (the step against the loops and the float32 / bfloat16 floors, the step with
# MODEL.PROTOSEG.SCORES_KERNEL triton, inference ProtoSeg / parametric, peak memory), then 200
# iterations of the 847-class MiT-B2 model with AMP on the toy scenes for five heads: ProtoSeg
# (torch kernel, float32; torch kernel, bfloat16; triton kernel, bfloat16), the plain softmax head
# and the parametric 10-prototype head; a table of s/iter and peak memory.
#
#   bash lab/gpu_measurements.sh [OUT]          # on the GPU machine (after: source .gpu/env.sh)
#   DRY_RUN=1 bash lab/gpu_measurements.sh OUT  # the same pipeline on the CPU, tiny and short
#                                                  # (without the triton training run)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-output/gpu_measurements}"
PY="${PYTHON:-$(command -v python3)}"
[[ -x "$ROOT/.venv/bin/python" && -z "${PYTHON:-}" && -z "${GPU_SITE:-}" ]] && PY="$ROOT/.venv/bin/python"
mkdir -p "$OUT"
export DETECTRON2_DATASETS="$OUT/datasets"
"$PY" datasets/prepare_toy_scenes.py --if-missing

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    DEVICE=cpu; ITERS=3; BATCH=2; BENCH=(--quick --classes 19)
else
    DEVICE=cuda; ITERS=200; BATCH=16; BENCH=()
fi

echo "== lab/benchmark.py --device $DEVICE"
"$PY" lab/benchmark.py --device "$DEVICE" "${BENCH[@]}" --json "$OUT/benchmark.json" | tee "$OUT/benchmark.txt"

# The Table 4 model at C = 847 (8470 prototypes), reduced size, on the toy scenes (8 of the 847
# classes occur, their ignore label 255 counts as class 255; the head's cost is that of all 847).
# Warm-up capped at 0.1 of the run.
COMMON=(MODEL.DEVICE "$DEVICE" MODEL.WEIGHTS "" MODEL.SEM_SEG_HEAD.NORM BN
        DATASETS.TRAIN '("toy_scenes_sem_seg_train",)' DATASETS.TEST '()'
        INPUT.SCALE_JITTER.BASE_SIZE "(512, 128)" INPUT.CROP.SIZE "(128, 128)"
        SOLVER.IMS_PER_BATCH "$BATCH" SOLVER.MAX_ITER "$ITERS" SOLVER.AMP.ENABLED True
        SOLVER.CHECKPOINT_PERIOD 100000 DATALOADER.NUM_WORKERS 4)
run() {  # NAME CONFIG [KEY VALUE ...]
    local name=$1 config=$2; shift 2
    echo "== train $name"
    "$PY" train_net.py --config-file "$config" "${COMMON[@]}" OUTPUT_DIR "$OUT/train/$name" "$@" \
        > "$OUT/train_$name.log" 2>&1 || { tail -30 "$OUT/train_$name.log"; return 1; }
}
PROTOSEG=configs/ade20k_full/protoseg_segformer_MiT-B2_847cls_bs16_40k.yaml
run protoseg_torch_float32 "$PROTOSEG"
run protoseg_torch_bfloat16 "$PROTOSEG" MODEL.PROTOSEG.SIMILARITY_PRECISION bfloat16
if [[ "${DRY_RUN:-0}" != 1 ]]; then  # the Triton interpreter takes many minutes per step at C = 847
    run protoseg_triton_bfloat16 "$PROTOSEG" MODEL.PROTOSEG.SIMILARITY_PRECISION bfloat16 \
        MODEL.PROTOSEG.SCORES_KERNEL triton
fi
run softmax configs/ade20k_full/segformer_MiT-B2_847cls_bs16_40k.yaml
run parametric_K10 configs/ade20k_full/parametric-K10_segformer_MiT-B2_847cls_bs16_40k.yaml

"$PY" - "$OUT/train" <<'PY' | tee "$OUT/training.md"
import json, statistics, sys
from pathlib import Path

rows = []
for run in sorted(Path(sys.argv[1]).iterdir()):
    metrics = [json.loads(line) for line in (run / "metrics.json").read_text().splitlines() if line.strip()]
    times = [m["time"] for m in metrics if "time" in m][1:]  # the first window includes start-up
    memory = max((m.get("max_mem", 0) for m in metrics), default=0)
    rows.append((run.name, statistics.median(times) if times else float("nan"), memory))
softmax = dict((name, (t, mem)) for name, t, mem in rows).get("softmax")
print("| run | s/iter (median of 20-iteration windows) | / softmax | peak memory (MiB) |")
print("|---|---|---|---|")
for name, t, mem in rows:
    ratio = f"{t / softmax[0]:.3f}x" if softmax and softmax[0] == softmax[0] else "n/a"
    print(f"| {name} | {t:.4f} | {ratio} | {mem} |")
PY
