"""protoseg/data/validation.py and tools/check_dataset.py: each kind of bad file found, all in one run."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog

from protoseg.data.datasets import register_folder_dataset
from protoseg.data.labels import LabelMapError
from protoseg.data.validation import check_dataset_dict, check_sem_seg_sample, scan_dataset

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "check_dataset.py"
CLASSES = ["sky", "tree", "road"]


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _image(path, h=6, w=8):
    _save(path, np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def bad_folder(tmp_path):
    """img/ + lab/ with one good sample and one of each kind of bad file."""
    good = np.array([[0, 1, 2, 255, 0, 1, 2, 0]] * 6, np.uint8)
    for stem in ("good", "truncated", "mismatch", "bad_ids", "rgb_label"):
        _image(tmp_path / "img" / f"{stem}.jpg")
        _save(tmp_path / "lab" / f"{stem}.png", good)
    data = (tmp_path / "img" / "truncated.jpg").read_bytes()
    (tmp_path / "img" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    _save(tmp_path / "lab" / "mismatch.png", good[:5])
    bad = good.copy()
    bad[0, :3] = 7
    _save(tmp_path / "lab" / "bad_ids.png", bad)
    _save(tmp_path / "lab" / "rgb_label.png", np.zeros((6, 8, 3), np.uint8))
    return tmp_path


def _by_file(problems):
    return {(Path(p.path).name, p.kind) for p in problems}


def test_check_dataset_dict_kinds(bad_folder):
    register_folder_dataset("bad_folder_ds", bad_folder / "img", bad_folder / "lab", CLASSES)
    problems = scan_dataset("bad_folder_ds")
    assert _by_file(problems) == {
        ("truncated.jpg", "truncated_image"),
        ("mismatch.png", "size_mismatch"),
        ("bad_ids.png", "invalid_label_ids"),
        ("rgb_label.png", "unreadable_label"),
        ("bad_folder_ds", "class_list_mismatch"),
    }
    msg = {p.kind: p.message for p in problems}
    assert "[7]" in msg["invalid_label_ids"] and "pixel counts {7: 3}" in msg["invalid_label_ids"]
    assert "label is 8x5 (WxH)" in msg["size_mismatch"] and "is 8x6" in msg["size_mismatch"]
    assert "up to 7" in msg["class_list_mismatch"] and "3 entries" in msg["class_list_mismatch"]
    good = {"file_name": str(bad_folder / "img" / "good.jpg"), "sem_seg_file_name": str(bad_folder / "lab" / "good.png")}
    problems, ids = check_dataset_dict(good, 3, 255)
    assert problems == [] and ids.tolist() == [0, 1, 2, 255]
    missing = dict(good, file_name=str(bad_folder / "img" / "nope.jpg"), sem_seg_file_name=str(bad_folder / "nope.png"))
    assert [p.kind for p in check_dataset_dict(missing, 3, 255)[0]] == ["missing_image", "missing_label"]


def test_check_sem_seg_sample():
    d = {"file_name": "a.jpg", "sem_seg_file_name": "lab/a.png"}
    labels = np.array([[0, 1], [2, 255]])
    check_sem_seg_sample((2, 2), labels, d, 3, 255)  # valid: no error
    with pytest.raises(LabelMapError, match=r"lab/a.png.*\[3\]"):
        check_sem_seg_sample((2, 2), np.array([[0, 3], [2, 255]]), d, 3, 255)
    with pytest.raises(LabelMapError, match=r"lab/a.png is 2x2 \(WxH\) but image a.jpg is 3x2"):
        check_sem_seg_sample((2, 3), labels, d, 3, 255)
    cityscapes = {"file_name": "x_leftImg8bit.png", "sem_seg_file_name": "x_gtFine_labelIds.png"}
    with pytest.raises(LabelMapError, match="prepare_cityscapes_sem_seg.py"):
        check_sem_seg_sample((1, 2), np.array([[26, 7]]), cityscapes, 19, 255)


def test_tool_reports_everything_at_once(bad_folder, tmp_path):
    register = tmp_path / "my_datasets.py"
    register.write_text(
        "from detectron2.data import DatasetCatalog\n"
        "from protoseg.data.datasets import register_folder_dataset\n"
        f"register_folder_dataset('bad_ds', {str(bad_folder / 'img')!r}, {str(bad_folder / 'lab')!r}, {CLASSES!r})\n"
        f"register_folder_dataset('gone_ds', {str(tmp_path / 'nowhere')!r}, {str(tmp_path / 'nowhere')!r}, {CLASSES!r})\n"
        "register_folder_dataset('empty_ds', '.', '.', ['a'])\n"
        "DatasetCatalog.remove('empty_ds'); DatasetCatalog.register('empty_ds', lambda: [])\n"
    )
    out = subprocess.run(
        [sys.executable, str(TOOL), "bad_ds", "gone_ds", "empty_ds", "--register", str(register),
         "--num-workers", "2", "--config-file", str(REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert out.returncode == 1, out.stderr
    text = out.stdout
    for expected in ("[truncated_image]", "truncated.jpg", "[size_mismatch]", "mismatch.png", "[invalid_label_ids]",
                     "bad_ids.png", "[unreadable_label]", "rgb_label.png", "[class_list_mismatch] bad_ds",
                     "[config_mismatch] bad_ds: MODEL.SEM_SEG_HEAD.NUM_CLASSES is 8 but stuff_classes has 3",
                     "[missing_split] gone_ds", str(tmp_path / "nowhere"), "[empty_split] empty_ds",
                     # 8 wide, 5 / 6 high: sizes as the trainer and the mapper write them
                     "mismatch.png: label is 8x5 (WxH) but image", "mismatch.jpg is 8x6"):
        assert expected in text, (expected, text)
    assert "bad_ds: 6 problem(s)" in text
    assert "good.jpg" not in text and "good.png" not in text

    ok = subprocess.run([sys.executable, str(TOOL), "fine_ds", "--register", str(register)],
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert ok.returncode == 1 and "[not_registered] fine_ds" in ok.stdout
    DatasetCatalog.list()  # the in-process catalog is untouched by the tool


def _exif_jpeg(path, orientation, h=6, w=8):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, exif=exif)


def test_tool_says_how_images_are_read_and_explains_exif_mismatch(tmp_path):
    """16-bit images: OK, with a line on their scaling; an image whose EXIF orientation swaps its
    size against its label: a size mismatch that names the tag; a floating-point image: refused."""
    label = np.zeros((6, 8), np.uint8)
    for stem in ("deep0", "deep1", "deep_rgb", "plain"):
        _save(tmp_path / "lab16" / f"{stem}.png", label)
    _save(tmp_path / "img16" / "deep0.png", (np.arange(48).reshape(6, 8) * 1300).astype(np.uint16))
    _save(tmp_path / "img16" / "deep1.png", np.full((6, 8), 40000, np.uint16))
    cv2.imwrite(str(tmp_path / "img16" / "deep_rgb.png"), np.full((6, 8, 3), 30000, np.uint16))
    _image(tmp_path / "img16" / "plain.png")
    _exif_jpeg(tmp_path / "imgx" / "rotated.jpg", 6)  # stored 8x6, read 6x8
    _exif_jpeg(tmp_path / "imgx" / "upside.jpg", 3)   # stored and read 8x6
    _save(tmp_path / "labx" / "rotated.png", label)
    _save(tmp_path / "labx" / "upside.png", label)
    _save(tmp_path / "imgf" / "float.tif", np.full((6, 8), 0.5, np.float32))
    _save(tmp_path / "labf" / "float.png", label)
    register = tmp_path / "my_datasets.py"
    register.write_text("from protoseg.data.datasets import register_folder_dataset\n" + "".join(
        f"register_folder_dataset({name!r}, {str(tmp_path / images)!r}, {str(tmp_path / labels)!r}, {CLASSES!r}, "
        f"image_ext={ext!r})\n"
        for name, images, labels, ext in (("deep_ds", "img16", "lab16", ".png"), ("exif_ds", "imgx", "labx", ".jpg"),
                                          ("float_ds", "imgf", "labf", ".tif"))
    ))
    out = subprocess.run([sys.executable, str(TOOL), "deep_ds", "exif_ds", "float_ds", "--register", str(register)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    deep = lines.index("deep_ds: OK")
    assert lines[deep + 1] == ("  read: 2 image(s) are 16-bit (mode I;16): scaled to 8-bit by v >> 8 (the 16-bit "
                               f"range onto 8 bits: 65535 -> 255) (e.g. {tmp_path / 'img16' / 'deep0.png'})")
    assert lines[deep + 2].startswith("  read: 1 image(s) are 16-bit (mode RGB): scaled to 8-bit by v >> 8")
    assert lines[deep + 3] == "exif_ds: 1 problem(s)"
    mismatch = lines[deep + 4]
    assert mismatch.startswith(f"  [size_mismatch] {tmp_path / 'labx' / 'rotated.png'}: label is 8x6 (WxH) but image")
    assert "is 6x8. The image's EXIF Orientation tag is 6" in mismatch and "exiftool -Orientation=" in mismatch
    assert lines[deep + 5].startswith("  read: 1 image(s) are tagged EXIF Orientation 3: read rotated 180 degrees")
    assert lines[deep + 6].startswith("  read: 1 image(s) are tagged EXIF Orientation 6: read rotated 90 degrees")
    assert lines[deep + 7] == "float_ds: 1 problem(s)"
    assert lines[deep + 8].startswith(f"  [unsupported_image] {tmp_path / 'imgf' / 'float.tif'}: floating-point pixels")
