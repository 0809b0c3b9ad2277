"""Detectron2's ``SemSegEvaluator`` made to scale (16-bit ground truth, no per-image predictions
kept unless they are saved), with the standard metrics whatever the Detectron2 version, that also
writes a report of each evaluation."""
import itertools
import json
import logging
import os
from collections import Counter, OrderedDict
from typing import Optional, Sequence

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.class_names import check_names_agree
from ..data.labels import LabelMapError, ignore_held_out, read_label_map, reduce_zero_label
from ..data.labels import REDUCE_ZERO_LABEL_KEY, check_label_range
from .report import (
    confused_pairs,
    format_confused_pairs_table,
    format_summary_metrics,
    plot_per_class_iou,
    save_confused_pairs_csv,
    save_per_class_csv,
)
from .metrics import segmentation_metrics

__all__ = ["SemSegReportEvaluator", "REPORT_FILES"]

logger = logging.getLogger("protoseg")

#: what :class:`SemSegReportEvaluator` writes into its ``report_dir``
REPORT_FILES = ("per_class_iou.csv", "per_class_iou.png", "confusion_matrix.npy", "confused_pairs.csv")


def _confusion(pred: np.ndarray, gt: np.ndarray, size: int) -> np.ndarray:
    """int64 (size, size) counts ``[pred, gt]`` of two label maps of the same shape."""
    # int64 before the product: NumPy 2 keeps uint8 (boundary maps) uint8, and would wrap
    counts = np.bincount(size * pred.reshape(-1).astype(np.int64, copy=False) + gt.reshape(-1), minlength=size * size)
    return counts.reshape(size, size).astype(np.int64, copy=False)


class SemSegReportEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` that streams, computes the standard metrics itself, and reports.

    :meth:`process` differs from Detectron2 v0.6's in what it reads and keeps: the ground truth is
    read with :func:`read_label_map` (8- or 16-bit, e.g. ADE20K-Full's 847 ids with ignore 65535;
    Detectron2 reads it with PIL as is), with :func:`reduce_zero_label` where the dataset dict has
    ``"sem_seg_reduce_zero_label": True``; an id that is neither a class nor the dataset's
    ``ignore_label`` is an error naming the file (Detectron2's bincount would silently count it in
    another cell, or fail); the per-image RLE encodings (``_predictions``) are kept only when
    ``output_dir`` is given (they are written to ``sem_seg_predictions.json``), so memory stays flat
    over the dataset otherwise. The confusion matrix is int64 (C+1) x (C+1), predictions int64.

    After its ``evaluate()``, it writes into ``report_dir`` (main process only):

    * ``per_class_iou.csv``: ``class,IoU,ACC`` and one row per class (percent; IoU ``nan`` for a
      class absent from both ground truth and predictions, ACC ``nan`` for one absent from the
      ground truth);
    * ``per_class_iou.png``: the per-class IoU as a sorted bar chart;
    * ``confusion_matrix.npy``: int64 (C+1) x (C+1), as Detectron2 keeps it: ``cm[pred, true]``,
      the last column counts the ignored pixels by predicted class (the last row is zero);
    * ``confused_pairs.csv``: the ``top_confusions`` most confused (true, predicted) class pairs,
      also logged.

    :meth:`evaluate` computes the metrics from the confusion matrix with
    :func:`~.metrics.segmentation_metrics` (mmsegmentation's and cityscapesScripts' definitions),
    not with the base class's ``evaluate``, whose mIoU differs between Detectron2 versions when a
    class is predicted but absent from the ground truth; the keys are Detectron2's (``mIoU``,
    ``fwIoU``, ``mACC``, ``pACC``, ``IoU-<class>``, ``ACC-<class>``). Detectron2 after v0.6 (GitHub
    main) also has boundary IoU (``BoundaryIoU-<class>``, ``min(IoU, B-Iou)-<class>``) from a
    second confusion matrix of the maps' boundaries: :meth:`process` fills it as main's does, and
    :meth:`evaluate` reports it, whenever the base class has it.

    ``class_names`` (:func:`~protoseg.data.class_names.model_class_names`) are the classes of the
    model when they are not the dataset's: more (a class added with tools/add_class.py, absent
    from or named by the dataset) or fewer (``held_out_classes``, the dataset's last ids, whose
    pixels are ignored). Where both name an id, the names must agree.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        report_dir: Optional[str] = None,
        top_confusions: int = 20,
        class_names: Optional[Sequence[str]] = None,
        held_out_classes: int = 0,
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        if class_names is not None:
            check_names_agree(class_names, dataset_name)
            self._class_names = list(class_names)
            self._num_classes = len(self._class_names)
        self._held_out_classes = held_out_classes
        self._reduce_zero_label = {
            record["file_name"]: bool(record.get(REDUCE_ZERO_LABEL_KEY, False))
            for record in DatasetCatalog.get(dataset_name)
        }
        self._report_dir = report_dir
        self._top_confusions = top_confusions
        duplicates = [n for n, k in Counter(self._class_names).items() if k > 1]
        if duplicates:
            logger.warning("%s: repeated class names %s share one entry in the metrics", dataset_name, duplicates[:5])

    def read_ground_truth(self, file_name: str) -> np.ndarray:
        """The (H, W) int64 ground truth of input ``file_name``, ignore mapped to ``num_classes``."""
        gt_file = self.input_file_to_gt_file[file_name]
        gt = read_label_map(gt_file)
        if self._reduce_zero_label.get(file_name, False):
            gt = reduce_zero_label(gt, self._ignore_label)
        check_label_range(gt, self._num_classes + self._held_out_classes, self._ignore_label, gt_file)
        gt = ignore_held_out(gt, self._num_classes, self._held_out_classes, self._ignore_label)
        gt[gt == self._ignore_label] = self._num_classes
        return gt

    @property
    def computes_boundary_iou(self) -> bool:
        """Whether the base class reports boundary IoU (Detectron2 after v0.6: ``BoundaryIoU-<class>``
        from its ``_b_conf_matrix``), which :meth:`process` must then fill as it does."""
        return bool(getattr(self, "_compute_boundary_iou", False))

    def process(self, inputs, outputs):
        """
        Args:
            inputs: model inputs, each with "file_name".
            outputs: each with "sem_seg": (C, H, W) scores at the ground truth's size.
        """
        size = self._num_classes + 1
        for input, output in zip(inputs, outputs):
            scores = output["sem_seg"]
            if scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"{input['file_name']}: the model gives {scores.shape[0]} class scores, the dataset "
                    f"{self._dataset_name} has {self._num_classes} classes"
                )
            pred = scores.argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64, copy=False)
            gt = self.read_ground_truth(input["file_name"])
            if pred.shape != gt.shape:
                raise LabelMapError(
                    f"prediction of {input['file_name']} is {pred.shape} (H, W) but its ground truth "
                    f"{self.input_file_to_gt_file[input['file_name']]} is {gt.shape}"
                )
            self._conf_matrix += _confusion(pred, gt, size)
            if self.computes_boundary_iou:
                # Detectron2 main's boundary IoU, as its process() computes it (uint8 masks: it is
                # off for 255 classes or more)
                boundary = self._mask_to_boundary
                self._b_conf_matrix += _confusion(boundary(pred.astype(np.uint8)), boundary(gt.astype(np.uint8)), size)
            if self._output_dir:
                self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def evaluate(self):
        """``{"sem_seg": metrics}`` (:func:`~.metrics.segmentation_metrics` of the confusion matrix
        summed over the processes) on the main process, None on the others. As Detectron2's: with
        ``output_dir``, ``sem_seg_predictions.json`` and ``sem_seg_evaluation.pth`` are written;
        with ``report_dir``, the report files."""
        if not self._gather():
            return None
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_predictions.json"), "w") as f:
                f.write(json.dumps(self._predictions))
        boundary = self._b_conf_matrix if self.computes_boundary_iou else None
        metrics = segmentation_metrics(self._conf_matrix, self._class_names, boundary)
        if self._output_dir:
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_evaluation.pth"), "wb") as f:
                torch.save(metrics, f)
        results = OrderedDict(sem_seg=metrics)
        logger.info("Metrics of %s: %s", self._dataset_name, format_summary_metrics(metrics))
        if self._report_dir and comm.is_main_process():
            self.write_report(metrics)
        return results

    def _gather(self) -> bool:
        """Sum the confusion matrices (and collect the kept predictions) of all processes into
        the main one; False on the other processes."""
        if not self._distributed:
            return True
        comm.synchronize()
        matrices = [name for name in ("_conf_matrix", "_b_conf_matrix") if hasattr(self, name)]
        gathered = {name: comm.all_gather(getattr(self, name)) for name in matrices}
        predictions = comm.all_gather(self._predictions)
        if not comm.is_main_process():
            return False
        for name, parts in gathered.items():
            setattr(self, name, np.sum(parts, axis=0, dtype=np.int64))
        self._predictions = list(itertools.chain.from_iterable(predictions))
        return True

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
