"""What the ``datasets/prepare_*.py`` scripts share: command-line arguments, reading label maps
with ``protoseg/data/labels.py``, id look-up tables, writing 8-/16-bit label PNGs, a worker pool,
and the after-conversion check of image counts and id ranges.

The scripts need numpy and Pillow (plus scipy for COCO-Stuff, cityscapesScripts for Cityscapes,
OpenCV for ADE20K-Full), not Detectron2 or torch: ``labels.py`` is loaded from its file, without
the ``protoseg`` package's ``__init__``.
"""
import argparse
import importlib.util
import os
import shutil
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

_PROJECT_DIR = Path(__file__).resolve().parent.parent / "projects" / "ProtoSeg"


class PrepareError(RuntimeError):
    """Raw input that cannot be converted; the message names the file and what is wrong."""


def load_package_module(module: str):
    """``protoseg/<module>.py`` (``module`` dotted, e.g. ``data.labels``) loaded on its own, without
    the package's ``__init__`` (a module that needs numpy + Pillow at most); the installed
    ``protoseg.<module>`` if this script was copied away from the source tree."""
    name = f"_protoseg_{module.replace('.', '_')}_standalone"
    if name in sys.modules:
        return sys.modules[name]
    path = _PROJECT_DIR.joinpath("protoseg", *module.split(".")).with_suffix(".py")
    if path.is_file():
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded  # before exec: dataclasses / NamedTuple look the module up
        spec.loader.exec_module(loaded)
        return loaded
    return importlib.import_module(f"protoseg.{module}")


labels = load_package_module("data.labels")


def default_root(subdir: str) -> Path:
    """``$DETECTRON2_DATASETS/<subdir>`` (``DETECTRON2_DATASETS`` defaults to ``datasets``)."""
    return Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))) / subdir


def argument_parser(description: str, subdir: str) -> argparse.ArgumentParser:
    """Parser with ``--root`` (default ``$DETECTRON2_DATASETS/<subdir>``) and ``--num-workers``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", type=Path, default=default_root(subdir),
                        help="dataset folder holding the raw files (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes (0: convert in this process; default %(default)s)")
    return parser


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise PrepareError(f"{what} folder {path} does not exist (see datasets/README.md for the expected tree)")
    return path


def id_lut(mapping: Dict[int, int], size: int, fill: int, dtype=np.int64) -> np.ndarray:
    """Look-up table ``lut[raw id] = new id`` of ``size`` entries, ``fill`` for unmapped ids."""
    lut = np.full(size, fill, dtype=dtype)
    for raw, new in mapping.items():
        lut[raw] = new
    return lut


def apply_lut(raw: np.ndarray, lut: np.ndarray, source: Path) -> np.ndarray:
    """``lut[raw]``; raises PrepareError naming ``source`` and the ids if some raw id is outside
    the table (negative or >= len(lut))."""
    bad = np.unique(raw[(raw < 0) | (raw >= len(lut))])
    if bad.size:
        raise PrepareError(f"{source} has id(s) {bad[:10].tolist()} outside the valid range [0, {len(lut) - 1}]")
    return lut[raw]


def write_label_png(path: Path, labels_hw: np.ndarray, bits: int) -> None:
    """Write an (H, W) id map as a single-channel 8-bit ("L") or 16-bit ("I;16") PNG; never
    casts down: ids that do not fit raise ValueError naming ``path``."""
    dtype = {8: np.uint8, 16: np.uint16}[bits]
    if labels_hw.size and (labels_hw.min() < 0 or labels_hw.max() > np.iinfo(dtype).max):
        raise ValueError(f"{path}: ids in [{labels_hw.min()}, {labels_hw.max()}] do not fit in {bits} bits")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels_hw.astype(dtype)).save(path)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra disk), or copy when linking is impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def parallel_map(fn: Callable, items: Sequence, num_workers: int) -> List:
    """``[fn(x) for x in items]``, in a pool of ``num_workers`` processes when > 0."""
    if num_workers <= 0 or len(items) < 2:
        return [fn(x) for x in items]
    with Pool(min(num_workers, len(items))) as pool:
        return list(pool.imap(fn, items, chunksize=max(1, len(items) // (8 * num_workers))))


def check_split(
    dataset: str,
    split: str,
    ids_per_image: Iterable[np.ndarray],
    num_classes: int,
    ignore: int,
    expected_images: Optional[int],
) -> List[str]:
    """After conversion: print the split's image count and id range; return the problems (ids
    outside ``[0, num_classes) + {ignore}``), and print a note when the count differs from the
    official one (``expected_images``) as it does for a partial copy."""
    ids_per_image = list(ids_per_image)
    present = np.unique(np.concatenate(ids_per_image)) if ids_per_image else np.array([], dtype=np.int64)
    valid = present[present != ignore]
    bad = valid[(valid < 0) | (valid >= num_classes)]
    span = f"ids {valid.min()}..{valid.max()} ({valid.size} of {num_classes} classes present)" if valid.size else "no class id"
    print(f"  {dataset} {split}: {len(ids_per_image)} images, {span}"
          + (f", ignore {ignore}" if ignore in present else ""))
    if expected_images is not None and len(ids_per_image) != expected_images:
        print(f"  note: the official {dataset} {split} split has {expected_images} images; "
              f"found {len(ids_per_image)} (a partial copy?)")
    return [f"{dataset} {split}: converted labels hold invalid id(s) {bad[:10].tolist()}"] if bad.size else []


def run(main: Callable[[argparse.Namespace], List[str]], parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv``, call ``main(args)``; exit code 1 with the message on PrepareError, or with
    the list of problems ``main`` returns."""
    args = parser.parse_args(argv)
    try:
        problems = main(args)
    except (PrepareError, labels.LabelMapError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0
