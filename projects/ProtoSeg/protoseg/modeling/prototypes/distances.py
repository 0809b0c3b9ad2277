"""Pixel-prototype similarity under the three distances of the paper's Table 5d.

All functions map embeddings x (N, D) and prototypes (M, D) to similarities (N, M), larger = closer:
- ``cosine``: x . p of unit vectors (the paper's choice; inputs are l2-normalised by the caller);
- ``euclidean``: -||x - p|| on unnormalised features;
- ``huber``: -delta * (sqrt(||x - p||^2 / delta^2 + 1) - 1), the Huberized distance (delta = 0.1).
"""
import torch

__all__ = ["DISTANCES", "pairwise_similarity"]

DISTANCES = ("cosine", "euclidean", "huber")


def _squared_distance(x: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    sq = (x * x).sum(1, keepdim=True) + (protos * protos).sum(1)[None, :] - 2.0 * x @ protos.t()
    return sq.clamp_min(0.0)


def pairwise_similarity(x: torch.Tensor, protos: torch.Tensor, distance: str = "cosine", huber_delta: float = 0.1):
    """Similarity of every embedding to every prototype.

    Args:
        x: (N, D) pixel embeddings. protos: (M, D) prototypes.
    Returns:
        (N, M) similarities.
    """
    if distance == "cosine":
        return x @ protos.t()
    sq = _squared_distance(x, protos)
    if distance == "euclidean":
        return -torch.sqrt(sq + 1e-12)
    if distance == "huber":
        return -huber_delta * (torch.sqrt(sq / huber_delta**2 + 1.0) - 1.0)
    raise ValueError(f"MODEL.PROTOSEG.DISTANCE must be one of {DISTANCES}, got {distance!r}")
