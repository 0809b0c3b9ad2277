"""The project's configuration: every key with its default, and the one way to load a config.

Each group of keys is declared next to the module that reads it (``add_*_config`` there);
:func:`add_protoseg_config` adds them all, and nothing reads an undeclared key. Defaults are the
paper's (Sec. 5.1, see docs/METHOD.md in the shared docs); where the public reference code differs,
the key's comment says how to get the reference's behaviour.
"""
from pathlib import Path
from typing import Optional, Sequence, Union

from detectron2.config import CfgNode
from detectron2.config import get_cfg as get_detectron2_cfg

__all__ = ["add_protoseg_config", "load_config"]


def add_protoseg_config(cfg: CfgNode) -> None:
    """Add the ProtoSeg keys (and DeepLab's, for the dilated deep-stem ResNet) to ``cfg`` in place."""
    # imported here: the modules that declare keys import this one's load_config
    from detectron2.projects.deeplab import add_deeplab_config

    from .data.config import add_data_config
    from .engine.config import add_engine_config
    from .modeling.backbones.config import add_backbone_config
    from .modeling.decoders.config import add_decoder_config
    from .modeling.heads.config import add_head_config
    from .modeling.prototypes.config import add_prototype_config
    from .solver import add_solver_config

    add_deeplab_config(cfg)
    add_prototype_config(cfg)
    add_head_config(cfg)
    add_decoder_config(cfg)
    add_backbone_config(cfg)
    add_solver_config(cfg)
    add_engine_config(cfg)
    add_data_config(cfg)


def load_config(
    config_file: Optional[Union[str, Path]] = None, opts: Sequence = (), *, freeze: bool = False
) -> CfgNode:
    """Detectron2's defaults with the project's keys, then ``config_file`` (its ``_BASE_`` chain
    first), then ``opts`` (KEY, VALUE, ... as on the command line). Not frozen unless ``freeze``.

    The one config loader of train_net.py, the demo, the tools, the studies and the tests.
    """
    cfg = get_detectron2_cfg()
    add_protoseg_config(cfg)
    if config_file is not None:
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    if freeze:
        cfg.freeze()
    return cfg
