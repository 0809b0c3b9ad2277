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
    Detectron2's ``INPUT.CROP.SIZE`` / ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`` (1.0: a plain
    random crop). The reference code's recipe (openseg.pytorch's augmentations) is reached with
    ``SCALE_JITTER.MODE`` "image_size" and ``ASPECT_RANGE``, ``BRIGHTNESS_JITTER`` and ``INPUT.PAD``
    (configs/cityscapes/reference_protoseg_hrnetv2_W48_bs8_80k.yaml).
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
    # What r scales: "base_size" (mmseg's Resize: the image, aspect kept, fitted in BASE_SIZE * r;
    # PIL bilinear image, PIL nearest labels, sizes rounded) or "image_size" (the reference code,
    # openseg.pytorch's RandomResize with method "random", lib/datasets/tools/cv2_aug_transforms.py:
    # the image's own size times r, BASE_SIZE unused; OpenCV bicubic image, OpenCV nearest labels,
    # sizes truncated). For a 2048x1024 Cityscapes image with BASE_SIZE (2048, 1024) both scale by r.
    cfg.INPUT.SCALE_JITTER.MODE = "base_size"
    # Aspect-ratio jitter a, uniform in (low, high), drawn after r: height x sqrt(1 / a), width x
    # sqrt(a) (width / height x a, area kept). (1.0, 1.0): none (mmseg, the paper); the reference
    # code: (0.9, 1.1) (configs/cityscapes/H_48_D_4_proto.json "aspect_range").
    cfg.INPUT.SCALE_JITTER.ASPECT_RANGE = (1.0, 1.0)
    # mmseg's PhotoMetricDistortion after the flip: brightness delta 32, contrast [0.5, 1.5],
    # saturation [0.5, 1.5], hue delta 18 (OpenCV's 0-180 hue), each with probability 0.5.
    cfg.INPUT.PHOTOMETRIC_JITTER = False
    # Brightness-only jitter after the flip (and after PHOTOMETRIC_JITTER if both are on): one
    # integer shift uniform in [-N, N] added to every pixel and channel, clipped to [0, 255], on
    # every image. 0: off. The reference code: 10 (openseg.pytorch's RandomBrightness,
    # "random_brightness": {"ratio": 1.0, "shift_value": 10}).
    cfg.INPUT.BRIGHTNESS_JITTER = 0
    # Padding of images smaller than an absolute INPUT.CROP.SIZE (the last training step; the
    # labels are padded with MODEL.SEM_SEG_HEAD.IGNORE_VALUE).
    cfg.INPUT.PAD = CN()
    # "bottom_right" (mmseg's Pad) or "random": the image at a uniform random offset in the padded
    # canvas (the reference code's collate with "pad_mode": "random", lib/datasets/tools/collate.py).
    cfg.INPUT.PAD.POSITION = "bottom_right"
    # Image fill: "zero" (mmseg, pad_val=0) or "pixel_mean" (MODEL.PIXEL_MEAN rounded, i.e. ~0 after
    # normalisation: the reference pads its normalised image tensor with 0).
    cfg.INPUT.PAD.IMAGE_VALUE = "zero"

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

    # ---- the model's vocabulary (data/vocabulary.py) -------------------------------------------
    # Names of the classes the model predicts, in id order (NUM_CLASSES of them); empty: the names
    # of the test (else training) dataset. Written by tools/add_class.py beside a model that
    # predicts more classes than its datasets name; the evaluator, its per-class table, the demo
    # and the web page read the names here.
    cfg.MODEL.SEM_SEG_HEAD.CLASS_NAMES = []
    # The last N class ids of the datasets are held out: their pixels are ignored in training and
    # in evaluation, and NUM_CLASSES counts the other classes (the dataset's count minus N). The
    # last ids, so that the others keep their ids and a held-out class added back with
    # tools/add_class.py gets its dataset id. 0: every class is learned.
    cfg.INPUT.HELD_OUT_CLASSES = 0
    # Adds "unknown_score" (H, W), higher = less like any known class, to every output beside
    # "sem_seg" (modeling/unknown_score.py): "" (none), "nearest_prototype" (ProtoSeg, cosine:
    # 1 - max_c max_k cos(x, p_ck); whole-image inference), "max_softmax" or "max_logit" (any head).
    cfg.TEST.UNKNOWN_SCORE = ""
