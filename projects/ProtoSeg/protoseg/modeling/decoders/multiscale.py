"""What the multi-level decoders (HRNetV2, UperNet, SegFormer) share: the config keys they read,
checking their input features and bringing feature maps to one resolution."""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec

__all__ = ["check_multilevel_features", "multilevel_decoder_args", "resize_to"]


def multilevel_decoder_args(cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
    """The ``from_config`` arguments every multi-level decoder takes from
    ``cfg.MODEL.SEM_SEG_HEAD``: input features, width (``CONVS_DIM``), dropout and norm."""
    head = cfg.MODEL.SEM_SEG_HEAD
    return {
        "input_shape": input_shape,
        "in_features": head.IN_FEATURES,
        "channels": head.CONVS_DIM,
        "dropout": head.DROPOUT,
        "norm": head.NORM,
    }


def check_multilevel_features(
    decoder: str, in_features: Sequence[str], input_shape: Dict[str, ShapeSpec]
) -> Tuple[List[int], List[int]]:
    """Check that ``in_features`` (MODEL.SEM_SEG_HEAD.IN_FEATURES) exist in the backbone output and
    go from fine to coarse (strictly increasing strides, e.g. res2..res5 at 4/8/16/32).

    Returns:
        (channels, strides) of the features, in the order of ``in_features``.
    """
    if len(in_features) < 2:
        raise ValueError(
            f"{decoder} fuses several levels: MODEL.SEM_SEG_HEAD.IN_FEATURES must name at least two "
            f"backbone features, got {list(in_features)}"
        )
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise KeyError(
            f"{decoder} reads features {missing} (MODEL.SEM_SEG_HEAD.IN_FEATURES) but the backbone "
            f"outputs {sorted(input_shape)}"
        )
    strides = [input_shape[f].stride for f in in_features]
    if any(a >= b for a, b in zip(strides, strides[1:])):
        raise ValueError(
            f"{decoder}: MODEL.SEM_SEG_HEAD.IN_FEATURES {list(in_features)} must go from fine to "
            f"coarse (increasing strides), got strides {strides}"
        )
    return [input_shape[f].channels for f in in_features], strides


def resize_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size); returns ``x`` itself if already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
