"""What a model is made of, in numbers: learnable parameters by part, and the prototype buffers.

The paper's parameter columns (Tables 1-4, 6, 7) count learnable parameters of the whole model; for
ProtoSeg the prototypes are buffers (not learned by SGD) and so do not count, which is why a ProtoSeg
model is its parametric baseline minus the C-way classifier.
"""
from collections import OrderedDict
from typing import Dict

from torch import nn

from .prototypes import PrototypeMemory

__all__ = ["parameter_counts"]


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """Counts of ``model`` (a meta-architecture, possibly DDP-wrapped):

    ``learnable`` (parameters with ``requires_grad``), ``frozen`` (the others, e.g. a frozen stem),
    ``prototype_buffer`` (numel of all prototype memories, C*K*D each), and ``learnable/<part>``
    for each part: ``backbone``, and each child of ``sem_seg_head`` (``decoder``, ``classifier``,
    ``aux_head``, ``class_score_norm`` ...).
    """
    model = getattr(model, "module", model)
    counts = OrderedDict(learnable=0, frozen=0, prototype_buffer=0)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            counts["frozen"] += p.numel()
            continue
        counts["learnable"] += p.numel()
        parts = name.split(".")
        part = parts[1] if parts[0] == "sem_seg_head" and len(parts) > 2 else parts[0]
        counts[f"learnable/{part}"] = counts.get(f"learnable/{part}", 0) + p.numel()
    counts["prototype_buffer"] = sum(m.prototypes.numel() for m in model.modules() if isinstance(m, PrototypeMemory))
    return counts
