"""Configuration keys of the trainer, its train loop and hooks; applied by ``add_protoseg_config``."""
import re

from ..config_checks import Integer, Key, Matches, add_keys, declare
from ..evaluation.report import SUMMARY_METRICS

__all__ = ["KEYS", "add_engine_config"]

#: a metric of the evaluator as the trainer's storage names it: "sem_seg/<metric>" (with several
#: test datasets "<dataset>/sem_seg/<metric>"), the metric a summary one or a class's IoU / ACC
METRIC_PATTERN = r"(?:[^/]+/)?sem_seg/(?:{}|(?:IoU|ACC)-.+)".format("|".join(map(re.escape, SUMMARY_METRICS)))

KEYS = declare(__name__, [
    Key("SOLVER.BEST_CHECKPOINT_METRIC", "sem_seg/mIoU",
        Matches(f"|{METRIC_PATTERN}", f"\"\" or \"sem_seg/<metric>\", <metric> one of "
                                      f"{', '.join(SUMMARY_METRICS)}, IoU-<class>, ACC-<class>"),
        "Metric that selects the best checkpoint (model_best.pth) at each evaluation (the highest is kept); "
        "\"\" disables."),
    Key("SOLVER.NONFINITE_SKIP_LIMIT", 10, Integer(ge=0),
        "A step whose loss is NaN/Inf is skipped (parameters, optimizer state and prototypes left unchanged, "
        "a warning logged); training stops with FloatingPointError after this many consecutive such steps. "
        "0: stop at the first (Detectron2's behaviour)."),
    Key("MODEL.PROTOSEG.SYNC_CHECK_PERIOD", 100, Integer(ge=0),
        "Multi-process training: every SYNC_CHECK_PERIOD iterations, check that the prototypes are "
        "bit-identical on all ranks (stop with an error if not). 0 disables the check."),
])


def add_engine_config(cfg):
    """Add the trainer's keys to ``cfg`` in place."""
    add_keys(cfg, KEYS)
