"""Loading weights: a checkpoint that does not fit the model (prototype shape, class count, missing
or unexpected keys) is an error naming the keys, except the two documented initialisations of a
training run (backbone-only ImageNet weights, ``--skip-weights``); files are read without running
pickled code (.pth and .pkl), and a truncated file is reported as such."""
import logging
import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from protoseg.checkpoint import (
    TRUST_PICKLE_ENV,
    CheckpointMismatchError,
    CorruptCheckpointError,
    ProtoSegCheckpointer,
    UnsafeCheckpointError,
)
from protoseg.engine import Trainer, evaluate_checkpoint

from conftest import toy_cfg
from log_records import Records

PARAMETRIC = "parametric_r18-d8_fcn_toy.yaml"


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


# ---- keys that do not fit: --eval-only, fine-tuning, backbone initialisation, --resume ----------
def save_model(path, name=PARAMETRIC, opts=(), keep=lambda key: True, extra=None):
    """A toy model of config ``name`` saved as a checkpoint at ``path`` (only the keys ``keep``
    accepts, plus ``extra``); returns its state dict."""
    state = {k: v for k, v in build_model(toy_cfg(name, opts)).state_dict().items() if keep(k)}
    torch.save({"model": {**state, **(extra or {})}, "iteration": 99}, path)
    return state


def eval_cfg(weights, name=PARAMETRIC, opts=()):
    cfg = toy_cfg(name, ["MODEL.WEIGHTS", str(weights), "DATASETS.TEST", (), *opts])
    cfg.freeze()
    return cfg


def test_eval_of_a_checkpoint_of_another_class_count_names_the_keys(tmp_path):
    """The parametric baseline (no prototype buffer): fvcore would skip the classifier with a
    warning and --eval-only would report a near-random mIoU."""
    save_model(tmp_path / "eight.pth")
    with pytest.raises(CheckpointMismatchError) as error:
        evaluate_checkpoint(eval_cfg(tmp_path / "eight.pth", opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]))
    message = str(error.value)
    assert "eight.pth" in message and "2 mis-shaped" in message
    assert "sem_seg_head.classifier.weight (8, 64, 1, 1) in the checkpoint vs (5, 64, 1, 1) in the model" in message
    assert "sem_seg_head.classifier.bias (8,) in the checkpoint vs (5,)" in message
    assert "--skip-weights" not in message  # evaluation: no partial loading to suggest


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    save_model(tmp_path / "partial.pth", keep=lambda k: not k.startswith("sem_seg_head.decoder.fuse."),
               extra={"sem_seg_head.old_head.weight": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError) as error:
        evaluate_checkpoint(eval_cfg(tmp_path / "partial.pth"))
    message = str(error.value)
    assert "5 missing from the checkpoint: sem_seg_head.decoder.fuse.weight" in message
    assert "num_batches_tracked" not in message  # BatchNorm counters may be absent (converted weights)
    assert "1 not in the model: sem_seg_head.old_head.weight" in message


def test_mis_shaped_keys_are_listed_as_mis_shaped_only(tmp_path):
    save_model(tmp_path / "eight.pth")
    with pytest.raises(CheckpointMismatchError) as error:
        evaluate_checkpoint(eval_cfg(tmp_path / "eight.pth", opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]))
    message = str(error.value)
    assert "2 mis-shaped: sem_seg_head.classifier.weight (8, 64, 1, 1) in the checkpoint vs (5, 64, 1, 1)" in message
    assert "missing" not in message and "another head" not in message


@pytest.mark.parametrize("saved, loaded, theirs, ours", [
    (PARAMETRIC, "protoseg_r18-d8_fcn_toy.yaml", "parametric", "ProtoSeg"),
    ("protoseg_r18-d8_fcn_toy.yaml", PARAMETRIC, "ProtoSeg", "parametric"),
])
def test_checkpoint_of_another_head_is_named_so(tmp_path, saved, loaded, theirs, ours):
    save_model(tmp_path / "other_head.pth", name=saved)
    with pytest.raises(CheckpointMismatchError) as error:
        evaluate_checkpoint(eval_cfg(tmp_path / "other_head.pth", name=loaded))
    message = str(error.value)
    assert message.startswith(f"This checkpoint is of another head ({theirs}, ")
    assert f") than the config's ({ours}, " in message
    assert "other_head.pth does not fit the model" in message  # the keys are still listed


def training_cfg(tmp_path, weights, name=PARAMETRIC, opts=()):
    cfg = toy_cfg(name, [
        "MODEL.WEIGHTS", str(weights), "DATASETS.TRAIN", ("toy_test_train",), "DATASETS.TEST", (),
        "OUTPUT_DIR", str(tmp_path / "run"), "DATALOADER.NUM_WORKERS", 0, *opts,
    ])
    cfg.freeze()
    return cfg


