#!/usr/bin/env python
"""Run a ProtoSeg (or baseline) model on images, a video or a webcam and draw its predictions
(Detectron2's demo conventions).

    python demo/demo.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml \
        --input "${DETECTRON2_DATASETS:-datasets}/toy_scenes/images/validation/*.jpg" --output output/vis \
        --opts MODEL.WEIGHTS output/toy/protoseg_r18-d8_fcn/model_final.pth
    python demo/demo.py --config-file CONFIG --video-input clip.mp4 --output out.mp4 --opts MODEL.WEIGHTS ...
    python demo/demo.py --config-file CONFIG --webcam --opts MODEL.WEIGHTS ...

``--input`` takes files, globs and folders; ``--output`` is a file (one input) or a folder (made
if missing). Without ``--output`` the pictures are shown in an OpenCV window (needs a GUI build of
OpenCV, not opencv-python-headless). The inputs and MODEL.WEIGHTS are checked before the model is
built: every input is decoded once; a file named on its own that is not a readable image is an
error, the files of a glob or folder that are not are skipped and listed in one warning. Without
MODEL.WEIGHTS the demo refuses to run unless ``--allow-random-weights`` is given. Images are read
as training reads them (``protoseg.data.image_io``: 16-bit scaled to 8 bits, EXIF orientation
applied).
"""
import argparse
import glob
import logging
import os
import time

import cv2
import numpy as np
import torch
from PIL import Image

from detectron2.utils.logger import setup_logger

from predictor import SemSegDemo, save_label_map

from protoseg.config import load_config  # (importing protoseg registers the datasets)
from protoseg.data.image_io import ImageReadError, inspect_image, read_image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
WINDOW_NAME = "ProtoSeg"
logger = logging.getLogger("protoseg")


def setup_cfg(args):
    """Config file + ``--opts``; no ``default_setup``: the demo writes nothing into OUTPUT_DIR.
    A CUDA config runs on the CPU when no GPU is available. SystemExit when MODEL.WEIGHTS is empty
    (unless ``--allow-random-weights``) or names no file."""
    cfg = load_config(args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but no GPU is available: running on the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    check_weights(cfg.MODEL.WEIGHTS, args.allow_random_weights)
    if getattr(args, "unknown_threshold", None) is not None:
        cfg.TEST.UNKNOWN_SCORE = args.unknown_score or cfg.TEST.UNKNOWN_SCORE or (
            "nearest_prototype" if cfg.MODEL.SEM_SEG_HEAD.NAME == "ProtoSegHead" else "max_softmax")
    cfg.freeze()
    return cfg


def check_weights(weights, allow_random):
    """SystemExit for empty weights (unless ``allow_random``: a warning) and for a local path that
    is not a file (URLs such as detectron2:// are left to the checkpointer)."""
    if not weights:
        if not allow_random:
            raise SystemExit(
                "MODEL.WEIGHTS is empty: the predictions would come from a randomly initialised model. Pass "
                "the checkpoint (--opts MODEL.WEIGHTS path/to/model_final.pth), or --allow-random-weights "
                "to draw a random model's predictions on purpose"
            )
        logger.warning("--allow-random-weights: MODEL.WEIGHTS is empty, the model is randomly initialised")
    elif "://" not in weights and not os.path.isfile(weights):
        raise SystemExit(f"MODEL.WEIGHTS {weights}: no such file")


def expand_inputs(patterns):
    """Files, globs and folders -> list of paths (folders: their files with an image extension,
    sorted; globs: sorted); FileNotFoundError naming a pattern that matches no readable file."""
    return [p for pattern in patterns for p in _expand_pattern(pattern)]


def _expand_pattern(pattern):
    pattern = os.path.expanduser(pattern)
    if os.path.isdir(pattern):
        found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern)) if f.lower().endswith(IMAGE_EXTS)]
    else:
        found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
    if not any(os.access(p, os.R_OK) for p in found):
        raise FileNotFoundError(f"--input {pattern!r} matches no readable image file{_datasets_hint(pattern)}")
    return found


