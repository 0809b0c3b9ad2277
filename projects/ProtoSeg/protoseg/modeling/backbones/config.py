"""Configuration keys of the backbones (Swin, HRNet, MiT, the dilated ResNet's DeepLab keys); applied
by ``add_protoseg_config``.

Every family names its four stages ``res2..res5`` (strides 4/8/16/32, ``stages.py``), as Detectron2's
ResNet, so a decoder reads ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` the same way whatever the backbone. The
defaults are the backbones of the paper's main tables (Tables 1-3: UperNet Swin-Base, HRNetV2-W48,
SegFormer MiT-B4); the dilated ResNet's other keys are Detectron2's ``MODEL.RESNETS.*``.
"""
from ...config_checks import Boolean, Integer, Items, Key, Number, OneOf, Subset, add_keys, declare
from .dilated_resnet import STEM_TYPES
from .hrnet import HRNET_WIDTHS
from .mit import MIT_VARIANTS
from .stages import ALL_STAGES

__all__ = ["KEYS", "NORMS", "add_backbone_config"]

#: the norm names of Detectron2's ``get_norm``
NORMS = ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "LN")

_PER_STAGE = Items(Integer(ge=1), length=len(ALL_STAGES))
_DROP_PATH = Number(ge=0, lt=1)

KEYS = declare(__name__, [
    # ---- dilated ResNet (MODEL.BACKBONE.NAME "build_dilated_resnet_backbone", dilated_resnet.py):
    # the keys of Detectron2's DeepLab ResNet that it reads, with DeepLab's defaults ----
    Key("MODEL.RESNETS.STEM_TYPE", "deeplab", OneOf(STEM_TYPES),
        "\"deeplab\" (3-conv deep stem, 3-32-32-64 as mmseg's ResNetV1c) or \"basic\" (one 7x7 conv)."),
    Key("MODEL.RESNETS.RES4_DILATION", 1, OneOf((1, 2)),
        "Dilation of res4 (2 with RES5_DILATION 4: output stride 8, the \"D8\" models; 1 with 2: stride 16)."),
    Key("MODEL.RESNETS.RES5_MULTI_GRID", [1, 2, 4], Items(Integer(ge=1), length=3),
        "Dilation multipliers of the three res5 blocks of ResNet-50/101/152 (DeepLabV3's multi-grid); "
        "[1, 1, 1]: plain dilation (mmseg's ResNetV1c)."),
    # ---- Swin Transformer (MODEL.BACKBONE.NAME "build_swin_backbone", swin.py), keys as Mask2Former's.
    # Defaults: Swin-B, window 12, ImageNet-1K pretrained at 384 (the paper's Swin-Base, Table 1; mmseg
    # upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_1K) ----
    Key("MODEL.SWIN.EMBED_DIM", 128, Integer(ge=1),
        "C, channels of the first stage (T/S 96, B 128, L 192; Swin paper Sec. 3.3)."),
    Key("MODEL.SWIN.DEPTHS", [2, 2, 18, 2], _PER_STAGE,
        "Blocks per stage (T [2,2,6,2], S/B/L [2,2,18,2])."),
    Key("MODEL.SWIN.NUM_HEADS", [4, 8, 16, 32], _PER_STAGE,
        "Attention heads per stage (T/S [3,6,12,24], B [4,8,16,32], L [6,12,24,48])."),
    Key("MODEL.SWIN.WINDOW_SIZE", 12, Integer(ge=1),
        "M, side of the attention windows: 7 (models pretrained at 224) or 12 (at 384)."),
    Key("MODEL.SWIN.MLP_RATIO", 4.0, Number(gt=0),
        "Hidden width of each block's MLP, as a multiple of its channels."),
    Key("MODEL.SWIN.QKV_BIAS", True, Boolean(),
        "Learnable bias on the query/key/value projections."),
    Key("MODEL.SWIN.DROP_PATH_RATE", 0.3, _DROP_PATH,
        "Stochastic depth, linear from 0 to this over all blocks (mmseg Swin UperNet configs: 0.3)."),
    Key("MODEL.SWIN.APE", False, Boolean(),
        "Absolute position embedding added to the patch tokens, resized to the input (the released ImageNet "
        "models have none: off, relative position bias only)."),
    Key("MODEL.SWIN.PATCH_NORM", True, Boolean(),
        "LayerNorm after the patch embedding (as the released models)."),
    Key("MODEL.SWIN.PRETRAIN_IMG_SIZE", 384, Integer(ge=1),
        "Image size of the ImageNet pretraining (224 or 384); sets the grid of the APE."),
    Key("MODEL.SWIN.OUT_FEATURES", list(ALL_STAGES), Subset(ALL_STAGES),
        "Stages returned (each through its own LayerNorm, as Swin's segmentation code)."),
    Key("MODEL.SWIN.USE_CHECKPOINT", False, Boolean(),
        "Gradient checkpointing of every block (less memory, ~30% slower training)."),
    # ---- HRNetV2 (MODEL.BACKBONE.NAME "build_hrnet_backbone", hrnet.py) ----
    Key("MODEL.HRNET.WIDTH", 48, OneOf(HRNET_WIDTHS),
        "Width W of the highest-resolution branch (timm's HRNets); the branches have W, 2W, 4W, 8W channels. "
        "48: the paper's HRNetV2-W48 (Tables 1-3)."),
    Key("MODEL.HRNET.OUT_FEATURES", list(ALL_STAGES), Subset(ALL_STAGES),
        "Branches returned: res2..res5 are the stride 4/8/16/32 branches of the last stage."),
    Key("MODEL.HRNET.NORM", "SyncBN", OneOf(NORMS),
        "Norm of every conv (a Detectron2 norm name); the reference code trains HRNet with synchronised BN."),
    Key("MODEL.HRNET.ALIGN_CORNERS", True, Boolean(),
        "align_corners of the bilinear upsampling in the branch fusions. True: the reference code's HRNet "
        "(openseg.pytorch) and HRNet-Semantic-Segmentation; mmseg uses False."),
    # ---- Mix Transformer of SegFormer (MODEL.BACKBONE.NAME "build_mit_backbone", mit.py) ----
    Key("MODEL.MIT.VARIANT", "b4", OneOf(tuple(MIT_VARIANTS)),
        "SegFormer Sec. 3 / official release. B4: the paper's SegFormer rows (Tables 1-3); Table 5's "
        "ablations use B2, Table 7 B0."),
    Key("MODEL.MIT.DROP_PATH_RATE", 0.1, _DROP_PATH,
        "Stochastic depth, linear from 0 to this over all blocks (SegFormer configs: 0.1)."),
    Key("MODEL.MIT.OUT_FEATURES", list(ALL_STAGES), Subset(ALL_STAGES),
        "Stages returned (each after its LayerNorm)."),
])


def add_backbone_config(cfg):
    """Add the backbone keys to ``cfg`` in place."""
    add_keys(cfg, KEYS)