def test_fine_tuning_on_another_class_set_needs_skip_weights(toy_dataset, tmp_path):
    source = save_model(tmp_path / "eight.pth")
    cfg = training_cfg(tmp_path, tmp_path / "eight.pth", opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5])
    with pytest.raises(CheckpointMismatchError, match="train_net.py --skip-weights sem_seg_head.classifier "):
        Trainer(cfg).resume_or_load(resume=False)

    trainer = Trainer(cfg)
    with Records("protoseg") as records:
        trainer.resume_or_load(resume=False, skip_weights=["sem_seg_head.classifier"])
    assert records.matching("not loaded (--skip-weights sem_seg_head.classifier)")
    state = trainer.model.state_dict()
    assert state["sem_seg_head.classifier.weight"].shape == (5, 64, 1, 1)
    assert all(torch.equal(state[k], v) for k, v in source.items() if not k.startswith("sem_seg_head.classifier"))


def test_backbone_only_weights_initialise_the_backbone_of_a_training_run_only(toy_dataset, tmp_path):
    """As tools/convert_pretrained.py writes them: backbone keys only, no BatchNorm counters."""
    backbone = save_model(tmp_path / "imagenet.pth", keep=lambda k: k.startswith("backbone.") and "num_batches" not in k)
    trainer = Trainer(training_cfg(tmp_path, tmp_path / "imagenet.pth"))
    with Records("protoseg") as records, Records("fvcore") as fvcore_records:
        trainer.resume_or_load(resume=False)
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone.items())
    [line] = records.matching("holds backbone weights only")
    assert "the 17 other tensors of the model (sem_seg_head.decoder.convs.0.weight" in line
    assert not fvcore_records.matching("not found in the checkpoint")  # no second, longer listing

    with pytest.raises(CheckpointMismatchError, match="17 missing from the checkpoint: sem_seg_head"):
        evaluate_checkpoint(eval_cfg(tmp_path / "imagenet.pth"))


def test_resume_loads_strictly(toy_dataset, tmp_path):
    """--resume continues from the run's own checkpoint, which must fit the model: here the
    OUTPUT_DIR holds a run of the parametric baseline and the config is ProtoSeg's."""
    cfg = training_cfg(tmp_path, "", name="protoseg_r18-d8_fcn_toy.yaml")
    os.makedirs(cfg.OUTPUT_DIR)
    save_model(os.path.join(cfg.OUTPUT_DIR, "model_0000099.pth"))
    with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"), "w") as f:
        f.write("model_0000099.pth")
    with pytest.raises(CheckpointMismatchError, match=r"model_0000099.pth does not fit.*missing.*"
                                                      r"sem_seg_head.memory.prototypes.*not in the model: "
                                                      r"sem_seg_head.classifier"):
        Trainer(cfg).resume_or_load(resume=True)


# ---- reading files ----------------------------------------------------------------------------
class _Payload:
    """Unpickling this object calls os.system: what a malicious checkpoint can do."""

    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED_MARKER",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"x": torch.zeros(1)}, "evil": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pth .*run pickled code \(refused: posix.system\)"):
        ProtoSegCheckpointer(build_model(toy_cfg())).load(str(tmp_path / "evil.pth"))
    assert not (tmp_path / "PWNED_MARKER").exists()


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_truncated_checkpoint_is_reported_as_truncated(tmp_path, suffix):
    path = tmp_path / f"model_final{suffix}"
    state = save_model(tmp_path / "model_final.pth")
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)
    truncate(path)
    with pytest.raises(CorruptCheckpointError) as error:
        evaluate_checkpoint(eval_cfg(path))
    message = str(error.value)
    assert message.startswith(f"file {path} is truncated or corrupt (")
    assert "pickled code" not in message and "weights_only" not in message
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="empty.pth is truncated or corrupt"):
        evaluate_checkpoint(eval_cfg(tmp_path / "empty.pth"))


