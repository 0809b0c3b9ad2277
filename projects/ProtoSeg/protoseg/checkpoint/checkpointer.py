"""Checkpoints that are written atomically, read safely and loaded only when they fit the model.

- fvcore's Checkpointer skips any tensor whose shape differs from the model's, and any missing or
  unexpected key, with a warning; the model then evaluates as if it were trained. Here every
  missing, unexpected or mis-shaped key is an error naming the keys, with two explicit exceptions
  when a training run is initialised from ``MODEL.WEIGHTS``: a file holding backbone keys only
  (ImageNet weights from ``tools/convert_pretrained.py``) initialises the backbone, and the keys
  under ``skip_weights`` prefixes (``train_net.py --skip-weights``: a new classifier for
  fine-tuning on another class set) are neither loaded nor checked. For a prototype buffer of
  another shape the error also says which config keys decide the shape.
- A job killed while writing a checkpoint must not leave a truncated file under the final name
  (``model_final.pth`` is overwritten in place on a re-run): local files are written to a
  temporary name (``<name>.<host>-<pid>-<random>.tmp``, unique per process and save), synced and
  renamed into place, and so is ``last_checkpoint``. A checkpointer that saves into a directory
  removes the temporary files that a killed save of this machine left there (those whose process
  no longer runs), never those of a live process or of another machine.
- A save that runs out of disk space raises :class:`DiskFullError`, one line naming the file, "no
  space left on device" and the space left; its temporary file is removed, and the files saved
  before (and ``last_checkpoint``) are untouched.
- ``model_best.pth`` is saved with ``tag_last=False``: ``--resume`` continues from the latest
  checkpoint, not from the best one.
- ``.pth`` files are read with ``torch.load(weights_only=True)`` whatever the torch version's
  default, and ``.pkl`` files (Detectron2 / Caffe2 model zoo: dicts of numpy arrays) with an
  unpickler that builds only containers, scalars and numpy arrays, so a checkpoint cannot execute
  code when it is loaded (``PROTOSEG_TRUST_PICKLED_WEIGHTS=1`` reads a trusted ``.pkl`` with plain
  pickle). A truncated or corrupt file is reported as such.
"""
import errno
import logging
import os
import pickle
import re
import shutil
from typing import Iterable, Optional, Sequence, Tuple

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from fvcore.common.checkpoint import _filter_reused_missing_keys, _IncompatibleKeys

from ..processes import writer_tag, written_by_dead_process
from .safe_pickle import RefusedGlobal, safe_load

__all__ = [
    "ProtoSegCheckpointer",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "DiskFullError",
    "UnsafeCheckpointError",
    "load_pickled_weights",
    "TRUST_PICKLE_ENV",
]

logger = logging.getLogger("protoseg")

PROTOTYPE_SUFFIX = "memory.prototypes"
BACKBONE_PREFIX = "backbone."
TEMP_SUFFIX = ".tmp"
#: set to 1 to read ``.pkl`` weights with plain ``pickle`` (which runs any code the file holds)
TRUST_PICKLE_ENV = "PROTOSEG_TRUST_PICKLED_WEIGHTS"
_LISTED = 10  # keys named per kind in an error
# Keys that need not come from a checkpoint: BatchNorm counters (converted ImageNet weights have
# none; torch fills them in) and the pixel statistics (Detectron2 sets them from the config).
_OPTIONAL_SUFFIXES = ("num_batches_tracked", "pixel_mean", "pixel_std")


class CheckpointMismatchError(ValueError):
    """The keys or shapes of a checkpoint do not fit the model."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read: truncated, corrupt or not a checkpoint."""


class DiskFullError(OSError):
    """A checkpoint could not be written: the disk (or the user's quota) is full."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds pickled objects beyond tensors / arrays, which could run code."""


def _prototype_message(key: str, found, expected) -> str:
    return (
        f"prototype buffer '{key}' has shape {tuple(found)} (C, K, D) but the model expects {tuple(expected)}. "
        f"Check MODEL.SEM_SEG_HEAD.NUM_CLASSES (C), MODEL.PROTOSEG.NUM_PROTOTYPES (K) and the decoder width (D) "
        f"against the config the checkpoint was trained with"
    )


