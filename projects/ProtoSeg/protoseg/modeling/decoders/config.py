"""Configuration keys of the decoders (FCN, HRNetV2, UperNet, SegFormer); called by
``add_protoseg_config``. CONVS_DIM (Detectron2's key) is the width of the FCN,
UperNet (512) and SegFormer (768; 256 for MiT-B0) decoders; DROPOUT (0.1) is read by all but
HRNetV2, whose variant fixes it."""

__all__ = ["add_decoder_config"]


def add_decoder_config(cfg):
    """Add the decoder keys to ``cfg`` in place."""
    head = cfg.MODEL.SEM_SEG_HEAD
    # Name in protoseg's DECODER_REGISTRY of the module that turns backbone features into the
    # per-pixel embedding (B, D, H/s, W/s) that the classifier (prototypes or parametric) reads.
    head.DECODER_NAME = "FCNDecoder"
    # FCN decoder (the paper's FCN baseline, as mmsegmentation's FCNHead): NUM_CONVS 3x3 conv-BN-
    # ReLU of CONVS_DIM channels (CONVS_DIM is Detectron2's key) on IN_FEATURES[-1], then, if
    # CONCAT_INPUT, a 3x3 conv on [input, output]; dropout before the classifier.
    head.NUM_CONVS = 2
    head.CONCAT_INPUT = True
    head.DROPOUT = 0.1
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
