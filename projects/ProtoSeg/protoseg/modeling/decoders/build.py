"""Registry of decoders: modules that turn backbone features into a per-pixel embedding map."""
from detectron2.utils.registry import Registry

DECODER_REGISTRY = Registry("PROTOSEG_DECODER")
DECODER_REGISTRY.__doc__ = """
Decoders map ``Dict[str, Tensor]`` backbone features to one embedding map (B, D, H/s, W/s).
A decoder has ``out_channels`` (D) and ``out_stride`` (s). Built by ``build_decoder(cfg, input_shape)``
from ``cfg.MODEL.SEM_SEG_HEAD.DECODER_NAME``; the same decoder serves the ProtoSeg head and the
parametric baselines, which differ only in the classifier on top.
"""


def build_decoder(cfg, input_shape):
    """Build the decoder named by ``cfg.MODEL.SEM_SEG_HEAD.DECODER_NAME``."""
    return DECODER_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.DECODER_NAME)(cfg, input_shape)
