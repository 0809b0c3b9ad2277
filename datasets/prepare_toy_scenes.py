#!/usr/bin/env python
"""Generate the "toy scenes" synthetic semantic-segmentation dataset (ADE20K layout).

Usage (from the repository root; nothing needs to be installed except numpy and Pillow)::

    python datasets/prepare_toy_scenes.py                      # -> $DETECTRON2_DATASETS/toy_scenes
    python datasets/prepare_toy_scenes.py --num-classes 40 --looks-per-class 2 \\
        --root datasets/toy_scenes_c40 --image-size 96 96

``DETECTRON2_DATASETS`` defaults to ``datasets`` (relative to the current directory), as in
Detectron2. Output::

    <root>/images/{training,validation}/toy_{train,val}_NNNNN.jpg
    <root>/annotations_detectron2/{training,validation}/toy_{train,val}_NNNNN.png  (0..C-1, 255 = ignore)
    <root>/meta.json                                   spec, classes, looks and per-class statistics

The same arguments always produce the same dataset. See ``datasets/toy_scenes.py``.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import toy_scenes  # datasets/toy_scenes.py, next to this script (numpy and Pillow only)


def _disk_usage(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    return total


def main(argv=None) -> int:
    ts = toy_scenes
    d = ts.ToySceneSpec()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                                "toy_scenes")
    parser.add_argument("--root", default=default_root,
                        help="output directory (default: $DETECTRON2_DATASETS/toy_scenes = %(default)s)")
    parser.add_argument("--num-classes", type=int, default=d.num_classes)
    parser.add_argument("--looks-per-class", type=int, default=d.looks_per_class)
    parser.add_argument("--num-train", type=int, default=d.num_train)
    parser.add_argument("--num-val", type=int, default=d.num_val)
    parser.add_argument("--image-size", "--size", dest="size", type=int, nargs=2, metavar=("H", "W"),
                        default=list(d.image_size), help="image height and width (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the scenes")
    parser.add_argument("--look-seed", type=int, default=None,
                        help="seed of the look table (default: --seed)")
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing if ROOT already holds a complete generation of this spec")
    parser.add_argument("--quiet", action="store_true", help="print only one summary line")
    args = parser.parse_args(argv)

    try:
        spec = ts.ToySceneSpec(
            num_classes=args.num_classes, looks_per_class=args.looks_per_class,
            num_train=args.num_train, num_val=args.num_val, image_size=tuple(args.size),
            seed=args.seed, look_seed=args.look_seed,
        )
    except ValueError as e:
        parser.error(str(e))
    root = Path(args.root)
    t0 = time.perf_counter()
    try:
        if args.if_missing:
            meta = ts.ensure_toy_scenes(root, spec)
        else:
            meta = ts.generate_toy_scenes(root, spec)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0

    size_mb = _disk_usage(root) / 2**20
    print(f"toy scenes: {spec.num_classes} classes x {spec.looks_per_class} looks, "
          f"{spec.num_train} train + {spec.num_val} val images of {spec.image_size[0]}x"
          f"{spec.image_size[1]}, seed {spec.seed} -> {root} ({size_mb:.1f} MiB, {elapsed:.2f} s)")
    if args.quiet:
        return 0
    names = meta["class_names"]
    for split, s in meta["splits"].items():
        labelled = sum(s["class_pixels"])
        print(f"  {split}: {s['num_images']} images, ignore {100.0 * s['ignore_pixels'] / s['total_pixels']:.1f}% "
              f"of pixels; every look in >= {min(min(r) for r in s['look_regions'])} regions")
        if len(names) <= 40:
            shares = ", ".join(f"{n} {100.0 * p / labelled:.1f}%" for n, p in zip(names, s["class_pixels"]))
        else:
            pct = [100.0 * p / labelled for p in s["class_pixels"]]
            shares = f"min {min(pct):.2f}%, max {max(pct):.2f}%, uniform {100.0 / len(names):.2f}%"
        print(f"    class pixel share: {shares}")
    if len(names) <= 40:
        print("  looks:")
        for name, row in zip(names, meta["looks"]):
            print(f"    {name}: " + " | ".join(look["description"] for look in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
