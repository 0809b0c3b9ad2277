from .base import DecoderClassifierHead
from .parametric_head import ParametricSegHead
from .protoseg_head import ProtoSegHead

__all__ = ["DecoderClassifierHead", "ParametricSegHead", "ProtoSegHead"]
