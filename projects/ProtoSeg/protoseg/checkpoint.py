"""Checkpoints that are written atomically and refuse a prototype memory of the wrong shape.

- fvcore's Checkpointer skips any tensor whose shape differs from the model's with a warning. For
  the prototype buffer that would silently leave random prototypes in a model that then evaluates
  as if it were trained, so a mismatch is an error that says which config keys decide the shape.
- A job killed while writing a checkpoint must not leave a truncated file under the final name
  (``model_final.pth`` is overwritten in place on a re-run): local files are written to a
  temporary name, synced and renamed into place, and so is ``last_checkpoint``.
- ``.pth`` files are read with ``torch.load(weights_only=True)`` whatever the torch version's
  default, so a checkpoint cannot execute code when it is loaded. (``.pkl`` model-zoo files are
  pickles by format and are read by Detectron2 as before.)
"""
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

__all__ = ["ProtoSegCheckpointer", "check_prototype_shapes"]

PROTOTYPE_SUFFIX = "memory.prototypes"


def check_prototype_shapes(model_state: dict, checkpoint_state: dict, source: str = "checkpoint") -> None:
    """Raise ValueError if a prototype buffer of ``checkpoint_state`` has another (C, K, D) than the
    model's."""
    for key, value in checkpoint_state.items():
        if not key.endswith(PROTOTYPE_SUFFIX) or key not in model_state:
            continue
        expected = tuple(model_state[key].shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{source}: prototype buffer '{key}' has shape {tuple(value.shape)} (C, K, D) but the model "
                f"expects {expected}. Check MODEL.SEM_SEG_HEAD.NUM_CLASSES (C), MODEL.PROTOSEG.NUM_PROTOTYPES "
                f"(K) and the decoder width (D) against the config the checkpoint was trained with."
            )


class _AtomicFile:
    """A binary or text file opened for writing at ``<path>.tmp``, renamed to ``path`` on a clean
    close and deleted on an exception."""

    def __init__(self, path: str, mode: str):
        self.path, self.tmp = path, f"{path}.tmp"
        self.file = open(self.tmp, mode)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        else:
            self.file.close()
            os.remove(self.tmp)


class _AtomicWrites:
    """Wraps a PathManager: local files opened for writing are :class:`_AtomicFile`s."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def open(self, path, mode="r", **kwargs):
        if "w" in mode and "://" not in str(path):
            return _AtomicFile(str(path), mode)
        return self._path_manager.open(path, mode, **kwargs)


class ProtoSegCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that writes atomically and whose loading fails clearly on a prototype
    shape mismatch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)

    def _load_model(self, checkpoint):
        check_prototype_shapes(self.model.state_dict(), checkpoint["model"], self._current_path)
        return super()._load_model(checkpoint)

    def _load_file(self, filename):
        if not filename.endswith(".pth"):
            return super()._load_file(filename)
        with PathManager.open(filename, "rb") as f:
            try:
                loaded = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
            except Exception as e:  # torch raises UnpicklingError (or others) for disallowed content
                raise ValueError(
                    f"{filename} is not a plain tensor checkpoint and is not loaded, since loading it would "
                    f"run pickled code ({type(e).__name__}: {str(e).splitlines()[0][:200]}). If you trust "
                    f"the file, convert it once with torch.load(..., weights_only=False) and torch.save."
                ) from e
        return loaded if "model" in loaded else {"model": loaded}

    def load(self, path, *args, **kwargs):
        self._current_path = path
        return super().load(path, *args, **kwargs)
