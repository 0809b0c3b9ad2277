#!/usr/bin/env python
"""Benchmark of ProtoSeg's prototype learning and inference cost, side by side in one run.

Why: "We must be measurably faster than the reference's per-class loop, close to the cost of the
one similarity product that both need." This script measures exactly that, plus the inference
overhead of the nonparametric head over its parametric baseline and the head's training memory.

What is measured (for C in {19, 150, 847} classes, K prototypes per class, N pixel embeddings of
dimension D):

(a) The prototype learning step, forward + backward, of the batched implementation of
    ``protoseg.modeling`` (what ``ProtoSegHead`` does through ``PrototypeMemory.learn``): similarity
    x @ P^T (N x CK), class scores (max over K), clustering (Sinkhorn-Knopp for all classes at once,
    ``PrototypeMemory.assign``), momentum update (``PrototypeMemory.update``), CE + PPC + PPD
    losses, backward into the embeddings x (an (N, D) leaf with requires_grad; the prototypes get no
    gradient). Against two per-class Python loops of the same math:
    - :func:`reference_structure_step`, the structure of the reference implementation
      (tfzhou/ProtoSeg ``HRNet_W48_Proto.forward`` + ``prototype_learning``; the issue's baseline):
      class scores from an einsum 'nd,kmd->nmk' and amax over the prototypes, a second product
      x @ P^T for the PPC logits, and a loop over all C classes that selects the pixels of each
      and skips the classes without pixels;
    - :func:`per_class_loop_step`, a leaner loop that shares one similarity product between the
      scores and the PPC logits and loops over the classes present only (``unique``): the stricter
      comparison.
    In both, for every class: Algorithm 1 on its (n_c, K) scores, argmax, momentum update of its
    prototypes with the l2-normalised sums of its correctly classified assigned pixels, targets
    c*K + k. At start-up, on small inputs, the batched step and each loop are run for two steps from
    the same prototypes and must give identical targets and allclose prototypes, losses and
    gradients (the run aborts otherwise): the comparison is one of equal math. The no-grad part
    alone (clustering + update, batched vs the lean loop) is timed separately too.
(b) The same batched step against the floor that every implementation needs: the similarity
    product x @ P^T, forward and backward, plus the max over K (``PrototypeMemory.class_scores``);
    and, timed in the same round-robin, the same floor with the product in bfloat16 (the
    MODEL.PROTOSEG.SIMILARITY_PRECISION = bfloat16 lever; on CPU bfloat16 may be no faster).
(c) Inference of the whole model (backbone + decoder + head, Detectron2 ``build_model`` from
    configs/toy/protoseg_r18-d8_fcn_toy.yaml and configs/toy/parametric_r18-d8_fcn_toy.yaml with
    MODEL.SEM_SEG_HEAD.NUM_CLASSES = C and the decoder width MODEL.SEM_SEG_HEAD.CONVS_DIM =
    --model-dim), eval mode, no_grad, random images, and the head alone: decoder output ->
    class scores at the decoder stride (``head.class_scores``; ProtoSeg: LayerNorm + l2-norm + N x CK
    product + max over K + LayerNorm over C; baseline: a 1x1 conv to C channels).
(d) Peak memory of the step of (a) (and of the loop and the floor) at C = --memory-classes (847).
    CUDA: ``torch.cuda.max_memory_allocated`` above the level before the step. CPU: the PyTorch
    profiler's allocation events (``profile_memory=True``: every allocation and free of the CPU
    tensor allocator, with timestamps), accumulated in time order: the peak of bytes held above the
    level at the start, the CPU analogue of max_memory_allocated. A self-check on a known allocation
    pattern runs first; if it fails, (d) reports n/a. The size of one N x CK float32 matrix is
    printed for scale.

Data: embeddings are unit vectors near one of the K prototypes of their class (noise of norm 3,
so most pixels are classified correctly and the update has work to do), labels follow a Zipf law
(frequency ~ 1 / rank) over ``present`` randomly chosen classes, and a share --ignore-frac of the
pixels carries the ignore label 255. ``present`` (--present C:n,...) defaults to all 19 classes for
Cityscapes, 60 of 150 (an ADE20K batch), 128 of 847 (ADE20K-Full: 100-150 classes per batch).
Hyper-parameters are the paper's: K=10, mu=0.999, kappa=0.05, 3 Sinkhorn iterations, tau=0.1,
lambda1=lambda2=0.01; class scores are divided by a fixed temperature 0.1 before CE (the head's
"temperature" class-score norm), CE at feature resolution.

Timing: --warmup untimed calls, then --reps timed calls per variant, interleaved round-robin (so a
slow spell of the shared machine hits all variants alike); median and min reported, in ms;
``torch.cuda.synchronize()`` before and after each timed call on CUDA. Threads: PyTorch's default
(printed; --threads overrides). OMP_WAIT_POLICY defaults to PASSIVE (see below; an explicit setting
in the environment is kept). The CPU pressure of the machine (Linux PSI, /proc/pressure/cpu: share
of time some runnable task waited for a CPU) is printed before and after: above ~20 %, other
tenants compete for the cores and CPU timings are inflated and noisy. Ratios: "loop / batched" is
the speed-up of the batched step over the loop; "batched / floor" the cost of the step relative to
the similarity product alone.

Usage:
    python lab/benchmark.py                      # CPU defaults: N=8192, D=256, ~3 minutes on 2 cores
    python lab/benchmark.py --device cuda        # N=2*128*128 (batch 2, 512x512, stride 4), D=768
    python lab/benchmark.py --quick --json out.json   # smoke run (tiny sizes, 1 repetition)
The table goes to stdout; the JSON to --json PATH, or to stdout after the table without --json.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

# OpenMP threads that spin while waiting collapse when the CPU is shared: on this project's 2-core
# machine, with another tenant busy, a 2-thread forward of the toy model took 2.9 s instead of 0.14 s
# (the parametric head's 1x1 conv: 30 ms instead of 0.5 ms). PASSIVE makes waiting threads sleep.
# It must be set before the OpenMP runtime loads (import torch); an explicit setting is respected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from protoseg.modeling import PrototypeMemory, masked_cross_entropy  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOY_CONFIGS = REPO / "configs" / "toy"

IGNORE = 255
HP = dict(  # the paper's hyper-parameters (Sec. 5.1)
    momentum=0.999,
    sinkhorn_iters=3,
    sinkhorn_kappa=0.05,
    ppc_temperature=0.1,
    ppc_weight=0.01,
    ppd_weight=0.01,
    score_temperature=0.1,
)
DEFAULT_PRESENT = {19: 19, 150: 60, 847: 128}
TARGETS = dict(loop_speedup_min=2.0, floor_ratio_max=1.5, inference_ratio_max=1.05)


# --------------------------------------------------------------------------------------------
# The batched step (the library) and the floor
# --------------------------------------------------------------------------------------------


def batched_step(memory: PrototypeMemory, x: torch.Tensor, labels: torch.Tensor, hp=HP):
    """One prototype learning step with the library, as ``ProtoSegHead`` does it:
    :meth:`PrototypeMemory.learn` (a memory of :func:`make_memory`, unweighted PPC / PPD), then the
    CE on the class scores over a fixed temperature.

    Returns (loss, PPC targets, losses dict); x.grad holds the gradient afterwards.
    """
    learning = memory.learn(x, labels, lambda scores: scores / hp["score_temperature"])
    losses = {"ce": masked_cross_entropy(learning.class_logits, labels, IGNORE),
              "ppc": learning.losses["loss_ppc"], "ppd": learning.losses["loss_ppd"]}
    loss = losses["ce"] + hp["ppc_weight"] * losses["ppc"] + hp["ppd_weight"] * losses["ppd"]
    loss.backward()
    return loss.detach(), learning.targets, {k: v.detach() for k, v in losses.items()}


def parametric_step(weight: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, num_classes: int, hp=HP):
    """The parametric baseline with K learned prototypes per class (Table 4): a learned (C*K, D)
    classifier, max over K, CE; forward and backward."""
    scores = (x @ weight.t()).view(x.shape[0], num_classes, -1).max(-1).values
    masked_cross_entropy(scores / hp["score_temperature"], labels, IGNORE).backward()


def floor_step(prototypes: torch.Tensor, x: torch.Tensor):
    """What every implementation needs: x @ P^T forward and backward, and the max over K."""
    C, K, D = prototypes.shape
    proto_logits = x @ prototypes.reshape(C * K, D).t()
    scores = proto_logits.view(-1, C, K).max(-1).values
    scores.sum().backward()


def floor_step_bf16(prototypes: torch.Tensor, x: torch.Tensor):
    """The floor with the product in bfloat16 (MODEL.PROTOSEG.SIMILARITY_PRECISION = bfloat16, the
    tensor-core lever on GPUs): x and P cast to bfloat16, x @ P^T and the max over K, forward and
    backward into the float32 x."""
    C, K, D = prototypes.shape
    proto_logits = x.bfloat16() @ prototypes.reshape(C * K, D).bfloat16().t()
    scores = proto_logits.view(-1, C, K).max(-1).values
    scores.float().sum().backward()


# --------------------------------------------------------------------------------------------
# The reference: a per-class Python loop of the same math
# --------------------------------------------------------------------------------------------


def sinkhorn_algorithm1(scores: torch.Tensor, iters: int, kappa: float) -> torch.Tensor:
    """Algorithm 1 of the paper for the pixels of one class, written as the reference does.

    scores (n, K) -> Q (n, K), each row summing to 1. (No shift before exp: exp(1 / 0.05) = 4.9e8
    is fine in float32.)
    """
    L = torch.exp(scores / kappa).t()  # K x n
    K, n = L.shape
    L = L / L.sum()
    for _ in range(iters):
        L = L / L.sum(dim=1, keepdim=True)  # prototype marginal
        L = L / K
        L = L / L.sum(dim=0, keepdim=True)  # pixel marginal
        L = L / n
    L = L * n
    return L.t()


@torch.no_grad()
def cluster_update_one_class(protos, c, class_scores_c, x_c, correct_c, hp=HP) -> torch.Tensor:
    """Algorithm 1 and the momentum update for the pixels of class c (the body of the reference's
    loop): protos (C, K, D) is updated in place; returns the assignments k (n_c,)."""
    K = protos.shape[1]
    k = sinkhorn_algorithm1(class_scores_c, hp["sinkhorn_iters"], hp["sinkhorn_kappa"]).argmax(dim=1)
    one_hot = F.one_hot(k, K).to(x_c.dtype) * correct_c[:, None].to(x_c.dtype)  # only correct pixels
    f = one_hot.t() @ x_c  # (K, D) embedding sums per prototype
    n = one_hot.sum(dim=0)
    if n.sum() > 0:  # a host sync per class, as in the reference
        f = F.normalize(f, dim=-1)
        used = n != 0
        protos[c, used] = hp["momentum"] * protos[c, used] + (1.0 - hp["momentum"]) * f[used]
    return k


@torch.no_grad()
def per_class_cluster_update(prototypes, proto_logits, x, labels, correct, hp=HP):
    """Clustering and momentum update, one class present at a time.

    Returns (targets (N,) with c*K + k, -1 where ignored; the new prototypes (C, K, D)).
    """
    C, K, _ = prototypes.shape
    targets = torch.full_like(labels, -1)
    protos = prototypes.clone()
    valid = (labels >= 0) & (labels < C)
    for c in torch.unique(labels[valid]).tolist():
        sel = labels == c
        k = cluster_update_one_class(protos, c, proto_logits[sel, c * K:(c + 1) * K], x[sel], correct[sel], hp)
        targets[sel] = c * K + k
    return targets, F.normalize(protos, dim=-1)


def step_losses(class_scores, proto_logits, labels, targets, hp=HP):
    """CE + PPC + PPD of the loop baselines from the (N, C) class scores, the (N, C*K) similarities
    and the prototype targets (-1 = ignored); backward into x. Returns (loss, losses dict)."""
    valid = targets >= 0
    sim = proto_logits.gather(1, targets.clamp_min(0)[:, None]).squeeze(1)
    losses = {
        "ce": F.cross_entropy(class_scores / hp["score_temperature"], labels, ignore_index=IGNORE),
        "ppc": F.cross_entropy(proto_logits / hp["ppc_temperature"], targets, ignore_index=-1),
        "ppd": ((1.0 - sim) ** 2)[valid].mean(),
    }
    loss = losses["ce"] + hp["ppc_weight"] * losses["ppc"] + hp["ppd_weight"] * losses["ppd"]
    loss.backward()
    return loss.detach(), {k: v.detach() for k, v in losses.items()}


def reference_structure_step(prototypes: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, hp=HP):
    """The step as the reference code (tfzhou/ProtoSeg, ``HRNet_W48_Proto``) is structured, with the
    math of :func:`batched_step`: class scores from an einsum 'nd,kmd->nmk' and ``amax`` over the
    prototypes; a second product ``x @ P^T`` for the PPC logits (the reference's ``prototype_learning``); a loop over
    all C classes that selects each class's pixels and skips a class without pixels (a host sync
    per class); per class Algorithm 1, argmax, momentum update. Same signature and returns as
    :func:`per_class_loop_step`.
    """
    C, K, D = prototypes.shape
    masks = torch.einsum("nd,kmd->nmk", x, prototypes)  # (N, K, C)
    class_scores = torch.amax(masks, dim=1)  # (N, C)
    correct = class_scores.detach().argmax(dim=1) == labels
    proto_logits = torch.mm(x, prototypes.reshape(C * K, D).t())  # (N, C*K), the second product
    targets = torch.full_like(labels, -1)
    protos = prototypes.clone()
    for c in range(C):
        sel = labels == c
        init_q = masks.detach()[:, :, c][sel]
        if init_q.shape[0] == 0:
            continue
        k = cluster_update_one_class(protos, c, init_q, x.detach()[sel], correct[sel], hp)
        targets[sel] = c * K + k
    loss, losses = step_losses(class_scores, proto_logits, labels, targets, hp)
    return F.normalize(protos, dim=-1), loss, targets, losses


def per_class_loop_step(prototypes: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, hp=HP):
    """The step of :func:`batched_step` with a per-class loop for clustering and update.

    Args:
        prototypes: (C, K, D) unit prototypes (not modified).
        x: (N, D) unit embeddings, requires_grad. labels: (N,) int64, 255 = ignore.
    Returns:
        (new prototypes, loss, PPC targets, losses dict); x.grad holds the gradient afterwards.
    """
    C, K, D = prototypes.shape
    proto_logits = x @ prototypes.reshape(C * K, D).t()  # (N, C*K)
    scores = proto_logits.view(-1, C, K).max(-1).values  # (N, C)
    correct = scores.detach().argmax(dim=1) == labels
    targets, new_prototypes = per_class_cluster_update(prototypes, proto_logits.detach(), x.detach(), labels, correct, hp)
    loss, losses = step_losses(scores, proto_logits, labels, targets, hp)
    return new_prototypes, loss, targets, losses


# The two loop baselines: the lean one (one shared product, classes present) and the reference's
# structure (two products, all classes).
LOOPS = {"loop": per_class_loop_step, "reference": reference_structure_step}


# --------------------------------------------------------------------------------------------
# Data, timing, memory
# --------------------------------------------------------------------------------------------


def make_memory(prototypes: torch.Tensor, chunk_size: int = 0, **kernel) -> PrototypeMemory:
    """A memory holding ``prototypes`` (C, K, D) with the paper's hyper-parameters; its PPC and PPD
    are unweighted (:func:`batched_step` weights them). ``kernel``: ``scores_kernel`` and
    ``similarity_precision``."""
    C, K, D = prototypes.shape
    memory = PrototypeMemory(
        C, K, D, momentum=HP["momentum"], sinkhorn_iters=HP["sinkhorn_iters"], sinkhorn_kappa=HP["sinkhorn_kappa"],
        ppc_temperature=HP["ppc_temperature"], ppc_weight=1.0, ppd_weight=1.0, chunk_size=chunk_size, **kernel,
    ).to(prototypes.device)
    memory.prototypes.copy_(prototypes)
    return memory


def make_problem(C, K, D, N, present, ignore_frac, seed, device):
    """Unit prototypes (C, K, D), unit embeddings near their class's prototypes (N, D), labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    prototypes = F.normalize(torch.randn(C, K, D, generator=g), dim=-1)
    classes = torch.randperm(C, generator=g)[: min(present, C)]
    zipf = 1.0 / torch.arange(1, len(classes) + 1, dtype=torch.float64)
    labels = classes[torch.multinomial(zipf, N, replacement=True, generator=g)]
    noise = F.normalize(torch.randn(N, D, generator=g), dim=1) * 3.0
    x = F.normalize(prototypes[labels, torch.randint(0, K, (N,), generator=g)] + noise, dim=1)
    labels = torch.where(torch.rand(N, generator=g) < ignore_frac, torch.full_like(labels, IGNORE), labels)
    return prototypes.to(device), x.to(device), labels.to(device)


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def summarise(times_s: List[float]) -> Dict[str, float]:
    return {
        "median_ms": 1e3 * statistics.median(times_s),
        "min_ms": 1e3 * min(times_s),
        "reps": len(times_s),
    }


