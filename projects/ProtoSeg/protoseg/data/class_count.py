"""The model's class count against the class lists of a run's datasets, checked when a run starts.

``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` must equal ``len(stuff_classes)`` of every dataset of
``DATASETS.TRAIN`` and ``DATASETS.TEST``, less the ``INPUT.HELD_OUT_CLASSES`` last ids that a
run ignores: otherwise the evaluator refuses the model's scores at the first evaluation
(``TEST.EVAL_PERIOD`` iterations into training), or a training label id has no class. A model that
names its own classes (``MODEL.SEM_SEG_HEAD.CLASS_NAMES``, e.g. one grown by tools/add_class.py)
may predict more or fewer classes than a dataset names; where both name an id, the names must
agree (:func:`~protoseg.data.class_names.check_names_agree`). A run (train_net.py, training or ``--eval-only``) calls :func:`check_dataset_class_counts`
on its config before anything is built; the demo and the tools that only build a model do not,
since they need no dataset (and may draw a model of another vocabulary with a dataset's names).

A dataset that is not registered, or whose ``stuff_classes`` are not known yet (a built-in dataset
before its preparation script has run), is left to the loader, which names what is missing.
"""
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .class_names import check_names_agree

__all__ = ["dataset_class_count_problems", "check_dataset_class_counts"]

NUM_CLASSES_KEY = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"


def dataset_class_count_problems(cfg) -> List[str]:
    """One line per dataset of ``cfg.DATASETS.TRAIN`` / ``TEST`` that does not fit the model's
    classes (see the module docstring), naming the key, both numbers (or both names) and the dataset."""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    held_out = cfg.INPUT.HELD_OUT_CLASSES
    own_names = list(cfg.MODEL.SEM_SEG_HEAD.CLASS_NAMES)
    registered = set(DatasetCatalog.list())
    problems = []
    for split in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(split, ()):
            classes = MetadataCatalog.get(name).get("stuff_classes", None) if name in registered else None
            if classes is None:
                continue
            if own_names:
                try:
                    check_names_agree(own_names, name)
                except ValueError as e:
                    problems.append(f"{e} (DATASETS.{split})")
            elif len(classes) - held_out != num_classes:
                less = f" less INPUT.HELD_OUT_CLASSES {held_out}" if held_out else ""
                problems.append(
                    f"{NUM_CLASSES_KEY} is {num_classes} but dataset {name!r} (DATASETS.{split}) has "
                    f"{len(classes)} classes (stuff_classes){less}"
                )
    return problems


def check_dataset_class_counts(cfg) -> None:
    """Raise a ``ValueError`` listing every :func:`dataset_class_count_problems` of ``cfg``."""
    problems = dataset_class_count_problems(cfg)
    if problems:
        raise ValueError(
            "the model's class count does not match the datasets:\n  " + "\n  ".join(problems)
            + f"\nSet {NUM_CLASSES_KEY} to the datasets' class count (a model of another vocabulary: "
            "tools/expand_vocabulary.py, then train on a dataset with that class list)."
        )
