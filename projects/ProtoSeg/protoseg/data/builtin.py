"""The built-in datasets, registered from one table by :func:`register_all_builtin(root)`.

==========================================  ==========  =======  ======  ==========================
name                                        classes     ignore   label   prepared by datasets/...
==========================================  ==========  =======  ======  ==========================
ade20k_sem_seg_{train,val}                  150         255      8-bit   prepare_ade20k_sem_seg.py
cityscapes_fine_sem_seg_{train,val,test}    19          255      8-bit   prepare_cityscapes_sem_seg.py
cityscapes_fine_sem_seg_trainval            19          255      8-bit   (train + val, paper Table 6)
coco_stuff_10k_sem_seg_{train,test}         171         255      8-bit   prepare_coco_stuff_10k_sem_seg.py
ade20k_full_sem_seg_{train,val}             847 [#]_    65535    16-bit  prepare_ade20k_full_sem_seg.py
ade20k_full_{300,500,700,847}_sem_seg_*     x           65535    16-bit  prepare_ade20k_full_sem_seg.py
==========================================  ==========  =======  ======  ==========================

.. [#] the classes present in both train and val of the user's copy; 847 for the official release
   (paper, appendix A). The class list is read from ``ade20k_full_classes.tsv``, written by the
   preparation script; before preparation these datasets are registered without stuff_classes.

Every entry has stuff_classes, stuff_colors, ignore_label and evaluator_type "sem_seg". Detectron2
v0.6 registers ``ade20k_sem_seg_*`` and ``cityscapes_fine_sem_seg_*`` itself at import; those
entries are replaced (``DatasetCatalog.remove``) so that all our datasets read the same folders
the same way: Cityscapes uses our "sem_seg" evaluator on trainIds (Detectron2's entry uses
``evaluator_type="cityscapes_sem_seg"``, which needs ``$CITYSCAPES_DATASET`` and labelIds), and
ADE20K-150 gains stuff_colors. Loading a dataset whose folder is missing raises
FileNotFoundError naming the folder and the preparation command.
"""
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, CITYSCAPES_CATEGORIES

from .datasets import register_sem_seg_dataset

__all__ = [
    "ADE20K_FULL_VOCAB_SIZES",
    "COCO_STUFF_182_NAMES",
    "coco_stuff_171_classes",
    "read_class_table",
    "register_ade20k",
    "register_cityscapes",
    "register_coco_stuff_10k",
    "register_ade20k_full",
    "register_all_builtin",
]

#: ADE20K-x vocabularies of the large-vocabulary study (paper Sec. 5.3, Table 4; appendix A).
ADE20K_FULL_VOCAB_SIZES = (300, 500, 700, 847)
#: ignore value of the 16-bit ADE20K-Full label maps (MaskFormer's prepare_ade20k_full_sem_seg.py)
ADE20K_FULL_IGNORE = 65535

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
    **extra_metadata,
) -> None:
    """The one registration path of every built-in dataset."""
    hint = (
        f"Prepare the dataset with: python datasets/{script} (raw files expected under {base}; "
        f"DETECTRON2_DATASETS names the folder holding all datasets, default ./datasets). "
        f"See datasets/README.md."
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


def read_class_table(path: Path) -> List[Dict[str, str]]:
    """Rows of a tab-separated class table written by a preparation script (header line first),
    one dict per class in id order. Raises ValueError naming the file if the ``id`` column is not
    ``0, 1, 2, ...``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ids = [int(r["id"]) for r in rows]
    if ids != list(range(len(rows))):
        raise ValueError(f"class table {path}: the 'id' column must be 0..{len(rows) - 1} in order")
    return rows


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


def ade20k_full_label_dir(vocab_size: Optional[int], num_full_classes: Optional[int]) -> str:
    """Label folder name of ADE20K-Full (``vocab_size=None``) or of its top-``vocab_size`` split: the
    split with all classes is the full label set itself (not written twice)."""
    if vocab_size is None or vocab_size == num_full_classes:
        return "annotations_detectron2"
    return f"annotations_detectron2_{vocab_size}"


def register_ade20k_full(root: Path) -> None:
    """ADE20K-Full (``ADE20K_2021_17_01``) and its top-x vocabulary splits, 16-bit labels, ignore
    65535. Class names come from ``ade20k_full_classes.tsv`` (written by the preparation script);
    split x keeps the first x rows (classes ranked by training-image frequency)."""
    base = Path(root) / "ADE20K_2021_17_01"
    table = base / "ade20k_full_classes.tsv"
    names = [r["name"] for r in read_class_table(table)] if table.is_file() else None
    num_full = len(names) if names is not None else None
    dirs = {"train": "training", "val": "validation"}
    for vocab in (None,) + ADE20K_FULL_VOCAB_SIZES:
        prefix = "ade20k_full" if vocab is None else f"ade20k_full_{vocab}"
        label_dir = ade20k_full_label_dir(vocab, num_full)
        splits = [
            _Split(f"{prefix}_sem_seg_{s}", (f"images_detectron2/{d}",), (f"{label_dir}/{d}",))
            for s, d in dirs.items()
        ]
        if vocab is None or names is None:
            classes = names
        else:  # a split larger than the prepared vocabulary stays without classes (and folder)
            classes = names[:vocab] if vocab <= num_full else None
        _register_splits(
            base,
            splits,
            "prepare_ade20k_full_sem_seg.py",
            stuff_classes=classes,
            ignore_label=ADE20K_FULL_IGNORE,
            class_table=str(table if vocab is None else base / f"ade20k_full_vocab_{vocab}.tsv"),
        )


def register_all_builtin(root: Path) -> None:
    """Register every built-in dataset with its folders under ``root``."""
    register_ade20k(root)
    register_cityscapes(root)
    register_coco_stuff_10k(root)
    register_ade20k_full(root)
