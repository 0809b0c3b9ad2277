"""Configuration keys of the decoders (FCN, HRNetV2, UperNet, SegFormer); applied by
``add_protoseg_config``. CONVS_DIM (Detectron2's key) is the width of the FCN, UperNet (512) and
SegFormer (768; 256 for MiT-B0) decoders; DROPOUT (0.1) is read by all but HRNetV2, whose variant
fixes it."""
from ...config_checks import Boolean, Integer, Items, Key, Number, OneOf, Registered, add_keys, declare
from .build import DECODER_REGISTRY
from .hrnet import HRNET_VARIANTS
from .segformer import SEGFORMER_VARIANTS

__all__ = ["KEYS", "add_decoder_config"]

KEYS = declare(__name__, [
    Key("MODEL.SEM_SEG_HEAD.DECODER_NAME", "FCNDecoder", Registered(DECODER_REGISTRY, "DECODER_REGISTRY"),
        "Name in protoseg's DECODER_REGISTRY of the module that turns backbone features into the per-pixel "
        "embedding (B, D, H/s, W/s) that the classifier (prototypes or parametric) reads."),
    # FCN decoder (the paper's FCN baseline, as mmsegmentation's FCNHead, decoders/fcn.py)
    Key("MODEL.SEM_SEG_HEAD.NUM_CONVS", 2, Integer(ge=1),
        "FCNDecoder: its 3x3 conv-BN-ReLU layers of CONVS_DIM channels on IN_FEATURES[-1]."),
    Key("MODEL.SEM_SEG_HEAD.CONCAT_INPUT", True, Boolean(),
        "FCNDecoder: then a 3x3 conv on [input, output]."),
    Key("MODEL.SEM_SEG_HEAD.DROPOUT", 0.1, Number(ge=0, lt=1),
        "Dropout before the classifier (FCN, UperNet and SegFormer decoders)."),
    Key("MODEL.SEM_SEG_HEAD.HRNET_VARIANT", "mmseg", OneOf(tuple(HRNET_VARIANTS)),
        "HRNetV2Decoder head after the 4 concatenated branches (decoders/hrnet.py): \"mmseg\" = the paper's "
        "HRNet rows, mmseg fcn_hr48 (1x1 conv-BN-ReLU, no dropout, align_corners False); \"reference\" = the "
        "public ProtoSeg code (3x3 conv with bias-BN-ReLU, Dropout2d 0.1, branches upsampled with "
        "align_corners True)."),
    Key("MODEL.SEM_SEG_HEAD.UPERNET_POOL_SCALES", [1, 2, 3, 6], Items(Integer(ge=1)),
        "UperNetDecoder: output sizes of the pyramid pooling on the coarsest feature (mmseg configs/_base_/"
        "models/upernet_swin.py)."),
    Key("MODEL.SEM_SEG_HEAD.SEGFORMER_VARIANT", "original", OneOf(SEGFORMER_VARIANTS),
        "SegFormerMLPDecoder per-level embedding (decoders/segformer.py): \"original\" = NVlabs/SegFormer "
        "(linear with bias per level, what the paper's counts follow) or \"mmseg\" = mmseg's SegformerHead "
        "(1x1 conv-BN-ReLU per level)."),
])


def add_decoder_config(cfg):
    """Add the decoder keys to ``cfg`` in place."""
    add_keys(cfg, KEYS)
