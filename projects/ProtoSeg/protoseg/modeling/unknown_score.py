"""Per-pixel unknown scores: how unlike every known class a pixel is (higher = more unknown).

``TEST.UNKNOWN_SCORE`` adds ``"unknown_score"`` (H, W) to every output of the model, beside
``"sem_seg"`` (unchanged):

- ``nearest_prototype``: 1 - max_c max_k cos(x, p_ck), the cosine distance of the pixel's embedding
  to its nearest prototype of any class (ProtoSeg with the cosine distance; in [0, 2]). It reads
  the prototypes directly, before the class-score normalisation, which rescales every pixel's
  scores by their own spread and so hides how far the pixel is from all of them.
- ``max_softmax``: 1 - the maximum softmax probability (Hendrycks & Gimpel, 2017), any head.
- ``max_logit``: minus the maximum logit (Hendrycks et al., 2022), any head.

The last two are functions of the ``sem_seg`` logits; the first is computed by the head
(``inference_scores``'s "nearest_similarity" map, upsampled as the logits are).
"""
import torch

__all__ = ["UNKNOWN_SCORES", "logit_unknown_score"]

UNKNOWN_SCORES = ("", "nearest_prototype", "max_softmax", "max_logit")


def logit_unknown_score(logits: torch.Tensor, name: str) -> torch.Tensor:
    """(C, H, W) logits -> (H, W) ``max_softmax`` or ``max_logit`` unknown score."""
    if name == "max_softmax":
        return 1.0 - logits.softmax(dim=0).amax(dim=0)
    if name == "max_logit":
        return -logits.amax(dim=0)
    raise ValueError(f"{name!r} is not a score of the logits (max_softmax, max_logit)")
