"""Backbones (modeling/backbones): built from a config, output shapes = output_shape(), any input
size, every parameter trained, the Swin padding of the segmentation code, parameter counts."""
import math

import pytest
import timm
import torch
import torchvision

from detectron2.modeling import build_backbone

from protoseg.config import load_config
from protoseg.modeling.backbones import HRNetBackbone, MixVisionTransformer, SwinBackbone
from protoseg.modeling.backbones.swin import shifted_window_block

ALL = ["res2", "res3", "res4", "res5"]

# Small members of each family, built the way a config file builds them.
FAMILIES = {
    # Swin-T widths quartered, 2 blocks per stage (so every stage has a shifted block).
    "swin": ["MODEL.BACKBONE.NAME", "build_swin_backbone", "MODEL.SWIN.EMBED_DIM", 32,
             "MODEL.SWIN.DEPTHS", [2, 2, 2, 2], "MODEL.SWIN.NUM_HEADS", [1, 2, 4, 8],
             "MODEL.SWIN.WINDOW_SIZE", 7, "MODEL.SWIN.PRETRAIN_IMG_SIZE", 224],
    "hrnet": ["MODEL.BACKBONE.NAME", "build_hrnet_backbone", "MODEL.HRNET.WIDTH", 18],
    "mit": ["MODEL.BACKBONE.NAME", "build_mit_backbone", "MODEL.MIT.VARIANT", "b0"],
    # ResNet-50-D8 with the mmseg ResNetV1c deep stem (64 channels), all stages returned.
    "resnet": ["MODEL.BACKBONE.NAME", "build_dilated_resnet_backbone", "MODEL.RESNETS.DEPTH", 50,
               "MODEL.RESNETS.STEM_OUT_CHANNELS", 64, "MODEL.RESNETS.RES4_DILATION", 2,
               "MODEL.RESNETS.RES5_DILATION", 4, "MODEL.RESNETS.RES5_MULTI_GRID", [1, 1, 1],
               "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.STRIDE_IN_1X1", False, "MODEL.BACKBONE.FREEZE_AT", 0,
               "MODEL.RESNETS.OUT_FEATURES", ALL],
}
CHANNELS = {
    "swin": [32, 64, 128, 256],
    "hrnet": [18, 36, 72, 144],  # HRNetV2-W18: W, 2W, 4W, 8W
    "mit": [32, 64, 160, 256],  # MiT-B0 embed dims
    "resnet": [256, 512, 1024, 2048],
}
STRIDES = {"swin": [4, 8, 16, 32], "hrnet": [4, 8, 16, 32], "mit": [4, 8, 16, 32], "resnet": [4, 8, 8, 8]}


def build(family, *opts):
    cfg = load_config(opts=FAMILIES[family] + list(opts))
    torch.manual_seed(0)
    return build_backbone(cfg)


def num_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_output_shape_matches_channels_and_strides(family):
    shapes = build(family).output_shape()
    assert list(shapes) == ALL
    assert [shapes[f].channels for f in ALL] == CHANNELS[family]
    assert [shapes[f].stride for f in ALL] == STRIDES[family]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (45, 70)])
