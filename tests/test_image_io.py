"""protoseg/data/image_io.py through the trainer's loaders: 16-bit images keep their contrast (scaled
by v >> 8, not clipped to white), floating-point images are refused naming the file, and a label
map that differs from its image only by the image's EXIF orientation is reported as such."""
import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import SizeMismatchError

from protoseg.data.datasets import register_folder_dataset
from protoseg.data.image_io import UnsupportedImageError
from protoseg.data.mapper import SemSegDatasetMapper
from protoseg.engine import Trainer

from conftest import toy_cfg

CLASSES = ["a", "b", "c"]


def gradient_16bit(h=48, w=64):
    """(h, w) uint16 spanning 0..63940: x * 1000 + y * 20."""
    return (np.arange(w)[None] * 1000 + np.arange(h)[:, None] * 20).astype(np.uint16)


def register(name, tmp_path, images, labels, image_ext):
    """A folder dataset ``name`` of ``images`` (stem -> writer(path)) and (H, W) uint8 ``labels``."""
    for stem, write in images.items():
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "lab").mkdir(exist_ok=True)
        write(tmp_path / "img" / f"{stem}{image_ext}")
        Image.fromarray(labels[stem]).save(tmp_path / "lab" / f"{stem}.png")
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    register_folder_dataset(name, tmp_path / "img", tmp_path / "lab", CLASSES, image_ext=image_ext)


def loader_cfg(name, **keys):
    opts = ["DATASETS.TRAIN", (name,), "DATASETS.TEST", (name,), "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 2]
    return toy_cfg(opts=opts + [x for kv in keys.items() for x in kv])


@pytest.fixture
def deep_dataset(tmp_path):
    """'deep_ds': one 16-bit grayscale PNG (mode I;16), 48x64."""
    gray = gradient_16bit()
    register("deep_ds", tmp_path, {"deep": lambda p: Image.fromarray(gray).save(p)},
             {"deep": np.zeros(gray.shape, np.uint8)}, ".png")
    assert Image.open(tmp_path / "img" / "deep.png").mode == "I;16"
    return gray


def test_16bit_image_is_scaled_not_clipped_in_evaluation(deep_dataset):
    cfg = loader_cfg("deep_ds", **{"INPUT.MIN_SIZE_TEST": 0})  # no resize: the pixels as read
    image = next(iter(Trainer.build_test_loader(cfg, "deep_ds")))[0]["image"].numpy()
    expected = (deep_dataset >> 8).astype(np.uint8)  # 0 -> 0, 63940 -> 249
    assert image.shape == (3, 48, 64)
    for channel in image:
        np.testing.assert_array_equal(channel, expected)


def test_16bit_image_keeps_its_contrast_in_training(deep_dataset):
    batch = next(iter(Trainer.build_train_loader(loader_cfg("deep_ds"))))
    for d in batch:
        image = d["image"].numpy()
        assert (image == 255).mean() < 0.01  # clipping turns all but the darkest 255 of 65536 values white
        assert len(np.unique(image)) > 100 and image.std() > 50


def test_32bit_integer_image_in_16bit_range_is_scaled_and_float_image_is_refused(tmp_path):
    """Mode I (32-bit TIFF) holding 16-bit values is scaled as 16-bit; mode F is refused, named."""
    gray = gradient_16bit()
    mapper = SemSegDatasetMapper(toy_cfg(opts=["INPUT.MIN_SIZE_TEST", 0]), is_train=False, load_labels=False)
    Image.fromarray(gray.astype(np.int32)).save(tmp_path / "wide.tif")
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    image = mapper({"file_name": str(tmp_path / "wide.tif")})["image"].numpy()
    np.testing.assert_array_equal(image[1], (gray >> 8).astype(np.uint8))

    Image.fromarray(gray.astype(np.float32) / 65535).save(tmp_path / "float.tif")
    with pytest.raises(UnsupportedImageError, match=r"float\.tif: floating-point pixels \(Pillow mode F"):
        mapper({"file_name": str(tmp_path / "float.tif")})


def write_exif_rotated(path, orientation=6, size_wh=(128, 96)):
    """A JPEG stored as ``size_wh`` (WxH) with the EXIF Orientation tag ``orientation``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = np.random.default_rng(0).integers(0, 255, (size_wh[1], size_wh[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def test_exif_rotated_image_mismatch_is_explained(tmp_path):
    """Stored 128x96 with Orientation 6, read 96x128 (as displayed); its label has the stored size."""
    register("exif_ds", tmp_path, {"rotated": write_exif_rotated}, {"rotated": np.zeros((96, 128), np.uint8)},
             ".jpg")
    with pytest.raises(SizeMismatchError) as error:
        next(iter(Trainer.build_train_loader(loader_cfg("exif_ds"))))
    message = str(error.value)
    assert "rotated.png is 128x96 (WxH) but its image" in message and "rotated.jpg is 96x128" in message
    assert "EXIF Orientation tag is 6" in message and "applied when the image is read" in message
    assert f"exiftool -Orientation= -overwrite_original {tmp_path / 'img' / 'rotated.jpg'}" in message
