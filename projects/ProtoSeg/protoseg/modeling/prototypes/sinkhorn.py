"""Within-class online clustering: Sinkhorn-Knopp for all classes at once (paper Eq. 8-10, Alg. 1).

Every class is clustered on its own pixels only (the transport problem of Eq. 8 is per class), but
all classes run together as segment operations over a flat pixel list: per-class reductions are
``index_add_`` over the pixel labels, so the cost does not depend on the number of classes present
and there is no Python loop over classes and no host synchronisation.

Distributed (SwAV's "distributed Sinkhorn"): every reduction over pixels (per-class maximum, total
mass, per-prototype sums, pixel counts) is all-reduced, so that N processes compute the same
assignment as one process on the global batch. The collectives have fixed shapes (C, K), so every
rank issues the same calls whatever classes its own pixels contain.
"""
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["sinkhorn_knopp", "world_all_reduce"]


def world_all_reduce(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """All-reduce in place when a process group of more than one rank exists."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=op if op is not None else dist.ReduceOp.SUM)
    return tensor


def sinkhorn_knopp(
    scores: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    iters: int = 3,
    kappa: float = 0.05,
    distributed: Optional[bool] = None,
) -> torch.Tensor:
    """Soft assignment of each pixel to the K prototypes of its own class (Algorithm 1, per class).

    For the n_c pixels of class c, with s (n_c, K) their similarities to the prototypes of c:
    ``L = exp(s / kappa)^T; L /= sum(L)``; ``iters`` times: ``L /= row sums; L /= K;
    L /= column sums; L /= n_c``; then ``L *= n_c`` and Q = L^T. (The paper's Algorithm 1 line
    ``L /= torch.exp(L / kappa)`` is a typo for ``L = exp(L / kappa)``.) Before the exponential a
    per-class constant (the class's largest score) is subtracted: a uniform scaling of a class's
    matrix that the first normalisation removes exactly, and that keeps exp(1 / 0.05) = 4.9e8 from
    overflowing. For the same reason ``L /= sum(L)`` is skipped when ``iters`` >= 1: the first
    prototype-marginal step divides every row of the class by its own sum anyway (with the shift,
    entries are in (0, 1], so no sum overflows). Always computed in float32, also under autocast.

    Args:
        scores: (n, K) similarity of each pixel to the K prototypes of its own class.
        labels: (n,) int64 class of each pixel, in [0, num_classes).
        num_classes: C.
        iters: Sinkhorn iterations (paper: 3).
        kappa: entropic regularisation epsilon (paper: 0.05).
        distributed: all-reduce the marginals across ranks; default: whenever a process group of
            more than one rank is initialised.

    Returns:
        Q: (n, K) float32, each row sums to 1 (the transport plan scaled per pixel).
    """
    if scores.dim() != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"sinkhorn_knopp expects scores (n, K) and labels (n,), got {tuple(scores.shape)} "
            f"and {tuple(labels.shape)}"
        )
    reduce = world_all_reduce if distributed is not False else (lambda t, op=None: t)
    num_protos = scores.shape[1]
    tiny = torch.finfo(torch.float32).tiny
    with torch.autocast(device_type=scores.device.type, enabled=False):
        scores = scores.detach().float()
        labels = labels.long()
        # Flat (class, prototype) slot of every entry of the (n, K) matrix: per-class-and-prototype
        # sums are then 1-D index_add_ calls (on CPU faster than index_add_ of (n, K) rows).
        slots = labels[:, None] * num_protos + torch.arange(num_protos, device=scores.device)
        # Per-class shift: the largest score of the class (global over ranks).
        class_max = scores.new_full((num_classes,), float("-inf"))
        class_max.scatter_reduce_(0, labels, scores.amax(dim=1), reduce="amax", include_self=True)
        reduce(class_max, dist.ReduceOp.MAX if dist.is_available() else None)
        # (classes without pixels keep -inf, and are never read)
        L = torch.add(class_max.mul_(-1.0 / kappa)[labels, None], scores, alpha=1.0 / kappa).exp_()  # (n, K)

        count = reduce(scores.new_zeros(num_classes).index_add_(0, labels, torch.ones_like(scores[:, 0])))
        pixel_count = count.clamp_min_(1.0)[labels]  # (n,) n_c of each pixel's class
        pixel_share = pixel_count.reciprocal()
        if iters == 0:  # Algorithm 1's "L /= sum(L)"; with iterations the first step removes it
            mass = reduce(scores.new_zeros(num_classes).index_add_(0, labels, L.sum(dim=1)))
            L.mul_(mass.clamp_min_(tiny).reciprocal_()[labels, None])
        for _ in range(iters):
            # Prototype marginal (rows of Algorithm 1's K x n matrix): sum over the class's pixels.
            proto_sums = scores.new_zeros(num_classes * num_protos).index_add_(0, slots.view(-1), L.view(-1))
            reduce(proto_sums)
            # (Algorithm 1's "L /= K" is a uniform factor that the pixel step below removes exactly.)
            L.mul_(torch.take(proto_sums.clamp_min_(tiny).reciprocal_(), slots))
            # Pixel marginal (columns of Algorithm 1's matrix).
            L.mul_(L.sum(dim=1).clamp_min_(tiny).reciprocal_().mul_(pixel_share)[:, None])
        L.mul_(pixel_count[:, None])
    return L
