"""Optimizer (SGD or AdamW) and poly learning-rate schedule with warm-up (paper Sec. 5.1)."""
import logging
import math

import torch
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler

from .config_checks import Key, Number, OneOf, add_keys, declare

__all__ = ["add_solver_config", "build_optimizer", "build_lr_scheduler", "effective_warmup_iters"]

logger = logging.getLogger(__name__)


OPTIMIZERS = ("SGD", "ADAMW")

KEYS = declare(__name__, [
    Key("SOLVER.OPTIMIZER", "SGD", OneOf(OPTIMIZERS, ignore_case=True),
        "\"SGD\" (FCN, HRNet in the paper) or \"ADAMW\" (Swin, SegFormer)."),
    Key("SOLVER.POLY_LR_POWER", 0.9, Number(ge=0),
        "Power of the \"WarmupPolyLR\" schedule (SOLVER.LR_SCHEDULER_NAME): lr = BASE_LR * (1 - iter / "
        "MAX_ITER) ** POLY_LR_POWER after the warm-up (DeepLab's key)."),
    Key("SOLVER.WEIGHT_DECAY_EMBED", 0.0, Number(ge=0),
        "Weight decay of position embeddings and relative position bias tables (Swin); mmseg's Swin recipe: "
        "0. (Normalisation layers: Detectron2's SOLVER.WEIGHT_DECAY_NORM.)"),
    Key("SOLVER.HEAD_LR_MULTIPLIER", 1.0, Number(gt=0),
        "Learning-rate multiplier of every parameter outside the backbone (decoder, classifier, aux head); "
        "mmseg's SegFormer recipe: 10 (\"head\": lr_mult 10)."),
    Key("SOLVER.MAX_WARMUP_FRACTION", 0.1, Number(gt=0, le=1),
        "Longest warm-up, as a fraction of SOLVER.MAX_ITER: the schedule warms up over "
        "min(SOLVER.WARMUP_ITERS, floor(MAX_WARMUP_FRACTION * MAX_ITER)) iterations (every LR_SCHEDULER_NAME), "
        "with a warning when that is shorter than WARMUP_ITERS. A warm-up ramps towards the learning rate at "
        "its end, so the AdamW recipes' 1500 iterations in a short run would otherwise train at ~0 lr. The "
        "paper's schedules (1500 of 40k-160k) are unchanged. 1.0: never shortened (beyond MAX_ITER itself)."),
])


def add_solver_config(cfg):
    """Add the solver keys this module reads to ``cfg`` in place (called by ``add_protoseg_config``)."""
    add_keys(cfg, KEYS)


#: parameter names (last component) that get ``SOLVER.WEIGHT_DECAY_EMBED``: Swin's absolute
#: position embedding and relative position bias tables (timm's names)
EMBEDDING_PARAMETER_NAMES = ("absolute_pos_embed", "relative_position_bias_table", "pos_embed")


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW over the model's parameters, from ``cfg.SOLVER``.

    The prototype memory is a buffer, so it is never in the optimizer and gets no weight decay.
    Normalisation layers (BN, LayerNorm, ...) use ``SOLVER.WEIGHT_DECAY_NORM``; position
    embeddings and relative position bias tables (Swin) ``SOLVER.WEIGHT_DECAY_EMBED``; every
    parameter outside ``model.backbone`` has its learning rate multiplied by
    ``SOLVER.HEAD_LR_MULTIPLIER`` (the mmsegmentation rules of the paper's Swin and SegFormer
    recipes: ``paramwise_cfg`` of ``upernet_swin_*`` and ``segformer_mit-b*`` configs).
    """
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {cfg.SOLVER.OPTIMIZER!r}")
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        overrides={name: {"weight_decay": cfg.SOLVER.WEIGHT_DECAY_EMBED} for name in EMBEDDING_PARAMETER_NAMES},
    )
    if cfg.SOLVER.HEAD_LR_MULTIPLIER != 1.0:
        params = split_head_groups(params, model, cfg.SOLVER.HEAD_LR_MULTIPLIER)
    if name == "SGD":
        optim_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        optim_cls, kwargs = torch.optim.AdamW, {}
    return maybe_add_gradient_clipping(cfg, optim_cls)(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs
    )


def split_head_groups(groups, model: torch.nn.Module, lr_multiplier: float):
    """Split each parameter group into its backbone and non-backbone parameters (Detectron2 merges
    groups with equal hyper-parameters) and multiply the non-backbone ones' lr by ``lr_multiplier``."""
    backbone = {id(p) for p in getattr(model, "backbone", torch.nn.Module()).parameters()}
    split = []
    for group in groups:
        inside = [p for p in group["params"] if id(p) in backbone]
        outside = [p for p in group["params"] if id(p) not in backbone]
        if inside:
            split.append({**group, "params": inside})
        if outside:
            split.append({**group, "params": outside, "lr": group["lr"] * lr_multiplier})
    return split


