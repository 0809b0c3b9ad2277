"""Health report of the prototypes of a checkpoint: are the K prototypes of each class distinct,
and are they used? (Reference issues #9 / #15: in the released checkpoint the 10 prototypes of a
class are near identical, i.e. the model is effectively a one-prototype-per-class model.)

Two measurements per class c:

- diversity: mean (and max) cosine between its K prototypes, over the K (K - 1) ordered pairs of
  distinct prototypes (the per-class form of ``PrototypeMemory.intra_class_cosine``). Near 1: the
  prototypes have collapsed onto one vector;
- usage (needs a model and a dataset): every pixel of class c (ground truth, optionally only
  those the model also predicts as c) is assigned to the most similar of c's K prototypes, as at
  inference; counts per prototype. Pixels are the cells of the embedding grid (the decoder's
  stride) with labels resized by nearest neighbour, as the training's clustering sees them.

Warnings: "collapsed" when a class's mean pairwise cosine exceeds a threshold (0.99 by default);
"unused" for each prototype that received no pixel while its class had some.
"""
import csv
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate

from .inference import labelled_cell_embeddings, prototype_memory

__all__ = [
    "PROTOTYPE_SUFFIX",
    "load_prototypes",
    "pairwise_cosine_per_class",
    "prototype_usage",
    "HealthReport",
    "health_report",
]

PROTOTYPE_SUFFIX = "memory.prototypes"


def _find_state_dict(obj) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        return obj
    raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")


