"""Configuration keys of the decoders (HRNetV2, UperNet, SegFormer); called by ``add_protoseg_config``."""

__all__ = ["add_decoder_config"]


def add_decoder_config(cfg):
    """Add the decoder keys to ``cfg`` in place."""
