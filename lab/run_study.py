#!/usr/bin/env python
"""Run the paper's ablation studies (Tables 5a-d, Table 4, Table 1's FCN rows) and write their tables.

    python lab/run_study.py all                                   # toy data, 3 seeds, ~1 h on 2 cores
    python lab/run_study.py curves --seeds 3                      # mIoU against iteration (not in `all`)
    python lab/run_study.py curves_causes --seeds 3               # ProtoSeg switches on the same curves
    python lab/run_study.py num_prototypes --seeds 3 --jobs 2 --threads 1
    python lab/run_study.py distance --quick                      # smoke run: 1 seed, tiny data
    python lab/run_study.py objective --config-file configs/ade20k/<real config>.yaml \\
        --jobs 1 --threads 8 --num-gpus 1 --output-dir output/study_ade20k
    python lab/run_study.py vocabulary --config-file <real config> \\
        --vocabulary-datasets ade20k_sem_seg_train,ade20k_sem_seg_val,150 \\
        ade20k_full_300_sem_seg_train,ade20k_full_300_sem_seg_val,300 ...

Every (variant, seed) is one run of train_net.py's main in its own process and OUTPUT_DIR
(``<output-dir>/runs/<config hash>/seed<N>``); finished runs are detected from their
study_result.json and not run again. Tables and plots: ``<output-dir>/<study>/<study>.{csv,md,png}``.
``curves`` and ``curves_causes`` evaluate each run several times (evenly spaced, the last at the
end) and plot mIoU against iteration; their default schedule is their own (``studies.CURVES_MAX_ITER``),
``--iters N`` lengthens or shortens it (on a GPU: longer) and the points follow.
``--iters N`` shortens the schedule, warm-up included: the warm-up is capped at
SOLVER.MAX_WARMUP_FRACTION of N (``protoseg.solver.effective_warmup_iters``).
See lab/STUDIES.md and ``lab/studies.py``.
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from studies import ALL_STUDIES, STUDIES, TOY_STUDY_CONFIG, RunnerOptions, StudyContext, build_study, run_study  # lab/studies.py

from protoseg.config import load_config

# --quick: 1 seed, 4 iterations of batch 2 on 64x64 images, 8 + 4 images per dataset, vocabulary of
# 4 and 8 classes: a smoke test of the whole pipeline (tables, plot, resume), not a measurement.
# No warm-up: 4 iterations leave none under SOLVER.MAX_WARMUP_FRACTION 0.1 (it would be cut to 0,
# with a warning per run).
QUICK_OPTS = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64, "INPUT.CROP.SIZE", (64, 64),
              "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 0]
QUICK_ITERS = 4
QUICK_VOCABULARY = (4, 8)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("study", choices=sorted(STUDIES) + ["all"],
                   help=f"'all' = {', '.join(ALL_STUDIES)} (the learning curves are run by name)")
    p.add_argument("--config-file", type=Path, default=None,
                   help=f"base config (default: {TOY_STUDY_CONFIG.relative_to(TOY_STUDY_CONFIG.parents[2])} "
                        "on generated toy data); a real config trains on its own datasets")
    p.add_argument("--toy-data", action="store_true",
                   help="generate and use the toy datasets with --config-file too")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant (default 3)")
    p.add_argument("--quick", action="store_true", help="1 seed, 4 iterations, tiny data (smoke test)")
    p.add_argument("--output-dir", type=Path, default=Path("output/study"))
    p.add_argument("--iters", type=int, default=None,
                   help="SOLVER.MAX_ITER of every run; the config's warm-up is capped at "
                        "SOLVER.MAX_WARMUP_FRACTION (0.1) of it, e.g. 1500 -> 100 at --iters 1000")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: one per core)")
    p.add_argument("--threads", type=int, default=1, help="OMP/torch threads per run (default 1)")
    p.add_argument("--num-gpus", type=int, default=1, help="train_net.py --num-gpus of each run")
    p.add_argument("--vocabulary-sizes", type=int, nargs="+", default=[4, 8, 16],
                   help="toy class counts of the vocabulary study")
    p.add_argument("--paper-classes", type=int, nargs="+", default=[150, 500, 847],
                   help="Table 4 columns set beside the toy vocabularies, in the same order")
    p.add_argument("--vocabulary-datasets", nargs="+", default=[], metavar="TRAIN,VAL,NUM_CLASSES",
                   help="real data: registered dataset names and class count per vocabulary")
    p.add_argument("--curves-toy-data", type=int, nargs=2, default=None, metavar=("CLASSES", "SIZE"),
                   help="toy classes and image size of the curves studies (default 4 64; "
                        "--quick: 4 and the quick size)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="run and tabulate only these variants of the study (by their table name; "
                        "the study's reference row is always kept)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE ... config overrides for every run (last option)")
    return p.parse_args(argv)


def parse_vocabulary_datasets(items):
    out = []
    for item in items:
        parts = item.split(",")
        if len(parts) != 3 or not parts[2].isdigit():
            raise SystemExit(f"--vocabulary-datasets: expected TRAIN,VAL,NUM_CLASSES, got {item!r}")
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def select_variants(study, names):
    """``study`` with only the variants ``names`` (and its reference row), in the study's order."""
    if not names:
        return study
    known = [v.name for v in study.variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--variants: {unknown} not in study {study.name}; its variants: {known}")
    keep = set(names) | {study.reference}
    return replace(study, variants=tuple(v for v in study.variants if v.name in keep))


def main(argv=None) -> int:
    args = parse_args(argv)
    if len(args.opts) % 2:
        raise SystemExit(f"--opts needs KEY VALUE pairs, got {args.opts}")
    toy = args.config_file is None or args.toy_data
    config_file = (args.config_file or TOY_STUDY_CONFIG).resolve()
    opts = list(args.opts)
    seeds, iters, vocab = args.seeds, args.iters, args.vocabulary_sizes
    if args.quick:
        opts, seeds, iters, vocab = QUICK_OPTS + opts, 1, iters or QUICK_ITERS, list(QUICK_VOCABULARY)
    base_cfg = load_config(config_file, opts + (["SOLVER.MAX_ITER", iters] if iters else []))
    ctx = StudyContext(base_cfg, toy=toy, quick=args.quick, vocabulary_sizes=vocab,
                       vocabulary_datasets=parse_vocabulary_datasets(args.vocabulary_datasets),
                       paper_classes=args.paper_classes, iters=iters)
    if args.curves_toy_data:
        ctx.curves_classes, ctx.curves_size = args.curves_toy_data
    elif args.quick:
        ctx.curves_size = int(base_cfg.INPUT.MIN_SIZE_TEST)
    options = RunnerOptions(output_dir=args.output_dir.resolve(), config_file=config_file, seeds=seeds,
                            iters=iters, opts=opts, jobs=args.jobs, threads=args.threads,
                            num_gpus=args.num_gpus)
    names = list(ALL_STUDIES) if args.study == "all" else [args.study]
    t0 = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        study = select_variants(build_study(name, ctx), args.variants)
        run_study(study, options)
        out = options.output_dir / name
        print(f"study {name}: {time.perf_counter() - t:.0f} s; tables and plot in {out}/{name}.{{csv,md,png}}")
        print((out / f"{name}.md").read_text())
    print(f"{len(names)} stud{'y' if len(names) == 1 else 'ies'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
