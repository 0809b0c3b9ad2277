#!/usr/bin/env python
"""Prepare ADE20K-Full (847 classes) and its ADE20K-300/500/700/847 vocabulary splits.

Usage (from the repository root; needs OpenCV, as Detectron2 does)::

    python datasets/prepare_ade20k_full_sem_seg.py     # --root $DETECTRON2_DATASETS/ADE20K_2021_17_01

Input: the full ADE20K release ``ADE20K_2021_17_01`` (not ``ADEChallengeData2016``, which is the
150-class benchmark) with its index ``index_ade20k.pkl`` at the top of the folder::

    ADE20K_2021_17_01/index_ade20k.pkl    keys used: filename, folder, objectnames
    ADE20K_2021_17_01/images/ADE/{training,validation}/<scene>/.../ADE_*.jpg
    ADE20K_2021_17_01/images/ADE/{training,validation}/<scene>/.../ADE_*_seg.png

``*_seg.png`` is colour-coded: the object class of a pixel is ``R // 10 * 256 + G`` (ADE20K
toolkit, ``utils/utils_ade20k.py``), 0 = unlabelled, and class c is ``objectnames[c - 1]`` of the
index. The split of an image is the ``training`` / ``validation`` folder it lies in.

Steps:

1. Like MaskFormer's ``prepare_ade20k_full_sem_seg.py``: an image whose short side exceeds
   ``--max-short-side`` (512) is resized to that short side (image: bilinear, JPEG; class mask:
   nearest), so numbers are comparable with published ones; smaller images are linked unchanged.
2. Vocabulary: a class is kept when at least one pixel of the (resized) masks of the training
   set AND one of the validation set carries it (paper appendix A: "the 847 concepts that are
   appearing in both train and val", following MaskFormer). Kept classes are ranked by frequency
   = the number of training images containing the class (descending); ties by total training
   pixel count (descending), then by ADE20K class index (ascending). Class id = rank (0-based).
3. Labels: 16-bit PNG, ids 0..K-1, 65535 = ignore (unlabelled and dropped classes). ADE20K-x keeps
   the x most frequent classes, ids 0..x-1 (its ids are the full ids, since full ids are ranks)
   and maps the others to 65535; each split gets its own label folder (about 20 KB per map, some
   0.5 GB per split; the images are shared), so the training mapper needs no remapping.

Output (under the root)::

    images_detectron2/{training,validation}/ADE_*.jpg
    annotations_detectron2/{training,validation}/ADE_*.png        all K kept classes
    annotations_detectron2_{300,500,700}/{training,validation}/*.png
    ade20k_full_classes.tsv                      the K classes; columns below
    ade20k_full_vocab_{300,500,700,847}.tsv      the first x rows: the split's classes

TSV columns: id (= rank, 0-based), full_id, ade_index (the value decoded from ``*_seg.png``), name,
train_images, train_pixels, val_images, val_pixels. Registered as ``ade20k_full_sem_seg_*`` and
``ade20k_full_{300,500,700,847}_sem_seg_*`` (protoseg/data/builtin.py).
"""
import csv
import pickle
import sys
from functools import partial
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

import _prepare_common as common

IGNORE = 65535
VOCAB_SIZES = (300, 500, 700, 847)  # paper Table 4 / appendix A
OFFICIAL_NUM_CLASSES = 847  # paper appendix A
#: images per split of ADE20K_2021_17_01 (its README: 25,574 training, 2,000 validation)
EXPECTED_IMAGES = {"training": 25574, "validation": 2000}
SPLITS = ("training", "validation")
#: ``R // 10 * 256 + G`` is below 26 * 256: the size of the per-class count arrays
MAX_ADE_INDEX = 26 * 256
JPEG_QUALITY = 75  # Pillow's default, what MaskFormer's script writes


def load_index(path: Path) -> Dict:
    if not path.is_file():
        raise common.PrepareError(
            f"index {path} does not exist; it comes with the ADE20K download (index_ade20k.pkl)")
    try:
        with open(path, "rb") as f:
            index = pickle.load(f)
    except Exception as e:
        raise common.PrepareError(f"index {path} cannot be read: {type(e).__name__}: {e}") from e
    missing = [k for k in ("filename", "folder", "objectnames") if k not in index]
    if missing:
        raise common.PrepareError(f"index {path} lacks key(s) {missing}")
    if len(index["filename"]) != len(index["folder"]):
        raise common.PrepareError(f"index {path}: 'filename' and 'folder' differ in length")
    return index