def test_forward_backward_any_input_size(family, size):
    """Outputs are (2, C, ceil(H/s), ceil(W/s)) for multiples of 32 and odd sizes alike, and the
    backward reaches every parameter (none unused: DDP-safe)."""
    model = build(family)
    model.train()
    outputs = model(torch.rand(2, 3, *size))
    shapes = model.output_shape()
    assert list(outputs) == ALL
    for name, out in outputs.items():
        s = shapes[name].stride
        assert out.shape == (2, shapes[name].channels, math.ceil(size[0] / s), math.ceil(size[1] / s)), name
    sum(out.square().mean() for out in outputs.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize("family,key", [("swin", "MODEL.SWIN"), ("mit", "MODEL.MIT"), ("hrnet", "MODEL.HRNET")])
def test_out_features_subset(family, key):
    """Only the requested stages are returned; Swin and MiT do not build the stages after the last."""
    model = build(family, f"{key}.OUT_FEATURES", ["res2", "res3"])
    outputs = model(torch.rand(1, 3, 64, 64))
    assert list(outputs) == ["res2", "res3"] == list(model.output_shape())
    names = list(model.state_dict())
    if family == "swin":
        assert not any(n.startswith(("encoder.layers.2", "encoder.layers.3", "output_norms.res4")) for n in names)
    if family == "mit":
        assert not any(n.startswith(("block3", "patch_embed4", "norm4")) for n in names)


@pytest.mark.parametrize("family,key,value", [
    ("swin", "MODEL.SWIN.OUT_FEATURES", ["res6"]),
    ("hrnet", "MODEL.HRNET.OUT_FEATURES", []),
    ("mit", "MODEL.MIT.OUT_FEATURES", ["stage1"]),
    ("hrnet", "MODEL.HRNET.WIDTH", 20),
    ("mit", "MODEL.MIT.VARIANT", "b6"),
])
def test_bad_config_values_name_the_key(family, key, value):
    with pytest.raises(ValueError, match=key):
        build(family, key, value)


def test_swin_equals_timm_when_no_padding_is_needed():
    """At 224 x 224 every stage (56, 28, 14, 7) is a multiple of the window 7: no padding, so our
    forward and timm's own stage forward (then our output norms) agree."""
    model = build("swin").eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ours = model(x)
        theirs = model.encoder.forward_intermediates(x, intermediates_only=True)
    for name, feature in zip(ALL, theirs):
        expected = model.output_norms[name](feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-5)


def test_swin_shifted_window_isolates_wrapped_tokens_with_padding():
    """12 x 12 tokens, window 7, shift 3, padded to 14. After the cyclic shift, the bottom-right
    token (11, 11) and the top-left one (0, 0) share a window but are not neighbours: the mask of the
    padded grid keeps them apart (Swin segmentation code). timm 1.0.31 pads after shifting, and its
    mask lets them attend to each other (timm issue #2438): the reason our forward is our own."""
    block = build("swin").encoder.layers[0].blocks[1].eval()
    assert block.window_size == (7, 7) and block.shift_size == (3, 3)
    x = torch.randn(1, 12, 12, 32)
    moved = x.clone()
    moved[:, 0, 0] += torch.randn(32)  # not a constant, which the block's LayerNorm would remove
    with torch.no_grad():
        ours, ours_moved = shifted_window_block(block, x), shifted_window_block(block, moved)
        timm_out, timm_moved = block(x), block(moved)
    assert torch.equal(ours[:, 11, 11], ours_moved[:, 11, 11])
    assert not torch.allclose(ours[:, 1, 1], ours_moved[:, 1, 1])  # a true neighbour sees it
    assert not torch.allclose(timm_out[:, 11, 11], timm_moved[:, 11, 11])


def test_swin_ape_and_gradient_checkpointing():
    """APE on: a (1, C, 56, 56) table resized to the input's token grid; USE_CHECKPOINT gives the
    same outputs and gradients as the plain forward."""
    model = build("swin", "MODEL.SWIN.APE", True, "MODEL.SWIN.DROP_PATH_RATE", 0.0)
    assert model.absolute_pos_embed.shape == (1, 32, 56, 56)
    x = torch.rand(1, 3, 64, 96)
    sum(out.sum() for out in model(x).values()).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.use_checkpoint = True
    sum(out.sum() for out in model(x).values()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6)


def test_hrnet_norm_is_configurable():
    model = build("hrnet", "MODEL.HRNET.NORM", "FrozenBN")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert type(model.encoder.bn1).__name__ == "FrozenBatchNorm2d"
    assert isinstance(build("hrnet").encoder.bn1, torch.nn.SyncBatchNorm)  # the default, SyncBN


# ---- parameter counts of the full-size backbones --------------------------------------------------
# Swin paper Table 1 / official README: Swin-T 28M, S 50M, B 88M, L 197M, ImageNet models with their
# 1000-class head and final norm. Our backbone drops those and adds one LayerNorm per output stage.
SWIN = {
    "T": (dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)), "swin_tiny_patch4_window7_224", 28e6),
    "S": (dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)), "swin_small_patch4_window7_224", 50e6),
    "B": (dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)), "swin_base_patch4_window12_384", 88e6),
    "L": (dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)), "swin_large_patch4_window12_384",
          197e6),
}


