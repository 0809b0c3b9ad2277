"""Configuration keys of the training data pipeline (``mapper.py``, ``transforms.py``) and of the
model's vocabulary (``class_names.py``); applied by ``add_protoseg_config``.

Training augmentation follows the paper (Sec. 5.1: "random scale jittering with a factor in
[0.5, 2], random horizontal flipping, random cropping as well as random color jittering"),
implemented as mmsegmentation's recipe (``configs/_base_/datasets/ade20k.py``: Resize with
``img_scale=(2048, 512), ratio_range=(0.5, 2.0)``, RandomCrop with ``cat_max_ratio=0.75``,
RandomFlip, PhotoMetricDistortion, Pad). Crop size is Detectron2's ``INPUT.CROP.SIZE``. The
reference code's recipe (openseg.pytorch's augmentations) is reached with ``SCALE_JITTER.MODE``
"image_size" and ``ASPECT_RANGE``, ``BRIGHTNESS_JITTER`` and ``INPUT.PAD``
(configs/cityscapes/reference_protoseg_hrnetv2_W48_bs8_80k.yaml).
"""
from ..config_checks import Boolean, Integer, Items, Key, Matches, Number, OneOf, add_keys, declare
from .transforms import PAD_IMAGE_VALUES, PAD_POSITIONS, SCALE_JITTER_MODES

__all__ = ["KEYS", "add_data_config"]

_POSITIVE_RANGE = Items(Number(gt=0), length=2, order="<=")  # (low, high), 0 < low <= high

KEYS = declare(__name__, [
    Key("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", 1.0, Number(gt=0, le=1),
        "The random crop is redrawn (up to 10 times) while one category covers more than this fraction of "
        "its labelled pixels (mmseg's ``cat_max_ratio``: 0.75); 1.0: a plain random crop (DeepLab's key)."),
    Key("INPUT.SCALE_JITTER.ENABLED", False, Boolean(),
        "True: mmseg's random resize (ratio r uniform in RATIO_RANGE, the image rescaled, aspect kept, to fit "
        "in BASE_SIZE * r) replaces Detectron2's ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN). False keeps the "
        "shortest-edge resize (the toy configs)."),
    Key("INPUT.SCALE_JITTER.BASE_SIZE", (2048, 512), Items(Integer(ge=1), length=2, order=">="),
        "(long side, short side) of the base scale, mmseg's ``img_scale``: (2048, 512) for ADE20K and "
        "COCO-Stuff (configs/_base_/datasets/ade20k.py, coco-stuff164k.py), (2048, 1024) for Cityscapes "
        "(configs/_base_/datasets/cityscapes.py)."),
    Key("INPUT.SCALE_JITTER.RATIO_RANGE", (0.5, 2.0), _POSITIVE_RANGE,
        "Range of the ratio r, mmseg's ``ratio_range`` (the paper's \"factor in [0.5, 2]\")."),
    Key("INPUT.SCALE_JITTER.MODE", "base_size", OneOf(SCALE_JITTER_MODES),
        "What r scales: \"base_size\" (mmseg's Resize: the image, aspect kept, fitted in BASE_SIZE * r; PIL "
        "bilinear image, PIL nearest labels, sizes rounded) or \"image_size\" (the reference code, "
        "openseg.pytorch's RandomResize with method \"random\", lib/datasets/tools/cv2_aug_transforms.py: the "
        "image's own size times r, BASE_SIZE unused; OpenCV bicubic image, OpenCV nearest labels, sizes "
        "truncated). For a 2048x1024 Cityscapes image with BASE_SIZE (2048, 1024) both scale by r."),
    Key("INPUT.SCALE_JITTER.ASPECT_RANGE", (1.0, 1.0), _POSITIVE_RANGE,
        "Aspect-ratio jitter a, uniform in (low, high), drawn after r: height x sqrt(1 / a), width x sqrt(a) "
        "(width / height x a, area kept). (1.0, 1.0): none (mmseg, the paper); the reference code: (0.9, 1.1) "
        "(configs/cityscapes/H_48_D_4_proto.json \"aspect_range\")."),
    Key("INPUT.PHOTOMETRIC_JITTER", False, Boolean(),
        "mmseg's PhotoMetricDistortion after the flip: brightness delta 32, contrast [0.5, 1.5], saturation "
        "[0.5, 1.5], hue delta 18 (OpenCV's 0-180 hue), each with probability 0.5."),
    Key("INPUT.BRIGHTNESS_JITTER", 0, Integer(ge=0, le=255),
        "Brightness-only jitter after the flip (and after PHOTOMETRIC_JITTER if both are on): one integer "
        "shift uniform in [-N, N] added to every pixel and channel, clipped to [0, 255], on every image. 0: "
        "off. The reference code: 10 (openseg.pytorch's RandomBrightness, \"random_brightness\": "
        "{\"ratio\": 1.0, \"shift_value\": 10})."),
    Key("INPUT.PAD.POSITION", "bottom_right", OneOf(PAD_POSITIONS),
        "Where an image smaller than an absolute INPUT.CROP.SIZE sits in its padded canvas (labels padded "
        "with IGNORE_VALUE): \"bottom_right\" (mmseg's Pad) or \"random\": at a uniform random offset (the "
        "reference code's collate with \"pad_mode\": \"random\", lib/datasets/tools/collate.py)."),
    Key("INPUT.PAD.IMAGE_VALUE", "zero", OneOf(PAD_IMAGE_VALUES),
        "Image fill of that padding: \"zero\" (mmseg, pad_val=0) or \"pixel_mean\" (MODEL.PIXEL_MEAN rounded, "
        "i.e. ~0 after normalisation: the reference pads its normalised image tensor with 0)."),
    # ---- the model's vocabulary (class_names.py) ----
    Key("MODEL.SEM_SEG_HEAD.CLASS_NAMES", [],
        Items(Matches(r"(?s).*\S.*", "a string", "strings"), length="MODEL.SEM_SEG_HEAD.NUM_CLASSES", or_empty=True),
        "Names of the classes the model predicts, in id order (NUM_CLASSES of them); empty: the names of the "
        "test (else training) dataset. Written by tools/add_class.py beside a model that predicts more "
        "classes than its datasets name; the evaluator, its per-class table, the demo and the web page read "
        "the names here."),
    Key("INPUT.HELD_OUT_CLASSES", 0, Integer(ge=0),
        "The last N class ids of the datasets are held out: their pixels are ignored in training and in "
        "evaluation, and NUM_CLASSES counts the other classes (the dataset's count minus N). The last ids, "
        "so that the others keep their ids and a held-out class added back with tools/add_class.py gets its "
        "dataset id. 0: every class is learned."),
])


def add_data_config(cfg):
    """Add the data-pipeline keys to ``cfg`` in place."""
    add_keys(cfg, KEYS)
