"""Configuration keys of the decoders (HRNetV2, UperNet, SegFormer) and of the auxiliary FCN head;
called by ``add_protoseg_config``. The FCN keys (NUM_CONVS, CONCAT_INPUT, DROPOUT) live in
``protoseg/config.py``. CONVS_DIM (Detectron2's key) is the width of the FCN, UperNet (512) and
SegFormer (768; 256 for MiT-B0) decoders; DROPOUT (0.1) is read by all but HRNetV2, whose variant
fixes it."""

__all__ = ["add_decoder_config"]


def add_decoder_config(cfg):
    """Add the decoder keys to ``cfg`` in place."""
    head = cfg.MODEL.SEM_SEG_HEAD
    # HRNetV2Decoder head after the 4 concatenated branches (decoders/hrnet.py): "mmseg" = the
    # paper's HRNet rows, mmseg fcn_hr48 (1x1 conv-BN-ReLU, no dropout, align_corners False);
    # "reference" = the public ProtoSeg code (3x3 conv with bias-BN-ReLU, Dropout2d 0.1,
    # branches upsampled with align_corners True).
    head.HRNET_VARIANT = "mmseg"
    # UperNetDecoder: output sizes of the pyramid pooling on the coarsest feature
    # (mmseg configs/_base_/models/upernet_swin.py).
    head.UPERNET_POOL_SCALES = [1, 2, 3, 6]
    # SegFormerMLPDecoder per-level embedding (decoders/segformer.py): "original" = NVlabs/SegFormer
    # (linear with bias per level, what the paper's counts follow) or "mmseg" = mmseg's
    # SegformerHead (1x1 conv-BN-ReLU per level).
    head.SEGFORMER_VARIANT = "original"
    # Auxiliary FCN head (decoders/auxiliary.py), training only, loss "loss_aux": the backbone
    # feature it reads ("res4" in mmseg's FCN and UperNet configs), "" = no auxiliary head (mmseg's
    # HRNet and SegFormer configs).
    head.AUX_IN_FEATURE = ""
    # Weight of its cross-entropy (mmseg: 0.4).
    head.AUX_LOSS_WEIGHT = 0.4
    # Width of its 3x3 conv-norm-ReLU layers (mmseg: 256).
    head.AUX_CHANNELS = 256
    # Number of those layers (mmseg: 1).
    head.AUX_NUM_CONVS = 1
