"""The built-in datasets, registered from one table by :func:`register_all_builtin(root)`.

==========================================  ==========  =======  ======  ==========================
name                                        classes     ignore   label   prepared by datasets/...
==========================================  ==========  =======  ======  ==========================
ade20k_sem_seg_{train,val}                  150         255      8-bit   prepare_ade20k_sem_seg.py
cityscapes_fine_sem_seg_{train,val,test}    19          255      8-bit   prepare_cityscapes_sem_seg.py
cityscapes_fine_sem_seg_trainval            19          255      8-bit   (train + val, paper Table 6)
coco_stuff_10k_sem_seg_{train,test}         171         255      8-bit   prepare_coco_stuff_10k_sem_seg.py
ade20k_full_sem_seg_{train,val}             847 [#]_    65535    16-bit  prepare_ade20k_full_sem_seg.py
ade20k_full_{300,500,700,847}_sem_seg_*     x [#]_      65535    16-bit  prepare_ade20k_full_sem_seg.py
==========================================  ==========  =======  ======  ==========================

.. [#] MaskFormer's fixed 847-class table, shipped in ``tables/ade20k_full_847.tsv`` and read by
   :mod:`protoseg.data.ade20k_full` (not rebuilt from the downloaded data), so the classes are
   registered before any preparation. Labels written by MaskFormer's own preparation script
   (``annotations_detectron2/*.tif``, the same train ids) are accepted for the full dataset.
.. [#] the first x classes of the table (MaskFormer's frequency order).

Every entry has stuff_classes, stuff_colors, ignore_label and evaluator_type "sem_seg". Detectron2
v0.6 registers ``ade20k_sem_seg_*`` and ``cityscapes_fine_sem_seg_*`` itself at import; those
entries are replaced (``DatasetCatalog.remove``) so that all our datasets read the same folders
the same way: Cityscapes uses our "sem_seg" evaluator on trainIds (Detectron2's entry uses
``evaluator_type="cityscapes_sem_seg"``, which needs ``$CITYSCAPES_DATASET`` and labelIds), and
ADE20K-150 gains stuff_colors. Loading a dataset whose folder is missing raises
FileNotFoundError naming the folder and the preparation command.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, CITYSCAPES_CATEGORIES

from .ade20k_full import ADE20K_FULL_IGNORE, ADE20K_FULL_TABLE, ADE20K_FULL_VOCAB_SIZES, ade20k_full_classes
from .datasets import datasets_root, register_sem_seg_dataset, register_toy_scenes

__all__ = [
    "ADE20K_FULL_VOCAB_SIZES",
    "COCO_STUFF_182_NAMES",
    "coco_stuff_171_classes",
    "register_ade20k",
    "register_cityscapes",
    "register_coco_stuff_10k",
    "register_ade20k_full",
    "register_all_builtin",
    "register_all",
]

# COCO-Stuff's 182 class names, ids 1..182 in order (cocostuff-labels.txt of nightrome/cocostuff10k;
# 0 is "unlabeled"). Ids 1-91 are COCO "things", 92-182 stuff.
# fmt: off
COCO_STUFF_182_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack",
    "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other",
    "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)
# fmt: on


@dataclass(frozen=True)
class _Split:
    """One registered name: its image and label folders (relative to the dataset folder; several
    folders are concatenated, e.g. Cityscapes train+val)."""

    name: str
    image_dirs: Tuple[str, ...]
    label_dirs: Tuple[str, ...]


def _register_splits(
    base: Path,
    splits: Sequence[_Split],
    script: str,
    *,
    stuff_classes: Optional[Sequence[str]],
    stuff_colors: Optional[Sequence[Tuple[int, int, int]]] = None,
    ignore_label: int = 255,
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    note: str = "",
    **extra_metadata,
) -> None:
    """The one registration path of every built-in dataset (``note``: appended to the error hint)."""
    hint = (
        f"Prepare the dataset with: python datasets/{script} (raw files expected under {base}; "
        f"DETECTRON2_DATASETS names the folder holding all datasets, default ./datasets). "
        f"{note}See datasets/README.md."
    )
    for split in splits:
        register_sem_seg_dataset(
            split.name,
            [base / d for d in split.image_dirs],
            [base / d for d in split.label_dirs],
            stuff_classes=stuff_classes,
            stuff_colors=stuff_colors,
            ignore_label=ignore_label,
            image_ext=image_ext,
            label_ext=label_ext,
            hint=hint,
            **extra_metadata,
        )


def register_ade20k(root: Path) -> None:
    """ADE20K SceneParse150 (``ADEChallengeData2016``): 150 classes, ignore 255."""
    splits = [
        _Split(f"ade20k_sem_seg_{s}", (f"images/{d}",), (f"annotations_detectron2/{d}",))
        for s, d in (("train", "training"), ("val", "validation"))
    ]
    _register_splits(
        Path(root) / "ADEChallengeData2016",
        splits,
        "prepare_ade20k_sem_seg.py",
        stuff_classes=[c.strip() for c in ADE20K_SEM_SEG_CATEGORIES],  # Detectron2's names
    )


def register_cityscapes(root: Path) -> None:
    """Cityscapes fine: the 19 trainIds (cityscapesScripts' labels.py, as copied into Detectron2's
    ``CITYSCAPES_CATEGORIES``) with their official colours, ignore 255."""
    splits = [
        _Split(f"cityscapes_fine_sem_seg_{s}", (f"leftImg8bit/{s}",), (f"gtFine/{s}",))
        for s in ("train", "val", "test")
    ]
    splits.append(
        _Split("cityscapes_fine_sem_seg_trainval", ("leftImg8bit/train", "leftImg8bit/val"),
               ("gtFine/train", "gtFine/val"))
    )
    categories = sorted(CITYSCAPES_CATEGORIES, key=lambda c: c["trainId"])
    _register_splits(
        Path(root) / "cityscapes",
        splits,
        "prepare_cityscapes_sem_seg.py",
        stuff_classes=[c["name"] for c in categories],
        stuff_colors=[tuple(c["color"]) for c in categories],
        image_ext="_leftImg8bit.png",
        label_ext="_gtFine_labelTrainIds.png",
    )


def coco_stuff_171_classes() -> List[Tuple[int, str]]:
    """``[(COCO-Stuff id, name)]`` of the 171 classes with annotations, in training-id order.

    The 182 COCO-Stuff ids minus the 11 thing ids that COCO never annotated: a thing id (1-91) is
    kept when it is one of COCO's 80 categories (Detectron2's ``COCO_CATEGORIES``), every stuff id
    (92-182) is kept. ``datasets/prepare_coco_stuff_10k_sem_seg.py`` writes the same order.
    """
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    coco_things = {c["id"] for c in COCO_CATEGORIES if c["isthing"]}
    return [(i, name) for i, name in enumerate(COCO_STUFF_182_NAMES, start=1) if i > 91 or i in coco_things]


def register_coco_stuff_10k(root: Path) -> None:
    """COCO-Stuff-10k v1.1: 171 classes, 9k train / 1k test images, ignore 255."""
    splits = [
        _Split(f"coco_stuff_10k_sem_seg_{s}", (f"images_detectron2/{s}",), (f"annotations_detectron2/{s}",))
        for s in ("train", "test")
    ]
    _register_splits(
        Path(root) / "coco" / "coco_stuff_10k",
        splits,
        "prepare_coco_stuff_10k_sem_seg.py",
        stuff_classes=[name for _, name in coco_stuff_171_classes()],
    )


def ade20k_full_label_dir(vocab_size: Optional[int]) -> str:
    """Label folder of ADE20K-Full (``vocab_size`` None or 847: the full label set, not written
    twice) or of its ADE20K-``vocab_size`` split."""
    if vocab_size is None or vocab_size == len(ade20k_full_classes()):
        return "annotations_detectron2"
    return f"annotations_detectron2_{vocab_size}"


def _label_ext(label_dir: Path) -> str:
    """".tif" when the first label file found in ``label_dir`` is a TIFF (MaskFormer's preparation
    writes 16-bit TIFFs with the same train ids), else ".png" (ours). O(1): one directory entry."""
    try:
        with os.scandir(label_dir) as entries:
            for entry in entries:
                if entry.name.endswith((".png", ".tif")):
                    return Path(entry.name).suffix
    except OSError:  # not prepared yet: loading raises the error naming the folder
        pass
    return ".png"


def register_ade20k_full(root: Path) -> None:
    """ADE20K-Full (``ADE20K_2021_17_01``) and its ADE20K-{300,500,700,847} splits, 16-bit labels,
    ignore 65535. Classes: the shipped 847-class table (:mod:`protoseg.data.ade20k_full`); split x
    has the first x of them. Label maps are ours (PNG) or, for the full dataset, MaskFormer's TIFFs."""
    base = Path(root) / "ADE20K_2021_17_01"
    names = [c.name for c in ade20k_full_classes()]
    dirs = {"train": "training", "val": "validation"}
    for vocab in (None,) + ADE20K_FULL_VOCAB_SIZES:
        prefix = "ade20k_full" if vocab is None else f"ade20k_full_{vocab}"
        label_dir = ade20k_full_label_dir(vocab)
        splits = [
            _Split(f"{prefix}_sem_seg_{s}", (f"images_detectron2/{d}",), (f"{label_dir}/{d}",))
            for s, d in dirs.items()
        ]
        _register_splits(
            base,
            splits,
            "prepare_ade20k_full_sem_seg.py",
            stuff_classes=names[:vocab],
            ignore_label=ADE20K_FULL_IGNORE,
            label_ext=_label_ext(base / label_dir / "training"),
            note=("(MaskFormer's preparation writes only annotations_detectron2/*.tif, the full 847 classes; "
                  "the ADE20K-x label folders come from this project's script.) "),
            class_table=str(ADE20K_FULL_TABLE),
        )


def register_all_builtin(root: Path) -> None:
    """Register every built-in dataset with its folders under ``root``."""
    register_ade20k(root)
    register_cityscapes(root)
    register_coco_stuff_10k(root)
    register_ade20k_full(root)


def register_all(root: Optional[Path] = None) -> None:
    """Register the toy scenes and every built-in dataset under ``root`` (default:
    :func:`~protoseg.data.datasets.datasets_root`, i.e. ``$DETECTRON2_DATASETS``)."""
    root = Path(root) if root is not None else datasets_root()
    register_toy_scenes(root / "toy_scenes")
    register_all_builtin(root)
