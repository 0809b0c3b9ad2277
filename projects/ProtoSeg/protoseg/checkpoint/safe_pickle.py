"""Unpickling that builds only containers, scalars and numpy arrays: what the files the project
reads as pickles hold (ADE20K's official ``index_ade20k.pkl``, Detectron2 / Caffe2 ``.pkl`` weight
files). Any other global is refused before anything of the file runs, since unpickling an arbitrary
global can run code. Needs numpy only (the dataset scripts load this module on its own)."""
import _compat_pickle
import codecs
import collections
import importlib
import pickle

import numpy as np

__all__ = ["RefusedGlobal", "safe_load"]


def _numpy_globals() -> dict:
    """The globals that numpy's pickles of arrays, dtypes and scalars name, under NumPy 1.x's
    (``numpy.core``) and 2.x's (``numpy._core``) module names, mapped to this numpy's objects."""
    core = importlib.import_module("numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core")
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct  # ndarray, protocol <= 4
        allowed[(f"{module}.multiarray", "scalar")] = core.multiarray.scalar  # numpy scalars
        allowed[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer  # ndarray, protocol 5
    return allowed


#: (module, name) -> object: every global such a file may name
_ALLOWED = {
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float,
                                             complex, bool, slice)},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    **_numpy_globals(),
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed ones (``name``: "module.name")."""

    def __init__(self, name: str):
        super().__init__(f"it names the global {name}, which is neither a builtin container nor a numpy array type")
        self.name = name


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # Python 2 names of protocol 0-2 pickles (__builtin__.set, ...), mapped as pickle maps them
        key = _compat_pickle.NAME_MAPPING.get((module, name)) or (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        try:
            return _ALLOWED[key]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def safe_load(file, encoding: str = "latin1"):
    """Unpickle the open binary ``file``; :class:`RefusedGlobal` for any global not allowed."""
    return _SafeUnpickler(file, encoding=encoding).load()
