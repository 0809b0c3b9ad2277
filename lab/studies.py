"""The paper's ablations as runnable studies: Table 5a-d, Table 4 and the FCN rows of Table 1.

A *study* is a list of *variants* (config overrides of one base config); every (variant, seed) is
one ordinary training + evaluation run of ``train_net.py``'s ``main`` (the project's ``Trainer``,
``setup``, evaluator), in its own subprocess and its own OUTPUT_DIR. Subprocesses, not runs in
this process: Detectron2's ``default_setup`` adds logging handlers per OUTPUT_DIR, seeds the global
RNGs and the dataset catalogue is global, so in-process runs would write into each other's logs and
leak memory; a process per run is exactly ``train_net.py`` and frees everything at its end (its
start-up, ~3-5 s, is a few percent of a run).

Runs are identified by their effective config: ``runs/<sha1 of the merged config>/seed<N>``, so a
variant shared by several studies (the default ProtoSeg is in five of them) is trained once, and a
run whose ``study_result.json`` exists is never run again (resume). An unfinished run restarts with
``--resume`` (from its last checkpoint, if any).

Each study writes ``<output>/<study>/<study>.{csv,md,png}``: mean and std over seeds of the mIoU,
the paired difference to the study's reference row, training seconds per iteration, learnable
parameters, prototype buffer size and the paper's number for the same row.

On the embedded toy data (default), the datasets a study needs are generated once under
``<output>/data`` and registered under names that encode their spec; with a real config
(``--config-file``), the study's overrides apply to that config and its datasets.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from protoseg.config import load_config

__all__ = [
    "STUDIES",
    "ALL_STUDIES",
    "StudyContext",
    "Variant",
    "Study",
    "DatasetRef",
    "toy_dataset",
    "build_study",
    "effective_cfg",
    "count_parameters",
    "run_study",
    "worker_main",
    "read_curve",
]

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "datasets"))  # datasets/toy_scenes.py, the toy-data generator
TOY_STUDY_CONFIG = REPO / "lab" / "configs" / "study_r18-d8_fcn_toy.yaml"
RESULT_FILE = "study_result.json"

# ---- the paper's numbers (CVPR 2022, /work/shared/paper/protoseg_cvpr2022.txt) ----------------
# Table 5a (MiT-B2, ADE20K val, 40k iterations); the extracted table is garbled, the values follow
# the text of Sec. 5.4: CE 45.0, +PPC +0.9, +PPD +0.4, all three 46.4.
PAPER_OBJECTIVE = {"CE": 45.0, "CE+PPC": 45.9, "CE+PPD": 45.4, "CE+PPC+PPD": 46.4}
# Table 5b: prototypes per class K.
PAPER_NUM_PROTOTYPES = {1: 45.5, 5: 46.0, 10: 46.4, 20: 46.5, 50: 46.4}
# Table 5c: momentum coefficient mu.
PAPER_MOMENTUM = {0.0: 44.9, 0.9: 45.9, 0.99: 46.0, 0.999: 46.4, 0.9999: 46.3}
# Table 5d: distance measure ("Standard" = Euclidean).
PAPER_DISTANCE = {"cosine": 46.4, "euclidean": 45.7, "huber": 45.2}
# Table 1, ADE20K val, FCN ResNet-101 (68.6 M parameters) and Ours on it (68.5 M).
PAPER_PARAMETRIC_VS_PROTOTYPE = {"parametric K=1": (39.9, 68.6), "ProtoSeg": (41.1, 68.5)}
# Table 4 (SegFormer MiT-B2, 40k iterations, ADE20K-Full subsets): classes -> (mIoU, # params M,
# # prototype params M), per row (head, K).
PAPER_VOCABULARY = {
    ("parametric", 1): {150: (45.1, 27.48, 0.12), 300: (36.5, 27.62, 0.23), 500: (25.7, 27.80, 0.39),
                        700: (19.8, 27.98, 0.54), 847: (16.5, 28.11, 0.65)},
    ("protoseg", 1): {150: (45.5, 27.37, 0.0), 300: (37.2, 27.37, 0.0), 500: (26.8, 27.37, 0.0),
                      700: (21.2, 27.37, 0.0), 847: (18.1, 27.37, 0.0)},
    ("parametric", 10): {150: (45.7, 28.56, 1.2), 300: (37.0, 29.66, 2.3), 500: (26.6, 31.26, 3.9),
                         700: (20.8, 32.86, 5.4), 847: (17.7, 33.96, 6.5)},
    ("protoseg", 10): {150: (46.4, 27.37, 0.0), 300: (37.8, 27.37, 0.0), 500: (27.9, 27.37, 0.0),
                       700: (22.1, 27.37, 0.0), 847: (19.4, 27.37, 0.0)},
}


# --------------------------------------------------------------------------------------------
# Study definitions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetRef:
    """A train/val dataset pair; ``toy_spec`` (a ``ToySceneSpec``) when it is generated here."""

    train: str
    val: str
    num_classes: int
    toy_spec: Optional[object] = None
    paper_classes: Optional[int] = None  # the Table 4 column this vocabulary is compared with

    def opts(self) -> List:
        return ["DATASETS.TRAIN", (self.train,), "DATASETS.TEST", (self.val,),
                "MODEL.SEM_SEG_HEAD.NUM_CLASSES", self.num_classes]


@dataclass(frozen=True)
class Variant:
    """One row of a study table: config overrides and what the table and the plot show of it."""

    name: str
    opts: Tuple = ()
    x: Optional[float] = None  # abscissa of line plots (K, 1/(1-mu), classes)
    series: str = ""  # line of the plot (vocabulary: the head)
    dataset: Optional[DatasetRef] = None
    paper: Dict[str, object] = field(default_factory=dict)  # paper columns of this row
    extra: Dict[str, object] = field(default_factory=dict)  # study-specific columns


@dataclass(frozen=True)
class Study:
    name: str
    claim: str  # what the paper claims (and which table)
    variants: Tuple[Variant, ...]
    reference: str  # the row the paired differences are taken to
    plot: str = "bars"  # "bars", "lines" or "curves" (mIoU against iteration)
    xlabel: str = ""
    xlog: bool = False
    # Schedule of the study's runs when --iters is not given (None: the base config's MAX_ITER).
    max_iter: Optional[int] = None
    # Evaluations per run, evenly spaced: TEST.EVAL_PERIOD = MAX_ITER // eval_points (1: one at the
    # end, the ablations; > 1: a learning curve from every evaluation of the run, ``curves``).
    eval_points: int = 1


@dataclass
class StudyContext:
    """What the study definitions depend on besides the study name."""

    base_cfg: object  # merged base config (CfgNode), before the variant overrides
    toy: bool = True
    quick: bool = False
    vocabulary_sizes: Sequence[int] = (4, 8, 16)
    vocabulary_datasets: Sequence[Tuple[str, str, int]] = ()  # real data: (train, val, classes)
    paper_classes: Sequence[int] = (150, 500, 847)  # toy vocabulary i <-> Table 4 column i
    data_root: Optional[Path] = None
    iters: Optional[int] = None  # --iters (or --quick's), which overrides a study's own max_iter
    # Toy data of the learning-curve studies: classes and image size (--curves-toy-data).
    curves_classes: int = 4
    curves_size: int = 64

    @property
    def num_prototypes(self) -> int:
        return int(self.base_cfg.MODEL.PROTOSEG.NUM_PROTOTYPES)

    @property
    def looks_per_class(self) -> int:
        return 3

    def base_dataset(self) -> Optional[DatasetRef]:
        if not self.toy:
            return None
        return toy_dataset(self, int(self.base_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES))


PROTOSEG = ("MODEL.SEM_SEG_HEAD.NAME", "ProtoSegHead")


def parametric(k: int) -> Tuple:
    return ("MODEL.SEM_SEG_HEAD.NAME", "ParametricSegHead", "MODEL.PARAMETRIC.NUM_PROTOTYPES", k)


def toy_dataset(ctx: StudyContext, num_classes: int, size: Optional[int] = None) -> DatasetRef:
    """The toy dataset of ``num_classes`` classes for the study config: images of the config's
    test size (or ``size``); enough images that every look appears in several training regions (the scenes have
    ~6 regions each) and every class in the validation split."""
    from toy_scenes import ToySceneSpec

    size = int(size or ctx.base_cfg.INPUT.MIN_SIZE_TEST)
    looks = ctx.looks_per_class
    if ctx.quick:
        num_train, num_val = 8, 4
    else:  # 128 + 32 for 8-10 classes (the toy default); ~2.4 training regions per look and class
        num_train, num_val = max(128, 4 * num_classes), max(32, num_classes)
    spec = ToySceneSpec(num_classes=num_classes, looks_per_class=looks, num_train=num_train,
                        num_val=num_val, image_size=(size, size))
    prefix = f"study_toy_c{num_classes}_l{looks}_s{size}_n{num_train}-{num_val}"
    return DatasetRef(prefix + "_train", prefix + "_val", num_classes, toy_spec=spec)


def _objective(ctx: StudyContext) -> Study:
    w = ("MODEL.PROTOSEG.PPC_WEIGHT", "MODEL.PROTOSEG.PPD_WEIGHT")
    rows = [("CE", (w[0], 0.0, w[1], 0.0)), ("CE+PPC", (w[1], 0.0)), ("CE+PPD", (w[0], 0.0)),
            ("CE+PPC+PPD", ())]
    return Study(
        "objective", "Both auxiliary losses help; CE+PPC+PPD is best (Table 5a).",
        tuple(Variant(n, PROTOSEG + o, paper={"paper_mIoU": PAPER_OBJECTIVE[n]}) for n, o in rows),
        reference="CE",
    )


def _num_prototypes(ctx: StudyContext) -> Study:
    if ctx.toy:  # below, at and above the true number of looks per class
        values = sorted({1, 2, ctx.looks_per_class, 5, 10})
    else:
        values = sorted(PAPER_NUM_PROTOTYPES)
    return Study(
        "num_prototypes", "Several prototypes per class beat one; K = 10 is the trade-off (Table 5b).",
        tuple(Variant(f"K={k}", PROTOSEG + ("MODEL.PROTOSEG.NUM_PROTOTYPES", k), x=k,
                      paper={"paper_mIoU": PAPER_NUM_PROTOTYPES.get(k)}) for k in values),
        reference="K=1", plot="lines", xlabel="prototypes per class K", xlog=True,
    )


def _momentum(ctx: StudyContext) -> Study:
    iters = int(ctx.base_cfg.SOLVER.MAX_ITER)
    rows = []
    for mu in sorted(PAPER_MOMENTUM):
        tau = 1.0 / (1.0 - mu)
        rows.append(Variant(f"mu={mu:g}", PROTOSEG + ("MODEL.PROTOSEG.MOMENTUM", mu), x=tau,
                            paper={"paper_mIoU": PAPER_MOMENTUM[mu],
                                   "paper_tau_over_iters": round(tau / 40000, 6)},  # 40k schedule
                            extra={"tau_iters": round(tau, 3), "tau_over_iters": round(tau / iters, 6)}))
    return Study(
        "momentum", "Slow prototype updates (mu = 0.999) are best, mu = 0 is worst (Table 5c).",
        tuple(rows), reference="mu=0", plot="lines",
        xlabel="time constant 1/(1-mu) of the prototype update (iterations)", xlog=True,
    )


def _distance(ctx: StudyContext) -> Study:
    return Study(
        "distance", "Cosine beats Euclidean ('Standard') and Huberized (Table 5d).",
        tuple(Variant(d, PROTOSEG + ("MODEL.PROTOSEG.DISTANCE", d), paper={"paper_mIoU": PAPER_DISTANCE[d]})
              for d in ("cosine", "euclidean", "huber")),
        reference="euclidean",
    )


def _parametric_vs_prototype(ctx: StudyContext) -> Study:
    rows = []
    for name, opts in (("parametric K=1", parametric(1)), ("ProtoSeg", PROTOSEG)):
        miou, params = PAPER_PARAMETRIC_VS_PROTOTYPE[name]
        rows.append(Variant(name, opts, paper={"paper_mIoU": miou, "paper_params_M": params}))
    return Study(
        "parametric_vs_prototype",
        "Nonparametric prototypes match or beat the softmax classifier (Table 1, FCN ResNet-101).",
        tuple(rows), reference="parametric K=1",
    )


def _vocabulary(ctx: StudyContext) -> Study:
    k = ctx.num_prototypes
    if ctx.toy:
        sizes = list(ctx.vocabulary_sizes)
        paper_cols = list(ctx.paper_classes) if len(ctx.paper_classes) == len(sizes) else [None] * len(sizes)
        datasets = [replace(toy_dataset(ctx, c), paper_classes=p) for c, p in zip(sizes, paper_cols)]
    else:
        if not ctx.vocabulary_datasets:
            raise ValueError("the vocabulary study on real data needs --vocabulary-datasets "
                             "TRAIN,VAL,NUM_CLASSES ... (e.g. the ADE20K-Full subsets of Table 4)")
        datasets = [DatasetRef(t, v, c, paper_classes=c) for t, v, c in ctx.vocabulary_datasets]
    heads = [(f"ProtoSeg K={k}", "protoseg", k, PROTOSEG), ("parametric K=1", "parametric", 1, parametric(1)),
             (f"parametric K={k}", "parametric", k, parametric(k))]
    heads = list({h[0]: h for h in heads}.values())  # K = 1: one parametric row
    rows = []
    for d in datasets:
        for label, kind, kk, opts in heads:
            paper = PAPER_VOCABULARY.get((kind, kk), {}).get(d.paper_classes)
            rows.append(Variant(
                f"{label}, C={d.num_classes}", opts, x=d.num_classes, series=label, dataset=d,
                paper={"paper_classes": d.paper_classes if paper else None,
                       "paper_mIoU": paper[0] if paper else None,
                       "paper_params_M": paper[1] if paper else None,
                       "paper_proto_params_M": paper[2] if paper else None},
                extra={"num_classes": d.num_classes, "head": label},
            ))
    return Study(
        "vocabulary", "The prototype head keeps its parameters flat as the vocabulary grows while "
        "the parametric heads grow, and it stays ahead in mIoU (Table 4).",
        tuple(rows), reference=f"parametric K=1, C={datasets[0].num_classes}", plot="lines",
        xlabel="classes", xlog=True,
    )


# The learning-curve studies. One run per (variant, seed), evaluated CURVES_EVAL_POINTS
# times at even intervals; the points of a curve are iterations of ONE run under the run's own poly
# schedule (the learning rate at iteration 100 of a 300-iteration run is higher than at the end of
# a 100-iteration run). Toy default, sized for the 2 shared CPU cores of the project (a first
# schedule of 600 iterations on 96x96 images and 8 classes ran at 3-5 s per iteration while other
# jobs loaded the machine, ~5 h for the 21 runs): 4 classes on 64x64 images (0.44x the pixels),
# 300 iterations, evaluated every 50. ``--iters`` lengthens it (e.g. 3000 on a GPU) and the points
# follow; ``--curves-toy-data 8 96`` is the ablations' toy data.
CURVES_MAX_ITER = 300
CURVES_EVAL_POINTS = 6
# Detectron2's PeriodicWriter writes metrics.json every 20 iterations, and only the latest value of
# each metric: evaluations closer than that would overwrite one another, so the points of a short
# run are spaced at least this far apart (--quick: 2 points, at 2 and 4 iterations).
WRITER_PERIOD = 20
# The public reference code's training behaviour of the head where it differs from the paper
# (docs/MODEL_ZOO.md): no PPC temperature, PPD weight 0.001, Gumbel-softmax assignment for the
# update, a 2-layer projection of the embeddings. (PROJECTION "reference_mlp", with its width-wise
# l2-normalisation, exists to load the released checkpoint; "mlp" is its projection without that.)
REFERENCE_CODE = ("MODEL.PROTOSEG.PPC_TEMPERATURE", 1.0, "MODEL.PROTOSEG.PPD_WEIGHT", 0.001,
                  "MODEL.PROTOSEG.ASSIGNMENT", "gumbel", "MODEL.PROTOSEG.PROJECTION", "mlp")


def _curves_iters(ctx: StudyContext) -> int:
    return int(ctx.iters or CURVES_MAX_ITER)


def _curve_study(name: str, claim: str, rows: Sequence[Tuple[str, Tuple]], ctx: StudyContext) -> Study:
    iters = _curves_iters(ctx)
    dataset, size_opts = None, ()
    if ctx.toy:  # the curves' own toy data; a real config keeps its datasets and input sizes
        size = ctx.curves_size
        dataset = toy_dataset(ctx, ctx.curves_classes, size)
        size_opts = ("INPUT.MIN_SIZE_TRAIN", (size,), "INPUT.MIN_SIZE_TEST", size, "INPUT.CROP.SIZE", (size, size))
    return Study(name, claim, tuple(Variant(n, size_opts + o, series=n, dataset=dataset) for n, o in rows),
                 reference="parametric K=1",
                 plot="curves", xlabel="iteration", max_iter=iters,
                 eval_points=min(CURVES_EVAL_POINTS, max(2, iters // WRITER_PERIOD)))


def _curves(ctx: StudyContext) -> Study:
    return _curve_study(
        "curves", "Prototypes match or beat the softmax head (Table 1); does ProtoSeg catch up with "
        "training length? mIoU against iteration.",
        [("parametric K=1", parametric(1)), ("parametric K=10", parametric(10)),
         ("ProtoSeg (paper)", PROTOSEG), ("ProtoSeg (reference code)", PROTOSEG + REFERENCE_CODE)], ctx)


def _curves_causes(ctx: StudyContext) -> Study:
    """Candidate causes of ProtoSeg's slower start, each one existing switch on the paper's
    ProtoSeg; the same runs, seeds and points as ``curves`` for the two shared rows."""
    warmup = _curves_iters(ctx) // 10
    return _curve_study(
        "curves_causes", "Which switch, if any, closes ProtoSeg's gap to the softmax head? "
        "mIoU against iteration.",
        [("parametric K=1", parametric(1)), ("ProtoSeg (paper)", PROTOSEG),
         ("ProtoSeg, fixed T=0.1", PROTOSEG + ("MODEL.PROTOSEG.CLASS_SCORE_NORM", "temperature",
                                               "MODEL.PROTOSEG.CLASS_SCORE_TEMPERATURE", 0.1)),
         ("ProtoSeg, K=1", PROTOSEG + ("MODEL.PROTOSEG.NUM_PROTOTYPES", 1)),
         (f"ProtoSeg, warm-up {warmup}", PROTOSEG + ("MODEL.PROTOSEG.WARMUP_ITERS", warmup)),
         ("ProtoSeg, fixed T=0.1, K=1", PROTOSEG + ("MODEL.PROTOSEG.CLASS_SCORE_NORM", "temperature",
                                                    "MODEL.PROTOSEG.CLASS_SCORE_TEMPERATURE", 0.1,
                                                    "MODEL.PROTOSEG.NUM_PROTOTYPES", 1))], ctx)


STUDIES: Dict[str, Callable[[StudyContext], Study]] = {
    "objective": _objective,
    "num_prototypes": _num_prototypes,
    "momentum": _momentum,
    "distance": _distance,
    "vocabulary": _vocabulary,
    "parametric_vs_prototype": _parametric_vs_prototype,
    "curves": _curves,
    "curves_causes": _curves_causes,
}


# What ``lab/run_study.py all`` runs: the ablations, not the (longer) learning curves.
ALL_STUDIES = tuple(sorted(n for n in STUDIES if not n.startswith("curves")))


def build_study(name: str, ctx: StudyContext) -> Study:
    """The study ``name`` with its datasets filled in (toy data: the base toy dataset)."""
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; choose one of {sorted(STUDIES)} or 'all'")
    study = STUDIES[name](ctx)
    base = ctx.base_dataset()
    return replace(study, variants=tuple(v if v.dataset is not None else replace(v, dataset=base)
                                         for v in study.variants))


# --------------------------------------------------------------------------------------------
# Configs, parameter counts
# --------------------------------------------------------------------------------------------


def variant_opts(variant: Variant, iters: Optional[int] = None) -> List:
    """Overrides of a run (without OUTPUT_DIR and SEED): the dataset, the variant, one evaluation
    at the end of training, and ``iters`` if given."""
    opts: List = list(variant.dataset.opts()) if variant.dataset is not None else []
    opts += list(variant.opts)
    if iters is not None:
        opts += ["SOLVER.MAX_ITER", iters]
    return opts


def effective_cfg(config_file: Path, global_opts: Sequence, variant: Variant, iters: Optional[int] = None,
                  eval_points: int = 1):
    """The config a run of ``variant`` trains with (OUTPUT_DIR and SEED left at the file's):
    one evaluation at the end, or ``eval_points`` evenly spaced ones (the last at the end)."""
    cfg = load_config(config_file, list(global_opts) + variant_opts(variant, iters))
    if eval_points > 1:
        cfg.TEST.EVAL_PERIOD = max(1, cfg.SOLVER.MAX_ITER // eval_points)
    else:
        cfg.TEST.EVAL_PERIOD = cfg.SOLVER.MAX_ITER  # one evaluation, at the end
    return cfg


def cfg_key(cfg) -> str:
    """Identity of a run's config: sha1 of its YAML dump without OUTPUT_DIR and SEED."""
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR, c.SEED = "", -1
    return hashlib.sha1(c.dump().encode()).hexdigest()[:12]


def count_parameters(cfg) -> Dict[str, int]:
    """Of the model ``cfg`` builds (on the CPU): ``learnable_params`` (numel of the parameters
    with requires_grad), ``classifier_params`` (those of the segmentation head outside its decoder
    and auxiliary head: the parametric classifier, or ProtoSeg's LayerNorms), ``prototype_buffer``
    (numel of the (C, K, D) prototype buffer; 0 for parametric heads)."""
    from detectron2.modeling import build_model

    from protoseg.modeling.parameter_count import parameter_counts

    c = cfg.clone()
    c.defrost()
    c.MODEL.DEVICE = "cpu"
    counts = parameter_counts(build_model(c))
    body = sum(counts.get(f"learnable/{part}", 0) for part in ("backbone", "decoder", "aux_head"))
    return {
        "learnable_params": counts["learnable"],
        "classifier_params": counts["learnable"] - body,
        "prototype_buffer": counts["prototype_buffer"],
    }


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    variant: Variant
    seed: int
    run_dir: Path
    opts: List  # all overrides after the config file, OUTPUT_DIR and SEED included
    register: List[str]  # PREFIX=ROOT of the toy datasets the run needs

    @property
    def result_file(self) -> Path:
        return self.run_dir / RESULT_FILE

    def result(self) -> Optional[Dict]:
        """The run's result if it finished (its study_result.json is complete), else None."""
        try:
            res = json.loads(self.result_file.read_text())
        except (OSError, ValueError):
            return None
        return res if isinstance(res, dict) and "mIoU" in res else None


def _opt_str(v) -> str:
    return str(v) if not isinstance(v, tuple) else "(" + "".join(f"{x!r}," for x in v) + ")"


def _worker_command(run: Run, config_file: Path, num_gpus: int) -> List[str]:
    cmd = [sys.executable, str(Path(__file__).resolve())]
    for item in run.register:
        cmd += ["--register-toy", item]
    cmd += ["--", "--config-file", str(config_file), "--resume", "--num-gpus", str(num_gpus)]
    return cmd + [_opt_str(o) for o in run.opts]


def _execute(run: Run, config_file: Path, threads: int, num_gpus: int, log) -> Dict:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = _worker_command(run, config_file, num_gpus)
    t0 = time.perf_counter()
    with open(run.run_dir / "stdout.txt", "w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    wall = time.perf_counter() - t0
    res = run.result()
    if proc.returncode != 0 or res is None:
        tail = (run.run_dir / "stdout.txt").read_text()[-2000:]
        raise RuntimeError(f"run {run.variant.name} seed {run.seed} failed (exit {proc.returncode}); "
                           f"command: {' '.join(cmd)}\nlog {run.run_dir / 'stdout.txt'} ends:\n{tail}")
    log(f"  done {run.variant.name} seed {run.seed}: mIoU {res['mIoU']:.2f}, {wall:.0f} s -> {run.run_dir}")
    return res


@dataclass
class RunnerOptions:
    output_dir: Path
    config_file: Path = TOY_STUDY_CONFIG
    seeds: int = 3
    iters: Optional[int] = None
    opts: Sequence = ()
    jobs: int = 1
    threads: int = 2
    num_gpus: int = 1


def _prefix(d: DatasetRef) -> str:
    return d.train[: -len("_train")]


def plan_runs(study: Study, o: RunnerOptions) -> Tuple[List[Run], Dict[str, Dict[str, int]]]:
    """The runs of a study (one per variant and seed) and the parameter counts per variant."""
    runs, params = [], {}
    iters = o.iters if o.iters is not None else study.max_iter
    for v in study.variants:
        cfg = effective_cfg(o.config_file, o.opts, v, iters, study.eval_points)
        key = cfg_key(cfg)
        params[v.name] = count_parameters(cfg)
        register = [f"{_prefix(v.dataset)}={o.output_dir / 'data' / _prefix(v.dataset)}"] if (
            v.dataset is not None and v.dataset.toy_spec is not None) else []
        for seed in range(o.seeds):
            run_dir = o.output_dir / "runs" / key / f"seed{seed}"
            opts = list(o.opts) + variant_opts(v, iters) + [
                "TEST.EVAL_PERIOD", cfg.TEST.EVAL_PERIOD, "SEED", seed, "OUTPUT_DIR", str(run_dir)]
            runs.append(Run(v, seed, run_dir, opts, register))
    return runs, params


def prepare_datasets(study: Study, output_dir: Path, log) -> None:
    """Generate the toy datasets of a study once (kept if already complete)."""
    from toy_scenes import ensure_toy_scenes

    seen = set()
    for v in study.variants:
        d = v.dataset
        if d is None or d.toy_spec is None or d.train in seen:
            continue
        seen.add(d.train)
        root = output_dir / "data" / _prefix(d)
        t0 = time.perf_counter()
        ensure_toy_scenes(root, d.toy_spec)
        log(f"toy data {root.name} ready ({time.perf_counter() - t0:.1f} s)")


def run_study(study: Study, o: RunnerOptions, log=print) -> List[Dict]:
    """Run (or resume) every (variant, seed) of ``study``, then write its tables and plot.
    Returns the table rows."""
    prepare_datasets(study, o.output_dir, log)
    runs, params = plan_runs(study, o)
    todo = [r for r in runs if r.result() is None]
    # Identical configs shared with another study variant appear once.
    unique = list({str(r.run_dir): r for r in todo}.values())
    if study.plot == "curves":  # seed by seed: an interrupted study has whole seeds of every variant
        unique.sort(key=lambda r: r.seed)
    log(f"study {study.name}: {len(study.variants)} variants x {o.seeds} seeds = {len(runs)} runs, "
        f"{len(runs) - len(todo)} finished before, {len(unique)} to run ({o.jobs} at a time, "
        f"{o.threads} threads each)")
    if unique:
        with ThreadPoolExecutor(max_workers=max(1, o.jobs)) as pool:
            list(pool.map(lambda r: _execute(r, o.config_file, o.threads, o.num_gpus, log), unique))
    if study.plot == "curves":
        rows = summarize_curves(study, runs, params)
        write_curve_outputs(study, rows, o.output_dir / study.name)
    else:
        rows = summarize(study, runs, params)
        write_outputs(study, rows, o.output_dir / study.name)
    return rows


# --------------------------------------------------------------------------------------------
# The worker: one run, in its own process
# --------------------------------------------------------------------------------------------
def _load_train_net():
    """``train_net.py`` of the repository as a module (its ``main`` is what a run executes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_protoseg_train_net", REPO / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics_lines(output_dir: Path) -> List[Dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.json").read_text().splitlines() if line.strip()]


def read_curve(output_dir: Path, max_iter: int) -> List[Tuple[int, float]]:
    """Every evaluation of a run as (iterations trained, mIoU), sorted by iteration (see
    :func:`curve_points`)."""
    return curve_points(_metrics_lines(output_dir), max_iter)


def curve_points(lines: Sequence[Dict], max_iter: int) -> List[Tuple[int, float]]:
    """The evaluations among metrics.json ``lines`` as (iterations trained, mIoU), sorted by
    iteration. Detectron2's EvalHook records a periodic evaluation after iteration ``i`` (0-based)
    under ``i`` and the one at the end of training under ``max_iter``; both become the number of
    iterations trained. A resumed run may repeat an evaluation: the last one counts."""
    points: Dict[int, float] = {}
    for m in lines:
        if "sem_seg/mIoU" in m:
            it = int(m["iteration"])
            points[it if it >= max_iter else it + 1] = float(m["sem_seg/mIoU"])
    return sorted(points.items())


def read_run_metrics(output_dir: Path, max_iter: Optional[int] = None) -> Dict[str, float]:
    """From a finished run's metrics.json: the final evaluation (``mIoU``, ``fwIoU``, ``mACC``,
    ``pACC``), ``sec_per_iter``, the mean of Detectron2's per-iteration step time ("time":
    medians over 20-iteration windows, data loading included, evaluation excluded) and, with
    ``max_iter``, ``curve``: every evaluation as [iterations trained, mIoU] (:func:`curve_points`)."""
    lines = _metrics_lines(output_dir)
    evals = [m for m in lines if "sem_seg/mIoU" in m]
    if not evals:
        raise RuntimeError(f"{output_dir}/metrics.json has no 'sem_seg/mIoU' (no evaluation at the end?)")
    last = evals[-1]
    times = [m["time"] for m in lines if "time" in m]
    out = {k: float(last[f"sem_seg/{k}"]) for k in ("mIoU", "fwIoU", "mACC", "pACC")}
    out["sec_per_iter"] = float(sum(times) / len(times)) if times else float("nan")
    out["eval_iteration"] = int(last["iteration"])
    if max_iter is not None:
        out["curve"] = [list(p) for p in curve_points(lines, max_iter)]
    return out


def worker_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python lab/studies.py [--register-toy PREFIX=ROOT ...] -- <train_net.py arguments>``:
    register the toy datasets, run ``train_net.py``'s ``main`` (through Detectron2's ``launch``,
    as the script does), then write ``<OUTPUT_DIR>/study_result.json`` from its metrics.json."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own = argparse.ArgumentParser(prog="python lab/studies.py")
    own.add_argument("--register-toy", action="append", default=[], metavar="PREFIX=ROOT")
    args = own.parse_args(argv[:split])
    from detectron2.engine import default_argument_parser

    from protoseg.data.datasets import register_toy_scenes

    for item in args.register_toy:
        prefix, _, root = item.partition("=")
        register_toy_scenes(Path(root), prefix=prefix)
    train_args = default_argument_parser().parse_args(argv[split + 1:])
    train_net = _load_train_net()
    t0 = time.perf_counter()
    train_net.launch(train_net.main, train_args.num_gpus, num_machines=train_args.num_machines,
           machine_rank=train_args.machine_rank, dist_url=train_args.dist_url, args=(train_args,))
    wall = time.perf_counter() - t0
    cfg = load_config(Path(train_args.config_file), train_args.opts)
    result = read_run_metrics(Path(cfg.OUTPUT_DIR), int(cfg.SOLVER.MAX_ITER))
    result.update(seed=int(cfg.SEED), max_iter=int(cfg.SOLVER.MAX_ITER), run_seconds=wall, config_key=cfg_key(cfg))
    tmp = Path(cfg.OUTPUT_DIR) / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(Path(cfg.OUTPUT_DIR) / RESULT_FILE)  # atomic: a result file is always complete
    return 0


# --------------------------------------------------------------------------------------------
# Tables and plots
# --------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarize(study: Study, runs: Sequence[Run], params: Dict[str, Dict[str, int]]) -> List[Dict]:
    """One row per variant: mIoU mean/std over seeds, the paired (same seed) difference to the
    reference row, seconds per iteration, parameters, the study's and the paper's columns."""
    by_variant: Dict[str, Dict[int, Dict]] = {}
    for r in runs:
        res = r.result()
        if res is None:
            raise RuntimeError(f"run {r.run_dir} has no {RESULT_FILE}")
        by_variant.setdefault(r.variant.name, {})[r.seed] = res
    ref = by_variant[study.reference]
    rows = []
    for v in study.variants:
        res = by_variant[v.name]
        seeds = sorted(res)
        miou_mean, miou_std = _mean_std([res[s]["mIoU"] for s in seeds])
        delta_mean, delta_std = _mean_std([res[s]["mIoU"] - ref[s]["mIoU"] for s in seeds])
        row = {"variant": v.name}
        if v.x is not None:
            row["x"] = v.x
        row.update(v.extra)
        row.update({
            "mIoU_mean": round(miou_mean, 3), "mIoU_std": round(miou_std, 3), "seeds": len(seeds),
            "delta_vs_ref_mean": round(delta_mean, 3),
            "delta_vs_ref_std": round(delta_std, 3),
            "sec_per_iter": round(_mean_std([res[s]["sec_per_iter"] for s in seeds])[0], 4),
            "iters": res[seeds[0]]["max_iter"],
        })
        row.update(params[v.name])
        row.update(v.paper)
        row["series"] = v.series
        rows.append(row)
    return rows


def summarize_curves(study: Study, runs: Sequence[Run], params: Dict[str, Dict[str, int]]) -> List[Dict]:
    """One row per (variant, evaluation point): mIoU mean/std over seeds at that iteration and the
    paired (same seed, same iteration) difference to the reference variant."""
    curves: Dict[str, Dict[int, Dict[int, float]]] = {}  # variant -> seed -> iteration -> mIoU
    results: Dict[str, Dict[int, Dict]] = {}
    for r in runs:
        res = r.result()
        if res is None:
            raise RuntimeError(f"run {r.run_dir} has no {RESULT_FILE}")
        points = res.get("curve") or read_curve(r.run_dir, int(res["max_iter"]))
        curves.setdefault(r.variant.name, {})[r.seed] = {int(i): float(m) for i, m in points}
        results.setdefault(r.variant.name, {})[r.seed] = res
    ref = curves[study.reference]
    rows = []
    for v in study.variants:
        per_seed, seeds = curves[v.name], sorted(curves[v.name])
        iterations = sorted(set.intersection(*(set(c) for c in per_seed.values())))
        missing = sorted(set().union(*(set(c) for c in per_seed.values())) - set(iterations))
        if missing:
            raise RuntimeError(f"{v.name}: evaluations at {missing} are missing from some seeds")
        sec = round(_mean_std([results[v.name][s]["sec_per_iter"] for s in seeds])[0], 4)
        for it in iterations:
            miou_mean, miou_std = _mean_std([per_seed[s][it] for s in seeds])
            delta_mean, delta_std = _mean_std([per_seed[s][it] - ref[s][it] for s in seeds])
            row = {"variant": v.name, "iteration": it, "mIoU_mean": round(miou_mean, 3),
                   "mIoU_std": round(miou_std, 3), "seeds": len(seeds),
                   "delta_vs_ref_mean": round(delta_mean, 3), "delta_vs_ref_std": round(delta_std, 3),
                   "sec_per_iter": sec, "iters": results[v.name][seeds[0]]["max_iter"]}
            row.update(params[v.name])
            row["series"] = v.series or v.name
            rows.append(row)
    return rows


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} +- {std:.2f}"


def write_curve_outputs(study: Study, rows: List[Dict], out_dir: Path) -> None:
    """``<study>.csv`` (one row per variant and evaluation point), ``<study>.md`` (mIoU per point,
    paired differences per point, the long table) and ``<study>.png`` (the curves)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "series"]
    with open(out_dir / f"{study.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    iterations = sorted({r["iteration"] for r in rows})
    cell = {(r["variant"], r["iteration"]): r for r in rows}
    seeds = rows[0]["seeds"]
    head = "| variant | " + " | ".join(f"it {i}" for i in iterations) + " |"
    sep = "|---|" + "---|" * len(iterations)
    lines = [f"# Study `{study.name}`", "", f"Paper: {study.claim}", "",
             f"mIoU in %, mean +- std over {seeds} seed(s), at each evaluation of one run per seed "
             f"({rows[0]['iters']} iterations, poly learning rate over the whole run).", "",
             "## mIoU per evaluation point", "", head, sep]
    for v in variants:
        lines.append(f"| {v} | " + " | ".join(
            _pm(cell[v, i]["mIoU_mean"], cell[v, i]["mIoU_std"]) if (v, i) in cell else "" for i in iterations) + " |")
    lines += ["", f"## Paired difference to `{study.reference}` per point (same seed, same iteration)", "",
              head, sep]
    for v in variants:
        if v == study.reference:
            continue
        lines.append(f"| {v} | " + " | ".join(
            _pm(cell[v, i]["delta_vs_ref_mean"], cell[v, i]["delta_vs_ref_std"]) if (v, i) in cell else ""
            for i in iterations) + " |")
    lines += ["", "## All columns", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    (out_dir / f"{study.name}.md").write_text("\n".join(lines) + "\n")
    plot_curves(study, rows, out_dir / f"{study.name}.png")


def plot_curves(study: Study, rows: List[Dict], path: Path) -> None:
    """Left: mIoU against iteration per variant, the band is mean +- std over seeds. Right: the
    paired difference to the reference variant against iteration, band +- its std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4))
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for series in dict.fromkeys(r["series"] for r in rows):
        pts = sorted((r["iteration"], r["mIoU_mean"], r["mIoU_std"], r["delta_vs_ref_mean"], r["delta_vs_ref_std"])
                     for r in rows if r["series"] == series)
        xs = [p[0] for p in pts]
        line, = ax.plot(xs, [p[1] for p in pts], marker="o", ms=3, label=series)
        ax.fill_between(xs, [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts], color=line.get_color(), alpha=0.15)
        if series == study.reference:
            bx.axhline(0.0, color=line.get_color(), lw=1, label=f"{series} (reference)")
            continue
        bx.plot(xs, [p[3] for p in pts], marker="o", ms=3, color=line.get_color(), label=series)
        bx.fill_between(xs, [p[3] - p[4] for p in pts], [p[3] + p[4] for p in pts], color=line.get_color(), alpha=0.15)
    for a in (ax, bx):
        a.set_xticks(sorted({r["iteration"] for r in rows}))
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"mIoU (%), mean +- std over {rows[0]['seeds']} seed(s)")
    bx.set_xlabel("iteration")
    bx.set_ylabel(f"paired mIoU difference to {study.reference}")
    for a in (ax, bx):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"{study.name}: {study.claim}", fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)


def _fmt(v) -> str:
    """Table cell: empty for None, floats with up to 4 significant digits or 2 decimals."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def write_outputs(study: Study, rows: List[Dict], out_dir: Path) -> None:
    """``<study>.csv``, ``<study>.md`` and ``<study>.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in ("series", "x")]
    with open(out_dir / f"{study.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    lines = [f"# Study `{study.name}`", "", f"Paper: {study.claim}", "",
             "mIoU in %, mean +- std over seeds; delta: paired (same seed) difference to "
             f"`{study.reference}`; paper columns: the paper's row of the same setting (ADE20K).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    (out_dir / f"{study.name}.md").write_text("\n".join(lines) + "\n")
    plot_study(study, rows, out_dir / f"{study.name}.png")


def plot_study(study: Study, rows: List[Dict], path: Path) -> None:
    """mIoU (mean, error bars = std over seeds) against the study's variable: lines (one per
    series) for K, mu (as 1/(1-mu)) and the vocabulary size, bars otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    if study.plot == "lines":
        for series in dict.fromkeys(r["series"] for r in rows):
            pts = sorted((r["x"], r["mIoU_mean"], r["mIoU_std"]) for r in rows if r["series"] == series)
            xs = [max(p[0], 1e-9) for p in pts]
            ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=series or "this run")
        if study.xlog:
            ax.set_xscale("log")
        ax.set_xlabel(study.xlabel)
        ax.minorticks_off()  # log axes: only the studied values are labelled
        ax.set_xticks([r["x"] for r in rows])
        ax.set_xticklabels([_fmt(r["x"]) if study.name != "momentum" else r["variant"].replace("mu=", "")
                            for r in rows], rotation=30, fontsize=8)
        if any(r["series"] for r in rows):
            ax.legend(fontsize=8)
    else:
        xs = list(range(len(rows)))
        ax.bar(xs, [r["mIoU_mean"] for r in rows], yerr=[r["mIoU_std"] for r in rows], capsize=4,
               color="tab:blue", alpha=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels([r["variant"] for r in rows], fontsize=9)
    iters = rows[0]["iters"]
    ax.set_ylabel(f"mIoU (%), {rows[0]['seeds']} seed(s), {iters} iterations")
    ax.set_title(f"{study.name}: {study.claim}", fontsize=8, wrap=True)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)


if __name__ == "__main__":
    sys.exit(worker_main())
