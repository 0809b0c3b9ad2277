"""Dataset registration: every dataset is a pair of folders (images, label maps) plus metadata,
registered from one table with one function.

Datasets live under ``$DETECTRON2_DATASETS`` (default ``./datasets``, as in Detectron2). The
built-in datasets (ADE20K-150, Cityscapes, COCO-Stuff-10k, ADE20K-Full and its vocabulary splits)
are declared in :mod:`protoseg.data.builtin`, which builds on this module; custom folders use
:func:`register_folder_dataset`.
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from .labels import REDUCE_ZERO_LABEL_KEY

__all__ = [
    "datasets_root",
    "default_stuff_colors",
    "load_sem_seg_folder",
    "register_sem_seg_dataset",
    "register_folder_dataset",
    "register_toy_scenes",
]

PathLike = Union[str, Path]

#: the toy-scenes generator's (datasets/toy_scenes.py) default class count and its ignore label
TOY_DEFAULT_NUM_CLASSES = 8
TOY_IGNORE_LABEL = 255


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS`` or ``./datasets``."""
    return Path(os.getenv("DETECTRON2_DATASETS", "datasets")).expanduser()


def default_stuff_colors(num_classes: int) -> List[Tuple[int, int, int]]:
    """Deterministic, pairwise distinct RGB colours for class ids ``0..num_classes-1``.

    The PASCAL VOC colour map (the bits of ``id + 1`` spread over R, G, B from the most significant
    bit down), shifted by one so that no class is drawn black. Distinct for up to 2**24 - 1 classes.
    """
    colors = []
    for i in range(1, num_classes + 1):
        r = g = b = 0
        c = i
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        colors.append((r, g, b))
    return colors


def _as_list(paths: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def _as_metadata_path(paths: Union[PathLike, Sequence[PathLike]]) -> Union[str, List[str]]:
    return str(paths) if isinstance(paths, (str, Path)) else [str(p) for p in paths]


def _files_with_suffix(root: Path, suffix: str) -> Dict[str, Path]:
    """``{relative path without suffix: path}`` of every file under ``root`` (recursively) whose
    name ends with ``suffix``."""
    found = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(suffix):
                path = Path(dirpath) / f
                found[str(path.relative_to(root))[: -len(suffix)]] = path
    return found


def load_sem_seg_folder(
    image_root: Union[PathLike, Sequence[PathLike]],
    label_root: Union[PathLike, Sequence[PathLike]],
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    hint: str = "",
    reduce_zero_label: bool = False,
) -> List[Dict]:
    """Pair every image with the label map of the same relative path and stem.

    An image ``<image_root>/<rel>/<stem><image_ext>`` pairs with ``<label_root>/<rel>/<stem><label_ext>``;
    folders are searched recursively, and the extensions are name suffixes, so Cityscapes pairs
    with ``image_ext="_leftImg8bit.png", label_ext="_gtFine_labelTrainIds.png"``. ``image_root`` and
    ``label_root`` may be lists of equal length (one split made of several folders, e.g. Cityscapes
    train+val); the dicts are concatenated in that order, each folder sorted by path.

    Returns Detectron2 dataset dicts with ``file_name``, ``sem_seg_file_name``, ``image_id`` (the
    stem) and, when ``reduce_zero_label``, ``"sem_seg_reduce_zero_label": True``.
    Raises FileNotFoundError naming the folder or the file at fault (missing folder, empty split,
    image without label), followed by ``hint`` (e.g. the preparation command).
    """
    image_roots, label_roots = _as_list(image_root), _as_list(label_root)
    if len(image_roots) != len(label_roots):
        raise ValueError(f"{len(image_roots)} image folders but {len(label_roots)} label folders")
    dicts = []
    for image_dir, label_dir in zip(image_roots, label_roots):
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"dataset folder {folder} does not exist. {hint}".strip())
        labels = _files_with_suffix(label_dir, label_ext)
        images = _files_with_suffix(image_dir, image_ext)
        if not images:
            raise FileNotFoundError(f"no '*{image_ext}' image in {image_dir}. {hint}".strip())
        missing = sorted(k for k in images if k not in labels)
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) in {image_dir} have no '*{label_ext}' label in {label_dir}, "
                f"e.g. {[k + image_ext for k in missing[:3]]}. {hint}".strip()
            )
        for key in sorted(images):
            d = {
                "file_name": str(images[key]),
                "sem_seg_file_name": str(labels[key]),
                "image_id": Path(key).name,
            }
            if reduce_zero_label:
                d[REDUCE_ZERO_LABEL_KEY] = True
            dicts.append(d)
    return dicts