def load_prototypes(path: str, allow_pickle: bool = False) -> torch.Tensor:
    """The (C, K, D) prototype buffer of a checkpoint file.

    The file is read with ``torch.load(weights_only=True)`` (no code is executed); the state dict
    is the checkpoint itself or its "model" / "state_dict" entry; the prototypes are the tensor
    whose key ends with ``memory.prototypes`` (this project), else the only 3-dim tensor whose key
    ends with ``prototypes`` (e.g. the reference code's head).

    Args:
        allow_pickle: if the safe loader refuses the file, fall back to a full unpickling (runs
            code from the file: only for checkpoints you trust).
    Raises:
        ValueError: no (or more than one) prototype tensor, or a file the safe loader refuses.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends
        if not allow_pickle:
            raise ValueError(
                f"{path}: torch.load(weights_only=True) refused the file ({type(e).__name__}: {str(e)[:200]}). "
                f"If you trust the file, retry with --allow-pickle."
            ) from e
        obj = torch.load(path, map_location="cpu", weights_only=False)
    state = _find_state_dict(obj)
    keys = [k for k, v in state.items() if k.endswith(PROTOTYPE_SUFFIX) and torch.is_tensor(v)]
    if not keys:
        keys = [k for k, v in state.items() if k.endswith("prototypes") and torch.is_tensor(v) and v.dim() == 3]
    if len(keys) != 1:
        raise ValueError(
            f"{path}: expected one prototype tensor (key ending with '{PROTOTYPE_SUFFIX}'), found {keys or 'none'}"
            + ("" if keys else ": is it a ProtoSeg checkpoint, not a parametric baseline?")
        )
    protos = state[keys[0]]
    if protos.dim() != 3:
        raise ValueError(f"{path}: '{keys[0]}' has shape {tuple(protos.shape)}, expected (C, K, D)")
    return protos.detach().float()


def pairwise_cosine_per_class(prototypes: torch.Tensor):
    """Mean and max cosine between distinct prototypes of each class.

    Args:
        prototypes: (C, K, D).
    Returns:
        (mean (C,), max (C,)) float64 numpy arrays; zeros when K = 1.
    """
    c, k, _ = prototypes.shape
    if k < 2:
        return np.zeros(c), np.zeros(c)
    unit = F.normalize(prototypes.double(), dim=-1)
    gram = unit @ unit.transpose(1, 2)  # (C, K, K)
    off = ~torch.eye(k, dtype=torch.bool)
    pairs = gram[:, off]  # (C, K*(K-1))
    return pairs.mean(1).numpy(), pairs.max(1).values.numpy()


@torch.no_grad()
def prototype_usage(model, cfg, dataset_dicts: Sequence[dict], correct_only: bool = False):
    """Pixels of each class assigned to each of its prototypes (nearest by the model's similarity).

    Args:
        model: a ProtoSeg model in eval mode. cfg: its config.
        dataset_dicts: Detectron2 dicts with ``file_name`` and ``sem_seg_file_name``.
        correct_only: count only the pixels the model also predicts as their label (the pixels
            that update the prototypes in training with UPDATE_FROM_CORRECT_ONLY).
    Returns:
        (counts (C, K) int64, pixels (C,) int64 counted pixels per class; counts.sum(1) == pixels).
    """
    memory = prototype_memory(model)
    c, k = memory.num_classes, memory.num_prototypes
    counts = np.zeros((c, k), dtype=np.int64)
    for emb, grid in labelled_cell_embeddings(model, cfg, dataset_dicts):
        sims = memory.similarity(emb.to(memory.prototypes.device)).float().cpu()  # (n, C*K)
        valid = torch.ones_like(grid, dtype=torch.bool)
        if correct_only:
            scores = model.sem_seg_head.normalize_scores(memory.class_scores(sims.to(memory.prototypes.device))).cpu()
            valid &= scores.argmax(1) == grid
        if not valid.any():
            continue
        own = memory.own_class_scores(sims[valid], grid[valid])  # (n, K)
        slot = grid[valid] * k + own.argmax(1)
        counts += np.bincount(slot.numpy(), minlength=c * k).reshape(c, k)
    return counts, counts.sum(1)


@dataclass
class HealthReport:
    """Per-class diversity (and usage) of a prototype memory, and the warnings it raises."""

    class_names: List[str]
    mean_cosine: np.ndarray  # (C,)
    max_cosine: np.ndarray  # (C,)
    collapse_threshold: float
    counts: Optional[np.ndarray] = None  # (C, K) or None
    source: str = ""
    num_images: int = 0
    pixels_counted: str = "labelled"
    num_prototypes: int = 0
    warnings: List[str] = field(default_factory=list)

    @property
    def collapsed(self) -> np.ndarray:
        """(C,) bool, mean pairwise cosine above the threshold."""
        if self.num_prototypes < 2:
            return np.zeros(len(self.class_names), dtype=bool)
        return self.mean_cosine > self.collapse_threshold

    @property
    def unused(self) -> List[List[int]]:
        """Per class, the prototypes with no pixel while the class had pixels (empty without usage)."""
        if self.counts is None:
            return [[] for _ in self.class_names]
        return [
            [int(i) for i in np.flatnonzero(row == 0)] if row.sum() > 0 else [] for row in self.counts
        ]

    def rows(self) -> List[Dict]:
        """One dict per class (the CSV rows)."""
        rows = []
        for c, name in enumerate(self.class_names):
            row = {
                "class_id": c,
                "class": name,
                "mean_pairwise_cosine": round(float(self.mean_cosine[c]), 4),
                "max_pairwise_cosine": round(float(self.max_cosine[c]), 4),
                "collapsed": bool(self.collapsed[c]),
            }
            if self.counts is not None:
                row["pixels"] = int(self.counts[c].sum())
                row["used_prototypes"] = int((self.counts[c] > 0).sum())
                row["unused_prototypes"] = " ".join(str(i) for i in self.unused[c])
                row.update({f"count_{k}": int(v) for k, v in enumerate(self.counts[c])})
            rows.append(row)
        return rows

    def table(self) -> str:
        """The report as a text table (tabulate): counts are shown as one space-separated column."""
        headers = ["id", "class", "mean cos", "max cos"]
        if self.counts is not None:
            headers += ["pixels", "used", f"pixels per prototype (k = 0..{self.num_prototypes - 1})"]
        headers.append("status")
        data = []
        for c, name in enumerate(self.class_names):
            status = []
            if self.collapsed[c]:
                status.append("COLLAPSED")
            if self.unused[c]:
                status.append(f"{len(self.unused[c])} unused")
            line = [c, name, float(self.mean_cosine[c]), float(self.max_cosine[c])]
            if self.counts is not None:
                line += [int(self.counts[c].sum()), f"{int((self.counts[c] > 0).sum())}/{self.num_prototypes}",
                         " ".join(str(int(v)) for v in self.counts[c])]
            line.append(", ".join(status) or "ok")
            data.append(line)
        return tabulate(data, headers=headers, tablefmt="pipe", floatfmt=".3f")

    def summary(self) -> str:
        """Header lines: source, shape, mean over classes, what the usage counts are."""
        lines = [
            f"prototypes: {self.source}  C={len(self.class_names)} K={self.num_prototypes}",
            f"mean within-class pairwise cosine over classes: {float(np.mean(self.mean_cosine)):.4f} "
            f"(collapse threshold {self.collapse_threshold})",
        ]
        if self.counts is not None:
            lines.append(
                f"usage: {self.pixels_counted} pixels (embedding cells at the decoder's stride) of {self.num_images} "
                f"images, each assigned to the most similar prototype of its class"
            )
        return "\n".join(lines)

    def to_json(self) -> Dict:
        return {
            "source": self.source,
            "num_classes": len(self.class_names),
            "num_prototypes": self.num_prototypes,
            "collapse_threshold": self.collapse_threshold,
            "mean_intra_class_cosine": float(np.mean(self.mean_cosine)),
            "usage": None if self.counts is None else {"images": self.num_images, "pixels": self.pixels_counted},
            "classes": self.rows(),
            "warnings": self.warnings,
        }

    def save(self, output_dir: str) -> Dict[str, str]:
        """Write ``prototype_health.csv`` and ``prototype_health.json`` to ``output_dir``."""
        os.makedirs(output_dir, exist_ok=True)
        paths = {"csv": os.path.join(output_dir, "prototype_health.csv"),
                 "json": os.path.join(output_dir, "prototype_health.json")}
        rows = self.rows()
        with open(paths["csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)
        with open(paths["json"], "w") as f:
            json.dump(self.to_json(), f, indent=1)
        return paths


def health_report(
    prototypes: torch.Tensor,
    class_names: Optional[Sequence[str]] = None,
    collapse_threshold: float = 0.99,
    counts: Optional[np.ndarray] = None,
    source: str = "",
    num_images: int = 0,
    pixels_counted: str = "labelled",
) -> HealthReport:
    """Diversity (and usage, if ``counts`` (C, K) from :func:`prototype_usage` is given) of the
    (C, K, D) ``prototypes``, with the warnings."""
    c, k, _ = prototypes.shape
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes of prototypes")
    if counts is not None and tuple(counts.shape) != (c, k):
        raise ValueError(f"usage counts of shape {tuple(counts.shape)}, expected {(c, k)}")
    mean_cos, max_cos = pairwise_cosine_per_class(prototypes)
    report = HealthReport(
        names, mean_cos, max_cos, collapse_threshold, counts, source, num_images, pixels_counted, k
    )
    for i in np.flatnonzero(report.collapsed):
        report.warnings.append(
            f"collapsed: class {i} '{names[i]}': its {k} prototypes have mean pairwise cosine "
            f"{mean_cos[i]:.4f} > {collapse_threshold} (they act as one prototype; cf. reference issue #15)"
        )
    for i, unused in enumerate(report.unused):
        if unused:
            report.warnings.append(
                f"unused: class {i} '{names[i]}': prototype(s) {', '.join(map(str, unused))} of {k} received no "
                f"pixel out of {int(counts[i].sum())}"
            )
    return report
