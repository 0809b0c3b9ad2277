"""The project's configuration: every key with its default, and the one way to load a config.

Each key is declared once, next to the module that reads it (a table of ``Key(name, default, rule,
meaning)`` in that package's ``config.py``, or in ``solver.py``; see ``config_checks.py``; the
prototype memory's keys in ``modeling/heads/config.py``, as its room imports nothing of the package);
:func:`add_protoseg_config` applies them all, and nothing reads an undeclared key. Defaults are the
paper's (Sec. 5.1, see docs/METHOD.md in the shared docs); where the public reference code differs,
the key's meaning says how to get the reference's behaviour. docs/CONFIG.md lists every key
(written by tools/config_reference.py).
"""
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from detectron2.config import CfgNode
from detectron2.config import get_cfg as get_detectron2_cfg

__all__ = ["add_protoseg_config", "declared_keys", "load_config"]


def _declaring_modules():
    """The ``add_*_config`` functions of the modules that declare keys, in the order they apply."""
    # imported here: the modules that declare keys import this one's load_config
    from .data.config import add_data_config
    from .engine.config import add_engine_config
    from .modeling.backbones.config import add_backbone_config
    from .modeling.config import add_segmentor_config
    from .modeling.decoders.config import add_decoder_config
    from .modeling.heads.config import add_head_config
    from .solver import add_solver_config

    return (add_head_config, add_decoder_config, add_backbone_config, add_segmentor_config,
            add_solver_config, add_engine_config, add_data_config)


def add_protoseg_config(cfg: CfgNode) -> None:
    """Add the project's keys to ``cfg`` (Detectron2's defaults) in place."""
    for add in _declaring_modules():
        add(cfg)


def declared_keys() -> Tuple:
    """Every :class:`~protoseg.config_checks.Key` the project declares: module by module in the order
    :func:`add_protoseg_config` applies them, each module's in its table's order."""
    from .config_checks import KEYS

    modules = [add.__module__ for add in _declaring_modules()]
    return tuple(sorted(KEYS.values(), key=lambda key: modules.index(key.module)))


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
