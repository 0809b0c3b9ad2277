"""The cross-entropy of every head on its class scores (Eq. 7), as pure functions.

A mean over the valid (non-ignored) pixels, 0 and not NaN for a batch in which every pixel is
ignored (the sum is divided by max(1, number of valid pixels); no host sync). It can weight its
classes (the reference code's ``ce_weight``): then it is a weighted mean.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["masked_cross_entropy", "upsampled_cross_entropy", "check_class_weights", "class_weight_tensor"]

CLASS_WEIGHTS_KEY = "MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS"


def check_class_weights(weights: Optional[Sequence[float]], num_classes: int) -> Optional[Tuple[float, ...]]:
    """``weights`` (``MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS``) as a tuple of C floats, or None when
    empty (unweighted CE). Raises ``ValueError`` naming the key and the value unless there are
    exactly ``num_classes`` weights, all finite and > 0. Checked on the Python values, so that a
    model built on the meta device is checked too."""
    if weights is None or len(weights) == 0:
        return None
    values = tuple(float(w) for w in weights)
    if len(values) != num_classes:
        raise ValueError(
            f"{CLASS_WEIGHTS_KEY} must have one weight per class (MODEL.SEM_SEG_HEAD.NUM_CLASSES = "
            f"{num_classes}) or be empty, got {len(values)}: {list(weights)}"
        )
    bad = [w for w in values if not (math.isfinite(w) and w > 0)]
    if bad:
        raise ValueError(f"{CLASS_WEIGHTS_KEY} must be finite and > 0, got {bad} in {list(weights)}")
    return values


def class_weight_tensor(weights: Optional[Sequence[float]], num_classes: int) -> Optional[torch.Tensor]:
    """(C,) float32 tensor of the checked weights (:func:`check_class_weights`), None if empty."""
    values = check_class_weights(weights, num_classes)
    return None if values is None else torch.tensor(values, dtype=torch.float32)


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Cross-entropy averaged over the targets that are not ``ignore_index``.

    Unweighted: sum_i l_i / n_valid. With ``weight``: sum_i w_{y_i} l_i / sum_i w_{y_i} over the
    valid pixels, i.e. ``nn.CrossEntropyLoss(weight, ignore_index, reduction="mean")`` as the
    reference code's FSCELoss (lib/loss/loss_helper.py) uses it with its ``ce_weight``.

    Args:
        logits: (N, C, ...) unnormalised scores.
        targets: (N, ...) int64 class indices, or ``ignore_index``.
        ignore_index: the value to ignore (a dataset's ignore label, or -1 for prototype targets).
        weight: optional (C,) positive class weights, on the device of ``logits``.
    Returns:
        scalar tensor; 0 (not NaN) when every target is ignored. No host sync.
    """
    total = F.cross_entropy(logits, targets, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = targets != ignore_index
    if weight is None:
        return total / valid.sum().clamp_min(1)
    pixel_weight = weight[torch.where(valid, targets, torch.zeros_like(targets))]
    norm = torch.where(valid, pixel_weight, torch.zeros_like(pixel_weight)).sum()
    return total / torch.where(norm > 0, norm, torch.ones_like(norm))


def upsampled_cross_entropy(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    weight: Optional[torch.Tensor] = None,
    align_corners: bool = False,
) -> torch.Tensor:
    """:func:`masked_cross_entropy` of (B, C, h, w) scores bilinearly upsampled to the (B, H, W)
    targets' size: ``align_corners=False`` as mmseg, True as the reference code
    (lib/loss/loss_proto.py PixelPrototypeCELoss.forward)."""
    upsampled = F.interpolate(scores, size=targets.shape[-2:], mode="bilinear", align_corners=align_corners)
    return masked_cross_entropy(upsampled, targets, ignore_index, weight)