@pytest.mark.parametrize("variant", sorted(SWIN))
def test_swin_parameter_count(variant):
    arch, timm_name, published = SWIN[variant]
    window = 12 if "384" in timm_name else 7
    with torch.device("meta"):
        ours = SwinBackbone(**arch, window_size=window, pretrain_img_size=224 if window == 7 else 384)
        imagenet = timm.create_model(timm_name)
    assert abs(num_params(imagenet) - published) < 0.5e6  # timm's ImageNet model is the published one
    c = arch["embed_dim"]
    head, final_norm, output_norms = (8 * c + 1) * 1000, 2 * 8 * c, 2 * 15 * c
    assert num_params(ours) == num_params(imagenet) - head - final_norm + output_norms


# HRNet-Image-Classification README: HRNet-W18-C 21.3M, W32-C 41.2M, W48-C 77.5M, with the
# classification head (incre/downsample modules, final 2048 layer, classifier) that we drop.
# HRNet TPAMI Table 3 (Cityscapes): HRNetV2-W48 65.9M with its segmentation head (1x1 conv 720->720,
# BN, 1x1 conv 720->19), as the paper's Table 1 "HRNet HRNetV2-W48 65.9".
HRNET = {18: 21.3e6, 32: 41.2e6, 48: 77.5e6}


@pytest.mark.parametrize("width", sorted(HRNET))
def test_hrnet_parameter_count(width):
    with torch.device("meta"):
        ours = HRNetBackbone(width=width)
        imagenet = timm.create_model(f"hrnet_w{width}")
    assert abs(num_params(imagenet) - HRNET[width]) < 0.05e6
    head_modules = ("incre_modules", "downsamp_modules", "final_layer", "classifier")
    head = sum(num_params(getattr(imagenet, m)) for m in head_modules)
    assert num_params(ours) == num_params(imagenet) - head
    if width == 48:
        seg_head = 720 * 720 + 720 + 2 * 720 + 720 * 19 + 19
        assert abs(num_params(ours) + seg_head - 65.9e6) < 0.05e6


# SegFormer Table 1 / release, whole ADE20K models (150 classes): B0 3.8M, B4 64.1M, B5 84.7M, that is
# the MiT encoder (no classification head) + the all-MLP decoder of width 256 (B0) or 768 (B1-B5).
# Encoder alone, SegFormer Table 1: B2 24.2M.
def segformer_decoder_params(embed_dims, width, num_classes=150):
    linear = sum((d + 1) * width for d in embed_dims)
    fuse = 4 * width * width + 2 * width  # 1x1 conv without bias + BN
    return linear + fuse + (width + 1) * num_classes


@pytest.mark.parametrize("variant,width,published", [("b0", 256, 3.8e6), ("b4", 768, 64.1e6), ("b5", 768, 84.7e6)])
def test_mit_parameter_count(variant, width, published):
    with torch.device("meta"):
        ours = MixVisionTransformer(variant=variant)
    dims = [ours.output_shape()[f].channels for f in ALL]
    assert abs(num_params(ours) + segformer_decoder_params(dims, width) - published) < 0.05e6


def test_mit_b2_encoder_parameter_count():
    with torch.device("meta"):
        assert abs(num_params(MixVisionTransformer(variant="b2")) - 24.2e6) < 0.05e6


# torchvision ResNet-50 / 101: 25,557,032 / 44,549,160 parameters with the 1000-class fc. ResNetV1c
# (mmseg, the paper's "D8" FCN backbone) replaces the 7x7 stem conv by 3x3 convs 3->32->32->64 + BN.
@pytest.mark.parametrize("depth,torchvision_params", [(50, 25_557_032), (101, 44_549_160)])
def test_resnet_d8_parameter_count(depth, torchvision_params):
    with torch.device("meta"):
        ours = build("resnet", "MODEL.RESNETS.DEPTH", depth)
        assert num_params(getattr(torchvision.models, f"resnet{depth}")()) == torchvision_params
    fc, stem_7x7 = 2048 * 1000 + 1000, 64 * 3 * 7 * 7 + 2 * 64
    deep_stem = 3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * (32 + 32 + 64)
    assert num_params(ours) == torchvision_params - fc - stem_7x7 + deep_stem
