"""Two CPU processes (gloo) compute the prototypes of the global batch, identical on both ranks.

Detectron2 wraps models in DDP with ``broadcast_buffers=False``: nothing synchronises the
prototype buffers but the head itself (all-reduced Sinkhorn marginals and prototype sums).
"""
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from detectron2.modeling import build_model

from protoseg.modeling import PrototypeMemory, sinkhorn_knopp

from conftest import random_batch, run_in_processes, toy_cfg

WORLD = 2


def memory_trajectory(rank: int, world: int, steps: int = 4):
    """Assign + update for ``steps`` iterations on this rank's share of a fixed global batch.

    Returns per-step (targets of this rank's pixels, Sinkhorn plan, prototypes)."""
    torch.manual_seed(0)
    C, K, D, n = 5, 4, 8, 240
    mem = PrototypeMemory(C, K, D, momentum=0.5)
    out = []
    for step in range(steps):
        g = torch.Generator().manual_seed(100 + step)
        x = F.normalize(torch.randn(n, D, generator=g), dim=1)
        labels = torch.randint(-1, C, (n,), generator=g)  # -1: ignored pixels
        labels[labels == 2] = 1  # a class absent from the batch
        share = slice(rank * n // world, (rank + 1) * n // world)
        own = mem.own_class_scores(mem.similarity(x[share]), labels[share])
        plan = sinkhorn_knopp(own, torch.where(labels[share] >= 0, labels[share], C), C + 1)
        targets, update_targets = mem.assign(own, labels[share])
        mem.update(x[share], update_targets)
        out.append((targets, plan, mem.prototypes.clone()))
    return out


def model_trajectory(rank: int, world: int, steps: int = 3):
    """A real model (dilated ResNet + FCN + ProtoSeg head) trained with DDP on this rank's share of
    a global batch; norms without batch statistics and no dropout, so that one process on the
    global batch computes the same thing. Returns the prototypes after each step."""
    cfg = toy_cfg(opts=["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.SEM_SEG_HEAD.NORM", "",
                        "MODEL.SEM_SEG_HEAD.DROPOUT", 0.0, "MODEL.PROTOSEG.MOMENTUM", 0.5])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    protos = []
    for step in range(steps):
        batch = random_batch(n=4, size=64, seed=step, ignore=0)  # no ignore pixels: equal shares
        share = batch[rank * 4 // world: (rank + 1) * 4 // world]
        losses = model(share)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        head = (model.module if world > 1 else model).sem_seg_head
        protos.append(head.memory.prototypes.clone())
    return protos


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        result = (memory_trajectory(rank, world), model_trajectory(rank, world))
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_two_processes(out_dir):
    run_in_processes(_worker, WORLD, str(out_dir))
    return {r: torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)}


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    results = run_two_processes(tmp_path)
    single_memory = memory_trajectory(0, 1)
    single_model = model_trajectory(0, 1)
    n = 240
    for step, (targets, plan, protos) in enumerate(single_memory):
        rank_targets = torch.cat([results[r][0][step][0] for r in range(WORLD)])
        rank_plans = torch.cat([results[r][0][step][1] for r in range(WORLD)])
        assert rank_targets.shape == (n,)
        # same assignment and transport plan as one process on the global batch
        assert torch.equal(rank_targets, targets)
        assert torch.allclose(rank_plans, plan, atol=1e-6)
        # prototypes: bit-identical on both ranks, equal to one process up to summation order
        assert torch.equal(results[0][0][step][2], results[1][0][step][2])
        assert torch.allclose(results[0][0][step][2], protos, atol=1e-6)
    for step, protos in enumerate(single_model):
        assert torch.equal(results[0][1][step], results[1][1][step])
        assert torch.allclose(results[0][1][step], protos, atol=1e-5), f"step {step}"
