"""A training run killed mid-way resumes from its last complete checkpoint; checkpoints are
written atomically."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detectron2.modeling import build_model

import protoseg.checkpoint
from protoseg.checkpoint import DiskFullError, ProtoSegCheckpointer
from protoseg.engine import Trainer
from protoseg.processes import this_host

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


def dead_pid() -> int:
    """The pid of a process of this machine that has ended."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_trainer_removes_temporary_files_of_a_killed_save(toy_dataset, tmp_path):
    """kill -9 between the write of <name>.<host>-<pid>-<random>.tmp and its rename leaves the
    temporary file; the next run on the directory removes those of the checkpointer whose process
    has ended, and nothing else: not another live process's, another machine's or other files."""
    checkpointer = ProtoSegCheckpointer(build_model(toy_cfg()), save_dir=str(tmp_path))
    checkpointer.save("model_0000009")
    host, dead, alive = this_host(), dead_pid(), os.getppid()
    (tmp_path / f"model_0000019.pth.{host}-{dead}-0123abcd.tmp").write_bytes(b"")
    (tmp_path / f"last_checkpoint.{host}-{dead}-89abcdef.tmp").write_text("model_00")
    kept = [
        "notes.tmp", "model_0000019.pth.tmp.bak", "data.tmp",
        f"model_0000029.pth.{host}-{alive}-0123abcd.tmp",  # a save in progress in another run
        f"last_checkpoint.{host}-{alive}-0123abcd.tmp",
        f"model_0000029.pth.elsewhere-{dead}-0123abcd.tmp",  # another machine's process: not provably gone
    ]
    for name in kept:
        (tmp_path / name).write_text("not the checkpointer's")
    cfg = toy_cfg(opts=["DATASETS.TRAIN", ("toy_test_train",), "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", 0])
    cfg.freeze()
    with Records("protoseg") as records:
        trainer = Trainer(cfg)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"last_checkpoint", "model_0000009.pth", *kept} <= names
    assert not [n for n in names if f"-{dead}-" in n and "elsewhere" not in n]
    [line] = records.matching("interrupted checkpoint save")
    assert f"last_checkpoint.{host}-{dead}-89abcdef.tmp, model_0000019.pth.{host}-{dead}-0123abcd.tmp" in line
    trainer.resume_or_load(resume=True)  # from the complete checkpoint


def test_saves_of_two_processes_use_distinct_temporary_names(tmp_path, monkeypatch):
    """Two runs saving into one folder at the same moment never write the same temporary file."""
    checkpointer = ProtoSegCheckpointer(build_model(toy_cfg()), save_dir=str(tmp_path))
    names = []
    real_save = torch.save

    def record(obj, f, *args, **kwargs):
        names.append(os.path.basename(f.name))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", record)
    checkpointer.save("model_final")
    checkpointer.save("model_final")
    assert len(set(names)) == 2
    assert all(n.startswith(f"model_final.pth.{this_host()}-{os.getpid()}-") and n.endswith(".tmp") for n in names)


def test_full_disk_is_one_clear_error_and_keeps_the_last_checkpoint(toy_dataset, tmp_path, monkeypatch):
    """A save that runs out of space (torch re-raises the file's ENOSPC as its own RuntimeError)
    names the file and the free space, leaves no partial file, and last_checkpoint still names
    the complete checkpoint before it."""
    cfg = toy_cfg(opts=[
        "DATASETS.TRAIN", ("toy_test_train",), "DATASETS.TEST", (), "OUTPUT_DIR", str(tmp_path),
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2, "TEST.EVAL_PERIOD", 0,
    ])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    real_save = torch.save

    def fill_disk_at_the_second_save(obj, f, *args, **kwargs):
        if obj["iteration"] < 3:
            return real_save(obj, f, *args, **kwargs)
        try:
            f.write(b"part of a checkpoint")
            f.write(b"x" * 4096)  # (the simulated disk is full now)
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        raise AssertionError("the write did not fail")

    monkeypatch.setattr(torch, "save", fill_disk_at_the_second_save)

    def open_full(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullFile(f) if "w" in mode and "model_0000003" in str(path) else f

    monkeypatch.setattr(protoseg.checkpoint.checkpointer, "open", open_full, raising=False)  # the checkpointer's files
    with Records("detectron2") as records, pytest.raises(DiskFullError) as error:
        trainer.train()
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC
    assert f"cannot write {tmp_path / 'model_0000003.pth'}: no space left on device (errno ENOSPC; " in message
    assert " free on " in message
    assert sorted(p.name for p in tmp_path.iterdir() if "model_" in p.name or "last" in p.name) == [
        "last_checkpoint", "model_0000001.pth",
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    torch.load(tmp_path / "model_0000001.pth", weights_only=False)  # complete
    [line] = records.matching("Exception during training")
    assert "no space left on device" in line.splitlines()[0]


class _FullFile:
    """A file on a disk that fills up after its first write: later writes raise ENOSPC."""

    def __init__(self, file):
        self._file, self._writes = file, 0

    def __getattr__(self, name):
        return getattr(self._file, name)

    def write(self, data):
        self._writes += 1
        if self._writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._file.write(data)


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
