"""tools/convert_reference_checkpoint.py: a checkpoint in the reference implementation's layout
(openseg.pytorch HRNet_W48_Proto) loads into our reference config with every key consumed."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionNet, cfg_cls

from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from protoseg.checkpoint import ProtoSegCheckpointer
from protoseg.modeling.heads.protoseg_head import WidthNormalizedMLP

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from convert_reference_checkpoint import reference_config  # noqa: E402

C, K = 19, 10


def reference_state_dict(width=18):
    """Random tensors under the reference's names, as its training script saves them."""
    torch.manual_seed(0)
    backbone = HighResolutionNet(cfg_cls[f"hrnet_w{width}"], head="").state_dict()
    d = 15 * width  # 720 for W48: the four branches concatenated
    head = {
        "cls_head.0.weight": torch.randn(d, d, 3, 3), "cls_head.0.bias": torch.randn(d),
        "cls_head.1.0.weight": torch.rand(d), "cls_head.1.0.bias": torch.randn(d),
        "cls_head.1.0.running_mean": torch.randn(d), "cls_head.1.0.running_var": torch.rand(d) + 0.5,
        "cls_head.1.0.num_batches_tracked": torch.tensor(80000),
        "proj_head.proj.0.weight": torch.randn(d, d, 1, 1), "proj_head.proj.0.bias": torch.randn(d),
        "proj_head.proj.2.weight": torch.randn(d, d, 1, 1), "proj_head.proj.2.bias": torch.randn(d),
        "feat_norm.weight": torch.rand(d), "feat_norm.bias": torch.randn(d),
        "mask_norm.weight": torch.rand(C), "mask_norm.bias": torch.randn(C),
        "prototypes": torch.randn(C, K, d),
    }
    for i in (0, 2):  # the reference registers its projection twice (self.proj = self.mlp2)
        for p in ("weight", "bias"):
            head[f"proj_head.mlp2.{i}.{p}"] = head[f"proj_head.proj.{i}.{p}"]
    state = {f"backbone.{k}": v for k, v in backbone.items()}
    state.update(head)
    return {"state_dict": {f"module.{k}": v for k, v in state.items()}}


def test_reference_checkpoint_loads_completely_with_the_values_in_place(tmp_path):
    release = reference_state_dict()
    torch.save(release, tmp_path / "reference.pth")
    out = tmp_path / "converted.pth"
    proc = subprocess.run([sys.executable, str(REPO / "tools/convert_reference_checkpoint.py"),
                           str(tmp_path / "reference.pth"), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MODEL.HRNET.WIDTH 18" in proc.stdout and "proj_head.* (4)" in proc.stdout

    ref = {k[len("module."):]: v for k, v in release["state_dict"].items()}
    cfg, _ = reference_config(ref)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.HRNET.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"])
    model = build_model(cfg)
    converted = torch.load(out, weights_only=True)["model"]
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys and not result.missing_keys
    ProtoSegCheckpointer(model).load(str(out))  # and the project's loader takes it
    state = model.state_dict()
    head = "sem_seg_head."
    assert torch.equal(state[head + "decoder.fuse.weight"], ref["cls_head.0.weight"])
    assert torch.equal(state[head + "decoder.fuse.norm.running_var"], ref["cls_head.1.0.running_var"])
    assert torch.equal(state[head + "projection.2.bias"], ref["proj_head.proj.2.bias"])
    assert torch.equal(state[head + "score_norm.weight"], ref["mask_norm.weight"])
    assert torch.allclose(state[head + "memory.prototypes"], F.normalize(ref["prototypes"], dim=-1))
    assert torch.equal(state["backbone.encoder.stage4.2.fuse_layers.3.0.1.0.weight"],
                       ref["backbone.stage4.2.fuse_layers.3.0.1.0.weight"])
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}])
    assert out[0]["sem_seg"].shape == (C, 64, 96) and torch.isfinite(out[0]["sem_seg"]).all()


