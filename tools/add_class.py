#!/usr/bin/env python
"""Add a class to a trained model from a few labelled images, without training.

    python tools/add_class.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml \\
        --weights output/toy/protoseg_r18-d8_fcn/model_final.pth --name zebra \\
        --images a.jpg b.jpg --masks a_mask.png b_mask.png --output output/toy/with_zebra
    python train_net.py --config-file output/toy/with_zebra/config.yaml --eval-only
    python demo/demo.py --config-file output/toy/with_zebra/config.yaml --input x.jpg --output vis/

A mask is a PNG of the image's size, non-zero where the class is. The images are read as the
model reads test images (INPUT.FORMAT, INPUT.MIN_SIZE_TEST); the class's pixel embeddings become:

- ProtoSeg: K prototypes by the training's within-class Sinkhorn clustering, and the class-score
  LayerNorm extended with the mean of the learned weights and biases;
- parametric heads: new classifier rows by weight imprinting (the l2-normalised mean embedding,
  scaled to the mean norm of the existing rows; bias the mean of the existing biases).

Written into --output: model_final.pth (C + 1 classes) and config.yaml: the full config with
MODEL.SEM_SEG_HEAD.NUM_CLASSES C + 1, MODEL.SEM_SEG_HEAD.CLASS_NAMES (the C + 1 names, which
train_net.py --eval-only, the demo and the web page show) and MODEL.WEIGHTS the new file. Run the
tool again on the output to add another class. See protoseg/new_class.py and docs/OPEN_WORLD.md.
"""
import argparse
from pathlib import Path

from protoseg.config import load_config  # (importing protoseg registers the datasets)
from protoseg.new_class import add_class, write_added_class


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config of the trained model")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="trained checkpoint (.pth); default: the config's MODEL.WEIGHTS")
    parser.add_argument("--name", required=True, help="name of the new class (not one of the model's)")
    parser.add_argument("--images", nargs="+", required=True, metavar="IMAGE", help="images showing the class")
    parser.add_argument("--masks", nargs="+", required=True, metavar="MASK",
                        help="one mask PNG per image, in the same order: non-zero = the class")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for model_final.pth and config.yaml (made if missing)")
    parser.add_argument("--min-share", type=float, default=0.5,
                        help="share of an embedding cell (stride x stride pixels) the mask must cover "
                             "for the cell to count (default 0.5: a majority)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clustering's start")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if len(args.images) != len(args.masks):
        raise SystemExit(f"--images has {len(args.images)} files but --masks {len(args.masks)}: one mask per image")
    if not 0.0 < args.min_share <= 1.0:
        raise SystemExit(f"--min-share must be in (0, 1], got {args.min_share}")
    cfg = load_config(args.config_file, args.opts)
    weights = args.weights or cfg.MODEL.WEIGHTS
    if not weights:
        raise SystemExit("no trained weights: pass --weights path/to/model_final.pth (or MODEL.WEIGHTS in the config)")
    if not Path(weights).is_file():
        raise SystemExit(f"--weights {weights}: no such file")
    try:
        addition = add_class(cfg, weights, list(zip(args.images, args.masks)), args.name,
                             min_share=args.min_share, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"add_class: {e}")
    model_path, config_path = write_added_class(cfg, addition, args.output)
    C = len(addition.class_names)
    print(f"class {C - 1} {args.name!r} added from {len(args.images)} image(s), {addition.support_cells} embedding "
          f"cells; cells per prototype/row: {addition.pixel_counts}")
    print(f"best old class changed by the {C}-class score normalisation on {100 * addition.old_argmax_changed:.2f} % "
          f"of the support images' cells")
    print(f"written {model_path} and {config_path} ({C} classes); evaluate with\n"
          f"  python train_net.py --config-file {config_path} --eval-only")


if __name__ == "__main__":
    main()