def bench(fns: Dict[str, Callable[[], object]], warmup: int, reps: int, device: str) -> Dict[str, Dict[str, float]]:
    """Warm-up, then ``reps`` timed calls of every function, interleaved."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: summarise(t) for name, t in times.items()}


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ log lines on fd 2 (Python exceptions still propagate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by the CPU tensor allocator during fn(), above the level at its start.

    From the profiler's allocation/free events, accumulated in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and "CPU" in str(e.device_type())
    ]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return peak


def cpu_peak_self_check() -> Tuple[bool, str]:
    """The profiler measurement on a known pattern: 4 MB, +8 MB, -4 MB, +2 MB -> peak 12 MB."""

    def pattern():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB
        del a
        c = torch.empty(500_000)  # 2 MB
        return b, c

    try:
        got = cpu_peak_bytes(pattern)
    except Exception as exc:  # a private profiler API: report n/a rather than fail
        return False, f"profiler memory events unavailable ({type(exc).__name__}: {exc})"
    return got == 12_000_000, f"self-check peak {got} bytes, expected 12000000"


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return cpu_peak_bytes(fn)


# --------------------------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------------------------


def ignore_near_ties(prototypes_list, x, labels, gap: float = 1e-5) -> torch.Tensor:
    """Labels with the pixels ignored where, for any of the given (C, K, D) prototype sets, two
    prototypes of one class or the two best classes score within ``gap``. There the
    implementations' products, which differ in shape and order (a float32 ulp near 1 is 6e-8), may
    round apart and pick different maxima: a difference of rounding, not of math. Typically a few
    dozen of the 1024-2048 pixels."""
    tie = torch.zeros_like(labels, dtype=torch.bool)
    with torch.no_grad():
        for prototypes in prototypes_list:
            C, K, D = prototypes.shape
            sims = (x @ prototypes.reshape(C * K, D).t()).view(-1, C, K)
            within = sims.topk(2, dim=2).values
            best = sims.amax(dim=2).topk(2, dim=1).values
            tie |= ((within[..., 0] - within[..., 1]).amin(dim=1) < gap) | (best[:, 0] - best[:, 1] < gap)
    return torch.where(tie, torch.full_like(labels, IGNORE), labels)


def equality_check(device: str, seed: int) -> Dict[str, object]:
    """Batched step vs both per-class loops on small inputs, two consecutive steps: equal math or
    abort (pixels at float32 near-ties of the maxima are ignored, see :func:`ignore_near_ties`)."""
    report = []
    for C, K, D, N, present in ((19, 10, 32, 1024, 19), (150, 10, 32, 2048, 60)):
        prototypes, x0, labels = make_problem(C, K, D, N, present, 0.1, seed, device)
        # the prototypes of both steps: the second step's come from a dry run of the first
        dry = make_memory(prototypes)
        batched_step(dry, x0.clone().requires_grad_(True), labels)
        labels = ignore_near_ties([prototypes, dry.prototypes], x0, labels)
        memory = make_memory(prototypes)
        state = {loop: prototypes.clone() for loop in LOOPS}
        worst = {"prototypes": 0.0, "losses": 0.0, "grad": 0.0}
        for step in range(2):
            xb = x0.clone().requires_grad_(True)
            _, targets_b, losses_b = batched_step(memory, xb, labels)
            for name, loop in LOOPS.items():
                xl = x0.clone().requires_grad_(True)
                state[name], _, targets_l, losses_l = loop(state[name], xl, labels)
                if not torch.equal(targets_b, targets_l):
                    raise AssertionError(
                        f"equality check C={C} step {step}, {name}: targets differ at "
                        f"{(targets_b != targets_l).sum().item()} pixels"
                    )
                torch.testing.assert_close(memory.prototypes, state[name], rtol=1e-5, atol=1e-6)
                for key in losses_b:
                    torch.testing.assert_close(losses_b[key], losses_l[key], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(xb.grad, xl.grad, rtol=1e-4, atol=1e-7)
                worst["prototypes"] = max(worst["prototypes"], (memory.prototypes - state[name]).abs().max().item())
                worst["losses"] = max(worst["losses"], max((losses_b[k] - losses_l[k]).abs().item() for k in losses_b))
                worst["grad"] = max(worst["grad"], (xb.grad - xl.grad).abs().max().item())
        moved = (memory.prototypes - prototypes).abs().max().item()
        report.append({"C": C, "K": K, "D": D, "N": N, "steps": 2, "max_abs_diff": worst, "prototypes_moved": moved})
    return {"passed": True, "cases": report}


def bench_step(C, args) -> Dict[str, object]:
    """(a) and (b) for one C."""
    present = args.present.get(C, C)
    prototypes, x0, labels = make_problem(C, args.k, args.dim, args.n, present, args.ignore_frac, args.seed, args.device)
    memory = make_memory(prototypes)
    xb, xf, xh = (x0.clone().requires_grad_(True) for _ in range(3))

    def run_batched():
        xb.grad = None
        batched_step(memory, xb, labels)

    def run_floor():
        xf.grad = None
        floor_step(prototypes, xf)

    def run_floor_bf16():
        xh.grad = None
        floor_step_bf16(prototypes, xh)

    def loop_runner(loop):
        state = {"prototypes": prototypes.clone(), "x": x0.clone().requires_grad_(True)}

        def run():
            state["x"].grad = None
            state["prototypes"] = loop(state["prototypes"], state["x"], labels)[0]

        return run

    fns = {"floor": run_floor, "floor_bf16": run_floor_bf16, "batched": run_batched,
           **{name: loop_runner(loop) for name, loop in LOOPS.items()}, **triton_runners(prototypes, x0, labels, args)}
    full = bench(fns, args.warmup, args.reps, args.device)
    floor_bf16 = full.pop("floor_bf16")  # timed interleaved with the others, reported apart
    triton_steps = {name: full.pop(name) for name in list(full) if name.startswith("triton")}

    # The no-grad part alone: clustering + update (inputs prepared outside the timed region).
    with torch.no_grad():
        proto_logits = x0 @ prototypes.reshape(C * args.k, args.dim).t()
        class_scores = proto_logits.view(-1, C, args.k).max(-1).values
        correct = class_scores.argmax(1) == labels
    cu_memory = make_memory(prototypes)
    own = cu_memory.own_class_scores(proto_logits, labels)
    cu_state = {"prototypes": prototypes.clone()}

    def cu_batched():
        with torch.no_grad():
            cu_memory.cluster_and_update(x0, own, class_scores, labels)

    def cu_loop():
        cu_state["prototypes"] = per_class_cluster_update(cu_state["prototypes"], proto_logits, x0, labels, correct)[1]

    cluster = bench({"batched": cu_batched, "loop": cu_loop}, args.warmup, args.reps, args.device)
    valid = labels[labels != IGNORE]
    return {
        "C": C,
        "K": args.k,
        "D": args.dim,
        "N": args.n,
        "classes_present": int(torch.unique(valid).numel()),
        "ignored_pixels": int((labels == IGNORE).sum()),
        "step": full,
        "cluster_update": cluster,
        "loop_over_batched": full["loop"]["median_ms"] / full["batched"]["median_ms"],
        "reference_over_batched": full["reference"]["median_ms"] / full["batched"]["median_ms"],
        "batched_over_floor": full["batched"]["median_ms"] / full["floor"]["median_ms"],
        # flat numbers, not a timing summary: the step's summaries stay the four of "step"
        "floor_bf16_median_ms": floor_bf16["median_ms"],
        "floor_bf16_min_ms": floor_bf16["min_ms"],
        "batched_over_floor_bf16": full["batched"]["median_ms"] / floor_bf16["median_ms"],
        "cluster_update_loop_over_batched": cluster["loop"]["median_ms"] / cluster["batched"]["median_ms"],
        # MODEL.PROTOSEG.SCORES_KERNEL triton (CUDA with triton only): the same step, fused kernels
        "triton_steps": triton_steps,
    }


def triton_runners(prototypes, x0, labels, args) -> Dict[str, Callable]:
    """The batched step with the Triton score kernels (MODEL.PROTOSEG.SCORES_KERNEL triton), in
    float32 and bfloat16, on CUDA when triton is importable (none otherwise: the interpreter is far
    too slow for these sizes). Before timing, one step of each is checked against the torch
    kernel's losses on the same prototypes (the run aborts if they differ)."""
    from protoseg.modeling.prototypes.triton_scores import triton_available

    if args.device != "cuda" or not triton_available():
        return {}
    reference = batched_step(make_memory(prototypes), x0.clone().requires_grad_(True), labels)[2]
    runners = {}
    for precision in ("float32", "bfloat16"):
        memory = make_memory(prototypes, scores_kernel="triton", similarity_precision=precision)
        check = batched_step(make_memory(prototypes, scores_kernel="triton", similarity_precision=precision),
                             x0.clone().requires_grad_(True), labels)[2]
        tol = 1e-4 if precision == "float32" else 2e-2
        for key in reference:
            torch.testing.assert_close(check[key], reference[key], rtol=tol, atol=tol)
        x = x0.clone().requires_grad_(True)

        def run(memory=memory, x=x):
            x.grad = None
            batched_step(memory, x, labels)

        runners[f"triton_{precision}"] = run
    return runners


