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
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .class_names import check_names_agree

__all__ = ["class_count_problem", "dataset_class_count_problems", "check_dataset_class_counts"]

NUM_CLASSES_KEY = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"


def class_count_problem(cfg, dataset_name: str, where: str = "") -> Optional[str]:
    """How the model's classes do not fit those of the registered ``dataset_name`` (see the module
    docstring; ``where`` follows the dataset's name, e.g. " (DATASETS.TEST)"), or None when they
    fit or the dataset's classes are not known."""
    if dataset_name not in DatasetCatalog.list():
        return None
    classes = MetadataCatalog.get(dataset_name).get("stuff_classes", None)
    if classes is None:
        return None
    own_names = list(cfg.MODEL.SEM_SEG_HEAD.CLASS_NAMES)
    if own_names:
        try:
            check_names_agree(own_names, dataset_name)
        except ValueError as e:
            return f"{e}{where}"
        return None
    num_classes, held_out = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.INPUT.HELD_OUT_CLASSES
    if len(classes) - held_out == num_classes:
        return None
    less = f" less INPUT.HELD_OUT_CLASSES {held_out}" if held_out else ""
    return (f"{NUM_CLASSES_KEY} is {num_classes} but dataset {dataset_name!r}{where} has {len(classes)} classes "
            f"(stuff_classes){less}")


def dataset_class_count_problems(cfg) -> List[str]:
    """One line per dataset of ``cfg.DATASETS.TRAIN`` / ``TEST`` that does not fit the model's
    classes (:func:`class_count_problem`), naming the split."""
    problems = []
    for split in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(split, ()):
            problem = class_count_problem(cfg, name, f" (DATASETS.{split})")
            if problem is not None:
                problems.append(problem)
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
