"""SemSegDatasetMapper: 16-bit ids intact through training and test mapping, reduce_zero_label,
scale jitter range, crop and ignore padding, photometric jitter, load-time errors naming the file,
and the toy configs mapped exactly as Detectron2's DatasetMapper mapped them; the reference code's
pieces (image-size rescale with aspect jitter, brightness-only jitter, random pad offset)."""
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError

from protoseg.config import load_config
from protoseg.data.labels import LabelMapError
from protoseg.data.mapper import ImageReadError, SemSegDatasetMapper
from protoseg.data.transforms import (
    PadToSize,
    PhotometricDistortionTransform,
    RandomBrightness,
    RandomPhotometricDistortion,
    RandomRescale,
    RandomScaleAspectResize,
    build_train_augmentation,
)

from conftest import toy_cfg

ADE_FULL_CLASSES, ADE_FULL_IGNORE = 847, 65535  # ADE20K-Full: 847 classes, 16-bit labels


def label_16bit(h=40, w=60):
    """(h, w) int64 with ids 5, 300, 846 and ignore 65535 in vertical bands (not flip-symmetric)."""
    labels = np.full((h, w), 5, dtype=np.int64)
    labels[:, 10:25], labels[:, 25:45], labels[:, 45:] = 300, 846, ADE_FULL_IGNORE
    return labels


def write_sample(tmp_path, labels, name="a", image=None):
    """Writes an RGB PNG image and a 16-bit (or 8-bit if ids allow) PNG label; returns a dataset dict."""
    h, w = labels.shape
    if image is None:
        image = np.random.RandomState(0).randint(0, 256, (h, w, 3)).astype(np.uint8)
    image_file, label_file = tmp_path / f"{name}.png", tmp_path / f"{name}_label.png"
    Image.fromarray(image).save(image_file)
    dtype = np.uint8 if labels.max() < 256 else np.uint16
    Image.fromarray(labels.astype(dtype)).save(label_file)
    return {"file_name": str(image_file), "sem_seg_file_name": str(label_file)}


def mapper_cfg(num_classes=ADE_FULL_CLASSES, ignore=ADE_FULL_IGNORE, **keys):
    """A config with the project's keys, the given classes/ignore, and ``keys`` (dotted -> value)."""
    cfg = load_config()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = num_classes, ignore
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (40,), 1000, 0
    cfg.INPUT.CROP.ENABLED = False
    cfg.merge_from_list([x for kv in keys.items() for x in kv])
    return cfg


def test_16bit_ids_survive_training_mapper_with_ignore_padding(tmp_path):
    labels = label_16bit()
    record = write_sample(tmp_path, labels)
    cfg = mapper_cfg(**{"INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute", "INPUT.CROP.SIZE": (64, 64)})
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    flipped = 0
    for _ in range(6):
        out = mapper(dict(record))
        sem_seg, image = out["sem_seg"], out["image"]
        assert sem_seg.dtype == torch.int64 and sem_seg.shape == (64, 64) and image.shape == (3, 64, 64)
        inside = sem_seg[:40, :60].numpy()  # the 40x60 image is smaller than the crop: kept whole
        assert np.array_equal(inside, labels) or np.array_equal(inside, labels[:, ::-1])
        flipped += np.array_equal(inside, labels[:, ::-1])
        assert (sem_seg[40:] == ADE_FULL_IGNORE).all() and (sem_seg[:, 60:] == ADE_FULL_IGNORE).all()
        assert (image[:, 40:] == 0).all() and (image[:, :, 60:] == 0).all()
    assert 0 < flipped < 6  # the flip is random


