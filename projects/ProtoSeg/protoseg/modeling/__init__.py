"""Modeling: the prototype memory, its clustering and losses (public functional API), heads,
decoders, the meta-architecture. Importing registers the heads, decoders and meta-architecture in
Detectron2's registries."""
from .clustering import sinkhorn_knopp
from .losses import masked_cross_entropy, ppc_loss, ppd_loss
from .prototype_memory import PrototypeMemory
from .backbones import build_dilated_resnet_backbone
from .decoders import DECODER_REGISTRY, build_decoder
from .heads import ParametricSegHead, ProtoSegHead
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
