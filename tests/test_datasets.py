"""Preparation scripts (datasets/prepare_*.py, run as a user would) on tiny files in each dataset's
official raw format, then registration (protoseg/data/builtin.py, datasets.py) and loading."""
import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from detectron2.data import DatasetCatalog, MetadataCatalog

from protoseg.data import builtin, datasets_root
from protoseg.data.datasets import register_folder_dataset
from protoseg.data.labels import read_label_map, reduce_zero_label
from protoseg.data.validation import check_dataset_dict

REPO = Path(__file__).resolve().parent.parent
PREPARE = REPO / "datasets"


def prepare(script, root, *extra, expect_ok=True):
    out = subprocess.run(
        [sys.executable, str(PREPARE / script), "--root", str(root), "--num-workers", "0", *extra],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert (out.returncode == 0) == expect_ok, out.stdout + out.stderr
    return out


def save_jpg(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(autouse=True)
def restore_builtin_registration():
    """Tests re-register the built-in names under tmp roots; put the default ones back."""
    yield
    builtin.register_all_builtin(datasets_root())


def train_and_evaluate(datasets, config, out, *opts):
    """One training iteration and an evaluation through train_net.py (a fresh process, as a user
    runs it) on the prepared data under ``datasets``, with a small MiT-B0 model on the CPU."""
    small = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.MIT.VARIANT", "b0", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
             "MODEL.SEM_SEG_HEAD.NORM", "BN", "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2",
             "SOLVER.WARMUP_ITERS", "0", "INPUT.CROP.SIZE", "(32, 32)", "INPUT.SCALE_JITTER.BASE_SIZE", "(64, 32)",
             "INPUT.MIN_SIZE_TEST", "32", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0",
             "MODEL.PROTOSEG.NUM_PROTOTYPES", "2", "OUTPUT_DIR", str(out)]
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(REPO / "configs" / config), *small, *opts]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    log = (out / "log.txt").read_text()
    assert "Per-class results on" in log and "mIoU" in log
    return log


def labels_of(name):
    return {Path(d["file_name"]).name: read_label_map(d["sem_seg_file_name"]) for d in DatasetCatalog.get(name)}


def test_ade20k_150(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150, 37]], dtype=np.uint8).repeat(3, 0)
    for split, names in (("training", ["ADE_train_00000001", "ADE_train_00000002"]), ("validation", ["ADE_val_00000001"])):
        for n in names:
            save_jpg(root / "images" / split / f"{n}.jpg", 3, 4)
            save_png(root / "annotations" / split / f"{n}.png", raw)
    out = prepare("prepare_ade20k_sem_seg.py", root)
    assert "ADE20K-150 training: 2 images, ids 0..149 (3 of 150 classes present), ignore 255" in out.stdout
    builtin.register_ade20k(tmp_path)
    train = labels_of("ade20k_sem_seg_train")
    assert sorted(train) == ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg"]
    assert train["ADE_train_00000001.jpg"][0].tolist() == [255, 0, 149, 36]
    assert len(DatasetCatalog.get("ade20k_sem_seg_val")) == 1
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert (len(meta.stuff_classes), meta.ignore_label, meta.evaluator_type) == (150, 255, "sem_seg")
    assert meta.stuff_classes[:3] == ["wall", "building", "sky"]
    assert len({tuple(c) for c in meta.stuff_colors}) == 150
    train_and_evaluate(tmp_path, "ade20k/protoseg_segformer_MiT-B0_bs16_160k.yaml", tmp_path / "run")

    # an annotation with an id above 150 is refused, naming the file and the id
    save_png(root / "annotations" / "validation" / "ADE_val_00000001.png", np.full((3, 4), 151, np.uint8))
    err = prepare("prepare_ade20k_sem_seg.py", root, expect_ok=False).stderr
    assert "ADE_val_00000001.png" in err and "[151]" in err


