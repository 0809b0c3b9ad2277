"""Optimizer parameter groups (the weight-decay and learning-rate rules of the paper's recipes) and
the learning-rate schedule, warm-up cap included, as the project's Trainer builds them."""
import logging
import math

import pytest
import torch
from torch import nn


from protoseg.config import load_config
from protoseg.engine import Trainer
from protoseg.solver import build_optimizer, effective_warmup_iters

from conftest import REPO, toy_cfg


class TinySwinLike(nn.Module):
    """backbone with a relative position bias table and a LayerNorm; a head with a conv."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.attn = nn.Module()
        self.backbone.attn.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.backbone.proj = nn.Linear(4, 4)
        self.backbone.norm = nn.LayerNorm(4)
        self.sem_seg_head = nn.Conv2d(4, 3, 1)


def groups_by_param(optimizer):
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def test_adamw_rules_of_the_swin_and_segformer_recipes():
    model = TinySwinLike()
    cfg = toy_cfg(opts=["SOLVER.OPTIMIZER", "ADAMW", "SOLVER.BASE_LR", 6e-5, "SOLVER.WEIGHT_DECAY", 0.01,
                        "SOLVER.WEIGHT_DECAY_NORM", 0.0, "SOLVER.WEIGHT_DECAY_EMBED", 0.0,
                        "SOLVER.HEAD_LR_MULTIPLIER", 10.0])
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    g = groups_by_param(opt)
    table = g[id(model.backbone.attn.relative_position_bias_table)]
    assert table["weight_decay"] == 0.0 and table["lr"] == 6e-5
    assert g[id(model.backbone.norm.weight)]["weight_decay"] == 0.0
    assert g[id(model.backbone.proj.weight)]["weight_decay"] == 0.01
    assert g[id(model.backbone.proj.weight)]["lr"] == 6e-5
    head = g[id(model.sem_seg_head.weight)]
    assert head["lr"] == pytest.approx(6e-4) and head["weight_decay"] == 0.01


def test_defaults_leave_sgd_groups_alone():
    model = TinySwinLike()
    opt = build_optimizer(toy_cfg(opts=["SOLVER.WEIGHT_DECAY_EMBED", 0.05]), model)
    g = groups_by_param(opt)
    assert isinstance(opt, torch.optim.SGD)
    assert g[id(model.sem_seg_head.weight)]["lr"] == g[id(model.backbone.proj.weight)]["lr"] == 0.1
    assert g[id(model.backbone.attn.relative_position_bias_table)]["weight_decay"] == 0.05


# ---- warm-up capped at SOLVER.MAX_WARMUP_FRACTION of the run -----------------------------------
SEGFORMER_B2 = REPO / "configs" / "ade20k" / "segformer_MiT-B2_bs16_40k.yaml"  # AdamW, warm-up 1500
BASE_LR, HEAD_LR, WARMUP_FACTOR = 6e-5, 6e-4, 1e-6  # the config's BASE_LR, x HEAD_LR_MULTIPLIER 10


def real_cfg(path=SEGFORMER_B2, opts=()):
    """A config file of configs/ as train_net.py loads it, with ``opts``, frozen."""
    return load_config(path, opts, freeze=True)


@pytest.fixture
def solver_warnings(caplog):
    """Records of the ``protoseg.solver`` logger (caught on the logger itself: Detectron2's
    ``setup_logger("protoseg")`` in an earlier test turns off propagation to the root)."""
    log = logging.getLogger("protoseg.solver")
    log.addHandler(caplog.handler)
    propagate, log.propagate = log.propagate, False
    caplog.set_level(logging.WARNING, logger="protoseg.solver")
    yield lambda: [r for r in caplog.records if r.name == "protoseg.solver" and r.levelno == logging.WARNING]
    log.removeHandler(caplog.handler)
    log.propagate = propagate


def lr_curve(cfg, iterations):
    """{iteration: (backbone lr, head lr)} of the schedule the project's Trainer builds for ``cfg``
    (AdamW over the toy Swin-like model's groups), read from the optimizer as training sees it."""
    model = TinySwinLike()
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    groups = groups_by_param(optimizer)
    backbone, head = groups[id(model.backbone.proj.weight)], groups[id(model.sem_seg_head.weight)]
    out = {}
    for it in range(max(iterations) + 1):
        if it in iterations:
            out[it] = (backbone["lr"], head["lr"])
        optimizer.step()  # no gradients: nothing moves; keeps torch's step-order check quiet
        scheduler.step()
    return out


def assert_curve(curve, expected):
    """``expected``: {iteration: multiplier of the base lr}."""
    for it, m in expected.items():
        assert curve[it][0] == pytest.approx(m * BASE_LR, rel=1e-6, abs=1e-15), f"backbone lr at {it}"
        assert curve[it][1] == pytest.approx(m * HEAD_LR, rel=1e-6, abs=1e-14), f"head lr at {it}"


def test_short_adamw_run_warms_up_over_a_tenth_of_it(solver_warnings):
    # MAX_ITER 1000: warm-up 100 (not 1500, which ramped towards poly(1) = 0 and trained at ~1e-6 x).
    # Linear warm-up from 1e-6 to poly(100/1000) = 0.9, then poly power 1: 1 - it/1000.
    cfg = real_cfg(opts=["SOLVER.MAX_ITER", 1000])
    assert effective_warmup_iters(cfg) == 100
    curve = lr_curve(cfg, [0, 50, 100, 500, 999])
    assert_curve(curve, {
        0: WARMUP_FACTOR,
        50: WARMUP_FACTOR + 0.5 * (0.9 - WARMUP_FACTOR),
        100: 0.9,
        500: 0.5,
        999: 0.001,
    })
    assert curve[500][0] > 0.3 * BASE_LR
    [record] = solver_warnings()
    msg = record.getMessage()
    for text in ("SOLVER.WARMUP_ITERS=1500", "SOLVER.MAX_ITER=1000", "SOLVER.MAX_WARMUP_FRACTION=0.1",
                 "over 100 iterations"):
        assert text in msg
    assert cfg.SOLVER.WARMUP_ITERS == 1500  # the user's config is left as it is


def test_847_class_config_gets_the_same_short_schedule(solver_warnings):
    path = REPO / "configs" / "ade20k_full" / "protoseg_segformer_MiT-B2_847cls_bs16_40k.yaml"
    curve = lr_curve(real_cfg(path, ["SOLVER.MAX_ITER", 200]), [0, 10, 20, 100])
    # warm-up 20: 10 is halfway to poly(20/200) = 0.9; then 1 - it/200
    assert_curve(curve, {0: WARMUP_FACTOR, 10: WARMUP_FACTOR + 0.5 * (0.9 - WARMUP_FACTOR),
                         20: 0.9, 100: 0.5})
    assert len(solver_warnings()) == 1


def test_paper_schedule_keeps_its_1500_iteration_warmup(solver_warnings):
    cfg = real_cfg()  # MAX_ITER 40000
    assert effective_warmup_iters(cfg) == cfg.SOLVER.WARMUP_ITERS == 1500
    end = 1 - 1500 / 40000  # poly power 1 at the end of the warm-up
    curve = lr_curve(cfg, [0, 750, 1500, 20000])
    assert_curve(curve, {0: WARMUP_FACTOR, 750: WARMUP_FACTOR + 0.5 * (end - WARMUP_FACTOR), 1500: end,
                         20000: 0.5})
    assert solver_warnings() == []


def test_no_config_file_is_changed_at_its_own_max_iter():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) > 40
    for path in files:
        cfg = real_cfg(path)
        assert effective_warmup_iters(cfg) == cfg.SOLVER.WARMUP_ITERS, path.relative_to(REPO)


