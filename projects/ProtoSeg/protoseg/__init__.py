"""ProtoSeg for Detectron2. Importing this package registers its heads, decoders and datasets."""
from . import data, modeling  # noqa: F401  (registration side effects)
from .config import add_protoseg_config

data.register_all()

__all__ = ["add_protoseg_config"]
