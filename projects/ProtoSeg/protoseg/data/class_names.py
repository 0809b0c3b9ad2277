"""The names of the classes a model predicts, and their agreement with a dataset's ids.

A model's class c is the dataset's class c: by default the names are the test (else training)
dataset's ``stuff_classes`` (the first ``NUM_CLASSES`` of them, which drops the held-out last ids of
``INPUT.HELD_OUT_CLASSES``). A model that predicts classes its datasets do not name (one grown by
``tools/add_class.py``) carries its names in ``MODEL.SEM_SEG_HEAD.CLASS_NAMES``; a dataset it is
evaluated on must then name its classes as the model does (the dataset's names are the first of
the model's, or the model's are the first of the dataset's held-out list), or ids would be
compared across vocabularies.
"""
from typing import List, Optional, Sequence

from detectron2.data import MetadataCatalog

__all__ = ["dataset_class_names", "model_class_names", "check_names_agree"]


def dataset_class_names(dataset_name: Optional[str]) -> List[str]:
    """``stuff_classes`` of a registered dataset ([] for None or a dataset without them)."""
    if not dataset_name:
        return []
    return list(MetadataCatalog.get(dataset_name).get("stuff_classes", None) or [])


def model_class_names(cfg, dataset_name: Optional[str] = None) -> List[str]:
    """The ``NUM_CLASSES`` names of the model of ``cfg``: ``MODEL.SEM_SEG_HEAD.CLASS_NAMES`` when
    set, else the names of ``dataset_name`` (default: ``DATASETS.TEST[0]``, else
    ``DATASETS.TRAIN[0]``), cut to ``NUM_CLASSES``; "class_<i>" where neither names class i.

    Raises:
        ValueError: ``CLASS_NAMES`` repeats a name, or has not ``NUM_CLASSES`` entries.
    """
    num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    names = list(cfg.MODEL.SEM_SEG_HEAD.CLASS_NAMES)
    if names:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if len(names) != num_classes or repeated:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CLASS_NAMES has {len(names)} names{f' (repeated: {repeated})' if repeated else ''}; "
                f"it needs {num_classes} distinct ones (MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
            )
        return names
    if dataset_name is None:
        datasets = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        dataset_name = datasets[0] if datasets else None
    names = dataset_class_names(dataset_name)[:num_classes]
    return names + [f"class_{i}" for i in range(len(names), num_classes)]


def check_names_agree(model_names: Sequence[str], dataset_name: str) -> None:
    """Raise ``ValueError`` naming the first id at which the model's class names and those of
    ``dataset_name`` differ (over the ids both name)."""
    dataset_names = dataset_class_names(dataset_name)
    for i, (mine, theirs) in enumerate(zip(model_names, dataset_names)):
        if mine != theirs:
            raise ValueError(
                f"class {i} is {mine!r} for the model (MODEL.SEM_SEG_HEAD.CLASS_NAMES) but {theirs!r} in dataset "
                f"{dataset_name}: the model's ids and the dataset's label ids name different classes"
            )
