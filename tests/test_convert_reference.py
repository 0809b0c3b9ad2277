"""tools/convert_reference_checkpoint.py: a checkpoint in the reference implementation's layout
(openseg.pytorch HRNet_W48_Proto) loads into our reference config with every key consumed."""
import subprocess
import sys

import torch
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionNet, cfg_cls

from detectron2.modeling import build_model

from protoseg.checkpoint import ProtoSegCheckpointer

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
