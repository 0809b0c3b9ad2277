"""HRNetV2 decoder: the four HRNet branches upsampled to the finest one, concatenated and fused.

Two variants (``MODEL.SEM_SEG_HEAD.HRNET_VARIANT``):

* ``"mmseg"``, the paper's HRNet rows (the paper is "implemented on MMSegmentation"; its 65.9M
  follows this head): mmsegmentation ``configs/_base_/models/fcn_hr18.py`` widened by
  ``configs/hrnet/fcn_hr48_512x512_160k_ade20k.py``: ``FCNHead`` with ``in_index=(0, 1, 2, 3)``,
  ``input_transform='resize_concat'``, ``channels=sum(in_channels)`` (720 for W48),
  ``kernel_size=1``, ``num_convs=1``, ``concat_input=False``, ``dropout_ratio=-1`` (no dropout),
  ``align_corners=False``; its ConvModule has no conv bias in front of BN.
* ``"reference"``, the public ProtoSeg code (tfzhou/ProtoSeg ``lib/models/nets/hrnet.py``,
  ``HRNet_W48_Proto.cls_head``): 3x3 conv *with* bias -> BN -> ReLU -> Dropout2d(0.1), branches
  upsampled with ``align_corners=True``.

State-dict names, for a converter of the reference checkpoint (``decoder.`` inside the head):
``fuse.weight`` / ``fuse.bias`` = reference ``cls_head.0.weight`` / ``cls_head.0.bias``;
``fuse.norm.{weight,bias,running_mean,running_var}`` = reference ``cls_head.1.0.*`` (its
``BNReLU`` is ``Sequential(BatchNorm2d, ReLU)``). Dropout and ReLU hold no state.
"""
from typing import Dict, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from .build import DECODER_REGISTRY
from .fcn import conv_norm_relu
from .multiscale import check_multilevel_features, resize_to

__all__ = ["HRNetV2Decoder", "HRNET_VARIANTS"]

# Constructor arguments of each variant (sources in the module docstring).
HRNET_VARIANTS = {
    "mmseg": dict(kernel_size=1, conv_bias=False, dropout=0.0, align_corners=False),
    "reference": dict(kernel_size=3, conv_bias=True, dropout=0.1, align_corners=True),
}


@DECODER_REGISTRY.register()
class HRNetV2Decoder(nn.Module):
    """Resize every input to the first (finest) one, concatenate, one conv-norm-ReLU of the same
    width, dropout.

    Input: features[f] (B, C_f, H/s_f, W/s_f) for f in ``in_features`` (fine to coarse, e.g.
    res2..res5 with 48/96/192/384 channels for HRNet-W48). Output: (B, sum C_f, H/s_0, W/s_0)
    (720 channels at stride 4 for W48).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: Sequence[str],
        kernel_size: int = 1,
        conv_bias: bool = False,
        dropout: float = 0.0,
        align_corners: bool = False,
        norm: str = "BN",
    ):
        super().__init__()
        channels, strides = check_multilevel_features(type(self).__name__, in_features, input_shape)
        self.in_features = list(in_features)
        self.out_stride = strides[0]
        self.out_channels = sum(channels)
        self.align_corners = align_corners
        self.fuse = conv_norm_relu(self.out_channels, self.out_channels, norm, kernel_size, bias=conv_bias)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def from_config(cls, cfg, input_shape):
        variant = cfg.MODEL.SEM_SEG_HEAD.HRNET_VARIANT
        if variant not in HRNET_VARIANTS:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.HRNET_VARIANT must be one of {sorted(HRNET_VARIANTS)}, got {variant!r}"
            )
        return {
            "input_shape": input_shape,
            "in_features": cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            **HRNET_VARIANTS[variant],
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        size = features[self.in_features[0]].shape[-2:]
        x = torch.cat([resize_to(features[f], size, self.align_corners) for f in self.in_features], dim=1)
        return self.dropout(self.fuse(x))
