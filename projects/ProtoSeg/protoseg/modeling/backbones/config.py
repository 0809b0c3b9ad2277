"""Configuration keys of the backbones (Swin, HRNet, MiT); called by ``add_protoseg_config``."""

__all__ = ["add_backbone_config"]


def add_backbone_config(cfg):
    """Add the backbone keys to ``cfg`` in place."""
