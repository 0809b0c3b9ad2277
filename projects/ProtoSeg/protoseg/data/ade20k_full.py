"""ADE20K-Full's fixed class table: the 847 classes of MaskFormer, and the ADE20K-x vocabularies.

The table ``tables/ade20k_full_847.tsv`` (shipped with the package) is MaskFormer's
``ADE20K_SEM_SEG_FULL_CATEGORIES`` (facebookresearch/MaskFormer,
``datasets/prepare_ade20k_full_sem_seg.py``; the same table is in Mask2Former's
``register_ade20k_full.py``), carried as data. Columns:

- ``train_id``: the class id in the label maps, 0..846 (= the row position; ignore is 65535);
- ``ade_index``: the ADE20K class index decoded from ``*_seg.png`` as ``R // 10 * 256 + G``
  (76 of the 847 are below 256, the others need the full decoding);
- ``name``: MaskFormer's class name (WordNet-style synonyms, e.g. ``"building, edifice"``).

The paper (appendix A) takes "the 847 concepts" of ADE20K-Full from MaskFormer, and defines
ADE20K-300/500/700 as the x most frequent of them. The vocabulary must not depend on which images
a user downloaded (results would not be comparable), so the table is fixed, and ADE20K-x is the
FIRST x rows of it: the table's own order is MaskFormer's frequency ranking (wall, building, sky,
tree, road, floor, ... down to rare objects). ``datasets/prepare_ade20k_full_sem_seg.py`` reports
how the user's data deviates from this order, without changing it.

Standard library only: ``datasets/prepare_ade20k_full_sem_seg.py`` loads this file on its own
(without Detectron2 or torch).
"""
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Tuple

__all__ = [
    "ADE20K_FULL_IGNORE",
    "ADE20K_FULL_NUM_CLASSES",
    "ADE20K_FULL_TABLE",
    "ADE20K_FULL_VOCAB_SIZES",
    "AdeFullClass",
    "ade20k_full_classes",
    "ade20k_full_vocabulary",
]

#: the shipped table (a path relative to this module, so it is found in the source tree, an
#: editable install and an installed wheel alike; setup.py lists it as package data)
ADE20K_FULL_TABLE = Path(__file__).resolve().with_name("tables") / "ade20k_full_847.tsv"
ADE20K_FULL_NUM_CLASSES = 847
#: ADE20K-x vocabularies of the large-vocabulary study (paper Sec. 5.3, Table 4; appendix A)
ADE20K_FULL_VOCAB_SIZES = (300, 500, 700, 847)
#: ignore value of the 16-bit label maps (unlabelled pixels and classes outside the vocabulary)
ADE20K_FULL_IGNORE = 65535

_COLUMNS = ["train_id", "ade_index", "name"]


class AdeFullClass(NamedTuple):
    train_id: int
    ade_index: int
    name: str


@lru_cache(maxsize=None)
def ade20k_full_classes(path: Path = ADE20K_FULL_TABLE) -> Tuple[AdeFullClass, ...]:
    """The 847 classes in train-id order (lines starting with ``#`` are comments).

    Raises ValueError naming the file and the line if the table is not what every user of it
    assumes: the header ``train_id ade_index name``, ``train_id`` = 0, 1, 2, ... in order,
    847 rows, ``ade_index`` unique and positive.
    """
    with open(path, encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip() and not line.startswith("#")]
    rows = [line.rstrip("\n").split("\t") for _, line in lines]
    if not rows or rows[0] != _COLUMNS:
        raise ValueError(f"class table {path}: the header must be {_COLUMNS}, got {rows[:1]}")
    classes, seen = [], set()
    for (lineno, _), row in zip(lines[1:], rows[1:]):
        try:
            if len(row) != 3:
                raise ValueError
            c = AdeFullClass(int(row[0]), int(row[1]), row[2])
        except ValueError as e:
            raise ValueError(f"class table {path}, line {lineno}: {row} is not "
                             f"'train_id<TAB>ade_index<TAB>name'") from e
        if c.train_id != len(classes) or c.ade_index <= 0 or c.ade_index in seen:
            raise ValueError(f"class table {path}, line {lineno}: {row}: expected train_id {len(classes)} "
                             f"and a positive ade_index not seen before")
        seen.add(c.ade_index)
        classes.append(c)
    if len(classes) != ADE20K_FULL_NUM_CLASSES:
        raise ValueError(f"class table {path} has {len(classes)} classes; expected {ADE20K_FULL_NUM_CLASSES}")
    return tuple(classes)


def ade20k_full_vocabulary(size: int) -> Tuple[AdeFullClass, ...]:
    """ADE20K-``size``: the first ``size`` classes of the table (its train ids are the full ones)."""
    if size not in ADE20K_FULL_VOCAB_SIZES:
        raise ValueError(f"ADE20K-Full vocabulary size {size} is not one of {ADE20K_FULL_VOCAB_SIZES}")
    return ade20k_full_classes()[:size]
