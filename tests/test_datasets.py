"""Preparation scripts (datasets/prepare_*.py, run as a user would) on tiny files in each dataset's
official raw format, then registration (protoseg/data/builtin.py, datasets.py) and loading."""
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
from protoseg.data.ade20k_full import ade20k_full_classes
from protoseg.data.datasets import register_folder_dataset
from protoseg.data.labels import read_label_map, reduce_zero_label
from protoseg.data.validation import check_dataset_dict

from conftest import load_script

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
        return load_script(f"_test_{name}", PREPARE / f"{name}.py")
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


# ADE20K-Full. Facts of MaskFormer's 847-class table (ADE_SEM_SEG_FULL_CATEGORIES: ADE20K class
# index -> trainId, name), written out here so that the expected labels do not come from the
# shipped table under test. 165 is below 256; the others need the full R // 10 * 256 + G decoding.
ADE_FULL_FACTS = {
    2978: (0, "wall"), 312: (1, "building, edifice"), 2420: (2, "sky"), 165: (7, "bed"),
    569: (299, "coffee maker"), 3108: (300, "altar, communion table, lord's table"),
    3058: (499, "windshield, windscreen"), 430: (500, "cat"), 2494: (699, "spice rack"),
    1908: (700, "plant pots"), 2826: (845, "towel rail"), 3148: (846, "adding machine, totalizer, totaliser"),
}
ADE_OUTSIDE = (1, 3500)  # ADE20K class indices the table lacks
ADE_FULL_RAW = {  # (split, stem) -> ADE20K class indices; 0 = unlabelled
    ("training", "ADE_train_00000001"): np.array(
        [[2978, 312, 165, 569, 3108, 3058], [430, 2494, 1908, 3148, 1, 3500],
         [0, 0, 2978, 2978, 3500, 3500], [2978] * 6]),
    # short side 520 > 512: resized to 512 x 591 (image bilinear, mask nearest)
    ("training", "ADE_train_00000002"): np.pad(np.full((520, 300), 2978), ((0, 0), (0, 300)), constant_values=2420),
    # towel rail (845) appears in validation only: it keeps its train id
    ("validation", "ADE_val_00000001"): np.array(
        [[2978, 2420, 2826, 165, 0, 1], [2978, 2978, 2826, 165, 0, 1], [2420] * 6, [2420] * 6]),
}


