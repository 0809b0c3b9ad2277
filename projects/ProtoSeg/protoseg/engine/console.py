"""What a run prints: a console (and ``log.txt``) a person can read.

:func:`setup_run` is Detectron2's ``default_setup`` (output dir, loggers, ``config.yaml``, seed,
cudnn) with a summary in a few lines where Detectron2 logs the whole environment and config:
:func:`environment_summary` (python, torch, detectron2, device), :func:`config_summary` (model,
data, schedule, precision, output, test protocol; the full config stays in
``OUTPUT_DIR/config.yaml``, and is logged as well with ``print_config``). :func:`model_summary` is
the one line that replaces the printed module tree. Log filters make Detectron2's evaluation result
dict plain numbers and put a DataLoader worker's own error first; :func:`run_reporting_worker_errors`
does the same on stderr for whoever launched the run. (Known-harmless third-party warnings are
filtered when ``protoseg`` is imported: :func:`protoseg.filter_known_warnings`.)
"""
import importlib.util
import logging
import os
import platform
import re
import sys
from collections.abc import Mapping
from typing import Optional, Sequence

import torch

from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..checkpoint import DiskFullError
from ..evaluation.report import format_summary_metrics
from ..modeling.parameter_count import parameter_counts
from ..solver import effective_warmup_iters
from .hooks import prototype_memories

__all__ = [
    "setup_run",
    "environment_summary",
    "config_summary",
    "model_summary",
    "worker_error_message",
    "run_reporting_worker_errors",
    "install_log_filters",
]

logger = logging.getLogger("protoseg")

# ---- start of a run ---------------------------------------------------------------------------


def setup_run(cfg, args, *, print_config: bool = False) -> None:
    """Detectron2's ``default_setup`` (v0.6) for a frozen ``cfg``, with a readable log.

    Creates ``cfg.OUTPUT_DIR``, sets up the detectron2 / fvcore / protoseg loggers (console on the
    main process, ``OUTPUT_DIR/log.txt`` and ``log.txt.rank<N>``), logs the environment and the
    config summary, writes the full config to ``OUTPUT_DIR/config.yaml`` (main process), seeds
    every RNG with ``cfg.SEED + rank`` (random if ``SEED`` < 0) and sets ``cudnn.benchmark`` from
    ``CUDNN_BENCHMARK`` for training. The full config is logged too with ``print_config``; no
    message carries terminal escape codes (Detectron2 colours the config dump for the terminal,
    and its file handler writes the codes into ``log.txt``).
    """
    output_dir, rank = cfg.OUTPUT_DIR, comm.get_rank()
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    for name in ("fvcore", "detectron2", "protoseg"):
        setup_logger(output_dir, distributed_rank=rank, name=name)
    install_log_filters()
    logger.info(environment_summary(cfg.MODEL.DEVICE))
    logger.info(config_summary(cfg, getattr(args, "config_file", ""), getattr(args, "opts", ())))
    logger.info("Command line arguments: %s", args)
    if comm.is_main_process() and output_dir:
        with PathManager.open(os.path.join(output_dir, "config.yaml"), "w") as f:
            f.write(cfg.dump())
    if print_config:
        logger.info("Full config:\n%s", cfg.dump())
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def environment_summary(device: str = "cpu") -> str:
    """Two lines: versions (python, torch, torchvision, detectron2, numpy) and the device and
    processes. Detectron2's ``collect_env_info`` (a table and torch's multi-kilobyte build
    settings) is ``python -m detectron2.utils.collect_env``."""
    import detectron2
    import numpy
    import torchvision

    versions = (
        f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"detectron2 {detectron2.__version__}{_detectron2_build()}, numpy {numpy.__version__}"
    )
    world = comm.get_world_size()
    processes = f"process {comm.get_rank()} of {world}" if world > 1 else "1 process"
    return f"Environment: {versions}\nDevice: {_device_text(device)}; {processes}"


def _detectron2_build() -> str:
    spec = importlib.util.find_spec("detectron2._C")
    if spec is None or (spec.origin or "").endswith(".py"):
        return " (pure Python, no compiled ops)"
    return ""


def _device_text(device: str) -> str:
    if not torch.cuda.is_available():
        return f"{device}, {_n(torch.get_num_threads(), 'thread')} (no CUDA device)"
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return (
        f"{device}; {_n(torch.cuda.device_count(), 'GPU')} {', '.join(names)}; CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}"
    )


# ---- the config in a few lines ----------------------------------------------------------------