def build_bench_model(head: str, C: int, args):
    """The model of (c) with ``head`` ("ParametricSegHead" or "ProtoSegHead") and C classes: the toy
    config by default, or ``--model-config`` (e.g. a paper config; random weights), eval mode."""
    from detectron2.modeling import build_model

    from protoseg.config import load_config

    cfg = load_config(args.model_config or TOY_CONFIGS / "parametric_r18-d8_fcn_toy.yaml")
    opts = ["MODEL.SEM_SEG_HEAD.NAME", head, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", C, "MODEL.DEVICE", args.device,
            "MODEL.WEIGHTS", "", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 65535]  # an ignore value above any C
    if args.model_dim:
        opts += ["MODEL.SEM_SEG_HEAD.CONVS_DIM", args.model_dim]
    cfg.merge_from_list(opts + list(args.model_opts))
    torch.manual_seed(args.seed)
    return build_model(cfg).eval(), cfg


def bench_inference(C, args) -> Dict[str, object]:
    """(c) for one C: whole model and head alone, ProtoSeg vs parametric baseline."""
    proto_model, cfg = build_bench_model("ProtoSegHead", C, args)
    base_model, _ = build_bench_model("ParametricSegHead", C, args)
    g = torch.Generator().manual_seed(args.seed)
    s = args.image_size
    inputs = [{"image": (torch.rand(3, s, s, generator=g) * 255).to(args.device)} for _ in range(args.images)]
    decoder = proto_model.sem_seg_head.decoder
    h = math.ceil(s / decoder.out_stride)
    embedding = torch.randn(args.images, decoder.out_channels, h, h, generator=g).to(args.device)

    def run(fn):
        def call():
            with torch.no_grad():
                fn()
        return call

    model_t = bench(
        {"parametric": run(lambda: base_model(inputs)), "protoseg": run(lambda: proto_model(inputs))},
        args.warmup, args.reps, args.device,
    )
    head_t = bench(
        {
            "parametric": run(lambda: base_model.sem_seg_head.class_scores(embedding)),
            "protoseg": run(lambda: proto_model.sem_seg_head.class_scores(embedding)),
        },
        args.warmup, args.reps, args.device,
    )
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("parametric", base_model), ("protoseg", proto_model))}
    return {
        "C": C,
        "K": proto_model.sem_seg_head.memory.num_prototypes,
        "D": decoder.out_channels,
        "images": args.images,
        "image_size": s,
        "model_name": args.model_config or "toy dilated ResNet-18 (stride 8) + FCN decoder",
        "head_pixels": args.images * h * h,
        "parameters": params,
        "model": model_t,
        "head": head_t,
        "model_ratio": model_t["protoseg"]["median_ms"] / model_t["parametric"]["median_ms"],
        "head_ratio": head_t["protoseg"]["median_ms"] / head_t["parametric"]["median_ms"],
    }


