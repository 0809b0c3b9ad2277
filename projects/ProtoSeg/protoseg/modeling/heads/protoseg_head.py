"""The ProtoSeg head: nonparametric nearest-prototype classification (paper Sec. 3)."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..decoders import build_decoder
from ..prototypes import PrototypeMemory
from .auxiliary import build_auxiliary_head
from .base import DecoderClassifierHead
from .score_norm import build_class_score_norm

__all__ = ["ProtoSegHead"]

PROJECTIONS = ("none", "mlp", "reference_mlp")


def resize_labels(labels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of label maps (B, H, W) -> (B, h, w), int64, any label range."""
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()


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
    (LayerNorm over classes or a fixed temperature), argmax. In training, the head hands the
    embeddings and labels to its :class:`PrototypeMemory` once per step (:meth:`PrototypeMemory.learn`:
    scores, clustering, momentum update, PPC and PPD); the base class adds the CE (Eq. 7). Losses:
    ``loss_ce``, ``loss_ppc``, ``loss_ppd`` (Eq. 13), and ``loss_aux`` with an auxiliary head.

    The head owns what is learned by gradient (projection, LayerNorms) and the prototype warm-up
    (``iteration``, in checkpoints); the memory owns the prototypes and their statistics.
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
        warmup_iters: int = 0,
        class_score_norm: str = "layernorm",
        class_score_temperature: float = 0.1,
        feature_layernorm: bool = True,
        projection: str = "none",
        aux_head: Optional[nn.Module] = None,
        **loss_kwargs,
    ):
        """
        Args:
            decoder: module with ``out_channels`` (D) and ``out_stride``, features -> (B, D, h, w).
            memory: the prototype memory, (C, K, D) with D = decoder.out_channels.
            aux_head: optional auxiliary FCN head (training only, ``loss_aux``), see the base class.
            loss_kwargs: the base class's ``class_weights`` and ``upsample_align_corners``.
            Other arguments: the MODEL.PROTOSEG keys of the same name (see heads/config.py).
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
        if projection not in PROJECTIONS:
            raise ValueError(f"MODEL.PROTOSEG.PROJECTION must be one of {PROJECTIONS}, got {projection!r}")
        self.memory = memory
        self.warmup_iters = warmup_iters
        self.projection = build_projection(projection, dim)
        self.feature_norm = nn.LayerNorm(dim) if feature_layernorm else nn.Identity()
        self.score_norm = build_class_score_norm(class_score_norm, num_classes, class_score_temperature)
        # Training forwards seen so far: decides the warm-up and is restored on resume.
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._warmup_done = warmup_iters <= 0

    @classmethod
    def from_config(cls, cfg, input_shape):
        p = cfg.MODEL.PROTOSEG
        decoder = build_decoder(cfg, input_shape)
        return {
            "decoder": decoder,
            "memory": PrototypeMemory(cfg, dim=decoder.out_channels),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "warmup_iters": p.WARMUP_ITERS,
            "class_score_norm": p.CLASS_SCORE_NORM,
            "class_score_temperature": p.CLASS_SCORE_TEMPERATURE,
            "feature_layernorm": p.FEATURE_LAYERNORM,
            "projection": p.PROJECTION,
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

    def normalize_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(N, C) nearest-prototype similarities -> logits: LayerNorm over classes or 1/T."""
        return self.score_norm(scores)

    def prototype_memories(self) -> List[nn.Module]:
        return [self.memory]

    def class_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        b, _, h, w = embedding.shape
        logits = self.normalize_scores(self.memory.nearest_class_scores(self.embed(embedding)))
        return self._score_map(logits, b, h, w)

    def inference_scores(self, embedding: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Class scores and "nearest_similarity" (B, 1, h, w): max_c max_k similarity of each pixel
        to the prototypes, before the class-score normalisation (from one similarity pass)."""
        b, _, h, w = embedding.shape
        similarities = self.memory.nearest_class_scores(self.embed(embedding))  # (N, C)
        nearest = similarities.amax(dim=1).view(b, 1, h, w)
        return self._score_map(self.normalize_scores(similarities), b, h, w), {"nearest_similarity": nearest}

    def training_scores(
        self, embedding: torch.Tensor, targets: torch.Tensor
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        b, _, h, w = embedding.shape
        x = self.embed(embedding)
        labels = resize_labels(targets, (h, w)).flatten()  # (N,)
        frozen = not self._prototype_learning_active()
        self.iteration += 1
        learning = self.memory.learn(x, labels, self.score_norm, frozen=frozen)
        return self._score_map(learning.class_logits, b, h, w), learning.losses

    def _score_map(self, logits: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """(N, C) logits in either memory order (inference gives the transpose of a (C, N) tensor)
        -> contiguous (B, C, h, w) with one copy at most (none for one (C, N) image): a permuted,
        channels-last map would make every later resize copy (B, C, H, W)."""
        return logits.t().reshape(self.num_classes, b, h, w).transpose(0, 1).contiguous()

    def _prototype_learning_active(self) -> bool:
        # Reads the iteration buffer (a host sync) only during the warm-up.
        if not self._warmup_done:
            self._warmup_done = int(self.iteration) >= self.warmup_iters
        return self._warmup_done
