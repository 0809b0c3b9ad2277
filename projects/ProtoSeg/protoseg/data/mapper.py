"""The dataset mapper of semantic segmentation and its augmentations.

Detectron2 v0.6's ``DatasetMapper`` reads label maps as 8-bit ("L"), which truncates ADE20K-Full's
16-bit ids (847 classes, ignore 65535), and its resize cannot take int64 labels. Here labels are read
with :func:`read_label_map` (int64, any bit depth) and every transform keeps their ids.

Training augmentation is the paper's (Sec. 5.1), as mmsegmentation's recipe implements it
(``configs/_base_/datasets/ade20k.py``): random rescale (:class:`RandomRescale`), random crop with
at most 75% of one category (Detectron2's ``RandomCrop_CategoryAreaConstraint``), horizontal flip,
photometric distortion (:class:`RandomPhotometricDistortion`), padding to the crop size
(:class:`PadToSize`, ignore for the label).

The reference code's recipe (tfzhou/ProtoSeg, openseg.pytorch's ``cv2_aug_transforms.py`` and
``collate.py``) is available through the same list: its resize by a factor of the image's own size
with aspect-ratio jitter (:class:`RandomScaleAspectResize`, OpenCV bicubic / nearest), a plain
random crop (``SINGLE_CATEGORY_MAX_AREA`` 1.0), flip, brightness-only jitter
(:class:`RandomBrightness`) and padding at a random offset with the pixel mean
(:class:`PadToSize` ``position="random"``).
"""
import copy
import logging
import math
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from PIL import Image

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError

from .labels import REDUCE_ZERO_LABEL_KEY, check_label_range, ignore_held_out, read_label_map, reduce_zero_label

__all__ = [
    "SemSegDatasetMapper",
    "ImageReadError",
    "build_train_augmentation",
    "build_train_resize",
    "build_test_augmentation",
    "LabelResizeTransform",
    "CV2ResizeTransform",
    "ResizeShortestEdgeKeepIds",
    "RandomRescale",
    "RandomScaleAspectResize",
    "PhotometricDistortionTransform",
    "RandomPhotometricDistortion",
    "RandomBrightness",
    "PadTransform",
    "PadToSize",
]

logger = logging.getLogger(__name__)

class ImageReadError(OSError):
    """An image file that cannot be decoded (missing, truncated, not an image); names the file."""


# ---- transforms that keep label ids ----------------------------------------------------------------


def _as_int32(segmentation: np.ndarray) -> np.ndarray:
    """(H, W) integer ids as int32 (what PIL and OpenCV resize), or ValueError if they do not fit."""
    if segmentation.size and (segmentation.min() < -(2**31) or segmentation.max() >= 2**31):
        raise ValueError(f"label ids outside the int32 range cannot be resized: {segmentation.max()}")
    return segmentation.astype(np.int32)


class LabelResizeTransform(T.ResizeTransform):
    """Detectron2's ``ResizeTransform`` whose label resize keeps ids of any width: PIL's nearest
    neighbour on int32 (the sampling of the 8-bit path) instead of ``F.interpolate``, which has no
    int64 kernel and samples half a pixel off PIL's."""

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """(H, W) integer ids -> (new_h, new_w), same dtype and ids."""
        if segmentation.dtype == np.uint8:
            return super().apply_segmentation(segmentation)
        resized = Image.fromarray(_as_int32(segmentation)).resize((self.new_w, self.new_h), Image.NEAREST)
        return np.asarray(resized).astype(segmentation.dtype)

    def inverse(self):
        return LabelResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class CV2ResizeTransform(T.ResizeTransform):
    """A resize done by OpenCV, as openseg.pytorch's ``RandomResize`` (the reference code,
    lib/datasets/tools/cv2_aug_transforms.py): the image by ``cv2.resize`` with ``interp`` (an
    OpenCV flag, default ``INTER_CUBIC``; uint8 saturated, no antialiasing), the labels by
    ``INTER_NEAREST`` (OpenCV's sampling, source index floor(x * w / new_w)), ids of any width."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int = cv2.INTER_CUBIC):
        super().__init__(h, w, new_h, new_w, interp)

    def apply_image(self, img: np.ndarray, interp: Optional[int] = None) -> np.ndarray:
        """(h, w[, C]) -> (new_h, new_w[, C]), same dtype."""
        assert img.shape[:2] == (self.h, self.w), f"{img.shape[:2]} is not the size {(self.h, self.w)}"
        flag = self.interp if interp is None else interp
        resized = cv2.resize(img, (self.new_w, self.new_h), interpolation=flag)
        return resized.reshape(resized.shape[:2] + img.shape[2:])  # OpenCV drops a single channel

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """(h, w) integer ids -> (new_h, new_w), same dtype and ids."""
        resized = cv2.resize(_as_int32(segmentation), (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)
        return resized.astype(segmentation.dtype)

    def inverse(self):
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


def _keep_ids(tfm: T.Transform) -> T.Transform:
    if isinstance(tfm, T.ResizeTransform) and not isinstance(tfm, LabelResizeTransform):
        return LabelResizeTransform(tfm.h, tfm.w, tfm.new_h, tfm.new_w, tfm.interp)
    return tfm


class ResizeShortestEdgeKeepIds(T.ResizeShortestEdge):
    """Detectron2's ``ResizeShortestEdge`` (size 0: no resize) with a :class:`LabelResizeTransform`."""

    def get_transform(self, image):
        return _keep_ids(super().get_transform(image))


