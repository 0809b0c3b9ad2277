"""Backbones registered in Detectron2's BACKBONE_REGISTRY (importing this package registers them).
All name their four stages res2..res5 (strides 4, 8, 16, 32; the dilated ResNet keeps its
dilation-set strides)."""
from .dilated_resnet import DilatedBasicBlock, build_dilated_resnet_backbone
from .hrnet import HRNetBackbone, build_hrnet_backbone
from .mit import MIT_VARIANTS, MixVisionTransformer, build_mit_backbone
from .swin import SwinBackbone, build_swin_backbone

__all__ = [
    "DilatedBasicBlock",
    "build_dilated_resnet_backbone",
    "HRNetBackbone",
    "build_hrnet_backbone",
    "MIT_VARIANTS",
    "MixVisionTransformer",
    "build_mit_backbone",
    "SwinBackbone",
    "build_swin_backbone",
]
