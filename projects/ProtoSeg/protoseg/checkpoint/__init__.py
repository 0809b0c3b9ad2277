"""Checkpoint I/O: the checkpointer (atomic writes, every key checked, safe reading of ``.pth`` and
``.pkl`` weights) and the restricted unpickler it reads ``.pkl`` files with."""
from . import checkpointer
from .checkpointer import (
    TRUST_PICKLE_ENV,
    CheckpointMismatchError,
    CorruptCheckpointError,
    DiskFullError,
    ProtoSegCheckpointer,
    UnsafeCheckpointError,
    load_pickled_weights,
)

__all__ = list(checkpointer.__all__)
