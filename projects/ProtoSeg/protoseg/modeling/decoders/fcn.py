"""FCN decoder (Long et al.; the paper's FCN rows use mmsegmentation's FCNHead on a dilated ResNet)."""
from typing import Dict, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm

from .build import DECODER_REGISTRY

__all__ = ["FCNDecoder"]


def conv_norm_relu(
    in_channels: int, out_channels: int, norm: str, kernel_size: int = 3, bias: Optional[bool] = None
) -> nn.Module:
    """kxk conv -> norm -> ReLU, 'same' padding. The conv has a bias only without norm, unless
    ``bias`` says otherwise (the reference HRNet head has both). Submodules: the conv's
    ``weight``/``bias``, ``norm``."""
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        bias=not norm if bias is None else bias,
        norm=get_norm(norm, out_channels),
        activation=nn.ReLU(inplace=True),
    )


@DECODER_REGISTRY.register()
class FCNDecoder(nn.Module):
    """``num_convs`` 3x3 conv-norm-ReLU on the last input feature; optionally a 3x3 conv on the
    concatenation of input and output (``concat_input``); dropout.

    Input: features[in_feature] (B, C_in, H/s, W/s). Output: (B, channels, H/s, W/s).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_feature: str,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        dropout: float = 0.1,
        norm: str = "BN",
    ):
        super().__init__()
        if in_feature not in input_shape:
            raise KeyError(
                f"FCNDecoder reads feature '{in_feature}' (MODEL.SEM_SEG_HEAD.IN_FEATURES) but the "
                f"backbone outputs {sorted(input_shape)}"
            )
        self.in_feature = in_feature
        in_channels = input_shape[in_feature].channels
        self.out_stride = input_shape[in_feature].stride
        self.out_channels = channels
        self.convs = nn.Sequential(
            *[conv_norm_relu(in_channels if i == 0 else channels, channels, norm) for i in range(num_convs)]
        )
        self.fuse = conv_norm_relu(in_channels + channels, channels, norm) if concat_input else None
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "in_feature": cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES[-1],
            "channels": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "num_convs": cfg.MODEL.SEM_SEG_HEAD.NUM_CONVS,
            "concat_input": cfg.MODEL.SEM_SEG_HEAD.CONCAT_INPUT,
            "dropout": cfg.MODEL.SEM_SEG_HEAD.DROPOUT,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        y = self.convs(x)
        if self.fuse is not None:
            y = self.fuse(torch.cat([x, y], dim=1))
        return self.dropout(y)