def aspect_factors(aspect: float) -> Tuple[float, float]:
    """(height factor, width factor) = (sqrt(1 / a), sqrt(a)) of an aspect-ratio jitter ``a``: the
    width / height ratio is multiplied by ``a``, the area kept (openseg.pytorch's RandomResize,
    lib/datasets/tools/cv2_aug_transforms.py: ``w_scale_ratio = sqrt(a) * s``,
    ``h_scale_ratio = sqrt(1 / a) * s``). a = 1: (1.0, 1.0) exactly."""
    return math.sqrt(1.0 / aspect), math.sqrt(aspect)


def _draw_aspect(aspect_range: Tuple[float, float]) -> float:
    """a uniform in ``aspect_range``; no draw (the random stream untouched) when it is one value."""
    low, high = aspect_range
    return low if low == high else float(np.random.uniform(low, high))


class RandomRescale(T.Augmentation):
    """mmseg's ``Resize(img_scale, ratio_range, keep_ratio=True)``: draw r uniformly in
    ``ratio_range``, then rescale the image, aspect kept, by the largest factor that fits its long
    side in ``base_size[0] * r`` and its short side in ``base_size[1] * r``. With an
    ``aspect_range`` other than (1, 1), a is drawn uniformly in it and the height is further
    multiplied by sqrt(1 / a), the width by sqrt(a) (:func:`aspect_factors`; mmseg has no such
    jitter). Image: PIL ``interp``; labels: PIL nearest (:class:`LabelResizeTransform`)."""

    def __init__(
        self,
        base_size: Tuple[int, int],
        ratio_range: Tuple[float, float] = (0.5, 2.0),
        aspect_range: Tuple[float, float] = (1.0, 1.0),
        interp=Image.BILINEAR,
    ):
        """
        Args:
            base_size: (long side, short side), mmseg's ``img_scale``, e.g. (2048, 512).
            ratio_range: (low, high) of r.
            aspect_range: (low, high) of the aspect jitter a.
        """
        super().__init__()
        if base_size[0] < base_size[1]:
            raise ValueError(f"base_size must be (long side, short side), got {tuple(base_size)}")
        self._init(locals())

    @staticmethod
    def output_size(
        h: int, w: int, base_size: Tuple[int, int], ratio: float, aspect: float = 1.0
    ) -> Tuple[int, int]:
        """(new_h, new_w) of an (h, w) image at ratio ``ratio`` and aspect jitter ``aspect``
        (rounded as mmcv's ``rescale_size``)."""
        scale = min(base_size[0] * ratio / max(h, w), base_size[1] * ratio / min(h, w))
        fh, fw = aspect_factors(aspect)
        return int(h * scale * fh + 0.5), int(w * scale * fw + 0.5)

    def get_transform(self, image):
        h, w = image.shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        new_h, new_w = self.output_size(h, w, self.base_size, ratio, _draw_aspect(self.aspect_range))
        return LabelResizeTransform(h, w, new_h, new_w, self.interp)


