"""Per-class IoU table of a semantic segmentation evaluation: printed and saved as CSV."""
import csv
import math
from pathlib import Path
from typing import Dict, List, Sequence

from tabulate import tabulate

__all__ = ["per_class_rows", "format_per_class_table", "save_per_class_csv"]


def per_class_rows(results: Dict[str, float], class_names: Sequence[str]) -> List[Dict]:
    """Rows {class, IoU, ACC} from the flat ``results["sem_seg"]`` dict of ``SemSegEvaluator``
    (keys looked up by name: ``IoU-<class>``, ``ACC-<class>``; NaN for a class absent from both
    ground truth and prediction)."""
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "IoU", "ACC"])
        writer.writeheader()
        writer.writerows(per_class_rows(results, class_names))


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.2f}"
