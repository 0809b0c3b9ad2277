#!/usr/bin/env python
"""Export a trained model to ONNX (and TorchScript) and check the file against PyTorch.

    python tools/export_model.py --config-file configs/toy/protoseg_r18-d8_fcn_toy.yaml \\
        --output output/toy/protoseg_r18-d8_fcn/export MODEL.WEIGHTS output/toy/protoseg_r18-d8_fcn/model_final.pth
    python tools/export_model.py --config-file CONFIG --format onnx torchscript \\
        --check "datasets/my_images/*.jpg" MODEL.WEIGHTS model_final.pth

The graph takes the image (1, 3, H, W) uint8 in the config's INPUT.FORMAT channel order, after the
caller's short-side resize to INPUT.MIN_SIZE_TEST (long side at most INPUT.MAX_SIZE_TEST), and returns
logits (1, C, H, W); H and W are dynamic; normalisation, backbone, decoder and head (with the
prototypes as a constant) are inside; sliding window and TTA are not (protoseg/export.py).

The check runs the exported file in onnxruntime (and the TorchScript file in PyTorch) on the --check
images (default: the first 3 images of the config's DATASETS.TEST[0], or 2 random images when that
dataset is not on disk), each resized as the test protocol does, plus the first one at another size
(the dynamic shapes), and compares with the PyTorch model's own forward: at least --min-agreement of
the pixels must get the same class and every logit must be within --atol. Prints both numbers per
image, and the median CPU latency of PyTorch, onnxruntime (and TorchScript).

Exit status: 0 when every check passed (or --no-check), 1 when a check failed or a file could not be
exported or loaded, 2 for a usage error. Config overrides KEY VALUE go last (or after --opts); the
first argument that looks like a config key (e.g. MODEL.WEIGHTS) starts them, also after --check.
Needs the [export] extra: pip install -e '.[export]'.
"""
import argparse
import glob
import logging
import os
import re
import sys
import time

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import protoseg  # noqa: F401  (registers the model parts and datasets)
from protoseg.checkpoint import ProtoSegCheckpointer
from protoseg.data.image_io import read_image
from protoseg.export import (
    EXPORT_INSTALL_HINT,
    DEFAULT_OPSET,
    ExportableSegmentor,
    compare_logits,
    example_input,
    export_cfg,
    export_metadata,
    export_onnx,
    export_torchscript,
    image_to_input,
    load_onnx_session,
    load_torchscript,
    median_latency,
    other_size,
    resize_for_test,
    resize_to,
    torch_logits,
)
from protoseg.visualization.inference import build_cfg

logger = logging.getLogger("protoseg")

FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
NUM_DEFAULT_IMAGES = 3


