"""Initialising a larger vocabulary from a smaller one (protoseg/vocabulary.py, tools/expand_vocabulary.py)."""
import subprocess
import sys

import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from protoseg.checkpoint import ProtoSegCheckpointer
from protoseg.vocabulary import expand_vocabulary

from conftest import REPO, toy_cfg

OLD = [f"class{i}" for i in range(8)]
# two classes dropped (class1, class6), three new ones, the rest in another order
NEW = ["class3", "new_a", "class0", "class7", "new_b", "class2", "class5", "class4", "new_c"]


def test_trained_classes_move_to_their_new_ids_and_new_ones_start_fresh(trained_toy_checkpoint, tmp_path):
    _, weights = trained_toy_checkpoint
    old_state = torch.load(weights, weights_only=True)["model"]
    state, fresh = expand_vocabulary(old_state, OLD, NEW, seed=0)
    assert fresh == ["new_a", "new_b", "new_c"]
    protos, old_protos = state["sem_seg_head.memory.prototypes"], old_state["sem_seg_head.memory.prototypes"]
    assert protos.shape == (9, *old_protos.shape[1:])
    for j, name in enumerate(NEW):
        if name in OLD:
            i = OLD.index(name)
            assert torch.equal(protos[j], old_protos[i])
            assert state["sem_seg_head.score_norm.weight"][j] == old_state["sem_seg_head.score_norm.weight"][i]
        else:  # unit vectors, not copies of anything trained
            assert torch.allclose(protos[j].norm(dim=-1), torch.ones(protos.shape[1]))
            assert state["sem_seg_head.score_norm.weight"][j] == 1 and state["sem_seg_head.score_norm.bias"][j] == 0
    assert torch.equal(state["backbone.stem.conv1.weight"], old_state["backbone.stem.conv1.weight"])

    # the file loads into a 9-class model (the shape check would refuse the 8-class checkpoint) ...
    out = tmp_path / "expanded.pth"
    names = tmp_path / "old.txt", tmp_path / "new.txt"
    names[0].write_text("\n".join(OLD))
    names[1].write_text("\n".join(NEW))
    proc = subprocess.run([sys.executable, str(REPO / "tools/expand_vocabulary.py"), str(weights), str(out),
                           "--from-classes", str(names[0]), "--to-classes", str(names[1])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 of 9 classes carried over from 8; 3 new" in proc.stdout
    model = build_model(toy_cfg(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9]))
    ProtoSegCheckpointer(model).load(str(out))
    # ... and predicts the carried-over classes as the old model did, under their new ids
    old_model = build_model(toy_cfg())
    ProtoSegCheckpointer(old_model).load(str(weights))
    model.eval()
    old_model.eval()
    image = {"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64}
    with torch.no_grad():
        old_logits = old_model([image])[0]["sem_seg"]
        new_logits = model([image])[0]["sem_seg"]
    # same similarities for the kept classes (before the class-score LayerNorm mixes in the others)
    head, old_head = model.sem_seg_head, old_model.sem_seg_head
    x = F.normalize(torch.randn(5, protos.shape[-1]), dim=-1)
    kept = [(NEW.index(c), OLD.index(c)) for c in NEW if c in OLD]
    new_scores = head.memory.class_scores(head.memory.similarity(x))
    old_scores = old_head.memory.class_scores(old_head.memory.similarity(x))
    for j, i in kept:
        assert torch.allclose(new_scores[:, j], old_scores[:, i])
    assert new_logits.shape[0] == 9 and old_logits.shape[0] == 8


def test_mismatched_class_count_names_the_key():
    state = {"sem_seg_head.memory.prototypes": torch.zeros(7, 2, 4)}
    try:
        expand_vocabulary(state, OLD, NEW)
    except ValueError as e:
        assert "sem_seg_head.memory.prototypes has 7 rows" in str(e)
    else:
        raise AssertionError("a 7-class buffer against an 8-class list must be refused")
