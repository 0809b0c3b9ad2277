#!/usr/bin/env python
"""Prepare ADE20K-Full (MaskFormer's 847 classes) and its ADE20K-300/500/700/847 vocabularies.

Usage (from the repository root; needs OpenCV, as Detectron2 does)::

    python datasets/prepare_ade20k_full_sem_seg.py     # --root $DETECTRON2_DATASETS/ADE20K_2021_17_01

Input: the full ADE20K release ``ADE20K_2021_17_01`` (not ``ADEChallengeData2016``, which is the
150-class benchmark) with its official index ``index_ade20k.pkl`` at the top of the folder::

    ADE20K_2021_17_01/index_ade20k.pkl    keys used: filename, folder, objectnames
    ADE20K_2021_17_01/images/ADE/{training,validation}/<scene>/.../ADE_*.jpg
    ADE20K_2021_17_01/images/ADE/{training,validation}/<scene>/.../ADE_*_seg.png

``*_seg.png`` is colour-coded: the object class of a pixel is ``R // 10 * 256 + G`` (ADE20K
toolkit, ``utils/utils_ade20k.py``), 0 = unlabelled, and class c is ``objectnames[c - 1]`` of the
index. The split of an image is the ``training`` / ``validation`` folder it lies in. The index is
a pickle, as the release ships it; it is read with an unpickler that builds only builtin
containers and numpy arrays (a pickle naming any other global is refused).

Classes: the FIXED table of 847 classes shipped in ``protoseg/data/tables/ade20k_full_847.tsv``
(MaskFormer's ``ADE20K_SEM_SEG_FULL_CATEGORIES``; see ``protoseg/data/ade20k_full.py``), not a
list rebuilt from the downloaded images, so that the vocabulary, and the numbers, are the same for
everyone. ADE20K-x = the first x classes of the table (its order is MaskFormer's frequency order).

Steps, as MaskFormer's ``prepare_ade20k_full_sem_seg.py`` does them:

1. an image whose short side exceeds ``--max-short-side`` (512) is resized to that short side
   (image: bilinear, JPEG; class mask: nearest); smaller images are linked unchanged;
2. labels: ``train_id`` of the table for every ADE20K class index in it; 65535 (ignore) for 0
   (unlabelled) and for every index outside the table (including indices >= 256, decoded in full);
3. ADE20K-x (x = 300, 500, 700): train ids >= x become 65535 too. Each vocabulary gets its own
   label folder (about 20 KB per map, some 0.5 GB per split; the images are shared), so the
   training mapper needs no remapping.

Disagreements between the table and the data are REPORTED, never acted upon: table classes absent
from the training / validation split, ADE20K class indices of the data outside the table (pixel
share, names from ``objectnames``), table names that differ from the index's names, and how far
the table's frequency order is from the data's (training images containing each class). The report
is printed and written next to per-class counts.

Output (under the root)::

    images_detectron2/{training,validation}/ADE_*.jpg
    annotations_detectron2/{training,validation}/ADE_*.png        ADE20K-Full = ADE20K-847, 16-bit
    annotations_detectron2_{300,500,700}/{training,validation}/*.png
    ade20k_full_report.txt          the report
    ade20k_full_class_stats.tsv     train_id, ade_index, name, index_name, train_images,
                                    train_pixels, val_images, val_pixels: the 847 table classes in
                                    train-id order, then the indices outside the table found in
                                    the data (empty train_id)

Registered as ``ade20k_full_sem_seg_*`` and ``ade20k_full_{300,500,700,847}_sem_seg_*``
(protoseg/data/builtin.py).
"""
import csv
import sys
from functools import partial
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

import _prepare_common as common

table = common.load_package_module("data.ade20k_full")  # the shipped class table (stdlib only)

