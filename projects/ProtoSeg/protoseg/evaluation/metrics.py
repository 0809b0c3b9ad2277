"""The semantic segmentation metrics of a confusion matrix, with the standard definitions of
mmsegmentation (``intersect_and_union`` / ``total_area_to_metrics``) and cityscapesScripts:

* ``IoU-<class>`` = TP / (TP + FP + FN), percent, for every class with a non-empty union (a class
  predicted but absent from the ground truth has IoU 0); NaN for a class absent from both the
  ground truth and the predictions;
* ``mIoU``: the mean of the defined per-class IoUs (NaN ones left out);
* ``fwIoU``: the per-class IoUs weighted by the classes' share of the ground-truth pixels;
* ``ACC-<class>`` = TP / (TP + FN), NaN for a class absent from the ground truth; ``mACC`` their
  mean (NaN ones left out); ``pACC``: correct pixels / ground-truth pixels.

Ignored pixels do not count. Detectron2's ``SemSegEvaluator.evaluate`` computes the same keys, but
its versions disagree on a class that is predicted and absent from the ground truth: v0.6 reports
its IoU as NaN and counts it as 0 in the mIoU, GitHub main leaves it out of the mIoU. The
evaluator computes its metrics here, so they do not depend on the installed Detectron2.
"""
from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["class_ratios", "segmentation_metrics"]


def class_ratios(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """(C,) ``numerator / denominator`` where the denominator is > 0, NaN elsewhere."""
    out = np.full(denominator.shape, np.nan, dtype=np.float64)
    defined = denominator > 0
    out[defined] = numerator[defined] / denominator[defined]
    return out


def _defined_mean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries of ``values`` (NaN when there is none)."""
    defined = ~np.isnan(values)
    return float(np.sum(values[defined]) / np.sum(defined)) if defined.any() else float("nan")


def _counts(conf_matrix: np.ndarray, num_classes: int):
    """(TP, ground-truth pixels, union), each (C,) float64, of a ``[pred, true]`` matrix whose
    first ``num_classes`` rows and columns are the classes (an extra last column, the ignored
    pixels, is left out)."""
    m = np.asarray(conf_matrix, dtype=np.float64)[:num_classes, :num_classes]
    tp = np.diagonal(m).copy()
    pos_gt, pos_pred = m.sum(axis=0), m.sum(axis=1)
    return tp, pos_gt, pos_gt + pos_pred - tp


def segmentation_metrics(
    conf_matrix: np.ndarray, class_names: Sequence[str], boundary_conf_matrix: Optional[np.ndarray] = None
) -> Dict[str, float]:
    """The metrics of the module docstring, in percent, with the keys and order of Detectron2's
    ``SemSegEvaluator``: ``mIoU``, ``fwIoU``, ``IoU-<class>``..., ``mACC``, ``pACC``, ``ACC-<class>``....

    Args:
        conf_matrix: (C+1, C+1) pixel counts ``[pred, true]`` as ``SemSegEvaluator`` keeps them
            (the last column: ignored pixels, the last row: zero).
        class_names: the C class names, in id order.
        boundary_conf_matrix: the same counts over the maps' boundaries (Detectron2 main's
            boundary IoU); when given, ``BoundaryIoU-<class>`` (NaN where its union is empty) and
            ``min(IoU, B-Iou)-<class>`` (NaN where either is) follow each ``IoU-<class>``.
    """
    c = len(class_names)
    tp, pos_gt, union = _counts(conf_matrix, c)
    iou, acc = class_ratios(tp, union), class_ratios(tp, pos_gt)
    total = pos_gt.sum()
    defined = ~np.isnan(iou)
    fw_iou = float(np.sum(iou[defined] * (pos_gt[defined] / total))) if total > 0 else float("nan")
    b_iou = None
    if boundary_conf_matrix is not None:
        b_tp, _, b_union = _counts(boundary_conf_matrix, c)
        b_iou = class_ratios(b_tp, b_union)

    res = {}
    res["mIoU"] = 100 * _defined_mean(iou)
    res["fwIoU"] = 100 * fw_iou
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
        if b_iou is not None:
            res[f"BoundaryIoU-{name}"] = 100 * float(b_iou[i])
            res[f"min(IoU, B-Iou)-{name}"] = 100 * float(np.minimum(iou[i], b_iou[i]))
    res["mACC"] = 100 * _defined_mean(acc)
    res["pACC"] = 100 * float(tp.sum() / total) if total > 0 else float("nan")
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    return res  # plain floats: the values are logged and written as JSON