def test_16bit_ids_survive_test_mapper_resize(tmp_path):
    labels = label_16bit()
    record = write_sample(tmp_path, labels)
    as_is = SemSegDatasetMapper(mapper_cfg(), is_train=False)(dict(record))  # MIN_SIZE_TEST 0: no resize
    assert torch.equal(as_is["sem_seg"], torch.as_tensor(labels))
    assert (as_is["height"], as_is["width"]) == (40, 60)

    doubled = SemSegDatasetMapper(mapper_cfg(**{"INPUT.MIN_SIZE_TEST": 80}), is_train=False)(dict(record))
    sem_seg = doubled["sem_seg"].numpy()
    assert sem_seg.shape == (80, 120) and doubled["image"].shape == (3, 80, 120)
    assert np.array_equal(sem_seg[::2, ::2], labels) and np.array_equal(sem_seg[1::2, 1::2], labels)
    assert (doubled["height"], doubled["width"]) == (40, 60)  # the size predictions are resized back to


def test_16bit_ids_survive_scale_jitter(tmp_path):
    record = write_sample(tmp_path, label_16bit())
    cfg = mapper_cfg(**{"INPUT.SCALE_JITTER.ENABLED": True, "INPUT.SCALE_JITTER.BASE_SIZE": (200, 50)})
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    np.random.seed(1)
    for _ in range(5):
        sem_seg = mapper(dict(record))["sem_seg"]
        assert set(torch.unique(sem_seg).tolist()) == {5, 300, 846, ADE_FULL_IGNORE}


def test_reduce_zero_label(tmp_path):
    labels = np.array([[0, 1, 2], [3, 255, 1]])
    record = dict(write_sample(tmp_path, labels), sem_seg_reduce_zero_label=True)
    mapper = SemSegDatasetMapper(mapper_cfg(num_classes=3, ignore=255), is_train=False)
    expected = torch.tensor([[255, 0, 1], [2, 255, 0]])
    assert torch.equal(mapper(record)["sem_seg"], expected)
    with pytest.raises(LabelMapError, match="a_label.png"):  # without it, id 3 is not a class of 3
        mapper(dict(record, sem_seg_reduce_zero_label=False))


def test_scale_jitter_stays_within_ratio_range_of_base_size(tmp_path):
    # 40x60 image, base (long 200, short 50): the short side binds, short side out = 50 * r
    record = write_sample(tmp_path, np.zeros((40, 60), dtype=np.int64))
    cfg = mapper_cfg(**{"INPUT.SCALE_JITTER.ENABLED": True, "INPUT.SCALE_JITTER.BASE_SIZE": (200, 50)})
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    shapes = np.array([mapper(dict(record))["sem_seg"].shape for _ in range(200)])
    ratios = shapes[:, 0] / 50.0
    assert ratios.min() >= 0.5 - 0.01 and ratios.max() <= 2.0 + 0.01
    assert ratios.min() < 0.6 and ratios.max() > 1.9  # the whole range is drawn
    np.testing.assert_allclose(shapes[:, 1] / shapes[:, 0], 1.5, atol=0.04)  # aspect kept
    # a long thin image: the long side binds (mmseg keeps both sides within the scaled base size)
    assert RandomRescale.output_size(20, 100, (200, 50), 1.0) == (40, 200)
    assert RandomRescale.output_size(20, 100, (200, 50), 0.5) == (20, 100)


def test_crop_of_a_large_image_has_the_crop_size(tmp_path):
    labels = label_16bit(80, 120)
    record = write_sample(tmp_path, labels)
    cfg = mapper_cfg(**{
        "INPUT.MIN_SIZE_TRAIN": (80,), "INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute",
        "INPUT.CROP.SIZE": (32, 48),
    })
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    for _ in range(5):
        out = mapper(dict(record))
        assert out["sem_seg"].shape == (32, 48) and out["image"].shape == (3, 32, 48)
        assert set(torch.unique(out["sem_seg"]).tolist()) <= {5, 300, 846, ADE_FULL_IGNORE}


