"""tools/convert_pretrained.py: random checkpoints in each official layout convert into weights that
ProtoSegCheckpointer loads into our backbones with no missing, unexpected or mis-shaped key, the
values where they belong; where an independent implementation exists (torchvision ResNet, timm
Swin at an unpadded size, timm PVTv2 = MiT) the converted backbone computes the same features."""
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detectron2.modeling import build_backbone
from timm.models.hrnet import HighResolutionNet, cfg_cls
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from timm.models.swin_transformer import SwinTransformer

from protoseg.config import load_config
from protoseg.checkpoint import ProtoSegCheckpointer

from conftest import REPO, load_script

convert_pretrained = load_script("convert_pretrained", REPO / "tools" / "convert_pretrained.py")

ALL = ["res2", "res3", "res4", "res5"]


def randomize(module: nn.Module) -> nn.Module:
    """Random BN statistics (the fresh ones are 0 / 1, which would hide a stats mix-up)."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


def convert_and_load(family, release, tmp_path, **kwargs):
    """Convert ``release`` with the tool, write it, and load the file with ProtoSegCheckpointer into
    the backbone that the printed config builds. Returns (backbone, conversion)."""
    conversion = convert_pretrained.CONVERTERS[family](release, **kwargs)
    path = str(tmp_path / f"{family}.pth")
    convert_pretrained.save_weights(conversion, path, "test")
    saved = torch.load(path, weights_only=True)
    assert saved["matching_heuristics"] is False and saved["__author__"].startswith("tools/convert_pretrained.py")
    assert all(k.startswith("backbone.") for k in saved["model"])

    cfg = load_config()
    for key, value in conversion.config.items():
        cfg.merge_from_list([key, value])
    if family == "resnet":  # all stages, trainable BN, no dilation nor multi-grid: torchvision's network
        cfg.merge_from_list(["MODEL.RESNETS.OUT_FEATURES", ALL, "MODEL.RESNETS.NORM", "BN",
                             "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.RES5_MULTI_GRID", [1, 1, 1]])
    model = nn.Module()
    model.backbone = build_backbone(cfg)
    checkpointer = ProtoSegCheckpointer(model)
    checkpointer._current_path = path
    incompatible = checkpointer._load_model(checkpointer._load_file(path))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    return model.backbone.eval(), conversion


def assert_values_moved(release, ours: dict, key_map):
    """Every kept release tensor equals our tensor at ``key_map(release key)``."""
    for key, value in release.items():
        target = key_map(key)
        if target is not None and not key.endswith("num_batches_tracked"):
            assert torch.equal(ours[target], value), f"{key} -> {target}"


# ---- ResNet --------------------------------------------------------------------------------------
def torchvision_to_d2(key):
    if key.startswith("fc."):
        return None
    key = re.sub(r"^conv1\.", "stem.conv1.", re.sub(r"^bn1\.", "stem.conv1.norm.", key))
    key = re.sub(r"^layer(\d)", lambda m: f"res{int(m[1]) + 1}", key)
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def test_resnet_from_torchvision_computes_torchvision_features(tmp_path):
    torch.manual_seed(0)
    tv = randomize(torchvision.models.resnet50())
    release = tv.state_dict()
    backbone, conversion = convert_and_load("resnet", release, tmp_path)
    assert conversion.config["MODEL.RESNETS.STEM_TYPE"] == "basic" and conversion.config["MODEL.RESNETS.DEPTH"] == 50
    assert sorted(conversion.dropped) == ["fc.bias", "fc.weight"]
    assert_values_moved(release, backbone.state_dict(), torchvision_to_d2)

    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = [y := layer(y) for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4)]
        ours = backbone(x)
    for name, feature in zip(ALL, expected):
        torch.testing.assert_close(ours[name], feature, rtol=1e-4, atol=1e-5)


def v1c_release(depth=50):
    """mmcv ResNetV1c (open-mmlab://resnet50_v1c) layout: deep stem stem.0/1 (3->32), 3/4 (32->32),
    6/7 (32->64) as Sequential(conv, BN, ReLU) x 3, then torchvision's layer1..4 and fc."""
    torch.manual_seed(0)
    state = {k: v for k, v in randomize(getattr(torchvision.models, f"resnet{depth}")()).state_dict().items()
             if not k.startswith(("conv1.", "bn1."))}
    for i, (cin, cout) in enumerate([(3, 32), (32, 32), (32, 64)]):
        state[f"stem.{3 * i}.weight"] = torch.randn(cout, cin, 3, 3)
        bn = randomize(nn.BatchNorm2d(cout)).state_dict()
        state.update({f"stem.{3 * i + 1}.{k}": v for k, v in bn.items()})
    return state


def test_resnet_v1c_deep_stem_maps_to_deeplab_stem(tmp_path):
    release = v1c_release(101)
    backbone, conversion = convert_and_load("resnet", release, tmp_path)
    assert conversion.config["MODEL.RESNETS.STEM_TYPE"] == "deeplab"
    assert conversion.config["MODEL.RESNETS.STEM_OUT_CHANNELS"] == 64
    assert conversion.config["MODEL.RESNETS.DEPTH"] == 101

    stem = {f"{3 * i}": f"stem.conv{i + 1}." for i in range(3)}
    stem.update({f"{3 * i + 1}": f"stem.conv{i + 1}.norm." for i in range(3)})

    def key_map(key):
        m = re.fullmatch(r"stem\.(\d)\.(.*)", key)
        return stem[m[1]] + m[2] if m else torchvision_to_d2(key)

    assert_values_moved(release, backbone.state_dict(), key_map)
    assert backbone.stem.conv3.weight.shape == (64, 32, 3, 3)


# ---- Swin ----------------------------------------------------------------------------------------
SMALL_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)


