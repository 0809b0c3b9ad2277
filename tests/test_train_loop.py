"""A non-finite loss skips the step (parameters, optimizer state, prototypes untouched) instead of
ending the run; a run that keeps producing them stops with an error naming the cause."""
import logging

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from protoseg.engine.train_loop import ProtoSegTrainLoop

from conftest import random_batch, toy_cfg


def nan_batch(seed):
    batch = random_batch(n=2, size=64, seed=seed)
    batch[0]["image"][:, :8, :8] = float("nan")
    return batch


def run(loop, iters):
    with EventStorage(0) as storage:
        loop.storage = storage
        for loop.iter in range(iters):
            loop.run_step()
    return storage


def snapshot(model, optimizer):
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    momenta = {i: s["momentum_buffer"].clone() for i, s in enumerate(optimizer.state.values()) if "momentum_buffer" in s}
    return params, momenta


def test_nan_batch_is_skipped_and_changes_nothing(caplog):
    torch.manual_seed(0)
    model = build_model(toy_cfg(opts=["MODEL.SEM_SEG_HEAD.DROPOUT", 0.0]))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [random_batch(n=2, size=64, seed=0), nan_batch(1), random_batch(n=2, size=64, seed=2)]
    loop = ProtoSegTrainLoop(model, batches, optimizer, skip_limit=3)

    with EventStorage(0) as storage:
        loop.storage = storage
        loop.iter = 0
        loop.run_step()  # a normal step: momentum buffers exist from here on
        before_params, before_momenta = snapshot(model, optimizer)
        loop.iter = 1
        with caplog.at_level(logging.WARNING, logger="protoseg"):
            loop.run_step()  # the NaN batch
        after_params, after_momenta = snapshot(model, optimizer)
        assert "non-finite loss" in caplog.text and "iteration 1" in caplog.text
        assert storage.latest()["skipped_nonfinite_steps"][0] == 1
        # nothing moved: weights, BN statistics, prototypes, SGD momentum
        assert before_params.keys() == after_params.keys()
        for k in before_params:
            assert torch.equal(before_params[k], after_params[k]), k
        for k in before_momenta:
            assert torch.equal(before_momenta[k], after_momenta[k])
        assert torch.isfinite(model.sem_seg_head.memory.prototypes).all()
        loop.iter = 2
        loop.run_step()  # training goes on
    assert loop.consecutive_skips == 0
    moved = model.state_dict()["sem_seg_head.decoder.convs.0.weight"]
    assert not torch.equal(moved, before_params["sem_seg_head.decoder.convs.0.weight"])


def test_diverged_training_stops_after_the_skip_limit():
    model = build_model(toy_cfg())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loop = ProtoSegTrainLoop(model, [nan_batch(s) for s in range(3)], optimizer, skip_limit=2)
    with pytest.raises(FloatingPointError, match="3 consecutive iterations.*NONFINITE_SKIP_LIMIT"):
        run(loop, 3)


def test_skip_limit_zero_is_detectron2s_behaviour():
    model = build_model(toy_cfg())
    model.train()
    loop = ProtoSegTrainLoop(model, [nan_batch(0)], torch.optim.SGD(model.parameters(), lr=0.01), skip_limit=0)
    with pytest.raises(FloatingPointError):
        run(loop, 1)


def test_mixed_precision_steps_train_and_keep_unit_prototypes():
    """SOLVER.AMP.ENABLED: the step runs under autocast (bfloat16 on CPU); the prototype memory is
    still updated in float32 and stays finite and unit-norm, and the weights move."""
    torch.manual_seed(0)
    model = build_model(toy_cfg(opts=["MODEL.SEM_SEG_HEAD.DROPOUT", 0.0]))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = model.sem_seg_head.decoder.convs[0].weight.detach().clone()
    protos_before = model.sem_seg_head.memory.prototypes.clone()
    loop = ProtoSegTrainLoop(model, [random_batch(n=2, size=64, seed=s) for s in range(3)], optimizer, amp=True)
    storage = run(loop, 3)
    protos = model.sem_seg_head.memory.prototypes
    assert protos.dtype == torch.float32 and torch.isfinite(protos).all()
    assert torch.allclose(protos.norm(dim=-1), torch.ones(protos.shape[:2]), atol=1e-5)
    assert not torch.equal(protos, protos_before)
    assert not torch.equal(model.sem_seg_head.decoder.convs[0].weight, before)
    logged = {k: v[0] for k, v in storage.latest().items() if k.startswith("loss_")}
    assert loop.total_skips == 0 and {"loss_ce", "loss_ppc", "loss_ppd"} <= set(logged)
    assert all(torch.isfinite(torch.tensor(v)) for v in logged.values())