def config_summary(cfg, config_file: str = "", overrides: Sequence[str] = ()) -> str:
    """The run in a few lines: config file and command-line overrides, model, data, schedule,
    precision and device, output, test protocol (see ``OUTPUT_DIR/config.yaml`` for every key)."""
    rows = [
        ("config", (config_file or "(none)") + (f" with {' '.join(map(str, overrides))}" if overrides else "")),
        ("model", _model_text(cfg)),
        ("data", _data_text(cfg)),
        ("schedule", _schedule_text(cfg)),
        ("precision", f"{'AMP (mixed)' if cfg.SOLVER.AMP.ENABLED else 'fp32'} on {cfg.MODEL.DEVICE}"),
        ("output", f"{cfg.OUTPUT_DIR or '(none)'} (checkpoint every {cfg.SOLVER.CHECKPOINT_PERIOD} iterations)"),
        ("test", _test_text(cfg)),
    ]
    width = max(len(k) for k, _ in rows)
    full = os.path.join(cfg.OUTPUT_DIR, "config.yaml") if cfg.OUTPUT_DIR else "not written"
    lines = [f"Run configuration (every key: {full}; --print-config logs it here):"]
    return "\n".join(lines + [f"  {k.ljust(width)}  {v}" for k, v in rows])


def _backbone_text(cfg) -> str:
    """The project's backbones by their usual names (ResNet-101-D8, MiT-B4, ...); others by builder."""
    m, name = cfg.MODEL, cfg.MODEL.BACKBONE.NAME
    described = {
        "build_dilated_resnet_backbone": lambda: f"ResNet-{m.RESNETS.DEPTH}-D{32 // m.RESNETS.RES5_DILATION}",
        "build_mit_backbone": lambda: f"MiT-{m.MIT.VARIANT.upper()}",
        "build_hrnet_backbone": lambda: f"HRNetV2-W{m.HRNET.WIDTH}",
        "build_swin_backbone": lambda: f"Swin C={m.SWIN.EMBED_DIM} depths {list(m.SWIN.DEPTHS)}",
    }
    return described[name]() if name in described else name


def _model_text(cfg) -> str:
    head = cfg.MODEL.SEM_SEG_HEAD
    k = cfg.MODEL.PROTOSEG.NUM_PROTOTYPES if head.NAME == "ProtoSegHead" else cfg.MODEL.PARAMETRIC.NUM_PROTOTYPES
    weights = cfg.MODEL.WEIGHTS or "none (random initialisation)"
    return (
        f"{cfg.MODEL.META_ARCHITECTURE}: backbone {_backbone_text(cfg)}, decoder {head.DECODER_NAME}, "
        f"head {head.NAME} (C={head.NUM_CLASSES} classes, K={k} per class); weights {weights}"
    )


def _data_text(cfg) -> str:
    world = comm.get_world_size()
    crop = cfg.INPUT.CROP
    crop_text = f"crop {crop.SIZE[1]}x{crop.SIZE[0]} ({crop.TYPE})" if crop.ENABLED else "no crop"
    return (
        f"train {', '.join(cfg.DATASETS.TRAIN) or '-'}; test {', '.join(cfg.DATASETS.TEST) or '-'}; batch "
        f"{cfg.SOLVER.IMS_PER_BATCH} ({cfg.SOLVER.IMS_PER_BATCH // world} per process), {crop_text}, "
        f"{_n(cfg.DATALOADER.NUM_WORKERS, 'DataLoader worker')} per process"
    )


def _schedule_text(cfg) -> str:
    s = cfg.SOLVER
    optimizer = f"{s.OPTIMIZER} lr {s.BASE_LR:g}, weight decay {s.WEIGHT_DECAY:g}"
    if s.OPTIMIZER.upper() == "SGD":
        optimizer += f", momentum {s.MOMENTUM:g}"
    schedule = s.LR_SCHEDULER_NAME + (f" (power {s.POLY_LR_POWER:g})" if s.LR_SCHEDULER_NAME == "WarmupPolyLR" else "")
    warmup = effective_warmup_iters(cfg)
    warmup_text = f"warm-up {_n(warmup, 'iteration')} ({s.WARMUP_METHOD})"
    if warmup != s.WARMUP_ITERS:
        warmup_text += f", SOLVER.WARMUP_ITERS {s.WARMUP_ITERS} capped at {s.MAX_WARMUP_FRACTION:g} of the run"
    return f"{s.MAX_ITER} iterations, {optimizer}, {schedule}, {warmup_text}"


def _test_text(cfg) -> str:
    t = cfg.TEST
    size = "as is"
    if cfg.INPUT.MIN_SIZE_TEST:
        size = f"short side {cfg.INPUT.MIN_SIZE_TEST} (max {cfg.INPUT.MAX_SIZE_TEST})"
    window = t.SLIDING_WINDOW
    inference = (f"sliding window {window.SIZE[1]}x{window.SIZE[0]} stride {window.STRIDE[1]}x{window.STRIDE[0]}"
                 if window.ENABLED else "whole image")
    if t.AUG.ENABLED:
        inference += f", TTA short sides {list(t.AUG.MIN_SIZES)}{' + flip' if t.AUG.FLIP else ''}"
    when = f"every {t.EVAL_PERIOD} iterations and at the end" if t.EVAL_PERIOD > 0 else "at the end"
    return f"{when}: resize {size}, {inference}"


# ---- the model in one line -------------------------------------------------------------------


