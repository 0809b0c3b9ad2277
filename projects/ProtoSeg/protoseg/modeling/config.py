"""Configuration keys of the meta-architecture's test protocol (``segmentor.py``: sliding-window
inference, the unknown score); applied by ``add_protoseg_config``.

Images are resized by INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (0: no resize); TTA uses Detectron2's
TEST.AUG.{ENABLED, MIN_SIZES, MAX_SIZE, FLIP}: MIN_SIZES are short sides applied to the mapped
image (0: as mapped), softmax probabilities averaged over scales and flips.
"""
from ..config_checks import AllOf, Boolean, Integer, Items, Key, OneOf, When, add_keys, declare
from .unknown_score import UNKNOWN_SCORES

__all__ = ["KEYS", "add_segmentor_config"]

_WINDOW = Items(Integer(ge=1), length=2)

KEYS = declare(__name__, [
    Key("TEST.SLIDING_WINDOW.ENABLED", False, Boolean(),
        "True: \"slide\" inference (logits of overlapping windows averaged); False: the whole image."),
    Key("TEST.SLIDING_WINDOW.SIZE", (768, 768), _WINDOW,
        "(height, width) of a window; the paper's Cityscapes protocol is 768 x 768 (Sec. 5.1)."),
    # a larger step than the window leaves pixels in no window
    Key("TEST.SLIDING_WINDOW.STRIDE", (512, 512),
        AllOf((_WINDOW, When("TEST.SLIDING_WINDOW.ENABLED",
                             Items(Integer(ge=1), length=2, each_at_most="TEST.SLIDING_WINDOW.SIZE")))),
        "(height, width) step between windows: 2/3 of the window, as mmseg's Cityscapes slide configs "
        "(configs/deeplabv3/deeplabv3_r50-d8_769x769_80k_cityscapes.py: crop 769, stride 513)."),
    Key("TEST.SLIDING_WINDOW.BATCH_SIZE", 4, Integer(ge=1),
        "Windows per forward pass: bounds the memory of large images."),
    Key("TEST.UNKNOWN_SCORE", "", OneOf(UNKNOWN_SCORES),
        "Adds \"unknown_score\" (H, W), higher = less like any known class, to every output beside \"sem_seg\" "
        "(modeling/unknown_score.py): \"\" (none), \"nearest_prototype\" (ProtoSeg, cosine: 1 - max_c max_k "
        "cos(x, p_ck); whole-image inference), \"max_softmax\" or \"max_logit\" (any head)."),
])


def add_segmentor_config(cfg):
    """Add the test-protocol keys to ``cfg`` in place."""
    add_keys(cfg, KEYS)
