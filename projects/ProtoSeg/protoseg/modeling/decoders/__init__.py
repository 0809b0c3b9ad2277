from .build import DECODER_REGISTRY, build_decoder
from .fcn import FCNDecoder

__all__ = ["DECODER_REGISTRY", "build_decoder", "FCNDecoder"]
