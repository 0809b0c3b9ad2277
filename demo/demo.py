#!/usr/bin/env python
"""Run a ProtoSeg (or baseline) model on images and save the predictions drawn over them.

    python demo/demo.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml \
        --input 'datasets/toy_scenes/images/validation/*.jpg' --output output/vis \
        --opts MODEL.WEIGHTS output/toy/protoseg_r18-d8_fcn/model_final.pth
"""
import argparse
import glob
import os
import sys

import cv2
import numpy as np
from PIL import Image

from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predictor import SemSegDemo  # noqa: E402

from protoseg.engine import setup_cfg  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(patterns):
    """Files, globs and folders -> sorted list of image paths; error naming a pattern that matches none."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern)) if f.lower().endswith(IMAGE_EXTS)]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"--input {pattern!r} matches no image")
        paths.extend(found)
    return paths


def output_path(output, path, many):
    if many or os.path.isdir(output) or output.endswith(os.sep):
        os.makedirs(output, exist_ok=True)
        return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return output


def get_parser():
    parser = argparse.ArgumentParser(description="ProtoSeg demo: draw semantic segmentation predictions")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files, globs or folders")
    parser.add_argument("--output", required=True, help="output file (one input) or folder")
    parser.add_argument("--alpha", type=float, default=0.6, help="opacity of the drawn labels")
    parser.add_argument("--no-labels", action="store_true", help="colours only, no class names")
    parser.add_argument("--save-label-map", action="store_true",
                        help="also write the raw label map as PNG (16-bit when classes > 256)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="protoseg")
    cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts, eval_only=True))
    demo = SemSegDemo(cfg, alpha=args.alpha, labels=not args.no_labels)
    paths = expand_inputs(args.input)
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read image {path}")
        label_map, vis = demo.run_on_image(image)
        out = output_path(args.output, path, len(paths) > 1)
        Image.fromarray(vis).save(out)
        if args.save_label_map:
            dtype = np.uint8 if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES <= 256 else np.uint16
            Image.fromarray(label_map.astype(dtype)).save(os.path.splitext(out)[0] + "_labels.png")
        print(f"{path} -> {out}")


if __name__ == "__main__":
    main()
