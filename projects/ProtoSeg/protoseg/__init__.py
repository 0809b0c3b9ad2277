"""ProtoSeg for Detectron2. Importing this package registers its heads, decoders and datasets,
and first silences the known-harmless warnings of its dependencies (:func:`filter_known_warnings`)."""
import logging
import re
import warnings

#: (category, message regex) of third-party Python warnings that say nothing about a run:
#:
#: * Detectron2 v0.6 decorates two box-regression functions with ``torch.jit.script``, which recent
#:   torch reports as deprecated (a FutureWarning each, when ``detectron2.data`` / ``.modeling``
#:   are imported);
#: * Detectron2's ``comm.all_gather`` serialises through ``torch.ByteStorage`` (TypedStorage
#:   deprecation, multi-process runs);
#: * Detectron2's ``DefaultTrainer`` wraps the model in DDP with ``broadcast_buffers=False``, which
#:   recent torch reports as deprecated while advising to keep it where buffers must not be synced
#:   at init (multi-process runs).
KNOWN_WARNINGS = (
    (FutureWarning, r"`torch\.jit\.script` is (deprecated|not supported)"),
    (UserWarning, r"TypedStorage is deprecated"),
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
)

#: (logger, message regex) of third-party log records of the same kind: torch.utils.cpp_extension,
#: when imported (by Detectron2's ``collect_env``, TensorBoard, ...) on a machine with a CUDA toolkit
#: but no GPU, logs "No CUDA runtime is found, using CUDA_HOME=..." (nothing is compiled here).
KNOWN_LOG_WARNINGS = (("torch.utils.cpp_extension", r"No CUDA runtime is found"),)


class _DropMatching(logging.Filter):
    """Drops the records of one logger whose message matches a regex."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record):
        return not self.pattern.match(record.getMessage())


def filter_known_warnings() -> None:
    """Silence :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_WARNINGS`, each by its message and
    category (or logger) only; every other warning is shown as before. Idempotent. Called when
    ``protoseg`` is imported (before Detectron2's modules that warn at import), so in every process
    that imports it: the main one, the launcher's workers and the DataLoader workers."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, message in KNOWN_LOG_WARNINGS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == message for f in log.filters):
            log.addFilter(_DropMatching(message))


filter_known_warnings()

from . import data, modeling  # noqa: E402  (registration side effects; after the filters)
from .config import add_protoseg_config  # noqa: E402

data.register_all()

__all__ = ["add_protoseg_config", "filter_known_warnings"]
