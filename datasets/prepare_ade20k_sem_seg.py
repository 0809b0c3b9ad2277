#!/usr/bin/env python
"""Convert ADE20K SceneParse150 annotations to Detectron2's training ids.

Usage (from the repository root)::

    python datasets/prepare_ade20k_sem_seg.py      # --root $DETECTRON2_DATASETS/ADEChallengeData2016

Input: the official ``ADEChallengeData2016.zip``, unpacked::

    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   8-bit, 0 = "other", 1..150

Output: ``ADEChallengeData2016/annotations_detectron2/{training,validation}/ADE_*.png``, 8-bit,
ids 0..149 and 255 = ignore (``reduce_zero_label``: 0 -> 255, k -> k - 1), as Detectron2's own
``datasets/prepare_ade20k_sem_seg.py`` writes. Registered as ``ade20k_sem_seg_{train,val}``.
"""
import sys
from functools import partial
from pathlib import Path

import numpy as np

import _prepare_common as common

NUM_CLASSES = 150  # SceneParse150
IGNORE = 255
#: images per split of ADEChallengeData2016 (SceneParse150: 20,210 train, 2,000 val)
EXPECTED_IMAGES = {"training": 20210, "validation": 2000}


def convert(src: Path, out_dir: Path) -> np.ndarray:
    """One annotation: raw ids 0..150 -> 0..149 / 255. Returns the ids present in the output."""
    raw = common.labels.read_label_map(src)
    bad = np.unique(raw[(raw < 0) | (raw > NUM_CLASSES)])
    if bad.size:
        raise common.PrepareError(f"{src} has id(s) {bad[:10].tolist()} outside 0..{NUM_CLASSES}")
    out = common.labels.reduce_zero_label(raw, IGNORE)
    common.write_label_png(out_dir / src.name, out, bits=8)
    return np.unique(out)


def main(args):
    root = common.require_dir(args.root, "ADE20K (ADEChallengeData2016)")
    problems = []
    for split in ("training", "validation"):
        common.require_dir(root / "images" / split, "image")
        sources = sorted(common.require_dir(root / "annotations" / split, "annotation").glob("*.png"))
        if not sources:
            raise common.PrepareError(f"no '*.png' annotation in {root / 'annotations' / split}")
        out_dir = root / "annotations_detectron2" / split
        out_dir.mkdir(parents=True, exist_ok=True)
        ids = common.parallel_map(partial(convert, out_dir=out_dir), sources, args.num_workers)
        problems += common.check_split("ADE20K-150", split, ids, NUM_CLASSES, IGNORE, EXPECTED_IMAGES[split])
    print(f"wrote {root / 'annotations_detectron2'}")
    return problems


if __name__ == "__main__":
    sys.exit(common.run(main, common.argument_parser(__doc__.split("\n")[0], "ADEChallengeData2016")))
