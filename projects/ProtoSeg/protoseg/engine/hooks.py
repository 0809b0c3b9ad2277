"""Trainer hooks of the project."""
import hashlib
import logging

import torch

from detectron2.engine import HookBase
from detectron2.engine.hooks import BestCheckpointer
from detectron2.utils import comm
from detectron2.utils.comm import is_main_process
from detectron2.utils.events import CommonMetricPrinter

__all__ = [
    "BestCheckpointHook",
    "EarlyProgressHook",
    "PrototypeStatisticsHook",
    "PrototypeSyncCheckHook",
    "prototype_fingerprint",
]


def prototype_memories(model):
    """The prototype memories of ``model`` (possibly DDP-wrapped), as the model lists them
    (``model.prototype_memories()``; none for a model without that method)."""
    offer = getattr(getattr(model, "module", model), "prototype_memories", None)
    return list(offer()) if callable(offer) else []


class PrototypeStatisticsHook(HookBase):
    """Writes the prototype statistics of the last iteration (mean within-class prototype cosine,
    share of the prototypes of present classes that received pixels) to the event storage, so they
    reach the console, metrics.json and TensorBoard as ``proto/<name>``.

    The share comes from the step as a device tensor and the cosine is computed from the prototypes
    when read; both are read here, after the step, next to Detectron2's own reading of the losses,
    so the step itself stays free of host syncs and of work that is only logged.
    """

    def __init__(self, period: int = 20):
        self._period = period

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period != 0 and next_iter != self.trainer.max_iter:
            return
        if not is_main_process():
            return
        for memory in prototype_memories(self.trainer.model):
            stats = {f"proto/{k}": float(v) for k, v in memory.latest_statistics.items()}
            if stats:
                self.trainer.storage.put_scalars(**stats, smoothing_hint=False)
                text = "  ".join(f"{k}: {v:.4f}" for k, v in stats.items())
                logging.getLogger("protoseg").info("iter: %d  %s", self.trainer.iter, text)


def prototype_fingerprint(prototypes: torch.Tensor) -> str:
    """SHA-256 of the bytes of a prototype buffer (C, K, D): equal iff bit-identical."""
    return hashlib.sha256(prototypes.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class PrototypeSyncCheckHook(HookBase):
    """Multi-process training: every ``period`` iterations (and at the last one), checks that every
    prototype memory of the model is bit-identical on all ranks, and stops training with an error
    naming the iteration and the ranks if not.

    Detectron2's DDP does not broadcast buffers; the head keeps the prototypes in step by all-reducing
    its update statistics, so a divergence means a bug or a broken process group, and every later
    iteration would train against different prototypes on different GPUs. The check costs one
    device-to-host copy of the buffers and one all-gather of a few hashes per ``period`` iterations.
    """

    def __init__(self, period: int = 100):
        self._period = period

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if comm.get_world_size() == 1 or self._period <= 0:
            return
        if next_iter % self._period != 0 and next_iter != self.trainer.max_iter:
            return
        mine = [prototype_fingerprint(m.prototypes) for m in prototype_memories(self.trainer.model)]
        everyone = comm.all_gather(mine)
        if all(other == everyone[0] for other in everyone):
            level = logging.INFO if next_iter == self.trainer.max_iter else logging.DEBUG
            logging.getLogger("protoseg").log(
                level, "iter: %d  prototypes bit-identical on all %d processes", self.trainer.iter, len(everyone)
            )
        else:
            differing = [rank for rank, other in enumerate(everyone) if other != everyone[0]]
            raise RuntimeError(
                f"prototype memory differs across processes after iteration {self.trainer.iter}: ranks "
                f"{differing} differ from rank 0. The head all-reduces its prototype updates, so this is "
                f"a bug or a broken process group; resume from the last checkpoint (--resume) and report it"
            )


class _UntaggedSaves:
    """A :class:`ProtoSegCheckpointer` whose saves leave ``last_checkpoint`` as it is."""

    def __init__(self, checkpointer):
        self._checkpointer = checkpointer

    def save(self, name, **kwargs):
        self._checkpointer.save(name, tag_last=False, **kwargs)


class BestCheckpointHook(BestCheckpointer):
    """Detectron2's ``BestCheckpointer`` (``model_best.pth`` after each evaluation that improves
    ``val_metric``), except that ``model_best.pth`` is not tagged in ``last_checkpoint``: Detectron2's
    tags it, so that ``--resume`` would continue from the best checkpoint (maybe many iterations
    before the latest one, or after it) instead of the latest."""

    def __init__(self, eval_period: int, checkpointer, val_metric: str, mode: str = "max"):
        super().__init__(eval_period, _UntaggedSaves(checkpointer), val_metric, mode)


class EarlyProgressHook(HookBase):
    """The console's progress line (Detectron2's ``CommonMetricPrinter``: losses, time, lr) also
    after the first iterations (``at``, e.g. 1, 5 and 10): Detectron2's writers print every 20
    iterations, so on slow iterations a run would show nothing for a long while. The console only:
    ``metrics.json`` and TensorBoard keep Detectron2's period. Main process only, as the writers."""

    def __init__(self, max_iter: int, at=(1, 5, 10), period: int = 20):
        self._printer = CommonMetricPrinter(max_iter)
        self._at, self._period = set(at), period

    def after_step(self):
        done = self.trainer.iter + 1
        if done in self._at and done % self._period != 0 and done != self.trainer.max_iter:
            self._printer.write()
