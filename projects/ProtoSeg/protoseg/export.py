"""Export a segmentation model of the project for deployment (ONNX, TorchScript) and check the
exported file against PyTorch (``tools/export_model.py``, docs/DEMO.md).

What is exported: :class:`ExportableSegmentor`, the whole-image inference of
``ProtoSegSemanticSegmentor``: normalisation (``MODEL.PIXEL_MEAN/STD``), padding to the backbone's
size divisibility, backbone, decoder and head (``ProtoSegHead``, its C x K x D prototypes stored
in the file as a constant, or ``ParametricSegHead``), the bilinear resize of the class scores to
the input size. The graph maps

    image  (1, 3, H, W) uint8, channels in cfg.INPUT.FORMAT order (RGB for the project's configs)
    -> logits (1, C, H, W) float32 (LayerNorm-ed nearest-prototype scores for ProtoSeg)

with H and W dynamic. Not in the graph (the caller's part, as Detectron2's ``DefaultPredictor``
does it in Python): the test-time resize of the short side to ``INPUT.MIN_SIZE_TEST`` (long side at
most ``INPUT.MAX_SIZE_TEST``; :func:`resize_for_test`), and resizing the logits (or the argmax,
nearest) back to the original image size. The sliding window (``TEST.SLIDING_WINDOW``) and the
flip / multi-scale test (``TEST.AUG``) are not exported either: a caller runs the graph on each
window or scale.

onnx and onnxruntime are an optional extra: ``pip install -e '.[export]'``.
"""
import contextlib
import json
import logging
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from .modeling.heads.base import DecoderClassifierHead

__all__ = [
    "EXPORT_INSTALL_HINT",
    "ExportableSegmentor",
    "Agreement",
    "export_cfg",
    "export_metadata",
    "portable_path",
    "export_onnx",
    "export_torchscript",
    "load_onnx_session",
    "load_torchscript",
    "resize_for_test",
    "image_to_input",
    "torch_logits",
    "compare_logits",
    "median_latency",
    "example_input",
    "other_size",
    "resize_to",
]

logger = logging.getLogger("protoseg")

EXPORT_INSTALL_HINT = "pip install -e '.[export]'   (or: pip install onnx onnxruntime)"
METADATA_KEY = "protoseg"  # ONNX metadata_props key / TorchScript extra file "protoseg.json"
DEFAULT_OPSET = 18  # LayerNormalization is one op from 17 on; the torch.export-based exporter needs >= 18


def export_cfg(cfg):
    """A copy of ``cfg`` for export, and the list of what was changed and why (one line each).

    The exported graph is the whole-image path on the CPU, so: ``MODEL.DEVICE`` cpu; sliding window
    and test-time augmentation off (the caller's part); ``MODEL.PROTOSEG.CHUNK_SIZE`` 0, because the
    number of chunks is a Python loop that a trace would fix to the example's pixel count (the
    result is the same, computed in one product)."""
    cfg = cfg.clone()
    cfg.defrost()
    wanted = [
        ("MODEL.DEVICE", "cpu", "the export runs on the CPU"),
        ("MODEL.PROTOSEG.CHUNK_SIZE", 0, "the chunk loop would be fixed to the example's size; same scores"),
        ("TEST.SLIDING_WINDOW.ENABLED", False, "not in the graph: run it on each window yourself"),
        ("TEST.AUG.ENABLED", False, "not in the graph: run it on each scale / flip yourself"),
    ]
    changes = []
    for key, value, why in wanted:
        node, leaf = _node(cfg, key)
        if node[leaf] != value:
            changes.append(f"{key}: {node[leaf]!r} -> {value!r} ({why})")
            node[leaf] = value
    cfg.freeze()
    return cfg, changes


def _node(cfg, key: str):
    *path, leaf = key.split(".")
    for name in path:
        cfg = cfg[name]
    return cfg, leaf


