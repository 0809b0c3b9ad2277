#!/usr/bin/env python
"""Convert COCO-Stuff-10k (v1.1) to 171 training ids per split.

Usage (from the repository root; needs scipy)::

    python datasets/prepare_coco_stuff_10k_sem_seg.py   # --root $DETECTRON2_DATASETS/coco/coco_stuff_10k

Input: the official ``cocostuff-10k-v1.1.zip``, unpacked into ``coco/coco_stuff_10k``::

    images/COCO_{train,val}2014_*.jpg
    annotations/COCO_{train,val}2014_*.mat      label map under key "S": 0 = unlabeled, 1..182 COCO-Stuff ids
    imageLists/{train,test}.txt                 one image name (no extension) per line: 9,000 / 1,000

Output::

    images_detectron2/{train,test}/<name>.jpg       hard links to images/ (copies across file systems)
    annotations_detectron2/{train,test}/<name>.png  8-bit, ids 0..170, 255 = ignore

Ids: COCO-Stuff numbers 182 classes (1-91 things, 92-182 stuff), but 11 thing ids have no
annotation in COCO (12 street sign, 26 hat, 29 shoe, 30 eye glasses, 45 plate, 66 mirror,
68 window, 69 desk, 71 door, 83 blender, 91 hair brush), which leaves the 171 classes of the
benchmark (mmsegmentation's ``coco_stuff10k.py`` converter, MaskFormer's COCO-Stuff metadata). The
171 used ids keep their order and become 0..170; 0 (unlabeled) and the 11 unused ids become 255.
Registered as ``coco_stuff_10k_sem_seg_{train,test}`` (class names in ``protoseg/data/builtin.py``).
"""
import sys
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

import _prepare_common as common

IGNORE = 255
#: COCO-Stuff thing ids without annotations (see the module docstring)
UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
USED_IDS = tuple(i for i in range(1, 183) if i not in UNUSED_IDS)  # 171 ids
#: images per split (COCO-Stuff-10k: 9k train / 1k test; paper Sec. 5.1)
EXPECTED_IMAGES = {"train": 9000, "test": 1000}


def coco_stuff_lut() -> np.ndarray:
    """(183,) table COCO-Stuff id -> training id (0..170), 255 for 0 and the unused ids."""
    return common.id_lut({coco_id: i for i, coco_id in enumerate(USED_IDS)}, 183, fill=IGNORE)


def read_mat_labels(path: Path) -> np.ndarray:
    """The (H, W) label map under key "S" of a COCO-Stuff-10k .mat file."""
    from scipy.io import loadmat

    if not path.is_file():
        raise common.PrepareError(f"annotation {path} does not exist")
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises ValueError / MatReadError / NotImplementedError (v7.3)
        raise common.PrepareError(f"annotation {path} cannot be read by scipy.io.loadmat: {e}") from e
    if "S" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise common.PrepareError(f"annotation {path} has no label map 'S' (keys: {keys}); is it COCO-Stuff-10k v1.1?")
    labels_hw = np.asarray(mat["S"])
    if labels_hw.ndim != 2:
        raise common.PrepareError(f"annotation {path}: 'S' has shape {labels_hw.shape}, expected (H, W)")
    return labels_hw.astype(np.int64)


def convert(name: str, root: Path, split: str, lut: np.ndarray) -> np.ndarray:
    """One image: link the image, write the label PNG. Returns the ids present in the output."""
    image = root / "images" / f"{name}.jpg"
    mat = root / "annotations" / f"{name}.mat"
    if not image.is_file():
        raise common.PrepareError(f"image {image} (listed in imageLists/{split}.txt) does not exist")
    out = common.apply_lut(read_mat_labels(mat), lut, mat)
    with Image.open(image) as img:
        width, height = img.size
    if out.shape != (height, width):
        raise common.PrepareError(f"annotation {mat} is {out.shape[0]}x{out.shape[1]} but image {image} is {height}x{width}")
    common.link_or_copy(image, root / "images_detectron2" / split / image.name)
    common.write_label_png(root / "annotations_detectron2" / split / f"{name}.png", out, bits=8)
    return np.unique(out)


def main(args):
    root = common.require_dir(args.root, "COCO-Stuff-10k")
    for sub in ("images", "annotations", "imageLists"):
        common.require_dir(root / sub, sub)
    lut = coco_stuff_lut()
    problems = []
    for split in ("train", "test"):
        list_file = root / "imageLists" / f"{split}.txt"
        if not list_file.is_file():
            raise common.PrepareError(f"image list {list_file} does not exist")
        names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not names:
            raise common.PrepareError(f"image list {list_file} is empty")
        ids = common.parallel_map(partial(convert, root=root, split=split, lut=lut), names, args.num_workers)
        problems += common.check_split("COCO-Stuff-10k", split, ids, len(USED_IDS), IGNORE, EXPECTED_IMAGES[split])
    print(f"wrote {root / 'images_detectron2'} and {root / 'annotations_detectron2'}")
    return problems


if __name__ == "__main__":
    sys.exit(common.run(main, common.argument_parser(__doc__.split("\n")[0], "coco/coco_stuff_10k")))