class RandomScaleAspectResize(T.Augmentation):
    """openseg.pytorch's ``RandomResize`` with ``method: random``, the reference code's
    ``random_resize`` (lib/datasets/tools/cv2_aug_transforms.py): a factor s uniform in
    ``scale_range`` of the image's OWN size (no base size), then an aspect jitter a uniform in
    ``aspect_range`` (drawn after s); (h, w) -> (int(h * sqrt(1 / a) * s), int(w * sqrt(a) * s)),
    truncated. Image: OpenCV bicubic, labels: OpenCV nearest (:class:`CV2ResizeTransform`).
    Always applied (the reference config's ``ratio: 1.0``)."""

    def __init__(self, scale_range: Tuple[float, float] = (0.5, 2.0), aspect_range: Tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        self._init(locals())

    @staticmethod
    def output_size(h: int, w: int, scale: float, aspect: float = 1.0) -> Tuple[int, int]:
        """(new_h, new_w) of an (h, w) image at scale ``scale`` and aspect jitter ``aspect``
        (at least 1 pixel)."""
        fh, fw = aspect_factors(aspect)
        return max(int(h * (fh * scale)), 1), max(int(w * (fw * scale)), 1)

    def get_transform(self, image):
        h, w = image.shape[:2]
        scale = np.random.uniform(*self.scale_range)
        new_h, new_w = self.output_size(h, w, scale, _draw_aspect(self.aspect_range))
        return CV2ResizeTransform(h, w, new_h, new_w)


class PhotometricDistortionTransform(T.Transform):
    """mmseg's ``PhotoMetricDistortion`` with its random draws fixed; labels are left unchanged.

    Order as mmseg: brightness, contrast (if ``contrast_first``), saturation, hue, contrast
    (otherwise). Each step works in float, clips to [0, 255] and truncates to uint8, as mmseg's
    ``convert``; saturation and hue in OpenCV's uint8 HSV (hue in [0, 180)). ``None`` skips a step.
    """

    _HSV_CODES = {"RGB": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB), "BGR": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)}

    def __init__(
        self,
        image_format: str,
        brightness: Optional[float] = None,
        contrast: Optional[float] = None,
        contrast_first: bool = True,
        saturation: Optional[float] = None,
        hue: Optional[int] = None,
    ):
        """
        Args:
            image_format: "RGB" or "BGR", the channel order of the images.
            brightness: delta added to every channel.
            contrast: factor of every channel.
            saturation: factor of the HSV saturation.
            hue: shift of the HSV hue, in OpenCV's units (2 degrees).
        """
        super().__init__()
        if image_format not in self._HSV_CODES:
            raise ValueError(f"photometric jitter needs INPUT.FORMAT RGB or BGR, got {image_format!r}")
        self._set_attributes(locals())

    @staticmethod
    def _affine(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8."""
        if img.dtype != np.uint8:
            raise ValueError(f"photometric jitter expects uint8 images, got {img.dtype}")
        if self.brightness is not None:
            img = self._affine(img, beta=self.brightness)
        if self.contrast is not None and self.contrast_first:
            img = self._affine(img, alpha=self.contrast)
        if self.saturation is not None or self.hue is not None:
            to_hsv, from_hsv = self._HSV_CODES[self.image_format]
            hsv = cv2.cvtColor(np.ascontiguousarray(img), to_hsv)
            if self.saturation is not None:
                hsv[..., 1] = self._affine(hsv[..., 1], alpha=self.saturation)
            if self.hue is not None:
                hsv[..., 0] = (hsv[..., 0].astype(np.int64) + self.hue) % 180
            img = cv2.cvtColor(hsv, from_hsv)
        if self.contrast is not None and not self.contrast_first:
            img = self._affine(img, alpha=self.contrast)
        return img

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return T.NoOpTransform()


class RandomPhotometricDistortion(T.Augmentation):
    """Draws the parameters of :class:`PhotometricDistortionTransform` as mmseg's
    ``PhotoMetricDistortion`` (defaults: brightness delta 32, contrast and saturation in
    [0.5, 1.5], hue delta 18; each step applied with probability 0.5, contrast before or after the
    HSV steps with probability 0.5)."""

    def __init__(
        self,
        image_format: str,
        brightness_delta: float = 32,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        prob: float = 0.5,
    ):
        super().__init__()
        self._init(locals())

    def _maybe(self, draw):
        return draw() if np.random.rand() < self.prob else None

    def get_transform(self, image):
        return PhotometricDistortionTransform(
            self.image_format,
            brightness=self._maybe(lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta)),
            contrast_first=bool(np.random.rand() < 0.5),
            contrast=self._maybe(lambda: np.random.uniform(*self.contrast_range)),
            saturation=self._maybe(lambda: np.random.uniform(*self.saturation_range)),
            hue=self._maybe(lambda: int(np.random.randint(-self.hue_delta, self.hue_delta + 1))),
        )


class RandomBrightness(T.Augmentation):
    """openseg.pytorch's ``RandomBrightness``, the reference code's ``random_brightness``
    (lib/datasets/tools/cv2_aug_transforms.py): one integer shift uniform in
    [-max_shift, max_shift] (``random.randint``, both ends included) added to every channel of
    every pixel, clipped to [0, 255]; always applied (the reference config's ``ratio: 1.0``).
    Labels unchanged (a :class:`PhotometricDistortionTransform` with only ``brightness``)."""

    def __init__(self, max_shift: int, image_format: str):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        shift = int(np.random.randint(-self.max_shift, self.max_shift + 1))
        return PhotometricDistortionTransform(self.image_format, brightness=shift)


PAD_POSITIONS = ("bottom_right", "random")


class PadTransform(T.Transform):
    """Pad ``pad_h`` rows and ``pad_w`` columns, ``top`` of the rows above and ``left`` of the
    columns on the left, the rest below / on the right (0, 0: bottom/right, as mmseg's ``Pad``):
    ``image_value`` (a number, or one per channel) in the image, ``label_value`` (the ignore
    value) in the label map."""

    def __init__(
        self,
        pad_h: int,
        pad_w: int,
        image_value: Union[float, Sequence[float]] = 0,
        label_value: int = 255,
        top: int = 0,
        left: int = 0,
    ):
        super().__init__()
        if not (0 <= top <= pad_h and 0 <= left <= pad_w):
            raise ValueError(f"pad offsets (top={top}, left={left}) must be within (0..{pad_h}, 0..{pad_w})")
        self._set_attributes(locals())

    def _pad(self, array: np.ndarray, value) -> np.ndarray:
        h, w = array.shape[:2]
        out = np.empty((h + self.pad_h, w + self.pad_w) + array.shape[2:], dtype=array.dtype)
        out[...] = value  # a per-channel value broadcasts over the last axis
        out[self.top : self.top + h, self.left : self.left + w] = array
        return out

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """(H, W[, C]) -> (H + pad_h, W + pad_w[, C])."""
        return self._pad(img, self.image_value)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._pad(segmentation, self.label_value)

    def apply_coords(self, coords):
        """(N, 2) x, y -> shifted by the left / top padding."""
        return coords + np.array([self.left, self.top], dtype=coords.dtype)


class PadToSize(T.Augmentation):
    """Pad images smaller than ``size`` (h, w) to at least ``size``.

    ``position`` "bottom_right": all padding below / on the right (mmseg). "random": the image at a
    uniform random offset, top in [0, pad_h] and left in [0, pad_w] (openseg.pytorch's collate with
    ``pad_mode: random``, the reference code's lib/datasets/tools/collate.py)."""

    def __init__(
        self,
        size: Tuple[int, int],
        label_value: int,
        image_value: Union[float, Sequence[float]] = 0,
        position: str = "bottom_right",
    ):
        super().__init__()
        if position not in PAD_POSITIONS:
            raise ValueError(f"INPUT.PAD.POSITION must be one of {PAD_POSITIONS}, got {position!r}")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        pad_h, pad_w = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if pad_h == 0 and pad_w == 0:
            return T.NoOpTransform()
        top, left = 0, 0
        if self.position == "random":
            top, left = int(np.random.randint(pad_h + 1)), int(np.random.randint(pad_w + 1))
        return PadTransform(pad_h, pad_w, self.image_value, self.label_value, top=top, left=left)


# ---- augmentation lists ----------------------------------------------------------------------------


SCALE_JITTER_MODES = ("base_size", "image_size")
PAD_IMAGE_VALUES = ("zero", "pixel_mean")


def _positive_range(value, key: str) -> Tuple[float, float]:
    """``value`` as (low, high) with 0 < low <= high, or ValueError naming ``key``."""
    low, high = (float(v) for v in value)
    if not 0 < low <= high:
        raise ValueError(f"{key} must be (low, high) with 0 < low <= high, got {tuple(value)}")
    return low, high


def build_train_resize(cfg) -> T.Augmentation:
    """``INPUT.SCALE_JITTER``: mmseg's rescale of a base size (MODE "base_size") or the reference
    code's rescale of the image itself (MODE "image_size"), each with the aspect jitter
    ``ASPECT_RANGE``; disabled: Detectron2's shortest-edge resize."""
    jitter = cfg.INPUT.SCALE_JITTER
    aspect = _positive_range(jitter.ASPECT_RANGE, "INPUT.SCALE_JITTER.ASPECT_RANGE")
    if not jitter.ENABLED:
        if aspect != (1.0, 1.0):
            raise ValueError(f"INPUT.SCALE_JITTER.ASPECT_RANGE {tuple(jitter.ASPECT_RANGE)} needs SCALE_JITTER.ENABLED")
        return ResizeShortestEdgeKeepIds(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ratio = _positive_range(jitter.RATIO_RANGE, "INPUT.SCALE_JITTER.RATIO_RANGE")
    if jitter.MODE == "base_size":
        return RandomRescale(tuple(jitter.BASE_SIZE), ratio, aspect)
    if jitter.MODE == "image_size":
        return RandomScaleAspectResize(ratio, aspect)
    raise ValueError(f"INPUT.SCALE_JITTER.MODE must be one of {SCALE_JITTER_MODES}, got {jitter.MODE!r}")


def _brightness_shift(cfg) -> int:
    shift = cfg.INPUT.BRIGHTNESS_JITTER
    if isinstance(shift, bool) or int(shift) != shift or shift < 0:
        raise ValueError(f"INPUT.BRIGHTNESS_JITTER must be an integer >= 0 (0: off), got {shift!r}")
    return int(shift)


def _pad_image_value(cfg) -> Union[int, Tuple[int, ...]]:
    """``INPUT.PAD.IMAGE_VALUE``: "zero" (mmseg) or "pixel_mean", ``MODEL.PIXEL_MEAN`` rounded to
    uint8 (0 after normalisation up to the rounding: the reference pads its normalised tensor with
    0, lib/datasets/tools/collate.py)."""
    value = cfg.INPUT.PAD.IMAGE_VALUE
    if value == "zero":
        return 0
    if value == "pixel_mean":
        return tuple(int(round(v)) for v in cfg.MODEL.PIXEL_MEAN)
    raise ValueError(f"INPUT.PAD.IMAGE_VALUE must be one of {PAD_IMAGE_VALUES}, got {value!r}")


def build_train_augmentation(cfg) -> List[T.Augmentation]:
    """Rescale (:func:`build_train_resize`), crop with a maximum single-category share (ignore
    excluded; 1.0: a plain random crop), horizontal flip, photometric jitter
    (``INPUT.PHOTOMETRIC_JITTER``), brightness jitter (``INPUT.BRIGHTNESS_JITTER``), padding to an
    absolute crop size (``INPUT.PAD``) with the ignore value in the labels."""
    ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    augs = [build_train_resize(cfg)]
    crop = cfg.INPUT.CROP
    if crop.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(crop.TYPE, crop.SIZE, crop.SINGLE_CATEGORY_MAX_AREA, ignore_value)
        )
    augs.append(T.RandomFlip())
    if cfg.INPUT.PHOTOMETRIC_JITTER:
        augs.append(RandomPhotometricDistortion(cfg.INPUT.FORMAT))
    shift = _brightness_shift(cfg)
    if shift:
        augs.append(RandomBrightness(shift, cfg.INPUT.FORMAT))
    if crop.ENABLED and crop.TYPE == "absolute":
        pad_value, position = _pad_image_value(cfg), cfg.INPUT.PAD.POSITION
        augs.append(PadToSize(tuple(crop.SIZE), label_value=ignore_value, image_value=pad_value, position=position))
    return augs


def build_test_augmentation(cfg) -> List[T.Augmentation]:
    """Short side to ``INPUT.MIN_SIZE_TEST`` (aspect kept, long side at most ``MAX_SIZE_TEST``; the
    ADE20K / COCO-Stuff protocol sets it to the crop size); 0 keeps the image as it is (sliding
    window)."""
    return [ResizeShortestEdgeKeepIds(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]


# ---- the mapper ------------------------------------------------------------------------------------


class SemSegDatasetMapper:
    """Dataset dict -> model input, for training and test.

    Reads ``file_name`` (``image_format``) and ``sem_seg_file_name`` (:func:`read_label_map`, any
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
        """(H, W, C) uint8 in ``image_format``; :class:`ImageReadError` naming the file otherwise."""
        try:
            return utils.read_image(file_name, format=self.image_format)
        except Exception as e:  # PIL: FileNotFoundError, UnidentifiedImageError, OSError (truncated)
            raise ImageReadError(f"image {file_name} cannot be read: {type(e).__name__}: {e}") from e

    def read_labels(self, dataset_dict: dict, image_shape: Tuple[int, int]) -> np.ndarray:
        """The (H, W) int64 label map of ``dataset_dict``, checked against the image and the classes."""
        label_file = dataset_dict["sem_seg_file_name"]
        labels = read_label_map(label_file)
        if dataset_dict.get(REDUCE_ZERO_LABEL_KEY, False):
            labels = reduce_zero_label(labels, self.ignore_value)
        if labels.shape != tuple(image_shape):
            raise SizeMismatchError(
                f"label map {label_file} is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image "
                f"{dataset_dict['file_name']} is {image_shape[1]}x{image_shape[0]}"
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