def register_sem_seg_dataset(
    name: str,
    image_root: Union[PathLike, Sequence[PathLike]],
    label_root: Union[PathLike, Sequence[PathLike]],
    *,
    stuff_classes: Optional[Sequence[str]],
    stuff_colors: Optional[Sequence[Tuple[int, int, int]]] = None,
    ignore_label: int = 255,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    reduce_zero_label: bool = False,
    hint: str = "",
    **extra_metadata,
) -> None:
    """Register a folder dataset in ``DatasetCatalog`` (loaded lazily by :func:`load_sem_seg_folder`)
    and its ``MetadataCatalog`` entry: stuff_classes, stuff_colors (default
    :func:`default_stuff_colors`), ignore_label, evaluator_type "sem_seg", image_root, sem_seg_root,
    reduce_zero_label, plus ``extra_metadata``.

    ``stuff_classes=None`` (a built-in dataset whose class list is written by its preparation
    script, not prepared yet) leaves stuff_classes and stuff_colors unset. An existing registration
    of ``name`` (ours or Detectron2's built-in one) is replaced.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name,
        lambda: load_sem_seg_folder(image_root, label_root, image_ext, label_ext, hint, reduce_zero_label),
    )
    meta = dict(extra_metadata)
    if stuff_classes is not None:
        colors = stuff_colors if stuff_colors is not None else default_stuff_colors(len(stuff_classes))
        meta.update(stuff_classes=list(stuff_classes), stuff_colors=[list(c) for c in colors])
    MetadataCatalog.get(name).set(
        image_root=_as_metadata_path(image_root),
        sem_seg_root=_as_metadata_path(label_root),
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
        reduce_zero_label=reduce_zero_label,
        **meta,
    )


def register_folder_dataset(
    name: str,
    image_root: PathLike,
    label_root: PathLike,
    classes: Sequence[str],
    *,
    ignore_label: int = 255,
    reduce_zero_label: bool = False,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    colors: Optional[Sequence[Tuple[int, int, int]]] = None,
) -> None:
    """Register a custom dataset in one call: a folder of images and a folder of label maps.

    Label maps are single-channel PNGs (8-bit, or 16-bit for more than 255 classes) whose pixel
    values are class ids ``0..len(classes)-1`` or ``ignore_label``; each image pairs with the label
    of the same relative path and stem. ``reduce_zero_label=True`` is for labels where 0 means
    "unlabelled" and class k is stored as k + 1 (ADE20K's raw convention): the dataset dicts then
    carry ``"sem_seg_reduce_zero_label": True`` and the mapper turns 0 into ignore and k into k - 1.
    The default is no shift, so a class 0 ("background") is learned and evaluated.
    See ``datasets/README.md`` ("Custom datasets").
    """
    register_sem_seg_dataset(
        name,
        image_root,
        label_root,
        stuff_classes=classes,
        stuff_colors=colors,
        ignore_label=ignore_label,
        image_ext=image_ext,
        label_ext=label_ext,
        reduce_zero_label=reduce_zero_label,
        hint=f"(custom dataset {name!r} registered with register_folder_dataset)",
    )


def register_toy_scenes(root: Path, prefix: str = "toy_scenes_sem_seg") -> None:
    """Register ``<prefix>_train`` and ``<prefix>_val`` for a toy-scenes folder written by
    ``datasets/prepare_toy_scenes.py``.

    Class names and colours come from the folder's meta.json. Before the folder is generated, the
    names are those of the generator's default (8 classes, ``toy00`` ...), so that the datasets
    exist, and loading them says how to generate them.
    """
    root = Path(root)
    meta_file = root / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        names, colors = meta["class_names"], meta["class_colors"]
    else:
        names, colors = [f"toy{i:02d}" for i in range(TOY_DEFAULT_NUM_CLASSES)], None
    hint = f"Generate it with: python datasets/prepare_toy_scenes.py --root {root}"
    for split, folder in (("train", "training"), ("val", "validation")):
        register_sem_seg_dataset(
            f"{prefix}_{split}",
            root / "images" / folder,
            root / "annotations_detectron2" / folder,
            stuff_classes=names,
            stuff_colors=colors,
            ignore_label=TOY_IGNORE_LABEL,
            hint=hint,
        )