def test_cityscapes(tmp_path):
    from cityscapesscripts.helpers.labels import trainId2label

    root = tmp_path / "cityscapes"
    # labelIds: 0 unlabeled, 7 road, 26 car, 33 bicycle, 4 static (ignored class)
    raw = np.array([[0, 7, 26, 33, 4]], dtype=np.uint8).repeat(2, 0)
    for split, city in (("train", "aachen"), ("val", "frankfurt"), ("test", "berlin")):
        for i in range(2 if split == "train" else 1):
            stem = f"{city}_000000_00001{i}"
            save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                     np.zeros((2, 5, 3), np.uint8))
            save_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)
    prepare("prepare_cityscapes_sem_seg.py", root)
    out = root / "gtFine" / "train" / "aachen" / "aachen_000000_000010_gtFine_labelTrainIds.png"
    assert read_label_map(out)[0].tolist() == [255, 0, 13, 18, 255]

    builtin.register_cityscapes(tmp_path)
    sizes = {s: len(DatasetCatalog.get(f"cityscapes_fine_sem_seg_{s}")) for s in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 2, "val": 1, "test": 1, "trainval": 3}
    val = labels_of("cityscapes_fine_sem_seg_val")
    assert val["frankfurt_000000_000010_leftImg8bit.png"][1].tolist() == [255, 0, 13, 18, 255]
    meta = MetadataCatalog.get("cityscapes_fine_sem_seg_trainval")
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
    assert meta.stuff_classes == [trainId2label[i].name for i in range(19)]
    assert meta.stuff_colors[13] == list(trainId2label[13].color) == [0, 0, 142]
    # sliding-window evaluation on the full-resolution image (windows larger than the image)
    log = train_and_evaluate(tmp_path, "cityscapes/protoseg_segformer_MiT-B4_bs8_160k.yaml", tmp_path / "run",
                             "INPUT.MIN_SIZE_TEST", "0", "TEST.SLIDING_WINDOW.SIZE", "(32, 32)",
                             "TEST.SLIDING_WINDOW.STRIDE", "(16, 16)")
    assert "slide 32x32 stride 16x16" in log

    save_png(root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000010_gtFine_labelIds.png",
             np.full((2, 5), 40, np.uint8))
    err = prepare("prepare_cityscapes_sem_seg.py", root, expect_ok=False).stderr
    assert "frankfurt_000000_000010_gtFine_labelIds.png" in err and "[40]" in err


def _load_script(name):
    sys.path.insert(0, str(PREPARE))
    try:
        spec = importlib.util.spec_from_file_location(f"_test_{name}", PREPARE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(PREPARE))


def test_coco_stuff_171_mapping():
    # the prepare script's id table and the registered class list agree, from two derivations
    # (an explicit list of unused ids there, Detectron2's 80 COCO thing ids here)
    script = _load_script("prepare_coco_stuff_10k_sem_seg")
    registered = builtin.coco_stuff_171_classes()
    assert len(registered) == 171 == len(script.USED_IDS)
    assert [i for i, _ in registered] == list(script.USED_IDS)
    lut = script.coco_stuff_lut()
    assert lut[0] == 255 and lut[1] == 0 and lut[13] == 11 and lut[92] == 80 and lut[182] == 170
    assert all(lut[i] == 255 for i in script.UNUSED_IDS)
    names = dict(registered)
    assert (names[1], names[13], names[92], names[182]) == ("person", "stop sign", "banner", "wood")


def test_coco_stuff_10k(tmp_path):
    root = tmp_path / "coco" / "coco_stuff_10k"
    # 0 unlabeled, 1 person, 12 street sign (unused id), 13 stop sign, 92 banner, 182 wood
    raw = np.array([[0, 1, 12, 13, 92, 182]], dtype=np.uint8).repeat(2, 0)
    lists = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
             "test": ["COCO_train2014_000000000079"]}
    for split, names in lists.items():
        for n in names:
            save_jpg(root / "images" / f"{n}.jpg", 2, 6)
            (root / "annotations").mkdir(parents=True, exist_ok=True)
            savemat(root / "annotations" / f"{n}.mat", {"S": raw, "names": np.array(["x"], dtype=object)})
        (root / "imageLists").mkdir(exist_ok=True)
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(names) + "\n")
    prepare("prepare_coco_stuff_10k_sem_seg.py", root)
    builtin.register_coco_stuff_10k(tmp_path)
    train = labels_of("coco_stuff_10k_sem_seg_train")
    assert len(train) == 2 and len(DatasetCatalog.get("coco_stuff_10k_sem_seg_test")) == 1
    assert train["COCO_train2014_000000000077.jpg"][0].tolist() == [255, 0, 255, 11, 80, 170]
    meta = MetadataCatalog.get("coco_stuff_10k_sem_seg_test")
    assert len(meta.stuff_classes) == 171 and meta.stuff_classes[11] == "stop sign" and meta.ignore_label == 255
    train_and_evaluate(tmp_path, "coco_stuff_10k/segformer_MiT-B4_bs16_80k.yaml", tmp_path / "run")

    savemat(root / "annotations" / "COCO_train2014_000000000079.mat", {"labels": raw})
    err = prepare("prepare_coco_stuff_10k_sem_seg.py", root, expect_ok=False).stderr
    assert "COCO_train2014_000000000079.mat" in err and "'S'" in err and "['labels']" in err