def test_detectron2_schedules_get_the_capped_warmup_too(solver_warnings):
    # WarmupMultiStepLR: warm-up 100 towards 1, x0.1 at 600 and 900
    cfg = real_cfg(opts=["SOLVER.MAX_ITER", 1000, "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR",
                         "SOLVER.STEPS", (600, 900), "SOLVER.GAMMA", 0.1])
    curve = lr_curve(cfg, [0, 50, 100, 599, 600, 900])
    assert_curve(curve, {0: WARMUP_FACTOR, 50: WARMUP_FACTOR + 0.5 * (1 - WARMUP_FACTOR), 100: 1.0,
                         599: 1.0, 600: 0.1, 900: 0.01})
    # WarmupCosineLR: warm-up 100 towards cos(0.1), then 0.5 * (1 + cos(pi * it / 1000))
    cfg = real_cfg(opts=["SOLVER.MAX_ITER", 1000, "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"])
    end = 0.5 * (1 + math.cos(math.pi * 0.1))
    curve = lr_curve(cfg, [0, 50, 100, 500, 750])
    assert_curve(curve, {0: WARMUP_FACTOR, 50: WARMUP_FACTOR + 0.5 * (end - WARMUP_FACTOR), 100: end,
                         500: 0.5, 750: 0.5 * (1 + math.cos(math.pi * 0.75))})
    assert len(solver_warnings()) == 2  # one per scheduler built
    assert all("over 100 iterations" in r.getMessage() for r in solver_warnings())


