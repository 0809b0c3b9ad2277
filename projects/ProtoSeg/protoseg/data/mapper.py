"""The dataset mapper of semantic segmentation.

Detectron2 v0.6's ``DatasetMapper`` reads label maps as 8-bit ("L"), which truncates ADE20K-Full's
16-bit ids (847 classes, ignore 65535), and its resize cannot take int64 labels. Here labels are read
with :func:`read_label_map` (int64, any bit depth) and every transform keeps their ids
(:mod:`protoseg.data.transforms`); images are read with :mod:`protoseg.data.image_io` (16-bit
images scaled to 8 bits, not clipped).
"""

import copy
import logging
from typing import Sequence, Tuple, Union

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError

from .image_io import ImageReadError, orientation_hint, read_image
from .labels import REDUCE_ZERO_LABEL_KEY, check_label_range, ignore_held_out, read_label_map, reduce_zero_label
from .transforms import build_test_augmentation, build_train_augmentation

__all__ = ["SemSegDatasetMapper", "ImageReadError"]

logger = logging.getLogger(__name__)


class SemSegDatasetMapper:
    """Dataset dict -> model input, for training and test.

    Reads ``file_name`` (``image_format``, :func:`~protoseg.data.image_io.read_image`: any bit depth
    scaled to 8, EXIF orientation applied) and ``sem_seg_file_name`` (:func:`read_label_map`, any
    bit depth), applies :func:`reduce_zero_label` when the dict has
    ``"sem_seg_reduce_zero_label": True``, checks that image and label have one size and that every
    id is a class id or ``ignore_value``, then the augmentations.

    Returns the dict with ``"image"``: (3, H, W) uint8 tensor and ``"sem_seg"``: (H, W) int64
    tensor (when the dict has a label), ``"height"``/``"width"`` of the image as read.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: Sequence[Union[T.Augmentation, T.Transform]],
        image_format: str,
        num_classes: int,
        ignore_value: int,
        load_labels: bool = True,
        held_out_classes: int = 0,
    ):
        """``load_labels`` False: test-time mapping without ``sem_seg`` (the evaluator reads and
        checks the ground truth at full resolution itself, so the loader need not read it too).
        ``held_out_classes`` (``INPUT.HELD_OUT_CLASSES``): the ids after the ``num_classes`` learned
        ones that the labels may hold, mapped to ``ignore_value``."""
        self.is_train = is_train
        self.load_labels = load_labels or is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.held_out_classes = held_out_classes
        mode = "training" if is_train else "inference"
        logger.info(f"[SemSegDatasetMapper] Augmentations used in {mode}: {list(augmentations)}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, load_labels: bool = True):
        return {
            "is_train": is_train,
            "load_labels": load_labels,
            "augmentations": build_train_augmentation(cfg) if is_train else build_test_augmentation(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "held_out_classes": cfg.INPUT.HELD_OUT_CLASSES,
        }

    def read_image(self, file_name: str) -> np.ndarray:
        """(H, W, C) uint8 in ``image_format`` (:func:`~protoseg.data.image_io.read_image`: EXIF
        orientation applied, 16-bit scaled to 8); :class:`ImageReadError` naming the file otherwise."""
        return read_image(file_name, format=self.image_format)

    def read_labels(self, dataset_dict: dict, image_shape: Tuple[int, int]) -> np.ndarray:
        """The (H, W) int64 label map of ``dataset_dict``, checked against the image and the classes."""
        label_file = dataset_dict["sem_seg_file_name"]
        labels = read_label_map(label_file)
        if dataset_dict.get(REDUCE_ZERO_LABEL_KEY, False):
            labels = reduce_zero_label(labels, self.ignore_value)
        if labels.shape != tuple(image_shape):
            image_file = dataset_dict["file_name"]
            hint = orientation_hint(image_file, image_shape, labels.shape)
            raise SizeMismatchError(
                f"label map {label_file} is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image "
                f"{image_file} is {image_shape[1]}x{image_shape[0]}{hint}"
            )
        check_label_range(labels, self.num_classes + self.held_out_classes, self.ignore_value, label_file)
        return ignore_held_out(labels, self.num_classes, self.held_out_classes, self.ignore_value)

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.read_image(dataset_dict["file_name"])
        utils.check_image_size(dataset_dict, image)
        labels = None
        if "sem_seg_file_name" in dataset_dict and self.load_labels:
            labels = self.read_labels(dataset_dict, image.shape[:2])
            dataset_dict.pop("sem_seg_file_name")
        elif self.is_train:
            raise KeyError(f"dataset dict of {dataset_dict['file_name']} has no 'sem_seg_file_name' to train on")

        aug_input = T.AugInput(image, sem_seg=labels)
        self.augmentations(aug_input)
        image, labels = aug_input.image, aug_input.sem_seg

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if labels is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.int64)
        return dataset_dict