def test_photometric_jitter_changes_pixels_never_labels(tmp_path):
    labels = label_16bit()
    image = np.random.RandomState(3).randint(40, 216, (40, 60, 3)).astype(np.uint8)
    record = write_sample(tmp_path, labels, image=image)
    mapper = SemSegDatasetMapper(
        True, augmentations=[RandomPhotometricDistortion("RGB")], image_format="RGB",
        num_classes=ADE_FULL_CLASSES, ignore_value=ADE_FULL_IGNORE,
    )
    np.random.seed(0)
    changed = 0
    for _ in range(20):
        out = mapper(dict(record))
        assert torch.equal(out["sem_seg"], torch.as_tensor(labels))
        changed += not np.array_equal(out["image"].permute(1, 2, 0).numpy(), image)
    assert changed >= 15  # P(no step applied) = 1/16


def test_photometric_steps_as_mmseg():
    pixel = np.array([[[100, 200, 10]]], dtype=np.uint8)
    bright = PhotometricDistortionTransform("RGB", brightness=32).apply_image(pixel)
    assert bright.tolist() == [[[132, 232, 42]]]
    contrast = PhotometricDistortionTransform("RGB", contrast=1.5).apply_image(pixel)
    assert contrast.tolist() == [[[150, 255, 15]]]  # clipped at 255
    red = np.array([[[255, 0, 0]]], dtype=np.uint8)
    assert PhotometricDistortionTransform("RGB", hue=90).apply_image(red).tolist() == [[[0, 255, 255]]]  # 180 deg
    assert PhotometricDistortionTransform("RGB", hue=30).apply_image(red).tolist() == [[[255, 255, 0]]]  # red -> yellow
    # the same bytes read as BGR are blue (240 deg): +60 deg is magenta
    assert PhotometricDistortionTransform("BGR", hue=30).apply_image(red).tolist() == [[[255, 0, 255]]]
    gray = PhotometricDistortionTransform("RGB", saturation=0.0).apply_image(red)
    assert gray.tolist() == [[[255, 255, 255]]]  # saturation 0: V kept, colour gone
    labels = np.array([[300, 65535]])
    assert PhotometricDistortionTransform("RGB", brightness=10).apply_segmentation(labels) is labels


def test_invalid_id_raises_naming_the_file(tmp_path):
    labels = label_16bit()
    labels[0, 0] = 900  # >= 847 and not the ignore value
    record = write_sample(tmp_path, labels)
    for is_train in (True, False):
        with pytest.raises(LabelMapError, match=r"a_label\.png.*900"):
            SemSegDatasetMapper(mapper_cfg(), is_train=is_train)(dict(record))


def test_size_mismatch_raises_naming_the_files(tmp_path):
    record = write_sample(tmp_path, label_16bit())
    Image.fromarray(np.zeros((41, 60, 3), dtype=np.uint8)).save(record["file_name"])
    with pytest.raises(SizeMismatchError, match=r"a_label\.png.*60x40.*a\.png.*60x41"):
        SemSegDatasetMapper(mapper_cfg(), is_train=True)(dict(record))


def test_truncated_jpeg_raises_naming_the_file(tmp_path):
    record = write_sample(tmp_path, label_16bit())
    jpeg = tmp_path / "broken.jpg"
    Image.open(record["file_name"]).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:400])
    with pytest.raises(ImageReadError, match=r"broken\.jpg"):
        SemSegDatasetMapper(mapper_cfg(), is_train=False)(dict(record, file_name=str(jpeg)))


def test_toy_configs_map_as_detectron2_did(toy_dataset):
    """Without SCALE_JITTER / PHOTOMETRIC_JITTER, training batches are Detectron2 v0.6's
    DatasetMapper with the former augmentations (shortest edge, category-area crop, flip), bit for bit."""
    cfg = toy_cfg()
    former = DatasetMapper(cfg, is_train=True, augmentations=[
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING),
        T.RandomCrop_CategoryAreaConstraint(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, 0.75, 255),
        T.RandomFlip(),
    ])
    ours = SemSegDatasetMapper(cfg, is_train=True)
    records = DatasetCatalog.get("toy_test_train")[:6]
    for mapper_a, mapper_b in ((former, ours), (DatasetMapper(cfg, is_train=False), SemSegDatasetMapper(cfg, False))):
        np.random.seed(0)
        a = [mapper_a(dict(r)) for r in records]
        np.random.seed(0)
        b = [mapper_b(dict(r)) for r in records]
        for x, y in zip(a, b):
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["sem_seg"], y["sem_seg"])
            assert y["sem_seg"].dtype == torch.int64 and (x["height"], x["width"]) == (y["height"], y["width"])