def _save_seg(path, class_hw):
    """ADE20K's colour code: R = class // 256 * 10, G = class % 256 (B, the instances, unused)."""
    rgb = np.stack([class_hw // 256 * 10, class_hw % 256, np.full_like(class_hw, 7)], -1)
    save_png(path, rgb.astype(np.uint8))


def _maskformer_train_ids(raw):
    """MaskFormer's conversion of ADE20K class indices: resize (short side 512, nearest, int32)
    and trainId of the table, 65535 elsewhere."""
    import cv2

    h, w = raw.shape
    if min(h, w) > 512:
        size = (512, round(w / h * 512)) if h <= w else (round(h / w * 512), 512)
        raw = cv2.resize(raw.astype(np.int32), size[::-1], interpolation=cv2.INTER_NEAREST)
    out = np.full(raw.shape, 65535, np.int64)
    for c, (train_id, _) in ADE_FULL_FACTS.items():
        out[raw == c] = train_id
    return out


@pytest.fixture(scope="module")
def ade20k_full(tmp_path_factory):
    """A tiny ADE20K_2021_17_01 in the official layout, prepared as a user does."""
    base = tmp_path_factory.mktemp("adefull")
    root = base / "ADE20K_2021_17_01"
    names = [f"object {c}" for c in range(1, 3689)]  # the release's index has 3688 objectnames
    for c, (_, name) in ADE_FULL_FACTS.items():
        names[c - 1] = name
    index = {"filename": [], "folder": [], "objectnames": names, "objectPresence": np.zeros((3688, 3), np.int64)}
    for i, ((split, stem), raw) in enumerate(ADE_FULL_RAW.items()):
        folder = f"images/ADE/{split}/urban/street"
        save_jpg(root / folder / f"{stem}.jpg", *raw.shape, seed=i)
        _save_seg(root / folder / f"{stem}_seg.png", raw)
        index["filename"].append(f"{stem}.jpg")
        index["folder"].append(f"ADE20K_2021_17_01/{folder}")
    with open(root / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    out = prepare("prepare_ade20k_full_sem_seg.py", root, "--num-workers", "2")
    return base, root, out.stdout


def test_ade20k_full_table():
    classes = ade20k_full_classes()
    assert [c.train_id for c in classes] == list(range(847))
    assert len({c.ade_index for c in classes}) == 847
    by_index = {c.ade_index: (c.train_id, c.name) for c in classes}
    assert {c: by_index[c] for c in ADE_FULL_FACTS} == ADE_FULL_FACTS
    assert not set(ADE_OUTSIDE) & set(by_index)


def test_ade20k_full_table_errors(tmp_path):
    bad = tmp_path / "table.tsv"
    bad.write_text("# comment\ntrain_id\tade_index\tname\n0\t2978\twall\n2\t312\tbuilding, edifice\n")
    with pytest.raises(ValueError, match=r"table.tsv, line 4: .*expected train_id 1"):
        ade20k_full_classes(bad)
    bad.write_text("train_id\tade_index\tname\n0\t2978\twall\n")
    with pytest.raises(ValueError, match="has 1 classes; expected 847"):
        ade20k_full_classes(bad)


def test_ade20k_full_labels(ade20k_full):
    """Every label map equals MaskFormer's train ids, pixel by pixel; ADE20K-x keeps ids < x."""
    _, root, _ = ade20k_full
    for (split, stem), raw in ADE_FULL_RAW.items():
        expected = _maskformer_train_ids(raw)
        full = root / "annotations_detectron2" / split / f"{stem}.png"
        assert Image.open(full).mode == "I;16"
        assert np.array_equal(read_label_map(full), expected), stem
        for x in (300, 500, 700):
            vocab = read_label_map(root / f"annotations_detectron2_{x}" / split / f"{stem}.png")
            assert np.array_equal(vocab, np.where(expected < x, expected, 65535)), (stem, x)
        with Image.open(root / "images_detectron2" / split / f"{stem}.jpg") as img:
            assert img.size[::-1] == expected.shape
    assert _maskformer_train_ids(ADE_FULL_RAW[("training", "ADE_train_00000002")]).shape == (512, 591)
    first = read_label_map(root / "annotations_detectron2" / "training" / "ADE_train_00000001.png")
    assert first[:2].tolist() == [[0, 1, 7, 299, 300, 499], [500, 699, 700, 846, 65535, 65535]]
    assert read_label_map(root / "annotations_detectron2" / "validation" / "ADE_val_00000001.png")[0, 2] == 845
    first300 = read_label_map(root / "annotations_detectron2_300" / "training" / "ADE_train_00000001.png")
    assert first300[0].tolist() == [0, 1, 7, 299, 65535, 65535]
    assert not (root / "annotations_detectron2_847").exists()  # ADE20K-847 is the full label set


def test_ade20k_full_report(ade20k_full):
    """The report names what the data and the table disagree on; the labels above ignore it."""
    _, root, stdout = ade20k_full
    report = (root / "ade20k_full_report.txt").read_text()
    assert report in stdout
    assert "table classes absent from both splits: 835 ('3 tree', '4 road, route'," in report
    assert "table classes absent from training only: 1 ('845 towel rail')" in report
    assert "table classes absent from validation only: 8 ('1 building, edifice', '299 coffee maker'," in report
    assert "class indices in the data but not in the table: 2," in report
    assert "index 3500 'object 3500': 3 pixels" in report and "index 1 'object 1': 3 pixels" in report
    # data order: wall (2 images), sky (1 image, most pixels), the other 1-image classes, then the
    # absent ones in table order: 294 of the table's first 300 are among the data's first 300
    assert "ADE20K-300: 6 of the table's first 300 classes are not among the data's 300 most frequent" in report
    assert "Spearman rank correlation" in report
    rows = {r["ade_index"]: r for r in _tsv(root / "ade20k_full_class_stats.tsv")}
    assert len(rows) == 847 + 2
    resized_wall = (_maskformer_train_ids(ADE_FULL_RAW[("training", "ADE_train_00000002")]) == 0).sum()
    assert rows["2978"] == {"train_id": "0", "ade_index": "2978", "name": "wall", "index_name": "wall",
                            "train_images": "2", "train_pixels": str(9 + resized_wall), "val_images": "1",
                            "val_pixels": "3"}
    assert (rows["3500"]["train_id"], rows["3500"]["train_pixels"]) == ("", "3")
    assert rows["2826"]["train_images"] == "0" and rows["2826"]["val_images"] == "1"


def _tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_ade20k_full_registration(ade20k_full, tmp_path):
    names = [c.name for c in ade20k_full_classes()]
    builtin.register_ade20k_full(tmp_path)  # not prepared: the classes are known all the same
    assert MetadataCatalog.get("ade20k_full_sem_seg_val").stuff_classes == names
    base, _, _ = ade20k_full
    builtin.register_ade20k_full(base)
    meta = MetadataCatalog.get("ade20k_full_sem_seg_train")
    assert (len(meta.stuff_classes), meta.ignore_label, meta.evaluator_type) == (847, 65535, "sem_seg")
    assert meta.stuff_classes[0] == "wall" and meta.stuff_classes[846] == "adding machine, totalizer, totaliser"
    for x in (300, 500, 700, 847):
        for s in ("train", "val"):
            assert MetadataCatalog.get(f"ade20k_full_{x}_sem_seg_{s}").stuff_classes == names[:x]
    assert MetadataCatalog.get("ade20k_full_847_sem_seg_val").sem_seg_root == [
        str(base / "ADE20K_2021_17_01" / "annotations_detectron2" / "validation")]
    assert len(DatasetCatalog.get("ade20k_full_sem_seg_train")) == 2
    val300 = labels_of("ade20k_full_300_sem_seg_val")["ADE_val_00000001.jpg"]
    assert val300[0].tolist() == [0, 2, 65535, 7, 65535, 65535]
    for d in DatasetCatalog.get("ade20k_full_700_sem_seg_train"):
        assert check_dataset_dict(d, 700, 65535)[0] == []
    # 16-bit labels (ids up to 299, ignore 65535) through the mapper, the head and the evaluator
    log = train_and_evaluate(base, "ade20k_full/protoseg_segformer_MiT-B2_300cls_bs16_40k.yaml", base / "run300")
    assert "Per-class results on ade20k_full_300_sem_seg_val" in log


def test_ade20k_full_maskformer_tif(tmp_path):
    """Labels prepared by MaskFormer's script (16-bit TIFF, same train ids) serve the full dataset."""
    root = tmp_path / "ADE20K_2021_17_01"
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        save_jpg(root / "images_detectron2" / split / f"{stem}.jpg", 3, 4)
        tif = np.array([[0, 846, 65535, 5]] * 3, np.uint16)
        save_png(root / "annotations_detectron2" / split / f"{stem}.tif", tif)
    builtin.register_ade20k_full(tmp_path)
    (d,) = DatasetCatalog.get("ade20k_full_sem_seg_val")
    assert d["sem_seg_file_name"].endswith("ADE_val_00000001.tif")
    assert read_label_map(d["sem_seg_file_name"])[0].tolist() == [0, 846, 65535, 5]
    assert check_dataset_dict(d, 847, 65535)[0] == []
    with pytest.raises(FileNotFoundError, match="annotations_detectron2_500.*MaskFormer's preparation writes only"):
        DatasetCatalog.get("ade20k_full_500_sem_seg_val")


def test_ade20k_full_index_is_not_unpickled_blindly(tmp_path):
    """index_ade20k.pkl may hold builtins and numpy arrays only: any other global is refused."""
    root = tmp_path / "ADE20K_2021_17_01"
    root.mkdir()
    (root / "index_ade20k.pkl").write_bytes(pickle.dumps({"filename": [], "folder": [], "objectnames": [Path("x")]}))
    err = prepare("prepare_ade20k_full_sem_seg.py", root, expect_ok=False).stderr
    assert "index_ade20k.pkl cannot be read" in err and "global pathlib" in err


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
