"""tools/count_params.py: the counts equal what the built models hold."""
import subprocess
import sys

from detectron2.modeling import build_model

from protoseg.modeling.parameter_count import parameter_counts

from conftest import REPO, toy_cfg


def test_counts_by_part_add_up_and_prototypes_are_not_learnable():
    proto = build_model(toy_cfg())
    para = build_model(toy_cfg("parametric_r18-d8_fcn_toy.yaml"))
    cp, cq = parameter_counts(proto), parameter_counts(para)
    assert cp["learnable"] == sum(p.numel() for p in proto.parameters() if p.requires_grad)
    assert cp["learnable"] == sum(v for k, v in cp.items() if k.startswith("learnable/"))
    C, K, D = 8, 10, 64
    assert cp["prototype_buffer"] == C * K * D and cq["prototype_buffer"] == 0
    # same backbone and decoder; the parametric classifier is C x (D + 1), ProtoSeg's learnable extras
    # are the feature LayerNorm (2D) and the class-score LayerNorm (2C)
    assert cp["learnable/backbone"] == cq["learnable/backbone"]
    assert cp["learnable/decoder"] == cq["learnable/decoder"]
    assert cq["learnable/classifier"] == C * (D + 1)
    assert cq["learnable"] - cp["learnable"] == C * (D + 1) - 2 * D - 2 * C


def test_command_prints_a_row_per_config():
    configs = [str(REPO / "configs/toy" / n) for n in ("protoseg_r18-d8_fcn_toy.yaml", "parametric_r18-d8_fcn_toy.yaml")]
    out = subprocess.run([sys.executable, str(REPO / "tools/count_params.py"), *configs],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    total = parameter_counts(build_model(toy_cfg()))["learnable"]
    assert f"{total / 1e6:.2f}" in out.stdout.splitlines()[2]
    assert "classifier" in out.stdout.splitlines()[3]
