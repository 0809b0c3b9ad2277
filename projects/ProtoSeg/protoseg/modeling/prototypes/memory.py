"""The prototype memory: C x K non-learnable prototypes per class, with everything prototype
learning does to them and with them (paper Sec. 3): the pixel-prototype scores, the within-class
online clustering (Eq. 8-10), the momentum update (Eq. 14), synchronised across processes, and the
prototype losses PPC (Eq. 11) and PPD (Eq. 12).

The head calls :meth:`PrototypeMemory.learn` once per training step (and
:meth:`PrototypeMemory.nearest_class_scores` at inference); it knows the embeddings and turns class
scores into logits, the memory knows the prototypes.

The memory is a buffer (C, K, D): it is saved, loaded and resumed with the model, is not in the
optimizer and gets no weight decay. It is written only by :meth:`PrototypeMemory.update` (or, inside
:meth:`PrototypeMemory.deferring_updates`, by :meth:`PrototypeMemory.commit_pending_updates`), under
``torch.no_grad()``, and never with a non-finite value.

Deferred updates: the train loop decides whether a step counts only after its forward (the loss must
be finite on every process), but the update is computed in the forward. Inside
:meth:`~PrototypeMemory.deferring_updates` the update goes to a pending buffer, and the loop then
calls :meth:`~PrototypeMemory.commit_pending_updates` (the step counts) or
:meth:`~PrototypeMemory.discard_pending_updates` (it is skipped). Any module offering these three
methods takes part; see ``engine/train_loop.py``.
"""
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable

from .distances import DISTANCES, pairwise_similarity
from .losses import ppc_loss_from_parts, ppd_loss_from_parts
from .scores import (
    SIMILARITY_PRECISIONS,
    class_maxima,
    nearest_prototype_scores,
    own_class_similarities,
    prototype_scores,
)
from .sinkhorn import sinkhorn_knopp, world_all_reduce
from .triton_scores import triton_available, triton_prototype_scores

__all__ = ["PrototypeMemory", "PrototypeLearning"]

ASSIGNMENTS = ("argmax", "gumbel")
#: MODEL.PROTOSEG.UPDATE_SYNC: how several processes update the prototypes (see PrototypeMemory.update)
UPDATE_SYNCS = ("global", "average")
#: MODEL.PROTOSEG.SCORES_KERNEL: the training step's scores by PyTorch products or Triton kernels
SCORES_KERNELS = ("torch", "triton")


class PrototypeLearning(NamedTuple):
    """What one training step of :meth:`PrototypeMemory.learn` gives the head.

    Attributes:
        class_logits: (N, C) float32 logits of the pixels (the head's ``to_logits`` of the
            nearest-prototype class scores), differentiable with respect to the embeddings; in
            either memory order (see :meth:`PrototypeMemory.learn`).
        losses: {"loss_ppc": lambda_1 PPC, "loss_ppd": lambda_2 PPD}, weighted scalars (zeros
            connected to the graph while the prototypes are frozen).
        targets: (N,) int64 assigned prototype c*K + k of every pixel, -1 where ignored (the PPC /
            PPD targets); None while frozen.
        pixel_counts: (C, K) update pixels each prototype received (global over processes); None
            while frozen.
    """

    class_logits: torch.Tensor
    losses: Dict[str, torch.Tensor]
    targets: Optional[torch.Tensor]
    pixel_counts: Optional[torch.Tensor]


