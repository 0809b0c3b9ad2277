"""Configuration keys of the data pipeline and test protocol; called by ``add_protoseg_config``."""

__all__ = ["add_data_config"]


def add_data_config(cfg):
    """Add the data-pipeline and test-protocol keys to ``cfg`` in place."""