def test_projection_aliases_that_differ_are_refused(tmp_path):
    release = reference_state_dict()
    release["state_dict"]["module.proj_head.mlp2.0.bias"] = torch.zeros(270)
    torch.save(release, tmp_path / "reference.pth")
    proc = subprocess.run([sys.executable, str(REPO / "tools/convert_reference_checkpoint.py"),
                           str(tmp_path / "reference.pth"), str(tmp_path / "out.pth")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "proj_head.mlp2.0.bias differs from proj_head.proj.0.bias" in proc.stderr


# ---- the reference's forward, reproduced (PROJECTION "reference_mlp", BGR input, align_corners) ----

#: the reference's normalisation (H_48_D_4_proto.json): ImageNet mean/std in RGB order, applied to
#: an image read by cv2 in BGR order
REFERENCE_MEAN, REFERENCE_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def reference_head(ref, branches, image_hw):
    """The reference's HRNet_W48_Proto head (tfzhou/ProtoSeg lib/models/nets/hrnet.py) written out
    from its raw tensors: branches (4 x (1, C_i, h_i, w_i)) -> (1, C, H, W) logits of its ss_test."""
    size = branches[0].shape[-2:]
    x = torch.cat([branches[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=True)
                                   for b in branches[1:]], dim=1)
    x = F.conv2d(x, ref["cls_head.0.weight"], ref["cls_head.0.bias"], padding=1)
    x = F.relu(F.batch_norm(x, ref["cls_head.1.0.running_mean"], ref["cls_head.1.0.running_var"],
                            ref["cls_head.1.0.weight"], ref["cls_head.1.0.bias"], eps=1e-5))
    x = F.conv2d(F.relu(F.conv2d(x, ref["proj_head.proj.0.weight"], ref["proj_head.proj.0.bias"])),
                 ref["proj_head.proj.2.weight"], ref["proj_head.proj.2.bias"])
    x = F.normalize(x, p=2, dim=-1)  # ProjectionHead: l2 over the last dim of (B, D, h, w) = width
    b, d, h, w = x.shape
    x = F.layer_norm(x.permute(0, 2, 3, 1).reshape(-1, d), (d,), ref["feat_norm.weight"], ref["feat_norm.bias"])
    x = F.normalize(x, dim=1)
    sims = torch.einsum("nd,kmd->nmk", x, F.normalize(ref["prototypes"], dim=-1))
    scores = F.layer_norm(sims.amax(dim=1), (C,), ref["mask_norm.weight"], ref["mask_norm.bias"])
    scores = scores.reshape(b, h, w, C).permute(0, 3, 1, 2)
    return F.interpolate(scores, size=image_hw, mode="bilinear", align_corners=True)  # tester.ss_test


@pytest.fixture(scope="module")
def converted_reference(tmp_path_factory):
    """(reference tensors without prefixes, our model built from the reference config and loaded
    with the converted checkpoint through the project's checkpointer)."""
    tmp = tmp_path_factory.mktemp("reference")
    release = reference_state_dict()
    with torch.no_grad():  # LayerNorm affine and prototypes of the scale a trained model has
        release["state_dict"]["module.feat_norm.weight"].uniform_(0.5, 1.5)
        release["state_dict"]["module.mask_norm.weight"].uniform_(0.5, 1.5)
        release["state_dict"]["module.cls_head.0.weight"].mul_(0.02)
        for i in (0, 2):
            release["state_dict"][f"module.proj_head.proj.{i}.weight"].mul_(0.05)
    torch.save(release, tmp / "reference.pth")
    subprocess.run([sys.executable, str(REPO / "tools/convert_reference_checkpoint.py"), str(tmp / "reference.pth"),
                    str(tmp / "converted.pth")], check=True, capture_output=True, timeout=300)
    ref = {k[len("module."):]: v for k, v in release["state_dict"].items()}
    cfg, _ = reference_config(ref)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.HRNET.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"])
    model = build_model(cfg).eval()
    ProtoSegCheckpointer(model).load(str(tmp / "converted.pth"))
    return ref, model, cfg


def test_reference_projection_normalises_over_the_image_width(converted_reference):
    """Hand-computed: with identity convolutions, a (1, 2, 1, 3) map is scaled per (channel, row)
    to unit norm over its 3 columns, not per pixel over its 2 channels."""
    _, model, _ = converted_reference
    projection = WidthNormalizedMLP(2)
    with torch.no_grad():
        for conv in (projection[0], projection[2]):
            conv.weight.copy_(torch.eye(2)[:, :, None, None])
            conv.bias.zero_()
    x = torch.tensor([[[[3.0, 4.0, 0.0]], [[1.0, 1.0, 1.0]]]])
    expected = torch.tensor([[[[0.6, 0.8, 0.0]], [[3 ** -0.5] * 3]]])
    assert torch.allclose(projection(x), expected, atol=1e-7)
    assert type(model.sem_seg_head.projection) is WidthNormalizedMLP  # what the reference config builds


@pytest.mark.parametrize("height, width", [(64, 96), (61, 93)])  # 61 x 93: not a multiple of the stride
def test_converted_reference_checkpoint_gives_the_reference_logits(converted_reference, tmp_path, height, width):
    """The reference's checkpoint, converted and loaded into the reference config, gives the
    reference's ss_test logits on an image each side reads its own way: the reference with cv2
    (BGR) and its normalisation, ours with Detectron2's reader in the config's INPUT.FORMAT."""
    ref, model, cfg = converted_reference
    rng = np.random.default_rng(height)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([np.sin(xx / 7.0 + c) * 60 + np.cos(yy / 5.0 - 2 * c) * 50 + 128 for c in range(3)], -1)
    path = str(tmp_path / "image.png")
    cv2.imwrite(path, np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8))

    bgr = cv2.imread(path)
    x = torch.from_numpy(((bgr / 255.0 - REFERENCE_MEAN) / REFERENCE_STD).transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        features = model.backbone(x)  # the backbone conversion is checked tensor by tensor above
        expected = reference_head(ref, [features[f] for f in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES], (height, width))[0]
        ours = read_image(path, format=cfg.INPUT.FORMAT)
        logits = model([{"image": torch.as_tensor(ours.transpose(2, 0, 1).copy()), "height": height,
                         "width": width}])[0]["sem_seg"]
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max() < 1e-4, (logits - expected).abs().max()
    assert expected.abs().max() > 0.5  # logits of a usable scale, not all near zero
    assert torch.equal(logits.argmax(0), expected.argmax(0))