def official_swin(timm_model: SwinTransformer) -> dict:
    """The official release layout (microsoft/Swin-Transformer): patch merging at the end of a stage
    (layers.i.downsample, i = 0..2), head.weight, and the persistent buffers relative_position_index
    and attn_mask (shifted blocks) that timm does not keep."""
    state = {}
    for key, value in timm_model.state_dict().items():
        key = re.sub(r"^layers\.(\d)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        state[key.replace("head.fc.", "head.")] = value
    for name, module in timm_model.named_modules():
        if name.endswith(".attn"):
            state[f"{name}.relative_position_index"] = module.relative_position_index
        if name.endswith(("blocks.1", "blocks.3")):
            state[f"{name}.attn_mask"] = torch.zeros(4, 49, 49)
    return state


def test_swin_official_release_computes_timm_features(tmp_path):
    """The reference is timm's model with ``always_partition`` (windows of 7 shifted by 3 even on the
    7 x 7 last stage, as Swin's segmentation code; the classification code drops that shift)."""
    torch.manual_seed(0)
    imagenet = SwinTransformer(**SMALL_SWIN, always_partition=True).eval()
    release = official_swin(imagenet)
    backbone, conversion = convert_and_load("swin", release, tmp_path)
    assert sorted(conversion.dropped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert conversion.config["MODEL.SWIN.DEPTHS"] == [2, 2, 2, 2]
    assert conversion.config["MODEL.SWIN.NUM_HEADS"] == [1, 2, 4, 8]
    assert conversion.config["MODEL.SWIN.WINDOW_SIZE"] == 7
    assert conversion.initialised == [f"output_norms.{f}.{p}" for f in ALL for p in ("weight", "bias")]
    ours = backbone.state_dict()
    assert torch.equal(ours["encoder.layers.1.downsample.reduction.weight"],
                       release["layers.0.downsample.reduction.weight"])
    assert torch.equal(ours["encoder.layers.3.blocks.1.attn.relative_position_bias_table"],
                       release["layers.3.blocks.1.attn.relative_position_bias_table"])

    x = torch.rand(1, 3, 224, 224)  # no window padding at 224: timm's forward is the reference
    with torch.no_grad():
        features = imagenet.forward_intermediates(x, intermediates_only=True)
        out = backbone(x)
    for name, feature in zip(ALL, features):
        expected = F.layer_norm(feature.permute(0, 2, 3, 1), feature.shape[1:2]).permute(0, 3, 1, 2)
        torch.testing.assert_close(out[name], expected, rtol=1e-4, atol=1e-5)


def test_swin_window_resized_for_another_target(tmp_path):
    """--window-size 12 on a window-7 release: timm's filter resizes the (13*13, heads) relative
    position tables to (23*23, heads)."""
    torch.manual_seed(0)
    release = official_swin(SwinTransformer(**SMALL_SWIN))
    backbone, conversion = convert_and_load("swin", release, tmp_path, window_size=12)
    assert conversion.config["MODEL.SWIN.WINDOW_SIZE"] == 12
    assert backbone.encoder.layers[0].blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 1)


# ---- HRNet ---------------------------------------------------------------------------------------
def test_hrnet_imagenet_release_drops_the_classifier(tmp_path):
    """The HRNet-ImageNet release has timm's names (timm loads it unchanged): the classification
    model's state is the release layout."""
    torch.manual_seed(0)
    release = randomize(HighResolutionNet(cfg_cls["hrnet_w18"])).state_dict()
    backbone, conversion = convert_and_load("hrnet", release, tmp_path)
    assert conversion.config["MODEL.HRNET.WIDTH"] == 18
    head = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
    kept = [k for k in release if not k.endswith("num_batches_tracked")]
    assert sorted(conversion.dropped) == sorted(k for k in kept if k.startswith(head))
    assert_values_moved(release, backbone.state_dict(), lambda k: None if k.startswith(head) else f"encoder.{k}")


# ---- MiT -----------------------------------------------------------------------------------------
def official_mit(pvt: PyramidVisionTransformerV2, num_classes=1000) -> dict:
    """The SegFormer release layout (NVlabs/SegFormer mix_transformer.py: patch_embed{i}, block{i}.j,
    norm{i}, mlp.dwconv.dwconv, head) of a timm PVTv2 with the same architecture (timm: patch_embed,
    then stages.i.downsample for i > 0, stages.i.blocks.j, stages.i.norm, mlp.dwconv)."""
    state = {}
    for key, value in pvt.state_dict().items():
        key = re.sub(r"^patch_embed\.", "patch_embed1.", key)
        key = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", key)
        key = re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"block{int(m[1]) + 1}.", key)
        key = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", key)
        state[key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")] = value
    state["head.weight"] = torch.randn(num_classes, pvt.num_features)
    state["head.bias"] = torch.randn(num_classes)
    return state


def mit_b0_as_pvt():
    """MiT-B0 (SegFormer release: dims 32/64/160/256, depths 2/2/2/2, heads 1/2/5/8, SR 8/4/2/1,
    MLP ratio 4, qkv bias) expressed as timm's PVTv2."""
    torch.manual_seed(0)
    return PyramidVisionTransformerV2(depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8),
                                      mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1), qkv_bias=True,
                                      num_classes=0).eval()


