"""Optimizer parameter groups: the weight-decay and learning-rate rules of the paper's recipes."""
import pytest
import torch
from torch import nn

from protoseg.solver import build_optimizer

from conftest import toy_cfg


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
