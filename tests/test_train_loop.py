"""A non-finite loss skips the step (parameters, optimizer state, prototypes untouched) instead of
ending the run; a run that keeps producing them stops with an error naming the cause."""
import json
import logging

import pytest
import torch

from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from protoseg.engine import Trainer
from protoseg.engine.train_loop import ProtoSegTrainLoop

from conftest import random_batch, toy_cfg
from log_records import Records


def nan_batch(seed):
    batch = random_batch(n=2, size=64, seed=seed)
    batch[0]["image"][:, :8, :8] = float("nan")
    return batch


def run(loop, iters):
    with EventStorage(0) as storage:
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


def test_grad_scaler_skip_keeps_the_weights_and_commits_the_prototype_update():
    """AMP with a GradScaler (CUDA's; here the CPU one, with a scale that makes the scaled gradients
    overflow): the loss is finite, so the step counts; the scaler skips the optimizer step and halves
    its scale, and the prototype update, computed from the finite forward, is committed."""
    torch.manual_seed(0)
    model = build_model(toy_cfg(opts=["MODEL.SEM_SEG_HEAD.DROPOUT", 0.0]))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loop = ProtoSegTrainLoop(model, [random_batch(n=2, size=64, seed=0)], optimizer, amp=True)
    loop.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    protos = model.sem_seg_head.memory.prototypes.clone()
    run(loop, 1)
    assert loop.total_skips == 0 and loop.grad_scaler.get_scale() == 2.0**126
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    assert (model.sem_seg_head.memory.prototypes != protos).any(dim=-1).sum() > 0


# ---- the same through Trainer, as train_net.py runs it -----------------------------------------
class NaNBatches:
    """The training loader, with a NaN patch in the images of the batches of ``iterations`` (what
    a float input overflowing in an augmentation gives; JPEG files cannot hold NaN)."""

    def __init__(self, loader, iterations):
        self.loader, self.iterations = loader, set(iterations)

    def __iter__(self):
        for i, batch in enumerate(self.loader):  # NUM_WORKERS 0 and start 0: batch i is iteration i
            if i in self.iterations:
                batch = [dict(d, image=d["image"].float()) for d in batch]
                batch[0]["image"][:, :16, :16] = float("nan")
            yield batch


def nan_trainer(cfg, iterations):
    """A Trainer of ``cfg`` whose training batches of ``iterations`` hold NaN pixels."""

    class NaNTrainer(Trainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return NaNBatches(super().build_train_loader(cfg), iterations)

    trainer = NaNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def toy_trainer_cfg(out, max_iter, *opts):
    cfg = toy_cfg(opts=[
        "DATASETS.TRAIN", ("toy_test_train",), "DATASETS.TEST", (), "SOLVER.MAX_ITER", max_iter,
        "TEST.EVAL_PERIOD", 0, "OUTPUT_DIR", str(out), "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.IMS_PER_BATCH", 2, "INPUT.CROP.SIZE", (64, 64), *opts,
    ])
    cfg.freeze()
    return cfg


def test_trainer_skips_nan_steps_and_ends_with_finite_weights(toy_dataset, tmp_path):
    trainer = nan_trainer(toy_trainer_cfg(tmp_path, 4), iterations=[1, 2])
    with Records("protoseg", logging.WARNING) as records:
        trainer.train()
    assert trainer.iter == 4
    skipped = records.matching("non-finite loss")
    assert len(skipped) == 2 and "iteration 1" in skipped[0] and "iteration 2" in skipped[1]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["skipped_nonfinite_steps"] == 2
    state = trainer.model.state_dict()
    not_finite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not not_finite, not_finite
    assert torch.allclose(state["sem_seg_head.memory.prototypes"].norm(dim=-1), torch.ones(8, 10), atol=1e-5)
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())


def test_trainer_stops_past_the_skip_limit(toy_dataset, tmp_path):
    trainer = nan_trainer(toy_trainer_cfg(tmp_path, 4, "SOLVER.NONFINITE_SKIP_LIMIT", 1), iterations=range(1, 4))
    with pytest.raises(FloatingPointError, match="2 consecutive iterations.*iteration 2.*NONFINITE_SKIP_LIMIT"):
        trainer.train()
    assert trainer.iter == 2


class StateAfterEachStep(HookBase):
    """Copies of the model's state dict after every iteration."""

    def __init__(self):
        self.states = []

    def after_step(self):
        self.states.append({k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()})


@pytest.mark.parametrize("amp", [False, True])
def test_trainer_skipped_step_leaves_the_prototypes_of_the_other_images_unchanged(toy_dataset, tmp_path, amp):
    """One NaN image in a batch of 4, FrozenBN and no norm in the decoder: the NaN stays in that
    image, the other three give finite embeddings, and the loss is NaN. The skipped step leaves
    every entry of the state dict unchanged, the prototypes included; the next step updates them."""
    cfg = toy_trainer_cfg(tmp_path, 3, "SOLVER.IMS_PER_BATCH", 4, "MODEL.RESNETS.NORM", "FrozenBN",
                          "MODEL.SEM_SEG_HEAD.NORM", "", "MODEL.SEM_SEG_HEAD.DROPOUT", 0.0,
                          "SOLVER.AMP.ENABLED", amp)
    seed_all_rng(0)
    trainer = nan_trainer(cfg, iterations=[1])
    recorder = StateAfterEachStep()
    trainer.register_hooks([recorder])
    trainer.train()
    assert trainer._trainer.total_skips == 1
    before, skipped, after = recorder.states
    protos = "sem_seg_head.memory.prototypes"
    changed = [k for k in before if not torch.equal(before[k], skipped[k])]
    assert not changed, changed
    # the step after it learns again (its images are finite)
    assert (before[protos] != after[protos]).any(dim=-1).sum() > 0