def test_fraction_one_keeps_the_configured_warmup(solver_warnings):
    cfg = real_cfg(opts=["SOLVER.MAX_ITER", 2000, "SOLVER.MAX_WARMUP_FRACTION", 1.0])
    assert effective_warmup_iters(cfg) == 1500
    assert_curve(lr_curve(cfg, [1500]), {1500: 0.25})  # Detectron2's warm-up: peaks at poly(0.75)
    assert solver_warnings() == []


@pytest.mark.parametrize("key,value", [("SOLVER.MAX_WARMUP_FRACTION", 0.0), ("SOLVER.MAX_WARMUP_FRACTION", 1.5),
                                       ("SOLVER.MAX_ITER", 0), ("SOLVER.MAX_ITER", -5),
                                       ("SOLVER.WARMUP_ITERS", -1)])
def test_invalid_keys_are_named_with_their_value(key, value):
    cfg = real_cfg(opts=[key, value])
    with pytest.raises(ValueError, match=f"{key.replace('.', '[.]')} .*{value}"):
        Trainer.build_lr_scheduler(cfg, torch.optim.AdamW(TinySwinLike().parameters(), lr=BASE_LR))


def test_trainer_run_uses_the_capped_warmup(toy_dataset, tmp_path, solver_warnings):
    # the toy recipe's 20 warm-up iterations in a 10-iteration run: 1 (poly power 0.9, base lr 0.1,
    # Detectron2's WARMUP_FACTOR 0.001); the lr the Trainer's LRScheduler hook records per iteration
    cfg = toy_cfg(opts=["DATASETS.TRAIN", ("toy_test_train",), "DATASETS.TEST", (), "SOLVER.MAX_ITER", 10,
                        "SOLVER.IMS_PER_BATCH", 2, "INPUT.CROP.SIZE", (64, 64), "TEST.EVAL_PERIOD", 0,
                        "SOLVER.CHECKPOINT_PERIOD", 10000, "DATALOADER.NUM_WORKERS", 0,
                        "OUTPUT_DIR", str(tmp_path)])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    lrs = {it: lr for lr, it in trainer.storage.history("lr").values()}
    assert lrs[0] == pytest.approx(0.1 * 0.001)
    for it in (1, 5, 9):
        assert lrs[it] == pytest.approx(0.1 * (1 - it / 10) ** 0.9), it
    [record] = solver_warnings()  # one scheduler built, one warning
    assert "over 1 iterations" in record.getMessage()
