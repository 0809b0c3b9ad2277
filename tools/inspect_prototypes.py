#!/usr/bin/env python
"""Prototype health report of a checkpoint: within-class diversity (mean / max pairwise cosine of
each class's K prototypes) and, with a config, how many pixels each prototype wins on a dataset.

    python tools/inspect_prototypes.py output/toy/protoseg_r18-d8_fcn/model_final.pth
    python tools/inspect_prototypes.py output/toy/protoseg_r18-d8_fcn/model_final.pth \\
        --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml --dataset toy_scenes_sem_seg_val \\
        --output-dir output/prototype_health

Prints a table and warnings ("collapsed": mean pairwise cosine above --collapse-threshold;
"unused": a prototype that wins no pixel of its class), writes prototype_health.csv/.json to
--output-dir if given. Exits 0, also with warnings; with --fail-on-collapse, exits 2 when a class
has collapsed.
"""
import argparse
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

import protoseg  # noqa: F401  (registers the model parts and datasets)
from protoseg.visualization import build_cfg, load_model
from protoseg.visualization.prototype_health import health_report, load_prototypes, prototype_usage


def get_parser():
    parser = argparse.ArgumentParser(description="Diversity and usage of the prototypes of a ProtoSeg checkpoint")
    parser.add_argument("checkpoint", metavar="CKPT", help=".pth checkpoint (Detectron2 or a plain state dict)")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="config of the checkpoint: enables usage counts on --dataset")
    parser.add_argument("--dataset", default="",
                        help="registered dataset for usage counts and class names (default: the config's first "
                             "DATASETS.TEST)")
    parser.add_argument("--num-images", type=int, default=0, help="first N images of the dataset (0: all)")
    parser.add_argument("--correct-only", action="store_true",
                        help="count only pixels the model predicts correctly (the pixels that update prototypes)")
    parser.add_argument("--collapse-threshold", type=float, default=0.99,
                        help="a class is 'collapsed' when its mean pairwise prototype cosine exceeds this")
    parser.add_argument("--output-dir", default="", help="write prototype_health.csv and .json here")
    parser.add_argument("--fail-on-collapse", action="store_true", help="exit with status 2 if a class collapsed")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="if torch.load(weights_only=True) refuses the file, unpickle it fully (trusted files only)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="protoseg")
    prototypes = load_prototypes(args.checkpoint, allow_pickle=args.allow_pickle)
    num_classes = prototypes.shape[0]
    counts, num_images, dataset = None, 0, args.dataset
    if args.config_file:
        cfg = build_cfg(args.config_file, list(args.opts) + ["MODEL.WEIGHTS", args.checkpoint])
        dataset = dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        if not dataset:
            raise SystemExit("usage counts need a dataset: pass --dataset NAME")
        model = load_model(cfg)
        dicts = DatasetCatalog.get(dataset)
        if args.num_images > 0:
            dicts = dicts[: args.num_images]
        counts, _ = prototype_usage(model, cfg, dicts, correct_only=args.correct_only)
        num_images = len(dicts)
    elif args.opts:
        raise SystemExit("--opts needs --config-file")
    names = None
    if dataset and dataset in MetadataCatalog.list():
        names = MetadataCatalog.get(dataset).get("stuff_classes", None)
        if names is not None and len(names) != num_classes:
            names = None
    report = health_report(
        prototypes, names, args.collapse_threshold, counts, source=args.checkpoint, num_images=num_images,
        pixels_counted=("correctly predicted" if args.correct_only else "labelled") + (f" {dataset}" if dataset else ""),
    )
    print(report.summary())
    print(report.table())
    if report.warnings:
        print(f"\n{len(report.warnings)} warning(s):")
        for w in report.warnings:
            print(f"WARNING {w}")
    else:
        print("\nno warnings")
    if args.output_dir:
        paths = report.save(args.output_dir)
        print(f"written: {paths['csv']}, {paths['json']}")
    if args.fail_on_collapse and report.collapsed.any():
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
