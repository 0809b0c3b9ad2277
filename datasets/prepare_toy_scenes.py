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

The same arguments always produce the same dataset. See ``protoseg/data/toy_scenes.py``.
"""
import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

_PROJECT_DIR = Path(__file__).resolve().parent.parent / "projects" / "ProtoSeg"
_MODULE_FILE = _PROJECT_DIR / "protoseg" / "data" / "toy_scenes.py"


def _load_toy_scenes():
    """Load ``protoseg/data/toy_scenes.py`` without the ``protoseg`` package's ``__init__``.

    The module needs only numpy and Pillow, while importing it as ``protoseg.data.toy_scenes``
    would run ``protoseg/__init__.py`` (Detectron2, torch, dataset registration). So the module
    file next to this script is loaded on its own (importlib); if it is missing (the script was
    copied elsewhere), the normal import is tried, first as installed, then from the source tree.
    """
    if _MODULE_FILE.is_file():
        name = "_protoseg_toy_scenes_standalone"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, _MODULE_FILE)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look the module up while classes are built
            try:
                spec.loader.exec_module(module)
                return module
            except Exception:
                del sys.modules[name]
                raise
    try:
        from protoseg.data import toy_scenes

        return toy_scenes
    except ImportError:
        if str(_PROJECT_DIR) in sys.path:
            raise
    sys.path.insert(0, str(_PROJECT_DIR))
    from protoseg.data import toy_scenes  # noqa: F811

    return toy_scenes


def _disk_usage(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    return total


def main(argv=None) -> int:
    ts = _load_toy_scenes()
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