def _ade_colour(c):
    """The ``*_seg.png`` colour of ADE20K class index c (R // 10 * 256 + G = c)."""
    return (c // 256) * 10 + 3, c % 256, 7  # +3: R is read with // 10; B (instances) is unused


def _save_seg(path, class_hw):
    rgb = np.zeros(class_hw.shape + (3,), np.uint8)
    for c in np.unique(class_hw):
        rgb[class_hw == c] = _ade_colour(int(c)) if c else (0, 0, 0)
    save_png(path, rgb)


def _pixels(classes, fill, shape=(24, 24)):
    """A mask with one pixel per class in ``classes`` (a class listed twice gets two), rest ``fill``."""
    flat = np.full(shape[0] * shape[1], fill, np.int64)
    flat[: len(classes)] = classes
    return flat.reshape(shape)


@pytest.fixture(scope="module")
def ade20k_full(tmp_path_factory):
    """A tiny ADE20K_2021_17_01 with 302 classes in both splits plus class 400 (train only) and 401
    (val only), constructed so that the ranking is known:

    - 280 and 1 are in all 4 training images; 280 has more pixels -> ranks 0 and 1;
    - 2..298 (but 280) are in 3 training images -> ranks 2..297 by class index;
    - 299..302 are in 1 training image; 301 has 3 pixels -> rank 298, then 299, 300, 302 by index
      (299 -> rank 299 is the last one of ADE20K-300; 300 and 302 are dropped there).
    Image D (30x40) is resized to short side 24.
    """
    base = tmp_path_factory.mktemp("adefull")
    root = base / "ADE20K_2021_17_01"
    train_dir, val_dir = "images/ADE/training/urban/street", "images/ADE/validation/urban/street"
    masks = {
        ("training", "ADE_train_00000001"): _pixels(list(range(1, 303)) + [301, 301], 0),
        ("training", "ADE_train_00000002"): _pixels(list(range(1, 299)) + [400], 280),
        ("training", "ADE_train_00000003"): _pixels(list(range(1, 299)), 280),
        ("training", "ADE_train_00000004"): np.concatenate([np.full((30, 20), 1), np.full((30, 20), 280)], 1),
        ("validation", "ADE_val_00000001"): _pixels(list(range(1, 303)) + [401], 0),
    }
    index = {"filename": [], "folder": [], "objectnames": [f"name of {c}" for c in range(1, 501)]}
    for i, ((split, stem), mask) in enumerate(masks.items()):
        folder = train_dir if split == "training" else val_dir
        save_jpg(root / folder / f"{stem}.jpg", *mask.shape, seed=i)
        _save_seg(root / folder / f"{stem}_seg.png", mask)
        index["filename"].append(f"{stem}.jpg")
        index["folder"].append(f"ADE20K_2021_17_01/{folder}")
    index["objectPresence"] = np.zeros((500, len(masks)), np.int64)
    with open(root / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    out = prepare("prepare_ade20k_full_sem_seg.py", root, "--max-short-side", "24", "--num-workers", "2")
    return base, root, out.stdout


def _tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_ade20k_full_vocabulary(ade20k_full):
    _, root, stdout = ade20k_full
    assert "302 classes appear in both training and validation" in stdout
    rows = _tsv(root / "ade20k_full_classes.tsv")
    order = [int(r["ade_index"]) for r in rows]
    assert order[:4] == [280, 1, 2, 3]
    assert order[-4:] == [301, 299, 300, 302]
    assert 400 not in order and 401 not in order  # seen in one split only
    assert rows[0] == {"id": "0", "full_id": "0", "ade_index": "280", "name": "name of 280", "train_images": "4",
                       "train_pixels": str(1 + (1 + 576 - 299) + (1 + 576 - 298) + 24 * 16), "val_images": "1", "val_pixels": "1"}
    assert rows[298]["train_pixels"] == "3" and rows[299]["train_pixels"] == "1"
    vocab = _tsv(root / "ade20k_full_vocab_300.tsv")
    assert [int(r["ade_index"]) for r in vocab] == order[:300]
    assert not (root / "ade20k_full_vocab_500.tsv").exists()  # only 302 classes
    assert not (root / "annotations_detectron2_500").exists()


def test_ade20k_full_labels(ade20k_full):
    base, root, _ = ade20k_full
    order = [int(r["ade_index"]) for r in _tsv(root / "ade20k_full_classes.tsv")]
    full_id = {c: i for i, c in enumerate(order)}
    img1 = root / "annotations_detectron2" / "training" / "ADE_train_00000001.png"
    assert Image.open(img1).mode == "I;16"
    full = read_label_map(img1).ravel()
    expected = [full_id[c] for c in range(1, 303)]
    assert full[:302].tolist() == expected
    assert full[302:304].tolist() == [298, 298] and set(full[304:].tolist()) == {65535}  # 301 twice; unlabelled
    assert full[301] == full_id[302] == 301  # an id above 255 survives
    split300 = read_label_map(root / "annotations_detectron2_300" / "training" / "ADE_train_00000001.png").ravel()
    assert split300[298] == 299 and split300[299] == 65535 and split300[301] == 65535  # classes 299 / 300 / 302
    assert split300[279] == 0  # class 280 is the most frequent
    train2 = read_label_map(root / "annotations_detectron2" / "training" / "ADE_train_00000002.png").ravel()
    assert train2[298] == 65535  # class 400 (train only) is dropped
    resized = Image.open(root / "images_detectron2" / "training" / "ADE_train_00000004.jpg")
    assert resized.size == (32, 24)
    d_labels = read_label_map(root / "annotations_detectron2" / "training" / "ADE_train_00000004.png")
    assert d_labels.shape == (24, 32) and set(np.unique(d_labels).tolist()) == {0, 1}

    builtin.register_ade20k_full(base)
    meta = MetadataCatalog.get("ade20k_full_sem_seg_train")
    assert (len(meta.stuff_classes), meta.ignore_label, meta.stuff_classes[0]) == (302, 65535, "name of 280")
    meta300 = MetadataCatalog.get("ade20k_full_300_sem_seg_val")
    assert len(meta300.stuff_classes) == 300 and meta300.stuff_classes[299] == "name of 299"
    assert len(DatasetCatalog.get("ade20k_full_sem_seg_train")) == 4
    val300 = labels_of("ade20k_full_300_sem_seg_val")["ADE_val_00000001.jpg"].ravel()
    assert val300[279] == 0 and val300[301] == 65535
    for d in DatasetCatalog.get("ade20k_full_300_sem_seg_train"):
        assert check_dataset_dict(d, 300, 65535)[0] == []
    assert "stuff_classes" not in MetadataCatalog.get("ade20k_full_847_sem_seg_train").as_dict()
    # 16-bit labels (ids up to 299, ignore 65535) through the mapper, the head and the evaluator
    log = train_and_evaluate(base, "ade20k_full/protoseg_segformer_MiT-B2_300cls_bs16_40k.yaml", base / "run300")
    assert "Per-class results on ade20k_full_300_sem_seg_val" in log


def test_missing_dataset_errors(tmp_path):
    builtin.register_coco_stuff_10k(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("coco_stuff_10k_sem_seg_train")
    assert str(tmp_path / "coco" / "coco_stuff_10k" / "images_detectron2" / "train") in str(e.value)
    assert "python datasets/prepare_coco_stuff_10k_sem_seg.py" in str(e.value)
    builtin.register_ade20k_full(tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare_ade20k_full_sem_seg.py"):
        DatasetCatalog.get("ade20k_full_500_sem_seg_val")
    err = prepare("prepare_ade20k_full_sem_seg.py", tmp_path / "ADE20K_2021_17_01", expect_ok=False).stderr
    assert str(tmp_path / "ADE20K_2021_17_01") in err
    (tmp_path / "ADE20K_2021_17_01").mkdir()
    err = prepare("prepare_ade20k_full_sem_seg.py", tmp_path / "ADE20K_2021_17_01", expect_ok=False).stderr
    assert "index_ade20k.pkl" in err


def test_custom_folder_dataset(tmp_path):
    # labels stored with 0 = unlabelled, 1 = background, 2 = cloud
    for i in range(3):
        save_jpg(tmp_path / "img" / f"s{i}.jpg", 4, 5)
        save_png(tmp_path / "lab" / f"s{i}.png", np.array([[0, 1, 2, 2, 1]] * 4, np.uint8))
    register_folder_dataset("clouds_train", tmp_path / "img", tmp_path / "lab", ["background", "cloud"],
                            reduce_zero_label=True)
    dicts = DatasetCatalog.get("clouds_train")
    assert [d["image_id"] for d in dicts] == ["s0", "s1", "s2"]
    assert all(d["sem_seg_reduce_zero_label"] is True for d in dicts)
    assert reduce_zero_label(read_label_map(dicts[0]["sem_seg_file_name"]), 255)[0].tolist() == [255, 0, 1, 1, 0]
    assert check_dataset_dict(dicts[0], 2, 255)[0] == []
    meta = MetadataCatalog.get("clouds_train")
    assert (meta.stuff_classes, meta.ignore_label, meta.reduce_zero_label) == (["background", "cloud"], 255, True)
    # without the shift (the default) id 2 is not a class of a 2-class dataset
    register_folder_dataset("clouds_raw", tmp_path / "img", tmp_path / "lab", ["background", "cloud"])
    d = DatasetCatalog.get("clouds_raw")[0]
    assert "sem_seg_reduce_zero_label" not in d
    problems, ids = check_dataset_dict(d, 2, 255)
    assert [p.kind for p in problems] == ["invalid_label_ids"] and "[2]" in problems[0].message
    assert ids.tolist() == [0, 1, 2]
