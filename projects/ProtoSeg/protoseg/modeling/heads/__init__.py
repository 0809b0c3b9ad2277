from .auxiliary import AuxiliaryFCNHead, build_auxiliary_head
from .base import DecoderClassifierHead
from .parametric_head import ParametricSegHead
from .protoseg_head import ProtoSegHead

__all__ = ["AuxiliaryFCNHead", "DecoderClassifierHead", "ParametricSegHead", "ProtoSegHead", "build_auxiliary_head"]
