"""One run at a time in an OUTPUT_DIR: a second train_net.py (training or --eval-only) is refused
with the holder named before it writes anything; a lock whose process has ended is taken over;
the lock is released at the end of a run, also one that fails; in a multi-process run only the
main process locks, and every process learns of a refusal."""
import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from protoseg.engine.run_lock import LOCK_NAME, OutputDirInUseError, RunLock, output_dir_lock
from protoseg.processes import this_host

from conftest import REPO, load_script, run_in_processes
from log_records import Records

train_net = load_script("train_net", REPO / "train_net.py")
TOY = str(REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml")
TINY = ["DATASETS.TRAIN", "('toy_test_train',)", "DATASETS.TEST", "('toy_test_val',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0"]


def dead_pid() -> int:
    """The pid of a process of this machine that has ended."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def main_args(out, *extra):
    return train_net.get_parser().parse_args([*extra, "--config-file", TOY, *TINY, "OUTPUT_DIR", str(out)])


@pytest.mark.parametrize("mode", [[], ["--eval-only", "--allow-random-weights"]])
def test_second_run_is_refused_naming_the_holder_before_writing_anything(toy_dataset, tmp_path, mode):
    with RunLock(str(tmp_path)) as held:  # a run of this (live) process holds the folder
        env = dict(os.environ, DETECTRON2_DATASETS=str(toy_dataset.parent))
        cmd = [sys.executable, str(REPO / "train_net.py"), *mode, "--config-file", TOY, *TINY, "OUTPUT_DIR", str(tmp_path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert (tmp_path / LOCK_NAME).is_file()
    assert proc.returncode != 0
    [line] = [l for l in proc.stderr.splitlines() if l.startswith("protoseg.engine.run_lock.OutputDirInUseError")]
    assert f"OUTPUT_DIR {tmp_path} is in use by another run (host {this_host()}, pid {os.getpid()}, " in line
    assert f"started {held.holder['started']}, command: " in line
    assert "give this run another OUTPUT_DIR" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no config.yaml, log.txt, metrics; lock released


def test_lock_of_an_ended_process_is_taken_over_and_released_at_the_end(toy_dataset, tmp_path):
    stale = {"host": this_host(), "pid": dead_pid(), "started": "2026-01-01T00:00:00+00:00", "command": "train_net.py"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with Records("protoseg") as records:
        train_net.main(main_args(tmp_path))
    [warning] = records.matching("was left by a run that no longer runs")
    assert f"pid {stale['pid']}, started 2026-01-01T00:00:00+00:00" in warning
    assert (tmp_path / "model_final.pth").is_file()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": dead_pid(), "started": "x", "command": "y"}))
    with pytest.raises(OutputDirInUseError, match=f"another host \\(elsewhere\\).*if it has ended, delete {tmp_path / LOCK_NAME}"):
        RunLock(str(tmp_path)).acquire()


def test_lock_is_released_when_the_run_fails(toy_dataset, tmp_path):
    with pytest.raises(ValueError, match="--eval-only without MODEL.WEIGHTS"):
        train_net.main(main_args(tmp_path, "--eval-only"))
    assert (tmp_path / "log.txt").is_file() and not (tmp_path / LOCK_NAME).exists()
    train_net.main(main_args(tmp_path, "--eval-only", "--allow-random-weights"))  # the folder is free
    assert not (tmp_path / LOCK_NAME).exists()


def _lock_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        outcome = "locked"
        try:
            with output_dir_lock(out_dir) as lock:
                outcome += f" {lock is not None}"
                dist.barrier()
        except OutputDirInUseError as e:
            outcome = str(e)
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(outcome)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_only_the_main_process_locks_and_every_process_learns_of_a_refusal(tmp_path):
    free, taken = tmp_path / "free", tmp_path / "taken"
    free.mkdir(), taken.mkdir()
    run_in_processes(_lock_worker, 2, str(free), timeout=120)
    assert [(free / f"rank{r}.txt").read_text() for r in range(2)] == ["locked True", "locked False"]
    assert not (free / LOCK_NAME).exists()
    with RunLock(str(taken)):
        run_in_processes(_lock_worker, 2, str(taken), timeout=120)
    outcomes = [(taken / f"rank{r}.txt").read_text() for r in range(2)]
    assert outcomes[0] == outcomes[1] and f"pid {os.getpid()}" in outcomes[0]
