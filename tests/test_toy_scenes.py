"""Tests of the toy-scenes generator (datasets/toy_scenes.py) and its CLI.

The module is loaded from its file, so these tests need only numpy, Pillow and pytest (not
Detectron2 or torch, which ``protoseg/__init__.py`` imports).
"""
import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MODULE_FILE = REPO / "datasets" / "toy_scenes.py"
CLI = REPO / "datasets" / "prepare_toy_scenes.py"


import toy_scenes as ts  # noqa: E402  (datasets/toy_scenes.py; conftest puts datasets/ on sys.path)
SMALL = ts.ToySceneSpec(num_classes=4, looks_per_class=2, num_train=6, num_val=3, image_size=(64, 64))
SPLITS = [("training", "train"), ("validation", "val")]


def _tree(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pairs(root: Path, split: str):
    images = sorted((root / "images" / split).iterdir())
    labels = sorted((root / "annotations_detectron2" / split).iterdir())
    return images, labels


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "toy_scenes"
    meta = ts.generate_toy_scenes(root, SMALL)
    return root, meta


def test_deterministic(small, tmp_path):
    root, _ = small
    again = tmp_path / "again"
    ts.generate_toy_scenes(again, SMALL)
    a, b = _tree(root), _tree(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []

    other = tmp_path / "other_seed"
    ts.generate_toy_scenes(other, ts.ToySceneSpec(**{**SMALL.to_dict(), "seed": 1}))
    c = _tree(other)
    assert c.keys() == a.keys()
    labels = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in labels) == len(labels)  # every scene differs
    # the look table belongs to look_seed (= seed by default), so a new seed also changes looks,
    # unless look_seed pins them
    pinned = ts.ToySceneSpec(**{**SMALL.to_dict(), "seed": 1, "look_seed": 0})
    assert ts.look_table(pinned) == ts.look_table(SMALL)


def test_layout(small):
    root, _ = small
    for split, tag in SPLITS:
        images, labels = _pairs(root, split)
        assert len(images) == SMALL.num_images(split)
        assert [p.stem for p in images] == [p.stem for p in labels]
        assert images[0].name == f"toy_{tag}_00000.jpg"
        assert all(p.suffix == ".jpg" for p in images) and all(p.suffix == ".png" for p in labels)
        for img_path, lab_path in zip(images, labels):
            img, lab = Image.open(img_path), Image.open(lab_path)
            assert img.mode == "RGB" and img.format == "JPEG"
            assert lab.mode == "L" and lab.format == "PNG"
            assert img.size == lab.size == (SMALL.image_size[1], SMALL.image_size[0])
            arr = np.asarray(lab)
            assert arr.dtype == np.uint8
            assert set(np.unique(arr).tolist()) <= set(range(SMALL.num_classes)) | {255}


def test_every_class_and_look_present(small):
    _, meta = small
    train = meta["splits"]["training"]
    assert min(train["class_pixels"]) > 0
    assert np.array(train["look_pixels"]).min() > 0
    assert np.array(train["look_regions"]).min() > 0
    assert min(meta["splits"]["validation"]["class_pixels"]) > 0
    ignore = train["ignore_pixels"] / train["total_pixels"]
    assert 0.005 < ignore < 0.15


def test_default_spec_balance():
    # the default dataset: every look of every class in many regions of both splits (no files)
    spec = ts.ToySceneSpec()
    assert (spec.num_classes, spec.looks_per_class, spec.image_size) == (8, 3, (128, 128))
    rng = ts._Rng(spec.seed, 2, 1)
    deck = ts._Deck(spec, ts._Rng(spec.seed, 3, 1))
    counts = Counter()
    for _ in range(spec.num_val):
        _, _, regions, _ = ts._generate_scene(spec, rng, deck)
        counts.update(r for r in regions if r[0] != ts.IGNORE_LABEL)
    assert len(counts) == spec.num_classes * spec.looks_per_class
    assert min(counts.values()) >= 4


def test_meta_matches_files(small):
    root, meta = small
    assert json.loads((root / "meta.json").read_text()) == meta
    assert ts.load_meta(root) == meta
    assert ts.ToySceneSpec.from_dict(meta["spec"]) == SMALL
    assert meta["ignore_label"] == 255
    assert meta["class_names"] == ts.class_names(SMALL)
    assert [tuple(c) for c in meta["class_colors"]] == ts.class_colors(SMALL)
    assert len(meta["looks"]) == SMALL.num_classes
    assert all(len(row) == SMALL.looks_per_class for row in meta["looks"])
    for split, _ in SPLITS:
        s = meta["splits"][split]
        images, labels = _pairs(root, split)
        assert s["num_images"] == len(images) == len(labels)
        arrays = [np.asarray(Image.open(p)) for p in labels]
        counts = np.bincount(np.concatenate([a.ravel() for a in arrays]), minlength=256)
        assert s["class_pixels"] == counts[: SMALL.num_classes].tolist()
        assert s["ignore_pixels"] == counts[255]
        assert s["total_pixels"] == counts.sum()
        assert sum(map(sum, s["look_pixels"])) == sum(s["class_pixels"])
        assert s["images_with_class"] == [sum(bool((a == c).any()) for a in arrays)
                                          for c in range(SMALL.num_classes)]
        digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()
        assert meta["content_sha256"][split]["label_sha256"] == digest


def test_knobs(tmp_path):
    spec = ts.ToySceneSpec(num_classes=40, looks_per_class=2, num_train=4, num_val=2,
                           image_size=(48, 80), seed=3)
    meta = ts.generate_toy_scenes(tmp_path / "c40", spec)
    assert len(meta["class_names"]) == 40 and len(set(meta["class_names"])) == 40
    assert len(set(map(tuple, meta["class_colors"]))) == 40
    assert meta["spec"]["image_size"] == [48, 80]
    images, labels = _pairs(tmp_path / "c40", "training")
    assert len(images) == 4
    lab = np.asarray(Image.open(labels[0]))
    assert lab.shape == (48, 80)
    assert set(np.unique(lab).tolist()) <= set(range(40)) | {255}
    # large look tables: every look a distinct (colour, pattern) cell, distinct within a class
    for n_cls, n_looks in [(40, 2), (160, 3), (4, 1), (2, 5)]:
        table = ts.look_table(ts.ToySceneSpec(num_classes=n_cls, looks_per_class=n_looks))
        looks = [look for row in table for look in row]
        assert len({(k.colour_index, k.pattern_index) for k in looks}) == n_cls * n_looks
        for row in table:
            assert len({k.colour_index for k in row}) == n_looks
            assert len({k.pattern_index for k in row}) == n_looks
    assert len(ts.class_colors(ts.ToySceneSpec(num_classes=255))) == 255
    with pytest.raises(ValueError):
        ts.ToySceneSpec(num_classes=256)
    with pytest.raises(ValueError):
        ts.ToySceneSpec(image_size=(16, 64))


def test_looks_distinct_within_class_but_colour_ambiguous():
    spec = ts.ToySceneSpec()
    table = ts.look_table(spec)
    means = {(c, j): ts.render_look_swatch(spec, c, j).reshape(-1, 3).mean(0)
             for c in range(spec.num_classes) for j in range(spec.looks_per_class)}
    within = [np.linalg.norm(means[c, a] - means[c, b]) for c in range(spec.num_classes)
              for a, b in itertools.combinations(range(spec.looks_per_class), 2)]
    assert np.mean(within) > 120 and min(within) > 60
    for row in table:  # different colour and different texture family for every look of a class
        assert len({k.colour_index for k in row}) == len(row)
        assert len({k.pattern.family for k in row}) == len(row)
    # colour alone (and texture alone) does not determine the class
    classes_of_colour, classes_of_pattern = {}, {}
    for row in table:
        for k in row:
            classes_of_colour.setdefault(k.colour_index, set()).add(k.class_id)
            classes_of_pattern.setdefault(k.pattern_index, set()).add(k.class_id)
    assert all(len(v) >= 2 for v in classes_of_colour.values())
    assert all(len(v) >= 2 for v in classes_of_pattern.values())


def test_overwrite_and_refuse(small, tmp_path):
    root = tmp_path / "ds"
    ts.generate_toy_scenes(root, SMALL)
    smaller = ts.ToySceneSpec(**{**SMALL.to_dict(), "num_train": 2, "num_val": 1, "seed": 5})
    meta = ts.generate_toy_scenes(root, smaller)
    assert ts.ToySceneSpec.from_dict(ts.load_meta(root)["spec"]) == smaller == ts.ToySceneSpec.from_dict(meta["spec"])
    assert len(_pairs(root, "training")[0]) == 2 and len(_pairs(root, "validation")[1]) == 1

    # ensure_toy_scenes keeps a complete generation of the same spec, regenerates otherwise
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert ts.ensure_toy_scenes(root, smaller) == meta
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    (root / "annotations_detectron2" / "training" / "toy_train_00001.png").unlink()
    ts.ensure_toy_scenes(root, smaller)
    assert len(_pairs(root, "training")[1]) == 2

    (root / "images" / "training" / "mine.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError):
        ts.generate_toy_scenes(root, SMALL)
    assert (root / "images" / "training" / "mine.jpg").exists()


def test_cli_default_root(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "d2"))
    out = subprocess.run(
        [sys.executable, str(CLI), "--num-classes", "3", "--looks-per-class", "2", "--num-train", "3",
         "--num-val", "2", "--size", "40", "48", "--seed", "7"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "toy00" in out.stdout
    meta = json.loads((tmp_path / "d2" / "toy_scenes" / "meta.json").read_text())
    assert meta["spec"]["num_classes"] == 3 and meta["spec"]["image_size"] == [40, 48]
    assert meta["spec"]["seed"] == 7
    assert len(list((tmp_path / "d2" / "toy_scenes" / "images" / "training").iterdir())) == 3