IGNORE = table.ADE20K_FULL_IGNORE
NUM_CLASSES = table.ADE20K_FULL_NUM_CLASSES
#: vocabularies with a label folder of their own (ADE20K-847 is annotations_detectron2 itself)
SPLIT_VOCABS = tuple(x for x in table.ADE20K_FULL_VOCAB_SIZES if x < NUM_CLASSES)
#: images per split of ADE20K_2021_17_01 (its README: 25,574 training, 2,000 validation)
EXPECTED_IMAGES = {"training": 25574, "validation": 2000}
SPLITS = ("training", "validation")
#: ``R // 10 * 256 + G`` is below 26 * 256: the size of the look-up table and the count arrays
MAX_ADE_INDEX = 26 * 256
JPEG_QUALITY = 75  # Pillow's default, what MaskFormer's script writes
REPORT_EXAMPLES = 10  # names listed per finding in the report

#: (images containing each ADE20K class index, pixels of each index): two (MAX_ADE_INDEX,) arrays
SplitStats = Tuple[np.ndarray, np.ndarray]


def load_index(path: Path) -> Dict:
    """The official ``index_ade20k.pkl`` (a dict of lists / numpy arrays), read with
    :func:`protoseg.checkpoint.safe_pickle.safe_load`; PrepareError naming the file if it is missing, refused or lacks a key."""
    if not path.is_file():
        raise common.PrepareError(
            f"index {path} does not exist; it comes with the ADE20K download (index_ade20k.pkl)")
    try:
        with open(path, "rb") as f:
            index = common.load_package_module("checkpoint.safe_pickle").safe_load(f)
    except Exception as e:
        raise common.PrepareError(f"index {path} cannot be read: {type(e).__name__}: {e}") from e
    if not isinstance(index, dict):
        raise common.PrepareError(f"index {path} holds a {type(index).__name__}; expected a dict")
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
            raise common.PrepareError(f"index entry {folder}/{filename} is in neither a training "
                                      f"nor a validation folder")
        items.append((split, root.joinpath(*rel, str(filename))))
    return items


def resized_shape(height: int, width: int, max_short_side: int) -> Tuple[int, int]:
    """(H, W) with the short side brought down to ``max_short_side`` (aspect kept; 0 = no resize)."""
    if max_short_side <= 0 or min(height, width) <= max_short_side:
        return height, width
    # MaskFormer's expression, operation for operation (round(w / h * 512)), so that no size can
    # round the other way
    if height <= width:
        return max_short_side, round(width / float(height) * max_short_side)
    return round(height / float(width) * max_short_side), max_short_side


def class_mask(image_path: Path, max_short_side: int) -> np.ndarray:
    """(H', W') int64 ADE20K class indices decoded from ``<stem>_seg.png``, resized (nearest) with
    the image. Raises PrepareError naming the mask if it is missing, not RGB, or not the image's size."""
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


def train_id_lut(classes: Sequence) -> np.ndarray:
    """(MAX_ADE_INDEX,) look-up table ``lut[ADE20K class index] = train id`` of the table;
    65535 for 0 (unlabelled) and every index outside the table."""
    return common.id_lut({c.ade_index: c.train_id for c in classes}, MAX_ADE_INDEX, fill=IGNORE)


def write_image(image_path: Path, out: Path, shape: Tuple[int, int]) -> None:
    """Link the image to ``out``, or write it resized (bilinear) to the (H, W) ``shape`` of its labels."""
    import cv2

    with Image.open(image_path) as img:
        if img.size == (shape[1], shape[0]):
            common.link_or_copy(image_path, out)
            return
        rgb = cv2.resize(np.asarray(img.convert("RGB")), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out, quality=JPEG_QUALITY)


