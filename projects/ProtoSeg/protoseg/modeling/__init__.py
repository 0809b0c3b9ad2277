"""Modeling: backbones, decoders, heads, prototype learning (``prototypes/``) and the
meta-architecture. Importing registers the backbones, heads, decoders and meta-architecture in
Detectron2's registries."""
from .backbones import build_dilated_resnet_backbone
from .decoders import DECODER_REGISTRY, build_decoder
from .heads import ParametricSegHead, ProtoSegHead
from .heads.cross_entropy import masked_cross_entropy
from .prototypes import PrototypeMemory, ppc_loss, ppd_loss, sinkhorn_knopp
from .segmentor import ProtoSegSemanticSegmentor, sliding_windows

__all__ = [
    "sinkhorn_knopp",
    "ppc_loss",
    "ppd_loss",
    "masked_cross_entropy",
    "PrototypeMemory",
    "DECODER_REGISTRY",
    "build_decoder",
    "build_dilated_resnet_backbone",
    "ProtoSegHead",
    "ParametricSegHead",
    "ProtoSegSemanticSegmentor",
    "sliding_windows",
]
