"""What the head needs from the (N, C*K) pixel-prototype similarities, computed without keeping
more than one such matrix (or one chunk of it) alive.

From the similarities S (N, C*K) the head needs only three small things:
- the class scores max_k S[i, c, k] (N, C)                         -> CE (Eq. 6-7), prediction;
- the similarities to the K prototypes of the pixel's own class (N, K) -> clustering, PPD, and the
  PPC target logit (the PPC target is always one of the pixel's own-class prototypes);
- lse_i = log sum_j exp(S[i, j] / tau) (N,)                        -> PPC (Eq. 11) = lse - S[i, t] / tau.
Autograd through ``S / tau``, ``log_softmax``, ``max`` and ``gather`` keeps several N x C*K
tensors and makes several passes over them in the backward. For cosine similarity (a plain
product) :class:`_FusedCosineScores` writes the gradient of all three into one N x C*K buffer and
multiplies once by the prototypes. With ``chunk_size`` > 0 it works on ``chunk_size`` pixels at a
time and recomputes the product in the backward: memory O(chunk_size * C * K) instead of
O(N * C * K), at the price of one more product.
"""
from typing import Tuple

import torch

from .distances import pairwise_similarity

__all__ = ["prototype_scores", "own_class_similarities"]


def own_class_similarities(proto_logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C*K) similarities, (N,) labels in [0, C) -> (N, K) similarities to the prototypes of
    each pixel's own class."""
    view = proto_logits.view(proto_logits.shape[0], num_classes, -1)
    return view[torch.arange(view.shape[0], device=view.device), labels]


class _FusedCosineScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, protos, labels, num_classes: int, temperature: float, chunk_size: int):
        n, ck = x.shape[0], protos.shape[0]
        k = ck // num_classes
        step = chunk_size if chunk_size > 0 else max(n, 1)
        scores = x.new_empty(n, num_classes)
        best = torch.empty(n, num_classes, dtype=torch.long, device=x.device)
        own = x.new_empty(n, k)
        lse = x.new_empty(n)
        kept = None
        for s in range(0, n, step):
            logits = x[s : s + step] @ protos.t()  # (n_s, C*K)
            view = logits.view(-1, num_classes, k)
            torch.max(view, dim=2, out=(scores[s : s + step], best[s : s + step]))
            own[s : s + step] = own_class_similarities(logits, labels[s : s + step], num_classes)
            lse[s : s + step] = torch.logsumexp(logits.mul_(1.0 / temperature), dim=1)
            kept = logits if step >= n else None  # the scaled logits, reused by the backward
        ctx.save_for_backward(x, protos, labels, best, lse, *(() if kept is None else (kept,)))
        ctx.num_classes, ctx.temperature, ctx.step = num_classes, temperature, step
        return scores, own, lse

    @staticmethod
    def backward(ctx, grad_scores, grad_own, grad_lse):
        x, protos, labels, best, lse, *kept = ctx.saved_tensors
        n, ck = x.shape[0], protos.shape[0]
        k = ck // ctx.num_classes
        grad_x = torch.empty_like(x)
        own_columns = torch.arange(k, device=x.device)
        for s in range(0, n, ctx.step):
            e = min(s + ctx.step, n)
            scaled = kept[0] if kept else (x[s:e] @ protos.t()).mul_(1.0 / ctx.temperature)
            # d lse / d S = softmax(S / tau) / tau
            grad = scaled.sub_(lse[s:e, None]).exp_().mul_(grad_lse[s:e, None] / ctx.temperature)
            grad.view(e - s, ctx.num_classes, k).scatter_add_(2, best[s:e, :, None], grad_scores[s:e, :, None])
            grad.scatter_add_(1, labels[s:e, None] * k + own_columns, grad_own[s:e])
            grad_x[s:e] = grad @ protos
        return grad_x, None, None, None, None, None


def prototype_scores(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    distance: str = "cosine",
    huber_delta: float = 0.1,
    chunk_size: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class scores, own-class similarities and PPC log-sum-exp of pixel embeddings.

    Args:
        x: (N, D) pixel embeddings (unit vectors for cosine). prototypes: (C, K, D), no gradient.
        labels: (N,) int64; entries outside [0, C) (ignored pixels) get meaningless own-class rows.
        temperature: tau of PPC. chunk_size: 0 keeps one (N, C*K) matrix for the backward; > 0
            bounds memory to chunk_size x C*K (cosine only).
    Returns:
        class_scores (N, C) = max_k S[i, c, k]; own (N, K) = S[i, label_i, :];
        lse (N,) = logsumexp_j(S[i, j] / tau). All float32, differentiable with respect to x.
    """
    C, K, D = prototypes.shape
    labels = labels.clamp(0, C - 1)
    # a copy: the backward needs these prototypes, and the memory update writes the buffer in place
    flat = prototypes.reshape(C * K, D).float().clone()
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        if distance == "cosine":
            return _FusedCosineScores.apply(x, flat, labels, C, temperature, chunk_size)
        logits = pairwise_similarity(x, flat, distance, huber_delta)  # (N, C*K)
        own = own_class_similarities(logits, labels, C)
        scores = logits.view(-1, C, K).max(dim=2).values
        return scores, own, torch.logsumexp(logits / temperature, dim=1)
