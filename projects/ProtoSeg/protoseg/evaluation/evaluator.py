"""Detectron2's ``SemSegEvaluator`` that also writes a report of each evaluation."""
import logging
import os
from collections import Counter
from typing import Optional

import numpy as np

from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm

from .report import (
    confused_pairs,
    format_confused_pairs_table,
    plot_per_class_iou,
    save_confused_pairs_csv,
    save_per_class_csv,
)

__all__ = ["SemSegReportEvaluator", "REPORT_FILES"]

logger = logging.getLogger("protoseg")

#: what :class:`SemSegReportEvaluator` writes into its ``report_dir``
REPORT_FILES = ("per_class_iou.csv", "per_class_iou.png", "confusion_matrix.npy", "confused_pairs.csv")


class SemSegReportEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (metrics unchanged) that, after its ``evaluate()``, writes into
    ``report_dir`` (main process only):

    * ``per_class_iou.csv``: ``class,IoU,ACC`` and one row per class (percent, ``nan`` for a
      class absent from the ground truth);
    * ``per_class_iou.png``: the per-class IoU as a sorted bar chart;
    * ``confusion_matrix.npy``: int64 (C+1) x (C+1), as Detectron2 keeps it: ``cm[pred, true]``,
      the last column counts the ignored pixels by predicted class (the last row is zero);
    * ``confused_pairs.csv``: the ``top_confusions`` most confused (true, predicted) class pairs,
      also logged.

    Metrics are looked up in Detectron2's result by name (``IoU-<class>``, ``ACC-<class>``, ``mIoU``),
    so extra keys (GitHub main's boundary IoU) do no harm.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        report_dir: Optional[str] = None,
        top_confusions: int = 20,
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._report_dir = report_dir
        self._top_confusions = top_confusions
        duplicates = [n for n, k in Counter(self._class_names).items() if k > 1]
        if duplicates:
            logger.warning("%s: repeated class names %s share one entry in the metrics", dataset_name, duplicates[:5])

    def evaluate(self):
        results = super().evaluate()
        if results is None or not self._report_dir or not comm.is_main_process():
            return results
        if "sem_seg" in results:
            self.write_report(results["sem_seg"])
        return results

    def write_report(self, metrics):
        """The report files of ``metrics`` (``results["sem_seg"]``) and ``self._conf_matrix``."""
        out = self._report_dir
        os.makedirs(out, exist_ok=True)
        names = list(self._class_names)
        save_per_class_csv(metrics, names, os.path.join(out, "per_class_iou.csv"))
        plot_per_class_iou(metrics, names, os.path.join(out, "per_class_iou.png"), title=self._dataset_name)
        conf = np.asarray(self._conf_matrix, dtype=np.int64)
        np.save(os.path.join(out, "confusion_matrix.npy"), conf)
        pairs = confused_pairs(conf, names, self._top_confusions)
        save_confused_pairs_csv(pairs, os.path.join(out, "confused_pairs.csv"))
        if pairs:
            logger.info("Most confused classes on %s:\n%s", self._dataset_name, format_confused_pairs_table(pairs))
        logger.info("Evaluation report of %s written to %s (%s)", self._dataset_name, out, ", ".join(REPORT_FILES))