# ---- reading files safely ---------------------------------------------------------------------
def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _corrupt(filename: str, error: BaseException) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"file {filename} is truncated or corrupt ({_first_line(error)}); it is not a complete checkpoint. "
        f"Copy or download it again; for a checkpoint of an interrupted run, use an earlier model_*.pth"
    )


def load_pickled_weights(file, filename: str, encoding: str = "latin1"):
    """Unpickle a ``.pkl`` weight file (open binary ``file``, named ``filename`` in errors) with an
    unpickler that builds only containers, scalars and numpy arrays.

    Raises:
        UnsafeCheckpointError: the file names any other global (and nothing of it has run).
        CorruptCheckpointError: the file is truncated or not a pickle.
    """
    try:
        return safe_load(file, encoding=encoding)
    except RefusedGlobal as e:
        raise UnsafeCheckpointError(
            f"{filename} is not loaded: it names the global '{e.name}', which Detectron2 .pkl weights "
            f"(dicts of numpy arrays) never hold, and unpickling it could run code. If you trust the file, "
            f"load it with {TRUST_PICKLE_ENV}=1 set in the environment (plain pickle), or convert it once "
            f"to a .pth of tensors"
        ) from None
    except OSError:
        raise
    except Exception as e:  # truncated / not a pickle: EOFError, UnpicklingError, ValueError, ...
        raise _corrupt(filename, e) from e


def _trust_pickles() -> bool:
    return os.environ.get(TRUST_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


# what torch's weights-only unpickler says when it refuses content (not when the file is corrupt)
_REFUSED_BY_TORCH = re.compile(r"GLOBAL (?P<name>\S+)|unrecognized function|Can only (create|build)|must be imported")


def _refused_by_torch(error: Exception) -> Optional[str]:
    """What ``torch.load(weights_only=True)`` refused to build (a global's name, or its message),
    or None when the error is another one (a truncated or corrupt file)."""
    match = _REFUSED_BY_TORCH.search(str(error)) if isinstance(error, pickle.UnpicklingError) else None
    if match is None:
        return None
    return match.group("name") or str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]


def load_tensor_file(filename: str) -> dict:
    """``torch.load(weights_only=True)`` of ``filename`` as ``{"model": ..., ...}``.

    Raises:
        UnsafeCheckpointError: the file holds pickled objects that torch refuses to build.
        CorruptCheckpointError: the file is truncated, corrupt or not a torch file.
    """
    with PathManager.open(filename, "rb") as f:
        try:
            loaded = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except OSError:
            raise
        except Exception as e:
            refused = _refused_by_torch(e)
            if refused is None:
                raise _corrupt(filename, e) from e
            raise UnsafeCheckpointError(
                f"{filename} is not a plain tensor checkpoint and is not loaded, since loading it would run "
                f"pickled code (refused: {refused}). If you trust the file, convert it once with "
                f"torch.load(..., weights_only=False) and torch.save."
            ) from None
    if not isinstance(loaded, dict):
        raise CorruptCheckpointError(f"file {filename} holds a {type(loaded).__name__}, not a checkpoint dict")
    return loaded if "model" in loaded else {"model": loaded}


# ---- checking keys ----------------------------------------------------------------------------
def _listing(keys: Sequence[str]) -> str:
    more = f", ... ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def _under(key: str, prefixes: Iterable[str]) -> bool:
    """Whether ``key`` is ``prefix`` or lies under it (module prefixes, no trailing dot needed)."""
    return any(key == p or key.startswith(p.rstrip(".") + ".") for p in prefixes)