class ExportError(RuntimeError):
    """The exporter failed (its own error types, turned into one with a hint)."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def get_parser():
    parser = argparse.ArgumentParser(
        description="Export a ProtoSeg / parametric model to ONNX (and TorchScript) and check it against PyTorch",
        epilog="Needs the [export] extra: " + EXPORT_INSTALL_HINT,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument("--output", default="", metavar="DIR",
                        help="folder for model.onnx / model.ts (default: OUTPUT_DIR/export)")
    parser.add_argument("--format", nargs="+", choices=sorted(FORMATS), default=["onnx"],
                        help="what to write (default: onnx)")
    parser.add_argument("--check", nargs="+", default=None, metavar="IMAGE",
                        help="images (files or quoted globs) to check on; default: the first 3 of DATASETS.TEST[0]")
    parser.add_argument("--no-check", action="store_true", help="export only")
    parser.add_argument("--check-only", action="store_true", help="do not export: check the files already in --output")
    parser.add_argument("--min-agreement", type=float, default=0.9999,
                        help="least share of pixels with the same class as PyTorch (default 0.9999)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest allowed absolute logit difference (default 1e-3)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs for the median latency (0: no timing)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of PyTorch and onnxruntime (default: torch.get_num_threads())")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--static-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="export for this input size only (no dynamic height / width: for a model whose "
                             "graph cannot have them); the check resizes its images to H x W")
    parser.add_argument("--dynamo", action="store_true",
                        help="use the torch.export-based ONNX exporter instead of the TorchScript-based one")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="export even without MODEL.WEIGHTS (a randomly initialised model)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def split_overrides(argv):
    """argv -> (options, config overrides): the overrides start at the first config key."""
    for i, arg in enumerate(argv):
        if CONFIG_KEY.match(arg):
            return argv[:i], argv[i:]
    return argv, []


def parse_args(argv=None):
    options, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = get_parser().parse_args(options)
    args.opts = list(args.opts) + overrides
    if len(args.opts) % 2:
        get_parser().error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    if not 0.0 <= args.min_agreement <= 1.0:
        get_parser().error(f"--min-agreement must be in [0, 1], got {args.min_agreement}")
    if args.no_check and args.check_only:
        get_parser().error("--no-check and --check-only exclude each other")
    return args


def load_model(cfg, allow_random: bool):
    """The eval-mode model of ``cfg`` with MODEL.WEIGHTS loaded (SystemExit when they are missing)."""
    weights = cfg.MODEL.WEIGHTS
    if not weights and not allow_random:
        raise SystemExit("MODEL.WEIGHTS is empty: the export would hold a randomly initialised model. Pass "
                         "MODEL.WEIGHTS path/to/model_final.pth, or --allow-random-weights on purpose")
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise SystemExit(f"MODEL.WEIGHTS {weights}: no such file")
    model = build_model(cfg)
    if weights:
        ProtoSegCheckpointer(model).load(weights)
    else:
        logger.warning("--allow-random-weights: MODEL.WEIGHTS is empty, exporting a randomly initialised model")
    return model.eval()


def check_images(patterns, cfg):
    """[(name, (H, W, 3) uint8 in INPUT.FORMAT)] of --check, else of the test dataset, else random."""
    if patterns:
        paths = []
        for pattern in patterns:
            found = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
            if not found:
                raise SystemExit(f"--check {pattern!r} matches no file")
            paths.extend(found)
        return [(p, read_image(p, format=cfg.INPUT.FORMAT)) for p in paths]
    dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else ""
    try:
        dicts = DatasetCatalog.get(dataset)[:NUM_DEFAULT_IMAGES]
        return [(d["file_name"], read_image(d["file_name"], format=cfg.INPUT.FORMAT)) for d in dicts]
    except Exception as e:  # not registered, not on disk, unreadable
        logger.warning("no validation images of %r (%s): checking on 2 random images; pass --check IMAGES",
                       dataset, first_line(e))
    rng = np.random.RandomState(0)
    side = cfg.INPUT.MIN_SIZE_TEST if cfg.INPUT.MIN_SIZE_TEST > 0 else 512
    sizes = ((side, side), (side, side + side // 3))
    return [(f"random image {i}", rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for i, (h, w) in enumerate(sizes)]


def network_inputs(images, cfg, stride: int, static_size=None):
    """[(name, (1, 3, H, W) uint8)]: each image resized as the test protocol does, and the first one
    again at another size (a second shape for the dynamic height and width); with ``static_size``,
    each image resized to it."""
    if static_size:
        return [(os.path.basename(name), image_to_input(resize_to(image, static_size))) for name, image in images]
    resized = [(os.path.basename(name), resize_for_test(image, cfg)) for name, image in images]
    name, first = resized[0]
    resized.append((f"{name} (another size: dynamic shapes)", resize_to(first, other_size(*first.shape[:2], stride))))
    return [(name, image_to_input(image)) for name, image in resized]


def size_of(x) -> str:
    return "x".join(map(str, x.shape[-2:]))


def runners(output, formats, threads):
    """{name: (callable (1, 3, H, W) uint8 -> logits, file)} of the exported files."""
    found = {}
    for fmt in formats:
        path = os.path.join(output, FORMATS[fmt])
        if fmt == "onnx":
            session, _ = load_onnx_session(path, threads)
            found["onnxruntime"] = (lambda x, s=session: s.run(None, {"image": x})[0], path)
        else:
            module, _ = load_torchscript(path)
            found["TorchScript"] = (lambda x, m=module: _no_grad(m, x), path)
    return found


def _no_grad(module, x):
    with torch.no_grad():
        return module(torch.as_tensor(x)).numpy()


def run_checks(model, inputs, runs, min_agreement, atol) -> bool:
    """Print the agreement of every runtime on every input; True when all pass."""
    references = [torch_logits(model, x) for _, x in inputs]
    ok = True
    print(f"[check] criteria: argmax agreement >= {100 * min_agreement:.4f} %, max |logit diff| <= {atol:g}")
    for name, (run, path) in runs.items():
        worst_agreement, worst_diff = 1.0, 0.0
        for (label, x), reference in zip(inputs, references):
            try:
                result = compare_logits(reference, run(x))
            except Exception as e:  # e.g. a shape the trace fixed: onnxruntime's own exception types
                print(f"  {name} {label} {size_of(x)}: cannot run: {first_line(e)}  FAILED")
                worst_agreement, worst_diff = 0.0, float("inf")
                continue
            worst_agreement = min(worst_agreement, result.argmax_agreement)
            worst_diff = max(worst_diff, result.max_abs_diff)
            verdict = "ok" if result.passes(min_agreement, atol) else "FAILED"
            print(f"  {name} {label} {size_of(x)}: agreement {100 * result.argmax_agreement:.4f} %, "
                  f"max |diff| {result.max_abs_diff:.2e}  {verdict}")
        passed = worst_agreement >= min_agreement and worst_diff <= atol
        ok &= passed
        print(f"[check] {name} ({path}) vs PyTorch on {len(inputs)} inputs: {'PASSED' if passed else 'FAILED'} "
              f"(worst: agreement {100 * worst_agreement:.4f} %, max |logit diff| {worst_diff:.2e})")
    return ok


def report_latency(model, runs, inputs, repeats, threads):
    x = inputs[0][1]
    times = {"PyTorch": median_latency(lambda: torch_logits(model, x), repeats)}
    for name, (run, _) in runs.items():
        times[name] = median_latency(lambda r=run: r(x), repeats)
    text = ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in times.items())
    plural = "s" if threads > 1 else ""
    print(f"[latency] {size_of(x)} input, CPU, {threads} thread{plural}, median of {repeats} runs: {text}")


def export_all(model, cfg, args, output):
    module = ExportableSegmentor(model)
    metadata = export_metadata(cfg, args.config_file, output)
    example = example_input(*args.static_size) if args.static_size else example_input()
    if args.static_size:
        metadata["static_size"] = list(args.static_size)
    os.makedirs(output, exist_ok=True)
    for fmt in args.format:
        path = os.path.join(output, FORMATS[fmt])
        start = time.perf_counter()
        try:
            if fmt == "onnx":
                export_onnx(module, path, metadata, example, args.opset, args.dynamo, dynamic=not args.static_size)
                how = f"{'torch.export-based' if args.dynamo else 'TorchScript-based'} exporter, opset {args.opset}"
            else:
                export_torchscript(module, path, metadata, example)
                how = "torch.jit.trace"
        except ModuleNotFoundError:
            raise
        except Exception as e:  # the exporters' own error types
            hint = "" if args.dynamo and args.static_size else (
                " (an operator that needs a known input size, e.g. UperNet's adaptive pooling: try "
                "--dynamo --static-size H W, see docs/DEMO.md)")
            raise ExportError(f"{fmt} export of {args.config_file} failed: {first_line(e)}{hint}") from e
        print(f"[export] {fmt}: {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {how}, "
              f"{time.perf_counter() - start:.1f} s)")


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="protoseg")
    cfg, changes = export_cfg(build_cfg(args.config_file, args.opts))
    for change in changes:
        logger.info("export: %s", change)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if args.check_only and not cfg.MODEL.WEIGHTS:
        raise SystemExit("--check-only without MODEL.WEIGHTS: a new randomly initialised model never matches the "
                         "exported one; pass the MODEL.WEIGHTS the files were exported from")
    images = None if args.no_check else check_images(args.check, cfg)  # before the (slow) model build
    model = load_model(cfg, args.allow_random_weights)
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "export")
    try:
        if not args.check_only:
            export_all(model, cfg, args, output)
        if args.no_check:
            return 0
        runs = runners(output, args.format, threads)
    except ModuleNotFoundError as e:
        raise SystemExit(f"{e.name} is not installed: the export needs the [export] extra, {EXPORT_INSTALL_HINT}")
    except ExportError as e:
        print(f"[export] FAILED: {e}")
        return 1
    except RuntimeError as e:  # a file that cannot be loaded (truncated, not ONNX / TorchScript)
        print(f"[check] FAILED: {e}")
        return 1
    stride = model.sem_seg_head.decoder.out_stride
    inputs = network_inputs(images, cfg, stride, args.static_size)
    ok = run_checks(model, inputs, runs, args.min_agreement, args.atol)
    if args.runs > 0:
        report_latency(model, runs, inputs, args.runs, threads)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
