"""The training step: Detectron2's ``SimpleTrainer`` / ``AMPTrainer`` step, except that a step
whose loss is NaN or Inf is skipped with a warning instead of ending the run.

Detectron2 raises ``FloatingPointError`` on the first non-finite loss; on a days-long run one bad
batch (an extreme crop, an overflow under fp16) then costs everything since the last checkpoint.
Here such a step leaves untouched the parameters, the optimizer state, the normalisation statistics
(BatchNorm running mean/var and counters, which the forward of a NaN batch would poison; they are
copied before each forward and put back) and the prototypes: the model's prototype memories (as
``model.prototype_memories()`` lists them, the interface the hooks use too) compute their update in
the forward without writing it (``deferring_updates``), and the update is committed
(``commit_pending_updates``) only once the loss is known to be finite on every process, the same
decision on all ranks, or dropped (``discard_pending_updates``). The step is counted in the ``skipped_nonfinite_steps`` scalar, and training ends with
``FloatingPointError`` only after ``skip_limit`` consecutive non-finite steps, i.e. when training
has really diverged.

Under AMP with a ``GradScaler``, a finite loss whose scaled gradients overflow makes the scaler skip
the optimizer step and lower its scale. The prototype update of such a step is committed: it comes
from a finite forward and does not depend on the gradients, and the overflow says something about
the loss scale, not about the batch (the scaler skips several steps at the start of every run while
it finds its scale). This is also what Detectron2's AMPTrainer and the reference code do, whose
update happens in the forward whatever the scaler does.
"""
import logging
import time
from contextlib import ExitStack
from typing import Dict, List

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .hooks import prototype_memories

__all__ = ["ProtoSegTrainLoop"]

logger = logging.getLogger("protoseg")

class ProtoSegTrainLoop(SimpleTrainer):
    """One training step: forward (under autocast if ``amp``), backward, and the optimizer step
    if the loss is finite on every process.

    Args:
        model, data_loader, optimizer: as :class:`detectron2.engine.SimpleTrainer`.
        amp: mixed precision: autocast on the model's device; on CUDA with a ``GradScaler``
            (Detectron2's AMPTrainer), on CPU with bfloat16 and no scaler.
        skip_limit: consecutive non-finite steps tolerated before ``FloatingPointError``
            (0: raise at the first, Detectron2's behaviour).
    """

    def __init__(self, model, data_loader, optimizer, *, amp: bool = False, skip_limit: int = 10):
        super().__init__(model, data_loader, optimizer)
        self.amp = amp
        self.skip_limit = skip_limit
        self.device_type = next(model.parameters()).device.type
        self.grad_scaler = torch.cuda.amp.GradScaler() if amp and self.device_type == "cuda" else None
        self.consecutive_skips = 0
        self.total_skips = 0
        self.deferring_modules = prototype_memories(model)
        deferred = {id(b) for m in self.deferring_modules for b in m.buffers()}
        # buffers a forward pass updates (BN statistics and counters), grouped by dtype so that a
        # snapshot is one concatenation per dtype; not those of the deferring modules (prototypes)
        self.statistics_buffers: Dict[torch.dtype, List[torch.Tensor]] = {}
        for b in model.buffers():
            if id(b) not in deferred:
                self.statistics_buffers.setdefault(b.dtype, []).append(b)
        if isinstance(model, DistributedDataParallel) and model.device_ids and len(model.device_ids) > 1:
            raise ValueError("one process per device: DDP with several device_ids is not supported")

    def run_step(self):
        assert self.model.training, "model was changed to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        saved_statistics = self._snapshot_statistics()
        amp_dtype = torch.bfloat16 if self.device_type == "cpu" else None
        with ExitStack() as deferring:
            for module in self.deferring_modules:
                deferring.enter_context(module.deferring_updates())
            with torch.autocast(self.device_type, enabled=self.amp, dtype=amp_dtype):
                loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        # Backward on every process even when the loss is not finite: DDP's gradient all-reduce
        # must run on all ranks. The (non-finite) gradients are then simply not applied.
        (self.grad_scaler.scale(losses) if self.grad_scaler is not None else losses).backward()

        if self._finite_everywhere(losses):
            self.consecutive_skips = 0
            for module in self.deferring_modules:
                module.commit_pending_updates()  # also when the grad scaler skips (module docstring)
            self._write_metrics(loss_dict, data_time)
            if self.grad_scaler is not None:
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                self.optimizer.step()
        else:
            self._restore_statistics(saved_statistics)
            for module in self.deferring_modules:
                module.discard_pending_updates()
            self._skip(loss_dict)

    def _snapshot_statistics(self) -> Dict[torch.dtype, torch.Tensor]:
        """The statistics buffers as one flat copy per dtype (a kernel each, not one per buffer)."""
        return {dtype: torch.cat([b.reshape(-1) for b in bufs]) for dtype, bufs in self.statistics_buffers.items()}

    def _restore_statistics(self, saved: Dict[torch.dtype, torch.Tensor]) -> None:
        for dtype, bufs in self.statistics_buffers.items():
            for buffer, value in zip(bufs, saved[dtype].split([b.numel() for b in bufs])):
                buffer.copy_(value.view_as(buffer))

    def _finite_everywhere(self, losses: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (one host sync, as Detectron2's own metric
        writing makes; plus one tiny all-reduce when there are several processes)."""
        finite = torch.isfinite(losses.detach()).to(torch.float32).reshape(1)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item() > 0)

    def _skip(self, loss_dict):
        self.consecutive_skips += 1
        self.total_skips += 1
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        # the storage of the running trainer (under Trainer this loop has none of its own)
        get_event_storage().put_scalar("skipped_nonfinite_steps", self.total_skips, smoothing_hint=False)
        if self.consecutive_skips > self.skip_limit:
            raise FloatingPointError(
                f"loss is not finite for {self.consecutive_skips} consecutive iterations (the last at "
                f"iteration {self.iter}: {values}); training has diverged. Resume from the last checkpoint "
                f"(--resume) with a lower SOLVER.BASE_LR or SOLVER.CLIP_GRADIENTS, or raise "
                f"SOLVER.NONFINITE_SKIP_LIMIT"
            )
        logger.warning(
            "iteration %d: non-finite loss %s (on this or another process); step skipped, parameters, "
            "optimizer state and prototypes unchanged (%d consecutive, limit %d)",
            self.iter, values, self.consecutive_skips, self.skip_limit,
        )

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