# ---- the reference code's augmentation pieces (openseg.pytorch, tfzhou/ProtoSeg) --------------------


def image_size_jitter_cfg(**keys):
    """Scale jitter relative to the image itself, with aspect jitter; no crop, no flip effect on sizes."""
    return mapper_cfg(**{
        "INPUT.SCALE_JITTER.ENABLED": True, "INPUT.SCALE_JITTER.MODE": "image_size",
        "INPUT.SCALE_JITTER.RATIO_RANGE": (0.5, 2.0), "INPUT.SCALE_JITTER.ASPECT_RANGE": (0.9, 1.1), **keys,
    })


def test_aspect_jitter_output_sizes_by_hand():
    # openseg's RandomResize: w x sqrt(a) s, h x sqrt(1/a) s, truncated. 1024x2048 (h x w):
    # s = 0.5, a = 1.1: h = int(1024 * 0.95346 * 0.5) = int(488.17), w = int(2048 * 1.04881 * 0.5) = int(1073.98)
    assert RandomScaleAspectResize.output_size(1024, 2048, 0.5, 1.1) == (488, 1073)
    # s = 2, a = 0.9: h = int(1024 * 1.05409 * 2) = int(2158.78), w = int(2048 * 0.94868 * 2) = int(3885.81)
    assert RandomScaleAspectResize.output_size(1024, 2048, 2.0, 0.9) == (2158, 3885)
    assert RandomScaleAspectResize.output_size(1024, 2048, 1.5, 1.0) == (1536, 3072)
    # mmseg's base-size rescale with the same aspect factors, rounded: 40x60 in (200, 50) at r = 1 -> 50x75
    assert RandomRescale.output_size(40, 60, (200, 50), 1.0) == (50, 75)
    assert RandomRescale.output_size(40, 60, (200, 50), 1.0, aspect=1.21) == (45, 83)  # 50/1.1 = 45.45, 75*1.1 = 82.5


def test_aspect_jitter_sizes_for_seeded_draws(tmp_path):
    record = write_sample(tmp_path, label_16bit(40, 60))
    mapper = SemSegDatasetMapper(image_size_jitter_cfg(), is_train=True)
    for seed in range(20):
        np.random.seed(seed)
        scale, aspect = np.random.uniform(0.5, 2.0), np.random.uniform(0.9, 1.1)  # drawn in this order
        expected = (int(40 * (math.sqrt(1 / aspect) * scale)), int(60 * (math.sqrt(aspect) * scale)))
        np.random.seed(seed)
        out = mapper(dict(record))
        assert tuple(out["sem_seg"].shape) == expected and tuple(out["image"].shape[1:]) == expected


def test_aspect_jitter_stays_in_range_over_many_draws(tmp_path):
    record = write_sample(tmp_path, np.zeros((100, 200), dtype=np.int64))
    mapper = SemSegDatasetMapper(image_size_jitter_cfg(), is_train=True)
    np.random.seed(0)
    shapes = np.array([mapper(dict(record))["sem_seg"].shape for _ in range(300)], dtype=float)
    aspect = (shapes[:, 1] / 200) / (shapes[:, 0] / 100)  # the change of width / height
    scale = np.sqrt(shapes[:, 0] * shapes[:, 1] / (100 * 200))  # the area is kept: sqrt(area ratio) = s
    assert aspect.min() >= 0.9 - 0.02 and aspect.max() <= 1.1 + 0.02
    assert aspect.min() < 0.92 and aspect.max() > 1.08  # the whole range is drawn
    assert scale.min() >= 0.5 - 0.02 and scale.max() <= 2.0 + 0.01 and scale.min() < 0.55 and scale.max() > 1.9