def model_summary(model: torch.nn.Module) -> str:
    """One line: learnable parameters (by part), frozen parameters, buffer numbers and the
    classifier's C x K x D (prototypes: a buffer; parametric: a learnable 1x1 conv)."""
    model = getattr(model, "module", model)
    counts = parameter_counts(model)
    parts = ", ".join(f"{k.split('/', 1)[1]} {_count(v)}" for k, v in counts.items() if k.startswith("learnable/"))
    buffers = sum(b.numel() for b in model.buffers())
    return (
        f"Model {type(model).__name__}: {_count(counts['learnable'])} learnable parameters ({parts}), "
        f"{_count(counts['frozen'])} frozen, {_count(buffers)} buffer values; {_classifier_text(model)} "
        f"(--print-model logs the modules)"
    )


def _classifier_text(model: torch.nn.Module) -> str:
    memories = prototype_memories(model)
    if memories:
        m = memories[0]
        return f"prototypes C x K x D = {m.num_classes} x {m.num_prototypes} x {m.dim}"
    head = getattr(model, "sem_seg_head", None)
    classifier = getattr(head, "classifier", None)
    if isinstance(classifier, torch.nn.Conv2d):
        k = getattr(head, "num_prototypes", 1)
        return f"classifier C x K x D = {classifier.out_channels // k} x {k} x {classifier.in_channels}"
    return "no classifier found"


def _n(count: int, noun: str) -> str:
    """1 thread / 2 threads."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _count(n: int) -> str:
    """12 / 45.6k / 2.87M."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


# ---- errors of DataLoader workers --------------------------------------------------------------

#: torch's message for an error re-raised from a DataLoader worker (torch._utils.ExceptionWrapper)
_WORKER_ERROR = re.compile(
    r"Caught (?P<type>\S+) (?P<where>in DataLoader worker process \d+)\.\nOriginal (?P<tb>.*)", re.S
)


def worker_error_message(exc: BaseException) -> Optional[str]:
    """For an error that torch re-raised from a DataLoader worker, whose message is "Caught
    LabelMapError in DataLoader worker process 0.\\nOriginal Traceback ...": the worker's own
    error, as its traceback ends ("LabelMapError: label map ... has id(s) [9] ..."). None for any
    other exception."""
    match = _WORKER_ERROR.match(str(exc))
    if match is None:
        return None
    tb, cls = match["tb"].rstrip("\n"), type(exc)
    qualified = cls.__qualname__  # as the traceback module names it
    if cls.__module__ not in ("builtins", "__main__"):
        qualified = f"{cls.__module__}.{qualified}"
    start = tb.rfind("\n" + qualified)  # the last exception line of the traceback (chained causes come first)
    if start < 0:
        return tb.splitlines()[-1]
    return cls.__name__ + tb[start + 1 + len(qualified):]


def _worker_of(exc: BaseException) -> str:
    return _WORKER_ERROR.match(str(exc))["where"]


def run_reporting_worker_errors(func, *args):
    """``func(*args)``. An error re-raised from a DataLoader worker is reported first on stderr by
    its own message (:func:`worker_error_message`), then propagates unchanged: its traceback,
    the worker's included, follows. The launcher runs every process's main function through it."""
    try:
        return func(*args)
    except Exception as e:
        message = worker_error_message(e)
        if message is not None:
            print(f"{message}\n(raised {_worker_of(e)}; the full traceback follows)", file=sys.stderr, flush=True)
        raise


# ---- log filters ----------------------------------------------------------------------------


class _PlainResults(logging.Filter):
    """Detectron2's ``SemSegEvaluator.evaluate`` logs its result dict as is (``OrderedDict`` and
    ``np.float64`` reprs of every per-class value): log the main metrics as plain numbers instead
    (the per-class values follow in the table of ``Trainer.test``)."""

    def filter(self, record):
        if isinstance(record.msg, Mapping) and isinstance(record.msg.get("sem_seg"), Mapping):
            record.msg, record.args = f"sem_seg: {format_summary_metrics(record.msg['sem_seg'])}", ()
        return True


class _ErrorFirst(logging.Filter):
    """Detectron2's "Exception during training:" (with the traceback) names the error only at the
    end of the traceback: append it to the message line, for the errors whose own message says
    what happened and what to do: a DataLoader worker's error (which torch reports last in its
    "Caught ... in DataLoader worker process N" traceback) and a checkpoint save that ran out of
    disk space."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        message = worker_error_message(exc) if exc is not None else None
        if message is not None:
            record.msg, record.args = f"{record.getMessage()} {message} (raised {_worker_of(exc)})", ()
        elif isinstance(exc, DiskFullError):
            record.msg, record.args = f"{record.getMessage()} {exc.strerror}", ()
        return True


_LOG_FILTERS = {
    "detectron2.evaluation.sem_seg_evaluation": _PlainResults(),
    "detectron2.engine.train_loop": _ErrorFirst(),
}


def install_log_filters() -> None:
    """Attach :data:`_LOG_FILTERS` to their loggers (idempotent)."""
    for name, log_filter in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(log_filter)