def _mismatch_message(source: str, missing, unexpected, wrong, initialising: bool) -> str:
    """The error for keys that do not fit: each kind counted and listed (shapes for the
    mis-shaped), then what to do."""
    parts = []
    if wrong:
        shapes = [f"{k} {tuple(c)} in the checkpoint vs {tuple(m)} in the model" for k, c, m in wrong]
        parts.append(f"{len(wrong)} mis-shaped: {_listing(shapes)}")
    if missing:
        parts.append(f"{len(missing)} missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model: {_listing(unexpected)}")
    text = f"{source} does not fit the model ({'; '.join(parts)}). "
    text += "".join(f"The {_prototype_message(k, c, m)}. " for k, c, m in wrong if k.endswith(PROTOTYPE_SUFFIX))
    modules = sorted({k.rsplit(".", 1)[0] for k, _, _ in wrong})
    if initialising and modules:
        flags = " ".join(f"--skip-weights {m}" for m in modules[:_LISTED])
        return text + (
            f"To fine-tune from it (e.g. on another class set), leave the mis-shaped modules out: "
            f"train_net.py {flags} (they keep their initialisation)"
        )
    return text + "Use the config the checkpoint was trained with (e.g. MODEL.SEM_SEG_HEAD.NUM_CLASSES)"


#: the classifier of each kind of head, by the key that only it has: (kind, key, config)
_HEAD_KINDS = (
    ("ProtoSeg", "sem_seg_head." + PROTOTYPE_SUFFIX, "ProtoSegHead: prototype buffer"),
    ("parametric", "sem_seg_head.classifier.weight", "ParametricSegHead: learned 1x1 classifier"),
)


def _head_kind(keys: Iterable[str]) -> Optional[Tuple[str, str]]:
    """(kind, description) of the head whose classifier key is among ``keys``, or None."""
    keys = set(keys)
    return next(((kind, text) for kind, key, text in _HEAD_KINDS if key in keys), None)


def _other_head_message(supplied: Iterable[str], model: torch.nn.Module) -> str:
    """"This checkpoint is of another head (...) than the config's (...). " when the classifier
    keys of the checkpoint and of the model are of different kinds of head, else ""."""
    theirs, ours = _head_kind(supplied), _head_kind(model.state_dict())
    if theirs is None or ours is None or theirs[0] == ours[0]:
        return ""
    return (
        f"This checkpoint is of another head ({theirs[0]}, {theirs[1]}) than the config's ({ours[0]}, "
        f"{ours[1]}): use a {theirs[0]} config (MODEL.SEM_SEG_HEAD.NAME) for it. "
    )


# ---- atomic writes ----------------------------------------------------------------------------
#: errors of a write that ran out of space: the disk, or the user's quota on it
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TEMPORARY = re.compile(r"(?P<final>.+\.pth|last_checkpoint)\.(?P<tag>[^/]+)" + re.escape(TEMP_SUFFIX) + "$")


