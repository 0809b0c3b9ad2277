"""Losses of ProtoSeg as pure functions: CE on class scores (Eq. 7), PPC (Eq. 11), PPD (Eq. 12).

All losses are means over the valid (non-ignored) pixels and are 0, not NaN, for a batch in which
every pixel is ignored (the sum is divided by max(1, number of valid pixels); no host sync). The CE
can weight its classes (the reference code's ``ce_weight``): then it is a weighted mean.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "masked_cross_entropy",
    "upsampled_cross_entropy",
    "check_class_weights",
    "class_weight_tensor",
    "ppc_loss",
    "ppd_loss",
    "ppc_loss_from_parts",
    "ppd_loss_from_parts",
]

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


def ppc_loss_from_parts(
    lse: torch.Tensor, target_sim: torch.Tensor, valid: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """PPC (Eq. 11) from its parts: mean over valid pixels of lse_i - s_i / tau.

    Args:
        lse: (n,) log-sum-exp over all C*K prototypes of similarity / tau.
        target_sim: (n,) similarity to the assigned prototype. valid: (n,) bool.
    """
    per_pixel = lse.float() - target_sim.float() / temperature
    return torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum() / valid.sum().clamp_min(1)


def ppd_loss_from_parts(target_sim: torch.Tensor, valid: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """PPD (Eq. 12) from the similarity to the assigned prototype: mean over valid pixels of
    (1 - s)^2 for cosine; for the distances of Table 5d (similarity = -distance) the squared
    distance."""
    gap = 1.0 - target_sim.float() if distance == "cosine" else target_sim.float()
    return torch.where(valid, gap**2, torch.zeros_like(gap)).sum() / valid.sum().clamp_min(1)


def _target_similarity(proto_logits: torch.Tensor, proto_targets: torch.Tensor, ignore_index: int):
    valid = proto_targets != ignore_index
    index = torch.where(valid, proto_targets, torch.zeros_like(proto_targets))
    return proto_logits.gather(1, index[:, None]).squeeze(1), valid


def ppc_loss(
    proto_logits: torch.Tensor,
    proto_targets: torch.Tensor,
    temperature: float = 0.1,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Pixel-prototype contrastive loss (Eq. 11): InfoNCE over all C*K prototypes.

    Args:
        proto_logits: (n, C*K) similarity of each pixel to every prototype (column c*K + k).
        proto_targets: (n,) int64 index c*K + k of the pixel's assigned prototype, ``ignore_index``
            (-1) for ignored pixels. Never 255: c*K + k reaches 255 as soon as C*K > 255.
        temperature: tau (paper 0.1; the reference code uses none, i.e. 1).
    """
    target_sim, valid = _target_similarity(proto_logits, proto_targets, ignore_index)
    lse = torch.logsumexp(proto_logits.float() / temperature, dim=1)
    return ppc_loss_from_parts(lse, target_sim, valid, temperature)


def ppd_loss(
    proto_logits: torch.Tensor, proto_targets: torch.Tensor, ignore_index: int = -1, distance: str = "cosine"
) -> torch.Tensor:
    """Pixel-prototype distance loss (Eq. 12): mean over valid pixels of (1 - sim at target)^2.

    Args:
        proto_logits: (n, C*K) similarities (cosine for the paper's model).
        proto_targets: (n,) int64 target prototype index, ``ignore_index`` for ignored pixels.
        distance: see :func:`ppd_loss_from_parts`.
    """
    target_sim, valid = _target_similarity(proto_logits, proto_targets, ignore_index)
    return ppd_loss_from_parts(target_sim, valid, distance)
