"""Checks of semantic-segmentation samples: every problem a file can have, found before training
turns it into a CUDA device-side assert or a silently wrong prototype index.

- :func:`check_dataset_dict` inspects one dataset dict on disk and returns all its problems
  (``tools/check_dataset.py`` runs it over a whole registered dataset).
- :func:`check_sem_seg_sample` is for the training mapper: given the image and label map it has
  already read (after ``reduce_zero_label``), it raises :class:`~protoseg.data.labels.LabelMapError`
  naming the file and the value at fault.
- :func:`check_dataset_summary` compares what a scan saw with the metadata (class count).
- :func:`scan_dataset` does all of it for a registered dataset name; :func:`inspect_dataset` also
  says how the images will be read (16-bit images scaled to 8 bits, EXIF orientations applied).
"""
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog

from .image_io import ImageFileInfo, ImageReadError, UnsupportedImageError, inspect_image, orientation_hint
from .labels import REDUCE_ZERO_LABEL_KEY
from .labels import LabelMapError, check_label_values, read_label_map, reduce_zero_label

__all__ = [
    "DatasetProblem",
    "DatasetScan",
    "check_dataset_dict",
    "check_sem_seg_sample",
    "check_dataset_summary",
    "scan_dataset",
    "inspect_dataset",
]


@dataclass(frozen=True)
class DatasetProblem:
    """One problem: ``kind`` (a short tag, e.g. "invalid_label_ids"), the file (or dataset name)
    at fault, and a message naming the value."""

    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.path}: {self.message}"


@dataclass
class DatasetScan:
    """A scan of a dataset: its ``problems`` and ``reading``, how its images are read: a
    description (e.g. "16-bit (mode I;16): scaled to 8-bit by ...") -> (image count, an example file)."""

    problems: List[DatasetProblem]
    reading: Dict[str, Tuple[int, str]] = field(default_factory=dict)

    def reading_lines(self) -> List[str]:
        """One line per way of reading: "N image(s) are <description> (e.g. <file>)"."""
        return [f"{n} image(s) are {what} (e.g. {example})" for what, (n, example) in sorted(self.reading.items())]


def _label_hint(label_path: str) -> str:
    if label_path.endswith("_labelIds.png"):
        return (" This is a Cityscapes labelIds map; train on *_gtFine_labelTrainIds.png written by "
                "datasets/prepare_cityscapes_sem_seg.py (or cityscapesScripts' createTrainIdLabelImgs.py).")
    return ""


def check_sem_seg_sample(
    image_hw: Tuple[int, int],
    sem_seg: np.ndarray,
    dataset_dict: Dict,
    num_classes: int,
    ignore_label: int,
) -> None:
    """For a mapper that has read a sample: raise LabelMapError naming ``sem_seg_file_name`` if the
    label map's (H, W) differs from ``image_hw`` or a pixel is neither a class id in
    ``[0, num_classes)`` nor ``ignore_label``.

    Args:
        image_hw: (H, W) of the decoded image.
        sem_seg: (H, W) integer ids, after ``reduce_zero_label`` when the dict asks for it.
        dataset_dict: with ``sem_seg_file_name`` (and ``file_name``), used in the message.
    """
    source, image_file = dataset_dict.get("sem_seg_file_name"), dataset_dict.get("file_name")
    if tuple(sem_seg.shape) != tuple(image_hw):
        hint = orientation_hint(image_file, image_hw, sem_seg.shape) if image_file else ""
        raise LabelMapError(
            f"label map {source} is {sem_seg.shape[1]}x{sem_seg.shape[0]} (WxH) but image "
            f"{image_file} is {image_hw[1]}x{image_hw[0]}{hint}"
        )
    try:
        check_label_values(sem_seg, num_classes, ignore_label, source=source)
    except LabelMapError as e:
        raise LabelMapError(str(e) + _label_hint(str(source))) from None


def check_dataset_dict(
    dataset_dict: Dict, num_classes: int, ignore_label: int
) -> Tuple[List[DatasetProblem], Optional[np.ndarray]]:
    """All problems of one dataset dict on disk: image missing / unreadable / truncated /
    unsupported (read as the mapper reads it, :func:`~protoseg.data.image_io.read_image`), label
    missing / unreadable / not single-channel, H x W mismatch (with the EXIF orientation named when
    it explains the mismatch), ids outside ``[0, num_classes)`` and ``ignore_label`` (after
    ``reduce_zero_label`` when ``"sem_seg_reduce_zero_label"`` is set).

    Returns ``(problems, ids)``: ``ids`` are the distinct label values (after the shift; None if
    the label could not be read), for the dataset-level summary.
    """
    problems, ids, _ = _check_sample(dataset_dict, num_classes, ignore_label)
    return problems, ids


def _check_image(image_file: str) -> Tuple[List[DatasetProblem], Optional[ImageFileInfo]]:
    """The problems of an image file and, when it can be read, what reading does to it."""
    if not Path(image_file).is_file():
        return [DatasetProblem("missing_image", image_file, "file does not exist")], None
    try:
        return [], inspect_image(image_file)
    except UnsupportedImageError as e:
        return [DatasetProblem("unsupported_image", image_file, e.reason)], None
    except ImageReadError as e:
        kind = "truncated_image" if "truncated" in str(e).lower() else "unreadable_image"
        return [DatasetProblem(kind, image_file, e.reason)], None


