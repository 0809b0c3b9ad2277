"""configs/cityscapes/reference_protoseg_hrnetv2_W48_bs8_80k.yaml trains and tests as the reference
code (tfzhou/ProtoSeg configs/cityscapes/H_48_D_4_proto.json, scripts/cityscapes/hrnet/
run_h_48_d_4_proto.sh): its augmentation sequence, CE weights, upsampling, test protocol, solver."""
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import transforms as T
from detectron2.modeling import build_model

from protoseg.config import load_config
from protoseg.data.mapper import SemSegDatasetMapper
from protoseg.data.transforms import PadToSize, RandomBrightness, RandomScaleAspectResize, build_test_augmentation

from conftest import REPO

CONFIG = REPO / "configs" / "cityscapes" / "reference_protoseg_hrnetv2_W48_bs8_80k.yaml"
# H_48_D_4_proto.json "loss.params.ce_weight"
CE_WEIGHT = [0.8373, 0.9180, 0.8660, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
             0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507]


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


def test_train_augmentation_is_the_reference_sequence(cfg):
    # trans_seq ["random_resize", "random_crop", "random_hflip", "random_brightness"], then the
    # collate's padding to 1024x512 ("only_pad", "pad_mode": "random")
    resize, crop, flip, brightness, pad = SemSegDatasetMapper(cfg, is_train=True).augmentations.augs
    assert type(resize) is RandomScaleAspectResize
    assert (resize.scale_range, resize.aspect_range) == ((0.5, 2.0), (0.9, 1.1))
    assert type(crop) is T.RandomCrop_CategoryAreaConstraint and crop.single_category_max_area == 1.0
    assert crop.crop_aug.crop_type == "absolute" and tuple(crop.crop_aug.crop_size) == (512, 1024)  # 1024x512 WxH
    assert type(flip) is T.RandomFlip and (flip.prob, flip.horizontal) == (0.5, True)
    assert type(brightness) is RandomBrightness and brightness.max_shift == 10
    assert type(pad) is PadToSize and pad.size == (512, 1024) and pad.position == "random"
    assert pad.label_value == cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255
    assert pad.image_value == tuple(int(round(v)) for v in cfg.MODEL.PIXEL_MEAN)  # 0 after normalisation
    assert not cfg.INPUT.PHOTOMETRIC_JITTER


def test_a_small_image_is_mapped_to_the_padded_crop(cfg, tmp_path):
    # a 100x200 image is at most 2.1x larger: always padded, at a random place, ignore around it
    labels = np.tile(np.arange(19, dtype=np.uint8).repeat(11)[:200], (100, 1))
    Image.fromarray(np.full((100, 200, 3), 77, dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(labels).save(tmp_path / "a_label.png")
    record = {"file_name": str(tmp_path / "a.png"), "sem_seg_file_name": str(tmp_path / "a_label.png")}
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    tops = set()
    for _ in range(4):
        out = mapper(dict(record))
        assert out["image"].shape == (3, 512, 1024) and out["sem_seg"].shape == (512, 1024)
        rows, cols = torch.nonzero(out["sem_seg"] != 255, as_tuple=True)
        tops.add(int(rows.min()))
        inside = torch.zeros(512, 1024, dtype=torch.bool)
        inside[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert (out["sem_seg"][inside] != 255).all()
        shift = int(out["image"][0, rows.min(), cols.min()]) - 77  # brightness: one shift in [-10, 10]
        assert -10 <= shift <= 10 and (out["image"][:, inside] == 77 + shift).all()
    assert len(tops) > 1


def test_test_protocol_is_the_whole_image_at_one_scale(cfg):
    # "val"/"test": "mode": "ss_test" on the whole 2048x1024 image; scores upsampled with
    # align_corners=True (segmentor/tester.py ss_test)
    assert cfg.INPUT.MIN_SIZE_TEST == 0 and not cfg.TEST.SLIDING_WINDOW.ENABLED and not cfg.TEST.AUG.ENABLED
    (resize,) = build_test_augmentation(cfg)
    image = np.zeros((1024, 2048, 3), dtype=np.uint8)
    assert resize.get_transform(image).apply_image(image).shape == (1024, 2048, 3)
    meta = cfg.clone()
    meta.merge_from_list(["MODEL.DEVICE", "meta", "MODEL.WEIGHTS", ""])
    with torch.device("meta"):
        model = build_model(meta)
    assert model.test_protocol == "SS whole"
    head = model.sem_seg_head
    assert head.upsample_align_corners and head.aux_head is None and head.decoder.out_stride == 4
    assert head.class_weights.shape == (19,)


def test_loss_and_solver_are_the_reference_script(cfg):
    assert list(cfg.MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS) == CE_WEIGHT
    assert cfg.MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS
    s = cfg.SOLVER
    # run_h_48_d_4_proto.sh: MAX_ITERS 80000, BATCH_SIZE 8 (in all, over 4 GPUs), BASE_LR 0.01
    assert (s.MAX_ITER, s.IMS_PER_BATCH, s.BASE_LR) == (80000, 8, 0.01)
    # H_48_D_4_proto.json "optim.sgd"; no "group_method": every parameter decayed
    assert (s.OPTIMIZER, s.MOMENTUM, s.NESTEROV, s.WEIGHT_DECAY) == ("SGD", 0.9, False, 0.0005)
    assert s.WEIGHT_DECAY_NORM == 0.0005 and s.WEIGHT_DECAY_BIAS is None and s.BIAS_LR_FACTOR == 1.0
    assert s.HEAD_LR_MULTIPLIER == 1.0  # nbb_mult 1.0
    # "lr_policy": "lambda_poly", power 0.9 (segmentor/tools/optim_scheduler.py), no warm-up ("is_warm" off)
    assert (s.LR_SCHEDULER_NAME, s.POLY_LR_POWER, s.WARMUP_ITERS) == ("WarmupPolyLR", 0.9, 0)
    assert s.AMP.ENABLED  # segmentor/trainer.py: autocast + GradScaler