class PrototypeMemory(nn.Module):
    """C x K prototypes of dimension D, with clustering-based assignment, momentum update and the
    prototype losses. Built from a config with ``PrototypeMemory(cfg, dim=D)``."""

    @configurable
    def __init__(
        self,
        num_classes: int,
        num_prototypes: int,
        dim: int,
        *,
        momentum: float = 0.999,
        sinkhorn_iters: int = 3,
        sinkhorn_kappa: float = 0.05,
        assignment: str = "argmax",
        update_from_correct_only: bool = True,
        update_sync: str = "global",
        distance: str = "cosine",
        huber_delta: float = 0.1,
        init_std: float = 0.02,
        ppc_temperature: float = 0.1,
        ppc_weight: float = 0.01,
        ppd_weight: float = 0.01,
        chunk_size: int = 0,
        similarity_precision: str = "float32",
        scores_kernel: str = "torch",
    ):
        """
        Args:
            num_classes, num_prototypes, dim: C, K, D.
            momentum: mu of Eq. 14 (paper 0.999; 0 replaces a prototype by its new centre).
            sinkhorn_iters, sinkhorn_kappa: iterations and epsilon of Algorithm 1 (3, 0.05).
            assignment: "argmax" of the transport plan (paper) or "gumbel": the reference code's
                hard Gumbel-softmax sample (tau 0.5) of the plan, used for the update only.
            update_from_correct_only: update from the pixels the model already classifies
                correctly (reference code; the paper is silent).
            update_sync: with several processes, "global": clustering and update of the global
                batch (all-reduced marginals and sums); "average": the reference code's, each
                process clusters and updates on its own pixels, then the prototypes are averaged
                over processes. See :meth:`update`.
            distance: "cosine" (unit vectors), "euclidean" or "huber" (Table 5d).
            huber_delta: delta of the Huberized distance.
            init_std: std of the truncated-normal initialisation (reference), before l2-norm.
            ppc_temperature, ppc_weight, ppd_weight: tau of PPC (Eq. 11), lambda_1 and lambda_2.
            chunk_size: pixels per chunk of the N x C*K similarities (0: one matrix), see
                :func:`~protoseg.modeling.prototypes.scores.prototype_scores`.
            similarity_precision: of the cosine products, one of ``SIMILARITY_PRECISIONS``.
            scores_kernel: "torch" or "triton" (:mod:`.triton_scores`, cosine only), the training
                step's scores.
        """
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"MODEL.PROTOSEG.DISTANCE must be one of {DISTANCES}, got {distance!r}")
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"MODEL.PROTOSEG.ASSIGNMENT must be one of {ASSIGNMENTS}, got {assignment!r}")
        if update_sync not in UPDATE_SYNCS:
            raise ValueError(f"MODEL.PROTOSEG.UPDATE_SYNC must be one of {UPDATE_SYNCS}, got {update_sync!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MODEL.PROTOSEG.MOMENTUM must be in [0, 1], got {momentum}")
        if similarity_precision not in SIMILARITY_PRECISIONS:
            raise ValueError(
                f"MODEL.PROTOSEG.SIMILARITY_PRECISION must be one of {SIMILARITY_PRECISIONS}, "
                f"got {similarity_precision!r}"
            )
        if scores_kernel not in SCORES_KERNELS:
            raise ValueError(f"MODEL.PROTOSEG.SCORES_KERNEL must be one of {SCORES_KERNELS}, got {scores_kernel!r}")
        if scores_kernel == "triton" and distance != "cosine":
            raise ValueError(f"MODEL.PROTOSEG.SCORES_KERNEL triton computes cosine similarities; "
                             f"MODEL.PROTOSEG.DISTANCE is {distance!r}")
        if scores_kernel == "triton" and not triton_available():
            raise ValueError("MODEL.PROTOSEG.SCORES_KERNEL triton needs the triton package "
                             "(pip install triton; Linux), which is not importable")
        self.num_classes, self.num_prototypes, self.dim = num_classes, num_prototypes, dim
        self.momentum = momentum
        self.sinkhorn_iters, self.sinkhorn_kappa = sinkhorn_iters, sinkhorn_kappa
        self.assignment = assignment
        self.update_from_correct_only = update_from_correct_only
        self.update_sync = update_sync
        self.distance, self.huber_delta = distance, huber_delta
        self.ppc_temperature, self.ppc_weight, self.ppd_weight = ppc_temperature, ppc_weight, ppd_weight
        self.chunk_size, self.similarity_precision = chunk_size, similarity_precision
        self.scores_kernel = scores_kernel
        protos = torch.empty(num_classes, num_prototypes, dim)
        nn.init.trunc_normal_(protos, std=init_std)
        if self.normalized:
            protos = F.normalize(protos, dim=-1)
        self.register_buffer("prototypes", protos)
        # whether the prototypes are known to be the same on every process (see broadcast_)
        self.synchronized = False
        self._latest_pixel_counts: Optional[torch.Tensor] = None
        # inside deferring_updates(): update() leaves (prototypes, pixel counts) here
        self._deferring = False
        self._pending: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @classmethod
    def from_config(cls, cfg, dim: int):
        """The memory of ``cfg`` (``MODEL.PROTOSEG`` and ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``) for
        embeddings of ``dim`` channels."""
        p = cfg.MODEL.PROTOSEG
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "num_prototypes": p.NUM_PROTOTYPES,
            "dim": dim,
            "momentum": p.MOMENTUM,
            "sinkhorn_iters": p.SINKHORN_ITERS,
            "sinkhorn_kappa": p.SINKHORN_KAPPA,
            "assignment": p.ASSIGNMENT,
            "update_from_correct_only": p.UPDATE_FROM_CORRECT_ONLY,
            "update_sync": p.UPDATE_SYNC,
            "distance": p.DISTANCE,
            "huber_delta": p.HUBER_DELTA,
            "init_std": p.INIT_STD,
            "ppc_temperature": p.PPC_TEMPERATURE,
            "ppc_weight": p.PPC_WEIGHT,
            "ppd_weight": p.PPD_WEIGHT,
            "chunk_size": p.CHUNK_SIZE,
            "similarity_precision": p.SIMILARITY_PRECISION,
            "scores_kernel": p.SCORES_KERNEL,
        }

    def learn(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        to_logits: Callable[[torch.Tensor], torch.Tensor],
        *,
        frozen: bool = False,
    ) -> PrototypeLearning:
        """One training step of prototype learning: class logits, then (unless ``frozen``) the
        clustering and momentum update of the prototypes (no gradient; written at once, or pending
        inside :meth:`deferring_updates`) and the PPC / PPD losses.

        Args:
            x: (N, D) pixel embeddings (unit vectors for cosine), N = B*h*w in (b, y, x) order.
            labels: (N,) int64 pixel classes at the embeddings' resolution; anything outside
                [0, C) is ignored.
            to_logits: the head's map from (N, C) nearest-prototype similarities to logits (its
                LayerNorm over classes or 1/T); the update's correct-only rule reads these logits.
            frozen: the head's prototype warm-up: logits only, prototypes unchanged, zero losses.
        Returns:
            :class:`PrototypeLearning`. The logits are (N, C) float32; in the frozen step they are
            the transpose of a contiguous (C, N) tensor (see :func:`nearest_prototype_scores`).
        """
        if not self.synchronized:
            self.broadcast_()  # first training step: one set of prototypes on all ranks
        if frozen:
            logits = to_logits(self.nearest_class_scores(x))
            zero = logits.sum() * 0.0
            return PrototypeLearning(logits, {"loss_ppc": zero, "loss_ppd": zero}, None, None)
        if self.scores_kernel == "triton":
            scores, own, lse = triton_prototype_scores(
                x, self.prototypes, labels, self.ppc_temperature, self.similarity_precision
            )
        else:
            scores, own, lse = prototype_scores(
                x, self.prototypes, labels, self.ppc_temperature, self.distance, self.huber_delta,
                self.chunk_size, self.similarity_precision,
            )
        logits = to_logits(scores)
        targets, pixel_counts = self.cluster_and_update(x, own.detach(), logits.detach(), labels)
        valid = targets >= 0
        # the target is one of the pixel's own-class prototypes: its similarity is a column of own
        assigned = torch.where(valid, targets - labels * self.num_prototypes, torch.zeros_like(labels))
        target_sim = own.gather(1, assigned[:, None]).squeeze(1)  # (N,)
        losses = {
            "loss_ppc": self.ppc_weight * ppc_loss_from_parts(lse, target_sim, valid, self.ppc_temperature),
            "loss_ppd": self.ppd_weight * ppd_loss_from_parts(target_sim, valid, self.distance),
        }
        return PrototypeLearning(logits, losses, targets, pixel_counts)

    @property
    def latest_statistics(self) -> Dict[str, torch.Tensor]:
        """Statistics of the latest prototype update (0-dim tensors; empty before the first):
        "used_share" of the update's pixel counts and "intra_class_cosine" of the current
        prototypes, computed here when read (by a trainer hook) rather than in every step."""
        if self._latest_pixel_counts is None:
            return {}
        return {
            "used_share": self.used_share(self._latest_pixel_counts),
            "intra_class_cosine": self.intra_class_cosine(),
        }

    @torch.no_grad()
    def broadcast_(self, src: int = 0) -> None:
        """Copy rank ``src``'s prototypes to every process (a no-op without a process group).

        Needed once at the start of multi-process training: each rank initialises its prototypes
        with its own random seed, and DistributedDataParallel with ``broadcast_buffers=False``
        (Detectron2's setting) does not copy buffers at construction in current PyTorch. After it,
        the all-reduced updates keep the ranks bit-identical. Collective: every rank must call it.
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(self.prototypes, src)
        self.synchronized = True

    @property
    def normalized(self) -> bool:
        """Whether embeddings and prototypes live on the unit sphere (cosine distance)."""
        return self.distance == "cosine"

    def extra_repr(self) -> str:
        return (
            f"C={self.num_classes}, K={self.num_prototypes}, D={self.dim}, momentum={self.momentum}, "
            f"distance={self.distance}, assignment={self.assignment}"
        )

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 5-6 ingredients: similarity of every pixel to every prototype.

        Args:
            x: (N, D) pixel embeddings (unit vectors for cosine).
        Returns:
            (N, C*K) similarities; column c*K + k is prototype k of class c.
        """
        protos = self.prototypes.view(-1, self.dim).to(x.dtype)
        if torch.is_grad_enabled() and protos.data_ptr() == self.prototypes.data_ptr():
            # Autograd keeps the prototypes for the backward of x; update() then writes them in place.
            protos = protos.clone()
        return pairwise_similarity(x, protos, self.distance, self.huber_delta)

    def class_scores(self, proto_logits: torch.Tensor) -> torch.Tensor:
        """Eq. 6: (N, C*K) similarities (:meth:`similarity`) -> (N, C) similarity to each class's
        nearest prototype."""
        return class_maxima(proto_logits, self.num_classes)

    def nearest_class_scores(
        self, x: torch.Tensor, chunk_size: Optional[int] = None, precision: Optional[str] = None
    ) -> torch.Tensor:
        """Eq. 5-6 at inference: (N, D) embeddings -> (N, C) similarity to each class's nearest
        prototype, without the (N, C*K) matrix in class-major order, ``chunk_size`` pixels at a
        time and the product in ``precision`` (default: the memory's own; see
        :func:`~protoseg.modeling.prototypes.scores.nearest_prototype_scores`)."""
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        precision = self.similarity_precision if precision is None else precision
        return nearest_prototype_scores(x, self.prototypes, self.distance, self.huber_delta, chunk_size, precision)

    def nearest_similarity(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings -> (N,) similarity to the nearest prototype of any class,
        max_c max_k (the unknown score's basis; :meth:`nearest_class_scores` over the classes)."""
        return self.nearest_class_scores(x).amax(dim=1)

    @torch.no_grad()
    def assign(self, own_scores: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cluster each class's pixels onto its K prototypes (Sinkhorn-Knopp, all classes at once).

        Args:
            own_scores: (N, K) similarity of each pixel to the K prototypes of its own class.
            labels: (N,) int64 pixel classes; anything outside [0, C) is ignored.
        Returns:
            targets: (N,) int64 c*K + k of the assigned prototype (argmax of the plan), -1 where
                ignored: the PPC/PPD targets.
            update_targets: (N,) int64 prototype index used by the update: the same as targets
                for "argmax", a Gumbel sample for "gumbel"; -1 where ignored.
        """
        C, K = self.num_classes, self.num_prototypes
        valid = (labels >= 0) & (labels < C)
        # Ignored pixels form an extra class C: its clustering is computed and thrown away, which
        # avoids a data-dependent selection (a host sync) and keeps collectives identical on all ranks.
        cluster_labels = torch.where(valid, labels, torch.full_like(labels, C))
        if K == 1:
            assigned = torch.zeros_like(labels)
            sampled = assigned
        else:
            plan = sinkhorn_knopp(
                own_scores, cluster_labels, C + 1, self.sinkhorn_iters, self.sinkhorn_kappa,
                distributed=self.update_sync == "global",
            )
            assigned = plan.argmax(dim=1)
            if self.assignment == "gumbel":
                sampled = F.gumbel_softmax(plan, tau=0.5, hard=True).argmax(dim=1)
            else:
                sampled = assigned
        minus_one = torch.full_like(labels, -1)
        targets = torch.where(valid, labels * K + assigned, minus_one)
        if sampled is assigned:
            return targets, targets
        return targets, torch.where(valid, labels * K + sampled, minus_one)

    def own_class_scores(self, proto_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, C*K) similarities, (N,) labels -> (N, K) similarities to the own class's prototypes
        (labels outside [0, C) give meaningless rows)."""
        return own_class_similarities(proto_logits, labels.clamp(0, self.num_classes - 1), self.num_classes)

    @torch.no_grad()
    def cluster_and_update(
        self, x: torch.Tensor, own_scores: torch.Tensor, class_scores: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One iteration of prototype learning (Sec. 3.3): cluster, then update the memory.

        Args:
            x: (N, D) pixel embeddings. own_scores: (N, K) their similarities to the prototypes
            of their own class, before the update. class_scores: (N, C) the model's class scores
            (for the correct-only rule). labels: (N,) int64, anything outside [0, C) ignored.
        Returns:
            (PPC/PPD targets (N,) with -1 for ignored pixels, (C, K) pixel counts of :meth:`update`).
        """
        targets, update_targets = self.assign(own_scores, labels)
        if self.update_from_correct_only:
            correct = class_scores.argmax(dim=1) == labels
            update_targets = torch.where(correct, update_targets, torch.full_like(update_targets, -1))
        return targets, self.update(x, update_targets)

    @torch.no_grad()
    def update(self, x: torch.Tensor, update_targets: torch.Tensor) -> torch.Tensor:
        """Momentum update of every prototype that received pixels (Eq. 14), synchronised.

        For prototype (c, k) with assigned pixel embeddings {x_i}: m = l2norm(sum_i x_i) (cosine;
        the plain mean for the unnormalised distances), p <- mu * p + (1 - mu) * m, then every
        prototype is l2-normalised (cosine). Prototypes with no pixel and classes absent from the
        batch are unchanged. With several processes, by ``update_sync``:

        - "global": the embedding sums and counts are all-reduced before the single update, so every
          rank computes the prototypes of the global batch;
        - "average" (reference code): each rank updates from its own pixels, then the prototypes are
          averaged over ranks and l2-normalised (cosine). The reference stores the mean as it is and
          l2-normalises the prototypes at the start of every forward: the same prototypes in use.

        The result is written to the buffer, or kept pending inside :meth:`deferring_updates`.

        Args:
            x: (N, D) pixel embeddings (detached inside).
            update_targets: (N,) int64 prototype index c*K + k, -1 for pixels that do not update.
        Returns:
            (C, K) update pixels each prototype received (global over ranks), a device tensor (no
            host sync); :meth:`used_share` and :meth:`intra_class_cosine` turn it and the
            prototypes into the logged statistics when they are read.
        """
        C, K, D = self.num_classes, self.num_prototypes, self.dim
        with torch.autocast(device_type=x.device.type, enabled=False):
            sums, counts = self._assigned_sums(x.detach().float(), update_targets, self.update_sync == "global")
            new = self._momentum_step(sums, counts)
            if self.update_sync == "average":
                new, counts = self._average_over_processes(new, counts)
        new, counts = new.view(C, K, D), counts.view(C, K)
        if self._deferring:
            self._pending = (new, counts)
        else:
            self._write(new, counts)
        return counts

    def _assigned_sums(
        self, x: torch.Tensor, update_targets: torch.Tensor, all_processes: bool
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, D) float32 embeddings, (N,) targets -> (C*K, D) sums and (C*K,) counts of the pixels
        assigned to each prototype, of all processes (one all-reduce) when ``all_processes``."""
        C, K, D = self.num_classes, self.num_prototypes, self.dim
        slot = torch.where(update_targets >= 0, update_targets, torch.full_like(update_targets, C * K))
        # One buffer for one all-reduce: the sums (C*K + 1, D) then the counts (C*K + 1,), each
        # contiguous (index_add_ into a strided view is much slower on CPU).
        stats = x.new_zeros((C * K + 1) * (D + 1))
        sums = stats[: (C * K + 1) * D].view(C * K + 1, D).index_add_(0, slot, x)
        counts = stats[(C * K + 1) * D :].index_add_(0, slot, torch.ones_like(x[:, 0]))
        if all_processes:
            world_all_reduce(stats)
        return sums[: C * K], counts[: C * K]

    def _momentum_step(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Eq. 14 from (C*K, D) sums and (C*K,) counts -> (C*K, D) float32 new prototypes; the
        current ones where a prototype has no pixel or the new value is not finite."""
        C, K, D = self.num_classes, self.num_prototypes, self.dim
        if self.normalized:
            centres = F.normalize(sums, dim=1)
        else:
            centres = sums / counts.clamp_min(1.0)[:, None]
        old = self.prototypes.view(C * K, D).float()
        new = torch.lerp(centres, old, self.momentum)  # mu * old + (1 - mu) * centre
        if self.normalized:
            new = F.normalize(new, dim=1)
        # a row sum is finite iff the row is (for the magnitudes of embeddings)
        keep = (counts > 0) & torch.isfinite(new.sum(dim=1))
        return torch.where(keep[:, None], new, old)

    def _average_over_processes(self, new: torch.Tensor, counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The "average" sync: (C*K, D) this rank's new prototypes and (C*K,) its counts -> their mean
        over ranks (l2-normalised for cosine) and the counts summed over ranks (one all-reduce)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return new, counts
        rows = new.shape[0]
        stats = world_all_reduce(torch.cat([new.reshape(-1), counts]))
        mean = stats[: new.numel()].view_as(new).div_(dist.get_world_size())
        return (F.normalize(mean, dim=1) if self.normalized else mean), stats[new.numel() :].view(rows)

    def _write(self, prototypes: torch.Tensor, pixel_counts: torch.Tensor) -> None:
        """Store (C, K, D) prototypes and the (C, K) counts of the update that produced them."""
        self.prototypes.copy_(prototypes)
        self._latest_pixel_counts = pixel_counts

    @contextmanager
    def deferring_updates(self) -> Iterator[None]:
        """Within: :meth:`update` keeps its result pending instead of writing the buffer (so a
        forward leaves the prototypes as they are); :meth:`commit_pending_updates` writes it,
        :meth:`discard_pending_updates` drops it. The train loop runs each forward inside."""
        deferring, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = deferring

    @torch.no_grad()
    def commit_pending_updates(self) -> None:
        """Write the update computed inside :meth:`deferring_updates`, if any (the step counts)."""
        if self._pending is not None:
            self._write(*self._pending)
            self._pending = None

    def discard_pending_updates(self) -> None:
        """Drop the update computed inside :meth:`deferring_updates`, if any (the step is skipped):
        prototypes and statistics stay those of the last committed update."""
        self._pending = None

    @staticmethod
    def used_share(pixel_counts: torch.Tensor) -> torch.Tensor:
        """Share of the prototypes of the classes that had update pixels which received at least
        one pixel: (C, K) counts of :meth:`update` -> 0-dim tensor (1 = every prototype in use)."""
        present = (pixel_counts.sum(1) > 0).float()
        used = (pixel_counts > 0).float().sum(1) * present
        return used.sum() / (present.sum() * pixel_counts.shape[1]).clamp_min(1)

    @torch.no_grad()
    def intra_class_cosine(self) -> torch.Tensor:
        """Mean pairwise cosine between distinct prototypes of the same class (0-dim tensor).

        Near 1 means the K prototypes of a class have collapsed (reference issue #15).
        """
        K = self.num_prototypes
        if K < 2:
            return self.prototypes.new_zeros(())
        unit = F.normalize(self.prototypes.float(), dim=-1)
        gram = unit @ unit.transpose(1, 2)  # (C, K, K)
        off_diag = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)
        return (off_diag / (K * (K - 1))).mean()
