"""HRNetV2 backbone (Wang et al., TPAMI 2020) on timm's ``HighResolutionNet`` modules.

timm's HRNet is built without its classification head (``head=""``: no ``incre_modules``,
``downsamp_modules``, ``final_layer``, ``classifier``), so its parameters are exactly the
segmentation backbone's, named as the official HRNet-ImageNet release (``conv1``, ``layer1``,
``transition1``, ``stage2.0.branches...``). The forward is ours, because the segmentation HRNet
fuses branches differently from the classification one timm implements: a lower-resolution branch
is upsampled *bilinearly to the size* of the higher one (HRNet-Semantic-Segmentation, and the
reference code's openseg.pytorch HRNet), where timm upsamples by a nearest-neighbour scale factor,
which also fails when a branch size is odd (inputs not a multiple of 32). With size-based fusion
any H x W works; branch i has ceil(H / 2^(i+2)) rows.
"""
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.models.hrnet import HighResolutionModule, HighResolutionNet, cfg_cls

from .stages import ALL_STAGES, stage_indices

__all__ = ["HRNetBackbone", "build_hrnet_backbone", "replace_batchnorm"]

HRNET_WIDTHS = sorted(int(name[len("hrnet_w"):]) for name in cfg_cls if name[len("hrnet_w"):].isdigit())


def replace_batchnorm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by Detectron2's ``get_norm(norm, C)``, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, get_norm(norm, child.num_features))
        else:
            replace_batchnorm(child, norm)
    return module


class HRNetBackbone(Backbone):
    """HRNetV2-W{width}: the four branches of the last stage as res2..res5, (B, W * 2^i, H/4/2^i,
    W/4/2^i), i = 0..3. Input (B, 3, H, W), any H and W."""

    @configurable
    def __init__(
        self,
        *,
        width: int = 48,
        out_features: Sequence[str] = tuple(ALL_STAGES),
        norm: str = "BN",
        align_corners: bool = True,
        in_channels: int = 3,
    ):
        super().__init__()
        if width not in HRNET_WIDTHS:
            raise ValueError(f"MODEL.HRNET.WIDTH must be one of {HRNET_WIDTHS} (timm's HRNets), got {width}")
        stages = stage_indices(out_features, "MODEL.HRNET.OUT_FEATURES")
        self.encoder = HighResolutionNet(cfg_cls[f"hrnet_w{width}"], in_chans=in_channels, head="")
        if norm != "BN":
            replace_batchnorm(self.encoder, norm)
        self.align_corners = align_corners
        self._out_features = list(out_features)
        self._out_feature_channels = {f: width * 2**i for f, i in stages.items()}
        self._out_feature_strides = {f: 4 * 2**i for f, i in stages.items()}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        h = cfg.MODEL.HRNET
        return {
            "width": h.WIDTH,
            "out_features": h.OUT_FEATURES,
            "norm": h.NORM,
            "align_corners": h.ALIGN_CORNERS,
            "in_channels": input_shape.channels,
        }

    def _fuse(self, module: HighResolutionModule, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """One multi-resolution module: its branches, then every output i sums all branches brought
        to branch i (strided 3x3 convs from higher resolutions, 1x1 conv + bilinear resize from lower)."""
        xs = [branch(x) for branch, x in zip(module.branches, xs)]
        if module.num_branches == 1:
            return xs
        fused = []
        for i, fuse_layers in enumerate(module.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(fuse_layers):
                if j < i:
                    y = y + layer(xs[j])
                elif j > i:
                    conv, bn = layer[0], layer[1]  # layer[2] is timm's scale-factor Upsample, not used
                    y = y + F.interpolate(
                        bn(conv(xs[j])), size=xs[i].shape[-2:], mode="bilinear", align_corners=self.align_corners
                    )
            fused.append(module.fuse_act(y))
        return fused

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        e = self.encoder
        x = e.act1(e.bn1(e.conv1(x)))
        x = e.act2(e.bn2(e.conv2(x)))
        xs = [e.layer1(x)]
        for transition, stage in ((e.transition1, e.stage2), (e.transition2, e.stage3), (e.transition3, e.stage4)):
            # a new branch comes from the lowest-resolution one (official HRNet); others keep theirs
            xs = [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            for module in stage:
                xs = self._fuse(module, xs)
        return {f: xs[ALL_STAGES.index(f)] for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_hrnet_backbone(cfg, input_shape: ShapeSpec):
    """HRNetV2 from ``MODEL.HRNET.*``."""
    return HRNetBackbone(cfg, input_shape)
