"""Dilated ResNets at any depth (the "D8" / "D16" backbones of FCN-style segmentation).

Depths 50/101/152 are Detectron2's DeepLab ResNet (``build_resnet_deeplab_backbone``: deep stem,
dilated res4/res5, multi-grid). Detectron2 has no dilated ResNet-18/34 (its builder refuses res5
dilation for basic blocks); here basic blocks get the dilation of mmsegmentation's ResNetV1c
(first 3x3 conv dilated, stride replaced by dilation), so small models can run at stride 8 too.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet
from detectron2.projects.deeplab.resnet import DeepLabStem, build_resnet_deeplab_backbone

__all__ = ["DilatedBasicBlock", "STEM_TYPES", "build_dilated_resnet_backbone"]

#: MODEL.RESNETS.STEM_TYPE: DeepLab's 3-conv deep stem or the 7x7 conv
STEM_TYPES = ("deeplab", "basic")
BASIC_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


class DilatedBasicBlock(BasicBlock):
    """Detectron2's BasicBlock whose first 3x3 conv has dilation (and padding) ``dilation``."""

    def __init__(self, in_channels, out_channels, *, stride=1, dilation=1, norm="BN"):
        super().__init__(in_channels, out_channels, stride=stride, norm=norm)
        self.conv1.dilation = (dilation, dilation)
        self.conv1.padding = (dilation, dilation)


@BACKBONE_REGISTRY.register()
def build_dilated_resnet_backbone(cfg, input_shape: ShapeSpec):
    """ResNet-{18,34,50,101,152} with ``MODEL.RESNETS.RES4_DILATION`` / ``RES5_DILATION``
    (2 / 4: output stride 8; 1 / 2: output stride 16) and ``STEM_TYPE`` "deeplab" (3-conv deep
    stem) or "basic". For 18/34, ``RES2_OUT_CHANNELS`` sets the width (64 in the standard model)."""
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in BASIC_BLOCKS_PER_STAGE:
        return build_resnet_deeplab_backbone(cfg, input_shape)
    r = cfg.MODEL.RESNETS
    norm = r.NORM
    if r.STEM_TYPE == "deeplab":
        stem = DeepLabStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=norm)
    elif r.STEM_TYPE == "basic":
        stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=norm)
    else:
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE must be one of {STEM_TYPES}, got {r.STEM_TYPE!r}")
    dilations = {2: 1, 3: 1, 4: r.RES4_DILATION, 5: r.RES5_DILATION}
    last_stage = max({"res2": 2, "res3": 3, "res4": 4, "res5": 5}[f] for f in r.OUT_FEATURES)
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    stages = []
    for stage, num_blocks in zip(range(2, last_stage + 1), BASIC_BLOCKS_PER_STAGE[depth]):
        dilation = dilations[stage]
        first_stride = 1 if stage == 2 or dilation > 1 else 2
        stages.append(
            ResNet.make_stage(
                DilatedBasicBlock,
                num_blocks,
                in_channels=in_channels,
                out_channels=out_channels,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                dilation=dilation,
                norm=norm,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
