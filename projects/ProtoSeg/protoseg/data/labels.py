"""Reading and checking label maps: one place that knows how labels are stored on disk.

Label maps are single-channel images: 8-bit PNG (ids 0..254, ignore 255: ADE20K-150, Cityscapes,
COCO-Stuff) or 16-bit PNG/TIFF (ADE20K-Full's 847 ids, ignore 65535). Palette ("P") PNGs hold
indices and are read as such. Nothing here casts to 8 bits.
"""
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

__all__ = [
    "REDUCE_ZERO_LABEL_KEY",
    "LabelMapError",
    "read_label_map",
    "reduce_zero_label",
    "check_label_values",
    "check_label_range",
    "ignore_held_out",
]

#: dataset-dict key: True when the label map stores "unlabelled" as 0 and class c as c + 1
REDUCE_ZERO_LABEL_KEY = "sem_seg_reduce_zero_label"

#: PIL modes that store one integer id per pixel
_ID_MODES = {"L", "P", "I", "I;16", "I;16B", "I;16L"}


class LabelMapError(ValueError):
    """A label map that cannot be used: unreadable, not single-channel, or with invalid ids.
    The message names the file and the value at fault."""


def read_label_map(path: Union[str, Path]) -> np.ndarray:
    """Read a label map as (H, W) int64 without losing bits (8-, 16- or 32-bit ids).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        LabelMapError: the file is not a readable image, or is a colour (RGB/RGBA) image whose
            ids would be ambiguous.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map {path} does not exist")
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in _ID_MODES:
                raise LabelMapError(
                    f"label map {path} is a {mode!r} image; expected one id per pixel (8- or 16-bit "
                    f"single-channel PNG/TIFF, or a palette PNG). Colour-coded masks must be converted "
                    f"to ids first (see datasets/README.md)"
                )
            labels = np.asarray(img)
    except LabelMapError:
        raise
    except Exception as e:  # truncated / corrupt files: PIL raises OSError, SyntaxError, ...
        raise LabelMapError(f"label map {path} cannot be read: {type(e).__name__}: {e}") from e
    return labels.astype(np.int64)


def reduce_zero_label(labels: np.ndarray, ignore_value: int) -> np.ndarray:
    """Datasets whose id 0 means "unlabelled" (ADE20K's raw annotations, many custom folders):
    0 -> ``ignore_value``, every other id v -> v - 1; ``ignore_value`` stays ignore.

    Args:
        labels: (H, W) integer ids. Returns a new (H, W) int64 array.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = labels - 1
    out[(labels == 0) | (labels == ignore_value)] = ignore_value
    return out


def check_label_values(
    labels: np.ndarray, num_classes: int, ignore_value: int, source: Optional[Union[str, Path]] = None
) -> None:
    """Raise :class:`LabelMapError` naming ``source`` and the offending ids if any pixel of
    ``labels`` is neither a class id in [0, num_classes) nor ``ignore_value``."""
    values = np.unique(labels)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_value)]
    if bad.size:
        counts = {int(v): int((labels == v).sum()) for v in bad[:10]}
        where = f"label map {source}" if source is not None else "label map"
        raise LabelMapError(
            f"{where} has id(s) {sorted(counts)} (pixel counts {counts}) that are neither a class id in "
            f"[0, {num_classes}) nor the ignore value {ignore_value}; check MODEL.SEM_SEG_HEAD.NUM_CLASSES "
            f"and IGNORE_VALUE against the dataset's class list, or whether the labels need reduce_zero_label"
        )


def check_label_range(labels: np.ndarray, num_classes: int, ignore_value: int, source=None) -> None:
    """:func:`check_label_values` at the cost of a min/max when every id is a class id; the full
    check (one ``np.unique``) runs only when some id is outside [0, num_classes) (e.g. ignore)."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        check_label_values(labels, num_classes, ignore_value, source)


def ignore_held_out(labels: np.ndarray, num_classes: int, held_out: int, ignore_value: int) -> np.ndarray:
    """(H, W) int64 ids -> the same array with the ``held_out`` ids after the ``num_classes`` learned
    ones, [num_classes, num_classes + held_out), set to ``ignore_value`` (``INPUT.HELD_OUT_CLASSES``;
    in place, returned)."""
    if held_out > 0:
        labels[(labels >= num_classes) & (labels < num_classes + held_out)] = ignore_value
    return labels