def _size(n: float) -> str:
    """1.5 GB / 230.0 MB / 12.0 kB."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} bytes"


def _disk_full(path: str, errors) -> Optional[DiskFullError]:
    """A :class:`DiskFullError` for ``path`` if one of ``errors`` (exceptions or None) is an
    out-of-space ``OSError``, else None."""
    if not any(isinstance(e, OSError) and e.errno in _NO_SPACE for e in errors):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free on {folder}"
    except OSError:
        free = f"free space of {folder} unknown"
    return DiskFullError(
        errno.ENOSPC,
        f"cannot write {path}: no space left on device (errno ENOSPC; {free}). The partial file is removed and "
        f"the checkpoints saved before are kept (last_checkpoint names the latest complete one): free some space, "
        f"or point OUTPUT_DIR elsewhere, and continue with --resume",
    )


class _AtomicFile:
    """A binary or text file opened for writing at a temporary name of this process
    (``<path>.<host>-<pid>-<random>.tmp``), renamed to ``path`` on a clean close and deleted on
    an exception; an out-of-space error becomes a :class:`DiskFullError` naming ``path``."""

    def __init__(self, path: str, mode: str):
        self.path, self.tmp = path, f"{path}.{writer_tag()}{TEMP_SUFFIX}"
        self.file = open(self.tmp, mode)
        self.write_error: Optional[OSError] = None  # what the file's write raised (torch may re-raise another error)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as e:
            self.write_error = e
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
            except OSError as e:
                self._discard()
                raise (_disk_full(self.path, [e]) or e) from e
            os.replace(self.tmp, self.path)
            return False
        self._discard()
        full = _disk_full(self.path, [exc, self.write_error, exc.__context__])
        if full is not None:
            raise full from exc
        return False

    def _discard(self) -> None:
        """Close (whatever the close says: the disk may be full) and delete the temporary file."""
        try:
            self.file.close()
        except OSError:
            pass
        try:
            os.remove(self.tmp)
        except FileNotFoundError:
            pass


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


def _left_by_dead_save(name: str) -> bool:
    """Whether a file name is a temporary name of :class:`_AtomicFile` (``<checkpoint>.pth.<tag>.tmp``,
    ``last_checkpoint.<tag>.tmp``) whose process, on this machine, no longer runs."""
    match = _TEMPORARY.match(name)
    return match is not None and written_by_dead_process(match["tag"])


class ProtoSegCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that writes atomically, reads safely and loads a checkpoint only if
    every key fits the model (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)
        self._current_path = None
        self._backbone_init = False
        self._skip_weights: Sequence[str] = ()
        self._tag_last = True
        if self.save_dir and self.save_to_disk and "://" not in self.save_dir:
            self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files that a save killed before its rename left in ``save_dir``
        (those of processes of this machine that no longer run: another live run's are kept)."""
        if not os.path.isdir(self.save_dir):
            return
        stale = sorted(n for n in os.listdir(self.save_dir) if _left_by_dead_save(n))
        for name in stale:
            try:
                os.remove(os.path.join(self.save_dir, name))
            except FileNotFoundError:  # removed by another checkpointer meanwhile
                pass
        if stale:
            logger.warning("removed %s from %s, left by an interrupted checkpoint save", ", ".join(stale), self.save_dir)

    # ---- saving
    def save(self, name: str, *, tag_last: bool = True, **kwargs) -> None:
        """fvcore's ``save``; with ``tag_last=False`` ``last_checkpoint`` is left as it is (for
        ``model_best.pth``, which ``--resume`` must not continue from)."""
        self._tag_last = tag_last
        try:
            super().save(name, **kwargs)
        finally:
            self._tag_last = True

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self._tag_last:
            super().tag_last_checkpoint(last_filename_basename)

    # ---- loading
    def load(self, path, checkpointables=None, *, backbone_init: bool = False, skip_weights: Sequence[str] = ()):
        """fvcore's ``load``: the model's weights from ``path`` (and ``checkpointables``, all if
        None). Every missing, unexpected or mis-shaped key is a :class:`CheckpointMismatchError`,
        except:

        Args:
            backbone_init: a file that holds backbone keys only initialises the backbone; the other
                keys of the model keep their initialisation (one line is logged).
            skip_weights: module prefixes (e.g. ``sem_seg_head.classifier``) whose keys are
                neither loaded nor checked: they keep their initialisation.
        """
        self._current_path, self._backbone_init, self._skip_weights = path, backbone_init, tuple(skip_weights)
        try:
            return super().load(path, checkpointables)
        finally:
            self._backbone_init, self._skip_weights = False, ()

    def resume_or_load(self, path: str, *, resume: bool = True, skip_weights: Sequence[str] = ()):
        """``resume`` and a ``last_checkpoint`` in ``save_dir``: load it, and the checkpointables,
        with every key checked. Otherwise initialise the model for training from ``path``
        (``MODEL.WEIGHTS``): a backbone-only file initialises the backbone, ``skip_weights``
        prefixes are left out; nothing else is loaded."""
        if resume and self.has_checkpoint():
            if skip_weights:
                logger.warning("resuming from %s: --skip-weights applies to MODEL.WEIGHTS only", self.get_checkpoint_file())
            return self.load(self.get_checkpoint_file())
        return self.load(path, checkpointables=[], backbone_init=True, skip_weights=skip_weights)

    def _load_file(self, filename):
        if filename.endswith(".pyth"):  # pycls: Detectron2's reader (torch.load's default)
            return super()._load_file(filename)
        if not filename.endswith(".pkl"):
            return load_tensor_file(filename)
        if _trust_pickles():
            logger.warning("%s=1: reading %s with plain pickle", TRUST_PICKLE_ENV, filename)
            return super()._load_file(filename)
        with PathManager.open(filename, "rb") as f:
            data = load_pickled_weights(f, filename, encoding="latin1")
        return self._pickled_checkpoint(data)

    def _pickled_checkpoint(self, data: dict) -> dict:
        """The checkpoint of an unpickled ``.pkl``, as ``DetectionCheckpointer._load_file`` makes
        it (the same in v0.6 and later): a Detectron2 model-zoo file ("model" and "__author__") as
        it is; otherwise a Caffe2 / Detectron1 file, whose weights are under "blobs" (detection
        models) or at the top (ImageNet models), without the "_momentum" blobs, loaded with
        Detectron2's name-matching heuristics."""
        if "model" in data and "__author__" in data:
            self.logger.info("Reading a file from '{}'".format(data["__author__"]))
            return data
        if "blobs" in data:
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _load_model(self, checkpoint):
        source = self._current_path or "checkpoint"
        state = checkpoint["model"]
        skipped = [k for k in state if _under(k, self._skip_weights)]
        for key in skipped:
            del state[key]
        if skipped:
            logger.info("%s: not loaded (--skip-weights %s): %s", source, " ".join(self._skip_weights), _listing(skipped))
        return self._check_keys(super()._load_model(checkpoint), source)

    def _check_keys(self, incompatible: _IncompatibleKeys, source: str) -> _IncompatibleKeys:
        """Raise CheckpointMismatchError unless every key of the model was loaded (BatchNorm
        counters, skipped prefixes and, for a backbone initialisation, the keys outside the
        backbone aside). Returns no incompatible keys: the allowed ones are logged here."""
        not_shared = set(_filter_reused_missing_keys(self.model, incompatible.missing_keys))
        missing = [
            k for k in incompatible.missing_keys  # (in the model's order)
            if k in not_shared and not k.endswith(_OPTIONAL_SUFFIXES) and not _under(k, self._skip_weights)
        ]
        unexpected = list(incompatible.unexpected_keys)
        wrong = [w for w in incompatible.incorrect_shapes if not _under(w[0], self._skip_weights)]
        # fvcore drops the mis-shaped keys before loading, so they come back as missing too
        missing = [k for k in missing if k not in {w[0] for w in incompatible.incorrect_shapes}]
        if self._backbone_init and self._holds_backbone_only(incompatible):
            head = [k for k in missing if not k.startswith(BACKBONE_PREFIX)]
            missing = [k for k in missing if k.startswith(BACKBONE_PREFIX)]
            logger.info(
                "%s holds backbone weights only: the backbone is initialised from it, the %d other tensors "
                "of the model (%s) keep their initialisation", source, len(head), _listing(head),
            )
        if missing or unexpected or wrong:
            text = _mismatch_message(source, missing, unexpected, wrong, self._backbone_init)
            raise CheckpointMismatchError(_other_head_message(self._supplied_keys(incompatible), self.model) + text)
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])

    def _supplied_keys(self, incompatible: _IncompatibleKeys):
        """The keys the checkpoint supplied: loaded, unexpected or mis-shaped."""
        not_loaded = set(incompatible.missing_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
        supplied = [k for k in self.model.state_dict() if k not in not_loaded]
        return supplied + list(incompatible.unexpected_keys) + [k for k, _, _ in incompatible.incorrect_shapes]

    def _holds_backbone_only(self, incompatible: _IncompatibleKeys) -> bool:
        """Whether every key the checkpoint supplied (optional keys aside) is a backbone key."""
        supplied = [k for k in self._supplied_keys(incompatible) if not k.endswith(_OPTIONAL_SUFFIXES)]
        return bool(supplied) and all(k.startswith(BACKBONE_PREFIX) for k in supplied)
