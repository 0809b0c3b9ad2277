"""Trainer hooks of the project."""
import logging

from detectron2.engine import HookBase
from detectron2.utils.comm import is_main_process

__all__ = ["PrototypeStatisticsHook"]


def find_prototype_heads(model):
    """Modules of ``model`` (possibly DDP-wrapped) that keep ``latest_statistics``."""
    return [m for m in model.modules() if hasattr(m, "latest_statistics")]


class PrototypeStatisticsHook(HookBase):
    """Writes the prototype statistics of the last iteration (mean within-class prototype cosine,
    share of the prototypes of present classes that received pixels) to the event storage, so they
    reach the console, metrics.json and TensorBoard as ``proto/<name>``.

    The head computes them as device tensors inside the step; they are read here, after the step,
    next to Detectron2's own reading of the losses, so the step itself stays free of host syncs.
    """

    def __init__(self, period: int = 20):
        self._period = period

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period != 0 and next_iter != self.trainer.max_iter:
            return
        if not is_main_process():
            return
        for head in find_prototype_heads(self.trainer.model):
            stats = {f"proto/{k}": float(v) for k, v in head.latest_statistics.items()}
            if stats:
                self.trainer.storage.put_scalars(**stats, smoothing_hint=False)
                text = "  ".join(f"{k}: {v:.4f}" for k, v in stats.items())
                logging.getLogger("protoseg").info("iter: %d  %s", self.trainer.iter, text)
