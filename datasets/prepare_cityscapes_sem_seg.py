#!/usr/bin/env python
"""Write Cityscapes' ``*_gtFine_labelTrainIds.png`` (19 training ids, 255 = ignore) from the
``*_gtFine_labelIds.png`` maps.

Usage (from the repository root; needs ``pip install cityscapesScripts``)::

    python datasets/prepare_cityscapes_sem_seg.py      # --root $DETECTRON2_DATASETS/cityscapes

Input: ``gtFine_trainvaltest.zip`` and ``leftImg8bit_trainvaltest.zip``, unpacked::

    cityscapes/gtFine/{train,val,test}/<city>/<stem>_gtFine_labelIds.png    8-bit labelIds 0..33
    cityscapes/leftImg8bit/{train,val,test}/<city>/<stem>_leftImg8bit.png

Output: ``cityscapes/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` next to each input,
the file and folder that cityscapesScripts' ``createTrainIdLabelImgs.py`` writes. Registered as
``cityscapes_fine_sem_seg_{train,val,test,trainval}``.

The ids are mapped pixel by pixel with the ``id -> trainId`` table of cityscapesScripts'
``cityscapesscripts/helpers/labels.py`` (trainId 255 or -1 -> 255). This needs only the labelIds
PNGs; ``createTrainIdLabelImgs.py`` instead re-draws the polygons of ``*_gtFine_polygons.json``
with trainIds, which gives the same maps (both skip the objects with a negative id and draw the
polygons in the same order) but needs the JSON files.
"""
import sys
from functools import partial
from pathlib import Path

import numpy as np

import _prepare_common as common

NUM_CLASSES = 19
IGNORE = 255
SUFFIX_IN, SUFFIX_OUT = "_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"
#: fine annotations per split (Cityscapes: 2,975 train, 500 val, 1,525 test)
EXPECTED_IMAGES = {"train": 2975, "val": 500, "test": 1525}


def label_id_to_train_id() -> np.ndarray:
    """(256,) look-up table labelId -> trainId from cityscapesScripts; ids not in its table map to
    -1 (an error when met); ignored classes map to 255."""
    try:
        from cityscapesscripts.helpers.labels import labels as cityscapes_labels
    except ImportError as e:
        raise common.PrepareError(f"cityscapesScripts is needed: pip install cityscapesScripts ({e})") from e
    mapping = {
        lab.id: (lab.trainId if 0 <= lab.trainId < IGNORE else IGNORE)
        for lab in cityscapes_labels
        if lab.id >= 0
    }
    return common.id_lut(mapping, 256, fill=-1)


def convert(src: Path, lut: np.ndarray) -> np.ndarray:
    """One labelIds map -> labelTrainIds next to it. Returns the ids present in the output."""
    raw = common.labels.read_label_map(src)
    out = common.apply_lut(raw, lut, src)
    if (out < 0).any():
        raise common.PrepareError(
            f"{src} has id(s) {np.unique(raw[out < 0])[:10].tolist()} that are not Cityscapes labelIds (0..33)")
    common.write_label_png(src.with_name(src.name[: -len(SUFFIX_IN)] + SUFFIX_OUT), out, bits=8)
    return np.unique(out)


def main(args):
    root = common.require_dir(args.root, "Cityscapes")
    lut = label_id_to_train_id()
    problems = []
    for split in ("train", "val", "test"):
        common.require_dir(root / "leftImg8bit" / split, "image")
        sources = sorted(common.require_dir(root / "gtFine" / split, "annotation").glob(f"*/*{SUFFIX_IN}"))
        if not sources:
            raise common.PrepareError(f"no '<city>/*{SUFFIX_IN}' annotation in {root / 'gtFine' / split}")
        ids = common.parallel_map(partial(convert, lut=lut), sources, args.num_workers)
        problems += common.check_split("Cityscapes", split, ids, NUM_CLASSES, IGNORE, EXPECTED_IMAGES[split])
    print(f"wrote *{SUFFIX_OUT} under {root / 'gtFine'}")
    return problems


if __name__ == "__main__":
    sys.exit(common.run(main, common.argument_parser(__doc__.split("\n")[0], "cityscapes")))