def test_image_size_resize_is_opencv_bicubic_and_nearest(tmp_path):
    labels = label_16bit(40, 60)
    image = np.random.RandomState(1).randint(0, 256, (40, 60, 3)).astype(np.uint8)
    record = write_sample(tmp_path, labels, image=image)
    mapper = SemSegDatasetMapper(
        True, augmentations=[RandomScaleAspectResize((1.3, 1.3), (1.1, 1.1))], image_format="RGB",
        num_classes=ADE_FULL_CLASSES, ignore_value=ADE_FULL_IGNORE,
    )
    out = mapper(dict(record))
    size = (int(60 * math.sqrt(1.1) * 1.3), int(40 * math.sqrt(1 / 1.1) * 1.3))  # (w, h) = (81, 49)
    expected_image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    expected_labels = cv2.resize(labels.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), expected_image)
    assert np.array_equal(out["sem_seg"].numpy(), expected_labels)  # 16-bit ids kept
    assert out["sem_seg"].dtype == torch.int64


def test_aspect_range_is_checked():
    with pytest.raises(ValueError, match=r"INPUT\.SCALE_JITTER\.ASPECT_RANGE .*0 < low <= high.*\(1\.1, 0\.9\)"):
        SemSegDatasetMapper(image_size_jitter_cfg(**{"INPUT.SCALE_JITTER.ASPECT_RANGE": (1.1, 0.9)}), is_train=True)
    with pytest.raises(ValueError, match=r"ASPECT_RANGE \(0\.9, 1\.1\) needs SCALE_JITTER\.ENABLED"):
        SemSegDatasetMapper(mapper_cfg(**{"INPUT.SCALE_JITTER.ASPECT_RANGE": (0.9, 1.1)}), is_train=True)
    with pytest.raises(ValueError, match=r"INPUT\.SCALE_JITTER\.MODE must be one of .*'image'"):
        SemSegDatasetMapper(image_size_jitter_cfg(**{"INPUT.SCALE_JITTER.MODE": "image"}), is_train=True)


def test_brightness_jitter_shifts_every_pixel_by_one_value_in_range(tmp_path):
    labels = label_16bit()
    image = np.random.RandomState(3).randint(20, 236, (40, 60, 3)).astype(np.uint8)  # no clipping at +-10
    record = write_sample(tmp_path, labels, image=image)
    cfg = mapper_cfg(**{"INPUT.BRIGHTNESS_JITTER": 10})
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    assert [type(a).__name__ for a in mapper.augmentations.augs] == [
        "ResizeShortestEdgeKeepIds", "RandomFlip", "RandomBrightness",
    ]
    np.random.seed(0)
    shifts = set()
    for _ in range(40):
        out = mapper(dict(record))
        flipped = not torch.equal(out["sem_seg"], torch.as_tensor(labels))
        source = image[:, ::-1] if flipped else image
        diff = out["image"].permute(1, 2, 0).numpy().astype(int) - source.astype(int)
        assert (diff == diff.flat[0]).all()  # one shift for every pixel and channel
        shifts.add(int(diff.flat[0]))
    assert shifts <= set(range(-10, 11)) and min(shifts) < -4 and max(shifts) > 4 and len(shifts) > 8


def test_brightness_jitter_clips_and_is_off_by_default(tmp_path):
    pixel = np.array([[[250, 5, 128]]], dtype=np.uint8)
    aug = RandomBrightness(10, "RGB")
    np.random.seed(0)
    shift = np.random.randint(-10, 11)
    np.random.seed(0)
    out = aug.get_transform(pixel).apply_image(pixel)
    assert out.tolist() == [[[min(250 + shift, 255), max(5 + shift, 0), 128 + shift]]]
    assert "RandomBrightness" not in [type(a).__name__ for a in build_train_augmentation(mapper_cfg())]
    with pytest.raises(ValueError, match=r"INPUT\.BRIGHTNESS_JITTER must be an integer >= 0.*-3"):
        build_train_augmentation(mapper_cfg(**{"INPUT.BRIGHTNESS_JITTER": -3}))