def model_zoo_pkl(path, state, protocol, **extra):
    """A Detectron2 model-zoo style .pkl: numpy arrays under "model", author, heuristics flag."""
    data = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo",
            "matching_heuristics": True, **extra}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron2_pkl_weights_load(toy_dataset, tmp_path, protocol):
    """MODEL.WEIGHTS x.pkl initialises a training run, the values in place (numpy scalars, nested
    dicts, tuples and bytes are part of such files too)."""
    state = build_model(toy_cfg(PARAMETRIC)).state_dict()
    model_zoo_pkl(tmp_path / "zoo.pkl", state, protocol,
                  extra={"lr": np.float64(0.02), "step": np.int64(7), "shape": (1, 2), "raw": b"\x00\xff"})
    trainer = Trainer(training_cfg(tmp_path, tmp_path / "zoo.pkl"))
    trainer.resume_or_load(resume=False)
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("layout", ["model zoo", "caffe2 detection", "caffe2 imagenet"])
def test_pkl_is_read_as_detectron2_reads_it(tmp_path, monkeypatch, layout):
    """The restricted reader gives the checkpoint Detectron2's own (plain pickle) reader gives, for
    each .pkl layout: model zoo as it is; Caffe2 "blobs" or top-level weights without the
    "_momentum" blobs, with the matching heuristics."""
    monkeypatch.delenv(TRUST_PICKLE_ENV, raising=False)
    weights = {"conv1_w": np.arange(6, dtype=np.float32).reshape(2, 3), "conv1_w_momentum": np.ones((2, 3)),
               "fc_b": np.zeros(4, dtype=np.float32)}
    data = {
        "model zoo": {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True},
        "caffe2 detection": {"blobs": weights, "cfg": "MODEL: {}"},
        "caffe2 imagenet": weights,
    }[layout]
    path = str(tmp_path / "weights.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    model = build_model(toy_cfg(PARAMETRIC))
    ours, detectron2s = ProtoSegCheckpointer(model)._load_file(path), DetectionCheckpointer(model)._load_file(path)
    assert ours.keys() == detectron2s.keys() and ours["model"].keys() == detectron2s["model"].keys()
    assert all(np.array_equal(ours["model"][k], detectron2s["model"][k]) for k in ours["model"])
    assert {k: v for k, v in ours.items() if k != "model"} == {k: v for k, v in detectron2s.items() if k != "model"}
    if layout != "model zoo":
        assert set(ours["model"]) == {"conv1_w", "fc_b"} and ours["matching_heuristics"] is True


def test_pkl_with_pickled_code_is_refused_before_it_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(TRUST_PICKLE_ENV, raising=False)
    state = build_model(toy_cfg(PARAMETRIC)).state_dict()
    model_zoo_pkl(tmp_path / "evil.pkl", state, 2, payload=_Payload())
    with pytest.raises(UnsafeCheckpointError) as error:
        evaluate_checkpoint(eval_cfg(tmp_path / "evil.pkl"))
    assert not (tmp_path / "PWNED_MARKER").exists()
    message = str(error.value)
    assert f"{tmp_path / 'evil.pkl'} is not loaded" in message and "'posix.system'" in message
    assert f"{TRUST_PICKLE_ENV}=1" in message


def test_trusted_pkl_is_read_with_plain_pickle_when_asked(tmp_path, monkeypatch):
    """An unusual but harmless global (a Counter) is refused by default and read with the opt-in."""
    state = build_model(toy_cfg(PARAMETRIC)).state_dict()
    model_zoo_pkl(tmp_path / "counter.pkl", state, 4, counts=Counter(a=1))
    model = build_model(toy_cfg(PARAMETRIC))
    monkeypatch.delenv(TRUST_PICKLE_ENV, raising=False)
    with pytest.raises(UnsafeCheckpointError, match="'collections.Counter'"):
        ProtoSegCheckpointer(model).load(str(tmp_path / "counter.pkl"))
    monkeypatch.setenv(TRUST_PICKLE_ENV, "1")
    with Records("protoseg", logging.WARNING) as records:
        extra = ProtoSegCheckpointer(model).load(str(tmp_path / "counter.pkl"))
    assert extra["counts"] == Counter(a=1) and records.matching("plain pickle")


def test_prototype_mismatch_when_fine_tuning_names_the_modules_to_skip(toy_dataset, tmp_path):
    """ProtoSeg on another class set: the prototypes and the class-score norm depend on C."""
    name = "protoseg_r18-d8_fcn_toy.yaml"
    save_model(tmp_path / "eight.pth", name=name)
    cfg = training_cfg(tmp_path, tmp_path / "eight.pth", name=name, opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5])
    with pytest.raises(CheckpointMismatchError) as error:
        Trainer(cfg).resume_or_load(resume=False)
    message = str(error.value)
    assert "prototype buffer 'sem_seg_head.memory.prototypes' has shape (8, 10, 64) (C, K, D)" in message
    assert "--skip-weights sem_seg_head.memory --skip-weights sem_seg_head.score_norm " in message
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False, skip_weights=["sem_seg_head.memory", "sem_seg_head.score_norm"])
    assert trainer.model.sem_seg_head.memory.prototypes.shape == (5, 10, 64)
