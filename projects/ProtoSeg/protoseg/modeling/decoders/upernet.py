"""UperNet decoder (Xiao et al., ECCV 2018) as mmsegmentation's ``UPerHead``
(``mmseg/models/decode_heads/uper_head.py``; ``configs/_base_/models/upernet_swin.py``:
``pool_scales=(1, 2, 3, 6)``, ``channels=512``, ``dropout_ratio=0.1``, ``align_corners=False``).

Structure (every conv is conv (no bias) -> BN -> ReLU, as mmseg's ConvModule):
pyramid pooling on the coarsest feature, concatenated with it, 3x3 ``bottleneck``; 1x1
``lateral_convs`` on the other levels; top-down path (upsample and add); 3x3 ``fpn_convs`` on every
level but the coarsest; all levels upsampled to the finest and concatenated; 3x3 ``fpn_bottleneck``.
"""
from typing import Dict, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from .build import DECODER_REGISTRY
from .fcn import conv_norm_relu
from .multiscale import check_multilevel_features, multilevel_decoder_args, resize_to

__all__ = ["UperNetDecoder", "PyramidPoolingModule"]


class PyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling: for each scale s, average-pool to s x s, 1x1 conv-norm-ReLU,
    upsample back; concatenated after the input.

    Input (B, C, h, w). Output (B, C + len(pool_scales) * channels, h, w). The 1 x 1 pooled map
    leaves BatchNorm one value per channel and image: train with 2+ images per process, or SyncBN
    (NORM "SyncBN", as mmseg's configs) across processes.
    """

    def __init__(
        self, in_channels: int, channels: int, pool_scales: Sequence[int], norm: str, align_corners: bool
    ):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_norm_relu(in_channels, channels, norm, kernel_size=1))
            for s in pool_scales
        )
        self.align_corners = align_corners
        self.out_channels = in_channels + len(pool_scales) * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize_to(stage(x), size, self.align_corners) for stage in self.stages], dim=1)


@DECODER_REGISTRY.register()
class UperNetDecoder(nn.Module):
    """PPM + FPN, all levels fused at the finest stride.

    Input: features[f] (B, C_f, H/s_f, W/s_f) for f in ``in_features`` (fine to coarse, e.g.
    res2..res5 with 128/256/512/1024 channels for Swin-B). Output: (B, channels, H/s_0, W/s_0).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: Sequence[str],
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str = "BN",
        align_corners: bool = False,
    ):
        super().__init__()
        in_channels, strides = check_multilevel_features(type(self).__name__, in_features, input_shape)
        self.in_features = list(in_features)
        self.out_stride = strides[0]
        self.out_channels = channels
        self.align_corners = align_corners
        self.ppm = PyramidPoolingModule(in_channels[-1], channels, pool_scales, norm, align_corners)
        self.bottleneck = conv_norm_relu(self.ppm.out_channels, channels, norm, kernel_size=3)
        self.lateral_convs = nn.ModuleList(
            conv_norm_relu(c, channels, norm, kernel_size=1) for c in in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            conv_norm_relu(channels, channels, norm, kernel_size=3) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = conv_norm_relu(len(in_channels) * channels, channels, norm, kernel_size=3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**multilevel_decoder_args(cfg, input_shape), "pool_scales": tuple(cfg.MODEL.SEM_SEG_HEAD.UPERNET_POOL_SCALES)}

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = [features[f] for f in self.in_features]
        levels = [conv(x) for conv, x in zip(self.lateral_convs, inputs[:-1])]
        levels.append(self.bottleneck(self.ppm(inputs[-1])))
        for i in range(len(levels) - 1, 0, -1):  # top-down: coarse into fine
            levels[i - 1] = levels[i - 1] + resize_to(levels[i], levels[i - 1].shape[-2:], self.align_corners)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize_to(x, size, self.align_corners) for x in outs], dim=1))
        return self.dropout(fused)
