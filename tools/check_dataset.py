#!/usr/bin/env python
"""Scan registered semantic-segmentation datasets and report every bad file at once.

    python tools/check_dataset.py ade20k_sem_seg_train ade20k_sem_seg_val
    python tools/check_dataset.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml   # its DATASETS
    python tools/check_dataset.py my_data_train --register my_datasets.py --num-workers 8

Checks: the split exists and is not empty; the metadata has stuff_classes; each image is readable
and not truncated; each label map is readable, single-channel, of the image's size, and holds
only ids in [0, len(stuff_classes)) or ignore_label (after reduce_zero_label when the dataset asks
for it); no label id beyond the class list; with --config-file, MODEL.SEM_SEG_HEAD.NUM_CLASSES and
IGNORE_VALUE agree with the metadata. Prints one line per problem; exit code 1 if any. Sizes are
written width x height ("8x6 (WxH)"), as the trainer and the mapper write them. Images are read as
training reads them (protoseg.data.image_io); "read:" lines say how many are scaled from 16 to 8
bits or turned by their EXIF orientation (not problems).
"""
import argparse
import runpy
import sys
from collections import Counter

from detectron2.data import MetadataCatalog

import protoseg  # noqa: F401  (registers the built-in datasets)
from protoseg.config import load_config
from protoseg.data.class_count import class_count_problem
from protoseg.data.validation import DatasetProblem, inspect_dataset


def config_problems(cfg, name):
    """Disagreements between the model config and the dataset's metadata."""
    meta = MetadataCatalog.get(name)
    problems = []
    head = cfg.MODEL.SEM_SEG_HEAD
    problem = class_count_problem(cfg, name)  # the rule a run checks at its start
    if problem is not None:
        if not head.CLASS_NAMES:  # a count that does not fit
            problem = (f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {head.NUM_CLASSES} but stuff_classes has "
                       f"{len(meta.stuff_classes)} entries")
        problems.append(DatasetProblem("config_mismatch", name, problem))
    if head.IGNORE_VALUE != meta.get("ignore_label", 255):
        problems.append(DatasetProblem("config_mismatch", name, f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {head.IGNORE_VALUE} "
                                       f"but the dataset's ignore_label is {meta.get('ignore_label', 255)}"))
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="registered dataset names (default: the config's DATASETS)")
    parser.add_argument("--config-file", help="also check NUM_CLASSES / IGNORE_VALUE of this config")
    parser.add_argument("--register", action="append", default=[],
                        help="python file run first, to register custom datasets (repeatable)")
    parser.add_argument("--num-workers", type=int, default=0, help="worker processes (default: none)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... (last on the command line)")
    args = parser.parse_args(argv)
    for path in args.register:
        runpy.run_path(path, run_name="__check_dataset__")
    cfg = None
    if args.config_file:
        cfg = load_config(args.config_file, args.opts)
    names = args.names or (list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if cfg is not None else [])
    if not names:
        parser.error("give dataset names or --config-file")

    all_problems = []
    for name in names:
        scan = inspect_dataset(name, num_workers=args.num_workers)
        problems = scan.problems
        if cfg is not None and not any(p.kind in ("not_registered", "missing_split") for p in problems):
            problems += config_problems(cfg, name)
        print(f"{name}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            print(f"  {p}")
        for line in scan.reading_lines():
            print(f"  read: {line}")
        all_problems += problems
    if all_problems:
        counts = Counter(p.kind for p in all_problems)
        print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if all_problems else 0


if __name__ == "__main__":
    sys.exit(main())
