"""Configuration keys of the data pipeline and test protocol; called by ``add_protoseg_config``."""
from detectron2.config import CfgNode as CN

__all__ = ["add_data_config"]


def add_data_config(cfg):
    """Add the data-pipeline and test-protocol keys to ``cfg`` in place.

    Training augmentation follows the paper (Sec. 5.1: "random scale jittering with a factor in
    [0.5, 2], random horizontal flipping, random cropping as well as random color jittering"),
    implemented as mmsegmentation's recipe (``configs/_base_/datasets/ade20k.py``: Resize with
    ``img_scale=(2048, 512), ratio_range=(0.5, 2.0)``, RandomCrop with ``cat_max_ratio=0.75``,
    RandomFlip, PhotoMetricDistortion, Pad). Crop size and the single-category ratio are
    Detectron2's ``INPUT.CROP.SIZE`` / ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``.
    """
    # ---- training augmentation ------------------------------------------------------------------
    cfg.INPUT.SCALE_JITTER = CN()
    # True: mmseg's random resize (ratio r uniform in RATIO_RANGE, the image rescaled, aspect kept,
    # to fit in BASE_SIZE * r) replaces Detectron2's ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN).
    # False keeps the shortest-edge resize (the toy configs).
    cfg.INPUT.SCALE_JITTER.ENABLED = False
    # (long side, short side) of the base scale, mmseg's ``img_scale``: (2048, 512) for ADE20K and
    # COCO-Stuff (configs/_base_/datasets/ade20k.py, coco-stuff164k.py), (2048, 1024) for
    # Cityscapes (configs/_base_/datasets/cityscapes.py).
    cfg.INPUT.SCALE_JITTER.BASE_SIZE = (2048, 512)
    # range of the ratio r, mmseg's ``ratio_range`` (the paper's "factor in [0.5, 2]").
    cfg.INPUT.SCALE_JITTER.RATIO_RANGE = (0.5, 2.0)
    # mmseg's PhotoMetricDistortion after the flip: brightness delta 32, contrast [0.5, 1.5],
    # saturation [0.5, 1.5], hue delta 18 (OpenCV's 0-180 hue), each with probability 0.5.
    cfg.INPUT.PHOTOMETRIC_JITTER = False

    # ---- test protocol ---------------------------------------------------------------------------
    # Images are resized by INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (0: no resize); TTA uses Detectron2's
    # TEST.AUG.{ENABLED, MIN_SIZES, MAX_SIZE, FLIP}: MIN_SIZES are short sides applied to the mapped
    # image (0: as mapped), softmax probabilities averaged over scales and flips.
    cfg.TEST.SLIDING_WINDOW = CN()
    # True: "slide" inference (logits of overlapping windows averaged); False: the whole image.
    cfg.TEST.SLIDING_WINDOW.ENABLED = False
    # (height, width) of a window; the paper's Cityscapes protocol is 768 x 768 (Sec. 5.1).
    cfg.TEST.SLIDING_WINDOW.SIZE = (768, 768)
    # (height, width) step between windows: 2/3 of the window, as mmseg's Cityscapes slide configs
    # (configs/deeplabv3/deeplabv3_r50-d8_769x769_80k_cityscapes.py: crop 769, stride 513).
    cfg.TEST.SLIDING_WINDOW.STRIDE = (512, 512)
    # Windows per forward pass: bounds the memory of large images.
    cfg.TEST.SLIDING_WINDOW.BATCH_SIZE = 4
