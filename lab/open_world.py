#!/usr/bin/env python
"""Beyond a closed vocabulary, measured on the toy scenes: a class held out in training, then
(a) how well its pixels are flagged as unknown and (b) how well it is learned from a few images
without training (tools/add_class.py), for ProtoSeg and the softmax baseline.

    python lab/open_world.py --seeds 3                 # the study: 4 trainings x 3 seeds, then the additions
    python lab/open_world.py --quick                   # smoke run: 1 seed, 4 iterations, tiny data

Trainings (lab/studies.py's runner: one train_net.py run per variant and seed, resumable):
ProtoSeg and the softmax classifier, each with the last toy class held out (INPUT.HELD_OUT_CLASSES 1:
its pixels ignored, 7 classes) and with every class. Then, per held-out model and seed:

- unknown detection on the validation split: the held-out class's pixels are the positives, the
  other labelled pixels the negatives; AUROC, AP and FPR at 95 % TPR of each unknown score
  (:data:`SCORES`: maximum softmax probability and maximum logit from the logits of any head, and
  for ProtoSeg the model's ``unknown_score`` output ``TEST.UNKNOWN_SCORE nearest_prototype``);
- adding the held-out class from 1, 5 and 20 training images (``--shots``; nested: the first n of
  one seeded order of the training images that show the class) with ``protoseg.new_class``; on the
  validation split the added class's IoU, the mIoU of the other classes (the held-out class's
  pixels ignored, as for the held-out model) and its paired change from the held-out model, and
  the share of pixels whose best old class the new class-score normalisation changes.

The model trained with every class is the reference row. Few-shot images come from the training
split, scores from the validation split; nothing is tuned on the validation split. Tables:
``<output-dir>/open_world/open_world.{csv,md}`` and ``unknown.{csv,md}``.
"""
import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from studies import (  # lab/studies.py
    PROTOSEG,
    TOY_STUDY_CONFIG,
    RunnerOptions,
    Study,
    StudyContext,
    Variant,
    _mean_std,
    _prefix,
    parametric,
    plan_runs,
    run_study,
)

from protoseg.config import load_config

__all__ = ["auroc", "average_precision", "fpr_at_tpr", "SCORES", "open_world_study", "main"]

SHOTS = (1, 5, 20)
HEADS = {"ProtoSeg": PROTOSEG, "softmax": parametric(1)}
HELD_OUT = ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", None, "INPUT.HELD_OUT_CLASSES", 1)  # class count filled in
# the share of a support image the held-out class must cover to be drawn as a few-shot example
MIN_SUPPORT_SHARE = 0.02
QUICK_OPTS = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64, "INPUT.CROP.SIZE", (64, 64),
              "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 0]
QUICK_ITERS = 4


