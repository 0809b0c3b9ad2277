"""The ProtoSeg head: nonparametric nearest-prototype classification (paper Sec. 3)."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..decoders import build_auxiliary_head, build_decoder
from ..losses import ppc_loss_from_parts, ppd_loss_from_parts
from ..prototype_scores import SIMILARITY_PRECISIONS, prototype_scores
from ..prototype_memory import PrototypeMemory
from .base import DecoderClassifierHead, resize_labels

__all__ = ["ProtoSegHead", "prototype_learning"]

CLASS_SCORE_NORMS = ("layernorm", "temperature")
PROJECTIONS = ("none", "mlp", "reference_mlp")


def mlp_layers(dim: int):
    """1x1 conv, ReLU, 1x1 conv, D -> D (the projection of the reference code)."""
    return [nn.Conv2d(dim, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1)]


class WidthNormalizedMLP(nn.Sequential):
    """The reference code's projection (``ProjectionHead`` of tfzhou/ProtoSeg
    ``lib/models/modules/contrast.py``): 1x1 conv, ReLU, 1x1 conv, then ``F.normalize(., dim=-1)``
    on the (B, D, h, w) output, an l2-normalisation over the image WIDTH, not the channels. Each
    (b, d, row) vector of w values is scaled to unit norm, so a pixel's embedding depends on its
    whole row; the per-pixel LayerNorm that follows does not undo it. Reproduced only so that the
    reference's released checkpoint gives the reference's outputs (``PROJECTION: reference_mlp``)."""

    def __init__(self, dim: int):
        super().__init__(*mlp_layers(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(x), p=2, dim=-1)


def build_projection(name: str, dim: int) -> nn.Module:
    """``MODEL.PROTOSEG.PROJECTION`` -> module (B, D, h, w) -> (B, D, h, w)."""
    if name == "mlp":
        return nn.Sequential(*mlp_layers(dim))
    if name == "reference_mlp":
        return WidthNormalizedMLP(dim)
    return nn.Identity()


@SEM_SEG_HEADS_REGISTRY.register()
class ProtoSegHead(DecoderClassifierHead):
    """Decoder -> (projection) -> per-pixel embedding -> similarity to C x K prototypes.

    Inference (Eq. 5-6): class score = similarity to the class's nearest prototype, normalised
    (LayerNorm over classes or a fixed temperature), argmax. Training adds, once per iteration and
    without gradient, the within-class clustering of the pixels onto their class's prototypes and
    the momentum update of the prototypes, and the losses CE (Eq. 7) + lambda_1 PPC (Eq. 11) +
    lambda_2 PPD (Eq. 12) returned as ``loss_ce``, ``loss_ppc``, ``loss_ppd``.

    The latest prototype statistics (0-dim tensors) are read from ``self.latest_statistics`` by a
    trainer hook, outside the step.
    """

    @configurable
    def __init__(
        self,
        decoder: nn.Module,
        *,
        num_classes: int,
        ignore_value: int,
        memory: PrototypeMemory,
        loss_weight: float = 1.0,
        ppc_weight: float = 0.01,
        ppd_weight: float = 0.01,
        ppc_temperature: float = 0.1,
        warmup_iters: int = 0,
        class_score_norm: str = "layernorm",
        class_score_temperature: float = 0.1,
        feature_layernorm: bool = True,
        projection: str = "none",
        chunk_size: int = 0,
        similarity_precision: str = "float32",
        aux_head: Optional[nn.Module] = None,
        **loss_kwargs,
    ):
        """
        Args:
            decoder: module with ``out_channels`` (D) and ``out_stride``, features -> (B, D, h, w).
            memory: the prototype memory, (C, K, D) with D = decoder.out_channels.
            aux_head: optional auxiliary FCN head (training only, ``loss_aux``), see the base class.
            loss_kwargs: the base class's ``class_weights`` and ``upsample_align_corners``.
            Other arguments: the MODEL.PROTOSEG keys of the same name (see config.py).
        """
        super().__init__(
            decoder,
            num_classes=num_classes,
            ignore_value=ignore_value,
            loss_weight=loss_weight,
            aux_head=aux_head,
            **loss_kwargs,
        )
        dim = decoder.out_channels
        if memory.dim != dim or memory.num_classes != num_classes:
            raise ValueError(f"prototype memory {memory.extra_repr()} does not fit C={num_classes}, D={dim}")
        if class_score_norm not in CLASS_SCORE_NORMS:
            raise ValueError(f"MODEL.PROTOSEG.CLASS_SCORE_NORM must be one of {CLASS_SCORE_NORMS}, got {class_score_norm!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"MODEL.PROTOSEG.PROJECTION must be one of {PROJECTIONS}, got {projection!r}")
        self.memory = memory
        self.ppc_weight, self.ppd_weight, self.ppc_temperature = ppc_weight, ppd_weight, ppc_temperature
        self.warmup_iters = warmup_iters
        self.chunk_size = chunk_size
        if similarity_precision not in SIMILARITY_PRECISIONS:
            raise ValueError(
                f"MODEL.PROTOSEG.SIMILARITY_PRECISION must be one of {SIMILARITY_PRECISIONS}, "
                f"got {similarity_precision!r}"
            )
        self.similarity_precision = similarity_precision
        self.class_score_temperature = class_score_temperature
        self.projection = build_projection(projection, dim)
        self.feature_norm = nn.LayerNorm(dim) if feature_layernorm else nn.Identity()
        self.score_norm = nn.LayerNorm(num_classes) if class_score_norm == "layernorm" else None
        # Training forwards seen so far: decides the warm-up and is restored on resume.
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._warmup_done = warmup_iters <= 0
        self._update_statistics: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg, input_shape):
        p = cfg.MODEL.PROTOSEG
        decoder = build_decoder(cfg, input_shape)
        memory = PrototypeMemory(
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            p.NUM_PROTOTYPES,
            decoder.out_channels,
            momentum=p.MOMENTUM,
            sinkhorn_iters=p.SINKHORN_ITERS,
            sinkhorn_kappa=p.SINKHORN_KAPPA,
            assignment=p.ASSIGNMENT,
            update_from_correct_only=p.UPDATE_FROM_CORRECT_ONLY,
            distance=p.DISTANCE,
            huber_delta=p.HUBER_DELTA,
            init_std=p.INIT_STD,
        )
        return {
            "decoder": decoder,
            "memory": memory,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "ppc_weight": p.PPC_WEIGHT,
            "ppd_weight": p.PPD_WEIGHT,
            "ppc_temperature": p.PPC_TEMPERATURE,
            "warmup_iters": p.WARMUP_ITERS,
            "class_score_norm": p.CLASS_SCORE_NORM,
            "class_score_temperature": p.CLASS_SCORE_TEMPERATURE,
            "feature_layernorm": p.FEATURE_LAYERNORM,
            "projection": p.PROJECTION,
            "chunk_size": p.CHUNK_SIZE,
            "similarity_precision": p.SIMILARITY_PRECISION,
            "aux_head": build_auxiliary_head(cfg, input_shape),
            **cls.loss_config(cfg),
        }

    def embed(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) decoder output -> (B*h*w, D) pixel embeddings (unit vectors for cosine)."""
        x = self.projection(embedding)
        x = self.feature_norm(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]))
        return F.normalize(x, dim=1) if self.memory.normalized else x

    def pixel_embeddings(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone features -> (B, D, h, w) pixel embeddings as the prototypes see them (after
        projection, LayerNorm and, for cosine, l2-normalisation), at the decoder's stride. For
        interpretability tools: similarity to prototype (c, k) = embeddings . prototypes[c, k]."""
        embedding = self.decoder(features)
        b, _, h, w = embedding.shape
        x = self.embed(embedding)
        return x.view(b, h, w, -1).permute(0, 3, 1, 2)

    def classify(self, embedding: torch.Tensor, targets: Optional[torch.Tensor] = None):
        b, _, h, w = embedding.shape
        x = self.embed(embedding)
        if targets is not None and not self.memory.synchronized:
            self.memory.broadcast_()  # first training step: one set of prototypes on all ranks
        learn = targets is not None and self._prototype_learning_active()
        if learn:
            labels = resize_labels(targets, (h, w)).flatten()  # (N,)
            flat_scores, own, lse = prototype_scores(
                x, self.memory.prototypes, labels, self.ppc_temperature, self.memory.distance,
                self.memory.huber_delta, self.chunk_size, self.similarity_precision,
            )
            extras = (x, labels, own, lse)
        else:
            flat_scores = self.memory.nearest_class_scores(x, self.chunk_size, self.similarity_precision)  # (N, C)
            extras = None
        flat_scores = self.normalize_scores(flat_scores)
        # (N, C) in either memory order (inference gives the transpose of a (C, N) tensor) ->
        # contiguous (B, C, h, w) with one copy at most (none for one (C, N) image): a permuted,
        # channels-last map would make every later resize copy (B, C, H, W).
        scores = flat_scores.t().reshape(self.num_classes, b, h, w).transpose(0, 1).contiguous()
        return scores, extras if extras is None else (*extras, flat_scores)

    @property
    def latest_statistics(self) -> Dict[str, torch.Tensor]:
        """Statistics of the latest prototype update (0-dim tensors; empty before the first):
        "used_share" of the update's pixel counts and "intra_class_cosine" of the current
        prototypes, computed here when read rather than in every training step."""
        if not self._update_statistics:
            return {}
        return {
            "used_share": PrototypeMemory.used_share(self._update_statistics["pixel_counts"]),
            "intra_class_cosine": self.memory.intra_class_cosine(),
        }

    def normalize_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(N, C) nearest-prototype similarities -> logits: LayerNorm over classes or 1/T."""
        return self.score_norm(scores) if self.score_norm is not None else scores / self.class_score_temperature

    def _prototype_learning_active(self) -> bool:
        # Reads the iteration buffer (a host sync) only during the warm-up.
        if not self._warmup_done:
            self._warmup_done = int(self.iteration) >= self.warmup_iters
        return self._warmup_done

    def auxiliary_losses(self, scores: torch.Tensor, extras, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.iteration += 1
        if extras is None:  # warm-up: no prototype learning
            zero = scores.sum() * 0.0
            return {"loss_ppc": zero, "loss_ppd": zero}
        x, labels, own, lse, flat_scores = extras
        ppc, ppd, _, self._update_statistics = prototype_learning(
            self.memory, x, labels, own, lse, flat_scores, self.ppc_temperature
        )
        return {"loss_ppc": self.ppc_weight * ppc, "loss_ppd": self.ppd_weight * ppd}


def prototype_learning(memory: PrototypeMemory, x, labels, own, lse, class_scores, ppc_temperature: float):
    """One iteration of prototype learning and its losses, from the outputs of
    :func:`prototype_scores`: cluster and update the memory (no gradient), then PPC and PPD.

    Args:
        x: (N, D) embeddings. labels: (N,) int64 (ignored pixels outside [0, C)).
        own: (N, K) similarities to the own class's prototypes. lse: (N,) PPC log-sum-exp.
        class_scores: (N, C) the model's class scores (correct-only rule).
    Returns:
        (PPC, PPD, prototype targets (N,) with -1 where ignored, prototype statistics).
    """
    proto_targets, stats = memory.cluster_and_update(x, own.detach(), class_scores.detach(), labels)
    valid = proto_targets >= 0
    assigned = torch.where(valid, proto_targets - labels * memory.num_prototypes, torch.zeros_like(labels))
    target_sim = own.gather(1, assigned[:, None]).squeeze(1)  # (N,)
    ppc = ppc_loss_from_parts(lse, target_sim, valid, ppc_temperature)
    return ppc, ppd_loss_from_parts(target_sim, valid, memory.distance), proto_targets, stats
