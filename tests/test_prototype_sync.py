"""Prototype learning in two CPU processes (gloo), through ``PrototypeMemory.learn``:

- ``UPDATE_SYNC "global"``: a class present on one rank only is clustered as one process clusters
  the global batch (the per-class maximum that shifts the Sinkhorn exponent is combined with MAX);
- ``UPDATE_SYNC "average"`` (the reference code's): each rank clusters and updates on its own pixels,
  then the prototypes are averaged over the ranks and l2-normalised; checked against that procedure
  written out here.
"""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from protoseg.config import load_config
from protoseg.modeling import PrototypeMemory
from protoseg.modeling.prototypes.memory import UPDATE_SYNCS

from conftest import REPO, run_in_processes
from test_clustering import algorithm1

WORLD, C, K, D, N = 2, 3, 3, 4, 48  # N pixels in the global batch, N / WORLD on each rank
MOMENTUM, STEPS = 0.5, 2


def identity(scores):
    return scores


def global_batch(step: int):
    """(N, D) unit embeddings and (N,) labels; class 2 only in rank 0's half; some ignored (255)."""
    g = torch.Generator().manual_seed(10 + step)
    x = F.normalize(torch.randn(N, D, generator=g), dim=1)
    labels = torch.randint(0, 2, (N,), generator=g)
    labels[: N // 4] = 2  # the first half of rank 0's pixels
    labels[N - 3 :] = 255
    return x, labels


def rank_share(tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return tensor[rank * N // world : (rank + 1) * N // world]


def new_memory(update_sync: str) -> PrototypeMemory:
    torch.manual_seed(0)  # the same initial prototypes in every process
    return PrototypeMemory(C, K, D, momentum=MOMENTUM, update_sync=update_sync)


def trajectory(update_sync: str, rank: int = 0, world: int = 1):
    """learn() for STEPS steps on this rank's share -> per step (targets, prototypes after it)."""
    memory = new_memory(update_sync)
    out = []
    for step in range(STEPS):
        x, labels = global_batch(step)
        learning = memory.learn(rank_share(x, rank, world), rank_share(labels, rank, world), identity)
        out.append((learning.targets, memory.prototypes.clone()))
    return out


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        result = {sync: trajectory(sync, rank, world) for sync in UPDATE_SYNCS}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("prototype_sync")
    run_in_processes(_worker, WORLD, str(out_dir))
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def per_rank_reference_step(protos: torch.Tensor, x: torch.Tensor, labels: torch.Tensor):
    """The reference code's step on one rank's pixels, in float64: per class, Algorithm 1 on the
    similarities to the class's K prototypes, argmax; update pixels = those whose nearest-prototype
    class is their label; p <- l2norm(mu p + (1 - mu) l2norm(sum of its pixels)) where a prototype
    has pixels. Returns (targets (n,), new prototypes (C, K, D))."""
    sim = x.double() @ protos.double().view(C * K, D).t()
    correct = sim.view(-1, C, K).amax(-1).argmax(1) == labels
    targets = torch.full_like(labels, -1)
    new = protos.double().clone()
    for c in range(C):
        rows = (labels == c).nonzero().flatten()
        if len(rows) == 0:
            continue
        assigned = torch.from_numpy(algorithm1(sim[rows, c * K : (c + 1) * K].numpy()).argmax(1))
        targets[rows] = c * K + assigned
        for k in range(K):
            pixels = rows[(assigned == k) & correct[rows]]
            if len(pixels):
                centre = F.normalize(x[pixels].double().sum(0), dim=0)
                new[c, k] = F.normalize(MOMENTUM * new[c, k] + (1 - MOMENTUM) * centre, dim=0)
    return targets, new


def test_global_sync_clusters_a_class_of_one_rank_as_one_process_does(two_ranks):
    single = trajectory("global")
    for step, (targets, protos) in enumerate(single):
        x, labels = global_batch(step)
        assert (rank_share(labels, 1, WORLD) != 2).all() and (rank_share(labels, 0, WORLD) == 2).any()
        class2 = (labels == 2).nonzero().flatten()
        assert len(set(targets[class2].tolist())) == K  # all prototypes of class 2 in use
        assert torch.equal(torch.cat([r["global"][step][0] for r in two_ranks]), targets)
        assert torch.equal(two_ranks[0]["global"][step][1], two_ranks[1]["global"][step][1])
        assert torch.allclose(two_ranks[0]["global"][step][1], protos, atol=1e-6)


def test_average_sync_is_the_mean_of_per_rank_updates(two_ranks):
    protos = new_memory("average").prototypes.double()
    global_protos = trajectory("global")
    for step in range(STEPS):
        x, labels = global_batch(step)
        per_rank = [per_rank_reference_step(protos, rank_share(x, r, WORLD), rank_share(labels, r, WORLD))
                    for r in range(WORLD)]
        protos = F.normalize(torch.stack([p for _, p in per_rank]).mean(0), dim=-1)
        for r in range(WORLD):
            assert torch.equal(two_ranks[r]["average"][step][0], per_rank[r][0]), (step, r)
        assert torch.equal(two_ranks[0]["average"][step][1], two_ranks[1]["average"][step][1])
        np.testing.assert_allclose(two_ranks[0]["average"][step][1].numpy(), protos.numpy(), atol=1e-6)
    # a class seen by rank 0 only moves half as far as with the global update
    start = new_memory("average").prototypes[2]
    moved_average = (two_ranks[0]["average"][0][1][2] - start).norm()
    moved_global = (global_protos[0][1][2] - start).norm()
    assert 0.3 < moved_average / moved_global < 0.7


def test_reference_config_averages_over_processes():
    cfg = load_config(REPO / "configs" / "cityscapes" / "reference_protoseg_hrnetv2_W48_bs8_80k.yaml")
    assert cfg.MODEL.PROTOSEG.UPDATE_SYNC == "average"
    assert PrototypeMemory(cfg, dim=8).update_sync == "average"
    paper = load_config(REPO / "configs" / "cityscapes" / "protoseg_hrnetv2_W48_bs8_160k.yaml")
    assert paper.MODEL.PROTOSEG.UPDATE_SYNC == "global"
    with pytest.raises(ValueError, match="UPDATE_SYNC"):
        PrototypeMemory(2, 2, 2, update_sync="sum")