class ExportableSegmentor(nn.Module):
    """The traced module: (1, 3, H, W) uint8 image in ``cfg.INPUT.FORMAT`` -> (1, C, H, W) logits,
    the same computation as ``model([{"image": image[0]}])[0]["sem_seg"]`` of a
    ``ProtoSegSemanticSegmentor`` without sliding window and TTA (checked by the export tool)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        head = getattr(model, "sem_seg_head", None)
        if not isinstance(head, DecoderClassifierHead):
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NAME {type(head).__name__}: only the project's heads (ProtoSegHead, "
                f"ParametricSegHead) are exported"
            )
        if getattr(model, "sliding_window", False) or getattr(model, "uses_tta", False):
            raise ValueError("export the whole-image path: build the model from export_cfg(cfg) "
                             "(TEST.SLIDING_WINDOW.ENABLED and TEST.AUG.ENABLED off)")
        chunk_size = getattr(getattr(head, "memory", None), "chunk_size", 0)
        if chunk_size:
            raise ValueError(f"MODEL.PROTOSEG.CHUNK_SIZE is {chunk_size}: a trace would fix the number of "
                             f"chunks to the example's size; build the model from export_cfg(cfg)")
        self.model = model
        self.size_divisibility = int(model.backbone.size_divisibility)
        # eval mode, for the model too; and the legacy exporter restores the wrapper's own mode
        # after the export (a wrapper left in training mode would put the model in training mode)
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (1, 3, H, W) uint8 (or float pixel values 0..255) -> logits (1, C, H, W) float32."""
        model = self.model
        x = (image.float() - model.pixel_mean) / model.pixel_std
        h, w = x.shape[-2:]
        d = self.size_divisibility
        if d > 1:  # as ImageList.from_tensors: 0 (the mean after normalisation) at the bottom / right
            x = F.pad(x, (0, (-w) % d, 0, (-h) % d))
        logits = model.sem_seg_head(model.backbone(x), None, x.shape[-2:])[0]
        return logits[:, :, :h, :w] if d > 1 else logits


def portable_path(path: str, folder: str) -> str:
    """``path`` as the metadata of a file written into ``folder`` records it, with no absolute path
    of this machine: relative to ``folder`` when both are under the working directory (where the
    commands run, e.g. ``../model_final.pth``), else the file name; "" and URLs (``detectron2://``,
    ``https://``) as they are."""
    if not path or "://" in path:
        return path
    cwd = os.path.abspath(os.getcwd())
    target, start = os.path.abspath(path), os.path.abspath(folder)
    if all(os.path.commonpath([cwd, p]) == cwd for p in (target, start)):
        return os.path.relpath(target, start)
    return os.path.basename(target)


def export_metadata(cfg, config_file: str = "", output_dir: str = ".") -> Dict[str, object]:
    """What a deployment needs besides the graph: input format and test resize, class names; the
    weights and config file as :func:`portable_path` of the folder ``output_dir`` the exported
    files go to."""
    dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else ""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names = list(MetadataCatalog.get(dataset).get("stuff_classes", []) or []) if dataset else []
    if len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    return {
        "input": "image (1, 3, H, W) uint8, channel order INPUT.FORMAT, short side resized to MIN_SIZE_TEST "
                 "(long side at most MAX_SIZE_TEST)",
        "output": "logits (1, C, H, W) float32; argmax over C = predicted class; resize to the original size",
        "INPUT.FORMAT": cfg.INPUT.FORMAT,
        "INPUT.MIN_SIZE_TEST": int(cfg.INPUT.MIN_SIZE_TEST),
        "INPUT.MAX_SIZE_TEST": int(cfg.INPUT.MAX_SIZE_TEST),
        "MODEL.SEM_SEG_HEAD.NAME": cfg.MODEL.SEM_SEG_HEAD.NAME,
        "MODEL.WEIGHTS": portable_path(cfg.MODEL.WEIGHTS, output_dir),
        "config_file": portable_path(config_file, output_dir),
        "dataset": dataset,
        "classes": names,
    }


def example_input(height: int = 128, width: int = 160) -> torch.Tensor:
    """A seeded random (1, 3, height, width) uint8 image to trace with."""
    return torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def export_onnx(module: ExportableSegmentor, path: str, metadata: Dict[str, object], example: torch.Tensor = None,
                opset: int = DEFAULT_OPSET, dynamo: bool = False, dynamic: bool = True) -> str:
    """Trace ``module`` on ``example`` ((1, 3, h, w) uint8) and write an ONNX file, with dynamic
    height and width unless ``dynamic`` is False (then the graph takes h x w only), ``metadata``
    as JSON in its ``metadata_props["protoseg"]``.

    ``dynamo=False`` (default): the TorchScript-based exporter, which PyTorch marks deprecated but
    which traces the project's code as it is, in seconds. ``dynamo=True``: the torch.export-based
    one (needs onnxscript and opset >= 18; same numbers, slower to export)."""
    import onnx  # the [export] extra

    example = example_input() if example is None else example
    kwargs = dict(input_names=["image"], output_names=["logits"], opset_version=opset, dynamo=dynamo)
    if dynamic and dynamo:
        dims = {2: torch.export.Dim("height", min=8, max=8192), 3: torch.export.Dim("width", min=8, max=8192)}
        kwargs["dynamic_shapes"] = {"image": dims}
    elif dynamic:
        kwargs["dynamic_axes"] = {"image": {2: "height", 3: "width"}, "logits": {2: "height", 3: "width"}}
    with torch.no_grad(), _quiet_tracing():
        torch.onnx.export(module, (example,), path, **kwargs)
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(proto, path)
    return path