def test_mit_release_loads_without_renaming_and_equals_pvt_v2(tmp_path):
    pvt = mit_b0_as_pvt()
    release = official_mit(pvt)
    backbone, conversion = convert_and_load("mit", release, tmp_path)
    assert conversion.config["MODEL.MIT.VARIANT"] == "b0"
    assert sorted(conversion.dropped) == ["head.bias", "head.weight"]
    assert_values_moved(release, backbone.state_dict(), lambda k: None if k.startswith("head.") else k)

    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = pvt.forward_intermediates(x, intermediates_only=True)
        out = backbone(x)
    for name, feature in zip(ALL, expected):
        torch.testing.assert_close(out[name], feature, rtol=1e-4, atol=1e-5)


# ---- command line and errors -----------------------------------------------------------------------
def test_command_line_writes_weights_and_reports_drops(tmp_path, capsys):
    source, output = tmp_path / "mit_b0.pth", tmp_path / "converted.pth"
    torch.save(official_mit(mit_b0_as_pvt()), source)
    convert_pretrained.main(["mit", str(source), str(output)])
    printed = capsys.readouterr().out
    assert "dropped on purpose (classification parts): head.* (2)" in printed
    assert "config: MODEL.BACKBONE.NAME build_mit_backbone MODEL.MIT.VARIANT b0" in printed
    saved = torch.load(output, weights_only=True)
    assert "backbone.block4.1.mlp.dwconv.dwconv.weight" in saved["model"]


def test_unmapped_and_misfitting_keys_are_errors():
    release = official_mit(mit_b0_as_pvt())
    with pytest.raises(convert_pretrained.UnmappedKeysError, match="pos_embed1"):
        convert_pretrained.convert_mit({**release, "pos_embed1": torch.zeros(1)})
    release["block1.0.attn.q.weight"] = torch.zeros(32, 16)
    with pytest.raises(convert_pretrained.UnmappedKeysError, match=r"block1\.0\.attn\.q\.weight: \(32, 16\)"):
        convert_pretrained.convert_mit(release)
    tv = torchvision.models.resnet50().state_dict()
    with pytest.raises(convert_pretrained.UnmappedKeysError, match="layer5"):
        convert_pretrained.convert_resnet({**tv, "layer5.0.conv1.weight": torch.zeros(1)})
