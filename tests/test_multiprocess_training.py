"""Multi-process training on CPUs (gloo) through the project's launcher: the prototype memory is
bit-identical on every rank after every iteration of a real ``train_net.py --num-gpus 2`` run (the
sync check stops training otherwise), and evaluation gives the same numbers on 1 and 2 processes."""
import csv
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

from detectron2.utils import comm

from protoseg.engine.hooks import PrototypeSyncCheckHook
from protoseg.engine.launch import create_local_process_group, find_free_port
from protoseg.modeling import PrototypeMemory

from conftest import REPO, run_in_processes

WORLD = 2


class ModelWithMemory(torch.nn.Module):
    """What the trainer's hooks read of a model: its prototype memories, offered as
    ``ProtoSegSemanticSegmentor.prototype_memories()`` offers them."""

    def __init__(self, memory):
        super().__init__()
        self.memory = memory

    def prototype_memories(self):
        return [self.memory]


def _sync_check_worker(rank, world, port, perturb, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        memory = PrototypeMemory(3, 2, 4)
        if perturb and rank == 1:  # one bit of one value
            p = memory.prototypes
            p[1, 0, 2] = torch.nextafter(p[1, 0, 2], torch.tensor(2.0))
        hook = PrototypeSyncCheckHook(period=1)
        hook.trainer = SimpleNamespace(iter=6, max_iter=100, model=ModelWithMemory(memory))
        try:
            hook.after_step()
            outcome = "ok"
        except RuntimeError as e:
            outcome = str(e)
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(outcome)
        dist.barrier()  # no rank tears the group down while the other still gathers
    finally:
        dist.destroy_process_group()


def run_sync_check(tmp_path, perturb):
    run_in_processes(_sync_check_worker, WORLD, perturb, str(tmp_path), timeout=300)
    return [(tmp_path / f"rank{r}.txt").read_text() for r in range(WORLD)]


def test_sync_check_passes_identical_and_stops_on_one_bit_of_difference(tmp_path):
    assert run_sync_check(tmp_path, perturb=False) == ["ok", "ok"]
    outcomes = run_sync_check(tmp_path, perturb=True)
    for text in outcomes:  # every rank stops, with the iteration and the rank at fault
        assert "differs across processes after iteration 6: ranks [1]" in text


def test_free_port_can_be_bound_and_listened_on():
    port = find_free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_local_process_group_is_detectron2s_where_it_has_the_function(monkeypatch):
    """Detectron2 after v0.6: its public ``comm.create_local_process_group``; v0.6 (none): no group."""
    calls = []
    monkeypatch.setattr(comm, "create_local_process_group", calls.append, raising=False)
    assert create_local_process_group(3) is True and calls == [3]
    monkeypatch.delattr(comm, "create_local_process_group")
    assert create_local_process_group(3) is False


def train_net(*args, env, timeout=600):
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file",
           str(REPO / "configs/toy/protoseg_r18-d8_fcn_toy.yaml"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def per_class_rows(out_dir):
    with open(out_dir / "inference" / "toy_scenes_sem_seg_val" / "per_class_iou.csv") as f:
        return list(csv.reader(f))


def test_train_net_on_two_cpu_processes_then_evaluate_on_one_and_two(toy_dataset, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_dataset.parent), OMP_NUM_THREADS="1")
    common = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0"]
    # 2 processes x 2 images; the sync check compares the prototype bytes of both ranks after
    # every iteration and would stop training at the first difference
    train_net("--num-gpus", "2", "--dist-url", "auto", *common, "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "4",
              "MODEL.PROTOSEG.SYNC_CHECK_PERIOD", "1", "OUTPUT_DIR", str(tmp_path / "train"), env=env)
    log = (tmp_path / "train" / "log.txt").read_text()
    assert "iter: 5  prototypes bit-identical on all 2 processes" in log
    weights = tmp_path / "train" / "model_final.pth"
    assert weights.is_file()

    for n in (1, 2):
        train_net("--num-gpus", str(n), "--dist-url", "auto", "--eval-only", *common, "MODEL.WEIGHTS", str(weights),
                  "OUTPUT_DIR", str(tmp_path / f"eval{n}"), env=env)
    one, two = per_class_rows(tmp_path / "eval1"), per_class_rows(tmp_path / "eval2")
    assert len(one) == 1 + 8 and one == two
    base = tmp_path / "{}" / "inference" / "toy_scenes_sem_seg_val" / "confusion_matrix.npy"
    cm1, cm2 = np.load(str(base).format("eval1")), np.load(str(base).format("eval2"))
    assert cm1.sum() > 0 and np.array_equal(cm1, cm2)

    # the evaluation at the end of training scored the saved model (rank 0's BatchNorm statistics
    # on both ranks), not a mix of the two ranks' models
    assert np.array_equal(np.load(str(base).format("train")), cm1)
    assert per_class_rows(tmp_path / "train") == one
    assert not (tmp_path / "train" / ".protoseg_run.lock").exists()  # released by rank 0, none by rank 1
