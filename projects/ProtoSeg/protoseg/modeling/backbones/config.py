"""Configuration keys of the backbones (Swin, HRNet, MiT); called by ``add_protoseg_config``.

Every family names its four stages ``res2..res5`` (strides 4/8/16/32), as Detectron2's ResNet, so a
decoder reads ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` the same way whatever the backbone. The defaults
are the backbones of the paper's main tables (Tables 1-3: UperNet Swin-Base, HRNetV2-W48,
SegFormer MiT-B4); the dilated ResNet keys are Detectron2's ``MODEL.RESNETS.*``.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_backbone_config", "ALL_STAGES", "stage_indices"]

ALL_STAGES = ["res2", "res3", "res4", "res5"]


def stage_indices(out_features, key: str) -> dict:
    """{name: stage index 0..3} of the ``out_features`` read from config key ``key``; ValueError
    naming the key if the list is empty or has a name outside res2..res5."""
    if not out_features or any(f not in ALL_STAGES for f in out_features):
        raise ValueError(f"{key} must be a non-empty subset of {ALL_STAGES}, got {list(out_features)}")
    return {f: ALL_STAGES.index(f) for f in out_features}


def add_backbone_config(cfg):
    """Add the backbone keys to ``cfg`` in place."""
    # ---- Swin Transformer (MODEL.BACKBONE.NAME "build_swin_backbone"), keys as Mask2Former's ----
    # Defaults: Swin-B, window 12, ImageNet-1K pretrained at 384 (the paper's Swin-Base, Table 1;
    # mmseg upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_1K).
    cfg.MODEL.SWIN = CN()
    # C, channels of the first stage (T/S 96, B 128, L 192; Swin paper Sec. 3.3).
    cfg.MODEL.SWIN.EMBED_DIM = 128
    # Blocks per stage (T [2,2,6,2], S/B/L [2,2,18,2]).
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 18, 2]
    # Attention heads per stage (T/S [3,6,12,24], B [4,8,16,32], L [6,12,24,48]).
    cfg.MODEL.SWIN.NUM_HEADS = [4, 8, 16, 32]
    # M, side of the attention windows: 7 (models pretrained at 224) or 12 (at 384).
    cfg.MODEL.SWIN.WINDOW_SIZE = 12
    # Hidden width of each block's MLP, as a multiple of its channels.
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    # Learnable bias on the query/key/value projections.
    cfg.MODEL.SWIN.QKV_BIAS = True
    # Stochastic depth, linear from 0 to this over all blocks (mmseg Swin UperNet configs: 0.3).
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    # Absolute position embedding added to the patch tokens, resized to the input (the released
    # ImageNet models have none: off, relative position bias only).
    cfg.MODEL.SWIN.APE = False
    # LayerNorm after the patch embedding (as the released models).
    cfg.MODEL.SWIN.PATCH_NORM = True
    # Image size of the ImageNet pretraining (224 or 384); sets the grid of the APE.
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 384
    # Stages returned (each through its own LayerNorm, as Swin's segmentation code).
    cfg.MODEL.SWIN.OUT_FEATURES = list(ALL_STAGES)
    # Gradient checkpointing of every block (less memory, ~30% slower training).
    cfg.MODEL.SWIN.USE_CHECKPOINT = False

    # ---- HRNetV2 (MODEL.BACKBONE.NAME "build_hrnet_backbone") -----------------------------------
    cfg.MODEL.HRNET = CN()
    # Width W of the highest-resolution branch: 18, 32 or 48 (also timm's 30, 40, 44, 64). The
    # branches have W, 2W, 4W, 8W channels. 48: the paper's HRNetV2-W48 (Tables 1-3).
    cfg.MODEL.HRNET.WIDTH = 48
    # Branches returned: res2..res5 are the stride 4/8/16/32 branches of the last stage.
    cfg.MODEL.HRNET.OUT_FEATURES = list(ALL_STAGES)
    # Norm of every conv (Detectron2 name: "BN", "SyncBN", "FrozenBN", "GN"...); the reference
    # code trains HRNet with synchronised BN.
    cfg.MODEL.HRNET.NORM = "SyncBN"
    # align_corners of the bilinear upsampling in the branch fusions. True: the reference code's
    # HRNet (openseg.pytorch) and HRNet-Semantic-Segmentation; mmseg uses False.
    cfg.MODEL.HRNET.ALIGN_CORNERS = True

    # ---- Mix Transformer of SegFormer (MODEL.BACKBONE.NAME "build_mit_backbone") ----------------
    cfg.MODEL.MIT = CN()
    # "b0".."b5" (SegFormer Sec. 3 / official release). B4: the paper's SegFormer rows (Tables
    # 1-3); Table 5's ablations use B2, Table 7 B0.
    cfg.MODEL.MIT.VARIANT = "b4"
    # Stochastic depth, linear from 0 to this over all blocks (SegFormer configs: 0.1).
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.1
    # Stages returned (each after its LayerNorm).
    cfg.MODEL.MIT.OUT_FEATURES = list(ALL_STAGES)