def export_torchscript(module: ExportableSegmentor, path: str, metadata: Dict[str, object],
                       example: torch.Tensor = None) -> str:
    """``torch.jit.trace`` of ``module`` saved to ``path``, ``metadata`` in the extra file
    ``protoseg.json`` (read with :func:`load_torchscript`)."""
    example = example_input() if example is None else example
    with torch.no_grad(), _quiet_tracing():
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, path, _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
    return path


@contextlib.contextmanager
def _quiet_tracing():
    """Silence the tracer's warnings about Python values fixed in the trace (the chunk loop of
    ``nearest_prototype_scores`` at chunk size 0, Detectron2's empty-input branches; the export tool
    checks the result at two input sizes) and torch's deprecation notices of the legacy exporter and
    of torch.jit (both still work in torch 2.14; docs/DEMO.md)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for legacy in (".*legacy TorchScript-based ONNX export", "The feature will be removed"):
            warnings.filterwarnings("ignore", message=legacy, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def load_onnx_session(path: str, threads: int = 0):
    """onnxruntime CPU session of an exported file and its metadata dict.

    Raises:
        ModuleNotFoundError: onnxruntime is not installed (see EXPORT_INSTALL_HINT).
        RuntimeError: the file cannot be loaded (missing, truncated, not ONNX), naming it.
    """
    import onnxruntime as ort  # the [export] extra: EXPORT_INSTALL_HINT
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise RuntimeError(f"cannot load the ONNX file {path}: {e}") from e
    props = session.get_modelmeta().custom_metadata_map
    return session, json.loads(props.get(METADATA_KEY, "{}"))


def load_torchscript(path: str):
    """(TorchScript module, metadata dict) of a file of :func:`export_torchscript`."""
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        with _quiet_tracing():
            module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as e:
        raise RuntimeError(f"cannot load the TorchScript file {path}: {e}") from e
    return module.eval(), json.loads(extra[f"{METADATA_KEY}.json"] or "{}")


def resize_for_test(image: np.ndarray, cfg) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 resized as ``DefaultPredictor`` does it: short side
    ``INPUT.MIN_SIZE_TEST``, long side at most ``INPUT.MAX_SIZE_TEST``; unchanged when
    MIN_SIZE_TEST is 0."""
    if cfg.INPUT.MIN_SIZE_TEST <= 0:
        return image
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
    return aug.get_transform(image).apply_image(image)


def image_to_input(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) uint8 contiguous, the exported graph's input."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


@torch.no_grad()
def torch_logits(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """The reference: (1, 3, H, W) uint8 -> (C, H, W) float32 logits of the model's own forward
    (Detectron2's input dict, as the evaluation and ``DefaultPredictor`` call it)."""
    inputs = [{"image": torch.as_tensor(image[0]).float()}]
    return model(inputs)[0]["sem_seg"].float().cpu().numpy()


@dataclass(frozen=True)
class Agreement:
    """How an exported model's logits compare with PyTorch's on one image.

    Attributes:
        argmax_agreement: share of pixels with the same predicted class, 0..1.
        max_abs_diff: largest absolute difference of the (C, H, W) logits.
    """

    argmax_agreement: float
    max_abs_diff: float

    def passes(self, min_agreement: float, atol: float) -> bool:
        return self.argmax_agreement >= min_agreement and self.max_abs_diff <= atol


def compare_logits(reference: np.ndarray, logits: np.ndarray) -> Agreement:
    """reference and logits (C, H, W) (a leading batch of 1 is dropped) -> :class:`Agreement`.
    A shape mismatch or a non-finite value gives agreement 0 and an infinite difference."""
    logits = logits[0] if logits.ndim == 4 and logits.shape[0] == 1 else logits
    if logits.shape != reference.shape or not np.isfinite(logits).all():
        return Agreement(0.0, float("inf"))
    same = (logits.argmax(0) == reference.argmax(0)).mean()
    return Agreement(float(same), float(np.abs(logits - reference).max()))


def median_latency(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def other_size(height: int, width: int, stride: int = 8) -> Tuple[int, int]:
    """A second (height, width) to check dynamic shapes with: another aspect ratio and sizes that
    are not multiples of ``stride`` (3/4 of the height, the width plus 3 + stride)."""
    return max(stride + 1, (3 * height) // 4 + 1), width + stride + 3


def resize_to(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (size[0], size[1], 3) uint8, bilinear (Detectron2's ResizeTransform)."""
    h, w = image.shape[:2]
    return T.ResizeTransform(h, w, int(size[0]), int(size[1])).apply_image(image)