def convert(item: Tuple[str, Path], root: Path, max_short_side: int, lut: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """One image: write the (resized) image, its 16-bit label map and one per ADE20K-x split.
    Returns the ADE20K class indices of its (resized) mask and their pixel counts."""
    split, image_path = item
    ids = class_mask(image_path, max_short_side)
    write_image(image_path, root / "images_detectron2" / split / image_path.name, ids.shape)
    full = lut[ids]
    name = image_path.stem + ".png"
    common.write_label_png(root / "annotations_detectron2" / split / name, full, bits=16)
    for x in SPLIT_VOCABS:
        common.write_label_png(root / f"annotations_detectron2_{x}" / split / name,
                               np.where(full < x, full, IGNORE), bits=16)
    return np.unique(ids, return_counts=True)


def split_stats(items: Sequence[Tuple[str, Path]],
                per_image: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, SplitStats]:
    """Per split: images containing each ADE20K class index and its pixel count."""
    stats = {s: (np.zeros(MAX_ADE_INDEX, np.int64), np.zeros(MAX_ADE_INDEX, np.int64)) for s in SPLITS}
    for (split, _), (ids, counts) in zip(items, per_image):
        np.add.at(stats[split][0], ids, 1)
        np.add.at(stats[split][1], ids, counts)
    return stats


def index_name(objectnames: Sequence, c: int) -> str:
    """``objectnames[c - 1]`` of the index, whitespace collapsed (no tab in the TSV); "" if absent."""
    return " ".join(str(objectnames[c - 1]).split()) if 0 < c <= len(objectnames) else ""


def _share(part: int, total: int) -> str:
    """``part / total`` as a percentage with 3 significant digits (tiny shares stay visible)."""
    return f"{100 * part / max(total, 1):.3g}%"


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:REPORT_EXAMPLES])
    return shown + (", ..." if len(names) > REPORT_EXAMPLES else "")


def report_missing(classes: Sequence, stats: Dict[str, SplitStats]) -> List[str]:
    """Table classes without a pixel in the training split, the validation split, or both; they
    keep their train ids (their IoU is simply undefined where they are absent)."""
    ade = np.array([c.ade_index for c in classes])
    in_train, in_val = stats["training"][0][ade] > 0, stats["validation"][0][ade] > 0
    lines = []
    for what, absent in (("both splits", ~in_train & ~in_val), ("training only", ~in_train & in_val),
                         ("validation only", in_train & ~in_val)):
        names = [f"{c.train_id} {c.name}" for c, a in zip(classes, absent) if a]
        lines.append(f"table classes absent from {what}: {len(names)}" + (f" ({_examples(names)})" if names else ""))
    return lines


def outside_table(lut: np.ndarray, stats: Dict[str, SplitStats]) -> List[int]:
    """ADE20K class indices (0 excluded) with pixels in either split that the table lacks, most
    pixels first: the data labelled 65535 although annotated."""
    pixels = stats["training"][1] + stats["validation"][1]
    outside = [int(c) for c in np.flatnonzero(pixels) if c != 0 and lut[c] == IGNORE]
    return sorted(outside, key=lambda c: -pixels[c])


def report_outside(lut: np.ndarray, stats: Dict[str, SplitStats], objectnames: Sequence) -> List[str]:
    """Unlabelled pixels and the ADE20K class indices outside the table, with their pixel shares."""
    pixels = stats["training"][1] + stats["validation"][1]
    labelled = pixels[1:].sum()
    outside = outside_table(lut, stats)
    lines = [f"unlabelled pixels (index 0): {pixels[0]} ({_share(pixels[0], pixels.sum())} of all pixels)",
             f"class indices in the data but not in the table: {len(outside)}, "
             f"{_share(pixels[outside].sum(), labelled)} of the labelled pixels (-> 65535)"]
    for c in outside[:REPORT_EXAMPLES]:
        lines.append(f"  index {c} {index_name(objectnames, c) or '(not in objectnames)'!r}: {pixels[c]} pixels "
                     f"({_share(pixels[c], labelled)}), {stats['training'][0][c]} training / "
                     f"{stats['validation'][0][c]} validation images")
    if len(outside) > REPORT_EXAMPLES:
        lines.append(f"  ... ({len(outside) - REPORT_EXAMPLES} more in the class stats TSV)")
    return lines


