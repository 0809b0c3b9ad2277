from .build import DECODER_REGISTRY, build_decoder
from .fcn import FCNDecoder
from .hrnet import HRNetV2Decoder
from .segformer import SegFormerMLPDecoder
from .upernet import UperNetDecoder

__all__ = [
    "DECODER_REGISTRY",
    "build_decoder",
    "FCNDecoder",
    "HRNetV2Decoder",
    "UperNetDecoder",
    "SegFormerMLPDecoder",
]