def bench_memory(args) -> Dict[str, object]:
    """(d): peak memory of the step at C = args.memory_classes."""
    C = args.memory_classes
    logits_bytes = args.n * C * args.k * 4
    result = {"C": C, "K": args.k, "D": args.dim, "N": args.n, "one_logits_matrix_bytes": logits_bytes}
    if args.device == "cuda":
        result["method"] = "torch.cuda.max_memory_allocated above the level before the step"
    else:
        ok, detail = cpu_peak_self_check()
        result["method"] = "PyTorch profiler allocation events (profile_memory=True), peak above the start; " + detail
        if not ok:
            result.update(batched_bytes=None, loop_bytes=None, reference_bytes=None, floor_bytes=None,
                          note="n/a on CPU: " + detail)
            return result
    prototypes, x0, labels = make_problem(C, args.k, args.dim, args.n, args.present.get(C, C), args.ignore_frac, args.seed, args.device)
    memory, chunked_memory = make_memory(prototypes), make_memory(prototypes, args.chunk_size)
    # One untimed call each first, so that lazily created state is not counted.
    for variant in range(2):
        xb, xl, xr, xf = (x0.clone().requires_grad_(True) for _ in range(4))
        measure = (lambda fn: fn()) if variant == 0 else (lambda fn: peak_bytes(fn, args.device))
        batched = measure(lambda: batched_step(memory, xb, labels))
        loop = measure(lambda: per_class_loop_step(prototypes, xl, labels))
        reference = measure(lambda: reference_structure_step(prototypes, xr, labels))
        floor = measure(lambda: floor_step(prototypes, xf))
        xc, xp = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
        chunked = measure(lambda: batched_step(chunked_memory, xc, labels))
        weight = prototypes.reshape(C * args.k, args.dim).clone().requires_grad_(True)
        parametric = measure(lambda: parametric_step(weight, xp, labels, C))
    result.update(batched_bytes=batched, loop_bytes=loop, reference_bytes=reference, floor_bytes=floor, chunked_bytes=chunked,
                  parametric_bytes=parametric, chunk_size=args.chunk_size)
    return result


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def cpu_pressure() -> Optional[float]:
    """Linux PSI 'some avg10' of the CPU (percent of the last 10 s a runnable task waited), or None."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(kv.split("=") for kv in first.split()[1:])["avg10"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def fmt_t(t: Dict[str, float]) -> str:
    return f"{t['median_ms']:9.2f} /{t['min_ms']:9.2f}"


def mib(b: Optional[int]) -> str:
    return "n/a" if b is None else f"{b / 2**20:8.1f} MiB"


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def print_table(res: Dict[str, object]) -> None:
    m = res["meta"]
    print(f"ProtoSeg-D2 benchmark, {m['date']}")
    print(f"device: {m['device']} ({m['device_name']}), torch {m['torch']}, threads {m['threads']}, "
          f"OMP_WAIT_POLICY={m['omp_wait_policy']}, python {m['python']}")
    print(f"CPU pressure (PSI some avg10, %): {m['cpu_pressure_start']} at start, {m['cpu_pressure_end']} at end"
          + ("  <- contended machine: CPU timings inflated" if max(filter(None, [m['cpu_pressure_start'], m['cpu_pressure_end'], 0.0])) > 20 else ""))
    print(f"N={m['N']} pixels, D={m['D']}, K={m['K']}, warm-up {m['warmup']}, repetitions {m['reps']} (median / min ms)")
    print(f"labels: Zipf over the classes present, ignore share {m['ignore_frac']}; hyper-parameters {m['hp']}")
    eq = res["equality_check"]
    cases = ", ".join(
        f"C={c['C']}: max|diff| protos {c['max_abs_diff']['prototypes']:.1e} losses {c['max_abs_diff']['losses']:.1e} "
        f"grad {c['max_abs_diff']['grad']:.1e}"
        for c in eq["cases"]
    )
    print(f"equality check batched == each per-class loop (targets identical, 2 steps): {'passed' if eq['passed'] else 'FAILED'}; {cases}")

    print("\n(a)/(b) prototype learning step, forward + backward into x (ms, median / min); loops: lean = one shared "
          "product, classes present; reference = the reference code's structure (two products, loop over all C)")
    print(f"{'C':>5} {'present':>7} | {'floor (x@P^T+max)':>19} | {'batched':>19} | {'lean loop':>19} | {'reference loop':>19} | "
          f"{'lean/batched':>12} | {'ref/batched':>11} | {'batched/floor':>13} || {'cluster+update: batched':>23} | "
          f"{'lean loop':>19} | {'ratio':>6}")
    for r in res["step"]:
        s, cu = r["step"], r["cluster_update"]
        print(f"{r['C']:>5} {r['classes_present']:>7} | {fmt_t(s['floor'])} | {fmt_t(s['batched'])} | {fmt_t(s['loop'])} | "
              f"{fmt_t(s['reference'])} | {r['loop_over_batched']:>11.2f}x | {r['reference_over_batched']:>10.2f}x | "
              f"{r['batched_over_floor']:>12.2f}x || {fmt_t(cu['batched']):>23} | "
              f"{fmt_t(cu['loop'])} | {r['cluster_update_loop_over_batched']:>5.2f}x")
    for r in res["step"]:
        bf16 = {"median_ms": r["floor_bf16_median_ms"], "min_ms": r["floor_bf16_min_ms"]}
        print(f"C={r['C']}: bf16 floor (x@P^T+max, bfloat16 product) {fmt_t(bf16)} against float32 floor "
              f"{fmt_t(r['step']['floor'])}; batched (float32) / bf16 floor = {r['batched_over_floor_bf16']:.2f}x")
        for name, t in r.get("triton_steps", {}).items():
            print(f"C={r['C']}: step with SCORES_KERNEL triton, {name[len('triton_'):]}: {fmt_t(t)}; "
                  f"/ batched {t['median_ms'] / r['step']['batched']['median_ms']:.2f}x, "
                  f"/ bf16 floor {t['median_ms'] / r['floor_bf16_median_ms']:.2f}x")

    inf = res["inference"]
    if inf:
        i0 = inf[0]
        print(f"\n(c) inference, eval + no_grad, {i0['images']} images {i0['image_size']}x{i0['image_size']}, "
              f"{i0['model_name']}, D={i0['D']}, {i0['head_pixels']} head pixels (ms, median / min)")
        print(f"{'C':>5} | {'parametric model':>19} | {'ProtoSeg model':>19} | {'ratio':>6} | {'parametric head':>19} | "
              f"{'ProtoSeg head':>19} | {'ratio':>6} | params parametric / ProtoSeg")
        for r in inf:
            mt, ht = r["model"], r["head"]
            print(f"{r['C']:>5} | {fmt_t(mt['parametric'])} | {fmt_t(mt['protoseg'])} | {r['model_ratio']:>5.2f}x | "
                  f"{fmt_t(ht['parametric'])} | {fmt_t(ht['protoseg'])} | {r['head_ratio']:>5.2f}x | "
                  f"{r['parameters']['parametric']:,} / {r['parameters']['protoseg']:,}")

    mem = res["peak_memory"]
    print(f"\n(d) peak memory of the step, C={mem['C']}, N={mem['N']}, D={mem['D']}, K={mem['K']} ({mem['method']})")
    if mem.get("note"):
        print(f"    {mem['note']}")
    print(f"    batched {mib(mem['batched_bytes'])} | batched, chunks of {mem.get('chunk_size')} pixels "
          f"{mib(mem.get('chunked_bytes'))} | lean loop {mib(mem['loop_bytes'])} | reference loop {mib(mem.get('reference_bytes'))} | "
          f"floor {mib(mem['floor_bytes'])} | "
          f"parametric {mem['K']}-prototype head {mib(mem.get('parametric_bytes'))} | "
          f"one N x CK float32 matrix {mib(mem['one_logits_matrix_bytes'])}")

    t = res["targets"]
    print("\ntargets:")
    for line in t["lines"]:
        print("    " + line)
    print(f"\nwall time {res['meta']['wall_s']:.1f} s")


def evaluate_targets(res, device) -> Dict[str, object]:
    lines, checks = [], {}
    for r in res["step"]:
        if r["C"] >= 150:
            # The baseline is the reference's structure; the lean loop is reported beside it.
            for key, name in (("reference", "reference-structured loop"), ("loop", "lean loop (one shared product)")):
                ratio = r[f"{key}_over_batched"]
                ok = ratio >= TARGETS["loop_speedup_min"]
                checks[f"{key}_speedup_C{r['C']}"] = ok
                lines.append(f"C={r['C']}: {name} / batched = {ratio:.2f}x (target >= {TARGETS['loop_speedup_min']}x on {device}): {verdict(ok)}")
    for r in res["step"]:
        ok = r["batched_over_floor"] <= TARGETS["floor_ratio_max"]
        checks[f"floor_ratio_C{r['C']}"] = ok
        lines.append(f"C={r['C']}: batched / floor = {r['batched_over_floor']:.2f}x (target <= {TARGETS['floor_ratio_max']}x): {verdict(ok)}")
    for r in res["inference"]:
        ok = r["model_ratio"] <= TARGETS["inference_ratio_max"]
        checks[f"inference_ratio_C{r['C']}"] = ok
        lines.append(f"C={r['C']}: ProtoSeg / parametric inference = {r['model_ratio']:.2f}x (target <= {TARGETS['inference_ratio_max']}x): {verdict(ok)}")
    mem = res["peak_memory"]
    if mem.get("parametric_bytes") and mem.get("batched_bytes"):
        for key, name in (("chunked_bytes", f"chunks of {mem.get('chunk_size')} pixels"), ("batched_bytes", "unchunked")):
            if mem.get(key):
                ok = mem[key] <= mem["parametric_bytes"]
                checks[f"memory_{key}"] = ok
                lines.append(f"C={mem['C']}: peak memory of the step, {name} = {mem[key] / 2**20:.0f} MiB vs parametric "
                             f"{mem['K']}-prototype head {mem['parametric_bytes'] / 2**20:.0f} MiB (target <=): {verdict(ok)}")
    return {"targets": TARGETS, "checks": checks, "lines": lines}


# --------------------------------------------------------------------------------------------


def parse_present(text: str) -> Dict[int, int]:
    present = dict(DEFAULT_PRESENT)
    for item in filter(None, text.split(",")):
        c, n = item.split(":")
        present[int(c)] = int(n)
    return present


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, no warm-up, 1 repetition")
    p.add_argument("--json", type=Path, default=None, help="write the results here (default: print them after the table)")
    p.add_argument("--classes", default="19,150,847", help="comma-separated values of C")
    p.add_argument("--present", default="", help="classes present per batch, 'C:n,...' (default 19:19,150:60,847:128)")
    p.add_argument("--n", type=int, default=None, help="pixels N (CPU 8192 = 2 x 64x64; CUDA 32768 = 2 x 128x128)")
    p.add_argument("--dim", type=int, default=None, help="embedding dim D (CPU 256, CUDA 768)")
    p.add_argument("--k", type=int, default=10, help="prototypes per class K")
    p.add_argument("--ignore-frac", type=float, default=0.1, help="share of pixels with the ignore label")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per variant (default 1 CPU, 3 CUDA)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per variant (default 5 CPU, 20 CUDA)")
    p.add_argument("--images", type=int, default=None, help="(c) images per batch (default 2)")
    p.add_argument("--image-size", type=int, default=None, help="(c) square image side (CPU 256, CUDA 512)")
    p.add_argument("--model-dim", type=int, default=None, help="(c) decoder width CONVS_DIM (default: --dim for the toy "
                   "model, the config's own with --model-config)")
    p.add_argument("--model-config", default="", help="(c) a config (e.g. configs/ade20k/segformer_MiT-B4_bs16_160k.yaml) "
                   "whose model is compared with ProtoSegHead and ParametricSegHead; default: the toy model")
    p.add_argument("--model-opts", nargs="*", default=[], help="(c) extra config KEY VALUE pairs for both models")
    p.add_argument("--memory-classes", type=int, default=847, help="(d) C of the peak-memory measurement")
    p.add_argument("--chunk-size", type=int, default=1024, help="(d) pixels per chunk of the memory-bounded step")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.quick:
        defaults = dict(n=512, dim=32, warmup=0, reps=1, image_size=64, images=1)
    elif cuda:
        defaults = dict(n=2 * 128 * 128, dim=768, warmup=3, reps=20, image_size=512, images=2)
    else:
        defaults = dict(n=2 * 64 * 64, dim=256, warmup=1, reps=5, image_size=256, images=2)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model_dim is None and not args.model_config:  # a given config keeps its own decoder width
        args.model_dim = args.dim
    args.classes = [int(c) for c in args.classes.split(",") if c]
    args.present = parse_present(args.present)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_pressure_start": cpu_pressure(),
        "N": args.n,
        "D": args.dim,
        "K": args.k,
        "classes": args.classes,
        "present": {str(c): args.present.get(c, c) for c in args.classes},
        "ignore_frac": args.ignore_frac,
        "warmup": args.warmup,
        "reps": args.reps,
        "quick": args.quick,
        "hp": HP,
    }
    res = {"meta": meta, "equality_check": equality_check(args.device, args.seed)}
    res["step"] = [bench_step(C, args) for C in args.classes]
    res["inference"] = [bench_inference(C, args) for C in args.classes]
    res["peak_memory"] = bench_memory(args)
    res["targets"] = evaluate_targets(res, args.device)
    meta["wall_s"] = time.perf_counter() - wall
    meta["cpu_pressure_end"] = cpu_pressure()
    print_table(res)
    text = json.dumps(res, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
        print(f"JSON written to {args.json}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
