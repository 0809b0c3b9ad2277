"""Dataset registration: every dataset is a pair of folders (images, label maps) plus metadata,
registered from one table with one function.

Datasets live under ``$DETECTRON2_DATASETS`` (default ``./datasets``, as in Detectron2).
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from . import toy_scenes

__all__ = ["datasets_root", "load_sem_seg_folder", "register_sem_seg_dataset", "register_toy_scenes", "register_all"]


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS`` or ``./datasets``."""
    return Path(os.getenv("DETECTRON2_DATASETS", "datasets")).expanduser()


def load_sem_seg_folder(
    image_root: Path, label_root: Path, image_ext: str = ".jpg", label_ext: str = ".png", hint: str = ""
) -> List[Dict]:
    """Pair every image with the label map of the same stem.

    Returns Detectron2 dataset dicts with ``file_name``, ``sem_seg_file_name``, ``image_id``.
    Raises FileNotFoundError naming the folder or the file at fault (missing folder, empty split,
    image without label).
    """
    image_root, label_root = Path(image_root), Path(label_root)
    for folder in (image_root, label_root):
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {folder} does not exist. {hint}".strip())
    labels = {p.stem: p for p in label_root.iterdir() if p.suffix == label_ext}
    images = sorted(p for p in image_root.iterdir() if p.suffix == image_ext)
    if not images:
        raise FileNotFoundError(f"no '*{image_ext}' image in {image_root}. {hint}".strip())
    missing = [p.name for p in images if p.stem not in labels]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) in {image_root} have no '{label_ext}' label in {label_root}, "
            f"e.g. {missing[:3]}"
        )
    return [
        {"file_name": str(p), "sem_seg_file_name": str(labels[p.stem]), "image_id": p.stem} for p in images
    ]


def register_sem_seg_dataset(
    name: str,
    image_root: Path,
    label_root: Path,
    *,
    stuff_classes: Sequence[str],
    stuff_colors: Optional[Sequence[Tuple[int, int, int]]] = None,
    ignore_label: int = 255,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    hint: str = "",
) -> None:
    """Register a folder dataset in ``DatasetCatalog`` (loaded lazily) and its ``MetadataCatalog``
    entry (stuff_classes, stuff_colors, ignore_label, evaluator_type "sem_seg")."""
    DatasetCatalog.register(
        name, lambda: load_sem_seg_folder(image_root, label_root, image_ext, label_ext, hint)
    )
    meta = {
        "image_root": str(image_root),
        "sem_seg_root": str(label_root),
        "stuff_classes": list(stuff_classes),
        "ignore_label": ignore_label,
        "evaluator_type": "sem_seg",
    }
    if stuff_colors is not None:
        meta["stuff_colors"] = [list(c) for c in stuff_colors]
    MetadataCatalog.get(name).set(**meta)


def register_toy_scenes(root: Path, prefix: str = "toy_scenes_sem_seg") -> None:
    """Register ``<prefix>_train`` and ``<prefix>_val`` for a toy-scenes folder.

    Class names and colours come from the folder's meta.json when it exists, otherwise from the
    default spec (what ``datasets/prepare_toy_scenes.py`` writes without options).
    """
    root = Path(root)
    meta_file = root / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        names, colors = meta["class_names"], meta["class_colors"]
    else:
        spec = toy_scenes.ToySceneSpec()
        names, colors = toy_scenes.class_names(spec), toy_scenes.class_colors(spec)
    hint = f"Generate it with: python datasets/prepare_toy_scenes.py --root {root}"
    for split, folder in (("train", "training"), ("val", "validation")):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_sem_seg_dataset(
            name,
            root / "images" / folder,
            root / "annotations_detectron2" / folder,
            stuff_classes=names,
            stuff_colors=colors,
            ignore_label=toy_scenes.IGNORE_LABEL,
            hint=hint,
        )


def register_all(root: Optional[Path] = None) -> None:
    """Register the built-in datasets under ``root`` (default: :func:`datasets_root`)."""
    root = Path(root) if root is not None else datasets_root()
    register_toy_scenes(root / "toy_scenes")
