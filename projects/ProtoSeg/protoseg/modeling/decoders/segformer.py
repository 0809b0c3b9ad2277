"""SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021).

Each level is embedded to ``embed_dim`` channels, upsampled (bilinear, ``align_corners=False``)
to the finest level, concatenated, fused by a 1x1 conv (no bias) -> BN -> ReLU (``linear_fuse``),
then dropout 0.1. ``embed_dim`` (``MODEL.SEM_SEG_HEAD.CONVS_DIM``) is 768 for MiT-B1..B5 and 256
for B0, as NVlabs/SegFormer's configs (``decoder_params=dict(embed_dim=...)``) and as the paper's
counts require (Table 4: prototype parameters C x 768; 64.1M for B4, 3.8M for B0, the SegFormer
paper's numbers). mmsegmentation's own SegFormer configs differ: ``segformer_mit-b4_*`` inherit
``channels=256`` from ``configs/_base_/models/segformer_mit-b0.py`` (61.4M for B4, not 64.1M).

Two variants of the per-level embedding (``MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT``):

* ``"original"`` (default): NVlabs/SegFormer ``mmseg/models/decode_heads/segformer_head.py``,
  ``MLP`` = ``nn.Linear`` with bias per pixel, no norm nor activation, kept here as a 1x1 conv with
  bias (the same parameters: a converter reshapes (E, C) weights to (E, C, 1, 1)); levels
  concatenated coarse to fine ([c4, c3, c2, c1]) as that code does, so its fuse weights load
  unpermuted.
* ``"mmseg"``: mmsegmentation's ``SegformerHead`` (``mmseg/models/decode_heads/segformer_head.py``):
  1x1 conv (no bias) -> BN -> ReLU per level (``ConvModule``); levels concatenated fine to coarse.

The variants differ by 4 x embed_dim parameters (3,072 for E=768: BN's 2E against a bias's E per
level), below the precision of the paper's counts, which fit both.
"""
from typing import Dict, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from .build import DECODER_REGISTRY
from .fcn import conv_norm_relu
from .multiscale import check_multilevel_features, multilevel_decoder_args, resize_to

__all__ = ["SegFormerMLPDecoder", "SEGFORMER_VARIANTS"]

SEGFORMER_VARIANTS = ("original", "mmseg")


@DECODER_REGISTRY.register()
class SegFormerMLPDecoder(nn.Module):
    """Per-level linear embedding, upsample to the finest level, concatenate, 1x1 fuse, dropout.

    Input: features[f] (B, C_f, H/s_f, W/s_f) for f in ``in_features`` (fine to coarse, e.g.
    res2..res5 with 64/128/320/512 channels for MiT-B2..B5). Output: (B, embed_dim, H/s_0, W/s_0).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: Sequence[str],
        embed_dim: int = 768,
        variant: str = "original",
        dropout: float = 0.1,
        norm: str = "BN",
    ):
        super().__init__()
        if variant not in SEGFORMER_VARIANTS:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT must be one of {SEGFORMER_VARIANTS}, got {variant!r}"
            )
        in_channels, strides = check_multilevel_features(type(self).__name__, in_features, input_shape)
        self.in_features = list(in_features)
        self.out_stride = strides[0]
        self.out_channels = embed_dim
        if variant == "mmseg":
            self.embeds = nn.ModuleList(conv_norm_relu(c, embed_dim, norm, kernel_size=1) for c in in_channels)
        else:
            self.embeds = nn.ModuleList(nn.Conv2d(c, embed_dim, kernel_size=1) for c in in_channels)
        self.coarse_first = variant == "original"
        self.fuse = conv_norm_relu(len(in_channels) * embed_dim, embed_dim, norm, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def from_config(cls, cfg, input_shape):
        args = multilevel_decoder_args(cfg, input_shape)
        args["embed_dim"] = args.pop("channels")
        return {**args, "variant": cfg.MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT}

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        size = features[self.in_features[0]].shape[-2:]
        levels = [resize_to(embed(features[f]), size) for embed, f in zip(self.embeds, self.in_features)]
        if self.coarse_first:
            levels = levels[::-1]
        return self.dropout(self.fuse(torch.cat(levels, dim=1)))