def test_random_pad_position_puts_the_image_at_a_random_offset(tmp_path):
    labels = label_16bit()  # 40x60, padded to 64x96
    labels[labels == ADE_FULL_IGNORE] = 846  # no ignore inside: the image's place is where labels are
    image = np.random.RandomState(0).randint(0, 256, (40, 60, 3)).astype(np.uint8)
    record = write_sample(tmp_path, labels, image=image)
    cfg = mapper_cfg(**{
        "INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute", "INPUT.CROP.SIZE": (64, 96),
        "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,
        "INPUT.PAD.POSITION": "random", "INPUT.PAD.IMAGE_VALUE": "pixel_mean",
    })
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    mean = [int(round(v)) for v in cfg.MODEL.PIXEL_MEAN]  # (124, 116, 104)
    np.random.seed(0)
    offsets = set()
    for _ in range(30):
        out = mapper(dict(record))
        sem_seg, img = out["sem_seg"].numpy(), out["image"].permute(1, 2, 0).numpy()
        assert sem_seg.shape == (64, 96)
        rows, cols = np.nonzero(sem_seg != ADE_FULL_IGNORE)
        top, left = rows.min(), cols.min()
        assert 0 <= top <= 24 and 0 <= left <= 36
        inside = sem_seg[top : top + 40, left : left + 60]
        assert np.array_equal(inside, labels) or np.array_equal(inside, labels[:, ::-1])
        outside = np.ones((64, 96), dtype=bool)
        outside[top : top + 40, left : left + 60] = False
        assert (sem_seg[outside] == ADE_FULL_IGNORE).all() and (img[outside] == mean).all()
        offsets.add((top, left))
    assert len(offsets) > 20  # uniform over 25 x 37 offsets


def test_bottom_right_pad_is_the_default():
    crop = {"INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute", "INPUT.CROP.SIZE": (64, 96)}
    pad = build_train_augmentation(mapper_cfg(**crop))[-1]
    assert isinstance(pad, PadToSize) and pad.position == "bottom_right" and pad.image_value == 0
    with pytest.raises(ValueError, match=r"INPUT\.PAD\.POSITION must be one of .*'center'"):
        build_train_augmentation(mapper_cfg(**crop, **{"INPUT.PAD.POSITION": "center"}))
    with pytest.raises(ValueError, match=r"INPUT\.PAD\.IMAGE_VALUE must be one of .*'mean'"):
        build_train_augmentation(mapper_cfg(**crop, **{"INPUT.PAD.IMAGE_VALUE": "mean"}))


def test_category_area_crop_with_max_area_one_is_a_plain_random_crop():
    # the reference's RandomCrop ("method": "random"): crop min(size, image), offsets uniform,
    # "allow_outside_center" never read; Detectron2's constraint at 1.0 returns RandomCrop's draw
    image = np.zeros((100, 150, 3), dtype=np.uint8)
    sem_seg = np.zeros((100, 150), dtype=np.int64)  # one category: the 0.75 constraint would retry
    constrained = T.RandomCrop_CategoryAreaConstraint("absolute", (40, 60), 1.0, 255)
    plain = T.RandomCrop("absolute", (40, 60))
    for seed in range(10):
        np.random.seed(seed)
        a = constrained.get_transform(image, sem_seg)
        np.random.seed(seed)
        b = plain.get_transform(image)
        assert (a.x0, a.y0, a.w, a.h) == (b.x0, b.y0, b.w, b.h) and (a.w, a.h) == (60, 40)
    small = constrained.get_transform(image[:30, :50], sem_seg[:30, :50])
    assert (small.x0, small.y0, small.w, small.h) == (0, 0, 50, 30)  # smaller than the crop: kept whole
