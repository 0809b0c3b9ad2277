"""Auxiliary FCN head: deep supervision of an intermediate backbone feature, in training only.

mmsegmentation trains its FCN and UperNet models with an ``auxiliary_head``: an ``FCNHead`` on
the stride-16 feature (``in_index=2``: ``res4``), ``channels=256``, ``num_convs=1``,
``concat_input=False``, ``dropout_ratio=0.1``, CE ``loss_weight=0.4``
(``configs/_base_/models/fcn_r50-d8.py``, ``configs/_base_/models/upernet_swin.py``); its HRNet
(``fcn_hr18.py``) and SegFormer configs have none. Its parameters count in mmseg's (and the
paper's) model sizes: FCN R101-D8 is 68.6M with it, ~66.2M without.

The ProtoSeg models keep it: the paper's ProtoSeg counts are the baseline's minus only the C-way
classifier (FCN R101: 68.6M -> 68.5M, the classifier being 512 x 150 + 150 = 77k parameters),
so the auxiliary head (2.4M for FCN R101) is still there. It is a parametric softmax head on
``res4`` whatever the main head is; it is not run at inference.

Its CE is the main head's: the same class weights (``MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS``; the
reference code's FSAuxCELoss, lib/loss/loss_helper.py, applies one FSCELoss with ``ce_weight`` to
both its auxiliary and its main output) and the same upsampling
(``MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS``). The reference's ProtoSeg model has no auxiliary
head, so its config has none.
"""
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ..decoders.fcn import FCNDecoder
from .cross_entropy import class_weight_tensor, upsampled_cross_entropy

__all__ = ["AuxiliaryFCNHead", "build_auxiliary_head"]


class AuxiliaryFCNHead(nn.Module):
    """A small FCN (``num_convs`` 3x3 conv-norm-ReLU of ``channels``, dropout) on one backbone
    feature and a C-way 1x1 classifier, trained by ``loss_weight`` x cross-entropy.

    Input: features[in_feature] (B, C_in, H/s, W/s) and (B, H, W) int64 labels. Output: the
    weighted scalar loss (the logits (B, C, H/s, W/s) are upsampled to the labels' size, with
    ``align_corners``; the CE weighted by ``class_weights`` when given).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_feature: str,
        num_classes: int,
        ignore_value: int,
        loss_weight: float = 0.4,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
        norm: str = "BN",
        class_weights: Optional[Sequence[float]] = None,
        align_corners: bool = False,
    ):
        super().__init__()
        if in_feature not in input_shape:
            raise KeyError(
                f"AuxiliaryFCNHead reads feature '{in_feature}' (MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE) but "
                f"the backbone outputs {sorted(input_shape)}"
            )
        self.fcn = FCNDecoder(
            input_shape,
            in_feature=in_feature,
            channels=channels,
            num_convs=num_convs,
            concat_input=False,
            dropout=dropout,
            norm=norm,
        )
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # mmseg BaseDecodeHead.init_weights
        nn.init.zeros_(self.classifier.bias)
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.align_corners = align_corners
        # as the main head's: checked, moved with the module, not in checkpoints
        self.register_buffer("class_weights", class_weight_tensor(class_weights, num_classes), persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": input_shape,
            "in_feature": head.AUX_IN_FEATURE,
            "num_classes": head.NUM_CLASSES,
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.AUX_LOSS_WEIGHT,
            "channels": head.AUX_CHANNELS,
            "num_convs": head.AUX_NUM_CONVS,
            "norm": head.NORM,
            "class_weights": tuple(head.CLASS_WEIGHTS),
            "align_corners": head.UPSAMPLE_ALIGN_CORNERS,
        }

    def forward(self, features: Dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.fcn(features))
        ce = upsampled_cross_entropy(logits, targets, self.ignore_value, self.class_weights, self.align_corners)
        return self.loss_weight * ce


def build_auxiliary_head(cfg, input_shape: Dict[str, ShapeSpec]) -> Optional[AuxiliaryFCNHead]:
    """The auxiliary head of ``cfg``, or None when MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE is ""."""
    if not cfg.MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE:
        return None
    return AuxiliaryFCNHead(cfg, input_shape)
