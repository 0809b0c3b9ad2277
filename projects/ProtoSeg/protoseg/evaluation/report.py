"""Reports of a semantic segmentation evaluation: per-class IoU table (printed, CSV, bar chart)
and the most confused class pairs of the confusion matrix (printed, CSV)."""
import csv
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tabulate import tabulate

__all__ = [
    "SUMMARY_METRICS",
    "format_summary_metrics",
    "per_class_rows",
    "format_per_class_table",
    "save_per_class_csv",
    "plot_per_class_iou",
    "confused_pairs",
    "format_confused_pairs_table",
    "save_confused_pairs_csv",
]


#: the whole-dataset metrics of Detectron2's ``SemSegEvaluator`` (percent)
SUMMARY_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")


def format_summary_metrics(results: Dict[str, float]) -> str:
    """``"mIoU 41.23  fwIoU 70.01  mACC 52.40  pACC 80.12"``: the :data:`SUMMARY_METRICS` of the
    flat ``results["sem_seg"]`` dict as plain numbers (``np.float64`` or not; absent ones left out)."""
    return "  ".join(f"{k} {_fmt(float(results[k]))}" for k in SUMMARY_METRICS if k in results)


def per_class_rows(results: Dict[str, float], class_names: Sequence[str]) -> List[Dict]:
    """Rows {class, IoU, ACC} from the flat ``results["sem_seg"]`` dict of ``SemSegEvaluator``
    (keys looked up by name: ``IoU-<class>``, ``ACC-<class>``; IoU NaN for a class absent from both
    ground truth and predictions, ACC NaN for one absent from the ground truth)."""
    nan = float("nan")
    return [
        {"class": n, "IoU": results.get(f"IoU-{n}", nan), "ACC": results.get(f"ACC-{n}", nan)}
        for n in class_names
    ]


def format_per_class_table(results: Dict[str, float], class_names: Sequence[str]) -> str:
    rows = per_class_rows(results, class_names)
    body = [[r["class"], _fmt(r["IoU"]), _fmt(r["ACC"])] for r in rows]
    body.append(["mean", _fmt(results.get("mIoU", float("nan"))), _fmt(results.get("mACC", float("nan")))])
    return tabulate(body, headers=["class", "IoU", "Acc"], tablefmt="pipe")


def save_per_class_csv(results: Dict[str, float], class_names: Sequence[str], path: Path) -> None:
    """``class,IoU,ACC`` and one row per class (percent; ``nan`` where :func:`per_class_rows` has NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "IoU", "ACC"])
        writer.writeheader()
        writer.writerows(per_class_rows(results, class_names))


def plot_per_class_iou(
    results: Dict[str, float],
    class_names: Sequence[str],
    path: Path,
    *,
    title: str = "",
    max_bars: int = 200,
    extremes: int = 50,
) -> None:
    """Horizontal bar chart of the per-class IoU, sorted from best to worst, with the mIoU as a
    dashed line. Up to ``max_bars`` classes are all shown (the figure grows with them, ~16 px a
    bar); beyond, the best and the worst ``extremes`` classes side by side. Classes absent from
    both ground truth and predictions (IoU NaN) are left out and counted in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [(r["class"], r["IoU"]) for r in per_class_rows(results, class_names)]
    present = sorted(((n, v) for n, v in rows if not math.isnan(v)), key=lambda r: -r[1])
    absent = len(rows) - len(present)
    miou = results.get("mIoU", float("nan"))
    head = f"{title}: " if title else ""
    head += f"per-class IoU, {len(rows)} classes, mIoU {_fmt(miou)}"
    if absent:
        head += f"\n({absent} in neither ground truth nor predictions, not shown)"

    if len(present) <= max_bars:
        panels = [("", present)]
    else:
        k = min(extremes, len(present) // 2)
        panels = [(f"best {k}", present[:k]), (f"worst {k}", present[-k:])]
    n = max(1, max(len(p) for _, p in panels))
    longest = max([len(str(c)) for c, _ in present] + [4])
    panel_w = 3.0 + 0.07 * min(longest, 40)
    fig = Figure(figsize=(max(6.5, panel_w * len(panels)), 1.0 + 0.16 * max(n, 8)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(head, fontsize=9)
    for i, (name, bars) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        values = [v for _, v in bars]
        ys = np.arange(len(bars))
        colors = [(0.85 * (1 - v / 100), 0.25 + 0.5 * v / 100, 0.35) for v in np.clip(values, 0, 100)]
        ax.barh(ys, values, color=colors, height=0.8)
        for y, v in zip(ys, values):  # inside the bar's end, or after a short bar
            inside = v >= 15
            ax.text(v - 1 if inside else v + 1, y, f"{v:.1f}", va="center", ha="right" if inside else "left",
                    fontsize=7, color="white" if inside else "black")
        ax.set_yticks(ys)
        ax.set_yticklabels([str(c)[:40] for c, _ in bars], fontsize=7)
        ax.set_ylim(len(bars) - 0.5 if bars else 0.5, -0.5)
        ax.set_xlim(0, 105)
        ax.set_xlabel("IoU (%)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if not math.isnan(miou):
            ax.axvline(miou, color="0.3", linestyle="--", linewidth=0.8, label=f"mIoU {miou:.1f}")
            ax.legend(loc="lower right", fontsize=7, framealpha=0.9)
        if name:
            ax.set_title(name, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def confused_pairs(conf_matrix: np.ndarray, class_names: Sequence[str], top_n: int = 20) -> List[Dict]:
    """The ``top_n`` largest off-diagonal entries of a confusion matrix laid out as Detectron2's
    ``SemSegEvaluator`` keeps it: ``conf_matrix[pred, true]``, (C+1) x (C+1), the last column
    counting the ignored pixels (left out here).

    Rows {true_class, predicted_class, pixels, share_of_true_class}, most pixels first; the share
    is of the true class's (non-ignored) pixels, 0..1. Pairs with no pixel are left out."""
    c = len(class_names)
    m = np.asarray(conf_matrix, dtype=np.int64)[:c, :c].copy()
    true_pixels = m.sum(axis=0)
    np.fill_diagonal(m, 0)
    pred_idx, true_idx = np.nonzero(m)
    pixels = m[pred_idx, true_idx]
    order = np.lexsort((pred_idx, true_idx, -pixels))[:top_n]
    return [
        {
            "true_class": class_names[true_idx[i]],
            "predicted_class": class_names[pred_idx[i]],
            "pixels": int(pixels[i]),
            "share_of_true_class": float(pixels[i] / true_pixels[true_idx[i]]),
        }
        for i in order
    ]


def format_confused_pairs_table(rows: List[Dict]) -> str:
    body = [[r["true_class"], r["predicted_class"], r["pixels"], f"{100 * r['share_of_true_class']:.2f}"]
            for r in rows]
    return tabulate(body, headers=["true class", "predicted as", "pixels", "% of true class"], tablefmt="pipe")


def save_confused_pairs_csv(rows: List[Dict], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["true_class", "predicted_class", "pixels", "share_of_true_class"])
        writer.writeheader()
        writer.writerows({**r, "share_of_true_class": f"{r['share_of_true_class']:.6f}"} for r in rows)


def _fmt(value: Optional[float]) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.2f}"