def effective_warmup_iters(cfg) -> int:
    """The warm-up length the schedule uses: ``min(SOLVER.WARMUP_ITERS, floor(SOLVER.MAX_WARMUP_FRACTION
    * SOLVER.MAX_ITER))``.

    Detectron2's warm-up ramps towards the schedule's value at the *end* of the warm-up, so a
    warm-up as long as the run (e.g. the AdamW recipes' 1500 iterations in a 1000-iteration run)
    ramps towards the poly value 0 and trains at ~0 learning rate. Capping it at a fraction of the
    run keeps short runs real; the paper's schedules (1500 of 40k-160k) are left unchanged.
    """
    max_iter, fraction = cfg.SOLVER.MAX_ITER, cfg.SOLVER.MAX_WARMUP_FRACTION
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be > 0, got {max_iter}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"SOLVER.MAX_WARMUP_FRACTION must be in (0, 1], got {fraction}")
    if cfg.SOLVER.WARMUP_ITERS < 0:
        raise ValueError(f"SOLVER.WARMUP_ITERS must be >= 0, got {cfg.SOLVER.WARMUP_ITERS}")
    # (the epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 at 29)
    return min(int(cfg.SOLVER.WARMUP_ITERS), math.floor(fraction * max_iter + 1e-9))


def _warmup_cfg(cfg):
    """``cfg`` itself when its warm-up is used as it is, else a clone with the effective
    ``SOLVER.WARMUP_ITERS`` (and one warning)."""
    warmup = effective_warmup_iters(cfg)
    if warmup == cfg.SOLVER.WARMUP_ITERS:
        return cfg
    logger.warning(
        "SOLVER.WARMUP_ITERS=%d is more than SOLVER.MAX_WARMUP_FRACTION=%g of SOLVER.MAX_ITER=%d: "
        "warming up over %d iterations instead (a warm-up ramps towards the learning rate at its end; "
        "set SOLVER.WARMUP_ITERS or SOLVER.MAX_WARMUP_FRACTION to choose another)",
        cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_WARMUP_FRACTION, cfg.SOLVER.MAX_ITER, warmup,
    )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.WARMUP_ITERS = warmup
    return cfg


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """``WarmupPolyLR``: lr = base_lr * (1 - iter / MAX_ITER) ** POLY_LR_POWER after a warm-up of
    ``SOLVER.WARMUP_ITERS``; Detectron2's own schedules for any other ``LR_SCHEDULER_NAME``.
    For every schedule the warm-up is capped at ``SOLVER.MAX_WARMUP_FRACTION`` of the run
    (:func:`effective_warmup_iters`), with a warning when that changes it.
    The returned scheduler's state is part of every checkpoint, so ``--resume`` continues it.
    """
    cfg = _warmup_cfg(cfg)
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    sched = WarmupParamScheduler(
        PolynomialDecayParamScheduler(1.0, cfg.SOLVER.POLY_LR_POWER),
        cfg.SOLVER.WARMUP_FACTOR,
        cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
