"""Start a larger vocabulary from a model trained on a smaller one (e.g. ADE20K-150 -> ADE20K-Full-300).

Every tensor of a checkpoint that has one entry per class is re-laid out for the new class list:
classes present in both lists (matched by name) keep their trained values at their new index; new
classes get the values a freshly built model has (prototypes: truncated normal, std
``init_std``, l2-normalised; classifier rows: normal, std 0.01, bias 0; LayerNorm over classes:
weight 1, bias 0). Everything else (backbone, decoder, norms) is copied unchanged.

Per-class tensors (ProtoSeg and the parametric baselines):
    sem_seg_head.memory.prototypes        (C, K, D)
    sem_seg_head.score_norm.{weight,bias}  (C,)          ProtoSeg's LayerNorm over class scores
    sem_seg_head.classifier.{weight,bias}  (C*K, D, 1, 1) / (C*K,)   parametric heads
    sem_seg_head.aux_head.classifier.*     (C, A, 1, 1) / (C,)       auxiliary FCN head
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["expand_vocabulary", "PER_CLASS_KEYS"]

#: per-class key -> how a new class's rows start (a key has C or C*K rows: K rows per class)
PER_CLASS_KEYS = {
    "sem_seg_head.memory.prototypes": "prototype",
    "sem_seg_head.score_norm.weight": "one",
    "sem_seg_head.score_norm.bias": "zero",
    "sem_seg_head.classifier.weight": "normal",
    "sem_seg_head.classifier.bias": "zero",
    "sem_seg_head.aux_head.classifier.weight": "normal",
    "sem_seg_head.aux_head.classifier.bias": "zero",
}


def _new_rows(kind: str, shape: Tuple[int, ...], init_std: float, generator: torch.Generator) -> torch.Tensor:
    if kind == "prototype":
        rows = torch.nn.init.trunc_normal_(torch.empty(shape), std=init_std, generator=generator)
        return F.normalize(rows, dim=-1)
    if kind == "normal":
        return torch.randn(shape, generator=generator) * 0.01
    return torch.ones(shape) if kind == "one" else torch.zeros(shape)


def expand_vocabulary(
    state: Dict[str, torch.Tensor],
    old_classes: Sequence[str],
    new_classes: Sequence[str],
    *,
    init_std: float = 0.02,
    seed: int = 0,
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Re-lay the per-class tensors of a model state dict from ``old_classes`` to ``new_classes``.

    Args:
        state: model state dict (``checkpoint["model"]``) trained on ``old_classes``.
        old_classes / new_classes: class names in id order; names are matched exactly.
    Returns:
        (new state dict, names of the classes that are new, i.e. initialised afresh).
    Raises:
        ValueError: repeated names, or a per-class tensor whose first dimension does not match
            ``len(old_classes)`` (times K), naming the key.
    """
    for name, classes in (("old", old_classes), ("new", new_classes)):
        if len(set(classes)) != len(classes):
            raise ValueError(f"the {name} class list repeats names; they must be unique to be matched")
    old_index = {c: i for i, c in enumerate(old_classes)}
    kept = [(j, old_index[c]) for j, c in enumerate(new_classes) if c in old_index]
    fresh = [c for c in new_classes if c not in old_index]
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    C_old, C_new = len(old_classes), len(new_classes)
    for key, kind in PER_CLASS_KEYS.items():
        if key not in state:
            continue
        value = state[key]
        rows_per_class, rem = divmod(value.shape[0], C_old)
        if rem or rows_per_class == 0:
            raise ValueError(f"{key} has {value.shape[0]} rows, not a multiple of the {C_old} old classes")
        grouped = value.reshape(C_old, rows_per_class, *value.shape[1:])
        expanded = _new_rows(kind, (C_new, rows_per_class, *value.shape[1:]), init_std, generator).to(value.dtype)
        for j, i in kept:
            expanded[j] = grouped[i]
        out[key] = expanded.reshape(C_new * rows_per_class, *value.shape[1:])
    return out, fresh
