"""A training run killed mid-way resumes from its last complete checkpoint; checkpoints are
written atomically."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detectron2.modeling import build_model

from protoseg.checkpoint import ProtoSegCheckpointer
from protoseg.engine import Trainer

from conftest import REPO, toy_cfg
from log_records import Records


def test_failed_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    checkpointer = ProtoSegCheckpointer(build_model(toy_cfg()), save_dir=str(tmp_path))
    checkpointer.save("model_final")
    good = (tmp_path / "model_final.pth").read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


def test_trainer_removes_temporary_files_of_a_killed_save(toy_dataset, tmp_path):
    """kill -9 between the write of <name>.tmp and its rename leaves the temporary file; the next
    run on the directory removes those of the checkpointer, and nothing else."""
    checkpointer = ProtoSegCheckpointer(build_model(toy_cfg()), save_dir=str(tmp_path))
    checkpointer.save("model_0000009")
    (tmp_path / "model_0000019.pth.tmp").write_bytes(b"")
    (tmp_path / "last_checkpoint.tmp").write_text("model_00")
    kept = ["notes.tmp", "model_0000019.pth.tmp.bak", "data.tmp"]
    for name in kept:
        (tmp_path / name).write_text("not the checkpointer's")
    cfg = toy_cfg(opts=["DATASETS.TRAIN", ("toy_test_train",), "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", 0])
    cfg.freeze()
    with Records("protoseg") as records:
        trainer = Trainer(cfg)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"last_checkpoint", "model_0000009.pth", *kept} <= names
    assert not {"model_0000019.pth.tmp", "last_checkpoint.tmp"} & names
    [line] = records.matching("interrupted checkpoint save")
    assert "last_checkpoint.tmp, model_0000019.pth.tmp" in line
    trainer.resume_or_load(resume=True)  # from the complete checkpoint


def train_command(out, max_iter, *extra):
    return [
        sys.executable, str(REPO / "train_net.py"), *extra,
        "--config-file", str(REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml"),
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "10", "TEST.EVAL_PERIOD", "0",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out),
    ]


def test_killed_run_resumes_from_last_checkpoint(toy_dataset, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_dataset.parent), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(train_command(tmp_path, 60), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "last_checkpoint"
    give_up_at = time.time() + 240
    while time.time() < give_up_at and not (last.exists() and last.read_text() == "model_0000019.pth"):
        time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.read_text() == "model_0000019.pth"
    saved = torch.load(tmp_path / "model_0000019.pth", weights_only=False)

    resumed = subprocess.run(train_command(tmp_path, 60, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "Starting training from iteration 20" in log
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 59
    assert int(final["model"]["sem_seg_head.iteration"]) == 60
    assert int(saved["model"]["sem_seg_head.iteration"]) == 20
    assert not torch.equal(final["model"]["sem_seg_head.memory.prototypes"], saved["model"]["sem_seg_head.memory.prototypes"])