def report_names(classes: Sequence, objectnames: Sequence) -> List[str]:
    """Table classes whose name is not the index's ``objectnames`` entry of their class index."""
    differ = [f"{c.ade_index} {c.name!r} vs {index_name(objectnames, c.ade_index)!r}"
              for c in classes if c.name != index_name(objectnames, c.ade_index)]
    return [f"table names differing from the index's objectnames: {len(differ)}"
            + (f" ({_examples(differ)})" if differ else "")]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks of ``values`` (ascending), ties sharing their mean rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def report_order(classes: Sequence, stats: Dict[str, SplitStats]) -> List[str]:
    """The table's frequency order against the data's: training images containing each class
    (ties: training pixels, then table order). For each ADE20K-x, how many of the table's first x
    are not among the data's x most frequent table classes; Spearman's rho of the two orders."""
    ade = np.array([c.ade_index for c in classes])
    images, pixels = stats["training"][0][ade], stats["training"][1][ade]
    data_order = np.lexsort((np.arange(len(classes)), -pixels, -images))  # last key first
    lines = []
    for x in SPLIT_VOCABS:
        outside = sorted(set(range(x)) - set(data_order[:x].tolist()))
        names = [f"{t} {classes[t].name}" for t in outside]
        lines.append(f"ADE20K-{x}: {len(outside)} of the table's first {x} classes are not among the data's "
                     f"{x} most frequent" + (f" ({_examples(names)})" if names else ""))
    position, data_rank = np.arange(len(classes), dtype=np.float64), average_ranks(-images)
    rho = np.corrcoef(position, data_rank)[0, 1] if data_rank.std() > 0 else float("nan")
    lines.append(f"Spearman rank correlation of the table order and the training-image counts: {rho:.3f}")
    return lines


def write_class_stats(path: Path, classes: Sequence, lut: np.ndarray, stats: Dict[str, SplitStats],
                      objectnames: Sequence) -> None:
    """Per-class counts: the 847 table classes in train-id order, then the data's indices outside
    the table (empty train_id and name; ``index_name`` is ``objectnames[ade_index - 1]``)."""
    (train_img, train_pix), (val_img, val_pix) = stats["training"], stats["validation"]
    rows = [(c.train_id, c.ade_index, c.name) for c in classes] + [("", c, "") for c in outside_table(lut, stats)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["train_id", "ade_index", "name", "index_name", "train_images", "train_pixels",
                         "val_images", "val_pixels"])
        for train_id, c, name in rows:
            writer.writerow([train_id, c, name, index_name(objectnames, c),
                             train_img[c], train_pix[c], val_img[c], val_pix[c]])


def main(args):
    root = common.require_dir(args.root, "ADE20K-Full (ADE20K_2021_17_01)")
    index = load_index(root / "index_ade20k.pkl")
    items = image_list(root, index)
    if not items:
        raise common.PrepareError(f"index {root / 'index_ade20k.pkl'} lists no image")
    classes = table.ade20k_full_classes()
    lut = train_id_lut(classes)

    per_image = common.parallel_map(partial(convert, root=root, max_short_side=args.max_short_side, lut=lut),
                                    items, args.num_workers)
    problems = []
    for split in SPLITS:
        ids = [np.unique(lut[raw]) for (s, _), (raw, _) in zip(items, per_image) if s == split]
        problems += common.check_split("ADE20K-Full", split, ids, NUM_CLASSES, IGNORE, EXPECTED_IMAGES[split])

    stats = split_stats(items, per_image)
    names = index["objectnames"]
    lines = [f"ADE20K-Full against the {NUM_CLASSES}-class table {table.ADE20K_FULL_TABLE.name} "
             f"({len(items)} images; the table is used as it is, whatever this report says)"]
    lines += report_missing(classes, stats) + report_outside(lut, stats, names)
    lines += report_names(classes, names) + report_order(classes, stats)
    report = "\n".join(lines) + "\n"
    print(report, end="")
    (root / "ade20k_full_report.txt").write_text(report)
    write_class_stats(root / "ade20k_full_class_stats.tsv", classes, lut, stats, names)
    stale = sorted(p.name for pattern in ("ade20k_full_classes.tsv", "ade20k_full_vocab_*.tsv")
                   for p in root.glob(pattern))
    if stale:
        print(f"  note: {stale} in {root} come from an earlier version of this script and are not used any more")
    print(f"wrote {root / 'images_detectron2'}, {root}/annotations_detectron2*, "
          f"{root / 'ade20k_full_report.txt'}, {root / 'ade20k_full_class_stats.tsv'}")
    return problems


if __name__ == "__main__":
    parser = common.argument_parser(__doc__.split("\n")[0], "ADE20K_2021_17_01")
    parser.add_argument("--max-short-side", type=int, default=512,
                        help="resize images whose short side is longer (0: keep sizes; default %(default)s, "
                             "as MaskFormer's preparation)")
    sys.exit(common.run(main, parser))