# --------------------------------------------------------------------------------------------
# Unknown-detection metrics (numpy; positives = unknown pixels, higher score = more unknown)
# --------------------------------------------------------------------------------------------
def _check(scores: np.ndarray, positive: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    scores, positive = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise ValueError(f"{scores.size} scores but {positive.size} labels")
    if positive.all() or not positive.any():
        raise ValueError("the metrics need both unknown (positive) and known (negative) pixels")
    return scores, positive


def _roc(scores: np.ndarray, positive: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from the highest score down, starting at (0, 0):
    tied scores enter together."""
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(p)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return np.r_[0.0, fp / (~positive).sum()], np.r_[0.0, tp / positive.sum()]


def auroc(scores, positive) -> float:
    """Area under the ROC curve (trapezoids: a tie counts one half), in [0, 1]; 0.5 = chance."""
    fpr, tpr = _roc(*_check(scores, positive))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(scores, positive) -> float:
    """AP: sum over thresholds of (recall step) x precision, as scikit-learn's (no interpolation)."""
    scores, positive = _check(scores, positive)
    fpr, tpr = _roc(scores, positive)
    tp, fp = tpr * positive.sum(), fpr * (~positive).sum()
    precision = tp[1:] / (tp[1:] + fp[1:])
    return float(np.sum(np.diff(tpr) * precision))


def fpr_at_tpr(scores, positive, tpr_level: float = 0.95) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches ``tpr_level``."""
    fpr, tpr = _roc(*_check(scores, positive))
    return float(fpr[np.argmax(tpr >= tpr_level)])


# --------------------------------------------------------------------------------------------
# Unknown scores: (model, cfg, input dict, (C, H, W) logits, output dict) -> (H, W) at the labels'
# size, higher = more unknown; None where a score does not apply to the model
# --------------------------------------------------------------------------------------------
def _msp(model, cfg, x: Dict, logits: torch.Tensor, output: Dict) -> Optional[torch.Tensor]:
    return -logits.softmax(dim=0).amax(dim=0)


def _max_logit(model, cfg, x: Dict, logits: torch.Tensor, output: Dict) -> Optional[torch.Tensor]:
    return -logits.amax(dim=0)


def _nearest_prototype(model, cfg, x: Dict, logits: torch.Tensor, output: Dict) -> Optional[torch.Tensor]:
    """The model's own ``unknown_score`` (``TEST.UNKNOWN_SCORE nearest_prototype``, set by
    :func:`evaluate` for ProtoSeg models): 1 - max_c max_k cos(x, p_ck)."""
    return output.get("unknown_score")


#: name -> score; a score that returns None for a model is left out of its rows
SCORES: Dict[str, Callable[..., Optional[torch.Tensor]]] = {
    "max softmax prob.": _msp,
    "max logit": _max_logit,
    "1 - nearest prototype cos.": _nearest_prototype,
}


# --------------------------------------------------------------------------------------------
# Evaluation on the validation split
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(cfg, weights: str, dataset: str, num_dataset_classes: int, *, scores: bool = False,
             compare_to: Optional[np.ndarray] = None) -> Dict:
    """Run a model on ``dataset`` (the evaluator's path: the test loader, outputs at the labels'
    size) and return its (num_dataset_classes + 1)^2 confusion matrix ``[gt, pred]`` (row
    ``num_dataset_classes``: ignored pixels are dropped), the predictions (for ``compare_to``) and,
    with ``scores``, every unknown score of :data:`SCORES` and the labels of the scored pixels."""
    from protoseg.checkpoint import ProtoSegCheckpointer
    from protoseg.data.labels import read_label_map
    from protoseg.engine import Trainer

    if scores and cfg.MODEL.SEM_SEG_HEAD.NAME == "ProtoSegHead":
        cfg = cfg.clone()
        cfg.defrost()
        cfg.TEST.UNKNOWN_SCORE = "nearest_prototype"
    model = Trainer.build_model(cfg)
    ProtoSegCheckpointer(model).load(weights, checkpointables=[])
    model.eval()
    n = num_dataset_classes
    confusion = np.zeros((n, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES), dtype=np.int64)
    collected: Dict[str, List[np.ndarray]] = {name: [] for name in SCORES}
    labels, preds = [], []
    for inputs in Trainer.build_test_loader(cfg, dataset):
        outputs = model(inputs)
        for x, out in zip(inputs, outputs):
            gt = read_label_map(x["sem_seg_file_name"])  # the test mapper leaves the labels to the evaluator
            logits = out["sem_seg"]
            pred = logits.argmax(dim=0).numpy()
            valid = gt < n
            confusion += np.bincount(gt[valid] * confusion.shape[1] + pred[valid],
                                     minlength=confusion.size).reshape(confusion.shape)
            preds.append(pred)
            labels.append(np.where(valid, gt, -1).ravel())
            if scores:
                for name, score in SCORES.items():
                    value = score(model, cfg, x, logits, out)
                    if value is not None:
                        collected[name].append(np.asarray(value, dtype=np.float32).ravel())
    result = {"confusion": confusion, "preds": preds, "labels": np.concatenate(labels)}
    if scores:
        result["scores"] = {k: np.concatenate(v) for k, v in collected.items() if v}
    return result


def class_ious(confusion: np.ndarray, ignore_gt: Sequence[int] = ()) -> np.ndarray:
    """(P,) IoU (%) of each predicted class from a ``[gt, pred]`` (G, P) confusion matrix whose
    ground-truth rows ``ignore_gt`` are dropped (nan for a class in neither the labels nor the
    predictions)."""
    conf = confusion.astype(np.float64)
    conf[list(ignore_gt)] = 0.0
    G, P = conf.shape
    tp = np.array([conf[c, c] if c < G else 0.0 for c in range(P)])
    gt_total = np.array([conf[c].sum() if c < G else 0.0 for c in range(P)])
    union = gt_total + conf.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 100.0 * tp / np.maximum(union, 1), np.nan)


def unknown_metrics(result: Dict, held_out: int) -> Dict[str, Dict[str, float]]:
    """score name -> AUROC, AP, FPR@95TPR (%) of the held-out class's pixels against the others."""
    labels = result["labels"]
    scored = labels >= 0
    positive = labels[scored] == held_out
    out = {}
    for name, values in result.get("scores", {}).items():
        s = values[scored]
        out[name] = {"AUROC": 100 * auroc(s, positive), "AP": 100 * average_precision(s, positive),
                     "FPR95": 100 * fpr_at_tpr(s, positive)}
    return out


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------
def open_world_study(ctx: StudyContext) -> Study:
    """The trainings: both heads, with the last class held out and with every class."""
    dataset = ctx.base_dataset()
    held_out = list(HELD_OUT)
    held_out[1] = dataset.num_classes - 1
    variants = []
    for head, opts in HEADS.items():
        variants.append(Variant(f"{head}, all classes", opts, series=head, dataset=dataset))
        variants.append(Variant(f"{head}, last class held out", opts + tuple(held_out), series=head, dataset=dataset))
    return Study("open_world", "A held-out class: flagged as unknown, and added from a few images.",
                 tuple(variants), reference="ProtoSeg, all classes")


def support_order(dataset: str, class_id: int, seed: int) -> List[dict]:
    """The training images that show ``class_id`` on at least MIN_SUPPORT_SHARE of their pixels,
    in a seeded order (the first n are the n-shot examples)."""
    from detectron2.data import DatasetCatalog

    from protoseg.data.labels import read_label_map

    records = sorted(DatasetCatalog.get(dataset), key=lambda d: d["file_name"])
    showing = [d for d in records if (read_label_map(d["sem_seg_file_name"]) == class_id).mean() >= MIN_SUPPORT_SHARE]
    order = np.random.RandomState(seed).permutation(len(showing))
    return [showing[i] for i in order]


def write_masks(records: Sequence[dict], class_id: int, folder: Path) -> List[Tuple[str, str]]:
    """(image, mask PNG) pairs: the mask non-zero on ``class_id``, as a user would draw it."""
    from PIL import Image

    from protoseg.data.labels import read_label_map

    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for d in records:
        mask = folder / (Path(d["file_name"]).stem + "_mask.png")
        if not mask.exists():
            Image.fromarray(((read_label_map(d["sem_seg_file_name"]) == class_id) * 255).astype(np.uint8)).save(mask)
        pairs.append((d["file_name"], str(mask)))
    return pairs


def run_cfg(run) -> object:
    """The config a finished run trained with (its OUTPUT_DIR/config.yaml)."""
    return load_config(run.run_dir / "config.yaml")


def changed_share(preds_a: Sequence[np.ndarray], preds_b: Sequence[np.ndarray], classes: int) -> float:
    """Share (%) of the pixels where model b predicts an old class (< ``classes``) different from
    model a's prediction, among those where both predict an old class."""
    same = total = 0
    for a, b in zip(preds_a, preds_b):
        both = (a < classes) & (b < classes)
        total += both.sum()
        same += (a[both] == b[both]).sum()
    return 100.0 * (1 - same / max(total, 1))


def measure_seed(runs_by_variant: Dict, head: str, seed: int, shots: Sequence[int], out_dir: Path, log) -> Dict:
    """Every number of one (head, seed): unknown detection of the held-out model, and per shot
    count the added class's IoU, the others' mIoU and its change, the normalisation's effect."""
    from protoseg.data.class_names import dataset_class_names
    from protoseg.new_class import add_class, write_added_class

    held, full = runs_by_variant[f"{head}, last class held out"][seed], runs_by_variant[f"{head}, all classes"][seed]
    cfg_held, cfg_full = run_cfg(held), run_cfg(full)
    val, train = cfg_held.DATASETS.TEST[0], cfg_held.DATASETS.TRAIN[0]
    C = cfg_full.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    new_id = C - 1
    base = evaluate(cfg_held, str(held.run_dir / "model_final.pth"), val, C, scores=True)
    others_before = float(np.nanmean(class_ious(base["confusion"], [new_id])))
    full_res = evaluate(cfg_full, str(full.run_dir / "model_final.pth"), val, C)
    full_iou = class_ious(full_res["confusion"])
    row = {"unknown": unknown_metrics(base, new_id), "others_before": others_before,
           "full_new_iou": float(full_iou[new_id]),
           "full_others": float(np.nanmean(class_ious(full_res["confusion"], [new_id])[:new_id])),
           "shots": {}}
    order = support_order(train, new_id, seed)
    name = dataset_class_names(val)[new_id]
    for n in shots:
        if len(order) < n:
            log(f"  {head} seed {seed}: only {len(order)} training images show class {new_id}; {n} shots skipped")
            continue
        pairs = write_masks(order[:n], new_id, out_dir / "support" / f"seed{seed}")
        addition = add_class(cfg_held, str(held.run_dir / "model_final.pth"), pairs, name, seed=seed)
        folder = out_dir / "added" / f"{head.lower()}_seed{seed}_shots{n}"
        weights, config = write_added_class(cfg_held, addition, folder)
        res = evaluate(load_config(config), str(weights), val, C)
        iou = class_ious(res["confusion"], [])
        others = float(np.nanmean(class_ious(res["confusion"], [new_id])[:new_id]))
        row["shots"][n] = {"new_iou": float(iou[new_id]), "others": float(others),
                           "others_change": float(others - others_before),
                           "pred_changed": changed_share(base["preds"], res["preds"], new_id),
                           "support_changed": 100 * addition.old_argmax_changed}
    return row


def _pm(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return ""
    mean, std = _mean_std(values)
    return f"{mean:.2f} +- {std:.2f}"


def tabulate(results: Dict[str, Dict[int, Dict]], shots: Sequence[int]) -> Tuple[List[Dict], List[Dict]]:
    """(adding rows, unknown-detection rows), means +- std over seeds."""
    adding, unknown = [], []
    for head, per_seed in results.items():
        seeds = sorted(per_seed)
        adding.append({"head": head, "model": "trained with every class",
                       "new class IoU": _pm([per_seed[s]["full_new_iou"] for s in seeds]),
                       "others mIoU": _pm([per_seed[s]["full_others"] for s in seeds]),
                       "others change": "", "seeds": len(seeds)})
        adding.append({"head": head, "model": "class held out", "new class IoU": "",
                       "others mIoU": _pm([per_seed[s]["others_before"] for s in seeds]),
                       "others change": "", "seeds": len(seeds)})
        for n in shots:
            got = [per_seed[s]["shots"][n] for s in seeds if n in per_seed[s]["shots"]]
            if not got:
                continue
            adding.append({"head": head, "model": f"added from {n} image(s)",
                           "new class IoU": _pm([g["new_iou"] for g in got]),
                           "others mIoU": _pm([g["others"] for g in got]),
                           "others change": _pm([g["others_change"] for g in got]),
                           "old class changed (val %)": _pm([g["pred_changed"] for g in got]),
                           "old class changed (support %)": _pm([g["support_changed"] for g in got]),
                           "seeds": len(got)})
        names = dict.fromkeys(k for s in seeds for k in per_seed[s]["unknown"])
        for name in names:
            got = [per_seed[s]["unknown"][name] for s in seeds if name in per_seed[s]["unknown"]]
            unknown.append({"head": head, "score": name, **{m: _pm([g[m] for g in got]) for m in ("AUROC", "AP", "FPR95")},
                            "seeds": len(got)})
    return adding, unknown


def write_table(rows: List[Dict], path: Path, title: str, note: str) -> None:
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "seeds"] + ["seeds"]
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {title}", "", note, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--shots", type=int, nargs="+", default=list(SHOTS), help="support images per addition")
    p.add_argument("--quick", action="store_true", help="1 seed, 4 iterations, tiny data (smoke test)")
    p.add_argument("--iters", type=int, default=None, help="SOLVER.MAX_ITER of every training")
    p.add_argument("--output-dir", type=Path, default=Path("output/study"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    from protoseg.data.datasets import register_toy_scenes

    args = parse_args(argv)
    opts, seeds, iters, shots = [], args.seeds, args.iters, list(args.shots)
    if args.quick:
        opts, seeds, iters, shots = list(QUICK_OPTS), 1, iters or QUICK_ITERS, [1, 2]
    config_file = TOY_STUDY_CONFIG.resolve()
    base_cfg = load_config(config_file, opts + (["SOLVER.MAX_ITER", iters] if iters else []))
    ctx = StudyContext(base_cfg, toy=True, quick=args.quick, iters=iters)
    study = open_world_study(ctx)
    options = RunnerOptions(output_dir=args.output_dir.resolve(), config_file=config_file, seeds=seeds,
                            iters=iters, opts=opts, jobs=args.jobs, threads=args.threads)
    t0 = time.perf_counter()
    run_study(study, options)
    dataset = study.variants[0].dataset
    register_toy_scenes(options.output_dir / "data" / _prefix(dataset), prefix=_prefix(dataset))
    runs, _ = plan_runs(study, options)
    by_variant: Dict[str, Dict[int, object]] = {}
    for r in runs:
        by_variant.setdefault(r.variant.name, {})[r.seed] = r
    out_dir = options.output_dir / "open_world"
    results = {head: {s: measure_seed(by_variant, head, s, shots, out_dir, print) for s in range(seeds)}
               for head in HEADS}
    (out_dir / "open_world.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    adding, unknown = tabulate(results, shots)
    write_table(adding, out_dir / "open_world", "Adding a held-out class from a few images",
                "IoU / mIoU in % on the validation split, mean +- std over seeds. Others: the classes other than "
                "the added one, its pixels ignored; change: paired (same seed) difference to the held-out model.")
    write_table(unknown, out_dir / "unknown", "Unknown detection of a held-out class",
                "The held-out class's validation pixels against the other labelled pixels, %, mean +- std over seeds.")
    print((out_dir / "open_world.md").read_text())
    print((out_dir / "unknown.md").read_text())
    print(f"open_world: {time.perf_counter() - t0:.0f} s; tables in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