def _check_sample(
    dataset_dict: Dict, num_classes: int, ignore_label: int
) -> Tuple[List[DatasetProblem], Optional[np.ndarray], List[str]]:
    """:func:`check_dataset_dict` plus the ways its image is read (:class:`ImageFileInfo`'s
    ``conversion`` and ``rotation`` lines)."""
    image_file, label_file = str(dataset_dict["file_name"]), str(dataset_dict["sem_seg_file_name"])
    problems, info = _check_image(image_file)
    reading = [line for line in (info.conversion, info.rotation) if line] if info is not None else []
    try:
        labels = read_label_map(label_file)
    except FileNotFoundError:
        problems.append(DatasetProblem("missing_label", label_file, "file does not exist"))
        return problems, None, reading
    except LabelMapError as e:
        problems.append(DatasetProblem("unreadable_label", label_file, str(e)))
        return problems, None, reading
    if dataset_dict.get(REDUCE_ZERO_LABEL_KEY, False):
        labels = reduce_zero_label(labels, ignore_label)
    if info is not None and labels.shape != info.read_hw:
        (h, w), hint = info.read_hw, orientation_hint(image_file, info.read_hw, labels.shape, info.orientation)
        problems.append(DatasetProblem(
            "size_mismatch", label_file,
            f"label is {labels.shape[1]}x{labels.shape[0]} (WxH) but image {image_file} is {w}x{h}{hint}",
        ))
    try:
        check_label_values(labels, num_classes, ignore_label, source=label_file)
    except LabelMapError as e:
        problems.append(DatasetProblem("invalid_label_ids", label_file, str(e) + _label_hint(label_file)))
    return problems, np.unique(labels), reading


def check_dataset_summary(
    name: str, ids_per_file: Sequence[Optional[np.ndarray]], stuff_classes: Sequence[str], ignore_label: int
) -> List[DatasetProblem]:
    """Dataset-level problems: an empty split, and label ids beyond the class list
    (``len(stuff_classes)``), reported once with the largest id and how many files use such ids."""
    if not ids_per_file:
        return [DatasetProblem("empty_split", name, "the dataset has no sample")]
    over = [ids[(ids >= len(stuff_classes)) & (ids != ignore_label)] for ids in ids_per_file if ids is not None]
    over = [o for o in over if o.size]
    if not over:
        return []
    top = int(max(o.max() for o in over))
    return [DatasetProblem(
        "class_list_mismatch", name,
        f"{len(over)} label map(s) use ids >= {len(stuff_classes)} (up to {top}) but stuff_classes has "
        f"{len(stuff_classes)} entries (ignore_label {ignore_label}): the class list and the labels disagree",
    )]


def scan_dataset(name: str, num_workers: int = 0) -> List[DatasetProblem]:
    """Every problem of the registered dataset ``name`` (:func:`inspect_dataset`'s ``problems``)."""
    return inspect_dataset(name, num_workers).problems


def inspect_dataset(name: str, num_workers: int = 0) -> DatasetScan:
    """Every problem of the registered dataset ``name``: a missing or empty split, missing class
    metadata, each file's problems (:func:`check_dataset_dict`, in ``num_workers`` processes when
    > 0) and the class-list-vs-labels mismatch; and how its images are read (bit depth, EXIF
    orientation). Nothing is raised for bad data."""
    try:
        dicts = DatasetCatalog.get(name)
    except KeyError:
        return DatasetScan([DatasetProblem("not_registered", name, "no dataset of this name is registered")])
    except (FileNotFoundError, ValueError) as e:
        return DatasetScan([DatasetProblem("missing_split", name, str(e))])
    meta = MetadataCatalog.get(name)
    ignore_label = meta.get("ignore_label", 255)
    classes = meta.get("stuff_classes", None)
    if classes is None:
        message = "MetadataCatalog has no stuff_classes (is the dataset prepared?)"
        return DatasetScan([DatasetProblem("missing_metadata", name, message)])
    if not dicts:
        return DatasetScan(check_dataset_summary(name, [], classes, ignore_label))
    check = partial(_check_sample, num_classes=len(classes), ignore_label=ignore_label)
    if num_workers > 0:
        with Pool(num_workers) as pool:
            results = list(pool.imap(check, dicts, chunksize=max(1, len(dicts) // (8 * num_workers))))
    else:
        results = [check(d) for d in dicts]
    problems = [p for file_problems, _, _ in results for p in file_problems]
    problems += check_dataset_summary(name, [ids for _, ids, _ in results], classes, ignore_label)
    return DatasetScan(problems, _count_reading(dicts, [reading for _, _, reading in results]))


def _count_reading(dicts: Sequence[Dict], readings: Sequence[List[str]]) -> Dict[str, Tuple[int, str]]:
    """description -> (how many images, the first image) over a dataset."""
    counts: Counter = Counter(line for lines in readings for line in lines)
    first: Dict[str, str] = {}
    for d, lines in zip(dicts, readings):
        for line in lines:
            first.setdefault(line, str(d["file_name"]))
    return {line: (n, first[line]) for line, n in counts.items()}
