"""Prototype learning, in one place: the memory of C x K prototypes (``memory.py``), the
pixel-prototype scores (``scores.py``, ``distances.py``), the within-class Sinkhorn-Knopp
clustering (``sinkhorn.py``) and the prototype losses PPC / PPD (``losses.py``). The head calls
:meth:`PrototypeMemory.learn` once per training step; nothing here imports the heads."""
from .distances import DISTANCES, pairwise_similarity
from .losses import ppc_loss, ppc_loss_from_parts, ppd_loss, ppd_loss_from_parts
from .memory import PrototypeLearning, PrototypeMemory
from .scores import SIMILARITY_PRECISIONS, nearest_prototype_scores, prototype_scores
from .sinkhorn import sinkhorn_knopp

__all__ = [
    "DISTANCES",
    "SIMILARITY_PRECISIONS",
    "PrototypeLearning",
    "PrototypeMemory",
    "nearest_prototype_scores",
    "pairwise_similarity",
    "ppc_loss",
    "ppc_loss_from_parts",
    "ppd_loss",
    "ppd_loss_from_parts",
    "prototype_scores",
    "sinkhorn_knopp",
]
