#!/usr/bin/env python
"""Memory of the demo and of the web page, each measured in a fresh process.

- demo: the peak RSS (``ru_maxrss`` of the finished child) of ``demo/demo.py`` on one photo with
  a config (default: the 847-class MiT-B2 model, random weights of seed 0), and, with
  ``--reference``, of the argmax of the full (C, H, W) ``sem_seg`` (what the demo computes without
  ``predict_labels``), from the project's segmentor and from Detectron2's ``SemanticSegmentor``;
  it says whether their label maps equal the demo's;
- web: the RSS (VmRSS) of ``demo/web.py`` after each of ``--uploads`` uploads of a 3 MP image, each
  from a new gradio client (a new session), and after ``--idle`` seconds without requests.

    python lab/benchmark_memory.py                       # both, ~5 minutes on 2 CPU cores
    python lab/benchmark_memory.py --skip-web --reference
Synthetic photo-like images are written into a temporary folder unless --photo / --upload-image.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "ade20k_full" / "protoseg_segformer_MiT-B2_847cls_bs16_40k.yaml"
WEB_CONFIG = REPO / "configs" / "toy" / "protoseg_r18-d8_fcn_toy.yaml"
MIB = 2**20


def photo_like(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A JPEG of smooth colour blobs with noise (regions and texture, as a photo has)."""
    import cv2

    rng = np.random.RandomState(seed)
    small = rng.randint(0, 256, size=(height // 100 + 1, width // 100 + 1, 3)).astype(np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image = np.clip(image + rng.randint(-20, 20, size=image.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def run_child(args) -> float:
    """Run a command; its peak RSS in MiB (ru_maxrss of the child, KiB on Linux)."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    return usage.ru_maxrss / 1024


def full_argmax_worker(config: str, image_path: str, out: str, opts) -> None:
    """The label map as the argmax of the full ``sem_seg`` (C, H, W), saved as a PNG (the demo's
    predictor, config and image reader)."""
    import cv2

    from protoseg.config import load_config
    from protoseg.data.image_io import read_image
    from protoseg.predictor import Predictor

    cfg = load_config(config, opts, freeze=True)
    logits = Predictor(cfg)(read_image(image_path, format="BGR"))["sem_seg"]
    dtype = np.uint8 if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES <= 256 else np.uint16
    cv2.imwrite(out, logits.argmax(0).numpy().astype(dtype))  # as demo/demo.py --save-label-map


def random_weights(config: str, path: Path, opts) -> Path:
    """A checkpoint of the config's model, randomly initialised with seed 0 (both runs of the
    demo load the same weights, so that their label maps can be compared)."""
    import torch
    from detectron2.modeling import build_model

    from protoseg.config import load_config

    torch.manual_seed(0)
    model = build_model(load_config(config, opts))
    torch.save({"model": model.state_dict()}, path)
    return path


def bench_demo(args, tmp: Path) -> None:
    import cv2

    photo = Path(args.photo) if args.photo else photo_like(tmp / "photo.jpg", 1600, 1200)
    opts = ["MODEL.DEVICE", "cpu", *args.opts]
    opts += ["MODEL.WEIGHTS", str(random_weights(args.demo_config, tmp / "random.pth", opts + ["MODEL.WEIGHTS", ""]))]
    shape = cv2.imread(str(photo)).shape
    print(f"demo: {args.demo_config} on {photo.name} ({shape[1]}x{shape[0]}), random weights (seed 0)", flush=True)
    start = time.perf_counter()
    peak = run_child([sys.executable, "demo/demo.py", "--config-file", args.demo_config, "--input", str(photo),
                      "--output", str(tmp / "demo.png"), "--save-label-map", "--opts", *opts])
    print(f"  {'demo/demo.py (label map by chunks of classes):':47s} peak RSS {peak:7.0f} MiB "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    if not args.reference:
        return
    labels = cv2.imread(str(tmp / "demo_labels.png"), cv2.IMREAD_UNCHANGED)
    references = {  # Detectron2's SemanticSegmentor resizes all classes in one call, twice
        "argmax of forward's (C, H, W) sem_seg": [],
        "the same, Detectron2's SemanticSegmentor": ["MODEL.META_ARCHITECTURE", "SemanticSegmentor"],
    }
    for i, (name, extra) in enumerate(references.items()):
        start, out = time.perf_counter(), tmp / f"full_labels_{i}.png"
        peak = run_child([sys.executable, __file__, "--full-argmax-worker", args.demo_config, str(photo), str(out),
                          *opts, *extra])
        same = np.array_equal(labels, cv2.imread(str(out), cv2.IMREAD_UNCHANGED))
        print(f"  {name + ':':47s} peak RSS {peak:7.0f} MiB ({time.perf_counter() - start:.0f} s), "
              f"label map equal to the demo's: {same}", flush=True)
    print(f"  ({len(np.unique(labels))} classes in the label map)", flush=True)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def bench_web(args, tmp: Path) -> None:
    import urllib.request

    from gradio_client import Client, handle_file

    image = Path(args.upload_image) if args.upload_image else photo_like(tmp / "upload.jpg", 2000, 1500, seed=1)
    port = args.port
    server = subprocess.Popen(
        [sys.executable, "demo/web.py", "--config-file", args.web_config, "--port", str(port),
         "--allow-random-weights", "--opts", "MODEL.DEVICE", "cpu"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"demo/web.py exited with {server.returncode}")
                time.sleep(0.5)
        print(f"web: {args.web_config}, {args.uploads} uploads of {image.name}, one new session each", flush=True)
        print(f"  started: RSS {rss_mib(server.pid):.0f} MiB", flush=True)
        first = None
        for i in range(args.uploads):
            start = time.perf_counter()
            Client(url, verbose=False).predict(handle_file(str(image)), api_name="/on_image")
            rss = rss_mib(server.pid)
            first = rss if first is None else first
            print(f"  upload {i + 1}: RSS {rss:.0f} MiB (+{rss - first:.0f} over the first; "
                  f"{time.perf_counter() - start:.1f} s)", flush=True)
        time.sleep(args.idle)
        print(f"  after {args.idle} s idle: RSS {rss_mib(server.pid):.0f} MiB", flush=True)
    finally:
        server.terminate()
        server.wait()


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-config", default=str(DEMO_CONFIG))
    parser.add_argument("--photo", help="the demo's image (default: a synthetic 1600x1200 JPEG)")
    parser.add_argument("--reference", action="store_true", help="also the argmax of the full (C, H, W) sem_seg")
    parser.add_argument("--web-config", default=str(WEB_CONFIG))
    parser.add_argument("--upload-image", help="the web page's upload (default: a synthetic 2000x1500 JPEG)")
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--idle", type=int, default=10, help="seconds to wait after the uploads")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-web", action="store_true")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="demo config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--full-argmax-worker":
        return full_argmax_worker(*argv[1:4], argv[4:])
    args = get_parser().parse_args(argv)
    print(f"ProtoSeg-D2 memory benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_demo:
            bench_demo(args, Path(tmp))
        if not args.skip_web:
            bench_web(args, Path(tmp))


if __name__ == "__main__":
    main()