def image_list(root: Path, index: Dict) -> List[Tuple[str, Path]]:
    """``[(split, path of the .jpg)]`` of every image of the index. ``folder`` entries start with
    ``ADE20K_2021_17_01/``; they are resolved under ``root`` from that component on."""
    items = []
    for folder, filename in zip(index["folder"], index["filename"]):
        parts = Path(str(folder)).parts
        rel = parts[parts.index(root.name) + 1:] if root.name in parts else parts
        split = next((s for s in SPLITS if s in rel), None)
        if split is None:
            raise common.PrepareError(f"index entry {folder}/{filename} is in neither a training nor a validation folder")
        items.append((split, root.joinpath(*rel, str(filename))))
    return items


def resized_shape(height: int, width: int, max_short_side: int) -> Tuple[int, int]:
    """(H, W) with the short side brought down to ``max_short_side`` (aspect kept; 0 = no resize)."""
    if max_short_side <= 0 or min(height, width) <= max_short_side:
        return height, width
    if height <= width:
        return max_short_side, round(width * max_short_side / height)
    return round(height * max_short_side / width), max_short_side


def class_mask(image_path: Path, max_short_side: int) -> np.ndarray:
    """(H', W') ADE20K class indices decoded from ``<stem>_seg.png``, resized (nearest) with the
    image. Raises PrepareError naming the mask if it is missing, not RGB, or not the image's size."""
    import cv2

    seg_path = image_path.with_name(image_path.stem + "_seg.png")
    if not image_path.is_file():
        raise common.PrepareError(f"image {image_path} (listed in the index) does not exist")
    if not seg_path.is_file():
        raise common.PrepareError(f"class mask {seg_path} does not exist")
    try:
        with Image.open(seg_path) as seg:
            if seg.mode not in ("RGB", "RGBA"):
                raise common.PrepareError(f"class mask {seg_path} is a {seg.mode!r} image; expected RGB")
            rgb = np.asarray(seg.convert("RGB"))
        with Image.open(image_path) as img:
            width, height = img.size
    except common.PrepareError:
        raise
    except Exception as e:
        raise common.PrepareError(f"{seg_path} or {image_path} cannot be read: {type(e).__name__}: {e}") from e
    if rgb.shape[:2] != (height, width):
        raise common.PrepareError(f"class mask {seg_path} is {rgb.shape[0]}x{rgb.shape[1]}, image is {height}x{width}")
    ids = (rgb[..., 0].astype(np.int64) // 10) * 256 + rgb[..., 1]
    h, w = resized_shape(height, width, max_short_side)
    if (h, w) != (height, width):
        ids = cv2.resize(ids.astype(np.uint16), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return ids


def scan(item: Tuple[str, Path], root: Path, max_short_side: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pass 1 for one image: write the (resized) image; return the class indices present in its
    mask and their pixel counts."""
    import cv2

    split, image_path = item
    ids = class_mask(image_path, max_short_side)
    out = root / "images_detectron2" / split / image_path.name
    with Image.open(image_path) as img:
        if img.size == (ids.shape[1], ids.shape[0]):
            common.link_or_copy(image_path, out)
        else:
            rgb = cv2.resize(np.asarray(img.convert("RGB")), (ids.shape[1], ids.shape[0]), interpolation=cv2.INTER_LINEAR)
            Image.fromarray(rgb).save(out, quality=JPEG_QUALITY)
    return np.unique(ids, return_counts=True)


def rank_classes(stats: Dict[str, Tuple[np.ndarray, np.ndarray]], names: Sequence[str], index_path: Path) -> List[Dict]:
    """The kept classes in rank order (see the module docstring), one dict per TSV row.
    ``stats[split] = (images containing each class index, pixels of each class index)``."""
    (train_img, train_pix), (val_img, val_pix) = stats["training"], stats["validation"]
    kept = [int(c) for c in np.flatnonzero((train_img > 0) & (val_img > 0)) if c != 0]
    kept.sort(key=lambda c: (-train_img[c], -train_pix[c], c))
    rows = []
    for rank, c in enumerate(kept):
        if c - 1 >= len(names):
            raise common.PrepareError(f"class index {c} in the masks has no name: {index_path} lists {len(names)} objectnames")
        rows.append({
            "id": rank, "full_id": rank, "ade_index": c,
            "name": " ".join(str(names[c - 1]).split()),  # no tab / newline in the TSV
            "train_images": int(train_img[c]), "train_pixels": int(train_pix[c]),
            "val_images": int(val_img[c]), "val_pixels": int(val_pix[c]),
        })
    return rows


def write_table(path: Path, rows: Sequence[Dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_labels(item: Tuple[str, Path], root: Path, max_short_side: int, lut: np.ndarray,
                 splits: Sequence[int]) -> np.ndarray:
    """Pass 2 for one image: the full label map and one per vocabulary split (16-bit PNGs).
    Returns the full ids present."""
    split, image_path = item
    full = lut[class_mask(image_path, max_short_side)]
    name = image_path.stem + ".png"
    common.write_label_png(root / "annotations_detectron2" / split / name, full, bits=16)
    for x in splits:
        common.write_label_png(root / f"annotations_detectron2_{x}" / split / name,
                               np.where(full < x, full, IGNORE), bits=16)
    return np.unique(full)


def main(args):
    root = common.require_dir(args.root, "ADE20K-Full (ADE20K_2021_17_01)")
    index = load_index(root / "index_ade20k.pkl")
    items = image_list(root, index)
    if not items:
        raise common.PrepareError(f"index {root / 'index_ade20k.pkl'} lists no image")

    # pass 1: images, per-class statistics
    per_image = common.parallel_map(partial(scan, root=root, max_short_side=args.max_short_side), items, args.num_workers)
    stats = {s: (np.zeros(MAX_ADE_INDEX, np.int64), np.zeros(MAX_ADE_INDEX, np.int64)) for s in SPLITS}
    for (split, _), (ids, counts) in zip(items, per_image):
        np.add.at(stats[split][0], ids, 1)
        np.add.at(stats[split][1], ids, counts)
    rows = rank_classes(stats, index["objectnames"], root / "index_ade20k.pkl")
    num_classes = len(rows)
    if num_classes == 0:
        raise common.PrepareError("no class appears in both the training and the validation masks")
    print(f"ADE20K-Full: {num_classes} classes appear in both training and validation"
          + ("" if num_classes == OFFICIAL_NUM_CLASSES else f" (the official release gives {OFFICIAL_NUM_CLASSES})"))
    write_table(root / "ade20k_full_classes.tsv", rows)
    splits = [x for x in VOCAB_SIZES if x <= num_classes]
    for x in VOCAB_SIZES:
        if x in splits:
            write_table(root / f"ade20k_full_vocab_{x}.tsv", rows[:x])
        else:
            print(f"  note: ADE20K-{x} not written: only {num_classes} classes")

    # pass 2: label maps
    lut = common.id_lut({r["ade_index"]: r["full_id"] for r in rows}, MAX_ADE_INDEX, fill=IGNORE)
    fn = partial(write_labels, root=root, max_short_side=args.max_short_side, lut=lut,
                 splits=[x for x in splits if x < num_classes])
    full_ids = common.parallel_map(fn, items, args.num_workers)
    problems = []
    for split in SPLITS:
        ids = [u for (s, _), u in zip(items, full_ids) if s == split]
        problems += common.check_split("ADE20K-Full", split, ids, num_classes, IGNORE, EXPECTED_IMAGES[split])
    print(f"wrote {root / 'images_detectron2'}, {root}/annotations_detectron2*, {root}/ade20k_full_*.tsv")
    return problems


if __name__ == "__main__":
    parser = common.argument_parser(__doc__.split("\n")[0], "ADE20K_2021_17_01")
    parser.add_argument("--max-short-side", type=int, default=512,
                        help="resize images whose short side is longer (0: keep sizes; default %(default)s, "
                             "as MaskFormer's preparation)")
    sys.exit(common.run(main, parser))