def readable_images(patterns):
    """The image paths of ``--input``, each decoded once (as it will be read) before the model is
    built. A file named on its own that is not a readable image: :class:`ImageReadError` naming
    it. Files of a glob or folder that are not: skipped, listed with the reason in one warning;
    FileNotFoundError when a pattern keeps none."""
    paths, skipped = [], []
    for pattern in patterns:
        single = os.path.isfile(os.path.expanduser(pattern))
        kept, rejected = [], []
        for path in _expand_pattern(pattern):
            try:
                inspect_image(path)
            except ImageReadError as e:
                if single:
                    raise ImageReadError(f"--input {path} is not a readable image: {e.reason}") from e
                rejected.append(f"{path} ({e.reason})")
                continue
            kept.append(path)
        if not kept:
            raise FileNotFoundError(f"--input {pattern!r} matches no readable image file: " + "; ".join(rejected))
        paths, skipped = paths + kept, skipped + rejected
    if skipped:
        logger.warning("skipping %d input file(s) that are not readable images: %s", len(skipped), "; ".join(skipped))
    return paths


def _datasets_hint(pattern):
    """For a pattern under ./datasets: where the datasets are (DETECTRON2_DATASETS)."""
    if os.path.normpath(pattern).split(os.sep)[0] != "datasets":
        return ""
    root = os.environ.get("DETECTRON2_DATASETS")
    where = f"DETECTRON2_DATASETS is {root!r}" if root else "DETECTRON2_DATASETS is not set"
    return (f" (relative to {os.getcwd()}; {where}: write the path as "
            f"\"${{DETECTRON2_DATASETS:-datasets}}/...\" to follow it)")


def output_is_folder(output, many):
    return many or os.path.isdir(output) or output.endswith(("/", os.sep)) or not os.path.splitext(output)[1]


def output_paths(output, paths):
    """Where each input's picture goes: ``output`` itself (one input, a file name with an
    extension) or ``output/<input stem>.png``. Error naming the inputs when two would collide."""
    if not output_is_folder(output, len(paths) > 1):
        if not output.lower().endswith(IMAGE_EXTS):
            raise ValueError(f"--output {output!r}: not an image file name ({', '.join(IMAGE_EXTS)}) or a folder")
        return [output]
    if not os.path.isdir(output) and output.lower().endswith(IMAGE_EXTS):
        raise ValueError(f"--output {output!r} is a file name but there are {len(paths)} inputs: give a folder")
    outs = [os.path.join(output, os.path.splitext(os.path.basename(p))[0] + ".png") for p in paths]
    seen = {}
    for p, o in zip(paths, outs):
        if o in seen:
            raise ValueError(f"inputs {seen[o]} and {p} would both be written to {o}")
        seen[o] = p
    return outs


def label_map_path(picture_path):
    return os.path.splitext(picture_path)[0] + "_labels.png"


def get_parser():
    parser = argparse.ArgumentParser(description="ProtoSeg demo: draw semantic segmentation predictions")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, globs (quoted) or folders")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="take the frames of webcam 0 (shown in a window)")
    parser.add_argument("--output", help="output file (one image or a video) or folder; "
                                         "if not given, the pictures are shown in a window")
    parser.add_argument("--alpha", type=float, default=0.6, help="opacity of the class colours (default 0.6)")
    parser.add_argument("--no-labels", action="store_true", help="colours only, no class names")
    parser.add_argument("--area-threshold", type=int, default=None, metavar="PIXELS",
                        help="label only the classes whose largest region has at least this many pixels "
                             "(of the input image; default: 0.5%% of the image); smaller regions are coloured")
    parser.add_argument("--save-label-map", action="store_true",
                        help="also write the raw label map beside each picture as <name>_labels.png "
                             "(8-bit; 16-bit when the model has more than 256 classes); with --input only")
    parser.add_argument("--unknown-threshold", type=float, default=None, metavar="T",
                        help="draw the pixels whose unknown score exceeds T as 'unknown' (label id C in "
                             "--save-label-map); the score is --unknown-score")
    parser.add_argument("--unknown-score", choices=["nearest_prototype", "max_softmax", "max_logit"], default=None,
                        help="TEST.UNKNOWN_SCORE for --unknown-threshold (default: the config's, else "
                             "nearest_prototype for ProtoSeg heads and max_softmax for the others); "
                             "docs/OPEN_WORLD.md")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run even without MODEL.WEIGHTS (the predictions of a randomly initialised model)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def plan_images(args):
    """(input paths, output paths or Nones) of ``--input`` / ``--output``; errors naming the
    pattern or output at fault, before any model is built."""
    paths = readable_images(args.input)
    return paths, output_paths(args.output, paths) if args.output else [None] * len(paths)


