"""Parametric baselines: the same decoder with a learned classifier (softmax, or K learned
prototypes per class with max over K, as Table 4 of the paper compares)."""
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..decoders import build_decoder
from .auxiliary import build_auxiliary_head
from .base import DecoderClassifierHead

__all__ = ["ParametricSegHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class ParametricSegHead(DecoderClassifierHead):
    """Decoder + 1x1 conv classifier to C*K outputs; class score = max over its K outputs.

    K = 1 is the standard softmax classifier of the paper's baselines (C x (D + 1) parameters).
    """

    @configurable
    def __init__(self, decoder: nn.Module, *, num_classes: int, num_prototypes: int = 1, **kwargs):
        super().__init__(decoder, num_classes=num_classes, **kwargs)
        self.num_prototypes = num_prototypes
        self.classifier = nn.Conv2d(decoder.out_channels, num_classes * num_prototypes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "decoder": build_decoder(cfg, input_shape),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "num_prototypes": cfg.MODEL.PARAMETRIC.NUM_PROTOTYPES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "aux_head": build_auxiliary_head(cfg, input_shape),
            **cls.loss_config(cfg),
        }

    def class_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(embedding)  # (B, C*K, h, w)
        if self.num_prototypes > 1:
            b, _, h, w = logits.shape
            logits = logits.view(b, self.num_classes, self.num_prototypes, h, w).amax(dim=2)
        return logits
