"""How the prototype head turns a pixel's C nearest-prototype similarities into logits.

Eq. 6 has no scale, but cosine similarities lie in [-1, 1]: a softmax over them is nearly flat.
"layernorm" (the reference code) is a LayerNorm over the C classes with a learned affine (a learned
temperature and per-class bias); "temperature" divides by a fixed T. The module is the head's
(``sem_seg_head.score_norm``, in checkpoints) and is handed to
:meth:`~protoseg.modeling.prototypes.PrototypeMemory.learn` as its ``to_logits``.
"""
import torch
from torch import nn

__all__ = ["CLASS_SCORE_NORMS", "FixedTemperature", "build_class_score_norm"]

CLASS_SCORE_NORMS = ("layernorm", "temperature")


class FixedTemperature(nn.Module):
    """(N, C) scores -> scores / T (no parameters)."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def build_class_score_norm(name: str, num_classes: int, temperature: float) -> nn.Module:
    """``MODEL.PROTOSEG.CLASS_SCORE_NORM`` -> module (N, C) -> (N, C)."""
    if name == "layernorm":
        return nn.LayerNorm(num_classes)
    if name == "temperature":
        return FixedTemperature(temperature)
    raise ValueError(f"MODEL.PROTOSEG.CLASS_SCORE_NORM must be one of {CLASS_SCORE_NORMS}, got {name!r}")
