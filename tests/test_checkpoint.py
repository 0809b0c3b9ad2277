"""Loading a checkpoint whose prototype memory has another shape fails clearly (fvcore would skip
it with a warning and leave random prototypes)."""
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from protoseg.checkpoint import ProtoSegCheckpointer

from conftest import toy_cfg


@pytest.mark.parametrize("opts", [["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5], ["MODEL.PROTOSEG.NUM_PROTOTYPES", 3]])
def test_prototype_shape_mismatch_is_an_error(tmp_path, opts):
    DetectionCheckpointer(build_model(toy_cfg()), save_dir=str(tmp_path)).save("eight_classes")
    other = build_model(toy_cfg(opts=opts))
    with pytest.raises(ValueError, match=r"NUM_CLASSES.*NUM_PROTOTYPES"):
        ProtoSegCheckpointer(other).load(str(tmp_path / "eight_classes.pth"))


def test_matching_checkpoint_loads_prototypes(tmp_path):
    source = build_model(toy_cfg())
    DetectionCheckpointer(source, save_dir=str(tmp_path)).save("model")
    target = build_model(toy_cfg())
    ProtoSegCheckpointer(target).load(str(tmp_path / "model.pth"))
    assert torch.equal(target.sem_seg_head.memory.prototypes, source.sem_seg_head.memory.prototypes)


class _Payload:
    """Unpickling this object calls os.system: what a malicious checkpoint can do."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > PWNED_MARKER",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"x": torch.zeros(1)}, "evil": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="run pickled code"):
        ProtoSegCheckpointer(build_model(toy_cfg())).load(str(tmp_path / "evil.pth"))
    assert not (tmp_path / "PWNED_MARKER").exists()