def check_video_input(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--video-input {path}: no such file{_datasets_hint(path)}")


def run_images(demo, args, plan, num_classes):
    paths, outs = plan
    if args.output and output_is_folder(args.output, len(paths) > 1):
        os.makedirs(args.output, exist_ok=True)
    for path, out in zip(paths, outs):
        image = read_image(path, format="BGR")  # ImageReadError names the file
        start = time.perf_counter()
        label_map, vis = demo.run_on_image(image)
        logger.info("%s: %d classes in %.2fs", path, len(np.unique(label_map)), time.perf_counter() - start)
        if out is None:
            show(vis[:, :, ::-1], os.path.basename(path), wait=0)
            continue
        if os.path.dirname(out):
            os.makedirs(os.path.dirname(out), exist_ok=True)
        try:
            Image.fromarray(vis).save(out)
        except Exception as e:
            raise OSError(f"cannot write {out} (picture of {path}): {e}") from e
        if args.save_label_map:
            save_label_map(label_map_path(out), label_map, num_classes)
        print(f"{path} -> {out}")


def video_output_path(output, video_path):
    if output_is_folder(output, False):
        os.makedirs(output, exist_ok=True)
        return os.path.join(output, os.path.splitext(os.path.basename(video_path))[0] + ".mp4")
    if os.path.dirname(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
    return output


def run_video(demo, args):
    path = args.video_input
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise OSError(f"cannot open video {path}")
    fps = video.get(cv2.CAP_PROP_FPS)
    if not fps or not np.isfinite(fps) or fps <= 0:
        logger.warning("%s: unknown frame rate, writing at 25 fps", path)
        fps = 25.0
    out = video_output_path(args.output, path) if args.output else None
    writer, size, frames = None, None, 0
    try:
        for vis in demo.run_on_video(video):
            if out is None:
                if show(vis, os.path.basename(path), wait=1) == 27:
                    break
                continue
            if writer is None:
                size = (vis.shape[1], vis.shape[0])
                codec = "MJPG" if out.lower().endswith(".avi") else "mp4v"
                writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*codec), float(fps), size, True)
                if not writer.isOpened():
                    raise OSError(f"cannot write video {out} (codec {codec}); use a .mp4 or .avi name")
            if (vis.shape[1], vis.shape[0]) != size:
                vis = cv2.resize(vis, size)
            writer.write(vis)
            frames += 1
    finally:
        video.release()
        if writer is not None:
            writer.release()
    if out is not None:
        if frames == 0:
            raise OSError(f"no frame could be read from {path}")
        print(f"{path} -> {out} ({frames} frames, {fps:g} fps)")


def run_webcam(demo):
    cam = cv2.VideoCapture(0)
    if not cam.isOpened():
        raise OSError("cannot open webcam 0")
    try:
        for vis in demo.run_on_video(cam):
            if show(vis, WINDOW_NAME, wait=1) == 27:  # Esc
                break
    finally:
        cam.release()
        cv2.destroyAllWindows()


def show(vis_bgr, title, wait):
    """Show a picture in an OpenCV window; returns the key pressed."""
    try:
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        cv2.imshow(title, vis_bgr)
        return cv2.waitKey(wait)
    except cv2.error as e:
        raise RuntimeError(f"cannot open a window ({e.msg.strip()}): pass --output to write files instead") from e


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="protoseg")
    if args.save_label_map and not args.input:
        raise SystemExit("--save-label-map works with --input only")
    if args.save_label_map and not args.output:
        raise SystemExit("--save-label-map needs --output")
    cfg = setup_cfg(args)
    # the inputs are checked before the model is built (seconds to minutes)
    plan = plan_images(args) if args.input else None
    if args.video_input:
        check_video_input(args.video_input)
    demo = SemSegDemo(cfg, alpha=args.alpha, labels=not args.no_labels, area_threshold=args.area_threshold,
                      unknown_threshold=args.unknown_threshold)
    if args.input:
        run_images(demo, args, plan, len(demo.metadata.stuff_classes))
    elif args.video_input:
        run_video(demo, args)
    else:
        run_webcam(demo)


if __name__ == "__main__":
    main()
