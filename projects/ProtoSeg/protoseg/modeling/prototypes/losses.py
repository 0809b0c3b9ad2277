"""The prototype losses as pure functions: PPC (Eq. 11) and PPD (Eq. 12).

Means over the valid pixels (those with a prototype target), 0 and not NaN when no pixel is valid
(the sum is divided by max(1, number of valid pixels); no host sync). The ``*_from_parts`` forms
take what :func:`~protoseg.modeling.prototypes.scores.prototype_scores` returns (no N x C*K matrix);
:func:`ppc_loss` and :func:`ppd_loss` take the full similarity matrix (the equations as written).
"""
import torch

__all__ = ["ppc_loss", "ppd_loss", "ppc_loss_from_parts", "ppd_loss_from_parts"]


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
